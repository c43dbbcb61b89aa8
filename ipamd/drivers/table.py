"""The drivers Plexus has, by the kind an interface record names."""

from __future__ import annotations

from collections.abc import Mapping

from ipamd.drivers.base import InterfaceDriver
from ipamd.drivers.macvlan import MacvlanDriver
from ipamd.drivers.tap import TapDriver
from ipamd.drivers.veth import VethDriver

DriverTable = Mapping[str, InterfaceDriver]


def kernel_drivers() -> dict[str, InterfaceDriver]:
    """The interfaces Plexus builds itself."""
    return {d.kind: d for d in (VethDriver(), TapDriver(), MacvlanDriver())}

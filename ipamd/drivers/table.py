"""The drivers Plexus has, by the kind an interface record names."""

from __future__ import annotations

from collections.abc import Mapping

from ipamd.dhcp.server import GuestDhcp
from ipamd.drivers.base import InterfaceDriver
from ipamd.drivers.delegate import DelegateDriver, UsedConfigurations
from ipamd.drivers.macvlan import MacvlanDriver
from ipamd.drivers.tap import TapDriver
from ipamd.drivers.veth import VethDriver
from ipamd.invoke.chain import Chain

DriverTable = Mapping[str, InterfaceDriver]


def kernel_drivers(guest_dhcp: GuestDhcp | None = None) -> dict[str, InterfaceDriver]:
    """The interfaces Plexus builds itself (a TAP's guest answered its DHCP by ``guest_dhcp``, or a server of its
    own)."""
    return {d.kind: d for d in (VethDriver(), TapDriver(guest_dhcp), MacvlanDriver())}


def all_drivers(chain: Chain, used_configurations: str = "", guest_dhcp: GuestDhcp | None = None
                ) -> dict[str, InterfaceDriver]:
    """Those, and the interfaces other CNI plugins build (through ``chain``); the delegate configurations run on the
    node are kept in the file ``used_configurations`` (none: for the daemon's life), so GC reaches them after a
    restart too."""
    return {**kernel_drivers(guest_dhcp),
            DelegateDriver.kind: DelegateDriver(chain, UsedConfigurations(used_configurations))}

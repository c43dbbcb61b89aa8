"""The interface driver seam: one driver per attachment kind, chosen from a table by the recorded kind.

A driver plans an interface (what it will make, and the private state it needs to undo it, kept in
the record it owns: ``BuiltInterface.driver``), builds it with an undo step registered right after
each side effect, tears it down from the record alone (no object, no NAD, no pod needed: DEL must work
when they are gone), and checks it. The verbs never ask what kind an interface is.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cni.types import Result
from ipamd.model.annotations import NetworkSelection
from ipamd.store.records import BuiltInterface

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class InterfaceKey:
    """Which attachment an interface belongs to, as the runtime keys it."""

    container_id: str
    runtime_ifname: str  # CNI_IFNAME
    netns: str  # CNI_NETNS


@dataclass(frozen=True, slots=True)
class Plan:
    """A driver's part of an interface record, decided before anything is built."""

    host_link: str = ""  # a link on the node Plexus makes for it ("" when none)
    configure_ips: bool = True  # whether the interface carries its leased addresses itself
    mac: str = ""  # the MAC asked for ("" to generate one)
    state: dict[str, Any] | None = None  # the driver's own, kept in the record for DEL and CHECK


@dataclass(frozen=True, slots=True)
class Built:
    """What a build made: the pod interface's MAC, and this interface's share of the CNI result (its
    interface indexes count from 0; the verbs renumber them into the whole result)."""

    mac: str
    result: Result


class PodSide(Protocol):
    """The pod's network namespace during one call: opened once, its netlink socket made on first use."""

    @property
    def path(self) -> str: ...

    @property
    def fd(self) -> int: ...

    def netlink(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class BuildContext:
    host: Any  # this thread's netlink socket on the node (pyroute2 IPRoute)
    pod: PodSide
    bridge_index: Callable[[], int]  # the index of the interface's segment bridge, made on first ask


@dataclass(frozen=True, slots=True)
class LinksContext:
    """Netlink on both sides, for tearing down and checking: the node's socket, and the pod's made on first
    ask (on DEL, None when the pod's namespace is gone: its links went with it)."""

    host: Any
    pod_netlink: Callable[[], Any | None]


class InterfaceDriver(Protocol):
    kind: str

    def plan(self, key: InterfaceKey, sel: NetworkSelection) -> Plan: ...

    def build(self, ctx: BuildContext, iface: BuiltInterface, undo: contextlib.ExitStack) -> Built:
        """Make the interface; after each side effect, register its undo on ``undo``."""
        ...

    def teardown(self, ctx: LinksContext, iface: BuiltInterface) -> None:
        """Remove what the record says was made; what is already gone counts as removed."""
        ...

    def check(self, ctx: LinksContext, iface: BuiltInterface) -> list[str]:
        """What differs from the record, in words ("net1 is down"); empty when nothing does."""
        ...


def quietly(what: str, fn: Callable[..., Any], *args: Any) -> None:
    """An undo step never raises: the error that made ADD unwind is the one reported."""
    try:
        fn(*args)
    except Exception as exc:  # logged, not raised
        log.warning("undo %s failed: %s", what, exc)

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
from ipamd.invoke.chain import Invocation
from ipamd.store.records import BuiltInterface

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class InterfaceKey:
    """Which attachment an interface belongs to, as the runtime keys it."""

    container_id: str
    runtime_ifname: str  # CNI_IFNAME
    netns: str  # CNI_NETNS


@dataclass(frozen=True, slots=True)
class InterfaceRequest:
    """What a driver plans one interface from, whichever annotation asked for it."""

    if_name: str
    mac: str = ""
    skip_ip_assignment: bool = False  # the address is reserved and tracked, not configured (a VM's guest takes it)
    tap_uid: int | None = None
    tap_gid: int | None = None
    tap_multi_queue: bool = False  # the TAP takes several queues (IFF_MULTI_QUEUE)
    guest_dhcp: bool = False  # the guest behind the TAP is answered its DHCP with the interface's IPv4 lease
    delegate: Invocation | None = None  # for a delegated interface: the plugins to exec, exactly
    default_route: tuple[str, ...] = ()  # gateways: this interface gets the pod's default route
    # the pod's default routes (their dst) that an interface of the attachment takes (this one or another, NPWG
    # ``default-route``): an interface's own result no longer holds those of the rest
    defaults_moved: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    """A driver's part of an interface record, decided before anything is built."""

    host_link: str = ""  # a link on the node Plexus makes for it ("" when none)
    configure_ips: bool = True  # whether the interface carries its leased addresses itself
    mac: str = ""  # the pod interface's MAC: asked for, or chosen now by a driver that sets it ("" for the build to tell)
    state: dict[str, Any] | None = None  # the driver's own, kept in the record for DEL and CHECK


@dataclass(frozen=True, slots=True)
class Built:
    """What a build made: the pod interface's MAC, and this interface's share of the CNI result (its
    interface indexes count from 0; the verbs renumber them into the whole result). ``state`` replaces the
    driver's state in the record when the build learnt something DEL needs (a delegate's result); ``addresses`` the
    record's addresses when the kernel took less than they say (a pool's default route left to the pod's own), so
    the statuses and CHECK go by what the pod has."""

    mac: str
    result: Result
    state: dict[str, Any] | None = None
    addresses: tuple[dict[str, Any], ...] | None = None


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
    # told by an undo step that could not undo what it built (a delegate's DEL failed, a kernel driver's link delete
    # refused: ``undo_in_kernel``): the attachment is then kept as ``deleting`` with that interface, its addresses
    # held, for the runtime's DEL (or the reconciler) to finish
    not_undone: Callable[[BuiltInterface], None] = lambda iface: None
    # the segment bridge's MTU as the segments service last read it (None: the driver reads it from the bridge)
    bridge_mtu: Callable[[], int | None] = lambda: None
    # merges keys into this interface's driver state in the stored record at once (a store transaction of its own),
    # before the commit: what DEL needs that only the build learns (a delegate's result, the default routes it is
    # about to take), for a daemon killed before the commit; the commit stores ``Built.state`` whole as ever
    keep_state: Callable[[dict[str, Any]], None] = lambda state: None


@dataclass(frozen=True, slots=True)
class LinksContext:
    """Both sides, for tearing down and checking: the node's netlink socket, and the pod's made on first ask
    (on DEL, None when the pod's namespace is gone: its links went with it), and the namespace's path
    ("" when it is gone, as a runtime says it to a plugin)."""

    host: Any
    pod_netlink: Callable[[], Any | None]
    netns: str = ""
    doomed: list[str] | None = None  # a DEL's: node links to remove together once every driver is done (one request)
    # a DEL's: whether another attachment of this node, not being deleted, has a macvlan with this MAC on this bridge
    # (a pod given the MAC since this one's sandbox went, before its late DEL): the bridge's entry is that one's now
    mac_held_elsewhere: Callable[[str, str], bool] = lambda bridge, mac: False


class InterfaceDriver(Protocol):
    kind: str

    def plan(self, key: InterfaceKey, request: InterfaceRequest) -> Plan: ...

    def build(self, ctx: BuildContext, iface: BuiltInterface, undo: contextlib.ExitStack) -> Built:
        """Make the interface; after each side effect, register its undo on ``undo``."""
        ...

    def foresee(self, iface: BuiltInterface, sandbox: str) -> Built | None:
        """What ``build`` will return, when the record alone tells it (its MAC chosen in the plan), so that the pod's
        status can be on its way to the API server while the interface is built; None when only the build can tell
        (a delegate's result)."""
        ...

    def teardown(self, ctx: LinksContext, iface: BuiltInterface) -> None:
        """Remove what the record says was made; what is already gone counts as removed."""
        ...

    def cut_off(self, ctx: LinksContext, iface: BuiltInterface) -> bool:
        """Stop the interface carrying traffic, cheaply and at once, so that a DEL may answer before ``teardown``
        removes it (``--del-mode background``); False when this driver cannot, and the DEL removes it first."""
        ...

    def check(self, ctx: LinksContext, iface: BuiltInterface) -> list[str]:
        """What differs from the record, in words ("net1 is down"); empty when nothing does."""
        ...

    def collect(self, kept: list[BuiltInterface]) -> None:
        """GC (CNI 1.1): ``kept`` are this driver's interfaces still valid; what it delegated to may let go of
        the rest. The driver's own interfaces of attachments that are not kept were already torn down."""
        ...


def quietly(what: str, fn: Callable[..., Any], *args: Any) -> None:
    """An undo step never raises: the error that made ADD unwind is the one reported."""
    try:
        fn(*args)
    except Exception as exc:  # logged, not raised
        log.warning("undo %s failed: %s", what, exc)


def undo_in_kernel(undo: contextlib.ExitStack, not_undone: Callable[[BuiltInterface], None], iface: BuiltInterface,
                   what: str, fn: Callable[..., Any], *args: Any) -> None:
    """Register the undo step of a kernel driver's side effect: run ``quietly``, and one that fails (a link delete
    refused) tells ``not_undone`` (``BuildContext.not_undone``), as a delegate's failed DEL does: the link may still
    be there with the leased addresses on it, so the record keeps the interface for a DEL to remove, then let them go."""
    undo.callback(quietly, what, _or_not_undone, not_undone, iface, fn, *args)


def _or_not_undone(not_undone: Callable[[BuiltInterface], None], iface: BuiltInterface, fn: Callable[..., Any],
                   *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        not_undone(iface)
        raise

"""L2 segments on this node: which VLAN ID (or VXLAN VNI) a Network uses here, its bridge and its uplink.

A class with ``spec.vlan`` gives each Network a VLAN ID from its ``idPool`` (the one the Network
asks for when it is free), a bridge ``plx-br-<id>`` and, where the class names a parent NIC, the
802.1Q sub-interface as the bridge's uplink. A class with ``spec.vxlan`` does the same with a VNI
and a VXLAN device. A class with neither gives an untagged bridge per Network. The rules are
``ipamd.model.segments`` (shared with the controller); the assignment is recorded in the store, so
it survives restarts and two Networks never share an ID. The links themselves are made through
``NodeLinks``, a seam the unit tests fake.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from cni.errors import AddressConflict, CniError, InvalidConfig, PoolExhausted, TryAgainLater
from ipamd.ipam.addresses import ResolvedNetwork
from ipamd.model.conditions import set_condition
from ipamd.model.objects import ClusterNetwork, Network, NetworkClass, VxlanSpec
from ipamd.model.segments import (
    SEGMENT_KINDS,
    IdUnavailable,
    SegmentInUse,
    granted_id,
    id_pool,
    pick_id,
    segment_kind,
)
from ipamd.model.timefmt import rfc3339
from ipamd.store.protocols import SegmentStore
from ipamd.store.records import SegmentRecord


class NodeLinks(Protocol):
    """The node links a segment needs (``ipamd.netlink.node`` makes them through netlink)."""

    def ensure_bridge(self, name: str, uplink: str) -> int: ...

    def ensure_vlan(self, parent: str, vlan_id: int) -> str: ...

    def ensure_vxlan(self, vni: int, spec: VxlanSpec) -> str: ...

    def index(self, name: str) -> int | None: ...

    def mtu(self, index: int) -> int: ...

    def delete(self, name: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """What a segment needs on the node."""

    record: SegmentRecord
    uplink: str = ""  # vlan | vxlan | nic | "" (node-local)
    parent: str = ""
    vxlan: VxlanSpec | None = None

    @property
    def links(self) -> tuple[str, str, VxlanSpec | None]:
        """What the node's links are made from: when it changes (the class edited), they are made again."""
        return self.uplink, self.parent, self.vxlan


#: How each kind of uplink is made: it returns the link to enslave to the bridge.
UPLINKS: dict[str, Callable[[NodeLinks, SegmentPlan], str]] = {
    "vlan": lambda links, plan: links.ensure_vlan(plan.parent, plan.record.id),
    "vxlan": lambda links, plan: links.ensure_vxlan(plan.record.id, plan.vxlan or VxlanSpec(())),
    "nic": lambda links, plan: plan.parent,
    "": lambda links, plan: "",
}

#: A segment ID that cannot be given, as the CNI error ADD answers with (and the field it names).
REFUSALS: dict[str, tuple[type[CniError], str]] = {
    "outside-pool": (InvalidConfig, "spec.vlan.id"),
    "in-use": (AddressConflict, "spec.vlan.id"),
    "exhausted": (PoolExhausted, "spec.vlan.idPool"),
}


def _parents(obj: Network | ClusterNetwork, cls: NetworkClass | None) -> tuple[str, ...]:
    """The parent NICs of a network's segment: a ClusterNetwork's own, else its class's."""
    parents = cls.parents if cls else ()
    if isinstance(obj, ClusterNetwork):
        return obj.parents if obj.type == "Access" else obj.parents or parents
    return parents


#: Between a network's key and its old bridge: the key of a segment its network left (another ID or kind) while
#: pods may still sit on its bridge; its ID stays held until the reconciler removes it, unused.
RETIRED = "@"


def retired_key(network: str, bridge: str) -> str:
    return f"{network}{RETIRED}{bridge}"


class Segments:
    def __init__(self, store: SegmentStore, links: NodeLinks, clock: Callable[[], float], cluster: bool = False) -> None:
        self.store = store
        self.links = links
        self.clock = clock
        # In a cluster the controller hands out VLAN IDs and VNIs (Network status): a node that picked
        # one on its own could disagree with the other nodes, so it waits for the controller's.
        self.cluster = cluster
        # bridge name -> index of bridges known to be set up: ADD then costs no netlink call for
        # the segment; a bridge removed behind our back is noticed when a port cannot join it
        self._ready: dict[str, int] = {}
        # bridge name -> what its links were last made from (``SegmentPlan.links``): the reconcile loop's ``ensure``
        # makes them again once its class says otherwise (a VXLAN remote gone or added, another parent NIC)
        self._applied: dict[str, tuple[str, str, VxlanSpec | None]] = {}
        # bridge name -> its MTU (its uplink's), read when it is set up and on each reconcile round: a pod's interface
        # gets it with no netlink call of its own on ADD (~0.8 ms through pyroute2)
        self._mtu: dict[str, int] = {}
        # the keys of old segments a network edited back to the ID it had took up again (``taken_back``)
        self._taken_back: set[str] = set()
        self._taken_back_lock = threading.Lock()

    def bridge_index(self, net: ResolvedNetwork, bridge: str) -> int:
        """The index of ``net``'s bridge, planned already by the caller: no second plan on ADD's path
        when the bridge is known to be up."""
        known = self._ready.get(bridge)
        if known is not None:
            return known
        try:
            return self.ensure(net)[1]
        except SegmentInUse:
            known = self._ready.get(bridge)  # its class edited while pods are on it: served as it is
            if known is None:
                raise
            return known

    def taken_back(self) -> list[str]:
        """The old segments (their keys) networks took up again since last asked: what the node reported of each
        under its own key goes (the reconcile round detaches it)."""
        with self._taken_back_lock:
            keys, self._taken_back = sorted(self._taken_back), set()
        return keys

    def bridge_mtu(self, bridge: str) -> int | None:
        """The bridge's MTU as last read (None: not known; the driver reads it itself)."""
        return self._mtu.get(bridge)

    def lost(self, bridge: str) -> bool:
        """Whether a bridge we had set up has been removed behind our back (then it is forgotten, and the
        next ``bridge_index`` makes it again): the answer to a port that could not join it."""
        if bridge not in self._ready or self.links.index(bridge) is not None:
            return False
        self._ready.pop(bridge, None)
        self._mtu.pop(bridge, None)
        return True

    def plan(self, net: ResolvedNetwork) -> SegmentPlan:
        """The segment of ``net``, assigning (and recording) its ID the first time."""
        obj, cls = net.obj, net.network_class
        kind = segment_kind(obj, cls)
        with self.store.transaction():
            rec = self.store.get_segment(net.key)
            wanted = (granted_id(obj, kind) if self.cluster else obj.status_vlan_id or obj.vlan_id) if kind.tagged else None
            if self.cluster and kind.tagged and wanted is None:
                raise TryAgainLater(f"{net.key} has no {kind.id_label} yet: the Plexus controller assigns it "
                                    "(is plexus-controller running?)", "status.vlanID")
            if rec is None or rec.kind != kind.name or (wanted is not None and rec.id != wanted):
                if rec is not None:  # its old segment keeps its ID while pods sit on its bridge (the reconciler
                    self.store.delete_segment(net.key)  # removes it once none does)
                    self.store.put_segment(replace(rec, network=retired_key(net.key, rec.bridge)))
                back = self.store.get_segment(retired_key(net.key, kind.bridge(wanted, net.key))) \
                    if wanted is not None else None
                if back is not None and back.kind == kind.name:  # edited back to the ID it had: that segment again
                    self.store.delete_segment(back.network)
                    with self._taken_back_lock:
                        self._taken_back.add(back.network)
                ident = 0
                if kind.tagged:
                    try:
                        ident = pick_id(kind, id_pool(obj, cls), self.store.segment_ids(kind.name), wanted, net.key)
                    except IdUnavailable as exc:
                        error, field = REFUSALS[exc.reason]
                        raise error(f"{net.key}: {exc}", field) from None
                rec = SegmentRecord(net.key, kind.name, ident, kind.bridge(ident, net.key), cls.meta.name if cls else "")
                self.store.put_segment(rec)
        parents = _parents(obj, cls)
        if kind.needs_parent and not parents:
            return SegmentPlan(rec)
        return SegmentPlan(rec, kind.uplink, parents[0] if parents else "", cls.vxlan if cls else None)

    def ensure(self, net: ResolvedNetwork) -> tuple[SegmentRecord, int]:
        """Make the bridge (and uplink) exist on the node as the class says now; return the record and the
        bridge's index. For a bridge set up already from the same class, only its MTU is read again (an uplink's
        changed since); that the class changed is seen here, on the reconcile loop's round (an ADD asks
        ``bridge_index``); when making its links again fails, the bridge keeps serving ADDs as it was, and the next
        round tries again (after a restart too, where the edit is refused while pods are on it)."""
        plan = self.plan(net)
        rec = plan.record
        known = self._ready.get(rec.bridge)
        if known is not None and self._applied.get(rec.bridge) == plan.links:
            self._read_mtu(rec.bridge, known)  # an uplink's MTU changed since is seen on the round
            return rec, known
        try:
            index = self.links.ensure_bridge(rec.bridge, UPLINKS[plan.uplink](self.links, plan))
        except SegmentInUse:
            self._serve_as_it_is(rec.bridge)
            raise
        self.mark_ready(rec, net.obj.meta.generation)
        self._ready[rec.bridge] = index
        self._applied[rec.bridge] = plan.links
        self._read_mtu(rec.bridge, index)
        return rec, index

    def _serve_as_it_is(self, bridge: str) -> None:
        """A bridge whose links cannot be made as its class now says while pods are on it keeps serving ADDs as it is,
        until they are gone, as one set up before the edit does; after a restart, too, when nothing is known to be set
        up yet (not ``_applied``: each round tries the edit again)."""
        if bridge in self._ready:
            return
        index = self.links.index(bridge)
        if index is not None:
            self._ready[bridge] = index
            self._read_mtu(bridge, index)

    def _read_mtu(self, bridge: str, index: int) -> None:
        """Keep the bridge's MTU; one that cannot be read is forgotten (a driver then reads it at its build, where a
        bridge gone is noticed as it is today)."""
        try:
            self._mtu[bridge] = self.links.mtu(index)
        except Exception:  # noqa: BLE001 - a netlink error of any kind: the ADD path reads it again
            self._mtu.pop(bridge, None)

    def remove(self, rec: SegmentRecord) -> None:
        """Take a deleted Network's bridge and the uplink Plexus made for it off the node."""
        self._ready.pop(rec.bridge, None)
        self._applied.pop(rec.bridge, None)
        self._mtu.pop(rec.bridge, None)
        self.links.delete(rec.bridge)
        uplink = SEGMENT_KINDS[rec.kind].uplink_name(rec.id)
        if uplink:
            self.links.delete(uplink)
        with self.store.transaction():
            self.store.delete_segment(rec.network)

    def mark_ready(self, rec: SegmentRecord, generation: int = 0) -> None:
        if rec.status.get("readyNodeAttachementsCount") == 1:
            return
        now = self.clock()
        conds = tuple(rec.status.get("conditions", ()))
        conds = set_condition(conds, "AllNodeAttachementsAreReady", True, "AllNodeInterfaceAttachmentsAreReady",
                              "All node interface attachments are ready", now)
        conds = set_condition(conds, "Ready", True, "NetworkReady", "Network is operational", now)
        status = {
            "bridgeName": rec.bridge, **SEGMENT_KINDS[rec.kind].status_ids(rec.id),
            "nodeAttachementsCount": 1, "readyNodeAttachementsCount": 1, "conditions": list(conds),
            "observedGeneration": generation or 1, "lastUpdate": rfc3339(now),
        }
        with self.store.transaction():
            self.store.put_segment(replace(rec, status=status))

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

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from cni.errors import AddressConflict, CniError, InvalidConfig, PoolExhausted, TryAgainLater
from ipamd.ipam.addresses import ResolvedNetwork
from ipamd.model.conditions import drop_condition, set_condition
from ipamd.model.objects import ClusterNetwork, Network, NetworkClass, VxlanSpec
from ipamd.model.segments import (
    ID_CHANGE,
    SEGMENT_KINDS,
    IdUnavailable,
    SegmentInUse,
    SegmentKind,
    granted_id,
    id_pool,
    pick_id,
    segment_kind,
)
from ipamd.model.timefmt import rfc3339
from ipamd.store.protocols import AttachmentStore, SegmentStore
from ipamd.store.records import SegmentRecord


class SegmentsStore(SegmentStore, AttachmentStore, Protocol):
    """The segments and, to know whether pods are on a bridge, the attachments (the node's store is both)."""


class NodeLinks(Protocol):
    """The node links a segment needs (``ipamd.netlink.node`` makes them through netlink)."""

    # ``busy``: the node's attachments have pods on the segment's bridge (a macvlan pod is no port of it, so the
    # kernel does not tell): an uplink that is not the one asked for is then left as it is (``SegmentInUse``)

    def ensure_bridge(self, name: str, uplink: str, busy: bool) -> int: ...

    def ensure_vlan(self, parent: str, vlan_id: int, busy: bool) -> str: ...

    def ensure_vxlan(self, vni: int, spec: VxlanSpec, busy: bool) -> str: ...

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


def wire_of(links: tuple[str, str, VxlanSpec | None]) -> tuple[str, str, VxlanSpec | None]:
    """What of a segment's links (``SegmentPlan.links``) its pods' wire is: all but a VXLAN's remotes, whose flood
    list follows the class under live pods; any other edit makes the uplink again (or takes it off)."""
    uplink, parent, vxlan = links
    return uplink, parent, replace(vxlan, remotes=()) if vxlan is not None else None


#: How each kind of uplink is made (``busy``: pods are on its bridge): it returns the link to enslave to the bridge.
UPLINKS: dict[str, Callable[[NodeLinks, SegmentPlan, bool], str]] = {
    "vlan": lambda links, plan, busy: links.ensure_vlan(plan.parent, plan.record.id, busy),
    "vxlan": lambda links, plan, busy: links.ensure_vxlan(plan.record.id, plan.vxlan or VxlanSpec(()), busy),
    "nic": lambda links, plan, busy: plan.parent,
    "": lambda links, plan, busy: "",
}

#: A segment ID that cannot be given, as the CNI error ADD answers with (and the field it names).
REFUSALS: dict[str, tuple[type[CniError], str]] = {
    "outside-pool": (InvalidConfig, "spec.vlan.id"),
    "in-use": (AddressConflict, "spec.vlan.id"),
    "exhausted": (PoolExhausted, "spec.vlan.idPool"),
    "no-pool": (InvalidConfig, "spec.vlan.id"),
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


def network_of(key: str) -> str:
    """The network a segment record is of: its own key, or the key of the network a retired one was left by."""
    return key.split(RETIRED, 1)[0]


#: In the status of a network's segment record: the key of the old segment it took back, whose report (under that
#: key) is still to be withdrawn. Committed with the take-back, cleared once the reconcile round owed the report's
#: delete: a daemon killed in between (an ADD's take-back waits up to a round) still withdraws it after its restart.
TAKEN_BACK = "takenBack"


def _without_taken_back(status: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k != TAKEN_BACK}


class Segments:
    def __init__(self, store: SegmentsStore, links: NodeLinks, clock: Callable[[], float], cluster: bool = False) -> None:
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
        """The old segments (their keys) networks took up again whose reports are still to be withdrawn: what the node
        reported of each under its own key goes (the reconcile round detaches it, then calls ``withdrawn``). Read from
        the store, so a take-back before a kill is not forgotten."""
        with self.store.transaction():
            return sorted(str(rec.status[TAKEN_BACK]) for rec in self.store.segments() if TAKEN_BACK in rec.status)

    def withdrawn(self, retired: str) -> None:
        """The report of the old segment ``retired`` taken back is owed its delete: its network's record stops saying
        so (unless it took back another since)."""
        with self.store.transaction():
            rec = self.store.get_segment(network_of(retired))
            if rec is not None and rec.status.get(TAKEN_BACK) == retired:
                self.store.put_segment(replace(rec, status=_without_taken_back(rec.status)))

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
            if rec is not None and not self.cluster and rec.kind == kind.name and wanted not in (None, rec.id):
                users = self._attachments_on(rec.bridge)
                if users:  # moved once its old segment is unused (as the controller moves one in a cluster)
                    rec, wanted = self._change_pending(rec, kind, wanted or 0), rec.id
            elif rec is not None and any(c.get("type") == ID_CHANGE for c in rec.status.get("conditions", ())):
                rec = self._no_change_pending(rec)
            if rec is None or rec.kind != kind.name or (wanted is not None and rec.id != wanted):
                if rec is not None:  # its old segment keeps its ID while pods sit on its bridge (the reconciler
                    self.store.delete_segment(net.key)  # removes it once none does); its report is wanted again
                    self.store.put_segment(replace(rec, network=retired_key(net.key, rec.bridge),
                                                   status=_without_taken_back(rec.status)))
                rec = self._assign(net, kind, wanted)
        parents = _parents(obj, cls)
        if kind.needs_parent and not parents:
            return SegmentPlan(rec)
        return SegmentPlan(rec, kind.uplink, parents[0] if parents else "", cls.vxlan if cls else None)

    def _assign(self, net: ResolvedNetwork, kind: SegmentKind, wanted: int | None) -> SegmentRecord:
        """A new segment record for ``net`` (in the caller's transaction): the old segment it left when it is edited
        back to it (its bridge, pods and all), else a free ID and a bridge no other network has."""
        cls = net.network_class
        ident = self._pick(net, kind, None) if kind.tagged and wanted is None else wanted or 0
        bridge = self._free_bridge(kind, ident, net.key)
        back = self.store.get_segment(retired_key(net.key, bridge))
        status: dict[str, Any] = {}
        if back is not None and back.kind == kind.name:  # edited back to the segment it had: that segment again
            self.store.delete_segment(back.network)
            status[TAKEN_BACK] = back.network  # its report withdrawn by the round (``taken_back``), even after a kill
        if wanted is not None:  # checked once its old segment, which holds it, is taken back
            ident = self._pick(net, kind, wanted)
        rec = SegmentRecord(net.key, kind.name, ident, bridge, cls.meta.name if cls else "", status)
        self.store.put_segment(rec)
        return rec

    def _pick(self, net: ResolvedNetwork, kind: SegmentKind, wanted: int | None) -> int:
        try:
            return pick_id(kind, id_pool(net.obj, net.network_class), self.store.segment_ids(kind.name), wanted,
                           net.key)
        except IdUnavailable as exc:
            error, field = REFUSALS[exc.reason]
            raise error(f"{net.key}: {exc}", field) from None

    def _free_bridge(self, kind: SegmentKind, ident: int, key: str) -> str:
        """The bridge of a new segment: its name, unless another network's segment has it already (two untagged
        networks' hashes may clash: they would share one wire), then the next of its candidates. Recorded, so kept
        across restarts; a bridge named before is never renamed."""
        if kind.tagged:
            return kind.bridge(ident, key)
        holders = {rec.bridge: network_of(rec.network) for rec in self.store.segments()}
        attempt = 0
        while holders.get(kind.bridge(ident, key, attempt), key) != key:
            attempt += 1
        return kind.bridge(ident, key, attempt)

    def _change_pending(self, rec: SegmentRecord, kind: SegmentKind, wanted: int) -> SegmentRecord:
        """A lone node's network whose ``spec.vlan.id`` asks another ID while pods are on its bridge keeps its segment
        (moved under them, they would be cut off from the pods after them), and its status shows the change pending,
        as the controller's does in a cluster. Written once: its message counts no pods, or every ADD on the old
        segment (each one more) would write the record again."""
        message = (f"spec.vlan.id asks for {kind.id_label} {wanted}; {kind.id_label} {rec.id} is kept while "
                   "this node's pods still use it: the network moves once none does")
        conds = tuple(rec.status.get("conditions", ()))
        if any(c.get("type") == ID_CHANGE and c.get("message") == message for c in conds):
            return rec
        conds = set_condition(conds, ID_CHANGE, True, "PodsOnOldSegment", message, self.clock())
        rec = replace(rec, status={**rec.status, "conditions": list(conds)})
        self.store.put_segment(rec)
        return rec

    def _no_change_pending(self, rec: SegmentRecord) -> SegmentRecord:
        """The ID change shown pending goes from the status once none is asked (``spec.vlan.id`` edited back)."""
        conds = drop_condition(rec.status.get("conditions", ()), ID_CHANGE)
        rec = replace(rec, status={**rec.status, "conditions": list(conds)})
        self.store.put_segment(rec)
        return rec

    def _attachments_on(self, bridge: str) -> int:
        """How many of the node's attachments have an interface on ``bridge``: a pod's macvlan is no port of it
        (it is its child, in the pod's namespace), so the kernel's view of its ports does not tell."""
        return sum(1 for att in self.store.attachments() if any(i.bridge == bridge for i in att.interfaces))

    def ensure(self, net: ResolvedNetwork) -> tuple[SegmentRecord, int]:
        """Make the bridge (and uplink) exist on the node as the class says now; return the record and the
        bridge's index. For a bridge set up already from the same class, only its MTU is read again (an uplink's
        changed since); that the class changed is seen here, on the reconcile loop's round (an ADD asks
        ``bridge_index``); when making its links again fails, the bridge keeps serving ADDs as it was, and the next
        round tries again (after a restart too, where the edit is refused while pods are on it)."""
        plan = self.plan(net)
        rec = plan.record
        known, applied = self._ready.get(rec.bridge), self._applied.get(rec.bridge)
        if known is not None and applied == plan.links:
            self._read_mtu(rec.bridge, known)  # an uplink's MTU changed since is seen on the round
            return rec, known
        try:
            users = self._users_under_edit(rec, applied, plan.links)
            if not plan.uplink:
                self._drop_own_uplink(rec, applied, users)
            busy = users > 0
            index = self.links.ensure_bridge(rec.bridge, UPLINKS[plan.uplink](self.links, plan, busy), busy)
        except SegmentInUse:
            self._serve_as_it_is(rec.bridge)
            raise
        self.mark_ready(rec, net.obj.meta.generation)
        self._ready[rec.bridge] = index
        self._applied[rec.bridge] = plan.links
        self._read_mtu(rec.bridge, index)
        return rec, index

    def _users_under_edit(self, rec: SegmentRecord, applied: tuple[str, str, VxlanSpec | None] | None,
                          links: tuple[str, str, VxlanSpec | None]) -> int:
        """How many of the node's attachments are on the bridge, where making its links as the class says now may
        change their wire: an edit of what was made here (``applied``) is refused while any is; after a restart
        nothing is known to be applied, so the links there may be the class's before an edit, and the count goes
        down to the link layer (which sees the bridge's ports only). Where what was made here is still the class's
        wire (a VXLAN's remotes edited, a lost bridge made again), none is read: 0."""
        if applied is None:
            return self._attachments_on(rec.bridge)
        if wire_of(applied) != wire_of(links):
            self._refuse_while_used(rec, "its class's uplink was edited", self._attachments_on(rec.bridge))
        return 0

    @staticmethod
    def _refuse_while_used(rec: SegmentRecord, why: str, users: int) -> None:
        """The uplink of a segment is not made again (nor taken off) under its pods: they would change wires under
        their feet. Counted from the node's attachments, not the bridge's ports: a macvlan pod is no port of it."""
        if users:
            field = "spec.vxlan" if rec.kind == "vxlan" else "parentNodeNetworkInterfaces"
            raise SegmentInUse(f"bridge {rec.bridge}: {why}, and {users} attachment(s) are on it: the edit is applied "
                               "once none is", field)

    def _drop_own_uplink(self, rec: SegmentRecord, applied: tuple[str, str, VxlanSpec | None] | None,
                         users: int) -> None:
        """A segment whose class names no parent NIC any more stays on the node's bridge alone: the uplink Plexus made
        for it on the old parent (``plx-vl-<id>``) is taken off (deleted) once no pod is on the bridge (``users``,
        counted by ``_users_under_edit``). Looked for when it was made here (``applied``), or, after a restart, when
        the kernel has it."""
        uplink = SEGMENT_KINDS[rec.kind].uplink_name(rec.id)
        made = applied[0] if applied is not None else self.links.index(uplink) if uplink else None
        if not uplink or not made:
            return
        self._refuse_while_used(rec, f"its class names no parent NIC, and {uplink} is its uplink", users)
        self.links.delete(uplink)

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
        """Take a deleted Network's bridge and the uplink Plexus made for it off the node; a bridge another record has
        (its network's live segment, taken up again) stays, and only ``rec`` goes."""
        with self.store.transaction():
            shared = any(other.bridge == rec.bridge and other.network != rec.network for other in self.store.segments())
        if not shared:
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
        with self.store.transaction():  # written on the record as it is now: a take-back's mark (an ADD's plan, since
            current = self.store.get_segment(rec.network)  # ``rec`` was read) is kept, another segment left alone
            if current is None or (current.kind, current.id, current.bridge) != (rec.kind, rec.id, rec.bridge):
                return
            taken = {TAKEN_BACK: current.status[TAKEN_BACK]} if TAKEN_BACK in current.status else {}
            self.store.put_segment(replace(current, status={**taken, **status}))

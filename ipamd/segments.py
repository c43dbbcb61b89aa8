"""L2 segments: which VLAN ID (or VXLAN VNI) a Network gets, and its bridge and uplink on this node.

A class with ``spec.vlan`` gives each Network a VLAN ID from its ``idPool`` (the one the Network
asks for when it is free), a bridge ``plx-br-<id>`` and, where the class names a parent NIC, the
802.1Q sub-interface as the bridge's uplink. A class with ``spec.vxlan`` does the same with a VNI
and a VXLAN device. A class with neither gives an untagged bridge per Network. The assignment is
recorded in the store, so it survives restarts and two Networks never share an ID.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from pyroute2 import IPRoute

from cni import links
from cni.errors import AddressConflict, InvalidConfig, PoolExhausted, TryAgainLater
from ipamd.ipam import ResolvedNetwork, now_rfc3339, set_condition
from ipamd.objects import ClusterNetwork, Network, NetworkClass
from ipamd.store import SegmentRecord, Store


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """What a segment needs on the node."""

    record: SegmentRecord
    uplink_kind: str  # vlan | vxlan | nic | ""
    parent: str = ""


def _in_pool(ident: int, pool: tuple[tuple[int, int], ...]) -> bool:
    return any(a <= ident <= b for a, b in pool)


def _pick(pool: tuple[tuple[int, int], ...], taken: dict[int, str], wanted: int | None, key: str,
          what: str) -> int:
    if wanted is not None:
        if pool and not _in_pool(wanted, pool):
            raise InvalidConfig(f"{what} {wanted} asked for by {key} is not in its class's pool", "spec.vlan.id")
        holder = taken.get(wanted)
        if holder not in (None, key):
            raise AddressConflict(f"{what} {wanted} asked for by {key} is already used by {holder}", "spec.vlan.id")
        return wanted
    for a, b in pool:
        for ident in range(a, b + 1):
            if taken.get(ident) in (None, key):
                return ident
    raise PoolExhausted(f"no free {what} left in the class's pool for {key}", "spec.vlan.idPool")


def segment_kind(obj: Network | ClusterNetwork, cls: NetworkClass | None) -> str:
    """``vlan``, ``vxlan`` or ``none`` (an untagged bridge): what segment a Network gets. The nodes and
    the controller both ask this, so they never disagree on whether an ID is to be handed out."""
    if isinstance(obj, ClusterNetwork) and obj.type == "Access":
        return "none"
    if cls is not None and cls.vxlan is not None:
        return "vxlan"
    if isinstance(obj, ClusterNetwork) or (cls is not None and cls.vlan_pool):
        return "vlan"
    return "none"


def granted_id(obj: Network | ClusterNetwork) -> int | None:
    """In a cluster, the VLAN ID or VNI a node may use: the one the controller wrote into the status, or
    a ClusterNetwork's own (fixed by the administrator; the controller honours it). A Network's
    ``spec.vlan.id`` is only a request until the controller grants it."""
    return obj.status_vlan_id or (obj.vlan_id if isinstance(obj, ClusterNetwork) else None)


class Segments:
    def __init__(self, store: Store, clock: Callable[[], float], cluster: bool = False) -> None:
        self.store = store
        self.clock = clock
        # In a cluster the controller hands out VLAN IDs and VNIs (Network status): a node that picked
        # one on its own could disagree with the other nodes, so it waits for the controller's.
        self.cluster = cluster
        # bridge name -> index of bridges known to be set up: ADD then costs no netlink call for
        # the segment; a bridge removed behind our back is noticed when a port cannot join it
        self._ready: dict[str, int] = {}

    def forget(self, bridge: str) -> None:
        self._ready.pop(bridge, None)

    def is_cached(self, bridge: str) -> bool:
        return bridge in self._ready

    def bridge_index(self, host: IPRoute, net: ResolvedNetwork, bridge: str) -> int:
        """The index of ``net``'s bridge, planned already by the caller: no second plan on ADD's path
        when the bridge is known to be up."""
        known = self._ready.get(bridge)
        return known if known is not None else self.ensure(host, net)[1]

    def plan(self, net: ResolvedNetwork) -> SegmentPlan:
        """The segment of ``net``, assigning (and recording) its ID the first time."""
        obj = net.obj
        cls = net.network_class
        pool: tuple[tuple[int, int], ...]
        parents: tuple[str, ...]
        with self.store.transaction():
            rec = self.store.get_segment(net.key)
            kind = segment_kind(obj, cls)
            pool, parents = (), cls.parents if cls else ()
            if kind == "vxlan":
                assert cls is not None and cls.vxlan is not None
                pool, parents = cls.vxlan.vni_pool, ()
            elif isinstance(obj, ClusterNetwork):
                parents = obj.parents if obj.type == "Access" else obj.parents or parents
                if obj.vlan_id is None and cls is not None:  # a fixed ID is the administrator's, not the pool's
                    pool = cls.vlan_pool
            elif kind == "vlan" and cls is not None:
                pool = cls.vlan_pool
            wanted = None if kind == "none" else granted_id(obj) if self.cluster else obj.status_vlan_id or obj.vlan_id
            if self.cluster and kind != "none" and wanted is None:
                raise TryAgainLater(f"{net.key} has no {'VNI' if kind == 'vxlan' else 'VLAN ID'} yet: the Plexus "
                                    "controller assigns it (is plexus-controller running?)", "status.vlanID")
            if rec is None or rec.kind != kind or (wanted is not None and rec.id != wanted):
                ident = 0
                if kind != "none":
                    ident = _pick(pool, self.store.segment_ids(kind), wanted, net.key,
                                  "VNI" if kind == "vxlan" else "VLAN ID")
                rec = SegmentRecord(net.key, kind, ident, links.bridge_name(kind, ident, net.key),
                                    cls.meta.name if cls else "")
                self.store.put_segment(rec)
        if kind == "vxlan":
            return SegmentPlan(rec, "vxlan")
        if kind == "vlan" and parents:
            return SegmentPlan(rec, "vlan", parents[0])
        if kind == "none" and parents:
            return SegmentPlan(rec, "nic", parents[0])
        return SegmentPlan(rec, "")

    def ensure(self, host: IPRoute, net: ResolvedNetwork) -> tuple[SegmentRecord, int]:
        """Make the bridge (and uplink) exist on the node; return the record and the bridge's index."""
        plan = self.plan(net)
        rec = plan.record
        known = self._ready.get(rec.bridge)
        if known is not None:
            return rec, known
        uplink = ""
        if plan.uplink_kind == "vlan":
            uplink = links.ensure_vlan(host, plan.parent, rec.id)
        elif plan.uplink_kind == "vxlan":
            assert net.network_class is not None and net.network_class.vxlan is not None
            vx = net.network_class.vxlan
            uplink = links.ensure_vxlan(host, rec.id, vx.underlay, vx.remotes, vx.group, vx.port, vx.local_ip)
        elif plan.uplink_kind == "nic":
            uplink = plan.parent
        index = links.ensure_bridge(host, rec.bridge, uplink)
        self.mark_ready(rec)
        self._ready[rec.bridge] = index
        return rec, index

    def remove(self, host: IPRoute, rec: SegmentRecord) -> None:
        """Take a deleted Network's bridge and the uplink Plexus made for it off the node."""
        self.forget(rec.bridge)
        links.delete_link(host, rec.bridge)
        if rec.kind == "vlan":
            links.delete_link(host, f"plx-vl-{rec.id}")
        elif rec.kind == "vxlan":
            links.delete_link(host, f"plx-vx-{rec.id}")
        with self.store.transaction():
            self.store.delete_segment(rec.network)

    def mark_ready(self, rec: SegmentRecord) -> None:
        if rec.status.get("readyNodeAttachementsCount") == 1:
            return
        now = self.clock()
        conds = tuple(rec.status.get("conditions", ()))
        conds = set_condition(conds, "AllNodeAttachementsAreReady", True, "AllNodeInterfaceAttachmentsAreReady",
                              "All node interface attachments are ready", now)
        conds = set_condition(conds, "Ready", True, "NetworkReady", "Network is operational", now)
        status = {
            "bridgeName": rec.bridge, "vlanID": rec.id if rec.kind == "vlan" else 0,
            **({"vni": rec.id} if rec.kind == "vxlan" else {}),
            "nodeAttachementsCount": 1, "readyNodeAttachementsCount": 1, "conditions": list(conds),
            "observedGeneration": 1, "lastUpdate": now_rfc3339(now),
        }
        with self.store.transaction():
            self.store.put_segment(replace(rec, status=status))

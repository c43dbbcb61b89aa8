"""The cluster controller: the work that must be done once for the cluster, not once per node.

Runs inside ``plexus-ipamd --mode controller`` (or ``--controller`` in a node daemon) and acts only
while it holds the ``plexus-controller`` Lease (``ipamd.kube.elector``: one acting controller, the
others waiting to take over when its lease is not renewed):
- gives each Network (and VLAN ClusterNetwork) its VLAN ID or VNI from its class's pool — the one it
  asks for when free, else a condition says why — with the same picker and rules as a lone node
  (``ipamd.model.segments``), and writes its status as seed 000 shows it (``bridgeName``, ``vlanID``,
  conditions ``Ready`` and ``AllNodeAttachementsAreReady``, counters, ``observedGeneration``); an ID
  comes back to the pool with its Network;
- allocates the ``Auto`` IPAddresses users create, before any pod uses them (``phase: Allocated``);
- ends the quarantine of orphaned IPAddressLeases whose TTL is over;
- gives back the address blocks and leases of a node that vanished (``ipamd.kube.reclaim``).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes import client
from prometheus_client import Gauge

from ipamd.ipam.allocator import in_ranges, never_leased, pick_free, subnet_for, to_int, to_text
from ipamd.ipam.blocks import block_name, window_of
from ipamd.kube import heartbeat
from ipamd.kube.blocks import KIND as BLOCK_KIND
from ipamd.kube.blocks import parse_block
from ipamd.kube.client import TimedApiClient
from ipamd.kube.elector import LeaderElector
from ipamd.kube.errors import reason_of, status_of
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import (
    NODE_LABEL,
    POOL_LABEL,
    QUARANTINE_MANAGER,
    existing_holders,
    lease_body,
    pool_label,
    quarantined_at,
)
from ipamd.kube.reclaim import claim_holders, may_hold_addresses, silent_nodes, stray_leases, vanished
from ipamd.kube.server_clock import ServerClock
from ipamd.model.annotations import names_ip_address
from ipamd.model.conditions import drop_condition, set_condition
from ipamd.model.names import segment_of_bridge
from ipamd.model.objects import (
    CLUSTER_NETWORK,
    INT64_MAX,
    IP_ADDRESS_KINDS,
    IPAM_CLAIM,
    NETWORK,
    POOL_KINDS,
    SPEC_ANNOTATION,
    USED_BY_ANNOTATION,
    AddressPool,
    ClusterNetwork,
    IPAddressObject,
    Network,
    Subnet,
    parse_duration,
)
from ipamd.model.segments import (
    ID_CHANGE,
    IdUnavailable,
    SegmentKind,
    granted_id,
    id_pool,
    pick_id,
    pods_on_segment,
    segment_kind,
    status_segment,
)
from ipamd.model.timefmt import rfc3339
from ipamd.model.used_by import parse_user_text
from ipamd.sources.base import ObjectSource
from ipamd.sources.lookups import class_of, pool_of_ip

log = logging.getLogger(__name__)
NODE_SEEN_S = 60.0  # a Node object seen is believed this long before it is asked for again
HEARTBEATS_READ_S = 30.0  # the nodes' heartbeats are listed this often (each is renewed every minute)
VANISHED_LOOK_S = 60.0  # a vanished node that keeps leases (held by objects that still exist) is looked at this often
UNUSED_GONE_S = 120.0  # a user's IPAddress gone this long, its lease taken up by no node, named by no pod: released
ALLOCATED_S = 60.0  # a user's Auto IPAddress just leased is not leased again this long (the caches catch up)
ATTACHMENT_KIND = "NodeNetworkInterfaceAttachment"
OUTSIDE_POOL = "IPAddressOutsidePool"  # a node's reason too (``ipamd.ipam.addresses``): a family its pool lacks
MOVE_LOOK_S = 30.0  # the pods on a network's segment, while they hold back the ID its spec.vlan.id asks, listed this often


class ObjectWrites(Protocol):
    """The writes the controller makes (``ipamd.kube.resources.CustomObjects``)."""

    def create(self, kind: str, body: dict[str, Any], namespace: str = "") -> Any: ...

    def patch(self, kind: str, name: str, body: dict[str, Any], namespace: str = "") -> Any: ...

    def patch_status(self, kind: str, name: str, status: dict[str, Any], namespace: str = "",
                     resource_version: str = "", *, field_manager: str = "") -> Any: ...

    def delete(self, kind: str, name: str, namespace: str = "", resource_version: str = "") -> Any: ...

    def get(self, kind: str, name: str, namespace: str = "") -> dict[str, Any]: ...


class NotLeading(BaseException):
    """A write of a round that outlasted the renew deadline: the rest of the round is no longer this replica's. Not an
    ``Exception``: the steps' per-object handlers (log it, go on with the next object) must not catch it, or a round
    of thousands of objects would try and log each one."""


class WhileLeading:
    """The controller's writes, each made only before ``until()`` (monotonic): the renew deadline while a round runs as
    leader. A round longer than that (a slow or hung API server, thousands of objects) stops at its next write instead
    of acting beside a standby that may have taken the Lease over; reads go through."""

    def __init__(self, objects: ObjectWrites, until: Callable[[], float]) -> None:
        self._objects, self._until = objects, until
        # the writes themselves, unguarded: for what completes or undoes a write made before the deadline (an
        # allocation's status after its lease, one node's block deletes and their restore), never left half made
        self.raw = objects

    def check(self) -> None:
        if time.monotonic() >= self._until():
            raise NotLeading("the controller's Lease was not renewed within its renew deadline during this round: "
                             "its remaining writes are left to the next round")

    def create(self, kind: str, body: dict[str, Any], namespace: str = "") -> Any:
        self.check()
        return self._objects.create(kind, body, namespace)

    def patch(self, kind: str, name: str, body: dict[str, Any], namespace: str = "") -> Any:
        self.check()
        return self._objects.patch(kind, name, body, namespace)

    def patch_status(self, kind: str, name: str, status: dict[str, Any], namespace: str = "",
                     resource_version: str = "", *, field_manager: str = "") -> Any:
        self.check()
        extra = {"field_manager": field_manager} if field_manager else {}
        return self._objects.patch_status(kind, name, status, namespace, resource_version=resource_version, **extra)

    def delete(self, kind: str, name: str, namespace: str = "", resource_version: str = "") -> Any:
        self.check()
        return self._objects.delete(kind, name, namespace, resource_version=resource_version)

    def get(self, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        return self._objects.get(kind, name, namespace)


class ClusterSource(ObjectSource, Protocol):
    """The cluster's objects as the controller reads them (``ipamd.kube.source.KubernetesSource``)."""

    @property
    def node_name(self) -> str: ...

    @property
    def objects(self) -> ObjectWrites: ...

    def items(self, kind: str) -> list[dict[str, Any]]: ...

    def by_index(self, kind: str, index: str, key: Any) -> list[dict[str, Any]]: ...


NODE_BLOCKS = Gauge("plexus_node_blocks", "Address blocks of a pool a node holds", ["pool", "node"])
POOL_ADDRESSES = Gauge("plexus_pool_addresses", "Addresses of a pool, by state: used (leased to a holder), "
                       "quarantined (released, waiting out leaseTTL), free", ["pool", "state"])


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """A pool's addresses by state, as its status and the gauges show them."""

    size: int
    used: int
    quarantined: int
    blocks: tuple[tuple[str, int], ...] = ()  # (node, its blocks of the pool), by node
    outside: int = 0  # of used and quarantined, those outside the ranges (a Static's, ranges narrowed since)

    @property
    def free(self) -> int:
        """What the pool can still hand out: its ranges less what is held or quarantined in them."""
        return max(self.size - (self.used + self.quarantined - self.outside), 0)

    def render(self) -> dict[str, Any]:
        """The status; a count past what a Kubernetes integer holds (an IPv6 /64 has 2**64 addresses) is capped."""
        return {"size": min(self.size, INT64_MAX), "used": self.used, "quarantined": self.quarantined,
                "free": min(self.free, INT64_MAX),
                "blocks": [{"node": node, "count": n} for node, n in self.blocks]}


def _in_ranges(pool: AddressPool, ip: Any) -> bool:
    try:
        return in_ranges(pool, to_int(str(ip)))
    except ValueError:
        return False  # (not an address: counted as held, not as one of the ranges)


def _allocated_status(address: str, subnet: Subnet, now: float) -> dict[str, Any]:
    """The status of a user's Auto IPAddress given ``address`` of ``subnet`` (no pod uses it yet)."""
    conds = set_condition((), "Allocated", True, "IPAddressAllocated", "", now)
    return {"phase": "Allocated", "address": address, "network": str(subnet.network),
            "routes": [r.to_dict() for r in subnet.routes], "usedByPods": [], "conditions": list(conds)}


def _family(address: str) -> int:
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return 0


def asked_family(obj: IPAddressObject, pool: AddressPool, held: str) -> int:
    """The family a user's Auto IPAddress takes its address in, as a node's ``asked_family`` says: its
    ``spec.ipFamily``, else that of the address it holds (``held``) while its pool still has it (a pool gaining a
    family never flips it), else the pool's first."""
    if obj.family:
        return obj.family
    family = _family(held)
    return family if family in pool.families or not pool.families else pool.families[0]


def _refused_status(obj: IPAddressObject, pool: AddressPool, family: int, shown: Mapping[str, Any],
                    now: float) -> dict[str, Any] | None:
    """The status of a user's Auto IPAddress naming a family its pool lacks (``spec.ipFamily``, the pool's entry of
    that family removed since): ``Pending``, in the words a node records (``family_view``, ``_refused_pending``); None
    when ``shown`` says so already."""
    nets = ", ".join(str(s.network) for s in pool.subnets)
    message = (f"IPAddress {obj.meta.name} asks for an IPv{family} address, and pool {pool.meta.display} has no "
               f"IPv{family} network ({nets})")
    conds = set_condition(tuple(shown.get("conditions") or ()), "Allocated", False, OUTSIDE_POOL, message, now)
    status = {"phase": "Pending", "address": "", "network": "", "routes": [], "usedByPods": [], "conditions": list(conds)}
    return None if all(shown.get(k) == v for k, v in status.items()) else status


def _items_shown(items: Iterable[Mapping[str, Any]], kind: str) -> dict[str, Mapping[str, Any]]:
    """Each object of ``kind`` as the cache shows it (its status, its version, the pod written on it), by key
    (``Kind/namespace/name``)."""
    out: dict[str, Mapping[str, Any]] = {}
    for item in items:
        md = item.get("metadata") or {}
        ns = md.get("namespace")
        out[f"{kind}/{ns}/{md.get('name')}" if ns else f"{kind}/{md.get('name')}"] = item
    return out


def _lease_ip(item: Mapping[str, Any]) -> str:
    return str((item.get("spec") or {}).get("ip") or "")


def _node_of(item: Mapping[str, Any]) -> str:
    """The node a lease object is labelled with: the one that made it or took it up ("": the controller's own)."""
    return str(((item.get("metadata") or {}).get("labels") or {}).get(NODE_LABEL) or "")


def _held_for(items: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Mapping[str, Any]], dict[str, list[Mapping[str, Any]]]]:
    """The lease objects held for someone, by holder: the controller's own (no node label: no node took it up), and
    those nodes made or took up (a node's store holds them, for its pods). One being quarantined (its holder not yet
    dropped by the quarantine's second write) is neither: nobody's to use."""
    mine: dict[str, Mapping[str, Any]] = {}
    theirs: dict[str, list[Mapping[str, Any]]] = {}
    for item in items:
        holder = str((item.get("spec") or {}).get("holder") or "")
        if not holder or (item.get("status") or {}).get("orphaningTimestamp"):
            continue
        if _node_of(item):
            theirs.setdefault(holder, []).append(item)
        else:
            mine[holder] = item
    return mine, theirs


def starts_over(lease: Mapping[str, Any], pool: AddressPool, family: int) -> str:
    """Why the controller's own lease of a user's Auto IPAddress is no longer its address in ``pool`` (as its network
    sees it), in words ("": it still is), as a node's ``starts_over`` judges its own: of another pool (the Network
    moved), not of the family it asks for (``asked_family``: its own, or its pool's), or a route's gateway now (the
    pool's, or its network's policy route's: never leased). No pod uses it (a node would have taken it up)."""
    spec = lease.get("spec") or {}
    address = str(spec.get("ip") or "")
    if spec.get("pool") != pool.meta.key:
        return f"it is of pool {spec.get('pool')}, and its network's is {pool.meta.display}"
    if _family(address) != family or family not in pool.families:
        return "it is not of the family it asks for (its pool's or its own)"
    return never_leased(pool, to_int(address)) or ""


def _status_held(item: Mapping[str, Any], address: str, network: str, subnet: Subnet | None,
                 now: float) -> dict[str, Any]:
    """The status of a user's Auto IPAddress whose address a node holds: that address, and the pod written on it (the
    one that uses it, cluster-wide); the conditions shown kept (a node's ``Attached``), ``Allocated`` set."""
    shown = item.get("status") or {}
    user = parse_user_text(((item.get("metadata") or {}).get("annotations") or {}).get(USED_BY_ANNOTATION))
    conds = set_condition(tuple(shown.get("conditions") or ()), "Allocated", True, "IPAddressAllocated", "", now)
    return {"phase": "Allocated", "address": address, "network": str(subnet.network) if subnet else network,
            "routes": [r.to_dict() for r in subnet.routes] if subnet else [],
            "usedByPods": [user.pod] if user is not None else [], "conditions": list(conds)}


@dataclass(frozen=True, slots=True)
class SegmentStatus:
    """What the controller knows of a Network's segment: its ID (0: none yet, or untagged), why it has
    none, and how many nodes report their side ready."""

    kind: SegmentKind
    ident: int
    problem: str
    nodes: int
    ready_nodes: int
    change: tuple[str, str] | None = None  # (reason, message): the ID its spec.vlan.id asks is not given (yet)
    bridge: str = ""  # untagged: the bridge its nodes report (``reported_bridge``), shown instead of the computed one

    def render(self, net: Network | ClusterNetwork, now: float) -> dict[str, Any]:
        """The Network's status, its conditions keeping their times while their status holds."""
        ready = self.ident > 0 or not self.kind.tagged
        conds = set_condition(net.status_conditions, "Ready", ready, "NetworkReady" if ready else "VLANIDNotAssigned",
                              "Network is operational" if ready else self.problem, now)
        all_ready = self.nodes > 0 and self.ready_nodes == self.nodes
        conds = set_condition(conds, "AllNodeAttachementsAreReady", all_ready,
                              "AllNodeInterfaceAttachmentsAreReady" if all_ready else "NodeInterfaceAttachmentsNotReady",
                              "All node interface attachments are ready" if all_ready
                              else f"{self.ready_nodes} of {self.nodes} node interface attachments are ready", now)
        conds = set_condition(conds, ID_CHANGE, True, self.change[0], self.change[1], now) if self.change else \
            drop_condition(conds, ID_CHANGE)  # none asked, or made: it goes
        return {
            "bridgeName": (self.bridge or self.kind.bridge(self.ident, net.meta.key)) if ready else "",
            **self.kind.status_ids(self.ident),
            **({"vni": None} if not self.kind.shows_vni and status_segment(net) == "vxlan" else {}),  # a class edit
            "nodeAttachementsCount": self.nodes, "readyNodeAttachementsCount": self.ready_nodes,
            "conditions": list(conds), "observedGeneration": net.meta.generation,
        }


@dataclass(frozen=True, slots=True)
class NodeReports:
    """A Network's sides as its nodes report them (NodeNetworkInterfaceAttachments): how many, how many are ready,
    and the bridge each names."""

    total: int = 0
    ready: int = 0
    bridges: tuple[str, ...] = ()


def reported_bridge(bridges: Iterable[str], shown: str) -> str:
    """The bridge of an untagged network as most of its nodes report it: one whose hashed name clashed with another
    network's took the next candidate (``bridge_name``'s ``attempt``), which the computed name would not show. A tie
    keeps the one the status shows, else the first by name, so the status does not flap; "" when none reports one."""
    counts = Counter(b for b in bridges if b and segment_of_bridge(b) is None)
    if not counts:
        return ""
    most = max(counts.values())
    tied = sorted(b for b, n in counts.items() if n == most)
    return shown if shown in tied else tied[0]


def _absent_ok(write: Callable[..., Any], *args: Any) -> None:
    """A write whose object is already gone (404) has nothing left to do."""
    try:
        write(*args)
    except Exception as exc:
        if status_of(exc) != 404:
            raise


def _ungauge(blocks: Iterable[tuple[str, str]] = (), pools: Iterable[str] = ()) -> None:
    """Remove the gauges of (pool, node) blocks and of pools; one already gone is no matter (another replica in the
    same process, as in tests, shares the registry)."""
    for key, node in blocks:
        with contextlib.suppress(KeyError):
            NODE_BLOCKS.remove(key, node)
    for key in pools:
        for state in ("used", "quarantined", "free"):
            with contextlib.suppress(KeyError):
                POOL_ADDRESSES.remove(key, state)


class Controller:
    def __init__(self, api: client.ApiClient, source: ClusterSource, namespace: str, interval: float = 2.0,
                 block_ttl_s: float = 600.0, heartbeat_namespace: str = heartbeat.NAMESPACE) -> None:
        # writes stop at the renew deadline while a round runs as leader (steps called on their own are not guarded)
        self._act_until = float("inf")
        self.objects = WhileLeading(source.objects, lambda: self._act_until)
        self.core = client.CoreV1Api(api)
        self.coord = client.CoordinationV1Api(api)
        self.heartbeat_namespace = heartbeat_namespace
        self.block_ttl_s = block_ttl_s
        self.source = source
        self.identity = f"{socket.gethostname()}-{os.getpid()}-{source.node_name}"
        self.elector = LeaderElector(api, namespace, self.identity)
        # the API server's clock, as its answers tell (the times it stamps are judged by it, not by this machine's)
        self.clock = api.server_clock if isinstance(api, TimedApiClient) else ServerClock()
        self.interval = interval
        self.leading = False
        self._renewed_at = 0.0  # (monotonic) when the Lease was last renewed
        self._stop = threading.Event()
        self._wake = threading.Event()
        # what was last written per Network (its UID, generation and segment status): written again on a change
        self._written: dict[str, tuple[str, int, SegmentStatus]] = {}
        self._usage: dict[str, tuple[str, PoolUsage]] = {}  # per pool: its UID and the usage last written
        self._gauged: set[str] = set()  # pools with gauges
        self._block_gauges: set[tuple[str, str]] = set()  # (pool, node) with a block gauge
        self._vanished: set[str] = set()  # nodes reclaimed, looked at again while they keep leases
        self._allocated: dict[str, float] = {}  # user Auto IPAddress key -> when this controller leased it
        self._nodes_seen: dict[str, float] = {}  # node -> when its Node object was last seen (monotonic)
        self._beats: dict[str, float] = {}  # node -> when its heartbeat was renewed (wall clock), as last listed
        self._beats_read = float("-inf")
        self._holder_gone: dict[str, float] = {}  # lease object -> since when its user IPAddress is gone (monotonic)
        self._looked: dict[str, float] = {}  # vanished node -> when its leases and pods were last looked at
        self._users: dict[str, tuple[float, tuple[str, ...]]] = {}  # network -> when listed, its pods on its old ID
        self._thread: threading.Thread | None = None
        source.subscribe(self._wake.set)

    # -- networks -------------------------------------------------------------------------------
    def assign_segments(self) -> None:
        """Give every Network without one its ID, and keep every Network's status in step."""
        nets: list[Network | ClusterNetwork] = [*self.source.list(NETWORK), *self.source.list(CLUSTER_NETWORK)]
        kinds = {net.meta.key: segment_kind(net, class_of(self.source, net)) for net in nets}
        held: dict[str, dict[int, str]] = {}  # kind -> ID -> Network: handed out (status) or fixed (ClusterNetwork)
        for net in nets:
            kind = kinds[net.meta.key]
            fixed = net.vlan_id if isinstance(net, ClusterNetwork) else None
            shown = (status_segment(net) or kind.name, granted_id(net) or fixed)  # its status's: maybe of another kind
            for name, ident in (shown, self._granted_unseen(net)):
                if kind.tagged and ident:
                    held.setdefault(name, {}).setdefault(ident, net.meta.key)
        # a Network deleted while a node still carries its pods keeps its ID until that node's side of it goes (its
        # NodeNetworkInterfaceAttachment, removed with its bridge): given to another Network, it would put that one
        # on the wire segment of those pods
        # (and so does a network moved to another ID, while a node still carries its old bridge)
        granted = {net.meta.key: (kinds[net.meta.key].name, granted_id(net, kinds[net.meta.key])) for net in nets}
        for item in self.source.items(ATTACHMENT_KIND):
            ref, bridge = (item.get("spec") or {}).get("networkRef") or {}, (item.get("spec") or {}).get("bridgeName")
            key = "/".join(p for p in (ref.get("kind", ""), ref.get("namespace", ""), ref.get("name", "")) if p)
            key = key.split("@", 1)[0]  # a node's old segment of a network given another ID: held for that network
            carried = segment_of_bridge(str(bridge or ""))
            if carried is not None and granted.get(key) != carried:
                held.setdefault(carried[0], {}).setdefault(carried[1], key)
        nodes = self._node_reports()
        pods: dict[str, list[dict[str, Any]]] = {}  # namespace ("": all) -> its pods, listed at most once a round
        for net in nets:
            kind = kinds[net.meta.key]
            ident, problem, change = granted_id(net, kind) or 0, "", None
            if kind.tagged and not ident:  # none yet, or one of the kind of its class before an edit
                ident, problem = self._pick(net, kind, held.setdefault(kind.name, {}))
            elif kind.tagged and net.vlan_id not in (None, net.status_vlan_id):  # never moved under live pods
                ident, change = self._move(net, kind, held.setdefault(kind.name, {}), pods)
            sides = nodes.get((net.meta.kind, net.meta.namespace, net.meta.name), NodeReports())
            bridge = "" if kind.tagged else reported_bridge(sides.bridges, net.status_bridge)
            self._write(net, SegmentStatus(kind, ident, problem, sides.total, sides.ready, change, bridge))
        moving = {net.meta.key for net in nets if net.vlan_id not in (None, net.status_vlan_id)}
        self._users = {key: found for key, found in self._users.items() if key in moving}

    def _granted_unseen(self, net: Network | ClusterNetwork) -> tuple[str, int]:
        """The (kind, ID) this replica last granted ``net`` (the same object: its UID): held even while the informer
        does not show that write yet, or a round run meanwhile would grant the ID again and move ``net`` off it."""
        written = self._written.get(net.meta.key)
        if written is None or written[0] != net.meta.uid:
            return "", 0
        return written[2].kind.name, written[2].ident

    def _pick(self, net: Network | ClusterNetwork, kind: SegmentKind, held: dict[int, str]) -> tuple[int, str]:
        try:
            ident = pick_id(kind, id_pool(net, class_of(self.source, net)), held, net.vlan_id, net.meta.key)
        except IdUnavailable as exc:
            return 0, str(exc)
        held[ident] = net.meta.key
        return ident, ""

    def _move(self, net: Network | ClusterNetwork, kind: SegmentKind, held: dict[int, str],
              pods: dict[str, list[dict[str, Any]]]) -> tuple[int, tuple[str, str] | None]:
        """A granted network whose ``spec.vlan.id`` asks another ID: moved to it when it may have it and no pod is
        left on its segment (an ID is never moved under live pods: they would stay on the old wire segment, cut off
        from the ones after them), as a lone node moves it once its old segment is unused. Else its ID is kept, and
        the condition's (reason, message) say why."""
        kept, asked, what = net.status_vlan_id or 0, net.vlan_id, kind.id_label
        head = f"spec.vlan.id asks for {what} {asked}; {what} {kept} is kept"
        try:
            ident = pick_id(kind, id_pool(net, class_of(self.source, net)), held, asked, net.meta.key)
        except IdUnavailable as exc:
            return kept, ("VLANIDUnavailable", f"{head}: {exc}")
        try:
            users = self._users_of(net, kept, pods)
        except Exception as exc:
            return kept, ("PodsNotListed", f"{head}: the pods that may use it could not be listed ({reason_of(exc)})")
        if users:
            shown = ", ".join(users[:3]) + (f" and {len(users) - 3} more" if len(users) > 3 else "")
            return kept, ("PodsOnOldSegment", f"{head} while {len(users)} pod(s) still use it ({shown}): the network "
                          f"moves to {what} {asked} once none does")
        held[ident] = net.meta.key
        log.info("%s: moved from %s %s to %s %s, as spec.vlan.id asks: no pod is left on it", net.meta.display, what,
                 kept, what, ident)
        return ident, None

    def _users_of(self, net: Network | ClusterNetwork, ident: int, pods: dict[str, list[dict[str, Any]]]) -> list[str]:
        """The pods on ``net``'s segment ``ident``: listed (its namespace's, or every pod for a ClusterNetwork) at
        most once a round, and while some are found, again only after ``MOVE_LOOK_S``."""
        at, found = self._users.get(net.meta.key, (0.0, ()))
        now = time.monotonic()
        if found and now - at < MOVE_LOOK_S:
            return list(found)
        namespace = net.meta.namespace if isinstance(net, Network) else ""
        if namespace not in pods:
            answer: Any = self.core.list_namespaced_pod(namespace, _preload_content=False) if namespace else \
                self.core.list_pod_for_all_namespaces(_preload_content=False)
            pods[namespace] = json.loads(answer.data).get("items") or []
        users = pods_on_segment(pods[namespace], net, ident)
        self._users[net.meta.key] = (now, tuple(users))
        return users

    def _node_reports(self) -> dict[tuple[str, str, str], NodeReports]:
        """Per Network, its nodes' sides of it (NodeNetworkInterfaceAttachment): the counters and
        AllNodeAttachementsAreReady (upstream's spelling), and the bridges they name. A ClusterNetwork's may carry
        no namespace."""
        ready: Counter[tuple[str, str, str]] = Counter()
        bridges: dict[tuple[str, str, str], list[str]] = {}
        for item in self.source.items(ATTACHMENT_KIND):
            spec = item.get("spec") or {}
            ref = spec.get("networkRef") or {}
            conds = (item.get("status") or {}).get("conditions") or []
            key = (str(ref.get("kind") or ""), str(ref.get("namespace") or ""), str(ref.get("name") or ""))
            ready[key] += any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
            bridges.setdefault(key, []).append(str(spec.get("bridgeName") or ""))
        return {key: NodeReports(len(names), ready[key], tuple(names)) for key, names in bridges.items()}

    def _write(self, net: Network | ClusterNetwork, status: SegmentStatus) -> None:
        written = (net.meta.uid, net.meta.generation, status)
        shown = net.status_vlan_id or 0  # what the object's status says now (someone may have cleared it)
        if self._written.get(net.meta.key) == written and (shown == status.ident or not status.kind.tagged):
            return
        try:
            self.objects.patch_status(net.meta.kind, net.meta.name, status.render(net, self.clock.now()), net.meta.namespace)
        except Exception as exc:
            log.warning("status of %s: %s", net.meta.display, reason_of(exc))
            return
        why = status.problem or (status.change[1] if status.change else "")
        if shown != status.ident or why:
            log.info("%s: %s %s%s", net.meta.display, status.kind.id_label or "untagged", status.ident or "-",
                     f" ({why})" if why else "")
        self._written[net.meta.key] = written

    # -- pools --------------------------------------------------------------------------------------------
    def pool_usage(self) -> None:
        """Every pool's addresses by state (from the lease informer's pool index), in its status when they
        change and in the ``plexus_pool_addresses`` gauges."""
        seen = set()
        blocks_seen: set[tuple[str, str]] = set()
        for kind in POOL_KINDS.values():
            for pool in self.source.list(kind):
                key = pool.meta.key
                seen.add(key)
                leases = self.source.by_index(LEASE_KIND, "pool", key)
                used = sum(1 for item in leases if (item.get("spec") or {}).get("holder"))
                outside = sum(1 for item in leases if not _in_ranges(pool, (item.get("spec") or {}).get("ip")))
                per_node = Counter(b.node for b in (parse_block(o) for o in self.source.by_index(BLOCK_KIND, "pool", key))
                                   if b is not None)
                usage = PoolUsage(pool.size, used, len(leases) - used, tuple(sorted(per_node.items())), outside)
                for state, n in (("used", usage.used), ("quarantined", usage.quarantined), ("free", usage.free)):
                    POOL_ADDRESSES.labels(key, state).set(n)
                for node, n in per_node.items():
                    NODE_BLOCKS.labels(key, node).set(n)
                    blocks_seen.add((key, node))
                self._gauged.add(key)
                if self._usage.get(key) == (pool.meta.uid, usage):
                    continue
                try:
                    self.objects.patch_status(pool.meta.kind, pool.meta.name, usage.render(), pool.meta.namespace)
                    self._usage[key] = (pool.meta.uid, usage)
                except Exception as exc:
                    log.warning("status of %s: %s", pool.meta.display, reason_of(exc))
        _ungauge(blocks=self._block_gauges - blocks_seen)
        self._block_gauges = blocks_seen
        for key in self._gauged - seen:  # a pool deleted: its gauges go with it
            self._gauged.discard(key)
            self._usage.pop(key, None)
            _ungauge(pools=(key,))

    # -- IPAddresses and leases -----------------------------------------------------------------------
    def allocate_user_ipaddresses(self) -> None:
        """Lease each user's Auto IPAddress that holds no lease, keep the status of each the controller leased, and let
        go of the controller's own lease of one that a node holds another lease for, or that ``starts_over``. An
        IPAddress never holds two leases by this controller's doing: a let-go and a new lease are made in two rounds,
        the cache asked again right before a lease is made, and a lease of its found beside a node's goes."""
        items = self.source.items(LEASE_KIND)
        leases = [item.get("spec") or {} for item in items]
        held = {spec.get("holder") for spec in leases}
        mine, theirs = _held_for(items)
        now = time.monotonic()
        self._allocated = {k: at for k, at in self._allocated.items() if now - at < ALLOCATED_S}
        for kind in IP_ADDRESS_KINDS.values():
            shown = _items_shown(self.source.items(kind.name), kind.name)
            for obj in self.source.list(kind):
                if obj.type != "Auto" or obj.owner_pod_uid:
                    continue  # Static ones are leased by the nodes; a pod's own Auto ones by its node
                if obj.meta.key in self._allocated:
                    continue  # leased a moment ago: the caches have not shown its lease or its status yet
                lease, item = mine.get(obj.meta.key), shown.get(obj.meta.key) or {}
                if obj.meta.key in theirs:  # made or taken up by a node, for a pod there: that node's to let go
                    self._held_by_a_node(obj, lease, theirs[obj.meta.key], item)
                    continue
                if obj.meta.key in held and lease is None:
                    continue  # its lease being quarantined (the holder left between the two writes): expires
                pool = pool_of_ip(self.source, obj)
                if pool is not None:
                    self._keep_leased(obj, pool, lease, leases, item.get("status") or {})

    def _keep_leased(self, obj: IPAddressObject, pool: AddressPool, lease: Mapping[str, Any] | None,
                     leases: list[dict[str, Any]], shown: Mapping[str, Any]) -> None:
        """A user's Auto IPAddress no node holds a lease for: its own lease let go when it ``starts_over`` (as a node
        lets go of one no pod uses), its status kept, or leased. A lease let go is leased anew in a later round, once
        the cache shows the let-go: a node's ADD that read the old lease in its cache and finds it let go at its
        take-up leases one itself, which the next round's cache shows."""
        address = _lease_ip(lease) if lease is not None else ""
        family = asked_family(obj, pool, address)
        if lease is not None and (why := starts_over(lease, pool, family)):
            if not self._let_go(obj, lease, why) or family in pool.families:
                return  # leased anew in a later round; kept when a node took it up meanwhile (or the API away)
            lease = None
        if family not in pool.families:
            refused = _refused_status(obj, pool, family, shown, self.clock.now())
            if refused is not None:
                self._ip_status(obj, refused)
        elif lease is not None:
            self._complete_status(obj, lease, shown)
        else:
            taken = {to_int(str(spec.get("ip"))) for spec in leases if spec.get("pool") == pool.meta.key}
            for block in (parse_block(o) for o in self.source.by_index(BLOCK_KIND, "pool", pool.meta.key)):
                if block is not None:  # a node's to lease in alone
                    taken.update(range(block.first, block.first + block.size))
            self._allocate(obj, pool.family(family), taken)

    def _held_by_a_node(self, obj: IPAddressObject, lease: Mapping[str, Any] | None,
                        theirs: list[Mapping[str, Any]], item: Mapping[str, Any]) -> None:
        """A user's Auto IPAddress a node holds a lease for (made by its ADD, or taken up: its pods use that one, and
        other nodes take it up from it). The controller's own lease beside it (a node's ADD and a round of this
        controller leased it at once, neither seeing the other's) is let go, as one that ``starts_over``: at the
        version the cache saw, so a node that took it up meanwhile keeps it. A status that names an address the
        IPAddress no longer holds (the controller's, let go) is written from the node's lease, at the version of the
        IPAddress seen (a node's write since is not written over); any other is the node's to write."""
        node = theirs[0]
        user = parse_user_text(((item.get("metadata") or {}).get("annotations") or {}).get(USED_BY_ANNOTATION))
        node = next((t for t in theirs if user is not None and _node_of(t) == user.node), node)
        if lease is not None and not self._let_go(obj, lease, f"node {_node_of(node)} holds {_lease_ip(node)} for it"):
            return  # a node took it up meanwhile, or the API away: the next round
        shown = str((item.get("status") or {}).get("address") or "")
        if not shown or shown in {_lease_ip(t) for t in theirs}:
            return
        address, spec = _lease_ip(node), node.get("spec") or {}
        pool = self._pool_named(str(spec.get("pool") or ""))
        subnet = subnet_for(pool, to_int(address)) if pool is not None else None
        status = _status_held(item, address, str(spec.get("network") or ""), subnet, self.clock.now())
        self._ip_status(obj, status, version=str((item.get("metadata") or {}).get("resourceVersion") or ""))

    def _pool_named(self, key: str) -> AddressPool | None:
        """The pool of ``key`` (``Kind/namespace/name``, ``Kind/name``), None when the cache shows none."""
        kind, _, rest = key.partition("/")
        namespace, _, name = rest.rpartition("/")
        return self.source.get(POOL_KINDS[kind], namespace, name) if kind in POOL_KINDS else None

    def _let_go(self, obj: IPAddressObject, lease: Mapping[str, Any], why: str) -> bool:
        """The lease this controller made for a user's Auto IPAddress, no longer its address (``why``): quarantined
        (``_orphan``), as a node lets go of one no pod uses (``_refused_pending``, ``lease_for``). At the version the
        cache saw: a node that took it up meanwhile, for its pod, keeps it. False when it is kept."""
        try:
            if self._orphan(lease, self.clock.now()):
                log.info("%s: let go of %s: %s", obj.meta.display, _lease_ip(lease), why)
                return True
        except Exception as exc:  # the API away: the next round
            log.warning("letting go of the lease of %s: %s", obj.meta.display, reason_of(exc))
        return False

    def _allocate(self, obj: IPAddressObject, pool: AddressPool, taken: set[int]) -> None:
        """Lease a user's Auto IPAddress an address of ``pool`` (the family it asks for: ``asked_family``)."""
        now = self.clock.now()
        while True:
            if self._held_now(obj, pool):
                return  # a node's ADD leased it, or took one up, since the round read the lease objects
            picked = pick_free(pool, taken, None)
            if picked is None:
                conds = set_condition((), "Allocated", False, "NoFreeIPAddress",
                                      f"pool {pool.meta.display} has no free address", now)
                self._ip_status(obj, {"phase": "Pending", "conditions": list(conds)})
                return
            ip, subnet = picked
            body = lease_body(pool.meta.key, to_text(ip), str(subnet.network), obj.meta.key, pool.lease_ttl_s)
            try:
                self.objects.create(LEASE_KIND, body)
            except Exception as exc:
                if status_of(exc) == 409:
                    taken.add(ip)
                    continue
                raise
            # the lease made: what follows completes it or undoes it, past the renew deadline too (a later round skips
            # an IPAddress that holds a lease, and would never write its status)
            try:
                inside = self._in_a_block(pool.meta.key, ip)  # claimed after our cache last saw the pool?
            except Exception:  # not known: undone as if it were (left, it could lie in a block its node leases in
                with contextlib.suppress(Exception):  # alone, and this IPAddress, holding it, is never looked at again)
                    self.objects.raw.delete(LEASE_KIND, body["metadata"]["name"])
                raise
            if inside:
                self.objects.raw.delete(LEASE_KIND, body["metadata"]["name"])
                taken.add(ip)
                self.objects.check()
                continue
            self._allocated[obj.meta.key] = time.monotonic()
            self._ip_status(obj, _allocated_status(to_text(ip), subnet, now), self.objects.raw)
            return

    def _complete_status(self, obj: IPAddressObject, lease: Mapping[str, Any], shown: Mapping[str, Any]) -> None:
        """A user's Auto IPAddress holding the lease this controller made, whose status does not show it: the one
        write after the lease failed (it is only logged), or the object was deleted and made again under its name
        (the lease is held by name). Its status is written from the lease, at most once every ``ALLOCATED_S``, once
        no node's block is found around the address (the check after the lease's create may never have finished, nor
        the undo of a lease found in a block): a lease in a block is deleted, and the IPAddress leased again."""
        address = str((lease.get("spec") or {}).get("ip") or "")
        if shown.get("phase") == "Allocated" and shown.get("address") == address:
            return
        pool = pool_of_ip(self.source, obj)
        subnet = subnet_for(pool, to_int(address)) if pool is not None and address else None
        if subnet is None:
            return  # its pool, or the pool's subnet of the address, is gone: nothing to say of its network
        self._allocated[obj.meta.key] = time.monotonic()
        try:
            if pool is not None and self._in_a_block(pool.meta.key, to_int(address)):
                _absent_ok(self.objects.raw.delete, LEASE_KIND, str((lease.get("metadata") or {}).get("name") or ""))
                return
        except Exception as exc:  # looked at again in ALLOCATED_S; the round's other steps go on
            log.warning("status of %s: %s", obj.meta.display, reason_of(exc))
            return
        self._ip_status(obj, _allocated_status(address, subnet, self.clock.now()))

    def _held_now(self, obj: IPAddressObject, pool: AddressPool) -> bool:
        """Whether the cache shows a lease of ``pool`` held for ``obj`` now (the holder index), asked right before a
        lease is made for it: the round's read of the lease objects may be older than a node's ADD that leased it."""
        return bool(self.source.by_index(LEASE_KIND, "holder", (obj.meta.key, pool.meta.key)))

    def _in_a_block(self, pool: str, ip: int) -> bool:
        try:
            self.objects.get(BLOCK_KIND, block_name(pool, window_of(ip)))
            return True
        except Exception as exc:
            if status_of(exc) == 404:
                return False
            raise

    def reclaim_blocks(self) -> None:
        """Give back what a vanished node held (``ipamd.kube.reclaim``): its blocks, its gone pods' leases and its
        heartbeat. A node is silent by its blocks' renewals and its heartbeat, whichever is newer (a node without
        blocks by its heartbeat alone). A node reclaimed earlier is looked at again every round while it keeps leases:
        one held by a pod's own IPAddress that the garbage collector had not deleted yet goes once it has, and one held
        by a Static or a user's IPAddress once that is deleted. Its heartbeat goes with its last lease object, so that a
        controller started since (another replica, a restart) still knows it for vanished. Silence is judged by the
        API server's clock: the renewals' stamps are its (``ipamd.kube.heartbeat``), and so is ``now``."""
        now = self.clock.now()
        beats = self._heartbeats(now)
        blocks = list(self.source.items(BLOCK_KIND))
        silent = silent_nodes(blocks, now, beats)
        judged_at = {str(md.get("name")): str(md.get("resourceVersion") or "")  # the versions judged silent by
                     for md in ((item.get("metadata") or {}) for item in blocks)}
        holders: set[str] | None = None
        looked_at = time.monotonic()
        for node in [*silent, *(n for n in self._vanished if n not in silent)]:
            try:
                if node in silent:
                    quiet, names = silent[node]
                    if not vanished(quiet, self.block_ttl_s, functools.partial(self._node_exists, node)):
                        self._forget_vanished(node)
                        continue
                else:
                    quiet, names = 0.0, []
                left = self.source.by_index(LEASE_KIND, "node", node)
                if node in self._vanished and not names:  # reclaimed already, its blocks gone
                    if not left:  # nothing kept any more: its heartbeat goes, and the node from memory
                        self._drop_heartbeat(node, beats)
                        self._forget_vanished(node)
                        continue
                    if looked_at - self._looked.get(node, -VANISHED_LOOK_S) < VANISHED_LOOK_S:
                        continue  # what it keeps is looked at again once a minute, not every round
                elif not names and not left:  # silent, holding nothing: its attachments and heartbeat go, once no
                    if looked_at - self._looked.get(node, -VANISHED_LOOK_S) < VANISHED_LOOK_S:  # pod is bound to it
                        continue  # (looked at once a minute while one is)
                    self._looked[node] = looked_at
                    if self._runs_pods(node):
                        continue
                    self._drop_attachments(node)
                    self._drop_heartbeat(node, beats)
                    self._looked.pop(node, None)
                    continue
                self._looked[node] = looked_at
                if self._runs_pods(node):
                    self._forget_vanished(node)
                    continue  # a pod that may still run there keeps its address (and the node may be back)
                if not self._delete_blocks(node, names, judged_at):
                    self._forget_vanished(node)
                    continue  # renewed since the cache showed it silent: its daemon is back
                self._vanished.add(node)  # before its leases: what a failure here leaves is looked at again
                holders = holders if holders is not None else existing_holders(self.source, IP_ADDRESS_KINDS)
                quarantined = self._quarantine(node, holders, now)
                self._drop_attachments(node)
                if names or quarantined:
                    log.info("reclaimed node %s (silent for %.0f s, no pod bound to it): %d address block(s) deleted,"
                             " %d lease(s) of its gone pods quarantined", node, quiet, len(names), quarantined)
            except Exception as exc:  # one node's trouble (a 403, the API away) does not stop the round
                log.warning("reclaiming node %s: %s", node, reason_of(exc))

    def _delete_blocks(self, node: str, names: list[str], judged_at: Mapping[str, str]) -> bool:
        """Delete a vanished node's blocks at the versions the round judged it silent by; False when one was renewed
        since: a daemon back after a long silence keeps the blocks it leases in. Each is read first, and none deleted
        when any changed (a daemon back renews them one write each, in any order: deleting them one by one up to the
        first 409 deleted the ones whose renewal came later). All or none, past the renew deadline too: it is checked
        once, before the first delete (a restore cut short would leave a node that came back without a block)."""
        self.objects.check()
        read: dict[str, dict[str, Any]] = {}
        for name in names:
            try:
                current = self.objects.get(BLOCK_KIND, name)
            except Exception as exc:
                if status_of(exc) == 404:
                    continue
                raise
            if str((current.get("metadata") or {}).get("resourceVersion") or "") != judged_at.get(name, ""):
                log.info("not reclaiming node %s: its address block %s was renewed meanwhile", node, name)
                return False
            read[name] = current
        deleted: list[str] = []
        for name in names:
            try:
                self.objects.raw.delete(BLOCK_KIND, name, resource_version=judged_at.get(name, ""))
                deleted.append(name)
            except Exception as exc:
                if status_of(exc) == 409:  # renewed between the reads and this delete: the daemon is back
                    log.info("not reclaiming node %s: its address block %s was renewed meanwhile", node, name)
                    self._restore_blocks(node, [read[n] for n in deleted if n in read])
                    return False
                if status_of(exc) != 404:
                    raise
        return True

    def _restore_blocks(self, node: str, blocks: list[dict[str, Any]]) -> None:
        """Make again the blocks of a node found back while they were being deleted (create-if-absent: another node
        that claimed the window meanwhile keeps it, and the node back leases per address there, as after a reclaim)."""
        for obj in blocks:
            md = obj.get("metadata") or {}
            body = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind") or BLOCK_KIND,
                    "metadata": {"name": md.get("name"), "labels": md.get("labels") or {}}, "spec": obj.get("spec")}
            try:
                self.objects.raw.create(BLOCK_KIND, body)
                log.info("made address block %s of node %s again: the node renewed another meanwhile", md.get("name"),
                         node)
            except Exception as exc:
                log.warning("making address block %s of node %s again: %s", md.get("name"), node, reason_of(exc))

    def _runs_pods(self, node: str) -> bool:
        """Whether a pod bound to ``node`` may still hold an address there (read as JSON: no model objects)."""
        answer: Any = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}",
                                                            _preload_content=False)
        return any(may_hold_addresses(pod) for pod in json.loads(answer.data).get("items") or ())

    def _forget_vanished(self, node: str) -> None:
        self._vanished.discard(node)
        self._looked.pop(node, None)

    def _drop_attachments(self, node: str) -> None:
        """A vanished node's sides of networks (its NodeNetworkInterfaceAttachments): no daemon is left to remove them,
        and one naming the bridge of a deleted Network holds that Network's ID (``assign_segments``) for ever. Only once
        no pod is bound to the node: a pod on that bridge would share its wire with the next Network given the ID."""
        for item in self.source.items(ATTACHMENT_KIND):
            if (item.get("spec") or {}).get("nodeName") == node:
                self.objects.check()
                try:
                    _absent_ok(self.objects.delete, ATTACHMENT_KIND, str((item.get("metadata") or {}).get("name") or ""))
                except Exception as exc:  # (a role without the verb): the node's leases are given back all the same
                    log.warning("deleting %s's attachment %s: %s", node, (item.get("metadata") or {}).get("name"),
                                reason_of(exc))

    def _drop_heartbeat(self, node: str, beats: dict[str, float]) -> None:
        """A vanished node's heartbeat, once it keeps no lease object (until then it tells a controller started since
        that the node is gone)."""
        if node in beats:
            self.objects.check()
            _absent_ok(self.coord.delete_namespaced_lease, heartbeat.lease_name(node), self.heartbeat_namespace)
            self._beats.pop(node, None)

    def _heartbeats(self, now: float) -> dict[str, float]:
        """Node -> seconds since its daemon renewed its heartbeat, from a list made every ``HEARTBEATS_READ_S`` (they
        are renewed every minute; a round every few seconds need not list every node's); as last read when they
        cannot be read now (none at first: the round goes on by blocks alone, as before heartbeats)."""
        if now - self._beats_read >= HEARTBEATS_READ_S:
            try:
                found: Any = self.coord.list_namespaced_lease(self.heartbeat_namespace,
                                                              label_selector=heartbeat.LABEL, _preload_content=False)
                ages = heartbeat.heartbeat_ages(json.loads(found.data).get("items") or [], now)
                self._beats, self._beats_read = {node: now - age for node, age in ages.items()}, now
            except Exception as exc:
                log.debug("node heartbeats not read: %s", reason_of(exc))
        return {node: now - renewed for node, renewed in self._beats.items()}

    def _quarantine(self, node: str, holders: set[str], now: float) -> int:
        """Orphan ``node``'s lease objects whose holder is gone: the orphaning time first (guarded by the version the
        cache saw: a lease made again meanwhile for somebody else is left alone), the holder after (guarded by the
        version the first write made: a Static that adopted it in between keeps it); a lease left between the two
        writes still expires."""
        leases = self.source.by_index(LEASE_KIND, "node", node)
        claims = {claim for claim in claim_holders(leases, node) if self._claim_exists(claim)}
        return sum(self._orphan(item, now) for item in stray_leases(leases, node, holders, claims))

    def _claim_exists(self, holder: str) -> bool:
        """Whether the IPAMClaim ``IPAMClaim/namespace/name`` exists (read: the controller does not watch them). Only
        a 404 says it is gone: a refusal or the API away keeps its lease (a VM may still want its address)."""
        _, namespace, name = holder.split("/", 2)
        try:
            self.objects.get(IPAM_CLAIM.name, name, namespace)
        except Exception as exc:
            if status_of(exc) == 404:
                return False
            log.info("keeping the lease of %s: %s", holder, reason_of(exc))
        return True

    def _orphan(self, item: Mapping[str, Any], now: float) -> bool:
        """Quarantine one lease object as the cache saw it (``_quarantine``); False when it changed since."""
        name, version = item["metadata"]["name"], item["metadata"].get("resourceVersion")
        try:
            made = self.objects.patch_status(LEASE_KIND, name, {"orphaningTimestamp": rfc3339(now)},
                                             resource_version=str(version or ""), field_manager=QUARANTINE_MANAGER)
            after = str(((made if isinstance(made, dict) else {}).get("metadata") or {}).get("resourceVersion") or "")
            # the second write completes the first, even past the renew deadline: left between the two, a later
            # round would write a new orphaning time and start the address's quarantine again
            self.objects.raw.patch(LEASE_KIND, name, {"metadata": {"resourceVersion": after} if after else {},
                                                      "spec": {"holder": None}})
        except Exception as exc:
            if status_of(exc) in (404, 409):
                return False
            raise
        return True

    def release_unused_leases(self) -> int:
        """The leases this controller made for users' Auto IPAddresses that no node took up (a node labels one its own,
        at the version it read, before it uses the address: ``KubeLeaseRegistry.take_up``), whose IPAddress was
        deleted: quarantined once it has been gone for ``UNUSED_GONE_S`` and no pod names it in its
        ``networks-spec``, at the version seen (a node taking it up meanwhile makes the write fail), then expired like
        any other. Before, each stayed taken for ever. How many."""
        now, wall = time.monotonic(), self.clock.now()
        holders = existing_holders(self.source, IP_ADDRESS_KINDS)
        candidates: dict[str, dict[str, Any]] = {}
        for item in self.source.items(LEASE_KIND):
            md, spec = item.get("metadata") or {}, item.get("spec") or {}
            holder = str(spec.get("holder") or "")
            if holder.split("/", 1)[0] in IP_ADDRESS_KINDS and holder not in holders and \
                    NODE_LABEL not in (md.get("labels") or {}):
                candidates[str(md.get("name"))] = item
        self._holder_gone = {n: at for n, at in self._holder_gone.items() if n in candidates}
        done = 0
        specs: dict[str, list[str]] = {}  # namespace ("": all) -> its pods' networks-spec, listed once a round
        for name, item in candidates.items():
            if now - self._holder_gone.setdefault(name, now) < UNUSED_GONE_S:
                continue
            holder = str(item["spec"]["holder"])
            try:
                if self._named_by_a_pod(holder, specs):
                    self._holder_gone[name] = now  # asked again after as long (a list of pods, maybe all of them)
                    continue
                if not self._orphan(item, wall):
                    continue
            except Exception as exc:  # the API away: asked again after as long
                self._holder_gone[name] = now
                log.warning("releasing the lease of deleted %s: %s", holder, reason_of(exc))
                continue
            log.info("released the lease of %s (%s): deleted, and no node or pod uses it", holder,
                     item["spec"].get("ip"))
            done += 1
        return done

    def _named_by_a_pod(self, holder: str, specs: dict[str, list[str]]) -> bool:
        """Whether a pod that still exists names the IPAddress (its namespace's pods) or ClusterIPAddress (every pod)
        ``holder`` in ``ipAddressNames``: it may yet be started, and take the address up. ``specs``: the pods'
        ``networks-spec`` listed so far this round, by namespace."""
        namespace, _, name = holder.partition("/")[2].rpartition("/")
        if namespace not in specs:
            pods: Any = self.core.list_namespaced_pod(namespace, _preload_content=False) if namespace else \
                self.core.list_pod_for_all_namespaces(_preload_content=False)
            specs[namespace] = [text for pod in json.loads(pods.data).get("items") or []
                                if (text := ((pod.get("metadata") or {}).get("annotations") or {}).get(SPEC_ANNOTATION))]
        return any(name in text and names_ip_address(text, name) for text in specs[namespace])

    def _node_exists(self, node: str) -> bool:
        """Whether the Node object exists; a yes is believed for a minute (asked every round otherwise)."""
        if time.monotonic() - self._nodes_seen.get(node, -NODE_SEEN_S) < NODE_SEEN_S:
            return True
        try:
            self.core.read_node(node)
        except Exception as exc:
            if status_of(exc) == 404:
                return False
            raise
        self._nodes_seen[node] = time.monotonic()
        return True

    def _ip_status(self, obj: IPAddressObject, status: dict[str, Any], objects: ObjectWrites | None = None,
                   version: str = "") -> None:
        try:
            (objects or self.objects).patch_status(obj.meta.kind, obj.meta.name, status, obj.meta.namespace,
                                                   resource_version=version)
        except Exception as exc:
            log.warning("status of %s: %s", obj.meta.display, reason_of(exc))

    def expire_leases(self) -> None:
        """Delete the lease objects whose quarantine is over: its ``ttl`` since it began, both by the API server's
        clock (``quarantined_at``, ``self.clock``), neither the controller's nor the node's that wrote it."""
        now = self.clock.now()
        for item in self.source.items(LEASE_KIND):
            orphaned = quarantined_at(item)
            if orphaned is None:
                continue
            try:
                ttl = parse_duration(str((item.get("spec") or {}).get("ttl") or "0s"))
            except ValueError:
                ttl = 0.0
            if now >= orphaned + ttl:
                try:  # only the version the cache saw: one adopted meanwhile (a Static) is not expired
                    self.objects.delete(LEASE_KIND, item["metadata"]["name"],
                                        resource_version=str(item["metadata"].get("resourceVersion") or ""))
                except Exception as exc:
                    if status_of(exc) not in (404, 409):
                        log.warning("expiring lease %s: %s", item["metadata"]["name"], reason_of(exc))

    def label_leases(self) -> int:
        """Lease objects made by versions before node blocks carry no pool label, so the read a node makes after
        claiming a block (its lease objects listed by that label, from the API server) would miss them: labelled
        once here. How many were."""
        n = 0
        for item in self.source.items(LEASE_KIND):
            md = item.get("metadata") or {}
            pool = (item.get("spec") or {}).get("pool")
            if not pool or POOL_LABEL in (md.get("labels") or {}):
                continue
            try:
                self.objects.patch(LEASE_KIND, md["name"], {"metadata": {"labels": {POOL_LABEL: pool_label(str(pool))}}})
                n += 1
            except Exception as exc:
                if status_of(exc) != 404:
                    log.warning("labelling lease %s: %s", md.get("name"), reason_of(exc))
        return n

    # -- loop ---------------------------------------------------------------------------------------
    def _elect(self) -> None:
        """Lead while the Lease is this replica's. A leader that cannot renew it (the API away, or hung) stops leading
        past the renew deadline (two thirds of the Lease's duration, as client-go's 10 of 15 s), before a standby may
        take the Lease over: two replicas never act as leader at once."""
        was_leading = self.leading
        asked_at = time.monotonic()  # the Lease's renewTime is written before the answer: timed from the request
        try:
            self.leading = self.elector.try_acquire()
            if self.leading:
                self._renewed_at = asked_at
        except Exception:
            if self.leading and time.monotonic() - self._renewed_at >= self._renew_deadline_s:
                self.leading = False
                log.warning("controller: the Lease could not be renewed in time: no longer leading")
                self._lead_changed()
            raise
        if self.leading != was_leading:
            self._lead_changed()

    def run_once(self) -> None:
        self._elect()
        if not self.leading or not self.source.ready():
            return
        self._act_until = self._renewed_at + self._renew_deadline_s
        try:
            for step in (self.assign_segments, self.allocate_user_ipaddresses, self.expire_leases, self.label_leases,
                         self.reclaim_blocks, self.release_unused_leases, self.pool_usage):
                self.objects.check()
                step()
        except NotLeading as exc:
            log.warning("controller: %s", exc)
        finally:
            self._act_until = float("inf")

    @property
    def _renew_deadline_s(self) -> float:
        return self.elector.duration_s * 2 / 3

    @property
    def acting(self) -> bool:
        """Whether this replica acts as leader now: it leads, renewed within the renew deadline (``leading`` stays set
        through a round past it, until the next election). What else writes as the leader goes by this."""
        return self.leading and time.monotonic() - self._renewed_at < self._renew_deadline_s

    def _lead_changed(self) -> None:
        """What this replica remembers writing is forgotten whenever it starts or stops leading: another replica may
        have written statuses meanwhile, which it would otherwise leave as they are while nothing changes; and a
        replica that no longer leads exports no gauges (they would disagree with the leader's)."""
        self._usage.clear()
        self._written.clear()
        if self.leading:
            return
        _ungauge(self._block_gauges, self._gauged)
        self._gauged.clear()
        self._block_gauges = set()

    def loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:
                log.warning("controller: %s", exc)
            self._wake.wait(self.interval)
            self._wake.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.loop, name="controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            if self._thread.is_alive():  # stuck on a hung API server: a round could still renew the Lease
                log.warning("the controller round did not end: the Lease is left to expire")
                return
        if self.leading:  # no round may renew the Lease after it is handed back
            self.elector.release()

"""Bring the store in line with the object source: the work a controller does, for one node.

Runs at start (finishing or rolling back every attachment a crash left half done), whenever the
source changes, and periodically:
- user IPAddresses get their address at once (phase ``Allocated``, or ``Pending`` with
  ``Allocated=False/NoFreeIPAddress``, or a Static's refusal), their status owed when that changes; a deleted one
  lets its lease go to quarantine first (a Static asking for that address takes it over in the same round), unless
  a pod still uses it, in which case it keeps the address until the pod goes; a deleted IPAMClaim likewise; in a
  cluster (where the controller leases Auto ones), one whose lease this node took up for a pod lets it go to
  quarantine once no pod uses it and its pool no longer has its address's family;
- a delegate's lease made for a pod that is gone (its DEL never came) goes to quarantine;
- the attachments of pods that no longer exist are torn down, and their Auto IPAddresses deleted;
  a pod that exists is never touched, whatever its state;
- quarantined leases whose TTL is over are freed.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import replace
from typing import Protocol

from cni.errors import CniError
from ipamd.ipam.addresses import Ipam, ResolvedNetwork, made_again
from ipamd.ipam.allocator import in_ranges, subnet_for
from ipamd.model.ipamconf import IMPLICIT_POOL
from ipamd.model.objects import (
    CLUSTER_NETWORK,
    IP_ADDRESS_KINDS,
    IPAM_CLAIM,
    NETWORK,
    POD,
    POOL_KINDS,
    AddressPool,
    ClusterNetwork,
    IPAddressObject,
    Meta,
    Network,
    Subnet,
)
from ipamd.model.segments import granted_id, segment_kind
from ipamd.model.used_by import parse_user_text
from ipamd.node.segments import RETIRED
from ipamd.publish.base import Publisher
from ipamd.sources.base import ObjectSource
from ipamd.sources.lookups import class_of, pool_of_ip
from ipamd.store.protocols import NodeStore
from ipamd.store.records import AttachmentRecord, ImplicitPoolRecord, IPRecord, SegmentRecord

log = logging.getLogger(__name__)
#: An address held this long in a block without its lease object in the informer's cache has lost it
#: (``BlockRegistry.owe_missing``): far past the outbox's delay and the cache's lag behind the API server.
MISSING_OBJECT_GRACE_S = 120.0


def implicit_pool_views(records: Iterable[ImplicitPoolRecord]) -> list[AddressPool]:
    """One view per implicit pool key (an inline range's space, ``ImplicitPool/<network_name>``): the union of the
    ranges of every configuration of that space, as the node's blocks of it are housekept. Blocks belong to the key,
    not to a range: each range's own view would list the same blocks once per range, and call stranded (to give back)
    those of the other ranges."""
    spaces: dict[str, dict[str, list[tuple[int, int]]]] = {}
    ttls: dict[str, float] = {}
    for rec in records:
        spaces.setdefault(rec.pool, {}).setdefault(rec.network, []).extend(rec.ranges)
        ttls[rec.pool] = max(ttls.get(rec.pool, 0.0), rec.ttl)
    return [AddressPool(Meta(IMPLICIT_POOL, key.partition("/")[2]), ttls[key],
                        tuple(Subnet(ipaddress.ip_network(net), _merged(ranges)) for net, ranges in nets.items()))
            for key, nets in spaces.items()]


def _shown(rec: IPRecord) -> tuple[object, ...]:
    """What an IPAddress's status shows of its allocation (``usedByPods`` aside: ADD and DEL write that)."""
    return rec.phase, rec.address, rec.network, rec.routes, rec.conditions


def _users(rec: IPRecord) -> bool:
    """Whether ``rec`` is of a user's IPAddress, whose status the node whose pod uses it writes (``_speaks_for``)."""
    return rec.kind in IP_ADDRESS_KINDS and rec.created_by == "user"


def _merged(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Inclusive ranges as few disjoint ones, in order (overlapping ranges of one space share addresses)."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return tuple(out)


class Teardowns(Protocol):
    """Tearing an attachment down under its lock (``Attacher.teardown_current``)."""

    def teardown_current(self, container_id: str, ifname: str,
                         still_wanted: Callable[[AttachmentRecord], bool] = ...) -> bool: ...

    def finish_deletions(self, older_than_s: float = ...) -> int: ...


class NodeSegments(Protocol):
    """The node's segments (``ipamd.node.segments.Segments``)."""

    def ensure(self, net: ResolvedNetwork) -> tuple[SegmentRecord, int]: ...

    def remove(self, rec: SegmentRecord) -> None: ...

    def taken_back(self) -> list[str]: ...

    def withdrawn(self, retired: str) -> None: ...


class NodeReports(Protocol):
    """This node's attachment reports as the API has them (``KubePublisher``; none in local mode, where they live in
    the store alone)."""

    def withdraw_unheld(self, held: Collection[str]) -> list[str] | None: ...


class Reconciler:
    def __init__(self, store: NodeStore, source: ObjectSource, ipam: Ipam, teardowns: Teardowns,
                 segments: NodeSegments, publisher: Publisher, interval: float = 30.0, cluster: bool = False,
                 settle_s: float = 0.0, lull: Callable[[threading.Event], object] | None = None,
                 reports: NodeReports | None = None) -> None:
        self.store = store
        self.reports = reports
        # woken by an object's change: wait this long first, so that the CNI call whose writes made the change
        # answers before a round competes with it for the CPU, and the changes that follow share the round; then for
        # a lull in the node's CNI calls (``lull``, bounded)
        self.settle_s = settle_s
        self.lull = lull
        self.source = source
        self.ipam = ipam  # and through it the lease registry, whose stray leases a cluster node cleans up
        self.teardowns = teardowns
        self.segments = segments
        self.publisher = publisher
        self.interval = interval
        # In a cluster, user IPAddresses are allocated by the controller (and adopted by the node
        # whose pod uses them), and the pod cache may lag an ADD by a moment: attachments younger
        # than the grace period are never judged gone.
        self.cluster = cluster
        self.grace_s = 15.0 if cluster else 0.0
        # Network -> (bridge, failure) last published as this node's attachment: ready with its bridge, or not ready
        # and why; published again only when that changes (a segment that cannot be built is not written every round)
        self._reported: dict[str, tuple[str, str]] = {}
        self._missing_checked = float("-inf")  # when lease objects missing from the node's blocks were last looked for
        # user IPAddresses whose status a restart republishes once the source has listed (``_speaks_for`` needs it)
        self._unrepublished: set[str] = set()
        self._wake = threading.Event()
        self._hurry = threading.Event()  # no lull waited for: another node waits (``wake_now``), or stopping
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def recover(self) -> int:
        """Finish what a crash interrupted: an attachment still ``adding`` or ``deleting`` is torn down, and what
        the store says is published again, but the status of a user's IPAddress this node does not speak for
        (``_speaks_for``): each node's restart wrote its own ``usedByPods`` (empty) over the status another node's pod
        uses."""
        n = 0
        for rec in self.store.attachments():
            if rec.state == "ready":
                continue
            try:
                if self.teardowns.teardown_current(rec.container_id, rec.ifname, lambda r: r.state != "ready"):
                    n += 1
                    log.info("recovered %s attachment %s/%s", rec.state, rec.container_id[:12], rec.ifname)
            except CniError as exc:
                log.warning("could not recover attachment %s/%s: %s", rec.container_id[:12], rec.ifname, exc)
        ips = self.store.all_ips()
        if not self.source.ready():  # who speaks for a user's IPAddress is known once the source has listed
            self._unrepublished = {rec.key for rec in ips if _users(rec)}
        self.publisher.republish([rec for rec in ips if not _users(rec) or self._speaks_for_record(rec)],
                                 self.store.pod_statuses())
        for ip in self.store.all_ips():  # in use (a Static, or deleted meanwhile) since before this version: kept
            if ip.used_by_uids and (ip.deleted or ip.type == "Static" or ip.created_by == "user"):
                self._keep_lease_of(ip)
        return n

    def _republish_unspoken(self) -> None:
        """The statuses of user IPAddresses a restart left for the source to list, owed now for those this node speaks
        for (each read and owed in one transaction: a CNI call's newer one is never overtaken)."""
        keys, self._unrepublished = self._unrepublished, set()
        for key in sorted(keys):
            with self.store.transaction():
                rec = self.store.get_ip(key)
                if rec is not None and self._speaks_for_record(rec):
                    self.publisher.ip_status(rec)

    def _keep_lease_of(self, rec: IPRecord) -> None:
        """A pod of this node uses the IPAddress's address (a Static, or one deleted meanwhile): its lease object is
        made this node's, the pod written there, and stays until the pod goes (``LeaseRegistry.keep_in_use``)."""
        held = self.store.lease_of(rec.key)
        if held is not None and held.holder:
            self.ipam.registry.keep_in_use(held, (rec.used_by_pods[0], rec.used_by_uids[0]))

    def run_once(self) -> None:
        with self._lock:
            self._flag_pool_changes()
            # in a cluster the controller allocates Auto IPAddresses; a Static one names its
            # address, so every node may lease it (the lease object's holder is the same)
            self._sync_ipaddresses(statics_only=self.cluster)
            self._release_gone_pods()
            # a background DEL that failed, or a failed ADD whose record its undo could not forget
            if any(rec.state in ("deleting", "adding", "undoing") for rec in self.store.attachments()):
                self.teardowns.finish_deletions()
            self.ipam.expire(None, self.ipam.clock())
            self._sync_segments()
            if self.cluster and self.source.ready():  # strays are told by what exists: not before every kind is listed
                self._release_stray_cluster_leases()
                self._housekeep_blocks()
                self._write_missing_users()

    def _release_stray_cluster_leases(self) -> None:
        """IPAddressLeases this node made that its store does not hold: an ADD rolled back while the
        API was unreachable could not delete its lease object. Deleted once older than the grace period."""
        for lease in self.ipam.registry.stray(self.store, max(self.grace_s, 30.0), self.ipam.in_use):
            log.info("released stray IPAddressLease %s (%s)", lease.address, lease.pool)

    def _write_missing_users(self) -> None:
        """An IPAddress a pod of this node uses without being written on it as its user (a user's, or the Auto one
        made for the pod, by a version before that; recreated, its annotation edited): written, so that no other
        node's pod gets it."""
        for rec in self.store.all_ips():
            if rec.created_by not in ("user", "plexus") or not rec.used_by_uids or rec.kind not in IP_ADDRESS_KINDS:
                continue
            obj = self.source.get(IP_ADDRESS_KINDS[rec.kind], rec.namespace, rec.name)
            if obj is not None:
                self.ipam.registry.repair_use(rec, obj.used_by, obj.meta.uid)

    def _housekeep_blocks(self) -> None:
        """Renew this node's address blocks (of pools and of inline ranges) and return the ones that stayed empty
        (``ipamd.kube.blocks``)."""
        if self.source.ready():
            pools = [p for kind in POOL_KINDS.values() for p in self.source.list(kind)]
            pools += implicit_pool_views(self.store.implicit_pools())  # delegates' inline ranges lease in blocks too
            # before the blocks asked for are given back: past that, other nodes go by those objects alone (in them no
            # grace applies); otherwise not every round, as it reads every lease of the node
            due = time.monotonic() - self._missing_checked >= MISSING_OBJECT_GRACE_S / 2
            if due or self.ipam.registry.asked():
                self._missing_checked = time.monotonic() if due else self._missing_checked
                with self.store.transaction():  # (no API request: what the cache shows, and writes owed)
                    self.ipam.registry.owe_missing([lease for lease in self.store.all_leases() if lease.holder],
                                                   time.time() - MISSING_OBJECT_GRACE_S)
            self.ipam.registry.housekeep(pools, self.ipam.in_use, self.store.transaction)

    def _sync_segments(self) -> None:
        """Make every Network's bridge (and VLAN/VXLAN uplink) ahead of its pods, and remove the
        ones of Networks that are gone once no pod uses them."""
        if not self.source.ready():
            return
        live = self._live_networks()
        for key, resolved in live.items():
            try:
                rec, _ = self.segments.ensure(resolved)
                if self._reported.get(key) != (rec.bridge, ""):
                    self.publisher.node_attachment(key, rec.bridge, True, "")
                    self._reported[key] = (rec.bridge, "")
            except Exception as exc:  # one segment's trouble (a missing parent NIC) must not stop the others
                # the bridge built before, if any, is still there (its pods on it): named, so that the controller
                # keeps holding its ID; none when it was never built
                built = next((s.bridge for s in self.store.segments() if s.network == key), "")
                if self._reported.get(key) != (built, str(exc)):
                    log.warning("segment of %s: %s", key, exc)
                    self.publisher.node_attachment(key, built, False, str(exc))
                    self._reported[key] = (built, str(exc))
        for retired in self.segments.taken_back():  # edited back to the ID it had: its old segment is its own again
            self._reported.pop(retired, None)
            self.publisher.node_detachment(retired)  # owed first: the store says it is owed until then, across a kill
            self.segments.withdrawn(retired)
        attached = [i for a in self.store.attachments() for i in a.interfaces]
        in_use, bridges = {i.network_key for i in attached}, {i.bridge for i in attached if i.bridge}
        for rec in self.store.segments():
            if rec.network in live or rec.network in in_use or rec.bridge in bridges:
                if RETIRED in rec.network and self._reported.get(rec.network) != (rec.bridge, ""):
                    # the old segment of a network given another ID, pods still on it: reported under its own key, so
                    # that the controller keeps its ID held (granted to another Network, that one joins their wire)
                    self.publisher.node_attachment(rec.network, rec.bridge, True, "")
                    self._reported[rec.network] = (rec.bridge, "")
                continue
            if RETIRED in rec.network:  # the old segment of a network given another ID: its links alone go
                try:
                    self._reported.pop(rec.network, None)
                    self.publisher.node_detachment(rec.network)  # owed first, as a deleted Network's below
                    self.segments.remove(rec)
                    log.info("removed the old segment of %s (bridge %s)", rec.network.split(RETIRED)[0], rec.bridge)
                except Exception as exc:
                    log.warning("removing the old segment %s: %s", rec.bridge, exc)
                continue
            try:
                # owed first: a daemon killed after the segment's record is gone would no more know of its object
                # (and the report forgotten first: a removal that fails leaves the segment, reported again if its
                # Network comes back)
                self._reported.pop(rec.network, None)
                self.publisher.node_detachment(rec.network)
                self.segments.remove(rec)
                log.info("removed the segment of deleted %s (bridge %s)", rec.network, rec.bridge)
            except Exception as exc:
                log.warning("removing the segment of %s: %s", rec.network, exc)
        self._withdraw_unbacked(live)
        self._sweep_unheld()
        self._report_lost_again()

    def _withdraw_unbacked(self, live: Collection[str]) -> None:
        """Reports of Networks gone that no segment backs: a failure report (its segment could not be built, so no
        record was made) withdrawn with its Network, as a segment's report is with the segment. Left, it stood for
        ever, and was written again each time someone removed it."""
        backed = {rec.network for rec in self.store.segments()}
        for key in [k for k in self._reported if k not in live and k not in backed]:
            del self._reported[key]
            self.publisher.node_detachment(key)

    def _sweep_unheld(self) -> None:
        """This node's reports in the API that neither a segment record nor a report of this run stands for: those
        ``_reported`` no longer knows of after a restart (a Network deleted while the daemon was down, a record a kill
        cut away, a report owed before a kill and made after it). Left, each stood for ever, and one naming a
        bridge kept that bridge's ID from every other Network."""
        if self.reports is None:
            return
        held = {rec.network for rec in self.store.segments()} | set(self._reported)
        for name in self.reports.withdraw_unheld(held) or ():
            log.info("withdrew this node's attachment %s: no segment or report of this node stands for it", name)

    def _report_lost_again(self) -> None:
        """This node's attachments deleted from the API after they were reported (the controller drops those of a node
        it took for vanished: this one was only cut off; or a hand): written again as last reported, else the
        controller counts the node out of the Network and may give its ID to another while pods here are on its
        bridge. ``_reported`` alone never tells: it says they were written."""
        if not self._reported:
            return
        for key in self.publisher.lost_attachments(list(self._reported)):
            bridge, failure = self._reported[key]
            log.warning("this node's attachment to %s was deleted from the API: written again", key)
            self.publisher.node_attachment(key, bridge, not failure, failure)

    def _live_networks(self) -> dict[str, ResolvedNetwork]:
        """The networks whose segments this node should have now."""
        live: dict[str, ResolvedNetwork] = {}
        nets: list[Network | ClusterNetwork] = [*self.source.list(NETWORK), *self.source.list(CLUSTER_NETWORK)]
        for net in nets:
            cls = class_of(self.source, net)
            if cls is None and (isinstance(net, Network) or net.network_class):
                continue  # reported when a pod asks for it (a ClusterNetwork may name no class: its own segment)
            kind = segment_kind(net, cls)
            if self.cluster and kind.tagged and granted_id(net, kind) is None:
                continue  # the controller has not given it its VLAN ID / VNI (of its class's kind) yet
            live[net.meta.key] = ResolvedNetwork(net.meta.key, net.meta.kind, net.meta.name, net.meta.namespace, net,
                                                 cls, None)
        return live

    def _flag_pool_changes(self) -> None:
        """A pool shrank or lost a range under live leases: keep them, flag the ones now outside. Each lease is
        judged by the pool as its holder's network sees it (``Ipam.as_its_network_sees``), as ``lease_for`` flags
        it: an Auto address on a policy route's gateway, leased before those were cut out, stays flagged instead of
        being cleared here and set there again every round."""
        for kind in POOL_KINDS.values():
            for pool in self.source.list(kind):
                changed = []
                for lease in self.store.leases_in_pool(pool.meta.key).values():
                    holder = self.store.get_ip(lease.holder) if lease.holder else None
                    seen = self.ipam.as_its_network_sees(holder, pool) if holder is not None else pool
                    static = holder.static_ip if holder is not None and holder.type == "Static" else ""
                    outside = subnet_for(seen, lease.ip) is None or (
                        not in_ranges(seen, lease.ip) and lease.address != static)
                    if outside != lease.outside_ranges:
                        changed.append(replace(lease, outside_ranges=outside))
                if changed:
                    with self.store.transaction():
                        for lease in changed:
                            self.store.put_lease(lease)
                    log.warning("pool %s changed: %d lease(s) now %s its ranges", pool.meta.display, len(changed),
                                "outside" if changed[0].outside_ranges else "back inside")

    def _sync_ipaddresses(self, statics_only: bool = False) -> None:
        if not self.source.ready():
            return  # before the first list everything would look deleted
        self._republish_unspoken()
        live: dict[str, object] = {c.meta.key: c for c in self.source.list(IPAM_CLAIM)}
        objs = [obj for kind in IP_ADDRESS_KINDS.values() for obj in self.source.list(kind)]
        live.update((obj.meta.key, obj) for obj in objs)
        # the deleted let go first: a Static asking for an address one of them held takes it over (quarantined) in this
        # round, not the next one
        self._let_go_deleted(live)
        # a cluster's user Autos this node took up, unused now (one read a round, of this node's records alone: never
        # a read per IPAddress of the cluster)
        idle_taken_up = {r.key for r in self.store.all_ips() if (r.created_by, r.type) == ("user", "Auto")
                         and not r.used_by_uids} if statics_only else set()
        for obj in objs:
            pool = pool_of_ip(self.source, obj)
            if pool is None:
                continue
            if statics_only and obj.type != "Static":
                # the controller's to lease, but a lease this node took up for a pod is this node's to let go
                if obj.meta.key in idle_taken_up and self.ipam.let_go_taken_up(obj.meta.key, pool):
                    log.info("%s: let go of its address, of a family its pool no longer has", obj.meta.display)
                continue
            before = self.store.get_ip(obj.meta.key)
            rec = self.ipam.record_for(obj)
            if made_again(rec, obj):
                continue  # an earlier object's, in use still: keeps its address until its pods go (``_let_go_deleted``)
            if rec.deleted:
                rec = replace(rec, deleted=False)
            try:
                self.ipam.lease_alone(rec, pool)
            except CniError as exc:
                if exc.code == 100:
                    self.ipam.mark_exhausted(rec, exc)
                elif exc.code == 11:  # another node's block, or the API away: the next round tries again
                    log.debug("%s: %s", obj.meta.display, exc)
                else:
                    log.warning("%s: %s", obj.meta.display, exc)
            self._owe_status_if_changed(obj, before)

    def _let_go_deleted(self, live: dict[str, object]) -> None:
        """The records of user IPAddresses and IPAMClaims gone, or made again asking for another address: let go (their
        address quarantined) once no pod uses them (``Ipam.record_for``); kept, marked deleted, while one does."""
        for listed in self.store.all_ips():
            with self.store.transaction():
                now = self.store.get_ip(listed.key)  # as it is now: a CNI call may have changed it since the list
                if now is None:
                    continue
                rec = now
                found = live.get(rec.key)
                if found is not None and not (isinstance(found, IPAddressObject) and made_again(rec, found)):
                    if rec.deleted:  # deleted while in use, then made again as it was: it stays
                        self.store.put_ip(replace(rec, deleted=False))
                    continue
                if rec.created_by not in ("user", "claim"):
                    continue
                if rec.used_by_uids:
                    if not rec.deleted:
                        self.store.put_ip(replace(rec, deleted=True))
                        self._keep_lease_of(rec)
                    continue
                self.ipam.delete_ip(rec)

    def _owe_status_if_changed(self, obj: IPAddressObject, before: IPRecord | None) -> None:
        """A user's IPAddress whose status this round changed (leased, or Pending saying why): its status owed (in the
        outbox: no request under the store's lock), read and owed in one transaction so that a CNI call's newer one is
        never overtaken; once per change, not every round. ADD and DEL owe it for the pods that use it; this is for
        the rest (without it a Static's Pending, or its address, reached the object only at the daemon's restart)."""
        if self.publisher is None or not self._speaks_for(obj):
            return
        with self.store.transaction():
            now = self.store.get_ip(obj.meta.key)
            if now is not None and now.created_by == "user" and _shown(now) != (_shown(before) if before else None):
                self.publisher.ip_status(now)

    def _speaks_for(self, obj: IPAddressObject) -> bool:
        """Whether this node writes the status of the user's IPAddress ``obj``: not while a pod of another node is
        written on it as its user (``used_by``). Every node of a cluster leases a Static, each with its own pods in
        ``usedByPods``: the node whose pod uses it writes it (ADD and DEL), which another's write would undo. Else
        every node owes the change its own round makes: each decides the same (the one lease object of the
        address, the cluster's pools), once per change."""
        user = parse_user_text(obj.used_by)
        if user is None:
            return True
        rec = self.store.get_ip(obj.meta.key)
        return rec is not None and user.uid in rec.used_by_uids

    def _speaks_for_record(self, rec: IPRecord) -> bool:
        """``_speaks_for`` the object of a user's IPAddress record: False while the source has not listed (not known
        yet), or once the object is gone (no status to write)."""
        obj = self.source.get(IP_ADDRESS_KINDS[rec.kind], rec.namespace, rec.name) if self.source.ready() else None
        return obj is not None and self._speaks_for(obj)

    def _release_gone_pods(self) -> None:
        if not self.source.ready():
            return
        live = {p.meta.uid for p in self.source.list(POD)}
        young = time.time() - self.grace_s
        for rec in self.store.attachments():
            if rec.pod_uid in live and not rec.pod_known:
                self._pod_now_known(rec)
            if rec.pod_uid in live or rec.state != "ready" or not rec.pod_known or rec.updated_at > young:
                continue
            try:
                gone = lambda r: r.state == "ready" and r.pod_known and self.source.pod_by_uid(r.pod_uid) is None  # noqa: E731
                if self.teardowns.teardown_current(rec.container_id, rec.ifname, gone):
                    log.info("released attachment %s/%s of deleted pod %s/%s", rec.container_id[:12], rec.ifname,
                             rec.namespace, rec.pod_name)
            except CniError as exc:
                log.warning("releasing attachment of deleted pod %s/%s: %s", rec.namespace, rec.pod_name, exc)
        records = self.store.all_ips()
        owners = {r.owner_pod_uid for r in records if r.owner_pod_uid}
        owners -= {r.owner_pod_uid for r in records if r.created_at > young}  # the pod cache may lag a lease
        for uid in owners - live:
            if not self.store.attachments_of_pod(uid):
                try:
                    self.ipam.forget_pod(uid)
                except Exception as exc:  # one failure (the API unreachable) must not stop the others
                    log.warning("releasing the addresses of deleted pod %s: %s", uid, exc)
        if self.cluster:
            self._release_gone_claim_users()
        for status in self.store.pod_statuses():
            if status.uid not in live and not self.store.attachments_of_pod(status.uid):
                with self.store.transaction():
                    self.store.delete_pod_status(status.uid)

    def _pod_now_known(self, rec: AttachmentRecord) -> None:
        """An attachment whose ADD took its pod from the runtime's annotations (the cache did not show it, or showed
        its predecessor): once the cache shows the pod at its UID, it is judged gone as any other when the pod goes.
        Read again and written in one transaction, and only while ready: a DEL or a new ADD of the key meanwhile is
        neither brought back nor overwritten."""
        with self.store.transaction():
            now = self.store.get_attachment(rec.container_id, rec.ifname)
            if now is not None and now.state == "ready" and now.pod_uid == rec.pod_uid and not now.pod_known:
                self.store.put_attachment(replace(now, pod_known=True))

    def _release_gone_claim_users(self) -> None:
        """An IPAMClaim used by a pod that is gone and whose DEL never came (plexus-ipam exec'd by another
        meta-plugin, the node crashed): the pod lets go of it (read directly before it is judged gone)."""
        for claim in self.store.ips_with_prefix(f"{IPAM_CLAIM.name}/"):
            for user, ref in zip(claim.used_by_uids, claim.used_by_pods, strict=False):
                ns, _, name = ref.partition("/")
                if not name or self.source.get(POD, ns, name) is not None:
                    continue
                try:
                    if self.source.wait_for_pod(ns, name) is not None:
                        continue
                    with self.store.transaction():  # its ownerPod named the pod gone: cleared, owed in this commit
                        self.ipam.release_pod([claim.key], "", user)
                        left = self.store.get_ip(claim.key)
                        if left is not None and (left.used_by_pods or self.publisher is None):
                            left = None  # another pod uses it still: its ownerPod stays
                        if left is not None:
                            self.publisher.owe_claim_released(left, name)
                    log.info("%s: released by pod %s, which is gone", claim.key, ref)
                    if left is not None:
                        self.publisher.claim_released(left, name)
                except Exception as exc:  # the API unreachable: next round
                    log.warning("%s: %s", claim.key, exc)

    def wake(self) -> None:
        self._wake.set()

    def wake_now(self) -> None:
        """Wake for something another node waits on (a block it asked this node to return, within its
        ``RETURN_WAIT_S``): the round waits for no lull in this node's CNI calls."""
        self._hurry.set()
        self._wake.set()

    def loop(self) -> None:
        while not self._stop.is_set():
            self._hurry.clear()  # this round serves what hurried it
            if self._stop.is_set():  # (a stop in between still hurries)
                self._hurry.set()
            try:
                self.run_once()
            except CniError as exc:  # the Kubernetes API unreachable (code 11), ...: said in one line
                log.warning("reconcile: %s", exc)
            except Exception:
                log.exception("reconcile failed")
            if self._wake.wait(self.interval) and self.settle_s:
                self._stop.wait(self.settle_s)
                if self.lull is not None:  # a burst of CNI calls goes first (``ipamd.node.activity``)
                    self.lull(self._hurry)
            self._wake.clear()

    def start(self) -> None:
        threading.Thread(target=self.loop, name="reconcile", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._hurry.set()
        self._wake.set()

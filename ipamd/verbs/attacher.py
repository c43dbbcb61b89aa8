"""The CNI verbs as the daemon carries them out: ADD, DEL, CHECK, GC, STATUS.

ADD records its intent before it touches the kernel and registers an undo step after every side
effect; any failure unwinds them in reverse order, so a failed ADD leaves no link, lease or status.
DEL is idempotent and best-effort: a missing netns, link or record counts as success, every step
runs even after one fails, and it needs neither the pod nor the network objects (the attachment
record holds all it needs, each interface's driver state included). Attachments are keyed as the
runtime keys them: (container ID, CNI_IFNAME). The interfaces themselves are the drivers' business
(``ipamd.drivers``), chosen by the kind the record names.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol

from cni.errors import (
    CniError,
    InterfaceFailure,
    PluginNotAvailable,
    PoolExhausted,
    TryAgainLater,
    UnknownContainer,
)
from cni.types import Result
from ipamd.drivers.base import BuildContext, Built, InterfaceKey, LinksContext, PodSide, quietly
from ipamd.drivers.kernel import DoomedLinks, as_foreseen
from ipamd.drivers.table import DriverTable
from ipamd.invoke.chain import Chain, Invocation
from ipamd.ipam.addresses import Claim, Ipam, ResolvedNetwork, refuse_unserved
from ipamd.ipam.delegated import DelegatedAddresses, attachment_id
from ipamd.model.annotations import AddressConfig
from ipamd.model.objects import IPAM_CLAIM, POD, Meta, Pod
from ipamd.model.pluginconf import PluginConfig, parse_plugin_config
from ipamd.model.segments import SEGMENT_KINDS
from ipamd.model.timefmt import rfc3339
from ipamd.netlink.netns import NetnsGone, is_netns
from ipamd.publish.base import Publisher
from ipamd.publish.render import network_status, networks_status
from ipamd.sources.base import ObjectSource, require_listed
from ipamd.store.protocols import VerbStore
from ipamd.store.records import AttachmentRecord, BuiltInterface, IPRecord, PodStatus, SegmentRecord
from ipamd.verbs.call import CniCall, KeyedLocks, dispatch, valid_attachments
from ipamd.verbs.gc_gate import SharedExclusiveLock
from ipamd.verbs.networks import Networks, Wanted, parallel, readiness_file_present, with_lease
from ipamd.verbs.pod_statuses import PodStatusWriter, Sent
from ipamd.verbs.pods import find_pod
from ipamd.verbs.reaper import Reaper

log = logging.getLogger(__name__)
#: How long an ADD waits for a background DEL of a pod of the same name to let go of its addresses.
RECREATED_POD_WAIT_S = 5.0

class PlannedSegment(Protocol):
    @property
    def record(self) -> SegmentRecord: ...


class SegmentService(Protocol):
    """The L2 segments the verbs attach to (``ipamd.node.segments.Segments``)."""

    def plan(self, net: ResolvedNetwork) -> PlannedSegment: ...

    def bridge_index(self, net: ResolvedNetwork, bridge: str) -> int: ...

    def bridge_mtu(self, bridge: str) -> int | None: ...

    def lost(self, bridge: str) -> bool: ...


class _PodOnDemand:
    """The pod's namespace for a teardown, opened on first need; None once it is gone (its links with it)."""

    def __init__(self, open_pod: Callable[[str], AbstractContextManager[PodSide]], path: str,
                 opened: contextlib.ExitStack) -> None:
        self._open, self._path, self._opened = open_pod, path, opened
        self._pod: PodSide | None = None
        self._gone = not path
        self.refused: TryAgainLater | None = None  # the namespace is there but could not be opened now

    def netlink(self) -> Any | None:
        """None once the namespace is gone (or its path is no namespace any more); one that is there but cannot be
        opened now (EMFILE, EACCES: ``TryAgainLater``) is an error, never taken for gone: the DEL fails with 11 (the
        teardown reads ``refused``), and the addresses stay held."""
        if self.refused is not None:
            raise self.refused
        try:
            if self._pod is None and not self._gone:
                try:
                    self._pod = self._opened.enter_context(self._open(self._path))
                except NetnsGone:
                    self._gone = True
            return None if self._pod is None else self._pod.netlink()
        except TryAgainLater as exc:
            self.refused = exc
            raise

    def path(self) -> str:
        """The namespace's path as a plugin is to be told it: "" once it is gone, as for ``netlink``: a file an
        unmounted namespace left is none (the reference plugins' DEL refuses it, and would for ever)."""
        return self._path if self._path and is_netns(self._path) else ""


class _Lanes:
    """Threads for a pod's interfaces built at once, each with the sockets it opened (the node's, the pod's): a build
    and its undo steps run in one lane. An undo step holds the sockets of the thread that built, and pyroute2 binds a
    socket to the thread that uses it: from another thread it would use the fd it closed, or whatever socket (another
    namespace's) reuses that number. A build goes to the lane with the least work queued."""

    def __init__(self, lanes: int, prefix: str) -> None:
        self._lanes = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{prefix}-{i}") for i in range(lanes)]
        self._queued = [0] * lanes
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any, lane: int | None = None) -> tuple[int, Future[Any]]:
        """``fn(*args)`` in ``lane`` (the least busy one when None): the lane, and the future of the call."""
        with self._lock:
            if lane is None:
                lane = min(range(len(self._queued)), key=self._queued.__getitem__)
            self._queued[lane] += 1
        future = self._lanes[lane].submit(fn, *args)
        future.add_done_callback(lambda _: self._finished(lane))
        return lane, future

    def _finished(self, lane: int) -> None:
        with self._lock:
            self._queued[lane] -= 1

    def shutdown(self, wait: bool = True) -> None:
        for executor in self._lanes:
            executor.shutdown(wait)


class Attacher:
    def __init__(self, store: VerbStore, source: ObjectSource, ipam: Ipam, segments: SegmentService,
                 drivers: DriverTable, host_netlink: Callable[[], Any],
                 open_pod: Callable[[str], AbstractContextManager[PodSide]], publisher: Publisher,
                 ready: Callable[[], bool], fault: Callable[[str], None] = lambda step: None,
                 networks: Networks | None = None, delegation: Chain | None = None,
                 delegated: DelegatedAddresses | None = None, background_del: bool = False,
                 del_delay_s: float = 0.2) -> None:
        self.store = store
        self.source = source
        self.ipam = ipam
        self.segments = segments
        self.drivers = drivers
        self.host_netlink = host_netlink  # this thread's netlink socket on the node
        self.open_pod = open_pod
        self.publisher = publisher
        self.ready = ready
        self.fault = fault  # test hook: may kill the process (or fail) at a named step
        self.networks = networks or Networks(source, ipam)
        self.delegation = delegation  # the runner of delegated plugins, for STATUS
        self.delegated = delegated or DelegatedAddresses(ipam, source)  # addresses of delegates using plexus-ipam
        self.locks = KeyedLocks()
        # ADDs from their record to their commit (shared) against GC's read of the store and its delegates' GCs
        # (exclusive): taken after an attachment's lock, never the other way round
        self.gc_gate = SharedExclusiveLock()
        self.doomed = DoomedLinks()  # node links DELs remove, concurrent DELs' in one request
        # --del-mode background: DEL answers once the interfaces are cut off; they are removed after (``reaper``)
        self.reaper = Reaper(self._finish_deletion, del_delay_s) if background_del else None
        # a pod's delegates built at once: lanes kept across calls, so their threads keep their sockets
        self.pool = _Lanes(8, "delegate")
        self.statuses = PodStatusWriter(store, publisher)  # one write at a time per pod, of the newest store

    def handle(self, call: CniCall) -> dict[str, Any]:
        return dispatch(call, {"ADD": self.add, "DEL": self.delete, "CHECK": self.check, "GC": self.gc,
                               "STATUS": self.status})

    # -- ADD ------------------------------------------------------------------------------------
    def add(self, call: CniCall) -> dict[str, Any]:
        prev = Result.from_dict(call.config["prevResult"]) if call.config.get("prevResult") else None
        conf = parse_plugin_config(call.config)
        with self.locks.hold(call.key):
            existing = self.store.get_attachment(*call.key)
            if existing is not None and existing.state == "ready":
                taken = _defaults_taken(gw for i in existing.interfaces for gw in i.driver.get("defaultRoute") or ())
                shown = _without_defaults(prev, taken) if prev is not None else None
                return Result.from_dict(existing.result).merged_after(shown).to_dict(call.version)
            if existing is not None:  # a crashed ADD or DEL of this attachment: finish it first
                self._teardown(existing)
            require_listed(self.source)
            if self.reaper is not None:  # a pod recreated at once: its predecessor's addresses are being let go
                pod_name = (call.args.get("K8S_POD_NAMESPACE", ""), call.args.get("K8S_POD_NAME", ""))
                if not self.reaper.wait_for_pod(pod_name, RECREATED_POD_WAIT_S, own=call.key):
                    raise TryAgainLater(f"the previous sandbox of pod {pod_name[0]}/{pod_name[1]} is still letting go "
                                        "of its addresses", "K8S_POD_NAME")
            pod = find_pod(self.source, call)
            try:
                self._wait_for_cluster_network(conf)
                wanted = self.networks.wanted(call, pod, prev, conf)
                _refuse_unserved(wanted)
                # the network Plexus is chained after no longer has the pod's default route of a family an
                # interface asked for (NPWG default-route): neither in the answer nor in network-status (as Multus)
                taken = _defaults_taken(gw for w in wanted for gw in w.request.default_route)
                prev = _without_defaults(prev, taken) if prev is not None else None
                result = self._add(call, pod, wanted, prev)
            except CniError as err:
                self.publisher.failed(pod, f"{err} ({err.note})" if err.note else str(err))
                raise
        return result.merged_after(prev).to_dict(call.version)

    def _wait_for_cluster_network(self, conf: PluginConfig) -> None:
        """The readiness indicator file (Multus's ``readinessindicatorfile``): the cluster network is up."""
        deadline = time.monotonic() + conf.readiness_timeout_s
        while not readiness_file_present(conf.readiness_indicator_file):
            if time.monotonic() >= deadline:
                raise TryAgainLater(f"the cluster network is not ready: {conf.readiness_indicator_file} does not "
                                    "exist", "readinessindicatorfile")
            time.sleep(0.1)

    def _add(self, call: CniCall, pod: Pod, wanted: list[Wanted], prev: Result | None) -> Result:
        record = AttachmentRecord(call.container_id, call.ifname, pod.meta.uid, pod.meta.namespace, pod.meta.name,
                                  call.netns, "adding", updated_at=time.time(), network=call.network_name,
                                  pod_known=pod.meta.source != "runtime")
        key = InterfaceKey(call.container_id, call.ifname, call.netns)
        at_once = parallel(pod)
        wanted = _told_defaults_moved(wanted)
        # the gate held (shared) from the record to the commit or the undo's end: GC tells the delegates the store's
        # attachments, and one recorded after its read would be missing there while its plexus-ipam lease is not
        with self.open_pod(call.netns) as pod_side, self.gc_gate.shared(), contextlib.ExitStack() as undo:
            with self.store.transaction():
                self.store.put_attachment(record)
            left: list[BuiltInterface] = []  # what an undo step could not undo (``BuildContext.not_undone``)
            undo.callback(quietly, "attachment record", self._forget_record, call.key, left)
            self.fault("add:recorded")
            planned: list[tuple[Wanted, BuiltInterface, Built | None]] = []
            for w in wanted:  # every address leased before anything is built: an exhausted pool fails first
                record, iface, claims = self._lease(record, key, pod, w)
                undo.callback(quietly, "leases", self._undo_leases, claims, pod, call.key, iface.if_name, left)
                self.fault("add:leased")
                planned.append((w, iface, None))
            render = _StatusRender(call.network_name, prev, rfc3339())
            sent = self._status_ahead(pod, record, [iface for _, iface, _ in planned], call.netns, render, undo)
            built = (self._build_at_once(pod_side, planned, undo, left, call.key) if at_once else
                     [(w, iface, self._build(pod_side, w, iface, undo, left, call.key)) for w, iface, _ in planned])
            taken = _defaults_taken(gw for _, iface, _ in built for gw in iface.driver.get("defaultRoute") or ())
            built = [(w, iface, done if done is None or iface.driver.get("defaultRoute") else
                      replace(done, result=_without_defaults(done.result, taken))) for w, iface, done in built]
            interfaces = [_with(iface, done) for _, iface, done in built if done is not None]
            result = _merged(done.result for _, _, done in built if done is not None)
            used = self._ready(pod, record, interfaces, result, render)
            undo.pop_all()  # committed: what follows is published, never undone
        self.fault("add:committed")
        self._published(pod, sent, used)
        return result

    def _status_ahead(self, pod: Pod, record: AttachmentRecord, planned: list[BuiltInterface], sandbox: str,
                      render: _StatusRender, undo: contextlib.ExitStack) -> Future[Sent] | None:
        """The pod's statuses on their way to the API server while the interfaces are built, when every driver
        foresees what it will build: the write takes about as long as the build, and the ADD then waits for the
        longer of the two, not their sum. A failure puts the store's statuses back (the undo step registered here),
        as a daemon killed meanwhile does when it recovers this attachment (``_release``)."""
        if not self.publisher.remote:
            return None
        foreseen: list[BuiltInterface] = []
        for iface in as_foreseen(planned, render.prev):  # a pool's default route the pod's own keeps out, left out
            done = self.drivers[iface.kind].foresee(iface, sandbox)
            if done is None:
                return None
            foreseen.append(_with(iface, done))
        this = render.ready(record, foreseen)

        def foresee() -> PodStatus | None:
            return _status_of(this.pod_uid, this.namespace, this.pod_name,
                              [this if (a.container_id, a.ifname) == (this.container_id, this.ifname) else a
                               for a in self.store.attachments_of_pod(this.pod_uid)])

        sent = self.statuses.ahead(pod, foresee)
        undo.callback(quietly, "pod statuses", self.statuses.settle, pod, sent)
        return sent

    def _lease(self, record: AttachmentRecord, key: InterfaceKey, pod: Pod,
               w: Wanted) -> tuple[AttachmentRecord, BuiltInterface, list[Claim]]:
        """Lease the interface's addresses and record the interface in one transaction: what a driver will build (a
        delegate's exact configuration) is in the store before it is built, and no other call sees the leases without
        the interface (a dead sandbox's DEL would take the pod off them). The claims beyond the node (the API server)
        are made before that transaction, outside the store's lock (``Ipam.claiming``): no other call of the node
        waits on the API server, nor an outbox write a claim waits for on the lock this call would hold."""
        delegated: list[Claim] = []

        def attempt() -> tuple[AttachmentRecord, BuiltInterface, list[Claim]]:
            claiming: AbstractContextManager[Callable[[], list[Claim]]]
            if delegated:
                claiming = contextlib.nullcontext(lambda: delegated)
            elif w.sel and w.net:
                claiming = self.ipam.claiming(pod, w.sel, w.net, w.user_ips, w.where or "networks-spec")
            else:
                claiming = contextlib.nullcontext(list)
            with claiming as recorded, self.store.transaction():
                claims = recorded()
                iface = self._planned(key, w, claims, self._unpublished(pod.meta.uid, record))
                done = replace(record, interfaces=record.interfaces + (iface,), leasing=())
                self.store.put_attachment(done)
            return done, iface, claims

        try:
            if w.address is not None:  # a delegate's plexus-ipam address: leased here, in a transaction of its own
                # recorded first: a daemon killed after the lease's commit and before the interface's lets it go
                record = replace(record, leasing=((self.delegated.holder_key(w.address), w.request.if_name),))
                self.store.put_attachment(record)
                leased = self.delegated.lease(w.address)
                delegated, w = [leased.claim], with_lease(w, leased)
            return self.ipam.resecured(attempt)
        except PoolExhausted as exc:
            self.ipam.note_exhausted(w.user_ips, exc)
            raise
        except BaseException:
            if delegated:  # recorded already: let go again
                quietly("leases", self._undo_leases, delegated, pod, (key.container_id, key.runtime_ifname),
                        w.request.if_name)
            raise

    def _unpublished(self, pod_uid: str, this: AttachmentRecord) -> set[str]:
        """The pod's Auto IPAddresses that another attachment of it created and never was ready with (a failed ADD's
        record kept for an interface its undo left, or an ADD in flight): only a ready ADD has their objects made, so
        an ADD that uses one has it made too (made twice, it is made once). Read in the transaction that records the
        interface: that attachment's DEL lets go of one only while no recorded interface uses it (``_release``)."""
        return {k for a in self.store.attachments_of_pod(pod_uid) if not a.result and
                (a.container_id, a.ifname) != (this.container_id, this.ifname) for i in a.interfaces
                for k in i.created_ip_keys}

    def _planned(self, key: InterfaceKey, w: Wanted, claims: list[Claim],
                 unpublished: Collection[str] = ()) -> BuiltInterface:
        driver = self.drivers[w.kind]
        plan = driver.plan(key, w.request)
        seg = self.segments.plan(w.net).record if w.net is not None else None
        return BuiltInterface(
            if_name=w.request.if_name, kind=driver.kind, network_key=w.target.key, network_type=w.target.type,
            network_name=w.target.name, host_link=plan.host_link, bridge=seg.bridge if seg else "", mac=plan.mac,
            vlan_id=SEGMENT_KINDS[seg.kind].vlan_id(seg.id) if seg else 0,
            ip_keys=tuple(c.ip_key for c in claims),
            created_ip_keys=tuple(c.ip_key for c in claims if c.created_ip or c.ip_key in unpublished),
            configure_ips=plan.configure_ips,
            addresses=tuple(AddressConfig(c.ip_name, c.address, c.network, c.routes).to_dict() for c in claims),
            driver=plan.state or {}, default=w.target.default, device_id=w.device_id, device_info=w.device_info,
            **_policy(w, plan.configure_ips and bool(claims)),
        )

    def _build(self, pod_side: PodSide, w: Wanted, iface: BuiltInterface, undo: contextlib.ExitStack,
               left: list[BuiltInterface], this: tuple[str, str] = ("", "")) -> Built:
        driver = self.drivers[iface.kind]
        net = w.net
        ctx = BuildContext(self.host_netlink(), pod_side,
                           (lambda: self.segments.bridge_index(net, iface.bridge)) if net is not None else _no_bridge,
                           left.append, lambda: self.segments.bridge_mtu(iface.bridge) if net is not None else None,
                           lambda state: self._keep_state(this, iface.if_name, state))
        try:
            done = driver.build(ctx, iface, undo)
        except InterfaceFailure:
            if not iface.bridge or not self.segments.lost(iface.bridge):
                raise
            done = driver.build(ctx, iface, undo)  # the bridge was removed behind our back: it is made again
        self.fault("add:built")
        return done

    def _build_at_once(self, pod_side: PodSide, planned: list[tuple[Wanted, BuiltInterface, Built | None]],
                       undo: contextlib.ExitStack, left: list[BuiltInterface],
                       this: tuple[str, str] = ("", "")) -> list[tuple[Wanted, BuiltInterface, Built | None]]:
        """Build every interface at the same time (a pod's ``parallel`` delegation); each one's undo steps go
        on ``undo`` in order, whatever finished first, so a failure unwinds them all as a serial ADD would, each
        build's in the lane that built it (its steps hold that thread's sockets)."""
        stacks = [contextlib.ExitStack() for _ in planned]
        started = [self.pool.submit(self._build, pod_side, w, iface, stack, left, this)
                   for (w, iface, _), stack in zip(planned, stacks, strict=True)]
        wait([future for _, future in started])
        for (lane, _), stack in zip(started, stacks, strict=True):
            undo.callback(quietly, "a parallel build", self._unwind_in, lane, stack)
        return [(w, iface, future.result()) for (w, iface, _), (_, future) in zip(planned, started, strict=True)]

    def _keep_state(self, this: tuple[str, str], if_name: str, state: dict[str, Any]) -> None:
        """``BuildContext.keep_state``: ``state`` merged into the interface's driver state in the stored record, in a
        transaction of its own, the record read again under the store's lock (interfaces built at once each write
        their own). Nothing when the record is not there (a build outside an ADD)."""
        with self.store.transaction():
            record = self.store.get_attachment(*this)
            if record is None:
                return
            interfaces = tuple(replace(i, driver={**i.driver, **state}) if i.if_name == if_name else i
                               for i in record.interfaces)
            self.store.put_attachment(replace(record, interfaces=interfaces))

    def _unwind_in(self, lane: int, stack: contextlib.ExitStack) -> None:
        """One parallel build's undo steps, run in its lane and waited for."""
        self.pool.submit(stack.close, lane=lane)[1].result()

    def _ready(self, pod: Pod, record: AttachmentRecord, interfaces: list[BuiltInterface], result: Result,
               render: _StatusRender) -> list[IPRecord]:
        """Mark the attachment ready, with the pod's statuses and its addresses attached, in one commit; what the ADD
        made is owed to the publisher in that same commit (its objects, their statuses, an Event per interface), so
        that a daemon killed right after it still owes them all. The records of the addresses it uses."""
        used = [k for i in interfaces for k in i.ip_keys]
        with self.store.transaction():
            record = replace(render.ready(record, interfaces), result=result.to_dict(), updated_at=time.time())
            self.store.put_attachment(record)
            stored = self._pod_status(record.pod_uid, pod.meta.namespace, pod.meta.name)
            self.ipam.set_attached(used, True)
            status = stored or PodStatus(pod.meta.uid, pod.meta.namespace, pod.meta.name)
            records = self.ipam.records(used)
            self.publisher.attached(pod, status, self.ipam.records([k for i in interfaces for k in i.created_ip_keys]),
                                    records)
        return records

    def _published(self, pod: Pod, sent: Future[Sent] | None, used: list[IPRecord]) -> None:
        """After the ADD's commit: the writes others wait for made now (an IPAMClaim's status), and the pod's
        statuses written (unless the write ahead said them)."""
        self.publisher.attached_now(used)
        if sent is not None:
            self.statuses.settle(pod, sent)
        else:
            self.statuses.write(pod.meta.namespace, pod.meta.name, pod.meta.uid)

    def _pod_status(self, uid: str, namespace: str, name: str) -> PodStatus | None:
        """The pod's statuses from its ready attachments, stored (or removed when none is left)."""
        status = _status_of(uid, namespace, name, self.store.attachments_of_pod(uid))
        if status is None:
            self.store.delete_pod_status(uid)
        else:
            self.store.put_pod_status(status)
        return status

    def _forget_record(self, key: tuple[str, str], left: list[BuiltInterface] | None = None) -> None:
        """The last undo step of a failed ADD: the record goes, unless an undo step left an interface behind (a
        delegate whose DEL failed, a kernel link whose delete was refused): then it stays ``deleting`` with those alone,
        their addresses still held (``_undo_leases`` kept them: the interface may carry them yet), and the runtime's
        DEL (or the reconciler's ``finish_deletions``) removes them, then lets the addresses go (``_release``)."""
        with self.store.transaction():
            record = self.store.get_attachment(*key) if left else None
            if record is None or not left:
                self.store.delete_attachment(*key)
                return
            order = [i.if_name for i in record.interfaces]  # ``left`` is in undo order: kept in build order, for DEL
            once = {i.if_name: i for i in reversed(left)}  # told once per failed step: kept once, as built
            kept = sorted(once.values(), key=lambda i: order.index(i.if_name) if i.if_name in order else len(order))
            self.store.put_attachment(replace(record, state="deleting", updated_at=time.time(), leasing=(),
                                              interfaces=tuple(kept)))

    # -- DEL ------------------------------------------------------------------------------------
    def delete(self, call: CniCall) -> dict[str, Any]:
        with self.locks.hold(call.key):
            record = self.store.get_attachment(*call.key)
            if record is None:
                return {}  # never ours, or already deleted: DEL is idempotent
            if call.netns and call.netns != record.netns:
                record = replace(record, netns=call.netns)
            if self.reaper is not None:
                if record.state == "deleting" and self.reaper.pending(call.key):
                    return {}  # being finished already
                if self._cut_off(record) and self.reaper.submit(call.key, (record.namespace, record.pod_name)):
                    return {}
            self._teardown(record)
        return {}

    def _cut_off(self, record: AttachmentRecord) -> bool:
        """Record the attachment as going, then stop its interfaces carrying traffic (the pod can no longer use its
        addresses); False when a driver cannot, and the DEL removes everything before it answers."""
        drivers = [self.drivers.get(i.kind) for i in record.interfaces]
        if not record.interfaces or any(d is None for d in drivers):
            return False
        with self.store.transaction():
            self.store.put_attachment(replace(record, state="deleting", updated_at=time.time()))
        self.fault("del:marked")
        try:
            ctx = LinksContext(self.host_netlink(), lambda: None, record.netns)
            return all(d.cut_off(ctx, iface) for d, iface in zip(drivers, record.interfaces, strict=True)
                       if d is not None)
        except Exception as exc:  # the synchronous teardown then removes them, and reports a failure with its code
            log.warning("cutting off %s/%s: %s", record.container_id[:12], record.ifname, exc)
            return False

    def _finish_deletion(self, container_id: str, ifname: str) -> None:
        """The reaper's part of a background DEL: the interfaces removed, then the addresses released."""
        self.fault("del:reaping")
        self.teardown_current(container_id, ifname, lambda rec: rec.state == "deleting")

    def finish_deletions(self, older_than_s: float = 10.0) -> int:
        """Attachments left behind, finished again by the reconciler: ``deleting`` ones (a background DEL's removal,
        or a failed ADD's undo, failed), and ``adding`` or ``undoing`` ones no call holds (a failed ADD's last undo
        step, ``_forget_record``, could not forget the record: the store failed), which else only a restart's
        ``recover`` would finish. Torn down under their lock if still not ready then, as ``recover`` does."""
        now, n = time.time(), 0
        busy = self.locks.busy()  # an ADD in flight holds its attachment's lock from its record to its end
        for rec in self.store.attachments():
            key = (rec.container_id, rec.ifname)
            left = rec.state == "deleting" or (rec.state in ("adding", "undoing") and key not in busy)
            if not left or now - rec.updated_at < older_than_s or \
                    (self.reaper is not None and self.reaper.pending(key)):
                continue
            try:
                if self.teardown_current(*key, lambda r: r.state != "ready"):
                    n += 1
            except Exception as exc:  # one attachment's trouble must not stop the reconciler's round
                log.warning("finishing the DEL of %s/%s: %s", rec.container_id[:12], rec.ifname, exc)
        return n

    def teardown_current(self, container_id: str, ifname: str,
                         still_wanted: Callable[[AttachmentRecord], bool] = lambda rec: True) -> bool:
        """Tear an attachment down as it is once we hold its lock: a list read earlier may be stale
        (an ADD in flight has more interfaces by now, or a DEL has already removed it)."""
        with self.locks.hold((container_id, ifname)):
            record = self.store.get_attachment(container_id, ifname)
            if record is None or not still_wanted(record):
                return False
            self._teardown(record)
            return True

    def _teardown(self, record: AttachmentRecord) -> None:
        """Remove what an attachment built, then release what it held. Raises only if links remain."""
        with self.store.transaction():
            record = replace(record, state="deleting", updated_at=time.time())
            self.store.put_attachment(record)
        self.fault("del:marked")
        errors, refused = self._remove_interfaces(record)
        if refused is not None:  # nothing failed but the moment: 11, not a driver's failure (105)
            raise TryAgainLater(f"DEL could not remove every interface: {refused.msg}; the runtime will retry",
                                "; ".join(errors))
        if errors:
            raise InterfaceFailure("DEL could not remove every interface; the runtime will retry", "; ".join(errors))
        self.fault("del:unlinked")
        self._release(record)
        self.fault("del:released")

    def _remove_interfaces(self, record: AttachmentRecord) -> tuple[list[str], TryAgainLater | None]:
        """Every interface's driver removes what it made, the last built first (as a failed ADD unwinds, and as
        Multus DELs its delegates): what is stacked on an earlier interface (a bond over net1 and net2, a VLAN on
        net1) goes before it, and a default route taken from the cluster network goes back to it while it is there.
        Every one is tried; the failures are returned, with why the pod's namespace could not be opened now, if so."""
        errors: list[str] = []
        with contextlib.ExitStack() as opened:
            pod = _PodOnDemand(self.open_pod, record.netns, opened)
            ctx = LinksContext(self.host_netlink(), pod.netlink, pod.path(), doomed=[],
                               mac_held_elsewhere=lambda bridge, mac: self._mac_held_elsewhere(record, bridge, mac))
            for iface in reversed(record.interfaces):
                driver = self.drivers.get(iface.kind)
                try:
                    if driver is None:
                        raise InterfaceFailure(f"no driver for interfaces of kind {iface.kind!r}", iface.kind)
                    driver.teardown(ctx, iface)
                except Exception as exc:
                    errors.append(f"{iface.if_name}: {exc}")
            try:
                self.doomed.remove(ctx)
            except Exception as exc:
                errors.append(f"{', '.join(ctx.doomed or ())}: {exc}")
        return errors, pod.refused

    def _mac_held_elsewhere(self, record: AttachmentRecord, bridge: str, mac: str) -> bool:
        """Whether another attachment of this node, not being deleted, has a macvlan with ``mac`` on ``bridge``: a
        pod given a fixed MAC again (a StatefulSet's) once its old sandbox went, before that sandbox's late DEL."""
        def same(i: BuiltInterface) -> bool:
            return i.kind == "macvlan" and i.bridge == bridge and i.mac.lower() == mac.lower()

        return any((other.container_id, other.ifname) != (record.container_id, record.ifname)
                   and other.state != "deleting" and any(same(i) for i in other.interfaces)
                   for other in self.store.attachments())

    def _undo_leases(self, claims: list[Claim], pod: Pod, this: tuple[str, str], if_name: str,
                     left: Iterable[BuiltInterface] = ()) -> None:
        """A failed ADD's leases go back, but not what another sandbox of the pod took up meanwhile (looked at now, in
        the transaction that marks this attachment as being undone: a DEL of the other sandbox at the same time then
        does not keep the pod for it), nor those of an interface an undo step ``left`` (its build's undo ran first: a
        delegate whose DEL failed may still carry them; the DEL that removes it lets them go)."""
        if any(iface.if_name == if_name for iface in left):
            return
        with self.store.transaction():
            current = self.store.get_attachment(*this)
            if current is not None and current.state != "undoing":
                self.store.put_attachment(replace(current, state="undoing"))
            self.ipam.undo_claims(claims, pod, attachment_id(this[0], if_name), self._shared(pod.meta.uid, this))

    def _shared(self, pod_uid: str, this: tuple[str, str]) -> set[str]:
        """The IPAddresses the pod's other attachments use (another sandbox of it: a DEL of a dead one may come after
        the new one's ADD), which this attachment's DEL or undo must not take the pod off."""
        return {k for a in self.store.attachments_of_pod(pod_uid)
                if (a.container_id, a.ifname) != this and a.state != "undoing" for i in a.interfaces for k in i.ip_keys}

    def _release(self, record: AttachmentRecord) -> None:
        """The interfaces are gone: let go of the addresses, the record and the pod's status. What the pod's other
        attachments use is read in the same transaction that lets go and deletes the record, so two sandboxes of the
        pod torn down at once cannot each keep the pod for the other."""
        with self.statuses.owing(record.pod_uid), self.store.transaction():
            shared = self._shared(record.pod_uid, (record.container_id, record.ifname))
            for iface in record.interfaces:  # what an ADD that never was ready created has no object: let go
                self.ipam.release_pod(list(iface.ip_keys), record.pod_uid,
                                      attachment_id(record.container_id, iface.if_name), shared,
                                      () if record.result else iface.created_ip_keys)
            for ip_key, if_name in record.leasing:  # a delegate's lease made for an interface never recorded
                self.ipam.release_pod([ip_key], record.pod_uid, attachment_id(record.container_id, if_name), shared)
            self.store.delete_attachment(record.container_id, record.ifname)
            self._pod_status(record.pod_uid, record.namespace, record.pod_name)
            if self.publisher.remote:  # what the commit leaves, owed with it (written just below)
                self.publisher.owe_pod_status(Pod(Meta(POD.name, record.pod_name, record.namespace, record.pod_uid)),
                                              self.store.pod_status(record.pod_uid))
                for rec in self.ipam.records([k for i in record.interfaces for k in i.ip_keys]):
                    if rec.kind == IPAM_CLAIM.name and not rec.used_by_pods:
                        self.publisher.owe_claim_released(rec, record.pod_name)
            others = bool(self.store.attachments_of_pod(record.pod_uid))
        # the pod gone: its Auto IPAddresses go, unless another sandbox of it uses them (a dead one's DEL may come
        # after the new one's ADD) or the cache has not listed yet (a daemon just restarted knows no pod)
        if not others and self.source.ready() and self.source.pod_by_uid(record.pod_uid) is None:
            self.ipam.forget_pod(record.pod_uid)
        used = self.ipam.records([k for i in record.interfaces for k in i.ip_keys])
        self.publisher.detached(record.namespace, record.pod_name, record.pod_uid, used)
        # a pod known only from the runtime's annotations (added while the API server was away) too: its ADD owed its
        # statuses, which this supersedes (a pod that never was in the cluster: a 404, nothing written)
        self.statuses.write(record.namespace, record.pod_name, record.pod_uid)

    # -- CHECK ----------------------------------------------------------------------------------
    def check(self, call: CniCall) -> dict[str, Any]:
        record = self.store.get_attachment(*call.key)
        if record is None or record.state != "ready":
            raise UnknownContainer(f"no attachment for container {call.container_id[:12]} {call.ifname}", "CNI_CONTAINERID")
        prev = Result.from_dict(call.config["prevResult"]) if call.config.get("prevResult") else None
        problems = [p for iface in record.interfaces for p in prev_result_problems(iface, record.netns, prev)] \
            if prev is not None else []  # none given: the record is what was built
        with self.open_pod(call.netns) as pod_side:
            ctx = LinksContext(self.host_netlink(), pod_side.netlink, call.netns)
            for iface in record.interfaces:
                problems += self.drivers[iface.kind].check(ctx, iface)
        if problems:
            raise InterfaceFailure("CHECK found the attachment changed", "; ".join(problems))
        return {}

    # -- GC and STATUS --------------------------------------------------------------------------
    def gc(self, call: CniCall) -> dict[str, Any]:
        keep = valid_attachments(call)
        errors = []
        for record in self.store.attachments():
            if record.network and record.network != call.network_name:
                continue  # another network configuration's attachment: not ours to judge
            if (record.container_id, record.ifname) in keep:
                continue
            try:  # only as listed: an ADD in flight then (not in the runtime's list yet) has finished since
                self.teardown_current(record.container_id, record.ifname, still_wanted=record.__eq__)
            except CniError as exc:
                errors.append(f"{record.container_id[:12]}/{record.ifname}: {exc}")
        self._collect()
        if errors:
            raise InterfaceFailure("GC could not release every stale attachment", "; ".join(errors))
        return {}

    def _collect(self) -> None:
        """The delegates are told every attachment still here, not the runtime's list: one kept by ``gc`` (its ADD
        finished since the runtime listed) holds its delegate's addresses, and a delegate shared with another
        configuration holds that one's too; a delegate GCs only its own network, so naming more lets nothing go. No
        ADD records an attachment or commits from the read until they are done (the gate, exclusive; no attachment's
        lock is held here, as an ADD takes the gate under its own): one made in between, its plexus-ipam call over,
        would be missing from the list while its lease is not."""
        with self.gc_gate.exclusive():
            kept = [i for rec in self.store.attachments() for i in rec.interfaces]
            for kind, driver in self.drivers.items():
                driver.collect([i for i in kept if i.kind == kind])

    def status(self, call: CniCall) -> dict[str, Any]:
        """Ready for ADD: the daemon, and the cluster network's plugins when Plexus delegates to them (their own
        STATUS, from CNI 1.1 on, as its code: 50, or 51 when existing pods are degraded)."""
        if not self.ready():
            raise PluginNotAvailable("plexus-ipamd is not ready", "object source not synced")
        conf = parse_plugin_config(call.config)
        if not readiness_file_present(conf.readiness_indicator_file):  # ADD would wait for it, then answer 11
            raise PluginNotAvailable(f"the cluster network is not ready: {conf.readiness_indicator_file} does not "
                                     "exist", "readinessindicatorfile")
        if conf.cluster_network and self.delegation is not None:
            cluster = self.networks.cluster_network(conf)
            self.delegation.status(Invocation(cluster.conflist, "", "", "", bin_dirs=conf.plugin_dirs(call.cni_path),
                                              timeout_s=conf.delegate_timeout_s))
        return {}


@dataclass(frozen=True, slots=True)
class _StatusRender:
    """How one ADD renders its interfaces into the pod's statuses: the network it was chained after (NPWG's default
    entry) and one time, so that the statuses written ahead and those after the build are alike when the build is."""

    network_name: str
    prev: Result | None
    since: str

    def ready(self, record: AttachmentRecord, interfaces: list[BuiltInterface]) -> AttachmentRecord:
        cluster = (self.network_name, self.prev.to_dict()) if self.prev is not None else None
        return replace(record, state="ready", interfaces=tuple(interfaces),
                       networks_status=tuple(networks_status(interfaces, self.since)),
                       network_status=tuple(network_status(interfaces, cluster)))


def _with(iface: BuiltInterface, done: Built) -> BuiltInterface:
    """The interface's record once built: its MAC, its driver's state, its share of the result, and its addresses
    as the kernel took them (a pool's default route left to the pod's own is named nowhere)."""
    return replace(iface, mac=done.mac, driver=done.state or iface.driver, result=done.result.to_dict(),
                   addresses=iface.addresses if done.addresses is None else done.addresses)


def _status_of(uid: str, namespace: str, name: str, records: list[AttachmentRecord]) -> PodStatus | None:
    """The pod's statuses: its ready attachments' entries, in their order; None when none is ready."""
    ready = [a for a in records if a.state == "ready"]
    if not ready:
        return None
    return PodStatus(uid, namespace, name, tuple(e for a in ready for e in a.networks_status), time.time(),
                     tuple(e for a in ready for e in a.network_status))


def prev_result_problems(iface: BuiltInterface, sandbox: str, prev: Result) -> list[str]:
    """How the runtime's ``prevResult`` disagrees with what the interface was built as (SPEC "CHECK": the plugin
    consults it): its entries for the interface's name in the interface's sandbox, their MAC and the addresses
    given on them, against the record's. Entries of other interfaces are other plugins' business."""
    own = Result.from_dict(iface.result) if iface.result else Result()
    index = next((i for i, e in enumerate(own.interfaces) if e.name == iface.if_name), None)
    sandbox = own.interfaces[index].sandbox if index is not None and own.interfaces[index].sandbox else sandbox
    on_it = {ipaddress.ip_interface(ip.address) for ip in own.ips if index is not None and ip.interface == index}
    has = on_it | {ipaddress.ip_interface(ip.address) for ip in own.ips if ip.interface is None}
    problems: list[str] = []
    for i, entry in enumerate(prev.interfaces):
        if entry.name != iface.if_name or (entry.sandbox or sandbox) != sandbox:
            continue
        if entry.mac and iface.mac and entry.mac.lower() != iface.mac.lower():
            problems.append(f"{iface.if_name}: prevResult gives MAC {entry.mac}, the interface has {iface.mac}")
        if not iface.result:  # recorded without its share of the result: nothing to hold the addresses to
            continue
        given = {ipaddress.ip_interface(ip.address) for ip in prev.ips if ip.interface == i}
        problems += [f"{iface.if_name}: prevResult gives {a}, which the attachment does not have"
                     for a in sorted(given - has, key=str)]
        problems += [f"{iface.if_name}: prevResult lacks {a}, which the attachment has"
                     for a in sorted(on_it - given, key=str)]
    return problems


def _refuse_unserved(wanted: list[Wanted]) -> None:
    """Refuse, before anything is leased, an interface on a network whose pool has an entry stored before its network
    was refused (``unserved_entries``: IPv6 link-local, whose addresses CHECK never finds): code 7 naming the network,
    the pool and the entry's field, instead of a pod whose CHECK fails for ever."""
    for w in wanted:
        if w.net is None or w.net.pool is None:
            continue
        refuse_unserved(w.net.pool, w.net.obj.meta.display)


def _defaults_taken(gateways: Iterable[str]) -> set[str]:
    """The default routes (their ``dst``) that interfaces asking for the pod's default route took over."""
    return {"::/0" if ":" in gw else "0.0.0.0/0" for gw in gateways}


def _told_defaults_moved(wanted: list[Wanted]) -> list[Wanted]:
    """Every interface told which of the pod's default routes an interface of the attachment takes (a delegate's
    recorded result, CHECK's and DEL's ``prevResult``, is to say what the pod has)."""
    moved = tuple(sorted(_defaults_taken(gw for w in wanted for gw in w.request.default_route)))
    return [replace(w, request=replace(w.request, defaults_moved=moved)) for w in wanted] if moved else wanted


def _without_defaults(result: Result, taken: set[str]) -> Result:
    """``result`` without the default routes another interface took over: the kernel's route was replaced."""
    if not taken:
        return result
    return replace(result, routes=tuple(r for r in result.routes if r.dst not in taken))


def _merged(parts: Iterable[Result]) -> Result:
    """The interfaces' shares of the result, one after the other, each route once."""
    whole: Result | None = None
    for part in parts:
        whole = part.merged_after(whole)
    if whole is None:
        return Result()
    return replace(whole, routes=tuple(dict.fromkeys(whole.routes)))


def _no_bridge() -> int:
    raise InterfaceFailure("this interface is on no Plexus segment", "bridge")


def _policy(w: Wanted, own_addresses: bool) -> dict[str, Any]:
    """The policy routing an interface's network asks for: none where it has no addresses of its own to route from
    (left to a guest, or no pool), as ADD installs none there and CHECK must not look for it."""
    opts = w.net.obj.pod if w.net is not None else None
    if opts is None or not opts.table or not own_addresses:
        return {}
    return {"table": opts.table, "policy_routes": tuple(r.to_dict() for r in opts.routes)}

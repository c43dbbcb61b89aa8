"""The gRPC IPAM API (``proto/plexus/ipam/v1/ipam.proto``) and the standard health service.

A thin servicer: it turns messages into calls on ``Ipam`` and reads of the store, and ``CniError``s into gRPC
statuses whose trailing metadata carries the CNI code (``plexus-cni-code``); any other failure is the internal
error (999), never a call or a stream lost to an exception.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cni.errors import CniError, InternalError, InvalidConfig, ObjectNotFound
from ipamd.api import ipam_pb2 as pb
from ipamd.api import ipam_pb2_grpc as pb_grpc
from ipamd.ipam.addresses import Ipam
from ipamd.ipam.allocator import in_ranges
from ipamd.kube.api_calls import call_in_progress
from ipamd.model.objects import (
    CLUSTER_IP_ADDRESS_POOL,
    INT64_MAX,
    IP_ADDRESS_POOL,
    POD,
    POOL_KINDS,
    SERVICE,
    AddressPool,
)
from ipamd.model.segments import SEGMENT_KINDS
from ipamd.model.services import ServiceInvalid, endpoint_slices, local_pod, parse_service
from ipamd.node.segments import TAKEN_BACK
from ipamd.sources.base import ObjectSource
from ipamd.sources.lookups import check_service_network
from ipamd.store.protocols import NodeStore
from ipamd.store.records import IPRecord, LeaseRecord, PodStatus, SegmentRecord

log = logging.getLogger(__name__)

CNI_CODE_KEY = "plexus-cni-code"
#: Every code of ``cni.errors`` (a test keeps it so): what the request got wrong is INVALID_ARGUMENT, what the
#: system's state refuses FAILED_PRECONDITION, and the daemon's own failure INTERNAL.
STATUS_FOR_CODE = {
    1: grpc.StatusCode.FAILED_PRECONDITION, 2: grpc.StatusCode.INVALID_ARGUMENT, 3: grpc.StatusCode.NOT_FOUND,
    4: grpc.StatusCode.INVALID_ARGUMENT, 5: grpc.StatusCode.INTERNAL, 6: grpc.StatusCode.INVALID_ARGUMENT,
    7: grpc.StatusCode.INVALID_ARGUMENT, 11: grpc.StatusCode.UNAVAILABLE, 50: grpc.StatusCode.FAILED_PRECONDITION,
    51: grpc.StatusCode.FAILED_PRECONDITION, 100: grpc.StatusCode.RESOURCE_EXHAUSTED,
    101: grpc.StatusCode.UNAVAILABLE, 102: grpc.StatusCode.FAILED_PRECONDITION, 103: grpc.StatusCode.NOT_FOUND,
    104: grpc.StatusCode.ALREADY_EXISTS, 105: grpc.StatusCode.INTERNAL, 999: grpc.StatusCode.INTERNAL,
}


def _abort(context: grpc.ServicerContext, err: CniError) -> None:
    context.set_trailing_metadata(((CNI_CODE_KEY, str(err.code)),))
    context.abort(STATUS_FOR_CODE.get(err.code, grpc.StatusCode.UNKNOWN), str(err))


def _internal(what: str, exc: Exception) -> InternalError:
    """An unexpected failure as the internal error (999), the details saying what (the log has the traceback)."""
    log.exception("gRPC %s failed unexpectedly", what)
    return InternalError("plexus-ipamd failed unexpectedly", f"{type(exc).__name__}: {exc}")


def _mapped(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: IpamService, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            with call_in_progress():
                return fn(self, request, context)
        except CniError as err:
            _abort(context, err)
        except Exception as exc:
            _abort(context, _internal(fn.__name__, exc))

    wrapper.__name__ = fn.__name__
    return wrapper


def lease_message(lease: LeaseRecord, rec: IPRecord | None) -> pb.Lease:
    return pb.Lease(
        pool=lease.pool, address=lease.address, network=lease.network, holder=lease.holder or "",
        state=lease.state, pods=[p for p in rec.used_by_pods if p] if rec else [], created_at=lease.created_at,
        orphaned_at=lease.orphaned_at or 0.0, ttl_seconds=lease.ttl, outside_ranges=lease.outside_ranges,
        holder_kind=rec.kind if rec else "", network_name=rec.network_name if rec else "",
        interface=rec.interface if rec else "",
    )


def _usage(leases: Iterable[LeaseRecord], size: int,
           in_ranges: Callable[[int], bool] = lambda ip: True) -> tuple[int, int, int]:
    """(used, quarantined, free) of a pool of ``size`` addresses in its ranges holding ``leases``: free is what it
    can still hand out (a Static's address outside its ranges takes none of them)."""
    leases = list(leases)
    quarantined = sum(1 for lease in leases if lease.state == "orphaned")
    return len(leases) - quarantined, quarantined, max(size - sum(1 for lease in leases if in_ranges(lease.ip)), 0)



def _shown_status(seg: SegmentRecord) -> dict[str, Any]:
    """A segment's status as the node has it, without its own bookkeeping (``TAKEN_BACK``); before any status was
    written for it (a lone node's network not yet ready, or a node of a cluster), its bridge and the ID it has, not
    a bare bridge shown as having none."""
    shown = {k: v for k, v in seg.status.items() if k != TAKEN_BACK}
    if shown:
        return shown
    kind = SEGMENT_KINDS.get(seg.kind)
    return {"bridgeName": seg.bridge, **(kind.status_ids(seg.id) if kind is not None and seg.id else {})}

class IpamService(pb_grpc.IpamServicer):
    def __init__(self, store: NodeStore, source: ObjectSource, ipam: Ipam, sync: Callable[[], list[Any]],
                 outbox_made: Callable[[], int] = lambda: 0) -> None:
        self.store = store
        self.source = source
        self.ipam = ipam
        self.sync = sync
        self.outbox_made = outbox_made

    def _pool(self, ref: pb.PoolRef) -> AddressPool:
        if ref.kind and ref.kind not in POOL_KINDS:
            raise InvalidConfig(f"{ref.kind!r} is no pool kind: {' or '.join(POOL_KINDS)} (or empty: by namespace)",
                                "pool.kind")
        kind = POOL_KINDS.get(ref.kind) or (IP_ADDRESS_POOL if ref.namespace else CLUSTER_IP_ADDRESS_POOL)
        ns = ref.namespace if kind.namespaced else ""
        pool = self.source.get(kind, ns, ref.name)
        if pool is None:
            raise ObjectNotFound(f"{kind.name} {ns + '/' if ns else ''}{ref.name} does not exist", "pool")
        return pool

    @_mapped
    def Allocate(self, request: pb.AllocateRequest, context: grpc.ServicerContext) -> pb.Lease:  # noqa: N802
        rec, lease = self.ipam.allocate_for(request.owner, self._pool(request.pool), request.address)
        return lease_message(lease, rec)

    @_mapped
    def Release(self, request: pb.ReleaseRequest, context: grpc.ServicerContext) -> pb.ReleaseResponse:  # noqa: N802
        released = self.ipam.release_address(self._pool(request.pool), request.address, request.force)
        return pb.ReleaseResponse(released=released)

    def Leases(self, request_iterator: Iterator[pb.LeaseOps], context: grpc.ServicerContext) -> Iterator[pb.LeaseResults]:  # noqa: N802
        """Each message's operations in order, each on its own (an error is that operation's result)."""
        for batch in request_iterator:
            yield pb.LeaseResults(results=[self._op(op) for op in batch.ops])

    def _op(self, op: pb.LeaseOp) -> pb.LeaseResult:
        with call_in_progress():
            return self._serve_op(op)

    def _serve_op(self, op: pb.LeaseOp) -> pb.LeaseResult:
        try:
            if op.HasField("allocate"):
                req = op.allocate
                rec, lease = self.ipam.allocate_for(req.owner, self._pool(req.pool), req.address)
                return pb.LeaseResult(lease=lease_message(lease, rec))
            if op.HasField("release"):
                rel = op.release
                return pb.LeaseResult(released=pb.ReleaseResponse(
                    released=self.ipam.release_address(self._pool(rel.pool), rel.address, rel.force)))
            raise InvalidConfig("an operation is an allocate or a release", "op")
        except Exception as exc:  # that operation's result, never the end of the stream
            err = exc if isinstance(exc, CniError) else _internal("Leases operation", exc)
            return pb.LeaseResult(error=pb.OpError(code=err.code, msg=err.msg, details=err.details))

    @_mapped
    def ListLeases(self, request: pb.ListLeasesRequest, context: grpc.ServicerContext) -> pb.ListLeasesResponse:  # noqa: N802
        recs = {r.key: r for r in self.store.all_ips()}
        leases = [
            lease_message(lease, recs.get(lease.holder or ""))
            for lease in self.store.all_leases() if not request.pool or lease.pool == request.pool
        ]
        return pb.ListLeasesResponse(leases=leases)

    @_mapped
    def ListPools(self, request: pb.ListPoolsRequest, context: grpc.ServicerContext) -> pb.ListPoolsResponse:  # noqa: N802
        out = []
        for kind in POOL_KINDS.values():
            for pool in self.source.list(kind):
                used, quarantined, free = _usage(self.store.leases_in_pool(pool.meta.key).values(), pool.size,
                                                 functools.partial(in_ranges, pool))
                out.append(pb.PoolUsage(
                    pool=pool.meta.key, networks=[str(s.network) for s in pool.subnets],
                    size=min(pool.size, INT64_MAX), used=used, quarantined=quarantined, free=min(free, INT64_MAX),
                    lease_ttl_seconds=pool.lease_ttl_s,
                ))
        for implicit in self.store.implicit_pools():  # inline ranges: usage within each one's own ranges
            size = sum(b - a + 1 for a, b in implicit.ranges)
            inside = [lease for ip, lease in self.store.leases_in_pool(implicit.pool).items()
                      if any(a <= ip <= b for a, b in implicit.ranges)]
            used, quarantined, free = _usage(inside, size)
            out.append(pb.PoolUsage(pool=implicit.pool, networks=[implicit.network], size=min(size, INT64_MAX),
                                    used=used, quarantined=quarantined, free=min(free, INT64_MAX),
                                    lease_ttl_seconds=implicit.ttl,
                                    implicit_for=implicit.owner))
        return pb.ListPoolsResponse(pools=out)

    @_mapped
    def ListPods(self, request: pb.ListPodsRequest, context: grpc.ServicerContext) -> pb.ListPodsResponse:  # noqa: N802
        """The pods' statuses, a name's pod now first: an older pod of its name (its sandbox not DEL'd yet) has its
        own statuses, listed after it."""
        found = [s for s in self.store.pod_statuses()
                 if (not request.namespace or s.namespace == request.namespace)
                 and (not request.name or s.name == request.name)]
        pods = [
            pb.PodStatus(namespace=s.namespace, name=s.name, uid=s.uid, networks_status_json=json.dumps(list(s.networks_status)),
                         network_status_json=json.dumps(list(s.network_status)))
            for s in sorted(found, key=self._newest_first(found))
        ]
        return pb.ListPodsResponse(pods=pods)

    def _newest_first(self, found: list[PodStatus]) -> Callable[[PodStatus], tuple[str, str, bool, float]]:
        """Sort key: by namespace and name, the UID the object source shows for that name first, then the most
        recently updated (when the source has no such pod, or not yet)."""
        current = {}
        for key in {(s.namespace, s.name) for s in found}:
            obj = self.source.get(POD, *key)
            current[key] = obj.meta.uid if obj is not None else ""
        return lambda s: (s.namespace, s.name, s.uid != current[(s.namespace, s.name)], -s.updated_at)

    @_mapped
    def ListServiceEndpoints(self, request: pb.ListServiceEndpointsRequest,  # noqa: N802
                             context: grpc.ServicerContext) -> pb.ListServiceEndpointsResponse:
        """Services over an additional network from the object source (local mode's manifests), with the endpoints
        the controller would write: the selected pods' addresses from their statuses, ready once attached. A pod's
        statuses are its UID's: an older pod of its name (its sandbox not DEL'd yet) has its own."""
        statuses = {s.uid: s for s in self.store.pod_statuses()}
        pods = [local_pod(p, statuses.get(p.meta.uid)) for p in self.source.list(POD)]
        out = []
        for obj in self.source.list(SERVICE):
            if request.namespace and obj.meta.namespace != request.namespace:
                continue
            found = pb.ServiceEndpoints(namespace=obj.meta.namespace, name=obj.meta.name)
            try:
                svc = parse_service(obj.doc)
                if svc is None:
                    continue
                found.network = svc.network.display
                check_service_network(self.source, svc.network)
            except ServiceInvalid as exc:
                found.problem = f"{exc.field}: {exc.problem}"
                out.append(found)
                continue
            for body in endpoint_slices(svc, pods, "local"):  # the IPv4 slice's, then the IPv6 one's
                for e in body["endpoints"]:
                    found.endpoints.append(pb.ServiceEndpoint(address=e["addresses"][0],
                                                              ready=e["conditions"]["ready"],
                                                              pod=f"{svc.namespace}/{e['targetRef']['name']}"))
            out.append(found)
        return pb.ListServiceEndpointsResponse(services=out)

    @_mapped
    def ListIPAddresses(self, request: pb.ListIPAddressesRequest, context: grpc.ServicerContext) -> pb.ListIPAddressesResponse:  # noqa: N802
        out = []
        for r in self.store.all_ips():
            status = {"phase": r.phase, "address": r.address, "network": r.network, "routes": list(r.routes),
                      "usedByPods": list(r.used_by_pods), "conditions": list(r.conditions)}
            out.append(pb.IPAddressStatus(kind=r.kind, namespace=r.namespace, name=r.name, type=r.type,
                                          network_kind=r.network_kind, network_name=r.network_name,
                                          status_json=json.dumps(status)))
        return pb.ListIPAddressesResponse(addresses=out)

    @_mapped
    def ListNetworks(self, request: pb.ListNetworksRequest, context: grpc.ServicerContext) -> pb.ListNetworksResponse:  # noqa: N802
        return pb.ListNetworksResponse(networks=[
            pb.NetworkStatus(key=s.network, status_json=json.dumps(_shown_status(s)))
            for s in self.store.segments()
        ])

    @_mapped
    def ListOutbox(self, request: pb.ListOutboxRequest, context: grpc.ServicerContext) -> pb.ListOutboxResponse:  # noqa: N802
        entries = [pb.OutboxEntry(seq=e.seq, target=e.target, op=e.op, created_at=e.created_at, attempts=e.attempts,
                                  next_at=e.next_at, error=e.error)
                   for e in self.store.outbox_head(request.limit or 100)]
        return pb.ListOutboxResponse(depth=self.store.outbox_depth(), entries=entries, made=self.outbox_made())

    @_mapped
    def Sync(self, request: pb.SyncRequest, context: grpc.ServicerContext) -> pb.SyncResponse:  # noqa: N802
        problems = self.sync()
        return pb.SyncResponse(problems=[pb.Problem(source=p.source, field=p.field, message=p.message) for p in problems])


def serve(path: str, service: IpamService, ready: Callable[[], bool]) -> tuple[grpc.Server, health.HealthServicer]:
    """Start the gRPC server on a private unix socket; the health service reports SERVING when ready."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)
    # a Leases stream holds a worker for its life: 16 keep plexusctl answered with a few streams open
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_IpamServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    old = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix:{path}")
        server.start()
    finally:
        os.umask(old)
    status = health_pb2.HealthCheckResponse.SERVING if ready() else health_pb2.HealthCheckResponse.NOT_SERVING
    health_servicer.set("", status)
    health_servicer.set("plexus.ipam.v1.Ipam", status)
    return server, health_servicer

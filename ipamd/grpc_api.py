"""The gRPC IPAM API (``proto/plexus/ipam/v1/ipam.proto``) and the standard health service.

A thin servicer: it turns messages into calls on ``Ipam``/``Store`` and ``CniError``s into gRPC
statuses whose trailing metadata carries the CNI code (``plexus-cni-code``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import asdict
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cni.errors import AddressConflict, CniError, InvalidConfig, ObjectNotFound
from ipamd.allocator import to_int
from ipamd.api import ipam_pb2 as pb
from ipamd.api import ipam_pb2_grpc as pb_grpc
from ipamd.ipam import Ipam
from ipamd.objects import AddressPool
from ipamd.sources import ObjectSource
from ipamd.store import IPRecord, LeaseRecord, Store

CNI_CODE_KEY = "plexus-cni-code"
STATUS_FOR_CODE = {
    3: grpc.StatusCode.NOT_FOUND, 7: grpc.StatusCode.INVALID_ARGUMENT, 11: grpc.StatusCode.UNAVAILABLE,
    100: grpc.StatusCode.RESOURCE_EXHAUSTED, 103: grpc.StatusCode.NOT_FOUND, 104: grpc.StatusCode.ALREADY_EXISTS,
}


def _abort(context: grpc.ServicerContext, err: CniError) -> None:
    context.set_trailing_metadata(((CNI_CODE_KEY, str(err.code)),))
    context.abort(STATUS_FOR_CODE.get(err.code, grpc.StatusCode.FAILED_PRECONDITION), str(err))


def _mapped(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: IpamService, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except CniError as err:
            _abort(context, err)

    wrapper.__name__ = fn.__name__
    return wrapper


def lease_message(lease: LeaseRecord, rec: IPRecord | None) -> pb.Lease:
    return pb.Lease(
        pool=lease.pool, address=lease.address, network=lease.network, holder=lease.holder or "",
        state=lease.state, pods=list(rec.used_by_pods) if rec else [], created_at=lease.created_at,
        orphaned_at=lease.orphaned_at or 0.0, ttl_seconds=lease.ttl, outside_ranges=lease.outside_ranges,
    )


class IpamService(pb_grpc.IpamServicer):
    def __init__(self, store: Store, source: ObjectSource, ipam: Ipam, sync: Callable[[], list[Any]]) -> None:
        self.store = store
        self.source = source
        self.ipam = ipam
        self.sync = sync

    def _pool(self, ref: pb.PoolRef) -> AddressPool:
        kind = ref.kind or ("IPAddressPool" if ref.namespace else "ClusterIPAddressPool")
        pool = self.source.get(kind, ref.namespace if kind == "IPAddressPool" else "", ref.name)
        if not isinstance(pool, AddressPool):
            raise ObjectNotFound(f"{kind} {ref.namespace + '/' if ref.namespace else ''}{ref.name} does not exist", "pool")
        return pool

    @_mapped
    def Allocate(self, request: pb.AllocateRequest, context: grpc.ServicerContext) -> pb.Lease:  # noqa: N802
        pool = self._pool(request.pool)
        if not request.owner:
            raise InvalidConfig("owner is required", "owner")
        key = f"api/{request.owner}"
        rec = self.store.get_ip(key) or IPRecord(
            key=key, kind="api", namespace="", name=request.owner, network_kind="", network_name="",
            type="Static" if request.address else "Auto", static_ip=request.address, created_by="api",
            created_at=time.time(),
        )
        with self.store.transaction():
            rec, lease, _ = self.ipam.lease_for(rec, pool)
        return lease_message(lease, rec)

    @_mapped
    def Release(self, request: pb.ReleaseRequest, context: grpc.ServicerContext) -> pb.ReleaseResponse:  # noqa: N802
        pool = self._pool(request.pool)
        lease = self.store.lease_at(pool.meta.key, to_int(request.address))
        if lease is None:
            return pb.ReleaseResponse(released=False)
        rec = self.store.get_ip(lease.holder) if lease.holder else None
        if rec is not None and rec.used_by_uids and not request.force:
            raise AddressConflict(f"{lease.address} is in use by pod {', '.join(rec.used_by_pods)}", "force")
        with self.store.transaction():
            self.ipam._drop_lease(lease)
            if rec is not None:
                self.store.delete_ip(rec.key) if rec.created_by != "user" else self.store.put_ip(
                    IPRecord(**{**asdict(rec), "phase": "Pending", "address": "", "network": ""}))
        return pb.ReleaseResponse(released=True)

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
        for kind in ("IPAddressPool", "ClusterIPAddressPool"):
            for pool in self.source.list(kind):
                assert isinstance(pool, AddressPool)
                leases = self.store.leases_in_pool(pool.meta.key).values()
                quarantined = sum(1 for lease in leases if lease.state == "orphaned")
                used = len(leases) - quarantined
                out.append(pb.PoolUsage(
                    pool=pool.meta.key, networks=[str(s.network) for s in pool.subnets], size=pool.size,
                    used=used, quarantined=quarantined, free=max(pool.size - len(leases), 0),
                    lease_ttl_seconds=pool.lease_ttl_s,
                ))
        return pb.ListPoolsResponse(pools=out)

    @_mapped
    def ListPods(self, request: pb.ListPodsRequest, context: grpc.ServicerContext) -> pb.ListPodsResponse:  # noqa: N802
        pods = [
            pb.PodStatus(namespace=s.namespace, name=s.name, uid=s.uid, networks_status_json=json.dumps(list(s.networks_status)))
            for s in self.store.pod_statuses()
            if (not request.namespace or s.namespace == request.namespace) and (not request.name or s.name == request.name)
        ]
        return pb.ListPodsResponse(pods=pods)

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
            pb.NetworkStatus(key=s.network, status_json=json.dumps(s.status or {"bridgeName": s.bridge}))
            for s in self.store.segments()
        ])

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
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
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

from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PoolRef(_message.Message):
    __slots__ = ("kind", "namespace", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    namespace: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("pool", "address", "network", "holder", "state", "pods", "created_at", "orphaned_at", "ttl_seconds", "outside_ranges", "holder_kind", "network_name", "interface")
    POOL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ORPHANED_AT_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_RANGES_FIELD_NUMBER: _ClassVar[int]
    HOLDER_KIND_FIELD_NUMBER: _ClassVar[int]
    NETWORK_NAME_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    pool: str
    address: str
    network: str
    holder: str
    state: str
    pods: _containers.RepeatedScalarFieldContainer[str]
    created_at: float
    orphaned_at: float
    ttl_seconds: float
    outside_ranges: bool
    holder_kind: str
    network_name: str
    interface: str
    def __init__(self, pool: _Optional[str] = ..., address: _Optional[str] = ..., network: _Optional[str] = ..., holder: _Optional[str] = ..., state: _Optional[str] = ..., pods: _Optional[_Iterable[str]] = ..., created_at: _Optional[float] = ..., orphaned_at: _Optional[float] = ..., ttl_seconds: _Optional[float] = ..., outside_ranges: _Optional[bool] = ..., holder_kind: _Optional[str] = ..., network_name: _Optional[str] = ..., interface: _Optional[str] = ...) -> None: ...

class AllocateRequest(_message.Message):
    __slots__ = ("pool", "owner", "address")
    POOL_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    pool: PoolRef
    owner: str
    address: str
    def __init__(self, pool: _Optional[_Union[PoolRef, _Mapping]] = ..., owner: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("pool", "address", "force")
    POOL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    pool: PoolRef
    address: str
    force: bool
    def __init__(self, pool: _Optional[_Union[PoolRef, _Mapping]] = ..., address: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class LeaseOp(_message.Message):
    __slots__ = ("allocate", "release")
    ALLOCATE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    allocate: AllocateRequest
    release: ReleaseRequest
    def __init__(self, allocate: _Optional[_Union[AllocateRequest, _Mapping]] = ..., release: _Optional[_Union[ReleaseRequest, _Mapping]] = ...) -> None: ...

class LeaseOps(_message.Message):
    __slots__ = ("ops",)
    OPS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[LeaseOp]
    def __init__(self, ops: _Optional[_Iterable[_Union[LeaseOp, _Mapping]]] = ...) -> None: ...

class OpError(_message.Message):
    __slots__ = ("code", "msg", "details")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MSG_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: int
    msg: str
    details: str
    def __init__(self, code: _Optional[int] = ..., msg: _Optional[str] = ..., details: _Optional[str] = ...) -> None: ...

class LeaseResult(_message.Message):
    __slots__ = ("lease", "released", "error")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    released: ReleaseResponse
    error: OpError
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ..., released: _Optional[_Union[ReleaseResponse, _Mapping]] = ..., error: _Optional[_Union[OpError, _Mapping]] = ...) -> None: ...

class LeaseResults(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[LeaseResult]
    def __init__(self, results: _Optional[_Iterable[_Union[LeaseResult, _Mapping]]] = ...) -> None: ...

class ListLeasesRequest(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: str
    def __init__(self, pool: _Optional[str] = ...) -> None: ...

class ListLeasesResponse(_message.Message):
    __slots__ = ("leases",)
    LEASES_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    def __init__(self, leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ...) -> None: ...

class PoolUsage(_message.Message):
    __slots__ = ("pool", "networks", "size", "used", "quarantined", "free", "lease_ttl_seconds", "implicit_for")
    POOL_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    IMPLICIT_FOR_FIELD_NUMBER: _ClassVar[int]
    pool: str
    networks: _containers.RepeatedScalarFieldContainer[str]
    size: int
    used: int
    quarantined: int
    free: int
    lease_ttl_seconds: float
    implicit_for: str
    def __init__(self, pool: _Optional[str] = ..., networks: _Optional[_Iterable[str]] = ..., size: _Optional[int] = ..., used: _Optional[int] = ..., quarantined: _Optional[int] = ..., free: _Optional[int] = ..., lease_ttl_seconds: _Optional[float] = ..., implicit_for: _Optional[str] = ...) -> None: ...

class ListPoolsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPoolsResponse(_message.Message):
    __slots__ = ("pools",)
    POOLS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[PoolUsage]
    def __init__(self, pools: _Optional[_Iterable[_Union[PoolUsage, _Mapping]]] = ...) -> None: ...

class PodStatus(_message.Message):
    __slots__ = ("namespace", "name", "uid", "networks_status_json", "network_status_json")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_STATUS_JSON_FIELD_NUMBER: _ClassVar[int]
    NETWORK_STATUS_JSON_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    uid: str
    networks_status_json: str
    network_status_json: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., uid: _Optional[str] = ..., networks_status_json: _Optional[str] = ..., network_status_json: _Optional[str] = ...) -> None: ...

class ServiceEndpoint(_message.Message):
    __slots__ = ("address", "pod", "ready")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    address: str
    pod: str
    ready: bool
    def __init__(self, address: _Optional[str] = ..., pod: _Optional[str] = ..., ready: _Optional[bool] = ...) -> None: ...

class ServiceEndpoints(_message.Message):
    __slots__ = ("namespace", "name", "network", "endpoints", "problem")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    network: str
    endpoints: _containers.RepeatedCompositeFieldContainer[ServiceEndpoint]
    problem: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., network: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[ServiceEndpoint, _Mapping]]] = ..., problem: _Optional[str] = ...) -> None: ...

class ListServiceEndpointsRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class ListServiceEndpointsResponse(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceEndpoints]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceEndpoints, _Mapping]]] = ...) -> None: ...

class ListPodsRequest(_message.Message):
    __slots__ = ("namespace", "name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ListPodsResponse(_message.Message):
    __slots__ = ("pods",)
    PODS_FIELD_NUMBER: _ClassVar[int]
    pods: _containers.RepeatedCompositeFieldContainer[PodStatus]
    def __init__(self, pods: _Optional[_Iterable[_Union[PodStatus, _Mapping]]] = ...) -> None: ...

class Problem(_message.Message):
    __slots__ = ("source", "field", "message")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    source: str
    field: str
    message: str
    def __init__(self, source: _Optional[str] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SyncResponse(_message.Message):
    __slots__ = ("problems",)
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    problems: _containers.RepeatedCompositeFieldContainer[Problem]
    def __init__(self, problems: _Optional[_Iterable[_Union[Problem, _Mapping]]] = ...) -> None: ...

class IPAddressStatus(_message.Message):
    __slots__ = ("kind", "namespace", "name", "type", "network_kind", "network_name", "status_json")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_KIND_FIELD_NUMBER: _ClassVar[int]
    NETWORK_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_JSON_FIELD_NUMBER: _ClassVar[int]
    kind: str
    namespace: str
    name: str
    type: str
    network_kind: str
    network_name: str
    status_json: str
    def __init__(self, kind: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., type: _Optional[str] = ..., network_kind: _Optional[str] = ..., network_name: _Optional[str] = ..., status_json: _Optional[str] = ...) -> None: ...

class ListIPAddressesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListIPAddressesResponse(_message.Message):
    __slots__ = ("addresses",)
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    addresses: _containers.RepeatedCompositeFieldContainer[IPAddressStatus]
    def __init__(self, addresses: _Optional[_Iterable[_Union[IPAddressStatus, _Mapping]]] = ...) -> None: ...

class NetworkStatus(_message.Message):
    __slots__ = ("key", "status_json")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATUS_JSON_FIELD_NUMBER: _ClassVar[int]
    key: str
    status_json: str
    def __init__(self, key: _Optional[str] = ..., status_json: _Optional[str] = ...) -> None: ...

class ListNetworksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNetworksResponse(_message.Message):
    __slots__ = ("networks",)
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    networks: _containers.RepeatedCompositeFieldContainer[NetworkStatus]
    def __init__(self, networks: _Optional[_Iterable[_Union[NetworkStatus, _Mapping]]] = ...) -> None: ...

class OutboxEntry(_message.Message):
    __slots__ = ("seq", "target", "op", "created_at", "attempts", "next_at", "error")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    seq: int
    target: str
    op: str
    created_at: float
    attempts: int
    next_at: float
    error: str
    def __init__(self, seq: _Optional[int] = ..., target: _Optional[str] = ..., op: _Optional[str] = ..., created_at: _Optional[float] = ..., attempts: _Optional[int] = ..., next_at: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class ListOutboxRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListOutboxResponse(_message.Message):
    __slots__ = ("depth", "entries", "made")
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MADE_FIELD_NUMBER: _ClassVar[int]
    depth: int
    entries: _containers.RepeatedCompositeFieldContainer[OutboxEntry]
    made: int
    def __init__(self, depth: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[OutboxEntry, _Mapping]]] = ..., made: _Optional[int] = ...) -> None: ...

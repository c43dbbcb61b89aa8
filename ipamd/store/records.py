"""The records the node keeps: leases, IPAddress state, implicit pools, attachments (with what each driver made), pod
statuses and segments. Frozen and plain (JSON-ready), so every store keeps them the same way."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """One leased IP of a pool, held by an IPAddress (``holder``) or orphaned and quarantined."""

    pool: str
    ip: int
    address: str
    network: str
    holder: str | None
    holder_uid: str = ""
    state: str = "bound"  # bound | orphaned
    ttl: float = 0.0
    created_at: float = 0.0
    orphaned_at: float | None = None
    outside_ranges: bool = False  # the pool changed under a live lease: kept, flagged


@dataclass(frozen=True, slots=True)
class IPRecord:
    """The state Plexus keeps for an IPAddress: its status, and the object itself when Plexus made it."""

    key: str
    kind: str
    namespace: str
    name: str
    network_kind: str
    network_name: str
    type: str = "Auto"
    static_ip: str = ""
    uid: str = ""
    owner_pod_uid: str = ""
    created_by: str = "user"  # user | plexus | api | cni (a delegate's attachment) | claim (an IPAMClaim)
    deleted: bool = False  # gone from the source while in use: kept until the pod lets go
    phase: str = "Pending"
    address: str = ""
    network: str = ""
    pool: str = ""
    routes: tuple[dict[str, str], ...] = ()
    used_by_pods: tuple[str, ...] = ()
    used_by_uids: tuple[str, ...] = ()
    conditions: tuple[dict[str, str], ...] = ()
    created_at: float = 0.0
    interface: str = ""  # a delegate's lease: the pod interface it is for
    family: int = 0  # 4 or 6: the family an Auto address takes (0: its pool's first)
    #: a delegate's users (``used_by_uids``) and the CNI network configuration each was added on, which GC judges
    #: them by: an IPAMClaim's may come from any configuration (whatever its name) of its NAD. A user missing here (a
    #: record of an earlier version) is on a network unknown.
    user_networks: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ImplicitPoolRecord:
    """An inline ``range`` of a plexus-ipam configuration, as first used: the pool it implies (one per network
    configuration and range; its leases are kept under its space's key ``pool``)."""

    key: str  # owner|network|ranges
    owner: str  # the CNI network configuration's name (a NAD's)
    pool: str  # ImplicitPool/<network_name>
    network: str  # CIDR
    ranges: tuple[tuple[int, int], ...]
    ttl: float = 0.0
    overlapping: bool = True
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class BuiltInterface:
    """What one interface of an attachment made, enough to tear it down without any object."""

    if_name: str
    kind: str  # veth | tap | macvlan
    network_key: str
    network_type: str
    network_name: str
    host_link: str = ""  # veth host end, on the node bridge
    bridge: str = ""
    mac: str = ""
    vlan_id: int = 0
    ip_keys: tuple[str, ...] = ()
    created_ip_keys: tuple[str, ...] = ()  # Auto IPAddresses this attachment created
    configure_ips: bool = True
    addresses: tuple[dict[str, Any], ...] = ()  # the networks-status ipAddressConfigs of this interface
    driver: dict[str, Any] = field(default_factory=dict)  # the driver's own state (its derived names, ...)
    result: dict[str, Any] = field(default_factory=dict)  # its share of the CNI result (1.1.0), for the statuses
    default: bool = False  # the pod's cluster network (network-status "default": true)
    table: int = 0  # policy routing: the routing table its addresses select (0: none)
    policy_routes: tuple[dict[str, str], ...] = ()  # and its network's routes in that table
    device_id: str = ""  # a device pool's device it attaches through (the delegate's deviceID)
    device_info: dict[str, Any] = field(default_factory=dict)  # its NPWG device-info, for network-status


@dataclass(frozen=True, slots=True)
class AttachmentRecord:
    """One CNI attachment, keyed as the runtime keys it: (container ID, CNI_IFNAME)."""

    container_id: str
    ifname: str
    pod_uid: str
    namespace: str
    pod_name: str
    netns: str
    state: str  # adding | ready | deleting
    interfaces: tuple[BuiltInterface, ...] = ()
    result: dict[str, Any] = field(default_factory=dict)
    networks_status: tuple[dict[str, Any], ...] = ()  # this attachment's entries of the pod's networks-status
    updated_at: float = 0.0
    network: str = ""  # the CNI network configuration's name (GC judges only its own)
    pod_known: bool = True  # False: the pod came only from the runtime's annotations, not the source
    network_status: tuple[dict[str, Any], ...] = ()  # and of its NPWG network-status
    #: a delegate's plexus-ipam address being leased for an interface not recorded yet: (the record holding its lease,
    #: the pod-side interface name), recorded before the lease's own commit, so that a daemon killed between the two
    #: lets it go when it tears the attachment down
    leasing: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class PodStatus:
    """What a pod's status annotations say: ``networks-status`` (Deckhouse) and ``network-status`` (NPWG),
    two renderings of its attachment records."""

    uid: str
    namespace: str
    name: str
    networks_status: tuple[dict[str, Any], ...] = ()
    updated_at: float = 0.0
    network_status: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class SegmentRecord:
    """A Network's L2 segment on this node: the VLAN ID or VNI it got and its bridge."""

    network: str  # the Network / ClusterNetwork key
    kind: str  # vlan | vxlan | none
    id: int
    bridge: str
    network_class: str = ""
    status: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A write to the cluster's API that this node owes: kept until it is made, in order per ``target`` (the object it
    writes), retried with backoff. A newer write of the same ``target`` and ``op`` supersedes a pending one (a status
    is written whole, so only the last one matters)."""

    seq: int  # the order it was owed in (0 until stored)
    target: str  # the object written: "IPAddress/ns/name", "Pod/ns/name", "IPAddressLease/name", "Event/ns/pod"
    op: str  # what to do with it; the sender has one function per op
    body: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    attempts: int = 0
    next_at: float = 0.0  # not tried again before
    error: str = ""  # why the last attempt failed


# -- the one JSON form every store keeps them in --------------------------------------------------

def _fields(value: Any) -> dict[str, Any]:
    """A record as the JSON encoder's ``default`` sees it: its fields (nested records come back here;
    tuples and dicts the C encoder walks itself). ``dataclasses.asdict`` deep-copies everything and was a
    sixth of an ADD's time; a recursive walk in Python, a fifth of an allocation's."""
    slots = getattr(type(value), "__slots__", None)
    if slots is None or not hasattr(value, "__dataclass_fields__"):
        raise TypeError(f"{type(value).__name__} is not a record")
    return {name: getattr(value, name) for name in slots}


def dump(rec: Any) -> str:
    return json.dumps(rec, default=_fields, separators=(",", ":"))


def _tuples(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    for k in keys:
        if k in d and isinstance(d[k], list):
            d[k] = tuple(d[k])
    return d


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """The fields ``cls`` has: a record written by a newer build (with fields this one does not know) still loads."""
    fields = getattr(cls, "__dataclass_fields__", {})
    return {k: v for k, v in d.items() if k in fields}


def load_lease(data: str) -> LeaseRecord:
    return LeaseRecord(**_known(LeaseRecord, json.loads(data)))


def load_ip(data: str) -> IPRecord:
    d = _known(IPRecord, json.loads(data))
    d["user_networks"] = tuple((str(u), str(n)) for u, n in d.get("user_networks", ()))
    return IPRecord(**_tuples(d, "routes", "used_by_pods", "used_by_uids", "conditions"))


def load_attachment(data: str) -> AttachmentRecord:
    d = _known(AttachmentRecord, json.loads(data))
    d["interfaces"] = tuple(
        BuiltInterface(**_tuples(_known(BuiltInterface, i), "ip_keys", "created_ip_keys", "addresses", "policy_routes"))
        for i in d.get("interfaces", ())
    )
    d["networks_status"] = tuple(d.get("networks_status", ()))
    d["network_status"] = tuple(d.get("network_status", ()))
    d["leasing"] = tuple((str(k), str(i)) for k, i in d.get("leasing", ()))
    return AttachmentRecord(**d)


def load_implicit_pool(data: str) -> ImplicitPoolRecord:
    d = _known(ImplicitPoolRecord, json.loads(data))
    d["ranges"] = tuple(tuple(r) for r in d.get("ranges", ()))
    return ImplicitPoolRecord(**d)


def load_pod_status(data: str) -> PodStatus:
    return PodStatus(**_tuples(_known(PodStatus, json.loads(data)), "networks_status", "network_status"))


def load_outbox(seq: int, data: str) -> OutboxEntry:
    d = _known(OutboxEntry, json.loads(data))
    d["seq"] = seq
    return OutboxEntry(**d)


def load_segment(data: str) -> SegmentRecord:
    return SegmentRecord(**_known(SegmentRecord, json.loads(data)))

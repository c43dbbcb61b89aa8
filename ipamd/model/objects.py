"""The API of seed 000 (``network.deckhouse.io/v1alpha1``), NetworkAttachmentDefinitions and Pods, as
typed frozen objects.

``parse_object`` turns one manifest (a dict, as YAML or the Kubernetes API gives it) into one of
these, or raises ``ManifestInvalid`` naming the object and the offending field. Pure: no I/O.
Both object sources (a directory of manifests, the Kubernetes API) feed their documents through it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from cni.errors import InvalidConfig
from ipamd.model.cniconf import ConfigInvalid, as_conflist, parse_config_text
from ipamd.model.podopts import IFNAMSIZ, OptionInvalid, PodOptions, parse_pod_options

GROUP = "network.deckhouse.io"
API_VERSION = f"{GROUP}/v1alpha1"
SPEC_ANNOTATION = f"{GROUP}/networks-spec"
STATUS_ANNOTATION = f"{GROUP}/networks-status"
USED_BY_ANNOTATION = f"{GROUP}/used-by"  # on a user's IPAddress: the one pod of the cluster using it (ipamd.kube.users)
NPWG_API_VERSION = "k8s.cni.cncf.io/v1"
NPWG_CLAIM_API_VERSION = "k8s.cni.cncf.io/v1alpha1"
RESOURCE_NAME_ANNOTATION = "k8s.v1.cni.cncf.io/resourceName"
POD_ANNOTATIONS_CAPABILITY = "io.kubernetes.cri.pod-annotations"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
DEFAULT_LEASE_TTL_S = 60.0

def valid_ifname(name: object) -> bool:
    """The kernel's rules for a link name (``dev_valid_name``): at most IFNAMSIZ UTF-8 bytes, no NUL."""
    if not isinstance(name, str):
        return False
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        return False
    return (0 < size <= IFNAMSIZ and name not in (".", "..")
            and not any(c in name for c in "/:\0") and not any(c.isspace() for c in name))

class ManifestInvalid(InvalidConfig):
    """A manifest that cannot be served; ``field`` is the path of what is wrong in it."""

    def __init__(self, obj: str, field_path: str, problem: str, source: str = "") -> None:
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{obj}: {field_path}: {problem}", field_path)
        self.obj = obj
        self.field = field_path
        self.problem = problem
        self.source = source

@dataclass(frozen=True, slots=True)
class Ref:
    kind: str
    name: str

@dataclass(frozen=True, slots=True)
class Meta:
    kind: str
    name: str
    namespace: str = ""
    uid: str = ""
    source: str = ""  # where the manifest came from (a file, or "api")
    generation: int = 0  # metadata.generation: what a status's observedGeneration reports

    @property
    def key(self) -> str:
        """``Kind/namespace/name`` (cluster-scoped: ``Kind/name``): the identity in the store."""
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"

    @property
    def display(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

@dataclass(frozen=True, slots=True)
class VxlanSpec:
    """Plexus extension: segment a class's networks with VXLAN instead of VLAN."""

    vni_pool: tuple[tuple[int, int], ...]
    underlay: str = ""
    remotes: tuple[str, ...] = ()
    group: str = ""
    port: int = 4789
    local_ip: str = ""

@dataclass(frozen=True, slots=True)
class NetworkClass:
    meta: Meta
    vlan_pool: tuple[tuple[int, int], ...] = ()
    parents: tuple[str, ...] = ()
    vxlan: VxlanSpec | None = None

@dataclass(frozen=True, slots=True)
class Network:
    meta: Meta
    network_class: str
    vlan_id: int | None = None
    pool_ref: Ref | None = None
    status_vlan_id: int | None = None  # given by the cluster controller (Kubernetes mode)
    status_conditions: tuple[dict[str, str], ...] = ()  # as last written, so a rewrite keeps their times
    pod: PodOptions = PodOptions()  # Plexus extensions: policy routing, interface prefix, default network
    status_bridge: str = ""  # status.bridgeName: names the kind of segment (VLAN, VXLAN) the status's ID is of

@dataclass(frozen=True, slots=True)
class ClusterNetwork:
    meta: Meta
    type: str  # VLAN | Access
    vlan_id: int | None = None
    parents: tuple[str, ...] = ()
    pool_ref: Ref | None = None
    network_class: str = ""  # Plexus extension: take segmentation (VXLAN) from a class
    status_vlan_id: int | None = None
    status_conditions: tuple[dict[str, str], ...] = ()
    pod: PodOptions = PodOptions()
    status_bridge: str = ""

@dataclass(frozen=True, slots=True)
class PoolRoute:
    destination: str
    via: str

    def to_dict(self) -> dict[str, str]:
        return {"destination": self.destination, "via": self.via}

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
#: IPv6 addresses below this (``::/96``, the deprecated IPv4-compatible space) would share their integers with IPv4
#: addresses, which the allocator and the store key by integer: a pool may not hold them.
IPV6_FLOOR = 1 << 32


IPV4_COMPATIBLE = "lies in ::/96, the deprecated IPv4-compatible space"


class IPv4CompatibleAddress(ValueError):
    """IPv6 text below ``IPV6_FLOOR``: an address, but not one a pool can hold."""


ZONED = "names an IPv6 zone (%...): give the address without it"


class ZonedAddress(ValueError):
    """IPv6 text with a zone (``fe80::1%eth0``): Go's ``net.ParseIP`` (Multus, Whereabouts) refuses it, netlink
    takes none (pyroute2 fails with OSError), and an address compared as text with a lease's never matches."""


def parse_address(text: str, zone: bool = False) -> IPAddr:
    """An address of either family; IPv6 text below ``IPV6_FLOOR`` (``::a00:5``) is refused, since its integer is an
    IPv4 address's (``10.0.0.5``): ``IPv4CompatibleAddress``; one naming a zone is refused (``ZonedAddress``) unless
    ``zone``, then read without it (what an object stored before that refusal is served as); ValueError for text
    that is no address."""
    ip = ipaddress.ip_address(text)
    if ip.version == 6 and ip.scope_id is not None:
        if not zone:
            raise ZonedAddress(f"{text} {ZONED}")
        ip = ipaddress.IPv6Address(int(ip))
    if ip.version == 6 and int(ip) < IPV6_FLOOR:
        raise IPv4CompatibleAddress(f"{text} {IPV4_COMPATIBLE}")
    return ip


#: Networks no pool hands out from: an IPv6 link-local address is the one the kernel gives every link itself (CHECK
#: cannot tell a pool's from it), a multicast address is no interface's own.
_NOT_POOL_NETWORKS = ((ipaddress.ip_network("fe80::/10"), "IPv6 link-local"),
                      (ipaddress.ip_network("ff00::/8"), "multicast"),
                      (ipaddress.ip_network("224.0.0.0/4"), "multicast"))


def pool_network_problem(net: IPNetwork) -> str:
    """Why ``net`` may not be a pool's (or a plexus-ipam range's) network, "" when it may."""
    for scope, words in _NOT_POOL_NETWORKS:
        if scope.version == net.version and scope.overlaps(net):
            return f"{net} holds {words} addresses ({scope}), which are no pod's to lease: use a unicast network"
    return ""

#: The largest count a Kubernetes integer or a protobuf int64 holds: a /64 has more addresses, so counts are capped.
INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Subnet:
    network: IPNetwork
    # inclusive integer bounds of what the pool hands out: clipped to usable addresses, its routes' gateways cut out
    ranges: tuple[tuple[int, int], ...]
    routes: tuple[PoolRoute, ...] = ()

    @property
    def size(self) -> int:
        return sum(b - a + 1 for a, b in self.ranges)

    @property
    def family(self) -> int:
        return self.network.version

@dataclass(frozen=True, slots=True)
class Router:
    """A gateway of a network's policy routes (``spec.policyRoutes[i].via``, which must lie in the pool): a router's
    address on that network's segment, which the pool, as that network sees it, never leases."""

    ip: int
    words: str  # whose gateway it is, for a refusal naming the Network's field

@dataclass(frozen=True, slots=True)
class AddressPool:
    meta: Meta  # kind IPAddressPool or ClusterIPAddressPool
    lease_ttl_s: float
    subnets: tuple[Subnet, ...]
    routers: tuple[Router, ...] = ()  # a network's policy routes' gateways (``for_network``), cut out of the ranges

    @property
    def size(self) -> int:
        return sum(s.size for s in self.subnets)

    @property
    def families(self) -> tuple[int, ...]:
        """The address families the pool hands out, IPv4 first: a pod interface gets one address of each."""
        return tuple(sorted({s.family for s in self.subnets}))

    def family(self, version: int) -> AddressPool:
        """The pool as one family sees it (same key, same leases): what the allocator picks an address of that
        family from."""
        if all(s.family == version for s in self.subnets):
            return self
        return AddressPool(self.meta, self.lease_ttl_s, tuple(s for s in self.subnets if s.family == version),
                           self.routers)

    def for_network(self, net: Network | ClusterNetwork) -> AddressPool:
        """The pool as ``net`` sees it (same key, same leases): its policy routes' gateways cut out of the ranges, as
        the pool's own routes' are (``_address_pool``), and kept as ``routers`` so that who asks for exactly one is
        refused. Another network sharing the pool may lease them (they are routers of this network's segment); made
        once per resolution, so the allocator skips them at no cost per pick."""
        if not net.pod.routes:
            return self
        routers = tuple(Router(int(ipaddress.ip_address(r.via)), f"{r.via} is the gateway of {net.meta.display}'s "
                               f"policy route to {r.destination} (spec.policyRoutes[{i}].via)")
                        for i, r in enumerate(net.pod.routes))
        return AddressPool(self.meta, self.lease_ttl_s,
                           tuple(replace(s, ranges=cut_out(s.ranges, (r.ip for r in routers))) for s in self.subnets),
                           self.routers + routers)

@dataclass(frozen=True, slots=True)
class IPAddressObject:
    meta: Meta  # kind IPAddress or ClusterIPAddress
    network_ref: Ref
    type: str  # Auto | Static
    static_ip: str = ""
    owner_pod_uid: str = ""  # set on the Auto IPAddress Plexus creates for a pod interface
    family: int = 0  # spec.ipFamily of an Auto address (4 or 6); 0: the pool's first (IPv4 in a dual-stack pool)
    used_by: str = ""  # the annotation USED_BY_ANNOTATION as it came (parsed by ipamd.kube.users)

@dataclass(frozen=True, slots=True)
class AttachmentDefinition:
    """A NetworkAttachmentDefinition (Network Plumbing WG, ``k8s.cni.cncf.io/v1``): the CNI configuration
    that attaches a pod to a network, or, without ``spec.config``, the name of one on the node's disk."""

    meta: Meta
    config: dict[str, Any] | None = None  # spec.config as a conflist carrying the NAD's name; None: on disk
    resource_name: str = ""  # k8s.v1.cni.cncf.io/resourceName: the device plugin pool its devices come from

@dataclass(frozen=True, slots=True)
class IpamClaim:
    """An IPAMClaim (NPWG v1.3 §8, ``k8s.cni.cncf.io/v1alpha1``): a sticky address for an interface. A pod's
    selection names it (``ipam-claim-reference``); the address follows the claim, not the pod, and is let go
    only when the claim is deleted."""

    meta: Meta
    network: str = ""  # the network it is for (a NAD's name)
    interface: str = ""  # the pod interface it is for
    ip_requests: tuple[str, ...] = ()  # spec.ipRequests: the address asked for (a CIDR or an address)
    status_ips: tuple[str, ...] = ()
    owner_pod: str = ""  # status.ownerPod: the pod holding it (by name)

@dataclass(frozen=True, slots=True)
class Pod:
    meta: Meta
    annotations: Mapping[str, str] = field(default_factory=dict)
    node_name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServiceObject:
    """A Service, as it came (local mode: what Services over additional networks read, ``ipamd.model.services``)."""

    meta: Meta
    doc: Mapping[str, Any]

ApiObject = (NetworkClass | Network | ClusterNetwork | AddressPool | IPAddressObject | AttachmentDefinition | IpamClaim
             | Pod | ServiceObject)

def parse_duration(text: str) -> float:
    """Go-style durations as Kubernetes objects spell them: ``1h``, ``30m``, ``1h30m``, ``90s``."""
    text = text.strip()
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"{text!r} is not a duration like 30s, 10m or 1h")
    return total

def parse_id_pool(items: Any, path: str, meta: str, lo: int, hi: int) -> tuple[tuple[int, int], ...]:
    """``["600-800", "1200", 1300]`` → ``((600, 800), (1200, 1200), (1300, 1300))``."""
    if not isinstance(items, list) or not items:
        raise ManifestInvalid(meta, path, "must be a non-empty list of IDs or ID ranges")
    out = []
    for i, item in enumerate(items):
        try:
            a, _, b = str(item).partition("-")
            first, last = int(a), int(b or a)
        except ValueError:
            raise ManifestInvalid(meta, f"{path}[{i}]", f"{item!r} is not an ID or a range 'a-b'") from None
        if not lo <= first <= last <= hi:
            raise ManifestInvalid(meta, f"{path}[{i}]", f"{item!r} must lie within {lo}-{hi}, low to high")
        out.append((first, last))
    return tuple(out)

def usable_bounds(net: IPNetwork) -> tuple[int, int]:
    """First and last assignable address. IPv4: network and broadcast excluded, except /31 (both, RFC 3021) and /32.
    IPv6 has no broadcast; its all-zero host address is the subnet-router anycast (RFC 4291 §2.6.1), excluded but
    on /127 (RFC 6164) and /128."""
    first, last = int(net.network_address), int(net.broadcast_address)
    if net.prefixlen >= net.max_prefixlen - 1:
        return first, last
    return (first + 1, last - 1) if net.version == 4 else (first + 1, last)

def cut(ranges: Iterable[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """``ranges`` (inclusive bounds) without the addresses ``lo`` to ``hi``."""
    kept = []
    for a, b in ranges:
        if b < lo or a > hi:
            kept.append((a, b))
            continue
        if a < lo:
            kept.append((a, lo - 1))
        if b > hi:
            kept.append((hi + 1, b))
    return kept

def cut_out(ranges: Iterable[tuple[int, int]], addresses: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """``ranges`` without each of ``addresses`` (a route's gateway, say)."""
    kept = tuple(ranges)
    for ip in sorted(set(addresses)):
        kept = tuple(cut(kept, ip, ip))
    return kept

def _get(d: Mapping[str, Any], key: str, typ: type, meta: str, path: str, required: bool = False) -> Any:
    value = d.get(key)
    if value is None:
        if required:
            raise ManifestInvalid(meta, path, "is required")
        return None
    if not isinstance(value, typ):
        raise ManifestInvalid(meta, path, f"must be a {typ.__name__}, got {type(value).__name__}")
    return value

def _ipv4(text: Any, meta: str, path: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(text))
    except ValueError:
        raise ManifestInvalid(meta, path, f"{text!r} is not an IPv4 address") from None

def _ip(text: Any, meta: str, path: str) -> IPAddr:
    """An address a manifest gives; a zone is dropped (``refused_when_written`` refuses it, one stored is served)."""
    try:
        return parse_address(str(text), zone=True)
    except IPv4CompatibleAddress as exc:
        raise ManifestInvalid(meta, path, str(exc)) from None
    except ValueError:
        raise ManifestInvalid(meta, path, f"{text!r} is not an IP address") from None

def _pool_ref(spec: Mapping[str, Any], meta: str, allowed: tuple[str, ...]) -> Ref | None:
    ipam = _get(spec, "ipam", dict, meta, "spec.ipam")
    if not ipam:
        return None
    ref = _get(ipam, "ipAddressPoolRef", dict, meta, "spec.ipam.ipAddressPoolRef", required=True)
    kind = _get(ref, "kind", str, meta, "spec.ipam.ipAddressPoolRef.kind") or allowed[0]
    if kind not in allowed:
        raise ManifestInvalid(meta, "spec.ipam.ipAddressPoolRef.kind", f"must be one of {', '.join(allowed)}")
    name = _get(ref, "name", str, meta, "spec.ipam.ipAddressPoolRef.name", required=True)
    return Ref(kind, name)

def _parents(spec: Mapping[str, Any], meta: str, path: str) -> tuple[str, ...]:
    """Parent NICs, by name (``names``). The Deckhouse API's ``labelSelector`` selects NodeNetworkInterface objects,
    which Plexus does not make: refused, naming it, rather than taken for "no parent" (the class's networks would
    then be bridges of each node alone, with no error anywhere)."""
    parents = _get(spec, "parentNodeNetworkInterfaces", dict, meta, path)
    if not parents:
        return ()
    if "labelSelector" in parents:
        raise ManifestInvalid(meta, f"{path}.labelSelector", "selects NodeNetworkInterface objects, which Plexus does "
                                                             "not make: name the node's NICs instead (names: [eth1])")
    names = _get(parents, "names", list, meta, f"{path}.names") or []
    for i, n in enumerate(names):
        if not valid_ifname(n):
            raise ManifestInvalid(meta, f"{path}.names[{i}]", f"{n!r} is not an interface name")
    return tuple(names)

def _network_class(meta: Meta, spec: Mapping[str, Any], doc: Mapping[str, Any]) -> NetworkClass:
    m = meta.display
    vlan = _get(spec, "vlan", dict, m, "spec.vlan") or {}
    pool: tuple[tuple[int, int], ...] = ()
    if vlan:
        pool = parse_id_pool(vlan.get("idPool"), "spec.vlan.idPool", m, 1, 4094)
    parents = _parents(vlan, m, "spec.vlan.parentNodeNetworkInterfaces") or _parents(
        spec, m, "spec.parentNodeNetworkInterfaces"
    )
    vx = _get(spec, "vxlan", dict, m, "spec.vxlan")
    vxlan = None
    if vx:
        if vlan:
            raise ManifestInvalid(m, "spec.vxlan", "a class segments with either vlan or vxlan, not both")
        remotes = tuple(str(_ipv4(r, m, f"spec.vxlan.remotes[{i}]")) for i, r in enumerate(vx.get("remotes") or []))
        group = str(_ipv4(vx["group"], m, "spec.vxlan.group")) if vx.get("group") else ""
        if remotes and group:  # flooding goes to the unicast remotes (head-end replication) or to a multicast group
            raise ManifestInvalid(m, "spec.vxlan.group", "a class floods to its remotes or to a multicast group, "
                                                         "not both: remove spec.vxlan.remotes or spec.vxlan.group")
        local = str(_ipv4(vx["localIP"], m, "spec.vxlan.localIP")) if vx.get("localIP") else ""
        port = vx.get("port", 4789)
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise ManifestInvalid(m, "spec.vxlan.port", f"{port!r} is not a UDP port")
        vxlan = VxlanSpec(
            parse_id_pool(vx.get("vniPool"), "spec.vxlan.vniPool", m, 1, 16777215),
            _underlay(vx, m), remotes, group, port, local,
        )
    return NetworkClass(meta, pool, parents, vxlan)

def _underlay(vx: Mapping[str, Any], m: str) -> str:
    """``spec.vxlan.underlayInterface``, checked as the parent NICs are: a name the kernel cannot have is refused
    here, not at every ADD."""
    name = _get(vx, "underlayInterface", str, m, "spec.vxlan.underlayInterface") or ""
    if name and not valid_ifname(name):
        raise ManifestInvalid(m, "spec.vxlan.underlayInterface", f"{name!r} is not an interface name")
    return str(name)


def _vlan_id(spec: Mapping[str, Any], m: str) -> int | None:
    vlan = _get(spec, "vlan", dict, m, "spec.vlan") or {}
    vid = vlan.get("id")
    if vid is None:
        return None
    if not isinstance(vid, int) or isinstance(vid, bool) or not 1 <= vid <= 4094:
        raise ManifestInvalid(m, "spec.vlan.id", f"{vid!r} is not a VLAN ID (1-4094)")
    return vid

def _status_id(doc: Mapping[str, Any]) -> int | None:
    status = doc.get("status") or {}
    ident = status.get("vni") or status.get("vlanID") if isinstance(status, dict) else None
    return ident if isinstance(ident, int) and not isinstance(ident, bool) and ident > 0 else None

def _status_bridge(doc: Mapping[str, Any]) -> str:
    status = doc.get("status")
    bridge = status.get("bridgeName") if isinstance(status, dict) else None
    return bridge if isinstance(bridge, str) else ""

def _status_conditions(doc: Mapping[str, Any]) -> tuple[dict[str, str], ...]:
    status = doc.get("status")
    conds = status.get("conditions") if isinstance(status, dict) else None
    if not isinstance(conds, list):
        return ()
    return tuple({str(k): str(v) for k, v in c.items()} for c in conds if isinstance(c, dict) and "type" in c)

def _network(meta: Meta, spec: Mapping[str, Any], doc: Mapping[str, Any]) -> Network:
    m = meta.display
    cls = _get(spec, "networkClass", str, m, "spec.networkClass", required=True)
    return Network(meta, cls, _vlan_id(spec, m), _pool_ref(spec, m, ("IPAddressPool",)), _status_id(doc),
                   _status_conditions(doc), _pod_options(spec, doc, m), _status_bridge(doc))

def _cluster_network(meta: Meta, spec: Mapping[str, Any], doc: Mapping[str, Any]) -> ClusterNetwork:
    m = meta.display
    typ = _get(spec, "type", str, m, "spec.type") or "VLAN"
    if typ not in ("VLAN", "Access"):
        raise ManifestInvalid(m, "spec.type", f"{typ!r} must be VLAN or Access")
    vid = _vlan_id(spec, m)
    cls = _get(spec, "networkClass", str, m, "spec.networkClass") or ""
    if typ == "VLAN" and vid is None and not cls:
        raise ManifestInvalid(m, "spec.vlan.id", "is required for type VLAN")
    parents = _parents(spec, m, "spec.parentNodeNetworkInterfaces")
    return ClusterNetwork(meta, typ, vid, parents, _pool_ref(spec, m, ("ClusterIPAddressPool",)), cls, _status_id(doc),
                          _status_conditions(doc), _pod_options(spec, doc, m), _status_bridge(doc))

def _pod_options(spec: Mapping[str, Any], doc: Mapping[str, Any], m: str) -> PodOptions:
    labels = (doc.get("metadata") or {}).get("labels") or {}
    try:
        return parse_pod_options(spec, labels if isinstance(labels, dict) else {})
    except OptionInvalid as exc:
        raise ManifestInvalid(m, exc.field, exc.problem) from None

def _range(text: Any, net: IPNetwork, m: str, path: str) -> tuple[int, int]:
    a, sep, b = str(text).partition("-")
    first, last = _ip(a.strip(), m, path), _ip((b if sep else a).strip(), m, path)
    if first not in net or last not in net:
        raise ManifestInvalid(m, path, f"{text!r} lies outside {net}")
    if int(first) > int(last):
        raise ManifestInvalid(m, path, f"{text!r} runs backwards")
    lo, hi = usable_bounds(net)
    return max(int(first), lo), min(int(last), hi)

def _address_pool(meta: Meta, spec: Mapping[str, Any], doc: Mapping[str, Any]) -> AddressPool:
    """A pool whose ranges hand out none of its routes' gateways (``via``), as host-local never hands out its
    gateway: a pod given one would route through itself (IPv6: the kernel refuses the route, EINVAL). A gateway is
    cut out of the ranges even where a range names it explicitly, so the pool's size and free counts leave it out."""
    m = meta.display
    ttl_text = _get(spec, "leaseTTL", str, m, "spec.leaseTTL")
    try:
        ttl = parse_duration(ttl_text) if ttl_text else DEFAULT_LEASE_TTL_S
    except ValueError as exc:
        raise ManifestInvalid(m, "spec.leaseTTL", str(exc)) from None
    items = _get(spec, "pools", list, m, "spec.pools", required=True)
    if not items:
        raise ManifestInvalid(m, "spec.pools", "must list at least one network")
    subnets: list[Subnet] = []
    for i, item in enumerate(items):
        path = f"spec.pools[{i}]"
        if not isinstance(item, dict):
            raise ManifestInvalid(m, path, "must be an object")
        cidr = _get(item, "network", str, m, f"{path}.network", required=True)
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            raise ManifestInvalid(m, f"{path}.network", f"{cidr!r} is not an IPv4 or IPv6 CIDR ({exc})") from None
        if net.version == 6 and int(net.network_address) < IPV6_FLOOR:
            raise ManifestInvalid(m, f"{path}.network", f"{net} {IPV4_COMPATIBLE}")
        for other in subnets:
            if net.overlaps(other.network):
                raise ManifestInvalid(m, f"{path}.network", f"{net} overlaps {other.network}")
        raw_ranges = _get(item, "ranges", list, m, f"{path}.ranges")
        if raw_ranges:
            ranges = tuple(sorted(_range(r, net, m, f"{path}.ranges[{j}]") for j, r in enumerate(raw_ranges)))
            for (_, b), (c, _d) in zip(ranges, ranges[1:], strict=False):
                if c <= b:
                    raise ManifestInvalid(m, f"{path}.ranges", "ranges overlap")
            ranges = tuple(r for r in ranges if r[0] <= r[1])
        else:
            ranges = (usable_bounds(net),)
        routes = []
        for j, r in enumerate(_get(item, "routes", list, m, f"{path}.routes") or []):
            rpath = f"{path}.routes[{j}]"
            if not isinstance(r, dict):
                raise ManifestInvalid(m, rpath, "must be an object with destination and via")
            try:
                dest_net = ipaddress.ip_network(str(r.get("destination")), strict=True)
            except ValueError:
                raise ManifestInvalid(m, f"{rpath}.destination", f"{r.get('destination')!r} is not a CIDR") from None
            if dest_net.version != net.version:
                raise ManifestInvalid(m, f"{rpath}.destination", f"{dest_net} is not of {net}'s family")
            dest = str(dest_net)
            via = _ip(r.get("via"), m, f"{rpath}.via")
            if via.version != net.version or via not in net:
                raise ManifestInvalid(m, f"{rpath}.via", f"{via} is not in {net}, so it is not reachable")
            routes.append(PoolRoute(dest, str(via)))
        ranges = cut_out(ranges, (int(ipaddress.ip_address(r.via)) for r in routes))
        subnets.append(Subnet(net, ranges, tuple(routes)))
    return AddressPool(meta, ttl, tuple(subnets))

IP_FAMILIES = {"": 0, "IPv4": 4, "IPv6": 6}


def _ip_address(meta: Meta, spec: Mapping[str, Any], doc: Mapping[str, Any]) -> IPAddressObject:
    m = meta.display
    ref = _get(spec, "networkRef", dict, m, "spec.networkRef", required=True)
    allowed = ("Network", "ClusterNetwork") if meta.kind == "IPAddress" else ("ClusterNetwork",)
    kind = _get(ref, "kind", str, m, "spec.networkRef.kind") or "Network"
    if kind not in allowed:
        raise ManifestInvalid(m, "spec.networkRef.kind", f"must be one of {', '.join(allowed)}")
    name = _get(ref, "name", str, m, "spec.networkRef.name", required=True)
    typ = _get(spec, "type", str, m, "spec.type") or "Auto"
    if typ not in ("Auto", "Static"):
        raise ManifestInvalid(m, "spec.type", f"{typ!r} must be Auto or Static")
    static_ip = ""
    if typ == "Static":
        static = _get(spec, "static", dict, m, "spec.static", required=True)
        static_ip = str(_ip(static.get("ip"), m, "spec.static.ip"))
    family_text = _get(spec, "ipFamily", str, m, "spec.ipFamily") or ""
    if family_text not in IP_FAMILIES:
        raise ManifestInvalid(m, "spec.ipFamily", f"{family_text!r} must be IPv4 or IPv6")
    family = IP_FAMILIES[family_text]
    if typ == "Static" and family and family != ipaddress.ip_address(static_ip).version:
        raise ManifestInvalid(m, "spec.ipFamily", f"{family_text} does not match spec.static.ip {static_ip}")
    md = doc.get("metadata") or {}
    owner = str((md.get("labels") or {}).get(f"{GROUP}/owner-pod-uid", ""))
    used_by = (md.get("annotations") or {}).get(USED_BY_ANNOTATION)
    return IPAddressObject(meta, Ref(kind, name), typ, static_ip, owner, family,
                           used_by if isinstance(used_by, str) else "")

def _attachment_definition(meta: Meta, spec: Mapping[str, Any], doc: Mapping[str, Any]) -> AttachmentDefinition:
    m = meta.display
    if not _DNS_LABEL.match(meta.name) or len(meta.name) > 63:
        raise ManifestInvalid(m, "metadata.name", f"{meta.name!r} is not a DNS label (NPWG §3)")
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    resource = annotations.get(RESOURCE_NAME_ANNOTATION, "") if isinstance(annotations, dict) else ""
    text = spec.get("config")
    if text is None or text == "":
        return AttachmentDefinition(meta, None, str(resource))
    if not isinstance(text, str):
        raise ManifestInvalid(m, "spec.config", "must be a string holding a CNI configuration (JSON)")
    try:
        config = as_conflist(parse_config_text(text), meta.name)
    except ConfigInvalid as exc:
        raise ManifestInvalid(m, f"spec.config{'.' + exc.field if exc.field else ''}",
                              f"is not a CNI configuration: {exc.problem}") from None
    return AttachmentDefinition(meta, config, str(resource))

def _ipam_claim(meta: Meta, spec: Mapping[str, Any], doc: Mapping[str, Any]) -> IpamClaim:
    m = meta.display
    network = _get(spec, "network", str, m, "spec.network") or ""
    interface = _get(spec, "interface", str, m, "spec.interface") or ""
    if interface and not valid_ifname(interface):
        raise ManifestInvalid(m, "spec.interface", f"{interface!r} is not an interface name")
    requests = _get(spec, "ipRequests", list, m, "spec.ipRequests") or []
    asked = []
    for i, text in enumerate(requests):
        try:
            iface = ipaddress.ip_interface(str(text))
        except ValueError:
            raise ManifestInvalid(m, f"spec.ipRequests[{i}]", f"{text!r} is not an IP address or CIDR") from None
        try:
            parse_address(str(iface.ip))
        except ValueError as exc:
            raise ManifestInvalid(m, f"spec.ipRequests[{i}]", str(exc)) from None
        asked.append(_without_zone(str(text), iface))
    if len(requests) > 1:
        raise ManifestInvalid(m, "spec.ipRequests", "asks for more than one address")
    status = doc.get("status") or {}
    ips = status.get("ips") if isinstance(status, dict) else None
    owner = status.get("ownerPod") if isinstance(status, dict) else ""
    return IpamClaim(meta, network, interface, tuple(asked),
                     tuple(str(i) for i in ips) if isinstance(ips, list) else (), str(owner or ""))

def _without_zone(text: str, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> str:
    """An address or CIDR as written, less a zone (``refused_when_written`` refuses it; one stored is served)."""
    if "%" not in text:
        return text
    return f"{iface.ip}/{iface.network.prefixlen}" if "/" in text else str(iface.ip)

def _pod(meta: Meta, spec: Mapping[str, Any], doc: Mapping[str, Any]) -> Pod:
    m = meta.display
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        raise ManifestInvalid(m, "metadata.annotations", "must map names to strings")
    labels = (doc.get("metadata") or {}).get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ManifestInvalid(m, "metadata.labels", "must map names to strings")
    return Pod(meta, dict(annotations), str(spec.get("nodeName") or ""), dict(labels))


def _service(meta: Meta, spec: Mapping[str, Any], doc: Mapping[str, Any]) -> ServiceObject:
    return ServiceObject(meta, doc)

T_co = TypeVar("T_co", covariant=True)

@dataclass(frozen=True, slots=True)
class Kind(Generic[T_co]):
    """One kind Plexus serves: its name, whether it is namespaced, the typed object it parses into."""

    name: str
    type: type[T_co]
    namespaced: bool
    parse: Callable[[Meta, Mapping[str, Any], Mapping[str, Any]], T_co]
    api_version: str = API_VERSION

NETWORK_CLASS = Kind("NetworkClass", NetworkClass, False, _network_class)
NETWORK = Kind("Network", Network, True, _network)
CLUSTER_NETWORK = Kind("ClusterNetwork", ClusterNetwork, False, _cluster_network)
IP_ADDRESS_POOL = Kind("IPAddressPool", AddressPool, True, _address_pool)
CLUSTER_IP_ADDRESS_POOL = Kind("ClusterIPAddressPool", AddressPool, False, _address_pool)
IP_ADDRESS = Kind("IPAddress", IPAddressObject, True, _ip_address)
CLUSTER_IP_ADDRESS = Kind("ClusterIPAddress", IPAddressObject, False, _ip_address)
NETWORK_ATTACHMENT_DEFINITION = Kind("NetworkAttachmentDefinition", AttachmentDefinition, True,
                                     _attachment_definition, api_version=NPWG_API_VERSION)
IPAM_CLAIM = Kind("IPAMClaim", IpamClaim, True, _ipam_claim, api_version=NPWG_CLAIM_API_VERSION)
POD = Kind("Pod", Pod, True, _pod, api_version="v1")
SERVICE = Kind("Service", ServiceObject, True, _service, api_version="v1")

#: Every kind by name: what a manifest's ``kind`` may say.
KINDS: dict[str, Kind[Any]] = {k.name: k for k in (
    NETWORK_CLASS, NETWORK, CLUSTER_NETWORK, IP_ADDRESS_POOL, CLUSTER_IP_ADDRESS_POOL, IP_ADDRESS, CLUSTER_IP_ADDRESS,
    NETWORK_ATTACHMENT_DEFINITION, IPAM_CLAIM, POD, SERVICE)}
#: The pool kinds a network's ``spec.ipam.ipAddressPoolRef.kind`` names, the network kinds an IPAddress refers to.
POOL_KINDS: dict[str, Kind[AddressPool]] = {k.name: k for k in (IP_ADDRESS_POOL, CLUSTER_IP_ADDRESS_POOL)}
NETWORK_KINDS: dict[str, Kind[Network | ClusterNetwork]] = {k.name: k for k in (NETWORK, CLUSTER_NETWORK)}
IP_ADDRESS_KINDS: dict[str, Kind[IPAddressObject]] = {k.name: k for k in (IP_ADDRESS, CLUSTER_IP_ADDRESS)}

def parse_as(kind: Kind[T_co], doc: Any, source: str = "") -> T_co:
    """One manifest that must be of ``kind``; ``ManifestInvalid`` when it is another."""
    obj = parse_object(doc, source)
    if not isinstance(obj, kind.type):
        raise ManifestInvalid(obj.meta.display, "kind", f"must be {kind.name}", source)
    return obj

def parse_object(doc: Any, source: str = "") -> ApiObject:
    """One manifest → one typed object, or ``ManifestInvalid`` naming the field."""
    if not isinstance(doc, dict):
        raise ManifestInvalid("manifest", "", "must be a mapping", source)
    kind = KINDS.get(doc.get("kind"))  # type: ignore[arg-type]  # any value: not found unless a kind's name
    if kind is None:
        raise ManifestInvalid("manifest", "kind", f"{doc.get('kind')!r} is not one of {', '.join(KINDS)}", source)
    api = doc.get("apiVersion")
    if api != kind.api_version:
        raise ManifestInvalid(kind.name, "apiVersion", f"{api!r} must be {kind.api_version!r}", source)
    md = doc.get("metadata")
    if not isinstance(md, dict) or not isinstance(md.get("name"), str):
        raise ManifestInvalid(kind.name, "metadata.name", "is required", source)
    name = md["name"]
    ns = ""
    if kind.namespaced:
        ns = md.get("namespace") or "default"
        if not isinstance(ns, str) or not _DNS_LABEL.match(ns):
            raise ManifestInvalid(kind.name, "metadata.namespace", f"{ns!r} is not a DNS label", source)
    if not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
        raise ManifestInvalid(kind.name, "metadata.name", f"{name!r} is not a DNS subdomain name", source)
    generation = md.get("generation")
    meta = Meta(kind.name, name, ns, str(md.get("uid") or ""), source,
                generation if isinstance(generation, int) and not isinstance(generation, bool) else 0)
    spec = doc.get("spec") or {}
    if not isinstance(spec, dict):
        raise ManifestInvalid(meta.display, "spec", "must be a mapping", source)
    try:
        obj: ApiObject = kind.parse(meta, spec, doc)
        return obj
    except ManifestInvalid as exc:
        if source and not exc.source:
            raise ManifestInvalid(exc.obj, exc.field, exc.problem, source) from None
        raise


def refused_when_written(doc: Mapping[str, Any], obj: ApiObject, cls: NetworkClass | None = None,
                         stored: ApiObject | None = None) -> tuple[ManifestInvalid, ...]:
    """What a write of ``doc`` (parsed: ``obj``; a Network's class: ``cls``, None when not known) is refused for
    though ``parse_object`` serves it: a field the daemon would drop without a word, and a pool entry with no address
    to hand out (every ADD from it would fail "pool exhausted"), unless the write is an edit of ``stored`` (the
    object as stored, parsed) that had an entry of that network: then it is a drain, ``warned_when_written``. Held
    where a user writes (the webhook, ``plexusctl apply``), never where an object is read: one stored before these
    checks is served as it always was, but for a pool entry no pod could use (``unserved_entries``)."""
    zoned = _zoned_addresses(doc, obj)
    if isinstance(obj, IPAddressObject):
        return _static_ip_of_auto(doc, obj) + zoned
    if isinstance(obj, (Network, ClusterNetwork)):
        return _vlan_id_of_untagged(obj, cls) + zoned
    if isinstance(obj, AddressPool):
        kept = {s.network for s in stored.subnets} if isinstance(stored, AddressPool) else set()
        return _not_pool_networks(obj) + zoned + tuple(_empty_entry(obj, i) for i, subnet in _empty(obj)
                                                       if subnet.network not in kept)
    return zoned


def brought_by_write(doc: Mapping[str, Any], obj: ApiObject, old: Mapping[str, Any] | None,
                     class_of: Callable[[str], NetworkClass | None]) -> tuple[ManifestInvalid, ...]:
    """``refused_when_written`` of a write of ``doc`` (parsed: ``obj``) over ``old`` (the object as stored; None: a
    create), less what ``old`` had already: one stored before these checks may still be edited (a label, a finalizer
    let go). ``class_of``: a NetworkClass by name, None when not known."""
    def cls(o: ApiObject) -> NetworkClass | None:
        return class_of(o.network_class) if isinstance(o, Network) else None

    was = _stored(old)
    found = refused_when_written(doc, obj, cls(obj), was)
    if not found or old is None or was is None:
        return found  # a create, or stored before it could be checked: nothing sure it had
    had = {(p.field, p.problem) for p in refused_when_written(old, was, cls(was), was)}
    return tuple(p for p in found if (p.field, p.problem) not in had)


def warned_when_written(obj: ApiObject, edit: bool = False,
                        old: Mapping[str, Any] | None = None) -> tuple[ManifestInvalid, ...]:
    """What a write is let through for with a word back (the webhook's ``warnings``, which kubectl prints, and
    ``plexusctl apply``'s): an edit leaving a pool entry with no address to hand out. That is how a subnet is drained:
    its ranges cut while the addresses leased there stay, flagged outside the ranges, until their holders let go.
    ``old``: the object as stored, when known; then only the entries this edit empties are told of, not one stored
    empty already (a label edit of a drained pool), nor a new one (``refused_when_written``)."""
    if not (edit or old is not None) or not isinstance(obj, AddressPool):
        return ()
    was = _stored(old)
    if isinstance(was, AddressPool):
        had = {s.network for s in was.subnets if s.size}
        drained = [i for i, subnet in _empty(obj) if subnet.network in had]
    else:
        drained = [i for i, _ in _empty(obj)]
    return tuple(_drained_entry(obj, i) for i in drained)


def _stored(old: Mapping[str, Any] | None) -> ApiObject | None:
    """The object as stored, parsed; None for a create, or one stored before it could be checked."""
    if old is None:
        return None
    try:
        return parse_object(old)
    except ManifestInvalid:
        return None


def _static_ip_of_auto(doc: Mapping[str, Any], obj: IPAddressObject) -> tuple[ManifestInvalid, ...]:
    """The seed's Auto IPAddress has no ``static.ip``: the pool picks its address, and the one written is dropped."""
    static = (doc.get("spec") or {}).get("static")
    ip = static.get("ip") if isinstance(static, dict) else None
    if obj.type != "Auto" or ip is None:
        return ()
    return (ManifestInvalid(obj.meta.display, "spec.static.ip", f"{ip!r} is for type Static: an Auto IPAddress gets "
                            "whichever address its pool picks; set spec.type: Static, or remove spec.static"),)


def _address_fields(doc: Mapping[str, Any], obj: ApiObject) -> Iterator[tuple[str, str]]:
    """The addresses a manifest (parsed: ``obj``, so its shape is sound) gives, each with its field."""
    spec = doc.get("spec") or {}
    if isinstance(obj, IPAddressObject) and obj.type == "Static":
        yield "spec.static.ip", str(spec["static"].get("ip"))
    elif isinstance(obj, AddressPool):
        for i, item in enumerate(spec["pools"]):
            for j, text in enumerate(item.get("ranges") or []):
                yield f"spec.pools[{i}].ranges[{j}]", str(text)
            for j, route in enumerate(item.get("routes") or []):
                yield f"spec.pools[{i}].routes[{j}].via", str(route.get("via"))
    elif isinstance(obj, (Network, ClusterNetwork)):
        for i, route in enumerate(spec.get("policyRoutes") or []):
            yield f"spec.policyRoutes[{i}].via", str(route.get("via"))
    elif isinstance(obj, IpamClaim):
        for i, text in enumerate(spec.get("ipRequests") or []):
            yield f"spec.ipRequests[{i}]", str(text)


def _zoned_addresses(doc: Mapping[str, Any], obj: ApiObject) -> tuple[ManifestInvalid, ...]:
    """Addresses written with an IPv6 zone (``2001:2::5%eth0``): Go's ``net.ParseIP`` refuses them, and none of these
    fields is an interface's. Served without the zone (``_ip``), as one stored before this check is."""
    return tuple(ManifestInvalid(obj.meta.display, path, f"{text!r} {ZONED}")
                 for path, text in _address_fields(doc, obj) if "%" in text)


def unserved_entries(pool: AddressPool) -> tuple[ManifestInvalid, ...]:
    """The entries of a pool stored before its network was refused (``_not_pool_networks``) that are not served
    either: unlike a zone (served without it) or an empty entry (nothing leased, a drain), an address from one would
    never pass CHECK, so ADD of a network of the pool is refused, naming the entry; what was leased there before is
    still let go when its pod goes (DEL needs its record alone)."""
    return tuple(ManifestInvalid(p.obj, p.field, f"{p.problem} (stored before such pool networks were refused: no "
                                 "pod is given an address from this pool until the entry is removed or changed)")
                 for p in _not_pool_networks(pool))


def _not_pool_networks(pool: AddressPool) -> tuple[ManifestInvalid, ...]:
    """The entries whose network no pool may hand out from (``pool_network_problem``): an IPv6 link-local one
    passes ADD but never CHECK (the kernel's own fe80 addresses are left out of what CHECK compares)."""
    return tuple(ManifestInvalid(pool.meta.display, f"spec.pools[{i}].network", problem)
                 for i, subnet in enumerate(pool.subnets) if (problem := pool_network_problem(subnet.network)))


def _vlan_id_of_untagged(net: Network | ClusterNetwork, cls: NetworkClass | None) -> tuple[ManifestInvalid, ...]:
    """An untagged segment (``segments.segment_kind``: a ClusterNetwork of type Access, or a Network whose class has
    neither ``vlan`` nor ``vxlan``) has no VLAN ID: a ``spec.vlan.id`` is dropped. The seed takes a Network's from
    its class's pool, which an untagged class does not have. A class not known yet: nothing sure to say."""
    if net.vlan_id is None:
        return ()
    if isinstance(net, ClusterNetwork) and net.type == "Access":
        why = "type Access is the parent NIC itself, untagged: remove spec.vlan, or make it type VLAN"
    elif isinstance(net, Network) and cls is not None and not cls.vlan_pool and cls.vxlan is None:
        why = (f"NetworkClass {cls.meta.name} has no spec.vlan.idPool (its networks are untagged): remove spec.vlan, "
               "or use a class with a VLAN ID pool")
    else:
        return ()
    return (ManifestInvalid(net.meta.display, "spec.vlan.id", f"{net.vlan_id} would be ignored: {why}"),)


def _empty(pool: AddressPool) -> list[tuple[int, Subnet]]:
    """The entries (``spec.pools[i]``: index, subnet) whose ranges, less the addresses no host may have and the
    routes' gateways, leave nothing: ADD from them would always fail "pool exhausted". Leases play no part: a full
    pool is not empty."""
    return [(i, subnet) for i, subnet in enumerate(pool.subnets) if not subnet.size]


def _empty_entry(pool: AddressPool, i: int) -> ManifestInvalid:
    return ManifestInvalid(pool.meta.display, f"spec.pools[{i}]", f"{pool.subnets[i].network} has no address to "
                           "hand out: its ranges hold only addresses never leased (the subnet's own, an IPv4 "
                           "broadcast, a route's gateway)")


def _drained_entry(pool: AddressPool, i: int) -> ManifestInvalid:
    empty = _empty_entry(pool, i)
    return ManifestInvalid(empty.obj, empty.field, f"{empty.problem}; no address is leased from it any more, and "
                           "those leased there are kept (outside the ranges) until their pods and IPAddresses let "
                           "them go")

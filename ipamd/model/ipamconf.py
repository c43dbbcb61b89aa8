"""The ``ipam`` section of a CNI configuration that names ``"type": "plexus-ipam"``, checked. Pure.

Addresses come from a Plexus pool named by reference (``ipAddressPoolRef``, as a Network names its pool),
or from an inline ``range`` in Whereabouts's own words, so that a Whereabouts user switches by changing
``type`` alone: ``range`` (``198.18.0.0/24``, ``198.18.0.10-198.18.0.50/24``), ``range_start``,
``range_end``, ``exclude``, ``gateway``, ``routes``, ``network_name``, ``enable_overlapping_ranges``.

An inline range gets an implicit pool. Its leases are kept per ``network_name`` (the space): within one
space no address is handed out twice, whichever ranges overlap (Whereabouts's default,
``enable_overlapping_ranges: true``). ``enable_overlapping_ranges: false`` asks Whereabouts to let an
overlapping range hand out an address another range already gave; Plexus never does, so such a range is
refused when it overlaps another configuration's range of its space (``overlap``).

Whereabouts's keys that configure Whereabouts itself (its log, kubeconfig, datastore, reconciler) are
accepted and do nothing (Plexus's daemon has its own); every other key is refused by name, never ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cni.shim import IPAM_SOCKET_NAME, is_ipam_socket_path, timeout_problem
from ipamd.model.cniconf import ConfigInvalid
from ipamd.model.objects import (
    IPV4_COMPATIBLE,
    IPV6_FLOOR,
    AddressPool,
    IPNetwork,
    IPv4CompatibleAddress,
    Meta,
    Subnet,
    cut,
    parse_address,
    parse_duration,
    pool_network_problem,
    usable_bounds,
)

IPAM_TYPE = "plexus-ipam"
IMPLICIT_POOL = "ImplicitPool"
DEFAULT_TTL_S = 60.0
#: Whereabouts's keys about Whereabouts itself: accepted, and meaningless for Plexus.
WHEREABOUTS_OWN = frozenset({"log_file", "log_level", "kubernetes", "datastore", "configuration_path",
                             "reconciler_cron_expression", "leader_lease_duration", "leader_renew_deadline",
                             "leader_retry_period", "sleep_for_race", "node_slice_size"})
#: Keys of the plexus-ipam binary itself: where the daemon listens, how long to wait for it.
CLIENT_KEYS = frozenset({"type", "socket", "timeoutSeconds"})
COMMON_KEYS = CLIENT_KEYS | {"gateway", "routes"} | WHEREABOUTS_OWN
POOL_KEYS = COMMON_KEYS | {"ipAddressPoolRef"}
RANGE_KEYS = COMMON_KEYS | {"range", "range_start", "range_end", "exclude", "network_name",
                            "enable_overlapping_ranges", "leaseTTL"}
POOL_REF_KINDS = ("IPAddressPool", "ClusterIPAddressPool")


@dataclass(frozen=True, slots=True)
class PoolRef:
    kind: str  # IPAddressPool (of the pod's namespace) | ClusterIPAddressPool
    name: str
    namespace: str = ""  # when given, it must be the pod's


@dataclass(frozen=True, slots=True)
class InlineRange:
    """A Whereabouts-style range: its network and the addresses it hands out."""

    network: IPNetwork
    ranges: tuple[tuple[int, int], ...]  # inclusive bounds of what is handed out, ``exclude`` cut away
    space: str = ""  # network_name
    overlapping: bool = True  # enable_overlapping_ranges
    ttl_s: float = DEFAULT_TTL_S

    @property
    def text(self) -> str:
        return ",".join(f"{ipaddress.ip_address(a)}-{ipaddress.ip_address(b)}" for a, b in self.ranges)


@dataclass(frozen=True, slots=True)
class IpamConfig:
    """Where a delegate's addresses come from (a pool or a range), and what goes with them."""

    pool: PoolRef | None = None
    range: InlineRange | None = None
    gateway: str = ""
    routes: tuple[tuple[str, str], ...] = ()  # (dst, gw)


def space_key(space: str) -> str:
    """The pool key the leases of a space's inline ranges are kept under."""
    return f"{IMPLICIT_POOL}/{space or 'unnamed'}"


def implicit_pool(rng: InlineRange) -> AddressPool:
    """The pool an inline range allocates from: its space's key, its own ranges."""
    key = space_key(rng.space)
    return AddressPool(Meta(IMPLICIT_POOL, key.split("/", 1)[1]), rng.ttl_s, (Subnet(rng.network, rng.ranges),))


def overlap(rng: InlineRange, owner: str, others: Iterable[tuple[str, InlineRange]]) -> str:
    """The other configuration whose range of the same space ``rng`` overlaps, when ``rng`` does not allow
    overlapping ranges; "" when none."""
    if rng.overlapping:
        return ""
    for other_owner, other in others:
        if other_owner == owner or space_key(other.space) != space_key(rng.space):
            continue
        if any(a <= d and c <= b for a, b in rng.ranges for c, d in other.ranges):
            return f"{other_owner} ({other.network}, {other.text})"
    return ""


def _net(text: Any, field: str) -> IPNetwork:
    try:
        net = ipaddress.ip_network(str(text), strict=False)
    except ValueError:
        raise ConfigInvalid(field, f"{text!r} is not a CIDR") from None
    if net.version == 6 and int(net.network_address) < IPV6_FLOOR:
        raise ConfigInvalid(field, f"{net} {IPV4_COMPATIBLE}")
    return net


def _dst(text: Any, field: str) -> IPNetwork:
    """A route's destination: any network (``::/0`` too), unlike a range's, whose addresses a pool must hold."""
    try:
        return ipaddress.ip_network(str(text), strict=False)
    except ValueError:
        raise ConfigInvalid(field, f"{text!r} is not a CIDR") from None


def _ip(text: Any, field: str) -> int:
    """An address's integer (a zone, which Whereabouts's ``net.ParseIP`` refuses, is dropped, as it always was)."""
    try:
        return int(parse_address(str(text), zone=True))
    except IPv4CompatibleAddress as exc:
        raise ConfigInvalid(field, str(exc)) from None
    except ValueError:
        raise ConfigInvalid(field, f"{text!r} is not an IP address") from None


def _bounds(ipam: Mapping[str, Any]) -> tuple[IPNetwork, int, int]:
    """The network and first and last address of ``range`` (CIDR, ``a-b/prefix``, or ``a/prefix`` meaning
    from ``a`` on), narrowed by ``range_start`` and ``range_end``."""
    text = ipam["range"]
    if not isinstance(text, str):
        raise ConfigInvalid("ipam.range", "must be a CIDR string")
    lo_text, dash, rest = text.partition("-")
    if dash:
        hi_text, slash, prefix = rest.partition("/")
        if not slash:
            raise ConfigInvalid("ipam.range", f"{text!r} is not a CIDR or a range a-b/prefix")
        net = _net(f"{hi_text}/{prefix}", "ipam.range")
        start, end = _ip(lo_text, "ipam.range"), _ip(hi_text, "ipam.range")
    else:
        net = _net(text, "ipam.range")
        start, end = usable_bounds(net)
        start = max(start, _ip(text.split("/")[0], "ipam.range"))  # 198.18.0.100/24: from .100 on
    problem = pool_network_problem(net)
    if problem:
        raise ConfigInvalid("ipam.range", problem)
    start_field = end_field = "ipam.range"  # where each bound came from, for the error
    if "range_start" in ipam:
        start, start_field = _ip(ipam["range_start"], "ipam.range_start"), "ipam.range_start"
    if "range_end" in ipam:
        end, end_field = _ip(ipam["range_end"], "ipam.range_end"), "ipam.range_end"
    lo, hi = usable_bounds(net)
    for value, field in ((start, start_field), (end, end_field)):
        if not lo <= value <= hi:
            raise ConfigInvalid(field, f"{ipaddress.ip_address(value)} is not a usable address of {net}")
    if start > end:
        raise ConfigInvalid(end_field, f"{ipaddress.ip_address(end)} comes before the range's start "
                                       f"{ipaddress.ip_address(start)}")
    return net, start, end


def _inline(ipam: Mapping[str, Any], gateway: str, routes: tuple[tuple[str, str], ...]) -> InlineRange:
    """The range, without ``exclude``, its ``gateway`` and its routes' gateways inside it: never a pod's (the pod's
    route would go via itself, and the router's address would be taken twice on the segment)."""
    net, start, end = _bounds(ipam)
    ranges = [(start, end)]
    exclude = ipam.get("exclude") or []
    if not isinstance(exclude, list):
        raise ConfigInvalid("ipam.exclude", "must be a list of CIDRs")
    for i, item in enumerate(exclude):
        excluded = _net(item, f"ipam.exclude[{i}]")
        if excluded.version != net.version or not excluded.subnet_of(net):  # type: ignore[arg-type]  # same family
            raise ConfigInvalid(f"ipam.exclude[{i}]", f"{excluded} is outside the range's network {net}")
        ranges = cut(ranges, int(excluded.network_address), int(excluded.broadcast_address))
    for gw in sorted({gateway, *(via for _, via in routes)} - {""}):
        ip = ipaddress.ip_address(gw)
        if ip in net:
            ranges = cut(ranges, int(ip), int(ip))
    if not ranges:
        field = "ipam.exclude" if exclude else "ipam.gateway" if gateway else "ipam.routes"
        raise ConfigInvalid(field, f"leaves no address of {ipam['range']} to hand out")
    overlapping = ipam.get("enable_overlapping_ranges", True)
    if not isinstance(overlapping, bool):
        raise ConfigInvalid("ipam.enable_overlapping_ranges", "must be true or false")
    space = ipam.get("network_name", "")
    if not isinstance(space, str) or "/" in space:
        raise ConfigInvalid("ipam.network_name", "must be a name (a string without '/')")
    return InlineRange(net, tuple(ranges), space, overlapping, _ttl(ipam))


def _ttl(ipam: Mapping[str, Any]) -> float:
    text = ipam.get("leaseTTL")
    if text is None:
        return DEFAULT_TTL_S
    try:
        return parse_duration(str(text))
    except ValueError as exc:
        raise ConfigInvalid("ipam.leaseTTL", str(exc)) from None


def _routes(ipam: Mapping[str, Any], gateway: str) -> tuple[tuple[str, str], ...]:
    """The routes, each via its ``gw`` or else the range's ``gateway`` when of its family (a route without ``gw`` of
    the other family is left to the calling plugin: the link, or the result's gateway of its family)."""
    routes = ipam.get("routes") or []
    if not isinstance(routes, list):
        raise ConfigInvalid("ipam.routes", "must be a list of {dst, gw}")
    out = []
    for i, r in enumerate(routes):
        if not isinstance(r, dict) or "dst" not in r:
            raise ConfigInvalid(f"ipam.routes[{i}]", "must be {dst, gw}")
        dst = _dst(r["dst"], f"ipam.routes[{i}].dst")
        if r.get("gw"):
            gw = ipaddress.ip_address(_ip(r["gw"], f"ipam.routes[{i}].gw"))
            if gw.version != dst.version:  # the calling plugin's route add would fail on it
                raise ConfigInvalid(f"ipam.routes[{i}].gw", f"{gw} is not an IPv{dst.version} address, as the "
                                                            f"route's dst {dst} is")
            out.append((str(dst), str(gw)))
        else:
            out.append((str(dst), gateway if gateway and ipaddress.ip_address(gateway).version == dst.version
                        else ""))
    return tuple(out)


def _pool_ref(ref: Any) -> PoolRef:
    if isinstance(ref, str):
        ref = {"name": ref}
    if not isinstance(ref, dict) or not isinstance(ref.get("name"), str) or not ref["name"]:
        raise ConfigInvalid("ipam.ipAddressPoolRef", "must name a pool: {kind, name} or a name")
    unknown = sorted(set(ref) - {"kind", "name", "namespace"})
    if unknown:
        raise ConfigInvalid(f"ipam.ipAddressPoolRef.{unknown[0]}", "is not a key of a pool reference")
    kind = ref.get("kind") or POOL_REF_KINDS[0]
    if kind not in POOL_REF_KINDS:
        raise ConfigInvalid("ipam.ipAddressPoolRef.kind", f"{kind!r} must be one of {', '.join(POOL_REF_KINDS)}")
    namespace = ref.get("namespace") or ""
    if namespace and kind != POOL_REF_KINDS[0]:
        raise ConfigInvalid("ipam.ipAddressPoolRef.namespace", f"a {kind} has no namespace")
    return PoolRef(kind, ref["name"], str(namespace))


def _client_keys(ipam: Mapping[str, Any]) -> None:
    """``socket`` and ``timeoutSeconds``, read by the plugin binary itself (``cni.shim``) with the same rules."""
    socket = ipam.get("socket")
    if socket is not None and not (isinstance(socket, str) and is_ipam_socket_path(socket)):
        raise ConfigInvalid("ipam.socket", f"must be the absolute path of a daemon's {IPAM_SOCKET_NAME}")
    timeout = ipam.get("timeoutSeconds")
    problem = timeout_problem(timeout) if timeout is not None else ""
    if problem:
        raise ConfigInvalid("ipam.timeoutSeconds", problem)


def _unknown_keys(ipam: Mapping[str, Any], allowed: frozenset[str]) -> None:
    """The first key not in ``allowed``, refused by name before any missing one: a Whereabouts configuration with
    ``ipRanges`` and no ``range`` is told about ``ipRanges``, not that ``range`` is missing."""
    unknown = sorted(set(ipam) - allowed)
    if not unknown:
        return
    if unknown[0] in RANGE_KEYS:
        what = "with an ipAddressPoolRef (the pool says it)"
    elif unknown[0] == "ipRanges" and "range" in allowed:
        what = "(Whereabouts's list of ranges): give one range per NAD, or an ipAddressPoolRef"
    else:
        what = "(nor one of Whereabouts's that it accepts)"
    raise ConfigInvalid(f"ipam.{unknown[0]}", f"is not a key of plexus-ipam {what}")


def _link_local_router(gateway: str, rng: InlineRange) -> bool:
    """An IPv6 range's router known by its link-local address (as Router Advertisements announce it): on every link,
    so in no range, and Whereabouts takes any ``gateway``."""
    ip = ipaddress.ip_address(gateway)
    return ip.version == rng.network.version == 6 and ip.is_link_local


def parse_ipam_config(ipam: Any) -> IpamConfig:
    """The ``ipam`` section of a configuration whose IPAM is ``plexus-ipam``; ``ConfigInvalid`` naming the
    key (``ipam.range``) when it is wrong, or a key Plexus does not know."""
    if not isinstance(ipam, dict) or ipam.get("type") != IPAM_TYPE:
        raise ConfigInvalid("ipam.type", f"must be {IPAM_TYPE!r}")
    by_pool = "ipAddressPoolRef" in ipam
    if by_pool and "range" in ipam:
        raise ConfigInvalid("ipam.range", "a configuration names a pool (ipAddressPoolRef) or a range, not both")
    _unknown_keys(ipam, POOL_KEYS if by_pool else RANGE_KEYS)
    if not by_pool and "range" not in ipam:
        raise ConfigInvalid("ipam.range", "is required: a range (Whereabouts's form) or an ipAddressPoolRef")
    if "datastore" in ipam and ipam["datastore"] not in ("kubernetes", ""):
        raise ConfigInvalid("ipam.datastore", f"{ipam['datastore']!r}: Plexus keeps leases in its own registry")
    _client_keys(ipam)
    gateway = str(ipaddress.ip_address(_ip(ipam["gateway"], "ipam.gateway"))) if ipam.get("gateway") else ""
    routes = _routes(ipam, gateway)
    if by_pool:
        return IpamConfig(pool=_pool_ref(ipam["ipAddressPoolRef"]), gateway=gateway, routes=routes)
    rng = _inline(ipam, gateway, routes)
    if gateway and ipaddress.ip_address(gateway) not in rng.network and not _link_local_router(gateway, rng):
        raise ConfigInvalid("ipam.gateway", f"{gateway} is outside the range's network {rng.network}")
    return IpamConfig(range=rng, gateway=gateway, routes=routes)

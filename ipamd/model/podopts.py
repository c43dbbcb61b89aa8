"""What a Network or ClusterNetwork asks of the pod interfaces it gets (Plexus extensions, from DANM):

- ``spec.routingTable`` and ``spec.policyRoutes`` (DANM's ``rt_tables`` and ``proutes``): the interface's connected
  route and these routes go into that routing table, and an ``ip rule`` from each of its addresses selects it, so a
  pod with several networks answers each on the interface the request came in on;
- ``spec.interfacePrefix`` (DANM's ``container_prefix``): its interfaces are named ``<prefix><N>`` (N from 0),
  unless the pod's annotation names them;
- the label ``network.deckhouse.io/default-network: "true"``: pods that ask for no network get this one (a
  Network: in its namespace; a ClusterNetwork: in the whole cluster, where the namespace has none).

Parsed here, purely; every field is optional, and a network without them behaves as before.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_NETWORK_LABEL = "network.deckhouse.io/default-network"
#: The kernel's own tables: local (255), main (254) and default (253); 0 is "unspecified".
RESERVED_TABLES = {0: "unspecified", 253: "default", 254: "main", 255: "local"}
MAX_TABLE = 2**32 - 1
#: Before the main table's rule (32766), after the local one (0).
POLICY_RULE_PRIORITY = 30000
IFNAMSIZ = 15  # the kernel's limit on a link name, less the terminating NUL
_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


class OptionInvalid(ValueError):
    """A field of these options is wrong: ``field`` is its path in the object (``spec.routingTable``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


@dataclass(frozen=True, slots=True)
class PolicyRoute:
    destination: str  # CIDR
    via: str

    def to_dict(self) -> dict[str, str]:
        return {"destination": self.destination, "via": self.via}


@dataclass(frozen=True, slots=True)
class PodOptions:
    table: int = 0  # 0: no policy routing
    routes: tuple[PolicyRoute, ...] = ()
    interface_prefix: str = ""
    default: bool = False


def parse_pod_options(spec: Mapping[str, Any], labels: Mapping[str, Any]) -> PodOptions:
    table = spec.get("routingTable")
    if table is not None:
        if not isinstance(table, int) or isinstance(table, bool) or not 0 <= table <= MAX_TABLE:
            raise OptionInvalid("spec.routingTable", f"{table!r} is not a routing table number (1-{MAX_TABLE})")
        if table in RESERVED_TABLES:
            raise OptionInvalid("spec.routingTable", f"{table} is the kernel's {RESERVED_TABLES[table]} table")
    routes = _routes(spec.get("policyRoutes"))
    if routes and table is None:
        raise OptionInvalid("spec.policyRoutes", "needs spec.routingTable: the table they go into")
    prefix = spec.get("interfacePrefix")
    if prefix is not None:
        if not isinstance(prefix, str) or not _PREFIX.match(prefix):
            raise OptionInvalid("spec.interfacePrefix", f"{prefix!r} must start with a letter and hold only letters, "
                                "digits, '-', '_' and '.'")
        if len(prefix) + 1 > IFNAMSIZ:
            raise OptionInvalid("spec.interfacePrefix", f"{prefix!r} leaves no room for the number: an interface "
                                f"name has at most {IFNAMSIZ} characters")
    mark = labels.get(DEFAULT_NETWORK_LABEL)
    if mark is not None and mark not in ("true", "false"):
        raise OptionInvalid(f"metadata.labels[{DEFAULT_NETWORK_LABEL}]", f"{mark!r} must be \"true\" or \"false\"")
    return PodOptions(table or 0, routes, prefix or "", mark == "true")


def _routes(items: Any) -> tuple[PolicyRoute, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        raise OptionInvalid("spec.policyRoutes", "must be a list of {destination, via}")
    out: list[PolicyRoute] = []
    seen: dict[str, int] = {}  # destination: its index
    for i, r in enumerate(items):
        path = f"spec.policyRoutes[{i}]"
        if not isinstance(r, dict):
            raise OptionInvalid(path, "must be an object with destination and via")
        try:
            dest = ipaddress.ip_network(str(r.get("destination")), strict=True)
        except ValueError:
            raise OptionInvalid(f"{path}.destination", f"{r.get('destination')!r} is not a CIDR") from None
        via = _via(r.get("via"), f"{path}.via")
        if via.version != dest.version:
            raise OptionInvalid(f"{path}.via", f"{via} is not of {dest}'s family")
        if str(dest) in seen:  # the kernel refuses the second (EEXIST): ADD would fail or CHECK for ever
            raise OptionInvalid(f"{path}.destination", f"{dest} is spec.policyRoutes[{seen[str(dest)]}]'s "
                                "destination too: a routing table holds one route per destination")
        seen[str(dest)] = i
        out.append(PolicyRoute(str(dest), str(via)))
    return tuple(out)


def _via(text: Any, path: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A route's gateway; a zone is dropped (``refused_when_written`` refuses it, one stored is served without it:
    netlink takes none)."""
    from ipamd.model.objects import IPv4CompatibleAddress, parse_address  # objects imports this module

    try:
        return parse_address(str(text), zone=True)
    except IPv4CompatibleAddress as exc:
        raise OptionInvalid(path, str(exc)) from None
    except ValueError:
        raise OptionInvalid(path, f"{text!r} is not an IP address") from None


def unreachable_gateway(opts: PodOptions, networks: Sequence[IPNetwork]) -> tuple[str, str] | None:
    """The first policy route whose gateway lies in none of ``networks`` (the pool's): (field, problem)."""
    for i, r in enumerate(opts.routes):
        via = ipaddress.ip_address(r.via)
        if not any(via.version == n.version and via in n for n in networks):
            return (f"spec.policyRoutes[{i}].via",
                    f"{r.via} is not in {', '.join(map(str, networks))}, so it is not reachable from the interface")
    return None


def interface_name(prefix: str, used: set[str]) -> str:
    """``<prefix><N>`` with the lowest N from 0 not in ``used``; may be longer than IFNAMSIZ (the caller says so)."""
    n = 0
    while f"{prefix}{n}" in used:
        n += 1
    return f"{prefix}{n}"

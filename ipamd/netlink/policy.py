"""Policy routing in a pod's namespace (DANM's ``rt_tables`` and ``proutes``): an interface's connected route and its
network's policy routes in the network's table, and one ``ip rule`` per address of the interface that sends what
leaves from that address to that table. The routes go with the interface; the rules stay with the namespace, so DEL
removes them. Both families: an IPv6 address gets an AF_INET6 rule for its /128 and its prefix's route in the table
(which needs the address usable at once: ``configure_addresses`` adds it without duplicate address detection)."""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni.errors import InterfaceFailure
from ipamd.model.podopts import POLICY_RULE_PRIORITY
from ipamd.netlink.links import GONE, any_address, dump_of, netlink_failure, route_key

SCOPE_LINK = 253
FAMILIES = (socket.AF_INET, socket.AF_INET6)
Address = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def rule_request(iface: Address, table: int) -> dict[str, Any]:
    """The ``ip rule`` of one address: what leaves from it (its /32 or /128) looks up ``table``."""
    return {"family": socket.AF_INET6 if iface.version == 6 else socket.AF_INET, "src": str(iface.ip),
            "src_len": iface.max_prefixlen, "table": table, "priority": POLICY_RULE_PRIORITY}


def add_policy_routing(pod: IPRoute, idx: int, if_name: str, addresses: Iterable[str], table: int,
                       routes: Iterable[tuple[str, str]]) -> None:
    """The connected route of each address (CIDR, either family) and ``routes`` (destination, via) into ``table``,
    then the rules."""
    cidrs = [ipaddress.ip_interface(c) for c in addresses]
    try:
        for iface in cidrs:
            _add_connected(pod, dst=str(iface.network), oif=idx, table=table, scope=SCOPE_LINK, prefsrc=str(iface.ip))
        for dst, via in routes:  # an EEXIST here would leave a route out of the table: it fails ADD
            _add_routed(pod, if_name, dst=dst, gateway=via, oif=idx, table=table)
        for iface in cidrs:
            pod.rule("add", **rule_request(iface, table))
    except NetlinkError as exc:
        raise netlink_failure(f"policy routing of {if_name} in table {table}", exc) from None


def _add_routed(pod: IPRoute, if_name: str, **route: Any) -> None:
    """A route of the table; one pyroute2 cannot even send (a gateway with a zone id, ``2001:2::1%eth0``: OSError or
    ValueError before the kernel sees it) is refused naming it, not left to escape as an unexpected error."""
    try:
        pod.route("add", **route)
    except (OSError, ValueError) as exc:
        raise InterfaceFailure(f"route to {route['dst']} via {route['gateway']} of {if_name} in table "
                               f"{route['table']} failed", f"not a gateway address netlink can carry: {exc}") from None


def _add_connected(pod: IPRoute, **route: Any) -> None:
    """A connected route, once: two addresses of the interface in one network share it (EEXIST for the second)."""
    try:
        pod.route("add", **route)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def delete_policy_rules(pod: IPRoute, addresses: Iterable[str], table: int) -> None:
    """The rules of ``addresses`` (CIDR, either family) to ``table``; what is gone counts as removed."""
    for cidr in addresses:
        try:
            pod.rule("del", **rule_request(ipaddress.ip_interface(cidr), table))
        except NetlinkError as exc:
            if exc.code not in GONE:
                raise


def policy_state(pod: IPRoute, table: int) -> dict[str, list[Any]]:
    """The rules that select ``table`` (their source addresses, "addr/len") and the routes in it ("dst/len", via),
    IPv4 first, for CHECK and tests."""
    rules = [f"{r.get_attr('FRA_SRC')}/{r['src_len']}" for family in FAMILIES
             for r in dump_of(family, pod.get_rules)
             if (r.get_attr("FRA_TABLE") or r["table"]) == table and r.get_attr("FRA_SRC")]
    routes = [(f"{r.get_attr('RTA_DST') or any_address(family)}/{r['dst_len']}", r.get_attr("RTA_GATEWAY") or "")
              for family in FAMILIES for r in dump_of(family, pod.get_routes, table=table)]
    return {"rules": rules, "routes": routes}


def policy_problems(if_name: str, table: int, addresses: Iterable[str], routes: Iterable[tuple[str, str]],
                    state: Mapping[str, list[Any]]) -> list[str]:
    """CHECK's comparison, pure: what ``add_policy_routing`` puts in place for ``if_name`` (``addresses`` as CIDRs,
    ``routes`` its network's (destination, via)) that ``state`` (``policy_state``'s) lacks, in words naming the
    interface and the table: each address's rule, each connected route, each policy route."""
    cidrs = {c: ipaddress.ip_interface(c) for c in addresses}
    rules = {str(ipaddress.ip_interface(r)) for r in state["rules"]}
    have = {route_key(dst, via) for dst, via in state["routes"]}
    problems = [f"no rule sends {c.rpartition('/')[0]} of {if_name} to table {table}"
                for c, iface in cidrs.items() if f"{iface.ip}/{iface.max_prefixlen}" not in rules]
    problems += [f"table {table} lacks connected route {net} of {if_name}"
                 for net in dict.fromkeys(str(iface.network) for iface in cidrs.values()) if (net, "") not in have]
    problems += [f"table {table} lacks route {dst} via {via} of {if_name}"
                 for dst, via in routes if route_key(dst, via) not in have]
    return problems

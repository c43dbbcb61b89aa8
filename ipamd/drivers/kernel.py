"""What the drivers that build kernel links themselves (veth, TAP, macvlan) share: putting the leased
addresses and the pool's routes on the pod interface, their share of the CNI result, and CHECK."""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from cni.types import Interface, IPConfig, Result, Route, cidr_of
from ipamd.drivers.base import Built, LinksContext, undo_in_kernel
from ipamd.netlink import links, policy
from ipamd.store.records import BuiltInterface


def configure(pod: Any, index: int, iface: BuiltInterface, undo: contextlib.ExitStack,
              not_undone: Callable[[BuiltInterface], None] = lambda iface: None) -> list[tuple[str, str]]:
    """The interface's leased addresses and their routes (once each), unless it leaves them to a guest; and its
    network's policy routing (the rules outlive the interface: their undo is registered here, a failed one told to
    ``not_undone`` as the driver's own undo steps are, for the DEL to remove them). With a table, the
    pool's routes go into it, not into the main table: there two policy-routed networks routing one destination
    would share one route (the second's dropped), and replies would leave by the first one's interface. Returns the
    pool's routes left out (a default route where the pod has its own: ``links.add_pool_route``), for ``built``."""
    if not iface.configure_ips or not iface.addresses:
        return []
    cidrs = [cidr_of(a["address"], a["network"]) for a in iface.addresses]
    left_out = links.configure_addresses(pod, index, iface.if_name, cidrs, () if iface.table else _pool_routes(iface))
    if iface.table:
        undo_in_kernel(undo, not_undone, iface, f"policy rules of {iface.if_name}", policy.delete_policy_rules, pod,
                       cidrs, iface.table)
        policy.add_policy_routing(pod, index, iface.if_name, cidrs, iface.table, _table_routes(iface, cidrs))
    return left_out


def as_built(iface: BuiltInterface, left_out: Iterable[tuple[str, str]]) -> BuiltInterface:
    """The interface as the kernel has it: its addresses without the pool's routes ``configure`` left out, so that the
    result, both statuses and CHECK name only routes the pod has (a pool's default route the pod's own default
    kept out is no route of the pod's, and the interface is no default-route gateway)."""
    gone = {links.route_key(dst, via) for dst, via in left_out}
    return replace(iface, addresses=tuple(_without_routes(a, gone) for a in iface.addresses)) if gone else iface


def as_foreseen(ifaces: Iterable[BuiltInterface], prev: Result | None) -> list[BuiltInterface]:
    """The interfaces as ``as_built`` will have them, foreseen without a netlink dump: a pool's default route is left
    out where the pod already has a default route of its family through another gateway, as ``links.add_pool_route``
    does; the pod's defaults are ``prev``'s (the cluster network's), then those the interfaces before add. So the
    statuses written ahead of the build are those after it; where the namespace says otherwise, the write after the
    build corrects them."""
    have = {links.route_key(r.dst, r.gw) for r in prev.routes if links.is_default(r.dst)} if prev is not None else set()
    return [as_built(iface, _left_to_the_pod(iface, have)) for iface in ifaces]


def _left_to_the_pod(iface: BuiltInterface, have: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """The interface's pool default routes a default of the pod in ``have`` keeps out (``configure``'s main-table
    routes only); those it adds join ``have``."""
    if not iface.configure_ips or not iface.addresses or iface.table:
        return []
    left_out = []
    for dst, via in _pool_routes(iface):
        key = links.route_key(dst, via)
        if not links.is_default(dst) or key in have:
            continue
        if any(d == key[0] for d, _ in have):
            left_out.append((dst, via))
        else:
            have.add(key)
    return left_out


def _without_routes(address: dict[str, Any], gone: set[tuple[str, str]]) -> dict[str, Any]:
    """An address's record (``AddressConfig.to_dict``) without the routes ``gone`` (as ``links.route_key`` spells)."""
    kept = [r for r in address.get("routes", ()) if links.route_key(r["destination"], r["via"]) not in gone]
    rest = {k: v for k, v in address.items() if k != "routes"}
    return {**rest, "routes": kept} if kept else rest


def built(foresee: Callable[[BuiltInterface, str], Built], iface: BuiltInterface, sandbox: str,
          left_out: Iterable[tuple[str, str]]) -> Built:
    """What a kernel driver built: what it foresaw from the record, less the routes ``configure`` left out (then with
    the interface's addresses as built, which the record keeps)."""
    now = as_built(iface, left_out)
    done = foresee(now, sandbox)
    return done if now is iface else replace(done, addresses=now.addresses)


def _pool_routes(iface: BuiltInterface) -> list[tuple[str, str]]:
    """The routes of the pool's subnets of the interface's addresses (destination, via), once each."""
    return list(dict.fromkeys((r["destination"], r["via"]) for a in iface.addresses for r in a.get("routes", ())))


def _table_routes(iface: BuiltInterface, cidrs: Iterable[str]) -> list[tuple[str, str]]:
    """What goes into the interface's table besides its connected routes: its network's policy routes, then the
    pool's routes to the destinations those leave out (a table holds one route per destination, and the network's
    word on its own table wins; a pool route to the interface's own subnet is its connected route's already)."""
    return _policy_routes(iface) + _table_pool_routes(iface, cidrs)


def _policy_routes(iface: BuiltInterface) -> list[tuple[str, str]]:
    return [(r["destination"], r["via"]) for r in iface.policy_routes]


def _table_pool_routes(iface: BuiltInterface, cidrs: Iterable[str]) -> list[tuple[str, str]]:
    """The pool's routes that go into the interface's table: those to destinations its policy routes and its
    connected routes leave out."""
    taken = {links.route_key(dst, "")[0] for dst, _ in _policy_routes(iface)}
    taken |= {str(ipaddress.ip_interface(c).network) for c in cidrs}
    return [(dst, via) for dst, via in _pool_routes(iface) if links.route_key(dst, "")[0] not in taken]


def unconfigure(ctx: LinksContext, iface: BuiltInterface) -> None:
    """What outlives the interface in the pod's namespace, if that is still there: its policy rules."""
    if not iface.table or not iface.configure_ips:
        return
    pod = ctx.pod_netlink()
    if pod is not None:
        policy.delete_policy_rules(pod, [cidr_of(a["address"], a["network"]) for a in iface.addresses], iface.table)


def result(iface: BuiltInterface, mac: str, sandbox: str, host_side: tuple[Interface, ...] = ()) -> Result:
    """This interface's share of the CNI result: ``host_side`` links first, then the pod interface with
    its addresses and routes (none when the addresses are left to a guest). A pool route another interface of the
    pod carries (two on one pool) is this one's too: a result's routes are the pod's, named by no interface, and the
    whole result lists each once; what the record alone says, so the statuses can be written ahead of the build."""
    interfaces = host_side + (Interface(iface.if_name, mac, sandbox),)
    if not iface.configure_ips:
        return Result(interfaces)
    pod_index = len(interfaces) - 1
    ips = tuple(IPConfig(cidr_of(a["address"], a["network"]), pod_index) for a in iface.addresses)
    routes = tuple(dict.fromkeys(Route(r["destination"], r["via"]) for a in iface.addresses
                                 for r in a.get("routes", ())))
    return Result(interfaces, ips, routes)


def _spelled_cidr(cidr: str) -> str:
    """The kernel's spelling of an address with its prefix length (IPv6 compressed)."""
    try:
        return str(ipaddress.ip_interface(cidr))
    except ValueError:
        return cidr


def _spelled_routes(routes: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    return {links.route_key(dst, via) for dst, via in routes}


def check(host: Any, pod: Any, iface: BuiltInterface) -> list[str]:
    """The pod interface exists, is up, has its MAC, addresses and routes; its host link exists and is a port of
    the interface's segment bridge (a bridge removed and made again has none of its old ports)."""
    problems: list[str] = []
    state = links.link_state(pod, iface.if_name)
    if state is None:
        problems.append(f"{iface.if_name} is missing")
    else:
        if iface.mac and state["mac"] != iface.mac:
            problems.append(f"{iface.if_name} has MAC {state['mac']}, expected {iface.mac}")
        if not state["up"]:
            problems.append(f"{iface.if_name} is down")
        if iface.configure_ips:
            have = {_spelled_cidr(c) for c in state["addresses"]}
            for a in iface.addresses:
                cidr = cidr_of(a["address"], a["network"])
                if _spelled_cidr(cidr) not in have:
                    problems.append(f"{iface.if_name} lacks address {cidr}")
            if not iface.table:  # with a table, the pool's routes are in it
                problems += _pool_route_problems(pod, iface, _spelled_routes(state["routes"]))
    if iface.table and iface.configure_ips and iface.addresses and state is not None:  # as ``configure`` has it
        problems += _policy_problems(pod, iface, _spelled_routes(state["routes"]))
    if iface.host_link:
        problems += _host_link_problems(host, iface)
    return problems


def _pool_route_problems(pod: Any, iface: BuiltInterface, own: set[tuple[str, str]]) -> list[str]:
    """The pool's routes in the main table: on the interface (``own``, as the kernel spells them), or where ADD
    accepts them (``links.carried``: through the same gateway on another link of the pod, a connected route to the
    destination, or the pod's default route). The main table is read only when one is not on the interface."""
    missing = [(dst, via) for dst, via in _pool_routes(iface) if links.route_key(dst, via) not in own]
    main: dict[int, list[tuple[str, str, int]]] = {}
    problems = []
    for dst, via in missing:
        family = links.family_of(dst)
        if family not in main:
            main[family] = links.main_routes(pod, family)
        if not links.carried(dst, via, main[family]):
            problems.append(f"{iface.if_name} lacks route {dst} via {via}")
    return problems


def _host_link_problems(host: Any, iface: BuiltInterface) -> list[str]:
    """The node end (a veth's, a TAP's inner veth's) exists and is a port of the segment's bridge."""
    state = links.link_state(host, iface.host_link)
    if state is None:
        return [f"host link {iface.host_link} of {iface.if_name} is missing"]
    if iface.bridge and (not state.get("master") or state["master"] != links.index_of(host, iface.bridge)):
        return [f"host link {iface.host_link} of {iface.if_name} is not a port of bridge {iface.bridge}"]
    return []


def _policy_problems(pod: Any, iface: BuiltInterface, main: set[tuple[str, str]]) -> list[str]:
    """What ``configure`` put in the interface's table and rules that the pod's namespace lacks now. A pool route
    found in the main table through the interface (``main``, as the kernel spells them) counts as present: a pod
    built before the pool's routes went into the table has them there, and was built right."""
    cidrs = [cidr_of(a["address"], a["network"]) for a in iface.addresses]
    routes = _policy_routes(iface) + [r for r in _table_pool_routes(iface, cidrs) if links.route_key(*r) not in main]
    return policy.policy_problems(iface.if_name, iface.table, cidrs, routes, policy.policy_state(pod, iface.table))


class DoomedLinks:
    """Removes the node links that DELs doomed (``LinksContext.doomed``), the DELs of the moment together (a group
    commit): a DEL whose links were doomed while another's removal request ran waits for it to end, then one of the
    waiters removes what all of them doomed in one request. Removing a veth costs the kernel RCU waits under its
    RTNL lock once per request, so concurrent DELs (a rollout, a pod's many networks) pay for one."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._doomed = 0  # links doomed so far (a sequence number)
        self._removed = 0  # every link doomed up to this number is gone
        self._busy = False

    def remove(self, ctx: LinksContext) -> None:
        if not ctx.doomed:
            return
        with self._cv:
            self._doomed += len(ctx.doomed)
            mine = self._doomed
            while self._removed < mine:
                if self._busy:
                    self._cv.wait()
                    continue
                self._busy, upto = True, self._doomed  # every link counted by now is doomed in the kernel
                self._cv.release()
                try:
                    links.delete_doomed(ctx.host)
                finally:
                    self._cv.acquire()
                    self._busy = False
                    self._cv.notify_all()
                self._removed = max(self._removed, upto)
        ctx.doomed.clear()

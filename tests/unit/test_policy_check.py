"""CHECK of policy routing: what ADD put in an interface's table (each address's rule, its subnet's connected route,
the network's policy routes), each one missing reported naming the interface, the table and what is missing; at
message level (``PodNetlink``) and as the pure comparison; and, without a table, where a pool route the main table
has already counts."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from dataclasses import replace
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from cni.errors import CniError
from ipamd.drivers import kernel
from ipamd.netlink import links, policy
from ipamd.store.records import BuiltInterface
from tests.unit.test_podopts import PodNetlink

TABLE = 100


def policy_iface(*addresses: tuple[str, str], routes: tuple[tuple[str, str], ...] = ()) -> BuiltInterface:
    """An interface with policy routing, as ADD records it (``addresses``: (address, its network))."""
    return BuiltInterface("net1", "veth", "Network/ns/pr", "Network", "pr", mac="02:00:00:00:00:01",
                          addresses=tuple({"address": a, "network": n} for a, n in addresses), table=TABLE,
                          policy_routes=tuple({"destination": d, "via": v} for d, v in routes))


def added(iface: BuiltInterface, monkeypatch: pytest.MonkeyPatch, main: list[Any] | None = None) -> PodNetlink:
    """A pod namespace after ADD's ``configure`` of ``iface``, whose link CHECK finds up with its addresses
    (``main``: what ``configure_addresses`` was asked to route in the main table, each call's routes)."""
    monkeypatch.setattr(links, "configure_addresses",  # the main table is not this test's
                        lambda *args: None if main is None else main.append(tuple(args[4])))
    cidrs = [f"{a['address']}/{a['network'].split('/')[1]}" for a in iface.addresses]
    monkeypatch.setattr(links, "link_state", lambda ipr, name: {"name": name, "mac": iface.mac, "up": True,
                                                                "addresses": cidrs, "routes": [], "kind": "veth"})
    pod = PodNetlink()
    with contextlib.ExitStack() as undo:
        kernel.configure(pod, 7, iface, undo)
        undo.pop_all()
    return pod


DUAL = policy_iface(("198.18.5.10", "198.18.5.0/24"), ("2001:2:0:0::10", "2001:2:0:0::/64"),
                    routes=(("0.0.0.0/0", "198.18.5.1"), ("::/0", "2001:2::1")))


@pytest.mark.parametrize("dst", ["198.18.5.0/24", "2001:2::/64"])
def test_check_reports_a_connected_route_deleted_from_the_policy_table(dst: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ADD puts each address's connected route in the table; CHECK looked only at the rules and the policy routes, so
    a connected route deleted from the table went unnoticed (the policy routes' gateways unreachable from the
    table: what leaves from the address is dropped) while CHECK said the attachment was as ADD made it."""
    pod = added(DUAL, monkeypatch)
    assert kernel.check(object(), pod, DUAL) == [], "untouched: nothing differs"
    del pod.routes[(TABLE, dst)]
    problems = kernel.check(object(), pod, DUAL)
    assert problems == [f"table {TABLE} lacks connected route {dst} of net1"], problems


def test_check_reports_a_connected_route_that_now_goes_via_a_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connected route replaced by one through a gateway is not the route ADD made."""
    iface = policy_iface(("198.18.5.10", "198.18.5.0/24"))
    pod = added(iface, monkeypatch)
    pod.routes[(TABLE, "198.18.5.0/24")] = {"dst": "198.18.5.0/24", "gateway": "198.18.5.254", "table": TABLE}
    assert kernel.check(object(), pod, iface) == [f"table {TABLE} lacks connected route 198.18.5.0/24 of net1"]


def test_two_addresses_in_one_subnet_share_their_connected_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """ADD makes the shared connected route once (EEXIST for the second): CHECK expects it once, and reports it
    once when it is gone."""
    iface = policy_iface(("198.18.5.10", "198.18.5.0/24"), ("198.18.5.11", "198.18.5.0/24"))
    pod = added(iface, monkeypatch)
    assert kernel.check(object(), pod, iface) == []
    del pod.routes[(TABLE, "198.18.5.0/24")]
    assert kernel.check(object(), pod, iface) == [f"table {TABLE} lacks connected route 198.18.5.0/24 of net1"]


def _drop_rule(pod: PodNetlink) -> None:
    pod.rules = [r for r in pod.rules if r["src"] != "198.18.5.10"]


def _drop_policy_route(pod: PodNetlink) -> None:
    del pod.routes[(TABLE, "::/0")]


def _drop_connected_route(pod: PodNetlink) -> None:
    del pod.routes[(TABLE, "198.18.5.0/24")]


@pytest.mark.parametrize(("drop", "problem"), [
    (_drop_rule, f"no rule sends 198.18.5.10 of net1 to table {TABLE}"),
    (_drop_policy_route, f"table {TABLE} lacks route ::/0 via 2001:2::1 of net1"),
    (_drop_connected_route, f"table {TABLE} lacks connected route 198.18.5.0/24 of net1"),
])
def test_each_part_of_the_policy_routing_missing_is_reported_alike(drop: Any, problem: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule, a policy route and a connected route: each missing is one problem naming the interface and the table,
    and nothing else is reported."""
    pod = added(DUAL, monkeypatch)
    drop(pod)
    assert kernel.check(object(), pod, DUAL) == [problem]


def test_the_comparison_is_pure() -> None:
    """What ADD recorded against a ``policy_state`` (kernel spellings: IPv6 compressed, "" for no gateway)."""
    cidrs = ["198.18.5.10/24", "2001:2:0:0::10/64"]
    routes = [("0.0.0.0/0", "198.18.5.1")]
    whole: dict[str, list[Any]] = {"rules": ["198.18.5.10/32", "2001:2::10/128"],
             "routes": [("198.18.5.0/24", ""), ("2001:2::/64", ""), ("0.0.0.0/0", "198.18.5.1")]}
    assert policy.policy_problems("net1", TABLE, cidrs, routes, whole) == []
    assert policy.policy_problems("net1", TABLE, cidrs, routes, {"rules": [], "routes": []}) == [
        f"no rule sends 198.18.5.10 of net1 to table {TABLE}", f"no rule sends 2001:2:0:0::10 of net1 to table {TABLE}",
        f"table {TABLE} lacks connected route 198.18.5.0/24 of net1",
        f"table {TABLE} lacks connected route 2001:2::/64 of net1",
        f"table {TABLE} lacks route 0.0.0.0/0 via 198.18.5.1 of net1"]


def test_with_a_routing_table_the_main_table_gets_none_of_the_pools_routes() -> None:
    """README (routingTable): 'the main table gets none of the pool's routes nor the policyRoutes (only the kernel's
    own connected route of the address)'. kernel.configure put the pool's routes into the main table anyway, where
    a second policy-routed network routing the same destination had its route dropped (EEXIST)."""
    import json

    from tests.unit.test_attacher import Node, obj

    class Pod(PodNetlink):
        def addr(self, cmd: str, **kw: Any) -> None:
            pass

    node = Node()
    node.source.add(obj("IPAddressPool", "pool-r", {"pools": [{"network": "198.18.6.0/24", "ranges": [
        "198.18.6.10-198.18.6.20"], "routes": [{"destination": "198.19.6.0/24", "via": "198.18.6.1"}]}]}))
    node.source.add(obj("Network", "ext", {"networkClass": "cls", "routingTable": 100,
                                           "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pool-r"}}}))
    node.source.add(obj("Pod", "app", {}, uid="uid-app", annotations={
        "network.deckhouse.io/networks-spec": json.dumps([{"type": "Network", "name": "ext", "ifName": "net1"}])}))
    node.call("ADD")
    (att,) = node.store.attachments()
    (iface,) = att.interfaces
    pod = Pod()
    with contextlib.ExitStack() as undo:
        kernel.configure(pod, 7, iface, undo)
    main = sorted(dst for (table, dst) in pod.routes if table == 254)
    assert main == [], f"the main table got the pool's routes although the network routes through table 100: {main}"
    assert pod.routes[(TABLE, "198.19.6.0/24")]["gateway"] == "198.18.6.1", "the pool's route is in the table"


def test_the_pools_routes_go_into_the_table_and_check_looks_for_them_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool's routes go into the network's table after its policy routes; a policy route to the same destination
    wins (a table holds one route per destination), and a pool route to the interface's own subnet is its connected
    route already. CHECK expects each in the table, not in the main one."""
    pool_routes = ({"destination": "198.19.6.0/24", "via": "198.18.5.1"}, {"destination": "0.0.0.0/0",
                                                                          "via": "198.18.5.1"},
                   {"destination": "198.18.5.0/24", "via": "198.18.5.1"})
    iface = replace(policy_iface(("198.18.5.10", "198.18.5.0/24"), routes=(("0.0.0.0/0", "198.18.5.254"),)),
                    addresses=({"address": "198.18.5.10", "network": "198.18.5.0/24", "routes": pool_routes},))
    main: list[Any] = []
    pod = added(iface, monkeypatch, main)
    assert main == [()], "configure_addresses adds no route to the main table"
    assert {dst: kw.get("gateway") for (_, dst), kw in pod.routes.items()} == {
        "198.18.5.0/24": None, "0.0.0.0/0": "198.18.5.254", "198.19.6.0/24": "198.18.5.1"}
    assert {t for t, _ in pod.routes} == {TABLE}
    assert kernel.check(object(), pod, iface) == [], "CHECK finds them in the table (none in main)"
    del pod.routes[(TABLE, "198.19.6.0/24")]
    assert kernel.check(object(), pod, iface) == [f"table {TABLE} lacks route 198.19.6.0/24 via 198.18.5.1 of net1"]



def test_check_accepts_the_pools_routes_in_the_main_table_as_a_pod_built_before_the_upgrade_has_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``routingTable``, the pool's routes now go into the network's table and CHECK looked for them there only:
    a pod built by the previous version (its pool routes in the main table, through its interface) failed CHECK
    after the upgrade although nothing changed. A pool route in either table is present; one in neither, or through
    another gateway, is still reported, and so is a policy route found only in the main table (never its place)."""
    pool_routes = ({"destination": "198.19.6.0/24", "via": "198.18.5.1"},
                   {"destination": "2001:2:0:6::/64", "via": "2001:2::1"})
    iface = replace(DUAL, addresses=({"address": "198.18.5.10", "network": "198.18.5.0/24", "routes": pool_routes},
                                     DUAL.addresses[1]))
    pod = added(iface, monkeypatch)
    for dst in ("198.19.6.0/24", "2001:2:0:6::/64"):  # the previous version's table: the policy routes alone
        del pod.routes[(TABLE, dst)]

    def main_table(*routes: tuple[str, str]) -> None:
        cidrs = ["198.18.5.10/24", "2001:2::10/64"]
        monkeypatch.setattr(links, "link_state", lambda ipr, name: {
            "name": name, "mac": iface.mac, "up": True, "addresses": cidrs, "routes": list(routes), "kind": "veth"})

    main_table(("198.19.6.0/24", "198.18.5.1"), ("2001:2:0:6::/64", "2001:2::1"))  # link_state's spelling
    assert kernel.check(object(), pod, iface) == [], "the pool's routes in the main table: as the old version built"
    main_table(("198.19.6.0/24", "198.18.5.254"))
    assert kernel.check(object(), pod, iface) == [
        f"table {TABLE} lacks route 198.19.6.0/24 via 198.18.5.1 of net1",
        f"table {TABLE} lacks route 2001:2:0:6::/64 via 2001:2::1 of net1"], "through another gateway, or in neither"
    del pod.routes[(TABLE, "::/0")]
    main_table(("198.19.6.0/24", "198.18.5.1"), ("2001:2:0:6::/64", "2001:2::1"), ("::/0", "2001:2::1"))
    assert kernel.check(object(), pod, iface) == [f"table {TABLE} lacks route ::/0 via 2001:2::1 of net1"], \
        "a policy route belongs in the table whatever the version"


def test_a_pool_route_the_main_table_has_elsewhere_counts_where_add_leaves_it() -> None:
    """Without a table (``links.carried``, for ADD's EEXIST and CHECK alike; ``main_routes``' (destination, gateway,
    link)): a route to the destination through the same gateway on another link (two interfaces on one pool), a
    connected one (no gateway, one link: the pod is on that subnet), or for a default route the pod's own default
    route of its family, whatever it goes through; the spellings are the kernel's."""
    main = [("2001:2:0:41::/64", "2001:2::1", 2), ("0.0.0.0/0", "", 0), ("198.18.5.0/24", "", 3),
            ("198.19.7.0/24", "", 0)]
    assert links.carried("2001:2:0:41:0::/64", "2001:2:0:0::1", main), "the same route in another spelling"
    assert not links.carried("2001:2:0:41::/64", "2001:2::9", main), "through another gateway"
    assert links.carried("0.0.0.0/0", "198.18.5.1", main), "the pod's default route (a multipath one has no gateway)"
    assert not links.carried("::/0", "2001:2::1", main), "no default route of that family"
    assert not links.carried("198.19.0.0/16", "198.18.5.1", main), "a wider route is not the destination's"
    assert links.carried("198.18.5.0/24", "198.18.5.1", main), "the connected one: the pod is on that subnet"
    assert not links.carried("198.19.7.0/24", "198.18.5.1", main), "several next hops (no gateway, no link)"


class MainTable:
    """A pod namespace's main table as the kernel keeps it for IPv4: an address's connected route is added with
    NLM_F_APPEND (never EEXIST; the kernel's ``fib_magic``), a route added by ``ip route add`` (NLM_F_EXCL) fails with
    EEXIST when one of the same destination and metric is there."""

    def __init__(self) -> None:
        self.routes: list[dict[str, Any]] = []
        self.names = {2: "net1", 3: "net2"}

    def addr(self, cmd: str, index: int, **kw: Any) -> None:
        net = ipaddress.ip_interface(f"{kw['address']}/{kw['prefixlen']}").network
        self.routes.append({"dst": str(net), "gateway": "", "oif": index})

    def route(self, cmd: str, dst: str, gateway: str, oif: int) -> None:
        if any(r["dst"] == dst for r in self.routes):
            raise NetlinkError(errno.EEXIST, "File exists")
        self.routes.append({"dst": dst, "gateway": gateway, "oif": oif})

    def get_routes(self, family: int, table: int) -> list[Any]:
        out = []
        for r in self.routes:
            net, _, plen = r["dst"].partition("/")
            out.append(PodNetlink.Msg({"family": socket.AF_INET, "dst_len": int(plen), "type": 1},
                                      {"RTA_DST": None if plen == "0" else net, "RTA_GATEWAY": r["gateway"] or None,
                                       "RTA_OIF": r["oif"]}))
        return [m for m in out if m["family"] == family]

    def link(self, cmd: str, index: int) -> list[Any]:
        return [PodNetlink.Msg({}, {"IFLA_IFNAME": self.names[index]})]


def built(order: list[str], b_routes: list[tuple[str, str]] | None = None) -> str:
    """A pod on network A (198.18.10.0/24, its pool routing 198.18.20.0/24 via 198.18.10.1) and on network B
    (198.18.20.0/24; ``b_routes`` its pool's), its interfaces configured in ``order``: "" or the CNI error."""
    pod = MainTable()
    ifaces = {"A": (2, "net1", ["198.18.10.5/24"], [("198.18.20.0/24", "198.18.10.1")]),
              "B": (3, "net2", ["198.18.20.5/24"], b_routes or [])}
    try:
        for which in order:
            idx, name, cidrs, routes = ifaces[which]
            links.configure_addresses(pod, idx, name, cidrs, routes)
    except CniError as exc:
        return f"{exc.code}: {exc.msg}"
    return ""


def test_a_pool_route_to_another_interfaces_subnet_does_not_depend_on_the_order_of_the_interfaces() -> None:
    """7e3d27b refused (code 7) an EEXIST of a pool route unless ``carried``, and a connected route was not: A then B
    succeeded (the kernel appends B's connected route next to A's pool route), B then A failed ADD, though README
    fails ADD only for a destination the pod routes "through another gateway". A connected route has none: the
    pool's route is left out, and the pod passes whatever the order of its selection (or parallel delegates)."""
    assert built(["A", "B"]) == "", "A first: both routes, ADD succeeds"
    assert built(["B", "A"]) == "", "B first: the connected route carries the destination"
    assert built(["B"], [("198.18.20.0/24", "198.18.20.1")]) == "", \
        "a pool route to the interface's own subnet: its connected route carries it (as in a routing table)"

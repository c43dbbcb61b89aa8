"""The netlink layer with both families, in real namespaces: a pod namespace and a gateway namespace joined by a
veth pair, made for each test and deleted whatever happens. An IPv6 address is usable the moment it is added (no
duplicate address detection: not tentative, a socket binds to it, a prefsrc route in a policy table takes it),
CHECK's views (``link_state``, ``policy_state``) list both families and not the kernel's own link-local addresses
and routes, policy routing writes an AF_INET6 rule per IPv6 address, and the default route moves for IPv6 as for
IPv4 (a gateway netlink cannot carry gives it back). A pool route the pod routes already (the cluster's default route
in a dual-stack cluster, two interfaces on one pool, the subnet another interface is on, in either order) is where ADD
and CHECK agree, or refused; an IPv6 address goes on a link born with IPv6 off. Only 198.18.0.0/15 and 2001:2::/48
are used; packets travel only between the test's namespaces."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD, IFA_F_TENTATIVE

from cni.errors import CniError, InterfaceFailure, InvalidConfig
from ipamd.drivers import kernel
from ipamd.netlink import default_route, links, policy, segment_links
from ipamd.netlink.netns import _setns, in_namespace, netlink_at, open_netns
from ipamd.store.records import BuiltInterface
from tests.conftest import wait_for
from tests.harness import NS_PREFIX, netns_add, netns_del

POD4, POD6 = "198.18.40.3/24", "2001:2:0:40::3/64"
GW4, GW6 = "198.18.40.1", "2001:2:0:40::1"
GW4_POOL, GW6_POOL = "198.18.140.1", "2001:2:0:140::1"  # of the pools of ``cluster_pod``'s interfaces
TABLE = 4000000


@dataclass
class Pair:
    """The pod's namespace with ``net1`` (``index``), the gateway's with its peer ``gw0``; both up."""

    pod: IPRoute
    gw: IPRoute
    pod_path: str
    gw_path: str
    index: int


def _up(ipr: IPRoute, name: str) -> int:
    idx = int(ipr.link("get", ifname=name)[0]["index"])
    ipr.link("set", index=idx, state="up")
    return idx


@pytest.fixture
def pair() -> Iterator[Pair]:
    tag = uuid.uuid4().hex[:6]
    names = [f"{NS_PREFIX}v6pod-{tag}", f"{NS_PREFIX}v6gw-{tag}"]
    try:
        pod_path, gw_path = (netns_add(n) for n in names)
        with netlink_at(pod_path) as pod, netlink_at(gw_path) as gw:
            fd = open_netns(gw_path)
            try:
                pod.link("add", ifname="net1", kind="veth", peer={"ifname": "gw0", "net_ns_fd": fd})
            finally:
                os.close(fd)
            _up(pod, "lo")
            _up(gw, "lo")
            gw_idx = _up(gw, "gw0")
            for cidr in (f"{GW4}/24", f"{GW6}/64"):
                gw.addr("add", index=gw_idx, **links.address_request(cidr))
            yield Pair(pod, gw, pod_path, gw_path, _up(pod, "net1"))
    finally:
        for n in names:
            netns_del(n)


def _addresses(ipr: IPRoute, idx: int) -> dict[str, int]:
    """Every address of the link as the kernel has it ("addr/len" → flags, IFA_FLAGS when sent: it has all 32)."""
    return {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}": a.get_attr("IFA_FLAGS") or a["flags"]
            for a in ipr.get_addr(index=idx)}


def _main_routes(ipr: IPRoute, family: int) -> list[tuple[str, str, int]]:
    """(destination/len, via, oif) of the main table's unicast routes of ``family``."""
    return [(f"{r.get_attr('RTA_DST') or links.any_address(family)}/{r['dst_len']}",
             r.get_attr("RTA_GATEWAY") or "", r.get_attr("RTA_OIF"))
            for r in ipr.get_routes(family=family, table=254) if r["type"] == links.RTN_UNICAST]


def _socket_in(path: str, family: int, kind: int) -> socket.socket:
    """A socket in the namespace at ``path``, made by a thread that enters it and comes back (a socket keeps the
    namespace it was made in)."""
    box: dict[str, Any] = {}

    def work() -> None:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        fd = open_netns(path)
        try:
            _setns(fd)
            try:
                box["sock"] = socket.socket(family, kind)
            finally:
                _setns(home)
        except BaseException as exc:
            box["error"] = exc
        finally:
            os.close(fd)
            os.close(home)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["sock"]  # type: ignore[no-any-return]


@pytest.mark.netns
def test_both_families_usable_at_once(pair: Pair) -> None:
    routes = [("2001:2:0:41::/64", GW6), ("198.18.41.0/24", GW4)]
    links.configure_addresses(pair.pod, pair.index, "net1", [POD4, POD6], routes)

    # read at once: no duplicate address detection ran, so nothing to wait for
    have = _addresses(pair.pod, pair.index)
    assert POD4 in have and POD6 in have, have
    assert not have[POD6] & IFA_F_TENTATIVE, f"{POD6} is tentative (flags {have[POD6]:#x})"
    assert have[POD6] & IFA_F_NODAD, f"{POD6} was added without IFA_F_NODAD (flags {have[POD6]:#x})"
    assert ("2001:2:0:41::/64", GW6, pair.index) in _main_routes(pair.pod, socket.AF_INET6)
    assert ("198.18.41.0/24", GW4, pair.index) in _main_routes(pair.pod, socket.AF_INET)

    # a tentative address cannot be bound (EADDRNOTAVAIL): bind to it and reach the gateway's namespace, now
    with contextlib.ExitStack() as stack:
        rx = stack.enter_context(_socket_in(pair.gw_path, socket.AF_INET6, socket.SOCK_DGRAM))
        tx = stack.enter_context(_socket_in(pair.pod_path, socket.AF_INET6, socket.SOCK_DGRAM))
        rx.bind((GW6, 0))
        rx.settimeout(3)
        tx.bind((POD6.split("/")[0], 0))
        tx.sendto(b"plexus", (GW6, rx.getsockname()[1]))
        data, (src, *_) = rx.recvfrom(64)
    assert data == b"plexus" and src == POD6.split("/")[0]

    # two interfaces on one pool bring the same route: the second finds it there and is fine
    links.configure_addresses(pair.pod, pair.index, "net1", [], routes)


@pytest.mark.netns
def test_link_state_lists_both_families_not_the_kernels_own(pair: Pair) -> None:
    links.configure_addresses(pair.pod, pair.index, "net1", [POD4, POD6],
                              [("2001:2:0:41::/64", GW6), ("198.18.41.0/24", GW4)])
    assert wait_for(lambda: any(a.startswith("fe80::") for a in _addresses(pair.pod, pair.index)), 5, 0.02), \
        "the kernel gives the link its link-local address once it has a carrier"
    assert any(dst.startswith("fe80::") for dst, _, _ in _main_routes(pair.pod, socket.AF_INET6))

    state = links.link_state(pair.pod, "net1")
    assert state is not None and state["up"]
    assert sorted(state["addresses"]) == sorted([POD4, POD6]), "both families, no fe80::"
    assert sorted(state["routes"]) == [("198.18.41.0/24", GW4), ("2001:2:0:41::/64", GW6)], \
        "routes through a gateway only: not the connected, fe80::/64, local or multicast ones"


@pytest.mark.netns
def test_policy_routing_with_an_ipv6_address(pair: Pair) -> None:
    links.configure_addresses(pair.pod, pair.index, "net1", [POD4, POD6], [])
    proutes = [("::/0", GW6), ("2001:2:0:42::/64", GW6), ("0.0.0.0/0", GW4)]
    policy.add_policy_routing(pair.pod, pair.index, "net1", [POD4, POD6], TABLE, proutes)

    state = policy.policy_state(pair.pod, TABLE)
    assert state["rules"] == ["198.18.40.3/32", "2001:2:0:40::3/128"]
    assert sorted(state["routes"]) == sorted([("198.18.40.0/24", ""), ("0.0.0.0/0", GW4),
                                              ("2001:2:0:40::/64", ""), ("::/0", GW6), ("2001:2:0:42::/64", GW6)])
    rules6 = [r for r in pair.pod.get_rules(family=socket.AF_INET6) if r.get_attr("FRA_SRC")]
    assert [(r.get_attr("FRA_SRC"), r["src_len"], r.get_attr("FRA_TABLE"), r.get_attr("FRA_PRIORITY"))
            for r in rules6] == [("2001:2:0:40::3", 128, TABLE, 30000)]
    # the rule works: from the pod's address, a destination only the table knows goes through its gateway
    hop = pair.pod.route("get", dst="2001:2:0:42::9", src="2001:2:0:40::3")[0]
    assert (hop.get_attr("RTA_TABLE"), hop.get_attr("RTA_GATEWAY")) == (TABLE, GW6)
    assert not [r for r in _main_routes(pair.pod, socket.AF_INET6) if r[0] == "::/0"], \
        "the policy routes stay in their table"

    # what CHECK sees through a record written in another spelling of the same addresses
    iface = BuiltInterface("net1", "veth", "k", "Network", "n", addresses=(
        {"address": "198.18.40.3", "network": "198.18.40.0/24", "routes": []},
        {"address": "2001:2:0:40:0:0:0:3", "network": "2001:2:0:40::/64", "routes": []}),
        table=TABLE, policy_routes=tuple({"destination": d, "via": v} for d, v in
                                         [("::/0", GW6), ("2001:2:0:42:0::/64", "2001:2:0:40:0::1")]))
    assert kernel.check(pair.pod, pair.pod, iface) == []

    policy.delete_policy_rules(pair.pod, [POD4, POD6], TABLE)
    assert policy.policy_state(pair.pod, TABLE)["rules"] == []
    policy.delete_policy_rules(pair.pod, [POD4, POD6], TABLE)  # gone counts as removed
    assert kernel.check(pair.pod, pair.pod, iface) == [
        f"no rule sends {a} of net1 to table {TABLE}" for a in ("198.18.40.3", "2001:2:0:40:0:0:0:3")]


@pytest.mark.netns
def test_configure_through_the_driver_checks_clean(pair: Pair) -> None:
    """``kernel.configure`` (what veth and macvlan call) with a dual-stack record, then CHECK finds nothing amiss."""
    iface = BuiltInterface("net1", "veth", "k", "Network", "n", addresses=(
        {"address": "198.18.40.3", "network": "198.18.40.0/24",
         "routes": [{"destination": "198.18.41.0/24", "via": GW4}]},
        {"address": "2001:2:0:40::3", "network": "2001:2:0:40::/64",
         "routes": [{"destination": "2001:2:0:41::/64", "via": GW6}, {"destination": "::/0", "via": GW6}]}),
        table=7, policy_routes=({"destination": "2001:2:0:42::/64", "via": GW6},))
    with contextlib.ExitStack() as undo:
        kernel.configure(pair.pod, pair.index, iface, undo)
        assert kernel.check(pair.pod, pair.pod, iface) == []
        assert [r for f in (socket.AF_INET, socket.AF_INET6) for r in _main_routes(pair.pod, f) if r[1]] == [], \
            "with a table, the pool's routes go into it, none into the main table"
        pair.pod.route("del", dst="2001:2:0:41::/64", gateway=GW6, table=7)
        assert kernel.check(pair.pod, pair.pod, iface) == [f"table 7 lacks route 2001:2:0:41::/64 via {GW6} of net1"]
    assert policy.policy_state(pair.pod, 7)["rules"] == [], "the undo took the rules of both families"


@pytest.mark.netns
def test_default_route_moves_for_ipv6(pair: Pair) -> None:
    links.configure_addresses(pair.pod, pair.index, "net1", [POD4, POD6], [])
    pair.pod.link("add", ifname="eth0", kind="veth", peer={"ifname": "eth0-peer"})  # no dummy module here
    _up(pair.pod, "eth0-peer")
    other = _up(pair.pod, "eth0")
    links.configure_addresses(pair.pod, other, "eth0", ["198.18.43.3/24", "2001:2:0:43::3/64"],
                              [("::/0", "2001:2:0:43::1"), ("0.0.0.0/0", "198.18.43.1")])

    added = default_route.set_default_route(pair.pod, "net1", [GW6])
    assert [(t.dst, t.gateway) for t in added] == [("::/0", GW6)]
    assert [r for r in _main_routes(pair.pod, socket.AF_INET6) if r[0] == "::/0"] == [("::/0", GW6, pair.index)], \
        "the cluster network's IPv6 default route is replaced"
    assert [r for r in _main_routes(pair.pod, socket.AF_INET) if r[0] == "0.0.0.0/0"] == \
        [("0.0.0.0/0", "198.18.43.1", other)], "the IPv4 one stays"
    state = links.link_state(pair.pod, "net1")
    assert state is not None and ("::/0", GW6) in state["routes"]

    default_route.give_back(pair.pod, "net1", added)
    assert [r for r in _main_routes(pair.pod, socket.AF_INET6) if r[0] == "::/0"] == \
        [("::/0", "2001:2:0:43::1", other)], "the cluster network's IPv6 default route is back"
    default_route.give_back(pair.pod, "net1", added)  # gone and back already: nothing to do


@dataclass
class ClusterPod:
    """A pod's namespace with ``net1``, ``net2`` and the cluster network's ``eth0`` (the pod's default routes of both
    families), each a veth to a gateway namespace, all up."""

    ipr: IPRoute
    path: str
    net1: int
    eth0: int


@pytest.fixture
def cluster_pod() -> Iterator[ClusterPod]:
    tag = uuid.uuid4().hex[:6]
    names = [f"{NS_PREFIX}v6cp-pod-{tag}", f"{NS_PREFIX}v6cp-gw-{tag}"]
    try:
        pod_path, gw_path = (netns_add(n) for n in names)
        with netlink_at(pod_path) as ipr:
            fd = open_netns(gw_path)
            try:
                for name, peer in (("net1", "gw1"), ("net2", "gw2"), ("eth0", "gw0")):
                    ipr.link("add", ifname=name, kind="veth", peer={"ifname": peer, "net_ns_fd": fd})
            finally:
                os.close(fd)
            idx = {name: _up(ipr, name) for name in ("lo", "net1", "net2", "eth0")}
            links.configure_addresses(ipr, idx["eth0"], "eth0", ["198.18.143.3/24", "2001:2:0:143::3/64"],
                                      [("::/0", "2001:2:0:143::1"), ("0.0.0.0/0", "198.18.143.1")])
            yield ClusterPod(ipr, pod_path, idx["net1"], idx["eth0"])
    finally:
        for n in names:
            netns_del(n)


def _pool_iface(name: str, address: str, network: str, routes: list[tuple[str, str]]) -> BuiltInterface:
    return BuiltInterface(name, "veth", "k", "Network", "n", addresses=(
        {"address": address, "network": network, "routes": [{"destination": d, "via": v} for d, v in routes]},))


def _defaults(ipr: IPRoute, family: int) -> list[tuple[str | None, int | None]]:
    return [(r.gateway, r.oif) for r in default_route.defaults(ipr, family)]


def _disable_ipv6(path: str) -> None:
    """``all`` and ``default`` ``disable_ipv6=1`` in the namespace: a link made from now on is born with IPv6 off."""
    def disable() -> None:
        for key in ("all", "default"):
            with open(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6", "w") as f:
                f.write("1")
    fd = open_netns(path)
    try:
        in_namespace(fd, disable)
    finally:
        os.close(fd)


def _ipv6_disabled(path: str, if_name: str) -> str:
    def read() -> str:
        with open(f"/proc/sys/net/ipv6/conf/{if_name}/disable_ipv6") as f:
            return f.read().strip()
    fd = open_netns(path)
    try:
        return in_namespace(fd, read)
    finally:
        os.close(fd)


@pytest.mark.netns
def test_a_pool_route_to_ipv6_default_in_a_dual_stack_cluster_is_left_out_and_named_nowhere(
        cluster_pod: ClusterPod) -> None:
    """A pool route's destination is any CIDR (``::/0`` too). In a dual-stack cluster the pod's eth0 has the cluster's
    ``::/0``: the kernel holds one route per destination and metric (EEXIST). ADD succeeds, leaving the pod's default
    route (a pool's does not take it over; NPWG default-route or a routing table does); the interface as built names
    no ``::/0`` (the result listed it, and network-status made net1 a default-route gateway), and CHECK agrees."""
    pod = cluster_pod
    iface = _pool_iface("net1", "2001:2:0:140::3", "2001:2:0:140::/64", [("::/0", GW6_POOL)])
    with contextlib.ExitStack() as undo:
        left_out = kernel.configure(pod.ipr, pod.net1, iface, undo)
    assert left_out == [("::/0", GW6_POOL)]
    assert _defaults(pod.ipr, socket.AF_INET6) == [("2001:2:0:143::1", pod.eth0)]
    built = kernel.as_built(iface, left_out)
    assert built.addresses == ({"address": "2001:2:0:140::3", "network": "2001:2:0:140::/64"},)
    assert kernel.result(built, "", "").routes == (), "the result names a default route the pod does not have"
    assert kernel.check(pod.ipr, pod.ipr, built) == [], "CHECK of what ADD just built (and reported) fails"


@pytest.mark.netns
def test_an_ipv4_pool_default_route_leaves_the_pods_default_route_and_passes_check(cluster_pod: ClusterPod) -> None:
    """As it always was (users' IPv4 ``0.0.0.0/0`` pool routes): ADD succeeds and eth0's default route stays, the
    pool's other routes on the interface; the interface as built names those alone, and CHECK holds it to them, also
    once the pod's own default route is gone (the cluster network's, never this interface's). A record written before
    left-out routes were dropped from it names the pool's default: its CHECK accepts the pod's own instead."""
    pod = cluster_pod
    routes = [("0.0.0.0/0", GW4_POOL), ("198.19.140.0/24", GW4_POOL)]
    iface = _pool_iface("net1", "198.18.140.3", "198.18.140.0/24", routes)
    with contextlib.ExitStack() as undo:
        built = kernel.as_built(iface, kernel.configure(pod.ipr, pod.net1, iface, undo))
    assert _defaults(pod.ipr, socket.AF_INET) == [("198.18.143.1", pod.eth0)]
    assert [(r.dst, r.gw) for r in kernel.result(built, "", "").routes] == [("198.19.140.0/24", GW4_POOL)]
    assert kernel.check(pod.ipr, pod.ipr, built) == [] and kernel.check(pod.ipr, pod.ipr, iface) == []
    pod.ipr.route("del", dst="0.0.0.0/0", gateway="198.18.143.1", oif=pod.eth0)
    assert kernel.check(pod.ipr, pod.ipr, built) == []
    assert kernel.check(pod.ipr, pod.ipr, iface) == [f"net1 lacks route 0.0.0.0/0 via {GW4_POOL}"]
    pod.ipr.route("del", dst="198.19.140.0/24", gateway=GW4_POOL, oif=pod.net1)
    assert kernel.check(pod.ipr, pod.ipr, built) == [f"net1 lacks route 198.19.140.0/24 via {GW4_POOL}"]


@pytest.mark.netns
def test_a_pool_default_route_where_the_pod_has_none_of_its_family_is_on_the_interface(
        cluster_pod: ClusterPod) -> None:
    """An IPv4-only cluster: the pool's ``::/0`` is the pod's IPv6 default route, on the interface."""
    pod = cluster_pod
    pod.ipr.route("del", dst="::/0", gateway="2001:2:0:143::1", oif=pod.eth0)
    iface = _pool_iface("net1", "2001:2:0:140::3", "2001:2:0:140::/64", [("::/0", GW6_POOL)])
    with contextlib.ExitStack() as undo:
        assert kernel.configure(pod.ipr, pod.net1, iface, undo) == [], "nothing left out"
    assert _defaults(pod.ipr, socket.AF_INET6) == [(GW6_POOL, pod.net1)]
    assert kernel.check(pod.ipr, pod.ipr, iface) == []


@pytest.mark.netns
def test_a_pool_default_route_two_interfaces_on_the_pool_share_is_named_by_both(cluster_pod: ClusterPod) -> None:
    """The pod has no IPv6 default route: the first interface on the pool gets the pool's ``::/0``, the second finds
    it there (EEXIST, through the same gateway): the pod's default route, which neither leaves out of its record."""
    pod = cluster_pod
    pod.ipr.route("del", dst="::/0", gateway="2001:2:0:143::1", oif=pod.eth0)
    first = _pool_iface("net1", "2001:2:0:140::3", "2001:2:0:140::/64", [("::/0", GW6_POOL)])
    second = _pool_iface("net2", "2001:2:0:140::4", "2001:2:0:140::/64", [("::/0", GW6_POOL)])
    with contextlib.ExitStack() as undo:
        assert kernel.configure(pod.ipr, pod.net1, first, undo) == []
        assert kernel.configure(pod.ipr, links.index_of(pod.ipr, "net2") or 0, second, undo) == []
        undo.pop_all()
    assert _defaults(pod.ipr, socket.AF_INET6) == [(GW6_POOL, pod.net1)]
    assert kernel.check(pod.ipr, pod.ipr, second) == []


@pytest.mark.netns
def test_two_interfaces_on_one_pool_pass_check(cluster_pod: ClusterPod) -> None:
    """The second interface's route is not added (the first carries it: one route per destination and metric); CHECK
    finds it there, through the same gateway, until it is gone."""
    pod = cluster_pod
    route = [("2001:2:0:141::/64", GW6_POOL)]
    first = _pool_iface("net1", "2001:2:0:140::3", "2001:2:0:140::/64", route)
    second = _pool_iface("net2", "2001:2:0:140::4", "2001:2:0:140::/64", route)
    with contextlib.ExitStack() as undo:
        kernel.configure(pod.ipr, pod.net1, first, undo)
        kernel.configure(pod.ipr, links.index_of(pod.ipr, "net2") or 0, second, undo)
        undo.pop_all()
    assert kernel.check(pod.ipr, pod.ipr, first) == []
    assert kernel.check(pod.ipr, pod.ipr, second) == []
    pod.ipr.route("del", dst="2001:2:0:141::/64", gateway=GW6_POOL, oif=pod.net1)
    assert kernel.check(pod.ipr, pod.ipr, second) == [f"net2 lacks route 2001:2:0:141::/64 via {GW6_POOL}"]


@pytest.mark.netns
def test_a_pool_route_the_pod_routes_through_another_gateway_is_refused_naming_both(cluster_pod: ClusterPod) -> None:
    """The cluster network's route to the destination, or another network's through another gateway: ADD fails (code
    7) naming the pool's route and the pod's, instead of leaving the pod routing it elsewhere and CHECK failing."""
    pod = cluster_pod
    first = _pool_iface("net1", "2001:2:0:140::3", "2001:2:0:140::/64", [("2001:2:0:141::/64", GW6_POOL)])
    second = _pool_iface("net2", "198.18.142.3", "198.18.142.0/24", [("198.19.7.0/24", "198.18.142.1")])
    pod.ipr.route("add", dst="198.19.7.0/24", gateway="198.18.143.1", oif=pod.eth0)
    net2 = links.index_of(pod.ipr, "net2") or 0
    with contextlib.ExitStack() as undo:
        kernel.configure(pod.ipr, pod.net1, first, undo)
        with pytest.raises(InvalidConfig) as refused:
            kernel.configure(pod.ipr, net2, second, undo)
    assert (refused.value.code, refused.value.details) == (7, "spec.pools[].routes")
    assert refused.value.msg == ("route 198.19.7.0/24 via 198.18.142.1 of net2, a route of its pool, cannot be added: "
                                 "the pod routes 198.19.7.0/24 via 198.18.143.1 dev eth0 already (give one of the networks "
                                 "a routingTable to route it in its own table)")
    links.configure_addresses(pod.ipr, net2, "net2", ["2001:2:0:140::4/64"], [])
    with pytest.raises(InvalidConfig, match=f"the pod routes 2001:2:0:141::/64 via {GW6_POOL} dev net1 already"):
        links.configure_addresses(pod.ipr, net2, "net2", [], [("2001:2:0:141::/64", "2001:2:0:140::9")])


# network A's pool routes network B's subnet through A's gateway; the pod is on both (net1: A, net2: B): per family,
# A (address, network, the pool route's destination and via), B (address, network), an address in B's subnet
ON_BOTH: dict[int, tuple[tuple[str, str, str, str], tuple[str, str], str]] = {
    socket.AF_INET: (("198.18.140.3", "198.18.140.0/24", "198.18.142.0/24", GW4_POOL),
                     ("198.18.142.3", "198.18.142.0/24"), "198.18.142.9"),
    socket.AF_INET6: (("2001:2:0:140::3", "2001:2:0:140::/64", "2001:2:0:142::/64", GW6_POOL),
                      ("2001:2:0:142::3", "2001:2:0:142::/64"), "2001:2:0:142::9"),
}


def _hop(pod: ClusterPod, dst: str, src: str | None = None) -> tuple[str, int]:
    """How the pod reaches ``dst`` (from ``src``): (gateway or "", link index)."""
    msg = pod.ipr.route("get", dst=dst, **({"src": src} if src else {}))[0]
    return msg.get_attr("RTA_GATEWAY") or "", msg.get_attr("RTA_OIF")


def _build_on_both(pod: ClusterPod, a: BuiltInterface, b: BuiltInterface, a_first: bool) -> int:
    """ADD's ``configure`` of A (on net1) and B (on net2) in that order or the other; net2's index."""
    net2 = links.index_of(pod.ipr, "net2") or 0
    with contextlib.ExitStack() as undo:
        for iface, idx in ((a, pod.net1), (b, net2)) if a_first else ((b, net2), (a, pod.net1)):
            kernel.configure(pod.ipr, idx, iface, undo)
        undo.pop_all()
    return net2


@pytest.mark.netns
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("a_first", [True, False], ids=["A-then-B", "B-then-A"])
def test_a_pool_route_to_another_interfaces_subnet_adds_in_either_order(cluster_pod: ClusterPod, family: int,
                                                                       a_first: bool) -> None:
    """B's address brings a connected route to the destination of A's pool route. IPv4: one key (destination,
    metric 0) for both; the kernel appends an address's connected route after A's route (A first: both, A's used),
    and refuses A's after B's (EEXIST: B first, the connected route carries it, A's is left out; it failed ADD with
    code 7 after 7e3d27b). IPv6: the connected route's metric is 256, A's 1024: both, the connected one used. ADD
    and CHECK agree in every order; CHECK still finds A's route lacking once nothing carries it."""
    pod = cluster_pod
    (a_addr, a_net, dst, via), (b_addr, b_net), target = ON_BOTH[family]
    a, b = _pool_iface("net1", a_addr, a_net, [(dst, via)]), _pool_iface("net2", b_addr, b_net, [])
    net2 = _build_on_both(pod, a, b, a_first)
    assert kernel.check(pod.ipr, pod.ipr, a) == [] and kernel.check(pod.ipr, pod.ipr, b) == []
    added = (dst, via, pod.net1) in links.main_routes(pod.ipr, family)
    assert added == (a_first or family == socket.AF_INET6)
    assert _hop(pod, target) == ((via, pod.net1) if a_first and family == socket.AF_INET else ("", net2))
    pod.ipr.addr("del", index=net2, **links.address_request(f"{b_addr}/{b_net.split('/')[1]}"))
    assert kernel.check(pod.ipr, pod.ipr, a) == ([] if added else [f"net1 lacks route {dst} via {via}"]), \
        "the connected route gone with B's address: CHECK finds the pool's route lacking where it was left out"


@pytest.mark.netns
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("a_first", [True, False], ids=["A-then-B", "B-then-A"])
def test_with_a_routing_table_a_pool_route_to_another_interfaces_subnet_is_in_it_in_either_order(
        cluster_pod: ClusterPod, family: int, a_first: bool) -> None:
    """A's pool route goes into A's table, which holds A's connected route only: no EEXIST whatever the order. What
    leaves from A's address goes through A's gateway; the rest of the pod reaches B's subnet on net2."""
    pod = cluster_pod
    (a_addr, a_net, dst, via), (b_addr, b_net), target = ON_BOTH[family]
    a = replace(_pool_iface("net1", a_addr, a_net, [(dst, via)]), table=TABLE)
    net2 = _build_on_both(pod, a, _pool_iface("net2", b_addr, b_net, []), a_first)
    assert kernel.check(pod.ipr, pod.ipr, a) == []
    assert (dst, via, pod.net1) not in links.main_routes(pod.ipr, family)
    assert _hop(pod, target, src=a_addr) == (via, pod.net1)
    assert _hop(pod, target) == ("", net2)


@pytest.mark.netns
def test_add_of_an_ipv6_address_where_the_pods_namespace_disables_ipv6(cluster_pod: ClusterPod) -> None:
    """A pod namespace whose ``default.disable_ipv6`` is 1 (devconf_inherit_init_net=1 on a node with IPv6 off, a
    runtime that turns it off): the pod interface is born with IPv6 off, and RTM_NEWADDR answers EACCES. As the
    reference plugins' ``ipam.ConfigureIface`` (and DANM, danm#68), IPv6 is switched on for it and ``lo``."""
    pod = cluster_pod
    _disable_ipv6(pod.path)
    pod.ipr.link("add", ifname="net9", kind="veth", peer={"ifname": "net9p"})  # made now: born with IPv6 off
    idx = int(pod.ipr.link("get", ifname="net9")[0]["index"])
    pod.ipr.link("set", index=idx, state="up")
    try:
        links.configure_addresses(pod.ipr, idx, "net9", ["198.18.140.9/24", "2001:2:0:140::9/64"], [])
    except CniError as exc:
        pytest.fail(f"ADD of a dual-stack address fails: {exc.code} {exc.msg}: {exc.details}")


@pytest.mark.netns
def test_ipv6_is_switched_on_only_for_an_interface_given_an_ipv6_address(cluster_pod: ClusterPod) -> None:
    pod = cluster_pod
    _disable_ipv6(pod.path)
    for name in ("net8", "net9"):
        pod.ipr.link("add", ifname=name, kind="veth", peer={"ifname": f"{name}p"})
    idx = {name: _up(pod.ipr, name) for name in ("net8", "net8p", "net9", "net9p")}
    links.configure_addresses(pod.ipr, idx["net8"], "net8", ["198.18.140.8/24"], [])
    links.configure_addresses(pod.ipr, idx["net9"], "net9", ["2001:2:0:140::9/64"], [("2001:2:0:141::/64", GW6_POOL)])
    assert [_ipv6_disabled(pod.path, n) for n in ("net8", "net9", "lo")] == ["1", "0", "0"]
    iface = _pool_iface("net9", "2001:2:0:140::9", "2001:2:0:140::/64", [("2001:2:0:141::/64", GW6_POOL)])
    assert kernel.check(pod.ipr, pod.ipr, iface) == []


@pytest.mark.netns
def test_a_zoned_default_route_gateway_fails_as_a_cni_error_and_gives_the_routes_back(cluster_pod: ClusterPod) -> None:
    """``fe80::1%net1`` (ipaddress takes a scope id): the first gateway replaced eth0's IPv4 default route, then
    pyroute2 raises OSError (inet_pton) for the second, not a NetlinkError: a CNI error all the same, naming the
    gateway, and the routes taken are given back."""
    pod = cluster_pod
    links.configure_addresses(pod.ipr, pod.net1, "net1", ["198.18.140.3/24", "2001:2:0:140::3/64"], [])
    before = _defaults(pod.ipr, socket.AF_INET)
    assert before == [("198.18.143.1", pod.eth0)]
    raised: BaseException | None = None
    try:
        default_route.set_default_route(pod.ipr, "net1", [GW4_POOL, "fe80::1%net1"])
    except BaseException as exc:  # noqa: BLE001  # what it raises is the point
        raised = exc
    after = _defaults(pod.ipr, socket.AF_INET)
    assert isinstance(raised, CniError) and after == before, \
        f"raised {type(raised).__name__}: {raised}; IPv4 default routes now {after}, before {before}"

    both = {f: _defaults(pod.ipr, f) for f in (socket.AF_INET, socket.AF_INET6)}
    with pytest.raises(InterfaceFailure) as refused:
        default_route.set_default_route(pod.ipr, "net1", [GW6_POOL, GW4_POOL, "fe80::1%net1"])
    assert refused.value.msg == "setting the default route via fe80::1%net1 on net1 failed"
    assert {f: _defaults(pod.ipr, f) for f in (socket.AF_INET, socket.AF_INET6)} == both


@pytest.mark.netns
def test_vxlan_over_ipv6_skips_this_nodes_own_address(pair: Pair) -> None:
    """A class's remotes name every node, this one too, spelled as the user wrote them."""
    links.configure_addresses(pair.pod, pair.index, "net1", [POD6], [])
    remotes = ["2001:2:0:40:0:0:0:3", "2001:2:0:40::7", "2001:2:0:40::8"]
    name = segment_links.ensure_vxlan(pair.pod, 5006, "net1", remotes, "", 4789, "2001:2:0:40::3")
    vx = pair.pod.link("get", ifname=name)[0]
    data = vx.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    assert data.get_attr("IFLA_VXLAN_LOCAL6") == "2001:2:0:40::3"
    fdb = sorted(n.get_attr("NDA_DST") for n in pair.pod.fdb("dump", ifindex=vx["index"]) if n.get_attr("NDA_DST"))
    assert fdb == ["2001:2:0:40::7", "2001:2:0:40::8"]

    # neither local nor group: IPv6 remotes make the device IPv6 (an IPv4 one refuses them, EAFNOSUPPORT)
    name = segment_links.ensure_vxlan(pair.pod, 5007, "", ["2001:2:0:44::7"], "", 4789, "")
    vx = pair.pod.link("get", ifname=name)[0]
    assert [n.get_attr("NDA_DST") for n in pair.pod.fdb("dump", ifindex=vx["index"]) if n.get_attr("NDA_DST")] \
        == ["2001:2:0:44::7"]


def test_vxlan_spec_families() -> None:
    assert segment_links.vxlan_spec("v", 1, None, 4789, "ff05::1", "2001:2::1") == {
        "ifname": "v", "kind": "vxlan", "vxlan_id": 1, "vxlan_port": 4789, "vxlan_learning": 1,
        "vxlan_group6": "ff05::1", "vxlan_local6": "2001:2::1"}
    assert segment_links.vxlan_spec("v", 1, None, 4789, "239.1.1.1", "198.18.0.1")["vxlan_local"] == "198.18.0.1"
    assert segment_links.vxlan_local("", "", ["2001:2::7"]) == "::"
    assert segment_links.vxlan_local("", "", ["198.18.0.7"]) == "" and segment_links.vxlan_local("", "", []) == ""
    assert segment_links.vxlan_local("2001:2::1", "", ["2001:2::7"]) == "2001:2::1"
    assert segment_links.vxlan_local("", "ff05::1", ["2001:2::7"]) == ""


def test_address_request_nodad_for_ipv6_only() -> None:
    assert links.address_request("2001:2:0:5::3/64") == {"address": "2001:2:0:5::3", "prefixlen": 64,
                                                         "flags": IFA_F_NODAD}
    assert links.address_request("198.18.5.3/24") == {"address": "198.18.5.3", "prefixlen": 24}


def test_dumps_on_a_kernel_without_ipv6() -> None:
    """Booted with ipv6.disable=1, the kernel refuses an AF_INET6 rule dump and answers an AF_INET6 route dump with
    every family: CHECK of an IPv4 pod must not fail for it."""

    class Msg(dict[str, Any]):
        def get_attr(self, name: str) -> Any:
            return None

    def rules(family: int, **_: Any) -> list[Msg]:
        if family == socket.AF_INET6:
            raise NetlinkError(errno.EAFNOSUPPORT)
        return []

    def routes(family: int, **_: Any) -> list[Msg]:
        return [Msg(family=socket.AF_INET, dst_len=0, type=1)]

    assert links.dump_of(socket.AF_INET6, rules) == []
    assert links.dump_of(socket.AF_INET6, routes) == []
    assert len(links.dump_of(socket.AF_INET, routes)) == 1
    with pytest.raises(NetlinkError):
        links.dump_of(socket.AF_INET6, lambda family: (_ for _ in ()).throw(NetlinkError(errno.EPERM)))


def test_spellings_compare_as_the_kernels() -> None:
    assert links.same_ip("2001:2:0:40:0:0:0:3") == "2001:2:0:40::3"
    assert links.same_ip("node-a.example") == "node-a.example"

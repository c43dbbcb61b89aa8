"""The netlink layer with both families, in real namespaces: a pod namespace and a gateway namespace joined by a
veth pair, made for each test and deleted whatever happens. An IPv6 address is usable the moment it is added (no
duplicate address detection: not tentative, a socket binds to it, a prefsrc route in a policy table takes it),
CHECK's views (``link_state``, ``policy_state``) list both families and not the kernel's own link-local addresses
and routes, policy routing writes an AF_INET6 rule per IPv6 address, and the default route moves for IPv6 as for
IPv4. Only 198.18.0.0/15 and 2001:2::/48 are used; packets travel only between the test's namespaces."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD, IFA_F_TENTATIVE

from ipamd.drivers import kernel
from ipamd.netlink import default_route, links, policy, segment_links
from ipamd.netlink.netns import _setns, netlink_at, open_netns
from ipamd.store.records import BuiltInterface
from tests.conftest import wait_for
from tests.harness import NS_PREFIX, netns_add, netns_del

POD4, POD6 = "198.18.40.3/24", "2001:2:0:40::3/64"
GW4, GW6 = "198.18.40.1", "2001:2:0:40::1"
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

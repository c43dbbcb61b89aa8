"""A pod's veth and macvlan on a segment, in namespaces of the test's own (``world``): they fit the uplink's MTU,
ignore router advertisements, a macvlan's unicast is not flooded to the segment, and CHECK sees a node end that left
its bridge; the undo and DEL remove what each of these adds."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import uuid
from typing import Any

import pytest

from cni.errors import CniError
from ipamd.drivers.base import BuildContext, InterfaceKey, InterfaceRequest, LinksContext
from ipamd.drivers.macvlan import MacvlanDriver
from ipamd.drivers.veth import VethDriver
from ipamd.netlink import links, segment_links
from ipamd.netlink.netns import netlink_at, open_netns, pod_namespace
from ipamd.store.records import BuiltInterface
from tests.conftest import wait_for
from tests.harness import NS_PREFIX, netns_add, netns_del
from tests.netns.kernel_world import World, in_ns, link, nic_to_peer, read_in, ready_link_local, run_in, up

pytestmark = pytest.mark.netns

BRIDGE = "plx-n-rv000001"
ADDR = {"address": "198.18.60.3", "network": "198.18.60.0/24",
        "routes": [{"destination": "198.19.60.0/24", "via": "198.18.60.1"}]}
ADDR6 = {"address": "2001:2:0:60::3", "network": "2001:2:0:60::/64",
         "routes": [{"destination": "2001:2:0:61::/64", "via": "2001:2:0:60::1"}]}


def _ctx(w: World, bridge: str = BRIDGE, uplink: str = "") -> BuildContext:
    return BuildContext(w.host, w.pod, lambda: segment_links.ensure_bridge(w.host, bridge, uplink))


def _iface(kind: str, if_name: str = "net1", addresses: tuple[dict[str, Any], ...] = (ADDR,), mac: str = "",
           **request: Any) -> BuiltInterface:
    plan = _driver(kind).plan(InterfaceKey("c" * 64, "eth0", "/x"), InterfaceRequest(if_name, mac=mac, **request))
    return BuiltInterface(if_name, kind, "ns/net", "Network", "net", host_link=plan.host_link, bridge=BRIDGE,
                          mac=plan.mac, configure_ips=plan.configure_ips, addresses=addresses,
                          driver=plan.state or {})


def _driver(kind: str) -> Any:
    return {"veth": VethDriver(), "macvlan": MacvlanDriver()}[kind]


def _fields(iface: BuiltInterface) -> dict[str, Any]:
    return {f: getattr(iface, f) for f in BuiltInterface.__dataclass_fields__}


def _fdb_macs(w: World) -> set[str]:
    """The MACs of the static entries of the bridge's forwarding table on the bridge device itself (``bridge fdb show
    dev BRIDGE``, permanent). The dump lists the device's unicast address list too, where a macvlan on it puts its
    MAC, as entries without ``NDA_MASTER``: not the table's, and not counted."""
    idx = links.index_of(w.host, BRIDGE)
    if idx is None:
        return set()
    return {e.get_attr("NDA_LLADDR") for e in w.host.fdb("dump", ifindex=idx)
            if e["ifindex"] == idx and e["state"] & 0x80 and e.get_attr("NDA_MASTER") is not None}


# -- MTU -------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["veth", "macvlan"])
def test_pod_interface_mtu_fits_the_segment_uplink(world: World, kind: str) -> None:
    """(A macvlan inherits its lower device's MTU.) The pod's interface is no bigger than
    the segment's uplink, and the veth's node end has the bridge's MTU too."""
    nic_to_peer(world, 1400, "198.18.60.2/24")
    segment_links.ensure_bridge(world.host, BRIDGE, "nic0")
    iface = _iface(kind)
    with contextlib.ExitStack() as undo:
        _driver(kind).build(_ctx(world, uplink="nic0"), iface, undo)  # the bridge has exactly the uplink asked for
        undo.pop_all()
    bridge_mtu = link(world.host, BRIDGE).get_attr("IFLA_MTU")
    pod_mtu = link(world.pod.netlink(), "net1").get_attr("IFLA_MTU")
    assert bridge_mtu == 1400
    assert pod_mtu <= bridge_mtu, f"{kind} net1 has MTU {pod_mtu} on a segment whose uplink carries {bridge_mtu}"
    if kind == "veth":
        assert link(world.host, iface.host_link).get_attr("IFLA_MTU") == bridge_mtu
        assert link(world.host, BRIDGE).get_attr("IFLA_MTU") == 1400, "the veth lowered no bridge MTU"


def test_full_size_packet_from_a_veth_pod_crosses_the_uplink(world: World) -> None:
    """The same, as traffic: a packet of the pod's full size crosses the NIC to the peer, a bigger one is
    fragmented by the pod and crosses too (it used to be dropped by the bridge, silently), and a bigger one with DF
    is refused in the pod, where the sender hears of it (not lost on the wire)."""
    nic_to_peer(world, 1400, "198.18.60.2/24")
    with contextlib.ExitStack() as undo:
        VethDriver().build(_ctx(world, uplink="nic0"), _iface("veth"), undo)
        undo.pop_all()
    full = run_in(world.paths["pod"], ["ping", "-c1", "-W2", "-M", "do", "-s", "1372", "198.18.60.2"])
    assert full.returncode == 0, f"a packet of the pod's MTU (1400) is lost on the segment: {full}"
    big = run_in(world.paths["pod"], ["ping", "-c1", "-W2", "-M", "dont", "-s", "1472", "198.18.60.2"])
    assert big.returncode == 0, f"a 1500-byte packet from the pod is lost on the segment: {big.stdout}{big.stderr}"
    df = run_in(world.paths["pod"], ["ping", "-c1", "-W2", "-M", "do", "-s", "1472", "198.18.60.2"])
    assert df.returncode != 0 and "mtu=1400" in df.stdout + df.stderr, df


def test_pod_veth_mtu_fits_a_vxlan_uplink(world: World) -> None:
    nic_to_peer(world, 1500, "198.18.61.2/24")
    world.host.addr("add", index=up(world.host, "nic0"), **links.address_request("198.18.61.1/24"))
    vx = segment_links.ensure_vxlan(world.host, 5000, "nic0", ["198.18.61.2"], "", 4789, "198.18.61.1")
    with contextlib.ExitStack() as undo:
        VethDriver().build(BuildContext(world.host, world.pod, lambda: segment_links.ensure_bridge(world.host, BRIDGE, vx)),
                           _iface("veth"), undo)
        undo.pop_all()
    vx_mtu = link(world.host, vx).get_attr("IFLA_MTU")
    pod_mtu = link(world.pod.netlink(), "net1").get_attr("IFLA_MTU")
    assert vx_mtu == 1450
    assert pod_mtu <= vx_mtu, f"net1 has MTU {pod_mtu} behind a VXLAN uplink of MTU {vx_mtu} (50 bytes of overhead)"


# -- CHECK -----------------------------------------------------------------------------------------------------------

def test_check_sees_a_veth_no_longer_on_its_bridge(world: World) -> None:
    """The node bridge was removed behind Plexus's back and made again: this pod's node end is no port of it any
    more, and CHECK says so, naming the interface and the bridge."""
    iface = _iface("veth")
    with contextlib.ExitStack() as undo:
        done = VethDriver().build(_ctx(world), iface, undo)
        undo.pop_all()
    built = BuiltInterface(**{**_fields(iface), "mac": done.mac})
    ctx = LinksContext(world.host, world.pod.netlink, world.paths["pod"])
    assert VethDriver().check(ctx, built) == [], "freshly built: nothing differs"
    world.host.link("del", ifname=BRIDGE)
    segment_links.ensure_bridge(world.host, BRIDGE, "")
    assert link(world.host, iface.host_link).get_attr("IFLA_MASTER") is None
    problems = VethDriver().check(ctx, built)
    assert problems, "the pod's node end is on no bridge, and CHECK found nothing"
    assert any(iface.host_link in p and BRIDGE in p and "net1" in p for p in problems), problems


# -- router advertisements -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["veth", "macvlan"])
def test_a_neighbour_on_the_segment_cannot_route_the_pod_by_router_advertisement(world: World, kind: str) -> None:
    """A neighbour's Router Advertisement gives the pod neither an address no
    pool leased nor an IPv6 default route."""
    with contextlib.ExitStack() as undo:
        _driver(kind).build(_ctx(world), _iface(kind, addresses=(ADDR6,)), undo)
        undo.pop_all()
    assert read_in(world.paths["pod"], "/proc/sys/net/ipv6/conf/net1/accept_ra") == "0"
    fd = open_netns(world.paths["peer"])
    try:
        world.host.link("add", ifname="rogue0", kind="veth", peer={"ifname": "rogue0p", "net_ns_fd": fd})
    finally:
        os.close(fd)
    world.host.link("set", index=link(world.host, "rogue0")["index"], master=link(world.host, BRIDGE)["index"],
                    state="up")
    with netlink_at(world.paths["peer"]) as peer:
        scope = up(peer, "rogue0p")
        src = wait_for(lambda: ready_link_local(peer, "rogue0p"), 5, 0.1)
    assert src and wait_for(lambda: ready_link_local(world.pod.netlink(), "net1"), 5, 0.1)
    ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0) + struct.pack(
        "!BBBBIII16s", 3, 4, 64, 0xC0, 86400, 14400, 0, socket.inet_pton(socket.AF_INET6, "2001:2:0:66::"))
    sock = in_ns(world.paths["peer"], lambda: socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6))
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        sock.bind((src, 0, 0, scope))
        pod = world.pod.netlink()

        def taken() -> list[str]:
            defaults = [f"default via {r.get_attr('RTA_GATEWAY')}" for r in pod.get_routes(family=socket.AF_INET6)
                        if r["dst_len"] == 0 and r.get_attr("RTA_GATEWAY")]
            slaac = [a.get_attr("IFA_ADDRESS") for a in pod.get_addr(family=socket.AF_INET6)
                     if a.get_attr("IFA_ADDRESS").startswith("2001:2:0:66:")]
            return defaults + slaac

        for _ in range(5):
            sock.sendto(ra, ("ff02::1", 0, 0, scope))
            if wait_for(taken, 0.5, 0.1):
                break
        accept_ra = read_in(world.paths["pod"], "/proc/sys/net/ipv6/conf/net1/accept_ra")
        assert not taken(), f"a neighbour's RA gave the pod {taken()} (accept_ra={accept_ra} on net1)"
    finally:
        sock.close()


# -- macvlan: the bridge's FDB ---------------------------------------------------------------------------------------

def test_unicast_to_a_macvlan_pod_is_not_flooded_to_the_segment(world: World) -> None:
    """A macvlan on the node bridge: the bridge knows its MAC (a static entry on the bridge itself), so unicast to
    it reaches it and is not flooded to a third pod of the segment; its DEL removes the entry (twice: no error)."""
    third = f"{NS_PREFIX}rvdthird-{uuid.uuid4().hex[:6]}"
    try:
        third_path = netns_add(third)
        mac_if = BuiltInterface(**{**_fields(_iface("macvlan", addresses=(
            {"address": "198.18.60.3", "network": "198.18.60.0/24", "routes": []},))), "if_name": "net1"})
        with contextlib.ExitStack() as undo:
            MacvlanDriver().build(_ctx(world), mac_if, undo)
            for path, ip, cid in ((world.paths["peer"], "198.18.60.4", "a"), (third_path, "198.18.60.5", "b")):
                with pod_namespace(path) as side:
                    plan = VethDriver().plan(InterfaceKey(cid * 64, "eth0", path), InterfaceRequest("net1"))
                    ctx = BuildContext(world.host, side, lambda: segment_links.ensure_bridge(world.host, BRIDGE, ""))
                    VethDriver().build(ctx,
                                       BuiltInterface("net1", "veth", "k", "Network", "n", host_link=plan.host_link,
                                                      mac=plan.mac, addresses=({"address": ip, "network":
                                                                                "198.18.60.0/24", "routes": []},)),
                                       undo)
            undo.pop_all()
        assert mac_if.mac in _fdb_macs(world)
        sniffer = in_ns(third_path, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800)))
        try:
            sniffer.bind(("net1", 0))
            sniffer.settimeout(0.2)
            warm = run_in(world.paths["peer"], ["ping", "-c1", "-W2", "198.18.60.3"])  # ARP settled
            assert warm.returncode == 0, warm
            with contextlib.suppress(OSError):
                while sniffer.recv(2048):
                    pass
            pinged = run_in(world.paths["peer"], ["ping", "-c3", "-i0.2", "-W2", "198.18.60.3"])
            assert pinged.returncode == 0, pinged
            seen = 0
            with contextlib.suppress(OSError):
                while True:
                    frame = sniffer.recv(2048)
                    if frame[:6] == bytes.fromhex(mac_if.mac.replace(":", "")):
                        seen += 1
            assert seen == 0, f"a third pod of the segment received {seen} unicast frames meant for the macvlan pod"
        finally:
            sniffer.close()
        on_del = LinksContext(world.host, world.pod.netlink, world.paths["pod"])
        MacvlanDriver().teardown(on_del, mac_if)
        assert links.index_of(world.pod.netlink(), "net1") is None
        assert mac_if.mac not in _fdb_macs(world), "DEL left the macvlan's FDB entry on the bridge"
        MacvlanDriver().teardown(on_del, mac_if)  # idempotent
        MacvlanDriver().teardown(LinksContext(world.host, lambda: None), mac_if)  # the pod's namespace gone
    finally:
        netns_del(third)


def test_a_failed_macvlan_add_takes_its_fdb_entry_back(world: World) -> None:
    """The macvlan's FDB entry is undone with it when the ADD unwinds after it (here: its route is refused, the
    gateway being off the interface's network)."""
    bad = _iface("macvlan", addresses=({"address": "198.18.60.3", "network": "198.18.60.0/24",
                                        "routes": [{"destination": "198.19.60.0/24", "via": "198.19.99.1"}]},))
    with pytest.raises(CniError), contextlib.ExitStack() as undo:
        MacvlanDriver().build(_ctx(world), bad, undo)
    assert links.index_of(world.host, BRIDGE) is not None
    assert bad.mac not in _fdb_macs(world)
    assert links.index_of(world.pod.netlink(), "net1") is None




def test_the_mtu_of_a_bridge_gone_is_an_interface_failure(world: World) -> None:
    """The bridge removed between the ADD's ask for it and its MTU read: 105, which the attacher answers by making the
    bridge again and building once more, not 999."""
    index = segment_links.ensure_bridge(world.host, BRIDGE, "")
    world.host.link("del", index=index)
    with pytest.raises(CniError) as failed:
        links.mtu_of(world.host, index)
    assert failed.value.code == 105

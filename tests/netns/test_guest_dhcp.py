"""``ipAssignmentMode: DHCP``: the node answers a VM guest's DHCP on its TAP with the address leased for it. A real
client (busybox ``udhcpc``) in a guest namespace of the test's, behind the pod's TAP as qemu would be, takes the
lease; the guest's kernel state is asserted."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dpkt
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pyroute2 import IPRoute

from ipamd.dhcp.offers import SERVER_ADDRESS
from ipamd.dhcp.server import MESSAGES_PER_SECOND, STATE_KEY, GuestDhcp, _open
from ipamd.drivers.base import BuildContext, InterfaceKey, InterfaceRequest, LinksContext
from ipamd.drivers.tap import TapDriver
from ipamd.netlink import segment_links
from ipamd.netlink.netns import netlink_at, open_netns, pod_namespace
from ipamd.server.metrics import GuestDhcpMetrics
from ipamd.store.records import AttachmentRecord, BuiltInterface
from tests.netns.guest import GUEST_IF, guest
from tests.netns.kernel_world import World, in_ns, link_names

pytestmark = pytest.mark.netns

BRIDGE = "plx-n-dh000001"
GUEST_MAC = "02:00:00:00:00:07"
ADDRESSES = ({"name": "vm-ip", "address": "198.18.70.10", "network": "198.18.70.0/24",
              "routes": [{"destination": "0.0.0.0/0", "via": "198.18.70.1"},
                         {"destination": "198.19.70.0/24", "via": "198.18.70.2"}]},
             {"name": "vm-ip6", "address": "2001:2:0:70::10", "network": "2001:2:0:70::/64"})


def _iface(dhcp: bool = True) -> BuiltInterface:
    plan = TapDriver().plan(InterfaceKey("d" * 64, "eth0", "/x"),
                            InterfaceRequest("net1", mac=GUEST_MAC, guest_dhcp=dhcp))
    return BuiltInterface("net1", "tap", "ns/net", "Network", "net", host_link=plan.host_link, bridge=BRIDGE,
                          mac=plan.mac, configure_ips=plan.configure_ips, addresses=ADDRESSES, driver=plan.state or {})


@pytest.fixture
def dhcp() -> Iterator[GuestDhcp]:
    server = GuestDhcp()
    try:
        yield server
    finally:
        server.close()


def _build(w: World, driver: TapDriver, iface: BuiltInterface, fail_after: bool = False) -> None:
    def body() -> None:
        with contextlib.closing(IPRoute()) as host, pod_namespace(w.paths["pod"]) as pod, \
                contextlib.ExitStack() as undo:
            driver.build(BuildContext(host, pod, lambda: segment_links.ensure_bridge(host, BRIDGE, "")), iface, undo)
            if fail_after:
                raise RuntimeError("a later interface failed")
            undo.pop_all()
    in_ns(w.node_path, body)


def _teardown(w: World, driver: TapDriver, iface: BuiltInterface) -> None:
    def body() -> None:
        with contextlib.closing(IPRoute()) as host, pod_namespace(w.paths["pod"]) as pod:
            driver.teardown(LinksContext(host, lambda: pod.netlink(), pod.path), iface)
    in_ns(w.node_path, body)


def _check(w: World, driver: TapDriver, iface: BuiltInterface) -> list[str]:
    def body() -> list[str]:
        with contextlib.closing(IPRoute()) as host, pod_namespace(w.paths["pod"]) as pod:
            return driver.check(LinksContext(host, lambda: pod.netlink(), pod.path), iface)
    return in_ns(w.node_path, body)


def _guest_state(path: str) -> tuple[list[str], set[str], int]:
    with netlink_at(path) as ipr:
        idx = ipr.link_lookup(ifname=GUEST_IF)[0]
        addrs = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx, family=socket.AF_INET)]
        routes = {f"{r.get_attr('RTA_DST') or '0.0.0.0'}/{r['dst_len']} via {r.get_attr('RTA_GATEWAY')}"
                  for r in ipr.get_routes(family=socket.AF_INET, oif=idx, table=254) if r.get_attr("RTA_GATEWAY")}
        mtu = int(ipr.get_links(idx)[0].get_attr("IFLA_MTU"))
    return addrs, routes, mtu


def test_the_guest_gets_its_leased_address_network_routes_and_mtu(world: World, dhcp: GuestDhcp,
                                                                  tmp_path: Path) -> None:
    driver, iface = TapDriver(dhcp), _iface()
    assert iface.driver[STATE_KEY] is True
    _build(world, driver, iface)
    assert _check(world, driver, iface) == []
    with guest(world.paths["pod"], "net1", GUEST_MAC, tmp_path) as vm:
        code, lease = vm.dhcp("-O", "staticroutes", "-O", "mtu")
        assert code == 0, "the guest got no lease"
        assert (lease["ip"], lease["mask"], lease["serverid"]) == ("198.18.70.10", "24", SERVER_ADDRESS)
        assert lease["router"] == "198.18.70.1"
        assert lease["staticroutes"] == "0.0.0.0/0 198.18.70.1 198.19.70.0/24 198.18.70.2"
        assert lease["lease"] == "4294967295", "held for the pod's life: never renewed"
        assert dhcp.replies() == {"OFFER": 1, "ACK": 1} and dhcp.taps() == 1
        registry = CollectorRegistry()
        registry.register(GuestDhcpMetrics(dhcp.replies, dhcp.taps))
        scraped = generate_latest(registry).decode()
        assert 'plexus_guest_dhcp_replies_total{reply="OFFER"} 1.0' in scraped
        assert "plexus_guest_dhcp_taps 1.0" in scraped
        addrs, routes, mtu = _guest_state(vm.path)
        assert addrs == ["198.18.70.10/24"]
        assert routes == {"0.0.0.0/0 via 198.18.70.1", "198.19.70.0/24 via 198.18.70.2"}
        assert mtu == 1500 == int(lease["mtu"])
        # a rebooted guest asks for its address again (INIT-REBOOT), and is given it
        code, again = vm.dhcp("-r", "198.18.70.10")
        assert code == 0 and again["ip"] == "198.18.70.10"
    assert link_names(world.pod.netlink()) >= {"net1"}, "the pod's side is untouched by the guest"


def test_a_guest_asking_for_another_address_or_with_another_mac_gets_none(world: World, dhcp: GuestDhcp,
                                                                           tmp_path: Path) -> None:
    driver, iface = TapDriver(dhcp), _iface()
    _build(world, driver, iface)
    with guest(world.paths["pod"], "net1", "02:00:00:00:00:99", tmp_path / "other") as stranger:
        code, lease = stranger.dhcp(tries=2)
        assert code != 0 and lease == {}, "a MAC that is not the guest's was answered"
        assert dhcp.answered == 0
    with guest(world.paths["pod"], "net1", GUEST_MAC, tmp_path / "guest") as vm:
        # udhcpc takes the offer of the guest's own address whatever it asked for (-r): what it asked is NAKed only
        # in INIT-REBOOT, which the pure tests cover; here the offer is what matters
        code, lease = vm.dhcp("-r", "198.18.70.99")
        assert code == 0 and lease["ip"] == "198.18.70.10"


def test_a_malformed_frame_or_a_decline_ends_no_answers(world: World, dhcp: GuestDhcp, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A frame dpkt cannot read (a last option with no length byte: IndexError) killed the one reader thread, and
    with it the answers to every guest of the node; a DECLINE (the address answered for on the segment) was silent."""
    driver, iface = TapDriver(dhcp), _iface()
    _build(world, driver, iface)
    with guest(world.paths["pod"], "net1", GUEST_MAC, tmp_path) as vm:
        raw = in_ns(vm.path, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
        try:
            raw.bind((GUEST_IF, 0))
            cut = bytes(dpkt.dhcp.DHCP(op=1, xid=7, chaddr=bytes.fromhex(GUEST_MAC.replace(":", "")) + bytes(10),
                                       opts=[(53, b"\x01")]))[:-1] + bytes([55])
            raw.send(_udp_frame(67, cut))
            raw.send(_udp_frame(67, bytes(dpkt.dhcp.DHCP(
                op=1, xid=8, chaddr=bytes.fromhex(GUEST_MAC.replace(":", "")) + bytes(10),
                opts=[(53, b"\x04"), (50, bytes([198, 18, 70, 10])), (54, bytes([169, 254, 1, 1]))]))))
        finally:
            raw.close()
        code, lease = vm.dhcp()
        assert code == 0 and lease["ip"] == "198.18.70.10", "the server stopped answering after a malformed frame"
    assert any("declined 198.18.70.10" in r.getMessage() for r in caplog.records)


def test_a_flooding_guest_is_read_at_its_budget_and_answered_again_after(world: World, dhcp: GuestDhcp,
                                                                         tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A guest sending port 67 as fast as it can costs the daemon's one reader thread (and the GIL the CNI calls
    share) at most MESSAGES_PER_SECOND messages a second; the rest overflow the socket in the kernel."""
    driver, iface = TapDriver(dhcp), _iface()
    _build(world, driver, iface)
    discover = bytes(dpkt.dhcp.DHCP(op=1, xid=9, chaddr=bytes.fromhex(GUEST_MAC.replace(":", "")) + bytes(10),
                                    opts=[(53, b"\x01")]))
    with guest(world.paths["pod"], "net1", GUEST_MAC, tmp_path) as vm:
        raw = in_ns(vm.path, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
        try:
            raw.bind((GUEST_IF, 0))
            started = time.monotonic()
            for _ in range(2000):
                raw.send(_udp_frame(67, discover))
            seconds = time.monotonic() - started
        finally:
            raw.close()
        time.sleep(0.3)
        windows = int(seconds) + 2  # the seconds the flood (and the reader's backlog) may span
        assert dhcp.replies().get("OFFER", 0) <= MESSAGES_PER_SECOND * windows < 2000
        assert any("more than 20 DHCP messages in a second" in r.getMessage() for r in caplog.records)
        code, lease = vm.dhcp()
        assert code == 0 and lease["ip"] == "198.18.70.10", "the guest is not answered once its second is over"


def test_no_server_without_the_mode_and_none_after_teardown(world: World, dhcp: GuestDhcp, tmp_path: Path) -> None:
    plain = TapDriver(dhcp)
    iface = _iface(dhcp=False)
    assert STATE_KEY not in iface.driver
    _build(world, plain, iface)
    assert dhcp.serving(iface.host_link) is None
    with guest(world.paths["pod"], "net1", GUEST_MAC, tmp_path / "plain") as vm:
        assert vm.dhcp(tries=2)[0] != 0
    _teardown(world, plain, iface)

    served = _iface()
    _build(world, plain, served)
    assert dhcp.serving(served.host_link) is not None
    _teardown(world, plain, served)
    assert dhcp.serving(served.host_link) is None
    assert link_names(world.pod.netlink()) == {"lo"}


def test_a_failed_build_stops_serving(world: World, dhcp: GuestDhcp) -> None:
    driver, iface = TapDriver(dhcp), _iface()
    with pytest.raises(RuntimeError):
        _build(world, driver, iface, fail_after=True)
    assert dhcp.serving(iface.host_link) is None
    assert link_names(world.pod.netlink()) == {"lo"}


def test_check_says_when_nobody_answers_the_guest(world: World, dhcp: GuestDhcp) -> None:
    driver, iface = TapDriver(dhcp), _iface()
    _build(world, driver, iface)
    dhcp.stop(iface.host_link)
    assert _check(world, driver, iface) == ["no DHCP server answers the guest of TAP net1 (ipAssignmentMode: DHCP)"]


def test_a_restarted_daemon_serves_the_recorded_guests_again(world: World, tmp_path: Path) -> None:
    first = GuestDhcp()
    iface = _iface()
    try:
        _build(world, TapDriver(first), iface)
    finally:
        first.close()  # the daemon killed: its sockets are gone
    gone = AttachmentRecord("e" * 64, "eth0", "uid-2", "ns", "vm2", "/run/netns/plexus-test-no-such-ns", "ready",
                            interfaces=(iface,))
    adding = AttachmentRecord("f" * 64, "eth0", "uid-3", "ns", "vm3", world.paths["pod"], "adding",
                              interfaces=(iface,))
    ready = AttachmentRecord("d" * 64, "eth0", "uid-1", "ns", "vm", world.paths["pod"], "ready", interfaces=(iface,))
    second = GuestDhcp()
    try:
        assert second.resume([gone, adding, ready]) == 1, "only the ready attachment whose namespace is there"
        with guest(world.paths["pod"], "net1", GUEST_MAC, tmp_path) as vm:
            code, lease = vm.dhcp()
            assert code == 0 and lease["ip"] == "198.18.70.10"
    finally:
        second.close()


def test_only_frames_to_a_dhcp_server_reach_the_socket(world: World) -> None:
    """The kernel filter: the VM's other traffic over the TAP is never copied to the daemon."""
    fd = open_netns(world.paths["peer"])
    try:
        world.pod.netlink().link("add", ifname="wire0", kind="veth", peer={"ifname": "wire1", "net_ns_fd": fd})
    finally:
        os.close(fd)
    with netlink_at(world.paths["peer"]) as peer:
        peer.link("set", index=peer.link_lookup(ifname="wire1")[0], state="up")
    world.pod.netlink().link("set", index=world.pod.netlink().link_lookup(ifname="wire0")[0], state="up")
    sock, mtu, _ = in_ns(world.paths["pod"], lambda: _open("wire0"))
    sender = in_ns(world.paths["peer"], lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
    try:
        sender.bind(("wire1", 0))
        for port, tag in ((68, b"to-a-client"), (53, b"dns"), (67, b"to-the-server")):
            sender.send(_udp_frame(port, tag))
        time.sleep(0.3)
        got: list[bytes] = []
        with contextlib.suppress(BlockingIOError):
            while True:
                got.append(sock.recv(65535))
        assert [f[-len(b"to-the-server"):] for f in got] == [b"to-the-server"]
        assert mtu == 1500
    finally:
        sock.close()
        sender.close()


def _udp_frame(port: int, payload: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=68, dport=port, data=payload)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=bytes(4), dst=b"\xff" * 4, p=17, data=udp)
    ip.len = len(ip)
    frame: Any = dpkt.ethernet.Ethernet(dst=b"\xff" * 6, src=bytes.fromhex("020000000007"), type=0x0800, data=ip)
    return bytes(frame)

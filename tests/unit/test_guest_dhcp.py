"""``ipAssignmentMode: DHCP``, its pure parts: what a guest's message is answered (RFC 2131 §4.3), how an answer is
framed and a message read from a frame, the lease an interface's record gives, and what ADD refuses before anything
is leased. The kernel side (a real client behind a real TAP) is ``tests/netns/test_guest_dhcp.py``."""

from __future__ import annotations

import json
import socket
import time

import dpkt
import pytest

from cni.errors import InvalidConfig
from ipamd.dhcp import frames
from ipamd.dhcp.offers import (
    ACK,
    DECLINE,
    DISCOVER,
    INFORM,
    NAK,
    OFFER,
    OPT_CLASSLESS_ROUTES,
    OPT_LEASE_TIME,
    OPT_MTU,
    OPT_ROUTER,
    RELEASE,
    REQUEST,
    SERVER_ADDRESS,
    GuestLease,
    Message,
    answer,
    classless_routes,
    guest_lease,
)
from ipamd.dhcp.server import GuestDhcp, _drain
from ipamd.drivers.base import InterfaceKey, InterfaceRequest
from ipamd.drivers.tap import TapDriver
from ipamd.ipam.addresses import Ipam
from ipamd.model.annotations import NetworkSelection
from ipamd.store.records import BuiltInterface
from ipamd.store.sqlite import Store
from tests.unit.test_admission import SPEC
from tests.unit.test_ipam import attach, gone, network, obj, pod, pool, world
from tests.unit.test_ipam_ipv6 import FOUR, SIX, _edited, _pool
from tests.unit.test_networks import wanted

MAC = "02:00:00:00:00:07"
LEASE = GuestLease(MAC, "198.18.70.10", 24, (("0.0.0.0/0", "198.18.70.1"), ("198.19.70.0/24", "198.18.70.2")), 1400)


def msg(kind: int, **extra: object) -> Message:
    return Message(kind, 0x1234, MAC, **extra)  # type: ignore[arg-type]


def options(kind: int, **extra: object) -> dict[int, bytes]:
    reply = answer(msg(kind, **extra), LEASE)
    assert reply is not None
    return dict(reply.options)


# -- answers -----------------------------------------------------------------------------------------------------------

def test_discover_is_offered_the_leased_address_for_ever() -> None:
    reply = answer(msg(DISCOVER), LEASE)
    assert reply is not None and (reply.kind, reply.yiaddr, reply.xid) == (OFFER, "198.18.70.10", 0x1234)
    opts = dict(reply.options)
    assert opts[OPT_LEASE_TIME] == b"\xff\xff\xff\xff"
    assert opts[1] == bytes([255, 255, 255, 0]) and opts[28] == bytes([198, 18, 70, 255])
    assert opts[OPT_ROUTER] == bytes([198, 18, 70, 1]) and opts[OPT_MTU] == (1400).to_bytes(2, "big")
    assert opts[54] == bytes([169, 254, 1, 1])
    assert OPT_CLASSLESS_ROUTES not in opts, "RFC 3442: only to a guest that asks"
    # no BROADCAST flag: to the guest's MAC and the address offered
    assert (reply.to_ip, reply.to_mac, reply.broadcast) == ("198.18.70.10", MAC, False)


def test_classless_routes_to_a_guest_that_asks_with_the_default_among_them() -> None:
    assert options(DISCOVER, parameters=(1, 3, 121))[OPT_CLASSLESS_ROUTES] == bytes(
        [0, 198, 18, 70, 1, 24, 198, 19, 70, 198, 18, 70, 2])


def test_rfc3442_encoding_keeps_the_significant_octets_only() -> None:
    assert classless_routes((("10.0.0.0/8", "10.0.0.1"), ("10.17.0.0/16", "10.0.0.1"), ("10.27.129.0/25", "10.0.0.1"),
                             ("10.229.0.128/25", "10.0.0.1"), ("10.198.122.47/32", "10.0.0.1"))) == bytes([
        8, 10, 10, 0, 0, 1,
        16, 10, 17, 10, 0, 0, 1,
        25, 10, 27, 129, 0, 10, 0, 0, 1,
        25, 10, 229, 0, 128, 10, 0, 0, 1,
        32, 10, 198, 122, 47, 10, 0, 0, 1])  # RFC 3442 §1's own examples


def test_broadcast_flag_answers_to_everyone() -> None:
    reply = answer(msg(DISCOVER, broadcast=True), LEASE)
    assert reply is not None and (reply.to_ip, reply.to_mac, reply.broadcast) == (
        "255.255.255.255", "ff:ff:ff:ff:ff:ff", True)


@pytest.mark.parametrize(("extra", "kind"), [
    ({"server_id": SERVER_ADDRESS, "requested": "198.18.70.10"}, ACK),  # SELECTING our offer
    ({"server_id": SERVER_ADDRESS, "requested": "198.18.70.11"}, NAK),
    ({"requested": "198.18.70.10"}, ACK),  # INIT-REBOOT
    ({"requested": "198.18.9.9"}, NAK),  # INIT-REBOOT elsewhere: the guest must start over
    ({"ciaddr": "198.18.70.10"}, ACK),  # RENEWING / REBINDING
    ({"ciaddr": "198.18.70.12"}, NAK),
])
def test_request_is_acked_for_the_guests_address_and_naked_for_another(extra: dict[str, str], kind: int) -> None:
    reply = answer(msg(REQUEST, **extra), LEASE)
    assert reply is not None and reply.kind == kind
    if kind == NAK:
        # §4.3.2: broadcast whatever the flag, which is the client's
        assert (reply.yiaddr, reply.to_ip, reply.to_mac, reply.broadcast) == (
            "0.0.0.0", "255.255.255.255", "ff:ff:ff:ff:ff:ff", False)
        assert dict(reply.options)[56] == b"the address of this guest is 198.18.70.10"
    else:
        assert reply.yiaddr == "198.18.70.10"


def test_renewal_is_answered_at_the_guests_address() -> None:
    reply = answer(msg(REQUEST, ciaddr="198.18.70.10"), LEASE)
    assert reply is not None and (reply.to_ip, reply.to_mac, reply.ciaddr) == ("198.18.70.10", MAC, "198.18.70.10")


def test_another_servers_offer_taken_is_not_ours_to_answer() -> None:
    assert answer(msg(REQUEST, server_id="198.18.70.254", requested="198.18.70.10"), LEASE) is None


def test_inform_gets_the_configuration_and_no_lease() -> None:
    reply = answer(msg(INFORM, ciaddr="198.18.70.10"), LEASE)
    assert reply is not None and (reply.kind, reply.yiaddr, reply.to_ip) == (ACK, "0.0.0.0", "198.18.70.10")
    assert OPT_LEASE_TIME not in dict(reply.options)
    nowhere = answer(msg(INFORM), LEASE)  # no ciaddr to answer at (not 0.0.0.0): to everyone on the TAP
    assert nowhere is not None and (nowhere.to_ip, nowhere.to_mac) == ("255.255.255.255", "ff:ff:ff:ff:ff:ff")


def test_an_offer_has_no_ciaddr_and_an_ack_the_clients() -> None:
    offer = answer(msg(DISCOVER, ciaddr="198.18.70.10"), LEASE)
    ack = answer(msg(REQUEST, ciaddr="198.18.70.10"), LEASE)
    assert offer is not None and ack is not None and (offer.ciaddr, ack.ciaddr) == ("0.0.0.0", "198.18.70.10")


def test_the_client_identifier_comes_back_as_it_came() -> None:
    """RFC 6842 §3: a server MUST return option 61 unchanged (a client may drop an answer without it)."""
    for kind, extra in ((DISCOVER, {}), (REQUEST, {"requested": "198.18.70.10"}), (REQUEST, {"requested": "1.2.3.4"})):
        reply = answer(msg(kind, client_id=b"\x01\x02\x00\x00\x00\x00\x07", **extra), LEASE)
        assert reply is not None and dict(reply.options)[61] == b"\x01\x02\x00\x00\x00\x00\x07", kind
    assert 61 not in options(DISCOVER)


@pytest.mark.parametrize("kind", [DECLINE, RELEASE, OFFER, ACK, 99])
def test_what_a_server_does_not_answer(kind: int) -> None:
    assert answer(msg(kind), LEASE) is None


def test_another_mac_is_not_the_guest() -> None:
    assert answer(Message(DISCOVER, 1, "02:00:00:00:00:99"), LEASE) is None
    assert answer(Message(DISCOVER, 1, MAC.upper()), LEASE) is not None


def test_no_router_and_no_mtu_option_when_there_are_none() -> None:
    bare = GuestLease(MAC, "198.18.70.10", 24)
    reply = answer(msg(DISCOVER, parameters=(121,)), bare)
    assert reply is not None
    assert {OPT_ROUTER, OPT_MTU, OPT_CLASSLESS_ROUTES}.isdisjoint(dict(reply.options))


# -- frames ------------------------------------------------------------------------------------------------------------

def client_frame(kind: int, dst: bytes = b"\xff" * 4, body: bytes | None = None, **dhcp: object) -> bytes:
    opts = [(53, bytes([kind])), (55, bytes([1, 3, 121])), (50, bytes([198, 18, 70, 10]))]
    m = dpkt.dhcp.DHCP(op=1, xid=77, chaddr=bytes.fromhex("020000000007") + bytes(10), opts=opts, **dhcp)
    udp = dpkt.udp.UDP(sport=68, dport=67, data=bytes(m) if body is None else body)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=bytes(4), dst=dst, p=17, data=udp)
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(dst=b"\xff" * 6, src=bytes.fromhex("020000000007"), type=0x0800, data=ip))


def test_a_clients_frame_is_read() -> None:
    m = frames.decode(client_frame(REQUEST, flags=0x8000))
    assert m == Message(REQUEST, 77, MAC, "0.0.0.0", "198.18.70.10", "", True, (1, 3, 121))


def test_a_unicast_to_another_server_is_not_ours() -> None:
    to_us = client_frame(REQUEST, dst=bytes([169, 254, 1, 1]))
    assert frames.decode(to_us) is not None
    assert frames.decode(client_frame(REQUEST, dst=bytes([198, 18, 70, 254]))) is None


def test_an_option_cut_short_is_no_message_not_a_dead_server() -> None:
    """dpkt raises IndexError for a last option with no length byte: the reader thread of every guest died of it."""
    m = dpkt.dhcp.DHCP(op=1, xid=7, chaddr=bytes.fromhex("020000000007") + bytes(10), opts=[(53, b"\x01")])
    body = bytes(m)[:-1] + bytes([55])  # END replaced by option 55, with no length
    assert frames.decode(client_frame(DISCOVER, body=body)) is None


@pytest.mark.parametrize("frame", [
    b"", b"\x00" * 14, b"\xff" * 60,
    client_frame(DISCOVER)[:50],  # cut short
    client_frame(DISCOVER).replace(b"\x63\x82\x53\x63", b"\x00\x00\x00\x00"),  # no magic cookie: BOOTP
])
def test_what_is_no_dhcp_message_to_a_server_is_none(frame: bytes) -> None:
    assert frames.decode(frame) is None


def test_an_answer_frame_is_what_a_client_reads() -> None:
    reply = answer(msg(DISCOVER, parameters=(121,)), LEASE)
    assert reply is not None
    frame = frames.with_source(frames.encode(reply), bytes.fromhex("fe0000000007"))
    eth = dpkt.ethernet.Ethernet(frame)
    assert (eth.src.hex(), eth.dst.hex()) == ("fe0000000007", "020000000007")
    ip, udp = eth.data, eth.data.data
    assert (ip.src, ip.dst, udp.sport, udp.dport) == (bytes([169, 254, 1, 1]), bytes([198, 18, 70, 10]), 67, 68)
    assert dpkt.in_cksum(bytes(ip)[:20]) == 0, "a valid IPv4 header checksum"
    assert len(udp.data) >= 300, "RFC 1542 §2.1: a BOOTP message is at least 300 octets (PXE ROMs drop shorter)"
    m = dpkt.dhcp.DHCP(udp.data)
    assert (m.op, m.xid, m.yiaddr, m.chaddr[:6].hex()) == (2, 0x1234, 0xC612460A, "020000000007")
    assert dict(m.opts)[53] == bytes([OFFER])


# -- the lease a record gives ------------------------------------------------------------------------------------------

def iface(addresses: tuple[dict[str, object], ...]) -> BuiltInterface:
    return BuiltInterface("net1", "tap", "k", "Network", "n", mac="02:00:00:00:00:AB", addresses=addresses)


def test_the_lease_is_the_first_ipv4_address_with_its_ipv4_routes() -> None:
    lease = guest_lease(iface((
        {"name": "a6", "address": "2001:2::5", "network": "2001:2::/64",
         "routes": [{"destination": "::/0", "via": "2001:2::1"}]},
        {"name": "a4", "address": "198.18.70.10", "network": "198.18.70.0/24",
         "routes": [{"destination": "0.0.0.0/0", "via": "198.18.70.1"}, {"destination": "198.19.0.0/16"}]},
    )))
    assert lease == GuestLease("02:00:00:00:00:ab", "198.18.70.10", 24, (("0.0.0.0/0", "198.18.70.1"),))
    assert lease.router == "198.18.70.1"


def test_no_ipv4_address_no_lease() -> None:
    assert guest_lease(iface(({"name": "a6", "address": "2001:2::5", "network": "2001:2::/64"},))) is None
    assert guest_lease(iface(())) is None


# -- ADD refuses what cannot be served, before anything is leased --------------------------------------------------

def test_the_choice_is_kept_in_the_taps_record_and_handed_by_add() -> None:
    plan = TapDriver().plan(InterfaceKey("c1", "eth0", "/run/netns/app"), InterfaceRequest("tap0", guest_dhcp=True))
    assert plan.state is not None and plan.state["guestDhcp"] is True
    assert "guestDhcp" not in (TapDriver().plan(InterfaceKey("c1", "eth0", "/x"), InterfaceRequest("tap0")).state or {})
    (w,) = wanted({SPEC: json.dumps([{"type": "Network", "name": "net-a", "ifName": "tap0", "interfaceType": "tap"}])})
    assert w.request.guest_dhcp is False


@pytest.mark.parametrize(("net", "words"), [
    ("bare", "has no IPAM (spec.ipam)"),
    ("v6-net", "has a pool of IPv6 only (IPAddressPool ns/v6)"),
])
def test_a_network_with_no_ipv4_address_to_hand_out_is_refused_naming_the_field(net: str, words: str) -> None:
    source = world()
    source.add(pool("v6", "2001:2:0:71::/64"))
    source.add(network("v6-net", "v6"))
    store = Store(":memory:")
    try:
        ipam = Ipam(store, source)
        sel = NetworkSelection(type="Network", name=net, if_name="tap0", interface_type="tap", guest_dhcp=True)
        resolved = ipam.resolve(sel, "ns", "networks-spec[1]")
        with pytest.raises(InvalidConfig) as err:
            ipam.validate(pod("vm"), sel, resolved, "networks-spec[1]")
        assert err.value.details == "networks-spec[1].ipAssignmentMode" and words in err.value.msg
        served = NetworkSelection(type="Network", name="net", if_name="tap0", interface_type="tap", guest_dhcp=True)
        assert ipam.validate(pod("vm"), served, ipam.resolve(served, "ns", "w"), "w") == []
    finally:
        store.close()


@pytest.mark.parametrize(("names", "refused"), [
    (("vm-v6",), True), (("vm-auto6",), True), (("vm-v4",), False), (("vm-auto",), False),
])
def test_named_addresses_with_none_of_ipv4_are_refused_before_anything_is_leased(names: tuple[str, ...],
                                                                                  refused: bool) -> None:
    """A dual-stack pool passes the pool's check; the names may still give the TAP no IPv4 address (it failed late,
    105, after the build)."""
    source = world()
    source.add(obj("IPAddressPool", "ds", {"pools": [{"network": "198.18.72.0/24"}, {"network": "2001:2:0:72::/64"}]}))
    source.add(network("ds-net", "ds"))
    ref = {"kind": "Network", "name": "ds-net"}
    source.add(obj("IPAddress", "vm-v6", {"networkRef": ref, "type": "Static", "static": {"ip": "2001:2:0:72::10"}}))
    source.add(obj("IPAddress", "vm-v4", {"networkRef": ref, "type": "Static", "static": {"ip": "198.18.72.10"}}))
    source.add(obj("IPAddress", "vm-auto6", {"networkRef": ref, "ipFamily": "IPv6"}))
    source.add(obj("IPAddress", "vm-auto", {"networkRef": ref}))
    store = Store(":memory:")
    try:
        ipam = Ipam(store, source)
        sel = NetworkSelection(type="Network", name="ds-net", if_name="tap0", interface_type="tap", guest_dhcp=True,
                               ip_address_names=names)
        resolved = ipam.resolve(sel, "ns", "networks-spec[0]")
        if not refused:
            assert len(ipam.validate(pod("vm"), sel, resolved, "networks-spec[0]")) == 1
            return
        with pytest.raises(InvalidConfig) as err:
            ipam.validate(pod("vm"), sel, resolved, "networks-spec[0]")
        assert err.value.details == "networks-spec[0].ipAssignmentMode" and "no IPv4 address" in err.value.msg
    finally:
        store.close()


def test_a_named_auto_address_keeps_the_family_it_holds_when_its_pool_gains_ipv4() -> None:
    """A plain Auto IPAddress of an IPv6-only pool keeps its IPv6 address when the pool becomes dual-stack
    (``asked_family``): the check went by the pool's first family, let the TAP through, and ADD failed late (105)."""
    source, ipam, store = _edited(SIX)
    try:
        assert [c.address for c in attach(ipam, pod("a"), names=("ua",))] == ["2001:2:0:95::2"]
        gone(ipam, pod("a"))
        source.add(_pool(FOUR, SIX))
        sel = NetworkSelection(type="Network", name="net", if_name="tap0", interface_type="tap", guest_dhcp=True,
                               ip_address_names=("ua",))
        with pytest.raises(InvalidConfig) as err:
            ipam.validate(pod("vm"), sel, ipam.resolve(sel, "ns", "networks-spec[0]"), "networks-spec[0]")
        assert err.value.details == "networks-spec[0].ipAssignmentMode"
    finally:
        store.close()


def test_draining_a_paused_taps_socket_stops_at_a_bound() -> None:
    """What a flood queued is dropped when the TAP is read again, but never more than a batch: a guest still
    flooding would keep the socket full, and the drain runs with the server's lock held."""
    class Flooded:
        reads = 0

        def recv(self, size: int) -> bytes:
            self.reads += 1
            return b"frame"

    sock = Flooded()
    _drain(sock)  # type: ignore[arg-type]
    assert sock.reads == 64


class FakeTapSocket:
    """A TAP's packet socket for the reader thread: a real fd for its selector (one end of a socket pair), each
    datagram written to the other end read as a frame the guest sent."""

    def __init__(self) -> None:
        self.inner, self.guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.inner.setblocking(False)
        self.sent: list[bytes] = []

    def fileno(self) -> int:
        return self.inner.fileno()

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int, int]]:
        return self.inner.recv(size), ("net1", 0x0003, 0)

    def recv(self, size: int) -> bytes:
        return self.inner.recv(size)

    def send(self, frame: bytes) -> int:
        self.sent.append(frame)
        return len(frame)

    def close(self) -> None:
        self.inner.close()
        self.guest.close()


def test_a_stopped_taps_count_is_forgotten() -> None:
    """The reader's per-TAP count was kept for every TAP ever served, for the daemon's life."""
    tap = FakeTapSocket()
    dhcp = GuestDhcp(in_netns=lambda fd, fn: (tap, 1500, bytes(6)))
    try:
        dhcp.serve("k", 0, "net1", LEASE)
        tap.guest.send(client_frame(DISCOVER))
        deadline = time.monotonic() + 10
        while not tap.sent and time.monotonic() < deadline:
            time.sleep(0.01)
        assert tap.sent and "k" in dhcp._window
        dhcp.stop("k")
        while "k" in dhcp._window and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "k" not in dhcp._window
    finally:
        dhcp.close()

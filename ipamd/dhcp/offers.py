"""What the node answers a guest's DHCP message: pure, from the guest's lease and what it asked (RFC 2131 §4.3).

The address is the one Plexus leased for the interface, held for the pod's life: it is offered for ever (lease time
infinite, as KubeVirt's own server does), so a guest never needs to renew and never unicasts to the server. A message
of another hardware address than the guest's gets no answer: the TAP may carry a nested guest's traffic, and one
lease is one guest's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from ipamd.store.records import BuiltInterface

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
#: The server identifier and source of every answer: link-local, never routed, never the guest's network's (a guest
#: sending a DHCPRELEASE to it reaches no other server).
SERVER_ADDRESS = "169.254.1.1"
INFINITE = 0xFFFFFFFF
SERVER_PORT, CLIENT_PORT = 67, 68
# option codes (RFC 2132, RFC 3442)
OPT_NETMASK, OPT_ROUTER, OPT_MTU, OPT_BROADCAST = 1, 3, 26, 28
OPT_REQUESTED, OPT_LEASE_TIME, OPT_MESSAGE_TYPE, OPT_SERVER_ID, OPT_PARAMETERS, OPT_MESSAGE = 50, 51, 53, 54, 55, 56
OPT_CLIENT_ID = 61
OPT_CLASSLESS_ROUTES = 121
MIN_MTU = 68  # RFC 2132 §5.1: the smallest MTU option value


@dataclass(frozen=True, slots=True)
class GuestLease:
    """What the guest of one TAP is handed: its MAC (the plan's), its IPv4 address and network, its routes."""

    mac: str
    address: str
    prefix_len: int
    routes: tuple[tuple[str, str], ...] = ()  # (destination CIDR, via), IPv4 only
    mtu: int = 0  # the TAP's (0: not told)

    @property
    def netmask(self) -> str:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{self.prefix_len}").netmask)

    @property
    def broadcast(self) -> str:
        return str(ipaddress.IPv4Interface(f"{self.address}/{self.prefix_len}").network.broadcast_address)

    @property
    def router(self) -> str:
        """The default route's gateway ("" for none)."""
        return next((via for dst, via in self.routes if ipaddress.ip_network(dst).prefixlen == 0), "")


@dataclass(frozen=True, slots=True)
class Message:
    """A guest's DHCP message, what the server acts on (``frames.decode`` makes it)."""

    kind: int
    xid: int
    mac: str  # chaddr
    ciaddr: str = "0.0.0.0"
    requested: str = ""  # option 50
    server_id: str = ""  # option 54
    broadcast: bool = False  # the BROADCAST flag
    parameters: tuple[int, ...] = ()  # option 55
    client_id: bytes | None = None  # option 61, returned as it came (RFC 6842)


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer, with where it goes: the IPv4 and Ethernet destinations (RFC 2131 §4.1)."""

    kind: int
    xid: int
    mac: str
    yiaddr: str
    ciaddr: str
    options: tuple[tuple[int, bytes], ...]
    to_ip: str
    to_mac: str
    broadcast: bool  # the reply's BROADCAST flag (the client's)


def guest_lease(iface: BuiltInterface, mtu: int = 0) -> GuestLease | None:
    """The lease of the interface's first IPv4 address (None when it has none: nothing to hand out)."""
    for a in iface.addresses:
        if ipaddress.ip_address(a["address"]).version != 4:
            continue
        routes = tuple((r["destination"], r["via"]) for r in a.get("routes", ())
                       if r.get("via") and ipaddress.ip_network(r["destination"], strict=False).version == 4)
        return GuestLease(iface.mac.lower(), a["address"], ipaddress.ip_network(a["network"], strict=False).prefixlen,
                          routes, mtu)
    return None


def answer(msg: Message, lease: GuestLease) -> Reply | None:
    """The reply to ``msg`` (None: none is due): DISCOVER → OFFER; REQUEST → ACK for the guest's address and NAK for
    another, whichever state the guest is in; INFORM → ACK with the configuration only; DECLINE, RELEASE → none."""
    if msg.mac.lower() != lease.mac:
        return None
    if msg.kind == DISCOVER:
        return _reply(OFFER, msg, lease)
    if msg.kind == INFORM:
        return _reply(ACK, msg, lease, inform=True)
    if msg.kind != REQUEST:
        return None
    if msg.server_id:  # SELECTING: an offer taken, ours or another server's
        if msg.server_id != SERVER_ADDRESS:
            return None
        wanted = msg.requested
    else:  # INIT-REBOOT names its address in option 50; RENEWING and REBINDING in ciaddr
        wanted = msg.requested or msg.ciaddr
    return _reply(ACK if wanted == lease.address else NAK, msg, lease)


def _reply(kind: int, msg: Message, lease: GuestLease, inform: bool = False) -> Reply:
    options: list[tuple[int, bytes]] = [(OPT_MESSAGE_TYPE, bytes([kind])), (OPT_SERVER_ID, _ip(SERVER_ADDRESS))]
    if msg.client_id is not None:
        options.append((OPT_CLIENT_ID, msg.client_id))
    if kind == NAK:  # §4.3.2: broadcast, whatever the flag says (the guest's address is in doubt)
        options.append((OPT_MESSAGE, f"the address of this guest is {lease.address}".encode()))
        return Reply(kind, msg.xid, msg.mac, "0.0.0.0", "0.0.0.0", tuple(options), "255.255.255.255",
                     "ff:ff:ff:ff:ff:ff", msg.broadcast)
    if not inform:
        options.append((OPT_LEASE_TIME, INFINITE.to_bytes(4, "big")))
    options += [(OPT_NETMASK, _ip(lease.netmask)), (OPT_BROADCAST, _ip(lease.broadcast))]
    if lease.router:
        options.append((OPT_ROUTER, _ip(lease.router)))
    # RFC 3442: sent to a guest that asks for it, and then it is the only routes the guest takes (the default too)
    if lease.routes and OPT_CLASSLESS_ROUTES in msg.parameters:
        options.append((OPT_CLASSLESS_ROUTES, classless_routes(lease.routes)))
    if lease.mtu >= MIN_MTU:
        options.append((OPT_MTU, lease.mtu.to_bytes(2, "big")))
    if msg.ciaddr != "0.0.0.0":  # §4.1: to a configured guest, at its address
        to_ip, to_mac = msg.ciaddr, msg.mac
    elif msg.broadcast or inform:  # an INFORM names no address to answer at: everyone on the TAP, the guest alone
        to_ip, to_mac = "255.255.255.255", "ff:ff:ff:ff:ff:ff"
    else:
        to_ip, to_mac = lease.address, msg.mac
    # Table 3: ciaddr is the client's in an ACK, 0 in an OFFER
    return Reply(kind, msg.xid, msg.mac, "0.0.0.0" if inform else lease.address,
                 "0.0.0.0" if kind == OFFER else msg.ciaddr, tuple(options), to_ip, to_mac, msg.broadcast)


def classless_routes(routes: tuple[tuple[str, str], ...]) -> bytes:
    """RFC 3442's encoding: each route its prefix length, the significant octets of its destination, its router."""
    out = bytearray()
    for dst, via in routes:
        net = ipaddress.IPv4Network(dst, strict=False)
        out += bytes([net.prefixlen]) + net.network_address.packed[:(net.prefixlen + 7) // 8] + _ip(via)
    return bytes(out)


def _ip(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def describe(reply: Reply) -> dict[str, Any]:
    """A reply as a log line shows it."""
    names = {OFFER: "OFFER", ACK: "ACK", NAK: "NAK"}
    return {"reply": names.get(reply.kind, str(reply.kind)), "to": reply.mac, "address": reply.yiaddr}

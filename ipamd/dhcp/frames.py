"""A guest's DHCP message out of an Ethernet frame, and an answer into one (dpkt does the encoding, the checksums
included): the server reads and writes whole frames on the TAP, because the guest has no address yet to be reached
at, and the pod's side of the TAP has none to answer from."""

from __future__ import annotations

import ipaddress

import dpkt

from ipamd.dhcp.offers import (
    CLIENT_PORT,
    OPT_MESSAGE_TYPE,
    OPT_PARAMETERS,
    OPT_REQUESTED,
    OPT_SERVER_ID,
    SERVER_ADDRESS,
    SERVER_PORT,
    Message,
    Reply,
)

_BROADCAST_FLAG = 0x8000
BOOTP_MIN_LEN = 300  # RFC 951, RFC 1542 §2.1: some clients (PXE ROMs) drop a shorter message
OPT_CLIENT_ID = 61
#: Where a guest's message to this server goes: everyone, or the server itself (a unicast to another is not ours).
_OURS = {b"\xff\xff\xff\xff", ipaddress.IPv4Address(SERVER_ADDRESS).packed}


def decode(frame: bytes) -> Message | None:
    """The DHCP message a frame carries to this server (None for any other frame, or a malformed one: whatever a
    guest sends, the parser's failure is never the server's)."""
    try:
        eth = dpkt.ethernet.Ethernet(frame)
        ip = eth.data
        if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.udp.UDP) or ip.data.dport != SERVER_PORT \
                or bytes(ip.dst) not in _OURS:
            return None
        msg = dpkt.dhcp.DHCP(ip.data.data)
        opts = dict(msg.opts)
    except Exception:  # noqa: BLE001 - dpkt raises IndexError, struct.error, ... on a frame cut short inside
        return None
    if msg.op != dpkt.dhcp.DHCP_OP_REQUEST or msg.hln != 6 or msg.magic != dpkt.dhcp.DHCP_MAGIC:
        return None
    kind = opts.get(OPT_MESSAGE_TYPE, b"")
    if len(kind) != 1:
        return None  # BOOTP, not DHCP: no message type
    return Message(kind[0], msg.xid, _mac(msg.chaddr[:6]), _addr(msg.ciaddr), _opt_ip(opts.get(OPT_REQUESTED)),
                   _opt_ip(opts.get(OPT_SERVER_ID)), bool(msg.flags & _BROADCAST_FLAG),
                   tuple(opts.get(OPT_PARAMETERS, b"")), opts.get(OPT_CLIENT_ID))


def encode(reply: Reply) -> bytes:
    """The Ethernet frame of an answer, from the server's address to where the reply says."""
    msg = dpkt.dhcp.DHCP(op=dpkt.dhcp.DHCP_OP_REPLY, xid=reply.xid, flags=_BROADCAST_FLAG if reply.broadcast else 0,
                         ciaddr=_int(reply.ciaddr), yiaddr=_int(reply.yiaddr), siaddr=0, giaddr=0,
                         chaddr=bytes.fromhex(reply.mac.replace(":", "")) + bytes(10),
                         opts=list(reply.options))
    body = bytes(msg)
    udp = dpkt.udp.UDP(sport=SERVER_PORT, dport=CLIENT_PORT, data=body + bytes(max(0, BOOTP_MIN_LEN - len(body))))
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=ipaddress.IPv4Address(SERVER_ADDRESS).packed, dst=ipaddress.IPv4Address(reply.to_ip).packed,
                    p=dpkt.ip.IP_PROTO_UDP, ttl=64, data=udp)
    ip.len = len(ip)
    eth = dpkt.ethernet.Ethernet(dst=bytes.fromhex(reply.to_mac.replace(":", "")), src=bytes(6),
                                 type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
    return bytes(eth)


def with_source(frame: bytes, mac: bytes) -> bytes:
    """The frame as sent from ``mac`` (the TAP's own, known once its socket is open)."""
    return frame[:6] + mac + frame[12:]


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _addr(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


def _int(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def _opt_ip(raw: bytes | None) -> str:
    return str(ipaddress.IPv4Address(raw)) if raw is not None and len(raw) == 4 else ""

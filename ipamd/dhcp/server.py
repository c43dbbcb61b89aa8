"""The guests' DHCP server: one packet socket per served TAP, opened in its pod's namespace (a socket stays in the
namespace it was made in), all of them read by one thread of the daemon.

A socket bound to the TAP sees the frames the guest sends before the pod's inner bridge takes them (``ETH_P_ALL``:
a frame a bridge port receives reaches no socket of one protocol), and answers on the TAP, so an answer goes to the
guest alone. A kernel filter lets through only what goes to a DHCP server's port: a VM's whole traffic crosses the
TAP, and none of the rest is copied to the daemon.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from ipamd.dhcp.offers import DECLINE, SERVER_PORT, GuestLease, answer, describe, guest_lease
from ipamd.netlink.netns import in_namespace, open_netns
from ipamd.store.records import AttachmentRecord

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23  # Linux 4.20: the frames the TAP sends to the guest are not copied to the socket
PACKET_OUTGOING = 4
SIOCGIFMTU, SIOCGIFHWADDR = 0x8921, 0x8927
#: The state key a TAP's record keeps its choice in.
STATE_KEY = "guestDhcp"
#: A guest's DHCP messages read in a second before its TAP is left unread for the rest of that second: a client sends
#: a few; a guest flooding port 67 then costs the kernel (its socket buffer overflows), not the daemon's Python.
MESSAGES_PER_SECOND = 20
#: The socket's receive buffer: a few frames (DHCP is a handful of messages); a flood overflows it in the kernel.
RECEIVE_BUFFER = 16384

# classic BPF, ``ip and udp dst port 67`` on Ethernet (what ``tcpdump -dd`` prints for it)
_FILTER = (
    (0x28, 0, 0, 12),  # ldh [12]: EtherType
    (0x15, 0, 7, 0x0800),  # IPv4, else drop
    (0x30, 0, 0, 23),  # ldb [23]: protocol
    (0x15, 0, 5, 17),  # UDP, else drop
    (0x28, 0, 0, 20),  # ldh [20]: fragment offset
    (0x45, 3, 0, 0x1FFF),  # a later fragment: drop
    (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf): the IP header's length
    (0x48, 0, 0, 16),  # ldh [x + 16]: the UDP destination port
    (0x15, 1, 0, SERVER_PORT),  # 67: keep
    (0x06, 0, 0, 0),  # drop
    (0x06, 0, 0, 0x40000),  # keep, whole
)


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _attach_filter(sock: socket.socket) -> None:
    program = (_SockFilter * len(_FILTER))(*(_SockFilter(*insn) for insn in _FILTER))
    fprog = _SockFprog(len(_FILTER), program)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(memoryview(fprog)))


@dataclass(frozen=True, slots=True)
class _Tap:
    if_name: str
    lease: GuestLease
    mac: bytes  # the TAP's own, the answers' source


def _open(if_name: str) -> tuple[socket.socket, int, bytes]:
    """A packet socket on the TAP ``if_name`` of the calling thread's namespace, with the TAP's MTU and MAC."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        _attach_filter(sock)  # before the bind: no frame of the guest's other traffic is ever queued
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass  # an older kernel: the outgoing ones are told apart by their packet type
        sock.bind((if_name, ETH_P_ALL))
        name = struct.pack("16s16x", if_name.encode())
        mtu = struct.unpack_from("16xi", fcntl.ioctl(sock, SIOCGIFMTU, name))[0]
        mac = struct.unpack_from("16x2x6s", fcntl.ioctl(sock, SIOCGIFHWADDR, name))[0]
        sock.setblocking(False)
        return sock, int(mtu), bytes(mac)
    except BaseException:
        sock.close()
        raise


def _drain(sock: socket.socket, most: int = 64) -> None:
    """Drop what is queued on the socket: a small buffer's worth, and never more than ``most`` frames (a guest still
    flooding keeps it full; the budget then takes care of it)."""
    for _ in range(most):
        try:
            sock.recv(65535)
        except OSError:  # BlockingIOError once empty
            return


class GuestDhcp:
    """Answers the guests of the TAPs it serves, each keyed by its TAP's node-unique host link name."""

    def __init__(self, in_netns: Callable[[int, Callable[[], Any]], Any] = in_namespace,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._in_netns = in_netns
        self._clock = clock
        self._lock = threading.Lock()
        self._served: dict[str, tuple[socket.socket, _Tap]] = {}
        self._paused: dict[str, float] = {}  # TAPs left unread (over their budget), until when
        self._window: dict[str, tuple[float, int]] = {}  # the reader's: each TAP's second, and what it read in it
        self._selector: selectors.BaseSelector | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._replies: Counter[str] = Counter()  # sent, by kind (OFFER, ACK, NAK)

    def serve(self, key: str, netns_fd: int, if_name: str, lease: GuestLease) -> None:
        """Answer the guest of TAP ``if_name`` in the namespace ``netns_fd`` with ``lease`` (its MTU the TAP's)."""
        sock, mtu, mac = self._in_netns(netns_fd, lambda: _open(if_name))
        tap = _Tap(if_name, replace(lease, mtu=lease.mtu or mtu), mac)
        with self._lock:
            if self._closed:
                sock.close()
                return
            old = self._served.pop(key, None)
            selector = self._started()
            if old is not None:
                if self._paused.pop(key, None) is None:
                    selector.unregister(old[0])
                old[0].close()
            self._served[key] = (sock, tap)
            selector.register(sock, selectors.EVENT_READ, key)
        log.info("DHCP for the guest of TAP %s (%s): %s/%d", if_name, key, lease.address, lease.prefix_len)

    def stop(self, key: str) -> None:
        """Stop answering on the TAP of ``key`` (nothing if it was not served)."""
        with self._lock:
            served = self._served.pop(key, None)
            paused = self._paused.pop(key, None)
            if served is not None and self._selector is not None and paused is None:
                self._selector.unregister(served[0])
        if served is not None:
            served[0].close()

    @property
    def answered(self) -> int:
        """How many answers were sent."""
        return sum(self._replies.values())

    def replies(self) -> dict[str, int]:
        """The answers sent, by kind: ``plexus_guest_dhcp_replies_total``."""
        with self._lock:
            return dict(self._replies)

    def taps(self) -> int:
        """How many TAPs are served: ``plexus_guest_dhcp_taps``."""
        with self._lock:
            return len(self._served)

    def serving(self, key: str) -> GuestLease | None:
        with self._lock:
            served = self._served.get(key)
        return served[1].lease if served is not None else None

    def resume(self, records: Iterable[AttachmentRecord], open_ns: Callable[[str], int] = open_netns) -> int:
        """Serve again the TAPs of the ready attachments that ask for it (a restarted daemon's sockets are gone);
        a pod whose namespace is gone is left to its DEL. Returns how many are served."""
        n = 0
        for rec in records:
            if rec.state != "ready":
                continue
            for iface in rec.interfaces:
                lease = guest_lease(iface) if iface.kind == "tap" and iface.driver.get(STATE_KEY) else None
                if lease is None:
                    continue
                try:
                    fd = open_ns(rec.netns)
                    try:
                        self.serve(iface.host_link, fd, iface.if_name, lease)
                    finally:
                        os.close(fd)
                    n += 1
                except Exception as exc:
                    log.warning("DHCP for the guest of TAP %s of %s/%s not resumed: %s", iface.if_name,
                                rec.namespace, rec.pod_name, exc)
        return n

    def close(self) -> None:
        with self._lock:
            self._closed = True
            served, self._served = list(self._served.values()), {}
            selector, self._selector = self._selector, None
        for sock, _ in served:
            sock.close()
        if selector is not None:
            selector.close()

    def _started(self) -> selectors.BaseSelector:
        if self._selector is None:
            self._selector = selectors.DefaultSelector()
            self._thread = threading.Thread(target=self._run, args=(self._selector,), name="guest-dhcp", daemon=True)
            self._thread.start()
        return self._selector

    def _run(self, selector: selectors.BaseSelector) -> None:
        while True:
            with self._lock:
                soonest = min(self._paused.values(), default=None)
            timeout = 1.0 if soonest is None else min(1.0, max(0.01, soonest - self._clock()))
            try:
                events = selector.select(timeout=timeout)
            except (OSError, ValueError):  # closed
                return
            with self._lock:
                if self._closed:
                    return
                self._resume_paused(selector)
                for gone in [k for k in self._window if k not in self._served]:  # the reader's own dict
                    del self._window[gone]
            for sel_key, _ in events:
                try:
                    self._handle(sel_key.data)
                except Exception:  # one guest's frame never ends the answers to every other
                    log.exception("DHCP on the TAP of %s: a frame not handled", sel_key.data)

    def _resume_paused(self, selector: selectors.BaseSelector) -> None:
        """Read again the TAPs whose second of silence is over (the lock held)."""
        now = self._clock()
        for key, until in list(self._paused.items()):
            if until <= now:
                del self._paused[key]
                served = self._served.get(key)
                if served is not None:
                    _drain(served[0])  # what the flood queued meanwhile: a real client asks again
                    selector.register(served[0], selectors.EVENT_READ, key)

    def _over_budget(self, key: str, sock: socket.socket, if_name: str) -> bool:
        """Count one message of the TAP's; past its budget, leave the TAP unread until its second is over."""
        now = self._clock()
        start, n = self._window.get(key, (now, 0))
        if now - start >= 1.0:
            start, n = now, 0
        self._window[key] = (start, n + 1)
        if n + 1 <= MESSAGES_PER_SECOND:
            return False
        with self._lock:
            served = self._served.get(key)
            if served is None or served[0] is not sock or key in self._paused or self._selector is None:
                return True
            self._selector.unregister(sock)
            self._paused[key] = start + 1.0
        log.warning("the guest of TAP %s sent more than %d DHCP messages in a second: not read for the rest of it",
                    if_name, MESSAGES_PER_SECOND)
        return True

    def _handle(self, key: str) -> None:
        from ipamd.dhcp import frames  # dpkt: ~50 ms to import, paid by a daemon that serves a guest

        with self._lock:
            served = self._served.get(key)
        if served is None:
            self._window.pop(key, None)
            return
        sock, tap = served
        for _ in range(64):  # what is queued, a bounded batch: one guest never starves the others
            try:
                frame, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # closed by stop() meanwhile, or the TAP gone
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            if self._over_budget(key, sock, tap.if_name):
                return
            msg = frames.decode(frame)
            if msg is not None and msg.kind == DECLINE and msg.mac == tap.lease.mac:
                log.warning("the guest of TAP %s declined %s: another host on its segment answers for it", tap.if_name,
                            tap.lease.address)
            reply = answer(msg, tap.lease) if msg is not None else None
            if reply is None:
                continue
            try:
                sock.send(frames.with_source(frames.encode(reply), tap.mac))
                with self._lock:
                    self._replies[describe(reply)["reply"]] += 1
                log.debug("DHCP on TAP %s: %s", tap.if_name, describe(reply))
            except OSError as exc:  # no guest on the TAP (no carrier), or the TAP gone: the guest asks again
                log.debug("DHCP on TAP %s: answer not sent: %s", tap.if_name, exc)

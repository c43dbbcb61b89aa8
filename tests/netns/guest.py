"""A VM's guest for the tests of ``ipAssignmentMode: DHCP``: what qemu does (attach to the pod's TAP by name), with a
TAP of its own in a namespace of the test's, frames pumped between the two, and a real DHCP client there (busybox
``udhcpc``) whose script configures what it was handed, so a test asserts the guest's kernel state. Everything it
makes goes at the end, whatever happens."""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import struct
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.harness import NS_PREFIX, netns_add, netns_del
from tests.netns.kernel_world import in_ns, up

IFF_TAP, IFF_NO_PI, IFF_MULTI_QUEUE, TUNSETIFF = 0x0002, 0x1000, 0x0100, 0x400454CA
GUEST_IF = "guest0"
SCRIPT = """#!/bin/sh
# udhcpc's events: the lease handed over is written down and configured, as a guest's own client would
[ "$1" = bound ] || exit 0
env | sort > "$PLEXUS_GUEST_LEASE"
ip addr add "$ip/$mask" dev "$interface"
[ -z "$mtu" ] || ip link set dev "$interface" mtu "$mtu"
if [ -n "$staticroutes" ]; then
    set -- $staticroutes
    while [ $# -ge 2 ]; do ip route add "$1" via "$2" dev "$interface"; shift 2; done
elif [ -n "$router" ]; then
    ip route add default via "$router" dev "$interface"
fi
"""


def open_tap(name: str, flags: int = IFF_TAP | IFF_NO_PI) -> int:
    """Attach to (or make, if none) the TAP ``name`` of the caller's namespace."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    except OSError:
        os.close(fd)
        raise
    return fd


@dataclass
class Guest:
    path: str  # the guest's namespace
    work: Path

    def dhcp(self, *args: str, tries: int = 3) -> tuple[int, dict[str, str]]:
        """udhcpc on the guest's NIC: its exit code and the lease it was handed (its script's environment)."""
        lease = self.work / f"lease-{uuid.uuid4().hex[:6]}"
        busybox = shutil.which("busybox") or "/bin/busybox"
        cmd = ["ip", "netns", "exec", os.path.basename(self.path), busybox, "udhcpc", "-i", GUEST_IF, "-f", "-q", "-n",
               "-t", str(tries), "-T", "1", "-A", "1", "-s", str(self.work / "udhcpc.script"), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False,
                              env={**os.environ, "PLEXUS_GUEST_LEASE": str(lease)})
        env = {}
        if lease.exists():
            env = dict(line.split("=", 1) for line in lease.read_text().splitlines() if "=" in line)
        return done.returncode, env


@contextmanager
def guest(pod_netns: str, tap: str, mac: str, work: Path, multi_queue: bool = False) -> Iterator[Guest]:
    """The VM behind the pod's TAP ``tap``: its guest's NIC has ``mac`` and lives in a namespace of its own."""
    work.mkdir(parents=True, exist_ok=True)
    script = work / "udhcpc.script"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    name = f"{NS_PREFIX}guest-{uuid.uuid4().hex[:6]}"
    fds: list[int] = []
    stop_r, stop_w = os.pipe()
    pump: threading.Thread | None = None
    try:
        path = netns_add(name)
        flags = IFF_TAP | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0)
        vm = in_ns(pod_netns, lambda: open_tap(tap, flags))
        fds.append(vm)
        nic = in_ns(path, lambda: open_tap(GUEST_IF))
        fds.append(nic)

        def configure() -> None:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=GUEST_IF)[0]
                ipr.link("set", index=idx, address=mac)
                up(ipr, GUEST_IF)
                up(ipr, "lo")
        in_ns(path, configure)

        def run() -> None:
            other = {vm: nic, nic: vm}
            while True:
                ready = select.select([vm, nic, stop_r], [], [])[0]
                if stop_r in ready:
                    return
                for fd in ready:
                    try:
                        os.write(other[fd], os.read(fd, 65536))
                    except OSError:
                        pass  # a frame the other side could not take (no carrier yet): dropped, as on a wire
        pump = threading.Thread(target=run, name="guest-pump", daemon=True)
        pump.start()
        yield Guest(path, work)
    finally:
        os.write(stop_w, b"x")
        if pump is not None:
            pump.join(5)
        for fd in (*fds, stop_r, stop_w):
            os.close(fd)
        netns_del(name)

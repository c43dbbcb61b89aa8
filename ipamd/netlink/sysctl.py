"""Per-interface sysctls (``net.ipv4.conf.<if>.*``, ``net.ipv6.conf.<if>.*``), in the namespace they belong to.

Netlink cannot set most of them (IPv6's devconf is read-only there), so they are written to ``/proc/sys/net``,
which shows the network namespace of the thread that opens it: a write for a pod's (or the node's, under
``--node-netns``) is made by ``netns.in_namespace``, and the caller's thread never moves.
"""

from __future__ import annotations

import fcntl
import socket
from typing import Any

from ipamd.netlink.netns import in_namespace

SIOCGSKNS = 0x894C  # <linux/sockios.h>: the network namespace of a socket, as a new fd (Linux 4.9)


def conf_path(family: int, if_name: str, key: str) -> str:
    """The file of one interface's sysctl (a name's dots stay: only sysctl(8)'s own syntax swaps them)."""
    version = "ipv6" if family == socket.AF_INET6 else "ipv4"
    return f"/proc/sys/net/{version}/conf/{if_name}/{key}"


def _write(path: str, value: str) -> bool:
    """Write ``value``; False when the file does not exist (a kernel without IPv6 has nothing to turn off)."""
    try:
        with open(path, "w") as f:
            f.write(value)
    except FileNotFoundError:
        return False
    return True


def set_conf(netns_fd: int | None, family: int, if_name: str, key: str, value: str) -> bool:
    """Set one interface sysctl in the namespace ``netns_fd`` (None: the caller's own); False when the kernel has
    no such setting for that link (IPv6 off, the link gone)."""
    path = conf_path(family, if_name, key)
    if netns_fd is None:
        return _write(path, value)
    return in_namespace(netns_fd, lambda: _write(path, value))


def netns_of(sock: Any) -> int:
    """A new fd of the network namespace ``sock`` (a socket, or a pyroute2 ``IPRoute``) lives in: a pod's netlink
    socket says where its links are, with no path or fd to carry along. The caller closes it."""
    return int(fcntl.ioctl(sock.fileno(), SIOCGSKNS))

"""Namespaces of a kernel test's own, for drivers and links called directly (no daemon): the node's (where the segment's
bridge goes), a pod's, and a peer's (the rest of the segment), all deleted whatever happens; and the small reads the
tests make of them. Only 198.18.0.0/15 and 2001:2::/48 are used; packets travel only between these namespaces."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute

from ipamd.netlink import links
from ipamd.netlink.netns import PodNamespace, in_namespace, netlink_at, open_netns, pod_namespace
from tests.harness import NS_PREFIX, netns_add, netns_del

T = TypeVar("T")
IFA_F_TENTATIVE = 0x40


@dataclass
class World:
    host: IPRoute  # in the node's namespace
    node_path: str
    pod: PodNamespace
    paths: dict[str, str]  # every namespace the test made, by role: node, pod, peer


@contextmanager
def kernel_world(tag: str = "kw") -> Iterator[World]:
    """Three fresh namespaces with ``lo`` up, sockets in the node's and the pod's, all gone at the end."""
    suffix = uuid.uuid4().hex[:6]
    names = {role: f"{NS_PREFIX}{tag}{role}-{suffix}" for role in ("node", "pod", "peer")}
    try:
        paths = {role: netns_add(n) for role, n in names.items()}
        with netlink_at(paths["node"]) as host, pod_namespace(paths["pod"]) as pod, \
                netlink_at(paths["peer"]) as peer:
            for ipr in (host, pod.netlink(), peer):
                up(ipr, "lo")
            yield World(host, paths["node"], pod, paths)
    finally:
        for n in names.values():
            netns_del(n)


def up(ipr: IPRoute, name: str) -> int:
    """Bring the link up; its index."""
    idx = int(ipr.link("get", ifname=name)[0]["index"])
    ipr.link("set", index=idx, state="up")
    return idx


def link(ipr: IPRoute, name: str) -> Any:
    return ipr.link("get", ifname=name)[0]


def link_names(ipr: IPRoute) -> set[str]:
    return {msg.get_attr("IFLA_IFNAME") for msg in ipr.get_links()}


def in_ns(path: str, fn: Callable[[], T]) -> T:
    """``fn()`` on a thread inside the namespace at ``path`` (as the daemon makes what the kernel makes in the
    caller's namespace: a TAP, a socket), its value or its exception."""
    fd = open_netns(path)
    try:
        return in_namespace(fd, fn)
    finally:
        os.close(fd)


def read_text(file: str) -> str:
    with open(file) as f:
        return f.read().strip()


def read_in(path: str, file: str) -> str:
    """A ``/proc/sys/net`` file (or any) as the namespace at ``path`` shows it."""
    return in_ns(path, lambda: read_text(file))


def run_in(path: str, cmd: list[str], timeout: float = 10) -> subprocess.CompletedProcess[str]:
    """A command (ping) in the namespace at ``path``."""
    return subprocess.run(["ip", "netns", "exec", os.path.basename(path), *cmd], capture_output=True, text=True,
                          timeout=timeout, check=False)


def nic_to_peer(w: World, mtu: int, peer_cidr: str) -> None:
    """``nic0`` in the node namespace (the segment's NIC, MTU ``mtu``), its far end ``wire0`` in the peer namespace
    with ``peer_cidr`` (the rest of the L2 segment)."""
    fd = open_netns(w.paths["peer"])
    try:
        w.host.link("add", ifname="nic0", kind="veth", mtu=mtu, peer={"ifname": "wire0", "net_ns_fd": fd, "mtu": mtu})
    finally:
        os.close(fd)
    with netlink_at(w.paths["peer"]) as peer:
        idx = up(peer, "wire0")
        peer.addr("add", index=idx, **links.address_request(peer_cidr))


def ready_link_local(ipr: IPRoute, name: str) -> str:
    """The link's fe80 address once usable (DAD done: not tentative), or ""."""
    idx = link(ipr, name)["index"]
    return next((a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=socket.AF_INET6)
                 if a.get_attr("IFA_ADDRESS").startswith("fe80") and not (a.get_attr("IFA_FLAGS") or 0)
                 & IFA_F_TENTATIVE), "")

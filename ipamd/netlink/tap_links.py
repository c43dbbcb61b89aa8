"""A TAP for a VM in a pod: the TAP, the pod's inner bridge it is a port of, and the veth from there to the node.

A VM (KubeVirt's virt-launcher, a qemu in the pod) opens the TAP by name; the pod's network stack carries its
frames to the segment over the inner bridge and veth, so the pod's own namespace keeps no address of the VM's.
Each function makes one thing, made or not, so the driver registers its undo right after it; all of them take
the segment bridge's MTU, or full-size frames would be dropped at its uplink with no ICMP to say so (it is L2).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import IFT_MULTI_QUEUE, IFT_NO_PI, IFT_TAP, IFT_TUN_EXCL, IFT_VNET_HDR
from pyroute2.netlink.rtnl.ifinfmsg.tuntap import TUNSETGROUP, TUNSETIFF, TUNSETOWNER, TUNSETPERSIST

from cni.errors import InterfaceFailure
from ipamd.netlink import sysctl
from ipamd.netlink.links import GONE, add_veth_pair, index_of, netlink_failure
from ipamd.netlink.netns import in_namespace

#: A TAP as qemu opens it (no packet information header, virtio-net headers); EXCL: made, never someone else's
#: TAP of that name attached to.
TAP_FLAGS = IFT_TAP | IFT_NO_PI | IFT_VNET_HDR | IFT_TUN_EXCL
#: Added for a VM with several queues (qemu's ``queues=N``), which attaches with it; the kernel refuses (EINVAL) a
#: queue with it on a TAP made without it, and one without it on a TAP made with it.
MULTI_QUEUE = IFT_MULTI_QUEUE


def add_node_veth(host: IPRoute, pod_fd: int, host_name: str, inner_veth: str, bridge_index: int, mtu: int) -> None:
    """The veth from the node bridge into the pod: ``host_name`` up on the bridge, ``inner_veth`` (down) in the pod.
    One request, so a bridge gone makes nothing (the kernel removes a link that cannot join its master)."""
    add_veth_pair(host, {"ifname": host_name, "kind": "veth", "master": bridge_index, "state": "up", "mtu": mtu,
                         "peer": {"ifname": inner_veth, "net_ns_fd": pod_fd, "mtu": mtu}})


def add_inner_bridge(pod: IPRoute, name: str, mtu: int) -> int:
    """The pod's bridge between the TAP and the veth, up (no carrier until a port is); returns its index."""
    try:
        pod.link("add", ifname=name, kind="bridge", mtu=mtu, state="up")
        idx = index_of(pod, name)
    except NetlinkError as exc:
        raise netlink_failure(f"creating bridge {name}", exc) from None
    if idx is None:
        raise InterfaceFailure(f"interface {name} vanished while being set up", name)
    return idx


def keep_off_the_pod_stack(pod_fd: int, bridge: str, port: str) -> None:
    """The inner bridge and its veth carry the VM's segment at L2 only: the pod's own stack must not be reached
    from it, nor speak on it. IPv6 off on both (no link-local address, no Router Advertisement taken, no ND sent);
    on the bridge, which has no IPv4 address, no ARP answered for the pod's others (``arp_ignore=8``) and strict
    reverse-path filtering (no route goes through it, so no packet from it is taken). Set before they are up, on
    one throwaway thread in the pod."""
    settings = ((socket.AF_INET6, bridge, "disable_ipv6", "1"), (socket.AF_INET6, port, "disable_ipv6", "1"),
                (socket.AF_INET, bridge, "arp_ignore", "8"), (socket.AF_INET, bridge, "rp_filter", "1"))

    def write() -> None:
        for family, name, key, value in settings:
            sysctl.set_conf(None, family, name, key, value)

    try:
        in_namespace(pod_fd, write)
    except OSError as exc:
        raise InterfaceFailure(f"keeping the pod's stack off bridge {bridge} failed", str(exc)) from None


def _make_tap(name: str, uid: int | None, gid: int | None, multi_queue: bool) -> None:
    """TUNSETIFF in the calling thread's namespace; persistent last, so that a failure before leaves nothing (a
    TAP not persistent goes with its file descriptor)."""
    flags = TAP_FLAGS | (MULTI_QUEUE if multi_queue else 0)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
        if uid is not None:
            fcntl.ioctl(fd, TUNSETOWNER, _c_int(uid))
        if gid is not None:
            fcntl.ioctl(fd, TUNSETGROUP, _c_int(gid))
        sysctl.set_conf(None, socket.AF_INET6, name, "disable_ipv6", "1")  # the VM's, not the pod stack's
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


def _c_int(value: int) -> int:
    """A uid or gid (a 32-bit uid_t) as the C int ``fcntl.ioctl`` takes: the same 32 bits, which the kernel reads back
    as a uid_t, so one past 2**31 is not an OverflowError."""
    return int(struct.unpack("=i", struct.pack("=I", value))[0])


def add_tap(pod_fd: int, if_name: str, uid: int | None, gid: int | None, multi_queue: bool = False) -> None:
    """A persistent TAP ``if_name`` (down) for the VM, owned by ``uid``/``gid``, multi-queue if asked. TUNSETIFF
    makes the device in the calling thread's namespace, so it is made by a throwaway thread inside the pod's: nothing
    on the node, whatever namespace the daemon itself runs in (``--node-netns``)."""
    try:
        in_namespace(pod_fd, lambda: _make_tap(if_name, uid, gid, multi_queue))
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise InterfaceFailure(f"interface {if_name} already exists in the pod", if_name) from None
        raise InterfaceFailure(f"creating TAP {if_name} failed", f"{exc.errno} {os.strerror(exc.errno or 0)}") from None


def join_inner_bridge(pod: IPRoute, name: str, bridge_index: int, mac: str = "", mtu: int = 0) -> None:
    """A port of the pod's inner bridge, up (and given ``mac`` and ``mtu``): one request."""
    spec: dict[str, object] = {"ifname": name, "master": bridge_index, "state": "up"}
    if mac:
        spec["address"] = mac
    if mtu:
        spec["mtu"] = mtu
    try:
        pod.link("set", **spec)
    except NetlinkError as exc:
        raise netlink_failure(f"joining {name} to the pod's bridge", exc) from None


def is_multi_queue(pod: IPRoute, name: str) -> bool | None:
    """Whether the pod's TAP ``name`` was made multi-queue, as the kernel reports it over netlink
    (``IFLA_TUN_MULTI_QUEUE``, Linux 4.15); None when there is no such TAP, or the kernel does not say. Not sysfs:
    the daemon's ``/sys`` shows its own namespace's links, not the pod's."""
    try:
        info = pod.link("get", ifname=name)[0].get_attr("IFLA_LINKINFO")
    except NetlinkError as exc:
        if exc.code in GONE:
            return None
        raise netlink_failure(f"reading TAP {name}", exc) from None
    data = info.get_attr("IFLA_INFO_DATA") if info is not None and info.get_attr("IFLA_INFO_KIND") == "tun" else None
    value = data.get_attr("IFLA_TUN_MULTI_QUEUE") if data is not None else None
    return None if value is None else bool(value)

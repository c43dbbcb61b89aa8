"""A TAP for a VM in a pod: the TAP, the pod's inner bridge it is a port of, and the veth from there to the node.

A VM (KubeVirt's virt-launcher, a qemu in the pod) opens the TAP by name; the pod's network stack carries its
frames to the segment over the inner bridge and veth, so the pod's own namespace keeps no address of the VM's.
"""

from __future__ import annotations

from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ipamd.model.names import TapNames
from ipamd.netlink.links import PodLink, delete_link, generate_mac, index_of, netlink_failure, pod_name_free, set_mac_up


def add_tap(host: IPRoute, pod: IPRoute, pod_fd: int, host_name: str, names: TapNames, if_name: str, mac: str,
            bridge_index: int, uid: int | None, gid: int | None) -> PodLink:
    """A TAP ``if_name`` for a VM in the pod, bridged (inside the pod) to a veth into the node bridge."""
    pod_name_free(pod, if_name)
    inner_bridge, inner_veth = names.inner_bridge, names.inner_veth
    for name in (inner_bridge, inner_veth):
        pod_name_free(pod, name)
    if index_of(host, host_name) is not None:
        delete_link(host, host_name)
    try:
        host.link("add", ifname=host_name, kind="veth", peer={"ifname": inner_veth, "net_ns_fd": pod_fd})
        host.link("set", index=index_of(host, host_name), master=bridge_index, state="up")
        pod.link("add", ifname=inner_bridge, kind="bridge")
        br = index_of(pod, inner_bridge)
        pod.link("set", index=br, state="up")
        pod.link("set", index=index_of(pod, inner_veth), master=br, state="up")
        # TUNSETIFF creates the device in the caller's namespace, so make it on the node under a
        # temporary name, then move it into the pod under its own name.
        tmp = names.temporary
        tap: dict[str, Any] = {"ifname": tmp, "kind": "tuntap", "mode": "tap",
                               "ifr": {"no_pi": 1, "vnet_hdr": 1}}
        if uid is not None:
            tap["uid"] = uid
        if gid is not None:
            tap["gid"] = gid
        if index_of(host, tmp) is not None:
            delete_link(host, tmp)
        host.link("add", **tap)
        host.link("set", index=index_of(host, tmp), net_ns_fd=pod_fd, ifname=if_name)
        pod.link("set", index=index_of(pod, if_name), master=br)
    except NetlinkError as exc:
        raise netlink_failure(f"creating TAP {if_name}", exc) from None
    link = set_mac_up(pod, if_name, mac or generate_mac())
    return PodLink(if_name, link.mac, host_name, link.index)

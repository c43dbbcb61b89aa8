"""The node side of a segment: its bridge, and the VLAN or VXLAN device that carries it off the node.

Each function makes the object unless it exists, so any ADD (or the reconcile loop) may call it; what a pod's
interface needs of the node is in ``ipamd.netlink.links``.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni.errors import InterfaceFailure, TryAgainLater
from ipamd.model.names import PREFIX, uplink_name
from ipamd.netlink.links import family_of, index_of, netlink_failure, same_ip


def ensure_bridge(host: IPRoute, name: str, uplink: str = "") -> int:
    """Create the node bridge (up) unless it exists, and enslave the uplink; returns its index."""
    idx = index_of(host, name)
    if idx is None:
        try:
            host.link("add", ifname=name, kind="bridge")
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # a concurrent ADD made it: fine
                raise netlink_failure(f"creating bridge {name}", exc) from None
        idx = index_of(host, name)
        if idx is None:
            raise TryAgainLater(f"bridge {name} vanished while being set up")
    host.link("set", index=idx, state="up")
    if uplink:
        up = index_of(host, uplink)
        if up is None:
            raise InterfaceFailure(f"uplink {uplink} of bridge {name} does not exist", uplink)
        link = host.link("get", index=up)[0]
        master = link.get_attr("IFLA_MASTER")
        if master != idx:
            _refuse_taken_uplink(host, uplink, name, master)
            host.link("set", index=up, master=idx, state="up")
    return idx


def _refuse_taken_uplink(host: IPRoute, uplink: str, bridge: str, master: int | None) -> None:
    """A NIC is a port of one bridge: one that is already another Plexus segment's uplink is not taken from it (its
    pods would lose the wire while both segments look ready)."""
    if not master:
        return
    found = host.link("get", index=master)
    owner = str(found[0].get_attr("IFLA_IFNAME") or "") if found else ""
    if owner.startswith(f"{PREFIX}-"):
        raise InterfaceFailure(f"{uplink} is already the uplink of bridge {owner}, another network's segment: a NIC is "
                               f"the port of one bridge, so {bridge} cannot have it too (give each untagged network a "
                               "parent NIC of its own, or a VLAN or VXLAN class)", "parentNodeNetworkInterfaces")


def vlan_spec(parent_index: int, name: str, vlan_id: int) -> dict[str, Any]:
    """The RTM_NEWLINK request for an 802.1Q sub-interface (kept apart so it can be checked as a message)."""
    return {"ifname": name, "kind": "vlan", "link": parent_index, "vlan_id": vlan_id, "vlan_protocol": 0x8100}


def ensure_vlan(host: IPRoute, parent: str, vlan_id: int) -> str:
    name = uplink_name("vlan", vlan_id)
    if index_of(host, name) is not None:
        return name
    parent_idx = index_of(host, parent)
    if parent_idx is None:
        raise InterfaceFailure(f"parent interface {parent} for VLAN {vlan_id} does not exist", parent)
    try:
        host.link("add", **vlan_spec(parent_idx, name, vlan_id))
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise netlink_failure(f"creating VLAN {vlan_id} on {parent} (does the kernel have 802.1q?)", exc) from None
    return name


def vxlan_spec(name: str, vni: int, underlay_index: int | None, port: int, group: str, local: str) -> dict[str, Any]:
    """The RTM_NEWLINK request for a VXLAN device; an IPv6 group or local address goes in its own attribute
    (IFLA_VXLAN_GROUP6, IFLA_VXLAN_LOCAL6), which also makes the device's socket IPv6."""
    spec: dict[str, Any] = {"ifname": name, "kind": "vxlan", "vxlan_id": vni, "vxlan_port": port,
                            "vxlan_learning": 1}
    if underlay_index is not None:
        spec["vxlan_link"] = underlay_index
    if group:
        spec["vxlan_group6" if ":" in group else "vxlan_group"] = group
    if local:
        spec["vxlan_local6" if ":" in local else "vxlan_local"] = local
    return spec


def vxlan_local(local: str, group: str, remotes: Iterable[str]) -> str:
    """The device's local address: a VXLAN device carries one family, IPv4 unless a local or group address says
    IPv6, so IPv6 remotes with neither get ``::`` (any source, IPv6 socket); else the kernel refuses their FDB
    entries (EAFNOSUPPORT)."""
    if local or group or not any(family_of(r) == socket.AF_INET6 for r in remotes):
        return local
    return "::"


def ensure_vxlan(host: IPRoute, vni: int, underlay: str, remotes: Iterable[str], group: str, port: int,
                 local: str) -> str:
    """A VXLAN device for ``vni``; unicast remotes become all-zero FDB entries (head-end replication).
    The same class serves every node, so its remotes may include this node: that one is skipped."""
    name = uplink_name("vxlan", vni)
    remotes = list(remotes)
    idx = index_of(host, name)
    if idx is None:
        under = index_of(host, underlay) if underlay else None
        if underlay and under is None:
            raise InterfaceFailure(f"underlay interface {underlay} for VNI {vni} does not exist", underlay)
        try:
            host.link("add", **vxlan_spec(name, vni, under, port, group, vxlan_local(local, group, remotes)))
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise netlink_failure(f"creating VXLAN {vni}", exc) from None
        idx = index_of(host, name)
    # a class lists every node of the segment; this node's own address is not a remote of its own
    own = {same_ip(a.get_attr(key)) for a in host.get_addr() for key in ("IFA_ADDRESS", "IFA_LOCAL")
           if a.get_attr(key)}
    for remote in remotes:
        if same_ip(remote) in own:
            continue
        try:
            host.fdb("append", ifindex=idx, lladdr="00:00:00:00:00:00", dst=remote)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise netlink_failure(f"adding VXLAN remote {remote}", exc) from None
    return name


def bridge_index(host: IPRoute, bridge: str) -> int | None:
    return index_of(host, bridge)


def bridge_ports(host: IPRoute, bridge: str) -> list[str]:
    idx = index_of(host, bridge)
    if idx is None:
        return []
    return [link.get_attr("IFLA_IFNAME") for link in host.get_links() if link.get_attr("IFLA_MASTER") == idx]

"""The node side of a segment: its bridge, and the VLAN or VXLAN device that carries it off the node.

Each function makes the object unless it exists, so any ADD (or the reconcile loop) may call it; what a pod's
interface needs of the node is in ``ipamd.netlink.links``. Every link made here is L2 only: IPv6 is turned off on it
(``l2_only``), in the namespace of the netlink socket that made it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Iterable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni.errors import InterfaceFailure, TryAgainLater
from ipamd.model.names import PREFIX, uplink_name
from ipamd.model.segments import SegmentInUse
from ipamd.netlink import sysctl
from ipamd.netlink.links import GONE, family_of, index_of, mtu_of, netlink_failure, same_ip

SIOCGSKNS = 0x894C  # <linux/sockios.h>: an fd of the network namespace a socket belongs to
ZERO_MAC = "00:00:00:00:00:00"


def l2_only(host: IPRoute, name: str) -> None:
    """Turn IPv6 off on a link Plexus made for a segment (its bridge, VLAN or VXLAN device). It has no address, yet
    the kernel would give it a link-local one, at which a pod of the segment reaches whatever listens on the node's
    ``[::]``, and would accept Router Advertisements on it, from which that pod configures the node. The sysctl is
    written in the namespace of ``host``'s socket (the node's: under ``--node-netns`` not this thread's, and only
    then is a thread entering it needed); a kernel without IPv6 has nothing to turn off."""
    try:
        netns = fcntl.ioctl(host.fileno(), SIOCGSKNS)
    except OSError as exc:
        raise InterfaceFailure(f"turning IPv6 off on {name} failed: the node's namespace is unknown", str(exc)) from None
    try:
        own = os.fstat(netns).st_ino == os.stat("/proc/thread-self/ns/net").st_ino
        sysctl.set_conf(None if own else netns, socket.AF_INET6, name, "disable_ipv6", "1")
    except OSError as exc:  # a read-only /proc/sys, say: the segment would not be L2 only
        raise InterfaceFailure(f"turning IPv6 off on {name} failed", str(exc)) from None
    finally:
        os.close(netns)


def ensure_bridge(host: IPRoute, name: str, uplink: str = "", busy: bool = False) -> int:
    """Create the node bridge (up, IPv6 off) unless it exists, and enslave the uplink; returns its index. No uplink
    (its class names no parent NIC, any more): a NIC still its port is taken off it. ``busy``: the node's attachments
    have pods on it, which its ports may not show (a macvlan pod is none)."""
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
    l2_only(host, name)  # made or adopted: before it is up, so it never has an fe80 address
    host.link("set", index=idx, state="up")
    if uplink:
        up = index_of(host, uplink)
        if up is None:
            raise InterfaceFailure(f"uplink {uplink} of bridge {name} does not exist", uplink)
        link = host.link("get", index=up)[0]
        master = link.get_attr("IFLA_MASTER")
        if master != idx:
            _refuse_taken_uplink(host, uplink, name, master)
            _release_old_uplink(host, idx, uplink, name, busy)
            host.link("set", index=up, master=idx, state="up")
    else:
        _release_old_uplink(host, idx, "", name, busy)
    return idx


def _refuse_taken_uplink(host: IPRoute, uplink: str, bridge: str, master: int | None) -> None:
    """A NIC has one master, and setting another takes it out of the one it has: a NIC already another Plexus
    segment's uplink (whose pods would lose the wire while both segments look ready), or a port of anything else
    (the admin's bridge carrying the node's address, a bond), is not taken from it."""
    if not master:
        return
    owner = _name_of(host, master)
    if owner.startswith(f"{PREFIX}-"):
        raise InterfaceFailure(f"{uplink} is already the uplink of bridge {owner}, another network's segment: a NIC is "
                               f"the port of one bridge, so {bridge} cannot have it too (give each untagged network a "
                               "parent NIC of its own, or a VLAN or VXLAN class)", "parentNodeNetworkInterfaces")
    raise InterfaceFailure(f"{uplink} is a port of {owner}, which Plexus did not make: as the uplink of bridge {bridge} "
                           f"it would be taken out of {owner}, and the node off what {owner} carries (name a NIC that "
                           "no bridge or bond has, or use a VLAN or VXLAN class)", "parentNodeNetworkInterfaces")


def _release_old_uplink(host: IPRoute, bridge_index: int, uplink: str, bridge: str, busy: bool = False) -> None:
    """A bridge has one uplink: a NIC still its port (the parent of the class before it was edited) and ``uplink``
    would join their two networks into one, and with no ``uplink`` (the class names no parent NIC any more) would
    keep the segment on the old NIC's wire; so the old one is taken off first (no master: the NIC is the admin's,
    left otherwise as it is), refused while pods are on the bridge (they would change wires under their feet): its
    ports tell of veth pods (their node ends are Plexus's names, NICs are not), ``busy`` of any (macvlan pods are no
    ports). ``uplink`` itself may be a port already (another ADD set the same bridge up at the same moment)."""
    ports = [(name, index) for name, index in _port_links(host, bridge_index) if name != uplink]
    nics = [(name, index) for name, index in ports if not name.startswith(PREFIX)]
    if not nics:
        return
    pods = [name for name, _ in ports if name.startswith(PREFIX)]
    if pods or busy:
        asked = f"{uplink} is asked for (the class's parent NIC edited?): it replaces {nics[0][0]}" if uplink else \
            f"the class names no parent NIC: {nics[0][0]} is taken off it"
        raise SegmentInUse(f"bridge {bridge} has {nics[0][0]} as its uplink, and {asked} once no pod is on {bridge} "
                           f"({_users(pods)})", "parentNodeNetworkInterfaces")
    for name, index in nics:
        try:
            host.link("set", index=index, master=0)
        except NetlinkError as exc:
            if exc.code not in GONE:
                why = f" for {uplink} to replace it" if uplink else " (its class names no parent NIC)"
                raise netlink_failure(f"taking {name} off bridge {bridge}{why}", exc) from None


def _users(pods: list[str]) -> str:
    """Who keeps an uplink as it is: the pods among the bridge's ports, else the node's attachments (macvlan pods)."""
    return f"{len(pods)} ports are" if pods else "the node's attachments are"


def _name_of(host: IPRoute, index: int) -> str:
    try:
        found = host.link("get", index=index)
    except NetlinkError as exc:
        if exc.code in GONE:
            return f"link #{index}"
        raise
    return str(found[0].get_attr("IFLA_IFNAME") or f"link #{index}") if found else f"link #{index}"


def _ports(host: IPRoute, master: int) -> list[str]:
    return [name for name, _ in _port_links(host, master)]


def _port_links(host: IPRoute, master: int) -> list[tuple[str, int]]:
    """The (name, index) of each port of ``master``."""
    return [(str(link.get_attr("IFLA_IFNAME")), int(link["index"])) for link in host.get_links()
            if link.get_attr("IFLA_MASTER") == master]


def vlan_spec(parent_index: int, name: str, vlan_id: int) -> dict[str, Any]:
    """The RTM_NEWLINK request for an 802.1Q sub-interface (kept apart so it can be checked as a message)."""
    return {"ifname": name, "kind": "vlan", "link": parent_index, "vlan_id": vlan_id, "vlan_protocol": 0x8100}


def ensure_vlan(host: IPRoute, parent: str, vlan_id: int, busy: bool = False) -> str:
    """The 802.1Q sub-interface for ``vlan_id`` on ``parent`` (IPv6 off). One of its name that is another (its
    class's parent NIC since edited) is made again while no pod is on its bridge (``busy``: the node's attachments
    have some, as for ``ensure_bridge``), and refused till then."""
    name = uplink_name("vlan", vlan_id)
    parent_idx = index_of(host, parent)
    if parent_idx is None:
        raise InterfaceFailure(f"parent interface {parent} for VLAN {vlan_id} does not exist", parent)
    found = _link(host, name)
    if found is not None and _vlan_of(found) == (parent_idx, vlan_id):
        l2_only(host, name)  # adopted: one made before IPv6 was turned off on them
        return name
    if found is not None:
        _remove_other_vlan(host, found, parent, vlan_id, busy)
    try:
        host.link("add", **vlan_spec(parent_idx, name, vlan_id))
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise netlink_failure(f"creating VLAN {vlan_id} on {parent} (does the kernel have 802.1q?)", exc) from None
        found = _link(host, name)  # a concurrent ADD made it: the one asked for?
        if found is None or _vlan_of(found) != (parent_idx, vlan_id):
            raise TryAgainLater(f"{name} changed while being set up") from None
    l2_only(host, name)
    return name


def _link(host: IPRoute, name: str) -> Any:
    try:
        return host.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code in GONE:
            return None
        raise


def _vlan_of(link: Any) -> tuple[int, int] | None:
    """``(parent index, VLAN ID)`` of an 802.1Q link; None for a link of another kind."""
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vlan":
        return None
    data = info.get_attr("IFLA_INFO_DATA")
    return int(link.get_attr("IFLA_LINK") or 0), int(data.get_attr("IFLA_VLAN_ID") if data is not None else 0)


def _remove_other_vlan(host: IPRoute, link: Any, parent: str, vlan_id: int, busy: bool) -> None:
    """Delete the uplink Plexus made for VLAN ``vlan_id`` on another parent (or of another kind), so it is made
    again on ``parent``; refused while pods are on its bridge."""
    now = _vlan_of(link)
    was = f"VLAN {now[1]} on {_name_of(host, now[0])}" if now else "a link of another kind"
    _remove_other_uplink(host, link, was, f"VLAN {vlan_id} on {parent}", "parentNodeNetworkInterfaces", busy)


def _remove_other_uplink(host: IPRoute, link: Any, was: str, asked: str, field: str, busy: bool) -> None:
    """Delete an uplink Plexus made that is not the one its class asks for now (``was`` / ``asked``: how each is
    described), so it is made again; refused while pods are on its bridge (they would change wires under their
    feet): its ports, or ``busy`` (the node's attachments: a macvlan pod is no port), naming the class's ``field``."""
    name, index = link.get_attr("IFLA_IFNAME"), int(link["index"])
    pods = _pods_beside(host, link)
    if pods or busy:
        raise SegmentInUse(f"{name} is {was}, but {asked} is asked for (the class's {field} edited?): it is made "
                           f"again once no pod is on {_bridge_of(host, link)} ({_users(pods)})", field)
    try:
        host.link("del", index=index)
    except NetlinkError as exc:
        if exc.code not in GONE:
            raise netlink_failure(f"removing {name} to make it again as {asked}", exc) from None


def _pods_beside(host: IPRoute, link: Any) -> list[str]:
    """The other ports of the bridge an uplink is a port of: its veth pods' node ends."""
    name, master = link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MASTER")
    return [port for port in _ports(host, master) if port != name] if master else []


def _bridge_of(host: IPRoute, link: Any) -> str:
    master = link.get_attr("IFLA_MASTER")
    return f"bridge {_name_of(host, master)}" if master else "its bridge"


def vxlan_spec(name: str, vni: int, underlay_index: int | None, port: int, group: str, local: str,
               mtu: int = 0) -> dict[str, Any]:
    """The RTM_NEWLINK request for a VXLAN device; an IPv6 group or local address goes in its own attribute
    (IFLA_VXLAN_GROUP6, IFLA_VXLAN_LOCAL6), which also makes the device's socket IPv6. ``mtu``: for one with no
    underlay, whose MTU the kernel does not derive."""
    spec: dict[str, Any] = {"ifname": name, "kind": "vxlan", "vxlan_id": vni, "vxlan_port": port,
                            "vxlan_learning": 1}
    if mtu:
        spec["mtu"] = mtu
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
                 local: str, busy: bool = False) -> str:
    """A VXLAN device for ``vni`` (IPv6 off); its unicast remotes are its all-zero FDB entries (head-end
    replication), exactly: a remote the class no longer lists gets none of the segment's floods. The same class
    serves every node, so its remotes may include this node: that one is skipped. One whose tunnel is another (the
    class edited) is made again while no pod is on its bridge (``busy``: as for ``ensure_vlan``); one above the MTU
    it would be made with is lowered then (``_lower_mtu``)."""
    name = uplink_name("vxlan", vni)
    remotes = list(remotes)
    under = index_of(host, underlay) if underlay else None
    if underlay and under is None:
        raise InterfaceFailure(f"underlay interface {underlay} for VNI {vni} does not exist", underlay)
    local = vxlan_local(local, group, remotes)
    found = _link(host, name)
    asked = _vxlan_settings(vni, port, group, local, under)
    if found is not None and _vxlan_of(found) != asked:  # the class's tunnel edited: made again
        _remove_other_uplink(host, found, _spoken(host, _vxlan_of(found)), _spoken(host, asked), "spec.vxlan", busy)
        found = None
    # a class lists every node of the segment; this node's own address is not a remote of its own
    own = {same_ip(a.get_attr(key)) for a in host.get_addr() for key in ("IFA_ADDRESS", "IFA_LOCAL")
           if a.get_attr(key)}
    wanted = {same_ip(r) for r in remotes} - own
    if group:  # the kernel's own entry for a multicast group
        wanted.add(same_ip(group))
    idx = int(found["index"]) if found is not None else None
    mtu = _tunnel_mtu(host, wanted) if under is None else 0
    if idx is None:
        try:
            host.link("add", **vxlan_spec(name, vni, under, port, group, local, mtu))
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise netlink_failure(f"creating VXLAN {vni}", exc) from None
        idx = index_of(host, name)
        if idx is None:
            raise TryAgainLater(f"VXLAN device {name} vanished while being set up")
    l2_only(host, name)
    _converge_flood_list(host, idx, wanted)
    if found is not None:
        _lower_mtu(host, found, mtu, busy)
    return name


#: What VXLAN adds to a frame on the underlay: outer IP (20 or 40 bytes), UDP (8), VXLAN (8) headers, inner Ethernet
#: header (14).
VXLAN_OVERHEAD: dict[int, int] = {socket.AF_INET: 50, socket.AF_INET6: 70}


def _tunnel_mtu(host: IPRoute, peers: Iterable[str]) -> int:
    """The MTU of a VXLAN device with no underlay named, which the kernel leaves at 1500 (it derives one from an
    underlay only): that of the links the routes to its remotes (or group) leave by, less the overhead, so a
    full-size frame is never a packet too big for the underlay. 0 (the kernel's default) when none is routed."""
    mtus = []
    for peer in sorted(peers):
        try:
            routes = host.route("get", dst=peer)
        except NetlinkError:  # unreachable, or a blackhole, prohibit or throw route (EINVAL, EACCES, EAGAIN):
            continue  # not routed (yet): its flood entry is still made, and the kernel's default kept
        oif = routes[0].get_attr("RTA_OIF") if routes else None
        if oif:
            mtus.append(mtu_of(host, int(oif)) - VXLAN_OVERHEAD[family_of(peer)])
    return min(mtus, default=0)


def _lower_mtu(host: IPRoute, link: Any, mtu: int, busy: bool) -> None:
    """A VXLAN device found above the MTU it would be made with now (``_tunnel_mtu``: one an older Plexus made has the
    kernel's 1500) is lowered to it; never raised (one lower is the operator's choice). Not under pods: their
    interfaces keep the old MTU, and a frame of theirs above the new one would be dropped at the device without a
    word, where it was fragmented on the underlay or answered with a Packet Too Big; refused till none is (its
    bridge's ports, or ``busy``: the segment is served as it is meanwhile, its attachment not Ready, as for a class
    edit). The bridge follows by itself: the kernel gives one whose MTU nobody set (Plexus never does) the smallest
    of its ports'."""
    name, now = link.get_attr("IFLA_IFNAME"), int(link.get_attr("IFLA_MTU") or 0)
    if not 0 < mtu < now:
        return
    pods = _pods_beside(host, link)
    if pods or busy:
        raise SegmentInUse(f"{name} has MTU {now}, above the {mtu} its underlay leaves it (made by an older Plexus?): "
                           f"it is lowered once no pod is on {_bridge_of(host, link)} ({_users(pods)})", "spec.vxlan")
    try:
        host.link("set", index=int(link["index"]), mtu=mtu)
    except NetlinkError as exc:
        raise netlink_failure(f"lowering the MTU of {name} to {mtu}", exc) from None


def _vxlan_settings(vni: int, port: int, group: str, local: str, underlay: int | None) -> tuple[int, int, str, str, int]:
    """What tells one VXLAN tunnel from another, as the kernel reports it: (VNI, port, group, local, underlay index);
    an any-address local is none (the kernel does not report it)."""
    return vni, port, same_ip(group) if group else "", same_ip(local) if local not in ("", "0.0.0.0", "::") else "", \
        underlay or 0


def _spoken(host: IPRoute, settings: tuple[int, int, str, str, int] | None) -> str:
    if settings is None:
        return "a link of another kind"
    vni, port, group, local, underlay = settings
    return " ".join([f"VXLAN {vni} port {port}", *([f"group {group}"] if group else []),
                     *([f"local {local}"] if local else []), *([f"on {_name_of(host, underlay)}"] if underlay else [])])


def _vxlan_of(link: Any) -> tuple[int, int, str, str, int] | None:
    """The settings of a VXLAN link (``_vxlan_settings``); None for a link of another kind."""
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return None
    data = info.get_attr("IFLA_INFO_DATA")

    def attr(*names: str) -> Any:
        return next((v for v in (data.get_attr(n) for n in names) if v), None) if data is not None else None

    return _vxlan_settings(int(attr("IFLA_VXLAN_ID") or 0), int(attr("IFLA_VXLAN_PORT") or 0),
                           attr("IFLA_VXLAN_GROUP", "IFLA_VXLAN_GROUP6") or "",
                           attr("IFLA_VXLAN_LOCAL", "IFLA_VXLAN_LOCAL6") or "", attr("IFLA_VXLAN_LINK"))


def _converge_flood_list(host: IPRoute, index: int, wanted: set[str]) -> None:
    """Make the device's all-zero FDB entries the ``wanted`` remotes: those of remotes gone are removed (with what
    was learnt to be behind them), missing ones appended."""
    entries = [(e.get_attr("NDA_LLADDR"), same_ip(e.get_attr("NDA_DST"))) for e in host.fdb("dump", ifindex=index)
               if e["ifindex"] == index and e.get_attr("NDA_DST")]
    flood = {dst for mac, dst in entries if mac == ZERO_MAC}
    gone = flood - wanted
    for mac, dst in entries:
        if dst in gone:
            try:
                host.fdb("del", ifindex=index, lladdr=mac, dst=dst)
            except NetlinkError as exc:
                if exc.code not in GONE:
                    raise netlink_failure(f"removing VXLAN remote {dst}", exc) from None
    for remote in sorted(wanted - flood):
        try:
            host.fdb("append", ifindex=index, lladdr=ZERO_MAC, dst=remote)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise netlink_failure(f"adding VXLAN remote {remote}", exc) from None


def bridge_index(host: IPRoute, bridge: str) -> int | None:
    return index_of(host, bridge)

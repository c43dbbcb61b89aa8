"""Interface builders: node bridges and segment uplinks, and the veth, TAP and macvlan of a pod.

Each builder makes one kernel object through pyroute2 and reports what it made, so the caller
can register the undo step right after it (ADD is transactional). Names of host-side links are
derived from the attachment (``ipamd.model.names``), so a DEL finds them with nothing but its record.
Removal functions treat "already gone" as success: DEL must be idempotent.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from cni.errors import InterfaceFailure, TryAgainLater
from ipamd.model.names import PREFIX, TapNames, uplink_name

GONE = (errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL)
RTN_UNICAST = 1
MAIN_TABLE = 254


def family_of(ip: str) -> int:
    """``AF_INET6`` or ``AF_INET`` for an address or CIDR, as pyroute2 tells them apart (never raises: a bad
    address is the kernel's to refuse, as a netlink error mapped like any other)."""
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def any_address(family: int) -> str:
    """What the kernel leaves out of a default route's RTA_DST, as the destination is written."""
    return "::" if family == socket.AF_INET6 else "0.0.0.0"


def dump_of(family: int, dump: Any, **filters: Any) -> list[Any]:
    """``dump(family=family, **filters)`` (``get_routes``, ``get_rules``), only that family's messages: a kernel
    booted without IPv6 answers an AF_INET6 route dump with every family's, a rule dump with EAFNOSUPPORT, and an
    IPv4-only node must still pass CHECK."""
    try:
        return [m for m in dump(family=family, **filters) if m["family"] == family]
    except NetlinkError as exc:
        if exc.code == errno.EAFNOSUPPORT:
            return []
        raise


def same_ip(text: str) -> str:
    """One spelling per address (IPv6 compressed), so a record's or a user's spelling compares with the kernel's;
    what is no address (a host name) is left as it is."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def _index(ipr: IPRoute, name: str) -> int | None:
    """The link's index by name: one RTM_GETLINK for that name (``link_lookup`` dumps every link)."""
    try:
        return int(ipr.link("get", ifname=name)[0]["index"])
    except NetlinkError as exc:
        if exc.code in GONE:
            return None
        raise


def generate_mac() -> str:
    """A random locally administered unicast MAC, known without asking the kernel afterwards."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def _fail(what: str, exc: NetlinkError) -> InterfaceFailure:
    return InterfaceFailure(f"{what} failed", f"{exc.code} {errno.errorcode.get(exc.code, '')}: {exc}")


def ensure_bridge(host: IPRoute, name: str, uplink: str = "") -> int:
    """Create the node bridge (up) unless it exists, and enslave the uplink; returns its index."""
    idx = _index(host, name)
    if idx is None:
        try:
            host.link("add", ifname=name, kind="bridge")
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # a concurrent ADD made it: fine
                raise _fail(f"creating bridge {name}", exc) from None
        idx = _index(host, name)
        if idx is None:
            raise TryAgainLater(f"bridge {name} vanished while being set up")
    host.link("set", index=idx, state="up")
    if uplink:
        up = _index(host, uplink)
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
    if _index(host, name) is not None:
        return name
    parent_idx = _index(host, parent)
    if parent_idx is None:
        raise InterfaceFailure(f"parent interface {parent} for VLAN {vlan_id} does not exist", parent)
    try:
        host.link("add", **vlan_spec(parent_idx, name, vlan_id))
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise _fail(f"creating VLAN {vlan_id} on {parent} (does the kernel have 802.1q?)", exc) from None
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
    idx = _index(host, name)
    if idx is None:
        under = _index(host, underlay) if underlay else None
        if underlay and under is None:
            raise InterfaceFailure(f"underlay interface {underlay} for VNI {vni} does not exist", underlay)
        try:
            host.link("add", **vxlan_spec(name, vni, under, port, group, vxlan_local(local, group, remotes)))
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _fail(f"creating VXLAN {vni}", exc) from None
        idx = _index(host, name)
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
                raise _fail(f"adding VXLAN remote {remote}", exc) from None
    return name


@dataclass(frozen=True, slots=True)
class PodLink:
    name: str
    mac: str
    host_link: str = ""
    index: int = 0  # in the pod's namespace


def _set_mac_up(ipr: IPRoute, name: str, mac: str, up: bool = True) -> PodLink:
    idx = _index(ipr, name)
    if idx is None:
        raise InterfaceFailure(f"interface {name} vanished while being set up", name)
    kwargs: dict[str, Any] = {"index": idx}
    if mac:
        kwargs["address"] = mac
    if up:
        kwargs["state"] = "up"
    ipr.link("set", **kwargs)
    return PodLink(name, mac or str(ipr.link("get", index=idx)[0].get_attr("IFLA_ADDRESS")), index=idx)


def _pod_name_free(pod: IPRoute, name: str) -> None:
    if _index(pod, name) is not None:
        raise InterfaceFailure(f"interface {name} already exists in the pod", name)


def pod_names_free(pod: IPRoute, *names: str) -> None:
    """Refuse names already taken in the pod, before a driver registers the undo that would delete them."""
    for name in names:
        _pod_name_free(pod, name)


def add_veth(host: IPRoute, pod: IPRoute, pod_fd: int, host_name: str, if_name: str, mac: str,
             bridge_index: int) -> PodLink:
    """A veth pair: ``if_name`` in the pod, ``host_name`` up on the node bridge.

    One RTM_NEWLINK makes both ends, the host end already enslaved and up and the pod end with its
    MAC; then the pod end is brought up. Each netlink round trip costs about a millisecond through
    pyroute2, so the common case is kept to three.
    """
    mac = mac or generate_mac()
    spec = {"ifname": host_name, "kind": "veth", "master": bridge_index, "state": "up",
            "peer": {"ifname": if_name, "net_ns_fd": pod_fd, "address": mac}}
    try:
        host.link("add", **spec)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise _fail(f"creating veth {if_name}", exc) from None
        if _index(host, host_name) is None:
            raise InterfaceFailure(f"interface {if_name} already exists in the pod", if_name) from None
        delete_link(host, host_name)  # left by a crashed ADD of this very attachment
        try:
            host.link("add", **spec)
        except NetlinkError as again:
            raise _fail(f"creating veth {if_name}", again) from None
    idx = _index(pod, if_name)
    if idx is None:
        raise InterfaceFailure(f"interface {if_name} vanished while being set up", if_name)
    try:
        pod.link("set", index=idx, state="up")
    except NetlinkError as exc:  # keep the CNI code (105) instead of an unexpected 999
        raise _fail(f"bringing up {if_name}", exc) from None
    return PodLink(if_name, mac, host_name, idx)


def add_tap(host: IPRoute, pod: IPRoute, pod_fd: int, host_name: str, names: TapNames, if_name: str, mac: str,
            bridge_index: int, uid: int | None, gid: int | None) -> PodLink:
    """A TAP ``if_name`` for a VM in the pod, bridged (inside the pod) to a veth into the node bridge."""
    _pod_name_free(pod, if_name)
    inner_bridge, inner_veth = names.inner_bridge, names.inner_veth
    for name in (inner_bridge, inner_veth):
        _pod_name_free(pod, name)
    if _index(host, host_name) is not None:
        delete_link(host, host_name)
    try:
        host.link("add", ifname=host_name, kind="veth", peer={"ifname": inner_veth, "net_ns_fd": pod_fd})
        host.link("set", index=_index(host, host_name), master=bridge_index, state="up")
        pod.link("add", ifname=inner_bridge, kind="bridge")
        br = _index(pod, inner_bridge)
        pod.link("set", index=br, state="up")
        pod.link("set", index=_index(pod, inner_veth), master=br, state="up")
        # TUNSETIFF creates the device in the caller's namespace, so make it on the node under a
        # temporary name, then move it into the pod under its own name.
        tmp = names.temporary
        tap: dict[str, Any] = {"ifname": tmp, "kind": "tuntap", "mode": "tap",
                               "ifr": {"no_pi": 1, "vnet_hdr": 1}}
        if uid is not None:
            tap["uid"] = uid
        if gid is not None:
            tap["gid"] = gid
        if _index(host, tmp) is not None:
            delete_link(host, tmp)
        host.link("add", **tap)
        host.link("set", index=_index(host, tmp), net_ns_fd=pod_fd, ifname=if_name)
        pod.link("set", index=_index(pod, if_name), master=br)
    except NetlinkError as exc:
        raise _fail(f"creating TAP {if_name}", exc) from None
    link = _set_mac_up(pod, if_name, mac or generate_mac())
    return PodLink(if_name, link.mac, host_name, link.index)


def add_macvlan(host: IPRoute, pod_fd: int, parent_index: int, if_name: str, mac: str) -> str:
    """A macvlan (bridge mode) on ``parent_index``, created straight into the pod with its MAC, down; returns the MAC.
    One request, made or not: the caller registers its undo, then brings it up (``bring_up``), which can fail (a MAC
    another macvlan on the bridge has: EADDRINUSE). An EEXIST is someone else's link, so it is refused, not taken."""
    mac = mac or generate_mac()
    try:
        host.link("add", ifname=if_name, kind="macvlan", link=parent_index, macvlan_mode="bridge",
                  net_ns_fd=pod_fd, address=mac)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            raise InterfaceFailure(f"interface {if_name} already exists in the pod", if_name) from None
        raise _fail(f"creating macvlan {if_name}", exc) from None
    return mac


def bring_up(ipr: IPRoute, name: str) -> int:
    """A link up by name; returns its index."""
    idx = _index(ipr, name)
    if idx is None:
        raise InterfaceFailure(f"interface {name} vanished while being set up", name)
    try:
        ipr.link("set", index=idx, state="up")
    except NetlinkError as exc:  # keep the CNI code (105) instead of an unexpected 999
        raise _fail(f"bringing up {name}", exc) from None
    return idx


def address_request(cidr: str) -> dict[str, Any]:
    """The RTM_NEWADDR arguments for ``cidr`` (either family). IPv6 goes with IFA_F_NODAD (pyroute2 sends ``flags``
    as IFA_FLAGS): duplicate address detection would keep the address tentative for 1-2 s (no source address, a
    prefsrc route refused: a pod's 20 ms start would take a second), and the pool has already made it unique."""
    iface = ipaddress.ip_interface(cidr)
    request: dict[str, Any] = {"address": str(iface.ip), "prefixlen": iface.network.prefixlen}
    if iface.version == 6:
        request["flags"] = IFA_F_NODAD
    return request


def configure_addresses(pod: IPRoute, idx: int, if_name: str, addresses: Iterable[str],
                        routes: Iterable[tuple[str, str]]) -> None:
    """Put ``addresses`` (CIDR, either family) on the interface and add ``routes`` (destination, via; the family
    is the destination's)."""
    try:
        for cidr in addresses:
            pod.addr("add", index=idx, **address_request(cidr))
    except NetlinkError as exc:
        raise _fail(f"configuring {if_name}", exc) from None
    for dst, via in routes:
        try:
            pod.route("add", dst=dst, gateway=via, oif=idx)
        except NetlinkError as exc:
            # two interfaces on one pool bring the same route: the first one carries it
            if exc.code != errno.EEXIST:
                raise _fail(f"adding route {dst} via {via} on {if_name}", exc) from None


def set_default_route(pod: IPRoute, if_name: str, gateways: Iterable[str]) -> list[tuple[str, str]]:
    """Make ``if_name`` carry the pod's default route(s) through ``gateways``: every other default route of
    the same family goes (NPWG ``default-route``: the cluster network's is replaced). Returns the routes
    added, as (destination, gateway), for the undo."""
    idx = _index(pod, if_name)
    if idx is None:
        raise InterfaceFailure(f"interface {if_name} is not in the pod, so it cannot take the default route", if_name)
    added: list[tuple[str, str]] = []
    try:
        for gw in gateways:
            family = family_of(gw)
            dst = f"{any_address(family)}/0"
            for route in pod.get_routes(family=family, dst_len=0, table=MAIN_TABLE):
                if route.get_attr("RTA_DST") is None:
                    pod.route("del", dst=dst, oif=route.get_attr("RTA_OIF"), gateway=route.get_attr("RTA_GATEWAY"))
            pod.route("add", dst=dst, gateway=gw, oif=idx)
            added.append((dst, gw))
    except NetlinkError as exc:
        raise _fail(f"setting the default route via {', '.join(gateways)} on {if_name}", exc) from None
    return added


def delete_routes(pod: IPRoute, routes: Iterable[tuple[str, str]]) -> None:
    for dst, gw in routes:
        try:
            pod.route("del", dst=dst, gateway=gw)
        except NetlinkError as exc:
            if exc.code not in GONE + (errno.ESRCH,):
                raise


def set_down(ipr: IPRoute, name: str) -> bool:
    """A link down by name (one request); False when it is gone."""
    try:
        ipr.link("set", ifname=name, state="down")
    except NetlinkError as exc:
        if exc.code in GONE:
            return False
        raise
    return True


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Remove a link by name (the kernel resolves it: one round trip); False when already gone."""
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as exc:
        if exc.code in GONE:
            return False
        raise
    return True


#: The link group a DEL moves the links it removes into, so that one request removes them all: the kernel waits for
#: RCU grace periods under its RTNL lock once per removal request, not once per link (measured on this class of
#: machine: 15.5 ms to delete one veth pair, 22 ms to delete ten by their group).
DOOMED_GROUP = 0x504C5844  # "PLXD"


def doom_link(ipr: IPRoute, name: str) -> bool:
    """Put a link in ``DOOMED_GROUP`` for ``delete_doomed`` (one request, no RCU wait); False when it is gone."""
    try:
        ipr.link("set", ifname=name, group=DOOMED_GROUP)
    except NetlinkError as exc:
        if exc.code in GONE:
            return False
        raise
    return True


def delete_doomed(ipr: IPRoute) -> None:
    """Remove every doomed link of the namespace in one request. Another DEL's links may go with ours (doomed too);
    ours may have gone with another's request, and then the group is empty."""
    try:
        ipr.link("del", group=DOOMED_GROUP)
    except NetlinkError as exc:
        if exc.code not in GONE:
            raise


def bridge_index(host: IPRoute, bridge: str) -> int | None:
    return _index(host, bridge)


def bridge_ports(host: IPRoute, bridge: str) -> list[str]:
    idx = _index(host, bridge)
    if idx is None:
        return []
    return [link.get_attr("IFLA_IFNAME") for link in host.get_links() if link.get_attr("IFLA_MASTER") == idx]


def _listed_address(msg: Any) -> str | None:
    """An address as CIDR, or None for the IPv6 link-local one the kernel gives every link by itself."""
    ip = msg.get_attr("IFA_ADDRESS")
    if msg["family"] == socket.AF_INET6 and ipaddress.ip_address(ip).is_link_local:
        return None
    return f"{ip}/{msg['prefixlen']}"


def _gateway_route(msg: Any) -> tuple[str, str] | None:
    """A unicast route through a gateway as (destination/len, via), a default one too; None for the kernel's own
    (connected, fe80::/64, local, multicast), which have no gateway."""
    via = msg.get_attr("RTA_GATEWAY")
    if msg["type"] != RTN_UNICAST or not via:
        return None
    return f"{msg.get_attr('RTA_DST') or any_address(msg['family'])}/{msg['dst_len']}", via


def link_state(ipr: IPRoute, name: str) -> dict[str, Any] | None:
    """Name, MAC, operstate, addresses (CIDR, both families) and routes through a gateway of one link in the main
    table (where a pool's routes go; policy routing has ``policy_state``), for CHECK and tests."""
    idx = _index(ipr, name)
    if idx is None:
        return None
    link = ipr.link("get", index=idx)[0]
    addrs = [a for a in map(_listed_address, ipr.get_addr(index=idx)) if a]
    routes = [r for family in (socket.AF_INET, socket.AF_INET6)
              for r in map(_gateway_route, dump_of(family, ipr.get_routes, oif=idx, table=MAIN_TABLE)) if r]
    info = link.get_attr("IFLA_LINKINFO")
    return {
        "name": name, "mac": link.get_attr("IFLA_ADDRESS"), "up": bool(link["flags"] & 1),
        "addresses": addrs, "routes": routes, "kind": info.get_attr("IFLA_INFO_KIND") if info else "",
    }

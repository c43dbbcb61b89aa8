"""Interface builders: the veth, TAP and macvlan of a pod (the segment's bridge and uplinks: ``segment_links``).

Each builder makes one kernel object through pyroute2 and reports what it made, so the caller
can register the undo step right after it (ADD is transactional). Names of host-side links are
derived from the attachment (``ipamd.model.names``), so a DEL finds them with nothing but its record.
Removal functions treat "already gone" as success: DEL must be idempotent.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD
from pyroute2.netlink.rtnl.ndmsg import flags as ntf_flags
from pyroute2.netlink.rtnl.ndmsg import states as nud_states

from cni.errors import InterfaceFailure, InvalidConfig
from ipamd.netlink import sysctl

log = logging.getLogger(__name__)
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


def index_of(ipr: IPRoute, name: str) -> int | None:
    """The link's index by name: one RTM_GETLINK for that name (``link_lookup`` dumps every link)."""
    try:
        return int(ipr.link("get", ifname=name)[0]["index"])
    except NetlinkError as exc:
        if exc.code in GONE:
            return None
        raise


def mtu_of(ipr: IPRoute, index: int) -> int:
    """The link's MTU: a segment's bridge has the smallest of its ports' (its uplink's), which a pod's interface on
    it must not exceed, or full-size frames are dropped at the uplink with no ICMP to say so (it is L2). A bridge
    gone is an ``InterfaceFailure``, after which the caller may make it again and build once more."""
    try:
        return int(ipr.link("get", index=index)[0].get_attr("IFLA_MTU"))
    except NetlinkError as exc:
        raise netlink_failure("reading the MTU of the segment bridge", exc) from None


def generate_mac() -> str:
    """A random locally administered unicast MAC, known without asking the kernel afterwards."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def netlink_failure(what: str, exc: NetlinkError) -> InterfaceFailure:
    return InterfaceFailure(f"{what} failed", f"{exc.code} {errno.errorcode.get(exc.code, '')}: {exc}")


@dataclass(frozen=True, slots=True)
class PodLink:
    name: str
    mac: str
    host_link: str = ""
    index: int = 0  # in the pod's namespace


def pod_name_free(pod: IPRoute, name: str) -> None:
    if index_of(pod, name) is not None:
        raise InterfaceFailure(f"interface {name} already exists in the pod", name)


def pod_names_free(pod: IPRoute, *names: str) -> None:
    """Refuse names already taken in the pod, before a driver registers the undo that would delete them."""
    for name in names:
        pod_name_free(pod, name)


def add_veth_pair(host: IPRoute, spec: dict[str, Any]) -> None:
    """Both ends of a veth in one RTM_NEWLINK (``spec``: the node end, its ``peer`` in the pod). A node end of that
    name is one a crashed ADD of this very attachment left (its name is derived from it): it is replaced. The pod
    end's name taken in the pod is refused."""
    host_name, pod_name = spec["ifname"], spec["peer"]["ifname"]
    try:
        host.link("add", **spec)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise netlink_failure(f"creating veth {pod_name}", exc) from None
        if index_of(host, host_name) is None:
            raise InterfaceFailure(f"interface {pod_name} already exists in the pod", pod_name) from None
        delete_link(host, host_name)
        try:
            host.link("add", **spec)
        except NetlinkError as again:
            raise netlink_failure(f"creating veth {pod_name}", again) from None


def add_veth(host: IPRoute, pod: IPRoute, pod_fd: int, host_name: str, if_name: str, mac: str,
             bridge_index: int, mtu: int | None = None) -> PodLink:
    """A veth pair: ``if_name`` in the pod, ``host_name`` up on the node bridge, both ends with the bridge's MTU.

    One RTM_NEWLINK makes both ends, the host end already enslaved and up and the pod end with its
    MAC and MTU; router advertisements are turned off on the pod end, then it is brought up. Each
    netlink round trip costs about a millisecond through pyroute2, so the common case is kept to four.
    """
    mac = mac or generate_mac()
    mtu = mtu or mtu_of(host, bridge_index)  # known by the segments service, or read here
    add_veth_pair(host, {"ifname": host_name, "kind": "veth", "master": bridge_index, "state": "up", "mtu": mtu,
                         "peer": {"ifname": if_name, "net_ns_fd": pod_fd, "address": mac, "mtu": mtu}})
    idx = index_of(pod, if_name)
    if idx is None:
        raise InterfaceFailure(f"interface {if_name} vanished while being set up", if_name)
    ignore_router_advertisements(pod_fd, if_name)
    try:
        pod.link("set", index=idx, state="up")
    except NetlinkError as exc:  # keep the CNI code (105) instead of an unexpected 999
        raise netlink_failure(f"bringing up {if_name}", exc) from None
    return PodLink(if_name, mac, host_name, idx)


def ignore_router_advertisements(pod_fd: int, if_name: str) -> None:
    """``accept_ra=0`` on a pod interface, before it is up: Plexus gives it its addresses and routes, and any
    neighbour on the segment sending a Router Advertisement would otherwise give the pod an address no pool leased
    and an IPv6 default route through itself (SLAAC needs an accepted RA, so ``autoconf`` need not be touched). A
    kernel without IPv6 has nothing to turn off. One write on a throwaway thread in the pod (about 0.1 ms)."""
    try:
        sysctl.set_conf(pod_fd, socket.AF_INET6, if_name, "accept_ra", "0")
    except OSError as exc:
        raise InterfaceFailure(f"turning off router advertisements on {if_name} failed", str(exc)) from None


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
        raise netlink_failure(f"creating macvlan {if_name}", exc) from None
    return mac


#: A static entry on the bridge device itself (``bridge fdb add MAC dev BR self local``): frames to the MAC are for
#: the bridge's own stack, where a macvlan on the bridge picks them up. Spelt out: pyroute2 fills them in for "add"
#: and "del" only, not "replace".
LOCAL_FDB = {"state": nud_states["permanent"], "flags": ntf_flags["self"]}


def add_local_mac(host: IPRoute, bridge_index: int, mac: str) -> None:
    """Make the bridge deliver frames for ``mac`` to itself: a macvlan on the bridge sends through the bridge device,
    which learns no MAC from what it sends, so without this entry every unicast frame to the macvlan is unknown
    unicast, flooded to every port of the segment (other pods see it). Replaced when there: one request, and an
    entry a crashed ADD left is taken over."""
    try:
        host.fdb("replace", ifindex=bridge_index, lladdr=mac, **LOCAL_FDB)
    except NetlinkError as exc:
        raise netlink_failure(f"adding {mac} to the forwarding database of the bridge", exc) from None


def delete_local_mac(host: IPRoute, bridge_index: int, mac: str) -> bool:
    """Remove ``add_local_mac``'s entry; False when it (or the bridge) is gone already."""
    try:
        host.fdb("del", ifindex=bridge_index, lladdr=mac, **LOCAL_FDB)
    except NetlinkError as exc:
        if exc.code in GONE:
            return False
        raise
    return True


def forget_local_mac(host: IPRoute, bridge: str, mac: str) -> bool:
    """``delete_local_mac`` by the bridge's name (DEL has the record alone); False when either is gone."""
    idx = index_of(host, bridge) if bridge and mac else None
    return idx is not None and delete_local_mac(host, idx, mac)


def bring_up(ipr: IPRoute, name: str) -> int:
    """A link up by name; returns its index."""
    idx = index_of(ipr, name)
    if idx is None:
        raise InterfaceFailure(f"interface {name} vanished while being set up", name)
    try:
        ipr.link("set", index=idx, state="up")
    except NetlinkError as exc:  # keep the CNI code (105) instead of an unexpected 999
        raise netlink_failure(f"bringing up {name}", exc) from None
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
                        routes: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Put ``addresses`` (CIDR, either family) on the interface and add ``routes`` (destination, via; the family
    is the destination's: a pool's routes, into the main table). Returns the routes left out: a pool's default route
    where the pod has its own (``add_pool_route``), which the pod then does not have, so nothing may name it."""
    for cidr in addresses:
        add_address(pod, idx, if_name, cidr)
    return [(dst, via) for dst, via in routes if not add_pool_route(pod, idx, if_name, dst, via)]


def add_address(pod: IPRoute, idx: int, if_name: str, cidr: str) -> None:
    """One address on the interface. A link born with IPv6 off (the pod's namespace has ``default.disable_ipv6=1``:
    a runtime, or a node booted with IPv6 switched off, makes it so) refuses an IPv6 address with EACCES: IPv6 is
    switched on for it and ``lo`` and the address added again, as the reference plugins' ``ipam.ConfigureIface``
    does. On that refusal only: the common case costs nothing more."""
    request = address_request(cidr)
    try:
        pod.addr("add", index=idx, **request)
        return
    except NetlinkError as exc:
        if exc.code != errno.EACCES or family_of(cidr) != socket.AF_INET6:
            raise netlink_failure(f"configuring {if_name}", exc) from None
    enable_ipv6(pod, if_name)
    try:
        pod.addr("add", index=idx, **request)
    except NetlinkError as exc:
        raise netlink_failure(f"configuring {if_name}", exc) from None


def enable_ipv6(pod: IPRoute, if_name: str) -> None:
    """``disable_ipv6=0`` on the interface and on ``lo`` (through which the pod reaches its own addresses), in the
    namespace of the pod's netlink socket: the one the interface is in."""
    try:
        fd = sysctl.netns_of(pod)
        try:
            for name in ("lo", if_name):
                sysctl.set_conf(fd, socket.AF_INET6, name, "disable_ipv6", "0")
        finally:
            os.close(fd)
    except OSError as exc:
        raise InterfaceFailure(f"switching IPv6 on for {if_name} failed", str(exc)) from None


def add_pool_route(pod: IPRoute, idx: int, if_name: str, dst: str, via: str) -> bool:
    """A pool's route on the interface, in the main table, which holds one route per destination (and metric). One
    the pod has already (EEXIST) is fine where ``carried`` says the pod routes ``dst`` as asked: through ``via`` on
    another of its links (two interfaces on one pool: the first carries it), on a link with no gateway (an IPv4
    connected route: an interface of the pod is on that subnet, and was there first), or, for a default route, the
    pod's own default route (the cluster network's, which a pool's route does not take over: users' IPv4
    ``0.0.0.0/0`` pool routes have always left it; NPWG ``default-route`` or the network's ``routingTable`` is the
    way). Such a route is left as it is, and said in the log. Any other (another gateway) is refused, naming both
    routes: the pod would route the destination elsewhere than the pool says, and CHECK would fail for ever. Returns
    False for a default route left to the pod's own (the pod does not have it: nothing may name it), else True."""
    try:
        pod.route("add", dst=dst, gateway=via, oif=idx)
        return True
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise netlink_failure(f"adding route {dst} via {via} on {if_name}", exc) from None
    there = main_routes(pod, family_of(dst))
    if not carried(dst, via, there):
        raise InvalidConfig(f"route {dst} via {via} of {if_name}, a route of its pool, cannot be added: the pod routes "
                            f"{dst} {_described(pod, dst, there)} already (give one of the networks a routingTable "
                            "to route it in its own table)", "spec.pools[].routes")
    if any(route_key(d, v) == route_key(dst, via) for d, v, _ in there):
        return True  # another interface of the pod on the pool carries it
    log.warning("route %s via %s of %s (a route of its pool) not added: the pod's route %s %s stays",
                dst, via, if_name, dst, _described(pod, dst, there))
    return not is_default(dst)  # else a connected route to ``dst``: the pod is on that subnet, and reaches it


def is_default(dst: str) -> bool:
    """Whether a route's destination is a default route's (``0.0.0.0/0``, ``::/0``)."""
    return route_key(dst, "")[0].endswith("/0")


def route_key(dst: str, via: str) -> tuple[str, str]:
    """A route as the kernel spells it (its destination's network, IPv6 compressed; "" for no gateway), so a record
    written ``2001:2:0:0::/64`` or with host bits set matches what netlink reports."""
    try:
        dst = str(ipaddress.ip_network(dst, strict=False))
    except ValueError:
        pass
    return dst, same_ip(via) if via else ""


def carried(dst: str, via: str, routes: Iterable[tuple[str, str, int]]) -> bool:
    """Whether a pool's route ``dst`` via ``via`` is the pod's as ADD leaves it, given the main table's unicast routes
    (``main_routes``'s: destination, gateway or "", link index or 0): a route to ``dst`` through ``via``, on whichever
    link (the reference plugins' CHECK looks for destination and gateway alike), one to ``dst`` on a single link with
    no gateway (a connected route: the pod is on that subnet), or, for a default route, any default route of its
    family. Not a route through another gateway, nor one with several next hops (multipath: no gateway, no link)."""
    want = route_key(dst, via)
    have = [(route_key(d, v), oif) for d, v, oif in routes]
    on_a_link = {key[0] for key, oif in have if not key[1] and oif}
    return (any(key == want for key, _ in have) or want[0] in on_a_link or
            (is_default(want[0]) and any(key[0] == want[0] for key, _ in have)))


def main_routes(ipr: IPRoute, family: int) -> list[tuple[str, str, int]]:
    """The main table's unicast routes of ``family`` on every link: (destination/len, gateway or "" when it has no
    single one: a connected or multipath route, a nexthop object's, link index or 0)."""
    return [(f"{m.get_attr('RTA_DST') or any_address(family)}/{m['dst_len']}", m.get_attr("RTA_GATEWAY") or "",
             m.get_attr("RTA_OIF") or 0)
            for m in dump_of(family, ipr.get_routes, table=MAIN_TABLE) if m["type"] == RTN_UNICAST]


def _described(ipr: IPRoute, dst: str, routes: Iterable[tuple[str, str, int]]) -> str:
    """How the pod routes ``dst`` (for a message): "via G dev N" ("dev N" with no gateway), each such route."""
    key = route_key(dst, "")[0]
    said = [f"via {via} dev {_name_of(ipr, oif)}" if via else f"dev {_name_of(ipr, oif)}"
            for d, via, oif in routes if route_key(d, "")[0] == key]
    return ", ".join(said) or "otherwise"


def _name_of(ipr: IPRoute, index: int) -> str:
    if not index:
        return "(several)"
    try:
        return str(ipr.link("get", index=index)[0].get_attr("IFLA_IFNAME"))
    except NetlinkError:
        return f"#{index}"


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
    """Name, MAC, operstate, master (index, 0 when none), addresses (CIDR, both families) and routes through a
    gateway of one link in the main table (where a pool's routes go; policy routing has ``policy_state``), for CHECK
    and tests."""
    idx = index_of(ipr, name)
    if idx is None:
        return None
    link = ipr.link("get", index=idx)[0]
    addrs = [a for a in map(_listed_address, ipr.get_addr(index=idx)) if a]
    routes = [r for family in (socket.AF_INET, socket.AF_INET6)
              for r in map(_gateway_route, dump_of(family, ipr.get_routes, oif=idx, table=MAIN_TABLE)) if r]
    info = link.get_attr("IFLA_LINKINFO")
    return {
        "name": name, "mac": link.get_attr("IFLA_ADDRESS"), "up": bool(link["flags"] & 1),
        "master": link.get_attr("IFLA_MASTER") or 0, "addresses": addrs, "routes": routes,
        "kind": info.get_attr("IFLA_INFO_KIND") if info else "",
    }

"""What the drivers that build kernel links themselves (veth, TAP, macvlan) share: putting the leased
addresses and the pool's routes on the pod interface, their share of the CNI result, and CHECK."""

from __future__ import annotations

from typing import Any

from cni.types import Interface, IPConfig, Result, Route, cidr_of
from ipamd.netlink import links
from ipamd.store.records import BuiltInterface


def configure(pod: Any, index: int, iface: BuiltInterface) -> None:
    """The interface's leased addresses and their routes (once each), unless it leaves them to a guest."""
    if not iface.configure_ips or not iface.addresses:
        return
    routes = dict.fromkeys((r["destination"], r["via"]) for a in iface.addresses for r in a.get("routes", ()))
    links.configure_addresses(pod, index, iface.if_name,
                              [cidr_of(a["address"], a["network"]) for a in iface.addresses], routes)


def result(iface: BuiltInterface, mac: str, sandbox: str, host_side: tuple[Interface, ...] = ()) -> Result:
    """This interface's share of the CNI result: ``host_side`` links first, then the pod interface with
    its addresses and routes (none when the addresses are left to a guest)."""
    interfaces = host_side + (Interface(iface.if_name, mac, sandbox),)
    if not iface.configure_ips:
        return Result(interfaces)
    pod_index = len(interfaces) - 1
    ips = tuple(IPConfig(cidr_of(a["address"], a["network"]), pod_index) for a in iface.addresses)
    routes = tuple(dict.fromkeys(Route(r["destination"], r["via"]) for a in iface.addresses
                                 for r in a.get("routes", ())))
    return Result(interfaces, ips, routes)


def check(host: Any, pod: Any, iface: BuiltInterface) -> list[str]:
    """The pod interface exists, is up, has its MAC, addresses and routes; its host link exists."""
    problems: list[str] = []
    state = links.link_state(pod, iface.if_name)
    if state is None:
        problems.append(f"{iface.if_name} is missing")
    else:
        if iface.mac and state["mac"] != iface.mac:
            problems.append(f"{iface.if_name} has MAC {state['mac']}, expected {iface.mac}")
        if not state["up"]:
            problems.append(f"{iface.if_name} is down")
        if iface.configure_ips:
            for a in iface.addresses:
                cidr = cidr_of(a["address"], a["network"])
                if cidr not in state["addresses"]:
                    problems.append(f"{iface.if_name} lacks address {cidr}")
                for r in a.get("routes", ()):
                    if (r["destination"], r["via"]) not in state["routes"]:
                        problems.append(f"{iface.if_name} lacks route {r['destination']} via {r['via']}")
    if iface.host_link and links.link_state(host, iface.host_link) is None:
        problems.append(f"host link {iface.host_link} of {iface.if_name} is missing")
    return problems

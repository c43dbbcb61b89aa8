"""The pod's default route taken by one interface (NPWG ``default-route``), and given back on undo."""

from __future__ import annotations

import errno
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni.errors import InterfaceFailure
from ipamd.netlink.links import GONE, MAIN_TABLE, any_address, family_of, index_of, netlink_failure


def set_default_route(pod: IPRoute, if_name: str, gateways: Iterable[str]) -> list[tuple[str, str]]:
    """Make ``if_name`` carry the pod's default route(s) through ``gateways``: every other default route of
    the same family goes (NPWG ``default-route``: the cluster network's is replaced). Returns the routes
    added, as (destination, gateway), for the undo."""
    idx = index_of(pod, if_name)
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
        raise netlink_failure(f"setting the default route via {', '.join(gateways)} on {if_name}", exc) from None
    return added


def delete_routes(pod: IPRoute, routes: Iterable[tuple[str, str]]) -> None:
    for dst, gw in routes:
        try:
            pod.route("del", dst=dst, gateway=gw)
        except NetlinkError as exc:
            if exc.code not in GONE + (errno.ESRCH,):
                raise

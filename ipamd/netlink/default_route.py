"""The pod's default route taken by one interface (NPWG ``default-route``), and given back on undo and on DEL.

The routes it takes the place of (the cluster network's) are remembered with all that puts them back as they were
(metric, protocol, ``onlink``, preferred source, next hops, ...); the pod is never left without a default route
of the family: the new route replaces the old one of its metric in one request, the others go after it.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni.errors import InterfaceFailure
from ipamd.netlink.links import GONE, MAIN_TABLE, RTN_UNICAST, any_address, dump_of, family_of, index_of, netlink_failure

log = logging.getLogger(__name__)
ONLINK = 0x04  # RTNH_F_ONLINK: the gateway is on the link though no address of it says so (Calico's 169.254.1.1)
GIVEN_UP = GONE + (errno.ENETUNREACH, errno.EHOSTUNREACH)  # what cannot come back: its link or network is gone


@dataclass(frozen=True, slots=True)
class SavedRoute:
    """A default route of the main table as the kernel had it: what puts it back as it was."""

    family: int
    gateway: str | None = None
    oif: int | None = None
    priority: int | None = None  # None: the family's default metric
    proto: int = 0
    scope: int = 0
    type: int = RTN_UNICAST
    tos: int = 0
    flags: int = 0  # ONLINK only: the kernel's own flags (dead, linkdown) cannot be asked for
    prefsrc: str | None = None
    pref: int | None = None  # an IPv6 router preference
    nh_id: int | None = None  # a nexthop object: then it says gateway and link itself
    metrics: tuple[tuple[str, int], ...] = ()  # (RTAX name, value)
    multipath: tuple[tuple[str | None, int, int, int], ...] = ()  # (gateway, oif, hops, flags) per next hop

    @classmethod
    def of(cls, route: Any) -> SavedRoute:
        metrics = route.get_attr("RTA_METRICS")
        return cls(route["family"], route.get_attr("RTA_GATEWAY"), route.get_attr("RTA_OIF"),
                   route.get_attr("RTA_PRIORITY"), route["proto"], route["scope"], route["type"], route["tos"],
                   route["flags"] & ONLINK, route.get_attr("RTA_PREFSRC"), route.get_attr("RTA_PREF"),
                   route.get_attr("RTA_NH_ID"),
                   tuple((str(m[0]), int(m[1])) for m in metrics["attrs"]) if metrics else (),
                   tuple((hop.get_attr("RTA_GATEWAY"), hop["oif"], hop["hops"], hop["flags"] & ONLINK)
                         for hop in route.get_attr("RTA_MULTIPATH") or ()))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SavedRoute:
        return cls(**{**d, "metrics": tuple(tuple(m) for m in d.get("metrics") or ()),
                      "multipath": tuple(tuple(h) for h in d.get("multipath") or ())})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def through(self, gateway: str, oif: int) -> bool:
        """This is the route ``set_default_route`` adds (a single next hop)."""
        return not self.multipath and self.nh_id is None and self.gateway == gateway and self.oif == oif

    def request(self) -> dict[str, Any]:
        """pyroute2's ``route()`` arguments for this very route (None and "" are left out by pyroute2)."""
        req: dict[str, Any] = {
            "dst": f"{any_address(self.family)}/0", "family": self.family, "table": MAIN_TABLE, "tos": self.tos,
            "priority": self.priority, "proto": self.proto, "scope": self.scope, "type": self.type,
            "flags": self.flags, "prefsrc": self.prefsrc, "pref": self.pref}
        if self.metrics:
            req["metrics"] = dict(self.metrics)
        if self.nh_id is not None:
            return {**req, "nh_id": self.nh_id}
        if self.multipath:
            return {**req, "multipath": [{"gateway": gw, "oif": oif, "hops": hops, "flags": flags}
                                         for gw, oif, hops, flags in self.multipath]}
        return {**req, "gateway": self.gateway, "oif": self.oif}


@dataclass(frozen=True, slots=True)
class Taken:
    """A default route added (``dst`` through ``gateway``), with the routes of its family it took the place of."""

    dst: str
    gateway: str
    replaced: tuple[SavedRoute, ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Taken:
        return cls(d["dst"], d["gateway"], tuple(SavedRoute.from_dict(r) for r in d.get("replaced") or ()))

    def to_dict(self) -> dict[str, Any]:
        return {"dst": self.dst, "gateway": self.gateway, "replaced": [r.to_dict() for r in self.replaced]}


def defaults(pod: IPRoute, family: int) -> list[SavedRoute]:
    """The pod's default routes of ``family`` in the main table."""
    return [SavedRoute.of(r) for r in dump_of(family, pod.get_routes, dst_len=0, table=MAIN_TABLE)
            if r.get_attr("RTA_DST") is None]


def set_default_route(pod: IPRoute, if_name: str, gateways: Iterable[str]) -> list[Taken]:
    """Make ``if_name`` carry the pod's default route(s) through ``gateways``: every other default route of the
    same family goes (NPWG ``default-route``: the cluster network's is replaced). A route the kernel refuses (its
    gateway not on the link), or one pyroute2 cannot even send (a gateway with a zone id, ``fe80::1%net1``), changes
    nothing, and what was done for another gateway is given back. Returns the routes added, each with those it
    replaced, for ``give_back``."""
    idx = index_of(pod, if_name)
    if idx is None:
        raise InterfaceFailure(f"interface {if_name} is not in the pod, so it cannot take the default route", if_name)
    taken: list[Taken] = []
    for gw in gateways:
        try:
            _take(pod, idx, gw, taken)
        except (NetlinkError, OSError, ValueError) as exc:  # OSError, ValueError: pyroute2 cannot encode it (a zone id)
            try:
                give_back(pod, if_name, taken)
            except (InterfaceFailure, NetlinkError) as failed:  # logged: the refusal is the error to report
                log.warning("giving the pod's default route back after %s refused it: %s", if_name, failed)
            raise _refused(f"setting the default route via {gw} on {if_name}", exc) from None
    return taken


def _refused(what: str, exc: Exception) -> InterfaceFailure:
    """The kernel's refusal as any netlink failure is told; a gateway pyroute2 could not even send, naming it."""
    if isinstance(exc, NetlinkError):
        return netlink_failure(what, exc)
    return InterfaceFailure(f"{what} failed", f"not a gateway address netlink can carry: {exc}")


def _take(pod: IPRoute, idx: int, gw: str, taken: list[Taken]) -> None:
    """The route through ``gw`` on link ``idx`` in place of the old ones: it replaces the one of its metric in the
    same request (the pod never lacks a default route), then the others (other metrics) go. Recorded on ``taken``
    as soon as it is there."""
    family = family_of(gw)
    dst = f"{any_address(family)}/0"
    before = defaults(pod, family)
    pod.route("replace", dst=dst, gateway=gw, oif=idx)
    taken.append(Taken(dst, gw, tuple(before)))
    for route in before:
        if not route.through(gw, idx):
            _delete(pod, route.request())  # the one replaced is gone already


def give_back(pod: IPRoute, if_name: str, taken: Iterable[Taken]) -> None:
    """Undo ``set_default_route``: each route added goes, and those it replaced come back as they were, the last
    taken first."""
    _give_back(pod, if_name, taken, lambda family: True)


def give_back_after_del(pod: IPRoute, if_name: str, taken: Iterable[Taken]) -> None:
    """The DEL of the interface that took the default route: the routes it replaced come back, but only to a family
    the pod has no default route of (another interface that took it since keeps it), and not what cannot (its link
    is gone as well). Idempotent: a second DEL finds the routes back and changes nothing."""
    _give_back(pod, if_name, taken, lambda family: not defaults(pod, family))


def _give_back(pod: IPRoute, if_name: str, taken: Iterable[Taken], wanted: Callable[[int], bool]) -> None:
    """Every step is tried; the first failure is raised after."""
    idx = index_of(pod, if_name)  # None: gone, and its routes with it
    failed: list[NetlinkError] = []
    for route in reversed(list(taken)):
        try:
            if idx is not None:
                _delete(pod, {"dst": route.dst, "gateway": route.gateway, "oif": idx})
            if wanted(family_of(route.gateway)):
                failed += _put_back(pod, route.replaced)
        except NetlinkError as exc:
            failed.append(exc)
    if failed:
        raise netlink_failure(f"giving the pod's default route back from {if_name}", failed[0])


def _put_back(pod: IPRoute, routes: Iterable[SavedRoute]) -> list[NetlinkError]:
    """Add each route again; one there already (EEXIST) or that cannot come back (``GIVEN_UP``) is no failure."""
    failed: list[NetlinkError] = []
    for route in routes:
        try:
            pod.route("add", **route.request())
        except NetlinkError as exc:
            if exc.code != errno.EEXIST and exc.code not in GIVEN_UP:
                failed.append(exc)
    return failed


def _delete(pod: IPRoute, request: dict[str, Any]) -> None:
    try:
        pod.route("del", **request)
    except NetlinkError as exc:
        if exc.code not in GONE + (errno.ESRCH,):
            raise

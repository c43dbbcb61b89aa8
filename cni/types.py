"""CNI wire types: the result, its parts, and conversion between spec versions.

Handlers always build the current (1.1.0) ``Result``; conversion to the version the caller
asked for happens once, at the output edge (``Result.to_dict(version)``). Results of
0.3.x/0.4.0 differ from 1.x only by the ``version`` key on each IP. Keys these types do not name
(an interface's ``socketPath`` or ``pciID``, a route's ``mtu`` or ``table``) are kept in ``extra``
and written back, so a delegated plugin's result passes through whole.

Imported by the daemon, which builds every result with it and reads ``prevResult`` through it; the
exec'd shim does not import it (it passes the daemon's answer through as bytes). Standard library
only, as all of ``cni/``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any

from cni.errors import DecodingFailure
from cni.version import CURRENT_VERSION, version_tuple


def _extra(d: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in known}


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.mac:
            out["mac"] = self.mac
        if self.mtu:
            out["mtu"] = self.mtu
        if self.sandbox:
            out["sandbox"] = self.sandbox
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Interface:
        return cls(str(d["name"]), str(d.get("mac", "")), str(d.get("sandbox", "")), int(d.get("mtu", 0)),
                   _extra(d, ("name", "mac", "sandbox", "mtu")))


@dataclass(frozen=True, slots=True)
class IPConfig:
    address: str  # CIDR form, e.g. "198.18.0.5/24"
    interface: int | None = None
    gateway: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if version_tuple(version) < (1, 0, 0):
            out["version"] = "6" if ":" in self.address else "4"
        out["address"] = self.address
        if self.gateway:
            out["gateway"] = self.gateway
        if self.interface is not None:
            out["interface"] = self.interface
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IPConfig:
        iface = d.get("interface")
        address = str(d["address"])
        if "/" not in address:
            raise ValueError(f"address {address!r} is not in CIDR form")
        ipaddress.ip_interface(address)  # ValueError when it is not an address
        return cls(address, None if iface is None else int(iface), str(d.get("gateway", "")),
                   _extra(d, ("address", "interface", "gateway", "version")))


@dataclass(frozen=True, slots=True)
class Route:
    dst: str
    gw: str = ""
    extra: tuple[tuple[str, Any], ...] = ()  # a tuple, not a dict: routes are deduplicated as dict keys

    def to_dict(self) -> dict[str, Any]:
        out = {"dst": self.dst, "gw": self.gw} if self.gw else {"dst": self.dst}
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Route:
        return cls(str(d["dst"]), str(d.get("gw", "")), tuple(_extra(d, ("dst", "gw")).items()))


@dataclass(frozen=True, slots=True)
class Result:
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, version: str = CURRENT_VERSION) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version}
        if self.interfaces:
            out["interfaces"] = [i.to_dict() for i in self.interfaces]
        if self.ips:
            out["ips"] = [ip.to_dict(version) for ip in self.ips]
        if self.routes:
            out["routes"] = [r.to_dict() for r in self.routes]
        out["dns"] = dict(self.dns)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        """Read a result of any supported version (e.g. a ``prevResult``); one of 0.1.0 or 0.2.0 (``ip4``, ``ip6``)
        converted as libcni converts it: its addresses and routes, on no interface."""
        if not isinstance(d, dict):  # a list or string may hold "ip4" too
            raise DecodingFailure("prevResult is not a CNI result", f"prevResult: must be a JSON object, not "
                                  f"{type(d).__name__}")
        try:
            if ("ip4" in d or "ip6" in d) and "ips" not in d:
                d = _from_020(d)
            return cls(
                tuple(Interface.from_dict(i) for i in d.get("interfaces") or ()),
                tuple(IPConfig.from_dict(ip) for ip in d.get("ips") or ()),
                tuple(Route.from_dict(r) for r in d.get("routes") or ()),
                dict(d.get("dns") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DecodingFailure("prevResult is not a CNI result", f"prevResult: {exc}") from None

    def merged_after(self, prev: Result | None) -> Result:
        """Append this result to ``prev`` (chaining), renumbering our interface indexes."""
        if prev is None:
            return self
        base = len(prev.interfaces)
        ips = tuple(replace(ip, interface=None if ip.interface is None else ip.interface + base) for ip in self.ips)
        return Result(
            prev.interfaces + self.interfaces, prev.ips + ips, prev.routes + self.routes,
            prev.dns or self.dns,
        )


def _from_020(d: dict[str, Any]) -> dict[str, Any]:
    """A 0.1.0/0.2.0 result in the shape of later ones (``ip4``/``ip6`` → ``ips`` and ``routes``)."""
    ips, routes = [], list(d.get("routes") or [])
    for key in ("ip4", "ip6"):
        section = d.get(key)
        if not isinstance(section, dict):
            continue
        ips.append({"address": section.get("ip"), **({"gateway": section["gateway"]} if section.get("gateway") else {})})
        routes += section.get("routes") or []
    return {**{k: v for k, v in d.items() if k not in ("ip4", "ip6")}, "ips": ips, "routes": routes}


def cidr_of(address: str, network: str) -> str:
    """``198.18.0.5`` in ``198.18.0.0/24`` → ``198.18.0.5/24``."""
    return f"{address}/{ipaddress.ip_network(network).prefixlen}"

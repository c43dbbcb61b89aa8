"""The Network Plumbing WG's pod annotations (the Multus dialect): parse ``k8s.v1.cni.cncf.io/networks``,
render ``k8s.v1.cni.cncf.io/network-status``. Pure.

The selection annotation comes in two forms (NPWG §4): a comma list (``a, other-ns/b, c@net5``) and a JSON
list of objects with every key of the spec. An annotation that breaks a rule is refused whole, with
``AnnotationInvalid`` naming the element and the key (``k8s.v1.cni.cncf.io/networks[1].default-route``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cni.errors import AnnotationInvalid
from ipamd.model.annotations import MAX_ANNOTATION_BYTES, NetworkSelection, check_ifname, check_mac, json_list
from ipamd.model.objects import parse_address

NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
NETWORK_STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"
DEFAULT_NETWORK_ANNOTATION = "v1.multus-cni.io/default-network"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: The 6-byte MAC forms Go's ``net.ParseMAC`` reads besides colons (Multus checks ``mac`` with it, tuning applies it
#: so): hyphens, and Cisco's dotted groups of four.
_GO_MACS = (re.compile(r"^[0-9a-fA-F]{2}(-[0-9a-fA-F]{2}){5}$"), re.compile(r"^[0-9a-fA-F]{4}(\.[0-9a-fA-F]{4}){2}$"))
#: The CNI_IFNAME every Kubernetes runtime (containerd, CRI-O) gives the pod's cluster-network interface: what the
#: webhook, which sees no ADD, holds the pod's interface names against.
RUNTIME_IFNAME = "eth0"
#: Keys of a JSON element, and the CNI ``runtimeConfig`` key each turns into (None: not a runtimeConfig key).
KEYS: dict[str, str | None] = {
    "name": None, "namespace": None, "interface": None, "ips": "ips", "mac": "mac", "default-route": None,
    "cni-args": None, "portMappings": "portMappings", "bandwidth": "bandwidth", "infiniband-guid": "infinibandGUID",
    "deviceID": "deviceID", "ipam-claim-reference": None, "interfaceRequest": None,
}


@dataclass(frozen=True, slots=True)
class NetworkElement:
    """One element of ``k8s.v1.cni.cncf.io/networks``, checked."""

    name: str
    namespace: str
    where: str  # the element, for messages: k8s.v1.cni.cncf.io/networks[0]
    interface: str = ""  # "" until the pod's interface names are handed out
    ips: tuple[str, ...] = ()
    mac: str = ""
    default_route: tuple[str, ...] = ()
    cni_args: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)  # capability values for runtimeConfig (ips, mac, ...)
    ipam_claim: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _label(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value) or len(value) > 63:
        raise AnnotationInvalid(f"{where} {value!r} is not a DNS label", where)
    return value


def _ips(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AnnotationInvalid(f"{where} must be a list of addresses", where)
    for v in value:
        try:
            ipaddress.ip_interface(v)
        except ValueError:
            raise AnnotationInvalid(f"{where} {v!r} is not an IP address (or one with its prefix)", where) from None
        try:
            parse_address(v.partition("/")[0])  # the text itself: an interface's ``ip`` drops a zone (Multus refuses)
        except ValueError as exc:
            raise AnnotationInvalid(f"{where}: {exc}", where) from None
    return tuple(value)


def _gateways(value: Any, where: str) -> tuple[str, ...]:
    """``default-route``: gateway addresses, never with a prefix (a route's ``gw``)."""
    found = _ips(value, where)
    for v in found:
        if "/" in v:
            raise AnnotationInvalid(f"{where} {v!r} is a gateway address: give it without a prefix", where)
    return found


def _mac(value: Any, where: str) -> str:
    """``mac`` in any form Go reads as a 6-byte MAC (a pod that ran under Multus keeps working), in colon form."""
    if isinstance(value, str) and any(form.match(value) for form in _GO_MACS):
        digits = value.replace("-", "").replace(".", "")
        value = ":".join(digits[i:i + 2] for i in range(0, 12, 2))
    return check_mac(value, where)


def _typed(value: Any, typ: type, what: str, where: str) -> Any:
    if not isinstance(value, typ):
        raise AnnotationInvalid(f"{where} must be {what}", where)
    return value


def _element(i: int, item: Any, namespace: str) -> NetworkElement:
    where = f"{NETWORKS_ANNOTATION}[{i}]"
    if not isinstance(item, dict):
        raise AnnotationInvalid(f"{where} must be an object", where)
    for key in item:
        if key not in KEYS and "." not in key:  # reverse-DNS keys belong to other implementations (NPWG §4.1.2)
            raise AnnotationInvalid(f"{where}.{key} is not a key of the NPWG network selection", f"{where}.{key}")
    item = {key: value for key, value in item.items() if value is not None}  # null: the key's zero value, as in Go
    name = _label(item.get("name"), f"{where}.name")
    ns = _label(item["namespace"], f"{where}.namespace") if item.get("namespace") else namespace
    interface = item.get("interface") or item.get("interfaceRequest") or ""
    if interface:
        interface = check_ifname(interface, f"{where}.interface")
    ips = _ips(item["ips"], f"{where}.ips") if "ips" in item else ()
    mac = _mac(item["mac"], f"{where}.mac") if item.get("mac") else ""
    claim = _typed(item.get("ipam-claim-reference", ""), str, "a string", f"{where}.ipam-claim-reference")
    if ips and claim:
        raise AnnotationInvalid(f"{where}: ips and ipam-claim-reference exclude each other (NPWG §8)", f"{where}.ips")
    runtime: dict[str, Any] = {}
    for key, value in item.items():
        target = KEYS.get(key)
        if target is not None and value not in ([], "", {}, None):  # an empty one asks for nothing (as Multus)
            runtime[target] = value
    if ips:
        runtime["ips"] = list(ips)
    if mac:
        runtime["mac"] = mac
    for key, typ, what in (("portMappings", list, "a list"), ("bandwidth", dict, "an object"),
                           ("infiniband-guid", str, "a string"), ("deviceID", str, "a string")):
        if key in item:
            _typed(item[key], typ, what, f"{where}.{key}")
    return NetworkElement(
        name=name, namespace=ns, where=where, interface=interface, ips=ips, mac=mac,
        default_route=_gateways(item["default-route"], f"{where}.default-route") if "default-route" in item else (),
        cni_args=dict(_typed(item.get("cni-args") or {}, dict, "a map of CNI args", f"{where}.cni-args")),
        runtime=runtime, ipam_claim=claim,
    )


def _comma_element(i: int, text: str, namespace: str) -> NetworkElement:
    """``[namespace/]name[@interface]``, read as Multus reads it (``parsePodNetworkObjectText``): each part trimmed,
    an empty namespace the pod's, an empty interface the default ``net<N>``."""
    where = f"{NETWORKS_ANNOTATION}[{i}]"
    slashed = text.split("/")
    if len(slashed) > 2:
        raise AnnotationInvalid(f"{where} {text!r} is not namespace/name@interface", where)
    ns, rest = (slashed[0].strip(), slashed[1]) if len(slashed) == 2 else ("", text)
    at = rest.split("@")
    if len(at) > 2:
        raise AnnotationInvalid(f"{where} {text!r} is not namespace/name@interface", f"{where}.interface")
    name, interface = at[0].strip(), at[1].strip() if len(at) == 2 else ""
    if interface:
        interface = check_ifname(interface, f"{where}.interface")
    return NetworkElement(_label(name, f"{where}.name"), _label(ns or namespace, f"{where}.namespace"), where,
                          interface)


def parse_networks(text: str | None, namespace: str) -> list[NetworkElement]:
    """``k8s.v1.cni.cncf.io/networks`` → the pod's elements; the JSON form when the text holds ``[``,
    ``{`` or ``"`` (as Multus decides), else the comma form."""
    if text is None or not text.strip():
        return []
    if any(c in text for c in '[{"'):
        elements = [_element(i, item, namespace) for i, item in enumerate(json_list(text, NETWORKS_ANNOTATION))]
    elif len(text.encode()) > MAX_ANNOTATION_BYTES:
        raise AnnotationInvalid(f"{NETWORKS_ANNOTATION} is larger than {MAX_ANNOTATION_BYTES} bytes", NETWORKS_ANNOTATION)
    else:
        parts = [p.strip() for p in text.split(",")]
        elements = [_comma_element(i, p, namespace) for i, p in enumerate(parts)]
    routed = [e.where for e in elements if e.default_route]
    if len(routed) > 1:
        raise AnnotationInvalid(f"{routed[1]}.default-route: only one network may carry the default route "
                                f"({routed[0]} does already)", f"{routed[1]}.default-route")
    return elements


def interface_names(runtime_ifname: str, taken: Iterable[str], deckhouse: Sequence[NetworkSelection],
                    defaults: int, npwg: Sequence[NetworkElement]) -> dict[str, str]:
    """Every interface of a pod's selections by where it is asked for (``defaultNetworks[i]``,
    ``networks-spec[i]``, ``k8s.v1.cni.cncf.io/networks[i]``), ADD's rule and the webhook's alike: the names given
    (a ``networks-spec`` element's ``net<N>`` counts as given) once each, across both dialects and apart from
    ``runtime_ifname`` and the pod's ``taken`` ones; the others ``net<N>`` by their position among the pod's
    additional networks (Multus's rule), skipping names in use. ``defaults``: how many default networks come first."""
    claimed: dict[str, str] = {name: "an interface the pod has" for name in taken}
    claimed[runtime_ifname] = "the pod's main interface (CNI_IFNAME)"
    asked: list[tuple[str, str]] = [(f"defaultNetworks[{i}]", "") for i in range(defaults)]
    asked += [(f"networks-spec[{i}]", s.if_name) for i, s in enumerate(deckhouse)]
    asked += [(el.where, el.interface) for el in npwg]
    unnamed = {f"networks-spec[{i}]" for i, s in enumerate(deckhouse) if not s.named}
    for where, name in asked:
        if name:
            field_path = f"{where}.interface" if where.startswith(NETWORKS_ANNOTATION) else f"{where}.ifName"
            if name in claimed:
                raise AnnotationInvalid(f"{field_path} {name!r} is already used by {claimed[name]}", field_path)
            claimed[name] = f"{where} (its name by default)" if where in unnamed else where
    out: dict[str, str] = {}
    for position, (where, name) in enumerate(asked, start=1):
        if not name:
            n = position
            while f"net{n}" in claimed:
                n += 1
            name = f"net{n}"
            claimed[name] = where
        out[where] = name
    return out


def parse_default_network(text: str | None, namespace: str) -> tuple[str, str] | None:
    """``v1.multus-cni.io/default-network``: the NAD (``name`` or ``ns/name``) that replaces the cluster network."""
    if text is None or not text.strip():
        return None
    ns, sep, name = text.strip().partition("/")
    if not sep:
        ns, name = namespace, ns
    where = DEFAULT_NETWORK_ANNOTATION
    return _label(ns, where), _label(name, where)


# -- network-status (NPWG §5) -------------------------------------------------------------------------

def status_entry(name: str, interface: str, ips: Iterable[str], mac: str = "", default: bool = False,
                 dns: Mapping[str, Any] | None = None, gateway: Iterable[str] = (), mtu: int = 0,
                 device_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One attachment as ``network-status`` shows it; ``ips`` without their prefix, as Multus writes them."""
    entry: dict[str, Any] = {"name": name, "interface": interface,
                             "ips": [str(ipaddress.ip_interface(ip).ip) for ip in ips]}
    if mac:
        entry["mac"] = mac
    if mtu:
        entry["mtu"] = mtu
    if default:
        entry["default"] = True
    entry["dns"] = dict(dns or {})
    gateways = list(gateway)
    if gateways:
        entry["gateway"] = gateways
    if device_info:
        entry["device-info"] = dict(device_info)
    return entry


def entry_from_result(name: str, result: Mapping[str, Any], default: bool = False,
                      device_info: Mapping[str, Any] | None = None, ifname: str = "") -> dict[str, Any] | None:
    """The entry of a delegate's CNI result: its first interface in the pod (one with a ``sandbox``), the
    addresses on it (NPWG §5.2) and the gateways of its default routes; None when the result names no pod
    interface, unless it names addresses on none (a 0.1.0/0.2.0 result) and ``ifname`` is the interface the
    delegate was asked for: then that one."""
    interfaces = result.get("interfaces") or []
    index = next((i for i, itf in enumerate(interfaces) if itf.get("sandbox")), None)
    if index is None and not (ifname and not interfaces and result.get("ips")):
        return None
    itf = interfaces[index] if index is not None else {"name": ifname}
    ips = [ip for ip in result.get("ips") or [] if ip.get("interface") in (index, None)]
    gateways = [r["gw"] for r in result.get("routes") or [] if r.get("dst") in ("0.0.0.0/0", "::/0") and r.get("gw")]
    return status_entry(name, str(itf.get("name", "")), [ip["address"] for ip in ips], str(itf.get("mac", "")),
                        default, result.get("dns") or {}, gateways, int(itf.get("mtu") or 0), device_info)

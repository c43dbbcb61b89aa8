"""The pod annotations: parse ``networks-spec``, build ``networks-status``. Pure functions.

A malformed spec is refused whole, with ``AnnotationInvalid`` naming the element and field
(``networks-spec[1].ifName``), before anything is leased or built.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cni.errors import AnnotationInvalid
from ipamd.model.objects import SPEC_ANNOTATION, valid_ifname
from ipamd.model.podopts import IFNAMSIZ

_MAC = re.compile(r"^([0-9a-fA-F]{2})(:[0-9a-fA-F]{2}){5}$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
INTERFACE_TYPES = ("veth", "tap", "macvlan")
#: Every key of a ``networks-spec`` element (Deckhouse's documentation, DVP's ``InterfaceSpec``, Plexus's
#: ``interfaceType``); another is refused, as a misspelt one would otherwise be ignored.
KNOWN_KEYS = {
    "type", "name", "ifName", "mac", "ipAddressNames", "skipIPAssignment",
    "interfaceType", "uid", "gid", "multiQueue", "id", "ipAssignmentMode",
}


@dataclass(frozen=True, slots=True)
class NetworkSelection:
    """One element of ``networks-spec``, checked, with ``if_name`` always filled in."""

    type: str  # Network | ClusterNetwork
    name: str
    if_name: str
    mac: str = ""
    ip_address_names: tuple[str, ...] = ()
    skip_ip_assignment: bool = False
    interface_type: str = "veth"  # Plexus extension: veth | tap | macvlan
    tap_uid: int | None = None
    tap_gid: int | None = None
    tap_multi_queue: bool = False  # the TAP takes several queues (IFF_MULTI_QUEUE): a VM with one per vCPU
    guest_dhcp: bool = False  # ``ipAssignmentMode: DHCP``: the node answers the guest's DHCP on the TAP with its lease
    named: bool = True  # False: ``if_name`` was made up here (``net<N>``), and a network's interfacePrefix may rename it


def check_ifname(name: Any, where: str) -> str:
    """The kernel's rules for a link name (``dev_valid_name``): IFNAMSIZ counts the UTF-8 bytes the kernel gets,
    and a NUL would end the name there (``a\\0b`` is made as ``a``)."""
    if not isinstance(name, str) or not name:
        raise AnnotationInvalid(f"{where} must be a non-empty string", where)
    try:
        size = len(name.encode())
    except UnicodeEncodeError:  # a lone surrogate (JSON "\\ud800"): no bytes the kernel could be given
        raise AnnotationInvalid(f"{where} {name!r} is not valid UTF-8", where) from None
    if size > IFNAMSIZ:
        raise AnnotationInvalid(f"{where} {name!r} is longer than {IFNAMSIZ} bytes", where)
    if "\0" in name or not valid_ifname(name):
        raise AnnotationInvalid(f"{where} {name!r} is not a valid interface name", where)
    return name


def check_mac(mac: Any, where: str) -> str:
    if not isinstance(mac, str) or not _MAC.match(mac):
        raise AnnotationInvalid(f"{where} {mac!r} is not a MAC address like aa:bb:cc:dd:ee:ff", where)
    first = int(mac[:2], 16)
    if first & 1:
        raise AnnotationInvalid(f"{where} {mac} is a multicast address; an interface needs a unicast MAC", where)
    if mac.replace(":", "") == "000000000000":
        raise AnnotationInvalid(f"{where} {mac} is the all-zero MAC", where)
    return mac.lower()


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise AnnotationInvalid(f"{where} must be true or false", where)
    return value


#: The largest uid or gid a TAP may be owned by: a uid_t is 32 bits, and its all-ones value is the kernel's "none".
MAX_ID = 2**32 - 2


def _optional_id(value: Any, where: str) -> int | None:
    """A TAP's ``uid`` or ``gid``: one the kernel can take (``MAX_ID``), refused here naming the field rather than
    failing at the TAP's ioctl."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise AnnotationInvalid(f"{where} must be an integer from 0 to {MAX_ID}", where)
    return value


def _multi_queue(item: dict[str, Any], itype: str, where: str) -> bool:
    """``multiQueue``: only a TAP has queues to ask for; ``false`` asks nothing of any interface."""
    multi_queue = _bool(item.get("multiQueue", False), f"{where}.multiQueue")
    if multi_queue and itype != "tap":
        raise AnnotationInvalid(f"{where}.multiQueue is for interfaceType tap, not {itype}", f"{where}.multiQueue")
    return multi_queue


def _guest_dhcp(item: dict[str, Any], itype: str, where: str) -> bool:
    """``ipAssignmentMode`` (DVP): ``DHCP`` has the node answer the guest's DHCP on its TAP with the address leased
    for it; only a TAP has a guest behind it (a pod's own interface is configured by Plexus itself)."""
    mode = item.get("ipAssignmentMode")
    if mode is None:
        return False
    field = f"{where}.ipAssignmentMode"
    if mode != "DHCP":
        raise AnnotationInvalid(f"{field} {mode!r} must be DHCP (or left out: the guest configures its address)", field)
    if itype != "tap":
        raise AnnotationInvalid(f"{field} DHCP serves a VM's guest, on interfaceType tap, not {itype}", field)
    return True


def _element(i: int, item: Any) -> tuple[dict[str, Any], str]:
    where = f"networks-spec[{i}]"
    if not isinstance(item, dict):
        raise AnnotationInvalid(f"{where} must be an object", where)
    typ = item.get("type")
    if typ not in ("Network", "ClusterNetwork"):
        raise AnnotationInvalid(f"{where}.type {typ!r} must be Network or ClusterNetwork", f"{where}.type")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise AnnotationInvalid(f"{where}.name {name!r} is not an object name", f"{where}.name")
    for key in item:
        if key not in KNOWN_KEYS:  # ``ifname`` would give net1, ``ipAddressName`` an Auto address
            close = difflib.get_close_matches(str(key), sorted(KNOWN_KEYS), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise AnnotationInvalid(f"{where}.{key} is not a key of networks-spec{hint}", f"{where}.{key}")
    return item, where


#: The annotations of one object may hold 256 KiB in all (the API server's limit); more is not an annotation.
MAX_ANNOTATION_BYTES = 256 * 1024


def json_list(text: str, annotation: str) -> list[Any]:
    """An annotation that holds a JSON list, within the size an annotation may have."""
    if len(text.encode()) > MAX_ANNOTATION_BYTES:
        raise AnnotationInvalid(f"{annotation} is larger than {MAX_ANNOTATION_BYTES} bytes", annotation)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise AnnotationInvalid(f"{annotation} is not JSON", str(exc)) from None
    if not isinstance(data, list):
        raise AnnotationInvalid(f"{annotation} must be a JSON list", f"got {type(data).__name__}")
    return data


def names_ip_address(text: str, name: str) -> bool:
    """Whether a pod's ``networks-spec``, as written, names the (Cluster)IPAddress ``name`` in an element's
    ``ipAddressNames``. One that does not parse counts as naming it: the caller keeps an address for it."""
    try:
        items = json_list(text, SPEC_ANNOTATION)
    except AnnotationInvalid:
        return True
    return any(isinstance(item, dict) and isinstance(item.get("ipAddressNames"), list)
               and name in item["ipAddressNames"] for item in items)


def parse_networks_spec(text: str | None) -> list[NetworkSelection]:
    """``network.deckhouse.io/networks-spec`` → the pod's selections, interface names assigned."""
    if text is None or not text.strip():
        return []
    items = [_element(i, item) for i, item in enumerate(json_list(text, SPEC_ANNOTATION))]
    explicit: dict[str, str] = {}
    for item, where in items:
        if "ifName" in item:
            name = check_ifname(item["ifName"], f"{where}.ifName")
            if name in explicit:
                raise AnnotationInvalid(
                    f"{where}.ifName {name!r} is already used by {explicit[name]}", f"{where}.ifName"
                )
            explicit[name] = where
    used = set(explicit)
    out = []
    for i, (item, where) in enumerate(items):
        if_name = item.get("ifName")
        if if_name is None:
            n = i + 1
            while f"net{n}" in used:
                n += 1
            if_name = f"net{n}"
            used.add(if_name)
        names = item.get("ipAddressNames")
        names = [] if names is None else names  # not ``or []``: "" or false is a mistake, not "no names"
        if not isinstance(names, list) or not all(isinstance(n, str) and _NAME.match(n) for n in names):
            raise AnnotationInvalid(f"{where}.ipAddressNames must be a list of IPAddress names", f"{where}.ipAddressNames")
        if len(set(names)) != len(names):
            raise AnnotationInvalid(f"{where}.ipAddressNames names an IPAddress twice", f"{where}.ipAddressNames")
        itype = item.get("interfaceType", "veth")
        if itype not in INTERFACE_TYPES:
            raise AnnotationInvalid(
                f"{where}.interfaceType {itype!r} must be one of {', '.join(INTERFACE_TYPES)}", f"{where}.interfaceType"
            )
        out.append(NetworkSelection(
            type=item["type"], name=item["name"], if_name=if_name,
            mac=check_mac(item["mac"], f"{where}.mac") if item.get("mac") is not None else "",
            ip_address_names=tuple(names),
            skip_ip_assignment=_bool(item.get("skipIPAssignment", False), f"{where}.skipIPAssignment"),
            interface_type=itype,
            tap_uid=_optional_id(item.get("uid"), f"{where}.uid"),
            tap_gid=_optional_id(item.get("gid"), f"{where}.gid"),
            tap_multi_queue=_multi_queue(item, itype, where), guest_dhcp=_guest_dhcp(item, itype, where),
            named="ifName" in item,
        ))
    first_use: dict[str, int] = {}
    for i, sel in enumerate(out):
        for name in sel.ip_address_names:
            if name in first_use:
                where = f"networks-spec[{i}].ipAddressNames"
                raise AnnotationInvalid(
                    f"{where}: IPAddress {name!r} is already named by networks-spec[{first_use[name]}]", where)
            first_use[name] = i
    return out


@dataclass(frozen=True, slots=True)
class AddressConfig:
    name: str  # the IPAddress object
    address: str  # without mask
    network: str  # CIDR of the pool subnet
    routes: tuple[dict[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "address": self.address, "network": self.network}
        if self.routes:
            out["routes"] = [dict(r) for r in self.routes]
        return out


@dataclass(frozen=True, slots=True)
class InterfaceStatus:
    type: str
    name: str
    if_name: str
    mac: str
    vlan_id: int
    addresses: tuple[AddressConfig, ...]
    configured: bool
    reason: str
    message: str
    up: bool
    since: str  # RFC 3339


def condition(ctype: str, ok: bool, reason: str, message: str, since: str) -> dict[str, str]:
    return {
        "type": ctype, "status": "True" if ok else "False", "lastTransitionTime": since,
        "reason": reason, "message": message,
    }


def build_networks_status(interfaces: Iterable[InterfaceStatus]) -> list[dict[str, Any]]:
    """The pod's ``networks-status``, exactly in the seed's shape."""
    return [
        {
            "type": s.type, "name": s.name, "ifName": s.if_name, "mac": s.mac, "vlanID": s.vlan_id,
            "ipAddressConfigs": [a.to_dict() for a in s.addresses],
            "conditions": [
                condition("Configured", s.configured, s.reason, s.message, s.since),
                condition("Negotiated", s.up, "Up" if s.up else "Down", "", s.since),
            ],
        }
        for s in interfaces
    ]

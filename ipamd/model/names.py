"""Names of the links Plexus makes: one module, so the node, the controller and DEL all agree.

Every name is derived from what the attachment record or the segment record holds, so a DEL or a
reconcile finds the links with nothing but the record. All fit the kernel's 15 characters
(``IFNAMSIZ`` less the terminating NUL). Pure: the controller, which has no netlink, reports bridge
names from here too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

PREFIX = "plx"


def host_link_name(container_id: str, runtime_ifname: str, if_name: str) -> str:
    """The node end of a pod interface's veth: unique per attachment interface."""
    digest = hashlib.sha1(f"{container_id}/{runtime_ifname}/{if_name}".encode()).hexdigest()
    return f"{PREFIX}{digest[:11]}"


def bridge_name(kind: str, ident: int, network_key: str, attempt: int = 0) -> str:
    """The node bridge of a segment: by VLAN ID (``plx-br-650``), by VNI (``plx-vb-5000``), or, untagged,
    by the Network it belongs to (``plx-n-<hash>``). 32 bits of hash can clash: ``attempt`` 1, 2... gives the
    next candidates for the Network (of ``<key>#1``, ``<key>#2``...); the node records the one it took."""
    prefix = _BRIDGE_PREFIX.get(kind)
    if prefix is not None:
        return f"{prefix}{ident}"
    hashed = f"{network_key}#{attempt}" if attempt else network_key
    return f"{PREFIX}-n-" + hashlib.sha1(hashed.encode()).hexdigest()[:8]


def segment_of_bridge(bridge: str) -> tuple[str, int] | None:
    """The segment kind and ID a bridge is named for (``bridge_name``'s inverse); None for an untagged one."""
    for kind, prefix in _BRIDGE_PREFIX.items():
        if bridge.startswith(prefix) and bridge[len(prefix):].isdigit():
            return kind, int(bridge[len(prefix):])
    return None


def uplink_name(kind: str, ident: int) -> str:
    """The uplink Plexus makes for a segment: an 802.1Q sub-interface or a VXLAN device; "" for none."""
    prefix = _UPLINK_PREFIX.get(kind)
    return f"{prefix}{ident}" if prefix is not None else ""


_BRIDGE_PREFIX = {"vlan": f"{PREFIX}-br-", "vxlan": f"{PREFIX}-vb-"}
_UPLINK_PREFIX = {"vlan": f"{PREFIX}-vl-", "vxlan": f"{PREFIX}-vx-"}


@dataclass(frozen=True, slots=True)
class TapNames:
    """The links of a TAP attachment besides the TAP itself, all derived from its host link's name."""

    inner_bridge: str  # in the pod: joins the TAP and the inner veth end
    inner_veth: str  # in the pod: the pod end of the veth into the node bridge
    temporary: str  # on the node: where earlier versions made the TAP before moving it; DEL still removes one left

    @classmethod
    def of(cls, host_link: str) -> TapNames:
        return cls(f"{host_link}b", f"{host_link}p", f"{host_link}t")


def tap_mac(guest_mac: str) -> str:
    """The MAC of a VM's TAP, the host side of its NIC: the guest's with its first octet made ``fe`` (``fa`` when it
    is already), as libvirt does. Never the guest's own: the TAP is a port of the pod's inner bridge, which takes a
    frame to one of its ports' MACs for itself and never forwards it to the VM. Pure, so CHECK knows it too."""
    octets = guest_mac.lower().split(":")
    octets[0] = "fa" if octets[0] == "fe" else "fe"
    return ":".join(octets)

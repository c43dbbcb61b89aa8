"""Segment rules: what L2 segment a Network gets, which ID a node may use, and the one ID picker.

Pure, and shared by the node (which records the ID it uses) and the controller (which hands IDs
out in a cluster), so the two can never disagree. A segment is ``vlan`` (802.1Q, an ID from the
class's ``idPool``), ``vxlan`` (a VNI from the class's ``vniPool``) or ``none`` (an untagged bridge).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cni.errors import AnnotationInvalid, InterfaceFailure
from ipamd.model.annotations import parse_networks_spec
from ipamd.model.names import bridge_name, segment_of_bridge, uplink_name
from ipamd.model.npwg import NETWORKS_ANNOTATION
from ipamd.model.objects import SPEC_ANNOTATION, STATUS_ANNOTATION, ClusterNetwork, Network, NetworkClass
from ipamd.model.services import status_entries

IdPool = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class SegmentKind:
    name: str  # vlan | vxlan | none
    id_label: str  # how messages call its ID
    tagged: bool  # whether it has an ID at all
    uplink: str  # how the bridge reaches other nodes: vlan (sub-interface of a parent NIC), vxlan, nic (the parent)
    needs_parent: bool  # without a parent NIC the bridge stays node-local
    shows_vni: bool = False  # its ID is a VNI, shown as ``vni``; else, when tagged, as ``vlanID``

    def vlan_id(self, ident: int) -> int:
        """The ``vlanID`` a status shows: the 802.1Q tag, 0 when there is none (seed 000)."""
        return ident if self.tagged and not self.shows_vni else 0

    def status_ids(self, ident: int) -> dict[str, int]:
        """The IDs a Network's status shows (seed 000: ``vlanID``; Plexus: ``vni`` too)."""
        return {"vlanID": self.vlan_id(ident), **({"vni": ident} if self.shows_vni else {})}

    def bridge(self, ident: int, network_key: str, attempt: int = 0) -> str:
        return bridge_name(self.name, ident, network_key, attempt)

    def uplink_name(self, ident: int) -> str:
        return uplink_name(self.name, ident)


SEGMENT_KINDS = {k.name: k for k in (SegmentKind("vlan", "VLAN ID", True, "vlan", True),
                                     SegmentKind("vxlan", "VNI", True, "vxlan", False, shows_vni=True),
                                     SegmentKind("none", "", False, "nic", True))}


def segment_kind(obj: Network | ClusterNetwork, cls: NetworkClass | None) -> SegmentKind:
    """What segment a Network gets. The nodes and the controller both ask this, so they never disagree
    on whether an ID is to be handed out."""
    if isinstance(obj, ClusterNetwork) and obj.type == "Access":
        return SEGMENT_KINDS["none"]
    if cls is not None and cls.vxlan is not None:
        return SEGMENT_KINDS["vxlan"]
    if isinstance(obj, ClusterNetwork) or (cls is not None and cls.vlan_pool):
        return SEGMENT_KINDS["vlan"]
    return SEGMENT_KINDS["none"]


def id_pool(obj: Network | ClusterNetwork, cls: NetworkClass | None) -> IdPool:
    """The IDs ``obj`` may get: its class's VNI or VLAN pool. A ClusterNetwork's fixed ID is the
    administrator's, not the pool's."""
    if cls is None:
        return ()
    if cls.vxlan is not None:
        return cls.vxlan.vni_pool
    if isinstance(obj, ClusterNetwork) and obj.vlan_id is not None:
        return ()
    return cls.vlan_pool


def granted_id(obj: Network | ClusterNetwork, kind: SegmentKind | None = None) -> int | None:
    """In a cluster, the VLAN ID or VNI a node may use: the one the controller wrote into the status, and
    only that. A ``spec.vlan.id`` -- a ClusterNetwork's fixed one too -- is only a request until the controller
    grants it (it writes a free one into the status; one already used stays refused, and unused on the wire).
    With ``kind``, only an ID of that kind: a network moved to a class of another kind (VXLAN to VLAN) still
    shows its old kind's ID until the controller grants it one of the new."""
    if kind is not None and status_segment(obj) not in (None, kind.name):
        return None
    return obj.status_vlan_id or None


def status_segment(obj: Network | ClusterNetwork) -> str | None:
    """The kind of segment (``vlan``, ``vxlan``) the status's ID is of, as its bridge's name says; None when it
    names none (untagged, not granted yet, or a status of an older Plexus)."""
    carried = segment_of_bridge(obj.status_bridge)
    return carried[0] if carried is not None else None


class SegmentInUse(InterfaceFailure):
    """A segment's links cannot be made as its class now says while pods are on its bridge (its uplink is another
    parent's VLAN, another tunnel, or another NIC is its port): the bridge serves as it is, and the edit is applied
    once they are gone."""


#: The condition of a network whose ``spec.vlan.id`` asks another ID than it has (the controller's, and a lone node's).
ID_CHANGE = "VLANIDChangePending"


class IdUnavailable(ValueError):
    """No ID can be given: ``reason`` is ``outside-pool``, ``in-use``, ``exhausted`` or ``no-pool`` (none asked for,
    and the class has no pool to take one from)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def pick_id(kind: SegmentKind, pool: IdPool, holders: Mapping[int, str], wanted: int | None, key: str) -> int:
    """The ID ``key`` gets: ``wanted`` when it may have it, else the first one of ``pool`` that nobody
    else holds (``holders``: ID → who has it). ``IdUnavailable`` says why there is none."""
    what = kind.id_label
    if wanted is not None:
        if pool and not any(a <= wanted <= b for a, b in pool):
            raise IdUnavailable("outside-pool", f"{what} {wanted} is not in the class's pool")
        holder = holders.get(wanted)
        if holder not in (None, key):
            raise IdUnavailable("in-use", f"{what} {wanted} is already used by {holder}")
        return wanted
    if not pool:
        raise IdUnavailable("no-pool", f"no {what} is asked for, and the class has no pool to take one from")
    for a, b in pool:
        for ident in range(a, b + 1):
            if holders.get(ident) in (None, key):
                return ident
    raise IdUnavailable("exhausted", f"no free {what} left in the class's pool")


def pods_on_segment(pods: Iterable[Mapping[str, Any]], net: Network | ClusterNetwork, ident: int) -> list[str]:
    """The pods (``namespace/name``) attached to ``net`` on its segment ``ident``, as their ``networks-status`` says:
    an entry that shows another VLAN ID is on another segment of it; one that shows none (a VXLAN network's, or of
    an older Plexus) counts, as does a pod starting on a node that asks for ``net`` by name or gets it as its default
    (``_starting``). A finished pod holds no interface; ``pods`` may be of other namespaces and networks."""
    found = []
    for pod in pods:
        md = pod.get("metadata") or {}
        finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        if finished or (isinstance(net, Network) and md.get("namespace") != net.meta.namespace):
            continue
        annotations = md.get("annotations") or {}
        entries = status_entries(annotations.get(STATUS_ANNOTATION))
        if any(_shows(entry, net, ident) for entry in entries) or \
                (_starting(pod, annotations, net) and not any(_names(entry, net) for entry in entries)):
            found.append(f"{md.get('namespace')}/{md.get('name')}")
    return found


def _starting(pod: Mapping[str, Any], annotations: Mapping[str, Any], net: Network | ClusterNetwork) -> bool:
    """A pod bound to a node whose ``networks-spec`` names ``net``, or that gets ``net`` as its default network
    (``_by_default``): with no status entry of it yet, its ADD may be building its interface on the segment there
    is now."""
    spec = pod.get("spec") or {}
    if not spec.get("nodeName") or spec.get("hostNetwork"):
        return False  # not started yet, or never attached (the node's own network)
    if SPEC_ANNOTATION not in annotations and NETWORKS_ANNOTATION not in annotations:
        return _by_default(pod, net)
    try:
        selections = parse_networks_spec(annotations.get(SPEC_ANNOTATION))
    except AnnotationInvalid:
        return False  # refused at its ADD: it builds nothing
    return any((sel.type, sel.name) == (net.meta.kind, net.meta.name) for sel in selections)


def _by_default(pod: Mapping[str, Any], net: Network | ClusterNetwork) -> bool:
    """A pod that asks for no network, while its sandbox is being made: ADD gives it ``net`` when ``net`` is
    labelled the default (``default_networks``). Counted without what ADD also reads and the controller cannot (the
    nodes' ``systemNamespaces``; whether the pod's namespace has a default Network of its own, which wins over a
    ClusterNetwork): a pod is counted too often, never too rarely. Only while its sandbox is not ready yet: once it
    is, a pod with no entry of ``net`` was made without it (before the label, or in a system namespace), and counted
    it would hold the segment for ever."""
    if not net.pod.default:
        return False
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") in ("PodReadyToStartContainers", "PodHasNetwork"):  # the latter before Kubernetes 1.29
            return bool(cond.get("status") != "True")  # False again while the kubelet makes the pod a new sandbox
    return status.get("phase") in (None, "", "Pending")


def _names(entry: Mapping[str, Any], net: Network | ClusterNetwork) -> bool:
    return entry.get("type") == net.meta.kind and entry.get("name") == net.meta.name


def _shows(entry: Mapping[str, Any], net: Network | ClusterNetwork, ident: int) -> bool:
    shown = entry.get("vlanID")
    on_other = isinstance(shown, int) and not isinstance(shown, bool) and shown > 0 and shown != ident
    return entry.get("type") == net.meta.kind and entry.get("name") == net.meta.name and not on_other

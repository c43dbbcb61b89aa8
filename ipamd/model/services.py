"""Services over an additional network (DANM's svcwatcher), the pure part: which Services ask for it, which pods and
addresses they select, and the EndpointSlice that says so.

A Service asks with two annotations: ``network.deckhouse.io/service-network`` names the network (``Network/<name>``
in the Service's namespace, ``ClusterNetwork/<name>``, ``NetworkAttachmentDefinition/<namespace>/<name>``, or a
bare ``<name>`` for a Network), and ``network.deckhouse.io/service-selector`` selects its pods by label
(``app=db,tier=backend``; the Service's own ``spec.selector`` must stay empty, or Kubernetes's endpoint controller
would write the cluster network's addresses too). It must be headless (``clusterIP: None``): the addresses of an
additional network are reachable from the pods on it, not through the node's kube-proxy. The cluster's DNS then
answers the Service's name with the selected pods' addresses on that network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ipamd.model.npwg import NETWORK_STATUS_ANNOTATION
from ipamd.model.objects import GROUP, STATUS_ANNOTATION, Pod

NETWORK_ANNOTATION = f"{GROUP}/service-network"
SELECTOR_ANNOTATION = f"{GROUP}/service-selector"
MANAGED_BY = f"plexus.{GROUP}"  # endpointslice.kubernetes.io/managed-by: Kubernetes's controller leaves these alone
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
HOSTNAME_LABEL = "kubernetes.io/hostname"
KINDS = ("Network", "ClusterNetwork", "NetworkAttachmentDefinition")
Family = Literal["IPv4", "IPv6"]  # an EndpointSlice's addressType
# Kubernetes's label syntax: a key's name and a value (which may be empty), and a key's optional prefix
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class ServiceInvalid(ValueError):
    def __init__(self, field: str, problem: str, reason: str = "InvalidAnnotation") -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem, self.reason = field, problem, reason


@dataclass(frozen=True, slots=True)
class NetworkRef:
    kind: str
    namespace: str  # "" for a ClusterNetwork
    name: str

    @property
    def display(self) -> str:
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"


@dataclass(frozen=True, slots=True)
class NetworkService:
    namespace: str
    name: str
    uid: str
    network: NetworkRef
    selector: tuple[tuple[str, str], ...]
    ports: tuple[tuple[str, int, str], ...]  # (name, port the endpoints listen on, protocol)


def asks(svc: Mapping[str, Any]) -> bool:
    """Whether the Service asks for endpoints on an additional network (rightly or not)."""
    ann = (svc.get("metadata") or {}).get("annotations") or {}
    return NETWORK_ANNOTATION in ann or SELECTOR_ANNOTATION in ann


def parse_service(svc: Mapping[str, Any]) -> NetworkService | None:
    """The Service's request, None when it makes none; ServiceInvalid names the field at fault."""
    if not asks(svc):
        return None
    md = svc.get("metadata") or {}
    ann = md.get("annotations") or {}
    ns = str(md.get("namespace") or "default")
    field = f"metadata.annotations[{NETWORK_ANNOTATION}]"
    if not ann.get(NETWORK_ANNOTATION):
        raise ServiceInvalid(field, "is required with the selector: the network whose addresses to publish")
    network = _network_ref(str(ann[NETWORK_ANNOTATION]), ns, field)
    selector = _selector(ann.get(SELECTOR_ANNOTATION), f"metadata.annotations[{SELECTOR_ANNOTATION}]")
    spec = svc.get("spec") or {}
    if spec.get("selector"):
        raise ServiceInvalid("spec.selector", "must be empty: Kubernetes would publish the pods' cluster addresses "
                             "for it too; select them with the annotation", "NotSelectorless")
    if spec.get("clusterIP") != "None":
        raise ServiceInvalid("spec.clusterIP", "must be None (a headless Service): an additional network's addresses "
                             "are not reached through the node's kube-proxy", "NotHeadless")
    return NetworkService(ns, str(md.get("name")), str(md.get("uid") or ""), network, selector, _ports(spec))


def _network_ref(text: str, namespace: str, field: str) -> NetworkRef:
    parts = text.strip().split("/")
    if len(parts) == 1:
        parts = ["Network", *parts]
    kind = parts[0]
    if kind not in KINDS or any(not p for p in parts):
        raise ServiceInvalid(field, f"{text!r} must be Network/<name>, ClusterNetwork/<name>, "
                             "NetworkAttachmentDefinition/<namespace>/<name> or <name>")
    if kind == "NetworkAttachmentDefinition":
        if len(parts) not in (2, 3):
            raise ServiceInvalid(field, f"{text!r}: NetworkAttachmentDefinition/<namespace>/<name>")
        return NetworkRef(kind, parts[1] if len(parts) == 3 else namespace, parts[-1])
    if len(parts) != 2:
        raise ServiceInvalid(field, f"{text!r}: {kind}/<name>")
    return NetworkRef(kind, namespace if kind == "Network" else "", parts[1])


def _selector(text: Any, field: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(text, str) or not text.strip():
        raise ServiceInvalid(field, "is required: the labels of the pods to publish (app=db,tier=backend)")
    out = []
    for term in text.split(","):
        key, sep, value = term.strip().partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ServiceInvalid(field, f"{term.strip()!r} is not key=value")
        # kubectl's other spellings (app!=db, app==db) would split into a key or value no label has: never matched
        if not _label_key(key) or not _label_value(value):
            raise ServiceInvalid(field, f"{term.strip()!r} is not key=value with a label's key and value (a key: "
                                 "[<DNS subdomain>/]<name>, a name or value: at most 63 of A-Z a-z 0-9 - _ . "
                                 "beginning and ending with a letter or digit; a value may be empty)")
        out.append((key, value))
    return tuple(sorted(out))


def _label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if "/" in key and not (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return len(name) <= 63 and _LABEL_NAME.fullmatch(name) is not None


def _label_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and _LABEL_NAME.fullmatch(value) is not None)


def _ports(spec: Mapping[str, Any]) -> tuple[tuple[str, int, str], ...]:
    """The endpoints' ports: each one's ``targetPort`` where it is a number (0 is unset: the API server makes it
    ``port``), else its ``port``. Checked here, not only by an API server: local mode's Services come from files
    unchecked."""
    ports = spec.get("ports") or []
    if not isinstance(ports, list):
        raise ServiceInvalid("spec.ports", "must be a list of ports", "InvalidPort")
    out = []
    for i, p in enumerate(ports):
        if not isinstance(p, Mapping):
            raise ServiceInvalid(f"spec.ports[{i}]", "must be a port: {port: <number>}", "InvalidPort")
        target = p.get("targetPort")
        numbered = isinstance(target, int) and not isinstance(target, bool) and target != 0
        where = f"spec.ports[{i}].{'targetPort' if numbered else 'port'}"
        out.append((str(p.get("name") or ""), _port_number(target if numbered else p.get("port"), where),
                    str(p.get("protocol") or "TCP")))
    return tuple(out)


def _port_number(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ServiceInvalid(field, f"{value!r} is not a port number (1-65535)", "InvalidPort")
    return value


def selects(svc: NetworkService, pod: Mapping[str, Any]) -> bool:
    md = pod.get("metadata") or {}
    labels = md.get("labels") or {}
    return (md.get("namespace") or "default") == svc.namespace and all(labels.get(k) == v for k, v in svc.selector)


def addresses_on(pod: Mapping[str, Any], ref: NetworkRef) -> list[str]:
    """The pod's addresses on the network, as its statuses report them (networks-status for the Deckhouse kinds,
    network-status for a NetworkAttachmentDefinition)."""
    ann = (pod.get("metadata") or {}).get("annotations") or {}
    out: list[str] = []
    if ref.kind == "NetworkAttachmentDefinition":
        for entry in status_entries(ann.get(NETWORK_STATUS_ANNOTATION)):
            if entry.get("name") == f"{ref.namespace}/{ref.name}":
                out += [str(ip).split("/")[0] for ip in entry.get("ips") or []]
        return out
    for entry in status_entries(ann.get(STATUS_ANNOTATION)):
        if entry.get("type") == ref.kind and entry.get("name") == ref.name:
            out += [str(c["address"]) for c in entry.get("ipAddressConfigs") or [] if c.get("address")]
    return out


def status_entries(text: Any) -> list[dict[str, Any]]:
    """The entries of a pod's status annotation (a JSON list of objects); none when it is not one."""
    try:
        found = json.loads(text) if isinstance(text, str) else []
    except ValueError:
        return []
    return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []


def _ready(pod: Mapping[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def slice_name(svc: NetworkService, family: Family = "IPv4") -> str:
    """``<service>-plexus`` for IPv4 (the name slices had before IPv6 got its own: upgrades find theirs), and
    ``<service>-plexus-v6``."""
    return f"{svc.name}-plexus" if family == "IPv4" else f"{svc.name}-plexus-v6"


def family_of(address: str) -> Family:
    return "IPv6" if ":" in address else "IPv4"


def endpoint_slices(svc: NetworkService, pods: Iterable[Mapping[str, Any]], api_version: str) -> list[dict[str, Any]]:
    """The EndpointSlices of ``svc``, one per address family: a slice holds addresses of its ``addressType`` only
    (the API server refuses all of it for one of the other family), and a dual-stack network's pods have both. The
    IPv4 one always (empty, it still says the Service has no endpoints), the IPv6 one when there are IPv6 addresses."""
    pods = list(pods)
    v6 = endpoint_slice(svc, pods, api_version, "IPv6")
    return [endpoint_slice(svc, pods, api_version, "IPv4"), *([v6] if v6["endpoints"] else [])]


def endpoint_slice(svc: NetworkService, pods: Iterable[Mapping[str, Any]], api_version: str,
                   family: Family = "IPv4") -> dict[str, Any]:
    """The EndpointSlice of ``svc``'s ``family`` addresses over ``pods`` (all of the cluster's; the selected ones
    count). The node goes in ``nodeName``, but in ``topology`` for v1beta1: a 1.17-1.20 API server drops a v1beta1
    endpoint's nodeName (as kube-controller-manager, Plexus writes the hostname topology key there instead), and a
    slice that never reads back as written would be rewritten on every pass."""
    endpoints = []
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name"))):
        if not selects(svc, pod):
            continue
        md = pod.get("metadata") or {}
        for address in addresses_on(pod, svc.network):
            if family_of(address) != family:
                continue
            ep: dict[str, Any] = {"addresses": [address], "conditions": {"ready": _ready(pod)},
                                  "targetRef": {"kind": "Pod", "namespace": svc.namespace, "name": md.get("name"),
                                                "uid": md.get("uid")}}
            node = (pod.get("spec") or {}).get("nodeName")
            if node and api_version.endswith("/v1beta1"):
                ep["topology"] = {HOSTNAME_LABEL: node}
            elif node:
                ep["nodeName"] = node
            endpoints.append(ep)
    return {
        "apiVersion": api_version, "kind": "EndpointSlice",
        "metadata": {"name": slice_name(svc, family), "namespace": svc.namespace,
                     "labels": {SERVICE_NAME_LABEL: svc.name, MANAGED_BY_LABEL: MANAGED_BY},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": svc.name, "uid": svc.uid,
                                          "controller": True}]},
        "addressType": family,
        "endpoints": endpoints,
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in svc.ports],
    }


def local_pod(pod: Pod, status: Any) -> dict[str, Any]:
    """A pod of the local object source as the API would show it, with its statuses (``status``: the store's
    ``PodStatus``, None before its ADD): what ``endpoint_slice`` reads. Ready once attached."""
    ann = dict(pod.annotations)
    if status is not None:
        ann[STATUS_ANNOTATION] = json.dumps(list(status.networks_status))
        ann[NETWORK_STATUS_ANNOTATION] = json.dumps(list(status.network_status))
    return {"metadata": {"name": pod.meta.name, "namespace": pod.meta.namespace, "uid": pod.meta.uid,
                         "labels": dict(pod.labels), "annotations": ann},
            "spec": {"nodeName": pod.node_name},
            "status": {"conditions": [{"type": "Ready", "status": "True" if status is not None else "False"}]}}

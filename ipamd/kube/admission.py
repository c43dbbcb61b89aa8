"""Admission review: what the CRD schemas of Kubernetes 1.20 cannot say, refused at ``kubectl apply``.

A structural schema checks each field on its own; it cannot see that a range lies outside its
pool's network, that a Network asks for its VLAN ID twice in two forms, or that a pod's
``networks-spec`` annotation (a JSON string) names a bad MAC. The node daemon refuses those objects
anyway, but only later and only in its log or at a pod's ADD. The validating webhook runs the very
same parsers (``parse_object``, ``parse_networks_spec``) when the object is written, so what the
daemon would refuse never gets stored, and the user reads why in the ``kubectl`` error.

It also refuses what only the cluster's state can show: a pool change that would leave a leased address
outside every network of the pool (its holder would keep an address the pool no longer has) or make it one of
the pool's routes' gateways (its holder would keep the router's address), a network's write making it one of its
policy routes' gateways (``spec.policyRoutes[i].via``, likewise), the deletion of
a pool that still has leased addresses, and a Network's move to another pool while its old one has leases of its
own; the leases come from the controller's informer (``leased``, ``leased_for``).

And it refuses what the daemon would serve but not as written (``refused_when_written``): an Auto IPAddress's
``static.ip``, an untagged network's ``vlan.id`` (a Network's class from ``network_class``), a pool entry with no
address to hand out; on UPDATE only when the edit brings it, so an object stored before is still edited. An edit
that leaves a pool entry with no address (a subnet drained) is allowed with a warning (``warned_when_written``;
the response's ``warnings``, which kubectl prints).

Pure: an AdmissionReview (and the leases of a pool) in, an AdmissionReview out.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

from cni.errors import AnnotationInvalid
from ipamd.ipam.allocator import subnet_for, to_int
from ipamd.model.annotations import parse_networks_spec
from ipamd.model.npwg import NETWORKS_ANNOTATION, RUNTIME_IFNAME, interface_names, parse_networks
from ipamd.model.objects import (
    KINDS,
    POD,
    POOL_KINDS,
    SPEC_ANNOTATION,
    AddressPool,
    ApiObject,
    ClusterNetwork,
    IPAddressObject,
    ManifestInvalid,
    Network,
    NetworkClass,
    brought_by_write,
    parse_object,
    warned_when_written,
)

#: The addresses leased from a pool (by its key), held by somebody: what a pool change must keep.
Leased = Callable[[str], Iterable[str]]
#: The addresses of a pool (its key) that a network's pods may use (the network's key): what moving it must keep.
LeasedFor = Callable[[str, str], Iterable[str]]


#: A NetworkClass by name, None when not known: what tells an untagged Network's ``spec.vlan.id``.
ClassOf = Callable[[str], NetworkClass | None]


def _nothing_leased(pool: str) -> Iterable[str]:
    return ()


def _no_class(name: str) -> NetworkClass | None:
    return None

REVIEW_VERSION = "admission.k8s.io/v1"
#: The versions answered, each in its own: the API server checks the response's apiVersion against the one it sent
#: (the two have the same shape).
REVIEW_VERSIONS = ("admission.k8s.io/v1beta1", REVIEW_VERSION)


class ReviewInvalid(ValueError):
    """The request is not an AdmissionReview this webhook can answer (HTTP 400)."""


def _response(uid: str, allowed: bool, message: str = "", version: str = REVIEW_VERSION,
              warnings: Iterable[str] = ()) -> dict[str, Any]:
    body: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if not allowed:
        # no "reason": with reason Invalid and no field causes kubectl prints only "The request is invalid"
        body["status"] = {"code": 422, "message": message}
    if warnings:  # the API server (1.19 on) hands them to the client: kubectl prints each as "Warning: ..."
        body["warnings"] = list(warnings)
    return {"apiVersion": version, "kind": "AdmissionReview", "response": body}


def _named(obj: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The object as stored: on CREATE the name may still be a ``generateName`` and the namespace
    only in the request."""
    doc = copy.deepcopy(obj)
    md = doc.setdefault("metadata", {})
    if not md.get("name"):
        md["name"] = str(md.get("generateName") or "generated").rstrip("-") + "-x"
    if request.get("namespace") and not md.get("namespace"):
        md["namespace"] = request["namespace"]
    return doc


def _pod_problem(obj: dict[str, Any], namespace: str) -> str:
    """Both dialects' selection annotations, as ADD will parse them, and the interface names they ask for together,
    held against the runtime's own (``RUNTIME_IFNAME``). Without the node's view: a ``networks-spec`` element's
    ``net<N>`` counts as given, though a network's ``interfacePrefix`` would rename it at ADD."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    name = SPEC_ANNOTATION
    try:
        deckhouse = parse_networks_spec(annotations.get(SPEC_ANNOTATION))
        name = NETWORKS_ANNOTATION
        npwg = parse_networks(annotations.get(NETWORKS_ANNOTATION), namespace)
        name = ""
        interface_names(RUNTIME_IFNAME, (), deckhouse, 0, npwg)
    except AnnotationInvalid as exc:  # details name the field, which the message already does, or say more
        why = exc.msg if exc.details in exc.msg else str(exc)
        name = name or (NETWORKS_ANNOTATION if exc.details.startswith(NETWORKS_ANNOTATION) else SPEC_ANNOTATION)
        return f"annotation {name}: {why}"
    return ""


def _orphaned(pool: AddressPool, held: Iterable[str]) -> str:
    """The leased addresses that no network of ``pool`` holds any more, in words ("" when none)."""
    outside = sorted((a for a in held if subnet_for(pool, to_int(a)) is None), key=to_int)
    if not outside:
        return ""
    shown = ", ".join(outside[:5]) + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
    return (f"{pool.meta.display}: spec.pools: {len(outside)} leased address(es) would lie outside every network "
            f"of the pool: {shown}; keep their network, or release them first (plexusctl ipam release)")


def _made_gateway(pool: AddressPool, held: Iterable[str]) -> str:
    """The routes of ``pool`` whose gateway (``via``) is a leased address, in words ("" when none). The pool never
    leases a gateway (``_address_pool`` cuts it out of the ranges), but the address's holder would keep it: two hosts
    on the router's address, and the pool's other pods routing through the one that holds it. The leases name no
    holder here, so the words name the address only."""
    leased = {to_int(a) for a in held}
    found = [f"spec.pools[{i}].routes[{j}].via: {route.via}" for i, subnet in enumerate(pool.subnets)
             for j, route in enumerate(subnet.routes) if to_int(route.via) in leased]
    if not found:
        return ""
    return (f"{pool.meta.display}: {'; '.join(found)}: leased to a pod or IPAddress, which would keep the route's "
            "gateway as its own address; pick another gateway, or release the address first (plexusctl ipam release)")


def _in_use(kind: str, old: dict[str, Any], namespace: str, leased: Leased) -> str:
    """Why a pool may not be deleted: addresses still leased from it, in words ("" when none). Read from its name
    alone: a pool stored before this webhook checked it may not parse, and still holds its leases."""
    md = old.get("metadata") or {}
    name, namespace = str(md.get("name") or ""), str(md.get("namespace") or namespace)
    held = sorted(leased(f"{kind}/{namespace}/{name}" if namespace else f"{kind}/{name}"), key=to_int)
    if not held:
        return ""
    shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
    where = f"{namespace}/{name}" if namespace else name
    return (f"{kind} {where}: {len(held)} address(es) still leased from it: {shown}; delete the pods and IPAddresses "
            "that hold them first, or release them (plexusctl ipam release)")


def _pool_key(net: Network | ClusterNetwork) -> str:
    ref = net.pool_ref
    if ref is None:
        return ""
    return f"{ref.kind}/{net.meta.namespace}/{ref.name}" if net.meta.namespace else f"{ref.kind}/{ref.name}"


def _pool_moved(net: Network | ClusterNetwork, old: dict[str, Any] | None, leased_for: LeasedFor) -> str:
    """Why a Network may not move to another pool (or drop its pool): addresses of its old one are leased for it
    ("" when none). Its pods keep the old pool's addresses on their interfaces, which the new pool knows nothing of
    and would hand to other pods of the same segment. Another network's leases in a shared pool do not hold it."""
    try:
        before = parse_object(old) if isinstance(old, dict) else None
    except ManifestInvalid:
        return ""  # stored before this webhook checked it: nothing sure to compare with
    if not isinstance(before, (Network, ClusterNetwork)) or not _pool_key(before) \
            or _pool_key(before) == _pool_key(net):
        return ""
    held = sorted(leased_for(_pool_key(before), net.meta.key), key=to_int)
    if not held:
        return ""
    shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
    return (f"{net.meta.display}: spec.ipam.ipAddressPoolRef: {len(held)} address(es) are still leased for it from "
            f"{_pool_key(before)}: {shown}; the pods using them keep them on their interfaces, so delete them (and the "
            "IPAddresses that hold them) before moving the network to another pool")


def _family_of(obj: IPAddressObject, held: str) -> int:
    """``spec.ipFamily`` resolved: a Static's is its ``static.ip``'s, an Auto's 0 (the pool's first) is the family of
    the address it holds; so naming the family it already has is no move (0 when the address is no address)."""
    if obj.family:
        return obj.family
    try:
        return ipaddress.ip_address(obj.static_ip or held).version
    except ValueError:
        return 0


def _routers_of(net: Network | ClusterNetwork) -> set[tuple[str, int]]:
    """The policy routes' gateways of ``net``, each with the pool it is a router of (none without a pool)."""
    pool = _pool_key(net)
    return {(pool, to_int(r.via)) for r in net.pod.routes} if pool else set()


def _made_router(net: Network | ClusterNetwork, old: dict[str, Any] | None, leased_for: LeasedFor) -> str:
    """The policy routes of ``net`` whose gateway (``spec.policyRoutes[i].via``) the write makes of an address leased
    for it from its pool, in words ("" when none). Its pods are never given one (``AddressPool.for_network``), but an
    IPAddress that holds it keeps it, and hands the router's address to its next pod. Only what the write brings: one
    stored so before is still edited (a label, a finalizer let go)."""
    made, pool = _routers_of(net), _pool_key(net)
    if not made:
        return ""
    try:
        before = parse_object(old) if isinstance(old, dict) else None
    except ManifestInvalid:
        before = None  # stored before this webhook checked it: nothing sure it had
    if isinstance(before, (Network, ClusterNetwork)):
        made -= _routers_of(before)
    leased = {to_int(a) for a in leased_for(pool, net.meta.key)} if made else set()
    found = [f"spec.policyRoutes[{i}].via: {r.via}" for i, r in enumerate(net.pod.routes)
             if (pool, to_int(r.via)) in made and to_int(r.via) in leased]
    if not found:
        return ""
    return (f"{net.meta.display}: {'; '.join(found)}: leased from {pool} for this network, whose holder "
            "would keep the router's address as its own (an IPAddress gives it to its next pod); pick another gateway, "
            "or release the address first (plexusctl ipam release)")


def _address_moved(new: IPAddressObject, old: dict[str, Any] | None) -> str:
    """An edit of an IPAddress that holds its address (``status.address``) that would move it: to another network,
    another type or another Static address. Its lease would stay where it is, on the pod's or VM's interface, while
    the object said otherwise: it is deleted and made again instead."""
    held = str(((old or {}).get("status") or {}).get("address") or "")
    if not held or old is None:
        return ""
    try:
        before = parse_object(old)
    except ManifestInvalid:
        return ""  # stored before it could be checked: nothing it holds is known to be its own
    if not isinstance(before, IPAddressObject):
        return ""
    changed = [field for field, was, now in (("spec.networkRef", before.network_ref, new.network_ref),
                                             ("spec.type", before.type, new.type),
                                             ("spec.static.ip", before.static_ip, new.static_ip),
                                             ("spec.ipFamily", _family_of(before, held), _family_of(new, held)))
               if was != now]
    if not changed:
        return ""
    return (f"{new.meta.display}: {', '.join(changed)}: it holds {held} of {before.network_ref.kind} "
            f"{before.network_ref.name}, which its pod or VM may be using; an IPAddress that holds its address is "
            "not moved by an edit: delete it and create it again")


def _written_problem(doc: dict[str, Any], parsed: ApiObject, old: dict[str, Any] | None,
                     network_class: ClassOf) -> str:
    """What a write is refused for though the daemon would serve it, less what the stored object had already
    (``brought_by_write``), in words ("" when nothing)."""
    added = brought_by_write(doc, parsed, old, network_class)
    if not added:
        return ""
    return f"{parsed.meta.display}: " + "; ".join(f"{p.field}: {p.problem}" for p in added)


def problem_of(kind: str, obj: dict[str, Any], namespace: str = "", leased: Leased = _nothing_leased,
               old: dict[str, Any] | None = None, leased_for: LeasedFor | None = None,
               network_class: ClassOf = _no_class) -> str:
    """Why the daemon would refuse this object (or a change of a pool or of a Network's pool its leases forbid),
    or "" when none; ``old``: the object as stored before an UPDATE; ``leased_for``: a pool's addresses a network
    may use (without it, every address leased from the pool counts); ``network_class``: a Network's class."""
    if kind == POD.name:
        return _pod_problem(obj, namespace or str((obj.get("metadata") or {}).get("namespace") or "default"))
    try:
        parsed = parse_object(obj)
    except ManifestInvalid as exc:
        return str(exc)
    written = _written_problem(obj, parsed, old, network_class)
    if written:
        return written
    if isinstance(parsed, (Network, ClusterNetwork)):
        held_for = leased_for or (lambda pool, network: leased(pool))
        return _pool_moved(parsed, old, held_for) or _made_router(parsed, old, held_for)
    if isinstance(parsed, IPAddressObject):
        return _address_moved(parsed, old)
    if kind in POOL_KINDS and isinstance(parsed, AddressPool):
        held = list(leased(parsed.meta.key))
        return _orphaned(parsed, held) or _made_gateway(parsed, held)
    return ""


def warnings_of(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """What an allowed write is told (``warned_when_written``), each naming the object and field; ``old``: as
    stored before an UPDATE."""
    try:
        parsed = parse_object(obj)
    except ManifestInvalid:
        return []
    return [w.msg for w in warned_when_written(parsed, old=old)]


def _checked(doc: Any) -> tuple[str, dict[str, Any]]:
    """The review's version and request, the fields read of it in the shapes the API server sends (``ReviewInvalid``
    otherwise: an HTTP 400 naming the field, never a crash the API server reads as a failed call)."""
    if not isinstance(doc, dict) or doc.get("kind") != "AdmissionReview" or not isinstance(doc.get("request"), dict):
        raise ReviewInvalid("not an AdmissionReview with a request")
    if doc.get("apiVersion") not in REVIEW_VERSIONS:
        raise ReviewInvalid(f"apiVersion {doc.get('apiVersion')!r} is not one of {', '.join(REVIEW_VERSIONS)}")
    request = doc["request"]
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewInvalid("request.uid is missing")
    gvk = request.get("kind")
    if not isinstance(gvk, dict) or not isinstance(gvk.get("kind"), str) or not isinstance(gvk.get("group", ""), str):
        raise ReviewInvalid("request.kind must be a group, version and kind")
    for key in ("object", "oldObject"):
        obj = request.get(key)
        if obj is not None and not isinstance(obj, dict):
            raise ReviewInvalid(f"request.{key} must be an object")
        md = obj.get("metadata") if isinstance(obj, dict) else None
        if isinstance(obj, dict) and "metadata" in obj and not isinstance(md, dict):
            raise ReviewInvalid(f"request.{key}.metadata must be an object")
        annotations = md.get("annotations") if isinstance(md, dict) else None
        if annotations is not None and not (isinstance(annotations, dict)
                                            and all(isinstance(v, str) for v in annotations.values())):
            raise ReviewInvalid(f"request.{key}.metadata.annotations must map names to strings")
    return str(doc["apiVersion"]), request


def review(doc: Any, leased: Leased = _nothing_leased, leased_for: LeasedFor | None = None,
           network_class: ClassOf = _no_class) -> dict[str, Any]:
    """Answer one AdmissionReview (``admission.k8s.io/v1``, or ``v1beta1``), in its own version."""
    version, request = _checked(doc)
    uid = request["uid"]
    kind, group = request["kind"]["kind"], request["kind"].get("group", "")
    obj = request.get("object")
    served = KINDS.get(kind)
    old = request.get("oldObject")
    if request.get("operation") == "DELETE" and kind in POOL_KINDS and isinstance(old, dict) and served is not None \
            and served.api_version.partition("/")[0] == group:
        problem = _in_use(str(kind), old, str(request.get("namespace") or ""), leased)
        return _response(uid, not problem, problem, version)
    if request.get("operation") not in ("CREATE", "UPDATE") or not isinstance(obj, dict):
        return _response(uid, True, version=version)  # CONNECT, and a DELETE of anything else, carry nothing to check
    if kind == POD.name and group == "":
        problem = problem_of(POD.name, obj, str(request.get("namespace") or ""))
    elif served is not None and served.api_version.partition("/")[0] == group:
        doc = _named(obj, request)
        doc.setdefault("apiVersion", served.api_version)
        doc.setdefault("kind", served.name)
        stored = _named(old, request) if isinstance(old, dict) and request.get("operation") == "UPDATE" else None
        if stored is not None:
            stored.setdefault("apiVersion", served.api_version)
            stored.setdefault("kind", served.name)
        problem = problem_of(served.name, doc, leased=leased, old=stored, leased_for=leased_for,
                             network_class=network_class)
        if not problem:
            return _response(uid, True, version=version, warnings=warnings_of(doc, stored))
    else:
        return _response(uid, True, version=version)  # not ours: a misrouted rule must not block anything
    return _response(uid, not problem, problem, version)

"""What one object names, found in a source: a network's class and pool, an IPAddress's pool.

The node (IPAM, the reconciler) and the controller follow the same references the same way.
"""

from __future__ import annotations

from cni.errors import ObjectNotFound
from ipamd.model.objects import (
    CLUSTER_NETWORK,
    NETWORK,
    NETWORK_ATTACHMENT_DEFINITION,
    NETWORK_CLASS,
    NETWORK_KINDS,
    POOL_KINDS,
    AddressPool,
    ClusterNetwork,
    IPAddressObject,
    Network,
    NetworkClass,
)
from ipamd.model.services import NETWORK_ANNOTATION, NetworkRef, ServiceInvalid
from ipamd.sources.base import ObjectSource


def class_of(source: ObjectSource, net: Network | ClusterNetwork) -> NetworkClass | None:
    """The NetworkClass a network names (None when it names none, or one that does not exist)."""
    return source.get(NETWORK_CLASS, "", net.network_class) if net.network_class else None


def pool_of(source: ObjectSource, net: Network | ClusterNetwork, required: bool = False) -> AddressPool | None:
    """The pool a network's ``spec.ipam`` names (a pool of its namespace, or a cluster pool); None when it
    has no IPAM, or, unless ``required`` (then ``ObjectNotFound``), when the pool is missing."""
    ref = net.pool_ref
    if ref is None:
        return None
    kind = POOL_KINDS[ref.kind]
    ns = net.meta.namespace if kind.namespaced else ""
    pool = source.get(kind, ns, ref.name)
    if pool is None and required:
        raise ObjectNotFound(f"{ref.kind} {ns + '/' if ns else ''}{ref.name} of {net.meta.display} does not exist",
                             "spec.ipam.ipAddressPoolRef")
    return pool


def pool_of_ip(source: ObjectSource, obj: IPAddressObject) -> AddressPool | None:
    """The pool of the network an IPAddress refers to, as that network sees it (``AddressPool.for_network``: its
    policy routes' gateways never leased); None when either is missing."""
    kind = NETWORK_KINDS[obj.network_ref.kind]
    net = source.get(kind, obj.meta.namespace if kind.namespaced else "", obj.network_ref.name)
    pool = pool_of(source, net) if net is not None else None
    return pool.for_network(net) if pool is not None and net is not None else None


def check_service_network(source: ObjectSource, ref: NetworkRef) -> None:
    """A Service over an additional network names one that exists (ServiceInvalid, reason NetworkNotFound, if not)."""
    kind = {"Network": NETWORK, "ClusterNetwork": CLUSTER_NETWORK,
            "NetworkAttachmentDefinition": NETWORK_ATTACHMENT_DEFINITION}[ref.kind]
    if source.get(kind, ref.namespace, ref.name) is None:
        raise ServiceInvalid(f"metadata.annotations[{NETWORK_ANNOTATION}]", f"{ref.display} does not exist",
                             "NetworkNotFound")

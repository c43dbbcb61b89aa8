"""Every API resource Plexus reads or writes, in one table, and one helper per verb on custom objects.

The Deckhouse kinds (``network.deckhouse.io/v1alpha1``) and Plexus's own tracking objects share one
group; the Network Plumbing WG's live in ``k8s.cni.cncf.io`` (NetworkAttachmentDefinition ``v1``,
IPAMClaim ``v1alpha1``). Callers name a kind; the table says where it lives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ipamd.kube.errors import KindNotServed, unserved
from ipamd.model.objects import GROUP, KINDS


@dataclass(frozen=True, slots=True)
class Resource:
    """Where the API serves a kind."""

    kind: str
    group: str
    version: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


NPWG_GROUP = "k8s.cni.cncf.io"


def _deckhouse(kind: str, plural: str, namespaced: bool) -> Resource:
    return Resource(kind, GROUP, "v1alpha1", plural, namespaced)


RESOURCES: dict[str, Resource] = {r.kind: r for r in (
    _deckhouse("NetworkClass", "networkclasses", False),
    _deckhouse("Network", "networks", True),
    _deckhouse("ClusterNetwork", "clusternetworks", False),
    _deckhouse("IPAddressPool", "ipaddresspools", True),
    _deckhouse("ClusterIPAddressPool", "clusteripaddresspools", False),
    _deckhouse("IPAddress", "ipaddresses", True),
    _deckhouse("ClusterIPAddress", "clusteripaddresses", False),
    _deckhouse("IPAddressLease", "ipaddressleases", False),
    _deckhouse("IPAddressBlock", "ipaddressblocks", False),
    _deckhouse("NodeNetworkInterfaceAttachment", "nodenetworkinterfaceattachments", False),
    Resource("NetworkAttachmentDefinition", NPWG_GROUP, "v1", "network-attachment-definitions", True),
    Resource("IPAMClaim", NPWG_GROUP, "v1alpha1", "ipamclaims", True),
)}

#: The kinds the object source serves (parsed into typed objects); the rest Plexus writes and tracks.
SERVED_KINDS = tuple(k for k in KINDS if k in RESOURCES)
#: The controller's: the Deckhouse kinds (it reviews NADs in the webhook, but never reads them).
DECKHOUSE_KINDS = tuple(k for k in SERVED_KINDS if RESOURCES[k].group == GROUP)


@contextmanager
def _served(kind: str) -> Iterator[None]:
    """A 404 of the path, not of an object (the kind not served yet: an API server starting again serves custom
    resources only once it has read their definitions) answered as the API server unavailable (503), which every
    caller retries: read as "the object is gone", it dropped owed writes and gave back a node's own block."""
    try:
        yield
    except ApiException as exc:
        if unserved(exc):
            raise KindNotServed(kind) from exc
        raise


class CustomObjects:
    """Create, read, patch (object or status) and delete a custom object of any kind in the table (a kind not served
    yet answers 503, see ``_served``)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = client.CustomObjectsApi(api)

    def create(self, kind: str, body: dict[str, Any], namespace: str = "") -> Any:
        with _served(kind):
            r = RESOURCES[kind]
            if r.namespaced:
                return self.api.create_namespaced_custom_object(r.group, r.version, namespace, r.plural, body)
            return self.api.create_cluster_custom_object(r.group, r.version, r.plural, body)

    def get(self, kind: str, name: str, namespace: str = "", timeout: Any = None) -> dict[str, Any]:
        with _served(kind):
            r = RESOURCES[kind]
            if r.namespaced:
                found = self.api.get_namespaced_custom_object(r.group, r.version, namespace, r.plural, name,
                                                              _request_timeout=timeout)
            else:
                found = self.api.get_cluster_custom_object(r.group, r.version, r.plural, name, _request_timeout=timeout)
            assert isinstance(found, dict)
            return found

    def patch(self, kind: str, name: str, body: dict[str, Any], namespace: str = "") -> Any:
        with _served(kind):
            r = RESOURCES[kind]
            if r.namespaced:
                return self.api.patch_namespaced_custom_object(r.group, r.version, namespace, r.plural, name, body)
            return self.api.patch_cluster_custom_object(r.group, r.version, r.plural, name, body)

    def patch_status(self, kind: str, name: str, status: dict[str, Any], namespace: str = "",
                     resource_version: str = "", timeout: Any = None, field_manager: str = "") -> Any:
        """A merge patch of the status subresource (with ``resource_version``: only if the object is still at it,
        else 409); ``timeout`` as the client's ``_request_timeout`` (None: the client's own); ``field_manager``: who
        writes (the API server stamps its time in ``managedFields``)."""
        with _served(kind):
            r = RESOURCES[kind]
            body: dict[str, Any] = {"status": status}
            if resource_version:
                body["metadata"] = {"resourceVersion": resource_version}
            extra: dict[str, Any] = {"field_manager": field_manager} if field_manager else {}
            if r.namespaced:
                return self.api.patch_namespaced_custom_object_status(r.group, r.version, namespace, r.plural, name, body,
                                                                      _request_timeout=timeout, **extra)
            return self.api.patch_cluster_custom_object_status(r.group, r.version, r.plural, name, body,
                                                               _request_timeout=timeout, **extra)

    def delete(self, kind: str, name: str, namespace: str = "", resource_version: str = "") -> Any:
        """Delete an object (with ``resource_version``: only if it is still at it, else 409)."""
        with _served(kind):
            r = RESOURCES[kind]
            options = client.V1DeleteOptions(preconditions=client.V1Preconditions(resource_version=resource_version)) \
                if resource_version else None
            if r.namespaced:
                return self.api.delete_namespaced_custom_object(r.group, r.version, namespace, r.plural, name,
                                                                body=options)
            return self.api.delete_cluster_custom_object(r.group, r.version, r.plural, name, body=options)

    def lister(self, kind: str) -> Callable[..., Any]:
        """The list function of ``kind`` across namespaces, for an informer. It has no docstring on purpose:
        the kubernetes watch then hands back plain dicts instead of a model object per event."""
        r = RESOURCES[kind]

        def list_objects(**kwargs: Any) -> Any:
            return self.api.list_cluster_custom_object(r.group, r.version, r.plural, **kwargs)

        return list_objects

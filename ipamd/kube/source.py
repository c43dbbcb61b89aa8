"""The Kubernetes object source: the seed's API and this node's pods, from informers.

Implements the same ``ObjectSource`` as the local directory source, so the rest of the daemon
does not know which one it reads. Objects that fail validation (the CRD schema lets through
what it cannot express) are reported as problems and not served.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from ipamd.kube.informer import Informer
from ipamd.objects import API_VERSION, GROUP, ApiObject, ManifestInvalid, Pod, parse_object
from ipamd.sources import Problem

log = logging.getLogger(__name__)
VERSION = "v1alpha1"
PLURALS = {
    "NetworkClass": "networkclasses", "Network": "networks", "ClusterNetwork": "clusternetworks",
    "IPAddressPool": "ipaddresspools", "ClusterIPAddressPool": "clusteripaddresspools",
    "IPAddress": "ipaddresses", "ClusterIPAddress": "clusteripaddresses", "IPAddressLease": "ipaddressleases",
    "NodeNetworkInterfaceAttachment": "nodenetworkinterfaceattachments",
}
SERVED_KINDS = [k for k in PLURALS if k not in ("IPAddressLease", "NodeNetworkInterfaceAttachment")]


def _lister(fn: Callable[..., Any], *args: Any) -> Callable[..., Any]:
    """A list function without a docstring: the kubernetes watch then hands back plain dicts
    instead of building a model object for every event."""
    def list_objects(**kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return list_objects


class KubernetesSource:
    def __init__(self, api: client.ApiClient, node_name: str, pod_wait_s: float = 2.0) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.node_name = node_name
        self.pod_wait_s = pod_wait_s
        self._subscribers: list[Callable[[], None]] = []
        self._changed = threading.Event()
        self._lock = threading.Lock()
        self._parsed: dict[str, tuple[int, dict[tuple[str, str], ApiObject], list[Problem]]] = {}
        self.informers: dict[str, Informer] = {}
        for kind in PLURALS:
            lister = _lister(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURALS[kind])
            self.informers[kind] = Informer(kind, lister, kind, API_VERSION, self._notify)
        if node_name:  # the controller alone needs no pods
            pods = _lister(self.core.list_pod_for_all_namespaces)
            self.informers["Pod"] = Informer("Pod", pods, "Pod", "v1", self._notify,
                                             field_selector=f"spec.nodeName={node_name}")

    def _notify(self) -> None:
        self._changed.set()
        with self._lock:
            self._parsed.clear()
        for callback in list(self._subscribers):
            try:
                callback()
            except Exception:
                log.exception("object-change handler failed")

    def _objects(self, kind: str) -> tuple[dict[tuple[str, str], ApiObject], list[Problem]]:
        with self._lock:
            cached = self._parsed.get(kind)
            if cached is not None:
                return cached[1], cached[2]
        objects: dict[tuple[str, str], ApiObject] = {}
        problems: list[Problem] = []
        informer = self.informers.get(kind)
        for doc in informer.items() if informer is not None else []:
            md = doc.get("metadata") or {}
            where = f"{kind} {md.get('namespace', '') + '/' if md.get('namespace') else ''}{md.get('name')}"
            try:
                obj = parse_object(doc, "api")
            except ManifestInvalid as exc:
                problems.append(Problem(where, exc.field, str(exc)))
                continue
            objects[(obj.meta.namespace, obj.meta.name)] = obj
        with self._lock:
            self._parsed[kind] = (0, objects, problems)
        return objects, problems

    # -- ObjectSource ---------------------------------------------------------------------------
    def start(self) -> None:
        for informer in self.informers.values():
            informer.start()

    def stop(self) -> None:
        for informer in self.informers.values():
            informer.stop()

    def ready(self) -> bool:
        return all(i.synced.is_set() for i in self.informers.values())

    def sync(self) -> builtins.list[Problem]:
        deadline = time.monotonic() + 30
        for informer in self.informers.values():
            informer.synced.wait(max(0.0, deadline - time.monotonic()))
        return self.problems()

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._subscribers.append(callback)

    def get(self, kind: str, namespace: str, name: str) -> ApiObject | None:
        return self._objects(kind)[0].get((namespace, name))

    def list(self, kind: str) -> builtins.list[ApiObject]:
        return builtins.list(self._objects(kind)[0].values())

    def pod_by_uid(self, uid: str) -> Pod | None:
        for pod in self._objects("Pod")[0].values():
            if isinstance(pod, Pod) and pod.meta.uid == uid:
                return pod
        return None

    def problems(self) -> builtins.list[Problem]:
        return [p for kind in SERVED_KINDS + ["Pod"] if kind in self.informers for p in self._objects(kind)[1]]

    # -- beyond the cache -------------------------------------------------------------------------
    def wait_for_pod(self, namespace: str, name: str) -> Pod | None:
        """A pod the informer has not seen yet (ADD can beat the watch): wait a bounded time, then
        read it directly."""
        deadline = time.monotonic() + self.pod_wait_s
        while time.monotonic() < deadline:
            pod = self.get("Pod", namespace, name)
            if isinstance(pod, Pod):
                return pod
            self._changed.clear()
            self._changed.wait(0.05)
        from ipamd.kube.leases import api_unavailable_is_11

        try:
            with api_unavailable_is_11():
                resp = self.core.read_namespaced_pod(name, namespace, _preload_content=False)
        except client.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        import json

        doc = json.loads(resp.data)  # type: ignore[attr-defined]  # raw response: _preload_content=False
        doc.setdefault("kind", "Pod")
        doc.setdefault("apiVersion", "v1")
        obj = parse_object(doc, "api")
        return obj if isinstance(obj, Pod) else None

    def lease_items(self) -> builtins.list[dict[str, Any]]:
        return self.informers["IPAddressLease"].items()

    def attachment_items(self) -> builtins.list[dict[str, Any]]:
        return self.informers["NodeNetworkInterfaceAttachment"].items()

"""Services over an additional network, the controller's side: it keeps one EndpointSlice per annotated Service
(``ipamd.model.services``) in step with the pods it selects, as they come, go, change labels or become ready, and
tells the Service what is wrong (an Event and a status condition) when it cannot.

It runs beside the controller's round, on its own wake-ups (a Service, a pod, a network changing), and only while
the controller leads. A slice is written only when what it says changed; the ones it wrote for Services that no
longer ask are deleted (a deleted Service takes its slice along: the slice is owned by it).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client

from ipamd.kube.errors import reason_of, status_of
from ipamd.kube.source import ALL_PODS, SERVICES, KubernetesSource
from ipamd.model.objects import CLUSTER_NETWORK, NETWORK, NETWORK_ATTACHMENT_DEFINITION
from ipamd.model.services import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    ServiceInvalid,
    endpoint_slice,
    parse_service,
)
from ipamd.model.timefmt import rfc3339
from ipamd.sources.lookups import check_service_network

log = logging.getLogger(__name__)
GROUP, PLURAL = "discovery.k8s.io", "endpointslices"
CONDITION = "network.deckhouse.io/Endpoints"
SETTLE_S = 0.2  # changes that come together (a rollout) are written together


class ServiceEndpoints:
    def __init__(self, api: client.ApiClient, source: KubernetesSource, leading: Callable[[], bool]) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.apis = client.ApisApi(api)
        self.source = source
        self.leading = leading
        self.version = ""
        self._written: dict[tuple[str, str], str] = {}  # (namespace, slice) -> what was written, as JSON
        self._said: dict[str, tuple[str, str]] = {}  # Service UID -> (reason, message) last told it
        self._swept = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        source.subscribe(self._wake.set, kinds=(SERVICES, ALL_PODS, NETWORK.name, CLUSTER_NETWORK.name,
                                               NETWORK_ATTACHMENT_DEFINITION.name))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="service-endpoints", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(5.0)
            self._stop.wait(SETTLE_S)
            self._wake.clear()
            if self._stop.is_set() or not self.leading() or not self.source.ready():
                continue
            try:
                self.sync()
            except Exception as exc:
                log.warning("services over additional networks: %s", reason_of(exc))

    # -- one pass -----------------------------------------------------------------------------------
    def sync(self) -> None:
        if not self.version:
            self.version = self._discovery_version()
        wanted: set[tuple[str, str]] = set()
        for item in self.source.items(SERVICES):
            try:
                svc = parse_service(item)
                if svc is None:
                    continue
                check_service_network(self.source, svc.network)
            except ServiceInvalid as exc:
                self._tell(item, False, exc.reason, f"{exc.field}: {exc.problem}")
                continue
            body = endpoint_slice(svc, self.source.by_index(ALL_PODS, "namespace", svc.namespace),
                                  f"{GROUP}/{self.version}")
            key = (svc.namespace, body["metadata"]["name"])
            wanted.add(key)
            self._write(key, body)
            self._tell(item, True, "EndpointsWritten", f"{len(body['endpoints'])} address(es) of "
                       f"{svc.network.display} in EndpointSlice {key[1]}")
        self._sweep(wanted)

    def _discovery_version(self) -> str:
        """discovery.k8s.io/v1 where the API server serves it (1.21 on), else v1beta1 (1.17-1.20)."""
        for group in self.apis.get_api_versions().groups:
            if group.name == GROUP:
                served = {v.version for v in group.versions}
                return "v1" if "v1" in served else "v1beta1"
        raise RuntimeError("the API server serves no discovery.k8s.io: EndpointSlices need Kubernetes 1.17 or later")

    def _write(self, key: tuple[str, str], body: dict[str, Any]) -> None:
        text = json.dumps(body, sort_keys=True)
        if self._written.get(key) == text:
            return
        ns, name = key
        try:
            self.custom.create_namespaced_custom_object(GROUP, self.version, ns, PLURAL, body)
        except Exception as exc:
            if status_of(exc) != 409:
                raise
            self.custom.patch_namespaced_custom_object(GROUP, self.version, ns, PLURAL, name, body)
        self._written[key] = text

    def _sweep(self, wanted: set[tuple[str, str]]) -> None:
        """Delete the slices written for Services that no longer ask (on the first pass: any such slice)."""
        if not self._swept:
            found: Any = self.custom.list_cluster_custom_object(
                GROUP, self.version, PLURAL, label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY}")
            for item in found.get("items", []):
                md = item["metadata"]
                self._written.setdefault((md["namespace"], md["name"]), "")
            self._swept = True
        for key in [k for k in self._written if k not in wanted]:
            try:
                self.custom.delete_namespaced_custom_object(GROUP, self.version, key[0], PLURAL, key[1])
            except Exception as exc:
                if status_of(exc) != 404:
                    raise
            del self._written[key]

    def _tell(self, svc: dict[str, Any], ok: bool, reason: str, message: str) -> None:
        """The Service's condition, and a Warning Event when something is wrong: once per change, not per pass."""
        md = svc.get("metadata") or {}
        uid, ns, name = str(md.get("uid")), str(md.get("namespace")), str(md.get("name"))
        if self._said.get(uid) == (reason, message):
            return
        if not ok:  # its slice, if any, is swept: no endpoints while the Service is wrong
            log.warning("Service %s/%s: %s", ns, name, message)
            self._event(ns, name, uid, reason, message)
        condition = {"type": CONDITION, "status": "True" if ok else "False", "reason": reason, "message": message,
                     "lastTransitionTime": rfc3339(), "observedGeneration": md.get("generation") or 0}
        try:
            self.core.patch_namespaced_service_status(name, ns, {"status": {"conditions": [condition]}})
        except Exception as exc:
            log.info("Service %s/%s status: %s", ns, name, reason_of(exc))
        self._said[uid] = (reason, message)

    def _event(self, ns: str, name: str, uid: str, reason: str, message: str) -> None:
        now = rfc3339()
        body: Any = {"metadata": {"generateName": f"{name}.", "namespace": ns},
                "involvedObject": {"kind": "Service", "apiVersion": "v1", "namespace": ns, "name": name, "uid": uid},
                "reason": reason, "message": message, "type": "Warning", "source": {"component": "plexus-controller"},
                "firstTimestamp": now, "lastTimestamp": now, "count": 1}
        try:
            self.core.create_namespaced_event(ns, body)
        except Exception as exc:
            log.info("Event for Service %s/%s: %s", ns, name, reason_of(exc))

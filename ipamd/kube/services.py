"""Services over an additional network, the controller's side: it keeps an annotated Service's EndpointSlices (one
per address family, ``ipamd.model.services``) in step with the pods it selects, as they come, go, change labels or
become ready, and tells the Service what is wrong (an Event and a status condition) when it cannot.

It runs beside the controller's round, on its own wake-ups (a Service, a pod, a network changing), and only while
the controller leads. A slice is written only when what it says changed; the ones it wrote for Services that no
longer ask (or for a family with no address left) are deleted, again on later passes while a delete fails (a deleted
Service takes its slices along: they are owned by it).
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
    asks,
    endpoint_slices,
    parse_service,
)
from ipamd.model.timefmt import rfc3339
from ipamd.sources.lookups import check_service_network

log = logging.getLogger(__name__)
GROUP, PLURAL = "discovery.k8s.io", "endpointslices"
CONDITION = "network.deckhouse.io/Endpoints"
SETTLE_S = 0.2  # changes that come together (a rollout) are written together
WATCHED = (SERVICES, ALL_PODS, NETWORK.name, CLUSTER_NETWORK.name, NETWORK_ATTACHMENT_DEFINITION.name)


class ServiceEndpoints:
    def __init__(self, api: client.ApiClient, source: KubernetesSource, leading: Callable[[], bool]) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.apis = client.ApisApi(api)
        self.source = source
        self.leading = leading
        self.version = ""
        self._managed = True  # whether slices of ours may exist (at start: maybe, from another leader or a past run)
        self._said: dict[str, tuple[str, str, str]] = {}  # Service UID -> (status, reason, message) it was last told
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        source.subscribe(self._wake.set, kinds=WATCHED)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="service-endpoints", daemon=True)
        self._thread.start()

    def stop(self, wait_s: float = 1.0) -> None:
        """Stop the loop; a pass stuck on a hung API server is not waited for past ``wait_s`` (its thread dies with
        the process, and the next leader compares its slices with the live ones): the process's grace period is
        the controller's to spend."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(wait_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(5.0)
            self._stop.wait(SETTLE_S)
            self._wake.clear()
            if self._stop.is_set() or not self.leading() or not self.source.ready(WATCHED):
                continue
            try:
                self.sync()
            except Exception as exc:
                log.warning("services over additional networks: %s", reason_of(exc))

    # -- one pass -----------------------------------------------------------------------------------
    def sync(self) -> None:
        """Every annotated Service's slice as it should be, compared with the slices as they are (one list of the
        ones Plexus manages: what another replica wrote while it led, or a hand's deletion, is seen)."""
        services = self.source.items(SERVICES)
        for item in services:
            if not asks(item) and _told(item):
                self._untell(item)
        if not self._managed and not any(asks(item) for item in services):
            return  # nothing asks, and no slice of ours was left: no request at all (most clusters, most passes)
        if not self.version:
            self.version = self._discovery_version()
        found: Any = self.custom.list_cluster_custom_object(GROUP, self.version, PLURAL,
                                                            label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY}")
        current = {(i["metadata"]["namespace"], i["metadata"]["name"]): _content(i) for i in found.get("items", [])}
        wanted: set[tuple[str, str]] = set()
        seen: set[str] = set()
        for item in services:
            if not asks(item):
                continue
            seen.add(str((item.get("metadata") or {}).get("uid")))
            try:
                svc = parse_service(item)
                if svc is None:
                    continue
                check_service_network(self.source, svc.network)
                bodies = endpoint_slices(svc, self.source.by_index(ALL_PODS, "namespace", svc.namespace),
                                         f"{GROUP}/{self.version}")
                keys = [(svc.namespace, str(body["metadata"]["name"])) for body in bodies]
                wanted.update(keys)  # all of them before any write: one failing does not delete the other
                for key, body in zip(keys, bodies, strict=True):
                    if current.get(key) != _content(body):
                        self._write(key, body, exists=key in current)
            except ServiceInvalid as exc:
                self._tell(item, False, exc.reason, f"{exc.field}: {exc.problem}")
                continue
            except Exception as exc:  # this Service's write failed (its namespace going, a slice too large): the next
                self._tell(item, False, "WriteFailed", f"EndpointSlice: {reason_of(exc)}")
                continue
            self._tell(item, True, "EndpointsWritten", f"{sum(len(b['endpoints']) for b in bodies)} address(es) of "
                       f"{svc.network.display} in EndpointSlice{'s' if len(keys) > 1 else ''} "
                       f"{', '.join(k[1] for k in keys)}")
        undeleted = False
        for key in set(current) - wanted:
            try:
                self.custom.delete_namespaced_custom_object(GROUP, self.version, key[0], PLURAL, key[1])
            except Exception as exc:
                if status_of(exc) != 404:
                    log.warning("EndpointSlice %s/%s: %s", key[0], key[1], reason_of(exc))
                    undeleted = True
        for uid in set(self._said) - seen:  # Services gone, or no longer asking
            del self._said[uid]
        # with none left, the next pass lists again only when a Service asks; a slice whose delete failed (not a 404:
        # gone already) is still ours to delete, even once no Service asks
        self._managed = bool(wanted) or undeleted

    def _discovery_version(self) -> str:
        """discovery.k8s.io/v1 where the API server serves it (1.21 on), else v1beta1 (1.17-1.20)."""
        for group in self.apis.get_api_versions().groups:
            if group.name == GROUP:
                served = {v.version for v in group.versions}
                return "v1" if "v1" in served else "v1beta1"
        raise RuntimeError("the API server serves no discovery.k8s.io: EndpointSlices need Kubernetes 1.17 or later")

    def _write(self, key: tuple[str, str], body: dict[str, Any], exists: bool) -> None:
        ns, name = key
        log.info("EndpointSlice %s/%s: %d endpoint(s)", ns, name, len(body["endpoints"]))
        if not exists:
            try:
                self.custom.create_namespaced_custom_object(GROUP, self.version, ns, PLURAL, body)
                return
            except Exception as exc:
                if status_of(exc) != 409:
                    raise
        self.custom.patch_namespaced_custom_object(GROUP, self.version, ns, PLURAL, name, body)

    def _tell(self, svc: dict[str, Any], ok: bool, reason: str, message: str) -> None:
        """The Service's condition, and a Warning Event when something is wrong: once per change, not per pass; the
        condition's transition time moves only when its status does."""
        md = svc.get("metadata") or {}
        uid, ns, name = str(md.get("uid")), str(md.get("namespace")), str(md.get("name"))
        status = "True" if ok else "False"
        said = self._said.get(uid)
        if said == (status, reason, message):
            return
        if not ok:
            log.warning("Service %s/%s: %s", ns, name, message)
            self._event(ns, name, uid, reason, message)
        conditions = (svc.get("status") or {}).get("conditions") or []
        old: dict[str, Any] = next((c for c in conditions if c.get("type") == CONDITION), {})
        since = old.get("lastTransitionTime") if old.get("status") == status else None
        condition = {"type": CONDITION, "status": status, "reason": reason, "message": message,
                     "lastTransitionTime": since or rfc3339(), "observedGeneration": md.get("generation") or 0}
        try:
            self.core.patch_namespaced_service_status(name, ns, {"status": {"conditions": [condition]}})
        except Exception as exc:
            log.info("Service %s/%s status: %s", ns, name, reason_of(exc))
            return  # told again next pass
        self._said[uid] = (status, reason, message)

    def _untell(self, svc: dict[str, Any]) -> None:
        """The condition of a Service that no longer asks (its annotations removed): removed, not left saying Plexus
        serves it; its slices go with the others no Service wants. Removed again next pass while the write fails."""
        md = svc.get("metadata") or {}
        ns, name = str(md.get("namespace")), str(md.get("name"))
        self._said.pop(str(md.get("uid")), None)
        try:  # a strategic merge patch: the conditions are merged by type, and this one deleted
            self.core.patch_namespaced_service_status(name, ns, {"status": {"conditions": [
                {"type": CONDITION, "$patch": "delete"}]}})
        except Exception as exc:
            log.info("Service %s/%s status: %s", ns, name, reason_of(exc))
            return
        log.info("Service %s/%s no longer asks for endpoints on an additional network: its %s condition removed", ns,
                 name, CONDITION)

    def _event(self, ns: str, name: str, uid: str, reason: str, message: str) -> None:
        now = rfc3339()
        body: Any = {"metadata": {"generateName": f"{name}.", "namespace": ns},
                     "involvedObject": {"kind": "Service", "apiVersion": "v1", "namespace": ns, "name": name,
                                        "uid": uid},
                     "reason": reason, "message": message, "type": "Warning",
                     "source": {"component": "plexus-controller"}, "firstTimestamp": now, "lastTimestamp": now,
                     "count": 1}
        try:
            self.core.create_namespaced_event(ns, body)
        except Exception as exc:
            log.info("Event for Service %s/%s: %s", ns, name, reason_of(exc))


def _told(svc: dict[str, Any]) -> bool:
    """Whether the Service carries the condition Plexus writes on the Services it serves."""
    return any(c.get("type") == CONDITION for c in (svc.get("status") or {}).get("conditions") or [])


def _content(item: dict[str, Any]) -> str:
    """What a slice says (its endpoints, ports, labels and owner), as compared with what it should say."""
    md = item.get("metadata") or {}
    return json.dumps([item.get("endpoints") or [], item.get("ports") or [], md.get("labels") or {},
                       [o.get("uid") for o in md.get("ownerReferences") or []]], sort_keys=True)

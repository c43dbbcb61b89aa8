"""Statuses written to the Kubernetes API.

- ``networks-status``: a merge patch of that one annotation, with the pod's UID as a precondition,
  so a status never lands on a recreated pod of the same name.
- Auto IPAddresses: created with an ownerReference to the pod, so the cluster's garbage collector
  deletes them with it.
- IPAddress status through the status subresource; an Event on the pod per attached interface
  and per failure.
Failures to publish are logged, never fail the CNI call: the store holds the truth.

ADD waits for the writes that say what the pod has (its ``networks-status``, its IPAddresses) but
runs the two chains side by side, and leaves Events to a background thread: Kubernetes treats
Events as best effort, and a round trip each is a fifth of an ADD with the API in the loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cni.types import cidr_of
from ipamd.kube.errors import reason_of, status_of
from ipamd.kube.resources import CustomObjects
from ipamd.model.conditions import condition
from ipamd.model.npwg import NETWORK_STATUS_ANNOTATION
from ipamd.model.objects import (
    API_VERSION,
    GROUP,
    IP_ADDRESS,
    IP_ADDRESS_KINDS,
    IPAM_CLAIM,
    POD,
    STATUS_ANNOTATION,
    Pod,
)
from ipamd.model.timefmt import rfc3339
from ipamd.store.records import IPRecord, PodStatus

log = logging.getLogger(__name__)

ATTACHMENT = "NodeNetworkInterfaceAttachment"
EVENT_BACKLOG = 1000  # beyond this, Events are dropped (and logged): the API server is not keeping up


class KubePublisher:
    def __init__(self, api: client.ApiClient, node_name: str) -> None:
        self.core = client.CoreV1Api(api)
        self.objects = CustomObjects(api)
        self.node_name = node_name
        self._writers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="publish")
        self._events: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=EVENT_BACKLOG)
        threading.Thread(target=self._post_events, name="events", daemon=True).start()

    def _post_events(self) -> None:
        while True:
            body = self._events.get()
            try:
                self.core.create_namespaced_event(body["metadata"]["namespace"], body)  # type: ignore[arg-type]
            except ApiException as exc:
                log.debug("event for %s: %s", body["involvedObject"]["name"], exc.reason)
            except Exception as exc:  # the API unreachable: an Event is not worth a retry
                log.debug("event for %s: %s", body["involvedObject"]["name"], exc)

    def pending_events(self) -> int:
        return self._events.qsize()

    def _patch_status_annotations(self, namespace: str, name: str, uid: str, status: PodStatus | None) -> None:
        """Both status annotations in one merge patch (removed with the pod's last attachment), with the pod's
        UID as a precondition: a status never lands on a recreated pod of the same name."""
        body = {"metadata": {"uid": uid, "annotations": {
            STATUS_ANNOTATION: json.dumps(list(status.networks_status)) if status else None,
            NETWORK_STATUS_ANNOTATION: json.dumps(list(status.network_status)) if status else None}}}
        try:
            self.core.patch_namespaced_pod(name, namespace, body)
        except Exception as exc:  # unreachable too: logged, never the CNI call's failure
            if status_of(exc) not in (404, 409):  # gone, or a new pod of that name: nothing to write
                log.warning("writing networks-status of %s/%s: %s", namespace, name, reason_of(exc))

    def _event(self, namespace: str, name: str, uid: str, reason: str, message: str, warning: bool = False) -> None:
        body = {
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {"kind": POD.name, "apiVersion": "v1", "namespace": namespace, "name": name, "uid": uid},
            "reason": reason, "message": message[:1000], "type": "Warning" if warning else "Normal",
            "source": {"component": "plexus", "host": self.node_name},
            "firstTimestamp": rfc3339(), "lastTimestamp": rfc3339(), "count": 1,
        }
        try:
            self._events.put_nowait(body)
        except queue.Full:
            log.warning("dropped event %s for %s/%s: %d events wait already", reason, namespace, name, EVENT_BACKLOG)

    def _create_auto_ip(self, rec: IPRecord, pod: Pod) -> None:
        body = {
            "apiVersion": API_VERSION, "kind": IP_ADDRESS.name,
            "metadata": {
                "name": rec.name, "namespace": rec.namespace,
                "labels": {f"{GROUP}/owner-pod-uid": pod.meta.uid},
                "ownerReferences": [{"apiVersion": "v1", "kind": POD.name, "name": pod.meta.name, "uid": pod.meta.uid}],
            },
            "spec": {"networkRef": {"kind": rec.network_kind, "name": rec.network_name}, "type": "Auto"},
        }
        try:
            self.objects.create(IP_ADDRESS.name, body, rec.namespace)
        except Exception as exc:
            if status_of(exc) != 409:
                log.warning("creating IPAddress %s/%s: %s", rec.namespace, rec.name, reason_of(exc))

    def ip_status(self, rec: IPRecord) -> None:
        if rec.kind == IPAM_CLAIM.name:
            self._claim_status(rec)
            return
        if rec.kind not in IP_ADDRESS_KINDS:
            return
        status = {"phase": rec.phase, "address": rec.address, "network": rec.network, "routes": list(rec.routes),
                  "usedByPods": list(rec.used_by_pods), "conditions": list(rec.conditions)}
        try:
            self.objects.patch_status(rec.kind, rec.name, status, rec.namespace)
        except Exception as exc:
            if status_of(exc) != 404:
                log.warning("IPAddress %s status: %s", rec.key, reason_of(exc))

    def _claim_status(self, rec: IPRecord) -> None:
        """An IPAMClaim's status: its address (kept while the claim exists) and the pod holding it ("" when none)."""
        owner = rec.used_by_pods[-1].partition("/")[2] if rec.used_by_pods else ""
        ips = [cidr_of(rec.address, rec.network)] if rec.address and rec.network else []
        try:
            # no holder: ownerPod dropped (null in the merge patch; the client would send "" as an invalid null)
            self.objects.patch_status(IPAM_CLAIM.name, rec.name, {"ips": ips, "ownerPod": owner or None},
                                      rec.namespace)
        except Exception as exc:
            if status_of(exc) != 404:
                log.warning("IPAMClaim %s/%s status: %s", rec.namespace, rec.name, reason_of(exc))

    def attached(self, pod: Pod, status: PodStatus, created: Iterable[IPRecord], used: Iterable[IPRecord]) -> None:
        annotation = self._writers.submit(self._patch_status_annotations, pod.meta.namespace, pod.meta.name,
                                          pod.meta.uid, status)
        for rec in created:
            if rec.kind == IP_ADDRESS.name:  # a delegate's lease has no object of its own
                self._create_auto_ip(rec, pod)
        for rec in used:
            self.ip_status(rec)
        annotation.result()
        for entry in status.network_status:
            addresses = ", ".join(entry.get("ips") or []) or "no address"
            self._event(pod.meta.namespace, pod.meta.name, pod.meta.uid, "InterfaceAttached",
                        f"{entry['interface']} on {entry['name']}: {addresses}")

    def detached(self, namespace: str, name: str, uid: str, status: PodStatus | None,
                 used: Iterable[IPRecord]) -> None:
        annotation = self._writers.submit(self._patch_status_annotations, namespace, name, uid, status)
        for rec in used:
            self.ip_status(rec)
        annotation.result()

    def _attachment_name(self, network_key: str) -> str:
        return f"{self.node_name}-{hashlib.sha1(network_key.encode()).hexdigest()[:12]}"[:253]

    def node_attachment(self, network_key: str, bridge: str, ready: bool, message: str) -> None:
        """This node's side of a Network (its bridge and uplink): one NodeNetworkInterfaceAttachment
        per node and Network, which the controller counts into the Network's status."""
        kind, _, rest = network_key.partition("/")
        namespace, _, name = rest.rpartition("/")
        obj_name = self._attachment_name(network_key)
        body = {"apiVersion": API_VERSION, "kind": ATTACHMENT,
                "metadata": {"name": obj_name, "labels": {f"{GROUP}/node": self.node_name}},
                "spec": {"networkRef": {"kind": kind, "name": name, "namespace": namespace},
                         "nodeName": self.node_name, "bridgeName": bridge}}
        status = {"conditions": [condition("Ready", ready, "VLANBridged" if ready else "NotBridged", message, rfc3339())]}
        try:
            try:
                self.objects.create(ATTACHMENT, body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
            self.objects.patch_status(ATTACHMENT, obj_name, status)
        except Exception as exc:
            log.warning("node attachment of %s: %s", network_key, reason_of(exc))

    def node_detachment(self, network_key: str) -> None:
        try:
            self.objects.delete(ATTACHMENT, self._attachment_name(network_key))
        except Exception as exc:
            if status_of(exc) != 404:
                log.warning("node attachment of %s: %s", network_key, reason_of(exc))

    def failed(self, pod: Pod, message: str) -> None:
        self._event(pod.meta.namespace, pod.meta.name, pod.meta.uid, "AttachFailed", message, warning=True)

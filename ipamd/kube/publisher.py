"""Statuses written to the Kubernetes API.

- ``networks-status`` (and NPWG ``network-status``): a merge patch of those annotations, with the pod's UID as a
  precondition, so a status never lands on a recreated pod of the same name. ADD and DEL wait for it (the pod's user
  does), and for an IPAMClaim's status (other nodes read its ``ownerPod``); if the API server does not answer,
  they are owed in the outbox like the rest.
- Auto IPAddresses: created with an ownerReference to the pod, so the cluster's garbage collector deletes them with it;
  IPAddress statuses through the status subresource; an Event on the pod per attached interface and per failure;
  this node's NodeNetworkInterfaceAttachments. All of them are owed in the outbox (``ipamd.kube.outbox``): durable,
  in order per object, made in the background, so a CNI call makes one API request.
Failures to publish never fail the CNI call: the store holds the truth.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Collection, Iterable
from typing import Any, Protocol

from kubernetes import client

from cni.types import cidr_of
from ipamd.kube.client import CALL_TIMEOUT, unread
from ipamd.kube.errors import reason_of, status_of, unanswered
from ipamd.kube.heartbeat import send_heartbeat
from ipamd.kube.outbox import Outbox, Senders
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
    USED_BY_ANNOTATION,
    Meta,
    Pod,
)
from ipamd.model.timefmt import rfc3339
from ipamd.model.used_by import user_of
from ipamd.store.records import IPRecord, OutboxEntry, PodStatus

log = logging.getLogger(__name__)

ATTACHMENT = "NodeNetworkInterfaceAttachment"
#: A body made to stand for the older owed writes it supersedes as well (``_now_or_owed``, ``_owe``).
Fold = Callable[[dict[str, Any], list[OutboxEntry]], dict[str, Any]]


def api_senders(api: client.ApiClient) -> Senders:
    """The outbox's ops as calls of the cluster's API."""
    core, objects, coord = client.CoreV1Api(api), CustomObjects(api), client.CoordinationV1Api(api)
    return {
        "create": lambda b: objects.create(b["kind"], b["object"], b.get("namespace", "")),
        "patch": lambda b: objects.patch(b["kind"], b["name"], b["patch"], b.get("namespace", "")),
        "patch_status": lambda b: objects.patch_status(b["kind"], b["name"], b["status"], b.get("namespace", ""),
                                                       field_manager=b.get("fieldManager", "")),
        "delete": lambda b: objects.delete(b["kind"], b["name"], b.get("namespace", ""), b.get("resourceVersion", "")),
        "pod_status": lambda b: unread(core.patch_namespaced_pod(b["name"], b["namespace"], b["patch"],
                                                                  _preload_content=False)),
        "event": lambda b: unread(core.create_namespaced_event(b["event"]["metadata"]["namespace"], b["event"],
                                                               _preload_content=False)),
        "heartbeat": lambda b: send_heartbeat(coord, b),
    }


class TrackedCache(Protocol):
    """The informers' caches of the kinds a source tracks, by name (``ipamd.kube.source.KubernetesSource``)."""

    def ready(self, kinds: Collection[str] | None = None) -> bool: ...

    def cached(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def items(self, kind: str) -> list[dict[str, Any]]: ...


def _uid_of(body: dict[str, Any]) -> str:
    """The pod UID an owed ``pod_status`` write is for (its patch's precondition)."""
    return str(((body.get("patch") or {}).get("metadata") or {}).get("uid") or "")


def _let_go(body: dict[str, Any]) -> list[str]:
    """The pods an owed IPAMClaim status write lets go of: its own (``was``, a name) and those of the releases it
    superseded (``earlier``); an entry owed by an earlier version has ``was`` only."""
    return [*([body["was"]] if body.get("was") else []), *body.get("earlier", [])]


def _carry_releases(body: dict[str, Any], older: list[OutboxEntry]) -> dict[str, Any]:
    """An IPAMClaim's status write supersedes every one owed before it (``attached``, ``claim_released``): the pods
    their releases let go of go into it (``earlier``), so that ``ownerPod`` naming any of them is still cleared."""
    names = [name for owed in (body, *(e.body for e in older)) for name in _let_go(owed)]
    earlier = [name for name in dict.fromkeys(names) if name != body.get("was")]
    return {**body, "earlier": earlier} if earlier else body


def _status_patch(uid: str, status: PodStatus | None) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "annotations": {
        STATUS_ANNOTATION: json.dumps(list(status.networks_status)) if status else None,
        NETWORK_STATUS_ANNOTATION: json.dumps(list(status.network_status)) if status else None}}}


def auto_ip_body(rec: IPRecord, pod: Pod, node: str) -> dict[str, Any]:
    """The Auto IPAddress a node makes for its pod: owned by the pod (the garbage collector deletes it with the pod),
    with the pod written on it as its user, so that another pod naming it waits for this one (``ipamd.kube.users``)."""
    return {
        "apiVersion": API_VERSION, "kind": IP_ADDRESS.name,
        "metadata": {
            "name": rec.name, "namespace": rec.namespace,
            "labels": {f"{GROUP}/owner-pod-uid": pod.meta.uid},
            "annotations": {USED_BY_ANNOTATION: user_of(pod, node).text()},
            "ownerReferences": [{"apiVersion": "v1", "kind": POD.name, "name": pod.meta.name, "uid": pod.meta.uid}],
        },
        "spec": {"networkRef": {"kind": rec.network_kind, "name": rec.network_name}, "type": "Auto",
                 **({"ipFamily": f"IPv{rec.family}"} if rec.family else {})},  # a dual-stack pool's second
    }


def owe_auto_ip_delete(outbox: Outbox, rec: IPRecord) -> None:
    """The delete of the Auto IPAddress object made for a pod's record (``auto_ip_body``) owed in the caller's commit,
    its owed writes dropped: the record was let go while the pod lives (its pool lost the family it holds), and the
    object, which the garbage collector deletes only with the pod, stood ``Allocated`` with a quarantined address."""
    with outbox.store.transaction():
        for op in ("create", "patch_status"):
            outbox.drop(rec.key, op)
        outbox.add(rec.key, "delete", {"kind": IP_ADDRESS.name, "name": rec.name, "namespace": rec.namespace},
                   supersede=True)


class KubePublisher:
    remote = True

    def __init__(self, api: client.ApiClient, node_name: str, outbox: Outbox, cache: TrackedCache | None = None) -> None:
        self.core = client.CoreV1Api(api)
        self.cache = cache  # where this node's attachments are seen (none: never judged lost)
        self.objects = CustomObjects(api)
        self.node_name = node_name
        self.outbox = outbox
        outbox.senders.setdefault("claim_status", self._write_claim_status)
        # this node's attachments (object names) the informer's cache has shown since their writes were last owed:
        # one it shows no more was deleted by someone else (``lost_attachments``)
        self._shown: set[str] = set()
        # this node's attachments (object names) whose delete it owed while the cache may still show them: not swept
        # again (``withdraw_unheld``) until the cache shows them gone, or they are reported again
        self._withdrawn: set[str] = set()

    def pending_writes(self) -> int:
        return self.outbox.depth()

    def _now_or_owed(self, target: str, op: str, body: dict[str, Any], write: Callable[[dict[str, Any]], Any],
                     what: str, done: tuple[int, ...] = (404,), same: Callable[[dict[str, Any]], bool] | None = None,
                     fold: Fold | None = None) -> None:
        """A write someone waits for: made now, or owed in the outbox when the API server does not answer (an older
        owed write of the same target and op is superseded either way; with ``same``, only those it matches; with
        ``fold``, the body written stands for them too). The target is taken from the outbox while this writes it: an
        older owed write a pass is sending lands first, never after this one."""
        if self.outbox.api_away():  # known not to answer: no CNI call waits for its timeouts
            self._owe(target, op, body, same, fold)
            return
        with self.outbox.writing(target, wait=False) as ours:
            if not ours:  # a pass is sending an older owed write of it: this one owed behind it, the call not held
                self._owe(target, op, body, same, fold)
                return
            # the older owed writes, which go once this one is made (a daemon killed meanwhile makes them after); one
            # owed while it is on its way is newer, and stays
            superseded = self._superseded(target, op, same)
            older = {e.seq for e in superseded}
            if fold is not None:
                body = fold(body, superseded)
            try:
                write(body)
            except Exception as exc:  # unreachable too: owed, never the CNI call's failure
                if status_of(exc) in done:
                    self.outbox.forget(older)
                    self.outbox.answered()
                    return
                log.warning("writing %s: %s (owed in the outbox)", what, reason_of(exc))
                if {e.seq for e in self._superseded(target, op, same)} <= older:
                    self._owe(target, op, body, same, fold)  # (else a newer one was owed meanwhile: it stands)
                if unanswered(exc):  # no answer at all: the calls after this one do not wait for one
                    self.outbox.unanswered()
            else:
                self.outbox.forget(older)
                self.outbox.answered()

    def _superseded(self, target: str, op: str, same: Callable[[dict[str, Any]], bool] | None) -> list[OutboxEntry]:
        """The owed ``op`` writes of ``target`` a newer one supersedes (``same``: only those it matches)."""
        return [e for e in self.outbox.owed(target) if e.op == op and (same is None or same(e.body))]

    def _owe(self, target: str, op: str, body: dict[str, Any], same: Callable[[dict[str, Any]], bool] | None,
             fold: Fold | None = None) -> None:
        """Owe ``body``, superseding the owed ``op`` writes of ``target`` (``same``: only those it matches; ``fold``:
        the body owed stands for them too, read in the same commit)."""
        with self.outbox.store.transaction():
            if fold is not None:
                body = fold(body, self._superseded(target, op, same))
            if same is None:
                self.outbox.add(target, op, body, supersede=True)
                return
            self.outbox.drop_where(target, op, same)
            self.outbox.add(target, op, body)

    def _owe_pod_status(self, namespace: str, name: str, uid: str, status: PodStatus | None) -> None:
        """A pod's statuses owed. The target is the pod's name, so that writes to it stay in order, but one pod's write
        supersedes only its own: a pod made again under the same name (a StatefulSet's) has its own, which a late DEL
        of the old one's dead sandbox must not drop."""
        self._owe(f"{POD.name}/{namespace}/{name}", "pod_status",
                  {"namespace": namespace, "name": name, "patch": _status_patch(uid, status)},
                  lambda body: _uid_of(body) == uid)

    def owe_pod_status(self, pod: Pod, status: PodStatus | None) -> None:
        self._owe_pod_status(pod.meta.namespace, pod.meta.name, pod.meta.uid, status)

    def _patch_status_annotations(self, namespace: str, name: str, uid: str, status: PodStatus | None) -> None:
        """Both status annotations in one merge patch (removed with the pod's last attachment), with the pod's
        UID as a precondition: a status never lands on a recreated pod of the same name (404 or 409: a pod gone or
        new, nothing to write)."""
        body = _status_patch(uid, status)
        self._now_or_owed(f"{POD.name}/{namespace}/{name}", "pod_status",
                          {"namespace": namespace, "name": name, "patch": body},
                          lambda owed: unread(self.core.patch_namespaced_pod(name, namespace, owed["patch"],
                                                                             _preload_content=False,
                                                                             _request_timeout=CALL_TIMEOUT)),
                          f"networks-status of {namespace}/{name}", done=(404, 409),
                          same=lambda owed: _uid_of(owed) == uid)

    def republish(self, ips: Iterable[IPRecord], statuses: Iterable[PodStatus]) -> None:
        """After a restart, owe again what the store says (a daemon killed between a commit and its outbox write
        lost that write): the Auto IPAddresses of pods that use them, every IPAddress's and IPAMClaim's status, every
        pod's status. The store's word wins over a status owed before the kill (a newer one committed and never
        owed): each is owed superseding it, behind an object's owed create; a pod whose status the store no longer
        has gets it removed. Owed, never written here: the daemon is starting, and the API server may be away."""
        for rec in ips:
            if rec.kind == IP_ADDRESS.name and rec.created_by == "plexus" and rec.owner_pod_uid and rec.used_by_pods \
                    and not self.outbox.owes(rec.key):
                namespace, _, name = rec.used_by_pods[0].partition("/")
                self._create_auto_ip(rec, Pod(Meta(POD.name, name, namespace, rec.owner_pod_uid)))
            if rec.kind == IPAM_CLAIM.name:  # (owed by an earlier version as a plain status patch: superseded)
                self.outbox.drop(rec.key, "patch_status")
                # the releases owed before the restart: still made
                self._owe(rec.key, "claim_status", self._claim_status_body(rec), None, _carry_releases)
            else:
                self.ip_status(rec)
        stored: set[tuple[str, str]] = set()
        for status in statuses:
            stored.add((f"{POD.name}/{status.namespace}/{status.name}", status.uid))
            self._owe_pod_status(status.namespace, status.name, status.uid, status)
        for entry in self.outbox.of_op("pod_status"):
            uid = _uid_of(entry.body)
            if (entry.target, uid) not in stored:  # its pod's last attachment went (a DEL killed before writing)
                self._owe_pod_status(entry.body["namespace"], entry.body["name"], uid, None)

    def _event(self, namespace: str, name: str, uid: str, reason: str, message: str, warning: bool = False) -> None:
        body = {
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {"kind": POD.name, "apiVersion": "v1", "namespace": namespace, "name": name, "uid": uid},
            "reason": reason, "message": message[:1000], "type": "Warning" if warning else "Normal",
            "source": {"component": "plexus", "host": self.node_name},
            "firstTimestamp": rfc3339(), "lastTimestamp": rfc3339(), "count": 1,
        }
        self.outbox.add(f"Event/{namespace}/{name}", "event", {"event": body})

    def _create_auto_ip(self, rec: IPRecord, pod: Pod) -> None:
        body = auto_ip_body(rec, pod, self.node_name)
        self.outbox.add(rec.key, "create", {"kind": IP_ADDRESS.name, "namespace": rec.namespace, "object": body})

    def ip_status(self, rec: IPRecord) -> None:
        if rec.kind == IPAM_CLAIM.name:
            self._claim_status(rec)
            return
        if rec.kind not in IP_ADDRESS_KINDS:
            return
        status = {"phase": rec.phase, "address": rec.address, "network": rec.network, "routes": list(rec.routes),
                  "usedByPods": list(rec.used_by_pods), "conditions": list(rec.conditions)}
        self.outbox.add(rec.key, "patch_status", {"kind": rec.kind, "name": rec.name, "namespace": rec.namespace,
                                                  "status": status}, supersede=True)

    def _claim_status(self, rec: IPRecord) -> None:
        """An IPAMClaim's status: its address (kept while the claim exists) and the pod holding it ("" when none).
        Written now, like the pod's: another node reads ``ownerPod`` to refuse a second pod the claim."""
        self._now_or_owed(rec.key, "claim_status", self._claim_status_body(rec),
                          lambda owed: self._write_claim_status(owed, CALL_TIMEOUT),
                          f"the status of IPAMClaim {rec.namespace}/{rec.name}", fold=_carry_releases)

    @staticmethod
    def _claim_status_body(rec: IPRecord) -> dict[str, Any]:
        """Its address, and its pod while this node has one: with none here, ``ownerPod`` is left as it is (another
        node's pod may hold the claim now; only ``claim_released`` clears it, and only of the pod let go of)."""
        owner = rec.used_by_pods[-1].partition("/")[2] if rec.used_by_pods else ""
        ips = [cidr_of(rec.address, rec.network)] if rec.address and rec.network else []
        return {"kind": IPAM_CLAIM.name, "name": rec.name, "namespace": rec.namespace,
                "status": {"ips": ips, **({"ownerPod": owner} if owner else {})}}

    def claim_released(self, rec: IPRecord, pod_name: str) -> None:
        """Pod ``pod_name`` of this node let go of the IPAMClaim ``rec``: its status written now (or owed), its
        ``ownerPod`` dropped only while it still names that pod, or one an owed release it supersedes let go of (read
        first, written at the version read): the VM may run on another node by now, whose pod that node wrote there,
        and which refuses a third pod the claim."""
        self._now_or_owed(rec.key, "claim_status", {**self._claim_status_body(rec), "was": pod_name},
                          lambda owed: self._write_claim_status(owed, CALL_TIMEOUT),
                          f"the status of IPAMClaim {rec.namespace}/{rec.name}", fold=_carry_releases)

    def owe_claim_released(self, rec: IPRecord, pod_name: str) -> None:
        self._owe(rec.key, "claim_status", {**self._claim_status_body(rec), "was": pod_name}, None, _carry_releases)

    def _write_claim_status(self, body: dict[str, Any], timeout: Any = None) -> None:
        """The outbox's op of an IPAMClaim's status (one op, so that a newer write supersedes any older one): a
        release (``claim_released``: pods let go of, and none named in its status) reads the claim first, else it is a
        plain merge patch (a status naming its pod replaces any owner)."""
        let_go = _let_go(body)
        if not let_go or "ownerPod" in body["status"]:
            self.objects.patch_status(IPAM_CLAIM.name, body["name"], body["status"], body["namespace"], timeout=timeout)
            return
        current = self.objects.get(IPAM_CLAIM.name, body["name"], body["namespace"], timeout=timeout)  # 404: done
        status = dict(body["status"])
        if (current.get("status") or {}).get("ownerPod") in let_go:
            status["ownerPod"] = None  # (null in the merge patch; the client would send "" as an invalid null)
        self.objects.patch_status(IPAM_CLAIM.name, body["name"], status, body["namespace"],
                                  resource_version=str((current.get("metadata") or {}).get("resourceVersion") or ""),
                                  timeout=timeout)  # 409: changed since the read, read again by the retry

    def pod_status(self, pod: Pod, status: PodStatus | None) -> None:
        self._patch_status_annotations(pod.meta.namespace, pod.meta.name, pod.meta.uid, status)

    def attached(self, pod: Pod, status: PodStatus, created: Iterable[IPRecord], used: Iterable[IPRecord]) -> None:
        """What an ADD made besides the pod's statuses (``pod_status``), owed in one commit (the ADD's own, when it
        calls this inside it): its Auto IPAddresses, their statuses, an Event per interface, and an IPAMClaim's
        status, which ``attached_now`` then writes at once."""
        used = list(used)
        with self.outbox.store.transaction():
            for rec in created:
                if rec.kind == IP_ADDRESS.name:  # a delegate's lease has no object of its own
                    self._create_auto_ip(rec, pod)
            for rec in used:
                if rec.kind != IPAM_CLAIM.name:
                    self.ip_status(rec)
            for entry in status.network_status:
                addresses = ", ".join(entry.get("ips") or []) or "no address"
                self._event(pod.meta.namespace, pod.meta.name, pod.meta.uid, "InterfaceAttached",
                            f"{entry['interface']} on {entry['name']}: {addresses}")
            for rec in used:
                if rec.kind == IPAM_CLAIM.name:
                    self._owe(rec.key, "claim_status", self._claim_status_body(rec), None, _carry_releases)

    def attached_now(self, used: Iterable[IPRecord]) -> None:
        """An IPAMClaim's status written now, outside the store's lock: another node reads its ``ownerPod``."""
        for rec in used:
            if rec.kind == IPAM_CLAIM.name:
                self._claim_status(rec)

    def detached(self, namespace: str, name: str, uid: str, used: Iterable[IPRecord]) -> None:
        for rec in used:
            if rec.kind == IPAM_CLAIM.name and not rec.used_by_pods:
                self.claim_released(rec, name)
            else:
                self.ip_status(rec)

    def _attachment_name(self, network_key: str) -> str:
        return f"{self.node_name}-{hashlib.sha1(network_key.encode()).hexdigest()[:12]}"[:253]

    def node_attachment(self, network_key: str, bridge: str, ready: bool, message: str) -> None:
        """This node's side of a Network (its bridge and uplink): one NodeNetworkInterfaceAttachment
        per node and Network, which the controller counts into the Network's status."""
        kind, _, rest = network_key.partition("/")
        namespace, _, name = rest.rpartition("/")
        obj_name = self._attachment_name(network_key)
        labels = {f"{GROUP}/node": self.node_name}
        # no empty strings: the API server takes one for null and refuses it (a ClusterNetwork has no namespace, a
        # segment that failed no bridge)
        ref = {"kind": kind, "name": name, **({"namespace": namespace} if namespace else {})}
        spec = {"networkRef": ref, "nodeName": self.node_name, **({"bridgeName": bridge} if bridge else {})}
        body = {"apiVersion": API_VERSION, "kind": ATTACHMENT, "metadata": {"name": obj_name, "labels": labels},
                "spec": spec}
        status = {"conditions": [condition("Ready", ready, "VLANBridged" if ready else "NotBridged", message, rfc3339())]}
        target = f"{ATTACHMENT}/{obj_name}"
        self._shown.discard(obj_name)
        self._withdrawn.discard(obj_name)
        with self.outbox.store.transaction():
            self.outbox.drop(target, "delete")
            self.outbox.add(target, "create", {"kind": ATTACHMENT, "object": body}, supersede=True)
            # the object there already (a create answered 409) may be of an earlier report: its spec made this one's
            self.outbox.add(target, "patch", {"kind": ATTACHMENT, "name": obj_name,
                                              "patch": {"metadata": {"labels": labels}, "spec": spec}},
                            supersede=True)
            self.outbox.add(target, "patch_status", {"kind": ATTACHMENT, "name": obj_name, "status": status},
                            supersede=True)

    def node_detachment(self, network_key: str) -> None:
        """This node's side of a Network gone: its object's delete owed, the writes owed before it dropped, in one
        commit (the reconciler owes it before it forgets the segment, so that a kill between the two loses nothing)."""
        self._owe_detachment(self._attachment_name(network_key))

    def _owe_detachment(self, obj_name: str) -> None:
        target = f"{ATTACHMENT}/{obj_name}"
        self._shown.discard(obj_name)
        self._withdrawn.add(obj_name)
        with self.outbox.store.transaction():
            for op in ("create", "patch", "patch_status"):
                self.outbox.drop(target, op)
            self.outbox.add(target, "delete", {"kind": ATTACHMENT, "name": obj_name}, supersede=True)

    def lost_attachments(self, network_keys: Iterable[str]) -> list[str]:
        """This node's attachments (by Network key) deleted by someone else since they were reported: the controller
        drops those of a node it took for vanished (silent past --block-ttl, only cut off), or a hand. The informer's
        cache showed one since its writes were owed and shows it no more, and no write of it is owed (a report made
        a moment ago, not in the cache yet, is not one). Looked up by name, every round: no list of every node's
        attachments. None before the cache has listed."""
        if self.cache is None or not self.cache.ready((ATTACHMENT,)):
            return []
        lost = []
        for key in network_keys:
            name = self._attachment_name(key)
            if self.cache.cached(ATTACHMENT, "", name) is not None:
                self._shown.add(name)
            elif name in self._shown and not self.outbox.owes(f"{ATTACHMENT}/{name}"):
                self._shown.discard(name)
                lost.append(key)
        return lost

    def _is_mine(self, item: dict[str, Any]) -> bool:
        """An attachment this node made: labelled and named in its spec for this node (as ``node_attachment`` makes
        every one; the controller goes by ``nodeName``)."""
        labels = (item.get("metadata") or {}).get("labels") or {}
        return labels.get(f"{GROUP}/node") == self.node_name == (item.get("spec") or {}).get("nodeName")

    def withdraw_unheld(self, held: Collection[str]) -> list[str] | None:
        """This node's attachments that no Network key of ``held`` (its segment records', and those it reports now)
        stands for, withdrawn as ``node_detachment`` does: the report of a Network deleted while the daemon was down,
        of a segment whose record a kill cut away, or one owed before a kill and made after it. What this node
        reported is remembered in memory only, so nothing else finds them after a restart, and the controller counts
        the ID of a reported bridge as held for ever. From the informer's cache (no request), every round; another
        node's attachments are never touched. Their object names; None before the cache has listed (a seeded one
        may miss a report made since)."""
        if self.cache is None or not self.cache.ready((ATTACHMENT,)):
            return None
        keep = {self._attachment_name(key) for key in held}
        shown: set[str] = set()
        swept = []
        for item in self.cache.items(ATTACHMENT):
            name = str((item.get("metadata") or {}).get("name") or "")
            if not self._is_mine(item):
                continue
            shown.add(name)
            if name not in keep and name not in self._withdrawn:
                self._owe_detachment(name)
                swept.append(name)
        self._withdrawn &= shown  # gone from the cache: a later object of that name is judged again
        return swept

    def failed(self, pod: Pod, message: str) -> None:
        self._event(pod.meta.namespace, pod.meta.name, pod.meta.uid, "AttachFailed", message, warning=True)

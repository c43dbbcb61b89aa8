"""One pod at a time per user IPAddress, across the cluster.

A user's IPAddress (a Static one, or an Auto one made by hand) may be named in ``ipAddressNames`` by pods on several
nodes, and each node's store knows only its own pods: without more, two pods on two nodes would both get its address.
The pod that uses it is written on the IPAddress itself (the ``USED_BY_ANNOTATION`` annotation), at the version read, before the
address is used: two nodes cannot both write it, and a node takes it over only once the pod written there is gone
(deleted, or finished: the kubelet tears a finished pod's sandbox down). It is read from the API server, never from a
cache, which may not show another node's write yet. An Auto IPAddress a node makes for its pod is created with its
pod written there already, so naming it from another pod waits for that pod too.

A pod that stops using it here (its DEL, or an ADD that failed after the write) has it taken off, owed in the outbox
(``unuse``), so that a pod that never got it does not keep it from others. That write is left out while a call of
this node is making the same pod its user again (``_inflight``), and such a call first waits for an owed one
(``flush_target``). A pod that uses it without being written there (attached by a version before this, or its
IPAddress recreated or its annotation edited) is written there by the reconciler (``repair``). A Static's pod is
written on its address's lease object too (``KubeLeaseRegistry.keep_in_use``): until then, an IPAddress made again or
replaced without its annotation is refused to another node's pod by what the lease object says (``kept_for``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from cni.errors import AddressConflict, InternalError, ObjectNotFound, TryAgainLater
from ipamd.kube.errors import api_unavailable_is_11, reason_of, status_of, transient
from ipamd.kube.outbox import PARKED, Outbox
from ipamd.model.objects import USED_BY_ANNOTATION, Pod
from ipamd.model.used_by import User, parse_user, parse_user_text, user_of

log = logging.getLogger(__name__)
TRIES = 3  # writes lost to another writer of the object (its status, another node) before answering 11
CLASH_S = 300.0  # a repair that found another pod running on the IPAddress looks again after this long
REPAIR_S = 60.0  # a repair owed is not owed again before this long (made, the cache shows it by then)
FINISHED = ("Succeeded", "Failed")


def still_running(user: User, found: dict[str, Any] | None) -> bool:
    """Whether the pod written on an IPAddress may still have its sandbox: it exists (the same pod, not a new one of
    the same name) and has not finished."""
    if found is None:
        return False
    if (found.get("metadata") or {}).get("uid") != user.uid:
        return False
    return (found.get("status") or {}).get("phase") not in FINISHED


def target_of(key: str) -> str:
    """The outbox target of an IPAddress's user: apart from its status writes, which a CNI call does not wait for."""
    return f"{key}/used-by"


class IPAddressUsers:
    """Writes which pod uses a user's IPAddress (``use``), through the API server, outside the store's lock."""

    def __init__(self, objects: Any, read_pod: Callable[[str, str], dict[str, Any] | None], node_name: str,
                 outbox: Outbox, kept_for: Callable[[str], User | None] = lambda key: None) -> None:
        self.objects = objects
        self.read_pod = read_pod
        self.kept_for = kept_for  # IPAddress key -> another node's pod written on its address's lease object
        self.node_name = node_name
        self.outbox = outbox
        self._lock = threading.Lock()
        self._inflight: Counter[tuple[str, str]] = Counter()  # (IPAddress key, pod UID) a call is making the user
        # the store's word (``Ipam.uses_here``, bound by the Ipam); unbound, no pod is ever taken off (the safe side)
        self.uses_here: Callable[[str, str], bool] = lambda key, uid: True
        # (IPAddress key, its object's UID) -> not repaired again before (``clock``): an object made again is new
        self._next_repair: dict[tuple[str, str], float] = {}
        self.clock: Callable[[], float] = time.monotonic
        outbox.senders.setdefault("unuse", self._unuse)
        outbox.senders.setdefault("use", self._use_owed)

    def use(self, kind: str, namespace: str, name: str, key: str, pod: Pod, field: str) -> None:
        """Make ``pod`` the one that uses the IPAddress; AddressConflict while another pod that still runs does. Its
        undo is written ahead (a take-off, parked before the write), dropped by the transaction that records the pod
        as the user (``recorded``), made if the call fails (``ended``) or the daemon restarts before either."""
        uid = pod.meta.uid
        with self._lock:
            self._inflight[(key, uid)] += 1
        try:
            with api_unavailable_is_11():
                if not self.outbox.flush_target(target_of(key)):  # this node's taking a pod off it comes first
                    raise TryAgainLater(f"{kind} {_name(namespace, name)}: this node's earlier write of which pod "
                                        "uses it is not made yet (see plexusctl outbox)", field)
                self._owe_take_off(key, uid, parked=True)
                try:
                    self._use(kind, namespace, name, key, user_of(pod, self.node_name), field)
                except ApiException as exc:  # refused for good: said as what it is, not as an HTTP dump
                    if transient(exc):
                        raise
                    if exc.status == 404:
                        raise ObjectNotFound(f"{kind} {_name(namespace, name)} does not exist", field) from None
                    hint = " (the node's ClusterRole needs get on pods, get and patch on ipaddresses and " \
                        "clusteripaddresses: apply packaging/k8s/rbac.yaml)" if exc.status == 403 else ""
                    raise InternalError(f"the Kubernetes API refused to write which pod uses {kind} "
                                        f"{_name(namespace, name)}: {exc.status} {reason_of(exc)}{hint}",
                                        field) from None
        except BaseException:
            self.ended(key, uid)
            raise

    def _use(self, kind: str, namespace: str, name: str, key: str, me: User, field: str) -> None:
        what = f"{kind} {_name(namespace, name)}"
        for _ in range(TRIES):
            try:
                current = self.objects.get(kind, name, namespace)
            except Exception as exc:
                if status_of(exc) == 404:
                    raise ObjectNotFound(f"{what} does not exist", field) from None
                raise
            user = parse_user(current)
            if user is not None and user.uid == me.uid:
                return  # a retried ADD, another sandbox or interface of the pod
            kept = self.kept_for(key) if user is None else None  # made again, or replaced, while in use?
            for other, why in ((user, ""), (kept, " (written on its address's lease object; the IPAddress was made "
                                                  "again or replaced without it)")):
                if other is None or other.uid == me.uid:
                    continue
                ns, _, pod_name = other.pod.partition("/")
                if still_running(other, self.read_pod(ns, pod_name)):
                    where = f" on node {other.node}" if other.node else ""
                    raise AddressConflict(f"{what} is in use by pod {other.pod}{where}{why}", field)
            if self._write(kind, namespace, name, current, me.text()):
                return
        raise TryAgainLater(f"{what}: the pod that uses it could not be written, the object kept changing", field)

    def _write(self, kind: str, namespace: str, name: str, current: dict[str, Any], text: str | None) -> bool:
        """The annotation written at the version read; False when the object changed since (409)."""
        try:
            self._patch(kind, namespace, name, current, text)
            return True
        except Exception as exc:
            if status_of(exc) != 409:
                raise
            return False

    def _patch(self, kind: str, namespace: str, name: str, current: dict[str, Any], text: str | None) -> None:
        version = (current.get("metadata") or {}).get("resourceVersion")
        self.objects.patch(kind, name, {"metadata": {"annotations": {USED_BY_ANNOTATION: text},
                                                     "resourceVersion": version}}, namespace)

    def recorded(self, key: str, uid: str) -> None:
        """The store records the pod as the IPAddress's user (inside its transaction): nothing to take off."""
        self.outbox.drop_where(target_of(key), "unuse", lambda body: body.get("uid") == uid)

    def ended(self, key: str, uid: str) -> None:
        """A call that made ``uid`` the IPAddress's user is over. Once the last of the pod's calls in flight is, its
        take-offs still parked are made: written ahead by a call that failed (one that recorded the pod dropped its
        own), or parked again for the calls in flight; each checked when made (nothing if the store has the pod as a
        user, or another pod is written there, as when the call was refused)."""
        with self._lock:
            self._inflight[(key, uid)] -= 1
            if self._inflight[(key, uid)] > 0:
                return  # another call of the pod decides, once it ends
            del self._inflight[(key, uid)]
        self.outbox.unpark_where(target_of(key), "unuse", lambda body: body.get("uid") == uid)

    def unused(self, key: str, uid: str) -> None:
        """The pod no longer uses the IPAddress on this node: taken off it (owed; made only if it is still written
        there, and the store has not made it a user here again by then)."""
        if not self.uses_here(key, uid):
            self._owe_take_off(key, uid, parked=False)

    def _owe_take_off(self, key: str, uid: str, parked: bool) -> None:
        owed = [e for e in self.outbox.owed(target_of(key)) if e.op == "unuse" and e.body.get("uid") == uid]
        if owed:  # one per pod (another pod's is not superseded: each takes off only its own)
            if not parked:
                self.outbox.unpark_where(target_of(key), "unuse", lambda body: body.get("uid") == uid)
            return
        kind, namespace, name = _parts(key)
        self.outbox.add(target_of(key), "unuse", {"kind": kind, "namespace": namespace, "name": name, "key": key,
                                                  "uid": uid}, not_before=PARKED if parked else 0.0)

    def repair(self, key: str, pod_ref: str, uid: str, object_uid: str = "") -> None:
        """A pod that uses the IPAddress on this node, not written on it: written (owed) unless another pod that still
        runs is (then two pods use it, which is logged). Not owed again for ``REPAIR_S`` (``CLASH_S`` after a clash)
        on the same object: a write the API server refuses for good is dropped, and the next round would owe it
        again. An object made again (``object_uid``, new) is written at once: until then it is nobody's."""
        now = self.clock()
        if self.outbox.owes(target_of(key)) or now < self._next_repair.get((key, object_uid), now):
            return
        if len(self._next_repair) > 4096:  # no more than the IPAddresses this node's pods use, kept bounded
            self._next_repair = {k: t for k, t in self._next_repair.items() if t > now}
        self._next_repair[(key, object_uid)] = now + REPAIR_S
        kind, namespace, name = _parts(key)
        self.outbox.add(target_of(key), "use", {"kind": kind, "namespace": namespace, "name": name,
                                                "user": User(uid, pod_ref, self.node_name).text()})

    # -- the outbox's ops -----------------------------------------------------------------------------------
    def _unuse(self, body: dict[str, Any]) -> None:
        with self._lock:
            if self._inflight[(body["key"], body["uid"])]:  # a call of this node is making the pod its user again:
                self.outbox.add(target_of(body["key"]), "unuse", body, not_before=PARKED)
                return  # it stays, and this take-off is left to that call to make or drop (parked again)
        if self.uses_here(body["key"], body["uid"]):
            return  # and so it stays once one did (the store survives a restart; what is in flight does not)
        current = self._read(body)
        user = parse_user(current) if current is not None else None
        if current is None or user is None or user.uid != body["uid"]:
            return  # gone, or someone else's now
        self._patch(body["kind"], body["namespace"], body["name"], current, None)  # a 409: read again, later

    def _use_owed(self, body: dict[str, Any]) -> None:
        mine = parse_user_text(body["user"])
        if mine is None or not self.uses_here(_key(body), mine.uid):
            return  # the pod stopped using it here since the repair was owed
        current = self._read(body)
        if current is None:
            return
        user = parse_user(current)
        if user is not None and user.uid == mine.uid:
            return
        if user is not None:
            ns, _, pod_name = user.pod.partition("/")
            if still_running(user, self.read_pod(ns, pod_name)):
                self._next_repair[(_key(body), (current.get("metadata") or {}).get("uid") or "")] = \
                    self.clock() + CLASH_S
                log.warning("%s %s is used by pod %s here and by pod %s on node %s: one of them must go",
                            body["kind"], _name(body["namespace"], body["name"]), mine.pod, user.pod, user.node)
                return
        self._patch(body["kind"], body["namespace"], body["name"], current, body["user"])  # a 409: read again, later

    def _read(self, body: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return dict(self.objects.get(body["kind"], body["name"], body["namespace"]))
        except Exception as exc:
            if status_of(exc) == 404:
                return None
            raise


def _key(body: dict[str, Any]) -> str:
    return f"{body['kind']}/{_name(body['namespace'], body['name'])}"


def _name(namespace: str, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def _parts(key: str) -> tuple[str, str, str]:
    """``Kind/namespace/name`` (or ``Kind/name``) as its three parts."""
    kind, _, rest = key.partition("/")
    namespace, _, name = rest.rpartition("/")
    return kind, namespace, name

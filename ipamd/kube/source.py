"""The Kubernetes object source: the seed's API and this node's pods, from informers.

Implements the same ``ObjectSource`` as the local directory source, so the rest of the daemon
does not know which one it reads. Objects that fail validation (the CRD schema lets through
what it cannot express) are reported as problems and not served.
"""

from __future__ import annotations

import builtins
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Hashable
from typing import Any, TypeVar

from kubernetes import client

from ipamd.kube.blocks import BLOCK_INDEXERS
from ipamd.kube.blocks import KIND as BLOCK_KIND
from ipamd.kube.errors import api_unavailable_is_11, status_of
from ipamd.kube.informer import IndexFn, Informer, plain_lister
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import LEASE_INDEXERS
from ipamd.kube.resources import RESOURCES, SERVED_KINDS, CustomObjects
from ipamd.model.objects import POD, ApiObject, Kind, ManifestInvalid, Pod, parse_as, parse_object
from ipamd.sources.base import Problem, at_uid

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Kinds watched for the node's and the controller's own bookkeeping, kept as the API gives them.
TRACKED_KINDS = ("IPAddressLease", "IPAddressBlock", "NodeNetworkInterfaceAttachment")
#: Indexes of tracked kinds' caches (see ``Informer.by_index``).
TRACKED_INDEXERS: dict[str, dict[str, IndexFn]] = {LEASE_KIND: LEASE_INDEXERS, BLOCK_KIND: BLOCK_INDEXERS}


#: The controller's raw caches for Services over additional networks (``ipamd.kube.services``): every Service,
#: and every pod of the cluster (indexed by namespace), kept apart from a node's own parsed pods.
SERVICES, ALL_PODS = "Service", "Pod/all-namespaces"
OPT_IN = (SERVICES, ALL_PODS)
SINGLE_CACHE = 4096  # objects parsed one by one and kept (``KubernetesSource._one``)
#: Kinds whose changes wake nobody (see ``_notify``).
QUIET = (LEASE_KIND, BLOCK_KIND)


def _by_namespace(obj: dict[str, Any]) -> list[Hashable]:
    return [(obj.get("metadata") or {}).get("namespace") or "default"]


class KubernetesSource:
    def __init__(self, api: client.ApiClient, node_name: str, pod_wait_s: float = 2.0,
                 kinds: tuple[str, ...] = SERVED_KINDS, services: bool = False) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.objects = CustomObjects(api)
        self.node_name = node_name
        self.pod_wait_s = pod_wait_s
        self._subscribers: list[tuple[Callable[[], None], Collection[str] | None]] = []
        self._changed = threading.Event()
        self._lock = threading.Lock()
        self._parsed: dict[str, tuple[dict[tuple[str, str], ApiObject], list[Problem]]] = {}
        self._single: dict[tuple[str, str, str], tuple[str, ApiObject]] = {}  # (kind, ns, name) -> (version, parsed)
        self._generation: dict[str, int] = {}  # per kind: changes seen, so that a parse racing one is not kept
        self.informers: dict[str, Informer] = {}
        self.kinds = kinds
        for kind in (*kinds, *TRACKED_KINDS):
            self.informers[kind] = Informer(kind, self.objects.lister(kind), kind, RESOURCES[kind].api_version,
                                            functools.partial(self._notify, kind), TRACKED_INDEXERS.get(kind))
        if services:
            self.informers[SERVICES] = Informer(SERVICES, plain_lister(self.core.list_service_for_all_namespaces),
                                                "Service", "v1", functools.partial(self._notify, SERVICES))
            self.informers[ALL_PODS] = Informer(ALL_PODS, plain_lister(self.core.list_pod_for_all_namespaces), "Pod",
                                                "v1", functools.partial(self._notify, ALL_PODS),
                                                {"namespace": _by_namespace})
        if node_name:  # the controller alone needs no pods
            self.informers[POD.name] = Informer(POD.name, plain_lister(self.core.list_pod_for_all_namespaces), POD.name,
                                                "v1", functools.partial(self._notify, POD.name),
                                                field_selector=f"spec.nodeName={node_name}")

    def _notify(self, kind: str) -> None:
        """A change of ``kind``: its parsed objects are stale, and the subscribers (the reconciler, the controller)
        are woken, except by lease objects and address blocks: every address leased anywhere in the cluster changes
        a lease object, every node renews its blocks every minute, and a round on every node for each would grow
        with the cluster; both are read from the cache where they matter, and the rounds that wait on another
        node's lease come back on their interval. A subscriber that names a quiet kind is called for it."""
        self._changed.set()
        with self._lock:
            self._parsed.pop(kind, None)
            self._generation[kind] = self._generation.get(kind, 0) + 1
        for callback, kinds in list(self._subscribers):
            if kind not in kinds if kinds is not None else kind in OPT_IN or kind in QUIET:
                continue
            try:
                callback()
            except Exception:
                log.exception("object-change handler failed")

    def _objects(self, kind: str) -> tuple[dict[tuple[str, str], ApiObject], list[Problem]]:
        with self._lock:
            cached = self._parsed.get(kind)
            if cached is not None:
                return cached
            generation = self._generation.get(kind, 0)
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
        with self._lock:  # kept only if no change came while parsing: a parse of older items is not cached
            if self._generation.get(kind, 0) == generation:
                self._parsed[kind] = (objects, problems)
        return objects, problems

    # -- ObjectSource ---------------------------------------------------------------------------
    def start(self) -> None:
        for informer in self.informers.values():
            informer.start()

    def stop(self) -> None:
        for informer in self.informers.values():
            informer.stop()

    def ready(self, kinds: Collection[str] | None = None) -> bool:
        """Whether the informers of ``kinds`` have listed (default: all but the opt-in ones, which only Services over
        additional networks wait for: the controller's own work never waits on the cluster's pods)."""
        return all(i.synced.is_set() for k, i in self.informers.items()
                   if (k in kinds if kinds is not None else k not in OPT_IN))

    def unlisted(self, timeout_s: float) -> builtins.list[str]:
        """The kinds a CNI call cannot be served from yet (waiting up to ``timeout_s``): neither listed nor seeded
        from the snapshot."""
        deadline = time.monotonic() + timeout_s
        waited = [(k, i) for k, i in self.informers.items() if k not in OPT_IN]
        for _, informer in waited:
            informer.usable.wait(max(0.0, deadline - time.monotonic()))
        return [k for k, i in waited if not i.usable.is_set()]

    def snapshot(self) -> dict[str, builtins.list[dict[str, Any]]] | None:
        """Every informer's objects as last listed and watched (None until each has listed: a seeded cache is not
        written back)."""
        if not self.ready():
            return None
        return {k: i.items() for k, i in self.informers.items() if k not in OPT_IN}

    def seed(self, caches: dict[str, builtins.list[dict[str, Any]]]) -> None:
        """Fill the informers not listed yet from a snapshot (``ipamd.kube.snapshot.load``)."""
        for kind, items in caches.items():
            informer = self.informers.get(kind)
            if informer is not None and kind not in OPT_IN:
                informer.seed(items)

    def sync(self) -> builtins.list[Problem]:
        deadline = time.monotonic() + 30
        for informer in self.informers.values():
            informer.synced.wait(max(0.0, deadline - time.monotonic()))
        return self.problems()

    def subscribe(self, callback: Callable[[], None], kinds: Collection[str] | None = None) -> None:
        """Call ``callback`` on a change of ``kinds`` (default: every kind but the controller's Services and
        cluster-wide pods, whose changes only Services over additional networks wait for)."""
        self._subscribers.append((callback, kinds))

    def get(self, kind: Kind[T], namespace: str, name: str) -> T | None:
        with self._lock:
            parsed = self._parsed.get(kind.name)
        obj = parsed[0].get((namespace, name)) if parsed is not None else self._one(kind.name, namespace, name)
        return obj if isinstance(obj, kind.type) else None

    def _one(self, kind: str, namespace: str, name: str) -> ApiObject | None:
        """One object parsed by itself (kept per resourceVersion) while its kind's parsed list is stale: a CNI call
        reads its pod after nearly every change of the node's pods (the status patch of the call before makes one), and
        parsing all of them each time grew with the node's pods."""
        informer = self.informers.get(kind)
        doc = informer.get(namespace, name) if informer is not None else None
        if doc is None:
            return None
        version = str((doc.get("metadata") or {}).get("resourceVersion") or "")
        with self._lock:
            hit = self._single.get((kind, namespace, name))
        if hit is not None and version and hit[0] == version:
            return hit[1]
        try:
            obj = parse_object(doc, "api")
        except ManifestInvalid:
            return None  # a problem the list reports
        with self._lock:
            if len(self._single) >= SINGLE_CACHE:
                self._single.clear()
            self._single[(kind, namespace, name)] = (version, obj)
        return obj

    def list(self, kind: Kind[T]) -> builtins.list[T]:
        return [o for o in self._objects(kind.name)[0].values() if isinstance(o, kind.type)]

    def pod_by_uid(self, uid: str) -> Pod | None:
        return next((p for p in self.list(POD) if p.meta.uid == uid), None)

    def problems(self) -> builtins.list[Problem]:
        return [p for kind in (*self.kinds, POD.name) if kind in self.informers for p in self._objects(kind)[1]]

    def wait_for_pod(self, namespace: str, name: str, uid: str = "") -> Pod | None:
        """A pod the informer has not seen yet (ADD can beat the watch), or not at ``uid`` yet (a pod made again under
        the same name is shown at its old UID until the watch brings the new one): wait a bounded time, then read it
        directly, once (on a CNI call's path, at the client's call timeout)."""
        deadline = time.monotonic() + self.pod_wait_s
        while time.monotonic() < deadline:
            pod = self.get(POD, namespace, name)
            if pod is not None and at_uid(pod, uid):
                return pod
            self._changed.clear()
            self._changed.wait(0.05)
        with api_unavailable_is_11():
            doc = self.read_pod(namespace, name)
        if doc is None:
            return None
        doc.setdefault("kind", POD.name)
        doc.setdefault("apiVersion", "v1")
        return parse_as(POD, doc, "api")

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A pod as the API server has it now (no cache), as it came; None when there is none."""
        try:
            resp = self.core.read_namespaced_pod(name, namespace, _preload_content=False)
        except Exception as exc:
            if status_of(exc) == 404:
                return None
            raise
        doc = json.loads(resp.data)  # type: ignore[attr-defined]  # raw response: _preload_content=False
        return doc if isinstance(doc, dict) else None

    # -- what Plexus tracks, as the API gives it ---------------------------------------------------
    def cached(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A raw object of a tracked kind (``TRACKED_KINDS``) by name, as the informer's cache has it."""
        return self.informers[kind].get(namespace, name)

    def items(self, kind: str) -> builtins.list[dict[str, Any]]:
        """The raw objects of a tracked kind (``TRACKED_KINDS``) in the informer's cache."""
        return self.informers[kind].items()

    def by_index(self, kind: str, index: str, key: Hashable) -> builtins.list[dict[str, Any]]:
        """The raw objects of a tracked kind found under ``key`` of one of its indexes (``TRACKED_INDEXERS``)."""
        return self.informers[kind].by_index(index, key)

    def indexed(self, kind: str, index: str, key: Hashable) -> bool:
        return self.informers[kind].indexed(index, key)

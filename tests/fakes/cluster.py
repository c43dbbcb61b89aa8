"""A cluster's API for unit tests of what several nodes do together: cluster-scoped custom objects with the API
server's answers (409 on creating a name that exists, 404 for one that does not, merge patches, label selectors),
and per-node informer caches over it that show the API as it was at their last ``sync()`` (or live), so that a test
can put one node's view behind another's writes on purpose. Every call is counted."""

from __future__ import annotations

import copy
import json
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable
from contextlib import suppress
from typing import Any

from kubernetes.client.exceptions import ApiException

from ipamd.kube.blocks import BLOCK_INDEXERS
from ipamd.kube.blocks import KIND as BLOCK_KIND
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import LEASE_INDEXERS
from ipamd.model.objects import IP_ADDRESS_KINDS, POD, ApiObject
from ipamd.model.timefmt import rfc3339
from tests.fakes.source import FakeSource

INDEXERS: dict[str, dict[str, Callable[[dict[str, Any]], Iterable[Hashable]]]] = {
    LEASE_KIND: LEASE_INDEXERS, BLOCK_KIND: BLOCK_INDEXERS}


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    for k, v in patch.items():
        if v is None:
            into.pop(k, None)
        elif isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


def _key(name: str, namespace: str) -> str:
    """A namespaced object's key: ``namespace/name`` (cluster-scoped ones: the name)."""
    return f"{namespace}/{name}" if namespace else name


def not_found(kind: str, name: str) -> ApiException:
    """The API server's 404 of an object: a Status naming it (a 404 of a path names nothing)."""
    exc = ApiException(status=404, reason="Not Found")
    exc.body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                           "message": f'{kind.lower()} "{name}" not found', "details": {"name": name, "kind": kind}})
    return exc


class FakeApi:
    def __init__(self) -> None:
        self.objs: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._version = 0

    def _count(self, verb: str, kind: str) -> None:
        self.calls[f"{verb} {kind}"] += 1

    def requests(self) -> int:
        return sum(self.calls.values())

    def create(self, kind: str, body: dict[str, Any], namespace: str = "") -> dict[str, Any]:
        with self.lock:
            self._count("create", kind)
            name = _key(body["metadata"]["name"], namespace)
            if name in self.objs[kind]:
                raise ApiException(status=409, reason="AlreadyExists")
            self._version += 1
            obj = copy.deepcopy(body)
            obj["metadata"].update(resourceVersion=str(self._version), creationTimestamp=rfc3339())
            obj["metadata"].setdefault("uid", f"uid-{self._version}")
            self.objs[kind][name] = obj
            return copy.deepcopy(obj)

    def get(self, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        with self.lock:
            self._count("get", kind)
            name = _key(name, namespace)
            if name not in self.objs[kind]:
                raise not_found(kind, name)
            return copy.deepcopy(self.objs[kind][name])

    def patch(self, kind: str, name: str, body: dict[str, Any], namespace: str = "") -> dict[str, Any]:
        with self.lock:
            self._count("patch", kind)
            name = _key(name, namespace)
            if name not in self.objs[kind]:
                raise not_found(kind, name)
            wanted = (body.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != self.objs[kind][name]["metadata"]["resourceVersion"]:
                raise ApiException(status=409, reason="Conflict")
            body = copy.deepcopy(body)
            (body.get("metadata") or {}).pop("resourceVersion", None)
            _merge(self.objs[kind][name], body)
            self._version += 1
            self.objs[kind][name]["metadata"]["resourceVersion"] = str(self._version)
            return copy.deepcopy(self.objs[kind][name])

    def patch_status(self, kind: str, name: str, status: dict[str, Any], namespace: str = "",
                     resource_version: str = "", field_manager: str = "") -> dict[str, Any]:
        with self.lock:
            self._count("patch_status", kind)
            name = _key(name, namespace)
            if name not in self.objs[kind]:
                raise not_found(kind, name)
            if resource_version and resource_version != self.objs[kind][name]["metadata"]["resourceVersion"]:
                raise ApiException(status=409, reason="Conflict")
            _merge(self.objs[kind][name].setdefault("status", {}), status)
            if field_manager:  # as the API server stamps a write: who, and when by the server's clock
                md = self.objs[kind][name]["metadata"]
                md["managedFields"] = [e for e in md.get("managedFields") or () if e.get("manager") != field_manager]
                md["managedFields"].append({"manager": field_manager, "operation": "Update", "time": rfc3339()})
            self._version += 1
            self.objs[kind][name]["metadata"]["resourceVersion"] = str(self._version)
            return copy.deepcopy(self.objs[kind][name])

    def delete(self, kind: str, name: str, namespace: str = "", resource_version: str = "") -> None:
        with self.lock:
            self._count("delete", kind)
            name = _key(name, namespace)
            if name not in self.objs[kind]:
                raise not_found(kind, name)
            if resource_version and resource_version != self.objs[kind][name]["metadata"]["resourceVersion"]:
                raise ApiException(status=409, reason="Conflict")
            del self.objs[kind][name]

    def lister(self, kind: str) -> Callable[..., dict[str, Any]]:
        def list_objects(label_selector: str = "", **_: Any) -> dict[str, Any]:
            with self.lock:
                self._count("list", kind)
                want = dict(kv.split("=", 1) for kv in label_selector.split(",") if kv)
                return {"items": [copy.deepcopy(o) for o in self.objs[kind].values()
                                  if all(((o["metadata"].get("labels") or {}).get(k)) == v for k, v in want.items())]}
        return list_objects

    def senders(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        """The outbox's generic ops over this API (as ``ipamd.kube.publisher.api_senders`` makes them)."""
        def create(b: dict[str, Any]) -> None:
            self.create(b["kind"], b["object"])

        def heartbeat(b: dict[str, Any]) -> None:  # a node's coordination Lease: made once, then renewed
            if b["metadata"]["name"] in self.objs["Lease"]:
                self.patch("Lease", b["metadata"]["name"], {"spec": b["spec"]})
            else:
                self.create("Lease", b)
            with self.lock:  # stamped as the API server stamps the renewal manager's write (the server's clock)
                self.objs["Lease"][b["metadata"]["name"]]["metadata"]["managedFields"] = [
                    {"manager": "plexus-renewal", "operation": "Update", "time": rfc3339()}]

        return {
            "heartbeat": heartbeat,
            "create": create,
            "patch": lambda b: self.patch(b["kind"], b["name"], b["patch"]),
            "patch_status": lambda b: self.patch_status(b["kind"], b["name"], b["status"],
                                                        field_manager=b.get("fieldManager", "")),
            "delete": lambda b: self.delete(b["kind"], b["name"], resource_version=b.get("resourceVersion", "")),
        }


class FakeCache:
    """One node's informers over a ``FakeApi``: the API as it was at the last ``sync()`` (``live``: as it is)."""

    def __init__(self, api: FakeApi, live: bool = True) -> None:
        self.objects = api
        self.live = live
        self._snapshot: dict[str, list[dict[str, Any]]] = {}
        self.sync()

    def sync(self) -> None:
        with self.objects.lock:
            self._snapshot = {k: [copy.deepcopy(o) for o in v.values()] for k, v in self.objects.objs.items()}

    def items(self, kind: str) -> list[dict[str, Any]]:
        if self.live:
            with self.objects.lock:
                return [copy.deepcopy(o) for o in self.objects.objs[kind].values()]
        return list(self._snapshot.get(kind, []))

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A pod as the API has it now (``KubernetesSource.read_pod``)."""
        try:
            return self.objects.get("Pod", name, namespace)
        except ApiException:
            return None

    def by_index(self, kind: str, index: str, key: Hashable) -> list[dict[str, Any]]:
        fn = INDEXERS[kind][index]
        return [o for o in self.items(kind) if key in list(fn(o))]

    def indexed(self, kind: str, index: str, key: Hashable) -> bool:
        return bool(self.by_index(kind, index, key))


def served_by(api: FakeApi, source: FakeSource) -> None:
    """The user's objects a node's typed source shows (its IPAddresses and pods, as a test adds and removes them) are on
    the API server too, where a node reads which pod uses an IPAddress and whether that pod still runs."""
    def added(obj: ApiObject) -> None:
        if obj.meta.kind not in (*IP_ADDRESS_KINDS, POD.name):
            return
        doc: dict[str, Any] = {"kind": obj.meta.kind, "metadata": {"name": obj.meta.name, "uid": obj.meta.uid}}
        if obj.meta.kind == POD.name:
            doc["status"] = {"phase": "Running"}
        with suppress(ApiException):
            if api.get(obj.meta.kind, obj.meta.name, obj.meta.namespace)["metadata"]["uid"] == obj.meta.uid:
                return  # another node's source showed it already: as it is (whoever uses it)
            api.delete(obj.meta.kind, obj.meta.name, obj.meta.namespace)
        api.create(obj.meta.kind, doc, obj.meta.namespace)

    def removed(kind: str, namespace: str, name: str) -> None:
        with suppress(ApiException):
            api.delete(kind, name, namespace)

    source.added.append(added)
    source.removed.append(removed)
    for obj in list(source.stored.values()):
        added(obj)

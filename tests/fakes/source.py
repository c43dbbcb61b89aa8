"""The ``ObjectSource`` interface over a dict of typed objects."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import TypeVar

from ipamd.model.objects import POD, ApiObject, Kind, Pod
from ipamd.sources.base import Problem, at_uid

T = TypeVar("T")
CATCH_UP_LOOKS = 5  # how often ``wait_for_pod`` looks at the cache before its direct read


class FakeSource:
    def __init__(self, *objs: ApiObject) -> None:
        self.stored: dict[tuple[str, str, str], ApiObject] = {}
        self.subscribers: builtins.list[Callable[[], None]] = []
        self.waited: builtins.list[tuple[str, str]] = []
        self.late: dict[tuple[str, str], Pod] = {}  # pods wait_for_pod finds (a watch that lagged)
        self.synced = True  # False: a cluster's informers before their first list
        self.added: builtins.list[Callable[[ApiObject], None]] = []  # told of each change (``served_by``)
        self.removed: builtins.list[Callable[[str, str, str], None]] = []
        for obj in objs:
            self.add(obj)

    def add(self, obj: ApiObject) -> None:
        self.stored[(obj.meta.kind, obj.meta.namespace, obj.meta.name)] = obj
        for tell in self.added:
            tell(obj)

    def remove(self, kind: str, namespace: str, name: str) -> None:
        del self.stored[(kind, namespace, name)]
        for tell in self.removed:
            tell(kind, namespace, name)

    def get(self, kind: Kind[T], namespace: str, name: str) -> T | None:
        obj = self.stored.get((kind.name, namespace, name))
        return obj if isinstance(obj, kind.type) else None

    def list(self, kind: Kind[T]) -> builtins.list[T]:
        return [o for (k, _, _), o in self.stored.items() if k == kind.name and isinstance(o, kind.type)]

    def pod_by_uid(self, uid: str) -> Pod | None:
        return next((p for p in self.list(POD) if p.meta.uid == uid), None)

    def wait_for_pod(self, namespace: str, name: str, uid: str = "") -> Pod | None:
        """The cache looked at again (a test's ``get`` may catch up meanwhile), then ``late`` as the direct read: the
        pod of that name the API has, at whatever UID."""
        self.waited.append((namespace, name))
        for _ in range(CATCH_UP_LOOKS):
            pod = self.get(POD, namespace, name)
            if pod is not None and at_uid(pod, uid):
                return pod
        return self.late.get((namespace, name))

    def problems(self) -> builtins.list[Problem]:
        return []

    def ready(self) -> bool:
        return self.synced

    def unlisted(self, timeout_s: float) -> builtins.list[str]:
        return [] if self.synced else ["Network"]

    def sync(self) -> builtins.list[Problem]:
        return []

    def subscribe(self, callback: Callable[[], None]) -> None:
        self.subscribers.append(callback)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

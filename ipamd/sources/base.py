"""The one interface the daemon reads objects through, whichever source serves them.

``LocalSource`` (a directory of manifests, ``ipamd.sources.local``) and ``KubernetesSource``
(informers, ``ipamd.kube.source``) implement it. Lookups are typed by kind: ``get(NETWORK, ns,
name)`` is a ``Network`` or None, so callers never check what they got.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ipamd.model.objects import Kind, Pod

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Problem:
    """A manifest that is not served, and why."""

    source: str
    field: str
    message: str


class ObjectSource(Protocol):
    def get(self, kind: Kind[T], namespace: str, name: str) -> T | None: ...

    def list(self, kind: Kind[T]) -> builtins.list[T]: ...

    def pod_by_uid(self, uid: str) -> Pod | None: ...

    def wait_for_pod(self, namespace: str, name: str) -> Pod | None:
        """A pod the source has not seen yet: a cluster's watch may lag the ADD, so it waits a bounded
        time and reads it directly; a local directory has nothing to wait for."""
        ...

    def problems(self) -> builtins.list[Problem]: ...

    def ready(self) -> bool: ...

    def sync(self) -> builtins.list[Problem]: ...

    def subscribe(self, callback: Callable[[], None]) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

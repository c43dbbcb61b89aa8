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

from cni.errors import TryAgainLater
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

    def wait_for_pod(self, namespace: str, name: str, uid: str = "") -> Pod | None:
        """A pod the source has not seen yet, or (``uid`` given) not at that UID yet: a cluster's watch may lag the
        ADD, and shows a pod made again under the same name at its old UID for a while, so it waits a bounded time
        for it and then reads it directly (the pod of that name the API has, at whatever UID; None when there is
        none; ``TryAgainLater`` when the API cannot be read); a local directory has nothing to wait for."""
        ...

    def problems(self) -> builtins.list[Problem]: ...

    def ready(self) -> bool: ...

    def unlisted(self, timeout_s: float) -> builtins.list[str]:
        """The kinds not yet read once, after waiting up to ``timeout_s`` for them (a daemon just started, or
        started while the API server is unreachable, has not listed its Networks yet: none of them is not
        the same as not knowing them)."""
        ...

    def sync(self) -> builtins.list[Problem]: ...

    def subscribe(self, callback: Callable[[], None]) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def at_uid(pod: Pod, uid: str) -> bool:
    """Whether ``pod`` is the pod of that UID (no UID on either side: a call or a manifest that names none)."""
    return not uid or not pod.meta.uid or pod.meta.uid == uid


#: How long an ADD waits for a source still reading its objects for the first time.
LISTING_WAIT_S = 10.0


def require_listed(source: ObjectSource, timeout_s: float = LISTING_WAIT_S) -> None:
    """Answer 11 (try again later), not "does not exist", for an object looked up before its kind was read."""
    missing = source.unlisted(timeout_s)
    if missing:
        raise TryAgainLater(f"plexus-ipamd has not read {', '.join(missing)} from its object source yet (is the "
                            "Kubernetes API server reachable?)", "object source")

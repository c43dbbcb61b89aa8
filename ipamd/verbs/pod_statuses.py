"""A pod's statuses, written one at a time per pod, each read from the store as it is written.

Two calls of one pod may write its statuses at once: a DEL of its dead sandbox beside the new sandbox's ADD, or
ADDs of two of its interfaces. A status worked out by one and written after the other's would leave an older
status last on the pod. Here each write holds the pod's lock from reading the store to the publisher's answer, so
the last write is always of the newest store. An ADD's status written while its interfaces are built
(``ahead``) is the store's with that attachment as it will be; the ADD writes the store's again afterwards unless
that one was the pod's last write and says the same (``settle``).
"""

from __future__ import annotations

import contextvars
import itertools
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass

from ipamd.model.objects import POD, Meta, Pod
from ipamd.publish.base import Publisher
from ipamd.store.protocols import VerbStore
from ipamd.store.records import PodStatus
from ipamd.verbs.call import KeyedLocks

log = logging.getLogger(__name__)

#: Writes ahead at once: more than the CNI server's workers (8 by default), so no ADD waits behind another pod's.
AHEAD_WRITERS = 16


@dataclass(frozen=True, slots=True)
class Sent:
    """A status written ahead, and which write it was (numbered across all pods)."""

    status: PodStatus | None
    nth: int


class PodStatusWriter:
    def __init__(self, store: VerbStore, publisher: Publisher) -> None:
        self.store = store
        self.publisher = publisher
        self._locks = KeyedLocks()
        self._numbers = itertools.count(1)
        self._last: dict[str, int] = {}  # pod UID -> the number of its last write (while it has statuses)
        self._ahead = ThreadPoolExecutor(max_workers=AHEAD_WRITERS, thread_name_prefix="status")

    def owing(self, uid: str) -> AbstractContextManager[None]:
        """Held around a commit that owes the pod's statuses (a DEL's): no write of the pod reads the store before that
        commit and drops what it owes after (an older status written over the removal owed)."""
        return self._locks.hold((uid, ""))

    def write(self, namespace: str, name: str, uid: str) -> None:
        """The pod's statuses as the store has them now (nowhere, when they live in the store only)."""
        if not self.publisher.remote:
            return
        with self._locks.hold((uid, "")):
            self._send(Pod(Meta(POD.name, name, namespace, uid)), self.store.pod_status(uid))

    def ahead(self, pod: Pod, foresee: Callable[[], PodStatus | None]) -> Future[Sent]:
        """``foresee()`` (the store's statuses with an attachment as it will be once built) written on another thread,
        in the caller's context (as ``asyncio.to_thread`` runs a function): its API request is the caller's."""
        return self._ahead.submit(contextvars.copy_context().run, self._write_ahead, pod, foresee)

    def _write_ahead(self, pod: Pod, foresee: Callable[[], PodStatus | None]) -> Sent:
        with self._locks.hold((pod.meta.uid, "")):
            status = foresee()
            return Sent(status, self._send(pod, status))

    def settle(self, pod: Pod, sent: Future[Sent]) -> None:
        """After the write ahead has landed: the store's statuses, unless that write was the pod's last and said them.
        A failed write ahead (an error, not the API server's: that one is owed) is logged, never the call's failure."""
        try:
            ahead: Sent | None = sent.result()
        except Exception as exc:  # logged, not raised
            log.warning("writing the statuses of pod %s/%s: %s", pod.meta.namespace, pod.meta.name, exc)
            ahead = None
        with self._locks.hold((pod.meta.uid, "")):
            stored = self.store.pod_status(pod.meta.uid)
            if ahead is not None and self._last.get(pod.meta.uid) == ahead.nth and _same(ahead.status, stored):
                return
            self._send(pod, stored)

    def _send(self, pod: Pod, status: PodStatus | None) -> int:
        """Under the pod's lock: the write, and its number."""
        nth = next(self._numbers)
        if status is None:
            self._last.pop(pod.meta.uid, None)  # no statuses left: forgotten
        else:
            self._last[pod.meta.uid] = nth
        self.publisher.pod_status(pod, status)
        return nth


def _same(a: PodStatus | None, b: PodStatus | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.networks_status, a.network_status) == (b.networks_status, b.network_status)

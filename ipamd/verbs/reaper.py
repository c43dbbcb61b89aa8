"""DELs finished after they answered (``--del-mode background``).

Removing a veth costs the kernel ~15 ms of RCU waits under its RTNL lock, the largest part of a pod's DEL and nothing
the runtime needs to wait for: once the attachment is recorded as ``deleting`` and its node end is down, the pod can
no longer use its addresses. The reaper then removes the interfaces and only after that releases the addresses, so no
address is handed to another pod while the old interface still exists. It waits ``delay_s`` first: a runtime deletes
the pod's namespace right after DEL, and the kernel then removes the pair itself, off every CNI call's path. A daemon
killed meanwhile finds the attachment ``deleting`` at its next start and finishes it (``Reconciler.recover``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (container ID, CNI_IFNAME)


class Reaper:
    def __init__(self, finish: Callable[[str, str], object], delay_s: float = 0.2, workers: int = 2) -> None:
        self._finish = finish
        self.delay_s = delay_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reaper")
        self._cv = threading.Condition()
        # key -> (the pod's (namespace, name), the submission's token): a key DELeted again while an older job of it
        # still runs (an ADD in between) belongs to the newer job, which the older one's end must not drop
        self._pending: dict[Key, tuple[tuple[str, str], int]] = {}
        self._tokens = itertools.count(1)
        self._stopping = threading.Event()

    def submit(self, key: Key, pod: tuple[str, str]) -> bool:
        """Finish ``key``'s DEL after the delay; False when the daemon is stopping (the caller finishes it now)."""
        with self._cv:
            if self._stopping.is_set():
                return False
            token = next(self._tokens)
            self._pending[key] = (pod, token)
            try:
                self._pool.submit(self._run, key, time.monotonic() + self.delay_s, token)
            except RuntimeError:  # the pool shut down since the check
                del self._pending[key]
                return False
        return True

    def pending(self, key: Key) -> bool:
        with self._cv:
            return key in self._pending

    def wait_for_pod(self, pod: tuple[str, str], timeout_s: float, own: Key | None = None) -> bool:
        """Wait until no DEL of ``pod`` (by namespace and name) is being finished: a StatefulSet pod recreated at
        once asks for the addresses its predecessor still holds. ``own``: the caller's attachment, whose pending DEL
        it tears down itself (it holds that key's lock, which the reaper would need). False when it did not end in
        time."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while any(p == pod and k != own for k, (p, _) in self._pending.items()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def _run(self, key: Key, due: float, token: int) -> None:
        try:  # the delay counts from the DEL's answer, not from when a worker is free (a backlog waits no more)
            if self._stopping.wait(max(0.0, due - time.monotonic())):
                return  # the daemon is stopping: its next start finishes it
            self._finish(*key)
        except Exception as exc:  # the record stays "deleting": the reconciler tries again
            log.warning("finishing the DEL of %s/%s: %s", key[0][:12], key[1], exc)
        finally:
            with self._cv:
                if self._pending.get(key, (None, 0))[1] == token:
                    del self._pending[key]
                self._cv.notify_all()

    def stop(self) -> None:
        with self._cv:
            self._stopping.set()
        # jobs cancelled before they ran stay pending (their records "deleting", for the next start to finish): a pod
        # recreated meanwhile still waits for its predecessor, and a repeated DEL is answered as being finished
        self._pool.shutdown(wait=True, cancel_futures=True)

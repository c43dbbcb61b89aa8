"""A shared/exclusive lock (stdlib has none): many ADDs at once, or one GC alone.

GC tells the delegates every attachment recorded (``Attacher.gc``). An ADD that recorded its attachment after GC read
them, and whose delegate's plexus-ipam call ended before GC exec'd that delegate's GC, would have its lease let go
while its interface carries the address. So an ADD holds the gate shared from its record to its commit (or undo),
and GC holds it exclusive from its read of the store until the delegates' GCs return.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


class SharedExclusiveLock:
    """Writer-preferring: once an exclusive holder waits, new shared holders wait behind it, so a steady stream of
    ADDs cannot starve GC. Not reentrant: a thread holding it exclusive that asks for it again raises (it would wait
    for itself for ever). An uncontended shared acquire is one lock and a counter."""

    def __init__(self) -> None:
        self._cv = threading.Condition(threading.Lock())
        self._shared = 0  # holders of the shared side
        self._waiting = 0  # callers waiting for either side
        self._writers_waiting = 0
        self._writer: int | None = None  # the thread holding it exclusive

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cv:
            if self._writer is not None or self._writers_waiting:
                self._wait_for(lambda: self._writer is None and not self._writers_waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._cv:
                self._shared -= 1
                if not self._shared and self._writers_waiting:
                    self._cv.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cv:
            self._writers_waiting += 1
            try:
                self._wait_for(lambda: self._writer is None and not self._shared)
            finally:
                self._writers_waiting -= 1
                self._cv.notify_all()  # shared holders queued behind this writer (if it gave up) may go
            self._writer = threading.get_ident()
        try:
            yield
        finally:
            with self._cv:
                self._writer = None
                self._cv.notify_all()

    def _wait_for(self, free: Callable[[], bool]) -> None:
        """Wait (holding ``_cv``) until ``free()``; refused to the thread that holds the gate exclusive."""
        if self._writer == threading.get_ident():
            raise RuntimeError("the thread holding the gate exclusive asked for it again")
        self._waiting += 1
        try:
            self._cv.wait_for(free)
        finally:
            self._waiting -= 1

    def waiting(self) -> int:
        """How many callers wait for the gate now (tests forcing an interleaving look at it)."""
        with self._cv:
            return self._waiting

"""The gate between ADDs and GC (``SharedExclusiveLock``): shared holders together, an exclusive one alone, a
waiting exclusive holder served before shared ones that come after it, and no thread waiting for itself."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

import pytest

from ipamd.verbs.gc_gate import SharedExclusiveLock


def _until(done: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def _in_thread(fn: Callable[[], None]) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def test_shared_holders_hold_it_together() -> None:
    gate = SharedExclusiveLock()
    inside, go = threading.Barrier(3, timeout=5), threading.Event()

    def hold() -> None:
        with gate.shared():
            inside.wait()  # all three in at once
            assert go.wait(5)

    threads = [_in_thread(hold) for _ in range(2)]
    inside.wait()
    go.set()
    for t in threads:
        t.join(5)
        assert not t.is_alive()


def test_an_exclusive_holder_waits_for_the_shared_ones_and_then_holds_it_alone() -> None:
    gate = SharedExclusiveLock()
    order: list[str] = []
    release = threading.Event()

    def reader() -> None:
        with gate.shared():
            order.append("shared in")
            assert release.wait(5)
            order.append("shared out")

    def writer() -> None:
        with gate.exclusive():
            order.append("exclusive")

    r = _in_thread(reader)
    _until(lambda: order == ["shared in"])
    w = _in_thread(writer)
    _until(lambda: gate.waiting() == 1)
    assert order == ["shared in"], "GC waits for the ADD in flight"
    release.set()
    for t in (r, w):
        t.join(5)
    assert order == ["shared in", "shared out", "exclusive"]


def test_a_waiting_exclusive_holder_goes_before_shared_ones_that_come_after_it() -> None:
    """Writer-preferring: ADDs arriving all the time would else keep GC out for ever."""
    gate = SharedExclusiveLock()
    order: list[str] = []
    inside, release = threading.Event(), threading.Event()

    def first() -> None:
        with gate.shared():
            inside.set()
            assert release.wait(5)
            order.append("first out")

    def writer() -> None:
        with gate.exclusive():
            order.append("exclusive")

    def late() -> None:
        with gate.shared():
            order.append("late")

    threads = [_in_thread(first)]
    assert inside.wait(5)
    threads.append(_in_thread(writer))
    _until(lambda: gate.waiting() == 1)
    threads.append(_in_thread(late))
    _until(lambda: gate.waiting() == 2)
    release.set()
    for t in threads:
        t.join(5)
        assert not t.is_alive()
    assert order == ["first out", "exclusive", "late"]


def test_shared_holders_waiting_go_once_the_exclusive_holder_is_done() -> None:
    gate = SharedExclusiveLock()
    got: list[int] = []
    with gate.exclusive():
        threads = [_in_thread(functools.partial(_hold_shared, gate, got, i)) for i in range(3)]
        _until(lambda: gate.waiting() == 3)
        assert got == []
    for t in threads:
        t.join(5)
    assert sorted(got) == [0, 1, 2] and gate.waiting() == 0


def _hold_shared(gate: SharedExclusiveLock, got: list[int], i: int) -> None:
    with gate.shared():
        got.append(i)


@pytest.mark.parametrize("again", ["shared", "exclusive"])
def test_the_exclusive_holder_asking_again_is_refused_not_left_waiting_for_itself(again: str) -> None:
    gate = SharedExclusiveLock()
    with gate.exclusive():
        with pytest.raises(RuntimeError), getattr(gate, again)():
            pass
    with gate.shared():  # nothing left behind
        pass
    with gate.exclusive():
        pass


def test_an_exception_inside_lets_go_of_it() -> None:
    gate = SharedExclusiveLock()
    for side in (gate.shared, gate.exclusive):
        with pytest.raises(ValueError), side():
            raise ValueError
    with gate.exclusive():
        pass

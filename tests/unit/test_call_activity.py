"""Background work waits for a lull in the node's CNI calls (``ipamd.node.activity``), and never longer than its
bound: a fake clock that the waits move on, no real time."""

from __future__ import annotations

import threading

import pytest

from ipamd.node.activity import CallActivity


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Waits(threading.Event):
    """A stop event whose waits pass on the fake clock at once (and may set it, or start a call, on the way)."""

    def __init__(self, clock: Clock, each: object = None) -> None:
        super().__init__()
        self.clock, self.each = clock, each
        self.waited: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waited.append(timeout)
        self.clock.now += timeout or 0.0
        if callable(self.each):
            self.each()
        return self.is_set()


def test_a_call_being_served_is_no_lull_and_one_just_ended_is_not_yet() -> None:
    clock = Clock()
    calls = CallActivity(clock)
    seen: list[float] = []
    calls.served(lambda _: seen.append(calls.idle_for()))(None)
    assert seen == [0.0], "while it is served"
    assert calls.idle_for() == 0.0
    clock.now += 0.03
    assert calls.idle_for() == pytest.approx(0.03)


def test_a_call_that_fails_still_ends() -> None:
    clock = Clock()
    calls = CallActivity(clock)

    def fails(_: object) -> None:
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError):
        calls.served(fails)(None)
    clock.now += 1
    assert calls.idle_for() == 1


def test_no_call_at_all_is_a_lull_at_once() -> None:
    clock = Clock()
    stop = Waits(clock)
    assert CallActivity(clock).wait_for_lull(stop) is True
    assert stop.waited == []


def test_the_wait_ends_with_the_first_lull() -> None:
    clock = Clock()
    calls = CallActivity(clock)
    calls.served(lambda _: None)(None)  # ended just now
    stop = Waits(clock)
    assert calls.wait_for_lull(stop, bound_s=2.0, quiet_s=0.05) is True
    assert sum(w or 0 for w in stop.waited) == pytest.approx(0.05), "no longer than the quiet time"


def test_calls_that_keep_coming_hold_background_work_back_no_longer_than_its_bound() -> None:
    clock = Clock()
    calls = CallActivity(clock)
    calls.served(lambda _: None)(None)
    stop = Waits(clock, each=lambda: calls.served(lambda _: None)(None))  # and one more ends during every wait
    assert calls.wait_for_lull(stop, bound_s=2.0, quiet_s=0.05) is False
    assert 2.0 <= sum(w or 0 for w in stop.waited) <= 2.05


def test_stopping_ends_the_wait() -> None:
    clock = Clock()
    calls = CallActivity(clock)
    gate = threading.Event()
    busy = threading.Thread(target=calls.served(lambda _: gate.wait(5)), args=(None,))
    busy.start()
    try:
        stop = Waits(clock)
        stop.set()
        assert calls.wait_for_lull(stop, bound_s=60.0) is False
        assert stop.waited == []
    finally:
        gate.set()
        busy.join(5)


def test_a_round_another_node_waits_for_does_not_wait_for_a_lull() -> None:
    """A block another node asked for is given back by a round woken with ``wake_now``: that round skips the wait
    for a lull in this node's CNI calls (bounded at 2 s, against the asker's 3 s), while an ordinary wake waits."""
    import time

    from ipamd.node.reconcile import Reconciler
    from tests.fakes.cluster import FakeApi
    from tests.unit.test_attacher_kube import KubeNode

    node = KubeNode(FakeApi())
    hurried: list[bool] = []
    rounds = Reconciler(node.store, node.source, node.ipam, node.attacher, node.attacher.segments,  # type: ignore[arg-type]
                        node.publisher, interval=60.0, cluster=True, settle_s=0.01,
                        lull=lambda hurry: hurried.append(hurry.is_set()))
    rounds.start()
    try:
        for wake, want in ((rounds.wake, [False]), (rounds.wake_now, [False, True]), (rounds.wake, [False, True, False])):
            wake()
            deadline = time.monotonic() + 5
            while len(hurried) < len(want) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert hurried == want
    finally:
        rounds.stop()

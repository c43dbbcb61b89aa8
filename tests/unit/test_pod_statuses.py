"""A pod's statuses are written one at a time per pod, each of the newest store: two calls of one pod (a dead
sandbox's DEL beside the new one's ADD) never leave an older status last (``ipamd.verbs.pod_statuses``)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from ipamd.model.objects import POD, Meta, Pod
from ipamd.store.records import PodStatus
from ipamd.verbs.pod_statuses import PodStatusWriter, Sent
from tests.fakes.publisher import RecordingPublisher
from tests.fakes.store import MemoryStore

POD_APP = Pod(Meta(POD.name, "app", "ns", "uid-app"))


def status(*interfaces: str) -> PodStatus:
    return PodStatus("uid-app", "ns", "app", tuple({"ifName": i} for i in interfaces), 0.0,
                     tuple({"interface": i} for i in interfaces))


def stored(store: MemoryStore, st: PodStatus | None) -> None:
    with store.transaction():
        if st is None:
            store.delete_pod_status("uid-app")
        else:
            store.put_pod_status(st)


def written(publisher: RecordingPublisher) -> list[tuple[str, ...] | None]:
    return [None if s is None else tuple(e["ifName"] for e in s.networks_status) for _, s in publisher.pod_statuses]


def test_a_write_ahead_that_was_the_pods_last_and_says_the_store_is_not_made_again() -> None:
    store, publisher = MemoryStore(), RecordingPublisher()
    writer = PodStatusWriter(store, publisher)
    stored(store, status("net0"))
    sent = writer.ahead(POD_APP, lambda: status("net0", "net1"))
    stored(store, status("net0", "net1"))  # the ADD's commit
    writer.settle(POD_APP, sent)
    assert written(publisher) == [("net0", "net1")]


def test_a_write_of_another_call_after_the_write_ahead_is_followed_by_the_stores() -> None:
    """The dead sandbox's DEL wrote the store as it was (without the new sandbox, not ready yet) after the new
    sandbox's status went ahead: the ADD writes the store's again, though it says what went ahead."""
    store, publisher = MemoryStore(), RecordingPublisher()
    writer = PodStatusWriter(store, publisher)
    sent = writer.ahead(POD_APP, lambda: status("net1"))
    sent.result()
    writer.write("ns", "app", "uid-app")  # the DEL's: nothing stored
    stored(store, status("net1"))  # the ADD's commit
    writer.settle(POD_APP, sent)
    assert written(publisher) == [("net1",), None, ("net1",)]


def test_a_build_that_failed_puts_the_stores_statuses_back() -> None:
    store, publisher = MemoryStore(), RecordingPublisher()
    writer = PodStatusWriter(store, publisher)
    stored(store, status("net0"))
    writer.settle(POD_APP, writer.ahead(POD_APP, lambda: status("net0", "net1")))  # the undo step: nothing committed
    assert written(publisher) == [("net0", "net1"), ("net0",)]


class Held(RecordingPublisher):
    """A publisher whose first write waits until it is let go."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.go = threading.Event()

    def pod_status(self, pod: Pod, status: PodStatus | None) -> None:
        if not self.entered.is_set():
            self.entered.set()
            assert self.go.wait(5)
        super().pod_status(pod, status)


def test_writes_of_one_pod_are_one_at_a_time_and_each_reads_the_store_as_it_is_made() -> None:
    store, publisher = MemoryStore(), Held()
    writer = PodStatusWriter(store, publisher)
    stored(store, status("net0"))
    first = threading.Thread(target=writer.write, args=("ns", "app", "uid-app"))
    first.start()
    assert publisher.entered.wait(5)
    stored(store, status("net0", "net1"))
    second = threading.Thread(target=writer.write, args=("ns", "app", "uid-app"))
    second.start()
    time.sleep(0.2)
    assert publisher.pod_statuses == [], "the second waits for the first"
    publisher.go.set()
    first.join(5)
    second.join(5)
    assert written(publisher) == [("net0",), ("net0", "net1")], "the newest lands last"


def test_a_write_ahead_that_failed_is_logged_and_the_stores_written(caplog: pytest.LogCaptureFixture) -> None:
    store, publisher = MemoryStore(), RecordingPublisher()
    writer = PodStatusWriter(store, publisher)
    stored(store, status("net1"))
    broken: Future[Sent] = Future()
    broken.set_exception(OSError("disk full"))
    writer.settle(POD_APP, broken)
    assert written(publisher) == [("net1",)]
    assert any("disk full" in r.getMessage() for r in caplog.records)


def test_statuses_that_live_in_the_store_only_are_not_written() -> None:
    store, publisher = MemoryStore(), RecordingPublisher(remote=False)
    stored(store, status("net1"))
    PodStatusWriter(store, publisher).write("ns", "app", "uid-app")
    assert publisher.pod_statuses == []

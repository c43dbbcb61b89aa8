"""``Reaper``: background DELs finished after their answer, in its own threads: a pod recreated at once waits for
its predecessor's, a failed finish is logged and left to the reconciler, and a stopping daemon leaves the rest to its
next start."""

from __future__ import annotations

import threading

from ipamd.verbs.reaper import Reaper


def test_a_recreated_pod_waits_for_its_predecessors_del_and_others_do_not() -> None:
    release = threading.Event()
    finished: list[tuple[str, str]] = []

    def finish(cid: str, ifname: str) -> None:
        release.wait(5)
        finished.append((cid, ifname))

    reaper = Reaper(finish, delay_s=0)
    try:
        reaper.submit(("c1", "eth0"), ("apps", "db-0"))
        assert reaper.pending(("c1", "eth0"))
        assert reaper.wait_for_pod(("apps", "web-0"), 0.01), "another pod does not wait"
        assert not reaper.wait_for_pod(("apps", "db-0"), 0.05), "db-0's predecessor is still being let go"
        release.set()
        assert reaper.wait_for_pod(("apps", "db-0"), 5)
        assert finished == [("c1", "eth0")] and not reaper.pending(("c1", "eth0"))
    finally:
        reaper.stop()


def test_a_failed_finish_leaves_the_key_to_the_reconciler() -> None:
    def finish(cid: str, ifname: str) -> None:
        raise OSError("netlink trouble")

    reaper = Reaper(finish, delay_s=0)
    try:
        reaper.submit(("c1", "eth0"), ("apps", "p"))
        assert reaper.wait_for_pod(("apps", "p"), 5), "not pending any more: the reconciler's to retry"
    finally:
        reaper.stop()


def test_stopping_leaves_what_is_not_due_to_the_next_start() -> None:
    finished: list[str] = []
    reaper = Reaper(lambda cid, ifname: finished.append(cid), delay_s=30)
    reaper.submit(("c1", "eth0"), ("apps", "p"))
    reaper.stop()
    assert finished == [], "not finished: the record stays deleting, and recovery finishes it"


def test_an_add_of_the_same_attachment_does_not_wait_for_its_own_pending_del() -> None:
    release = threading.Event()
    reaper = Reaper(lambda cid, ifname: release.wait(5), delay_s=0)
    try:
        reaper.submit(("c1", "eth0"), ("apps", "db-0"))
        assert reaper.wait_for_pod(("apps", "db-0"), 0.01, own=("c1", "eth0")), \
            "its own DEL it tears down itself (it holds the key's lock the reaper needs)"
        assert not reaper.wait_for_pod(("apps", "db-0"), 0.01, own=("c2", "eth0"))
    finally:
        release.set()
        reaper.stop()


def test_an_older_job_of_a_key_does_not_end_the_newer_ones_pending() -> None:
    """The same attachment DELeted, ADDed and DELeted again while the first finish still runs: the first one's end
    leaves the second pending (a recreated pod must still wait for it)."""
    first_running, release_first, release_second = threading.Event(), threading.Event(), threading.Event()
    calls: list[int] = []

    def finish(cid: str, ifname: str) -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            first_running.set()
            release_first.wait(5)
        else:
            release_second.wait(5)

    reaper = Reaper(finish, delay_s=0)
    try:
        reaper.submit(("c1", "eth0"), ("apps", "db-0"))
        assert first_running.wait(5)
        reaper.submit(("c1", "eth0"), ("apps", "db-0"))
        release_first.set()
        assert not reaper.wait_for_pod(("apps", "db-0"), 0.2), "the second DEL is still being finished"
        assert reaper.pending(("c1", "eth0"))
        release_second.set()
        assert reaper.wait_for_pod(("apps", "db-0"), 5)
        assert not reaper.pending(("c1", "eth0")) and len(calls) == 2
    finally:
        release_first.set()
        release_second.set()
        reaper.stop()


def test_a_stopped_reaper_takes_no_more_and_the_del_is_finished_by_its_caller() -> None:
    reaper = Reaper(lambda cid, ifname: None, delay_s=0)
    reaper.stop()
    assert reaper.submit(("c1", "eth0"), ("apps", "p")) is False
    assert not reaper.pending(("c1", "eth0"))

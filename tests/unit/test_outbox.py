"""The outbox: writes owed to the cluster's API are made in order per object, retried with backoff while the API
server is away, judged once (done, retry, refused for good), and survive the daemon's restart in the store."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import KubeLeaseRegistry, lease_name
from ipamd.kube.outbox import CALLS_OWE_S, NOT_YET_S, NotYet, Outbox, backoff, judge
from ipamd.store.records import LeaseRecord
from ipamd.store.sqlite import Store
from tests.fakes.cluster import FakeApi, FakeCache, not_found
from tests.fakes.store import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Api:
    """Records what was sent; ``fail[(target, op)]`` is raised (once per listed exception) instead."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.fail: dict[tuple[str, str], list[BaseException]] = {}
        self.away = False

    def sender(self, op: str) -> Any:
        def send(body: dict[str, Any]) -> None:
            key = (body["t"], op)
            if self.away:
                raise ConnectionRefusedError("refused")
            if self.fail.get(key):
                raise self.fail[key].pop(0)
            self.sent.append(key)
        return send

    def senders(self) -> dict[str, Any]:
        return {op: self.sender(op) for op in ("create", "patch_status", "delete", "event", "block_lease")}


def api_error(status: int) -> ApiException:
    """The API server's answer of ``status`` (a 404 is an object's, naming it)."""
    return not_found("IPAddress", "a") if status == 404 else ApiException(status=status, reason="test")


@pytest.fixture
def parts() -> tuple[Outbox, Api, Clock, MemoryStore]:
    api, clock, store = Api(), Clock(), MemoryStore()
    return Outbox(store, api.senders(), clock), api, clock, store


def owe(outbox: Outbox, target: str, op: str, supersede: bool = False) -> None:
    outbox.add(target, op, {"t": target}, supersede=supersede)


def test_writes_are_made_in_order_per_object(parts: tuple[Outbox, Api, Clock, MemoryStore]) -> None:
    outbox, api, _, store = parts
    for target in ("IPAddress/ns/a", "IPAddress/ns/b"):
        owe(outbox, target, "create")
        owe(outbox, target, "patch_status")
    assert outbox.flush() == 0 and store.outbox_depth() == 0
    for target in ("IPAddress/ns/a", "IPAddress/ns/b"):
        assert [op for t, op in api.sent if t == target] == ["create", "patch_status"]


def test_a_write_that_must_wait_holds_back_its_object_only(parts: tuple[Outbox, Api, Clock, MemoryStore]) -> None:
    outbox, api, clock, store = parts
    api.fail[("IPAddress/ns/a", "create")] = [api_error(500)]
    owe(outbox, "IPAddress/ns/a", "create")
    owe(outbox, "IPAddress/ns/a", "patch_status")
    owe(outbox, "IPAddress/ns/b", "patch_status")
    api.fail[("IPAddress/ns/b", "patch_status")] = []
    outbox.flush()
    assert ("IPAddress/ns/a", "patch_status") not in api.sent  # never ahead of its create
    assert ("IPAddress/ns/b", "patch_status") in api.sent
    head = store.outbox_head(10)
    assert [(e.target, e.op, e.attempts) for e in head] == [("IPAddress/ns/a", "create", 1),
                                                            ("IPAddress/ns/a", "patch_status", 0)]
    assert head[0].next_at == clock.now + backoff(1) and "test" in head[0].error
    clock.now += 60
    assert outbox.flush() == 0
    assert [op for t, op in api.sent if t == "IPAddress/ns/a"] == ["create", "patch_status"]


def test_while_the_api_server_is_away_passes_back_off_and_then_catch_up(
        parts: tuple[Outbox, Api, Clock, MemoryStore]) -> None:
    outbox, api, clock, store = parts
    api.away = True
    for i in range(20):
        owe(outbox, f"IPAddress/ns/ip{i}", "create")
    assert outbox.flush() == 20 and outbox.api_away()
    tried = sum(e.attempts for e in store.outbox_head(100))
    assert 1 <= tried <= 20
    assert outbox.flush() == 20 and sum(e.attempts for e in store.outbox_head(100)) == tried  # backing off
    waits = []
    for _ in range(8):  # the pause between passes grows, up to its cap
        clock.now = outbox._away_until
        outbox.flush()
        waits.append(outbox._away_until - clock.now)
    assert waits == sorted(waits) and waits[-1] == 30.0
    api.away = False
    clock.now = outbox._away_until + 31
    assert outbox.flush() == 0 and not outbox.api_away()
    assert sorted(t for t, _ in api.sent) == sorted(f"IPAddress/ns/ip{i}" for i in range(20))


def test_calls_owe_their_writes_for_a_while_after_one_went_unanswered_and_an_answer_ends_it(
        parts: tuple[Outbox, Api, Clock, MemoryStore]) -> None:
    outbox, api, clock, _ = parts
    assert not outbox.api_away()
    outbox.unanswered()
    assert outbox.api_away(), "the next call owes its write at once"
    clock.now += CALLS_OWE_S
    assert not outbox.api_away(), "then one call tries again"
    api.away = True
    owe(outbox, "IPAddress/ns/a", "create")
    outbox.flush()
    assert outbox.api_away() and outbox._away_until > clock.now, "a pass unanswered: calls owe too"
    for _ in range(5):
        clock.now = outbox._away_until
        outbox.flush()
    assert outbox._away_until - clock.now == backoff(6) > CALLS_OWE_S, "the passes back off longer and longer"
    clock.now += CALLS_OWE_S
    assert not outbox.api_away(), "but a call tries again after CALLS_OWE_S, before the passes' next try"
    api.away = False
    outbox.answered()  # a call's write got its answer
    assert not outbox.api_away() and outbox._away_until == 0.0 and outbox._wake.is_set()
    assert outbox.flush() == 0 and api.sent == [("IPAddress/ns/a", "create")], "the passes go on at once"


def test_only_a_write_with_no_answer_at_all_makes_the_calls_owe_theirs(
        parts: tuple[Outbox, Api, Clock, MemoryStore]) -> None:
    """A 503 or a 429 comes back at once: a call loses nothing by writing, and the pod's status is then written
    before its ADD answers; a timeout or a refused connection is what a call must not wait for again."""
    outbox, api, clock, _ = parts
    api.fail[("IPAddress/ns/a", "create")] = [api_error(503)]
    owe(outbox, "IPAddress/ns/a", "create")
    outbox.flush()
    assert not outbox.api_away(), "answered 503: calls keep writing"
    clock.now += 1
    api.away = True
    outbox.flush()
    assert outbox.api_away(), "refused: calls owe theirs for a while"


def test_once_a_pass_is_answered_after_an_outage_no_write_waits_out_its_backoff(
        parts: tuple[Outbox, Api, Clock, MemoryStore]) -> None:
    outbox, api, clock, store = parts
    api.fail[("IPAddress/ns/a", "patch_status")] = [api_error(409)] * 5  # conflicts: retried, later and later
    owe(outbox, "IPAddress/ns/a", "patch_status")
    for _ in range(5):
        clock.now = store.outbox_head(1)[0].next_at
        outbox.flush()
    (a,) = store.outbox_head(10)
    assert a.attempts == 5 and not outbox.api_away()
    api.away = True  # then an outage
    owe(outbox, "IPAddress/ns/b", "create")
    outbox.flush()
    assert outbox.api_away() and outbox._away_until < a.next_at
    api.away = False
    clock.now = outbox._away_until
    assert outbox.flush() == 1 and api.sent == [("IPAddress/ns/b", "create")], "b made; a waits out its backoff"
    assert outbox.flush() == 0, "the API server answered after an outage: the next pass makes every write"


def test_one_write_failing_while_others_are_made_keeps_its_own_backoff(
        parts: tuple[Outbox, Api, Clock, MemoryStore]) -> None:
    """Found in review: a write answered 500 again and again beside writes that were made was, after one CNI call's
    write was answered, sent again on every other pass for ever (each made pass counted as the API server back)."""
    outbox, api, clock, store = parts
    api.fail[("IPAddress/ns/bad", "create")] = [api_error(500)] * 10_000
    owe(outbox, "IPAddress/ns/bad", "create")

    def passes(n: int, tag: str) -> int:
        """``n`` passes 0.25 s apart, a new write owed before each; how often the bad write was tried meanwhile."""
        before = store.outbox_of("IPAddress/ns/bad")[0].attempts
        for i in range(n):
            owe(outbox, f"IPAddress/ns/{tag}{i}", "create")
            if clock.now >= outbox._away_until:
                outbox.flush()
            clock.now += 0.25
        return store.outbox_of("IPAddress/ns/bad")[0].attempts - before

    passes(400, "a")
    outbox.answered()  # one CNI call's write answered
    tried = passes(400, "b")
    assert tried <= 6, f"tried {tried} times in the 100 s after: its own backoff (up to 30 s) holds"
    clock.now += 31
    outbox.flush()
    assert len(api.sent) == 800, "the others were made"


@pytest.mark.parametrize(("op", "status", "done", "retried"), [
    ("create", 409, True, False),  # there already
    ("delete", 404, True, False),  # gone already
    ("delete", 409, True, False),  # its precondition failed: someone else's object now
    ("patch_status", 404, True, False),
    ("patch_status", 409, False, True),  # a conflicting update: try again
    ("pod_status", 409, True, False),  # its UID precondition failed: the pod was made again, nothing to write
    ("patch_status", 422, True, False),  # refused for good: dropped, with a warning
    ("create", 403, True, False),
    ("event", 429, False, True),
    ("create", 503, False, True),
])
def test_each_failure_is_judged_once(op: str, status: int, done: bool, retried: bool) -> None:
    verdict = judge(op, api_error(status))
    assert verdict.done is done and (not verdict.done) is retried
    assert verdict.api_away is (status in (429, 503))


@pytest.mark.parametrize("body", [None, "404 page not found",
                                  '{"kind":"Status","status":"Failure","message":"the server could not find the requested '
                                  'resource","reason":"NotFound","details":{},"code":404}'])
@pytest.mark.parametrize("op", ["create", "patch", "patch_status", "delete"])
def test_a_404_of_a_kind_not_served_yet_is_retried_not_taken_for_done(op: str, body: str | None) -> None:
    """An API server starting again serves custom resources only once it has read their definitions; meanwhile their
    paths answer 404 naming no object. Taken for "gone already", an owed create (and the patches after it) was dropped
    for good: a NodeNetworkInterfaceAttachment never made, and never reported again (found in review)."""
    exc = ApiException(status=404, reason="Not Found")
    exc.body = body
    verdict = judge(op, exc)
    assert not verdict.done and not verdict.api_away and "does not serve" in verdict.error


def test_a_refused_write_is_dropped_with_a_warning(parts: tuple[Outbox, Api, Clock, MemoryStore],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    outbox, api, _, store = parts
    api.fail[("IPAddress/ns/a", "patch_status")] = [api_error(422)]
    owe(outbox, "IPAddress/ns/a", "patch_status")
    owe(outbox, "IPAddress/ns/a", "delete")
    with caplog.at_level(logging.WARNING):
        assert outbox.flush() == 0
    assert api.sent == [("IPAddress/ns/a", "delete")]
    assert any("refused for good: 422" in r.getMessage() for r in caplog.records)
    # counted, and scraped as plexus_outbox_refused_total (a log line alone hid a node report refused on every write)
    assert outbox.refusals() == {("patch_status", "IPAddress"): 1}
    from prometheus_client import CollectorRegistry, generate_latest

    from ipamd.server.metrics import OutboxRefusals

    registry = CollectorRegistry()
    registry.register(OutboxRefusals(outbox.refusals))
    assert 'plexus_outbox_refused_total{kind="IPAddress",op="patch_status"} 1.0' in generate_latest(registry).decode()


def test_a_newer_status_supersedes_an_owed_one(parts: tuple[Outbox, Api, Clock, MemoryStore]) -> None:
    outbox, api, _, store = parts
    outbox.add("IPAddress/ns/a", "create", {"t": "IPAddress/ns/a"})
    outbox.add("IPAddress/ns/a", "patch_status", {"t": "IPAddress/ns/a", "v": 1}, supersede=True)
    outbox.add("IPAddress/ns/a", "patch_status", {"t": "IPAddress/ns/a", "v": 2}, supersede=True)
    assert [(e.op, e.body.get("v")) for e in store.outbox_of("IPAddress/ns/a")] == [("create", None),
                                                                                    ("patch_status", 2)]


def test_flush_target_makes_one_objects_writes_now(parts: tuple[Outbox, Api, Clock, MemoryStore]) -> None:
    outbox, api, clock, store = parts
    owe(outbox, "IPAddressLease/x", "delete")
    owe(outbox, "IPAddressLease/y", "delete")
    api.fail[("IPAddressLease/x", "delete")] = [api_error(500)]
    outbox.flush()
    assert store.outbox_of("IPAddressLease/x")[0].next_at > clock.now  # backing off...
    assert outbox.flush_target("IPAddressLease/x")  # ...but asked for now, it is made now
    assert store.outbox_depth() == 0 and ("IPAddressLease/x", "delete") in api.sent


def test_an_unknown_op_is_refused_when_owed(parts: tuple[Outbox, Api, Clock, MemoryStore]) -> None:
    outbox, *_ = parts
    with pytest.raises(ValueError, match="no sender"):
        outbox.add("IPAddress/ns/a", "frobnicate", {})


def test_owed_writes_survive_a_restart(tmp_path: Path) -> None:
    api, clock = Api(), Clock()
    api.away = True
    store = Store(str(tmp_path / "plexus.db"))
    outbox = Outbox(store, api.senders(), clock)
    owe(outbox, "IPAddress/ns/a", "create")
    owe(outbox, "IPAddress/ns/a", "patch_status")
    outbox.flush()
    store.close()  # the daemon is gone; its successor opens the same file
    api.away, clock.now = False, clock.now + backoff(1)
    again = Store(str(tmp_path / "plexus.db"))
    assert Outbox(again, api.senders(), clock).flush() == 0
    assert api.sent == [("IPAddress/ns/a", "create"), ("IPAddress/ns/a", "patch_status")]
    again.close()


POOL = "IPAddressPool/ns/big"


def test_a_chain_a_pass_read_before_flush_target_made_it_is_not_made_again() -> None:
    """A pass reads the outbox's head once and hands the chains to its workers; a chain that waits for a worker
    while ``flush_target`` makes its writes (a per-address claim lets go of its own first) must not make them again:
    a stale delete of a lease object would delete the object the claim just created."""
    api = FakeApi()
    store = Store(":memory:")
    senders = api.senders()
    gate, entered = threading.Event(), threading.Semaphore(0)
    slow = senders["patch_status"]

    def blocking_patch_status(body: dict[str, Any]) -> None:  # other objects' writes, slow: the 4 workers are taken
        entered.release()
        gate.wait(10)
        try:
            slow(body)
        except Exception:
            pass

    senders["patch_status"] = blocking_patch_status
    outbox = Outbox(store, senders)  # workers=4, as in the daemon
    cache = FakeCache(api)
    reg = KubeLeaseRegistry(cache, "n1", outbox)  # type: ignore[arg-type]

    x = LeaseRecord(pool=POOL, ip=0xC6122811, address="198.18.40.17", network="198.18.40.0/24", holder="IPAddress/ns/a")
    for i in range(4):  # writes owed earlier (other objects' statuses)
        outbox.add(f"IPAddress/ns/o{i}", "patch_status", {"kind": "IPAddress", "name": f"o{i}", "status": {}})
    assert reg.claim(x)
    reg.release(x)  # pod a gone (leaseTTL 0): the delete of its lease object is owed

    t = threading.Thread(target=outbox.flush)  # the outbox thread's pass: head read now, 5 chains, 4 workers
    t.start()
    for _ in range(4):
        assert entered.acquire(timeout=5)  # the 4 workers are busy; the delete chain waits, read already

    y = LeaseRecord(pool=POOL, ip=x.ip, address=x.address, network=x.network, holder="IPAddress/ns/b")
    assert reg.claim(y)  # an ADD re-leases .17: flush_target makes the owed delete first, then creates
    name = lease_name(POOL, x.address)
    assert api.objs[LEASE_KIND][name]["spec"]["holder"] == "IPAddress/ns/b"

    gate.set()
    t.join(10)
    assert name in api.objs[LEASE_KIND], "the lease object of an address this node holds was deleted by a stale pass"


def test_an_older_owed_status_a_pass_is_sending_lands_before_the_newer_one_written_directly() -> None:
    """A pass sends S1, owed while the API server was away; meanwhile a DEL writes the pod's newer status directly.
    The newer lands last (found in review: S1 landed after it, for good): owed behind the pass's, the DEL not held
    while the pass waits for its answer (found in review: against a hung API server, the DEL waited out the pass's
    whole deadline)."""
    import json

    from kubernetes import client

    from ipamd.kube.publisher import KubePublisher, _status_patch
    from ipamd.model.objects import STATUS_ANNOTATION
    from ipamd.store.records import PodStatus

    landed: list[Any] = []  # the pod's networks-status as the API server applies the patches, in order
    sending, answer = threading.Event(), threading.Event()

    def owed_pod_status(body: dict[str, Any]) -> None:  # the pass's request: sent, slow to be answered
        sending.set()
        answer.wait(5)
        value = body["patch"]["metadata"]["annotations"][STATUS_ANNOTATION]
        landed.append(None if value is None else json.loads(value))

    class Core:
        def patch_namespaced_pod(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> Any:
            value = body["metadata"]["annotations"][STATUS_ANNOTATION]
            landed.append(None if value is None else json.loads(value))
            return type("Answer", (), {"read": lambda self: b"", "release_conn": lambda self: None})()

    store = MemoryStore()
    outbox = Outbox(store, {"pod_status": owed_pod_status})
    pub = KubePublisher(client.ApiClient(), "node-a", outbox)
    pub.core = Core()  # type: ignore[assignment]
    s1 = PodStatus("uid-1", "ns", "app", networks_status=({"ifName": "net1"},))
    outbox.add("Pod/ns/app", "pod_status", {"namespace": "ns", "name": "app", "patch": _status_patch("uid-1", s1)})
    a_pass = threading.Thread(target=outbox.flush)
    a_pass.start()
    assert sending.wait(5)
    direct = threading.Thread(target=pub._patch_status_annotations, args=("ns", "app", "uid-1", None))
    direct.start()
    direct.join(2)
    assert not direct.is_alive(), "the DEL waits for the pass's answer"
    answer.set()
    a_pass.join(5)
    outbox.flush()  # the next pass
    assert landed == [[{"ifName": "net1"}], None], "the pod is left with the older status"
    assert store.outbox_depth() == 0


def test_a_write_its_sender_says_is_not_due_yet_waits_a_moment_and_counts_as_unsent(
        parts: tuple[Outbox, Api, Clock, MemoryStore]) -> None:
    """A sender raising ``NotYet`` (an in-block lease object whose claim's transaction has not committed yet): the
    write and those behind it wait ``NOT_YET_S``, no attempt is counted (``drop_unsent`` still knows it was never
    sent, so letting its address go costs no request), and the API server is not taken for away."""
    outbox, api, clock, _ = parts
    target = "IPAddressLease/ip-a"
    api.fail[(target, "block_lease")] = [NotYet("not recorded yet")]
    owe(outbox, target, "block_lease")
    owe(outbox, target, "patch_status")
    assert outbox.flush() == 2 and api.sent == [] and not outbox.api_away()
    (first, _second) = outbox.owed(target)
    assert first.attempts == 0 and first.next_at == pytest.approx(clock.now + NOT_YET_S) and not first.error
    assert outbox.flush() == 2, "not before its moment"
    clock.now += NOT_YET_S
    assert outbox.flush() == 0 and api.sent == [(target, "block_lease"), (target, "patch_status")]
    api.fail[(target, "block_lease")] = [NotYet("not recorded yet")]
    owe(outbox, target, "block_lease")
    outbox.flush()
    assert outbox.drop_unsent(target, "block_lease") is not None, "never sent: known unsent"

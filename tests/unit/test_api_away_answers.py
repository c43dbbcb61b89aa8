"""What the controller and a node answer while the API server is away, hung or starting again (each found in review,
failing on the code before its fix)."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import pytest
from kubernetes import client
from urllib3.exceptions import ReadTimeoutError

from cni.errors import CniError
from ipamd.kube.controller import Controller
from ipamd.kube.outbox import Outbox
from ipamd.kube.publisher import KubePublisher, _status_patch
from ipamd.model.objects import Meta, Pod
from ipamd.store.records import PodStatus
from tests.fakes.cluster import FakeApi
from tests.fakes.store import MemoryStore
from tests.unit.test_blocks import Node


# -- 1. a controller that cannot reach the API server keeps "leading" ---------------------------------------------
class _Source:
    objects: Any = None
    node_name = ""

    def subscribe(self, *args: Any, **kwargs: Any) -> None:
        pass

    def ready(self, *args: Any) -> bool:
        return False  # run_once stops right after the election: only leadership is looked at


def test_a_controller_that_cannot_renew_its_lease_stops_leading(monkeypatch: pytest.MonkeyPatch) -> None:
    """The leader renews its Lease at T; then the API server goes away (every renewal raises). Past the Lease's
    duration another replica has taken it over, yet ``leading`` stays True for ever: ``self.leading =
    self.elector.try_acquire()`` never assigns when the call raises. ServiceEndpoints (``lambda: controller.leading``)
    and the node's ``--controller`` keep acting as leader beside the new one once the API answers again."""
    now = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    ctl = Controller(client.ApiClient(), _Source(), "plexus-system")  # type: ignore[arg-type]
    monkeypatch.setattr(ctl.elector, "try_acquire", lambda: True)
    ctl.run_once()
    assert ctl.leading

    def away() -> bool:
        raise ReadTimeoutError(None, "/apis/coordination.k8s.io", "timed out")  # type: ignore[arg-type]

    monkeypatch.setattr(ctl.elector, "try_acquire", away)
    for _ in range(3):
        now[0] += ctl.elector.duration_s  # each round: another Lease duration without a renewal
        with contextlib.suppress(Exception):  # (the loop logs it)
            ctl.run_once()
    assert not ctl.leading, "still 'leading' 45 s after its last renewal: the standby holds the Lease by now"


class _Writes:
    def __init__(self) -> None:
        self.made: list[tuple[str, str]] = []

    def delete(self, kind: str, name: str, namespace: str = "", resource_version: str = "") -> None:
        self.made.append(("delete", name))

    def patch_status(self, kind: str, name: str, status: dict[str, Any], namespace: str = "",
                     resource_version: str = "") -> None:
        self.made.append(("patch_status", name))


class _ReadySource(_Source):
    def __init__(self) -> None:
        self.objects = _Writes()

    def ready(self, *args: Any) -> bool:
        return True


def test_a_round_that_outlasts_the_renew_deadline_stops_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The leader renews its Lease at T, then a round's writes take 6 s each (the API server slow). Past the renew
    deadline (10 s of the Lease's 15) a standby may take the Lease over 5 s later, and two controllers would delete
    and quarantine side by side: the round makes no write past the deadline, not even through a step's per-object
    handler (log it, go on), and makes none of its later steps; the next round, renewed, writes again."""
    now = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    source = _ReadySource()
    ctl = Controller(client.ApiClient(), source, "plexus-system")  # type: ignore[arg-type]
    monkeypatch.setattr(ctl.elector, "try_acquire", lambda: True)

    def slow_deletes() -> None:
        for name in ("a", "b", "c", "d"):
            try:
                ctl.objects.delete("IPAddressLease", name)
            except Exception:  # as the steps do: one object's failure is logged, the next one tried
                pass
            now[0] += 6

    def usage() -> None:
        ctl.objects.patch_status("IPAddressPool", "pool", {}, "ns")

    monkeypatch.setattr(ctl, "expire_leases", slow_deletes)
    monkeypatch.setattr(ctl, "pool_usage", usage)
    for step in ("assign_segments", "allocate_user_ipaddresses", "label_leases", "reclaim_blocks",
                 "release_unused_leases"):
        monkeypatch.setattr(ctl, step, lambda: None)
    ctl.run_once()
    assert source.objects.made == [("delete", "a"), ("delete", "b")], "writes made past the renew deadline"
    source.objects.made.clear()
    monkeypatch.setattr(ctl, "expire_leases", lambda: None)
    ctl.run_once()  # renewed: this round's writes are made
    assert source.objects.made == [("patch_status", "pool")]
    ctl.objects.delete("IPAddressLease", "e")  # a step called on its own (outside a round) is not held back
    assert source.objects.made[-1] == ("delete", "e")


# -- 2. a block that must be asked back while the API server is away: code 100 ----------------------------------------
def _api_away(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    for verb in ("create", "get", "patch", "patch_status", "delete"):
        monkeypatch.setattr(api, verb, refused)


def test_asking_for_a_block_back_with_the_api_away_answers_11_not_pool_exhausted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every address of the pool outside node 'owner''s blocks is leased; owner's blocks have free addresses. With the
    API server unreachable, the next ADD on 'other' needs the API to ask for one of them back: its status patch is
    refused, ``ask_return`` returns False and the ADD answers code 100 "pool big has no free address" (and a user's
    IPAddress is marked NoFreeIPAddress), where the promise is code 11 naming the API. ``BlockRegistry.ask_return``
    swallows the failure as "not given back"."""
    api = FakeApi()
    owner = Node(api, "owner")
    for _ in range(20):  # two blocks, 10 free addresses in them
        owner.add()
    owner.outbox.flush()
    other = Node(api, "other", claim=False)
    asked = other.registry.ask_return
    monkeypatch.setattr(other.registry, "ask_return", lambda pool: False)
    with contextlib.suppress(CniError):
        while True:  # every address outside owner's blocks (code 100 once none is left)
            other.add()
    monkeypatch.setattr(other.registry, "ask_return", asked)
    assert len(other.addresses()) == 222 and len(owner.addresses()) == 20  # owner's 2 blocks: 10 free
    _api_away(api, monkeypatch)
    with pytest.raises(CniError) as err:
        other.add()
    assert err.value.code == 11, f"code {err.value.code}: {err.value}"
    assert "Kubernetes API" in str(err.value)


# -- 3. a call's pod status waits behind the outbox's background request of the same pod -----------------------------
class _Answer:
    def read(self) -> bytes:
        return b"{}"

    def release_conn(self) -> None:
        pass


class _Core:
    def __init__(self) -> None:
        self.patched: list[str] = []

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any, **kwargs: Any) -> _Answer:
        self.patched.append(name)
        return _Answer()


def test_a_dels_pod_status_does_not_wait_out_the_outboxs_request_of_the_same_pod_on_a_hung_api() -> None:
    """The API server accepts and never answers. Pod app's ADD status was owed; an outbox pass sends it now, with the
    background deadline (``REQUEST_TIMEOUT``: 3 s connect + 10 s read), and ``api_away`` has lapsed (``CALLS_OWE_S``
    is 5 s). The pod's DEL writes its status through ``_now_or_owed``, whose ``outbox.writing(target)`` waits for that
    pass to give the target back: the DEL waits out the background request's whole deadline, then sends its own
    (another 3 s) although the pass has just found the API server away. Expected: owed at once (the pass's in-flight
    write lands first either way, the owed one goes after it)."""
    store = MemoryStore()
    entered, release = threading.Event(), threading.Event()

    def hung_sender(body: dict[str, Any]) -> None:
        entered.set()
        release.wait(10)  # the background request's read deadline
        raise ReadTimeoutError(None, "/api/v1/pods", "Read timed out. (read timeout=10.0)")  # type: ignore[arg-type]

    outbox = Outbox(store, {"pod_status": hung_sender})
    pub = KubePublisher(client.ApiClient(), "node-a", outbox)
    core = _Core()
    pub.core = core  # type: ignore[assignment]
    pod = Pod(Meta("Pod", "app", "ns", "uid-1"))
    up = PodStatus("uid-1", "ns", "app", networks_status=({"interface": "net1"},))
    outbox.add("Pod/ns/app", "pod_status", {"namespace": "ns", "name": "app", "patch": _status_patch("uid-1", up)})
    passing = threading.Thread(target=outbox.flush, daemon=True)
    passing.start()
    assert entered.wait(5)
    done = threading.Event()

    def del_status() -> None:
        pub.pod_status(pod, None)  # the DEL's: the pod's last attachment is gone
        done.set()

    threading.Thread(target=del_status, daemon=True).start()
    try:
        assert done.wait(1.0), "the DEL's status write waits for the outbox's hung request of the same pod"
    finally:
        release.set()
        passing.join(5)
        done.wait(5)
        outbox.stop()


# -- 4. an API server coming back answers 404 for custom resources: ADD fails with no CNI code (999) ------------------
def test_an_add_whose_claim_meets_an_api_server_still_starting_answers_11() -> None:
    """Right after kube-apiserver restarts, custom resources answer 404 until their CRDs are served again (the
    informer knows: "a 404 for a kind served before: an API server still starting, not absence"). An ADD on a pool
    leased per address then gets the raw ApiException out of ``KubeLeaseRegistry._claim`` (``api_unavailable_is_11``
    maps only None/5xx/429): not a CniError, so the CNI server answers 999 "failed unexpectedly" with a traceback
    logged, instead of code 11 (try again). The same holds for ``BlockRegistry._grow``'s create."""
    from kubernetes.client.exceptions import ApiException

    from ipamd.kube.leases import KIND as LEASE_KIND
    from tests.unit.test_attacher_kube import AUTO, KubeNode, a_pod

    api = FakeApi()
    node = KubeNode(api)
    node.source.add(a_pod("app", AUTO, "uid-app"))
    create = api.create

    def starting(kind: str, body: dict[str, Any], namespace: str = "") -> dict[str, Any]:
        if kind == LEASE_KIND:
            raise ApiException(status=404, reason="Not Found")
        return create(kind, body, namespace)

    api.create = starting  # type: ignore[method-assign]
    try:
        node.call("ADD", "app", "uid-app", "c1")
    except CniError as exc:
        assert exc.code == 11, f"code {exc.code}: {exc}"
    except Exception as exc:  # what the CNI server turns into code 999
        pytest.fail(f"ADD raised {type(exc).__name__} ({exc}), not a CniError: the runtime gets code 999")
    else:
        pytest.fail("ADD succeeded with no lease object")
    assert node.store.all_leases() == [] and node.store.attachments() == [], "rolled back"


def test_a_calls_block_claim_waits_for_a_background_one_no_longer_than_for_its_own_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A background claim of the next block, stuck on a hung API server, holds the pool's claim lock for the
    background deadline (13 s): an ADD whose blocks are full waited all of it before its own try (found in review).
    It waits the call's read deadline, then answers 11."""
    from cni.errors import TryAgainLater
    from ipamd.kube.api_calls import call_in_progress
    from tests.unit.test_blocks import pool_of

    monkeypatch.setattr("ipamd.kube.blocks.CALL_TIMEOUT", (0.2, 0.3))
    node = Node(FakeApi(), "a")
    big = pool_of(node.source, "big")
    node.registry.grow(big)  # (the lock made)
    lock = node.registry._grow_locks[big.meta.key]
    with lock:  # a background claim on its way
        started = time.monotonic()
        with call_in_progress(), pytest.raises(TryAgainLater, match="being claimed"):
            node.registry.grow(big)
        assert time.monotonic() - started < 2


def test_a_background_claim_that_cannot_start_is_asked_for_again() -> None:
    """A thread that cannot be started left the pool marked as growing for good: no block was claimed ahead again."""
    node = Node(FakeApi(), "a")

    def no_thread(run: Any) -> None:
        raise RuntimeError("can't start new thread")

    node.registry.spawn = no_thread
    for _ in range(14):  # a quarter of the block left: a claim ahead is asked for, and cannot start
        node.add()
    assert not node.registry._growing, "the pool stays marked as growing: never claimed ahead again"

"""What the controller and a node answer while the API server is away, hung or starting again (each found in review,
failing on the code before its fix)."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import ReadTimeoutError

from cni.errors import CniError
from ipamd.ipam.allocator import to_int
from ipamd.ipam.blocks import Block
from ipamd.kube.blocks import KIND as BLOCK_KIND
from ipamd.kube.blocks import block_body
from ipamd.kube.controller import Controller, NotLeading
from ipamd.kube.heartbeat import RENEWAL_MANAGER
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.outbox import Outbox
from ipamd.kube.publisher import KubePublisher, _status_patch
from ipamd.model.objects import Meta, Pod
from ipamd.model.timefmt import rfc3339
from ipamd.store.records import PodStatus
from tests.fakes.cluster import FakeApi, served_by
from tests.fakes.store import MemoryStore
from tests.unit.test_blocks import Node
from tests.unit.test_ipam import auto_ip
from tests.unit.test_lease_versions import ControllerSource
from tests.unit.test_lease_versions import controller as lease_controller
from tests.unit.test_reclaim import Cluster, controller, silence


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


# -- the controller's writes stop at the renew deadline; what completes a write made before it does not --------
STEPS = ("assign_segments", "allocate_user_ipaddresses", "expire_leases", "label_leases", "reclaim_blocks",
         "release_unused_leases", "pool_usage")


def _only(ctl: Any, monkeypatch: pytest.MonkeyPatch, *kept: str) -> None:
    """A round of ``ctl`` that runs the ``kept`` steps alone, as leader."""
    monkeypatch.setattr(ctl.elector, "try_acquire", lambda: True)
    for step in STEPS:
        if step not in kept:
            monkeypatch.setattr(ctl, step, lambda: None)


def test_a_reclaim_cut_at_the_renew_deadline_between_a_nodes_blocks_leaves_a_node_back_without_a_block(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Node "back" was silent past --block-ttl with two blocks. The round deletes its first block (slowly: the renew
    deadline passes meanwhile) while its daemon comes back and renews the second. Before today, the second delete
    met a 409 and the first block was made again (``_restore_blocks``: "none deleted when any changed"). Now the
    second delete raises NotLeading before it is sent: the first block stays deleted, and no later round (the node
    is no longer silent) gives it back. The live daemon loses a block it leases in (its leases there fall back to
    per-address objects, and another node may claim the window) -- the very case _delete_blocks is all-or-nothing
    for."""
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    api = FakeApi()
    pool, first = "IPAddressPool/ns/big", to_int("198.18.40.0")
    names = [api.create(BLOCK_KIND, block_body(Block(pool, first + 16 * k, 16, "back")))["metadata"]["name"]
             for k in (2, 5)]
    silence(api, 3600)
    cluster = Cluster(api)
    cluster.ready = lambda *a: True  # type: ignore[attr-defined]
    ctl = controller(cluster)
    _only(ctl, monkeypatch, "reclaim_blocks")
    delete = api.delete

    def slow_delete(kind: str, name: str, namespace: str = "", resource_version: str = "") -> None:
        delete(kind, name, namespace, resource_version)
        if kind == BLOCK_KIND and name == names[0]:  # the daemon back renews its other block meanwhile
            api.patch_status(BLOCK_KIND, names[1], {"renewTime": rfc3339()}, field_manager=RENEWAL_MANAGER)
            now[0] += 11  # past the renew deadline (10 s of the Lease's 15)

    api.delete = slow_delete  # type: ignore[method-assign]
    ctl.run_once()
    now[0] += 2
    ctl.run_once()  # renewed: the node is back, not silent
    assert set(names) <= set(api.objs[BLOCK_KIND]), \
        "the block deleted before the deadline is not made again for the node that came back"


def user_auto_controller(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeApi, Any, list[float]]:
    """A controller over a user's Auto IPAddress ``user-auto`` of ``small-net`` (no lease yet), its monotonic clock
    the test's (``now``)."""
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    api = FakeApi()
    src = ControllerSource(api)
    served_by(api, src.src)
    src.src.add(auto_ip("user-auto", net="small-net"))
    return api, lease_controller(src), now


def test_an_auto_ipaddress_leased_as_the_renew_deadline_passes_gets_its_status_in_a_later_round(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The round creates the lease of a user's Auto IPAddress; the create is slow and the renew deadline passes, so
    the status write right after it raises NotLeading ("its remaining writes are left to the next round"). But no
    later round writes it: ``allocate_user_ipaddresses`` skips every IPAddress that holds a lease, so the IPAddress
    shows no phase or address for ever (until a pod uses it). The same cut leaves a lease made inside another node's
    block (``_in_a_block``'s undo delete is refused too)."""
    api, ctl, now = user_auto_controller(monkeypatch)
    _only(ctl, monkeypatch, "allocate_user_ipaddresses")
    create = api.create

    def slow_create(kind: str, body: dict[str, Any], namespace: str = "") -> dict[str, Any]:
        made = create(kind, body, namespace)
        if kind == LEASE_KIND:
            now[0] += 11
        return made

    api.create = slow_create  # type: ignore[method-assign]
    ctl.run_once()
    api.create = create  # type: ignore[method-assign]
    assert [o["spec"]["holder"] for o in api.objs[LEASE_KIND].values()] == ["IPAddress/ns/user-auto"]
    for _ in range(3):  # later rounds, renewed, past ALLOCATED_S
        now[0] += 61
        ctl.run_once()
    status = api.objs["IPAddress"]["ns/user-auto"].get("status") or {}
    assert status.get("phase") == "Allocated" and status.get("address"), \
        f"the IPAddress's lease exists but its status was never written: {status}"


def test_service_endpoints_stop_acting_as_leader_at_the_renew_deadline_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """ServiceEndpoints writes EndpointSlices, Service statuses and Events while ``controller.leading`` (its gate in
    controller_process and in the node daemon's --controller). A controller round that outlasts the renew deadline
    has its own writes refused (a standby may hold the Lease by now), yet ``leading`` stays True through the rest of
    that round and until the next election: the services loop keeps writing beside the new leader."""
    from ipamd.kube.controller_process import ControllerProcess, WebhookConfig

    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    proc = ControllerProcess(client.ApiClient(), "plexus-system", WebhookConfig(port=0), health_port=0)
    ctl = proc.controller
    monkeypatch.setattr(proc.source, "ready", lambda *a: True)
    _only(ctl, monkeypatch, "assign_segments")
    seen: list[tuple[bool, bool]] = []

    def long_step() -> None:
        now[0] += 11  # the round's work outlasts the renew deadline
        try:
            ctl.objects.check()
            controller_writes = True
        except NotLeading:
            controller_writes = False
        seen.append((controller_writes, proc.services.leading()))

    monkeypatch.setattr(ctl, "assign_segments", long_step)
    ctl.run_once()
    assert seen == [(False, False)], f"(controller may write, services may write) past the deadline: {seen}"


# -- an API server starting again: a kind not served yet is no object gone -----------------------------------
def _unserved_404() -> ApiException:
    """The API server's 404 of a path it does not serve (yet): a Status that names no object."""
    exc = ApiException(status=404, reason="Not Found")
    exc.body = ('{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not '
                'find the requested resource","reason":"NotFound","details":{},"code":404}')
    return exc


def test_a_kind_not_served_yet_answers_as_the_api_server_unavailable_and_an_objects_404_as_it_is() -> None:
    """CustomObjects, the one seam of every custom object's write and read: a 404 of the path becomes a 503, which
    every caller retries; read as "the object is gone" (its 404), it dropped owed writes and gave back a node's own
    block (found in review)."""
    from ipamd.kube.resources import CustomObjects
    from tests.fakes.cluster import not_found

    objects = CustomObjects(client.ApiClient())
    answers = [_unserved_404(), not_found("IPAddressBlock", "b")]

    def answer(*args: Any, **kwargs: Any) -> Any:
        raise answers.pop(0)

    objects.api.get_cluster_custom_object = answer  # type: ignore[method-assign]
    with pytest.raises(ApiException) as starting:
        objects.get("IPAddressBlock", "b")
    with pytest.raises(ApiException) as gone:
        objects.get("IPAddressBlock", "b")
    assert (starting.value.status, gone.value.status) == (503, 404)
    from cni.errors import TryAgainLater
    from ipamd.kube.errors import api_unavailable_is_11

    with pytest.raises(TryAgainLater, match="does not serve this kind") as said, api_unavailable_is_11():
        raise starting.value  # what a CNI call answers: 11, and why (a CRD missing is the user's to fix)
    assert "IPAddressBlock" in said.value.details and "CustomResourceDefinition" in said.value.details


def test_an_ipamclaims_status_written_now_and_met_by_a_kind_not_served_yet_stays_owed() -> None:
    """The IPAMClaim status a CNI call writes now (``KubePublisher._now_or_owed``, done on a 404) met the API server
    starting again, which serves custom resources only once it has read their definitions: its 404 naming no object
    was taken for "the claim is gone", the status (``ownerPod``, which other nodes read to refuse a second pod the
    claim) dropped, and the older owed writes of the claim forgotten with it (found in review)."""
    from ipamd.store.records import IPRecord

    outbox = Outbox(MemoryStore(), {})
    publisher = KubePublisher(client.ApiClient(), "n1", outbox)

    def not_served(*args: Any, **kwargs: Any) -> Any:
        raise _unserved_404()

    publisher.objects.api.patch_namespaced_custom_object_status = not_served  # type: ignore[method-assign]
    rec = IPRecord(key="IPAMClaim/ns/vm", kind="IPAMClaim", namespace="ns", name="vm",
                   network_kind="NetworkAttachmentDefinition", network_name="ns/nad", address="198.18.0.5",
                   network="198.18.0.0/24", used_by_pods=("ns/virt-launcher-vm",), used_by_uids=("u1",),
                   created_by="claim")
    publisher.ip_status(rec)
    assert outbox.owes("IPAMClaim/ns/vm"), "the claim's status was dropped on a 404 of a kind not served yet"


def test_a_node_does_not_give_back_its_own_block_on_a_404_of_a_kind_not_served_yet() -> None:
    """Node a leases in its block; the API server goes away and
    comes back starting again, serving IPAddressBlocks only once it has read their definitions. a's next ADD, past
    UNCONFIRMED_S without a renewal, asks the API server for its block: the 404 naming no object is taken for "no such
    block" (``_get_block``), the block is marked ``returned``, and the next reconcile round deletes it as one "given
    back earlier" -- with a's leases inside, and without making their owed lease objects first (``_give_back`` makes
    them; this path does not): another node may claim the window and hand out an address a's pod holds."""
    from cni.errors import TryAgainLater
    from ipamd.kube.resources import _served
    from tests.unit.test_blocks import _housekeeping

    api = FakeApi()
    a = Node(api, "a")
    held = [a.add(), a.add()]  # their lease objects (and the block's first renewal) owed: the API goes away
    (name,) = api.objs[BLOCK_KIND]
    a.clock.advance(200)  # past UNCONFIRMED_S: the next ADD asks the API server
    get = api.get

    def starting(kind: str, nm: str, namespace: str = "") -> dict[str, Any]:
        if kind == BLOCK_KIND:
            with _served(kind):  # as CustomObjects answers the API server's 404 of the path
                raise _unserved_404()
        return get(kind, nm, namespace)

    api.get = starting  # type: ignore[method-assign,assignment]
    with pytest.raises(TryAgainLater):
        a.add()
    api.get = get  # type: ignore[method-assign]  # the definitions read: served again
    _housekeeping(a)
    assert name in api.objs[BLOCK_KIND], "a's own block, leases inside, was deleted"
    assert set(held) <= a.addresses()


def test_an_auto_ipaddresses_lease_whose_block_check_fails_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The round creates the lease of a user's Auto IPAddress, then asks whether a node claimed the address's block
    meanwhile, and that GET fails (the API server answers 503). The lease was left: inside a block the cache had not
    shown yet, where its node leases with no request (both then hold the address), and the IPAddress, holding a lease,
    was skipped by every later round. It is deleted, and a later round leases the IPAddress again."""
    api, ctl, now = user_auto_controller(monkeypatch)
    _only(ctl, monkeypatch, "allocate_user_ipaddresses")
    get = api.get

    def failing_get(kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        if kind == BLOCK_KIND:
            raise ApiException(status=503, reason="Service Unavailable")
        return get(kind, name, namespace)

    api.get = failing_get  # type: ignore[method-assign]
    with pytest.raises(ApiException):  # the round stops there (the controller's loop logs it)
        ctl.run_once()
    assert not api.objs.get(LEASE_KIND), f"a lease left behind its failed block check: {api.objs.get(LEASE_KIND)}"
    api.get = get  # type: ignore[method-assign]
    now[0] += 61
    ctl.run_once()
    status = api.objs["IPAddress"]["ns/user-auto"].get("status") or {}
    assert status.get("phase") == "Allocated", status


def test_a_lease_whose_block_check_and_undo_both_failed_is_not_given_its_status_unchecked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's Auto IPAddress lease whose block check fails is undone, but with the API server away its delete fails
    too. A later round, finding the IPAddress holding that lease without a status, wrote ``Allocated`` with its
    address, never asking whether a node had claimed the block around it meanwhile (where that node leases with no
    request: two holders of one address). The block is looked for first, and the lease inside it deleted."""
    from kubernetes.client.exceptions import ApiException

    from ipamd.ipam.allocator import to_int
    from ipamd.ipam.blocks import Block, window_of
    from ipamd.kube.blocks import KIND as BLOCK_KIND
    from ipamd.kube.blocks import block_body
    from ipamd.kube.leases import KIND as LEASE_KIND

    api, ctl, now = user_auto_controller(monkeypatch)
    _only(ctl, monkeypatch, "allocate_user_ipaddresses")
    get, delete = api.get, api.delete

    def away_get(kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        if kind == BLOCK_KIND:
            raise ApiException(status=503, reason="Service Unavailable")
        return get(kind, name, namespace)

    def away_delete(kind: str, name: str, *a: Any, **k: Any) -> None:
        raise ApiException(status=503, reason="Service Unavailable")

    api.get, api.delete = away_get, away_delete  # type: ignore[method-assign]
    with pytest.raises(ApiException):
        ctl.run_once()
    (lease,) = api.objs[LEASE_KIND].values()
    ip = to_int(lease["spec"]["ip"])
    # meanwhile node n1 claimed the block around it (its create came first; our cache had not shown it)
    api.create(BLOCK_KIND, block_body(Block(lease["spec"]["pool"], window_of(ip), 16, "n1")))
    api.get, api.delete = get, delete  # type: ignore[method-assign]
    now[0] += 61
    ctl.run_once()
    status = api.objs["IPAddress"]["ns/user-auto"].get("status") or {}
    left = [o["spec"]["ip"] for o in api.objs[LEASE_KIND].values() if o["spec"]["holder"] == "IPAddress/ns/user-auto"]
    assert not (status.get("address") == lease["spec"]["ip"] and lease["spec"]["ip"] in left), \
        f"the IPAddress was given {status.get('address')} inside node n1's block, never checked: {status}"

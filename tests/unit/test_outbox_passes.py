"""The outbox's passes: which writes wait and for how long, which failures are retried, dropped or taken for an
outage, and what a node's attachment report owes (each found in review, failing on the code before its fix)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cni.errors import InterfaceFailure
from ipamd.kube.outbox import HEAD, PARKED, Outbox, backoff, judge
from ipamd.kube.publisher import ATTACHMENT, KubePublisher
from ipamd.node.reconcile import Reconciler
from tests.fakes.cluster import FakeApi
from tests.fakes.store import MemoryStore
from tests.unit.test_attacher import NS, Node, obj
from tests.unit.test_outbox import Api, Clock, api_error


def _counting_passes(outbox: Outbox) -> tuple[list[int], threading.Event]:
    """The outbox's passes counted (``passes[0]``); ``spun`` is set at the 200th."""
    passes, spun = [0], threading.Event()
    real_flush = outbox.flush

    def counted() -> int:
        passes[0] += 1
        if passes[0] >= 200:
            spun.set()
        return real_flush()

    outbox.flush = counted  # type: ignore[method-assign]
    return passes, spun


def owe(outbox: Outbox, target: str, op: str, not_before: float = 0.0) -> None:
    outbox.add(target, op, {"t": target}, not_before=not_before)


# -- 1. the outbox thread spins while a due write waits behind a write of its object that must wait ----------------
@pytest.mark.parametrize("first", ["backing off", "parked"])
def test_a_due_write_behind_one_that_must_wait_does_not_make_the_outbox_thread_spin(first: str) -> None:
    """``_next_wait`` takes the soonest ``next_at`` of the head, including writes that cannot be made before an older
    write of their object (one in backoff after a 409, or parked while a CNI call is in flight). Such a write is "due"
    (next_at 0) but every pass stops in front of it: the loop waits 0 s, passes again, makes nothing, and so on -- a
    core burnt and the store's lock taken in a tight loop for as long as the older write waits (up to 30 s of
    backoff, or the whole CNI call for a parked one)."""
    api, clock, store = Api(), Clock(), MemoryStore()
    outbox = Outbox(store, api.senders(), clock)
    target = "IPAddressLease/ip-198-18-40-17-x"
    if first == "backing off":
        api.fail[(target, "patch_status")] = [api_error(409)]  # a conflict: retried later, no outage
        owe(outbox, target, "patch_status")
    else:
        owe(outbox, target, "patch_status", not_before=PARKED)  # the undo of a call in flight
    owe(outbox, target, "block_lease")  # due, but behind it
    outbox.flush()
    assert outbox.depth() == 2 and api.sent == []

    passes, spun = _counting_passes(outbox)
    outbox.start()  # the fake clock never moves: nothing can be made, so a pass every <=5 s at most is right
    try:
        assert not spun.wait(1.0), f"{passes[0]} passes in 1 s with nothing to make (the wait computed: " \
                                   f"{outbox._next_wait()} s)"
    finally:
        outbox.stop()
    assert api.sent == []


# -- 2. judge(): a write dropped "for good" on a status that is no refusal of the write -------------------------
@pytest.mark.parametrize(("status", "why"), [
    (401, "Unauthorized: the node's service account token expired or is being rotated, or the authenticator "
          "is momentarily unavailable"),
    (408, "Request Timeout: the API server gave up waiting for the request"),
], ids=["401", "408"])
def test_a_transient_answer_does_not_drop_an_owed_write(status: int, why: str) -> None:
    """Everything that is not 404/409/429/5xx is "refused for good" and dropped with a warning. 401 and 408 say nothing
    about the write itself; they pass. Dropped, an owed IPAddressLease create (``block_lease``) is simply lost: the
    node holds the address in its block and the cluster has no lease object of it (another node takes the address
    once the block is given back or reclaimed), and a pod's status or a release is never written."""
    assert judge("block_lease", api_error(status)).done is False, why
    api, clock, store = Api(), Clock(), MemoryStore()
    outbox = Outbox(store, api.senders(), clock)
    target = "IPAddressLease/ip-198-18-40-17-x"
    api.fail[(target, "block_lease")] = [api_error(status)]
    owe(outbox, target, "block_lease")
    outbox.flush()
    clock.now += 60
    outbox.flush()
    assert api.sent == [(target, "block_lease")], f"the owed write was dropped after one {status} ({why})"


# -- 3. judge(): a failure that is no answer of the API server at all is taken for an outage -------------------
def test_a_sender_failing_on_its_own_is_not_taken_for_an_unanswering_api_server() -> None:
    """``judge`` and ``_send_chain`` take any exception without an HTTP status for "the API server did not answer":
    a KeyError of a malformed (or older version's) body, a client-side ``ApiValueError``, a bug in a checked op. The
    write is retried for ever, and every try calls ``unanswered()``: the node's CNI calls owe their pod and claim
    statuses for CALLS_OWE_S instead of writing them, again and again, while the API server is fine."""
    clock, store = Clock(), MemoryStore()

    def broken(body: dict[str, Any]) -> None:
        raise KeyError("namespace")  # e.g. an entry owed by an older version, without a field this one reads

    outbox = Outbox(store, {"patch_status": broken, "event": lambda body: None}, clock)
    outbox.add("IPAddress/ns/a", "patch_status", {})
    outbox.flush()
    assert not outbox.api_away(), "a local error made every CNI call owe its writes as if the API server were away"
    assert judge("patch_status", KeyError("namespace")).api_away is False


# -- 4. a pass reads only the HEAD oldest writes: writes that must wait starve every later one ------------------
def test_writes_that_must_wait_at_the_head_do_not_starve_the_later_ones() -> None:
    """``flush`` reads ``outbox_head(HEAD)`` and makes the chains of those targets only (``_next_wait`` too looks at
    them only). Once HEAD writes of other objects cannot be made (retrying a 409 against another node's object,
    answered 5xx by a webhook, parked), no later write of any other object is ever tried: an owed lease object,
    a pod's status, a release wait for ever although the API server answers."""
    api, clock, store = Api(), Clock(), MemoryStore()
    outbox = Outbox(store, api.senders(), clock)
    for i in range(HEAD):
        target = f"IPAddressLease/stuck-{i}"
        api.fail[(target, "block_lease")] = [api_error(409)] * 1000  # someone else's object: waited for
        owe(outbox, target, "block_lease")
    owe(outbox, "IPAddressLease/fresh", "block_lease")
    for _ in range(4):
        outbox.flush()
        clock.now += 2 * backoff(10)
    assert ("IPAddressLease/fresh", "block_lease") in api.sent, "a write behind HEAD stuck ones is never tried"


# -- 5. judge(): 409 on a create taken for "made", when the object there is an older version of it --------------
def test_a_node_attachment_reported_again_gets_its_new_spec() -> None:
    """``node_attachment`` owes a create of the whole NodeNetworkInterfaceAttachment (``supersede``), and ``judge``
    takes the create's 409 for "already there: done". A segment that failed first (reported with no bridge) and was
    made later is reported again with its bridge: the second create is answered 409 and dropped, so the object
    keeps ``spec.bridgeName: ""`` for good (only its status is patched)."""
    api = FakeApi()
    outbox = Outbox(MemoryStore(), api.senders())
    pub = KubePublisher(client.ApiClient(), "node-a", outbox)
    pub.node_attachment("Network/ns/n", "", False, "no parent interface eth9")
    assert outbox.flush() == 0
    pub.node_attachment("Network/ns/n", "plx-br-600", True, "")
    assert outbox.flush() == 0
    (obj,) = api.objs[ATTACHMENT].values()
    assert obj["status"]["conditions"][0]["status"] == "True"
    assert obj["spec"]["bridgeName"] == "plx-br-600", "the object says Ready with the old spec (no bridge)"


# -- 6. a kill between node_detachment's drops and its add loses the delete ------------------------------------
class Killed(BaseException):
    """The daemon SIGKILLed at this point: nothing after it runs (what was committed before stays)."""


class KilledOnAdd(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.kill = False

    def outbox_add(self, entry: Any, supersede: bool = False) -> int:
        if self.kill:
            raise Killed()
        return super().outbox_add(entry, supersede)


def test_a_kill_inside_node_detachment_does_not_lose_the_attachments_delete() -> None:
    """``node_detachment`` drops the owed create and status (two commits), then owes the delete (a third). Killed
    after the drops, the restarted daemon owes nothing for the object: the NodeNetworkInterfaceAttachment the node
    made stays in the cluster for good (the segment's record is already gone, so no round reports it again). The
    drops and the add belong in one transaction (better: the segment's removal's)."""
    api = FakeApi()
    store = KilledOnAdd()
    outbox = Outbox(store, api.senders())
    pub = KubePublisher(client.ApiClient(), "node-a", outbox)
    pub.node_attachment("Network/ns/n", "plx-br-600", True, "")
    outbox.flush()
    pub.node_attachment("Network/ns/n", "plx-br-600", False, "uplink down")  # a status change, owed, not made yet
    (name,) = api.objs[ATTACHMENT]
    target = f"{ATTACHMENT}/{name}"
    assert outbox.owes(target)
    store.kill = True
    with pytest.raises(Killed):
        pub.node_detachment("Network/ns/n")
    store.kill = False
    restarted = Outbox(store, api.senders())
    assert restarted.owed(target), "nothing owed for an object that exists: the delete is lost"


# -- 1. a retried write starves behind fresh ones: "never tried" sorts as "due since 0" ------------------------------
def test_a_retried_write_due_for_long_is_not_starved_by_a_stream_of_fresh_writes() -> None:
    """``flush`` sorts the firsts by ``(next_at, seq)`` and takes HEAD. A write never tried has ``next_at`` 0, a
    retried one ``clock + backoff``: every fresh write, owed long after the retried one became due, sorts before it.
    With HEAD or more fresh targets per pass (a burst of ADDs: an Event, an IPAddress, a status each, while the API
    server is slow), the retried write (a release's claim status after a 401 / a 409) is never made at all."""
    api, clock, store = Api(), Clock(), MemoryStore()
    outbox = Outbox(store, api.senders(), clock)
    stuck = "IPAMClaim/ns/vm-1"
    api.fail[(stuck, "patch_status")] = [ApiException(status=401, reason="token being rotated")]
    owe(outbox, stuck, "patch_status")
    outbox.flush()
    assert api.sent == [] and outbox.depth() == 1  # retried later, with its own backoff (0.25 s)
    clock.now += 10.0  # due for ~10 s now
    for burst in range(5):
        for i in range(HEAD):
            owe(outbox, f"Event/ns/pod-{burst}-{i}", "event")
        outbox.flush()
        clock.now += 1.0
    assert (stuck, "patch_status") in api.sent, \
        "5 passes, each making HEAD writes owed after it: the write due longest is never made (starved)"


# -- 2. the outbox thread spins while the only due write's target is being written by someone else ----------------
def test_a_due_write_of_a_target_being_written_directly_does_not_make_the_outbox_thread_spin() -> None:
    """``flush_target`` (or a CNI call's ``_now_or_owed``) holds a target for as long as its request takes (up to a
    request's deadline against a hung API server). A pass skips the busy target (``_run_chain``: True), but
    ``_next_wait`` takes that target's due first write into account: it answers 0, the loop passes again at once,
    skips it again... a core burnt, and ``outbox_firsts`` (a read of every target) run in a tight loop under the
    store's lock the CNI calls need, for the whole request."""
    api, clock, store = Api(), Clock(), MemoryStore()
    outbox = Outbox(store, api.senders(), clock)
    target = "IPAddress/ns/a"
    owe(outbox, target, "patch_status")  # due now

    passes, spun = _counting_passes(outbox)
    with outbox.writing(target):  # as flush_target, or a call's direct write, waiting on the API server
        outbox.start()
        try:
            busy_loop = spun.wait(1.0)
            wait = outbox._next_wait()
        finally:
            outbox.stop()
    assert not busy_loop, f"{passes[0]} passes in 1 s while the only due target was busy (the wait computed: {wait} s)"


def _cluster_rounds(node: Node, api: FakeApi) -> tuple[Outbox, Reconciler]:
    """The node's reconcile rounds in Kubernetes mode, its writes owed in an outbox to ``api``."""
    from tests.unit.test_reconcile import Registry

    outbox = Outbox(node.store, api.senders())
    node.ipam.registry = Registry()
    publisher = KubePublisher(client.ApiClient(), "n1", outbox)
    return outbox, Reconciler(node.store, node.source, node.ipam, node.attacher, node.segments, publisher,
                              cluster=True)


# -- 3. the reconciler owes the delete first, but a failed removal leaves `_reported` saying "reported" -------------
def test_a_segment_whose_removal_failed_is_reported_again_when_its_network_is_back() -> None:
    """``_sync_segments`` now owes the NodeNetworkInterfaceAttachment's delete, then removes the segment. When the
    removal fails (a link that cannot be deleted right now: EBUSY), ``_reported`` keeps the bridge. The Network is
    back by the next round (made again, or listed again): ``ensure`` gives the same bridge, ``_reported`` matches, so
    nothing owes the create again and the owed delete is made: the node's attachment is gone for good while its
    segment is up and its Network live (the controller counts the node out of the Network)."""
    api = FakeApi()
    node = Node()
    node.source.add(obj("NetworkClass", "plain", {}, namespaced=False))
    node.source.add(obj("Network", "net-z", {"networkClass": "plain"}))
    outbox, rounds = _cluster_rounds(node, api)
    rounds.run_once()
    outbox.flush()
    assert [o["spec"]["networkRef"]["name"] for o in api.objs[ATTACHMENT].values()] == ["net-z"]

    node.source.remove("Network", NS, "net-z")
    delete = node.links.delete
    failed: list[str] = []

    def busy_once(name: str) -> bool:
        if not failed:
            failed.append(name)
            raise OSError(16, "Device or resource busy")
        return delete(name)

    node.links.delete = busy_once  # type: ignore[method-assign]
    rounds.run_once()  # the delete owed, the removal failed: the segment stays
    assert failed and "net-z" in {s.network.rpartition("/")[2] for s in node.store.segments()}

    node.source.add(obj("Network", "net-z", {"networkClass": "plain"}))  # the Network is back before the outbox made the delete
    rounds.run_once()
    outbox.flush()
    left = [o["spec"]["networkRef"]["name"] for o in api.objs[ATTACHMENT].values()]
    assert left == ["net-z"], f"a live Network's segment is up, but this node's attachment was deleted: {left}"


def test_a_segment_that_cannot_be_built_is_reported_once_not_every_round() -> None:
    """A Network whose class names a parent NIC this node lacks: its segment fails every round, and every round owed
    the attachment's create, patch and status patch again (the condition's time new each time, so each status patch
    changed the object, whose watch event woke the next round): three writes per node about every second for as long
    as the Network lives, an outbox never empty (found in review). Reported once per failure, again when it changes."""
    api = FakeApi()
    node = Node()
    node.source.add(obj("NetworkClass", "uplinked", {"parentNodeNetworkInterfaces": {"names": ["eth9"]}},
                        namespaced=False))
    node.source.add(obj("Network", "net-u", {"networkClass": "uplinked"}))

    def no_parent(*args: Any) -> Any:  # what the kernel side says of a parent NIC the node lacks
        raise InterfaceFailure("parent interface eth9 of net-u's segment does not exist", "eth9")

    node.segments.ensure = no_parent  # type: ignore[method-assign,assignment]
    outbox, rounds = _cluster_rounds(node, api)
    rounds.run_once()
    outbox.flush()
    (att,) = api.objs[ATTACHMENT].values()
    assert att["status"]["conditions"][0]["status"] == "False" and "eth9" in att["status"]["conditions"][0]["message"]
    made = api.requests()
    for _ in range(3):
        rounds.run_once()
        outbox.flush()
    assert api.requests() == made, f"{api.requests() - made} writes for a failure already reported"


def test_one_objects_failing_write_does_not_hold_up_the_others_as_an_outage_would() -> None:
    """A 500 from one object's write (its webhook failing) made every pass back off as a whole, up to 30 s, while the
    API server answered every other write (found in review): it keeps its own backoff, the rest go at once."""
    api, clock, store = Api(), Clock(), MemoryStore()
    outbox = Outbox(store, api.senders(), clock)
    broken = "IPAddress/ns/webhooked"
    api.fail[(broken, "patch_status")] = [ApiException(status=500, reason="webhook failed")] * 100
    owe(outbox, broken, "patch_status")
    owe(outbox, "IPAddress/ns/a", "patch_status")
    outbox.flush()
    assert api.sent == [("IPAddress/ns/a", "patch_status")]
    clock.now += 0.1
    owe(outbox, "IPAddress/ns/b", "patch_status")
    outbox.flush()
    assert ("IPAddress/ns/b", "patch_status") in api.sent, "held up by another object's failure"
    assert outbox.owes(broken)

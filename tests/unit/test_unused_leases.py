"""The controller leases a user's Auto IPAddress before any pod uses it (an IPAddressLease with no node label); a node
whose pod names it takes the lease up, labelling it its own at the version it read, before it uses the address. A
lease no node took up whose IPAddress was deleted, and that no pod names, is released by the controller (it stayed
taken for ever); never one a node uses, whatever the timing (each interleaving below was found in review against a
first version whose take-up was an owed, unguarded relabel, and against its first fix)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from cni.errors import AddressConflict, TryAgainLater
from ipamd.ipam.addresses import CacheMoved
from ipamd.ipam.allocator import to_int, to_text
from ipamd.ipam.blocks import addresses_in
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import NODE_LABEL, lease_body
from ipamd.model.objects import IPAddressObject
from ipamd.model.timefmt import rfc3339
from ipamd.store.records import LeaseRecord
from tests.fakes.cluster import FakeApi
from tests.unit.test_blocks import Node, pool_of
from tests.unit.test_ipam import attach, obj, pod
from tests.unit.test_reclaim import Cluster, controller

POOL = "IPAddressPool/ns/small"  # tests.unit.test_ipam's world: 198.18.41.0/28, network small-net


def auto_ip(name: str) -> IPAddressObject:
    made = obj("IPAddress", name, {"networkRef": {"kind": "Network", "name": "small-net"}})
    assert isinstance(made, IPAddressObject)
    return made


def leased_by_the_controller(api: FakeApi, ip: str, holder: str) -> None:
    api.create(LEASE_KIND, lease_body(POOL, ip, "198.18.41.0/28", holder, 0))


def held(api: FakeApi) -> dict[str, str]:
    return {o["spec"]["ip"]: o["spec"]["holder"] for o in api.objs[LEASE_KIND].values() if o["spec"].get("holder")}


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


def test_the_lease_of_a_deleted_user_ipaddress_no_node_took_up_is_released(api: FakeApi,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for ip, holder in (("198.18.41.1", "IPAddress/app/reserved"), ("198.18.41.2", "IPAddress/app/named"),
                       ("198.18.41.3", "ClusterIPAddress/cip"), ("198.18.41.4", "IPAddress/app/exists")):
        leased_by_the_controller(api, ip, holder)
    api.create(LEASE_KIND, lease_body(POOL, "198.18.41.5", "198.18.41.0/28", "IPAddress/app/taken-up", 0, "n1"))
    cluster = Cluster(api, user_ips=("IPAddress/app/exists",))
    cluster.specs = [("app", json.dumps([{"type": "Network", "name": "n", "ipAddressNames": ["named"]}])),
                     ("other", json.dumps([{"type": "ClusterNetwork", "name": "c", "ipAddressNames": ["cip"]}])),
                     ("app", "not json [ named")]
    ctl = controller(cluster)
    assert ctl.release_unused_leases() == 0 and len(held(api)) == 5, "gone only just now: the caches may lag"
    monkeypatch.setattr("ipamd.kube.controller.UNUSED_GONE_S", 0.0)
    assert ctl.release_unused_leases() == 1 and "198.18.41.1" not in held(api)
    (released,) = [o for o in api.objs[LEASE_KIND].values() if not o["spec"].get("holder")]
    assert released["status"]["orphaningTimestamp"], "quarantined first, then expired as any other"
    assert set(held(api)) == {"198.18.41.2", "198.18.41.3", "198.18.41.4", "198.18.41.5"}, \
        "named by a pod (even one whose annotation does not parse), still existing, or a node's: kept"
    cluster.specs = []
    assert ctl.release_unused_leases() == 2 and set(held(api)) == {"198.18.41.4", "198.18.41.5"}, "named no more"


def test_a_node_takes_the_lease_up_before_it_uses_the_address(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pod's sandbox may outlive its Pod object (force-deleted, its node cut off from the API): the lease is the
    node's from before the address was used, so the controller leaves it, and no other node gets the address."""
    leased_by_the_controller(api, "198.18.41.1", "IPAddress/ns/ux")
    n1 = Node(api, "n1", claim=False)
    n1.source.add(auto_ip("ux"))
    (c,) = attach(n1.ipam, pod("p"), net="small-net", names=("ux",))
    assert c.address == "198.18.41.1", "the controller's lease, taken up"
    (obj_,) = api.objs[LEASE_KIND].values()
    assert obj_["metadata"]["labels"][NODE_LABEL] == "n1", "labelled before the ADD answered, not owed"
    ctl = controller(Cluster(api, user_ips=()))  # ux deleted, no pod names it any more
    monkeypatch.setattr("ipamd.kube.controller.UNUSED_GONE_S", 0.0)
    assert ctl.release_unused_leases() == 0
    ctl.expire_leases()
    n2 = Node(api, "n2", claim=False)
    assert c.address not in {n2.add(net="small-net") for _ in range(3)}


def test_a_node_whose_cache_lags_does_not_take_up_a_released_lease(api: FakeApi,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller released the lease; a node whose cache still shows it (and the IPAddress) starts a pod naming
    it: its take-up reads the object from the API server, finds it quarantined, and leases another address."""
    leased_by_the_controller(api, "198.18.41.1", "IPAddress/ns/ux")
    n1 = Node(api, "n1", live=False, claim=False)  # its informers lag
    n1.source.add(auto_ip("ux"))
    ctl = controller(Cluster(api, user_ips=()))
    monkeypatch.setattr("ipamd.kube.controller.UNUSED_GONE_S", 0.0)
    assert ctl.release_unused_leases() == 1
    (c,) = attach(n1.ipam, pod("late"), net="small-net", names=("ux",))
    assert c.address != "198.18.41.1"
    n1.outbox.flush()
    ctl.expire_leases()
    n2 = Node(api, "n2", claim=False)
    assert c.address not in {n2.add(net="small-net") for _ in range(3)}


def test_a_take_up_after_the_controllers_read_makes_its_release_fail(api: FakeApi,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller's cache shows the lease unlabelled, but a node took it up since: the release is written at the
    version the cache saw, and fails."""
    leased_by_the_controller(api, "198.18.41.1", "IPAddress/ns/ux")
    cluster = Cluster(api, user_ips=())
    cluster.cache = type(cluster.cache)(api, live=False)  # what the controller saw: unlabelled
    n1 = Node(api, "n1", claim=False)
    n1.source.add(auto_ip("ux"))
    attach(n1.ipam, pod("p"), net="small-net", names=("ux",))
    ctl = controller(cluster)
    monkeypatch.setattr("ipamd.kube.controller.UNUSED_GONE_S", 0.0)
    assert ctl.release_unused_leases() == 0 and held(api) == {"198.18.41.1": "IPAddress/ns/ux"}




def _old(api: FakeApi) -> None:
    """The controller made the object long ago: past the node's stray grace at once."""
    for o in api.objs[LEASE_KIND].values():
        o["metadata"]["creationTimestamp"] = rfc3339(time.time() - 3600)


def test_a_second_call_taking_up_the_same_lease_answers_11_and_the_object_stays(api: FakeApi) -> None:
    """Two calls of one node take one lease up at once (two pods naming one IPAddress, or a pod's sandbox made again
    while its first ADD is out): the second answers 11 while the first's take-up is out, instead of sharing it
    (whose let-go then deleted the object of the address the first uses)."""
    leased_by_the_controller(api, "198.18.41.1", "IPAddress/ns/ux")
    n1 = Node(api, "n1", claim=False)
    n1.source.add(auto_ip("ux"))
    take_up = n1.registry.take_up
    second: list[int] = []

    def another_call_meanwhile(lease: LeaseRecord) -> bool:
        took = take_up(lease)
        if not second:
            with pytest.raises(TryAgainLater) as err:
                attach(n1.ipam, pod("b"), net="small-net", names=("ux",))
            second.append(err.value.code)
        return took

    n1.registry.take_up = another_call_meanwhile  # type: ignore[method-assign]
    (c,) = attach(n1.ipam, pod("a"), net="small-net", names=("ux",))
    assert c.address == "198.18.41.1" and second == [11]
    with pytest.raises(AddressConflict):  # the runtime's retry: the IPAddress is pod a's
        attach(n1.ipam, pod("b"), net="small-net", names=("ux",))
    n1.outbox.flush()
    assert held(api) == {"198.18.41.1": "IPAddress/ns/ux"}
    assert "198.18.41.1" not in {Node(api, "n2", claim=False).add(net="small-net") for _ in range(3)}


def users(api: FakeApi, node: Node, name: str = "ux") -> None:
    """The user's IPAddress, as the node's IPAM and its lease registry's cache both see it."""
    node.source.add(auto_ip(name))
    api.create("IPAddress", {"metadata": {"name": name, "namespace": "ns"},
                             "spec": {"networkRef": {"kind": "Network", "name": "small-net"}}})


def test_the_stray_clean_up_leaves_a_lease_being_taken_up(api: FakeApi) -> None:
    """The reconciler's stray clean-up runs between a take-up and the transaction that records it: the object is
    labelled this node's, old, and not in the store yet, but its holder exists: not this node's stray."""
    leased_by_the_controller(api, "198.18.41.1", "IPAddress/ns/ux")
    _old(api)
    n1 = Node(api, "n1", claim=False)
    users(api, n1)
    take_up = n1.registry.take_up

    def a_round_meanwhile(lease: LeaseRecord) -> bool:
        took = take_up(lease)
        assert n1.registry.stray(n1.store, 30) == []
        return took

    n1.registry.take_up = a_round_meanwhile  # type: ignore[method-assign]
    attach(n1.ipam, pod("p"), net="small-net", names=("ux",))
    n1.outbox.flush()
    assert held(api) == {"198.18.41.1": "IPAddress/ns/ux"}


def label(api: FakeApi) -> str | None:
    (obj_,) = api.objs[LEASE_KIND].values()
    found = obj_["metadata"]["labels"].get(NODE_LABEL)
    return None if found is None else str(found)


def restarted(node: Node) -> None:
    """The node's daemon started again (its outbox is in its store): what was parked is due, and made."""
    node.outbox.unpark_all("hand_back")
    node.outbox.flush()


def test_a_take_up_the_store_did_not_take_is_handed_back(api: FakeApi) -> None:
    """A take-up whose transaction failed, or whose answer was lost (the label made, the call told 11): the object is
    labelled as it was (the controller's here), by a hand-back owed before the label was patched; the stray clean-up
    meanwhile leaves it (deleting it freed the address of an IPAddress that still had it); the runtime's retry takes
    it up again; once its holder is gone, an object of this node's that its store does not hold is a stray."""
    leased_by_the_controller(api, "198.18.41.1", "IPAddress/ns/ux")
    _old(api)
    n1 = Node(api, "n1", claim=False)
    users(api, n1)
    lease_for, patch = n1.ipam.lease_for, api.patch

    def fails(*a: Any, **k: Any) -> Any:
        raise RuntimeError("the transaction fails")

    def made_then_lost(kind: str, name: str, body: dict[str, Any], namespace: str = "") -> Any:
        patch(kind, name, body, namespace)
        raise ApiException(status=504, reason="Gateway Timeout")

    n1.ipam.lease_for = fails  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        attach(n1.ipam, pod("p"), net="small-net", names=("ux",))
    n1.ipam.lease_for = lease_for  # type: ignore[method-assign]
    assert label(api) is None, "handed back at once by the let-go"
    api.patch = made_then_lost  # type: ignore[method-assign]
    with pytest.raises(TryAgainLater):
        attach(n1.ipam, pod("p"), net="small-net", names=("ux",))
    api.patch = patch  # type: ignore[method-assign]
    assert label(api) == "n1" and n1.registry.stray(n1.store, 30) == [], "its hand-back owed: not stray"
    n1.outbox.flush()
    assert label(api) is None, "the answer lost: handed back by the outbox's next pass"
    (c,) = attach(n1.ipam, pod("p"), net="small-net", names=("ux",))
    assert c.address == "198.18.41.1" and label(api) == "n1", "the runtime's retry takes it up again"
    restarted(n1)
    assert label(api) == "n1", "recorded: its hand-back dropped in the same transaction"
    n1.ipam.release_pod([c.ip_key], "uid-p")
    with n1.store.transaction():
        n1.store.delete_lease(POOL, to_int("198.18.41.1"))  # the node's store let it go; its release not yet made
    api.delete("IPAddress", "ux")
    assert n1.registry.stray(n1.store, 30) == [], "the pod's use of it being taken off: not yet"
    n1.outbox.flush()  # (a user's IPAddress: the pod was written on its lease object, and is taken off it)
    assert [x.address for x in n1.registry.stray(n1.store, 30)] == ["198.18.41.1"]
    n1.outbox.flush()
    assert not api.objs[LEASE_KIND], "the IPAddress gone: this node's stray"


def test_a_take_up_cut_short_by_a_kill_is_handed_back_after_the_restart(api: FakeApi) -> None:
    leased_by_the_controller(api, "198.18.41.1", "IPAddress/ns/ux")
    n1 = Node(api, "n1", claim=False)
    users(api, n1)
    lease = LeaseRecord(pool=POOL, ip=to_int("198.18.41.1"), address="198.18.41.1", network="198.18.41.0/28",
                        holder="IPAddress/ns/ux")
    assert n1.registry.take_up(lease) and label(api) == "n1"  # then SIGKILL: no transaction, no let-go
    n1.outbox.flush()
    assert n1.outbox.flush_target(f"{LEASE_KIND}/{next(iter(api.objs[LEASE_KIND]))}")
    assert label(api) == "n1", "parked: while the call is out (however long), no pass or flush makes it"
    restarted(n1)
    assert label(api) is None


def used_on_n2(api: FakeApi) -> Node:
    """The controller's lease of the user's IPAddress ux, taken up by n2 for its pod a; node n1, whose pods name ux
    too."""
    leased_by_the_controller(api, "198.18.41.1", "IPAddress/ns/ux")
    n2 = Node(api, "n2", claim=False)
    users(api, n2)
    attach(n2.ipam, pod("a"), net="small-net", names=("ux",))
    n1 = Node(api, "n1", claim=False)
    n1.source.add(auto_ip("ux"))
    return n1


def test_a_failed_take_up_of_another_nodes_lease_leaves_it_that_nodes(api: FakeApi) -> None:
    """A pod on n2 uses the user's IPAddress; a pod on n1 names it too, and n1's transaction fails after its take-up:
    the object is n2's again, so n1's stray clean-up never deletes it once the IPAddress is deleted while n2's pod
    still runs, and no third node gets its address (found in review)."""
    n1 = used_on_n2(api)
    lease_for = n1.ipam.lease_for

    def fails(*a: Any, **k: Any) -> Any:
        raise RuntimeError("the transaction fails")

    n1.ipam.lease_for = fails  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        attach(n1.ipam, pod("b"), net="small-net", names=("ux",))
    n1.ipam.lease_for = lease_for  # type: ignore[method-assign]
    assert label(api) == "n2"
    api.delete("IPAddress", "ux")  # while pod a runs on n2
    _old(api)
    assert n1.registry.stray(n1.store, 30) == []
    n1.outbox.flush()
    assert "198.18.41.1" not in {Node(api, "n3", claim=False).add(net="small-net") for _ in range(3)}


def test_a_failed_take_up_is_let_go_before_another_call_may_take_it_up(api: FakeApi) -> None:
    """A call's transaction fails after its take-up; another call of the node (another sandbox of the pod) takes the
    lease up next: the first call's let-go is done before the address is free for it (the other way round, the first
    call's let-go released the object the second call's pod used)."""
    leased_by_the_controller(api, "198.18.41.1", "IPAddress/ns/ux")
    n1 = Node(api, "n1", claim=False)
    users(api, n1)
    lease_for, let_go = n1.ipam.lease_for, n1.registry.let_go
    state: dict[str, Any] = {"fail": True}

    def fails_once(*a: Any, **k: Any) -> Any:
        if state.pop("fail", False):
            raise RuntimeError("the first call's transaction fails")
        return lease_for(*a, **k)

    def another_call_meanwhile(lease: LeaseRecord) -> None:
        if "second" not in state:
            with pytest.raises(TryAgainLater):
                attach(n1.ipam, pod("p"), net="small-net", names=("ux",))
            state["second"] = 11
        let_go(lease)

    n1.ipam.lease_for = fails_once  # type: ignore[method-assign]
    n1.registry.let_go = another_call_meanwhile  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        attach(n1.ipam, pod("p"), net="small-net", names=("ux",))
    (c,) = attach(n1.ipam, pod("p"), net="small-net", names=("ux",))  # the runtime's retry
    n1.outbox.flush()
    assert state["second"] == 11 and c.address == "198.18.41.1" and held(api) == {c.address: "IPAddress/ns/ux"}
    assert c.address not in {Node(api, "n2", claim=False).add(net="small-net") for _ in range(3)}


def test_a_claim_secured_again_takes_the_same_lease_up(api: FakeApi) -> None:
    """Another address of the claim moved (``CacheMoved``) after the take-up: the retry takes the same lease up again,
    rather than giving the IPAddress a second address."""
    leased_by_the_controller(api, "198.18.41.1", "IPAddress/ns/ux")
    n1 = Node(api, "n1", claim=False)
    users(api, n1)
    lease_for = n1.ipam.lease_for
    state = {"moved": True}

    def moved_once(*a: Any, **k: Any) -> Any:
        if state.pop("moved", False):
            raise CacheMoved("another address of the claim moved")
        return lease_for(*a, **k)

    n1.ipam.lease_for = moved_once  # type: ignore[method-assign]
    (c,) = attach(n1.ipam, pod("p"), net="small-net", names=("ux",))
    n1.outbox.flush()
    assert c.address == "198.18.41.1" and held(api) == {"198.18.41.1": "IPAddress/ns/ux"}


def _leftover_of_a_holder_with_another_address(api: FakeApi) -> Node:
    """n1's old object of ux at .1, while n1's store holds ux at .2."""
    n1 = Node(api, "n1", claim=False)
    users(api, n1)
    api.create(LEASE_KIND, lease_body(POOL, "198.18.41.1", "198.18.41.0/28", "IPAddress/ns/ux", 0, "n1"))
    _old(api)
    with n1.store.transaction():
        n1.store.put_lease(LeaseRecord(pool=POOL, ip=to_int("198.18.41.2"), address="198.18.41.2",
                                       network="198.18.41.0/28", holder="IPAddress/ns/ux"))
    return n1


def test_a_leftover_of_a_holder_that_has_another_address_here_is_a_stray(api: FakeApi) -> None:
    """The stray clean-up leaves an object whose holder exists only while this node's store holds no address for that
    holder: one whose holder has another address here (a claim rolled back by a kill, then another address leased)
    is a leftover, deleted as before (kept, it stayed taken for as long as the user's IPAddress existed)."""
    n1 = _leftover_of_a_holder_with_another_address(api)
    assert [x.address for x in n1.registry.stray(n1.store, 30)] == ["198.18.41.1"]


def test_a_leftovers_age_is_judged_by_the_api_servers_clock_not_the_nodes(api: FakeApi) -> None:
    """The grace before a leftover is deleted runs from its creationTimestamp, which the API server stamped: a node
    whose clock runs 2 h ahead deletes nothing the server made a moment ago, and one 2 h behind does not wait 2 h."""
    n1 = _leftover_of_a_holder_with_another_address(api)

    def made_by_a_server_whose_clock_is(ahead: float, ago: float) -> None:
        for o in api.objs[LEASE_KIND].values():
            o["metadata"]["creationTimestamp"] = rfc3339(time.time() + ahead - ago)  # by its clock
        n1.registry.server_now = lambda: time.time() + ahead

    made_by_a_server_whose_clock_is(-7200, ago=10)
    assert n1.registry.stray(n1.store, 30) == [], "made 10 s ago (2 h 10 s ago by the node's clock, 2 h ahead)"
    made_by_a_server_whose_clock_is(7200, ago=70)
    assert [x.address for x in n1.registry.stray(n1.store, 30)] == ["198.18.41.1"], \
        "made 70 s ago (not yet made, by the node's clock, 2 h behind)"


def test_a_take_up_however_long_its_call_is_out_is_not_handed_back_under_it(api: FakeApi) -> None:
    """The call that took a lease up is out a long time before its transaction (other addresses of the interface slow
    to secure, a paused process, the clock stepping on): no outbox pass makes its hand-back meanwhile, which would
    record an address in this node's store under another node's label (found in review against a 60 s timer)."""
    n1 = used_on_n2(api)
    take_up = n1.registry.take_up

    def out_for_long(lease: LeaseRecord) -> bool:
        took = take_up(lease)
        n1.outbox.clock = lambda: time.time() + 10**6
        n1.outbox.flush()
        n1.outbox.clock = time.time
        return took

    n1.registry.take_up = out_for_long  # type: ignore[method-assign]
    (c,) = attach(n1.ipam, pod("b"), net="small-net", names=("ux",))
    n1.outbox.flush()
    assert c.address == "198.18.41.1" and label(api) == "n1"


def test_a_block_given_back_meanwhile_leaves_a_take_up_in_flight_alone(api: FakeApi) -> None:
    """A block's give-back makes every owed lease object of its window first (flushing their targets): a take-up in
    flight in that window keeps its hand-back parked (found in review)."""
    n1 = Node(api, "n1")  # leases in blocks
    n1.add()
    n1.outbox.flush()
    big = pool_of(n1.source, "big")
    (block,) = n1.registry.blocks(big)
    x = next(to_text(ip) for ip in addresses_in(big, block.first, block.size) if not n1.store.lease_at(big.meta.key, ip))
    api.create(LEASE_KIND, lease_body(big.meta.key, x, "198.18.40.0/24", "IPAddress/ns/ub", 0))  # the controller's
    ub = obj("IPAddress", "ub", {"networkRef": {"kind": "Network", "name": "net"}})
    assert isinstance(ub, IPAddressObject)
    n1.source.add(ub)
    take_up = n1.registry.take_up

    def a_give_back_meanwhile(lease: LeaseRecord) -> bool:
        took = take_up(lease)
        assert n1.registry._make_window_leases(big, block)
        return took

    n1.registry.take_up = a_give_back_meanwhile  # type: ignore[method-assign]
    (c,) = attach(n1.ipam, pod("p"), net="net", names=("ub",))
    (made,) = [o for o in api.objs[LEASE_KIND].values() if o["spec"]["ip"] == x]
    assert c.address == x and made["metadata"]["labels"][NODE_LABEL] == "n1"


def test_the_stray_clean_up_leaves_an_address_a_call_is_claiming(api: FakeApi) -> None:
    """The object is this node's already (no hand-back owed) and its holder has another address here (its Network
    moved pools): a leftover, unless a call of the node is taking it up right now (found in review)."""
    n1 = _leftover_of_a_holder_with_another_address(api)
    lease = LeaseRecord(pool=POOL, ip=to_int("198.18.41.1"), address="198.18.41.1", network="198.18.41.0/28",
                        holder="IPAddress/ns/ux")
    assert n1.ipam._reserve(lease)  # a call's take-up of it is out
    assert n1.registry.stray(n1.store, 30, n1.ipam.in_use) == []
    n1.ipam._unreserve(lease)
    assert [x.address for x in n1.registry.stray(n1.store, 30, n1.ipam.in_use)] == ["198.18.41.1"]

"""No API call under the store's lock: a registry claim (an API request in Kubernetes mode) is made after the address
is picked under the lock and before the transaction that records it, so every other call of the node goes on while
the API server answers; a claim lost, failed or not taken leaves nothing behind."""

from __future__ import annotations

import threading
from collections.abc import Callable, Container, Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest

from cni.errors import AddressConflict, TryAgainLater
from ipamd.ipam.addresses import SECURE_TRIES, Ipam, Secured
from ipamd.ipam.allocator import to_int
from ipamd.ipam.registry import NodeLocalRegistry
from ipamd.model.objects import IP_ADDRESS, IP_ADDRESS_POOL, AddressPool
from ipamd.store.records import IPRecord, LeaseRecord
from ipamd.store.sqlite import Store
from tests.fakes.source import FakeSource
from tests.unit.test_ipam import Clock, attach, network, obj, pod, static, world


class Registry(NodeLocalRegistry):
    """Another node holds ``elsewhere``; each claim checks that the store's lock is free while it is asked."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.elsewhere: set[int] = set()
        self.hidden: set[int] = set()  # held elsewhere, but not yet in this node's cache
        self.claimed: list[str] = []
        self.released: list[str] = []
        self.fail = False

    def _lock_is_free(self) -> bool:
        got: list[bool] = []

        def other_call() -> None:
            with self.store.transaction():
                got.append(True)

        t = threading.Thread(target=other_call)
        t.start()
        t.join(5)
        return bool(got)

    def taken_elsewhere(self, pool: str) -> Container[int]:
        return self.elsewhere

    def claim(self, lease: LeaseRecord, exact: bool = False) -> bool:
        assert self._lock_is_free(), "a claim was made under the store's lock"
        if self.fail:
            raise TryAgainLater("the Kubernetes API is not reachable")
        if lease.ip in self.elsewhere | self.hidden:
            return False
        self.claimed.append(lease.address)
        return True

    def release(self, lease: LeaseRecord) -> None:
        self.released.append(lease.address)


@pytest.fixture
def parts() -> tuple[Ipam, Registry, Store, FakeSource]:
    store, source = Store(":memory:"), world()
    registry = Registry(store)
    return Ipam(store, source, Clock(), registry), registry, store, source


def test_an_auto_address_is_claimed_outside_the_lock(parts: tuple[Ipam, Registry, Store, FakeSource]) -> None:
    ipam, registry, store, _ = parts
    registry.hidden = {3323071026}  # 198.18.10.50: another node's, unknown to this node's cache yet
    claims = attach(ipam, pod("a"))
    assert [c.address for c in claims] == ["198.18.10.51"] and registry.claimed == ["198.18.10.51"]
    assert [lease.address for lease in store.all_leases()] == ["198.18.10.51"]


def test_a_static_address_is_claimed_outside_the_lock(parts: tuple[Ipam, Registry, Store, FakeSource]) -> None:
    ipam, registry, store, _ = parts
    claims = attach(ipam, pod("a"), names=("static-in-range",))
    assert [c.address for c in claims] == ["198.18.10.55"] and registry.claimed == ["198.18.10.55"]


def test_a_static_address_held_elsewhere_is_refused_after_one_ask(
        parts: tuple[Ipam, Registry, Store, FakeSource]) -> None:
    ipam, registry, store, _ = parts
    registry.hidden = {3323071031}  # 198.18.10.55
    asked: list[int] = []
    claim = registry.claim

    def counted(lease: LeaseRecord, exact: bool = False) -> bool:
        asked.append(lease.ip)
        return claim(lease, exact)

    registry.claim = counted  # type: ignore[method-assign]
    with pytest.raises(AddressConflict, match="already leased elsewhere"):
        attach(ipam, pod("a"), names=("static-in-range",))
    assert asked == [3323071031] and store.all_leases() == []


def test_a_static_held_elsewhere_leased_alone_is_pending_until_let_go(
        parts: tuple[Ipam, Registry, Store, FakeSource]) -> None:
    """Kubernetes mode: every node leases a Static itself (its reconcile round); another holder's lease object was
    a WARNING in the log alone. It is Pending, ``Allocated=False/IPAddressAlreadyLeased`` naming the pool, holding
    nothing here (its claim let go), and leased once the address is free there."""
    ipam, registry, store, source = parts
    registry.hidden = {3323071031}  # 198.18.10.55
    user, pool = source.get(IP_ADDRESS, "ns", "static-in-range"), source.get(IP_ADDRESS_POOL, "ns", "pool")
    assert user is not None and isinstance(pool, AddressPool)
    with pytest.raises(AddressConflict, match="already leased elsewhere"):
        ipam.lease_alone(ipam.record_for(user), pool)
    rec = store.get_ip(user.meta.key)
    assert rec is not None and (rec.phase, rec.address) == ("Pending", "")
    (cond,) = rec.conditions
    assert (cond["status"], cond["reason"]) == ("False", "IPAddressAlreadyLeased") and "ns/pool" in cond["message"]
    assert store.all_leases() == [] and not ipam._securing
    registry.hidden = set()
    leased, lease = ipam.lease_alone(ipam.record_for(user), pool)
    assert (leased.phase, leased.address, lease.holder) == ("Allocated", "198.18.10.55", user.meta.key)


def test_a_failed_claim_leaves_nothing(parts: tuple[Ipam, Registry, Store, FakeSource]) -> None:
    ipam, registry, store, _ = parts
    registry.fail = True
    with pytest.raises(TryAgainLater):
        attach(ipam, pod("a"))
    assert store.all_leases() == [] and not ipam._securing
    registry.fail = False
    assert [c.address for c in attach(ipam, pod("a"))] == ["198.18.10.50"]


def test_a_claim_the_transaction_does_not_take_is_let_go(parts: tuple[Ipam, Registry, Store, FakeSource]) -> None:
    ipam, registry, store, source = parts
    source.add(static("static-twice", "198.18.10.56"))
    original = ipam.lease_for

    def fails_after_taking(*args: object, **kw: object) -> object:
        original(*args, **kw)  # type: ignore[arg-type]
        raise RuntimeError("the transaction fails after the lease was recorded")

    ipam.lease_for = fails_after_taking  # type: ignore[method-assign,assignment]
    with pytest.raises(RuntimeError):
        attach(ipam, pod("a"))
    assert store.all_leases() == [] and registry.released == ["198.18.10.50"] and not ipam._securing


def test_calls_side_by_side_never_pick_the_same_address(parts: tuple[Ipam, Registry, Store, FakeSource]) -> None:
    ipam, registry, store, _ = parts
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            attach(ipam, pod(f"p{i}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    addresses = [lease.address for lease in store.all_leases()]
    assert len(addresses) == len(set(addresses)) == 10 and sorted(registry.claimed) == sorted(addresses)


def _moving(ipam: Ipam, move: Callable[[IPRecord, Secured], None]) -> None:
    """``ipam.securing`` with ``move`` run between securing and the transaction: what another call does meanwhile."""
    original = ipam.securing

    @contextmanager
    def securing(rec: IPRecord, pool: AddressPool | None) -> Iterator[Secured]:
        with original(rec, pool) as secured:
            move(rec, secured)
            yield secured

    ipam.securing = securing  # type: ignore[method-assign]


def test_a_lease_gone_before_its_transaction_is_secured_again_outside_the_lock(
        parts: tuple[Ipam, Registry, Store, FakeSource]) -> None:
    """The pod's IPAddress had its lease when securing looked (so nothing was claimed), and lost it before the
    transaction: the address is claimed again outside the lock, not by an API request under it."""
    ipam, registry, store, _ = parts
    (first,) = attach(ipam, pod("a"))
    moved: list[str] = []

    def let_go(rec: IPRecord, secured: Secured) -> None:
        lease = store.lease_of(rec.key)
        if lease is not None and not moved:
            with store.transaction():
                store.delete_lease(lease.pool, lease.ip)
            moved.append(lease.address)

    _moving(ipam, let_go)
    (again,) = attach(ipam, pod("a"))  # Registry.claim asserts the store's lock is free
    assert moved == [first.address] and registry.claimed == [first.address, again.address]
    assert [lease.address for lease in store.all_leases()] == [again.address]


def test_an_address_taken_before_every_transaction_answers_11_and_leaves_nothing(
        parts: tuple[Ipam, Registry, Store, FakeSource]) -> None:
    ipam, registry, store, _ = parts
    others: list[str] = []

    def taken(rec: IPRecord, secured: Secured) -> None:
        if secured.lease is not None:  # another holder records the secured address first
            with store.transaction():
                store.put_lease(replace(secured.lease, holder=f"IPAddress/ns1/other{len(others)}",
                                                 holder_uid=f"other{len(others)}"))
            others.append(secured.lease.address)

    _moving(ipam, taken)
    with pytest.raises(TryAgainLater) as info:
        attach(ipam, pod("a"))
    assert info.value.code == 11 and "changed 3 times" in info.value.msg
    assert len(others) == SECURE_TRIES and registry.released == others == registry.claimed
    assert sorted(lease.address for lease in store.all_leases()) == sorted(others) and not ipam._securing
    assert store.lease_of("IPAddress/ns1/a-net1") is None


def test_an_address_whose_network_moved_to_another_pool_is_claimed_in_the_new_one(
        parts: tuple[Ipam, Registry, Store, FakeSource]) -> None:
    """The IPAddress still holds its lease in the old pool when securing looks: the new pool's address is claimed
    then (outside the lock), and the transaction quarantines the old one. Securing only for records without any
    lease claimed nothing, and every try answered 11 for ever (found in review)."""
    ipam, registry, store, source = parts
    (first,) = attach(ipam, pod("a"))
    source.add(network("net", "tiny"))  # the Network now takes its addresses from another pool
    (again,) = attach(ipam, pod("a"))
    assert (first.address, again.address) == ("198.18.10.50", "198.18.20.1")
    assert registry.claimed == ["198.18.10.50", "198.18.20.1"], "claimed outside the lock (Registry.claim checks)"
    assert [(lease.address, lease.holder is None) for lease in store.all_leases()] == [
        ("198.18.10.50", True), ("198.18.20.1", False)], "the old address in quarantine"


def test_an_address_that_became_a_gateway_is_claimed_anew_outside_the_lock(
        parts: tuple[Ipam, Registry, Store, FakeSource]) -> None:
    """The IPAddress still holds its lease when securing looks, on an address its Network now routes via (a policy
    route's gateway): a new address is claimed then (outside the lock), as for a Network moved to another pool, and
    the transaction quarantines the old one. Securing only for records without a lease of the pool claimed nothing,
    and every try answered 11."""
    ipam, registry, store, source = parts
    (first,) = attach(ipam, pod("a"), names=("user-auto",))
    ipam.release_pod([first.ip_key], "uid-a")
    source.add(obj("Network", "net", {"networkClass": "cls", "routingTable": 100,
                                      "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pool"}},
                                      "policyRoutes": [{"destination": "0.0.0.0/0", "via": first.address}]}))
    (again,) = attach(ipam, pod("b"), names=("user-auto",))
    assert (first.address, again.address) == ("198.18.10.50", "198.18.10.51")
    assert registry.claimed == ["198.18.10.50", "198.18.10.51"], "claimed outside the lock (Registry.claim checks)"
    assert [(lease.address, lease.holder) for lease in store.all_leases()] == [
        ("198.18.10.50", None), ("198.18.10.51", "IPAddress/ns/user-auto")], "the old address in quarantine"
    assert not ipam._securing


class TakenOver(Registry):
    """Another node took the holder ``taken`` over at ``at`` (its object of this node's old address quarantined
    there); each read of an object checks that the store's lock is free while it is made."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.taken, self.at = "", 0
        self.read: list[str] = []
        self.taken_up: list[str] = []
        self.orphaned: list[str] = []

    def held_by(self, holder: str, pool: str) -> int | None:
        return self.at if holder == self.taken else None

    def taken_over(self, lease: LeaseRecord) -> bool:
        assert self._lock_is_free(), "a lease object was read under the store's lock"
        self.read.append(lease.address)
        return True

    def take_up(self, lease: LeaseRecord) -> bool:
        assert self._lock_is_free(), "a lease object was taken up under the store's lock"
        self.taken_up.append(lease.address)
        return True

    def orphan(self, lease: LeaseRecord, holder: str = "") -> None:
        self.orphaned.append(lease.address)


def test_a_lease_another_node_took_the_holder_from_is_dropped_and_the_holders_taken_up_outside_the_lock() -> None:
    """A user's Auto IPAddress this node leased, which another node took over since (``Ipam._taken_over``): its
    object is read, and the holder's address taken up, outside the lock; the transaction drops this node's stale
    lease from the store and leaves its object alone (neither released nor quarantined: the other node's). Not while
    a pod of this node uses it (its other sandbox): nothing is read, and it keeps its address."""
    store, source = Store(":memory:"), world()
    registry = TakenOver(store)
    ipam = Ipam(store, source, Clock(), registry)
    (first,) = attach(ipam, pod("a"), names=("user-auto",))
    registry.taken, registry.at = first.ip_key, to_int("198.18.10.57")
    assert [c.address for c in attach(ipam, pod("a"), names=("user-auto",))] == [first.address], "in use here"
    assert registry.read == [] and registry.taken_up == []
    ipam.release_pod([first.ip_key], "uid-a")
    (again,) = attach(ipam, pod("b"), names=("user-auto",))
    assert again.address == "198.18.10.57" and registry.read == [first.address] and registry.taken_up == [again.address]
    assert [(lease.address, lease.holder) for lease in store.all_leases()] == [(again.address, first.ip_key)]
    assert registry.released == [] and registry.orphaned == [], "the stale lease's object left to the other node"
    assert not ipam._securing


def test_an_allocation_asks_again_while_blocks_come_back_but_other_nodes_take_their_addresses(
        parts: tuple[Ipam, Registry, Store, FakeSource]) -> None:
    """The pool's free addresses are all in other nodes' blocks. Each block given back has its free address taken
    by another node's call first (the claim is lost), seven times; the eighth brings one this node gets."""
    ipam, registry, store, _ = parts
    first = 3323071026  # 198.18.10.50
    registry.elsewhere = set(range(first, first + 10))
    asks: list[int] = []

    def ask_return(pool: AddressPool) -> bool:
        asks.append(len(asks) + 1)
        freed = first + len(asks) - 1
        registry.elsewhere.discard(freed)
        if len(asks) < 8:
            registry.hidden.add(freed)  # given back, and taken by another node's call before this one claims it
        return True

    registry.ask_return = ask_return  # type: ignore[method-assign]
    claims = attach(ipam, pod("a"))
    assert [c.address for c in claims] == ["198.18.10.57"] and asks == list(range(1, 9))
    assert [lease.address for lease in store.all_leases()] == ["198.18.10.57"]

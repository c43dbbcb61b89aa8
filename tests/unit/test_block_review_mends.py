"""Node address blocks, mended after a review (each failing on the code before its fix): the block check after a
per-address lease whatever this node's view of the pool, a claim's owed object dropped when a kill cut the claim short,
inline ranges' blocks housekept, a per-address lease whose block check failed let go."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

import pytest

from cni.errors import TryAgainLater
from ipamd.ipam.allocator import to_int
from ipamd.kube.blocks import KIND as BLOCK_KIND
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import NODE_LABEL, lease_name
from tests.fakes.cluster import FakeApi
from tests.unit.test_blocks import Node, _grow_at, _housekeeping
from tests.unit.test_ipam import pool

BIG = "IPAddressPool/ns/big"


def _objects_at(api: FakeApi, ip: str) -> list[tuple[Any, Any]]:
    return [(o["spec"].get("holder"), o["metadata"]["labels"].get(NODE_LABEL))
            for o in api.objs[LEASE_KIND].values() if o["spec"]["ip"] == ip]


def test_a_node_whose_view_of_the_pool_is_small_still_checks_for_a_block_after_a_per_address_lease() -> None:
    """The user widens pool `big` from 25 addresses (ranges .16-.40: leased per address) to the whole /24 (blocks).
    Node a's informer has the wide pool, node b's still the narrow one (informers lag each other; the same holds the
    other way round when a pool is narrowed below 64). a claims the block .16/28 (create, then its quorum list of the
    pool's leases: none) and leases .16 in it (its object owed, made 0.5 s later). b, whose cache does not show a's
    block yet, leases .16 per address: its create succeeds (a's object is not made yet), and it skips the GET of the
    block that could hold it because *its* view says the pool is too small for blocks (``block_pools``,
    ``BlockRegistry.claim``). Neither side saw the other, against "whichever write came first, one of the two sees
    the other"; a's owed lease object then fails for ever on b's (409, another node's for another holder)."""
    fake = FakeApi()
    a = Node(fake, "a")
    b = Node(fake, "b", live=False)
    b.source.add(pool("big", "198.18.40.0/24", ranges=["198.18.40.16-198.18.40.40"], ttl="0s"))  # b's stale view
    a.registry.grow = _grow_at(a.registry, "198.18.40.16")  # type: ignore[method-assign]
    a.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    got_a = a.add()  # a claims .16/28 and checks: nothing leased inside; .16 leased in it, its object owed
    assert got_a == "198.18.40.16"
    got_b = b.add()  # per address on b's view; its cache does not show a's block yet
    a.outbox.flush()
    b.outbox.flush()
    assert got_a != got_b, f"a and b both hold {got_a}; objects: {_objects_at(fake, got_a)}; " \
                           f"blocks: {list(fake.objs[BLOCK_KIND])}"


class _Killed(BaseException):
    """SIGKILL: nothing after this point runs."""


def _restart(node: Node) -> None:
    """A new daemon over the killed one's store and the same API: every in-memory part made anew (as the daemon
    builds them), parked hand-backs made due (``daemon.py``)."""
    from ipamd.ipam.addresses import Ipam
    from ipamd.kube.blocks import BlockRegistry
    from ipamd.kube.outbox import Outbox

    fake = node.cache.objects
    node.outbox = Outbox(node.store, fake.senders())
    node.registry = BlockRegistry(node.cache, node.name, node.outbox, clock=node.clock,  # type: ignore[arg-type]
                                  spawn=lambda run: run())
    node.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    node.outbox.unpark_all("unuse")
    node.outbox.unpark_all("hand_back")
    node.registry.drop_unrecorded()
    node.ipam = Ipam(node.store, node.source, node.clock, node.registry)


def _node_with_its_block_at_16(fake: FakeApi, name: str = "a", holders: tuple[str, ...] = ()) -> Node:
    """Node ``name`` whose block of BIG is .16/28, claimed and renewed, .16 leased; ``holders``: users' Auto
    IPAddresses its source shows."""
    from tests.unit.test_ipam import auto_ip

    a = Node(fake, name)
    for holder in holders:
        a.source.add(auto_ip(holder))
    a.registry.grow = _grow_at(a.registry, "198.18.40.16")  # type: ignore[method-assign]
    a.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    assert a.add() == "198.18.40.16"
    _housekeeping(a)  # its renewal (``_checked`` owes the first; ``_grow_at`` does not)
    a.outbox.flush()
    return a


def _claim_of_u_killed_before_its_transaction(a: Node, sent: bool = False) -> None:
    """Pod pa on node a names u; a's claim of .17 in its block wins (``_claim_inside`` owes its block_lease;
    ``sent``: the outbox's thread makes that write in the same instant) and the daemon is SIGKILLed before the
    transaction that records the lease."""
    from tests.unit.test_ipam import attach, pod

    original = a.registry.claim

    def claim_then_die(lease: Any, exact: bool = False) -> bool:
        assert original(lease, exact)
        if sent:
            a.outbox.flush()
        raise _Killed()

    a.registry.claim = claim_then_die  # type: ignore[method-assign]
    with contextlib.suppress(_Killed):
        attach(a.ipam, pod("pa"), names=("u",))
    assert a.store.lease_of("IPAddress/ns/u") is None, "killed before its transaction"


def test_a_block_lease_owed_by_a_claim_killed_before_its_transaction_does_not_give_the_address_twice() -> None:
    """Pod pa on node a names a user's Auto IPAddress u; a leases it .17 in its block .16/28 (``_claim_inside``
    commits the owed block_lease to the outbox) and the daemon is SIGKILLed before the transaction that records the
    lease. After the restart the outbox makes that owed write as it finds it: an object of .17 held by u, labelled a,
    though a's store does not hold .17. a takes its own objects in its block for mirrors of its store (``_Taken``), so
    .17 is free to a and its next pod gets it; every other node takes the object at its word: u's next pod, on node
    b, looks u up by holder (``held_by``), takes the object up and uses .17 too (before a's block_lease of its pod
    reaches the object, 0.5 s or more in backoff; then that write meets b's object of another holder and fails for
    ever)."""
    from tests.unit.test_ipam import attach, auto_ip, pod

    fake = FakeApi()
    a, b = _node_with_its_block_at_16(fake, holders=("u",)), Node(fake, "b", claim=False)
    b.source.add(auto_ip("u"))
    _claim_of_u_killed_before_its_transaction(a)
    _restart(a)
    assert not a.outbox.owes(f"{LEASE_KIND}/{lease_name(BIG, '198.18.40.17')}"), "the dead claim's write is dropped"
    a.outbox.flush()  # the outbox's first pass after the restart
    a.cache.sync()
    # (now the API has an object of .17 held by u, labelled a, which a's store does not hold)
    a.store.set_cursor(BIG, to_int("198.18.40.16"))
    got_a = a.add()  # a's next pod
    got_b = attach(b.ipam, pod("pb"), names=("u",))[0].address  # u's next pod, on b
    a.outbox.flush()
    b.outbox.flush()
    assert got_a != got_b, f"a's pod and u's pod on b both hold {got_a}; objects: {_objects_at(fake, got_a)}"


def test_a_block_lease_sent_before_its_claims_transaction_is_not_made_when_the_daemon_dies_then() -> None:
    """The same kill, but the outbox's thread makes the owed write in the instant between ``_claim_inside`` and the
    claim's transaction: the object of .17 held by u would exist although no store holds .17 for u (dropping the owed
    write at the restart comes too late). The outbox makes a block's lease object only once the store records it."""
    from tests.unit.test_ipam import attach, pod

    fake = FakeApi()
    a = _node_with_its_block_at_16(fake, holders=("u",))
    name = lease_name(BIG, "198.18.40.17")
    _claim_of_u_killed_before_its_transaction(a, sent=True)
    assert name not in fake.objs[LEASE_KIND], "not made while no store records the address for u"
    _restart(a)
    a.outbox.flush()
    assert name not in fake.objs[LEASE_KIND] and a.outbox.depth() == 0, "the dead claim's write is dropped"
    a.store.set_cursor(BIG, to_int("198.18.40.16"))
    assert attach(a.ipam, pod("pa2"), names=("u",))[0].address == "198.18.40.17"
    a.outbox.flush()
    assert fake.objs[LEASE_KIND][name]["spec"]["holder"] == "IPAddress/ns/u", "recorded: made"


def test_a_block_of_an_inline_range_is_renewed_and_given_back_when_asked_for() -> None:
    """A delegate's inline range (``"range": "198.18.53.0/24"``: 253 addresses) is leased through the same Ipam and
    BlockRegistry as a pool, so n1 claims blocks of its implicit pool (``ImplicitPool/unnamed``). The reconcile round
    housekeeps only the pools of ``POOL_KINDS`` (``Reconciler._housekeep_blocks``): the implicit pool's blocks are
    never renewed after their claim, never returned idle, never given back when another node asks for them (its ADD
    then answers 100 with free addresses left in n1's block), and ``_lost`` never looks at them."""
    from ipamd.ipam.delegated import DelegatedAddresses
    from ipamd.model.ipamconf import implicit_pool, parse_ipam_config
    from ipamd.node.reconcile import Reconciler
    from ipamd.verbs.call import CniCall
    from ipamd.verbs.ipam_plugin import IpamPlugin
    from tests.fakes.publisher import RecordingPublisher
    from tests.unit import test_plexus_ipam as tpi

    fake = FakeApi()
    n1, n2 = Node(fake, "n1"), Node(fake, "n2")
    n1.source.add(tpi.pod())
    plugin = IpamPlugin(DelegatedAddresses(n1.ipam, n1.source, n1.clock), n1.source, lambda: True,
                        RecordingPublisher())
    section = {"type": "plexus-ipam", "range": "198.18.53.0/24"}
    conf = {"cniVersion": "1.0.0", "name": "nad-a", "type": "macvlan", "ipam": section}
    args = {"K8S_POD_NAMESPACE": tpi.NS, "K8S_POD_NAME": "app", "K8S_POD_UID": "uid-app"}
    plugin.handle(CniCall("ADD", "c1", "/run/netns/x", "net1", args, conf))
    (block,) = fake.objs[BLOCK_KIND].values()
    assert block["spec"]["pool"] == "ImplicitPool/unnamed"
    n1.outbox.flush()
    rounds = Reconciler(n1.store, n1.source, n1.ipam, None, None, None, cluster=True)  # type: ignore[arg-type]
    rounds._housekeep_blocks()
    n1.outbox.flush()
    assert (fake.objs[BLOCK_KIND][block["metadata"]["name"]].get("status") or {}).get("renewTime"), \
        "renewed (its first renewal, owed at its claim)"
    rng = parse_ipam_config(section).range
    assert rng is not None

    def wait(done: Any, timeout_s: float) -> bool:  # n1's round, which the request wakes in the daemon
        rounds._housekeep_blocks()
        n1.outbox.flush()
        return bool(done())

    n2.registry.wait = wait
    assert n2.registry.ask_return(implicit_pool(rng)), \
        f"n1 never gives its block of the inline range back: {list(fake.objs[BLOCK_KIND])}"


def _delegate(node: Node) -> Any:
    """plexus-ipam's ADD on ``node`` for a NAD whose ipam section is ``section`` (pod apps/app)."""
    from ipamd.ipam.delegated import DelegatedAddresses
    from ipamd.verbs.call import CniCall
    from ipamd.verbs.ipam_plugin import IpamPlugin
    from tests.fakes.publisher import RecordingPublisher
    from tests.unit import test_plexus_ipam as tpi

    node.source.add(tpi.pod())
    plugin = IpamPlugin(DelegatedAddresses(node.ipam, node.source, node.clock), node.source, lambda: True,
                        RecordingPublisher())

    def add(section: dict[str, Any], nad: str, container: str) -> str:
        conf = {"cniVersion": "1.0.0", "name": nad, "type": "macvlan", "ipam": section}
        args = {"K8S_POD_NAMESPACE": tpi.NS, "K8S_POD_NAME": "app", "K8S_POD_UID": "uid-app"}
        result = plugin.handle(CniCall("ADD", container, "/run/netns/x", "net1", args, conf))
        return str(result["ips"][0]["address"]).split("/")[0]

    return add


def test_two_inline_ranges_of_one_network_name_one_in_blocks_one_per_address_never_share_an_address() -> None:
    """Two NADs share a Whereabouts ``network_name`` (one space, one pool key ``ImplicitPool/space``: their leases are
    one set): nad-a hands out the whole /24 (blocks), nad-b .16-.40 of it (25 addresses: per address). n1 serves nad-a
    and claims .16/28; n2 serves nad-b and leases per address. n2 never looks for a block after its create, for good
    (its ``block_pools`` for the key says no blocks, from its own range), so any n2 lease landing in the window
    between n1's quorum list and n2's cache showing n1's block is held twice (here n1's first address, whose object
    n1 still owes)."""
    fake = FakeApi()
    n1, n2 = Node(fake, "n1"), Node(fake, "n2", live=False)
    wide = {"type": "plexus-ipam", "range": "198.18.53.0/24", "network_name": "space"}
    narrow = {"type": "plexus-ipam", "range": "198.18.53.0/24", "range_start": "198.18.53.16",
              "range_end": "198.18.53.40", "network_name": "space"}
    n1.registry.grow = _grow_at(n1.registry, "198.18.53.16")  # type: ignore[method-assign]
    n1.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    got_1 = _delegate(n1)(wide, "nad-a", "c1")
    assert [b["spec"]["pool"] for b in fake.objs[BLOCK_KIND].values()] == ["ImplicitPool/space"]
    got_2 = _delegate(n2)(narrow, "nad-b", "c2")
    n1.outbox.flush()
    n2.outbox.flush()
    assert got_1 != got_2, f"n1 and n2 both hold {got_1}; objects: {_objects_at(fake, got_1)}"


class _BlockGetFails:
    """The API as one node reaches it: its next GET of an IPAddressBlock is answered 503 (the API server overloaded
    for a moment); everything else goes through."""

    def __init__(self, api: FakeApi) -> None:
        self.api, self.fail = api, 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.api, name)

    def get(self, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        if kind == BLOCK_KIND and self.fail:
            self.fail -= 1
            raise ApiException(status=503, reason="Service Unavailable")
        return self.api.get(kind, name, namespace)


def test_a_per_address_lease_whose_block_check_failed_is_let_go_not_taken_up_by_the_retry_inside_a_block() -> None:
    """Node a (address blocks off: per address) leases .17, its cache behind node b's block .16/28: its create
    succeeds, and the GET of the block that could hold it (``_claimed_meanwhile``) is answered 503. ``claim`` raises
    (code 11) without letting go of the object it made (``securing`` never learnt of the lease). b's cache has not
    shown a's object yet: b hands .17 out in its block. The runtime retries a's ADD: ``held_by`` finds the object
    a's claim left for that holder and ``take_up`` (which checks no block) gives .17 to a's pod. Two pods hold .17;
    b's owed lease object fails for ever on a's (409, another node's for another holder)."""
    from ipamd.ipam.addresses import auto_ip_name
    from tests.unit.test_ipam import attach, pod

    fake = FakeApi()
    a = Node(fake, "a", live=False, claim=False)  # its cache: from before b's block
    b = Node(fake, "b", live=False)  # its cache: from before a's object
    b.registry.grow = _grow_at(b.registry, "198.18.40.16")  # type: ignore[method-assign]
    b.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    assert b.add() == "198.18.40.16"
    b.outbox.flush()
    a.registry.objects = _BlockGetFails(fake)  # type: ignore[assignment]
    a.store.set_cursor(BIG, to_int("198.18.40.16"))
    pa = pod("pa")
    with pytest.raises(TryAgainLater):
        attach(a.ipam, pa)
    assert _objects_at(fake, "198.18.40.17") == [(f"IPAddress/ns/{auto_ip_name(pa, 'net1')}", "a")], \
        "the object a's failed claim left"
    got_b = b.add()  # b's lease cache does not show a's object of .17 yet
    a.cache.sync()
    got_a = attach(a.ipam, pa)[0].address  # the runtime retries pa's ADD
    a.outbox.flush()
    b.outbox.flush()
    assert got_a != got_b, f"a and b both hold {got_a}; objects: {_objects_at(fake, got_a)}"


def test_a_restart_keeps_the_owed_lease_objects_of_what_the_store_holds() -> None:
    """``drop_unrecorded`` drops only a dead claim's write: the owed objects of addresses the store holds (the API away
    before the restart) are made after it, for their holders."""
    fake = FakeApi()
    a = Node(fake, "a")
    a.registry.grow = _grow_at(a.registry, "198.18.40.16")  # type: ignore[method-assign]
    a.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    got = [a.add(), a.add()]
    assert not fake.objs[LEASE_KIND], "owed, not made yet"
    assert a.registry.drop_unrecorded() == 0
    _restart(a)
    a.outbox.flush()
    held = {lease.address: lease.holder for lease in a.store.all_leases() if lease.holder}
    assert {o["spec"]["ip"]: o["spec"]["holder"] for o in fake.objs[LEASE_KIND].values()} == held
    assert sorted(held) == sorted(got)


def test_the_view_of_an_implicit_pool_is_the_union_of_its_ranges() -> None:
    """Two configurations of one network_name (one pool key), overlapping ranges of one network and a range of
    another: one view, each network's ranges merged; another network_name gets its own."""
    import ipaddress

    from ipamd.ipam.blocks import addresses_in
    from ipamd.node.reconcile import implicit_pool_views
    from ipamd.store.records import ImplicitPoolRecord

    def rec(owner: str, space: str, network: str, lo: str, hi: str) -> ImplicitPoolRecord:
        return ImplicitPoolRecord(f"{owner}|{network}", owner, f"ImplicitPool/{space}", network,
                                  ((to_int(lo), to_int(hi)),), 60.0)

    views = implicit_pool_views([rec("nad-a", "space", "198.18.53.0/24", "198.18.53.1", "198.18.53.254"),
                                 rec("nad-b", "space", "198.18.53.0/24", "198.18.53.16", "198.18.53.40"),
                                 rec("nad-c", "space", "198.18.54.0/24", "198.18.54.10", "198.18.54.20"),
                                 rec("nad-d", "other", "198.18.55.0/24", "198.18.55.1", "198.18.55.9")])
    by_key = {v.meta.key: v for v in views}
    assert sorted(by_key) == ["ImplicitPool/other", "ImplicitPool/space"]
    space = by_key["ImplicitPool/space"]
    assert [(s.network, s.ranges) for s in space.subnets] == [
        (ipaddress.ip_network("198.18.53.0/24"), ((to_int("198.18.53.1"), to_int("198.18.53.254")),)),
        (ipaddress.ip_network("198.18.54.0/24"), ((to_int("198.18.54.10"), to_int("198.18.54.20")),))]
    assert list(addresses_in(space, to_int("198.18.54.16"))) == [to_int(f"198.18.54.{i}") for i in range(16, 21)]


def test_a_claim_inside_a_block_whose_securing_fails_after_it_won_owes_nothing_for_ever() -> None:
    """``Ipam._secure_in_blocks`` wins the claim of .17 in a's block (``_claim_inside`` owes its block_lease), then
    ``store.set_cursor`` fails (SQLite: disk full, I/O error). ``securing`` called ``_secure`` before its
    ``try``/``finally``: the won claim is neither let go (its owed block_lease stays) nor unreserved. Since a26ebcc
    the owed write is never made (NotRecordedYet, retried every 30 s for ever) and ``owes()`` stays true, so the
    block can never be returned (``_claimed_while_going``, ``_make_window_leases``) until the daemon restarts."""
    fake = FakeApi()
    a = _node_with_its_block_at_16(fake)
    original = a.store.set_cursor
    failed: list[bool] = []

    def set_cursor_fails_once(pool: str, ip: int) -> None:
        if not failed:
            failed.append(True)
            raise sqlite3.OperationalError("disk I/O error")
        original(pool, ip)

    a.store.set_cursor = set_cursor_fails_once  # type: ignore[method-assign]
    try:
        a.add()
    except sqlite3.OperationalError:
        pass
    target = f"{LEASE_KIND}/{lease_name(BIG, '198.18.40.17')}"
    assert failed and a.store.lease_at(BIG, to_int("198.18.40.17")) is None, "not recorded: its transaction never ran"
    for _ in range(3):
        a.outbox.flush_target(target)
    assert not a.outbox.owes(target), f"owed for ever: {[(e.op, e.attempts, e.error) for e in a.outbox.owed(target)]}"
    assert not a.ipam.in_use(BIG, to_int("198.18.40.17")), "the won claim's reservation is kept for ever too"

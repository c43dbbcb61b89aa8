"""Node blocks and lease objects at the edges of a write: an answer lost, a daemon killed between two writes, a
cache behind the API server. Each test failed before its fix (found in review): the invariant is that no address is
ever held by two pods, nor kept from every pod for longer than its quarantine."""

from __future__ import annotations

from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from cni.errors import CniError, TryAgainLater
from ipamd.ipam.allocator import to_int
from ipamd.kube.blocks import KIND as BLOCK_KIND
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import lease_name
from tests.fakes.cluster import FakeApi
from tests.unit.test_blocks import Node, _grow_at, _housekeeping, pool_of
from tests.unit.test_ipam import attach, gone, pod, static
from tests.unit.test_lease_versions import ControllerSource, controller, objects_of, small_node


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


def _housekeep(node: Node, pool_name: str) -> None:
    node.registry.housekeep([pool_of(node.source, pool_name)], node.ipam.in_use, node.store.transaction)


def _next_block_create_unanswered(api: FakeApi) -> list[str]:
    """The API server makes the next block, but its answer is lost (a read timeout): the names of those made so."""
    create, lost = api.create, list[str]()

    def made_but_unanswered(kind: str, body: dict[str, Any], namespace: str = "") -> dict[str, Any]:
        made = create(kind, body, namespace)
        if kind == BLOCK_KIND and not lost:
            lost.append(made["metadata"]["name"])
            raise urllib3.exceptions.ReadTimeoutError(None, "/apis", "Read timed out.")  # type: ignore[arg-type]
        return made

    api.create = made_but_unanswered  # type: ignore[method-assign]
    return lost



def test_a_block_whose_create_answer_was_lost_is_not_leased_in_before_the_checks_after_a_claim(api: FakeApi) -> None:
    """Node b leased one address of every window per address (its objects made before any block). Node a claims a
    block: the API server makes it, but the answer is lost (a read timeout). The ADD answers 11, and ``_checked``
    (the cap, and the quorum list of the leases inside) never ran. a's block informer then shows the block as a's,
    while its lease informer lags (a relist, a slow watch): a's next ADDs leased in that block with no request, and
    handed out b's address inside it -- the one interleaving the quorum read after a claim is there for. (A daemon
    killed between a block's create and its checks, the same after its restart.)"""
    from ipamd.ipam.allocator import to_text
    from ipamd.kube.leases import lease_body

    big = "IPAddressPool/ns/big"
    theirs = set()
    for k in range(16):  # one address of each window, b's per-address leases
        address = to_text(to_int("198.18.40.0") + 16 * k + 5)
        api.create(LEASE_KIND, lease_body(big, address, "198.18.40.0/24", f"IPAddress/ns/b-{k}", 0, "b"))
        theirs.add(address)
    a = Node(api, "a", live=False)
    a.cache._snapshot[LEASE_KIND] = []  # a's lease informer has not shown them yet
    lost = _next_block_create_unanswered(api)

    with pytest.raises(TryAgainLater):
        a.add()
    assert lost and lost[0] in api.objs[BLOCK_KIND], "made by the API server, its answer lost"
    a.cache.sync()
    a.cache._snapshot[LEASE_KIND] = []  # the block informer caught up; the lease informer still lags
    a.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]  # that one block only
    got = set()
    for _ in range(10):
        got.add(a.add())
    assert not got & theirs, f"addresses b holds handed out in a's unchecked block: {sorted(got & theirs)}"


# -- 5. an address excluded from a block returned idle stays excluded for the process's life -------------------------



def test_an_adoption_cut_between_its_two_writes_is_finished_by_the_retry_not_expired_under_its_holder(
        api: FakeApi) -> None:
    """Node y adopts x's quarantined lease object for an exact address (a gRPC client's, a delegate's ``ips``, a
    Static no pod uses yet): a patch (holder, y's label), then the status patch that ends the quarantine. That second
    write fails (a 503, a timeout; or y is SIGKILLed between the two). The retry found the object 'ours already'
    (``BlockRegistry._ours_already``, or ``_claim``'s 409 path: same holder) and recorded the lease with the object
    still carrying ``status.orphaningTimestamp``: the controller's ``expire_leases`` deleted it once the old TTL was
    over, and a third node leased the address y holds. Now the retry finishes the adoption."""
    x, y, z = small_node(api, "x", "1h"), small_node(api, "y", "1h"), small_node(api, "z", "1h")
    got = attach(x.ipam, pod("p1"), net="q-net")[0].address
    x.ipam.delete_ip(next(r for r in x.store.all_ips() if r.address == got))  # x's quarantine of it
    x.outbox.flush()
    assert objects_of(api, got)[0]["status"]["orphaningTimestamp"]
    patch_status = api.patch_status
    failed: list[str] = []

    def second_write_fails_once(kind: str, name: str, status: dict[str, Any], namespace: str = "",
                                resource_version: str = "", field_manager: str = "") -> dict[str, Any]:
        if kind == LEASE_KIND and status == {"orphaningTimestamp": None} and not failed:
            failed.append(name)
            raise ApiException(status=503, reason="ServiceUnavailable")
        return patch_status(kind, name, status, namespace, resource_version, field_manager)

    api.patch_status = second_write_fails_once  # type: ignore[method-assign]
    q = pool_of(y.source, "q")
    with pytest.raises(TryAgainLater):
        y.ipam.allocate_for("vm", q, got)
    assert failed
    _, lease = y.ipam.allocate_for("vm", q, got)  # the client's retry
    assert lease.address == got and y.store.lease_at(q.meta.key, to_int(got)) is not None
    y.outbox.flush()
    controller(ControllerSource(api)).expire_leases()  # the old quarantine's TTL is over by the controller's clock
    assert objects_of(api, got), "y holds the address: its lease object must not be expired"
    z.store.set_cursor(q.meta.key, to_int(got) - 1)
    assert attach(z.ipam, pod("p3"), net="q-net")[0].address != got, "held on y and handed out on z"


# -- 2. a quarantine inside a block that has no lease object, the block given back ------------------------------------



def test_an_idle_block_returned_on_a_lagging_cache_does_not_delete_the_block_another_node_claimed_since(
        api: FakeApi) -> None:
    """Node a's last block of the pool is empty; a was cut off (its renewals lost) long enough for the controller to
    reclaim the block, and node b claimed the same window since (the same name) and leased an address in it, its
    lease object still owed. a's informer has not caught up when its round finds the block empty past ``last_idle_s``: ``_return``
    deletes it by name with no precondition (the retry of a failed return passes the version the cache saw; the first
    attempt does not), so b's block is deleted under b. The window is per-address space for every other node, and node
    c leases the address b holds."""
    a = Node(api, "a", live=False)
    a.registry.grow = _grow_at(a.registry, "198.18.40.16")  # type: ignore[method-assign]
    a.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    app = pod("app")
    attach(a.ipam, app)
    gone(a.ipam, app)
    a.outbox.flush()
    a.cache.sync()  # a's informer shows its block
    _housekeeping(a)  # empty from now
    (name,) = api.objs[BLOCK_KIND]
    api.delete(BLOCK_KIND, name)  # the controller's reclaim of a silent node
    b = Node(api, "b")
    b.registry.grow = _grow_at(b.registry, "198.18.40.16")  # type: ignore[method-assign]
    b.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    held = b.add()
    assert api.objs[BLOCK_KIND][name]["spec"]["node"] == "b" and b.outbox.owes(
        f"{LEASE_KIND}/{lease_name('IPAddressPool/ns/big', held)}")
    a.clock.advance(1801)
    _housekeeping(a)  # a's cache still shows its own block there
    assert name in api.objs[BLOCK_KIND], "b's block deleted by a's return of its own"
    c = Node(api, "c", claim=False)
    c.store.set_cursor("IPAddressPool/ns/big", to_int(held) - 1)
    assert c.add() != held


# -- 4. a block create whose answer is lost: the block is leased in with no check after its claim ------------------



def test_an_address_quarantined_in_a_block_before_its_object_was_made_stays_quarantined_once_the_block_goes(
        api: FakeApi) -> None:
    """Owner a leases .16 in its block of a pool with a leaseTTL; its pod goes before the outbox made the lease object:
    the quarantine is a store record alone, with no object (``KubeLeaseRegistry.orphan``'s ``NO_OBJECT``: inside the
    block, the owner alone leases). Another node asks for the block (a has free addresses there) and a gives it back:
    ``_make_window_leases`` made the owed objects of the window, but a quarantine owes none, so the window was
    per-address space with nothing at .16, and node b leased .16 at once, an hour before its quarantine ends."""
    from ipamd.model.timefmt import rfc3339

    a, b = Node(api, "a"), Node(api, "b", claim=False)
    a.registry.grow = _grow_at(a.registry, "198.18.43.16")  # type: ignore[method-assign]
    a.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    app = pod("app")
    got = attach(a.ipam, app, net="ttl-net")[0].address
    assert to_int(got) in range(to_int("198.18.43.16"), to_int("198.18.43.32"))
    gone(a.ipam, app)  # quarantined for 1 h, before the outbox ran: no object at all
    a.outbox.flush()
    assert not objects_of(api, got)
    (block,) = api.objs[BLOCK_KIND]
    api.patch_status(BLOCK_KIND, block, {"returnRequestedBy": "b", "returnRequestedAt": rfc3339(a.clock())})
    _housekeep(a, "quarantined")
    a.outbox.flush()
    assert block not in api.objs[BLOCK_KIND], "given back"
    assert a.store.lease_at("IPAddressPool/ns/quarantined", to_int(got)) is not None, "a's quarantine goes on"
    b.store.set_cursor("IPAddressPool/ns/quarantined", to_int(got) - 1)
    assert attach(b.ipam, pod("bp"), net="ttl-net")[0].address != got, "a quarantined address handed out at once"


# -- 3. an idle block returned by a delete with no precondition ----------------------------------------------------


def test_a_quarantine_object_left_unmarked_by_a_failure_is_marked_by_the_next_round_and_ended_as_this_nodes(
        api: FakeApi) -> None:
    """The give-back above makes the quarantine's object in two writes; the second fails: the block stays a's (its
    give-back waits), the next round marks the object and gives the block back, and the quarantine's end deletes
    the object. Had the daemon been killed between the two (the object unmarked for good), the end deletes it too."""
    from ipamd.model.timefmt import rfc3339

    a = Node(api, "a")
    a.registry.grow = _grow_at(a.registry, "198.18.43.16")  # type: ignore[method-assign]
    a.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    app = pod("app")
    got = attach(a.ipam, app, net="ttl-net")[0].address
    gone(a.ipam, app)
    a.outbox.flush()
    (block,) = api.objs[BLOCK_KIND]
    api.patch_status(BLOCK_KIND, block, {"returnRequestedBy": "b", "returnRequestedAt": rfc3339(a.clock())})
    patch_status = api.patch_status
    failed: list[str] = []

    def mark_fails_once(kind: str, name: str, status: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if kind == LEASE_KIND and status.get("orphaningTimestamp") and not failed:
            failed.append(name)
            raise ApiException(status=503, reason="ServiceUnavailable")
        return patch_status(kind, name, status, *args, **kwargs)

    api.patch_status = mark_fails_once  # type: ignore[method-assign]
    _housekeep(a, "quarantined")
    assert failed and block in api.objs[BLOCK_KIND], "its quarantine not kept by an object yet: the block stays"
    (obj,) = objects_of(api, got)
    assert not obj["spec"].get("holder") and not (obj.get("status") or {}).get("orphaningTimestamp")
    a.clock.advance(1)
    _housekeep(a, "quarantined")
    a.outbox.flush()
    assert block not in api.objs[BLOCK_KIND], "given back once the object is marked"
    assert objects_of(api, got)[0]["status"]["orphaningTimestamp"]
    api.patch_status(LEASE_KIND, objects_of(api, got)[0]["metadata"]["name"], {"orphaningTimestamp": None})
    a.clock.advance(3601)  # left unmarked (as by a kill between the two writes), its quarantine over
    a.ipam.expire(None, a.clock())
    a.outbox.flush()
    assert not objects_of(api, got), "the end of a's quarantine deletes the object it made for it"



def test_an_address_excluded_from_a_block_returned_idle_is_this_nodes_to_lease_again_once_its_lease_is_gone(
        api: FakeApi) -> None:
    """a's block .16/28 found b's per-address lease of .21 inside at its claim (``excluded``). The block stays empty
    and is returned idle; b lets .21 go (its object deleted). ``_free_excluded`` only looks at addresses whose window
    still shows a block, and ``_return`` (unlike ``_give_back``) left the window's ``excluded`` entries: .21 was
    'taken' on node a for the rest of the daemon's life, per address or in a block claimed there again (a pool nearly
    full then answered 'no free address' on a with .21 free)."""
    from ipamd.kube.leases import lease_body

    big = "IPAddressPool/ns/big"
    api.create(LEASE_KIND, lease_body(big, "198.18.40.21", "198.18.40.0/24", "IPAddress/ns/other", 0, "b"))
    a = Node(api, "a")
    a.registry.grow = _grow_at(a.registry, "198.18.40.16")  # type: ignore[method-assign]
    a.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    app = pod("app")
    attach(a.ipam, app)
    gone(a.ipam, app)
    a.outbox.flush()
    _housekeeping(a)
    a.clock.advance(1801)
    _housekeeping(a)
    assert not api.objs[BLOCK_KIND], "returned idle"
    api.delete(LEASE_KIND, lease_name(big, "198.18.40.21"))  # b let .21 go
    for _ in range(3):
        a.clock.advance(60)
        _housekeeping(a)
    a.registry.grow = lambda pool: None  # type: ignore[method-assign]  # no block anew: per address
    a.store.set_cursor(big, to_int("198.18.40.20"))
    assert a.add() == "198.18.40.21", "free in the cluster, and still skipped on a"


# -- 6. a Static asking for an address quarantined inside the owner's block ----------------------------------------



def test_a_static_at_an_address_quarantined_inside_a_block_adopts_it_as_it_does_per_address(api: FakeApi) -> None:
    """Node x (address blocks off) leased .21 per address; owner a claimed the block .16/28 over it (a's cache did not
    show x's object yet), whose check found it inside (``excluded[.21] = x's holder``). x's pod goes: .21 is
    quarantined (leaseTTL 1 h). A Static IPAddress for .21 is made: per address, a Static adopts a quarantined address
    at once (README; ``KubeLeaseRegistry._claim``'s ``exact``). On a, the block's owner, ``claim`` refused it because
    ``excluded`` still named the old holder (``found != lease.holder``), and ``lease_for`` said AddressConflict
    'already leased elsewhere'; every other node was told to wait for the owner (code 11): the Static was unusable in
    the whole cluster until the quarantine ended and a's next round freed the exclusion."""
    from ipamd.model.objects import IP_ADDRESS

    x = Node(api, "x", claim=False)
    x.store.set_cursor("IPAddressPool/ns/quarantined", to_int("198.18.43.20"))
    app = pod("app")
    assert attach(x.ipam, app, net="ttl-net")[0].address == "198.18.43.21"
    a = Node(api, "a")
    a.registry.grow = _grow_at(a.registry, "198.18.43.16")  # type: ignore[method-assign]
    a.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    attach(a.ipam, pod("a-app"), net="ttl-net")  # the block claimed, .21 found inside
    gone(x.ipam, app)  # quarantined on x
    x.outbox.flush()
    assert not objects_of(api, "198.18.43.21")[0]["spec"].get("holder")
    for n in (a, x):
        n.source.add(static("s", "198.18.43.21", net="ttl-net"))
    assert a.source.get(IP_ADDRESS, "ns", "s") is not None
    got = attach(a.ipam, pod("s-user"), net="ttl-net", names=("s",))[0].address
    assert got == "198.18.43.21"



def test_an_idle_block_returned_as_the_cache_catches_up_on_another_nodes_claim_does_not_delete_it() -> None:
    """As test_block_crash_points' lagging-cache test, but a's informer catches up between the round's decision
    (the block empty, ours) and ``_return``'s read of the version: the cache showed the window b's, ``next(...,
    "")`` gave "" and the delete went without any precondition, deleting b's block. Now a block not shown this
    node's is not deleted."""
    from ipamd.kube.blocks import KIND as BLOCK_KIND
    from tests.unit.test_blocks import Node, _grow_at, _housekeeping
    from tests.unit.test_ipam import attach, gone, pod

    api = FakeApi()
    a = Node(api, "a", live=False)
    a.registry.grow = _grow_at(a.registry, "198.18.40.16")  # type: ignore[method-assign]
    a.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    app = pod("app")
    attach(a.ipam, app)
    gone(a.ipam, app)
    a.outbox.flush()
    a.cache.sync()
    _housekeeping(a)
    (name,) = api.objs[BLOCK_KIND]
    api.delete(BLOCK_KIND, name)  # the controller's reclaim of a silent node
    b = Node(api, "b")
    b.registry.grow = _grow_at(b.registry, "198.18.40.16")  # type: ignore[method-assign]
    b.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    b.add()
    assert api.objs[BLOCK_KIND][name]["spec"]["node"] == "b"
    a.registry.on_return = a.cache.sync  # the informer's thread catches up right then (any moment will do)
    a.clock.advance(1801)
    _housekeeping(a)
    assert name in api.objs[BLOCK_KIND] and api.objs[BLOCK_KIND][name]["spec"]["node"] == "b", \
        "b's block deleted by a's return of its own"



def test_a_window_claimed_again_with_its_create_answer_lost_is_checked_though_claimed_once_before() -> None:
    """The check of a block never cleared (its create's answer lost) was skipped for a window this node had claimed
    (and cleared) once before: ``_cleared`` kept the slot after the block was returned, and the block's renewal owed
    by an earlier round was still owed, which read as "cleared, renewal on its way". Both now go with the block."""
    from ipamd.ipam.allocator import to_int, to_text
    from ipamd.kube.blocks import KIND as BLOCK_KIND
    from ipamd.kube.leases import KIND as LEASE_KIND
    from tests.unit.test_blocks import Node, _housekeeping
    from tests.unit.test_ipam import attach, gone, pod

    api = FakeApi()
    big = "IPAddressPool/ns/big"
    a = Node(api, "a", live=False)
    a.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    app = pod("app")
    attach(a.ipam, app)  # a's first block of the window, checked (``_cleared``)
    (name,) = api.objs[BLOCK_KIND]
    first = to_int(api.objs[BLOCK_KIND][name]["spec"]["cidr"].split("/")[0])
    assert (big, first) in a.registry._cleared
    gone(a.ipam, app)
    a.outbox.flush()
    _housekeeping(a)
    a.clock.advance(1801)
    a.cache.sync()  # a's informer shows its block (renewed), as it does by the time it is idle
    _housekeeping(a)
    assert not api.objs[BLOCK_KIND], "returned idle"
    assert (big, first) not in a.registry._cleared and not a.outbox.owes(f"{BLOCK_KIND}/{name}"), \
        "what was noted of the block returned (its checks passed, its renewal owed) goes with it"
    b = Node(api, "b", claim=False)  # per address, inside the window now free
    theirs = set()
    for k in range(6):
        b.store.set_cursor(big, first + 2 * k)
        theirs.add(b.add())
    b.outbox.flush()
    assert all(first <= to_int(x) < first + 16 for x in theirs), theirs
    lost = _next_block_create_unanswered(api)

    a.cache._snapshot[LEASE_KIND] = []  # a's lease informer has not shown b's objects
    with pytest.raises(CniError):
        a.add()
    assert lost == [name], "the same window claimed again, its answer lost"
    a.cache.sync()
    a.cache._snapshot[LEASE_KIND] = []  # the block informer caught up; the lease informer still lags
    got = {a.add() for _ in range(10)}
    assert not got & theirs, f"b's addresses handed out in a's unchecked block: {sorted(got & theirs)} " \
                             f"(of {sorted(theirs)}; {to_text(first)})"



def test_an_address_excluded_from_a_block_given_back_as_it_was_reclaimed_is_leased_again_once_free() -> None:
    """The clearing of ``excluded`` had moved to after a delete that succeeded. A delete answered 404 (the controller
    reclaimed the block meanwhile) kept the entries: no block shows in the window, so ``_free_excluded`` never looks
    at them, and ``_Taken`` counted the address taken on this node for good. Now whatever shows the block gone
    forgets them."""
    from ipamd.ipam.allocator import to_int
    from ipamd.kube.blocks import KIND as BLOCK_KIND
    from ipamd.kube.leases import KIND as LEASE_KIND
    from ipamd.kube.leases import lease_body, lease_name
    from ipamd.model.timefmt import rfc3339
    from tests.unit.test_blocks import Node, _grow_at, _housekeeping
    from tests.unit.test_ipam import attach, pod

    api = FakeApi()
    big = "IPAddressPool/ns/big"
    api.create(LEASE_KIND, lease_body(big, "198.18.40.21", "198.18.40.0/24", "IPAddress/ns/other", 0, "b"))
    a = Node(api, "a")
    a.registry.grow = _grow_at(a.registry, "198.18.40.16")  # type: ignore[method-assign]
    a.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    attach(a.ipam, pod("app"))
    a.outbox.flush()
    assert to_int("198.18.40.21") in a.registry.excluded.get(big, {})
    (block,) = api.objs[BLOCK_KIND]
    api.patch_status(BLOCK_KIND, block, {"returnRequestedBy": "c", "returnRequestedAt": rfc3339(a.clock())})
    a.registry.on_return = lambda: api.delete(BLOCK_KIND, block)  # the controller's reclaim lands right then
    _housekeeping(a)
    assert not api.objs[BLOCK_KIND]
    api.delete(LEASE_KIND, lease_name(big, "198.18.40.21"))  # b let .21 go
    for _ in range(3):
        a.clock.advance(60)
        _housekeeping(a)
    a.registry.grow = lambda pool: None  # type: ignore[method-assign]  # per address from here
    a.store.set_cursor(big, to_int("198.18.40.20"))
    assert a.add() == "198.18.40.21", "free in the cluster, and skipped on a for the daemon's life"

"""Node address blocks over time (claim, renew, return, asked-for return, reclaim) with the timings and clocks of a
real cluster: a claim racing a return, a node cut off from the API server, clocks minutes apart (each found in review,
failing on the code before its fix)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from cni.errors import CniError, PoolExhausted
from ipamd.ipam.allocator import to_int
from ipamd.kube.blocks import KIND as BLOCK_KIND
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import lease_name
from ipamd.model.timefmt import rfc3339
from tests.fakes.cluster import FakeApi, FakeCache
from tests.unit.test_blocks import Node, _answered_by, _grow_at, _housekeeping, _window, pool_of
from tests.unit.test_reclaim import Cluster, _silent_block, controller, silence

BIG = "IPAddressPool/ns/big"


def _one_block_at(node: Node, address: str) -> None:
    node.registry.grow = _grow_at(node.registry, address)  # type: ignore[method-assign]
    node.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]


def _empty_block_at(node: Node, address: str) -> None:
    """The node claims the block at ``address`` (its first pod), and the pod goes: the block is empty."""
    _one_block_at(node, address)
    got = node.add()
    assert got == address
    node.ipam.delete_ip(next(r for r in node.store.all_ips() if r.address == got))
    node.outbox.flush()


class _EmptySince(dict):  # type: ignore[type-arg]
    """``BlockRegistry._empty_since`` with a hook right after the round reads how long a block has been empty."""

    hook: Any = None

    def setdefault(self, key: Any, default: Any = None) -> Any:
        since = super().setdefault(key, default)
        if self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return since


def test_an_empty_block_returned_while_an_exact_address_is_claimed_in_it_loses_the_claims_lease_object() -> None:
    """Node a's only block .192/28 has been empty for 30 minutes: its round returns it. At the same moment a gRPC
    client asks a for exactly .200 (``allocate_for``: the Static path of ``_secure``), which reserves the address
    OUTSIDE the store's transaction (only the Auto pick reserves inside it), so the round's emptiness check (inside
    its transaction) does not see it. The round has read how long the block was empty (``_empty_since``) when the
    client's ``_claim_inside`` checks ``returned`` (not yet set), counts itself ``_inflight`` and waits for the store's
    lock to owe its lease object; the round then marks the block returned and deletes it (``_return``: unlike
    ``_give_back`` it neither waits for ``_inflight`` nor makes the window's owed lease objects first). a records .200
    for the client with its object still owed; node b, seeing no block and no lease object there, leases .200 per
    address to its own pod: two holders of .200 (a's owed object then meets b's, for ever)."""
    api = FakeApi()
    a = Node(api, "a")
    _empty_block_at(a, "198.18.40.192")
    big = pool_of(a.source, "big")
    _housekeeping(a)  # empty from now on
    a.clock.advance(1801)  # the node's last block of the pool: returned after 30 minutes empty
    slot = (BIG, to_int("198.18.40.192"))

    arrived, go = threading.Event(), threading.Event()
    reserve = a.ipam._reserve

    def paused_reserve(lease: Any) -> bool:  # the client's call between its read of the store and its reservation
        if lease.address == "198.18.40.200" and not go.is_set():
            arrived.set()
            go.wait(5)
        return reserve(lease)

    a.ipam._reserve = paused_reserve  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def client() -> None:
        try:
            a.ipam.allocate_for("client", big, "198.18.40.200")
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    assert arrived.wait(5)

    def claim_now() -> None:  # the round found the block empty long enough: the client's claim runs here
        go.set()
        deadline = time.monotonic() + 5
        while not a.registry._inflight.get(slot) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert a.registry._inflight.get(slot), "the client's claim is inside the block, waiting for the store's lock"

    empty_since = _EmptySince(a.registry._empty_since)
    empty_since.hook = claim_now
    a.registry._empty_since = empty_since
    a.registry.housekeep([big], a.ipam.in_use, a.store.transaction)  # the round that returns the empty block
    thread.join(10)
    assert not errors, errors
    held = {lease.address: lease.holder for lease in a.store.all_leases() if lease.holder}
    assert held.get("198.18.40.200") == "api/client", "a holds .200 for its client"
    owed = a.outbox.owes(f"{LEASE_KIND}/{lease_name(BIG, '198.18.40.200')}")
    b = Node(api, "b", claim=False)
    b.store.set_cursor(BIG, to_int("198.18.40.199"))
    theirs = b.add()
    a.outbox.flush()  # a's owed lease object, late: it meets b's
    assert theirs != "198.18.40.200", (
        f"b leased .200 to its pod while a holds it for its client; block deleted: {not api.objs[BLOCK_KIND]}, "
        f"a's lease object was still owed: {owed}")


def test_a_node_back_from_a_partition_does_not_lease_in_a_block_the_controller_reclaimed_meanwhile() -> None:
    """Node a's daemon is cut off from the API server (its watch and its writes; the kubelet still works) with its
    one block empty. Past --block-ttl, with no pod bound to a, the controller reclaims the block, and node b claims the
    same window (same name) and hands out .16 and .17. A pod is scheduled to a: the daemon serves its ADD from its
    informer's cache, which still shows the block as a's (a broken watch is noticed up to 45 s late), with no API
    request and no check of how long ago its renewals last reached the API server (the snapshot restart path limits
    itself to blocks renewed within 2 minutes; a running daemon does not). Its reconcile round does not notice either
    (``_lost`` reads only blocks the cache no longer shows). a hands out an address b's pod holds."""
    api = FakeApi()
    a = Node(api, "a", live=False)
    _empty_block_at(a, "198.18.40.16")
    a.cache.sync()  # a's informer: its block, empty; from here on a's daemon reaches the API no more
    silence(api, 3600)
    cluster = Cluster(api)
    controller(cluster).reclaim_blocks()
    assert not api.objs[BLOCK_KIND], "silent past the TTL, no pod bound: reclaimed"
    b = Node(api, "b")
    _one_block_at(b, "198.18.40.16")
    theirs = {b.add(), b.add()}
    b.outbox.flush()
    a.clock.now = time.time() + 3600  # (the API's times are real ones) the hour of silence passed for a too
    _housekeeping(a)  # a reconcile round of a, its cache unchanged
    try:
        mine = a.add()
    except CniError as exc:  # refused: the block is not a's any more, which the cache does not show yet
        assert exc.code == 11 and "reclaimed" in str(exc), exc
        return
    assert mine not in theirs, f"a handed out {mine}, which b's pod holds in b's block of the same window"


def test_a_return_request_from_a_node_whose_clock_is_behind_is_acted_on() -> None:
    """The asking node writes ``returnRequestedAt`` with its own clock and the owner judges it fresh with its own
    (``return_asked_by``: at most ``ASK_FRESH_S`` = 120 s old). With the asking node's clock 3 minutes behind the
    owner's, every request is stale on arrival: the owner never gives its block back, and the asking node finds the
    pool full (code 100) while the owner's blocks hold free addresses, ADD after ADD (it re-asks only once its own
    clock says 120 s have passed, still 3 minutes behind). README: a nearly full pool never refuses a pod while another
    node's block holds a free address."""
    api = FakeApi()
    owner = Node(api, "owner")
    for _ in range(20):  # two blocks, the second with free addresses
        owner.add()
    owner.outbox.flush()
    other = Node(api, "other", claim=False)
    other.clock.now = owner.clock.now - 180  # its clock 3 minutes behind the owner's
    other.registry.wait = _answered_by(owner)
    windows = set().union(*(_window(b) for b in api.objs[BLOCK_KIND].values()))
    free_in_blocks = len(windows - owner.addresses() - {a for a in windows if a.endswith(".0")})
    assert free_in_blocks > 0
    got: list[str] = []
    refused = None
    while True:
        try:
            got.append(other.add())
        except PoolExhausted as exc:
            refused = exc
            break
        if got[-1] in windows:
            break
    assert refused is None, f"refused ({refused}) while the owner's blocks hold {free_in_blocks} free addresses"


def test_a_live_node_whose_clock_is_behind_the_controllers_keeps_its_blocks_and_leases() -> None:
    """The controller judges silence as its own ``time.time()`` minus the ``renewTime`` the node wrote with the node's
    clock (blocks and heartbeat alike). A node whose clock is 11 minutes behind renews every minute and is still judged
    silent past --block-ttl (10 min): with no pod bound to it (a gRPC client's lease is what it holds), its block is
    deleted and the client's lease quarantined, then expired, while the client still holds the address; another node
    leases it again. (The node lifecycle controller of Kubernetes times a Lease by when it saw its renewTime change,
    for this reason.)"""
    api = FakeApi()
    n = Node(api, "skewed")
    n.registry.heartbeat_namespace = "plexus-system"
    n.clock.now = time.time() - 660  # 11 minutes behind the controller
    big = pool_of(n.source, "big")
    _, lease = n.ipam.allocate_for("client", big)  # a gRPC client's address, in the node's block
    n.registry.housekeep([big], n.ipam.in_use, n.store.transaction)  # renewed now (by its clock): alive
    n.outbox.flush()
    assert all(o["status"]["renewTime"] for o in api.objs[BLOCK_KIND].values())
    cluster = Cluster(api)
    cluster.nodes = ["skewed"]
    ctl = controller(cluster)
    ctl.reclaim_blocks()
    ctl.expire_leases()
    other = Node(api, "other", claim=False)
    other.store.set_cursor(BIG, lease.ip - 1)
    theirs = other.add()
    assert api.objs[BLOCK_KIND], "the node renewed its block a moment ago, yet it was reclaimed"
    assert theirs != lease.address, f"{lease.address} handed out again while the live node's client holds it"


def test_a_renewal_landing_between_the_controllers_version_check_and_its_deletes_keeps_every_block() -> None:
    """``_delete_blocks`` reads every block first (none renewed since the judgement), then deletes them one by one at
    the judged versions and stops at the first 409. The daemon back renews its blocks one write each in any order: a
    renewal of the second block landing after the reads and after the first delete still costs the first block (README:
    "a daemon that comes back and renews one meanwhile keeps them all"); the live daemon then leases in it until its
    informer shows the delete, with its lease objects owed."""
    api = FakeApi()
    first = _silent_block(api, "back", "198.18.40.0/28")
    second = _silent_block(api, "back", "198.18.40.16/28")
    silence(api, 3600)
    cluster = Cluster(api)
    cluster.cache = FakeCache(api, live=False)
    cluster.cache.sync()
    delete = api.delete

    def delete_as_the_daemon_renews(kind: str, name: str, namespace: str = "", resource_version: str = "") -> None:
        if kind == BLOCK_KIND and name == first:  # the daemon's renewal of the second block lands right now
            api.patch_status(BLOCK_KIND, second, {"renewTime": rfc3339(time.time())})
        delete(kind, name, namespace, resource_version)

    api.delete = delete_as_the_daemon_renews  # type: ignore[method-assign]
    controller(cluster).reclaim_blocks()
    assert second in api.objs[BLOCK_KIND], "renewed: kept"
    assert first in api.objs[BLOCK_KIND], "the daemon is back (a block of it renewed), yet its other block is deleted"


def test_a_node_through_a_long_outage_stops_leasing_in_blocks_the_controller_may_have_reclaimed() -> None:
    """Through an outage a node leases in its blocks with no request, for as long as the controller cannot have
    reclaimed them (``UNCONFIRMED_S`` after the last renewal its cache shows, below ``GONE_GRACE_S``); past that, ADD
    answers code 11 saying why, until the API server says the block is still the node's."""
    from ipamd.kube.blocks import UNCONFIRMED_S
    from ipamd.kube.reclaim import GONE_GRACE_S

    assert UNCONFIRMED_S < GONE_GRACE_S
    api = FakeApi()
    a = Node(api, "a", live=False)
    a.clock.now = time.time()  # (the API's times are real ones)
    _one_block_at(a, "198.18.40.16")
    a.add()
    a.outbox.flush()
    a.cache.sync()
    a.clock.advance(UNCONFIRMED_S - 5)
    before = api.requests()
    a.add()
    assert api.requests() == before, "within the bound: from the block, no request"
    a.clock.advance(10)
    a.outbox.unanswered()  # the API server away
    try:
        a.add()
    except CniError as exc:
        assert exc.code == 11 and "last seen renewed" in str(exc), exc
    else:
        raise AssertionError("leased in a block the controller may have reclaimed by now")
    a.clock.advance(60)  # the API server back: it says the block is a's
    a.outbox.answered()
    a.add()
    before = api.requests()
    a.add()
    assert api.requests() == before, "confirmed: from the block again with no request"


def test_the_controller_judges_a_renewal_by_the_api_servers_stamp_not_the_nodes_clock() -> None:
    """A node's clock ahead of the controller's made it look renewed in the future: never silent, never reclaimed
    once gone. The API server's stamp of the renewal write is taken first; the node's own time only without it."""
    from ipamd.kube.heartbeat import RENEWAL_MANAGER, renewed_at

    stamp = {"metadata": {"managedFields": [
        {"manager": "kubectl", "operation": "Update", "time": "2026-12-02T10:00:00Z"},
        {"manager": RENEWAL_MANAGER, "operation": "Update", "time": "2026-12-02T09:00:00Z"}]}}
    assert renewed_at(stamp, "2030-01-01T00:00:00Z") == renewed_at({}, "2026-12-02T09:00:00Z")
    assert renewed_at({}, "2026-12-02T09:00:00Z") is not None and renewed_at({}, "") is None


class _CutOff:
    """A node's own view of the API server while it is cut off: every request goes unanswered."""

    def __getattr__(self, name: str) -> Any:
        def unanswered(*_: Any, **__: Any) -> Any:
            raise urllib3.exceptions.MaxRetryError(None, "/", "connection refused")  # type: ignore[arg-type]
        return unanswered


def _reclaimed_and_taken(api: FakeApi, silent_s: float) -> set[str]:
    """The controller reclaims the silent node's block (no pod bound to it), and node b claims the same window and
    fills it: the addresses b's pods hold."""
    silence(api, silent_s)
    controller(Cluster(api)).reclaim_blocks()
    assert not api.objs[BLOCK_KIND], "silent past --block-ttl, no pod bound: reclaimed"
    b = Node(api, "b")
    _one_block_at(b, "198.18.40.16")
    theirs = {b.add() for _ in range(16)}
    b.outbox.flush()
    assert theirs == _window(next(iter(api.objs[BLOCK_KIND].values())))
    return theirs


def _add_refused_or_elsewhere(a: Node, theirs: set[str]) -> None:
    try:
        mine = a.add()
    except CniError as exc:
        assert exc.code == 11, exc
        return
    assert mine not in theirs, f"a handed out {mine}, which b's pod holds in b's block of the same window"


def test_a_node_whose_clock_is_behind_confirms_its_new_block_into_the_future() -> None:
    """``_confirm`` compares the cached block's time with the node's own clock; a block not renewed yet has only its
    ``creationTimestamp``, which is the API server's clock. With the node's clock 11 minutes behind (the skew the
    review's own tests use), the age comes out negative and ``_confirmed[slot] = now - age`` lies 11 minutes in the
    FUTURE: the block counts as confirmed for 11 min + UNCONFIRMED_S with no look at the cache or the API. Cut off
    right after the claim (its renewals never land), the block is reclaimed after --block-ttl and claimed by b; a
    still leases in it with no request."""
    api = FakeApi()
    a = Node(api, "a", live=False)
    a.clock.now = time.time() - 660  # 11 minutes behind the API server
    _one_block_at(a, "198.18.40.16")
    a.add()  # claims the block (the cache does not show it yet)
    a.outbox.flush()
    a.cache.sync()  # shown: its creationTimestamp (server clock), no renewal yet
    a.add()  # leased in it: _confirm runs on the cached object
    for rec in list(a.store.all_ips()):
        a.ipam.delete_ip(rec)  # its pods go: the block is empty
    a.outbox.flush()
    # from here a's daemon is cut off (its cache frozen, its requests unanswered)
    a.registry.objects = _CutOff()  # type: ignore[assignment]
    theirs = _reclaimed_and_taken(api, 660)
    a.clock.advance(660)  # the same 11 minutes passed on a
    a.outbox.unanswered()
    _add_refused_or_elsewhere(a, theirs)


def test_a_block_the_cache_never_showed_is_leased_in_without_any_bound() -> None:
    """``_confirm`` returns at once when the cache does not show the block ("claimed a moment ago"), for ever: a node
    cut off right after its block's create (the create answered, the watch broken before its event) never confirms it.
    ``_lost`` cannot tell either (its GET goes unanswered). Past --block-ttl the controller reclaims the empty block,
    b claims the window, and a's next ADD leases an address b's pod holds."""
    api = FakeApi()
    a = Node(api, "a", live=False)
    a.clock.now = time.time()
    _one_block_at(a, "198.18.40.16")
    a.add()  # the block is claimed; a's informer never shows it (cut off from here)
    for rec in list(a.store.all_ips()):
        a.ipam.delete_ip(rec)
    a.outbox.flush()
    a.registry.objects = _CutOff()  # type: ignore[assignment]
    theirs = _reclaimed_and_taken(api, 700)
    a.clock.advance(700)
    a.outbox.unanswered()
    _housekeeping(a)  # a's reconcile round: its GET of the block is unanswered
    _add_refused_or_elsewhere(a, theirs)


def test_a_stale_return_request_is_acted_on_again_once_its_first_sighting_is_forgotten() -> None:
    """``_asked_fresh`` forgets a request first seen more than 2 * ASK_FRESH_S ago, in the same call that finds it
    stale; the next look at the same (unchanged) request takes it for new and fresh. In one round the first
    ``_asked_for`` forgets it and the second gives the block back: a request 250 s old, which its asker gave up on
    (it re-asks past ASK_FRESH_S), costs the owner its block, leases and all, with no node waiting for it (the
    request stays out whenever its withdrawal or the give-back failed, e.g. the API away)."""
    api = FakeApi()
    owner = Node(api, "owner")
    owner.add()
    (name,) = api.objs[BLOCK_KIND]
    api.patch_status(BLOCK_KIND, name, {"returnRequestedBy": "other", "returnRequestedAt": rfc3339(owner.clock())})
    assert owner.registry.asked(), "seen fresh"
    owner.clock.advance(130)
    assert not owner.registry.asked(), "stale past ASK_FRESH_S"
    _housekeeping(owner)
    assert name in api.objs[BLOCK_KIND]
    owner.clock.advance(120)  # 250 s after the request
    _housekeeping(owner)
    assert name in api.objs[BLOCK_KIND], "a request 250 s old (stale since 130 s) was acted on: block given back"


def test_the_renew_deadline_counts_from_before_a_slow_renewal_not_from_its_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``_elect`` stamps ``_renewed_at`` AFTER ``try_acquire`` returns, but the Lease's renewTime is written when the
    request is made. A renewal answered 9 s late (a slow API server) leaves the Lease renewed at t0 (a standby takes
    it at t0 + 15) while this replica counts from t0 + 9: still leading at t0 + 16 after a failed renewal (it stops
    only at t0 + 19). Two leaders for up to the renewal's latency (client-go's deadline runs from before the try)."""
    import ipamd.kube.controller as ctl_mod

    now = [1000.0]
    monkeypatch.setattr(ctl_mod, "time", SimpleNamespace(monotonic=lambda: now[0], time=time.time))
    api = FakeApi()
    ctl = controller(Cluster(api))
    answers: list[Any] = []

    def try_acquire() -> bool:
        answer = answers.pop(0)
        return bool(answer())

    def slow_success() -> bool:  # the Lease written with renewTime t0, answered 9 s later
        now[0] += 9.0
        return True

    def away() -> bool:
        raise ApiException(status=503, reason="ServiceUnavailable")

    ctl.elector = SimpleNamespace(try_acquire=try_acquire, duration_s=15)  # type: ignore[assignment]
    answers.append(slow_success)
    ctl._elect()
    assert ctl.leading
    now[0] = 1000.0 + 16.0  # past the Lease's duration from its renewTime: a standby may lead by now
    answers.append(away)
    with pytest.raises(ApiException):
        ctl._elect()
    assert not ctl.leading, "still leading 16 s after the Lease's renewTime (its duration is 15 s)"


def test_a_block_the_controller_makes_again_skips_no_per_address_lease_made_while_it_was_gone() -> None:
    """``_delete_blocks`` deletes block A of a silent node, then finds block B renewed (409): the daemon is back, and
    ``_restore_blocks`` makes A again. In between, A's window was per-address space: node c leased .17 there (its
    ``_claimed_meanwhile`` GET found no block). The restored A skips the checks a block's claim makes
    (``_exclude_leased``, a quorum list of the window's lease objects): with its lease informer a moment behind its
    block informer (as ``_exclude_leased``/``_free_excluded`` assume it may be), the daemon back leases .17 inside A
    with no request while c's pod holds it."""
    from ipamd.ipam.allocator import to_int
    from ipamd.ipam.blocks import Block
    from ipamd.kube.blocks import block_body
    from ipamd.kube.leases import KIND as LEASE_KIND

    big = "IPAddressPool/ns/big"
    api = FakeApi()
    back = Node(api, "back", live=False)
    back.clock.now = time.time()
    _one_block_at(back, "198.18.40.16")  # A
    back.add()
    for rec in list(back.store.all_ips()):
        back.ipam.delete_ip(rec)  # A empty
    back.outbox.flush()
    second = Block(big, to_int("198.18.40.32"), 16, "back")  # B
    api.create(BLOCK_KIND, block_body(second))
    back.registry.mine[(big, second.first)] = second
    back.cache.sync()
    back.add()  # its informer shows both blocks as its own
    for rec in list(back.store.all_ips()):
        back.ipam.delete_ip(rec)
    back.outbox.flush()
    back.cache.sync()
    names = list(api.objs[BLOCK_KIND])
    first_name, second_name = names
    silence(api, 3600)
    c = Node(api, "c", claim=False)
    c.store.set_cursor(big, to_int("198.18.40.16"))
    theirs: list[str] = []
    delete = api.delete

    def delete_as_c_leases_and_back_renews(kind: str, name: str, namespace: str = "",
                                           resource_version: str = "") -> None:
        delete(kind, name, namespace, resource_version)
        if kind == BLOCK_KIND and name == first_name:
            theirs.append(c.add())  # A's window is free: leased per address by c
            api.patch_status(BLOCK_KIND, second_name, {"renewTime": rfc3339(time.time())},
                             field_manager="plexus-renewal")  # the daemon back renews B

    api.delete = delete_as_c_leases_and_back_renews  # type: ignore[method-assign]
    controller(Cluster(api)).reclaim_blocks()
    api.delete = delete  # type: ignore[method-assign]
    assert theirs == ["198.18.40.17"]
    assert first_name in api.objs[BLOCK_KIND], "made again for the node back"
    back.cache.sync()
    back.cache._snapshot[LEASE_KIND] = []  # its lease informer a moment behind its block informer
    back.store.set_cursor(big, to_int("198.18.40.16"))
    mine = back.add()
    assert mine not in theirs, f"the node back leased {mine} in the block made again, which c's pod holds"


def test_a_daemon_restarted_right_after_claiming_a_block_leases_in_it_with_the_api_away() -> None:
    """A block has no ``renewTime`` until its first renewal, which came with the reconcile round's, up to a minute
    after the claim; a daemon restarted meanwhile with the API server away (its caches seeded from the snapshot)
    could not confirm the block by its renewal nor by the API server, and answered code 11 with free addresses in
    its own block (found in review). The first renewal is owed with the claim."""
    api = FakeApi()
    a = Node(api, "a")
    a.clock.now = time.time()
    a.add()  # claims the block
    for rec in list(a.store.all_ips()):
        a.ipam.delete_ip(rec)  # its pod goes; the block stays (empty for less than idle_s)
    a.outbox.flush()
    (block,) = api.objs[BLOCK_KIND].values()
    assert block.get("status", {}).get("renewTime"), "renewed with its claim"
    again = Node(api, "a")  # the daemon started again, its caches as the snapshot had them; the API server away
    again.clock.now = a.clock.now + 30
    again.cache.sync()
    again.registry.objects = _CutOff()  # type: ignore[assignment]
    again.outbox.unanswered()
    got = again.add()
    assert to_int(got) in next(iter(again.registry.blocks(pool_of(again.source, "big")))), got

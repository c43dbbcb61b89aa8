"""Node address blocks over time (claim, renew, return, asked-for return, reclaim) with the timings and clocks of a
real cluster: a claim racing a return, a node cut off from the API server, clocks minutes apart (each found in review,
failing on the code before its fix)."""

from __future__ import annotations

import threading
import time
from typing import Any

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

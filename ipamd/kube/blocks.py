"""Node address blocks in a cluster: IPAddressBlock objects, and leasing inside them with no API request.

A node claims a block of a pool with one create-if-absent of an IPAddressBlock (cluster-scoped, named from the pool
and the window: ``blk-198-18-0-16-<hash of the pool>``), and from then on it alone leases the block's addresses: an
allocation there is a store transaction, and its IPAddressLease object is owed to the outbox (made in the
background, and made the block owner's if another node's stray object stands in the way). Other nodes never pick an
address in a block that is not theirs; a Static address there is the owner's to lease (every node leases every Static
IPAddress, the owner included), and another node takes it only once the owner's lease object says it is the
Static's.

Where blocks and per-address leases meet, the order of two API writes decides and both sides check what the other
may have done before them: a node that leased an address by itself reads the block that could hold it (a GET by
name) and lets go if another node claimed that block; a node that claimed a block lists the pool's lease objects (a
quorum read) and never hands out an address one of them holds. Whichever write came first, one of the two sees the
other, so an address is never held twice.

A node claims its next block before the last one runs out (in the background, when fewer than a quarter of its
addresses are free), renews its blocks' ``status.renewTime``, and returns a block that stayed empty for
``idle_s`` (a pool's last block of the node only after ``last_idle_s``: the node's next pod of the pool leases with
no request meanwhile, and a node that stopped using a pool does not keep a block of it for ever); the controller
reclaims the blocks of a node whose daemon stopped renewing and which runs no pod.

A node that finds no free address outside other nodes' blocks asks the owner of the block with the most free addresses
to return it (``status.returnRequestedBy``/``returnRequestedAt``, one status patch) and waits for it to go. The owner
returns it even with addresses leased inside: it stops leasing there without an API request, makes every lease object
of the window it still owes, and deletes the block; its leases there live on as per-address leases (their objects
are what per-address leasing checks), and the window is per-address space for every node from then on. So the free
addresses of a pool are never stranded in the blocks of nodes that do not need them.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Container, Hashable, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, cast

from kubernetes.client.exceptions import ApiException

from cni.errors import AddressConflict, TryAgainLater
from ipamd.ipam.allocator import family_of, to_int, to_text
from ipamd.ipam.blocks import (
    BLOCK_SIZE,
    Block,
    addresses_in,
    block_name,
    first_address,
    free_in,
    free_window,
    may_claim,
    uses_blocks,
    window_of,
    windows,
)
from ipamd.kube.api_calls import serving
from ipamd.kube.client import CALL_TIMEOUT
from ipamd.kube.client import REQUEST_TIMEOUT as LIST_TIMEOUT  # a pool's whole list: the client's deadline, on a call too
from ipamd.kube.errors import api_unavailable_is_11, reason_of, status_of, transient
from ipamd.kube.heartbeat import RENEWAL_MANAGER, heartbeat_body
from ipamd.kube.heartbeat import TARGET_PREFIX as HEARTBEAT_TARGET
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import (
    NODE_LABEL,
    POOL_LABEL,
    KubeLeaseRegistry,
    holder_of_owed,
    lease_body,
    lease_name,
    pool_label,
)
from ipamd.kube.outbox import NotYet, Outbox
from ipamd.kube.resources import RESOURCES
from ipamd.model.objects import AddressPool
from ipamd.model.timefmt import parse_rfc3339, rfc3339
from ipamd.store.records import LeaseRecord

if TYPE_CHECKING:
    from ipamd.kube.source import KubernetesSource
    from ipamd.store.protocols import LeaseStore

log = logging.getLogger(__name__)
KIND = "IPAddressBlock"
RENEW_S = 60.0  # a block's status.renewTime is renewed this often (the controller's --block-ttl is far longer)
RETURN_WAIT_S = 3.0  # an allocation waits this long for the block it asked another node to return
SEEN_S = 5.0  # another node's block read from the API server counts this long, unless the cache shows the window
ASK_FRESH_S = 120.0  # a request to return a block is acted on this long (the node that asked retries past that)
#: How far the clock of a node asking for a block may be off its owner's: a request is timed from when the owner first
#: saw it, unless its own time is older than this too (one left behind long ago)
ASK_SKEW_S = 600.0
OWED_AGAIN_S = 600.0  # a missing lease object made again is not made again before this (``owe_missing``)
#: A block of this node whose renewal the informer's cache has not shown for this long is leased in only once the API
#: server says it is still ours: below the controller's quickest reclaim (three renewals missed,
#: ``ipamd.kube.reclaim.GONE_GRACE_S``), so that a node cut off from the API server (its watch broken) never leases in
#: a block reclaimed meanwhile and claimed by another node. Through an outage, a node serves ADD from its blocks for
#: this long after its last renewal; then ADD answers code 11 until the API server answers again.
UNCONFIRMED_S = 3 * RENEW_S - 30.0


def _poll(done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def parse_block(obj: dict[str, Any]) -> Block | None:
    spec = _spec(obj)
    try:
        return _block(str(spec["pool"]), str(spec["cidr"]), str(spec["node"]))
    except (KeyError, ValueError):
        return None


@functools.lru_cache(maxsize=4096)
def _block(pool: str, cidr: str, node: str) -> Block:
    """A block's fields parsed once: a node reads its own blocks on every allocation."""
    network, _, bits = cidr.partition("/")
    return Block(pool, to_int(network), 1 << (32 - int(bits)), node)


def return_request(obj: dict[str, Any], node: str) -> tuple[str, str]:
    """Who asked this block's owner (``node``) to return it and when (by the asking node's clock), or ("", "")."""
    status = obj.get("status")
    if not isinstance(status, dict):
        return "", ""
    by, at = str(status.get("returnRequestedBy") or ""), str(status.get("returnRequestedAt") or "")
    return ("", "") if not by or by == node or not at else (by, at)


def return_asked_by(obj: dict[str, Any], now: float, node: str) -> str:
    """The node that asked this block's owner (``node``) to return it, if the request is fresh by ``now`` (the asking
    node's own look at its request: its clock wrote the time); "" otherwise."""
    by, at = return_request(obj, node)
    try:
        return by if by and now - parse_rfc3339(at) <= ASK_FRESH_S else ""
    except ValueError:
        return ""


class NotRecordedYet(NotYet):
    """An owed lease object of an in-block claim whose transaction has not committed yet: made on a later pass."""


def _by_pool(obj: dict[str, Any]) -> Iterable[Hashable]:
    block = parse_block(obj)
    return [block.pool] if block else []


def _by_node(obj: dict[str, Any]) -> Iterable[Hashable]:
    block = parse_block(obj)
    return [block.node] if block else []


def _by_window(obj: dict[str, Any]) -> Iterable[Hashable]:
    block = parse_block(obj)
    return [(block.pool, block.first)] if block else []


BLOCK_INDEXERS: dict[str, Callable[[dict[str, Any]], Iterable[Hashable]]] = {
    "pool": _by_pool, "node": _by_node, "window": _by_window}


def block_body(block: Block) -> dict[str, Any]:
    return {"apiVersion": RESOURCES[KIND].api_version, "kind": KIND,
            "metadata": {"name": block.name, "labels": {NODE_LABEL: block.node, POOL_LABEL: pool_label(block.pool)}},
            "spec": {"pool": block.pool, "cidr": block.cidr, "node": block.node}}


class _Taken:
    """An address of a pool another node holds: a lease object, another node's block, or what this node's check
    after claiming a block found leased inside it. Inside this node's own blocks its store is the truth (the cache
    may still show lease objects it let go of), so only another node's lease object counts there."""

    def __init__(self, registry: BlockRegistry, pool: str) -> None:
        self.registry, self.pool = registry, pool

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, int):
            return False
        r = self.registry
        if ip in r.excluded.get(self.pool, {}):
            return True
        block = r.block_at(self.pool, ip)
        if block is not None and block.node == r.node_name:
            # ours: this node's store says what it holds; a lease object of ours it no longer holds is a mirror on its
            # way out (its delete owed), and only another node's object counts (a Static's, granted here)
            return any(((o.get("metadata") or {}).get("labels") or {}).get(NODE_LABEL) != r.node_name
                       or r.handed_back(o) for o in r.source.by_index(LEASE_KIND, "address", (self.pool, ip)))
        return block is not None or r.source.indexed(LEASE_KIND, "address", (self.pool, ip))


def _version(obj: Any) -> int:
    """An object's resourceVersion as a number (0 when it has none): within one etcd, later writes have larger ones."""
    try:
        return int(((obj if isinstance(obj, dict) else {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class BlockRegistry(KubeLeaseRegistry):
    """The lease registry of a node that leases in blocks where a pool is large enough, per address elsewhere
    (everywhere with ``claim_blocks=False``: ``--address-blocks off``, still respecting the blocks other nodes hold)."""

    def __init__(self, source: KubernetesSource, node_name: str, outbox: Outbox, size: int = BLOCK_SIZE,
                 idle_s: float = 300.0, last_idle_s: float = 1800.0, clock: Callable[[], float] = time.time,
                 spawn: Callable[[Callable[[], None]], None] | None = None, claim_blocks: bool = True,
                 wait: Callable[[Callable[[], bool], float], bool] = _poll, heartbeat_namespace: str = "",
                 leases: LeaseStore | None = None, server_now: Callable[[], float] = time.time) -> None:
        super().__init__(source, node_name, outbox, server_now)
        # what this node holds, which an owed lease object's write looks at before it takes an object over (the
        # node's one store holds its leases and its outbox: the outbox's, unless told otherwise)
        self.leases: LeaseStore = leases if leases is not None else cast("LeaseStore", outbox.store)
        self.heartbeat_namespace = heartbeat_namespace  # where this node's heartbeat Lease is renewed ("": none)
        self.size, self.idle_s, self.clock, self.claims_blocks = size, idle_s, clock, claim_blocks
        self.last_idle_s = last_idle_s
        self.spawn = spawn or (lambda run: threading.Thread(target=run, name="grow-block", daemon=True).start())
        self.wait = wait  # (condition, timeout) -> whether it came true: how an allocation waits for a block to go
        self.mine: dict[tuple[str, int], Block] = {}  # claimed here, before the informer shows them
        # slot -> name of the block of ``mine`` the informer has shown: from then on the cache's word is taken, so a
        # delete of it (the controller's reclaim) stops leasing in it at once, not at the next round's ``_lost``
        self._shown: dict[tuple[str, int], str] = {}
        self.excluded: dict[str, dict[int, str]] = {}  # pool -> address -> holder found inside this node's new blocks
        # other nodes' blocks read from the API server (a per-address lease's check) before the cache shows them, so
        # that the next picks skip their whole window, not one address at a time: slot -> (block, when read)
        self.seen: dict[tuple[str, int], tuple[Block, float]] = {}
        self._growing: set[str] = set()
        self._grow_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._empty_since: dict[tuple[str, int], float] = {}
        self._owed_again: dict[str, float] = {}  # lease object name -> when ``owe_missing`` last made it again
        # not ours to lease in although the cache may show them so: given back, or claimed and not yet checked
        self.returned: set[tuple[str, int]] = set()
        # told before a block of this node is deleted (given back, returned idle): the daemon's informer snapshot
        # drops it at once (``ipamd.kube.snapshot``), or a daemon restarted with the API away would lease in it again
        self.on_return: Callable[[], None] = lambda: None
        self._checking: set[tuple[str, int]] = set()
        self._renewed = 0.0
        # in-block claims between their check that the block is still ours and their lease object owed: a block being
        # given back waits for them, so that no lease object of its window is owed after it is gone
        self._inflight: dict[tuple[str, int], int] = {}
        self._settled = threading.Condition(self._lock)
        self._confirmed: dict[tuple[str, int], float] = {}  # slot -> when the API server last said it is ours
        # (block, by, at) -> when this node first and last saw that request on the block
        self._asks_seen: dict[tuple[str, str, str], tuple[float, float]] = {}
        self._uids: dict[tuple[str, int], str] = {}  # slot -> the uid of this node's block there, as first seen
        # slots of this node's blocks known to have passed the checks after their claim (``_checked``; ``_confirm``)
        self._cleared: set[tuple[str, int]] = set()
        outbox.senders["block_lease"] = self._put_lease

    # -- reading ------------------------------------------------------------------------------------
    def block_at(self, pool: str, ip: int) -> Block | None:
        first = window_of(ip, self.size)
        cached = [b for b in (parse_block(o) for o in self.source.by_index(KIND, "window", (pool, first)))
                  if b is not None]
        mine = self.mine.get((pool, first))
        if mine is not None and not self._seen_mine(mine, cached):
            return mine  # claimed here a moment ago: the cache does not show it yet
        for block in cached:
            if block.node == self.node_name and (pool, first) in self.returned:
                return None  # ours no more: being deleted
            return block
        seen = self.seen.get((pool, first))
        return seen[0] if seen is not None and self.clock() - seen[1] < SEEN_S else None

    def blocks(self, pool: AddressPool) -> list[Block]:
        key = pool.meta.key
        cached = [b for b in (parse_block(o) for o in self.source.by_index(KIND, "node", self.node_name))
                  if b is not None and b.pool == key]
        found = {b.first: b for b in cached if (key, b.first) not in self.returned}
        with self._lock:
            found.update({first: b for (p, first), b in self.mine.items()
                          if p == key and not self._seen_mine(b, cached)})
        return [found[k] for k in sorted(found)]

    def _seen_mine(self, block: Block, cached: list[Block]) -> bool:
        """Whether the informer has shown this block claimed here (now, or before: then its cache entry's absence
        means it was deleted)."""
        slot = (block.pool, block.first)
        if any(b.name == block.name and b.node == self.node_name for b in cached):
            self._shown[slot] = block.name
        return self._shown.get(slot) == block.name

    def in_blocks(self, pool: AddressPool) -> bool:
        return self.claims_blocks and uses_blocks(pool, self.size)

    def taken_elsewhere(self, pool: str) -> Container[int]:
        return _Taken(self, pool)

    # -- claiming -----------------------------------------------------------------------------------
    def claim(self, lease: LeaseRecord, exact: bool = False) -> bool:
        block = self.block_at(lease.pool, lease.ip)
        if block is not None and block.node == self.node_name:
            self._confirm(block)  # (first: a block made again has what is leased in it excluded here)
            found = self.excluded.get(lease.pool, {}).get(lease.ip)
            if found is not None and found != lease.holder:
                # leased by itself before this block was claimed: not ours to give; but a Static adopts it once it is
                # quarantined (or gone), as it does per address (its object's create, or its adoption, decides)
                if not exact or not super().claim(lease, exact):
                    return False
                with self._lock:
                    self.excluded.get(lease.pool, {}).pop(lease.ip, None)
                return True
            if self._foreign(lease):
                return False  # the same, as the cache shows it (what was excluded is not kept across a restart)
            if self._claim_inside(lease):
                return True  # ours alone to lease: no API request
            block = self.block_at(lease.pool, lease.ip)  # given back just now: leased per address from here on
            if block is not None and block.node == self.node_name and self._claim_inside(lease):
                return True  # kept after all (its lease objects could not be made): ours still
        if block is not None:
            return self._granted(lease, block)
        if not self.outbox.owes(f"{LEASE_KIND}/{lease_name(lease.pool, lease.address)}") and \
                self._ours_already(lease):
            return True  # (with a write of it owed, its let-go, the cache is not to be trusted: claimed anew)
        won = super().claim(lease, exact)
        # blocks are IPv4 only (windows of a /64 cannot be listed): no block could hold an IPv6 address. Any IPv4
        # address could, whatever this node's view of the pool: another node's view may be wider (a pool widened past
        # the size for blocks, or narrowed below it, reaches informers at different times), and two inline ranges of
        # one network_name share one pool key, one leased in blocks, the other per address
        if won and family_of(lease.ip) == 4 and self._in_anothers_block(lease):
            self.let_go(lease)  # only what this claim made ours: the block's owner may hold the same Static
            return False
        return won

    def publish(self, lease: LeaseRecord) -> None:
        """The lease object of an address of this node's block is owed, made after the call; one whose holder outlives
        its pods is made now: when the holder's next pod starts on another node, that node looks its address up by
        holder (``held_by``), and would lease it another one while the object waits (0.5-2 s, longer in backoff).
        Unanswered, it stays owed and the call goes on: the pod starts, and a pod of the holder's started elsewhere
        before the write is made may get another address (never the same one twice)."""
        target = f"{LEASE_KIND}/{lease_name(lease.pool, lease.address)}"
        if self.block_at(lease.pool, lease.ip) is None or not self.outbox.owes(target) or self.outbox.api_away():
            return  # leased by itself (its object made by the claim), made already, or the API known away
        try:
            made = self.outbox.flush_target(target)
        except Exception as exc:  # the store: the write stays owed, and the call that leased it goes on
            log.warning("making the lease object of %s now: %s", lease.address, exc)
            made = False
        if not made:
            log.warning("the lease object of %s (%s, held by %s) could not be made now: owed", lease.address,
                        lease.pool, lease.holder)

    def _foreign(self, lease: LeaseRecord) -> bool:
        """Another node's lease object of another holder at this address of our block (a per-address lease made before
        the block, or one its node is letting go of): an Auto pick skips it (``_Taken``), an exact address waits."""
        return any(_spec(o).get("holder") not in (None, "", lease.holder) and
                   (((o.get("metadata") or {}).get("labels") or {}).get(NODE_LABEL) != self.node_name
                    or self.handed_back(o))
                   for o in self.source.by_index(LEASE_KIND, "address", (lease.pool, lease.ip)))

    def handed_back(self, obj: dict[str, Any]) -> bool:
        """Whether this node owes the hand-back of a lease object it took up (``take_up``) and did not record: it looks
        this node's but is the node's it came from, whose holder keeps the address (a daemon killed between the take-up
        and its transaction hands it back once its outbox runs)."""
        name = (obj.get("metadata") or {}).get("name")
        return bool(name) and any(e.op == "hand_back" for e in self.outbox.owed(f"{LEASE_KIND}/{name}"))

    def _confirm(self, block: Block) -> None:
        """Go on leasing in this node's ``block`` only while it is surely ours: claimed or renewed lately, by this
        node's clock (``UNCONFIRMED_S``; the renewal as the cache shows it), or the API server read saying so; else
        code 11. A block the cache shows made again (another uid: the controller made it again after deleting it from
        a node it found back midway) is looked at as a new claim is: what was leased per address in its window
        meanwhile is not handed out again."""
        slot = (block.pool, block.first)
        now = self.clock()
        shown = next((o for o in self.source.by_index(KIND, "window", slot)
                      if (b := parse_block(o)) is not None and b.node == self.node_name), None)
        uid = str(((shown or {}).get("metadata") or {}).get("uid") or "")
        if uid and self._uids.setdefault(slot, uid) != uid:
            with api_unavailable_is_11():
                self._exclude_leased(block)
            self._uids[slot] = uid
        if slot not in self._cleared:
            if shown is not None and not (shown.get("status") or {}).get("renewTime") and \
                    not self.outbox.owes(f"{KIND}/{block.name}"):
                # made by this node but never cleared by the checks after a claim (its create's answer lost, or the
                # daemon killed before them; its first renewal is owed only once they pass): what lease objects hold
                # inside is read from the API server before anything is leased in it. (Not the cap: addresses may be
                # leased in it already, and a block over the cap only costs another node a window.)
                with api_unavailable_is_11():
                    self._exclude_leased(block)
            self._cleared.add(slot)
        if now - self._confirmed.get(slot, float("-inf")) < UNCONFIRMED_S:
            return  # claimed or known ours lately
        renewed = ((shown or {}).get("status") or {}).get("renewTime")  # (this node's clock wrote it)
        age = now - parse_rfc3339(str(renewed)) if renewed else float("inf")
        if 0 <= age < UNCONFIRMED_S:
            self._confirmed[slot] = now - age  # (the next claims need not parse it again until then)
            return
        why = (f"this node's address block {block.cidr} of {block.pool} was last seen renewed "
               f"{'never' if age == float('inf') else f'{age:.0f} s ago'}: the controller may have reclaimed it since, "
               "and only the Kubernetes API can say")
        if self.outbox.api_away():
            raise TryAgainLater(why, "the Kubernetes API is not answering")
        try:
            with api_unavailable_is_11():
                current = parse_block(self._get_block(block.name))
        except TryAgainLater as exc:
            raise TryAgainLater(why, exc.details) from None
        if current is None or current.node != self.node_name:
            with self._lock:
                self.mine.pop(slot, None)
                self.returned.add(slot)  # (until the cache catches up: no more reads of it on every pick)
            log.warning("address block %s (%s) of %s is no longer this node's: its cache lags behind the API server",
                        block.name, block.cidr, block.pool)
            raise TryAgainLater(f"this node's address block {block.cidr} of {block.pool} was reclaimed while the node "
                                "could not reach the Kubernetes API; its cache catches up", "informer")
        self._confirmed[slot] = now

    def _get_block(self, name: str) -> dict[str, Any]:
        """A block as the API server has it now ({} when there is none)."""
        try:
            return dict(self.objects.get(KIND, name))
        except Exception as exc:
            if status_of(exc) == 404:
                return {}
            raise

    def _claim_inside(self, lease: LeaseRecord) -> bool:
        """Owe the lease object of an address in this node's block; False when the block is being given back."""
        slot = (lease.pool, window_of(lease.ip, self.size))
        with self._lock:
            if slot in self.returned:
                return False
            self._inflight[slot] = self._inflight.get(slot, 0) + 1
        self._empty_since.pop(slot, None)  # used: empty again from the next round that finds it so
        try:
            name = lease_name(lease.pool, lease.address)
            self.made.pop(name, None)  # made by the owed write below: a let-go of it goes by a checked delete
            body = lease_body(lease.pool, lease.address, lease.network, lease.holder or "", lease.ttl, self.node_name)
            target = f"{LEASE_KIND}/{name}"
            with self.outbox.store.transaction():  # another holder's owed write stays: its claim may be the one kept
                self.outbox.drop_where(target, "block_lease", lambda owed: holder_of_owed(owed) == (lease.holder or ""))
                self.outbox.add(target, "block_lease", {"object": body})
        finally:
            with self._lock:
                self._inflight[slot] -= 1
                if not self._inflight[slot]:
                    del self._inflight[slot]
                    self._settled.notify_all()
        return True

    def drop_unrecorded(self) -> int:
        """At the daemon's start, before any call: the owed lease objects of in-block claims whose process was killed
        before the transaction that records them (``_claim_inside`` owes the object first), which the store does not
        hold the address for that holder. Made, such an object would look like a copy of the store to this node
        (``_Taken``), which hands the address out again in its block, and like the holder's lease to every other
        node, whose next pod of that holder takes it up (``held_by``). How many."""
        dead = [e.seq for e in self.outbox.of_op("block_lease") if not self._recorded(e.body)]
        self.outbox.forget(dead)
        if dead:
            log.info("dropped %d owed lease objects of address claims a restart cut short", len(dead))
        return len(dead)

    def _recorded(self, owed: dict[str, Any]) -> bool:
        """Whether this node's store holds the address of an owed ``block_lease`` for the holder it is written for."""
        spec = _spec(owed.get("object") or {})
        try:
            held = self.leases.lease_at(str(spec["pool"]), to_int(str(spec["ip"])))
        except (KeyError, ValueError):
            return False  # not a write this build could make
        return held is not None and (held.holder or "") == holder_of_owed(owed)

    def _ours_already(self, lease: LeaseRecord) -> bool:
        """A lease object of this address for the same holder, made before any block was claimed over it (a Static
        another node leases too). Read from the API server once the cache shows one: the cache may not show its
        delete yet (this holder's let-go, made a moment ago), and an address leased on a stale object has none."""
        if not lease.holder or not any(_spec(o).get("holder") == lease.holder for o in
                                       self.source.by_index(LEASE_KIND, "address", (lease.pool, lease.ip))):
            return False
        with api_unavailable_is_11():
            current = self._read(lease_name(lease.pool, lease.address))
        if current is None or _spec(current).get("holder") != lease.holder or self._another_nodes_client(current):
            return False  # gone, or another holder's now: claimed anew
        with api_unavailable_is_11():
            current = self.finish_adoption(current)
        if current is None:
            return False  # changed since it was read: claimed anew
        md = current.get("metadata") or {}  # what a let-go of this claim may delete: only this node's own
        self.made[lease_name(lease.pool, lease.address)] = str(md.get("resourceVersion") or "") \
            if (md.get("labels") or {}).get(NODE_LABEL) == self.node_name else None
        return True

    def _granted(self, lease: LeaseRecord, block: Block) -> bool:
        """An address in another node's block: ours once it is leased to the same holder (by its owner; or made the
        node's whose pod uses it, a Static's, ``keep_in_use``)."""
        held = [_spec(obj).get("holder") for obj in self.source.by_index(LEASE_KIND, "address", (lease.pool, lease.ip))]
        if lease.holder in held:
            self.made[lease_name(lease.pool, lease.address)] = None  # the owner's: never this node's to delete
            return True
        others = [str(h) for h in held if h]
        if others:  # its owner leased it to someone else before the IPAddress asked: it never will to this one
            raise AddressConflict(f"{lease.address} is already leased to {others[0]} (in the address block of node "
                                  f"{block.node})", f"IPAddressBlock {block.name}")
        if lease.holder and lease.holder.startswith(("IPAddress/", "ClusterIPAddress/")):
            raise TryAgainLater(f"{lease.address} lies in the address block of node {block.node}, which leases it",
                                f"IPAddressBlock {block.name}")
        raise AddressConflict(f"{lease.address} lies in the address block of node {block.node}: an exact address "
                              "asked for here must lie outside other nodes' blocks (or be a Static IPAddress)",
                              f"IPAddressBlock {block.name}")

    def _in_anothers_block(self, lease: LeaseRecord) -> bool:
        """``_claimed_meanwhile``, with the claim let go when the check fails (the API away): left standing, its
        object would be the holder's to the runtime's retry (``held_by``, then ``take_up``, which checks no block),
        and the block's owner, whose cache does not show it yet, may hand the same address out in its block. The owed
        delete also hides the object from ``held_by`` until it is made."""
        try:
            return self._claimed_meanwhile(lease)
        except Exception:
            self.let_go(lease)
            raise

    def _claimed_meanwhile(self, lease: LeaseRecord) -> bool:
        """After leasing an address by itself: has another node claimed the block that could hold it (its create
        came before ours, and our cache did not show it yet)?"""
        first = window_of(lease.ip, self.size)
        with api_unavailable_is_11():
            try:
                obj = self.objects.get(KIND, block_name(lease.pool, first))
            except Exception as exc:
                if status_of(exc) == 404:
                    return False
                raise
        block = parse_block(obj)
        if block is None or block.node == self.node_name:
            return False
        with self._lock:
            self.seen[(lease.pool, first)] = (block, self.clock())
        return True

    def grow(self, pool: AddressPool) -> Block | None:
        """Claim one more block of ``pool`` (one create); None when the pool has no free window or is too small. Calls
        side by side on this node claim one block: the later ones take the block the first one claimed."""
        key = pool.meta.key
        if not self.in_blocks(pool):
            return None
        had = len(self.blocks(pool))
        with self._lock:
            lock = self._grow_locks.setdefault(key, threading.Lock())
        # a CNI call waits for a claim in the background no longer than for its own request (that one may be waiting
        # out a hung API server's background deadline)
        if not lock.acquire(timeout=CALL_TIMEOUT[1] if serving() else -1):
            raise TryAgainLater(f"pool {key}: this node's next address block is being claimed, and the Kubernetes API "
                                "is slow to answer", "the Kubernetes API")
        try:
            mine = self.blocks(pool)
            if len(mine) > had:
                return mine[-1]  # claimed while this call waited
            return self._grow(pool)
        finally:
            lock.release()

    def _grow(self, pool: AddressPool) -> Block | None:
        key = pool.meta.key
        claimed = {(b.first) for b in (parse_block(o) for o in self.source.by_index(KIND, "pool", key)) if b}
        claimed |= {first for (p, first) in self.mine if p == key}
        if not may_claim(pool, len(claimed), self.size):
            return None  # half the pool is in blocks: the rest is leased per address
        lost: set[int] = set()

        def busy(ip: int) -> bool:
            first = window_of(ip, self.size)
            return (first in lost or self.block_at(key, ip) is not None
                    or self.source.indexed(LEASE_KIND, "address", (key, ip)))

        # nodes start their search at different windows, so that racing nodes seldom want the same one
        spread = int(hashlib.sha1(self.node_name.encode()).hexdigest()[:8], 16) % max(1, pool.size // self.size)
        start = first_address(pool) + spread * self.size
        for _ in range(16):
            first = free_window(pool, busy, self.size, start)
            if first is None:
                return None
            block = Block(key, first, self.size, self.node_name)
            with api_unavailable_is_11():
                try:
                    made = self.objects.create(KIND, block_body(block))
                except Exception as exc:
                    if status_of(exc) != 409:
                        raise
                    lost.add(first)  # another node's since our cache last saw the pool
                    continue
                if not self._checked(block, pool, _version(made)):
                    return None
            log.info("claimed address block %s (%s) of %s", block.name, block.cidr, key)
            return block
        return None

    def _checked(self, block: Block, pool: AddressPool, made_at: int = 0) -> bool:
        """A block just created becomes ours to lease in only once the checks after its claim are done (the cap, what
        is leased inside); until then, and for good if they fail or it is given back, the cache's view of it as ours is
        ignored (``returned``), so no allocation uses a block its checks have not cleared."""
        slot = (block.pool, block.first)
        with self._lock:
            self.returned.add(slot)
            self._checking.add(slot)
        try:
            if self._over_the_cap(block, pool, made_at):
                return False
            self._exclude_leased(block)
        except Exception:
            try:
                self.objects.delete(KIND, block.name)
            except Exception as exc:  # left to the controller's reclaim; never used by this process
                log.warning("giving back address block %s: %s", block.name, reason_of(exc))
            raise
        finally:
            with self._lock:
                self._checking.discard(slot)
        with self._lock:
            self.returned.discard(slot)
            self.mine[slot] = block
            self._shown.pop(slot, None)
            self._cleared.add(slot)
        self._confirmed[slot] = self.clock()  # claimed now: ours for UNCONFIRMED_S at least, cache or not
        self._uids.pop(slot, None)  # (taken from the cache once it shows it)
        # its first renewal owed now (its create cannot write the status): a daemon restarted while the API server
        # is away leases only in blocks whose renewal its snapshot shows. (Other nodes' checks of the cap count a
        # block with a status as made before theirs, whatever its version: ``_over_the_cap``.)
        self._owe_renewal(block)
        return True

    def _owe_renewal(self, block: Block) -> None:
        """Owe ``block``'s renewal (superseding one owed before), sent with the renewals' field manager: the controller
        times a node's silence by the API server's stamp of that manager's writes, not by the node's clock."""
        self.outbox.add(f"{KIND}/{block.name}", "patch_status", {
            "kind": KIND, "name": block.name, "status": {"renewTime": rfc3339(self.clock())},
            "fieldManager": RENEWAL_MANAGER}, supersede=True)

    def _over_the_cap(self, block: Block, pool: AddressPool, made_at: int = 0) -> bool:
        """Nodes that claimed blocks of one pool at the same time each saw the cap kept: the API server's order of the
        creates decides, and a block beyond half of the pool's windows is given back at once. That order is the
        creation time, then, within its second, the version each create made (``made_at``: our create's answer). An
        object's version now is its create's only while nothing was written to it since: a block with a status (its
        renewal, a request to return it) may have been made before ours whatever its version says, and counts as
        before ours (found in review: an old block renewed during the check, then a block's first renewal landing
        between another node's create and its check, each let 9 blocks stand for a cap of 8). Two nodes may then
        both give back; never both keep."""
        items = self.objects.lister(KIND)(label_selector=f"{POOL_LABEL}={pool_label(block.pool)}",
                                          _request_timeout=LIST_TIMEOUT).get("items") or []
        ours = next((o for o in items if (o.get("metadata") or {}).get("name") == block.name), None)
        if ours is None:
            return False
        created = str((ours.get("metadata") or {}).get("creationTimestamp") or "")
        made_at = made_at or _version(ours)

        def before_ours(o: dict[str, Any]) -> bool:
            md = o.get("metadata") or {}
            when = str(md.get("creationTimestamp") or "")
            if md.get("name") == block.name or when != created:
                return when < created
            return _version(o) < made_at or bool(o.get("status"))

        if sum(1 for o in items if before_ours(o)) < len(windows(pool, self.size)) // 2:
            return False
        self.objects.delete(KIND, block.name)
        log.info("gave back address block %s of %s at once: half the pool was claimed in blocks meanwhile",
                 block.name, block.pool)
        return True

    def _exclude_leased(self, block: Block) -> None:
        """What lease objects hold inside a block just claimed, read from the API server itself (a quorum read:
        a per-address lease created before our block is in it, whatever our cache says)."""
        items = self.objects.lister(LEASE_KIND)(label_selector=f"{POOL_LABEL}={pool_label(block.pool)}",
                                                _request_timeout=LIST_TIMEOUT)
        # the whole window, not its ranges alone: a Static (or an exact address) outside them leased per address
        # before the block is in it too, and would otherwise be leased again inside it with no request (found in
        # review: two pods held it)
        window = set(block.window)
        inside = {to_int(str(_spec(o)["ip"])): str(_spec(o).get("holder") or "") for o in (items.get("items") or [])
                  if _spec(o).get("ip") and to_int(str(_spec(o)["ip"])) in window}
        if inside:
            with self._lock:
                self.excluded.setdefault(block.pool, {}).update(inside)

    def grow_soon(self, pool: AddressPool, taken: Callable[[int], bool]) -> None:
        """Claim the next block in the background when fewer than a quarter of this node's addresses are free."""
        key = pool.meta.key
        blocks = self.blocks(pool)
        quarter = -(-len(blocks) * self.size // 4)
        if not blocks or free_in(pool, blocks, taken, enough=quarter) >= quarter:
            return
        with self._lock:
            if key in self._growing:
                return
            self._growing.add(key)

        def run() -> None:
            try:
                self.grow(pool)
            except Exception as exc:  # the API away: the next allocation tries again
                log.info("claiming the next block of %s: %s", key, exc)
            finally:
                with self._lock:
                    self._growing.discard(key)

        try:
            self.spawn(run)
        except Exception as exc:  # no thread to be had: the next allocation asks again
            with self._lock:
                self._growing.discard(key)
            log.warning("claiming the next block of %s in the background: %s", key, exc)

    # -- asking for a block back --------------------------------------------------------------------
    def ask_return(self, pool: AddressPool) -> bool:
        """This node found no free address in ``pool`` outside other nodes' blocks: ask the owner of the block with the
        most free addresses to return it (one status patch, unless a request is out already) and wait for it to go.
        True once it is gone (pick again); False when no other node's block has a free address, or its owner has not
        returned it in time (the pool is full for this call: code 100; a retry waits on the same request). An owner
        whose block has no free address after all (this node's cache lagged behind its lease objects) keeps it and
        makes those objects at once: the block shown full here answers the request too (True: pick again)."""
        key = pool.meta.key
        with self._lock:  # blocks read once from the API server may be gone since: their windows are looked at again
            stale = [slot for slot in self.seen if slot[0] == key]
            for slot in stale:
                del self.seen[slot]
        if stale:
            return True
        if 4 not in pool.families:
            return False
        best: tuple[int, Block, dict[str, Any]] | None = None
        for obj in self.source.by_index(KIND, "pool", key):
            block = parse_block(obj)
            if block is None or block.node == self.node_name:
                continue
            free = sum(1 for ip in addresses_in(pool, block.first, block.size)
                       if not self.source.indexed(LEASE_KIND, "address", (key, ip)))
            if free and (best is None or free > best[0]):
                best = (free, block, obj)
        if best is None:
            return False
        free, block, obj = best
        now = self.clock()
        if not return_asked_by(obj, now, block.node):
            try:
                self.objects.patch_status(KIND, block.name, {"returnRequestedBy": self.node_name,
                                                             "returnRequestedAt": rfc3339(now)})
            except Exception as exc:  # not asked: with the API away, code 11 (its free addresses wait); refused, 100
                if status_of(exc) == 404:
                    return True  # gone already
                if transient(exc):
                    raise TryAgainLater(f"pool {key}: the free addresses left are in node {block.node}'s address "
                                        f"block {block.cidr}, and asking for it back needs the Kubernetes API",
                                        reason_of(exc)[:300]) from None
                log.warning("asking node %s to return address block %s: %s", block.node, block.name, reason_of(exc))
                return False
            log.info("asked node %s to return address block %s (%s) of %s: %d free there, none outside blocks here",
                     block.node, block.name, block.cidr, key, free)
        window = list(addresses_in(pool, block.first, block.size))

        def answered() -> bool:
            return not self.source.indexed(KIND, "window", (key, block.first)) or \
                all(self.source.indexed(LEASE_KIND, "address", (key, ip)) for ip in window)

        if self.wait(answered, RETURN_WAIT_S):
            return True
        # not given back in time (its owner busy, away, or its addresses were all taken after all: the cache lags behind
        # its owed lease objects): the pool is full for this call, which the runtime retries on the same request
        log.info("address block %s of %s asked for is not given back yet by node %s", block.name, key, block.node)
        return False

    def asked(self) -> bool:
        """Whether another node asked for one of this node's blocks (a change of the blocks wakes the reconciler
        then, which gives it back)."""
        now = self.clock()
        for obj in self.source.by_index(KIND, "node", self.node_name):
            block = parse_block(obj)
            if block is not None and (block.pool, block.first) not in self.returned and self._asked_fresh(obj, now):
                return True
        return False

    def _asked_for(self, block: Block, now: float) -> bool:
        return any(self._asked_fresh(o, now) for o in self.source.by_index(KIND, "window", (block.pool, block.first)))

    def _asked_fresh(self, obj: dict[str, Any], now: float) -> bool:
        """Whether another node asked for this block of ours lately: timed from when this node first saw the request,
        by its own clock (the asking node's clock, which wrote the request's time, may be minutes off ours)."""
        by, at = return_request(obj, self.node_name)
        if not by or not return_asked_by(obj, now - ASK_SKEW_S, self.node_name):
            return False
        key = (str((obj.get("metadata") or {}).get("name")), by, at)
        with self._lock:
            first = self._asks_seen.get(key, (now, now))[0]
            self._asks_seen[key] = (first, now)
            for old in [k for k, (_, last) in self._asks_seen.items() if now - last > 2 * ASK_FRESH_S]:
                del self._asks_seen[old]  # (a request not seen for a while: gone from its block)
        return now - first <= ASK_FRESH_S

    def _give_back(self, pool: AddressPool, block: Block) -> None:
        """Return a block another node asked for, leases inside and all (marked ``returned`` already, inside the
        store's transaction): once the claims that found it ours have owed their lease objects, every lease object of
        its window is made, then the block deleted. Its leases are per-address leases from then on. If the objects
        cannot be made (the API away), the block stays ours and the next round tries again."""
        slot = (block.pool, block.first)
        with self._settled:
            self._settled.wait_for(lambda: not self._inflight.get(slot), timeout=5.0)
        try:
            made = self._make_window_leases(pool, block)
        except Exception as exc:  # the store: the block stays ours
            log.warning("returning address block %s: %s", block.name, exc)
            made = False
        if not made or self._inflight.get(slot):
            with self._lock:
                self.returned.discard(slot)
                self.mine[slot] = block
            log.info("address block %s asked for by another node stays for now: its lease objects are not made yet",
                     block.name)
            return
        self._return(block, "asked for by another node")

    def _claimed_while_going(self, block: Block, in_use: Callable[[str, int], bool],
                             transaction: Callable[[], AbstractContextManager[Any]]) -> bool:
        """An empty block marked ours no more: a claim that found it ours just before (an exact address's, reserved
        outside the store's transaction, which the round's look at what is in use cannot see) is waited for; if it
        owed a lease object there, or anything of the window is in use by now, the block stays ours."""
        slot = (block.pool, block.first)
        with self._settled:
            self._settled.wait_for(lambda: not self._inflight.get(slot), timeout=5.0)
        with transaction():
            owed = any(e.op == "block_lease" for ip in block.window
                       for e in self.outbox.owed(f"{LEASE_KIND}/{lease_name(block.pool, to_text(ip))}"))
            if not owed and not self._inflight.get(slot) and not any(in_use(block.pool, ip) for ip in block.window):
                return False
            with self._lock:
                self.returned.discard(slot)
                self.mine[slot] = block
        log.info("address block %s (%s) of %s stays: an address in it was claimed as it was being returned",
                 block.name, block.cidr, block.pool)
        return True

    def _has_free(self, pool: AddressPool, block: Block, in_use: Callable[[str, int], bool]) -> bool:
        with self._lock:
            excluded = self.excluded.get(block.pool, {})
        return any(not in_use(block.pool, ip) and ip not in excluded
                   for ip in addresses_in(pool, block.first, block.size))

    def _decline(self, pool: AddressPool, block: Block) -> None:
        """Keep a block asked for that has no free address: the node that asked saw free ones only because its cache
        lacked this node's owed lease objects. They are made now (which answers it: the block shows full there), then
        the request is withdrawn; so a full pool keeps its blocks instead of trading them for per-address leases."""
        try:
            if not self._make_window_leases(pool, block):
                return  # the API away: the next round tries again
            self.objects.patch_status(KIND, block.name, {"returnRequestedBy": None, "returnRequestedAt": None})
        except Exception as exc:
            log.info("keeping address block %s asked for: %s", block.name, reason_of(exc))
            return
        log.info("kept address block %s (%s) of %s asked for by another node: no free address in it",
                 block.name, block.cidr, block.pool)

    # -- the outbox's op ----------------------------------------------------------------------------
    def _put_lease(self, body: dict[str, Any]) -> None:
        """Make the lease object of an address in this node's block. An object in the way is made ours when it is
        this node's, or unlabelled, for the same holder; another node's of the same holder is left to it. Another
        node's object of another holder is that node's per-address lease, which it lets go of once it sees our block:
        it is waited for (the outbox retries), not taken over, for its owed delete goes by name and would remove ours.
        Nor is this node's object of a holder its store holds the address for (``_held_here_by``). Made only once the
        store records the address for its holder: the write is owed before the claim's transaction, and made in that
        instant by the outbox's thread, then the daemon killed before the transaction, the object would stand for a
        lease no store holds (``drop_unrecorded``). Until then the write waits (``NotYet``: a moment, not an attempt).
        """
        if not self._recorded(body):
            raise NotRecordedYet("the claim of this address is not recorded in the node's store yet")
        obj = body["object"]
        name = obj["metadata"]["name"]
        for _ in range(3):  # an object deleted between our create and our read of it: create again
            try:
                self._made_at(name, obj["spec"].get("holder", ""), self.objects.create(LEASE_KIND, obj))
                return
            except Exception as exc:
                if status_of(exc) != 409:
                    raise
            try:
                if self._made_ours(name, obj):
                    return
            except Exception as exc:
                if status_of(exc) != 404:
                    raise
        raise ApiException(status=409, reason=f"lease object {name} kept changing under this node's write")

    def _made_ours(self, name: str, obj: dict[str, Any]) -> bool:
        current = self.objects.get(LEASE_KIND, name)
        labels = (current.get("metadata") or {}).get("labels") or {}
        same_holder = (_spec(current).get("holder") or "") == obj["spec"].get("holder", "")
        if same_holder and labels.get(NODE_LABEL) == self.node_name:
            if (current.get("status") or {}).get("orphaningTimestamp"):
                self.objects.patch_status(LEASE_KIND, name, {"orphaningTimestamp": None})
            return True
        if same_holder and labels.get(NODE_LABEL):
            # another node's object of the same holder (a Static every node leases, leased there per address before
            # this block): left that node's, which lets it go with the Static, or keeps it for its pod (``keep_in_use``,
            # maybe owed yet); made ours, our let-go of the Static (deleted while its pod runs) would delete it
            log.info("lease object %s of %s is node %s's: left to it", name, obj["spec"].get("holder", ""),
                     labels.get(NODE_LABEL))
            return True
        if not same_holder and labels.get(NODE_LABEL) != self.node_name:
            raise ApiException(status=409, reason=f"lease object {name} is still node "
                                                  f"{labels.get(NODE_LABEL) or '(none)'}'s, for another holder")
        if not same_holder and self._held_here_by(obj["spec"], _spec(current).get("holder")):
            log.info("not making lease object %s %s's: this node holds the address for %s (a claim that lost, or "
                     "one owed before a restart)", name, obj["spec"].get("holder", ""), _spec(current).get("holder"))
            return True
        self.objects.patch(LEASE_KIND, name, {
            "metadata": {"labels": obj["metadata"]["labels"],
                         "resourceVersion": (current.get("metadata") or {}).get("resourceVersion")},
            "spec": obj["spec"]})
        self.objects.patch_status(LEASE_KIND, name, {"orphaningTimestamp": None})
        return True

    def _held_here_by(self, spec: dict[str, Any], holder: Any) -> bool:
        """Whether this node's store holds the address of ``spec`` for ``holder``, a holder other than the one the
        owed write is for: that write's claim lost the address in its transaction (or died with its process), and its
        object, made the winner's, is not to be taken over (the loser's let-go would then delete it)."""
        if not holder:
            return False  # quarantined (no holder): taken up by whoever's claim this is
        held = self.leases.lease_at(str(spec["pool"]), to_int(str(spec["ip"])))
        return held is not None and held.holder == holder

    # -- housekeeping (the reconciler's rounds) ------------------------------------------------------------
    def housekeep(self, pools: Iterable[AddressPool], in_use: Callable[[str, int], bool],
                  transaction: Callable[[], AbstractContextManager[Any]]) -> None:
        """Renew this node's blocks, and return those empty for ``idle_s`` (a pool's last one for ``last_idle_s``).
        Whether a block is empty is decided inside ``transaction`` (the store's, where every pick is made), and the
        block is ours no more from then on; its object is deleted after, outside the store's lock."""
        pools = list(pools)
        now = self.clock()
        renew = now - self._renewed >= RENEW_S
        going: list[Block] = []
        asked: list[tuple[AddressPool, Block]] = []
        full: list[tuple[AddressPool, Block]] = []
        lost = self._lost(pools)
        with transaction():
            for _, block in lost:  # deleted by someone else: not leased in from here on (per address instead)
                with self._lock:
                    self.mine.pop((block.pool, block.first), None)
                self._empty_since.pop((block.pool, block.first), None)
                self._forget_block(block)
            for pool in pools:
                blocks = self.blocks(pool)
                outgrown = not uses_blocks(pool, self.size)  # shrunk: leased per address from here on
                for block in blocks:
                    slot = (block.pool, block.first)
                    stranded = outgrown or not any(True for _ in addresses_in(pool, block.first, block.size))
                    wanted = self._asked_for(block, now)
                    if wanted and not stranded and not self._has_free(pool, block, in_use):
                        full.append((pool, block))  # asked on a lagging cache: kept, its lease objects made at once
                    elif wanted or stranded:
                        # ours no more from here, given back leases inside and all: another node needs its free
                        # addresses, or they are no longer the pool's to hand out in blocks (a pool shrunk, its ranges
                        # narrowed) and would be stranded here
                        with self._lock:
                            self.mine.pop(slot, None)
                            self.returned.add(slot)
                        self._empty_since.pop(slot, None)
                        asked.append((pool, block))
                        continue
                    if any(in_use(block.pool, ip) for ip in block.window):  # a Static outside the ranges too
                        self._empty_since.pop(slot, None)
                        continue
                    since = self._empty_since.setdefault(slot, now)
                    last = len(blocks) - sum(b.pool == block.pool for b in going) <= 1
                    if now - since >= (self.last_idle_s if last else self.idle_s):
                        with self._lock:
                            self.mine.pop(slot, None)
                            self.returned.add(slot)
                        self._empty_since.pop(slot, None)
                        going.append(block)
                if renew:
                    for block in blocks:
                        if block not in going and all(block is not b for _, b in asked):
                            self._owe_renewal(block)
        if renew:
            self._renewed = now
            if self.heartbeat_namespace:  # blocks or not, the controller knows this node is alive
                body = heartbeat_body(self.node_name, self.heartbeat_namespace, now)
                self.outbox.add(f"{HEARTBEAT_TARGET}{self.heartbeat_namespace}/{body['metadata']['name']}", "heartbeat",
                                body, supersede=True)
        for block in going:
            if self._claimed_while_going(block, in_use, transaction):
                continue
            self._return(block, "empty")
        for pool, block in asked:
            self._give_back(pool, block)
        for pool, block in full:
            self._decline(pool, block)
        for pool, block in lost:
            self._keep_leases_of(pool, block)
        self._free_excluded()
        with self._lock:  # forget what the informer no longer shows, or shows by now
            self.returned = {slot for slot in self.returned
                             if slot in self._checking or self.source.indexed(KIND, "window", slot)}
            self.seen = {slot: (b, at) for slot, (b, at) in self.seen.items()
                         if now - at < SEEN_S and not self.source.indexed(KIND, "window", slot)}
            # the version the cache saw: a block claimed again in that window meanwhile is not deleted
            stuck = [(b, str((o.get("metadata") or {}).get("resourceVersion") or ""))
                     for o in self.source.by_index(KIND, "node", self.node_name) if (b := parse_block(o)) is not None
                     and (b.pool, b.first) in self.returned and (b.pool, b.first) not in self._checking
                     and b not in going and all(b != a for _, a in asked)]
        for block, version in stuck:  # given back, but its delete failed (the API away): tried again
            self._return(block, "given back earlier", version)

    def owe_missing(self, held: Iterable[LeaseRecord], older_than: float) -> list[LeaseRecord]:
        """A safety net under the owed writes: an address this node holds in its block (since before ``older_than``,
        so the informer's cache has caught up with its object) whose object the cache does not show for its holder,
        with no write of it owed, gets its object owed again. Every other node takes the address for free once the
        block is given back or reclaimed, and only by that object: one lost by any path (a bug, a hand's delete, a
        restored etcd) would let the address be handed out twice. The leases it owed again."""
        out = []
        now = self.clock()
        for lease in held:
            if not lease.holder:
                continue
            block = self.block_at(lease.pool, lease.ip)
            name = lease_name(lease.pool, lease.address)
            asked = block is not None and self._asked_for(block, now)
            if block is None or block.node != self.node_name or (lease.created_at > older_than and not asked) or \
                    (now - self._owed_again.get(name, float("-inf")) < OWED_AGAIN_S and not asked) or \
                    any(_spec(o).get("holder") == lease.holder
                        for o in self.source.by_index(LEASE_KIND, "address", (lease.pool, lease.ip))):
                continue  # (made again lately: the cache may lag, its watch down; the object is there)
            if self.outbox.owes(f"{LEASE_KIND}/{name}") or not self._claim_inside(lease):
                continue
            self._owed_again[name] = now
            log.warning("the IPAddressLease of %s (%s, held by %s) is missing: made again", lease.address, lease.pool,
                        lease.holder)
            out.append(lease)
        self._owed_again = {n: at for n, at in self._owed_again.items() if now - at < OWED_AGAIN_S}
        return out

    def _lost(self, pools: list[AddressPool]) -> list[tuple[AddressPool, Block]]:
        """This node's blocks that are no longer its own in the API (the controller reclaimed them after the node was
        silent past --block-ttl, or someone deleted them by hand): what the cache does not show is read from the API
        server (a block claimed a moment ago may not be in the cache yet)."""
        by_key = {p.meta.key: p for p in pools}
        with self._lock:
            candidates = [b for slot, b in self.mine.items() if slot not in self._checking and b.pool in by_key]
        out = []
        for block in candidates:
            if any((parse_block(o) or block).node == self.node_name
                   for o in self.source.by_index(KIND, "window", (block.pool, block.first))):
                continue
            try:
                found = parse_block(self.objects.get(KIND, block.name))
                if found is not None and found.node == self.node_name:
                    continue
            except Exception as exc:
                if status_of(exc) != 404:
                    continue  # the API away: the next round looks again
            log.warning("address block %s (%s) of %s is no longer this node's (reclaimed or deleted): its leases "
                        "live on per address", block.name, block.cidr, block.pool)
            out.append((by_key[block.pool], block))
        return out

    def _make_window_leases(self, pool: AddressPool, block: Block) -> bool:
        """Make now the lease objects this node owes in a block's window; whether none is left owed."""
        targets = [f"{LEASE_KIND}/{lease_name(block.pool, to_text(ip))}" for ip in block.window]
        if not all(self.outbox.flush_target(t) for t in targets if self.outbox.owes(t)):
            return False
        quarantined = [lease for ip in block.window if (lease := self.leases.lease_at(block.pool, ip)) is not None
                       and lease.holder is None and lease.orphaned_at is not None]
        return all(self.keep_quarantine(lease) for lease in quarantined)

    def _keep_leases_of(self, pool: AddressPool, block: Block) -> None:
        """Make the owed lease objects of a lost block's window now: from here on they alone keep its leases."""
        try:
            if not self._make_window_leases(pool, block):
                log.info("lease objects of address block %s not made yet: the outbox makes them later", block.name)
        except Exception as exc:  # owed still: the outbox makes them later
            log.info("making the lease objects of address block %s: %s", block.name, exc)

    def _free_excluded(self) -> None:
        """Addresses found leased inside a block at its claim are this node's to hand out once their lease object
        is gone, as read from the API server itself (the lease informer may lag behind the block informer)."""
        with self._lock:
            candidates = [(pool_key, ip) for pool_key, found in self.excluded.items() for ip in found
                          if self.source.indexed(KIND, "window", (pool_key, window_of(ip, self.size)))
                          and not self.source.indexed(LEASE_KIND, "address", (pool_key, ip))]
        gone = []
        for pool_key, ip in candidates:
            try:
                self.objects.get(LEASE_KIND, lease_name(pool_key, to_text(ip)))
            except Exception as exc:
                if status_of(exc) == 404:
                    gone.append((pool_key, ip))
        with self._lock:
            for pool_key, ip in gone:
                self.excluded.get(pool_key, {}).pop(ip, None)

    def given_back(self, obj: dict[str, Any]) -> bool:
        """Whether ``obj`` is a block of this node that it no longer leases in (given back, or still being checked
        after its claim): what a snapshot of the informers must not show as this node's."""
        block = parse_block(obj)
        if block is None or block.node != self.node_name:
            return False
        with self._lock:
            return (block.pool, block.first) in self.returned

    def _return(self, block: Block, why: str, version: str = "") -> None:
        """Delete this node's ``block`` at ``version``, or at the version the cache shows it this node's: the
        controller may have reclaimed it while this node was cut off, and another node claimed the window since,
        under the same name (a 409, or a 404: not ours to delete; a 409 of our own renewal is tried again by the next
        round, as a block given back earlier)."""
        try:
            self.on_return()
        except Exception:  # the snapshot's file: its writer logs; the block goes anyway (its keeper drops it later)
            log.exception("dropping address block %s from the informer snapshot", block.name)
        version = version or next((str((o.get("metadata") or {}).get("resourceVersion") or "")
                                    for o in self.source.by_index(KIND, "window", (block.pool, block.first))
                                    if (b := parse_block(o)) is not None and b.name == block.name
                                    and b.node == self.node_name), "")
        if not version:  # never deleted without a precondition: not shown this node's (any more), it is left
            log.info("address block %s (%s) of %s is not shown this node's: not deleted (reclaimed, or another node's "
                     "since; one claimed a moment ago is deleted once the cache shows it)", block.name, block.cidr,
                     block.pool)
            self._forget_block(block)
            return
        try:
            self.objects.delete(KIND, block.name, resource_version=version)
            log.info("returned address block %s (%s) of %s: %s", block.name, block.cidr, block.pool, why)
        except Exception as exc:
            if status_of(exc) not in (404, 409):  # 409: claimed again meanwhile (its precondition)
                log.warning("returning address block %s: %s (the controller reclaims it)", block.name,
                            reason_of(exc))
                return
        self._forget_block(block)

    def _forget_block(self, block: Block) -> None:
        """What this node noted of a block of its own that is gone (returned, reclaimed, another node's since): its
        owed renewal (it would renew a block of the same name claimed again, or make one look checked after a
        restart), its checks passed, and what was found leased inside at its claim (per address from here on, as
        every address)."""
        self.outbox.drop_where(f"{KIND}/{block.name}", "patch_status",
                               lambda owed: owed.get("fieldManager") == RENEWAL_MANAGER)
        with self._lock:
            self._cleared.discard((block.pool, block.first))
            excluded = self.excluded.get(block.pool, {})
            for ip in [ip for ip in excluded if ip in block]:
                del excluded[ip]

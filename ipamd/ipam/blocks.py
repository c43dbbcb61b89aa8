"""Node address blocks, the pure part: a pool cut into aligned windows that a node claims whole.

In a cluster, one create-if-absent per address made every allocation an API round trip and made nodes that share a
pool collide more as they multiply (Whereabouts's lock storms). A node instead claims a block (one IPAddressBlock
object: one create for ``size`` addresses) and leases inside it with no API request. A window is aligned to its size
(``198.18.0.16/28``), so the block that could hold an address is known from the address alone: a node that leases one
address by itself checks exactly that block's name. A pool smaller than ``MIN_BLOCKS`` blocks is leased per address,
so that a /28 shared by eight nodes still hands out every one of its addresses; and blocks never take more than half
of a pool's windows, so that the other half stays open to every node (leased per address once a node's blocks are
full): a block's free addresses are its owner's alone. Past that, a node that finds no free address outside blocks
asks another node to return one (``ipamd.kube.blocks``), so a pool nearly full never refuses a node while others
keep free addresses in their blocks.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ipamd.ipam.allocator import to_text
from ipamd.model.objects import AddressPool

BLOCK_SIZE = 16  # addresses per block: a /28
MIN_BLOCKS = 4  # a pool with fewer addresses than this many blocks is leased per address


@dataclass(frozen=True, slots=True)
class Block:
    """A window of a pool that one node leases in alone."""

    pool: str  # the pool's key
    first: int  # aligned to ``size``
    size: int
    node: str

    @property
    def name(self) -> str:
        return block_name(self.pool, self.first)

    @property
    def cidr(self) -> str:
        return f"{to_text(self.first)}/{32 - (self.size.bit_length() - 1)}"

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, int) and self.first <= ip < self.first + self.size

    @property
    def window(self) -> range:
        """Every address of its window: what may be held in it, a Static's or an exact one outside the pool's
        ranges too (``addresses_in`` is what it hands out)."""
        return range(self.first, self.first + self.size)


@functools.lru_cache(maxsize=8192)
def block_name(pool: str, first: int) -> str:
    """``blk-198-18-0-16-<hash of the pool>``: readable, a valid name, unique per (pool, window). Kept once made: an
    allocation compares the names of the blocks it looks at, many per address tried."""
    return f"blk-{to_text(first).replace('.', '-').replace(':', '-')}-{hashlib.sha1(pool.encode()).hexdigest()[:10]}"


def window_of(ip: int, size: int = BLOCK_SIZE) -> int:
    return ip - ip % size


def uses_blocks(pool: AddressPool, size: int = BLOCK_SIZE) -> bool:
    """Whether the pool's IPv4 part is leased in blocks. IPv6 is leased per address: its windows are too many to list
    (a /64 has 2**60), and its space too large for two nodes to meet often in it."""
    return _ipv4(pool).size >= size * MIN_BLOCKS


def _ipv4(pool: AddressPool) -> AddressPool:
    return pool.family(4)


def may_claim(pool: AddressPool, claimed: int, size: int = BLOCK_SIZE) -> bool:
    """Whether one more block may be claimed in a pool whose windows hold ``claimed`` blocks already."""
    return uses_blocks(pool, size) and (claimed + 1) * 2 <= len(windows(pool, size))


def addresses_in(pool: AddressPool, first: int, size: int = BLOCK_SIZE) -> Iterator[int]:
    """The addresses of the window at ``first`` that the pool hands out by itself (inside its ranges)."""
    last = first + size - 1
    for s in _ipv4(pool).subnets:
        for a, b in s.ranges:
            yield from range(max(a, first), min(b, last) + 1)


def first_address(pool: AddressPool) -> int:
    """The first address the pool's IPv4 part hands out (a pool of blocks has one; a range may hold none)."""
    return min(a for s in _ipv4(pool).subnets for a, _ in s.ranges)


def windows(pool: AddressPool, size: int = BLOCK_SIZE) -> list[int]:
    """Every window holding at least one address of the pool's ranges, in address order."""
    out: set[int] = set()
    for s in _ipv4(pool).subnets:
        for a, b in s.ranges:
            out.update(range(window_of(a, size), window_of(b, size) + 1, size))
    return sorted(out)


def free_window(pool: AddressPool, busy: Callable[[int], bool], size: int = BLOCK_SIZE,
                start: int = 0) -> int | None:
    """The first window from ``start`` (wrapping) none of whose addresses is ``busy`` and which is no block yet (the
    caller's ``busy`` says both), or None when the pool has none left: then it is leased per address."""
    all_windows = windows(pool, size)
    k = next((i for i, w in enumerate(all_windows) if w >= start), 0)
    for w in all_windows[k:] + all_windows[:k]:
        if not any(busy(ip) for ip in addresses_in(pool, w, size)):
            return w
    return None


def pick_in(pool: AddressPool, blocks: list[Block], taken: Callable[[int], bool],
            cursor: int | None) -> int | None:
    """The next free address of this node's ``blocks`` after ``cursor`` (round robin, as in the whole pool)."""
    candidates = sorted(ip for b in blocks for ip in addresses_in(pool, b.first, b.size))
    if not candidates:
        return None
    k = 0
    if cursor is not None:
        k = next((i for i, ip in enumerate(candidates) if ip > cursor), 0)
    for ip in candidates[k:] + candidates[:k]:
        if not taken(ip):
            return ip
    return None


def free_in(pool: AddressPool, blocks: list[Block], taken: Callable[[int], bool], enough: int | None = None) -> int:
    """How many addresses of ``blocks`` are still free (the next block is claimed before this reaches 0); with
    ``enough``, counting stops there. The newest blocks are counted first: they are the ones with room, so the
    answer "enough" (asked on every allocation) comes after a few looks, not after every address the node holds."""
    free = 0
    for b in reversed(blocks):
        for ip in addresses_in(pool, b.first, b.size):
            if not taken(ip):
                free += 1
                if enough is not None and free >= enough:
                    return free
    return free

"""Choosing addresses: pure functions over a pool and the set of addresses already leased.

Allocation is round-robin: the search starts just after the last address handed out in the
pool (the cursor), so an address that was just released is the last to be given again. A
crash-looping pod therefore does not get back an address that a peer may still have in its
ARP cache, even where the pool's ``leaseTTL`` is short. The cost of one allocation is the
number of leased addresses skipped from the cursor, which does not grow with the pool's size
and, on average, grows only as 1/(free fraction) with its fill.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Container, Iterator

from ipamd.model.objects import IPV6_FLOOR, AddressPool, PoolRoute, Subnet, usable_bounds


def iter_from(pool: AddressPool, cursor: int | None) -> Iterator[tuple[int, Subnet]]:
    """Every allocatable address of the pool once, starting after ``cursor`` and wrapping around."""
    spans = [(a, b, s) for s in pool.subnets for a, b in s.ranges]
    spans.sort(key=lambda t: t[0])
    if not spans:
        return
    start = 0
    if cursor is not None:
        for i, (a, b, _) in enumerate(spans):
            if cursor < a:
                start, cursor = i, None
                break
            if cursor <= b:
                start = i
                break
        else:
            cursor = None
    n = len(spans)
    first_a, first_b, first_s = spans[start]
    begin = first_a if cursor is None else cursor + 1
    for ip in range(begin, first_b + 1):
        yield ip, first_s
    for k in range(1, n):
        a, b, s = spans[(start + k) % n]
        for ip in range(a, b + 1):
            yield ip, s
    if cursor is not None:  # the head of the starting span, up to and including the cursor
        for ip in range(first_a, min(cursor, first_b) + 1):
            yield ip, first_s


def pick_free(pool: AddressPool, taken: Container[int], cursor: int | None) -> tuple[int, Subnet] | None:
    """The next address not in ``taken`` after ``cursor``, or None when the pool is full."""
    for ip, subnet in iter_from(pool, cursor):
        if ip not in taken:
            return ip, subnet
    return None


def subnet_for(pool: AddressPool, ip: int) -> Subnet | None:
    """The pool subnet whose usable addresses include ``ip`` (ranges need not: static addresses
    may sit anywhere in the subnet, the ranges being what the pool hands out by itself)."""
    for s in pool.subnets:
        lo, hi = usable_bounds(s.network)
        if lo <= ip <= hi:
            return s
    return None


def in_ranges(pool: AddressPool, ip: int) -> bool:
    return any(a <= ip <= b for s in pool.subnets for a, b in s.ranges)


def route_via(pool: AddressPool, ip: int) -> PoolRoute | None:
    """The pool's route whose gateway is ``ip``, if any: an address the pool never leases, not even to a Static
    asking for exactly it (its ranges leave it out already: ``objects._address_pool``)."""
    return next((r for s in pool.subnets for r in s.routes if to_int(r.via) == ip), None)


def never_leased(pool: AddressPool, ip: int) -> str | None:
    """Why ``ip`` is never leased from ``pool``, not even to who asks for exactly it, in words (None: it may be): it
    is the gateway of one of the pool's routes, or of a policy route of the network the pool is seen by
    (``AddressPool.for_network``). Neither is in the ranges, so a pick never meets them."""
    route = route_via(pool, ip)
    if route is not None:
        return f"{route.via} is the gateway of pool {pool.meta.display}'s route to {route.destination}"
    return next((r.words for r in pool.routers if r.ip == ip), None)


def to_text(ip: int) -> str:
    """An address's text from its integer: IPv4 below 2**32, IPv6 above (pools never hold ``::/96``, see
    ``IPV6_FLOOR``), so one integer names one address whatever the family."""
    return str(ipaddress.IPv4Address(ip) if ip < IPV6_FLOOR else ipaddress.IPv6Address(ip))


def to_int(text: str) -> int:
    """The integer of an address's text. Lenient, for what was checked on its way in or is read back (lease objects,
    the store): what users ask for goes through ``parse_address`` first, which refuses IPv4-compatible IPv6."""
    return int(ipaddress.ip_address(text))


def family_of(ip: int) -> int:
    return 4 if ip < IPV6_FLOOR else 6

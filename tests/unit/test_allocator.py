"""``ipamd.ipam.allocator``: round-robin iteration and picking, checked against an independent model."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipamd.ipam.allocator import in_ranges, iter_from, pick_free, subnet_for, to_int, to_text
from ipamd.model.objects import API_VERSION, AddressPool, parse_object

PROPERTY = settings(deadline=None, max_examples=120, suppress_health_check=[HealthCheck.too_slow])


def make_pool(items: list[dict[str, Any]]) -> AddressPool:
    obj = parse_object({"apiVersion": API_VERSION, "kind": "IPAddressPool",
                        "metadata": {"name": "p", "namespace": "ns"}, "spec": {"leaseTTL": "1m", "pools": items}})
    assert isinstance(obj, AddressPool)
    return obj


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


class Model:
    """What the pool hands out, computed from the manifest without ``ipamd``'s own range handling."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.addresses: set[int] = set()
        for item in items:
            net = ipaddress.IPv4Network(item["network"])
            if net.prefixlen >= 31:
                usable = set(range(int(net.network_address), int(net.broadcast_address) + 1))
            else:
                usable = set(range(int(net.network_address) + 1, int(net.broadcast_address)))
            if "ranges" in item:
                wanted: set[int] = set()
                for r in item["ranges"]:
                    a, _, b = r.partition("-")
                    wanted |= set(range(ip(a), ip(b or a) + 1))
                usable &= wanted
            self.addresses |= usable

    def order(self, cursor: int | None) -> list[int]:
        ordered = sorted(self.addresses)
        if cursor is None:
            return ordered
        return [a for a in ordered if a > cursor] + [a for a in ordered if a <= cursor]


@st.composite
def pool_items(draw: st.DrawFn) -> list[dict[str, Any]]:
    """1-3 small IPv4 subnets (/26 to /32, in distinct /24s, so never overlapping), some with ranges."""
    octets = draw(st.lists(st.integers(0, 255), min_size=1, max_size=3, unique=True))
    items = []
    for octet in octets:
        prefix = draw(st.integers(26, 32))
        size = 2 ** (32 - prefix)
        base = ip(f"198.18.{octet}.0") + draw(st.integers(0, 256 // size - 1)) * size
        net = ipaddress.IPv4Network(f"{to_text(base)}/{prefix}")
        item: dict[str, Any] = {"network": str(net)}
        if size > 1 and draw(st.booleans()):
            cuts = sorted(draw(st.lists(st.integers(0, size - 1), min_size=2, max_size=8, unique=True)))
            ranges = []
            for a, b in zip(cuts[0::2], cuts[1::2], strict=False):
                lo, hi = base + a, base + b
                if lo == hi - 1 and draw(st.booleans()):
                    ranges.append(to_text(lo))  # a single address
                else:
                    ranges.append(f"{to_text(lo)}-{to_text(hi)}")
            # a range made only of the network or broadcast address clips to nothing: keep one real address
            if not any(Model([{"network": str(net), "ranges": [r]}]).addresses for r in ranges):
                continue
            item["ranges"] = draw(st.permutations(ranges))
        items.append(item)
    if not items:
        items.append({"network": "198.18.255.0/30"})
    return items


def cursors(items: list[dict[str, Any]]) -> st.SearchStrategy[int | None]:
    nets = [ipaddress.IPv4Network(i["network"]) for i in items]
    lo = min(int(n.network_address) for n in nets) - 3
    hi = max(int(n.broadcast_address) for n in nets) + 3
    return st.none() | st.integers(lo, hi)


@PROPERTY
@given(data=st.data())
def test_iter_from_yields_every_allocatable_address_once_after_the_cursor(data: st.DataObject) -> None:
    items = data.draw(pool_items())
    cursor = data.draw(cursors(items))
    pool = make_pool(items)
    model = Model(items)
    out = list(iter_from(pool, cursor))
    ips = [a for a, _ in out]
    assert len(ips) == len(set(ips)), "an address came twice"
    assert set(ips) == model.addresses
    assert ips == model.order(cursor), "not round-robin from the cursor"
    for a, subnet in out:
        assert ipaddress.IPv4Address(a) in subnet.network
    assert len(ips) == pool.size


@PROPERTY
@given(data=st.data())
def test_pick_free_never_returns_a_taken_address(data: st.DataObject) -> None:
    items = data.draw(pool_items())
    cursor = data.draw(cursors(items))
    model = Model(items)
    every = sorted(model.addresses)
    taken = set(data.draw(st.lists(st.sampled_from(every), unique=True))) if every else set()
    taken |= set(data.draw(st.lists(st.integers(ip("198.18.0.0"), ip("198.18.255.255")), max_size=5)))
    picked = pick_free(make_pool(items), taken, cursor)
    free_in_order = [a for a in model.order(cursor) if a not in taken]
    if not free_in_order:
        assert picked is None
        return
    assert picked is not None
    address, subnet = picked
    assert address not in taken
    assert address in model.addresses
    assert address == free_in_order[0], "the next free address after the cursor, round-robin"
    assert ipaddress.IPv4Address(address) in subnet.network


@PROPERTY
@given(data=st.data())
def test_allocating_until_full_hands_out_each_address_exactly_once(data: st.DataObject) -> None:
    items = data.draw(pool_items())
    pool = make_pool(items)
    cursor = data.draw(cursors(items))
    taken: set[int] = set()
    while (picked := pick_free(pool, taken, cursor)) is not None:
        address = picked[0]
        assert address not in taken
        taken.add(address)
        cursor = address
    assert taken == Model(items).addresses


# -- examples -------------------------------------------------------------------------------------

def next_free(pool: AddressPool, taken: set[int], cursor: int | None) -> str | None:
    picked = pick_free(pool, taken, cursor)
    return None if picked is None else to_text(picked[0])


def test_round_robin_starts_after_the_cursor_and_wraps() -> None:
    pool = make_pool([{"network": "198.18.0.0/29"}])  # .1 - .6
    assert next_free(pool, set(), None) == "198.18.0.1"
    assert next_free(pool, set(), ip("198.18.0.1")) == "198.18.0.2"
    assert next_free(pool, set(), ip("198.18.0.6")) == "198.18.0.1"
    assert next_free(pool, {ip("198.18.0.4")}, ip("198.18.0.3")) == "198.18.0.5"


def test_a_released_address_is_the_last_to_come_back() -> None:
    pool = make_pool([{"network": "198.18.0.0/29"}])
    taken = {ip("198.18.0.1"), ip("198.18.0.2"), ip("198.18.0.4"), ip("198.18.0.5"), ip("198.18.0.6")}
    # .3 was just handed out and released; the cursor sits on it
    assert next_free(pool, taken, ip("198.18.0.3")) == "198.18.0.3"
    order = [a for a, _ in iter_from(pool, ip("198.18.0.3"))]
    assert order[-1] == ip("198.18.0.3")


def test_cursor_between_and_beyond_ranges() -> None:
    pool = make_pool([{"network": "198.18.0.0/24", "ranges": ["198.18.0.10-198.18.0.12", "198.18.0.20-198.18.0.21"]}])
    assert [to_text(a) for a, _ in iter_from(pool, ip("198.18.0.15"))] == [
        "198.18.0.20", "198.18.0.21", "198.18.0.10", "198.18.0.11", "198.18.0.12"]
    assert [to_text(a) for a, _ in iter_from(pool, ip("198.18.0.200"))][0] == "198.18.0.10"
    assert [to_text(a) for a, _ in iter_from(pool, ip("198.18.0.1"))][0] == "198.18.0.10"


def test_slash_24_never_gives_network_or_broadcast() -> None:
    pool = make_pool([{"network": "198.18.0.0/24"}])
    ips = {a for a, _ in iter_from(pool, None)}
    assert len(ips) == 254
    assert ip("198.18.0.0") not in ips and ip("198.18.0.255") not in ips


def test_slash_31_gives_both_addresses() -> None:
    pool = make_pool([{"network": "198.18.0.6/31"}])
    taken: set[int] = set()
    for _ in range(2):
        picked = pick_free(pool, taken, None)
        assert picked is not None
        taken.add(picked[0])
    assert taken == {ip("198.18.0.6"), ip("198.18.0.7")}
    assert pick_free(pool, taken, None) is None


def test_slash_32_gives_one_address() -> None:
    pool = make_pool([{"network": "198.18.0.9/32"}])
    picked = pick_free(pool, set(), ip("198.18.0.9"))
    assert picked is not None and picked[0] == ip("198.18.0.9")
    assert pick_free(pool, {ip("198.18.0.9")}, None) is None


def test_ranges_are_respected() -> None:
    pool = make_pool([{"network": "198.18.0.0/24", "ranges": ["198.18.0.50-198.18.0.52"]}])
    taken: set[int] = set()
    while (picked := pick_free(pool, taken, None)) is not None:
        taken.add(picked[0])
    assert taken == {ip("198.18.0.50"), ip("198.18.0.51"), ip("198.18.0.52")}


def test_subnet_for_takes_the_whole_usable_subnet_and_in_ranges_only_the_ranges() -> None:
    pool = make_pool([
        {"network": "198.18.0.0/24", "ranges": ["198.18.0.50-198.18.0.60"]},
        {"network": "198.18.1.0/31"},
    ])
    first, second = pool.subnets
    assert subnet_for(pool, ip("198.18.0.5")) is first
    assert subnet_for(pool, ip("198.18.0.0")) is None
    assert subnet_for(pool, ip("198.18.0.255")) is None
    assert subnet_for(pool, ip("198.18.1.0")) is second
    assert subnet_for(pool, ip("198.18.2.1")) is None
    assert not in_ranges(pool, ip("198.18.0.5"))
    assert in_ranges(pool, ip("198.18.0.50"))
    assert in_ranges(pool, ip("198.18.1.1"))


@pytest.mark.parametrize("text", ["0.0.0.0", "198.18.0.1", "255.255.255.255"])
def test_to_int_and_to_text_are_inverse(text: str) -> None:
    assert to_text(to_int(text)) == text

"""Node address blocks: the pure window arithmetic, and several nodes (each its own store, Ipam, outbox and informer
cache) leasing from one pool over a fake API server, including caches that lag behind the other nodes' writes on
purpose, so that both sides of the block/per-address protocol are exercised: no address is ever held twice."""

from __future__ import annotations

import ipaddress
import random
import time
from typing import Any

import pytest

from cni.errors import AddressConflict, PoolExhausted, TryAgainLater
from ipamd.ipam.addresses import Ipam
from ipamd.ipam.allocator import to_int
from ipamd.ipam.blocks import Block, addresses_in, free_in, free_window, pick_in, uses_blocks, windows
from ipamd.kube.blocks import KIND as BLOCK_KIND
from ipamd.kube.blocks import BlockRegistry, block_body
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import lease_name
from ipamd.kube.outbox import Outbox
from ipamd.model.objects import IP_ADDRESS, AddressPool
from ipamd.model.timefmt import rfc3339
from ipamd.store.sqlite import Store
from tests.fakes.cluster import FakeApi, FakeCache, served_by
from tests.fakes.source import FakeSource
from tests.unit.test_ipam import Clock, attach, auto_ip, gone, network, obj, pod, pool, static


def pool_of(source: FakeSource, name: str) -> AddressPool:
    found = source.get(pool_kind(), "ns", name)
    assert isinstance(found, AddressPool)
    return found


def pool_kind() -> Any:
    from ipamd.model.objects import IP_ADDRESS_POOL

    return IP_ADDRESS_POOL


def world() -> FakeSource:
    return FakeSource(
        obj("NetworkClass", "cls", {"vlan": {"idPool": ["600-800"]}}, namespace=None),
        pool("big", "198.18.40.0/24", ttl="0s"),  # 254 addresses: blocks
        network("net", "big"),
        pool("small", "198.18.41.0/28", ttl="0s"),  # 14 addresses: per address
        network("small-net", "small"),
        static("fixed", "198.18.40.200"),
        obj("IPAddressPool", "dual", {"leaseTTL": "0s", "pools": [{"network": "198.18.42.0/24"},
                                                                  {"network": "2001:2:0:42::/64"}]}),
        network("dual-net", "dual"),
        pool("quarantined", "198.18.43.0/24", ttl="1h"),  # blocks, and an address let go is quarantined
        network("ttl-net", "quarantined"),
    )


class Node:
    def __init__(self, api: FakeApi, name: str, live: bool = True, claim: bool = True) -> None:
        self.name = name
        self.store = Store(":memory:")
        self.cache = FakeCache(api, live=live)
        self.outbox = Outbox(self.store, api.senders())
        self.clock = Clock()
        self.registry = BlockRegistry(self.cache, name, self.outbox, clock=self.clock,  # type: ignore[arg-type]
                                      spawn=lambda run: run(), claim_blocks=claim)
        self.source = world()
        served_by(api, self.source)
        self.ipam = Ipam(self.store, self.source, self.clock, self.registry)
        self.n = 0

    def add(self, net: str = "net", names: tuple[str, ...] = ()) -> str:
        self.n += 1
        return attach(self.ipam, pod(f"{self.name}-{self.n}"), net=net, names=names)[0].address

    def addresses(self) -> set[str]:
        return {lease.address for lease in self.store.all_leases() if lease.holder}

    def held_by_holder(self) -> list[tuple[str, str]]:
        return [(lease.address, lease.holder) for lease in self.store.all_leases() if lease.holder]


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


def test_windows_are_aligned_and_cover_the_ranges_once() -> None:
    src = world()
    big = pool_of(src, "big")
    first = to_int("198.18.40.0")
    assert windows(big) == [first + 16 * i for i in range(16)]
    assert list(addresses_in(big, first)) == list(range(first + 1, first + 16))  # .0 is the network address
    assert uses_blocks(big) and not uses_blocks(pool_of(src, "small"))
    block = Block("IPAddressPool/ns/big", first + 32, 16, "n1")
    assert block.cidr == "198.18.40.32/28" and first + 47 in block and first + 48 not in block
    assert block.name.startswith("blk-198-18-40-32-")
    busy = {first + 5, first + 20, first + 40}
    assert free_window(big, busy.__contains__, start=first + 16) == first + 48
    assert free_window(big, busy.__contains__, start=first + 250) == first + 48  # wraps around
    assert free_window(big, lambda ip: True) is None


def test_pick_in_goes_round_robin_within_the_nodes_blocks() -> None:
    big = pool_of(world(), "big")
    first = to_int("198.18.40.64")
    blocks = [Block("p", first, 16, "n1")]
    assert pick_in(big, blocks, lambda ip: False, None) == first
    assert pick_in(big, blocks, lambda ip: False, first + 3) == first + 4
    assert pick_in(big, blocks, lambda ip: ip != first + 1, first + 3) == first + 1  # wraps
    assert pick_in(big, blocks, lambda ip: True, None) is None


def test_a_node_leases_inside_its_block_with_no_api_request(api: FakeApi) -> None:
    node = Node(api, "n1")
    first = node.add()
    assert api.calls["create IPAddressBlock"] == 1 and api.calls["list IPAddressLease"] == 1
    before = api.requests()
    got = [node.add() for _ in range(10)]
    assert api.requests() == before, "no API request on the allocation path inside a block"
    assert len({first, *got}) == 11
    block = node.registry.blocks(pool_of(node.source, "big"))[0]
    assert all(to_int(a) in block for a in [first, *got])
    # the lease objects are owed, and the block's first renewal (its create cannot write its status)
    assert node.outbox.depth() == 12 and node.outbox.owes(f"{BLOCK_KIND}/{block.name}")
    node.outbox.flush()
    leases = api.objs[LEASE_KIND]
    assert len(leases) == 11 and all(o["metadata"]["labels"]["network.deckhouse.io/node"] == "n1"
                                     for o in leases.values())


def test_the_next_block_is_claimed_before_the_last_one_runs_out(api: FakeApi) -> None:
    node = Node(api, "n1")
    for _ in range(12):  # 15 addresses in a block: a quarter left after the 12th
        node.add()
    assert len(api.objs[BLOCK_KIND]) == 2
    assert len({node.add() for _ in range(20)}) == 20


def test_a_small_pool_is_leased_per_address_and_gives_out_every_address(api: FakeApi) -> None:
    nodes = [Node(api, f"n{i}") for i in range(8)]
    got = [nodes[i % 8].add("small-net") for i in range(14)]
    assert len(set(got)) == 14 and not api.objs[BLOCK_KIND]
    with pytest.raises(Exception, match="no free address"):
        nodes[0].add("small-net")


def test_nodes_share_a_pool_through_blocks_without_duplicates(api: FakeApi) -> None:
    nodes = [Node(api, f"n{i}") for i in range(6)]
    rng = random.Random(7)
    for _ in range(200):
        rng.choice(nodes).add()
    held = [a for n in nodes for a in n.addresses()]
    assert len(held) == 200 and len(set(held)) == 200
    owners = {ipaddress.ip_network(b["spec"]["cidr"]): b["spec"]["node"] for b in api.objs[BLOCK_KIND].values()}
    assert 0 < len(owners) <= 8, "blocks never take more than half of the pool's 16 windows"
    for n in nodes:  # an address inside a block is its owner's
        for a in n.addresses():
            assert all(owner == n.name for net, owner in owners.items() if ipaddress.ip_address(a) in net)


def test_every_address_of_a_pool_in_blocks_is_handed_out(api: FakeApi) -> None:
    nodes = [Node(api, f"n{i}") for i in range(6)]
    got = []
    for i in range(254):  # the node with free addresses in its blocks gets the pod, as a scheduler would spread them
        node = nodes[i % 6]
        try:
            got.append(node.add())
        except Exception:
            got.append(next(n for n in nodes if n is not node and _has_room(n)).add())
    assert len(set(got)) == 254


def test_a_per_address_lease_made_before_a_block_keeps_its_address(api: FakeApi) -> None:
    """Node A leases .17 by itself (as the controller or a small pool's node would); node B, whose cache has not
    seen that lease yet, claims the block .16/28: its quorum read after the claim finds the lease, so B never hands
    out .17."""
    b = Node(api, "b", live=False)
    a_lease = {"apiVersion": "x", "kind": LEASE_KIND, "metadata": {
        "name": "ip-198-18-40-17-x", "labels": {"network.deckhouse.io/pool": _pool_label("IPAddressPool/ns/big")}},
        "spec": {"pool": "IPAddressPool/ns/big", "ip": "198.18.40.17", "holder": "IPAddress/ns/other"}}
    api.create(LEASE_KIND, a_lease)
    b.registry.grow = _grow_at(b.registry, "198.18.40.16")  # type: ignore[method-assign]
    got = {b.add() for _ in range(15)}
    assert "198.18.40.17" not in got and len(got) == 15


def test_an_address_excluded_from_a_block_is_handed_out_once_its_per_address_lease_is_gone(api: FakeApi) -> None:
    """The per-address lease of .17 that node B's block .16/28 found inside at its claim is let go (its object
    deleted): once B's cache shows the block and no lease of .17, a reconcile round frees .17 for B."""
    b = Node(api, "b")
    name = "ip-198-18-40-17-x"
    api.create(LEASE_KIND, {"apiVersion": "x", "kind": LEASE_KIND, "metadata": {
        "name": name, "labels": {"network.deckhouse.io/pool": _pool_label("IPAddressPool/ns/big")}},
        "spec": {"pool": "IPAddressPool/ns/big", "ip": "198.18.40.17", "holder": "IPAddress/ns/other"}})
    b.registry.grow = _grow_at(b.registry, "198.18.40.16")  # type: ignore[method-assign]
    b.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]  # this one block only
    got = {b.add() for _ in range(15)}
    assert "198.18.40.17" not in got and len(got) == 15, "the window's 16 addresses but .17"
    api.delete(LEASE_KIND, name)
    _housekeeping(b)
    assert b.add() == "198.18.40.17", "the excluded address is the block's again"


def test_a_dual_stack_pool_leases_ipv4_in_blocks_and_ipv6_per_address_with_no_block_lookup(api: FakeApi) -> None:
    """Blocks are IPv4 only: an IPv6 lease is one create-if-absent, and no block could hold it, so no block is read
    after it (as a per-address IPv4 lease's check does)."""
    node = Node(api, "n1")
    claims = attach(node.ipam, pod("d1"), net="dual-net")
    assert [ipaddress.ip_address(c.address).version for c in claims] == [4, 6]
    assert to_int(claims[0].address) in node.registry.blocks(pool_of(node.source, "dual"))[0]
    assert api.calls["create IPAddressLease"] == 1, "the IPv6 address's own lease object"
    assert api.calls["get IPAddressBlock"] == 0


def test_a_block_claimed_before_a_per_address_lease_wins(api: FakeApi) -> None:
    """Node B claims .32/28; node A, whose cache does not show B's block yet, leases per address: its check after
    the create finds B's block and lets the address go, so A's address lies outside B's block."""
    b = Node(api, "b")
    b.registry.grow = _grow_at(b.registry, "198.18.40.32")  # type: ignore[method-assign]
    b.add()
    a = Node(api, "a", live=False)  # its view: before B's block
    a.registry.in_blocks = lambda pool: False  # type: ignore[method-assign]  # per address, like a small pool's
    a.store.set_cursor("IPAddressPool/ns/big", to_int("198.18.40.32"))  # its next pick falls in B's block
    got = a.add()
    block = Block("IPAddressPool/ns/big", to_int("198.18.40.32"), 16, "b")
    assert to_int(got) not in block
    assert api.calls["get IPAddressBlock"] >= 1
    a.outbox.flush()  # the let-go lease object of the address in B's block is deleted
    assert not [o for o in api.objs[LEASE_KIND].values() if o["spec"]["ip"] in {"198.18.40.33"}
                and o["spec"]["holder"] != next(iter(b.addresses()), None)]


def test_a_static_address_in_another_nodes_block_waits_for_its_owner(api: FakeApi) -> None:
    owner, other = Node(api, "owner"), Node(api, "other")
    owner.registry.grow = _grow_at(owner.registry, "198.18.40.192")  # type: ignore[method-assign]
    owner.add()  # the block .192/28 holds the Static's .200
    with pytest.raises(TryAgainLater, match="address block of node owner"):
        other.add(names=("fixed",))
    assert owner.add(names=("fixed",)) == "198.18.40.200"  # the owner leases it (every node leases Statics)
    owner.outbox.flush()  # its lease object is made
    assert other.add(names=("fixed",)) == "198.18.40.200"  # now granted: the same holder, the owner's object


def test_a_static_whose_address_another_nodes_block_gave_to_a_pod_is_refused_as_taken(api: FakeApi) -> None:
    """The Static was made after the owner of the block around it leased its address to a pod: another node is told
    it is taken (104, naming the holder), as a per-address lease would be, not to wait (11) for the owner, who
    refuses it too and never leases it."""
    owner, other = Node(api, "owner"), Node(api, "other")
    fixed = owner.source.get(IP_ADDRESS, "ns", "fixed")
    assert fixed is not None
    owner.source.remove("IPAddress", "ns", "fixed")
    owner.registry.grow = _grow_at(owner.registry, "198.18.40.192")  # type: ignore[method-assign]
    assert "198.18.40.200" in [owner.add() for _ in range(9)]
    owner.outbox.flush()
    owner.source.add(fixed)
    with pytest.raises(AddressConflict, match="198.18.40.200 is already leased to") as refused:
        other.add(names=("fixed",))
    assert "owner-" in refused.value.msg, refused.value.msg


def test_a_static_in_another_nodes_block_made_a_users_node_own_is_still_granted(api: FakeApi) -> None:
    """A pod on node other used the Static in owner's block: its lease object was made other's (``keep_in_use``).
    Once that pod is gone, a third node leasing the Static anew is granted it (the same holder), not told for ever to
    wait for owner, who holds the lease already and never writes the object again (found in review)."""
    from tests.unit.test_ipam import gone

    owner, other = Node(api, "owner"), Node(api, "other")
    owner.registry.grow = _grow_at(owner.registry, "198.18.40.192")  # type: ignore[method-assign]
    owner.add()
    assert owner.add(names=("fixed",)) == "198.18.40.200"
    owner.outbox.flush()
    user = pod("pa")
    assert attach(other.ipam, user, names=("fixed",))[0].address == "198.18.40.200"
    other.outbox.flush()
    gone(other.ipam, user)
    other.outbox.flush()
    assert Node(api, "third").add(names=("fixed",)) == "198.18.40.200"


def test_an_empty_block_is_returned_after_a_while_and_the_last_after_a_long_while(api: FakeApi) -> None:
    node = Node(api, "n1")
    for _ in range(20):
        node.add()
    pools = [pool_of(node.source, "big")]
    assert len(api.objs[BLOCK_KIND]) == 2
    for p in [*node.store.all_ips()]:  # every pod goes
        node.ipam.delete_ip(p)
    node.registry.housekeep(pools, node.ipam.in_use, node.store.transaction)
    node.outbox.flush()
    assert all(o.get("status", {}).get("renewTime") for o in api.objs[BLOCK_KIND].values()), "renewed"
    node.clock.advance(301)
    node.registry.housekeep(pools, node.ipam.in_use, node.store.transaction)
    assert len(api.objs[BLOCK_KIND]) == 1, "one returned, the last kept"
    assert len({node.add() for _ in range(5)}) == 5
    for p in [*node.store.all_ips()]:  # every pod goes again
        node.ipam.delete_ip(p)
    node.registry.housekeep(pools, node.ipam.in_use, node.store.transaction)
    node.clock.advance(1799)
    node.registry.housekeep(pools, node.ipam.in_use, node.store.transaction)
    assert len(api.objs[BLOCK_KIND]) == 1, "the last block kept while the node may use the pool again soon"
    node.clock.advance(2)
    node.registry.housekeep(pools, node.ipam.in_use, node.store.transaction)
    assert not api.objs[BLOCK_KIND], "empty for 30 minutes: returned too, the pool's windows free for other nodes"
    node.add()
    assert len(api.objs[BLOCK_KIND]) == 1, "the node's next pod of the pool claims a block again"


def _has_room(node: Node) -> bool:
    big = pool_of(node.source, "big")
    return any(ip not in node.store.taken_ips(big.meta.key) for b in node.registry.blocks(big)
               for ip in addresses_in(big, b.first, b.size))


def _pool_label(pool: str) -> str:
    from ipamd.kube.leases import pool_label

    return pool_label(pool)


def _grow_at(registry: BlockRegistry, address: str) -> Any:
    """``grow`` that claims exactly the window at ``address`` first (tests choose where the block falls)."""
    original = registry.grow
    done: list[bool] = []

    def grow(pool: AddressPool) -> Block | None:
        if done:
            return original(pool)
        done.append(True)
        from ipamd.kube.blocks import block_body

        block = Block(pool.meta.key, to_int(address), registry.size, registry.node_name)
        registry.objects.create(BLOCK_KIND, block_body(block))
        registry.mine[(block.pool, block.first)] = block
        registry._exclude_leased(block)
        registry._confirmed[(block.pool, block.first)] = registry.clock()  # (claimed now, as ``_checked`` notes)
        return block

    return grow


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_blocks_and_per_address_leases_mixed_with_lagging_caches_never_share_an_address(api: FakeApi,
                                                                                       seed: int) -> None:
    rng = random.Random(seed)
    nodes = [Node(api, f"b{i}", live=False) for i in range(4)] + [Node(api, f"p{i}", live=False) for i in range(2)]
    for n in nodes[4:]:  # leasing per address, as the controller does for user IPAddresses
        n.registry.in_blocks = lambda pool: False  # type: ignore[method-assign]
    for _ in range(150):
        node = rng.choice(nodes)
        if rng.random() < 0.3:
            node.cache.sync()
        if rng.random() < 0.3:
            node.outbox.flush()
        if node.name.startswith("p"):  # anywhere in the pool, blocks included
            node.store.set_cursor("IPAddressPool/ns/big", to_int("198.18.40.0") + rng.randrange(256))
        node.add()
    held = [a for n in nodes for a in n.addresses()]
    assert len(held) == 150 and len(set(held)) == 150, sorted(a for a in held if held.count(a) > 1)


def test_an_exact_address_in_another_nodes_block_is_refused_for_a_delegate(api: FakeApi) -> None:
    owner, other = Node(api, "owner"), Node(api, "other")
    owner.registry.grow = _grow_at(owner.registry, "198.18.40.64")  # type: ignore[method-assign]
    owner.add()
    big = pool_of(other.source, "big")
    with pytest.raises(AddressConflict, match="address block of node owner"):
        other.ipam.allocate_for("vm-1", big, "198.18.40.70")
    assert not other.store.all_leases()


def test_a_static_leased_by_itself_before_a_block_was_claimed_over_it_stays_its_own(api: FakeApi) -> None:
    other = Node(api, "other")
    assert other.add(names=("fixed",)) == "198.18.40.200"  # per address: no block there yet
    other.outbox.flush()
    owner = Node(api, "owner")
    owner.registry.grow = _grow_at(owner.registry, "198.18.40.192")  # type: ignore[method-assign]
    got = {owner.add() for _ in range(14)}
    assert "198.18.40.200" not in got, "the block's owner never hands out what was leased before its block"
    assert owner.add(names=("fixed",)) == "198.18.40.200", "but leases it to the same Static"
    owner.outbox.flush()
    assert ("198.18.40.200", "IPAddress/ns/fixed") in other.held_by_holder(), "the first holder keeps it"
    (obj,) = [o for o in api.objs[LEASE_KIND].values() if o["spec"]["ip"] == "198.18.40.200"]
    assert obj["spec"]["holder"] == "IPAddress/ns/fixed"
    assert all(h == "IPAddress/ns/fixed" for n in (owner, other) for a, h in n.held_by_holder() if a == "198.18.40.200")


def test_nodes_claiming_at_once_keep_blocks_to_half_of_the_pool(api: FakeApi) -> None:
    """Every node's cache is empty (they all start at once): each sees the cap kept, the API server's order of the
    creates decides, and the blocks beyond half of the pool's windows are given back."""
    nodes = [Node(api, f"n{i}", live=False) for i in range(12)]
    for node in nodes:
        node.add()
    assert len(api.objs[BLOCK_KIND]) == 8, "half of the pool's 16 windows"
    held = [a for n in nodes for a in n.addresses()]
    assert len(held) == len(set(held)) == 12


def test_calls_side_by_side_on_one_node_claim_one_block(api: FakeApi) -> None:
    import threading

    node = Node(api, "n1")
    threads = [threading.Thread(target=node.add) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(node.addresses()) == 8 and len(api.objs[BLOCK_KIND]) == 1


def test_a_block_whose_checks_failed_is_never_leased_in(api: FakeApi) -> None:
    """The quorum read after a claim fails (the API server goes away between the two requests): the block is given
    back if it can be, and while it cannot, this node never leases in it although its cache shows it as its own."""
    from kubernetes.client.exceptions import ApiException

    node = Node(api, "n1")
    lister, delete = api.lister, api.delete
    api.lister = lambda kind: (_ for _ in ()).throw(ApiException(status=503))  # type: ignore[method-assign]
    api.delete = lambda kind, name, namespace="", resource_version="": (  # type: ignore[method-assign]
        _ for _ in ()).throw(ApiException(status=503))
    with pytest.raises(TryAgainLater, match="blocks of pool .* are full"):
        node.add()
    (stuck,) = api.objs[BLOCK_KIND].values()  # could not be given back either
    big = pool_of(node.source, "big")
    assert node.registry.blocks(big) == [], "the cache shows it as ours; it is not used"
    api.lister, api.delete = lister, delete  # type: ignore[method-assign]
    got = node.add()
    assert to_int(got) not in Block(big.meta.key, to_int(stuck["spec"]["cidr"].split("/")[0]), 16, "n1")
    (block,) = node.registry.blocks(big)
    assert node.outbox.depth() == 2 and node.outbox.owes(f"{BLOCK_KIND}/{block.name}")  # the lease object, the renewal
    assert node.store.all_leases()[0].address == got


def test_a_node_with_address_blocks_off_leases_per_address_around_the_blocks_of_others(api: FakeApi) -> None:
    owner, plain = Node(api, "owner"), Node(api, "plain", claim=False)
    owner.add()
    owner.outbox.flush()
    (block,) = api.objs[BLOCK_KIND].values()
    inside = {str(ipaddress.ip_address(to_int(block["spec"]["cidr"].split("/")[0]) + k)) for k in range(16)}
    got = [plain.add() for _ in range(20)]
    plain.outbox.flush()
    assert len(api.objs[BLOCK_KIND]) == 1, "--address-blocks off: no block claimed"
    assert len(set(got)) == 20 and not set(got) & inside, "per address, never inside another node's block"
    assert api.calls["create IPAddressLease"] >= 20, "one lease object created per address"


def _housekeeping(node: Node) -> None:
    node.registry.housekeep([pool_of(node.source, "big")], node.ipam.in_use, node.store.transaction)


def _answered_by(owner: Node) -> Any:
    """How an allocation waits for a block it asked for, with the owner's reconcile round (which the change of its
    block wakes in the daemon) made right there."""
    def wait(done: Any, timeout_s: float) -> bool:
        _housekeeping(owner)
        return bool(done())
    return wait


def _window(block: dict[str, Any]) -> set[str]:
    return {str(a) for a in ipaddress.ip_network(block["spec"]["cidr"])}


def test_a_node_with_no_free_address_outside_blocks_gets_a_block_back_from_its_owner(api: FakeApi) -> None:
    """The owner holds two blocks with free addresses; the other node (address blocks off, so that it fills every
    address outside them) finds none left: it asks for the block with the most free addresses, the owner gives it
    back with its leases inside (their objects made first), and every address of the pool is handed out once."""
    owner = Node(api, "owner")
    for _ in range(20):  # 16 + 4 of 32: two blocks
        owner.add()
    owner.outbox.flush()
    renewed = api.calls["patch_status IPAddressBlock"]  # the first renewal of each block
    other = Node(api, "other", claim=False)
    other.registry.wait = _answered_by(owner)
    blocks = {b["metadata"]["name"]: b for b in api.objs[BLOCK_KIND].values()}
    assert len(blocks) == 2
    emptier = max(blocks.values(), key=lambda b: len(_window(b) - owner.addresses()))
    owners_inside = _window(emptier) & owner.addresses()
    assert owners_inside, "the block asked for has leases of its owner inside"
    before = []
    while True:  # every address outside the owner's blocks
        try:
            before.append(other.add())
        except Exception:
            break
        if any(a in _window(emptier) for a in before[-1:]):
            break
    got = before[-1]
    assert got in _window(emptier), "the next address came from the block given back"
    assert emptier["metadata"]["name"] not in api.objs[BLOCK_KIND], "the block is gone"
    assert len(api.objs[BLOCK_KIND]) == 1, "the owner's other block stays"
    assert api.calls["patch_status IPAddressBlock"] - renewed == 1, "one request to return it"
    leases = {o["spec"]["ip"]: o for o in api.objs[LEASE_KIND].values()}
    for a in owners_inside:  # the owner's leases inside live on, as per-address leases with their objects
        assert a in owner.addresses() and leases[a]["metadata"]["labels"]["network.deckhouse.io/node"] == "owner"
    # from here both nodes share the window per address, and every address goes to one of them exactly once
    while True:
        try:
            other.add()
        except Exception:
            break
    while True:
        try:
            owner.add()
        except Exception:
            break
    held = [a for n in (owner, other) for a in n.addresses()]
    assert len(held) == len(set(held)), "no address held twice"
    assert len(held) == 254, "every address of the pool is handed out"


def test_a_reconcile_round_keeps_the_lease_object_of_an_address_let_go_and_leased_again_in_a_block(
        api: FakeApi) -> None:
    """.17 of the block is let go and leased again to a new holder while the cache still shows the old holder's
    object: the round's clean-up of stray objects must not delete it (one name for both), or the address the store
    holds would have no IPAddressLease, and be anyone's once the block is given back."""
    n1 = Node(api, "n1", live=False)
    n1.registry.grow = _grow_at(n1.registry, "198.18.40.16")  # type: ignore[method-assign]
    n1.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    assert [n1.add() for _ in range(3)] == ["198.18.40.16", "198.18.40.17", "198.18.40.18"]
    n1.outbox.flush()
    n1.cache.sync()  # the cache shows the 3 lease objects
    first = next(r for r in n1.store.all_ips() if r.address == "198.18.40.17")
    n1.ipam.delete_ip(first)  # its pod gone (leaseTTL 0): released, the delete of its object owed
    n1.store.set_cursor("IPAddressPool/ns/big", to_int("198.18.40.16"))
    assert n1.add() == "198.18.40.17"  # leased again in the block, to a new holder: block_lease owed
    holder = next(lease.holder for lease in n1.store.all_leases() if lease.address == "198.18.40.17")

    n1.registry.stray(n1.store, -100)  # a reconcile round (objects older than the grace period)
    n1.outbox.flush()
    objs = {o["spec"]["ip"]: o for o in api.objs[LEASE_KIND].values()}
    assert "198.18.40.17" in objs and objs["198.18.40.17"]["spec"]["holder"] == holder, \
        "n1 holds .17 but its IPAddressLease is gone"


def test_another_nodes_object_in_the_way_of_a_block_lease_is_waited_for_not_taken_over(api: FakeApi) -> None:
    """Node B leases .17 per address before its cache shows A's block .16/28, finds the block and lets .17 go (its
    delete owed, by name). A, whose cache does not show B's object, hands .17 out in its block: its lease object's
    create meets B's object, which it waits for instead of taking over (B's delete would remove it), and makes once
    B's delete is made."""
    b = Node(api, "b", live=False)
    a = Node(api, "a", live=False)
    a.registry.grow = _grow_at(a.registry, "198.18.40.16")  # type: ignore[method-assign]
    a.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    assert a.add() == "198.18.40.16"
    b.registry.in_blocks = lambda pool: False  # type: ignore[method-assign]  # per address, as a small pool's
    b.store.set_cursor("IPAddressPool/ns/big", to_int("198.18.40.16"))
    assert to_int(b.add()) >= to_int("198.18.40.32"), "B let .17 go on finding A's block"
    assert a.add() == "198.18.40.17"
    a.outbox.flush()  # its create meets B's object: owed still
    target = next(t for t in (f"{LEASE_KIND}/{n}" for n in api.objs[LEASE_KIND]) if "198-18-40-17" in t)
    assert a.outbox.owes(target)
    assert api.objs[LEASE_KIND][target.split("/")[1]]["metadata"]["labels"]["network.deckhouse.io/node"] == "b"
    b.outbox.flush()  # B's delete, by name
    assert a.outbox.flush_target(target), "made once B's object is gone"
    objs = {o["spec"]["ip"]: o for o in api.objs[LEASE_KIND].values()}
    holder = next(lease.holder for lease in a.store.all_leases() if lease.address == "198.18.40.17")
    assert objs["198.18.40.17"]["spec"]["holder"] == holder
    assert objs["198.18.40.17"]["metadata"]["labels"]["network.deckhouse.io/node"] == "a"


def test_a_block_deleted_by_someone_else_is_no_longer_leased_in(api: FakeApi) -> None:
    """The controller reclaims node A's block (A was silent past --block-ttl) or someone deletes it by hand: A's next
    reconcile round finds it gone from the API server, makes the lease objects it owed there and leases per address
    from then on, so another node leasing in the window per address never gets an address A holds."""
    a = Node(api, "a")
    a.registry.grow = _grow_at(a.registry, "198.18.40.16")  # type: ignore[method-assign]
    a.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    held = {a.add() for _ in range(3)}
    (name,) = api.objs[BLOCK_KIND]
    api.delete(BLOCK_KIND, name)
    assert a.outbox.depth() and not api.objs[LEASE_KIND], "its lease objects still owed"
    _housekeeping(a)
    assert not a.registry.blocks(pool_of(a.source, "big")), "no longer leased in"
    assert {o["spec"]["ip"] for o in api.objs[LEASE_KIND].values()} == held, "the owed lease objects made at once"
    a.registry.grow = lambda pool: None  # type: ignore[method-assign]  # no block anew: per address from here
    other = Node(api, "other", claim=False)
    other.store.set_cursor("IPAddressPool/ns/big", to_int("198.18.40.16"))
    theirs = {other.add() for _ in range(3)}
    mine = {a.add() for _ in range(3)}
    assert not theirs & (held | mine), "no address held by both nodes"


def test_an_excluded_address_is_freed_only_once_the_api_server_says_its_lease_is_gone(api: FakeApi) -> None:
    """The block informer shows B's block while the lease informer lags (a relist, a slow watch) and does not show
    the per-address lease found inside at the claim: that lease is read from the API server before the address is
    freed, so B never hands out an address another node holds."""
    b = Node(api, "b", live=False)
    api.create(LEASE_KIND, {"apiVersion": "x", "kind": LEASE_KIND, "metadata": {
        "name": lease_name("IPAddressPool/ns/big", "198.18.40.17"),
        "labels": {"network.deckhouse.io/pool": _pool_label("IPAddressPool/ns/big")}},
        "spec": {"pool": "IPAddressPool/ns/big", "ip": "198.18.40.17", "holder": "IPAddress/ns/other"}})
    b.registry.grow = _grow_at(b.registry, "198.18.40.16")  # type: ignore[method-assign]
    b.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    b.add()
    b.cache.sync()
    b.cache._snapshot[LEASE_KIND] = []  # the block informer is up to date, the lease informer lags
    _housekeeping(b)
    got = {b.add() for _ in range(14)}
    assert "198.18.40.17" not in got and len(got) == 14


def test_a_static_asked_for_while_another_call_claims_its_address_is_told_to_try_again(api: FakeApi) -> None:
    """An Auto ADD picked .200 of the node's block and its claim is out when the Static IPAddress asking for .200 is
    leased by another call: the Static is told to try again (code 11) instead of recording .200 too, which let the
    Auto's let-go of it delete the Static's lease object."""
    n1 = Node(api, "n1")
    n1.registry.grow = _grow_at(n1.registry, "198.18.40.192")  # type: ignore[method-assign]
    n1.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    n1.add()
    n1.store.set_cursor("IPAddressPool/ns/big", to_int("198.18.40.199"))
    claim = n1.registry.claim
    refused: list[str] = []

    def claim_with_a_static_meanwhile(lease: Any, exact: bool = False) -> bool:
        if lease.address == "198.18.40.200" and not (lease.holder or "").endswith("/fixed") and not refused:
            with pytest.raises(TryAgainLater, match="another call") as exc:
                n1.add(names=("fixed",))
            refused.append(str(exc.value))
        return bool(claim(lease, exact))

    n1.registry.claim = claim_with_a_static_meanwhile  # type: ignore[method-assign]
    assert n1.add() == "198.18.40.200" and refused
    holder = dict(n1.held_by_holder())["198.18.40.200"]
    n1.outbox.flush()
    assert {o["spec"]["ip"]: o["spec"]["holder"] for o in api.objs[LEASE_KIND].values()}["198.18.40.200"] == holder
    with pytest.raises(AddressConflict):
        n1.add(names=("fixed",))


def test_an_address_reserved_by_another_call_between_the_pick_and_the_reservation_is_not_claimed(
        api: FakeApi) -> None:
    """A Static's claim reserves its address outside the store's lock: when it does so between an Auto pick of the
    same address and the pick's reservation, the Auto goes on to the next address instead of claiming it too."""
    n1 = Node(api, "n1")
    n1.registry.grow = _grow_at(n1.registry, "198.18.40.192")  # type: ignore[method-assign]
    n1.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    n1.add()
    n1.store.set_cursor("IPAddressPool/ns/big", to_int("198.18.40.199"))
    reserve = n1.ipam._reserve
    refused: list[str] = []

    def reserved_first(lease: Any) -> bool:
        if lease.address == "198.18.40.200" and not refused:
            refused.append(lease.address)  # the Static's reservation came first
            return False
        return bool(reserve(lease))

    n1.ipam._reserve = reserved_first  # type: ignore[method-assign]
    assert n1.add() == "198.18.40.201" and refused


def test_a_per_address_lease_that_finds_another_nodes_block_skips_its_whole_window(api: FakeApi) -> None:
    """Node B leases per address and its cache does not show A's block .16/28 yet: its first lease there finds the
    block (a GET) and is let go, and its next pick skips the whole window instead of trying each of its addresses."""
    b = Node(api, "b", live=False, claim=False)  # its cache: from before A's block
    a = Node(api, "a")
    a.registry.grow = _grow_at(a.registry, "198.18.40.16")  # type: ignore[method-assign]
    a.add()
    b.store.set_cursor("IPAddressPool/ns/big", to_int("198.18.40.16"))
    creates = api.calls["create IPAddressLease"]
    assert to_int(b.add()) >= to_int("198.18.40.32")
    assert api.calls["get IPAddressBlock"] == 2, "one read of A's block, one of the window of the address outside"
    assert api.calls["create IPAddressLease"] - creates == 2, "one lease object let go in the window, one outside it"


def test_a_static_let_go_by_another_node_keeps_the_lease_object_the_block_owner_made_its_own(api: FakeApi) -> None:
    """Node B leases the Static's .200 per address before its cache shows A's block .192/28, finds the block and lets
    .200 go; A leases the same Static in its block and makes B's object its own (the same holder). B's delete of its
    object is conditional on the version it made, so it no longer removes A's."""
    b = Node(api, "b", live=False)  # its cache: from before A's block
    b.registry.in_blocks = lambda pool: False  # type: ignore[method-assign]
    a = Node(api, "a")
    a.registry.grow = _grow_at(a.registry, "198.18.40.192")  # type: ignore[method-assign]
    a.add()
    with pytest.raises(AddressConflict):
        b.add(names=("fixed",))  # created, then let go: the delete owed
    assert a.add(names=("fixed",)) == "198.18.40.200"
    a.outbox.flush()  # its object meets B's, of the same holder: made A's
    b.outbox.flush()  # B's delete: the object is no longer the one it made
    (obj,) = [o for o in api.objs[LEASE_KIND].values() if o["spec"]["ip"] == "198.18.40.200"]
    assert obj["spec"]["holder"] == "IPAddress/ns/fixed" and obj["metadata"]["labels"]["network.deckhouse.io/node"] == "a"
    assert not b.outbox.depth(), "the refused delete is done with, not retried"


def test_a_window_skipped_for_a_block_read_once_is_looked_at_again_before_the_pool_is_called_full(
        api: FakeApi) -> None:
    """B found A's block .16/28 by a read and skips its window; A's block is gone since (its pod went, it was
    returned): before B calls the pool full it looks at that window again, and hands out all 254 addresses."""
    b = Node(api, "b", live=False, claim=False)
    a = Node(api, "a")
    a.registry.grow = _grow_at(a.registry, "198.18.40.16")  # type: ignore[method-assign]
    a.add()
    b.store.set_cursor("IPAddressPool/ns/big", to_int("198.18.40.16"))
    assert to_int(b.add()) >= to_int("198.18.40.32") and b.registry.seen
    for kind in (LEASE_KIND, BLOCK_KIND):
        for name in [n for n, o in api.objs[kind].items() if kind == BLOCK_KIND
                     or o["metadata"]["labels"].get("network.deckhouse.io/node") == "a"]:
            api.delete(kind, name)
    b.outbox.flush()
    b.cache.sync()
    while True:
        try:
            b.add()
        except PoolExhausted:
            break
    assert len(b.addresses()) == 254


def test_a_static_at_an_address_excluded_from_the_nodes_block_is_refused_after_a_restart_too(api: FakeApi) -> None:
    """N2 holds .1 per address; N1 claims the block .0/28 over it (.1 excluded) and refuses a Static naming .1. N1's
    daemon restarts (its store kept, what it excluded forgotten): the Static is refused still, from the cache."""
    n2 = Node(api, "n2", claim=False)
    x = n2.add()
    assert x == "198.18.40.1"
    n1 = Node(api, "n1")
    n1.registry.grow = _grow_at(n1.registry, "198.18.40.0")  # type: ignore[method-assign]
    assert n1.add() != x
    n1.source.add(static("st", x))
    with pytest.raises(AddressConflict):
        attach(n1.ipam, pod("s1"), names=("st",))
    n1.outbox = Outbox(n1.store, api.senders())  # restarted: the same store, every in-memory part new
    n1.registry = BlockRegistry(n1.cache, "n1", n1.outbox, clock=n1.clock,  # type: ignore[arg-type]
                                spawn=lambda run: run())
    n1.ipam = Ipam(n1.store, n1.source, n1.clock, n1.registry)
    with pytest.raises(AddressConflict):
        attach(n1.ipam, pod("s2"), names=("st",))
    assert x in n2.addresses()


def test_a_full_block_asked_for_on_a_lagging_cache_is_kept_and_shown_full(api: FakeApi) -> None:
    """The other node fills every address outside the owner's full block .16/28, whose lease objects the owner still
    owes, so the other node's cache shows the block empty: it asks for it. The owner has no free address in it, so it
    keeps the block, makes its lease objects at once and withdraws the request: the asker, seeing the block full,
    finds the pool full (code 100) at once. When one of the owner's addresses is let go, the next request gets the
    block back, and that address."""
    from cni.errors import PoolExhausted

    owner = Node(api, "owner")
    owner.registry.grow = _grow_at(owner.registry, "198.18.40.16")  # type: ignore[method-assign]
    owner.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]  # this one block only
    held = {owner.add() for _ in range(16)}
    (name,) = api.objs[BLOCK_KIND]
    assert held == _window(api.objs[BLOCK_KIND][name]) and not api.objs[LEASE_KIND], "full, its lease objects owed"
    other = Node(api, "other", claim=False)
    other.registry.wait = _answered_by(owner)
    for _ in range(254 - 16):
        other.add()
    with pytest.raises(PoolExhausted):
        other.add()
    assert name in api.objs[BLOCK_KIND] and owner.registry.blocks(pool_of(owner.source, "big")), "kept, still leased in"
    assert not api.objs[BLOCK_KIND][name]["status"].get("returnRequestedBy"), "the request is withdrawn"
    assert {o["spec"]["ip"] for o in api.objs[LEASE_KIND].values()} >= held, "the block's lease objects are made"
    asks = api.calls["patch_status IPAddressBlock"]
    with pytest.raises(PoolExhausted):
        other.add()
    assert api.calls["patch_status IPAddressBlock"] == asks, "a block shown full is not asked for again"
    let_go = sorted(owner.store.all_ips(), key=lambda r: r.key)[0]
    freed = next(lease.address for lease in owner.store.all_leases() if lease.holder == let_go.key)
    owner.ipam.delete_ip(let_go)
    owner.outbox.flush()
    assert other.add() == freed, "asked for again, given back with its one free address"
    assert name not in api.objs[BLOCK_KIND]
    assert len(owner.addresses()) == 15 and not owner.addresses() & other.addresses()


def test_a_block_whose_lease_objects_cannot_be_made_stays_its_owners(api: FakeApi) -> None:
    """The owner is asked for its block while the API does not take its lease objects: it keeps the block (and goes
    on leasing inside it with no request), the asking node finds the pool full for now (its request stays out), and a
    later round, the API back, gives the block back."""
    from kubernetes.client.exceptions import ApiException

    owner = Node(api, "owner")
    for _ in range(3):
        owner.add()  # lease objects owed, not made
    (name,) = api.objs[BLOCK_KIND]
    away = ApiException(status=503, reason="ServiceUnavailable")
    put_lease = owner.outbox.senders["block_lease"]

    def failing(body: dict[str, Any]) -> None:
        raise away

    owner.outbox.senders["block_lease"] = failing
    other = Node(api, "other", claim=False)
    other.registry.wait = _answered_by(owner)
    assert not other.registry.ask_return(pool_of(other.source, "big")), "not given back: the pool is full for now"
    assert api.objs[BLOCK_KIND][name]["status"]["returnRequestedBy"] == "other"
    assert name in api.objs[BLOCK_KIND] and not api.objs[LEASE_KIND]
    requests = api.requests()
    got = owner.add()
    assert to_int(got) in owner.registry.blocks(pool_of(owner.source, "big"))[0]
    assert api.requests() == requests, "still the owner's to lease in with no request"
    owner.outbox.senders["block_lease"] = put_lease
    assert other.registry.ask_return(pool_of(other.source, "big")), "returned once its lease objects are made"
    assert name not in api.objs[BLOCK_KIND] and len(api.objs[LEASE_KIND]) == 4
    assert api.calls["patch_status IPAddressBlock"] == 1, "the request still out is not made again"
    taken = owner.addresses()
    assert not {other.add() for _ in range(10)} & taken


def test_a_stale_request_is_not_acted_on_and_a_failed_delete_is_made_later(api: FakeApi) -> None:
    from kubernetes.client.exceptions import ApiException

    owner = Node(api, "owner")
    owner.add()
    (name,) = api.objs[BLOCK_KIND]
    api.patch_status(BLOCK_KIND, name, {"returnRequestedBy": "other", "returnRequestedAt": "2000-01-01T00:00:00Z"})
    assert not owner.registry.asked()
    _housekeeping(owner)
    assert name in api.objs[BLOCK_KIND], "a request long past is not acted on"
    api.patch_status(BLOCK_KIND, name, {"returnRequestedAt": rfc3339(owner.clock())})
    assert owner.registry.asked()
    delete = api.delete

    def refused(kind: str, name: str, namespace: str = "", resource_version: str = "") -> None:
        raise ApiException(status=503, reason="ServiceUnavailable")

    api.delete = refused  # type: ignore[method-assign]
    _housekeeping(owner)
    assert name in api.objs[BLOCK_KIND]
    assert not owner.registry.blocks(pool_of(owner.source, "big")), "given back: no longer leased in"
    api.delete = delete  # type: ignore[method-assign]
    _housekeeping(owner)
    assert name not in api.objs[BLOCK_KIND], "the delete is made by a later round"


def test_free_in_counts_exactly_or_stops_at_enough_looking_at_the_newest_blocks_first() -> None:
    big = pool_of(world(), "big")
    blocks = [Block("IPAddressPool/ns/big", to_int("198.18.40.0") + 16 * k, 16, "n") for k in range(1, 4)]
    used = set(range(to_int("198.18.40.16"), to_int("198.18.40.48")))  # the first two blocks are full
    looked: list[int] = []

    def taken(ip: int) -> bool:
        looked.append(ip)
        return ip in used

    assert free_in(big, blocks, taken) == 16
    looked.clear()
    assert free_in(big, blocks, taken, enough=4) == 4 and len(looked) == 4, "the newest block answers at once"


def test_an_exact_address_asked_again_right_after_its_let_go_is_not_leased_on_a_stale_cache() -> None:
    """A holder asks for its exact address again right after letting it go, the delete of its lease object made but
    not yet shown by the informer: the cache's object of the same holder is read again from the API server, so the
    address gets a lease object anew, and another node does not hand it out (found in review: it was leased with no
    object, and another node leased it per address)."""
    api = FakeApi()
    a = Node(api, "a", live=False, claim=False)  # per address for this node
    big = pool_of(a.source, "big")
    a.ipam.allocate_for("client", big, "198.18.40.100")
    a.outbox.flush()
    a.cache.sync()
    assert a.ipam.release_address(big, "198.18.40.100", force=True)
    a.outbox.flush()  # the delete made; the informer has not shown it yet
    assert not [o for o in api.objs[LEASE_KIND].values() if o["spec"]["ip"] == "198.18.40.100"]
    a.ipam.allocate_for("client", big, "198.18.40.100")
    a.outbox.flush()
    assert [o["spec"]["holder"] for o in api.objs[LEASE_KIND].values() if o["spec"]["ip"] == "198.18.40.100"] == \
        ["api/client"]
    b = Node(api, "b", claim=False)
    b.store.set_cursor(big.meta.key, to_int("198.18.40.99"))
    assert b.add() != "198.18.40.100"


def test_the_cap_on_blocks_holds_when_an_old_block_is_renewed_during_the_check() -> None:
    """16 windows, a cap of 8: 7 blocks held since long ago, two nodes create the 8th and 9th at once, and an old
    block's renewal is written before their checks list the blocks. The renewed block still sorts first (its creation
    time), so the 9th is given back (found in review: ordered by the last write, both new blocks were kept)."""
    from ipamd.kube.blocks import block_body

    api = FakeApi()
    x, y = Node(api, "x"), Node(api, "y")
    big = pool_of(x.source, "big")
    first = to_int("198.18.40.0")
    for k in range(7):
        made = api.create(BLOCK_KIND, block_body(Block(big.meta.key, first + 16 * k, 16, "old")))
        api.objs[BLOCK_KIND][made["metadata"]["name"]]["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    nx, ny = Block(big.meta.key, first + 16 * 8, 16, "x"), Block(big.meta.key, first + 16 * 9, 16, "y")
    api.create(BLOCK_KIND, block_body(nx))
    api.create(BLOCK_KIND, block_body(ny))
    old = next(n for n, o in api.objs[BLOCK_KIND].items() if o["spec"]["node"] == "old")
    api.patch_status(BLOCK_KIND, old, {"renewTime": rfc3339()})
    kept = [not x.registry._over_the_cap(nx, big), not y.registry._over_the_cap(ny, big)]
    assert kept == [True, False] and len(api.objs[BLOCK_KIND]) == 8


def test_a_node_stops_leasing_in_its_block_once_the_informer_shows_the_controller_deleted_it() -> None:
    """The controller reclaimed node a's block (a silent past --block-ttl, no pod alive) and node b claimed the same
    window. a's daemon is still up: once its informer shows the delete it leases there no more, without waiting for
    its next round (found in review: the block claimed here hid the delete until then, and both nodes leased .19)."""
    api = FakeApi()
    a = Node(api, "a")
    a.registry.grow = _grow_at(a.registry, "198.18.40.16")  # type: ignore[method-assign]
    a.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    held = {a.add() for _ in range(3)}
    a.outbox.flush()
    (name,) = api.objs[BLOCK_KIND]
    api.delete(BLOCK_KIND, name)  # the controller's reclaim
    b = Node(api, "b")
    b.registry.grow = _grow_at(b.registry, "198.18.40.16")  # type: ignore[method-assign]
    b.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    theirs = {b.add() for _ in range(3)}
    assert not theirs & held
    mine = a.add()  # before a's next round
    a.outbox.flush()
    assert mine not in theirs | {b.add() for _ in range(3)}


def test_a_block_claimed_over_a_per_address_lease_outside_the_ranges_excludes_it() -> None:
    """Node b leases .5 (outside the pool's ranges, inside window .0/28) per address for Static s-two. Node a, its cache
    from before that, then claims block .0/28, and a pod names Static s-one at .5 too: the claim's quorum read of the
    window's lease objects finds .5 (the whole window, not its ranges alone), so a refuses it (found in review: a
    leased .5 in its block with no request, and both pods held it)."""
    api = FakeApi()
    a = Node(api, "a", live=False)
    b = Node(api, "b", claim=False)
    for node in (a, b):
        node.source.add(pool("rng", "198.18.60.0/24", ranges=["198.18.60.10-198.18.60.250"], ttl="0s"))
        node.source.add(network("rng-net", "rng"))
        node.source.add(static("s-one", "198.18.60.5", net="rng-net"))
        node.source.add(static("s-two", "198.18.60.5", net="rng-net"))
    a.cache.sync()  # a's cache: before b's lease object
    assert attach(b.ipam, pod("pb"), net="rng-net", names=("s-two",))[0].address == "198.18.60.5"
    a.registry.grow = _grow_at(a.registry, "198.18.60.0")  # type: ignore[method-assign]
    a.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    attach(a.ipam, pod("pa0"), net="rng-net")  # a claims .0/28 (and leases .10 in it)
    assert [blk.first for blk in a.registry.mine.values()] == [to_int("198.18.60.0")]
    with pytest.raises(AddressConflict):
        attach(a.ipam, pod("pa"), net="rng-net", names=("s-one",))
    assert [o["spec"]["holder"] for o in api.objs[LEASE_KIND].values() if o["spec"]["ip"] == "198.18.60.5"] == \
        ["IPAddress/ns/s-two"]


def test_a_block_holding_only_a_static_outside_the_ranges_is_not_returned_as_empty(api: FakeApi) -> None:
    """What a block holds is its whole window: a Static outside the pool's ranges leased in it keeps it from counting
    as empty (found in review: the emptiness looked at the ranges alone)."""
    a = Node(api, "a")
    a.source.add(pool("rng", "198.18.60.0/24", ranges=["198.18.60.10-198.18.60.250"], ttl="0s"))
    a.source.add(network("rng-net", "rng"))
    a.source.add(static("s-one", "198.18.60.5", net="rng-net"))
    rng = pool_of(a.source, "rng")
    a.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    for first in ("198.18.60.16", "198.18.60.0"):  # two blocks: the last one of a pool is never returned
        a.registry.grow = _grow_at(a.registry, first)  # type: ignore[method-assign]
        a.registry.grow(rng)
    assert attach(a.ipam, pod("ps"), net="rng-net", names=("s-one",))[0].address == "198.18.60.5"
    assert to_int("198.18.60.5") in a.registry.block_at(rng.meta.key, to_int("198.18.60.5"))  # type: ignore[operator]
    for _ in range(2):
        a.registry.housekeep([rng], a.ipam.in_use, a.store.transaction)
        a.clock.advance(301)
    assert sorted(o["spec"]["cidr"] for o in api.objs[BLOCK_KIND].values()) == ["198.18.60.0/28"]


def test_a_block_lease_owed_when_its_static_goes_does_not_take_over_the_object_another_node_keeps() -> None:
    """pa on n1 uses Static `fixed`, leased per address before n2 claimed the block around it; n2 then leases the
    Static in its block, its lease object still owed. The user deletes the Static while pa runs: n1 keeps the object,
    and n2's release drops its owed block_lease instead of making it (found in review: it took the object over as
    n2's, same holder, and the release behind it deleted it, while pa used the address)."""
    from ipamd.kube.blocks import block_body
    from ipamd.kube.leases import NODE_LABEL
    from ipamd.node.reconcile import Reconciler

    def rounds(node: Node) -> Reconciler:
        return Reconciler(node.store, node.source, node.ipam, None, None, None, cluster=True)  # type: ignore[arg-type]

    def objects_at(ip: str) -> list[tuple[Any, Any]]:
        return [(o["spec"].get("holder"), o["metadata"]["labels"].get(NODE_LABEL))
                for o in fake.objs[LEASE_KIND].values() if o["spec"]["ip"] == ip]

    fake = FakeApi()
    n1 = Node(fake, "n1", claim=False)
    attach(n1.ipam, pod("pa"), names=("fixed",))
    n1.outbox.flush()
    assert objects_at("198.18.40.200") == [("IPAddress/ns/fixed", "n1")]
    fake.create(BLOCK_KIND, block_body(Block("IPAddressPool/ns/big", to_int("198.18.40.192"), 16, "n2")))
    n2 = Node(fake, "n2")
    rounds(n2)._sync_ipaddresses(statics_only=True)  # n2 leases the Static in its block: its lease object owed
    assert n2.outbox.of_op("block_lease")
    for node in (n1, n2):
        node.source.remove("IPAddress", "ns", "fixed")
    rounds(n1)._sync_ipaddresses(statics_only=True)  # the keep
    n1.outbox.flush()
    rounds(n2)._sync_ipaddresses(statics_only=True)  # n2 lets its lease go
    n2.outbox.flush()
    assert objects_at("198.18.40.200") == [("IPAddress/ns/fixed", "n1")]


def sticky_holders(api: FakeApi, holder: str) -> list[str]:
    return sorted(o["spec"]["ip"] for o in api.objs[LEASE_KIND].values() if o["spec"].get("holder") == holder)


def test_a_users_ipaddress_leased_in_a_block_keeps_its_address_when_its_next_pod_starts_on_another_node(
        api: FakeApi) -> None:
    """The lease object of an address of a node's block is owed, made after the call; but a user's IPAddress outlives
    its pods, and another node looks its address up by that object when the next pod starts there: it is made before
    the call returns (found in review: node B leased the IPAddress a second address while A's write waited)."""
    a, b = Node(api, "na"), Node(api, "nb")
    for n in (a, b):
        n.source.add(auto_ip("sticky"))
    b.add()
    own = a.add()  # a pod's own IPAddress goes with its pod: its object stays owed, no request on the call's path
    assert own not in [o["spec"]["ip"] for o in api.objs[LEASE_KIND].values()] and a.outbox.depth()
    first = attach(a.ipam, pod("db-0", uid="uid-1"), names=("sticky",))[0].address
    assert to_int(first) in a.registry.blocks(pool_of(a.source, "big"))[0], "leased in a's block"
    assert sticky_holders(api, "IPAddress/ns/sticky") == [first], "its object made before the call returned"
    gone(a.ipam, pod("db-0", uid="uid-1"))
    second = attach(b.ipam, pod("db-0", uid="uid-2"), names=("sticky",))[0].address
    assert second == first, "the pod started again on node b: the same address"
    a.outbox.flush(), b.outbox.flush()
    assert sticky_holders(api, "IPAddress/ns/sticky") == [first], "one lease object for the holder"


def test_a_users_ipaddress_leased_in_a_block_while_the_api_is_away_is_served_and_its_object_owed(
        api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    a = Node(api, "na")
    a.source.add(auto_ip("sticky"))
    a.add()  # the block claimed
    create = api.create

    def refused(kind: str, body: dict[str, Any], namespace: str = "") -> dict[str, Any]:
        raise ConnectionRefusedError("the API server is away")

    monkeypatch.setattr(api, "create", refused)
    first = attach(a.ipam, pod("db-0", uid="uid-1"), names=("sticky",))[0].address
    target = f"{LEASE_KIND}/{lease_name('IPAddressPool/ns/big', first)}"
    assert a.outbox.owes(target) and a.outbox.api_away(), "served; its object owed"
    monkeypatch.setattr(api, "create", create)
    a.outbox.answered()
    a.outbox.flush()
    assert sticky_holders(api, "IPAddress/ns/sticky") == [first], "made once the API server is back"


def test_a_grpc_clients_lease_in_a_block_makes_no_request_on_its_path(api: FakeApi) -> None:
    """A gRPC client's lease (``api/<owner>``) is asked for on its node: its lease object is owed like a pod's own,
    not made before the call answers as a user's IPAddress's is (a first version did: the gRPC race over blocks fell
    from 140 to 88 allocations/s in bench-kube)."""
    node = Node(api, "na")
    node.add()  # the block claimed
    before = api.requests()
    _, lease = node.ipam.allocate_for("client", pool_of(node.source, "big"))
    assert api.requests() == before, "no API request"
    assert node.outbox.owes(f"{LEASE_KIND}/{lease_name(lease.pool, lease.address)}"), "its object owed"


def _released_object(api: FakeApi, change: dict[str, Any] | None, net: str = "net",
                     pool_name: str = "big") -> tuple[dict[str, Any] | None, int]:
    """A node leases an address (in its block, or per address in a small pool), the object is changed by someone else
    or not, and the address is let go: the object as left, and how many times the node read it."""
    node = Node(api, "n1")
    app = pod("app")
    address = attach(node.ipam, app, net=net)[0].address
    node.outbox.flush()
    name = lease_name(f"IPAddressPool/ns/{pool_name}", address)
    assert name in api.objs[LEASE_KIND], "made by the outbox"
    if change is not None:
        api.patch(LEASE_KIND, name, change)
    reads = api.calls["get IPAddressLease"]
    gone(node.ipam, app)
    node.outbox.flush()
    assert node.outbox.depth() == 0
    return api.objs[LEASE_KIND].get(name), api.calls["get IPAddressLease"] - reads


@pytest.mark.parametrize(("net", "pool_name"), [("net", "big"), ("small-net", "small")], ids=["block", "per-address"])
def test_a_lease_object_this_node_made_is_deleted_at_the_version_its_create_answered_without_a_read(
        api: FakeApi, net: str, pool_name: str) -> None:
    left, reads = _released_object(api, None, net, pool_name)
    assert left is None and reads == 0, "one request to let the address go: the delete"


def test_a_lease_object_changed_since_this_node_made_it_is_read_before_it_is_deleted(api: FakeApi) -> None:
    left, reads = _released_object(api, {"metadata": {"annotations": {"someone": "else"}}})
    assert left is None and reads == 1, "still this node's for the holder: deleted once read"
    left, reads = _released_object(FakeApi(), {"spec": {"holder": "IPAddress/ns/another"},
                                                "metadata": {"labels": {"network.deckhouse.io/node": "n2"}}})
    assert left is not None and left["spec"]["holder"] == "IPAddress/ns/another" and reads == 1, \
        "another node's for another holder now: left alone"


def test_an_address_let_go_before_its_lease_object_was_made_costs_no_request(api: FakeApi) -> None:
    node = Node(api, "n1")
    node.add()
    node.outbox.flush()
    app = pod("app")
    attach(node.ipam, app)  # its lease object owed
    before = api.requests()
    gone(node.ipam, app)  # let go before the outbox ran
    assert node.outbox.depth() == 0 and api.requests() == before, "nothing to make, nothing to delete"
    assert len(api.objs[LEASE_KIND]) == 1


def _owed_then_let_go(api: FakeApi, meanwhile: Any) -> tuple[Node, list[str]]:
    node = Node(api, "n1")
    app = pod("app")
    attach(node.ipam, app)
    meanwhile(node)
    gone(node.ipam, app)
    return node, [e.op for e in node.store.outbox_head(10)]


def test_a_lease_object_whose_create_may_have_reached_the_api_server_is_let_go_by_a_checked_delete(
        api: FakeApi) -> None:
    """Each case where the owed create may have been made: the let-go owes the read and the delete."""
    from kubernetes.client.exceptions import ApiException

    def tried_once(node: Node) -> None:  # a create with no answer may still have been made
        put_lease = node.outbox.senders["block_lease"]

        def timed_out(body: dict[str, Any]) -> None:
            node.registry.objects.create(LEASE_KIND, body["object"])  # made, and its answer lost
            raise ApiException(status=504, reason="GatewayTimeout")

        node.outbox.senders["block_lease"] = timed_out
        node.outbox.flush()
        node.outbox.senders["block_lease"] = put_lease

    def restarted(node: Node) -> None:  # owed before a restart: it may have been in flight when the process died
        node.outbox = node.registry.outbox = Outbox(node.store, dict(node.outbox.senders))
        node.outbox.add("Pod/ns/other", "patch_status", {"kind": "Pod", "name": "other", "status": {}})  # republish

    for meanwhile in (tried_once, restarted):
        node, owed = _owed_then_let_go(api := FakeApi(), meanwhile)
        assert [op for op in owed if op != "patch_status"] == ["release_lease"], (meanwhile.__name__, owed)
        for entry in node.store.outbox_head(10):
            if entry.target.startswith(LEASE_KIND):
                assert node.outbox.flush_target(entry.target)
        assert not api.objs[LEASE_KIND], meanwhile.__name__


def test_a_lease_object_being_written_when_its_address_is_let_go_is_deleted_after_it(api: FakeApi) -> None:
    import threading

    node = Node(api, "n1")
    app = pod("app")
    address = attach(node.ipam, app)[0].address
    target = f"{LEASE_KIND}/{lease_name('IPAddressPool/ns/big', address)}"
    sending, let_go = threading.Event(), threading.Event()
    put_lease = node.outbox.senders["block_lease"]

    def slow(body: dict[str, Any]) -> None:
        sending.set()
        assert let_go.wait(5)
        put_lease(body)

    node.outbox.senders["block_lease"] = slow
    writer = threading.Thread(target=node.outbox.flush_target, args=(target,))
    writer.start()
    assert sending.wait(5)
    gone(node.ipam, app)  # while the create is on its way
    let_go.set()
    writer.join(5)
    node.outbox.flush()
    assert not api.objs[LEASE_KIND] and node.outbox.depth() == 0


def _quarantined_and_expired(api: FakeApi, made: bool, change: dict[str, Any] | None = None) -> list[str]:
    """An address of a pool with a leaseTTL, its lease object made (or not yet), let go: quarantined, then expired.
    The requests its lease object cost after it was made, in order."""
    node = Node(api, "n1")
    app = pod("app")
    address = attach(node.ipam, app, net="ttl-net")[0].address
    name = lease_name("IPAddressPool/ns/quarantined", address)
    if made:
        node.outbox.flush()
        assert name in api.objs[LEASE_KIND]
    if change is not None:
        api.patch(LEASE_KIND, name, change)
    before = dict(api.calls)
    gone(node.ipam, app)
    node.outbox.flush()
    assert made == (name in api.objs[LEASE_KIND])
    if made:
        quarantined = api.objs[LEASE_KIND][name]
        assert "holder" not in quarantined["spec"] and quarantined["status"]["orphaningTimestamp"]
    node.clock.advance(7200)
    assert node.ipam.expire(None, node.clock()) == 1
    node.outbox.flush()
    assert name not in api.objs[LEASE_KIND] and node.outbox.depth() == 0
    return sorted(f"{verb} {n - before.get(verb, 0)}" for verb, n in api.calls.items()
                  if verb.endswith(LEASE_KIND) and n != before.get(verb, 0))


def test_a_quarantine_and_its_end_are_written_at_the_versions_this_node_made_without_reads(api: FakeApi) -> None:
    assert _quarantined_and_expired(api, made=True) == [
        "delete IPAddressLease 1", "patch IPAddressLease 1", "patch_status IPAddressLease 1"]


def test_an_address_quarantined_before_its_lease_object_was_made_costs_no_request(api: FakeApi) -> None:
    assert _quarantined_and_expired(api, made=False) == []


def test_a_lease_object_changed_before_its_quarantine_is_read_once_its_write_at_the_old_version_fails(
        api: FakeApi) -> None:
    assert _quarantined_and_expired(api, made=True, change={"metadata": {"annotations": {"someone": "else"}}}) == [
        "delete IPAddressLease 1", "get IPAddressLease 1", "patch IPAddressLease 1", "patch_status IPAddressLease 2"]


def test_owed_lease_objects_of_two_holders_of_one_address_are_let_go_each_on_its_own(api: FakeApi) -> None:
    """A Static's claim of an address of the block races the Auto holder's commit or its release (the Static read
    the address free a moment before): each owes its lease object, and letting one go leaves the other's owed (found
    in review: the second superseded the first, and a let-go dropped both, leaving an address held with no object)."""
    from dataclasses import replace

    for released in ("the static", "the auto holder"):
        api = FakeApi()
        node = Node(api, "n1")
        app = pod("app")
        attach(node.ipam, app)
        (auto,) = [lease for lease in node.store.all_leases() if lease.holder]
        assert node.outbox.owes(f"{LEASE_KIND}/{lease_name(auto.pool, auto.address)}")
        static_claim = replace(auto, holder="IPAddress/ns/s")
        assert node.registry.claim(static_claim)
        if released == "the static":
            node.registry.let_go(static_claim)  # its transaction found the address the auto holder's
            kept = auto.holder
        else:
            gone(node.ipam, app)  # the auto holder let go of it; the Static's transaction takes it
            with node.store.transaction():
                node.store.put_lease(static_claim)
            kept = static_claim.holder
        node.outbox.flush()
        assert [o["spec"]["holder"] for o in api.objs[LEASE_KIND].values()] == [kept], released


def test_an_address_held_in_a_block_whose_lease_object_went_missing_gets_it_made_again(api: FakeApi) -> None:
    node = Node(api, "n1")
    addresses = [node.add() for _ in range(3)]
    node.outbox.flush()
    objs = {o["spec"]["ip"]: name for name, o in api.objs[LEASE_KIND].items()}
    lost = objs[addresses[1]]
    api.delete(LEASE_KIND, lost)  # by any path: a bug, a hand, an etcd restored from a backup
    held = [lease for lease in node.store.all_leases() if lease.holder]
    assert node.registry.owe_missing(held, older_than=node.clock() - 1) == [], "younger than the grace: left"
    node.clock.advance(300)
    (again,) = node.registry.owe_missing(held, older_than=node.clock() - 120)
    assert again.address == addresses[1]
    assert node.registry.owe_missing(held, older_than=node.clock() - 120) == [], "owed already"
    node.outbox.flush()
    assert api.objs[LEASE_KIND][lost]["spec"]["holder"] == again.holder
    assert node.registry.owe_missing(held, older_than=node.clock() - 120) == [], "the cache shows every one"
    from ipamd.node.reconcile import Reconciler

    api.delete(LEASE_KIND, lost)
    assert node.registry.owe_missing(held, older_than=node.clock() - 120) == [], \
        "made again a moment ago: not again for a while (a cache whose watch is down would show none of them)"
    node.clock.advance(600)
    rounds = Reconciler(node.store, node.source, node.ipam, None, None, None, cluster=True)  # type: ignore[arg-type]
    rounds._housekeep_blocks()  # a reconcile round (the leases older than its grace by the wall clock)
    node.outbox.flush()
    assert api.objs[LEASE_KIND][lost]["spec"]["holder"] == again.holder, "made again by a round"


def test_a_quarantine_racing_a_statics_claim_keeps_the_statics_owed_object(api: FakeApi) -> None:
    """The Auto holder of an address is quarantined while a Static's claim of it is out (found in review: the
    quarantine dropped every holder's owed lease object, and the Static, which may take a quarantined address up, held
    it in the block with none)."""
    from dataclasses import replace

    node = Node(api, "n1")
    app = pod("app")
    attach(node.ipam, app, net="ttl-net")
    (auto,) = [lease for lease in node.store.all_leases() if lease.holder]
    static_claim = replace(auto, holder="IPAddress/ns/s")
    assert node.registry.claim(static_claim)  # the Static read the address free before the Auto holder's commit
    gone(node.ipam, app)  # the Auto IPAddress goes: quarantined
    with node.store.transaction():  # the Static's transaction takes the quarantined address
        held = node.store.lease_at(auto.pool, auto.ip)
        assert held is not None and held.holder is None
        node.registry.recorded(static_claim)
        node.store.put_lease(replace(static_claim, created_at=node.clock()))
    node.registry.keep(static_claim)
    node.outbox.flush()
    assert [o["spec"].get("holder") for o in api.objs[LEASE_KIND].values()] == [static_claim.holder]


def test_a_block_given_back_keeps_the_lease_objects_of_what_it_holds_even_one_that_went_missing(api: FakeApi) -> None:
    """The round that gives a block back looks for missing lease objects first, with no grace in that block (found in
    review: it looked after, and skipped the block, given back by then)."""
    from ipamd.node.reconcile import Reconciler

    node = Node(api, "n1")
    node.clock.now = time.time()  # leased now: well within the grace (the round goes by the wall clock)
    addresses = [node.add() for _ in range(3)]
    node.outbox.flush()
    lost = next(n for n, o in api.objs[LEASE_KIND].items() if o["spec"]["ip"] == addresses[1])
    api.delete(LEASE_KIND, lost)
    (block,) = api.objs[BLOCK_KIND]
    api.patch_status(BLOCK_KIND, block, {"returnRequestedBy": "n2", "returnRequestedAt": rfc3339(node.clock())})
    rounds = Reconciler(node.store, node.source, node.ipam, None, None, None, cluster=True)  # type: ignore[arg-type]
    rounds._missing_checked = time.monotonic()  # the once-a-minute look was just made: the request alone brings it
    rounds._housekeep_blocks()
    node.outbox.flush()
    assert block not in api.objs[BLOCK_KIND], "given back"
    assert api.objs[LEASE_KIND][lost]["spec"]["holder"], "held here, per address now: its object made again first"


def test_a_statics_lease_object_sent_while_its_claim_loses_leaves_the_holders_object_alone(api: FakeApi) -> None:
    """A Static's claim of an address of the block reads it free just before an Auto holder's commit takes it; the
    Static's owed create is sent while its own transaction finds the address taken (found in review: the create met
    the holder's object, took it over as this node's, and the Static's let-go deleted it, leaving the holder's address
    with no object). The same after a restart, with the Static's dead write still owed."""
    from dataclasses import replace

    for restarted in (False, True):
        api = FakeApi()
        node = Node(api, "n1")
        attach(node.ipam, pod("app"))
        (auto,) = [lease for lease in node.store.all_leases() if lease.holder]
        node.outbox.flush()
        static_claim = replace(auto, holder="IPAddress/ns/s")
        assert node.registry.claim(static_claim)
        if restarted:  # killed before its transaction: a new process finds the Static's write owed
            node.outbox = Outbox(node.store, api.senders())
            node.registry = BlockRegistry(node.cache, "n1", node.outbox, clock=node.clock,  # type: ignore[arg-type]
                                          spawn=lambda run: run())
            node.registry.drop_unrecorded()  # (as the daemon's start does)
        node.outbox.flush()  # tried meanwhile: never made while the store does not record the Static's lease
        if not restarted:
            node.registry.let_go(static_claim)  # its transaction found the address the auto holder's
            node.outbox.flush()
        assert node.outbox.depth() == 0, "a dead claim's write is done with, not retried for ever"
        assert [(o["spec"]["holder"], o["spec"]["ip"]) for o in api.objs[LEASE_KIND].values()] == \
            [(auto.holder, auto.address)], f"restarted={restarted}"


def test_the_first_renewal_of_a_block_does_not_reorder_another_nodes_check_of_the_cap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """16 windows, a cap of 8, 7 blocks held since long ago. Nodes x and y claim the 8th and 9th within one second
    (creationTimestamp has whole seconds), x first. x's check sees its block 8th and keeps it, and owes its first
    renewal; that renewal lands between y's create and y's list of the blocks (x's outbox runs 0.5 s after the claim;
    y's check is one round trip after its create). Within that second the order is the resourceVersion, which the
    renewal has just raised past y's: y sees its own block 8th and keeps it too, 9 blocks of a cap of 8 -- the
    reordering that _over_the_cap's creationTimestamp key was added to prevent (found in review)."""
    import tests.fakes.cluster as fake_cluster

    monkeypatch.setattr(fake_cluster, "rfc3339", lambda *a: "2026-12-02T10:00:00Z")  # the creates' one second
    api = FakeApi()
    x = Node(api, "x")
    big = pool_of(x.source, "big")
    first = to_int("198.18.40.0")
    for k in range(7):
        made = api.create(BLOCK_KIND, block_body(Block(big.meta.key, first + 16 * k, 16, "old")))
        api.objs[BLOCK_KIND][made["metadata"]["name"]]["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    y = Node(api, "y", live=False)  # y's cache: the 7 old blocks, not x's claim to come
    x.add()
    assert len(api.objs[BLOCK_KIND]) == 8 and x.outbox.owes(f"{BLOCK_KIND}/{x.registry.blocks(big)[0].name}")
    lister = api.lister

    def list_after_xs_renewal(kind: str) -> Any:
        list_objects = lister(kind)

        def run(**kwargs: Any) -> Any:
            if kind == BLOCK_KIND:
                x.outbox.flush()  # x's owed renewal lands between y's create and y's check
            return list_objects(**kwargs)
        return run

    api.lister = list_after_xs_renewal  # type: ignore[method-assign]
    y.add()
    owners = [o["spec"]["node"] for o in api.objs[BLOCK_KIND].values()]
    assert len(owners) <= 8, f"blocks beyond half of the pool's 16 windows: {owners}"

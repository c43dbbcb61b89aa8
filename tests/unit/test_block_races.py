"""Interleavings of the cluster IPAM's lease objects and node blocks found in review, each failing on the code before
its fix: a Static kept by another node's pod, a take-up cut short by a kill, a quarantine seen late."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ipamd.ipam.allocator import to_int
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import NODE_LABEL, lease_name
from ipamd.node.reconcile import Reconciler
from tests.fakes.cluster import FakeApi
from tests.unit.test_blocks import Node, _grow_at, _housekeeping
from tests.unit.test_ipam import attach, pod


def _rounds(node: Node) -> Reconciler:
    return Reconciler(node.store, node.source, node.ipam, None, None, None, cluster=True)  # type: ignore[arg-type]


def _objects_at(api: FakeApi, ip: str) -> list[tuple[Any, Any]]:
    return [(o["spec"].get("holder"), o["metadata"]["labels"].get(NODE_LABEL))
            for o in api.objs[LEASE_KIND].values() if o["spec"]["ip"] == ip]


def test_a_block_lease_sent_before_the_static_goes_does_not_let_the_owner_delete_the_object_another_node_keeps() -> None:
    """The sent twin of ``test_a_block_lease_owed_when_its_static_goes_does_not_take_over_the_object_another_node_keeps``:
    pa on n1 uses Static `fixed` (.200), leased per address (and kept: n1's label, pa written on it) before n2 claimed
    the block .192/28. n2 leases the Static in its block, and its owed block_lease is SENT (the outbox runs 0.5 s
    later): ``_made_ours`` finds the same holder and relabels n1's kept object as n2's. The user deletes the Static
    while pa runs; n2's round lets it go first (n1's keep of it is later: its round, its outbox, or its daemon
    restarting): the release reads the object, n2's for that holder, and deletes it while pa uses .200. n2's next
    round frees .200 from its exclusions (the API says 404) and hands it to a pod of its own: two pods hold .200."""
    fake = FakeApi()
    n1 = Node(fake, "n1", claim=False)
    pa = pod("pa")
    attach(n1.ipam, pa, names=("fixed",))
    n1.outbox.flush()
    assert _objects_at(fake, "198.18.40.200") == [("IPAddress/ns/fixed", "n1")]
    n2 = Node(fake, "n2")
    n2.registry.grow = _grow_at(n2.registry, "198.18.40.192")  # type: ignore[method-assign]
    n2.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    n2.add()  # n2 claims .192/28; its quorum read finds .200 leased (excluded)
    _rounds(n2)._sync_ipaddresses(statics_only=True)  # n2 leases the Static in its block: its lease object owed
    n2.outbox.flush()  # ... and sent: it meets n1's object of the same holder, and relabels it n2's
    for node in (n1, n2):
        node.source.remove("IPAddress", "ns", "fixed")  # the user deletes the Static while pa runs
    _rounds(n2)._sync_ipaddresses(statics_only=True)  # n2's round comes first: it lets its lease of it go
    n2.outbox.flush()
    held_by_pa = [(lease.address, lease.holder) for lease in n1.store.all_leases() if lease.holder]
    assert ("198.18.40.200", "IPAddress/ns/fixed") in held_by_pa and pa.meta.uid in \
        n1.store.get_ip("IPAddress/ns/fixed").used_by_uids  # type: ignore[union-attr]
    n2.cache.sync()
    _housekeeping(n2)  # frees .200 from its exclusions: the API server says its object is gone
    n2.store.set_cursor("IPAddressPool/ns/big", to_int("198.18.40.199"))
    got = n2.add()
    _rounds(n1)._sync_ipaddresses(statics_only=True)  # n1's keep, late
    n1.outbox.flush()
    n2.outbox.flush()
    assert got != "198.18.40.200", "n2 handed out .200, which pa on n1 still uses"


def test_a_take_up_cut_short_by_a_kill_leaves_its_address_to_its_holder_in_the_owners_block() -> None:
    """A user's Auto IPAddress u holds .20, leased per address on n3 (its pod gone since: u keeps .20, n3's store holds
    it), before n1 claimed the block .16/28 over it (.20 excluded at the claim). u's next pod starts on n1: ``take_up``
    parks the hand-back (to n3) and labels u's object n1's; the daemon is SIGKILLed before the transaction that records
    the lease. On restart (``unpark_all("hand_back")``; the outbox makes it a moment later, later still if the API is
    away) ``excluded`` is gone, and ``_Taken`` ignores, in the node's own block, every object labelled with the node:
    .20 looks free and an Auto pod gets it in the block. Its transaction's ``recorded`` drops the target's hand_back
    (u's, not its own), and its block_lease then takes u's object over (``_held_here_by`` looks for u in n1's store
    only). u's next pod, on n3, uses .20 from n3's store: two pods hold .20."""
    from ipamd.ipam.addresses import Ipam
    from ipamd.kube.blocks import BlockRegistry
    from ipamd.kube.outbox import Outbox
    from ipamd.store.records import LeaseRecord
    from tests.unit.test_ipam import auto_ip, gone

    fake = FakeApi()
    big = "IPAddressPool/ns/big"
    n1, n3 = Node(fake, "n1"), Node(fake, "n3", claim=False)
    for n in (n1, n3):
        n.source.add(auto_ip("u"))
    n3.store.set_cursor(big, to_int("198.18.40.19"))
    db0 = pod("db-0", uid="uid-db0")
    assert attach(n3.ipam, db0, names=("u",))[0].address == "198.18.40.20"  # per address: its object made at once
    gone(n3.ipam, db0)  # the pod goes; u (a user's) keeps .20
    assert n3.store.lease_of("IPAddress/ns/u") is not None
    n1.registry.grow = _grow_at(n1.registry, "198.18.40.16")  # type: ignore[method-assign]
    n1.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    assert n1.add() == "198.18.40.16"  # the block claimed: .20 excluded
    # u's next pod on n1: secured (held_by, then take_up) ... and the process killed before its transaction
    assert n1.registry.held_by("IPAddress/ns/u", big) == to_int("198.18.40.20")
    assert n1.registry.take_up(LeaseRecord(pool=big, ip=to_int("198.18.40.20"), address="198.18.40.20",
                                           network="198.18.40.0/24", holder="IPAddress/ns/u"))
    # restarted: the same store and API, every in-memory part new (as the daemon builds them)
    n1.outbox = Outbox(n1.store, fake.senders())
    n1.registry = BlockRegistry(n1.cache, "n1", n1.outbox, clock=n1.clock,  # type: ignore[arg-type]
                                spawn=lambda run: run())
    n1.outbox.unpark_all("hand_back")
    n1.ipam = Ipam(n1.store, n1.source, n1.clock, n1.registry)
    n1.store.set_cursor(big, to_int("198.18.40.19"))
    got = n1.add()  # an ADD served before the outbox's first pass
    n1.outbox.flush()
    again = attach(n3.ipam, pod("db-1", uid="uid-db1"), names=("u",))[0].address  # u's next pod, on n3
    assert again == "198.18.40.20"
    assert got != again, f"n1's Auto pod and u's pod on n3 both hold {got}; objects: {_objects_at(fake, got)}"


def test_a_quarantined_address_is_not_adopted_by_an_auto_pick_on_a_lagging_cache() -> None:
    """x's pod goes and its address is quarantined for the pool's leaseTTL (1 h): only a Static asking for exactly that
    address may adopt it. y's lease informer lags (it has not shown x's object yet, a second or so after its create):
    y's Auto pick lands on the quarantined address, its create meets the quarantined object, and ``_claim`` adopts it
    for the Auto IPAddress (it takes any quarantined object for a Static's), handing the address out at once."""
    from tests.unit.test_ipam import network as network_obj
    from tests.unit.test_ipam import pool as pool_obj

    fake = FakeApi()
    x = Node(fake, "x", claim=False)
    y = Node(fake, "y", live=False, claim=False)  # its cache: from before x's lease object
    for n in (x, y):
        n.source.add(pool_obj("q", "198.18.43.0/28", ttl="1h"))
        n.source.add(network_obj("q-net", "q"))
    p1 = pod("p1")
    got = attach(x.ipam, p1, net="q-net")[0].address
    x.ipam.delete_ip(next(r for r in x.store.all_ips() if r.address == got))  # quarantined for 1 h
    x.outbox.flush()
    (obj,) = [o for o in fake.objs[LEASE_KIND].values() if o["spec"]["ip"] == got]
    assert obj["status"]["orphaningTimestamp"] and not obj["spec"].get("holder")
    y.store.set_cursor("IPAddressPool/ns/q", to_int(got) - 1)
    assert attach(y.ipam, pod("p2"), net="q-net")[0].address != got, "an Auto pod got an address in quarantine"


def test_recording_a_lease_drops_only_its_own_holders_hand_back() -> None:
    """A take-up's hand-back (owed, parked) goes when the transaction records that holder's lease, not when another
    holder's lease of the same address is recorded: that one's object is still the taken-up holder's node's."""
    from ipamd.store.records import LeaseRecord

    fake = FakeApi()
    n1 = Node(fake, "n1", claim=False)
    lease = LeaseRecord(pool="IPAddressPool/ns/big", ip=to_int("198.18.40.20"), address="198.18.40.20",
                        network="198.18.40.0/24", holder="IPAddress/ns/u")
    target = f"{LEASE_KIND}/{lease_name(lease.pool, lease.address)}"
    n1.outbox.add(target, "hand_back", {"kind": LEASE_KIND, "name": lease_name(lease.pool, lease.address),
                                        "holder": lease.holder, "node": "n1", "previous": "n3"})
    n1.registry.recorded(replace(lease, holder="IPAddress/ns/other"))
    assert [e.op for e in n1.outbox.owed(target)] == ["hand_back"], "another holder's record: u's hand-back stays"
    n1.registry.recorded(lease)
    assert not n1.outbox.owed(target)


def test_a_block_lease_sent_before_the_keep_does_not_let_the_owner_delete_the_object_a_starting_pod_uses() -> None:
    """The twin of ``test_a_block_lease_sent_before_the_static_goes_...`` where n2's block_lease is sent
    before pa's keep (no used-by on the object yet): n1 leases Static `fixed` (.200) per address (every node leases
    every Static), n2 claims .192/28 over it and its block_lease relabels n1's object n2's (same holder, not kept).
    pa starts on n1 using `fixed`: its keep_lease is owed (made by the outbox 0.5 s later; longer in backoff). The user
    deletes the Static meanwhile; n2's round lets it go first: the object is n2's for that holder, so it is deleted
    while pa uses .200; n2 frees .200 from its exclusions and hands it out; pa's keep then finds another holder."""
    fake = FakeApi()
    n1 = Node(fake, "n1", claim=False)
    _rounds(n1)._sync_ipaddresses(statics_only=True)  # n1 leases every Static, per address: no pod yet
    n1.outbox.flush()
    assert _objects_at(fake, "198.18.40.200") == [("IPAddress/ns/fixed", "n1")]
    n2 = Node(fake, "n2")
    n2.registry.grow = _grow_at(n2.registry, "198.18.40.192")  # type: ignore[method-assign]
    n2.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]
    n2.add()  # n2 claims .192/28; .200 excluded
    _rounds(n2)._sync_ipaddresses(statics_only=True)
    n2.outbox.flush()  # sent: n1's object (no used-by) relabelled n2's
    pa = pod("pa")
    attach(n1.ipam, pa, names=("fixed",))  # pa starts on n1: its keep_lease owed, not made yet
    for node in (n1, n2):
        node.source.remove("IPAddress", "ns", "fixed")  # the user deletes the Static while pa starts
    _rounds(n2)._sync_ipaddresses(statics_only=True)  # n2's round first: it lets its lease go
    n2.outbox.flush()
    n2.cache.sync()
    _housekeeping(n2)  # .200 freed from n2's exclusions: its object is gone
    n2.store.set_cursor("IPAddressPool/ns/big", to_int("198.18.40.199"))
    got = n2.add()
    n1.outbox.flush()  # pa's keep, late
    assert pa.meta.uid in n1.store.get_ip("IPAddress/ns/fixed").used_by_uids  # type: ignore[union-attr]
    assert got != "198.18.40.200", f"n2 handed out .200, which pa on n1 uses; objects: {_objects_at(fake, got)}"

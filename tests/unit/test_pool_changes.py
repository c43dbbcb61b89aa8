"""Pool and Network changes while addresses are leased (Kubernetes mode): what a change the webhook lets through
does to blocks, counts and the addresses pods carry (found in review)."""

from __future__ import annotations

import ipaddress

from ipamd.ipam.blocks import uses_blocks
from ipamd.kube.blocks import KIND as BLOCK_KIND
from tests.fakes.cluster import FakeApi
from tests.unit.test_blocks import Node, _answered_by, pool_of
from tests.unit.test_ipam import pool


def _shrink(nodes: list[Node], cidr: str) -> None:
    for n in nodes:
        n.source.add(pool("big", cidr, ttl="0s"))


def test_a_pool_shrunk_below_the_block_size_still_hands_out_the_addresses_of_a_block_left_in_it() -> None:
    """Node A leases one address of the /24 pool "big" inside its block. The administrator shrinks the pool to the
    /26 holding that address (allowed: nothing falls outside). 62 addresses: below MIN_BLOCKS blocks, so leased per
    address from now on. A's block stays (it is not empty, so it is never returned) and node B may not lease in its
    window; B never asks for it back either (``ask_return`` gives up for a pool that does not use blocks). So the
    15 free addresses of A's window are stranded: B is told the pool is full while only 16 of 62 are leased."""
    api = FakeApi()
    a = Node(api, "a")
    first = a.add()
    a.outbox.flush()
    (blk,) = api.objs[BLOCK_KIND].values()
    window = ipaddress.ip_network(blk["spec"]["cidr"])
    assert ipaddress.ip_address(first) in window
    quarter = ipaddress.ip_network(f"{window.network_address}/26", strict=False)
    b = Node(api, "b")
    b.registry.wait = _answered_by(a)
    _shrink([a, b], str(quarter))
    assert not uses_blocks(pool_of(b.source, "big")), "62 addresses: per address from here on"
    got: list[str] = []
    while True:
        try:
            got.append(b.add())
        except Exception:
            break
    a.registry.housekeep([pool_of(a.source, "big")], a.ipam.in_use, a.store.transaction)
    usable_set = {str(h) for h in quarter.hosts()}
    held = (set(got) | a.addresses()) & usable_set  # (a's first may be the /26's network address: kept, not counted)
    usable = quarter.num_addresses - 2
    assert len(held) == usable, (f"only {len(held)} of the {usable} addresses of the shrunk pool handed out: "
                                 f"the rest sit in node a's block {window}, which b can neither use nor get back")


def test_a_pools_status_counts_as_free_the_addresses_of_its_ranges_that_nobody_holds() -> None:
    """The ranges of a /24 pool are narrowed to .10-.19 while ten pods hold .100-.109 (allowed: the subnet still holds
    them; the leases are kept and flagged), and a Static IPAddress holds .200 (a Static may sit anywhere in the
    subnet). None of the ten addresses the pool hands out is held, yet its status says free 0 (size 10 minus 11 leases
    that are not in its ranges): ``free`` no longer tells an administrator whether the next pod gets an address."""
    from tests.unit.test_controller_segments import controller, obj

    p = obj("ClusterIPAddressPool", "narrowed",
            {"pools": [{"network": "198.18.99.0/24", "ranges": ["198.18.99.10-198.18.99.19"]}]}, uid="u-narrowed")
    ctl, src = controller(p)
    key = "ClusterIPAddressPool/narrowed"
    src.raw["IPAddressLease"] = [
        *({"spec": {"pool": key, "ip": f"198.18.99.{100 + i}", "holder": f"IPAddress/ns/pod-{i}"}} for i in range(10)),
        {"spec": {"pool": key, "ip": "198.18.99.200", "holder": "IPAddress/ns/static"}},
    ]
    ctl.pool_usage()
    status = src.objects.patched[-1][2]
    assert status["size"] == 10
    assert status["free"] == 10, f"every address of the ranges is free, the status says {status}"


def test_plexusctl_pools_counts_as_free_the_addresses_of_its_ranges_that_nobody_holds() -> None:
    """The node's side of the same count (``plexusctl ipam pools``, gRPC ListPools): pool "pool" hands out
    .50-.59; a pod uses the Static IPAddress at .100, outside the ranges. All ten addresses of the ranges are free,
    and the node says nine (``_usage`` takes every lease of the pool off the size of its ranges; the implicit pools
    right below count only the leases inside their ranges)."""
    from ipamd.api import ipam_pb2 as pb
    from ipamd.ipam.addresses import Ipam
    from ipamd.server.grpc_api import IpamService
    from ipamd.store.sqlite import Store
    from tests.unit.test_ipam import Clock, attach, pod, world

    store, source = Store(":memory:"), world()
    ipam = Ipam(store, source, Clock())
    (claim,) = attach(ipam, pod("web"), names=("static-out-of-range",))
    assert claim.address == "198.18.10.100"
    usage = {p.pool: p for p in IpamService(store, source, ipam, list).ListPools(pb.ListPoolsRequest(), None).pools}
    got = usage["IPAddressPool/ns/pool"]
    assert (got.size, got.used) == (10, 1)
    assert got.free == 10, f"none of .50-.59 is leased, yet free is {got.free}"


def test_a_network_moved_to_another_pool_keeps_the_address_its_running_pod_uses() -> None:
    """Pod app runs on Network net-b with 198.18.41.3 from pool-b. net-b is pointed at pool-b2, a new pool over the
    same subnet (the webhook refuses this while pool-b has leases; a cluster without it lets it through). The node's
    reconcile round leased the pod's IPAddress a new address in pool-b2 and quarantined .3, which the pod's interface
    still carries: its status named an address the pod does not have (found in review). It keeps .3 while used."""
    from tests.unit.test_attacher import Node as AttacherNode
    from tests.unit.test_attacher import obj as aobj
    from tests.unit.test_reconcile import reconciler

    node = AttacherNode()
    rec = reconciler(node)
    for name in ("u1", "u2"):  # a gap before the pod's address
        node.source.add(aobj("IPAddress", name, {"networkRef": {"kind": "Network", "name": "net-b"}}))
    rec.run_once()
    node.call("ADD")
    for name in ("u1", "u2"):
        node.source.remove("IPAddress", "apps", name)
    rec.run_once()
    (att,) = node.store.attachments()
    configured = next(i for i in att.interfaces if i.if_name == "net2").addresses[0]["address"]
    assert configured == "198.18.41.3"
    ip = next(r for r in node.store.all_ips() if r.network_name == "net-b" and r.owner_pod_uid == "uid-app")
    node.source.add(aobj("IPAddress", ip.name, {"networkRef": {"kind": "Network", "name": "net-b"}},
                         labels={"network.deckhouse.io/owner-pod-uid": "uid-app"}))
    node.source.add(aobj("IPAddressPool", "pool-b2", {"pools": [{"network": "198.18.41.0/24"}], "leaseTTL": "1h"}))
    node.source.add(aobj("Network", "net-b", {"networkClass": "cls", "ipam": {"ipAddressPoolRef": {
        "kind": "IPAddressPool", "name": "pool-b2"}}}))
    rec.run_once()
    now = node.store.get_ip(ip.key)
    lease = node.store.lease_of(ip.key)
    assert now is not None and now.address == configured, "the IPAddress names the address its pod carries"
    assert lease is not None and lease.address == configured and lease.holder == ip.key and \
        lease.pool == "IPAddressPool/apps/pool-b", "still held in the old pool, not quarantined"


def test_a_pool_whose_first_range_holds_no_assignable_address_still_hands_out_its_other_network() -> None:
    """The pool gets a first network whose one range is its broadcast address (accepted: ``_range`` clips it to
    nothing, and the webhook lets it through), then a /24. 254 addresses, leased in blocks; but claiming a block
    starts its search at ``pool.subnets[0].ranges[0][0]``, an empty tuple here: every ADD on the pool fails with
    IndexError (an internal error) instead of getting an address."""
    from tests.unit.test_ipam import obj as iobj

    api = FakeApi()
    a = Node(api, "a")
    a.source.add(iobj("IPAddressPool", "big", {"leaseTTL": "0s", "pools": [
        {"network": "198.18.39.0/24", "ranges": ["198.18.39.255"]}, {"network": "198.18.40.0/24"}]}))
    assert pool_of(a.source, "big").size == 254
    got = a.add()
    assert got.startswith("198.18.40.")

"""A route's gateway (`via`) is never handed out, as host-local never hands out its gateway: not by the allocator,
nor in blocks, nor to a Static or a gRPC client; pool sizes and free counts leave it out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cni.errors import InvalidConfig, PoolExhausted
from ipamd.api import ipam_pb2 as pb
from ipamd.ipam.addresses import Ipam
from ipamd.ipam.allocator import to_int
from ipamd.model.objects import API_VERSION, IP_ADDRESS, IP_ADDRESS_POOL, AddressPool, parse_object
from ipamd.server.grpc_api import IpamService
from ipamd.store.protocols import LeaseStore
from ipamd.store.sqlite import Store
from tests.fakes.source import FakeSource
from tests.unit.test_ipam import NS, Clock, attach, gone, network, obj, pod, pool, static, world

REPO = Path(__file__).resolve().parents[2]


V4_ROUTE = {"destination": "198.18.14.0/24", "via": "198.18.13.1"}
V6_ROUTE = {"destination": "2001:2:0:11::/64", "via": "2001:2:0:10::1"}


def gateway_world() -> FakeSource:
    src = world()
    for name, cidr, route in (("gw4", "198.18.13.0/24", V4_ROUTE), ("gw6", "2001:2:0:10::/64", V6_ROUTE)):
        src.add(pool(name, cidr, routes=[route]))
        src.add(network(f"{name}-net", name))
    src.add(obj("IPAddressPool", "dual-gw", {"leaseTTL": "1h", "pools": [
        {"network": "198.18.13.0/24", "routes": [V4_ROUTE]}, {"network": "2001:2:0:10::/64", "routes": [V6_ROUTE]}]}))
    src.add(network("dual-net", "dual-gw"))
    src.add(pool("gw-in-range", "198.18.15.0/24", ["198.18.15.1-198.18.15.3"],
                 routes=[{"destination": "198.18.16.0/24", "via": "198.18.15.1"}]))
    src.add(network("gw-in-range-net", "gw-in-range"))
    src.add(static("static-gw", "198.18.13.1", net="gw4-net"))
    src.add(static("static-gw6", "2001:2:0:10::1", net="gw6-net"))
    return src


@pytest.fixture()
def gw() -> tuple[Ipam, Store, FakeSource]:
    store, src = Store(":memory:"), gateway_world()
    return Ipam(store, src, Clock()), store, src


def parsed_pool(spec_pools: list[dict[str, Any]]) -> AddressPool:
    p = parse_object({"apiVersion": API_VERSION, "kind": "IPAddressPool", "metadata": {"name": "p", "namespace": "ns"},
                      "spec": {"pools": spec_pools}})
    assert isinstance(p, AddressPool)
    return p


@pytest.mark.parametrize(("net", "first"), [("gw4-net", "198.18.13.2"), ("gw6-net", "2001:2:0:10::2")])
def test_a_pool_without_ranges_never_hands_out_its_routes_gateway(gw: tuple[Ipam, Store, FakeSource], net: str,
                                                                   first: str) -> None:
    ipam, _, _ = gw
    (claim,) = attach(ipam, pod("first"), net=net)
    assert claim.address == first


def test_a_dual_stack_pool_skips_both_gateways(gw: tuple[Ipam, Store, FakeSource]) -> None:
    ipam, _, _ = gw
    assert {c.address for c in attach(ipam, pod("first"), net="dual-net")} == {"198.18.13.2", "2001:2:0:10::2"}


def test_a_range_that_names_the_gateway_still_skips_it(gw: tuple[Ipam, Store, FakeSource]) -> None:
    ipam, _, _ = gw
    got = [attach(ipam, pod(f"p{i}"), net="gw-in-range-net")[0].address for i in range(2)]
    assert got == ["198.18.15.2", "198.18.15.3"]
    with pytest.raises(PoolExhausted):
        attach(ipam, pod("p2"), net="gw-in-range-net")


def test_a_pools_size_does_not_count_its_gateways() -> None:
    assert parsed_pool([{"network": "198.18.13.0/24", "routes": [V4_ROUTE]}]).size == 253
    assert parsed_pool([{"network": "198.18.15.0/24", "ranges": ["198.18.15.1-198.18.15.3"],
                         "routes": [{"destination": "198.18.16.0/24", "via": "198.18.15.1"}]}]).size == 2
    # a gateway outside the ranges (the seed's example) takes nothing off them
    assert parsed_pool([{"network": "192.168.10.0/24", "ranges": ["192.168.10.50-192.168.10.200"],
                         "routes": [{"destination": "10.10.0.0/16", "via": "192.168.10.1"}]}]).size == 151


def test_plexusctl_pools_counts_the_gateway_as_not_available(gw: tuple[Ipam, Store, FakeSource]) -> None:
    ipam, store, src = gw
    attach(ipam, pod("first"), net="gw4-net")
    usage = {p.pool: p for p in IpamService(store, src, ipam, list).ListPools(pb.ListPoolsRequest(), None).pools}
    got = usage["IPAddressPool/ns/gw4"]
    assert (got.size, got.used, got.free) == (253, 1, 252)


def test_the_controllers_pool_status_and_gauge_count_the_gateway_as_not_available() -> None:
    from ipamd.kube.controller import POOL_ADDRESSES
    from tests.unit.test_controller_segments import controller
    from tests.unit.test_controller_segments import obj as cobj

    p = cobj("ClusterIPAddressPool", "gwpool", {"pools": [{"network": "198.18.13.0/24", "routes": [V4_ROUTE]}]},
             uid="u-gw")
    ctl, src = controller(p)
    ctl.pool_usage()
    status = src.objects.patched[-1][2]
    assert (status["size"], status["free"]) == (253, 253)
    assert POOL_ADDRESSES.labels("ClusterIPAddressPool/gwpool", "free")._value.get() == 253


def test_blocks_never_hand_out_the_gateway() -> None:
    from tests.fakes.cluster import FakeApi
    from tests.unit.test_blocks import Node

    node = Node(FakeApi(), "a")
    node.source.add(pool("gwb", "198.18.13.0/24", ttl="0s", routes=[V4_ROUTE]))
    node.source.add(network("gwb-net", "gwb"))
    got = {node.add("gwb-net") for _ in range(20)}
    assert "198.18.13.1" not in got


@pytest.mark.parametrize("name", ["static-gw", "static-gw6"])
def test_a_static_asking_for_the_gateway_is_refused(gw: tuple[Ipam, Store, FakeSource], name: str) -> None:
    ipam, store, _ = gw
    with pytest.raises(InvalidConfig) as info:
        attach(ipam, pod("s"), net="gw6-net" if name.endswith("6") else "gw4-net", names=(name,))
    assert (info.value.code, info.value.details) == (7, "spec.static.ip")
    assert "gateway" in info.value.msg and ("198.18.13.1" in info.value.msg or "2001:2:0:10::1" in info.value.msg)
    assert store.all_leases() == []


def test_a_static_for_the_gateway_is_refused_by_lease_for_too(gw: tuple[Ipam, Store, FakeSource]) -> None:
    from ipamd.ipam.addresses import Secured
    from ipamd.model.objects import IP_ADDRESS, IP_ADDRESS_POOL

    ipam, store, src = gw
    user = src.get(IP_ADDRESS, "ns", "static-gw")
    gw4 = src.get(IP_ADDRESS_POOL, "ns", "gw4")
    assert user is not None and isinstance(gw4, AddressPool)
    with pytest.raises(InvalidConfig) as info, store.transaction():
        ipam.lease_for(ipam.record_for(user), gw4, Secured())
    assert info.value.details == "spec.static.ip"
    assert store.all_leases() == []


def test_an_api_client_asking_for_the_gateway_is_refused(gw: tuple[Ipam, Store, FakeSource]) -> None:
    from ipamd.model.objects import IP_ADDRESS_POOL

    ipam, store, src = gw
    gw4 = src.get(IP_ADDRESS_POOL, "ns", "gw4")
    assert isinstance(gw4, AddressPool)
    with pytest.raises(InvalidConfig) as info:
        ipam.allocate_for("client", gw4, "198.18.13.1")
    assert (info.value.code, info.value.details) == (7, "address")
    assert store.all_leases() == []


# -- a Network's policy routes' gateways ---------------------------------------------------------------------------

def policy_world() -> FakeSource:
    """A pool without ranges whose Network routes through 198.18.5.1 (``spec.policyRoutes``), a router of its own."""
    src = world()
    src.add(pool("pr", "198.18.5.0/24"))
    src.add(obj("Network", "pr-net", {"networkClass": "cls", "routingTable": 100,
                                      "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pr"}},
                                      "policyRoutes": [{"destination": "0.0.0.0/0", "via": "198.18.5.1"}]}))
    src.add(static("static-router", "198.18.5.1", net="pr-net"))
    return src


def test_a_policy_routes_gateway_is_not_handed_to_a_pod() -> None:
    """README: policyRoutes' gateways must lie in the pool (a router of that network); a pool without ranges handed
    out 198.18.5.1 first, so the pod got the router's address and a route via itself."""
    from tests.unit.test_attacher import Node
    from tests.unit.test_attacher import obj as aobj

    node = Node()
    node.source.add(aobj("IPAddressPool", "pool-gw", {"pools": [{"network": "198.18.5.0/24"}]}))
    node.source.add(aobj("Network", "ext", {"networkClass": "cls", "routingTable": 100,
                                            "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pool-gw"}},
                                            "policyRoutes": [{"destination": "0.0.0.0/0", "via": "198.18.5.1"}]}))
    node.source.add(aobj("Pod", "app", {}, uid="uid-app", annotations={
        "network.deckhouse.io/networks-spec": json.dumps([{"type": "Network", "name": "ext", "ifName": "net1"}])}))
    result = node.call("ADD")
    addresses = [ip["address"] for ip in result["ips"]]
    assert "198.18.5.1/24" not in addresses, f"the pod got its policy route's gateway: {addresses}"


def test_a_static_asking_for_a_policy_routes_gateway_is_refused_naming_the_field() -> None:
    store = Store(":memory:")
    ipam = Ipam(store, policy_world(), Clock())
    with pytest.raises(InvalidConfig) as info:
        attach(ipam, pod("s"), net="pr-net", names=("static-router",))
    assert (info.value.code, info.value.details) == (7, "spec.static.ip")
    assert "198.18.5.1" in info.value.msg and "spec.policyRoutes[0].via" in info.value.msg, info.value.msg
    assert store.all_leases() == []
    (claim,) = attach(ipam, pod("auto"), net="pr-net")
    assert claim.address == "198.18.5.2"


def test_a_static_for_a_policy_routes_gateway_leased_alone_is_refused() -> None:
    """The reconciler leases a user's IPAddress before any pod uses it (``lease_alone``, with the pool it found)."""
    from ipamd.model.objects import IP_ADDRESS, IP_ADDRESS_POOL

    store, src = Store(":memory:"), policy_world()
    ipam = Ipam(store, src, Clock())
    user, pr = src.get(IP_ADDRESS, "ns", "static-router"), src.get(IP_ADDRESS_POOL, "ns", "pr")
    assert user is not None and isinstance(pr, AddressPool)
    with pytest.raises(InvalidConfig) as info:
        ipam.lease_alone(ipam.record_for(user), pr)
    assert info.value.details == "spec.static.ip" and "spec.policyRoutes[0].via" in info.value.msg
    assert store.all_leases() == []



def test_the_controllers_pick_for_a_users_auto_ipaddress_skips_a_policy_routes_gateway() -> None:
    """The controller leases a user's Auto IPAddress from the pool ``pool_of_ip`` gives (``Controller._allocate``):
    the pool as the IPAddress's network sees it, whose policy routes' gateways are never picked."""
    from ipamd.ipam.allocator import pick_free
    from ipamd.model.objects import IPAddressObject
    from ipamd.sources.lookups import pool_of_ip

    auto = obj("IPAddress", "auto-ip", {"networkRef": {"kind": "Network", "name": "pr-net"}})
    assert isinstance(auto, IPAddressObject)
    seen = pool_of_ip(policy_world(), auto)
    assert seen is not None and seen.meta.key == "IPAddressPool/ns/pr", "the same pool: the same leases"
    picked = pick_free(seen, set(), None)
    assert picked is not None and picked[0] == to_int("198.18.5.2"), "198.18.5.1 is the network's router"


# -- a leased address that became a gateway since (objects stored before the webhook refused the edit, local mode, a
# write while the webhook's informer lagged): let go like a lease of another pool once no pod uses it ----------------

ROUTED_VIA_50 = {"networkClass": "cls", "routingTable": 100,
                 "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pool"}},
                 "policyRoutes": [{"destination": "0.0.0.0/0", "via": "198.18.10.50"}]}
USER_AUTO = f"IPAddress/{NS}/user-auto"


def _leases(store: LeaseStore) -> list[tuple[str, str | None]]:
    """Every lease of the store as (address, holder): None is quarantined."""
    return sorted((lease.address, lease.holder) for lease in store.all_leases())


def _route_via_50(src: FakeSource, edited: str) -> None:
    if edited == "Network":
        src.add(obj("Network", "net", ROUTED_VIA_50))
    else:  # the pool's own route
        src.add(pool("pool", "198.18.10.0/24", ["198.18.10.50-198.18.10.59"],
                     routes=[{"destination": "198.19.10.0/24", "via": "198.18.10.50"}]))


@pytest.mark.parametrize("edited", ["Network", "IPAddressPool"])
def test_a_network_edited_to_route_via_a_leased_address_gives_a_new_pod_another_address(edited: str) -> None:
    """A user's Auto IPAddress holds 198.18.10.50, unused. The Network is edited to add a policy route via it (or the
    pool a route): README says a gateway is never leased to the network's pods, but the next pod naming the
    IPAddress got 198.18.10.50 all the same (``lease_for`` kept any lease of the pool), the pod and the router on one
    address. It gets another one, and 198.18.10.50 is quarantined, as a Network moved to another pool has it."""
    store, source = Store(":memory:"), world()
    ipam = Ipam(store, source, Clock())
    (c,) = attach(ipam, pod("pod-a"), names=("user-auto",))
    assert c.address == "198.18.10.50"
    gone(ipam, pod("pod-a"))
    _route_via_50(source, edited)
    (c2,) = attach(ipam, pod("pod-b"), names=("user-auto",))
    assert c2.address != "198.18.10.50", "a new pod of the network got its route's gateway"
    assert _leases(store) == [("198.18.10.50", None), ("198.18.10.51", USER_AUTO)]


def test_an_address_that_became_a_gateway_is_kept_while_a_pod_uses_it_and_let_go_after() -> None:
    """``lease_alone`` (the reconciler's round): pod-a's interface carries 198.18.10.50, so the IPAddress keeps it
    while pod-a uses it (the pool taking it for free could hand it to another pod); then it is leased anew."""
    store, source = Store(":memory:"), world()
    ipam = Ipam(store, source, Clock())
    attach(ipam, pod("pod-a"), names=("user-auto",))
    source.add(obj("Network", "net", ROUTED_VIA_50))
    user, p = source.get(IP_ADDRESS, NS, "user-auto"), source.get(IP_ADDRESS_POOL, NS, "pool")
    assert user is not None and isinstance(p, AddressPool)
    rec, lease = ipam.lease_alone(ipam.record_for(user), p)
    assert (rec.address, lease.address, lease.holder) == ("198.18.10.50", "198.18.10.50", USER_AUTO)
    gone(ipam, pod("pod-a"))
    rec, lease = ipam.lease_alone(ipam.record_for(user), p)
    assert (rec.phase, rec.address, lease.address) == ("Allocated", "198.18.10.51", "198.18.10.51")
    assert _leases(store) == [("198.18.10.50", None), ("198.18.10.51", USER_AUTO)]


def test_a_static_holding_an_address_that_became_a_gateway_is_refused_and_pending_once_unused() -> None:
    """A Static leased 198.18.10.52 before the Network routed via it: kept while its pod uses it; after, a pod naming
    it is refused (code 7 naming spec.static.ip) and the round records it Pending (``IPAddressIsGateway``), its
    lease quarantined: before, the refusal was rolled back with the let-go, and the Static stayed Allocated."""
    from ipamd.ipam.addresses import IS_GATEWAY

    store, source = Store(":memory:"), world()
    source.add(static("st", "198.18.10.52"))
    ipam = Ipam(store, source, Clock())
    (c,) = attach(ipam, pod("pod-a"), names=("st",))
    assert c.address == "198.18.10.52"
    source.add(obj("Network", "net", {**ROUTED_VIA_50, "policyRoutes": [{"destination": "0.0.0.0/0",
                                                                        "via": "198.18.10.52"}]}))
    user, p = source.get(IP_ADDRESS, NS, "st"), source.get(IP_ADDRESS_POOL, NS, "pool")
    assert user is not None and isinstance(p, AddressPool)
    assert ipam.lease_alone(ipam.record_for(user), p)[1].address == "198.18.10.52", "kept while pod-a uses it"
    gone(ipam, pod("pod-a"))
    with pytest.raises(InvalidConfig) as info:
        attach(ipam, pod("pod-b"), names=("st",))
    assert (info.value.code, info.value.details) == (7, "spec.static.ip")
    with pytest.raises(InvalidConfig):
        ipam.lease_alone(ipam.record_for(user), p)
    rec = store.get_ip(f"IPAddress/{NS}/st")
    assert rec is not None and (rec.phase, rec.address) == ("Pending", "")
    assert [c["reason"] for c in rec.conditions if c["type"] == "Allocated"] == [IS_GATEWAY]
    assert _leases(store) == [("198.18.10.52", None)]


def test_the_round_moves_an_unused_ipaddress_off_a_new_gateway_and_keeps_a_used_one_flagged(
        caplog: pytest.LogCaptureFixture) -> None:
    """Local mode's round leases every user IPAddress (``_sync_ipaddresses``): an unused one on an address that
    became a policy route's gateway gets another one (the old quarantined); one a pod uses keeps it, flagged outside
    the ranges, with no log line every round; once the pod lets it go it is leased anew."""
    from tests.unit.test_attacher import NS as ANS
    from tests.unit.test_attacher import Node
    from tests.unit.test_attacher import obj as aobj
    from tests.unit.test_reconcile import reconciler

    node = Node()
    pool_ref = {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pool-gw"}}
    node.source.add(aobj("IPAddressPool", "pool-gw", {"pools": [{"network": "198.18.5.0/24"}]}))
    node.source.add(aobj("Network", "ext", {"networkClass": "cls", "routingTable": 100, "ipam": pool_ref}))
    for name in ("inuse", "idle"):
        node.source.add(aobj("IPAddress", name, {"networkRef": {"kind": "Network", "name": "ext"}}))
    attach(node.ipam, aobj("Pod", "user", {}, uid="uid-user"), net="ext", names=("inuse",))
    rounds = reconciler(node)
    rounds.run_once()
    inuse, idle = f"IPAddress/{ANS}/inuse", f"IPAddress/{ANS}/idle"
    assert _leases(node.store) == [("198.18.5.1", inuse), ("198.18.5.2", idle)]
    node.source.add(aobj("Network", "ext", {"networkClass": "cls", "routingTable": 100, "ipam": pool_ref,
                                            "policyRoutes": [{"destination": "198.19.0.0/16", "via": "198.18.5.1"},
                                                             {"destination": "0.0.0.0/0", "via": "198.18.5.2"}]}))
    logged = []
    with caplog.at_level("WARNING", logger="ipamd.node.reconcile"):
        for _ in range(3):
            rounds.run_once()
            assert _leases(node.store) == [("198.18.5.1", inuse), ("198.18.5.2", None), ("198.18.5.3", idle)]
            logged.append(sum("pool-gw changed" in r.getMessage() for r in caplog.records))
    kept = node.store.lease_of(inuse)
    assert kept is not None and kept.outside_ranges, "kept, flagged outside the ranges"
    assert logged[-1] == logged[-2], "a round that changes nothing logs nothing"
    node.ipam.release_pod([inuse], "uid-user")
    rounds.run_once()
    assert _leases(node.store) == [("198.18.5.1", None), ("198.18.5.2", None), ("198.18.5.3", idle),
                                   ("198.18.5.4", inuse)]
    rec = node.store.get_ip(inuse)
    assert rec is not None and (rec.phase, rec.address) == ("Allocated", "198.18.5.4")


def test_another_nodes_lease_object_on_a_new_gateway_is_quarantined_not_taken_up() -> None:
    """Kubernetes mode: n1's pod used the user's Auto IPAddress ``sticky`` (198.18.40.1), then went; the Network is
    edited to route via 198.18.40.1. n2's pod naming ``sticky`` found n1's lease object by holder (``held_by``) and
    took it up: the router's address. n2 takes it up only to quarantine it, and leases another one."""
    from ipamd.kube.leases import KIND, lease_name
    from tests.fakes.cluster import FakeApi
    from tests.unit.test_attacher import NS as ANS
    from tests.unit.test_attacher import obj as kobj
    from tests.unit.test_attacher_kube import KubeNode, a_pod
    from tests.unit.test_attacher_kube import world as kworld

    api = FakeApi()
    a, b = KubeNode(api, "n1", source=kworld("1h")), KubeNode(api, "n2", source=kworld("1h"))
    nets = [{"type": "Network", "name": "net-a", "ifName": "net1", "ipAddressNames": ["sticky"]}]
    for node in (a, b):
        node.source.add(kobj("IPAddress", "sticky", {"networkRef": {"kind": "Network", "name": "net-a"}}))
        node.source.add(a_pod("pa", nets, "uid-pa"))
        node.source.add(a_pod("pb", nets, "uid-pb"))
    first = a.call("ADD", "pa", "uid-pa", "ca")["ips"][0]["address"].split("/")[0]
    a.call("DEL", "pa", "uid-pa", "ca")
    a.outbox.flush()
    for node in (a, b):
        node.source.add(kobj("Network", "net-a", {
            "networkClass": "cls", "routingTable": 100,
            "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "small"}},
            "policyRoutes": [{"destination": "0.0.0.0/0", "via": first}]}))
    second = b.call("ADD", "pb", "uid-pb", "cb")["ips"][0]["address"].split("/")[0]
    b.outbox.flush()
    assert second != first, "n2's pod got the router's address"
    old = api.get(KIND, lease_name(f"IPAddressPool/{ANS}/small", first))
    assert (old.get("status") or {}).get("orphaningTimestamp") and not old["spec"].get("holder"), "quarantined"
    held = [o["spec"]["ip"] for o in api.objs[KIND].values() if o["spec"].get("holder") == f"IPAddress/{ANS}/sticky"]
    assert held == [second], "one lease object for the holder"


@pytest.mark.parametrize("dup", [False, True], ids=["two-lease-objects", "adopted-by-another-node"])
def test_a_lease_another_node_quarantined_as_a_gateway_is_not_used_again_by_the_node_that_held_it(dup: bool) -> None:
    """n1's pod used the user's Auto IPAddress ``sticky`` (198.18.40.1), then went; the Network was edited to route via
    198.18.40.1; n2's pod naming ``sticky`` took n1's lease object up, quarantined it (``_quarantine_elsewhere``) and
    leased ``sticky`` another address. n1's store was never told: it still has ``sticky`` -> 198.18.40.1. The policy
    route is dropped again, and n1's next pod naming ``sticky`` got 198.18.40.1 from its store (no claim: the lease is
    held and no longer starts over), while the API had ``sticky`` holding n2's address: one IPAddress with two lease
    objects (n1's keep took the quarantined one back), or, before that keep was made, a quarantined address another
    node's Static adopted while n1's pod was on it. n1 sees the holder's address elsewhere now (``held_by``), reads
    its own lease's object (quarantined), drops that stale lease and takes n2's up (``Ipam._taken_over``)."""
    from ipamd.kube.leases import KIND, lease_name
    from tests.fakes.cluster import FakeApi
    from tests.unit.test_attacher import NS as ANS
    from tests.unit.test_attacher import obj as kobj
    from tests.unit.test_attacher_kube import KubeNode, a_pod
    from tests.unit.test_attacher_kube import world as kworld

    api = FakeApi()
    a, b = KubeNode(api, "n1", source=kworld("1h")), KubeNode(api, "n2", source=kworld("1h"))
    nets = [{"type": "Network", "name": "net-a", "ifName": "net1", "ipAddressNames": ["sticky"]}]
    plain = {"networkClass": "cls", "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "small"}}}
    for node in (a, b):
        node.source.add(kobj("IPAddress", "sticky", {"networkRef": {"kind": "Network", "name": "net-a"}}))
        for name in ("pa", "pb", "pc"):
            node.source.add(a_pod(name, nets, f"uid-{name}"))
    first = a.call("ADD", "pa", "uid-pa", "ca")["ips"][0]["address"].split("/")[0]
    a.call("DEL", "pa", "uid-pa", "ca")
    a.outbox.flush()
    for node in (a, b):
        node.source.add(kobj("Network", "net-a", {**plain, "routingTable": 100,
                                                  "policyRoutes": [{"destination": "0.0.0.0/0", "via": first}]}))
    second = b.call("ADD", "pb", "uid-pb", "cb")["ips"][0]["address"].split("/")[0]
    b.call("DEL", "pb", "uid-pb", "cb")
    b.outbox.flush()
    assert second != first
    for node in (a, b):  # the policy route dropped again
        node.source.add(kobj("Network", "net-a", plain))
    third = a.call("ADD", "pc", "uid-pc", "cc")["ips"][0]["address"].split("/")[0]
    assert third == second, "n1's pod gets the address IPAddress sticky holds in the API, taken up from n2"
    pool = f"IPAddressPool/{ANS}/small"
    assert [lease.address for lease in a.store.all_leases()] == [third], "n1's stale lease of the gateway dropped"
    if dup:  # another node's Static asks for exactly the quarantined address, and adopts it: no pod of n1 is on it
        c = KubeNode(api, "n3", source=kworld("1h"))
        c.source.add(kobj("IPAddress", "grab", {"networkRef": {"kind": "Network", "name": "net-a"}, "type": "Static",
                                                "static": {"ip": first}}))
        c.source.add(a_pod("pd", [{"type": "Network", "name": "net-a", "ifName": "net1",
                                   "ipAddressNames": ["grab"]}], "uid-pd"))
        got = c.call("ADD", "pd", "uid-pd", "cd")["ips"][0]["address"].split("/")[0]
        assert got == first != third, f"n1's pod pc and n3's pod pd both have {got}"
    a.outbox.flush()  # n1's keep of its pod's address (``keep_in_use``): on the object it took up, not the quarantined
    obj = api.get(KIND, lease_name(pool, first))
    assert obj["spec"].get("holder") == (f"IPAddress/{ANS}/grab" if dup else None), obj
    held = sorted(o["spec"]["ip"] for o in api.objs[KIND].values() if o["spec"].get("holder") == f"IPAddress/{ANS}/sticky")
    assert held == [third], f"IPAddress sticky holds {held} in the API"


@pytest.mark.parametrize("owed", [False, True], ids=["its-writes-made", "its-writes-owed"])
def test_a_node_whose_cache_lags_its_own_quarantine_keeps_the_lease_it_made_since(owed: bool) -> None:
    """The other side of ``_taken_over``: n1 itself quarantined n2's lease object of ``sticky`` on a new gateway and
    leased it another address; its informer's cache lags its own writes, still showing the old object held for
    ``sticky`` (and not the new one). n1's next pod naming ``sticky`` keeps the lease n1 made: its object, read, is
    the holder's. An ADD whose cache shows the lease it holds reads nothing."""
    from ipamd.kube.leases import KIND, lease_name
    from tests.fakes.cluster import FakeApi
    from tests.unit.test_attacher import NS as ANS
    from tests.unit.test_attacher import obj as kobj
    from tests.unit.test_attacher_kube import KubeNode, a_pod
    from tests.unit.test_attacher_kube import world as kworld

    api = FakeApi()
    a, b = KubeNode(api, "n1", source=kworld("1h"), live=False), KubeNode(api, "n2", source=kworld("1h"))
    nets = [{"type": "Network", "name": "net-a", "ifName": "net1", "ipAddressNames": ["sticky"]}]
    plain = {"networkClass": "cls", "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "small"}}}
    for node in (a, b):
        node.source.add(kobj("IPAddress", "sticky", {"networkRef": {"kind": "Network", "name": "net-a"}}))
        for name in ("pa", "pb", "pc", "pd"):
            node.source.add(a_pod(name, nets, f"uid-{name}"))
    first = b.call("ADD", "pb", "uid-pb", "cb")["ips"][0]["address"].split("/")[0]
    b.call("DEL", "pb", "uid-pb", "cb")
    b.outbox.flush()
    for node in (a, b):
        node.source.add(kobj("Network", "net-a", {**plain, "routingTable": 100,
                                                  "policyRoutes": [{"destination": "0.0.0.0/0", "via": first}]}))
    a.cache.sync()
    second = a.call("ADD", "pa", "uid-pa", "ca")["ips"][0]["address"].split("/")[0]
    a.call("DEL", "pa", "uid-pa", "ca")
    assert second != first
    pool = f"IPAddressPool/{ANS}/small"
    if owed:  # the quarantine made, n1's write taking pod pa off its new lease's object still owed
        a.outbox.flush_target(f"{KIND}/{lease_name(pool, first)}")
        assert a.outbox.owes(f"{KIND}/{lease_name(pool, second)}")
    else:
        a.outbox.flush()
    for node in (a, b):  # the policy route dropped again
        node.source.add(kobj("Network", "net-a", plain))
    assert a.registry.held_by(f"IPAddress/{ANS}/sticky", pool) == to_int(first), "the cache lags n1's quarantine"
    reads = api.calls[f"get {KIND}"]
    third = a.call("ADD", "pc", "uid-pc", "cc")["ips"][0]["address"].split("/")[0]
    assert third == second, "n1 kept the lease it made"
    assert api.calls[f"get {KIND}"] - reads == 1, "its object read once (a pod's name taken off it, owed, says nothing)"
    a.call("DEL", "pc", "uid-pc", "cc")
    a.outbox.flush()
    b.outbox.flush()
    a.cache.sync()
    reads = api.calls[f"get {KIND}"]
    assert a.call("ADD", "pd", "uid-pd", "cd")["ips"][0]["address"].split("/")[0] == second
    assert api.calls[f"get {KIND}"] == reads, "an ADD whose cache shows the lease it holds reads no lease object"
    old = api.get(KIND, lease_name(pool, first))
    assert (old.get("status") or {}).get("orphaningTimestamp") and not old["spec"].get("holder"), "still quarantined"
    held = [o["spec"]["ip"] for o in api.objs[KIND].values() if o["spec"].get("holder") == f"IPAddress/{ANS}/sticky"]
    assert held == [second]
    assert [lease.address for lease in a.store.all_leases() if lease.holder] == [second]


def test_a_lease_object_is_read_for_being_taken_over_only_while_no_write_of_who_holds_it_is_owed() -> None:
    """``KubeLeaseRegistry.taken_over``: an address of this node's block whose object's create is still owed is this
    node's word (not read, never taken for gone); made, it is read: the holder's, or quarantined or gone by another
    node's doing. A write owed that says nothing of who holds it (a pod's name taken off it) does not stop the read."""
    from ipamd.kube.leases import KIND, lease_name
    from ipamd.model.timefmt import rfc3339
    from tests.fakes.cluster import FakeApi
    from tests.unit.test_blocks import Node

    api = FakeApi()
    node = Node(api, "n1")
    node.add()
    (lease,) = node.store.all_leases()
    name = lease_name(lease.pool, lease.address)
    assert node.outbox.owes(f"{KIND}/{name}") and name not in api.objs[KIND], "its create owed"
    reads = api.calls[f"get {KIND}"]
    assert not node.registry.taken_over(lease) and api.calls[f"get {KIND}"] == reads, "owed: not read"
    node.outbox.flush()
    assert not node.registry.taken_over(lease) and api.calls[f"get {KIND}"] == reads + 1, "read: the holder's"
    api.patch_status(KIND, name, {"orphaningTimestamp": rfc3339()})  # another node's quarantine of it
    api.patch(KIND, name, {"spec": {"holder": None}})
    node.outbox.add(f"{KIND}/{name}", "unkeep", {"name": name, "uid": "uid-gone"})
    assert node.registry.taken_over(lease), "quarantined"
    api.delete(KIND, name)
    assert node.registry.taken_over(lease), "gone"

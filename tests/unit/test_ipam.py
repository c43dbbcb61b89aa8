"""``ipamd.ipam.addresses.Ipam`` over an in-memory ``Store`` and a dict-backed object source, with a fake clock."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cni.errors import AddressConflict, InvalidConfig, ObjectNotFound, PoolExhausted
from ipamd.ipam.addresses import Claim, Ipam, Secured, auto_ip_name
from ipamd.ipam.allocator import in_ranges, subnet_for, to_int, to_text
from ipamd.model.annotations import NetworkSelection
from ipamd.model.conditions import set_condition
from ipamd.model.objects import (
    API_VERSION,
    IP_ADDRESS,
    IP_ADDRESS_POOL,
    AddressPool,
    ApiObject,
    IPAddressObject,
    Pod,
    parse_object,
)
from ipamd.store.records import IPRecord
from ipamd.store.sqlite import Store
from tests.fakes.source import FakeSource

NS = "ns"
T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def obj(kind: str, name: str, spec: dict[str, Any] | None = None, namespace: str | None = NS,
        **metadata: Any) -> ApiObject:
    md: dict[str, Any] = {"name": name, **metadata}
    if namespace:
        md["namespace"] = namespace
    return parse_object({"apiVersion": "v1" if kind == "Pod" else API_VERSION, "kind": kind, "metadata": md,
                         "spec": spec or {}})


def pool(name: str, network: str, ranges: list[str] | None = None, ttl: str = "1h",
         routes: list[dict[str, str]] | None = None) -> ApiObject:
    item: dict[str, Any] = {"network": network}
    if ranges:
        item["ranges"] = ranges
    if routes:
        item["routes"] = routes
    return obj("IPAddressPool", name, {"leaseTTL": ttl, "pools": [item]})


def network(name: str, pool_name: str | None) -> ApiObject:
    spec: dict[str, Any] = {"networkClass": "cls"}
    if pool_name:
        spec["ipam"] = {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": pool_name}}
    return obj("Network", name, spec)


def static(name: str, address: str, net: str = "net") -> ApiObject:
    return obj("IPAddress", name, {"networkRef": {"kind": "Network", "name": net}, "type": "Static",
                                   "static": {"ip": address}})


def auto_ip(name: str, net: str = "net") -> ApiObject:
    return obj("IPAddress", name, {"networkRef": {"kind": "Network", "name": net}})


def pod(name: str, uid: str | None = None) -> Pod:
    p = obj("Pod", name, uid=uid or f"uid-{name}")
    assert isinstance(p, Pod)
    return p


ROUTE = {"destination": "198.19.10.0/24", "via": "198.18.10.1"}


def world() -> FakeSource:
    return FakeSource(
        obj("NetworkClass", "cls", {"vlan": {"idPool": ["600-800"]}}, namespace=None),
        pool("pool", "198.18.10.0/24", ["198.18.10.50-198.18.10.59"], routes=[ROUTE]),  # 10 addresses
        network("net", "pool"),
        pool("tiny", "198.18.20.0/30", ["198.18.20.1"], ttl="10m"),  # 1 address
        network("tiny-net", "tiny"),
        pool("zero", "198.18.30.0/30", ["198.18.30.1"], ttl="0s"),
        network("zero-net", "zero"),
        network("bare", None),
        static("static-out-of-range", "198.18.10.100"),
        static("static-in-range", "198.18.10.55"),
        static("static-elsewhere", "198.18.11.5"),
        static("tiny-static", "198.18.20.1", net="tiny-net"),
        auto_ip("user-auto"),
        auto_ip("tiny-user-auto", net="tiny-net"),
    )


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def source() -> FakeSource:
    return world()


@pytest.fixture()
def store() -> Iterator[Store]:
    s = Store(":memory:")
    yield s
    s.close()


@pytest.fixture()
def ipam(store: Store, source: FakeSource, clock: Clock) -> Ipam:
    return Ipam(store, source, clock)


def attach(ipam: Ipam, p: Pod, net: str = "net", if_name: str = "net1", names: tuple[str, ...] = (),
           where: str = "networks-spec[0]") -> list[Claim]:
    """What the attacher does for one interface: resolve, validate, claim."""
    sel = NetworkSelection(type="Network", name=net, if_name=if_name, ip_address_names=names)
    resolved = ipam.resolve(sel, p.meta.namespace, where)
    objs = ipam.validate(p, sel, resolved, where)
    return ipam.claim(p, sel, resolved, objs)


def gone(ipam: Ipam, p: Pod) -> None:
    """The pod is deleted: its attachments let go of their IPAddresses, then it is forgotten."""
    keys = [r.key for r in ipam.store.all_ips() if p.meta.uid in r.used_by_uids]
    ipam.release_pod(keys, p.meta.uid)
    ipam.forget_pod(p.meta.uid)


def key_of(p: Pod, if_name: str = "net1") -> str:
    return f"IPAddress/{NS}/{auto_ip_name(p, if_name)}"


def user_obj(source: FakeSource, name: str) -> IPAddressObject:
    found = source.get(IP_ADDRESS, NS, name)
    assert isinstance(found, IPAddressObject)
    return found


def pool_obj(source: FakeSource, name: str) -> AddressPool:
    found = source.get(IP_ADDRESS_POOL, NS, name)
    assert isinstance(found, AddressPool)
    return found


# -- Auto -----------------------------------------------------------------------------------------

def test_auto_claims_get_distinct_addresses_in_the_ranges(ipam: Ipam, store: Store) -> None:
    addresses = []
    for i in range(10):
        p = pod(f"pod-{i}")
        (claim,) = attach(ipam, p)
        assert claim.created_ip and claim.created_lease
        assert claim.network == "198.18.10.0/24"
        assert claim.routes == (ROUTE,)
        assert claim.ip_key == key_of(p)
        addresses.append(claim.address)
    assert len(set(addresses)) == 10
    assert addresses == [f"198.18.10.{n}" for n in range(50, 60)]  # round-robin from the start of the range
    assert len(store.all_leases()) == 10


def test_auto_claim_records_the_ipaddress_and_its_lease(ipam: Ipam, store: Store, clock: Clock) -> None:
    p = pod("pod-a")
    (claim,) = attach(ipam, p)
    rec = store.get_ip(claim.ip_key)
    assert rec is not None
    assert (rec.kind, rec.namespace, rec.name) == ("IPAddress", NS, claim.ip_name)
    assert (rec.network_kind, rec.network_name, rec.type) == ("Network", "net", "Auto")
    assert rec.owner_pod_uid == "uid-pod-a"
    assert rec.created_by == "plexus"
    assert rec.phase == "Allocated"
    assert (rec.address, rec.network, rec.pool) == (claim.address, "198.18.10.0/24", "IPAddressPool/ns/pool")
    assert rec.routes == (ROUTE,)
    assert rec.used_by_pods == ("ns/pod-a",) and rec.used_by_uids == ("uid-pod-a",)
    (allocated,) = rec.conditions
    assert allocated["type"] == "Allocated" and allocated["status"] == "True"
    lease = store.lease_of(claim.ip_key)
    assert lease is not None
    assert (lease.address, lease.holder, lease.state, lease.ttl) == (claim.address, claim.ip_key, "bound", 3600.0)
    assert lease.created_at == clock.now


def test_auto_claim_is_idempotent(ipam: Ipam, store: Store) -> None:
    p = pod("pod-a")
    (first,) = attach(ipam, p)
    (again,) = attach(ipam, p)
    assert again.address == first.address
    assert again.ip_key == first.ip_key
    assert not again.created_ip and not again.created_lease
    assert len(store.all_leases()) == 1


def test_two_interfaces_of_one_pod_get_two_addresses(ipam: Ipam) -> None:
    p = pod("pod-a")
    (a,) = attach(ipam, p, if_name="net1")
    (b,) = attach(ipam, p, if_name="net2")
    assert a.ip_key != b.ip_key
    assert a.address != b.address


def test_network_without_ipam_claims_nothing(ipam: Ipam, store: Store) -> None:
    assert attach(ipam, pod("pod-a"), net="bare") == []
    assert store.all_leases() == [] and store.all_ips() == []


def test_auto_ip_name_is_readable_and_unique_per_pod_uid() -> None:
    a = auto_ip_name(pod("pod.a", uid="1"), "net_1")
    assert a.startswith("pod-a-net-1-")  # dots and underscores cannot be in an object name
    assert auto_ip_name(pod("pod-a", uid="2"), "net1") != auto_ip_name(pod("pod-a", uid="3"), "net1")
    assert auto_ip_name(pod("pod-a", uid="2"), "net1") == auto_ip_name(pod("pod-a", uid="2"), "net1")


# -- exhaustion -----------------------------------------------------------------------------------

def test_exhausted_pool_names_the_pool(ipam: Ipam, store: Store) -> None:
    attach(ipam, pod("pod-a"), net="tiny-net")
    with pytest.raises(PoolExhausted) as info:
        attach(ipam, pod("pod-b"), net="tiny-net")
    assert info.value.code == 100
    assert "ns/tiny" in info.value.msg
    assert "1 of 1" in info.value.details
    # the failed claim left nothing behind
    assert store.get_ip(key_of(pod("pod-b"))) is None
    assert len(store.all_leases()) == 1


def test_ten_addresses_serve_ten_pods_and_no_more(ipam: Ipam) -> None:
    for i in range(10):
        attach(ipam, pod(f"pod-{i}"))
    with pytest.raises(PoolExhausted):
        attach(ipam, pod("pod-10"))


def test_note_exhausted_marks_user_ipaddresses(ipam: Ipam, store: Store, source: FakeSource) -> None:
    attach(ipam, pod("pod-a"), net="tiny-net")
    user = user_obj(source, "tiny-user-auto")
    with pytest.raises(PoolExhausted) as info:
        attach(ipam, pod("pod-b"), net="tiny-net", names=("tiny-user-auto",))
    ipam.note_exhausted([user], info.value)
    rec = store.get_ip(user.meta.key)
    assert rec is not None
    assert rec.phase == "Pending"
    (cond,) = rec.conditions
    assert (cond["type"], cond["status"], cond["reason"]) == ("Allocated", "False", "NoFreeIPAddress")
    assert store.lease_of(user.meta.key) is None


# -- Static ---------------------------------------------------------------------------------------

def test_static_gets_exactly_its_address(ipam: Ipam, store: Store, source: FakeSource) -> None:
    (claim,) = attach(ipam, pod("pod-a"), names=("static-out-of-range",))
    assert claim.address == "198.18.10.100"
    assert claim.ip_key == "IPAddress/ns/static-out-of-range"
    assert not claim.created_ip and claim.created_lease
    lease = store.lease_at("IPAddressPool/ns/pool", to_int("198.18.10.100"))
    assert lease is not None and lease.holder == claim.ip_key
    assert not lease.outside_ranges  # a Static may sit anywhere in the subnet
    rec = store.get_ip(claim.ip_key)
    assert rec is not None and rec.created_by == "user" and rec.type == "Static"


def test_static_outside_the_pool_is_invalid(ipam: Ipam, source: FakeSource) -> None:
    with pytest.raises(InvalidConfig) as info:
        attach(ipam, pod("pod-a"), names=("static-elsewhere",))
    assert info.value.code == 7
    assert info.value.details == "spec.static.ip"
    assert "198.18.11.5" in info.value.msg


def test_static_outside_the_pool_is_refused_by_lease_for_too(ipam: Ipam, store: Store, source: FakeSource) -> None:
    rec = ipam.record_for(user_obj(source, "static-elsewhere"))
    with pytest.raises(InvalidConfig), store.transaction():
        ipam.lease_for(rec, pool_obj(source, "pool"), Secured())
    assert store.all_leases() == []


def test_static_outside_the_pool_leased_alone_is_recorded_pending_holding_nothing(
        ipam: Ipam, store: Store, source: FakeSource) -> None:
    """The reconciler's ``lease_alone`` refuses it all the same (the round logs it), and records it Pending saying
    why, as an Auto IPAddress on a full pool is (``test_reconcile``: every case, from a round)."""
    user = user_obj(source, "static-elsewhere")
    with pytest.raises(InvalidConfig) as info:
        ipam.lease_alone(ipam.record_for(user), pool_obj(source, "pool"))
    rec = store.get_ip(user.meta.key)
    assert rec is not None and (rec.phase, rec.address) == ("Pending", "")
    (cond,) = rec.conditions
    assert (cond["type"], cond["status"], cond["reason"], cond["message"]) == (
        "Allocated", "False", "IPAddressOutsidePool", info.value.msg)
    assert "ns/pool" in cond["message"] and "198.18.10.0/24" in cond["message"]
    assert store.all_leases() == []


def test_an_api_clients_refused_address_leaves_no_record(ipam: Ipam, store: Store, source: FakeSource) -> None:
    """Recording a refused Static Pending is for a user's IPAddress: a gRPC client's refused request is no object."""
    for address in ("198.18.11.5", "198.18.10.1"):  # outside the pool; its route's gateway
        with pytest.raises(InvalidConfig):
            ipam.allocate_for("client", pool_obj(source, "pool"), address)
    ipam.allocate_for("holder", pool_obj(source, "pool"), "198.18.10.55")
    with pytest.raises(AddressConflict):  # refused in ``lease_alone``, as a user's Static is
        ipam.allocate_for("client", pool_obj(source, "pool"), "198.18.10.55")
    assert [r.key for r in store.all_ips()] == ["api/holder"]


def test_static_on_the_network_or_broadcast_address_is_invalid(ipam: Ipam, source: FakeSource) -> None:
    source.add(static("static-net", "198.18.10.0"))
    source.add(static("static-bcast", "198.18.10.255"))
    for name in ("static-net", "static-bcast"):
        with pytest.raises(InvalidConfig):
            attach(ipam, pod("pod-a"), names=(name,))


def test_static_taken_by_an_auto_lease_is_a_conflict(ipam: Ipam, store: Store, source: FakeSource) -> None:
    for i in range(6):  # .50 to .55
        attach(ipam, pod(f"pod-{i}"))
    with pytest.raises(AddressConflict) as info:
        attach(ipam, pod("pod-s"), names=("static-in-range",))
    assert info.value.code == 104
    assert info.value.details == "spec.static.ip"
    rec = ipam.record_for(user_obj(source, "static-in-range"))
    with pytest.raises(AddressConflict), store.transaction():
        ipam.lease_for(rec, pool_obj(source, "pool"), Secured())


def test_auto_never_takes_a_static_address(ipam: Ipam) -> None:
    (s,) = attach(ipam, pod("pod-s"), names=("static-in-range",))
    autos = [attach(ipam, pod(f"pod-{i}"))[0].address for i in range(9)]
    assert s.address == "198.18.10.55"
    assert s.address not in autos
    with pytest.raises(PoolExhausted):
        attach(ipam, pod("pod-9"))


def test_two_statics_for_one_address_conflict(ipam: Ipam, source: FakeSource) -> None:
    source.add(static("static-twin", "198.18.10.100"))
    attach(ipam, pod("pod-a"), names=("static-out-of-range",))
    with pytest.raises(AddressConflict):
        attach(ipam, pod("pod-b"), names=("static-twin",))


# -- validation -----------------------------------------------------------------------------------

def test_unknown_network(ipam: Ipam) -> None:
    with pytest.raises(ObjectNotFound) as info:
        attach(ipam, pod("pod-a"), net="nope", where="networks-spec[1]")
    assert info.value.code == 103
    assert info.value.details == "networks-spec[1].name"


def test_network_of_another_namespace_is_not_found_but_hinted(ipam: Ipam, source: FakeSource) -> None:
    source.add(obj("Network", "elsewhere", {"networkClass": "cls"}, namespace="other"))
    with pytest.raises(ObjectNotFound) as info:
        attach(ipam, pod("pod-a"), net="elsewhere")
    assert "namespace other" in info.value.msg


def test_missing_pool_and_class(ipam: Ipam, source: FakeSource) -> None:
    source.add(network("no-pool", "missing-pool"))
    with pytest.raises(ObjectNotFound) as info:
        attach(ipam, pod("pod-a"), net="no-pool")
    assert info.value.details == "spec.ipam.ipAddressPoolRef"
    source.add(obj("Network", "no-class", {"networkClass": "missing"}))
    with pytest.raises(ObjectNotFound) as info:
        attach(ipam, pod("pod-a"), net="no-class")
    assert info.value.details == "spec.networkClass"


def test_ipaddress_names_need_ipam(ipam: Ipam) -> None:
    with pytest.raises(InvalidConfig) as info:
        attach(ipam, pod("pod-a"), net="bare", names=("user-auto",))
    assert info.value.details == "networks-spec[0].ipAddressNames"


def test_unknown_ipaddress(ipam: Ipam) -> None:
    with pytest.raises(ObjectNotFound) as info:
        attach(ipam, pod("pod-a"), names=("nope",))
    assert info.value.details == "networks-spec[0].ipAddressNames"


def test_ipaddress_of_another_network(ipam: Ipam) -> None:
    with pytest.raises(ObjectNotFound) as info:  # not the pod's to use on this network
        attach(ipam, pod("pod-a"), names=("tiny-static",))
    assert info.value.details == "networks-spec[0].ipAddressNames"


def test_ipaddress_in_use_by_another_pod_is_a_conflict(ipam: Ipam, store: Store) -> None:
    a, b = pod("pod-a"), pod("pod-b")
    attach(ipam, a, names=("user-auto",))
    with pytest.raises(AddressConflict) as info:
        attach(ipam, b, names=("user-auto",))
    assert info.value.code == 104
    assert "ns/pod-a" in info.value.msg
    # once pod-a lets go, pod-b may have it, with the same address
    before = store.get_ip("IPAddress/ns/user-auto")
    ipam.release_pod(["IPAddress/ns/user-auto"], a.meta.uid)
    (claim,) = attach(ipam, b, names=("user-auto",))
    assert before is not None and claim.address == before.address


# -- quarantine -----------------------------------------------------------------------------------

def test_deleted_ipaddress_is_quarantined_for_the_lease_ttl(ipam: Ipam, store: Store, clock: Clock) -> None:
    a = pod("pod-a")
    (claim,) = attach(ipam, a, net="tiny-net")
    gone(ipam, a)
    assert store.get_ip(claim.ip_key) is None
    (orphan,) = store.all_leases()
    assert orphan.holder is None and orphan.state == "orphaned"
    assert orphan.orphaned_at == clock.now
    assert orphan.address == claim.address

    clock.advance(599)
    with pytest.raises(PoolExhausted):
        attach(ipam, pod("pod-b"), net="tiny-net")
    assert ipam.expire(None, clock()) == 0
    assert store.all_leases() == [orphan]

    clock.advance(1)  # leaseTTL 10m is over
    (again,) = attach(ipam, pod("pod-b"), net="tiny-net")
    assert again.address == claim.address


def test_delete_ip_orphans_the_lease_until_expire_frees_it(ipam: Ipam, store: Store, clock: Clock,
                                                          source: FakeSource) -> None:
    (claim,) = attach(ipam, pod("pod-a"), net="tiny-net", names=("tiny-user-auto",))
    rec = store.get_ip(claim.ip_key)
    assert rec is not None
    ipam.delete_ip(rec)
    assert store.get_ip(claim.ip_key) is None
    assert store.lease_of(claim.ip_key) is None
    (orphan,) = store.orphaned_leases("IPAddressPool/ns/tiny")
    assert (orphan.address, orphan.ttl, orphan.orphaned_at) == (claim.address, 600.0, clock.now)
    assert store.taken_ips("IPAddressPool/ns/tiny") == {to_int(claim.address)}  # not allocatable meanwhile
    assert ipam.expire(None, clock.now + 599.9) == 0
    assert ipam.expire(None, clock.now + 600) == 1
    assert store.all_leases() == []


def test_expire_frees_only_leases_whose_quarantine_is_over(ipam: Ipam, store: Store, clock: Clock) -> None:
    a, b = pod("pod-a"), pod("pod-b")
    attach(ipam, a, net="tiny-net")
    attach(ipam, b)
    gone(ipam, a)
    gone(ipam, b)
    assert len(store.orphaned_leases()) == 2
    clock.advance(600)
    assert ipam.expire("IPAddressPool/ns/pool", clock()) == 0  # this pool's TTL is an hour
    assert ipam.expire(None, clock()) == 1
    (left,) = store.orphaned_leases()
    assert left.pool == "IPAddressPool/ns/pool"
    clock.advance(3000)
    assert ipam.expire(None, clock()) == 1
    assert store.all_leases() == []


def test_zero_ttl_frees_at_once(ipam: Ipam, store: Store) -> None:
    a = pod("pod-a")
    (claim,) = attach(ipam, a, net="zero-net")
    gone(ipam, a)
    assert store.all_leases() == []
    (again,) = attach(ipam, pod("pod-b"), net="zero-net")
    assert again.address == claim.address


def test_a_static_adopts_its_quarantined_address_at_once(ipam: Ipam, store: Store, clock: Clock) -> None:
    a = pod("pod-a")
    (auto,) = attach(ipam, a, net="tiny-net")
    assert auto.address == "198.18.20.1"
    gone(ipam, a)
    (claim,) = attach(ipam, pod("pod-b"), net="tiny-net", names=("tiny-static",))
    assert claim.address == "198.18.20.1"
    (lease,) = store.all_leases()
    assert lease.holder == "IPAddress/ns/tiny-static"
    assert lease.state == "bound" and lease.orphaned_at is None
    assert lease.created_at == clock.now


def test_quarantined_address_is_not_reallocated_while_others_are_free(ipam: Ipam, store: Store) -> None:
    a = pod("pod-a")
    (first,) = attach(ipam, a)
    gone(ipam, a)
    seen = [attach(ipam, pod(f"pod-{i}"))[0].address for i in range(9)]
    assert first.address not in seen
    with pytest.raises(PoolExhausted):
        attach(ipam, pod("pod-x"))


# -- forgetting and undoing -----------------------------------------------------------------------

def test_forget_pod_deletes_only_the_ipaddresses_it_owns(ipam: Ipam, store: Store) -> None:
    a, b = pod("pod-a"), pod("pod-b")
    (a_auto,) = attach(ipam, a)
    (a_static,) = attach(ipam, a, if_name="net2", names=("static-out-of-range",))
    (b_auto,) = attach(ipam, b)
    assert ipam.forget_pod(a.meta.uid) == 1
    assert store.get_ip(a_auto.ip_key) is None
    assert store.lease_of(a_auto.ip_key) is None
    assert store.lease_at("IPAddressPool/ns/pool", to_int(a_auto.address)) is not None  # quarantined
    assert store.get_ip(a_static.ip_key) is not None  # the user's IPAddress stays, with its address
    assert store.lease_of(a_static.ip_key) is not None
    assert store.get_ip(b_auto.ip_key) is not None
    assert store.lease_of(b_auto.ip_key) is not None


def test_forget_pod_keeps_an_owned_ipaddress_another_pod_uses(ipam: Ipam, store: Store, source: FakeSource) -> None:
    a, b = pod("pod-a"), pod("pod-b")
    source.add(obj("IPAddress", "shared", {"networkRef": {"kind": "Network", "name": "net"}},
                   labels={"network.deckhouse.io/owner-pod-uid": a.meta.uid}))
    attach(ipam, b, names=("shared",))
    ipam.forget_pod(a.meta.uid)
    assert store.get_ip("IPAddress/ns/shared") is not None


def test_release_pod_keeps_the_address_and_marks_not_attached(ipam: Ipam, store: Store) -> None:
    a = pod("pod-a")
    (claim,) = attach(ipam, a, names=("user-auto",))
    ipam.set_attached([claim.ip_key], True)
    ipam.release_pod([claim.ip_key], a.meta.uid)
    rec = store.get_ip(claim.ip_key)
    assert rec is not None
    assert rec.used_by_uids == () and rec.used_by_pods == ()
    assert rec.address == claim.address
    attached = next(c for c in rec.conditions if c["type"] == "Attached")
    assert (attached["status"], attached["reason"]) == ("False", "NotAttached")


def test_undo_claims_removes_what_the_claim_created(ipam: Ipam, store: Store) -> None:
    a = pod("pod-a")
    claims = attach(ipam, a) + attach(ipam, a, if_name="net2", names=("static-out-of-range",))
    ipam.undo_claims(claims, a)
    assert store.get_ip(claims[0].ip_key) is None
    assert store.lease_at("IPAddressPool/ns/pool", to_int(claims[0].address)) is None  # freed, not quarantined
    rec = store.get_ip(claims[1].ip_key)  # the user's IPAddress existed: it only loses the pod
    assert rec is not None and rec.used_by_uids == ()
    (again,) = attach(ipam, pod("pod-b"))
    assert again.address != claims[0].address  # round-robin goes on past it, but it is free
    assert store.leases_in_pool("IPAddressPool/ns/pool").keys() == {to_int("198.18.10.100"), to_int(again.address)}


def test_undo_of_a_retried_claim_keeps_the_earlier_ipaddress(ipam: Ipam, store: Store) -> None:
    a = pod("pod-a")
    (first,) = attach(ipam, a)
    retry = attach(ipam, a)
    ipam.undo_claims(retry, a)
    rec = store.get_ip(first.ip_key)
    assert rec is not None and rec.address == first.address
    assert store.lease_of(first.ip_key) is not None


def test_a_deleted_user_ipaddress_goes_when_its_last_pod_lets_go(ipam: Ipam, store: Store) -> None:
    a = pod("pod-a")
    (claim,) = attach(ipam, a, names=("user-auto",))
    rec = store.get_ip(claim.ip_key)
    assert rec is not None
    with store.transaction():
        store.put_ip(IPRecord(**{**{f: getattr(rec, f) for f in rec.__dataclass_fields__}, "deleted": True}))
    ipam.release_pod([claim.ip_key], a.meta.uid)
    assert store.get_ip(claim.ip_key) is None
    (lease,) = store.all_leases()
    assert lease.state == "orphaned"


def remade_static(name: str, address: str, uid: str = "new-uid") -> ApiObject:
    """``name`` deleted and created again (another uid), asking for ``address``."""
    return obj("IPAddress", name, {"networkRef": {"kind": "Network", "name": "net"}, "type": "Static",
                                   "static": {"ip": address}}, uid=uid)


def test_static_ipaddress_remade_with_another_ip_gets_the_new_ip(ipam: Ipam, source: FakeSource,
                                                                 store: Store) -> None:
    """Delete the Static IPAddress and create it again (new uid) with another spec.static.ip, as the webhook's
    own refusal tells the user to: the next pod naming it must get the new address, not the old one."""
    (c,) = attach(ipam, pod("pod-a"), names=("static-in-range",))
    assert c.address == "198.18.10.55"
    gone(ipam, pod("pod-a"))
    source.remove("IPAddress", NS, "static-in-range")
    source.add(remade_static("static-in-range", "198.18.10.56"))
    (c2,) = attach(ipam, pod("pod-b"), names=("static-in-range",))
    assert c2.address == "198.18.10.56"
    rec = store.get_ip(c2.ip_key)
    assert rec is not None and (rec.static_ip, rec.address, rec.uid) == ("198.18.10.56", "198.18.10.56", "new-uid")
    old = store.lease_at("IPAddressPool/ns/pool", to_int("198.18.10.55"))
    assert old is not None and old.state == "orphaned", "the old address quarantined, as a deleted IPAddress's"


def test_a_static_remade_while_a_pod_uses_it_keeps_its_address_until_the_pods_del(
        ipam: Ipam, source: FakeSource, store: Store) -> None:
    """The pod's interface carries the old address: it stays, and another pod is refused, until the pod's DEL; the
    next pod then gets the new object's address."""
    a = pod("pod-a")
    (c,) = attach(ipam, a, names=("static-in-range",))
    source.remove("IPAddress", NS, "static-in-range")
    source.add(remade_static("static-in-range", "198.18.10.56"))
    (again,) = attach(ipam, a, names=("static-in-range",))  # the pod's new sandbox
    assert again.address == "198.18.10.55"
    with pytest.raises(AddressConflict):
        attach(ipam, pod("pod-b"), names=("static-in-range",))
    assert store.lease_at("IPAddressPool/ns/pool", to_int("198.18.10.56")) is None
    gone(ipam, a)
    (c2,) = attach(ipam, pod("pod-b"), names=("static-in-range",))
    assert c2.address == "198.18.10.56"
    old = store.lease_at("IPAddressPool/ns/pool", to_int(c.address))
    assert old is not None and old.state == "orphaned"


@pytest.mark.parametrize("name", ["static-in-range", "user-auto"])
def test_an_ipaddress_remade_with_the_same_spec_keeps_its_address(ipam: Ipam, source: FakeSource, store: Store,
                                                                  name: str) -> None:
    """Another uid alone asks for no other address: no needless move, nothing quarantined."""
    (c,) = attach(ipam, pod("pod-a"), names=(name,))
    gone(ipam, pod("pod-a"))
    same = source.get(IP_ADDRESS, NS, name)
    assert isinstance(same, IPAddressObject)
    source.remove("IPAddress", NS, name)
    source.add(obj("IPAddress", name, {"networkRef": {"kind": "Network", "name": "net"}, "type": same.type,
                                       **({"static": {"ip": same.static_ip}} if same.static_ip else {})},
                   uid="new-uid"))
    (c2,) = attach(ipam, pod("pod-b"), names=(name,))
    assert c2.address == c.address
    assert all(lease.state != "orphaned" for lease in store.all_leases())


def _dual_stack(*extra: ApiObject) -> FakeSource:
    return FakeSource(obj("NetworkClass", "cls", {"vlan": {"idPool": ["600-800"]}}, namespace=None),
                      obj("IPAddressPool", "dual", {"leaseTTL": "1h", "pools": [
                          {"network": "198.18.90.0/24", "ranges": ["198.18.90.10-198.18.90.19"]},
                          {"network": "2001:2:0:90::/64"}]}),
                      network("net", "dual"), *extra)


def test_auto_remade_asking_for_the_other_family_gets_it() -> None:
    """An Auto IPAddress without ipFamily holds an IPv4 address of a dual-stack pool; the webhook refuses an edit to
    ipFamily: IPv6 as a move, so the user makes it again so. Its record (family 0) was judged made again as it was,
    and the next pod got the IPv4 address: the family it holds is its address's, as the webhook resolves it."""
    source = _dual_stack(obj("IPAddress", "ua", {"networkRef": {"kind": "Network", "name": "net"}}, uid="old-uid"))
    store = Store(":memory:")
    ipam = Ipam(store, source, Clock())
    (c,) = attach(ipam, pod("pod-a"), names=("ua",))
    assert c.address.startswith("198.18.90.")
    gone(ipam, pod("pod-a"))
    source.remove("IPAddress", NS, "ua")
    source.add(obj("IPAddress", "ua", {"networkRef": {"kind": "Network", "name": "net"}, "ipFamily": "IPv6"},
                   uid="new-uid"))
    (c2,) = attach(ipam, pod("pod-b"), names=("ua",))
    assert ":" in c2.address, f"the remade IPv6-asking IPAddress got {c2.address}"
    old = [lease for lease in store.all_leases() if lease.address == c.address]
    assert [lease.state for lease in old] == ["orphaned"], "the old address quarantined, as a deleted one's"


@pytest.mark.parametrize(("spec", "family"), [
    ({}, "IPv4"),
    ({"type": "Static", "static": {"ip": "198.18.90.15"}}, "IPv4"),
    ({"type": "Static", "static": {"ip": "2001:2:0:90::15"}}, "IPv6"),
], ids=["auto", "static-v4", "static-v6"])
def test_remade_naming_the_family_it_holds_keeps_its_address(spec: dict[str, Any], family: str) -> None:
    """No ipFamily before, the family of its address named now: no move, nothing quarantined."""
    ref = {"networkRef": {"kind": "Network", "name": "net"}}
    source = _dual_stack(obj("IPAddress", "ua", {**ref, **spec}, uid="old-uid"))
    store = Store(":memory:")
    ipam = Ipam(store, source, Clock())
    (c,) = attach(ipam, pod("pod-a"), names=("ua",))
    gone(ipam, pod("pod-a"))
    source.remove("IPAddress", NS, "ua")
    source.add(obj("IPAddress", "ua", {**ref, **spec, "ipFamily": family}, uid="new-uid"))
    (c2,) = attach(ipam, pod("pod-b"), names=("ua",))
    assert c2.address == c.address
    assert all(lease.state != "orphaned" for lease in store.all_leases())


def test_set_condition_keeps_the_transition_time_while_the_status_holds() -> None:
    conds = set_condition((), "Attached", True, "AttachedToPod", "", T0)
    later = set_condition(conds, "Attached", True, "AttachedToPod", "again", T0 + 100)
    assert later[0]["lastTransitionTime"] == conds[0]["lastTransitionTime"]
    assert later[0]["message"] == "again"
    flipped = set_condition(later, "Attached", False, "NotAttached", "", T0 + 200)
    assert flipped[0]["lastTransitionTime"] != conds[0]["lastTransitionTime"]
    assert len(flipped) == 1


def test_set_condition_keeps_each_condition_where_it_stands() -> None:
    conds = set_condition((), "Allocated", True, "IPAddressAllocated", "", T0)
    conds = set_condition(conds, "Attached", True, "AttachedToPod", "", T0)
    again = set_condition(conds, "Allocated", True, "IPAddressAllocated", "", T0 + 100)
    assert again == conds  # written again as it was: equal, so no status write is owed
    flipped = set_condition(again, "Allocated", False, "NoFreeIPAddress", "full", T0 + 200)
    assert [c["type"] for c in flipped] == ["Allocated", "Attached"]


# -- random sequences -----------------------------------------------------------------------------

PODS = ("p0", "p1", "p2", "p3")
IFNAMES = ("net1", "net2")
STATICS = {"s-in": "198.18.40.2", "s-out": "198.18.40.6", "s-31": "198.18.41.1"}


def random_world() -> FakeSource:
    return FakeSource(
        obj("NetworkClass", "cls", {"vlan": {"idPool": ["600-800"]}}, namespace=None),
        obj("IPAddressPool", "rpool", {"leaseTTL": "30s", "pools": [
            {"network": "198.18.40.0/29", "ranges": ["198.18.40.1-198.18.40.3"]},  # 3, .4-.6 only for statics
            {"network": "198.18.41.0/31"},  # 2
        ]}),
        network("rnet", "rpool"),
        *(static(name, address, net="rnet") for name, address in STATICS.items()),
    )


class IpamSequences(RuleBasedStateMachine):
    """Random allocate / release / delete / expire sequences: leases stay unique, inside the pool, and
    quarantine is honoured."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.source = random_world()
        self.store = Store(":memory:")
        self.ipam = Ipam(self.store, self.source, self.clock)
        self.generation = dict.fromkeys(PODS, 0)
        pool_found = self.source.get(IP_ADDRESS_POOL, NS, "rpool")
        assert isinstance(pool_found, AddressPool)
        self.pool = pool_found

    def teardown(self) -> None:
        self.store.close()

    def pod(self, name: str) -> Pod:
        return pod(name, uid=f"{name}-{self.generation[name]}")

    def quarantined(self) -> set[int]:
        return {lease.ip for lease in self.store.orphaned_leases()
                if lease.orphaned_at is not None and self.clock.now < lease.orphaned_at + lease.ttl}

    @rule(name=st.sampled_from(PODS), if_name=st.sampled_from(IFNAMES))
    def claim_auto(self, name: str, if_name: str) -> None:
        p = self.pod(name)
        held_before = {lease.ip for lease in self.store.all_leases()}
        quarantined = self.quarantined()
        free_in_ranges = [a for a in range(to_int("198.18.40.0"), to_int("198.18.41.2"))
                          if in_ranges(self.pool, a) and a not in held_before - self.expirable()]
        existing = self.store.lease_of(key_of(p, if_name))
        try:
            (claim,) = attach(self.ipam, p, net="rnet", if_name=if_name)
        except PoolExhausted:
            assert existing is None and not free_in_ranges, "refused although an address was free"
            return
        address = to_int(claim.address)
        if existing is not None:
            assert address == existing.ip, "an IPAddress changed its address"
        else:
            assert address not in quarantined, "handed out a quarantined address"
            assert in_ranges(self.pool, address)

    def expirable(self) -> set[int]:
        return {lease.ip for lease in self.store.orphaned_leases()
                if lease.orphaned_at is not None and self.clock.now >= lease.orphaned_at + lease.ttl}

    @rule(name=st.sampled_from(PODS), if_name=st.sampled_from(IFNAMES), static_name=st.sampled_from(sorted(STATICS)))
    def claim_static(self, name: str, if_name: str, static_name: str) -> None:
        p = self.pod(name)
        try:
            (claim,) = attach(self.ipam, p, net="rnet", if_name=if_name, names=(static_name,))
        except AddressConflict:
            held = self.store.lease_at("IPAddressPool/ns/rpool", to_int(STATICS[static_name]))
            rec = self.store.get_ip(f"IPAddress/{NS}/{static_name}")
            in_use_by_other = rec is not None and any(u != p.meta.uid for u in rec.used_by_uids)
            held_by_other = held is not None and held.holder not in (None, f"IPAddress/{NS}/{static_name}")
            assert in_use_by_other or held_by_other, "conflict without a holder"
            return
        assert claim.address == STATICS[static_name]

    @rule(name=st.sampled_from(PODS), fail=st.booleans())
    def claim_and_undo(self, name: str, fail: bool) -> None:
        """An ADD that fails after claiming rolls its claims back."""
        p = self.pod(name)
        try:
            claims = attach(self.ipam, p, net="rnet", if_name="net3")
        except PoolExhausted:
            return
        if fail:
            self.ipam.undo_claims(claims, p)

    @rule(name=st.sampled_from(PODS))
    def release(self, name: str) -> None:
        p = self.pod(name)
        keys = [r.key for r in self.store.all_ips() if p.meta.uid in r.used_by_uids]
        self.ipam.release_pod(keys, p.meta.uid)

    @rule(name=st.sampled_from(PODS))
    def delete_pod(self, name: str) -> None:
        gone(self.ipam, self.pod(name))
        self.generation[name] += 1  # a pod of the same name comes back with a new UID

    @rule(static_name=st.sampled_from(sorted(STATICS)))
    def delete_and_recreate_static(self, static_name: str) -> None:
        rec = self.store.get_ip(f"IPAddress/{NS}/{static_name}")
        if rec is not None and not rec.used_by_uids:
            self.ipam.delete_ip(rec)

    @rule(seconds=st.sampled_from([1.0, 10.0, 29.0, 30.0, 31.0]))
    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: bool(self.store.orphaned_leases()))
    @rule()
    def expire(self) -> None:
        before = self.expirable()
        self.ipam.expire(None, self.clock())
        assert not (before & {lease.ip for lease in self.store.all_leases()})

    @invariant()
    def leases_are_unique_and_inside_the_pool(self) -> None:
        leases = self.store.all_leases()
        keys = [(lease.pool, lease.ip) for lease in leases]
        assert len(keys) == len(set(keys))
        holders = [lease.holder for lease in leases if lease.holder is not None]
        assert len(holders) == len(set(holders)), "an IPAddress holds two leases"
        for lease in leases:
            subnet = subnet_for(self.pool, lease.ip)
            assert subnet is not None, f"{lease.address} is outside the pool"
            assert lease.address == to_text(lease.ip)
            assert lease.network == str(subnet.network)
            assert ipaddress.IPv4Address(lease.address) in subnet.network

    @invariant()
    def records_match_their_leases(self) -> None:
        addresses = []
        for rec in self.store.all_ips():
            lease = self.store.lease_of(rec.key)
            if rec.phase == "Allocated":
                assert lease is not None, f"{rec.key} is Allocated without a lease"
                assert lease.address == rec.address
                addresses.append(rec.address)
                if rec.type == "Static":
                    assert rec.address == rec.static_ip
                else:
                    assert in_ranges(self.pool, lease.ip), "an Auto address outside the ranges"
            if rec.created_by == "plexus":
                assert rec.owner_pod_uid
        assert len(addresses) == len(set(addresses)), "two IPAddresses share an address"
        for lease in self.store.all_leases():
            if lease.holder is not None:
                assert self.store.get_ip(lease.holder) is not None, f"lease of {lease.address} held by nothing"


TestIpamSequences = IpamSequences.TestCase
TestIpamSequences.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])


def test_two_pods_asking_for_one_static_at_once_do_not_both_get_it() -> None:
    """Both pods' ADDs pass the check that the Static is unused before either claims it (two CNI calls, two
    attachments): the second claim finds it in use under the store's lock, and is refused."""
    src = world()
    src.add(static("s", "198.18.10.55"))
    ipam = Ipam(Store(":memory:"), src, Clock())
    sel = NetworkSelection(type="Network", name="net", if_name="net1", ip_address_names=("s",))
    p1, p2 = pod("p1"), pod("p2")
    net = ipam.resolve(sel, p1.meta.namespace, "w")
    o1, o2 = ipam.validate(p1, sel, net, "w"), ipam.validate(p2, sel, net, "w")
    ipam.claim(p1, sel, net, o1)
    with pytest.raises(AddressConflict, match="in use by pod"):
        ipam.claim(p2, sel, net, o2)
    rec = ipam.store.get_ip("IPAddress/ns/s")
    assert rec is not None and rec.used_by_uids == (p1.meta.uid,)

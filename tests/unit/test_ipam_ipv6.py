"""IPv6 and dual-stack pools: one address of each family per interface, IPv6 Statics and ``spec.ipFamily``, the
store's integers past 64 bits, and a /64 that costs no more than a /24 (nothing enumerates the space)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from typing import Any

import pytest

from cni.errors import AnnotationInvalid, InvalidConfig
from ipamd.ipam.addresses import Ipam, auto_ip_name
from ipamd.ipam.allocator import family_of, pick_free, to_int, to_text
from ipamd.ipam.blocks import uses_blocks, windows
from ipamd.model.npwg import parse_networks
from ipamd.model.objects import (
    IP_ADDRESS_POOL,
    NPWG_CLAIM_API_VERSION,
    AddressPool,
    ManifestInvalid,
    parse_address,
    parse_object,
    usable_bounds,
)
from ipamd.store.sqlite import Store
from tests.fakes.source import FakeSource
from tests.unit.test_ipam import NS, Clock, attach, gone, network, obj, pod, pool_obj, user_obj

V4, V6 = "198.18.90.0/24", "2001:2:0:90::/64"


def dual(name: str = "dual", ranges6: list[str] | None = None) -> Any:
    six: dict[str, Any] = {"network": V6, "routes": [{"destination": "2001:2:0:91::/64", "via": "2001:2:0:90::1"}]}
    if ranges6:
        six["ranges"] = ranges6
    return obj("IPAddressPool", name, {"leaseTTL": "1h", "pools": [
        {"network": V4, "ranges": ["198.18.90.10-198.18.90.19"]}, six]})


@pytest.fixture()
def source() -> FakeSource:
    return FakeSource(
        obj("NetworkClass", "cls", {"vlan": {"idPool": ["600-800"]}}, namespace=None),
        dual(), network("net", "dual"),
        obj("IPAddressPool", "six", {"pools": [{"network": "2001:2:0:92::/120"}]}), network("six-net", "six"),
        obj("IPAddressPool", "four", {"pools": [{"network": "198.18.93.0/24"}]}), network("four-net", "four"),
        obj("IPAddress", "v6-static", {"networkRef": {"kind": "Network", "name": "net"}, "type": "Static",
                                       "static": {"ip": "2001:2:0:90::abcd"}}),
        obj("IPAddress", "v6-auto", {"networkRef": {"kind": "Network", "name": "net"}, "ipFamily": "IPv6"}),
        obj("IPAddress", "v6-on-four", {"networkRef": {"kind": "Network", "name": "four-net"}, "ipFamily": "IPv6"}),
    )


@pytest.fixture()
def store(tmp_path: Any) -> Iterator[Store]:
    s = Store(str(tmp_path / "plexus.db"))  # a file: what is kept must survive a reopen
    yield s
    s.close()


@pytest.fixture()
def ipam(store: Store, source: FakeSource) -> Ipam:
    return Ipam(store, source, Clock())


def test_a_dual_stack_pool_gives_an_interface_one_address_of_each_family(ipam: Ipam, store: Store) -> None:
    p = pod("app")
    four, six = attach(ipam, p)
    assert ipaddress.ip_address(four.address).version == 4 and four.network == V4
    assert ipaddress.ip_address(six.address) in ipaddress.ip_network(V6) and six.network == V6
    assert six.address == "2001:2:0:90::2", "neither the all-zero host (subnet-router anycast) nor the gateway ::1"
    assert six.routes == ({"destination": "2001:2:0:91::/64", "via": "2001:2:0:90::1"},)
    assert four.ip_name == auto_ip_name(p, "net1") and six.ip_name == auto_ip_name(p, "net1", 6)
    assert [c.address for c in attach(ipam, p)] == [four.address, six.address], "a retry keeps both"
    second = attach(ipam, pod("other"))
    assert [c.address for c in second] == ["198.18.90.11", "2001:2:0:90::3"], "round robin per family"
    gone(ipam, p)
    assert {lease.address for lease in store.all_leases() if lease.holder is None} == {four.address, six.address}


def test_ipv6_leases_past_64_bits_survive_the_store_and_its_reopen(ipam: Ipam, store: Store, tmp_path: Any) -> None:
    _, six = attach(ipam, pod("app"))
    ip = to_int(six.address)
    assert ip > (1 << 63), "the case SQLite's integers cannot hold"
    lease = store.lease_at("IPAddressPool/ns/dual", ip)
    assert lease is not None and lease.address == six.address
    assert ip in store.taken_ips("IPAddressPool/ns/dual")
    store.close()
    again = Store(str(tmp_path / "plexus.db"))
    try:
        assert ip in again.taken_ips("IPAddressPool/ns/dual")
        assert again.cursor("IPAddressPool/ns/dual#IPv6") == ip
        assert again.cursor("IPAddressPool/ns/dual") == to_int("198.18.90.10")
        again.delete_lease("IPAddressPool/ns/dual", ip)
        assert again.lease_at("IPAddressPool/ns/dual", ip) is None
    finally:
        again.close()
        store.__init__(str(tmp_path / "plexus.db"))  # type: ignore[misc]  # the fixture closes it


def test_an_ipv6_only_pool_gives_one_ipv6_address(ipam: Ipam) -> None:
    (claim,) = attach(ipam, pod("app"), net="six-net")
    assert claim.address == "2001:2:0:92::1" and claim.network == "2001:2:0:92::/120"


def test_ipv6_statics_and_an_auto_address_that_asks_for_ipv6(ipam: Ipam, source: FakeSource) -> None:
    claims = attach(ipam, pod("app"), names=("v6-static", "v6-auto"))
    assert [c.address for c in claims] == ["2001:2:0:90::abcd", "2001:2:0:90::2"]
    with pytest.raises(InvalidConfig) as err:
        attach(ipam, pod("b"), net="four-net", names=("v6-on-four",))
    assert err.value.details == "spec.ipFamily" and "no IPv6 network" in str(err.value)


def test_a_64_is_leased_without_listing_its_addresses(ipam: Ipam, source: FakeSource) -> None:
    pool = source.get(IP_ADDRESS_POOL, NS, "dual")
    assert isinstance(pool, AddressPool)
    assert pool.size == 10 + (1 << 64) - 2
    assert pool.families == (4, 6)
    assert not uses_blocks(pool.family(6)) and windows(pool) == windows(pool.family(4)), "blocks are IPv4 only"
    six = pool.family(6)
    taken = {to_int("2001:2:0:90::1"), to_int("2001:2:0:90::2")}
    picked = pick_free(six, taken, cursor=None)
    assert picked is not None and to_text(picked[0]) == "2001:2:0:90::3"
    last = usable_bounds(ipaddress.ip_network(V6))[1]
    wrapped = pick_free(six, taken, cursor=last)
    assert wrapped is not None and to_text(wrapped[0]) == "2001:2:0:90::3", "wraps to the start"
    assert [c.address for c in attach(ipam, pod("x"))][1] == "2001:2:0:90::2"


def test_integers_name_one_address_whatever_the_family() -> None:
    for text in ("198.18.0.1", "255.255.255.255", "2001:2::1", "::1:0:0:1"):
        assert to_text(to_int(text)) == text
    assert (family_of(to_int("198.18.0.1")), family_of(to_int("2001:2::1"))) == (4, 6)


def test_ipv4_compatible_ipv6_text_is_not_taken_for_the_ipv4_address_of_its_integer(ipam: Ipam,
                                                                                     source: FakeSource) -> None:
    """``::c612:5`` has the integer of 198.18.0.5: taken as such, a request for it would lease the IPv4 address. It
    is refused wherever a user names an address, naming the field."""
    with pytest.raises(ValueError, match="IPv4-compatible"):
        parse_address("::c612:5")
    ref = {"kind": "Network", "name": "net"}
    with pytest.raises(ManifestInvalid) as err:
        obj("IPAddress", "s", {"networkRef": ref, "type": "Static", "static": {"ip": "::c612:5"}})
    assert err.value.field == "spec.static.ip" and "IPv4-compatible" in str(err.value)
    with pytest.raises(ManifestInvalid) as err:
        parse_object({"apiVersion": NPWG_CLAIM_API_VERSION, "kind": "IPAMClaim", "metadata": {"name": "c", "namespace": NS},
                      "spec": {"network": "n", "ipRequests": ["::c612:5/120"]}})
    assert err.value.field == "spec.ipRequests[0]"
    with pytest.raises(AnnotationInvalid) as ann:
        parse_networks(json.dumps([{"name": "nad", "ips": ["::c612:5"]}]), NS)
    assert "IPv4-compatible" in ann.value.msg
    pool = source.get(IP_ADDRESS_POOL, NS, "dual")
    assert isinstance(pool, AddressPool)
    with pytest.raises(InvalidConfig) as cfg:
        ipam.allocate_for("client", pool, "::c612:a")  # 198.18.0.10 is in the pool's IPv4 range
    assert cfg.value.details == "address"


@pytest.mark.parametrize(("item", "field"), [
    ({"network": "::c612:0/120"}, "spec.pools[0].network"),
    ({"network": V6, "ranges": ["2001:2:0:91::1-2001:2:0:91::9"]}, "spec.pools[0].ranges[0]"),
    ({"network": V6, "routes": [{"destination": "198.19.0.0/16", "via": "2001:2:0:90::1"}]},
     "spec.pools[0].routes[0].destination"),
    ({"network": V6, "routes": [{"destination": "2001:2:1::/48", "via": "198.18.90.1"}]}, "spec.pools[0].routes[0].via"),
])
def test_ipv6_pools_are_checked_like_ipv4_ones(item: dict[str, Any], field: str) -> None:
    with pytest.raises(ManifestInvalid) as err:
        obj("IPAddressPool", "bad", {"pools": [item]})
    assert err.value.field == field, err.value


def test_ip_family_must_be_a_family_and_match_the_static_address() -> None:
    ref = {"kind": "Network", "name": "net"}
    with pytest.raises(ManifestInvalid) as err:
        obj("IPAddress", "a", {"networkRef": ref, "ipFamily": "IPv5"})
    assert err.value.field == "spec.ipFamily"
    with pytest.raises(ManifestInvalid) as err:
        obj("IPAddress", "b", {"networkRef": ref, "type": "Static", "static": {"ip": "198.18.0.1"}, "ipFamily": "IPv6"})
    assert err.value.field == "spec.ipFamily"


# -- named addresses' order, and a pool gaining or losing a family --------------------------------------------------

def test_named_addresses_of_a_dual_stack_interface_list_ipv4_first(ipam: Ipam, source: FakeSource) -> None:
    """README: IPv4 first in the CNI result and the statuses, whatever the order of ``ipAddressNames``."""
    source.add(obj("IPAddress", "b-four", {"networkRef": {"kind": "Network", "name": "net"}, "type": "Static",
                                          "static": {"ip": "198.18.90.15"}}))
    claims = attach(ipam, pod("app"), names=("v6-static", "b-four"))
    assert [c.address for c in claims] == ["198.18.90.15", "2001:2:0:90::abcd"]


SIX = {"network": "2001:2:0:95::/64", "routes": [{"destination": "2001:2:0:96::/64", "via": "2001:2:0:95::1"}]}
FOUR = {"network": "198.18.95.0/24"}


def _pool(*items: dict[str, Any]) -> Any:
    return obj("IPAddressPool", "p", {"leaseTTL": "1h", "pools": list(items)})


def _edited(*items: dict[str, Any]) -> tuple[FakeSource, Ipam, Store]:
    """A network on pool ``p`` of ``items``, whose families the test then changes."""
    source = FakeSource(obj("NetworkClass", "cls", {"vlan": {"idPool": ["600-800"]}}, namespace=None),
                        _pool(*items), network("net", "p"), obj("IPAddress", "ua", {"networkRef": {"kind": "Network",
                                                                                                   "name": "net"}}))
    store = Store(":memory:")
    return source, Ipam(store, source, Clock()), store


def _key(p: Any, family: int = 0) -> str:
    return f"IPAddress/{NS}/{auto_ip_name(p, 'net1', family)}"


def _holders(store: Store) -> dict[str, str | None]:
    return {lease.address: lease.holder for lease in store.all_leases()}


def test_an_ipv6_pool_made_dual_stack_gives_a_pods_next_sandbox_one_address_of_each_family() -> None:
    """The plain-named Auto IPAddress (no ipFamily) holds the IPv6 address of an IPv6-only pool; IPv4 added to the
    pool, it keeps it (its family is the one it holds, as the webhook resolves it), with its routes, and the IPv4
    address goes to a record named after its family: one address of each, no address held twice, none flagged."""
    source, ipam, store = _edited(SIX)
    try:
        p = pod("app")
        (first,) = attach(ipam, p)
        source.add(_pool(FOUR, SIX))
        four, six = attach(ipam, p)  # the pod's next sandbox (or a retried ADD)
        assert (six.ip_key, six.address, six.routes) == (_key(p), first.address, first.routes)
        assert four.ip_key == _key(p, 4) and four.address.startswith("198.18.95.")
        assert store.get_ip(_key(p, 6)) is None, "no second IPv6 record"
        assert _holders(store) == {first.address: _key(p), four.address: _key(p, 4)}
        assert not any(lease.outside_ranges for lease in store.all_leases())
        assert [c.address for c in attach(ipam, p)] == [four.address, six.address], "a retry keeps both"
        gone(ipam, p)
        assert all(lease.state == "orphaned" for lease in store.all_leases())
    finally:
        store.close()


def test_a_dual_stack_pool_made_ipv6_only_keeps_the_pods_ipv6_address_on_its_next_sandbox() -> None:
    """IPv4 removed from the pool: the next sandbox gets the ``-v6`` record's address, not a new one for the plain
    record; the plain one (IPv4) is kept while the old sandbox uses it, and let go with that sandbox's DEL."""
    source, ipam, store = _edited(FOUR, SIX)
    try:
        p = pod("app")
        four, six = attach(ipam, p)
        source.add(_pool(SIX))
        (again,) = attach(ipam, p)  # the old sandbox still up
        assert (again.ip_key, again.address) == (six.ip_key, six.address)
        assert _holders(store) == {four.address: four.ip_key, six.address: six.ip_key}
        ipam.release_pod([four.ip_key, six.ip_key], p.meta.uid, shared={six.ip_key})  # the old sandbox's late DEL
        assert store.get_ip(four.ip_key) is None
        assert _holders(store) == {four.address: None, six.address: six.ip_key}, "the IPv4 address quarantined"
        assert [c.address for c in attach(ipam, p)] == [six.address]
    finally:
        store.close()


def test_a_dual_stack_pool_made_ipv6_only_quarantines_the_unused_ipv4_address_at_the_next_add() -> None:
    source, ipam, store = _edited(FOUR, SIX)
    try:
        p = pod("app")
        four, six = attach(ipam, p)
        ipam.release_pod([four.ip_key, six.ip_key], p.meta.uid)  # the sandbox gone, then the pool edited
        source.add(_pool(SIX))
        (again,) = attach(ipam, p)
        assert again.address == six.address and store.get_ip(four.ip_key) is None
        assert _holders(store) == {four.address: None, six.address: six.ip_key}
        source.add(_pool(FOUR, SIX))  # IPv4 back: a fresh address of it, under the plain name again
        back = attach(ipam, p)
        assert [c.ip_key for c in back] == [_key(p), six.ip_key] and back[1].address == six.address
        assert back[0].address.startswith("198.18.95.") and back[0].address != four.address
    finally:
        store.close()


def test_an_ipv4_pool_made_ipv6_only_gives_the_pods_next_sandbox_an_ipv6_address() -> None:
    source, ipam, store = _edited(FOUR)
    try:
        p = pod("app")
        (four,) = attach(ipam, p)
        source.add(_pool(SIX))
        (six,) = attach(ipam, p)  # the old sandbox still up: its IPv4 record kept aside
        assert six.ip_key == _key(p, 6) and ":" in six.address and six.routes == tuple(SIX["routes"])
        assert _holders(store) == {four.address: four.ip_key, six.address: six.ip_key}
        ipam.release_pod([four.ip_key], p.meta.uid, shared={six.ip_key})
        assert _holders(store) == {four.address: None, six.address: six.ip_key}
    finally:
        store.close()


def test_a_users_auto_address_keeps_its_family_when_the_pool_gains_the_other() -> None:
    """A user's Auto IPAddress naming no family holds IPv6 of an IPv6-only pool; the pool made dual-stack, it keeps
    its address with its routes, not flagged outside the ranges."""
    source, ipam, store = _edited(SIX)
    try:
        (c,) = attach(ipam, pod("a"), names=("ua",))
        source.add(_pool(FOUR, SIX))
        rec, lease = ipam.lease_alone(ipam.record_for(user_obj(source, "ua")), pool_obj(source, "p"))
        assert (rec.address, rec.routes, lease.outside_ranges) == (c.address, c.routes, False)
        assert [x.address for x in attach(ipam, pod("a"), names=("ua",))] == [c.address]
    finally:
        store.close()


def test_a_users_auto_address_of_a_dropped_family_is_kept_while_used_then_leased_anew() -> None:
    source, ipam, store = _edited(FOUR, SIX)
    try:
        a = pod("a")
        (c,) = attach(ipam, a, names=("ua",))
        assert c.address.startswith("198.18.95.")
        source.add(_pool(SIX))
        rec, _ = ipam.lease_alone(ipam.record_for(user_obj(source, "ua")), pool_obj(source, "p"))
        assert rec.address == c.address, "kept while its pod uses it"
        gone(ipam, a)
        rec, lease = ipam.lease_alone(ipam.record_for(user_obj(source, "ua")), pool_obj(source, "p"))
        assert ":" in rec.address and lease.holder == rec.key
        assert _holders(store)[c.address] is None, "the IPv4 address quarantined"
    finally:
        store.close()


@pytest.mark.parametrize("by", ["del", "add"])
def test_a_pods_auto_ipaddress_let_go_for_a_dropped_family_leaves_no_allocated_object_behind(by: str) -> None:
    """Kubernetes mode: the node makes an IPAddress object for each Auto record of a pod (``auto_ip_body``, owned by
    the pod). Pool ``pool-a`` made IPv6-only: the pod's next sandbox takes the ``-v6`` record, and the old sandbox's
    DEL lets the plain (IPv4) record go while the pod lives (``_family_dropped``: deleted, its address quarantined;
    or, the old sandbox gone before the pool was edited, the next sandbox's ADD does: ``_let_go_unused``).
    Nothing told the API: the object stayed, ``Allocated`` with the quarantined address (and later another pod's),
    its pod written on it, until the pod is deleted. Its delete is owed in the DEL's commit now."""
    from kubernetes import client

    from ipamd.kube.publisher import KubePublisher
    from ipamd.verbs.attacher import Attacher
    from tests.fakes.cluster import FakeApi
    from tests.fakes.publisher import RecordingPublisher
    from tests.unit.test_attacher import NS as ANS
    from tests.unit.test_attacher import obj as aobj
    from tests.unit.test_attacher import world as aworld
    from tests.unit.test_attacher_kube import KubeNode

    api = FakeApi()
    node = KubeNode(api, source=aworld())  # its registry and publisher owe into one outbox, as the daemon wires them
    node.outbox.senders["event"] = lambda body: None
    kube = KubePublisher(client.ApiClient(), "n1", node.outbox)

    class Hybrid(RecordingPublisher):  # the pod's own statuses recorded; the IPAddress objects as the node writes them
        def attached(self, pod: Any, status: Any, created: Any, used: Any) -> None:
            kube.attached(pod, status, created, used)

        def detached(self, namespace: str, name: str, uid: str, used: Any) -> None:
            kube.detached(namespace, name, uid, used)

        def ip_status(self, rec: Any) -> None:
            kube.ip_status(rec)

    node.publisher = Hybrid()
    node.attacher = Attacher(node.store, node.source, node.ipam, node.attacher.segments, node.drivers,
                             lambda: object(), node.netns.open, node.publisher, lambda: True)
    v4, v6 = {"network": "198.18.40.0/24"}, {"network": "2001:2:0:40::/64"}
    node.source.add(aobj("IPAddressPool", "pool-a", {"pools": [v4, v6], "leaseTTL": "1h"}))
    node.call("ADD", "app", "uid-app", "c1")
    plain = [r for r in node.store.all_ips() if r.network_name == "net-a" and r.family == 0]
    assert len(plain) == 1 and plain[0].address.startswith("198.18.40.")
    key, address = plain[0].key, plain[0].address
    node.outbox.flush()
    name = key.rpartition("/")[2]
    assert (api.objs["IPAddress"][name].get("status") or {}).get("address") == address, "made, as the ADD owed it"
    if by == "add":
        node.call("DEL", "app", "uid-app", "c1")
    node.source.add(aobj("IPAddressPool", "pool-a", {"pools": [v6], "leaseTTL": "1h"}))
    node.call("ADD", "app", "uid-app", "c2")  # the pod's next sandbox (c1 still up, unless ``by`` ADD)
    if by == "del":
        node.call("DEL", "app", "uid-app", "c1")
    assert node.store.get_ip(key) is None, "the plain record let go with its last sandbox"
    assert [lease.holder for lease in node.store.all_leases() if lease.address == address] == [None], "quarantined"
    node.outbox.flush()
    left = api.objs["IPAddress"].get(name) or api.objs["IPAddress"].get(f"{ANS}/{name}")
    assert left is None or (left.get("status") or {}).get("address") != address, \
        f"the pod's Auto IPAddress {name} stays in the API as {left.get('status') if left else None}, its address " \
        f"{address} quarantined by the node"
    six = [r for r in node.store.all_ips() if r.network_name == "net-a"]
    assert [r.family for r in six] == [6] and six[0].name in api.objs["IPAddress"], "the -v6 one stays"


def test_a_users_auto_ipaddress_naming_a_family_its_pool_dropped_does_not_stay_allocated() -> None:
    """``spec.ipFamily: IPv6`` on a dual-stack pool; the pool's IPv6 entry drained (the webhook allows it, with a
    warning). No pod uses it. A Static of that family is recorded Pending (``IPAddressOutsidePool``) and its lease
    quarantined (``_static_pending``); this Auto one: ``family_view`` raises in ``securing`` every round, nothing
    records it, and the store and its status keep saying Allocated with an address of no network of the pool."""
    from cni.errors import InvalidConfig
    from ipamd.ipam.addresses import Ipam
    from ipamd.model.objects import IP_ADDRESS, IP_ADDRESS_POOL
    from ipamd.store.sqlite import Store
    from tests.fakes.source import FakeSource
    from tests.unit.test_ipam import NS, Clock, network, obj

    four, six = {"network": "198.18.95.0/24"}, {"network": "2001:2:0:95::/64"}
    ref = {"networkRef": {"kind": "Network", "name": "net"}}
    source = FakeSource(obj("NetworkClass", "cls", {"vlan": {"idPool": ["600-800"]}}, namespace=None),
                        obj("IPAddressPool", "p", {"leaseTTL": "1h", "pools": [four, six]}), network("net", "p"),
                        obj("IPAddress", "u6", {**ref, "ipFamily": "IPv6"}),
                        obj("IPAddress", "s6", {**ref, "type": "Static", "static": {"ip": "2001:2:0:95::9"}}))
    store = Store(":memory:")
    ipam = Ipam(store, source, Clock())

    def lease(name: str) -> None:
        user, pool = source.get(IP_ADDRESS, NS, name), source.get(IP_ADDRESS_POOL, NS, "p")
        ipam.lease_alone(ipam.record_for(user), pool)  # type: ignore[arg-type]

    lease("u6")
    lease("s6")
    source.add(obj("IPAddressPool", "p", {"leaseTTL": "1h", "pools": [four]}))
    for name in ("s6", "u6"):
        with pytest.raises(InvalidConfig):
            lease(name)
    s6, u6 = store.get_ip(f"IPAddress/{NS}/s6"), store.get_ip(f"IPAddress/{NS}/u6")
    assert s6 is not None and (s6.phase, s6.address) == ("Pending", "") and store.lease_of(s6.key) is None
    assert u6 is not None
    assert (u6.phase, store.lease_of(u6.key)) == ("Pending", None), \
        f"u6 stays {u6.phase} with {u6.address}, leased: {store.lease_of(u6.key)}"


def test_a_users_auto_ipaddress_naming_a_dropped_family_is_kept_quietly_while_used_then_pending() -> None:
    """``spec.ipFamily: IPv6`` used by a pod, its pool's IPv6 entry removed: kept while the pod uses it, as an address
    of a dropped family is (no refusal either, which the round logged as a warning every round); once the pod goes,
    ``Pending`` saying why, its address quarantined."""
    source, ipam, store = _edited(FOUR, SIX)
    try:
        source.add(obj("IPAddress", "u6", {"networkRef": {"kind": "Network", "name": "net"}, "ipFamily": "IPv6"}))
        a = pod("a")
        (c,) = attach(ipam, a, names=("u6",))
        assert ":" in c.address
        source.add(_pool(FOUR))
        rec, lease = ipam.lease_alone(ipam.record_for(user_obj(source, "u6")), pool_obj(source, "p"))
        assert (rec.phase, rec.address, lease.holder) == ("Allocated", c.address, rec.key), "kept while used"
        gone(ipam, a)
        with pytest.raises(InvalidConfig):
            ipam.lease_alone(ipam.record_for(user_obj(source, "u6")), pool_obj(source, "p"))
        now = store.get_ip(rec.key)
        assert now is not None and (now.phase, now.address, store.lease_of(rec.key)) == ("Pending", "", None)
        cond = next(x for x in now.conditions if x["type"] == "Allocated")
        assert (cond["status"], cond["reason"]) == ("False", "IPAddressOutsidePool") and "IPv6" in cond["message"]
        assert _holders(store) == {c.address: None}, "its address quarantined"
    finally:
        store.close()

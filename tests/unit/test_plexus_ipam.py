"""plexus-ipam's verbs in-process over the in-memory store: addresses from pools and inline ranges, unique,
released to quarantine by DEL and GC, the ``ips`` capability, IPAMClaims, and every refusal leaving
nothing leased."""

from __future__ import annotations

import ipaddress
import json
import threading
from typing import Any

import pytest

from cni.errors import CniError, InvalidConfig
from ipamd.ipam.addresses import Ipam
from ipamd.ipam.delegated import DelegatedAddresses
from ipamd.model.npwg import NETWORKS_ANNOTATION
from ipamd.model.objects import (
    API_VERSION,
    CLUSTER_IP_ADDRESS_POOL,
    NPWG_CLAIM_API_VERSION,
    Pod,
    parse_object,
    unserved_entries,
)
from ipamd.node.reconcile import Reconciler
from ipamd.sources.base import Problem
from ipamd.verbs.call import CniCall
from ipamd.verbs.ipam_hints import HintingExec, PlexusHints, Told
from ipamd.verbs.ipam_plugin import IpamPlugin
from tests.fakes.publisher import RecordingPublisher
from tests.fakes.source import FakeSource
from tests.fakes.store import MemoryStore

NS = "apps"
NOW = 1_700_000_000.0


def obj(kind: str, name: str, spec: dict[str, Any], ns: str = NS, api: str = API_VERSION, **md: Any) -> Any:
    metadata = {"name": name, **({"namespace": ns} if ns else {}), **md}
    return parse_object({"apiVersion": api, "kind": kind, "metadata": metadata, "spec": spec})


def pod(name: str = "app", uid: str = "uid-app", networks: Any = None) -> Pod:
    annotations = {NETWORKS_ANNOTATION: json.dumps(networks)} if networks is not None else {}
    p = parse_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "uid": uid,
                                                                       "annotations": annotations}, "spec": {}})
    assert isinstance(p, Pod)
    return p


def claim(name: str, network: str = "nad-a", **spec: Any) -> Any:
    return obj("IPAMClaim", name, {"network": network, "interface": "net1", **spec}, api=NPWG_CLAIM_API_VERSION,
               uid=f"uid-{name}")


def nad(name: str, config: dict[str, Any] | None = None) -> Any:
    return obj("NetworkAttachmentDefinition", name, {"config": json.dumps(config)} if config else {},
               api="k8s.cni.cncf.io/v1")


class Node:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.source = FakeSource(
            obj("IPAddressPool", "mine", {"pools": [{"network": "198.18.50.0/29"}], "leaseTTL": "1h"}),
            obj("IPAddressPool", "theirs", {"pools": [{"network": "198.18.51.0/29"}]}, ns="other"),
            obj("ClusterIPAddressPool", "shared", {"pools": [{"network": "198.18.52.0/24",
                                                             "routes": [{"destination": "198.18.60.0/24",
                                                                         "via": "198.18.52.1"}]}]}, ns=""),
            pod(),
        )
        self.clock = NOW
        self.ipam = Ipam(self.store, self.source, lambda: self.clock)
        self.publisher = RecordingPublisher()
        self.plugin = IpamPlugin(DelegatedAddresses(self.ipam, self.source, lambda: self.clock), self.source,
                                 lambda: True, self.publisher)

    def call(self, verb: str, ipam: dict[str, Any], container: str = "c1", ifname: str = "net1",
             network: str = "nad-a", pod_name: str = "app", uid: str = "uid-app", **extra: Any) -> dict[str, Any]:
        args = {"K8S_POD_NAMESPACE": NS, "K8S_POD_NAME": pod_name, "K8S_POD_UID": uid} if pod_name else {}
        conf = {"cniVersion": "1.0.0", "name": network, "type": "macvlan", "ipam": {"type": "plexus-ipam", **ipam},
                **extra}
        return self.plugin.handle(CniCall(verb, container, "/run/netns/x", ifname, args, conf))

    def error(self, verb: str, ipam: dict[str, Any], **kw: Any) -> CniError:
        before = (self.store.all_leases(), self.store.all_ips())
        with pytest.raises(CniError) as exc:
            self.call(verb, ipam, **kw)
        assert (self.store.all_leases(), self.store.all_ips()) == before, "a refusal leaves nothing behind"
        return exc.value

    def addresses(self) -> dict[str, str | None]:
        return {lease.address: lease.holder for lease in self.store.all_leases()}


POOL = {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "mine"}}
SHARED = {"ipAddressPoolRef": {"kind": "ClusterIPAddressPool", "name": "shared"}}
RANGE = {"range": "198.18.53.0/24", "gateway": "198.18.53.1", "routes": [{"dst": "198.18.61.0/24"}]}


def test_add_gives_an_address_with_routes_and_the_same_one_again_for_a_retry() -> None:
    node = Node()
    result = node.call("ADD", SHARED)
    assert result["ips"] == [{"address": "198.18.52.2/24"}] and "interfaces" not in result
    assert result["routes"] == [{"dst": "198.18.60.0/24", "gw": "198.18.52.1"}]
    assert node.call("ADD", SHARED) == result, "the same attachment keeps its address"
    assert node.call("ADD", SHARED, container="c2")["ips"][0]["address"] == "198.18.52.3/24"
    (rec, _) = sorted(node.store.all_ips(), key=lambda r: r.key)
    assert (rec.kind, rec.network_name, rec.interface, rec.used_by_pods) == ("CNI", "nad-a", "net1", (f"{NS}/app",))


def test_an_inline_range_gets_an_implicit_pool_and_the_config_gateway_and_routes() -> None:
    node = Node()
    result = node.call("ADD", RANGE, cniVersion="0.3.1")
    assert result["ips"] == [{"version": "4", "address": "198.18.53.2/24", "gateway": "198.18.53.1"}]
    assert result["routes"] == [{"dst": "198.18.61.0/24", "gw": "198.18.53.1"}]
    (pool,) = node.store.implicit_pools()
    assert (pool.owner, pool.pool, pool.network) == ("nad-a", "ImplicitPool/unnamed", "198.18.53.0/24")
    other = node.call("ADD", {**RANGE, "range": "198.18.53.0/25"}, network="nad-b")
    assert other["ips"][0]["address"] == "198.18.53.3/25", "the same space never hands out an address twice"
    assert len(node.store.implicit_pools()) == 2, "one implicit pool per configuration and range"
    apart = node.call("ADD", {**RANGE, "network_name": "apart"}, network="nad-c")
    assert apart["ips"][0]["address"] == "198.18.53.2/24", "another network_name is another space"


def test_del_quarantines_for_the_pools_ttl_and_is_idempotent() -> None:
    node = Node()
    node.call("ADD", POOL)
    node.call("DEL", POOL)
    (lease,) = node.store.all_leases()
    assert lease.state == "orphaned" and lease.ttl == 3600
    assert node.store.all_ips() == []
    node.call("DEL", POOL)
    node.call("DEL", POOL, container="never-added")
    assert node.call("ADD", POOL, container="c2")["ips"][0]["address"] == "198.18.50.2/29", "not the quarantined .1"


def test_gc_releases_the_leases_of_attachments_no_longer_valid_and_only_of_its_network() -> None:
    node = Node()
    for c in ("keep", "gone-1", "gone-2"):
        node.call("ADD", SHARED, container=c)
    node.call("ADD", SHARED, container="other-net", network="nad-b")
    valid: dict[str, Any] = {"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "net1"}]}
    node.call("GC", SHARED, **valid)
    states = sorted(lease.state for lease in node.store.all_leases())
    assert states == ["bound", "bound", "orphaned", "orphaned"], "released to quarantine, not freed"
    assert {r.key for r in node.store.all_ips()} == {"CNI/nad-a/keep/net1", "CNI/nad-b/other-net/net1"}


def test_an_ipv6_range_hands_out_ipv6_addresses_in_every_result_version() -> None:
    node = Node()
    six = {"range": "2001:2:0:53::/64", "gateway": "2001:2:0:53::1", "routes": [{"dst": "2001:2:0:61::/64"}]}
    result = node.call("ADD", six, cniVersion="0.3.1")
    assert result["ips"] == [{"version": "6", "address": "2001:2:0:53::2/64", "gateway": "2001:2:0:53::1"}]
    assert result["routes"] == [{"dst": "2001:2:0:61::/64", "gw": "2001:2:0:53::1"}]
    assert node.call("ADD", six, container="c2")["ips"][0]["address"] == "2001:2:0:53::3/64"
    asked = node.call("ADD", six, container="c3", runtimeConfig={"ips": ["2001:2:0:53::99/64"]})
    assert asked["ips"][0]["address"] == "2001:2:0:53::99/64"
    assert node.call("DEL", six, container="c2") == {}
    assert "2001:2:0:53::3" not in {a for a, h in node.addresses().items() if h}


def test_add_before_the_source_has_read_its_pools_answers_try_again() -> None:
    node = Node()
    node.source.synced = False
    err = node.error("ADD", SHARED)
    assert err.code == 11 and err.details == "object source", err
    node.source.synced = True
    assert node.call("ADD", SHARED)["ips"]


def test_before_the_daemon_is_ready_only_the_recoverys_own_dels_are_served() -> None:
    """The IPAM socket is served before the daemon's recovery, whose undoing of a killed ADD runs delegates' DEL
    (their plexus-ipam calls here): those, of the containers being recovered, are served. Everything else waits (11,
    nothing leased or let go): ADD, CHECK and GC for what the recovery leaves, another caller's DEL because it would
    race the recovery's republish of the statuses it read before (an IPAMClaim's ``ownerPod`` written back)."""
    node = Node()
    node.call("ADD", SHARED)
    node.call("ADD", SHARED, container="c2")
    node.plugin.ready = lambda: False
    node.plugin.recovering = {"c1"}.__contains__
    for verb, container in (("ADD", "c3"), ("CHECK", "c2"), ("GC", "c2"), ("DEL", "c2")):
        err = node.error(verb, SHARED, container=container)
        assert (err.code, err.details) == (11, "ready"), (verb, err)
    assert node.call("DEL", SHARED) == {}
    assert sorted(node.addresses().values(), key=str) == ["CNI/nad-a/c2/net1", None], "c1's let go, c2's kept"


def test_check_knows_its_lease() -> None:
    node = Node()
    result = node.call("ADD", SHARED)
    assert node.call("CHECK", SHARED, prevResult=result) == {}
    with pytest.raises(CniError) as exc:
        node.call("CHECK", SHARED, prevResult={**result, "ips": [{"address": "198.18.52.99/24"}]})
    assert exc.value.details == "prevResult.ips"
    node.call("DEL", SHARED)
    with pytest.raises(CniError) as exc:
        node.call("CHECK", SHARED)
    assert exc.value.code == 3


def test_plexus_ipam_check_compares_addresses_not_their_spelling() -> None:
    """CHECK compared the prevResult's address text with the lease's: the same IPv6 address exploded, or an
    IPv4-mapped one as Go prints it (dotted: ``::ffff:198.18.54.2``, or plain ``198.18.54.2/24`` as net.IPNet does)
    where Python prints hex (``::ffff:c612:3602``), failed "prevResult does not carry the leased address"."""
    node = Node()
    six = {"range": "2001:2:0:53::/64"}
    result = node.call("ADD", six)
    (ip,) = result["ips"]
    exploded = ipaddress.ip_interface(ip["address"]).exploded
    assert exploded != ip["address"]
    assert node.call("CHECK", six, prevResult={**result, "ips": [{**ip, "address": exploded}]}) == {}
    mapped = {"range": "::ffff:198.18.54.0/120"}
    result = node.call("ADD", mapped, container="c2")
    (ip,) = result["ips"]
    assert ip["address"] == "::ffff:c612:3601/120"
    for go in ("::ffff:198.18.54.1/120", "198.18.54.1/24"):
        assert node.call("CHECK", mapped, container="c2", prevResult={**result, "ips": [{"address": go}]}) == {}, go
    with pytest.raises(CniError) as exc:  # another address is still another
        node.call("CHECK", mapped, container="c2", prevResult={**result, "ips": [{"address": "198.18.54.9/24"}]})
    assert exc.value.details == "prevResult.ips"


def test_a_link_local_gateway_is_the_results_gateway_and_its_routes_go_via_it() -> None:
    """An IPv6 router known by its link-local address (Whereabouts takes any ``gateway``): a range's, or a pool
    configuration's (``_refuse_gateways``: of the pool's family, in none of its ranges); ADD and CHECK pass."""
    node = Node()
    node.source.add(obj("IPAddressPool", "six", {"pools": [{"network": "2001:2:0:72::/64"}]}))
    for ipam in ({"range": "2001:2:0:71::/64"}, {"ipAddressPoolRef": {"name": "six"}}):
        conf = {**ipam, "gateway": "fe80::1", "routes": [{"dst": "::/0"}, {"dst": "2001:2:0:99::/64", "gw": "fe80::2"}]}
        result = node.call("ADD", conf)
        assert result["ips"][0]["gateway"] == "fe80::1", result
        assert result["routes"] == [{"dst": "::/0", "gw": "fe80::1"}, {"dst": "2001:2:0:99::/64", "gw": "fe80::2"}]
        assert node.call("CHECK", conf, prevResult=result) == {}
        node.call("DEL", conf)


def test_the_ips_capability_through_the_pool() -> None:
    node = Node()
    got = node.call("ADD", SHARED, runtimeConfig={"ips": ["198.18.52.77/24"]})
    assert got["ips"][0]["address"] == "198.18.52.77/24"
    err = node.error("ADD", SHARED, container="c2", runtimeConfig={"ips": ["198.18.52.77"]})
    assert (err.code, err.details) == (104, "runtimeConfig.ips")
    assert f"pod {NS}/app (net1 on nad-a)" in err.msg, "the holder is named"
    err = node.error("ADD", SHARED, container="c3", runtimeConfig={"ips": ["198.18.99.1"]})
    assert (err.code, err.details) == (7, "runtimeConfig.ips") and "outside pool" in err.msg
    err = node.error("ADD", SHARED, container="c4", runtimeConfig={"ips": ["198.18.52.78/16"]})
    assert err.details == "runtimeConfig.ips"
    err = node.error("ADD", SHARED, container="c5", runtimeConfig={"ips": ["198.18.52.79", "198.18.52.80"]})
    assert err.details == "runtimeConfig.ips"
    node.source.add(obj("IPAddressPool", "six", {"pools": [{"network": "2001:2:0:72::/64"}]}))
    err = node.error("ADD", {"ipAddressPoolRef": {"name": "six"}}, container="c6",
                     runtimeConfig={"ips": ["2001:2:0:72::5%eth0/64"]})  # Multus's net.ParseIP refuses a zone
    assert (err.code, err.details) == (7, "runtimeConfig.ips") and "zone" in err.msg, err.msg


@pytest.mark.parametrize(("ipam", "kw", "code", "field"), [
    ({"ipAddressPoolRef": {"name": "missing"}}, {}, 103, "ipam.ipAddressPoolRef.name"),
    ({"ipAddressPoolRef": {"name": "theirs"}}, {}, 103, "ipam.ipAddressPoolRef.name"),  # another namespace's
    ({"ipAddressPoolRef": {"name": "theirs", "namespace": "other"}}, {}, 103, "ipam.ipAddressPoolRef.namespace"),
    ({"ipAddressPoolRef": {"name": "mine"}}, {"pod_name": ""}, 7, "ipam.ipAddressPoolRef.kind"),  # no pod: no ns
    ({"range": "198.18.53.0/24", "exclude": ["198.18.54.0/28"]}, {}, 7, "ipam.exclude[0]"),
    ({"range": "198.18.300.0/24"}, {}, 7, "ipam.range"),
    ({"range": "fe80::/64"}, {}, 7, "ipam.range"),  # link-local: CHECK would never see its addresses
    ({"range": "198.18.53.0/24", "etcd_host": "x"}, {}, 7, "ipam.etcd_host"),
    ({"range": "198.18.53.0/24", "routes": [{"dst": "2001:db8:99::/64", "gw": "198.18.53.1"}]}, {}, 7,
     "ipam.routes[0].gw"),  # a route via a gateway of the other family
])
def test_bad_input_is_refused_naming_the_field(ipam: dict[str, Any], kw: dict[str, Any], code: int,
                                               field: str) -> None:
    err = Node().error("ADD", ipam, **kw)
    assert (err.code, err.details) == (code, field), err.msg


def test_a_range_that_refuses_sharing_cannot_overlap_another_configurations() -> None:
    node = Node()
    node.call("ADD", RANGE)
    err = node.error("ADD", {**RANGE, "range": "198.18.53.0/25", "enable_overlapping_ranges": False},
                     network="nad-b")
    assert (err.code, err.details) == (7, "ipam.range") and "nad-a" in err.msg
    assert len(node.store.implicit_pools()) == 1


def test_an_exhausted_pool_under_concurrent_adds_gives_exactly_its_free_addresses() -> None:
    node = Node()  # pool "mine" is a /29: six addresses
    results: list[str] = []
    errors: list[int] = []

    def add(i: int) -> None:
        try:
            results.append(node.call("ADD", POOL, container=f"c{i}")["ips"][0]["address"])
        except CniError as exc:
            errors.append(exc.code)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and len(set(results)) == 6
    assert errors == [100] * 14
    assert len(node.store.all_leases()) == 6


def claimed_pod(name: str, uid: str, claim_name: str = "db-0", **element: Any) -> Pod:
    return pod(name, uid, [{"name": "nad-a", "interface": "net1", "ipam-claim-reference": claim_name, **element}])


def test_an_ipamclaims_address_follows_the_claim_not_the_pod() -> None:
    node = Node()
    node.source.add(claim("db-0"))
    node.source.add(claimed_pod("db-0", "uid-1"))
    first = node.call("ADD", SHARED, pod_name="db-0", uid="uid-1")["ips"][0]["address"]
    (rec,) = node.store.all_ips()
    assert (rec.key, rec.used_by_pods) == ("IPAMClaim/apps/db-0", (f"{NS}/db-0",))
    written = node.publisher.ip_statuses[-1]
    assert (written.kind, written.address, written.used_by_pods) == ("IPAMClaim", first.split("/")[0], (f"{NS}/db-0",))
    node.call("DEL", SHARED, pod_name="db-0", uid="uid-1")
    assert node.publisher.ip_statuses[-1].used_by_pods == (), "ownerPod cleared"
    (lease,) = node.store.all_leases()
    assert lease.state == "bound" and lease.holder == "IPAMClaim/apps/db-0", "kept while the claim exists"
    node.source.remove("Pod", NS, "db-0")
    node.source.add(claimed_pod("db-0", "uid-2"))  # the StatefulSet's pod again, a new UID
    again = node.call("ADD", SHARED, container="c2", pod_name="db-0", uid="uid-2")["ips"][0]["address"]
    assert again == first
    node.call("DEL", SHARED, container="c2", pod_name="db-0", uid="uid-2")
    node.source.remove("IPAMClaim", NS, "db-0")
    from ipamd.node.segments import Segments
    from tests.fakes.links import FakeNodeLinks

    segments = Segments(node.store, FakeNodeLinks(), lambda: 0.0)  # (no network: none is made)
    Reconciler(node.store, node.source, node.ipam, None, segments, node.publisher).run_once()  # type: ignore[arg-type]
    (lease,) = node.store.all_leases()
    assert lease.state == "orphaned", "released when the claim is deleted, then quarantined"


def test_a_claim_asking_for_an_address_gets_it() -> None:
    node = Node()
    node.source.add(claim("db-0", ipRequests=["198.18.52.200/24"]))
    node.source.add(claimed_pod("db-0", "uid-1"))
    assert node.call("ADD", SHARED, pod_name="db-0", uid="uid-1")["ips"][0]["address"] == "198.18.52.200/24"


def test_claim_refusals() -> None:
    node = Node()
    node.source.add(claimed_pod("ghost", "uid-g", "missing"))
    err = node.error("ADD", SHARED, pod_name="ghost", uid="uid-g")
    assert (err.code, err.details) == (103, f"{NETWORKS_ANNOTATION}[0].ipam-claim-reference")
    node.source.add(claim("db-0"))
    node.source.add(claimed_pod("db-0", "uid-1"))
    node.source.add(claimed_pod("thief", "uid-t"))
    node.call("ADD", SHARED, pod_name="db-0", uid="uid-1")
    err = node.error("ADD", SHARED, container="c2", pod_name="thief", uid="uid-t")
    assert (err.code, err.details) == (104, f"{NETWORKS_ANNOTATION}[0].ipam-claim-reference")
    assert f"pod {NS}/db-0" in err.msg
    node.source.add(claim("for-b", network="nad-b"))
    node.source.add(claimed_pod("wrong-net", "uid-w", "for-b"))
    err = node.error("ADD", SHARED, container="c3", pod_name="wrong-net", uid="uid-w")
    assert err.code == 7 and "nad-b" in err.msg


def test_status_says_whether_the_daemon_can_serve_add() -> None:
    node = Node()
    assert node.call("STATUS", SHARED) == {}
    node.plugin.ready = lambda: False
    with pytest.raises(CniError) as exc:
        node.call("STATUS", SHARED)
    assert exc.value.code == 50


def test_a_pods_two_sandboxes_share_its_claim_and_the_old_ones_del_keeps_the_new_ones() -> None:
    node = Node()
    node.source.add(claim("db-0"))
    node.source.add(claimed_pod("db-0", "uid-1"))
    first = node.call("ADD", SHARED, container="old", pod_name="db-0", uid="uid-1")
    again = node.call("ADD", SHARED, container="new", pod_name="db-0", uid="uid-1")
    assert first["ips"] == again["ips"]
    node.call("DEL", SHARED, container="old", pod_name="db-0", uid="uid-1")  # the old sandbox's DEL comes late
    (rec,) = node.store.all_ips()
    assert rec.used_by_uids == ("new/net1",) and rec.used_by_pods == (f"{NS}/db-0",), "the new sandbox keeps it"
    assert node.publisher.ip_statuses[-1].used_by_pods == (f"{NS}/db-0",), "ownerPod stays"
    assert node.call("CHECK", SHARED, container="new", pod_name="db-0", uid="uid-1", prevResult=again) == {}
    node.call("DEL", SHARED, container="new", pod_name="db-0", uid="uid-1")
    assert node.store.all_ips()[0].used_by_uids == ()


def test_one_claim_named_by_two_interfaces_of_a_pod_is_not_one_address_on_both() -> None:
    """An IPAMClaim is for one interface (``spec.interface``: net1). A pod whose selection named it on two interfaces
    (net1 and net2, one NAD) got the same address on both: ``_check_claim_free`` refused other pods only. Now the
    second interface of the same sandbox is refused (code 104), leaving the claim's users as they were; a retried ADD
    of net1 keeps its address."""
    node = Node()
    node.source.add(claim("db-0"))  # spec.interface: net1
    node.source.add(pod("db-0", "uid-1", [{"name": "nad-a", "interface": "net1", "ipam-claim-reference": "db-0"},
                                          {"name": "nad-a", "interface": "net2", "ipam-claim-reference": "db-0"}]))
    first = node.call("ADD", SHARED, ifname="net1", pod_name="db-0", uid="uid-1")["ips"]
    exc = node.error("ADD", SHARED, ifname="net2", pod_name="db-0", uid="uid-1")
    assert (exc.code, exc.details) == (104, "k8s.v1.cni.cncf.io/networks[1].ipam-claim-reference"), exc
    assert "net1" in exc.msg, exc.msg
    assert node.call("ADD", SHARED, ifname="net1", pod_name="db-0", uid="uid-1")["ips"] == first
    (rec,) = node.store.all_ips()
    assert rec.used_by_uids == ("c1/net1",)


def test_plexus_told_the_claim_when_it_delegates_with_exec() -> None:
    node = Node()
    node.source.add(claim("db-0"))
    node.source.add(pod("db-0", "uid-1", [{"name": "nad-a", "ipam-claim-reference": "db-0"}]))  # net1 by Multus
    told = {"network.deckhouse.io/plexus-ipam": {"nad": f"{NS}/nad-a", "claim": "db-0",
                                                 "where": "k8s.v1.cni.cncf.io/networks[0]"}}
    node.call("ADD", SHARED, ifname="net3", pod_name="db-0", uid="uid-1", args=told)  # Plexus numbered it net3
    (rec,) = node.store.all_ips()
    assert rec.key == "IPAMClaim/apps/db-0" and rec.used_by_uids == ("c1/net3",)


def claims_of(node: Node) -> dict[str, tuple[tuple[str, str], ...]]:
    return {r.key: r.user_networks for r in node.store.all_ips() if r.kind == "IPAMClaim"}


def test_plexus_ipam_under_multus_with_default_networks_does_not_give_a_claim_to_the_wrong_interface() -> None:
    """Multus names an unnamed network ``net<idx>`` by its index among ALL its delegates: the cluster network is 0,
    then its ``defaultNetworks``, then the pod's annotation. ``ipam_plugin.selection_for`` assumed the annotation's
    element i is ``net{i+1}``. With one Multus ``defaultNetworks`` entry (``mon``, plexus-ipam too) the default
    network is net1 and the pod's claimed network ``nad-a`` is net2: plexus-ipam matched mon's call (net1) to the
    annotation's element 0 and leased the IPAMClaim's sticky address to mon's interface (the claim's network check
    passes, since ``nad`` came from the same wrong element), and nad-a's own call (net2) matched nothing and got a
    fresh address. Now an element is also of the call's network, and may be any ``net<k+1+i>``. (The source shows
    nad-a, configured on disk: a claimed element's NAD it does not show is 11 for mon's call, which may be its.)"""
    node = Node()
    node.source.add(nad("nad-a"))
    node.source.add(claim("db-0"))
    node.source.add(pod("db-0", "uid-1", [{"name": "nad-a", "ipam-claim-reference": "db-0"}]))
    node.call("ADD", SHARED, pod_name="db-0", uid="uid-1", network="mon", ifname="net1")  # Multus's defaultNetworks[0]
    node.call("ADD", SHARED, pod_name="db-0", uid="uid-1", network="nad-a", ifname="net2")  # the annotation's [0]
    rec = next(r for r in node.store.all_ips() if r.key == "IPAMClaim/apps/db-0")
    assert rec.user_networks == (("c1/net2", "nad-a"),), \
        f"the IPAMClaim for nad-a serves {rec.user_networks} (Multus's default network mon is net1)"
    mon = next(r for r in node.store.all_ips() if r.network_name == "mon")
    assert (mon.kind, mon.interface) == ("CNI", "net1"), "the default network gets a plain lease"


def test_an_elements_network_is_its_nads_configuration_name() -> None:
    """The call's network is the NAD's ``spec.config`` ``name`` (the NAD's name when the config has none): a NAD
    ``nad-a`` whose config is ``storage`` is the element of a ``storage`` call, not of a ``nad-a`` one."""
    node = Node()
    node.source.add(claim("db-0"))
    node.source.add(obj("NetworkAttachmentDefinition", "nad-a", {"config": json.dumps(
        {"cniVersion": "1.0.0", "name": "storage", "type": "macvlan", "ipam": {"type": "plexus-ipam"}})},
        api="k8s.cni.cncf.io/v1"))
    node.source.add(pod("db-0", "uid-1", [{"name": "nad-a", "ipam-claim-reference": "db-0"}]))
    node.call("ADD", SHARED, pod_name="db-0", uid="uid-1", network="nad-a", ifname="net1")  # another CNI network
    node.call("ADD", SHARED, pod_name="db-0", uid="uid-1", network="storage", ifname="net2")
    assert claims_of(node) == {"IPAMClaim/apps/db-0": (("c1/net2", "storage"),)}


def test_without_multus_default_networks_the_elements_are_net1_net2_as_before() -> None:
    node = Node()
    node.source.add(claim("db-1", network="nad-b"))
    node.source.add(pod("db-0", "uid-1", [{"name": "nad-a"}, {"name": "nad-b", "ipam-claim-reference": "db-1"}]))
    node.call("ADD", SHARED, pod_name="db-0", uid="uid-1", network="nad-a", ifname="net1")
    node.call("ADD", SHARED, pod_name="db-0", uid="uid-1", network="nad-b", ifname="net2")
    assert claims_of(node) == {"IPAMClaim/apps/db-1": (("c1/net2", "nad-b"),)}


def test_the_same_nad_twice_with_two_claims_and_named_interfaces_gets_each_its_claim() -> None:
    node = Node()
    node.source.add(claim("db-0"))
    node.source.add(claim("db-1", interface="net2"))
    node.source.add(pod("db-0", "uid-1", [{"name": "nad-a", "interface": "data0", "ipam-claim-reference": "db-0"},
                                          {"name": "nad-a", "interface": "data1", "ipam-claim-reference": "db-1"}]))
    node.call("ADD", SHARED, pod_name="db-0", uid="uid-1", ifname="data1")
    node.call("ADD", SHARED, pod_name="db-0", uid="uid-1", ifname="data0")
    assert claims_of(node) == {"IPAMClaim/apps/db-0": (("c1/data0", "nad-a"),),
                               "IPAMClaim/apps/db-1": (("c1/data1", "nad-a"),)}


@pytest.mark.parametrize(("interfaces", "second"), [
    (("", ""), {"ipam-claim-reference": "db-1"}),
    (("net2", "net2"), {"ipam-claim-reference": "db-1"}),
    (("", "net2"), {"ipam-claim-reference": "db-1"}),
    (("net1", "net3"), {"ipam-claim-reference": "db-1"}),
    (("", ""), {}),
], ids=["two claims naming no interface", "two claims naming net2", "a claim naming no interface",
        "two claims naming neither", "a claim naming no interface and none"])
def test_the_same_nad_twice_unnamed_naming_different_claims_is_refused_naming_the_interface(
        interfaces: tuple[str, str], second: dict[str, Any]) -> None:
    """Unnamed, element 0 may be net1 (no Multus default network) or net2 (one), as element 1 may be net2. When the
    IPAMClaims' ``spec.interface`` does not tell which claim net2's call is for (a claim naming none, two naming
    net2, none naming it), it is refused (7) before anything is leased, asking for names. (These elements once were
    refused whatever the claims said: a claim for net1 and one for net2, or a claim for net1 and an element without
    one, are told apart now: ``test_..._told_apart_by_the_claims_own_interface``.)"""
    node = Node()
    node.source.add(claim("db-0", interface=interfaces[0]))
    node.source.add(claim("db-1", interface=interfaces[1]))
    node.source.add(pod("db-0", "uid-1", [{"name": "nad-a", "ipam-claim-reference": "db-0"},
                                          {"name": "nad-a", **second}]))
    err = node.error("ADD", SHARED, pod_name="db-0", uid="uid-1", ifname="net2")
    assert (err.code, err.details) == (7, f"{NETWORKS_ANNOTATION}[0].interface"), err
    assert f"{NETWORKS_ANNOTATION}[1]" in err.msg and "net2" in err.msg, err.msg
    assert node.store.all_leases() == [] and node.store.all_ips() == []


@pytest.mark.parametrize("default_networks", [0, 1], ids=["no Multus defaultNetworks", "one"])
def test_the_same_nad_twice_unnamed_with_two_claims_is_told_apart_by_their_interfaces(default_networks: int) -> None:
    """Claims for net<k+1> and net<k+2> (k Multus defaultNetworks, which the pod's author knows): each call gets the
    claim that names its interface, whichever element may have been numbered so."""
    node = Node()
    first, second = f"net{default_networks + 1}", f"net{default_networks + 2}"
    node.source.add(claim("db-0", interface=first))
    node.source.add(claim("db-1", interface=second))
    node.source.add(pod("db-0", "uid-1", [{"name": "nad-a", "ipam-claim-reference": "db-0"},
                                          {"name": "nad-a", "ipam-claim-reference": "db-1"}]))
    node.call("ADD", SHARED, pod_name="db-0", uid="uid-1", ifname=second)
    node.call("ADD", SHARED, pod_name="db-0", uid="uid-1", ifname=first)
    assert claims_of(node) == {"IPAMClaim/apps/db-0": ((f"c1/{first}", "nad-a"),),
                               "IPAMClaim/apps/db-1": ((f"c1/{second}", "nad-a"),)}


def test_the_same_nad_twice_whose_second_claim_is_not_known_is_that_claims_103_not_a_refusal_of_the_selection(
        ) -> None:
    """Telling two elements apart reads their claims' ``spec.interface``: a claim the cache does not show (not made
    yet, or not yet seen) is code 103 naming its element, as for an element alone, not a 7 refusing the annotation."""
    node = Node()
    node.source.add(claim("db-0", interface="net1"))
    node.source.add(pod("db-0", "uid-1", [{"name": "nad-a", "ipam-claim-reference": "db-0"},
                                          {"name": "nad-a", "ipam-claim-reference": "db-1"}]))
    err = node.error("ADD", SHARED, pod_name="db-0", uid="uid-1", ifname="net2")
    assert (err.code, err.details) == (103, f"{NETWORKS_ANNOTATION}[1].ipam-claim-reference"), err
    assert node.store.all_leases() == [] and node.store.all_ips() == []
    node.source.add(claim("db-1", interface="net2"))
    node.call("ADD", SHARED, pod_name="db-0", uid="uid-1", ifname="net2")
    assert claims_of(node) == {"IPAMClaim/apps/db-1": (("c1/net2", "nad-a"),)}


def test_the_same_nad_twice_one_claimed_for_net2_leaves_net1_a_plain_lease() -> None:
    """A claim for net2 and an element without one: net2 is the claim's, and net1 (which only element 0 may be)
    a plain lease, though element 0 is the claimed one by its place: the claim says so."""
    node = Node()
    node.source.add(claim("db-1", interface="net2"))
    node.source.add(pod("db-0", "uid-1", [{"name": "nad-a"}, {"name": "nad-a", "ipam-claim-reference": "db-1"}]))
    node.call("ADD", SHARED, pod_name="db-0", uid="uid-1", ifname="net2")
    node.call("ADD", SHARED, pod_name="db-0", uid="uid-1", ifname="net1")
    assert claims_of(node) == {"IPAMClaim/apps/db-1": (("c1/net2", "nad-a"),)}
    plain = [r.interface for r in node.store.all_ips() if r.kind == "CNI"]
    assert plain == ["net1"]


def test_a_claimed_elements_nad_the_source_does_not_show_is_try_again_naming_it() -> None:
    """The CNI network of an element's NAD is its config's ``name``: a NAD the cache does not show yet may name
    another (``storage``), so taking the NAD's name matched no element and the claim was silently left unused (a
    fresh address, the sticky one lost). Now 11 naming the element's NAD, nothing leased, until the source shows
    it. A call of the network the NAD is named (every other claim test here: their NADs are not in the source), or an
    element naming no claim (no claim to lose), still goes by the NAD's name."""
    node = Node()
    node.source.add(claim("db-0", network="late"))
    node.source.add(pod("db-0", "uid-1", [{"name": "late", "ipam-claim-reference": "db-0"}]))
    err = node.error("ADD", SHARED, pod_name="db-0", uid="uid-1", network="storage")
    assert (err.code, err.details) == (11, f"{NETWORKS_ANNOTATION}[0].name"), err
    assert "apps/late" in err.msg and "db-0" in err.msg, err.msg
    node.source.add(nad("late", {"cniVersion": "1.0.0", "name": "storage", "type": "macvlan",
                                 "ipam": {"type": "plexus-ipam"}}))
    node.call("ADD", SHARED, pod_name="db-0", uid="uid-1", network="storage")
    assert claims_of(node) == {"IPAMClaim/apps/db-0": (("c1/net1", "storage"),)}
    node.source.add(pod("app", "uid-app", [{"name": "gone"}]))
    node.call("ADD", SHARED, container="c2", network="gone")  # no claim: the NAD's name, as before
    assert [r.kind for r in node.store.all_ips() if r.network_name == "apps/gone"] == ["CNI"]


def test_more_bad_input_is_a_cni_error_naming_the_field() -> None:
    node = Node()
    for runtime, field in (({"ips": ["198.18.52.7/33"]}, "runtimeConfig.ips"),
                           (["ips"], "runtimeConfig")):
        err = node.error("ADD", SHARED, runtimeConfig=runtime)
        assert (err.code, err.details) == (7, field), err.msg
    for asked in ("198.18.53.1", "198.18.53.9"):  # the range's gateway; an excluded address
        err = node.error("ADD", {**RANGE, "exclude": ["198.18.53.8/30"]}, runtimeConfig={"ips": [asked]})
        assert (err.code, err.details) == (7, "runtimeConfig.ips") and "not one of the range's addresses" in err.msg
    err = node.error("ADD", {"range": "198.18.52.0/25"})  # the ClusterIPAddressPool "shared" has 198.18.52.0/24
    assert (err.code, err.details) == (7, "ipam.range") and "ClusterIPAddressPool shared" in err.msg


def test_a_del_that_arrives_while_the_add_is_still_leasing_leaves_no_lease_behind() -> None:
    """The runtime gave up on a slow ADD (the shim's timeoutSeconds) and sent DEL for the attachment. The IPAM
    plugin held no per-attachment lock (the attacher does), so the DEL found nothing yet, answered success, and the
    ADD then recorded its lease: nobody would DEL it again (a pod that is not known, or still alive, kept it)."""
    node = Node()
    in_claim, go = threading.Event(), threading.Event()
    real_claim = node.ipam.registry.claim

    def slow_claim(lease: Any, exact: bool = False) -> bool:  # the API server answering slowly, say
        in_claim.set()
        assert go.wait(5)
        return real_claim(lease, exact)

    node.ipam.registry.claim = slow_claim  # type: ignore[method-assign]
    added: list[Any] = []
    t = threading.Thread(target=lambda: added.append(node.call("ADD", SHARED)))
    t.start()
    assert in_claim.wait(5)
    deleted: list[Any] = []
    d = threading.Thread(target=lambda: deleted.append(node.call("DEL", SHARED)))
    d.start()
    d.join(0.5)  # a DEL that waited for the ADD (a per-attachment lock) is still running here
    go.set()
    t.join(5)
    d.join(5)
    assert deleted == [{}]
    bound = [lease for lease in node.store.all_leases() if lease.state == "bound"]
    assert bound == [], f"the DEL answered, and the ADD's lease is still held: {bound}"


def test_a_range_is_refused_once_a_pool_is_made_over_it_even_after_its_first_add() -> None:
    """README: a range that overlaps a Deckhouse pool's network is refused (code 7, ``ipam.range``), since the pool
    and the range are two lease spaces over the same addresses. ``_refuse_range`` returned before the pool check once
    the range's implicit pool was recorded on this node, so a pool created over a range after its first ADD never
    stopped it: the range kept handing out addresses the pool hands out too (the pool's allocator knows nothing of
    them)."""
    node = Node()
    node.call("ADD", RANGE, container="c1")  # records the implicit pool of nad-a's range
    node.source.add(obj("ClusterIPAddressPool", "late", {"pools": [{"network": "198.18.53.0/24"}]}, ns=""))
    pool = node.source.get(CLUSTER_IP_ADDRESS_POOL, "", "late")
    assert pool is not None
    from_pool = {node.ipam.allocate_for(f"o{i}", pool)[1].address for i in range(4)}  # .1 .2 .3 .4
    try:
        got = node.call("ADD", RANGE, container="c2")["ips"][0]["address"].split("/")[0]
    except CniError as exc:
        assert (exc.code, exc.details) == (7, "ipam.range"), exc
        return
    pytest.fail(f"the range handed out {got} beside pool ClusterIPAddressPool/late, which handed out "
                f"{sorted(from_pool)} of the same network")


def test_a_route_without_gw_gets_no_gateway_of_the_other_family() -> None:
    """A Whereabouts route without ``gw`` (the plugin routes it by the result's gateway of the route's family, or on
    the link) was given the ``gateway`` of the range whatever its family: an IPv6 destination via an IPv4 gateway,
    which the calling plugin's route add failed on (ipamd/model/ipamconf.py _routes). Now only a gateway of its
    family is filled in."""
    node = Node()
    ipam = {"range": "198.18.53.0/24", "gateway": "198.18.53.1", "routes": [{"dst": "2001:db8:99::/64"}]}
    try:
        result = node.call("ADD", ipam)
    except CniError as exc:  # refused naming the route: also fine
        assert (exc.code, exc.details) == (7, "ipam.routes[0]"), exc
        return
    (route,) = result["routes"]
    assert route.get("gw", "") == "", f"an IPv6 route via an IPv4 gateway: {route}"


def test_an_ipv6_default_route_through_the_daemon() -> None:
    """``::/0`` was refused as lying in ::/96 (see test_ipamconf's test of the same name)."""
    node = Node()
    result = node.call("ADD", {"range": "2001:2:0:53::/64", "gateway": "2001:2:0:53::1", "routes": [{"dst": "::/0"}]})
    assert result["routes"] == [{"dst": "::/0", "gw": "2001:2:0:53::1"}]


def test_a_ranges_route_gw_inside_the_range_is_never_handed_to_a_pod() -> None:
    """A range's ``gateway`` was cut out of what it hands out, but a route's own ``gw`` inside the range was not: the
    first pod got 198.18.53.1 with a route via 198.18.53.1, i.e. via itself (and the router's address taken twice on
    the segment). A pool never hands out its routes' gateways (``refuse_gateway``); now a range does not either."""
    node = Node()
    ipam = {"range": "198.18.53.0/29", "routes": [{"dst": "198.18.60.0/24", "gw": "198.18.53.1"}]}
    got = []
    for c in ("c1", "c2", "c3", "c4", "c5", "c6"):
        try:
            got.append(node.call("ADD", ipam, container=c)["ips"][0]["address"])
        except CniError:
            break
    assert "198.18.53.1/29" not in got, f"the route's gateway was handed out: {got}"


def test_a_pool_delegates_gateway_of_the_other_family_is_refused_naming_it() -> None:
    """With a range, a ``gateway`` of the other family is refused (code 7, ``ipam.gateway``); with
    ``ipAddressPoolRef`` it was not checked at all, and the result said ``198.18.52.2/24`` via ``2001:db8::1``, which
    the calling plugin fails on (its error names no field of the NAD)."""
    node = Node()
    exc = node.error("ADD", {**SHARED, "gateway": "2001:db8::1"})
    assert (exc.code, exc.details) == (7, "ipam.gateway"), exc
    assert "IPv4" in exc.msg, exc.msg


def test_a_pool_delegates_gateway_inside_the_pool_is_not_handed_to_a_pod() -> None:
    """README: "a pool never hands out its own routes' gateways (give a NAD's gateway inside a pool as one of them, or
    outside its ranges)": a NAD ``gateway`` inside the pool's ranges was neither refused nor cut, and the first pod
    got the gateway itself as its address (198.18.52.2/24 via 198.18.52.2). Refused before anything is leased, as is
    a route's ``gw`` there; a pool route's gateway, or one outside the ranges, is fine."""
    node = Node()
    exc = node.error("ADD", {**SHARED, "gateway": "198.18.52.2"})
    assert (exc.code, exc.details) == (7, "ipam.gateway"), exc
    assert "pool's routes" in exc.msg and "outside its ranges" in exc.msg, exc.msg
    routed = {**SHARED, "routes": [{"dst": "198.18.62.0/24", "gw": "198.18.52.9"}]}
    assert node.error("ADD", routed).details == "ipam.routes[0].gw"
    for n, gateway in enumerate(("198.18.52.1", "198.18.53.1")):  # the pool route's gateway; outside the pool
        (ip,) = node.call("ADD", {**SHARED, "gateway": gateway}, container=f"ok{n}")["ips"]
        assert ip == {"address": f"198.18.52.{2 + n}/24", "gateway": gateway}


def test_an_exhausted_ranges_error_counts_its_own_addresses() -> None:
    """A full range answered code 100 with the counts; they were the whole space's leases (every range of the
    network_name) over this range's size, e.g. "3 of 1 addresses leased", which is no count of anything, and it was
    named "ImplicitPool unnamed". Now the leases over its own addresses are counted, and the range is named."""
    node = Node()
    node.call("ADD", {"range": "198.18.53.0/24"}, container="big-1", network="nad-b")  # .1, the same space
    node.call("ADD", {"range": "198.18.53.0/24"}, container="big-2", network="nad-b")  # .2
    small = {"range": "198.18.53.0/30", "gateway": "198.18.53.1"}  # hands out .2 alone
    err = node.error("ADD", small)
    assert err.code == 100
    used, _, size = err.details.split()[:3]
    assert int(used) <= int(size), err.details


def test_a_range_a_configuration_no_longer_has_does_not_refuse_another_for_ever() -> None:
    """Implicit pools were recorded per configuration and range and never deleted (no caller of
    ``delete_implicit_pool``). nad-a moved from 198.18.53.0/24 to 198.18.58.0/24 and holds nothing in the old range;
    nad-b, with ``enable_overlapping_ranges: false`` over the old range, was refused on this node for ever, naming a
    range nad-a no longer has (and accepted on every node nad-a never ran on)."""
    node = Node()
    node.call("ADD", RANGE, container="old", network="nad-a")
    node.call("DEL", RANGE, container="old", network="nad-a")
    node.clock += 3600  # the quarantine is long over
    node.ipam.expire(None, node.clock)
    node.call("ADD", {"range": "198.18.58.0/24"}, container="new", network="nad-a")  # nad-a edited
    assert not [lease for lease in node.store.all_leases() if lease.address.startswith("198.18.53.")]
    got = node.call("ADD", {"range": "198.18.53.0/25", "enable_overlapping_ranges": False}, network="nad-b")
    assert got["ips"]


def test_a_claim_the_daemon_does_not_serve_is_named_so_at_add_not_as_missing() -> None:
    """A claim stored before the webhook reviewed IPAMClaims (or while it was away: failurePolicy Ignore) is in the
    source's problems, not its objects: ADD said it "does not exist", the user looked and found it there."""
    node = Node()
    node.source.add(claimed_pod("db-0", "uid-1"))
    why = f"api: IPAMClaim {NS}/db-0: spec.ipRequests: asks for more than one address"
    node.source.problems = lambda: [Problem("api", "spec.ipRequests", why)]  # type: ignore[method-assign]
    err = node.error("ADD", SHARED, pod_name="db-0", uid="uid-1")
    assert (err.code, err.details) == (103, f"{NETWORKS_ANNOTATION}[0].ipam-claim-reference")
    assert f"IPAMClaim {NS}/db-0 is not served: " in err.msg and why in err.msg, err.msg


# -- GC releases every reservation of a stale attachment (SPEC 1.1 "GC": "a plugin should remove any resources
#    related to attachments not in the provided list") ------------------------------------------------------------

def test_ipam_gc_lets_go_of_a_claim_a_stale_attachment_used() -> None:
    """plexus-ipam's GC releases only the ``CNI/<network>/...`` leases: an IPAMClaim a stale attachment used keeps
    that attachment (and its pod) as its user for ever, where DEL would have let go of it."""
    node = Node()
    node.source.add(claim("db-0"))
    node.source.add(claimed_pod("db-0", "uid-1"))
    node.call("ADD", SHARED, container="stale", pod_name="db-0", uid="uid-1")
    (rec,) = node.store.all_ips()
    assert rec.used_by_uids == ("stale/net1",) and rec.used_by_pods == (f"{NS}/db-0",)
    valid: dict[str, Any] = {"cni.dev/valid-attachments": []}
    node.call("GC", SHARED, **valid)
    (rec,) = node.store.all_ips()
    assert rec.used_by_uids == (), "the stale attachment no longer uses the claim"


def test_ipam_gc_keeps_a_claims_valid_user_and_publishes_a_claim_let_go() -> None:
    node = Node()
    node.source.add(claim("db-0"))
    node.source.add(claimed_pod("db-0", "uid-1"))
    node.call("ADD", SHARED, container="live", pod_name="db-0", uid="uid-1")
    none: dict[str, Any] = {"cni.dev/valid-attachments": []}
    live: dict[str, Any] = {"cni.dev/valid-attachments": [{"containerID": "live", "ifname": "net1"}]}
    node.call("GC", SHARED, network="nad-b", **none)
    node.call("GC", SHARED, **live)
    (rec,) = node.store.all_ips()
    assert rec.used_by_uids == ("live/net1",), "another network's GC and a GC listing it leave it its user"
    published = len(node.publisher.ip_statuses)
    node.call("GC", SHARED, **none)
    (rec,) = node.store.all_ips()
    assert (rec.used_by_uids, rec.used_by_pods) == ((), ())
    assert [r.used_by_pods for r in node.publisher.ip_statuses[published:]] == [()], "released, as DEL publishes"
    assert rec.key == f"IPAMClaim/{NS}/db-0"


def test_a_pools_route_gateway_asked_for_through_the_ips_capability_is_refused() -> None:
    """The pool never leases its routes' gateways (198.18.52.1 is the shared pool's route's `via`), not even to a
    delegate asking for exactly it through `ips`: its pod's route would go through itself."""
    node = Node()
    err = node.error("ADD", SHARED, runtimeConfig={"ips": ["198.18.52.1/24"]})
    assert (err.code, err.details) == (7, "runtimeConfig.ips") and "gateway" in err.msg, err
    assert not [lease for lease in node.store.all_leases() if lease.holder], "nothing leased"


def test_gc_keeps_the_lease_of_an_add_that_has_not_answered_yet() -> None:
    """An ADD that recorded its lease and has not answered yet (it holds its attachment) is in no runtime's list of
    valid attachments: GC at that moment leaves its lease."""
    node = Node()
    node.call("ADD", SHARED, container="answering")
    none_valid: dict[str, Any] = {"cni.dev/valid-attachments": []}
    with node.plugin.locks.hold(("answering", "net1")):
        node.call("GC", SHARED, **none_valid)
    assert [lease.state for lease in node.store.all_leases()] == ["bound"]
    node.call("GC", SHARED, **none_valid)
    assert [lease.state for lease in node.store.all_leases()] == ["orphaned"], "once answered, it is GC's to judge"


def test_the_same_nad_twice_one_claimed_is_told_apart_by_the_claims_own_interface() -> None:
    """(Review.) A pod selecting a NAD twice, once with its IPAMClaim, is what a Multus user without defaultNetworks
    (the common setup) had working: net1 the claim's, net2 a plain lease. The IPAMClaim says which interface it is for
    (``spec.interface: net1``), so element 0 is net1 and net2 is element 1; net2's ADD was refused (code 7)."""
    node = Node()
    node.source.add(claim("db-0"))  # spec.interface: net1
    node.source.add(pod("db-0", "uid-1", [{"name": "nad-a", "ipam-claim-reference": "db-0"}, {"name": "nad-a"}]))
    node.call("ADD", SHARED, pod_name="db-0", uid="uid-1", ifname="net1")
    node.call("ADD", SHARED, pod_name="db-0", uid="uid-1", ifname="net2")
    claims = {r.key: r.used_by_uids for r in node.store.all_ips() if r.kind == "IPAMClaim"}
    assert claims == {"IPAMClaim/apps/db-0": ("c1/net1",)}


# -- CHECK validates as ADD does; a NAD's args cannot name a claim the pod's selection does not ------------------

TOLD = "network.deckhouse.io/plexus-ipam"


@pytest.mark.parametrize(("ipam", "extra", "field"), [
    ({**SHARED, "ipAddressPoolRef": {"kind": "IPPool", "name": "shared"}}, {}, "ipam.ipAddressPoolRef.kind"),
    ({**SHARED, "ipAddressPoolRef": {"name": "shared", "zone": "a"}}, {}, "ipam.ipAddressPoolRef.zone"),
    ({**SHARED, "routes": [{"dst": "nowhere"}]}, {}, "ipam.routes[0].dst"),
    ({**SHARED, "routes": [{"dst": "198.18.70.0/24", "gw": "2001:2::1"}]}, {}, "ipam.routes[0].gw"),
    ({**SHARED, "gateway": "not-an-ip"}, {}, "ipam.gateway"),
    ({**SHARED, "range": "198.18.53.0/24"}, {}, "ipam.range"),
    ({**SHARED, "etcd_host": "x"}, {}, "ipam.etcd_host"),
    ({**SHARED, "socket": "/tmp/other.sock"}, {}, "ipam.socket"),
    (SHARED, {"runtimeConfig": {"ips": "198.18.52.2"}}, "runtimeConfig.ips"),
])
def test_check_refuses_an_ipam_section_add_refuses_with_adds_code_and_field(
        ipam: dict[str, Any], extra: dict[str, Any], field: str) -> None:
    node = Node()
    result = node.call("ADD", SHARED)
    with pytest.raises(CniError) as add:
        node.call("ADD", ipam, container="c9", **extra)
    with pytest.raises(CniError) as check:
        node.call("CHECK", ipam, prevResult=result, **extra)
    assert (check.value.code, check.value.details) == (add.value.code, add.value.details) == (7, field), \
        check.value.msg
    assert node.call("CHECK", SHARED, prevResult=result) == {}, "the lease is still checked as before"


def stored(node: Node) -> tuple[Any, ...]:
    return node.store.all_leases(), node.store.all_ips(), node.store.implicit_pools()


@pytest.mark.parametrize(("ipam", "extra", "code", "field"), [
    ({"ipAddressPoolRef": {"name": "missing"}}, {}, 103, "ipam.ipAddressPoolRef.name"),
    ({"ipAddressPoolRef": {"name": "theirs"}}, {}, 103, "ipam.ipAddressPoolRef.name"),  # another namespace's
    ({"ipAddressPoolRef": {"name": "theirs", "namespace": "other"}}, {}, 103, "ipam.ipAddressPoolRef.namespace"),
    (POOL, {"pod_name": ""}, 7, "ipam.ipAddressPoolRef.kind"),  # no pod: no namespace
    ({**SHARED, "gateway": "2001:db8::1"}, {}, 7, "ipam.gateway"),  # the other family
    ({**SHARED, "gateway": "198.18.52.9"}, {}, 7, "ipam.gateway"),  # inside the pool's ranges
    ({**SHARED, "routes": [{"dst": "198.18.62.0/24", "gw": "198.18.52.9"}]}, {}, 7, "ipam.routes[0].gw"),
    ({"range": "198.18.52.0/24"}, {}, 7, "ipam.range"),  # over pool ClusterIPAddressPool/shared
    ({**RANGE, "range": "198.18.53.0/25", "enable_overlapping_ranges": False}, {}, 7, "ipam.range"),  # over nad-b's
    (SHARED, {"runtimeConfig": {"ips": ["198.18.99.1"]}}, 7, "runtimeConfig.ips"),  # a new attachment's: no lease
])
def test_check_refuses_what_add_refuses_of_the_pool_range_and_gateways_with_adds_code_and_field(
        ipam: dict[str, Any], extra: dict[str, Any], code: int, field: str) -> None:
    """ADD refuses these once the section parses (``_pool``, ``_refuse_range``, ``_refuse_gateways``,
    ``_check_static``); CHECK did not (it checked the section's shape, then the lease), and answered success."""
    node = Node()
    node.call("ADD", RANGE, network="nad-b")  # another configuration's range, which refuses to share
    result = node.call("ADD", SHARED)
    container = "c9" if "runtimeConfig" in extra else "c1"
    before = stored(node)
    with pytest.raises(CniError) as add:
        node.call("ADD", ipam, container="c9", **extra)
    with pytest.raises(CniError) as check:
        node.call("CHECK", ipam, container=container, prevResult=result, **extra)
    assert (check.value.code, check.value.details) == (add.value.code, add.value.details) == (code, field), \
        check.value.msg
    assert stored(node) == before, "neither wrote anything"
    assert node.call("CHECK", SHARED, prevResult=result) == {}, "the lease is still checked as before"


def test_check_of_a_static_lease_whose_pool_no_longer_holds_it_answers_adds_refusal() -> None:
    """The attachment's own record is what ADD (retried) checks: its ``ips`` address against the pool named now."""
    node = Node()
    ips: dict[str, Any] = {"runtimeConfig": {"ips": ["198.18.52.77/24"]}}
    result = node.call("ADD", SHARED, **ips)
    assert node.call("CHECK", SHARED, prevResult=result, **ips) == {}, "its own address is not another's"
    with pytest.raises(CniError) as add:
        node.call("ADD", POOL, **ips)
    with pytest.raises(CniError) as check:
        node.call("CHECK", POOL, prevResult=result, **ips)
    assert (check.value.code, check.value.details) == (add.value.code, add.value.details) == (7, "runtimeConfig.ips")


def test_check_of_a_good_lease_in_a_full_pool_succeeds_and_writes_nothing() -> None:
    """A full pool refuses the next ADD (100); that is its state, not the configuration's: CHECK of a lease it holds
    still succeeds. Nor does CHECK record anything an ADD would (an inline range's implicit pool)."""
    node = Node()  # pool "mine" is a /29: six addresses
    results = [node.call("ADD", POOL, container=f"c{i}") for i in range(6)]
    assert node.error("ADD", POOL, container="c6").code == 100
    assert node.call("CHECK", POOL, container="c0", prevResult=results[0]) == {}
    ranged = node.call("ADD", RANGE, container="r1")
    before = stored(node)
    assert node.call("CHECK", {**RANGE, "range": "198.18.54.0/24", "gateway": "198.18.54.1"}, container="r1") == {}
    assert stored(node) == before, "CHECK records no implicit pool"
    assert node.call("CHECK", RANGE, container="r1", prevResult=ranged) == {}


def test_check_before_the_source_has_read_its_pools_answers_try_again_not_that_the_pool_is_missing() -> None:
    node = Node()
    result = node.call("ADD", SHARED)
    node.source.synced = False
    with pytest.raises(CniError) as exc:
        node.call("CHECK", SHARED, prevResult=result)
    assert (exc.value.code, exc.value.details) == (11, "object source"), exc.value.msg
    node.source.synced = True
    assert node.call("CHECK", SHARED, prevResult=result) == {}


def test_check_of_a_range_whose_gateway_is_outside_it_is_refused_naming_the_gateway() -> None:
    node = Node()
    result = node.call("ADD", RANGE)
    with pytest.raises(CniError) as exc:
        node.call("CHECK", {**RANGE, "gateway": "198.18.99.1"}, prevResult=result)
    assert (exc.value.code, exc.value.details) == (7, "ipam.gateway"), exc.value.msg


def test_check_without_a_plexus_ipam_section_is_refused_naming_it() -> None:
    node = Node()
    result = node.call("ADD", SHARED)
    with pytest.raises(CniError) as exc:
        node.call("CHECK", {**SHARED, "type": "host-local"}, prevResult=result)
    assert (exc.value.code, exc.value.details) == (7, "ipam.type"), exc.value.msg


def test_check_with_a_bad_ipam_section_and_no_lease_names_the_section_not_the_container() -> None:
    with pytest.raises(CniError) as exc:
        Node().call("CHECK", {**SHARED, "routes": [{"dst": "nowhere"}]})
    assert (exc.value.code, exc.value.details) == (7, "ipam.routes[0].dst"), exc.value.msg


def test_a_nads_args_cannot_give_a_pod_another_pods_claim() -> None:
    """Under Multus, ``args`` is the NAD's: its author named the claim of a VM/StatefulSet pod that is down, and any
    pod selecting the NAD took the claim's sticky address (and its ownerPod)."""
    node = Node()
    node.source.add(claim("db-0"))
    node.source.add(claimed_pod("db-0", "uid-1"))
    first = node.call("ADD", SHARED, pod_name="db-0", uid="uid-1")
    node.call("DEL", SHARED, pod_name="db-0", uid="uid-1")  # db-0 is down: the claim keeps its address for it
    node.source.add(pod("thief", "uid-t", [{"name": "nad-a", "interface": "net1"}]))
    forged = {TOLD: {"nad": f"{NS}/nad-a", "claim": "db-0", "where": f"{NETWORKS_ANNOTATION}[0]"}}
    err = node.error("ADD", SHARED, container="c2", pod_name="thief", uid="uid-t", args=forged)
    assert (err.code, err.details) == (7, f"args.{TOLD}.claim"), err.msg
    again = node.call("ADD", SHARED, container="c3", pod_name="db-0", uid="uid-1")
    assert again["ips"] == first["ips"], "the claim's own pod still gets its address"


@pytest.mark.parametrize("pod_name", ["", "unknown"])
def test_args_cannot_name_a_claim_for_a_call_of_no_known_pod(pod_name: str) -> None:
    node = Node()
    node.source.add(claim("db-0"))
    forged = {TOLD: {"nad": f"{NS}/nad-a", "claim": "db-0", "where": f"{NETWORKS_ANNOTATION}[0]"}}
    err = node.error("ADD", SHARED, pod_name=pod_name, uid="uid-x", args=forged)
    assert (err.code, err.details) == (7, f"args.{TOLD}.claim"), err.msg


def test_args_must_agree_with_the_pods_selection_element_they_name() -> None:
    node = Node()
    node.source.add(claim("db-0"))
    node.source.add(claim("db-1"))
    node.source.add(pod("db-0", "uid-1", [{"name": "nad-a", "ipam-claim-reference": "db-0"},
                                          {"name": "nad-b"}, {"name": "nad-a", "interface": "net7"}]))
    where0, where1 = f"{NETWORKS_ANNOTATION}[0]", f"{NETWORKS_ANNOTATION}[1]"
    for told, field in (({"nad": f"{NS}/nad-a", "claim": "db-1", "where": where0}, "claim"),  # another claim
                        ({"nad": f"{NS}/nad-b", "claim": "db-0", "where": where1}, "claim"),  # element naming none
                        ({"nad": f"{NS}/nad-a", "claim": "db-0", "where": f"{NETWORKS_ANNOTATION}[7]"}, "where"),
                        ({"nad": f"{NS}/nad-b", "claim": "db-0", "where": where0}, "nad"),
                        ({"nad": f"{NS}/nad-a", "claim": "", "where": where0}, "claim"),  # drops the pod's claim
                        ({"nad": f"{NS}/nad-b", "claim": "", "where": where1}, "where"),  # nad-b's, called as nad-a
                        ({"nad": f"{NS}/nad-a", "claim": "", "where": f"{NETWORKS_ANNOTATION}[2]"}, "where")):  # net7
        err = node.error("ADD", SHARED, ifname="net3", pod_name="db-0", uid="uid-1", args={TOLD: told})
        assert (err.code, err.details) == (7, f"args.{TOLD}.{field}"), (told, err.msg)
    err = node.error("ADD", SHARED, pod_name="db-0", uid="uid-1", args={TOLD: "db-0"})
    assert (err.code, err.details) == (7, f"args.{TOLD}"), err.msg


def test_plexus_hints_that_agree_with_the_selection_still_work() -> None:
    node = Node()
    node.source.add(claim("db-0"))
    node.source.add(pod("db-0", "uid-1", [{"name": "nad-b"}, {"name": "nad-a", "ipam-claim-reference": "db-0"}]))
    told = {TOLD: {"nad": f"{NS}/nad-a", "claim": "db-0", "where": f"{NETWORKS_ANNOTATION}[1]"}}
    node.call("ADD", SHARED, ifname="net5", pod_name="db-0", uid="uid-1", args=told)
    plain = {TOLD: {"nad": f"{NS}/nad-b", "claim": "", "where": f"{NETWORKS_ANNOTATION}[0]"}}
    node.call("ADD", POOL, ifname="net4", network="nad-b", pod_name="db-0", uid="uid-1", args=plain)
    default = {TOLD: {"nad": "kube-system/extra", "claim": "", "where": "defaultNetworks[0]"}}
    node.call("ADD", SHARED, ifname="net9", network="extra", pod_name="db-0", uid="uid-1", args=default)
    assert sorted(r.key for r in node.store.all_ips())[0] == "CNI/extra/c1/net9"
    assert {r.key: r.used_by_uids for r in node.store.all_ips()}["IPAMClaim/apps/db-0"] == ("c1/net5",)


def test_del_with_a_broken_ipam_section_still_releases_the_lease() -> None:
    node = Node()
    node.call("ADD", SHARED)
    assert node.call("DEL", {**SHARED, "routes": [{"dst": "nowhere"}], "etcd_host": "x"}) == {}
    assert node.store.all_ips() == [] and {lease.state for lease in node.store.all_leases()} == {"orphaned"}
    assert node.call("DEL", {"range": "garbage"}) == {}, "idempotent, whatever the section says"


# -- Plexus's own exec delegation: the hint it wrote is vouched for while it runs the delegate (ipam_hints) ------

CLAIMED = json.dumps([{"name": "first", "interface": "net1", "ipam-claim-reference": "db-0"}])


def plexus_exec_node() -> tuple[Any, Any, Any]:
    """``_plexus_ipam_exec_node`` wired as ``NodeDaemon``: Plexus's delegation and plexus-ipam share one
    ``PlexusHints``; and ``cni(verb, pod, container, **conf)`` with CNI_ARGS as the runtime passes them."""
    from ipamd.drivers.delegate import DelegateDriver
    from ipamd.invoke.chain import Chain
    from tests.unit.test_attacher import NETNS
    from tests.unit.test_delegation_edges import _plexus_ipam_exec_node

    node, fake, _ = _plexus_ipam_exec_node()
    hints = PlexusHints()
    node.drivers["delegate"] = DelegateDriver(Chain(HintingExec(fake, hints)))
    fake.plugin = IpamPlugin(DelegatedAddresses(node.ipam, node.source), node.source, lambda: True, hints=hints)
    node.source.add(claim("db-0", network="first"))

    def cni(verb: str, pod: str, container: str, **extra: Any) -> Any:
        args = {"K8S_POD_NAMESPACE": NS, "K8S_POD_NAME": pod, "K8S_POD_UID": f"uid-{pod}"}
        raw = "IgnoreUnknown=1;" + ";".join(f"{k}={v}" for k, v in args.items())
        conf = {"cniVersion": "1.1.0", "name": "plexus", "type": "plexus", "delegateIPAM": "exec", **extra}
        return node.attacher.handle(CniCall(verb, container, NETNS, "eth0", args, conf, raw))

    return node, hints, cni


def runtime(networks: str) -> dict[str, Any]:
    return {"runtimeConfig": {"io.kubernetes.cri.pod-annotations": {NETWORKS_ANNOTATION: networks}}}


def test_plexus_exec_delegation_keeps_the_claim_of_a_pod_known_only_from_the_runtimes_annotations() -> None:
    """README, ADD step 1: a pod's annotations come from runtimeConfig["io.kubernetes.cri.pod-annotations"] when the
    runtime passes them, else from the object source. Plexus resolves such a pod's NPWG element naming an IPAMClaim
    and, with ``delegateIPAM: exec``, tells plexus-ipam the claim in ``args``; the macvlan execs plexus-ipam with
    no pod annotations, and in local mode the source has no such pod: ``told_by_plexus`` (80bb129) refused any claim
    for "a pod plexus-ipamd does not know" (code 7), where the ADD got the claim's sticky address before. Plexus
    vouches for its hint while it runs the macvlan (``ipam_hints``, wired as ``NodeDaemon`` wires it)."""
    from tests.unit.delegation_node import npwg_pod

    node, hints, cni = plexus_exec_node()
    node.source.add(npwg_pod("known", "uid-known", CLAIMED))
    cni("ADD", "known", "c-known")  # control: the pod in the source gets the claim
    assert {r.key: r.used_by_uids for r in node.store.all_ips()}.get("IPAMClaim/apps/db-0") == ("c-known/net1",)
    cni("DEL", "known", "c-known")
    node.source.remove("Pod", "apps", "known")

    try:
        first = cni("ADD", "db-0", "c-rt", **runtime(CLAIMED))
    except CniError as exc:
        pytest.fail(f"ADD of the runtime-annotated pod failed: {exc.code} {exc.msg} ({exc.details})")
    users = {r.key: (r.used_by_uids, r.used_by_pods) for r in node.store.all_ips()}
    assert users.get("IPAMClaim/apps/db-0") == (("c-rt/net1",), ("apps/db-0",)), users
    assert hints.running() == 0, "nothing is kept once the delegate has answered"
    cni("DEL", "db-0", "c-rt", **runtime(CLAIMED))
    again = cni("ADD", "db-0", "c-rt2", **runtime(CLAIMED))
    assert again["ips"] == first["ips"], "the claim's address again, for the pod's next sandbox"


def test_a_selection_edited_after_the_sandbox_was_made_keeps_the_claim_plexus_resolved() -> None:
    """The source's pod says another selection than the runtime's (the annotation edited since the sandbox was
    made): Plexus resolves the runtime's, and plexus-ipam takes what Plexus resolved (code 7 before)."""
    from tests.unit.delegation_node import npwg_pod

    node, _, cni = plexus_exec_node()
    node.source.add(npwg_pod("db-0", "uid-db-0", json.dumps([{"name": "first", "interface": "net1"}])))
    cni("ADD", "db-0", "c-1", **runtime(CLAIMED))
    users = {r.key: r.used_by_uids for r in node.store.all_ips()}
    assert users.get("IPAMClaim/apps/db-0") == ("c-1/net1",), users


def test_a_hint_in_a_nads_own_args_is_refused_by_plexus_naming_it() -> None:
    """Plexus vouches for what is under that key of ``args`` while it runs the delegate: a NAD writing it itself
    (naming another pod's claim) is refused, before anything is leased or exec'd."""
    from tests.unit.delegation_node import npwg_pod
    from tests.unit.test_networks import nad as nad_of

    node, hints, cni = plexus_exec_node()
    forged = {TOLD: {"nad": f"{NS}/first", "claim": "db-0", "where": f"{NETWORKS_ANNOTATION}[0]"}}
    node.source.add(nad_of("forged", {"cniVersion": "1.1.0", "type": "macvlan", "master": "eth1", "args": forged,
                                      "ipam": {"type": "plexus-ipam", "range": "198.18.71.0/24"}}, NS))
    node.source.add(npwg_pod("thief", "uid-thief", "forged"))
    with pytest.raises(CniError) as exc:
        cni("ADD", "thief", "c-t")
    assert (exc.value.code, exc.value.details) == (7, f"plugins[0].args.{TOLD}"), exc.value.msg
    assert node.store.all_ips() == [] and hints.running() == 0


def test_only_the_hint_plexus_is_running_the_delegate_with_is_vouched_for() -> None:
    """A registration vouches for its attachment and its hint only: the same hint for another attachment, or
    another hint for the same one, is checked against the source as before (an unknown pod: no claim)."""
    node = Node()
    node.plugin.hints = hints = PlexusHints()
    node.source.add(claim("db-0"))
    told = {"nad": f"{NS}/nad-a", "claim": "db-0", "where": f"{NETWORKS_ANNOTATION}[0]"}
    other = {**told, "where": f"{NETWORKS_ANNOTATION}[1]"}
    with hints.telling("c1", "net1", Told(**told)):
        for kw in ({"container": "c2"}, {"ifname": "net2"}, {"args": {TOLD: other}}):
            err = node.error("ADD", SHARED, pod_name="db-0", uid="uid-1", **{"args": {TOLD: told}, **kw})
            assert (err.code, err.details) == (7, f"args.{TOLD}.claim"), (kw, err.msg)
        node.call("ADD", SHARED, pod_name="db-0", uid="uid-1", args={TOLD: told})
    users = {r.key: (r.used_by_uids, r.used_by_pods) for r in node.store.all_ips()}
    assert users == {"IPAMClaim/apps/db-0": (("c1/net1",), ("apps/db-0",))}, users
    assert hints.running() == 0


def test_the_hint_is_let_go_when_the_delegate_fails() -> None:
    """The registration lives as long as the delegate's exec, whatever its end."""

    class Failing:
        def run(self, *a: Any) -> Any:
            raise InvalidConfig("no", "x")

    hints = PlexusHints()
    config = {"args": {TOLD: {"nad": f"{NS}/first", "claim": "", "where": "clusterNetwork"}}}
    with pytest.raises(CniError):
        HintingExec(Failing(), hints).run("macvlan", {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_IFNAME": "n"},
                                          config, 1.0)
    assert hints.running() == 0


# -- a pool entry stored before its network was refused (``unserved_entries``) --------------------------------------

def _link_local_too(node: Node, name: str = "mine") -> Any:
    """Pool ``name`` as stored before link-local pool networks were refused: its network and an fe80::/64 entry."""
    stored = obj("IPAddressPool", name, {"pools": [{"network": "198.18.50.0/29"}, {"network": "fe80::/64"}],
                                         "leaseTTL": "1h"})
    node.source.add(stored)
    return stored


def test_a_pool_with_an_entry_stored_before_its_network_was_refused_is_not_served_and_del_still_releases() -> None:
    """plexus-ipam leased from a pool whose ``spec.pools[1].network`` is fe80::/64 (stored before such networks were
    refused), where Plexus's own ADD of its networks is refused (``attacher._refuse_unserved``): an fe80 address
    never passes CHECK. ADD is refused the same way, code 7 naming the NAD, the pool and the entry's field, leaving
    nothing; the address an attachment got before is still let go by its DEL."""
    node = Node()
    held = node.call("ADD", POOL)["ips"][0]["address"]  # leased before the stored entry was read
    stored = _link_local_too(node)
    (entry,) = unserved_entries(stored)
    err = node.error("ADD", POOL, container="c2")
    assert (err.code, err.details) == (7, "spec.pools[1].network"), err.msg
    assert err.msg == f"network nad-a uses {entry.msg}", err.msg
    assert f"IPAddressPool {NS}/mine" in err.msg and "fe80::/64" in err.msg and "link-local" in err.msg
    node.source.add(pod("sel", "uid-sel", [{"name": "nad-a"}]))
    named = node.error("ADD", POOL, container="c3", pod_name="sel", uid="uid-sel")  # under Multus: its NAD
    assert named.msg == f"NetworkAttachmentDefinition {NS}/nad-a uses {entry.msg}", named.msg
    assert node.error("ADD", POOL).details == "spec.pools[1].network", "nor the attachment that holds one, again"
    node.call("DEL", POOL)
    assert [(x.address, x.state) for x in node.store.all_leases()] == [(held.split("/")[0], "orphaned")]
    assert node.store.all_ips() == []

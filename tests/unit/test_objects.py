"""``ipamd.model.objects``: every kind parses into its typed object; every invalid manifest names its field."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest

from cni.errors import InvalidConfig
from ipamd.model.objects import (
    API_VERSION,
    DEFAULT_LEASE_TTL_S,
    AddressPool,
    ClusterNetwork,
    IPAddressObject,
    IpamClaim,
    ManifestInvalid,
    Network,
    NetworkClass,
    Pod,
    PoolRoute,
    Ref,
    VxlanSpec,
    brought_by_write,
    parse_duration,
    parse_object,
    refused_when_written,
    usable_bounds,
    warned_when_written,
)


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def manifest(kind: str, name: str, spec: dict[str, Any] | None = None, namespace: str | None = None,
             **metadata: Any) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, **metadata}
    if namespace is not None:
        md["namespace"] = namespace
    doc: dict[str, Any] = {"apiVersion": "v1" if kind == "Pod" else API_VERSION, "kind": kind, "metadata": md}
    if spec is not None:
        doc["spec"] = spec
    return doc


def pool_doc(pools: list[dict[str, Any]], lease_ttl: str | None = "1h", kind: str = "IPAddressPool") -> dict[str, Any]:
    spec: dict[str, Any] = {"pools": pools}
    if lease_ttl is not None:
        spec["leaseTTL"] = lease_ttl
    return manifest(kind, "my-net-pool", spec, namespace="my-namespace" if kind == "IPAddressPool" else None)


def invalid(doc: Any, source: str = "") -> ManifestInvalid:
    with pytest.raises(ManifestInvalid) as info:
        parse_object(doc, source)
    return info.value


# -- NetworkClass ---------------------------------------------------------------------------------

def test_network_class_with_vlan_id_pool() -> None:
    obj = parse_object(manifest("NetworkClass", "my-network-class", {
        "vlan": {"idPool": ["600-800", "1200", 1300], "parentNodeNetworkInterfaces": {"names": ["eth1", "bond0"]}},
    }))
    assert isinstance(obj, NetworkClass)
    assert obj.meta.kind == "NetworkClass"
    assert obj.meta.namespace == ""
    assert obj.meta.key == "NetworkClass/my-network-class"
    assert obj.vlan_pool == ((600, 800), (1200, 1200), (1300, 1300))
    assert obj.parents == ("eth1", "bond0")
    assert obj.vxlan is None


def test_network_class_with_vxlan() -> None:
    obj = parse_object(manifest("NetworkClass", "overlay", {
        "vxlan": {
            "vniPool": ["5000-5999", "16777215"], "underlayInterface": "eth0",
            "remotes": ["198.18.0.2", "198.18.0.3"], "port": 8472, "localIP": "198.18.0.1",
        },
    }))
    assert isinstance(obj, NetworkClass)
    assert obj.vlan_pool == ()
    assert obj.vxlan == VxlanSpec(
        vni_pool=((5000, 5999), (16777215, 16777215)), underlay="eth0",
        remotes=("198.18.0.2", "198.18.0.3"), group="", port=8472, local_ip="198.18.0.1",
    )


def test_network_class_vxlan_defaults_to_port_4789_and_multicast_group() -> None:
    obj = parse_object(manifest("NetworkClass", "overlay", {"vxlan": {"vniPool": [42], "group": "239.1.1.1"}}))
    assert isinstance(obj, NetworkClass) and obj.vxlan is not None
    assert obj.vxlan.port == 4789
    assert obj.vxlan.group == "239.1.1.1"
    assert obj.vxlan.vni_pool == ((42, 42),)


@pytest.mark.parametrize(("spec", "field"), [
    ({"vlan": {"idPool": ["5000"]}}, "spec.vlan.idPool[0]"),
    ({"vlan": {"idPool": ["600-800", "0"]}}, "spec.vlan.idPool[1]"),
    ({"vlan": {"idPool": ["800-600"]}}, "spec.vlan.idPool[0]"),
    ({"vlan": {"idPool": ["six"]}}, "spec.vlan.idPool[0]"),
    ({"vlan": {"idPool": []}}, "spec.vlan.idPool"),
    ({"vlan": {"idPool": "600-800"}}, "spec.vlan.idPool"),
    ({"vlan": "600"}, "spec.vlan"),
    ({"vlan": {"idPool": ["600"], "parentNodeNetworkInterfaces": {"names": ["a/b"]}}},
     "spec.vlan.parentNodeNetworkInterfaces.names[0]"),
    ({"vlan": {"idPool": ["600"], "parentNodeNetworkInterfaces": {"names": ["x" * 16]}}},
     "spec.vlan.parentNodeNetworkInterfaces.names[0]"),
    ({"vlan": {"idPool": ["600"], "parentNodeNetworkInterfaces": {"labelSelector": {"matchLabels": {"a": "b"}}}}},
     "spec.vlan.parentNodeNetworkInterfaces.labelSelector"),
    ({"parentNodeNetworkInterfaces": {"names": ["eth1"], "labelSelector": {}}},
     "spec.parentNodeNetworkInterfaces.labelSelector"),
    ({"vlan": {"idPool": ["600"]}, "vxlan": {"vniPool": ["1"]}}, "spec.vxlan"),
    ({"vxlan": {"vniPool": ["16777216"]}}, "spec.vxlan.vniPool[0]"),
    ({"vxlan": {"vniPool": ["1"], "port": 70000}}, "spec.vxlan.port"),
    ({"vxlan": {"vniPool": ["1"], "port": "4789"}}, "spec.vxlan.port"),
    ({"vxlan": {"vniPool": ["1"], "remotes": ["198.18.0.1", "nowhere"]}}, "spec.vxlan.remotes[1]"),
    ({"vxlan": {"vniPool": ["1"], "group": "239.1.1"}}, "spec.vxlan.group"),
    ({"vxlan": {"vniPool": ["1"], "localIP": "::1"}}, "spec.vxlan.localIP"),
])
def test_network_class_invalid(spec: dict[str, Any], field: str) -> None:
    exc = invalid(manifest("NetworkClass", "bad-class", spec))
    assert exc.field == field
    assert exc.obj == "NetworkClass bad-class"


# -- Network / ClusterNetwork ---------------------------------------------------------------------

def test_network() -> None:
    obj = parse_object(manifest("Network", "my-network", {
        "networkClass": "my-network-class",
        "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "my-net-pool"}},
    }, namespace="my-namespace", uid="u-1"))
    assert isinstance(obj, Network)
    assert obj.meta.key == "Network/my-namespace/my-network"
    assert obj.meta.uid == "u-1"
    assert obj.network_class == "my-network-class"
    assert obj.vlan_id is None
    assert obj.pool_ref == Ref("IPAddressPool", "my-net-pool")


def test_network_namespace_defaults_to_default_and_pool_kind_to_ipaddresspool() -> None:
    obj = parse_object(manifest("Network", "n", {"networkClass": "c", "vlan": {"id": 4094},
                                                 "ipam": {"ipAddressPoolRef": {"name": "p"}}}))
    assert isinstance(obj, Network)
    assert obj.meta.namespace == "default"
    assert obj.vlan_id == 4094
    assert obj.pool_ref == Ref("IPAddressPool", "p")


def test_network_without_ipam_has_no_pool() -> None:
    obj = parse_object(manifest("Network", "n", {"networkClass": "c"}, namespace="ns"))
    assert isinstance(obj, Network)
    assert obj.pool_ref is None


@pytest.mark.parametrize(("spec", "field"), [
    ({}, "spec.networkClass"),
    ({"networkClass": 7}, "spec.networkClass"),
    ({"networkClass": "c", "vlan": {"id": 5000}}, "spec.vlan.id"),
    ({"networkClass": "c", "vlan": {"id": 0}}, "spec.vlan.id"),
    ({"networkClass": "c", "vlan": {"id": "100"}}, "spec.vlan.id"),
    ({"networkClass": "c", "vlan": {"id": True}}, "spec.vlan.id"),
    ({"networkClass": "c", "ipam": {"ipAddressPoolRef": {"kind": "ClusterIPAddressPool", "name": "p"}}},
     "spec.ipam.ipAddressPoolRef.kind"),
    ({"networkClass": "c", "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool"}}}, "spec.ipam.ipAddressPoolRef.name"),
    ({"networkClass": "c", "ipam": {"other": 1}}, "spec.ipam.ipAddressPoolRef"),
])
def test_network_invalid(spec: dict[str, Any], field: str) -> None:
    exc = invalid(manifest("Network", "n", spec, namespace="ns"))
    assert exc.field == field
    assert exc.obj == "Network ns/n"


def test_cluster_network_vlan() -> None:
    obj = parse_object(manifest("ClusterNetwork", "my-cluster-network", {
        "type": "VLAN", "vlan": {"id": 900},
        "parentNodeNetworkInterfaces": {"names": ["eth1"]},
        "ipam": {"ipAddressPoolRef": {"kind": "ClusterIPAddressPool", "name": "public-net-pool"}},
    }))
    assert isinstance(obj, ClusterNetwork)
    assert obj.meta.key == "ClusterNetwork/my-cluster-network"
    assert obj.type == "VLAN"
    assert obj.vlan_id == 900
    assert obj.parents == ("eth1",)
    assert obj.pool_ref == Ref("ClusterIPAddressPool", "public-net-pool")
    assert obj.network_class == ""


def test_cluster_network_access_needs_no_vlan() -> None:
    obj = parse_object(manifest("ClusterNetwork", "flat", {"type": "Access"}))
    assert isinstance(obj, ClusterNetwork)
    assert obj.type == "Access"
    assert obj.vlan_id is None
    assert obj.pool_ref is None


def test_cluster_network_vlan_from_class_needs_no_id() -> None:
    obj = parse_object(manifest("ClusterNetwork", "vx", {"networkClass": "overlay"}))
    assert isinstance(obj, ClusterNetwork)
    assert obj.type == "VLAN"
    assert obj.network_class == "overlay"


@pytest.mark.parametrize(("spec", "field"), [
    ({"type": "VLAN"}, "spec.vlan.id"),
    ({}, "spec.vlan.id"),
    ({"type": "Trunk", "vlan": {"id": 5}}, "spec.type"),
    ({"type": "VLAN", "vlan": {"id": 5000}}, "spec.vlan.id"),
    ({"type": "VLAN", "vlan": {"id": 5}, "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "p"}}},
     "spec.ipam.ipAddressPoolRef.kind"),
    ({"type": "Access", "parentNodeNetworkInterfaces": {"names": ["eth1", ""]}},
     "spec.parentNodeNetworkInterfaces.names[1]"),
    ({"type": "VLAN", "vlan": {"id": 900}, "parentNodeNetworkInterfaces": {"labelSelector": {"matchLabels": {}}}},
     "spec.parentNodeNetworkInterfaces.labelSelector"),  # the Deckhouse API's form: refused, not taken for none
])
def test_cluster_network_invalid(spec: dict[str, Any], field: str) -> None:
    exc = invalid(manifest("ClusterNetwork", "cn", spec))
    assert exc.field == field


@pytest.mark.parametrize("name", ["has space", "tab\tx", "a:b", ".", ".."])
def test_parent_interface_names_follow_the_kernels_rules(name: str) -> None:
    """The kernel (dev_valid_name) refuses these link names, so no node can ever have such a parent NIC;
    ``networks-spec`` ifNames are held to the same rules (``annotations.check_ifname``)."""
    exc = invalid(manifest("ClusterNetwork", "cn", {"type": "Access",
                                                    "parentNodeNetworkInterfaces": {"names": ["eth1", name]}}))
    assert exc.field == "spec.parentNodeNetworkInterfaces.names[1]"


# -- IPAddressPool / ClusterIPAddressPool -----------------------------------------------------------

def test_ip_address_pool() -> None:
    obj = parse_object(pool_doc([{
        "network": "198.18.10.0/24",
        "ranges": ["198.18.10.50-198.18.10.200", "198.18.10.210"],
        "routes": [{"destination": "198.19.10.0/24", "via": "198.18.10.1"}],
    }]))
    assert isinstance(obj, AddressPool)
    assert obj.meta.key == "IPAddressPool/my-namespace/my-net-pool"
    assert obj.lease_ttl_s == 3600.0
    (subnet,) = obj.subnets
    assert subnet.network == ipaddress.IPv4Network("198.18.10.0/24")
    assert subnet.ranges == ((ip("198.18.10.50"), ip("198.18.10.200")), (ip("198.18.10.210"), ip("198.18.10.210")))
    assert subnet.routes == (PoolRoute("198.19.10.0/24", "198.18.10.1"),)
    assert subnet.size == 151 + 1
    assert obj.size == 152


def test_cluster_ip_address_pool_whole_subnets_and_default_ttl() -> None:
    obj = parse_object(pool_doc([{"network": "198.18.20.0/28"}, {"network": "198.18.21.0/31"},
                                 {"network": "198.18.22.7/32"}], lease_ttl=None, kind="ClusterIPAddressPool"))
    assert isinstance(obj, AddressPool)
    assert obj.meta.kind == "ClusterIPAddressPool"
    assert obj.meta.namespace == ""
    assert obj.lease_ttl_s == DEFAULT_LEASE_TTL_S
    assert [s.ranges for s in obj.subnets] == [
        ((ip("198.18.20.1"), ip("198.18.20.14")),),
        ((ip("198.18.21.0"), ip("198.18.21.1")),),
        ((ip("198.18.22.7"), ip("198.18.22.7")),),
    ]
    assert obj.size == 14 + 2 + 1


def test_pool_ranges_are_sorted_and_clipped_to_usable_addresses() -> None:
    obj = parse_object(pool_doc([{"network": "198.18.0.0/24",
                                  "ranges": ["198.18.0.200-198.18.0.255", "198.18.0.0-198.18.0.9"]}]))
    assert isinstance(obj, AddressPool)
    assert obj.subnets[0].ranges == ((ip("198.18.0.1"), ip("198.18.0.9")), (ip("198.18.0.200"), ip("198.18.0.254")))


def test_pool_lease_ttl_zero_is_allowed() -> None:
    obj = parse_object(pool_doc([{"network": "198.18.0.0/24"}], lease_ttl="0s"))
    assert isinstance(obj, AddressPool) and obj.lease_ttl_s == 0.0


@pytest.mark.parametrize(("pools", "ttl", "field"), [
    ([{"network": "198.18.0.0/33"}], "1h", "spec.pools[0].network"),
    ([{"network": "198.18.0.1/24"}], "1h", "spec.pools[0].network"),  # host bits set
    ([{"network": "not-a-cidr"}], "1h", "spec.pools[0].network"),
    ([{"network": "::c612:0/120"}], "1h", "spec.pools[0].network"),
    ([{}], "1h", "spec.pools[0].network"),
    (["198.18.0.0/24"], "1h", "spec.pools[0]"),
    ([{"network": "198.18.0.0/24"}, {"network": "198.18.0.128/25"}], "1h", "spec.pools[1].network"),
    ([{"network": "198.18.0.0/24", "ranges": ["198.18.1.1-198.18.1.5"]}], "1h", "spec.pools[0].ranges[0]"),
    ([{"network": "198.18.0.0/24", "ranges": ["198.18.0.10-198.18.1.5"]}], "1h", "spec.pools[0].ranges[0]"),
    ([{"network": "198.18.0.0/24", "ranges": ["198.18.0.5", "198.18.0.20-198.18.0.10"]}], "1h",
     "spec.pools[0].ranges[1]"),
    ([{"network": "198.18.0.0/24", "ranges": ["198.18.0.1-198.18.0.x"]}], "1h", "spec.pools[0].ranges[0]"),
    ([{"network": "198.18.0.0/24", "ranges": ["198.18.0.10-198.18.0.20", "198.18.0.15-198.18.0.30"]}], "1h",
     "spec.pools[0].ranges"),
    ([{"network": "198.18.0.0/24", "ranges": ["198.18.0.10-198.18.0.20", "198.18.0.20"]}], "1h",
     "spec.pools[0].ranges"),
    ([{"network": "198.18.0.0/24", "ranges": ["198.18.0.1-198.18.0.100", "198.18.0.40-198.18.0.50",
                                              "198.18.0.60-198.18.0.70"]}], "1h", "spec.pools[0].ranges"),
    ([{"network": "198.18.0.0/24", "routes": [{"destination": "198.19.0.0/24", "via": "198.18.1.1"}]}], "1h",
     "spec.pools[0].routes[0].via"),
    ([{"network": "198.18.0.0/24", "routes": [{"destination": "198.19.0.0/24", "via": "gw"}]}], "1h",
     "spec.pools[0].routes[0].via"),
    ([{"network": "198.18.0.0/24", "routes": [{"destination": "198.19.0.1/24", "via": "198.18.0.1"}]}], "1h",
     "spec.pools[0].routes[0].destination"),
    ([{"network": "198.18.0.0/24", "routes": ["198.19.0.0/24"]}], "1h", "spec.pools[0].routes[0]"),
    ([{"network": "198.18.0.0/24"}], "forever", "spec.leaseTTL"),
    ([{"network": "198.18.0.0/24"}], "10", "spec.leaseTTL"),
    ([], "1h", "spec.pools"),
])
def test_pool_invalid(pools: list[Any], ttl: str, field: str) -> None:
    exc = invalid(pool_doc(pools, lease_ttl=ttl))
    assert exc.field == field
    assert exc.obj == "IPAddressPool my-namespace/my-net-pool"
    assert field in str(exc)


def test_pool_without_pools_is_invalid() -> None:
    doc = manifest("IPAddressPool", "p", {"leaseTTL": "1h"}, namespace="ns")
    assert invalid(doc).field == "spec.pools"


def test_pool_lease_ttl_must_be_a_string() -> None:
    doc = pool_doc([{"network": "198.18.0.0/24"}])
    doc["spec"]["leaseTTL"] = 3600
    assert invalid(doc).field == "spec.leaseTTL"


# -- IPAddress ------------------------------------------------------------------------------------

def test_ip_address_auto() -> None:
    obj = parse_object(manifest("IPAddress", "a", {"networkRef": {"kind": "Network", "name": "my-network"}},
                                namespace="my-namespace",
                                labels={"network.deckhouse.io/owner-pod-uid": "pod-uid-1"}))
    assert isinstance(obj, IPAddressObject)
    assert obj.meta.key == "IPAddress/my-namespace/a"
    assert obj.type == "Auto"
    assert obj.static_ip == ""
    assert obj.network_ref == Ref("Network", "my-network")
    assert obj.owner_pod_uid == "pod-uid-1"


def test_ip_address_static() -> None:
    obj = parse_object(manifest("IPAddress", "pod-b-net1-static", {
        "networkRef": {"kind": "Network", "name": "my-network"}, "type": "Static", "static": {"ip": "198.18.10.50"},
    }, namespace="my-namespace"))
    assert isinstance(obj, IPAddressObject)
    assert obj.type == "Static"
    assert obj.static_ip == "198.18.10.50"
    assert obj.owner_pod_uid == ""


def test_cluster_ip_address_on_cluster_network() -> None:
    obj = parse_object(manifest("ClusterIPAddress", "c", {"networkRef": {"kind": "ClusterNetwork", "name": "cn"}}))
    assert isinstance(obj, IPAddressObject)
    assert obj.meta.key == "ClusterIPAddress/c"
    assert obj.network_ref == Ref("ClusterNetwork", "cn")


@pytest.mark.parametrize(("kind", "spec", "field"), [
    ("IPAddress", {"networkRef": {"kind": "Network", "name": "n"}, "type": "Static"}, "spec.static"),
    ("IPAddress", {"networkRef": {"kind": "Network", "name": "n"}, "type": "Static", "static": {}}, "spec.static.ip"),
    ("IPAddress", {"networkRef": {"kind": "Network", "name": "n"}, "type": "Static", "static": {"ip": "198.18.0.256"}},
     "spec.static.ip"),
    ("IPAddress", {"networkRef": {"kind": "Network", "name": "n"}, "type": "Dynamic"}, "spec.type"),
    ("IPAddress", {}, "spec.networkRef"),
    ("IPAddress", {"networkRef": {"kind": "Network"}}, "spec.networkRef.name"),
    ("IPAddress", {"networkRef": {"kind": "Pod", "name": "n"}}, "spec.networkRef.kind"),
    ("ClusterIPAddress", {"networkRef": {"kind": "Network", "name": "n"}}, "spec.networkRef.kind"),
])
def test_ip_address_invalid(kind: str, spec: dict[str, Any], field: str) -> None:
    exc = invalid(manifest(kind, "addr", spec, namespace="ns" if kind == "IPAddress" else None))
    assert exc.field == field


def test_the_parser_still_serves_an_auto_ip_address_stored_with_a_static_ip() -> None:
    """The webhook refuses to store one (``refused_when_written``); one stored before is served as it was: refused
    here, its address (and the pod using it) would stop being served."""
    doc = manifest("IPAddress", "a", {"networkRef": {"kind": "Network", "name": "n"}, "type": "Auto",
                                      "static": {"ip": "198.18.41.9"}}, namespace="ns")
    obj = parse_object(doc)
    assert isinstance(obj, IPAddressObject) and obj.type == "Auto" and obj.static_ip == ""
    (why,) = refused_when_written(doc, obj)
    assert why.field == "spec.static.ip" and "198.18.41.9" in why.problem


def test_a_pool_entry_with_no_address_is_refused_when_created_and_warned_of_when_edited() -> None:
    """An edit cutting an entry's ranges to nothing drains the subnet (its leases stay until let go): let through with
    a warning where a user writes; a pool created so would only ever fail "pool exhausted"."""
    doc = manifest("IPAddressPool", "p", {"pools": [{"network": "198.18.0.0/24", "ranges": ["198.18.0.0"]},
                                                    {"network": "198.18.1.0/24"}]}, namespace="ns")
    obj = parse_object(doc)
    (why,) = refused_when_written(doc, obj)
    assert why.field == "spec.pools[0]" and "198.18.0.0/24" in why.problem
    before = manifest("IPAddressPool", "p", {"pools": [{"network": "198.18.0.0/24"}, {"network": "198.18.1.0/24"}]},
                      namespace="ns")
    assert refused_when_written(doc, obj, stored=parse_object(before)) == () and warned_when_written(obj) == ()
    (warned,) = warned_when_written(obj, edit=True)
    assert warned.msg.startswith("IPAddressPool ns/p: spec.pools[0]: 198.18.0.0/24 has no address to hand out")
    assert [w.msg for w in warned_when_written(obj, old=before)] == [warned.msg], "the stored pool known"


def test_an_edit_is_refused_a_new_empty_pool_entry_and_warned_only_of_the_entries_it_empties() -> None:
    """Only an entry the stored pool had is drained by cutting its ranges to nothing: a new one with no address
    (a typo'd range) is refused as on create. And the warning is of what this edit empties: a pool stored with an
    entry drained already was warned of again at every later edit, even of a label."""
    good = {"network": "198.18.0.0/24", "ranges": ["198.18.0.10-198.18.0.20"]}
    drained = {"network": "198.18.0.0/24", "ranges": ["198.18.0.0"]}
    new_empty = {"network": "198.18.1.0/24", "ranges": ["198.18.1.255"]}
    stored = pool_doc([good])
    added = pool_doc([good, new_empty])
    (why,) = brought_by_write(added, parse_object(added), stored, lambda name: None)
    assert why.field == "spec.pools[1]" and "198.18.1.0/24 has no address" in why.problem, why
    emptied = pool_doc([drained])
    assert brought_by_write(emptied, parse_object(emptied), stored, lambda name: None) == (), "a drain"
    (warned,) = warned_when_written(parse_object(emptied), old=stored)
    assert warned.field == "spec.pools[0]" and "kept" in warned.problem, warned
    relabelled = copy.deepcopy(emptied)
    relabelled["metadata"]["labels"] = {"team": "x"}
    assert brought_by_write(relabelled, parse_object(relabelled), emptied, lambda name: None) == (), "stored so"
    assert warned_when_written(parse_object(relabelled), old=emptied) == (), "emptied before: not told again"
    assert brought_by_write(added, parse_object(added), {"kind": "IPAddressPool", "spec": "garbage"},
                            lambda name: None), "nothing sure it had"


def test_addresses_with_a_zone_are_refused_when_written_and_served_without_it() -> None:
    """Python's ipaddress takes ``2001:2:0:7::98%eth0`` (Go's net.ParseIP does not) and kept the zone in the text
    served (a Static's ``static_ip``, a route's ``via``): compared with a lease's address, never equal; given to
    netlink, an OSError. Refused where a user writes; one stored before is served without the zone."""
    static = manifest("IPAddress", "a", {"networkRef": {"kind": "Network", "name": "n"}, "type": "Static",
                                         "static": {"ip": "2001:2:0:7::98%eth0"}}, namespace="ns")
    obj = parse_object(static)
    assert isinstance(obj, IPAddressObject) and obj.static_ip == "2001:2:0:7::98"
    (why,) = refused_when_written(static, obj)
    assert why.field == "spec.static.ip" and "%eth0" in why.problem and "zone" in why.problem
    assert brought_by_write(static, obj, copy.deepcopy(static), lambda name: None) == (), "stored so: kept"
    pool = pool_doc([{"network": "2001:2:0:7::/64", "ranges": ["2001:2:0:7::10%eth0-2001:2:0:7::20"],
                      "routes": [{"destination": "2001:2:0:8::/64", "via": "2001:2:0:7::1%eth0"}]}])
    parsed = parse_object(pool)
    assert isinstance(parsed, AddressPool) and parsed.subnets[0].routes == (PoolRoute("2001:2:0:8::/64",
                                                                                      "2001:2:0:7::1"),)
    assert [w.field for w in refused_when_written(pool, parsed)] == ["spec.pools[0].ranges[0]",
                                                                      "spec.pools[0].routes[0].via"]
    claim = {"apiVersion": "k8s.cni.cncf.io/v1alpha1", "kind": "IPAMClaim", "metadata": {"name": "c", "namespace": "ns"},
             "spec": {"network": "n", "ipRequests": ["2001:2:0:7::5%eth0/64"]}}
    got = parse_object(claim)
    assert isinstance(got, IpamClaim) and got.ip_requests == ("2001:2:0:7::5/64",)
    assert [w.field for w in refused_when_written(claim, got)] == ["spec.ipRequests[0]"]


def test_a_static_with_a_zone_id_is_not_flagged_outside_the_ranges_every_round() -> None:
    """The reconciler compares a Static's ``static_ip`` with its lease's address as text: with the zone kept, a Static
    outside the ranges (allowed) was flagged 'outside' and logged 'pool changed' every round."""
    from tests.unit.test_attacher import Node, obj
    from tests.unit.test_reconcile import reconciler

    node = Node()
    ref = {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "p6"}}
    node.source.add(obj("IPAddressPool", "p6", {"pools": [{"network": "2001:2:0:7::/64",
                                                           "ranges": ["2001:2:0:7::10-2001:2:0:7::20"]}]}))
    node.source.add(obj("Network", "n6", {"networkClass": "cls", "ipam": ref}))
    for name, address in (("plain", "2001:2:0:7::99"), ("zoned", "2001:2:0:7::98%eth0")):
        node.source.add(obj("IPAddress", name, {"networkRef": {"kind": "Network", "name": "n6"}, "type": "Static",
                                                "static": {"ip": address}}))
    rec = reconciler(node)
    rec.run_once()
    rec.run_once()
    flags = {lease.address: lease.outside_ranges for lease in node.store.all_leases()}
    assert flags == {"2001:2:0:7::99": False, "2001:2:0:7::98": False}, flags


@pytest.mark.parametrize("network", ["fe80::/64", "fe80::/10", "fe00::/7", "ff05::/64", "224.0.1.0/24"])
def test_a_link_local_pool_is_refused_when_written(network: str) -> None:
    """An IPv6 link-local pool passed ADD but never CHECK (the kernel's own fe80 address on every link is left out of
    what CHECK compares, and so were the pool's); a multicast address is no interface's. Refused where a user writes,
    naming the field; one stored before is still served (its pods keep their addresses)."""
    doc = pool_doc([{"network": "198.18.0.0/24"}, {"network": network}])
    obj = parse_object(doc)
    assert isinstance(obj, AddressPool) and str(obj.subnets[1].network) == network, "served"
    (why,) = refused_when_written(doc, obj)
    assert why.field == "spec.pools[1].network" and network in why.problem, why
    assert [p.msg for p in refused_when_written(doc, obj, stored=obj)] == [why.msg], "an edit bringing it too"
    assert brought_by_write(doc, obj, copy.deepcopy(doc), lambda name: None) == (), "stored so: kept"
    for fine in ("169.254.0.0/16", "2001:2:0:7::/64", "fc00::/64"):
        ok = pool_doc([{"network": fine}])
        assert refused_when_written(ok, parse_object(ok)) == (), fine


def test_a_write_is_refused_only_for_what_the_stored_object_did_not_have() -> None:
    def auto(ip: str | None, **metadata: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {"networkRef": {"kind": "Network", "name": "n"}, "type": "Auto"}
        if ip:
            spec["static"] = {"ip": ip}
        return manifest("IPAddress", "a", spec, namespace="ns", **metadata)

    def no_class(name: str) -> NetworkClass | None:
        return None

    new = auto("198.18.41.9", labels={"team": "x"})
    obj = parse_object(new)
    assert [p.field for p in brought_by_write(new, obj, None, no_class)] == ["spec.static.ip"], "a create"
    assert [p.field for p in brought_by_write(new, obj, auto(None), no_class)] == ["spec.static.ip"]
    assert brought_by_write(new, obj, auto("198.18.41.9"), no_class) == (), "stored so: kept"
    assert brought_by_write(new, obj, {"kind": "IPAddress", "spec": "garbage"}, no_class), "nothing sure it had"
    flat = parse_object(manifest("NetworkClass", "flat", {}))
    assert isinstance(flat, NetworkClass)
    classes = {"flat": flat}
    net = manifest("Network", "n", {"networkClass": "flat", "vlan": {"id": 650}}, namespace="ns")
    assert brought_by_write(net, parse_object(net), None, classes.get)
    assert not brought_by_write(net, parse_object(net), None, no_class), "a class not known: nothing sure"


# -- Pod ------------------------------------------------------------------------------------------

def test_pod() -> None:
    ann = {"network.deckhouse.io/networks-spec": '[{"type": "Network", "name": "my-network"}]'}
    obj = parse_object({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": "pod-a", "namespace": "my-namespace", "uid": "1234", "annotations": ann},
                        "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "nginx"}]}})
    assert isinstance(obj, Pod)
    assert obj.meta.key == "Pod/my-namespace/pod-a"
    assert obj.meta.uid == "1234"
    assert dict(obj.annotations) == ann
    assert obj.node_name == "node-1"


def test_pod_without_annotations_or_spec() -> None:
    obj = parse_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}})
    assert isinstance(obj, Pod)
    assert obj.meta.namespace == "default"
    assert dict(obj.annotations) == {}
    assert obj.node_name == ""


def test_pod_annotation_values_must_be_strings() -> None:
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "annotations": {"a": 1}}}
    assert invalid(doc).field == "metadata.annotations"


# -- envelope -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("doc", "field"), [
    ({"apiVersion": "network.deckhouse.io/v1", "kind": "NetworkClass", "metadata": {"name": "c"}}, "apiVersion"),
    ({"kind": "Network", "metadata": {"name": "n"}, "spec": {"networkClass": "c"}}, "apiVersion"),
    ({"apiVersion": API_VERSION, "kind": "Pod", "metadata": {"name": "p"}}, "apiVersion"),
    ({"apiVersion": "v1", "kind": "Deployment", "metadata": {"name": "d"}}, "kind"),
    ({"apiVersion": API_VERSION, "metadata": {"name": "d"}}, "kind"),
    ({"apiVersion": API_VERSION, "kind": "NetworkClass"}, "metadata.name"),
    ({"apiVersion": API_VERSION, "kind": "NetworkClass", "metadata": {"name": 5}}, "metadata.name"),
    ({"apiVersion": API_VERSION, "kind": "NetworkClass", "metadata": {"name": "Bad_Name"}}, "metadata.name"),
    ({"apiVersion": API_VERSION, "kind": "NetworkClass", "metadata": {"name": "x" * 254}}, "metadata.name"),
    ({"apiVersion": API_VERSION, "kind": "Network", "metadata": {"name": "n", "namespace": "a.b"},
      "spec": {"networkClass": "c"}}, "metadata.namespace"),
    ({"apiVersion": API_VERSION, "kind": "NetworkClass", "metadata": {"name": "c"}, "spec": ["x"]}, "spec"),
])
def test_envelope_invalid(doc: dict[str, Any], field: str) -> None:
    assert invalid(doc).field == field


def test_non_mapping_manifest_is_invalid() -> None:
    assert invalid(["not", "a", "mapping"]).obj == "manifest"


def test_manifest_invalid_is_an_invalid_config_naming_source_and_field() -> None:
    doc = pool_doc([{"network": "198.18.0.0/24"}], lease_ttl="soon")
    exc = invalid(doc, source="/etc/plexus/pools.yaml#2")
    assert isinstance(exc, InvalidConfig)
    assert exc.code == 7
    assert exc.source == "/etc/plexus/pools.yaml#2"
    assert exc.field == "spec.leaseTTL"
    assert exc.details == "spec.leaseTTL"
    assert str(exc).startswith("/etc/plexus/pools.yaml#2: IPAddressPool my-namespace/my-net-pool: spec.leaseTTL: ")


def test_parse_object_does_not_change_its_input() -> None:
    doc = pool_doc([{"network": "198.18.0.0/24", "ranges": ["198.18.0.20-198.18.0.30", "198.18.0.2-198.18.0.9"]}])
    before = copy.deepcopy(doc)
    parse_object(doc)
    assert doc == before


def test_source_is_recorded_in_meta() -> None:
    obj = parse_object(manifest("NetworkClass", "c"), source="dir/c.yaml")
    assert obj.meta.source == "dir/c.yaml"
    assert obj.meta.display == "NetworkClass c"


# -- usable_bounds / parse_duration -----------------------------------------------------------------

@pytest.mark.parametrize(("cidr", "first", "last"), [
    ("198.18.0.0/24", "198.18.0.1", "198.18.0.254"),
    ("198.18.0.0/30", "198.18.0.1", "198.18.0.2"),
    ("198.18.0.4/31", "198.18.0.4", "198.18.0.5"),
    ("198.18.0.9/32", "198.18.0.9", "198.18.0.9"),
    ("198.18.0.0/15", "198.18.0.1", "198.19.255.254"),
])
def test_usable_bounds(cidr: str, first: str, last: str) -> None:
    assert usable_bounds(ipaddress.IPv4Network(cidr)) == (ip(first), ip(last))


def test_usable_bounds_counts() -> None:
    def count(cidr: str) -> int:
        lo, hi = usable_bounds(ipaddress.IPv4Network(cidr))
        return hi - lo + 1

    assert count("198.18.0.0/24") == 254
    assert count("198.18.0.0/31") == 2
    assert count("198.18.0.0/32") == 1


@pytest.mark.parametrize(("text", "seconds"), [
    ("1h", 3600.0), ("1h30m", 5400.0), ("90s", 90.0), ("30m", 1800.0), ("500ms", 0.5),
    ("1.5h", 5400.0), ("2h0m5s", 7205.0), ("0s", 0.0), (" 10m ", 600.0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "   ", "1", "h", "1x", "1h30", "1h 30m", "-1s", "1d", "s1", "1h-"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("name", ["éééééééé", "net\x001"])
def test_an_interface_name_is_measured_in_bytes_as_the_kernel_does(name: str) -> None:
    """IFNAMSIZ counts bytes: eight 'é' are 16 bytes, which netlink refuses at ADD; a NUL ends a kernel string. An
    IPAMClaim's interface (and a class's parent NIC) is refused when parsed, as the annotations' names are."""
    claim = {"apiVersion": "k8s.cni.cncf.io/v1alpha1", "kind": "IPAMClaim",
             "metadata": {"name": "c", "namespace": "ns"}, "spec": {"network": "n", "interface": name}}
    with pytest.raises(ManifestInvalid) as info:
        parse_object(claim)
    assert info.value.field == "spec.interface"
    assert parse_object({**claim, "spec": {"network": "n", "interface": "ééé"}}), "six bytes are fine"


@pytest.mark.parametrize("name", ["an-interface-name-too-long", "eth 0", "a/b"])
def test_a_bad_underlay_interface_is_refused_naming_the_field(name: str) -> None:
    """``parentNodeNetworkInterfaces.names`` are checked with ``valid_ifname``; ``spec.vxlan.underlayInterface`` is
    taken as any string. One the kernel cannot name (> 15 bytes) reaches ``index_of`` -> RTM_GETLINK, whose
    NetlinkError (ERANGE here: checked on this kernel), not in GONE, is re-raised raw: ADD answers 999 naming
    nothing, for ever."""
    with pytest.raises(ManifestInvalid) as info:
        parse_object(manifest("NetworkClass", "c", {"vxlan": {"vniPool": ["5000"], "underlayInterface": name}}))
    assert "spec.vxlan.underlayInterface" in str(info.value)

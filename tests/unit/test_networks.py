"""Which interfaces a pod asks for (``ipamd.verbs.networks``), over a fake source and a fake disk: NAD
resolution as NPWG §3 says, namespace isolation, capabilities, interface names across both dialects, the
cluster network and the default networks, and what each delegate is recorded to get."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cni.errors import AnnotationInvalid, InvalidConfig, ObjectNotFound
from cni.types import Interface, Result
from ipamd.ipam.addresses import Ipam
from ipamd.model.objects import API_VERSION, parse_object
from ipamd.model.pluginconf import PluginConfig, parse_plugin_config
from ipamd.verbs.call import CniCall
from ipamd.verbs.networks import Networks, Wanted
from tests.fakes.source import FakeSource
from tests.fakes.store import MemoryStore

NS = "apps"
ANN = "k8s.v1.cni.cncf.io/networks"
BRIDGE = {"cniVersion": "0.3.1", "type": "bridge", "bridge": "br1"}
STATIC = {"cniVersion": "0.3.1", "name": "static", "plugins": [
    {"type": "macvlan", "capabilities": {"ips": True}, "master": "eth0"}, {"type": "tuning", "capabilities": {"mac": True}}]}


def nad(name: str, config: dict[str, Any] | None, namespace: str = NS) -> Any:
    spec = {"config": json.dumps(config)} if config is not None else {}
    return parse_object({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                         "metadata": {"name": name, "namespace": namespace}, "spec": spec})


def pod(annotations: dict[str, str], namespace: str = NS) -> Any:
    return parse_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": namespace,
                                                                        "uid": "u", "annotations": annotations}})


def world() -> FakeSource:
    return FakeSource(
        nad("bridge-net", BRIDGE), nad("static", STATIC), nad("on-disk", None), nad("shared", BRIDGE, "shared"),
        nad("other", BRIDGE, "other"), nad("cbr0", {**BRIDGE, "name": "cbr0"}, "kube-system"),
        parse_object({"apiVersion": API_VERSION, "kind": "NetworkClass", "metadata": {"name": "cls"}, "spec": {}}),
        parse_object({"apiVersion": API_VERSION, "kind": "Network", "metadata": {"name": "net-a", "namespace": NS},
                      "spec": {"networkClass": "cls"}}),
    )


DISK = {("/etc/cni/multus/net.d", "on-disk"): {"cniVersion": "1.0.0", "name": "on-disk", "plugins": [{"type": "ptp"}]},
        ("/etc/cni/net.d", "node-net"): {"cniVersion": "1.0.0", "name": "node-net", "plugins": [{"type": "ptp"}]}}


def wanted(annotations: dict[str, str], conf: dict[str, Any] | None = None, namespace: str = NS,
           prev: Result | None = None, source: FakeSource | None = None) -> list[Wanted]:
    src = source or world()
    networks = Networks(src, Ipam(MemoryStore(), src), lambda d, n: DISK.get((d, n)))
    call = CniCall("ADD", "c1", "/run/netns/p", "eth0", {}, {"runtimeConfig": {"portMappings": [1],
                                                                           "io.kubernetes.cri.pod-annotations": {}}},
                   "K8S_POD_NAMESPACE=apps;K8S_POD_NAME=p", "/opt/cni/bin:/usr/lib/cni")
    return networks.wanted(call, pod(annotations, namespace), prev, parse_plugin_config(conf or {}))


def delegated(w: Wanted) -> dict[str, Any]:
    assert w.request.delegate is not None
    return w.request.delegate.to_dict()


def test_a_nad_with_its_config_and_one_on_disk() -> None:
    a, b = wanted({ANN: "bridge-net, on-disk"})
    assert (a.kind, a.target.key, a.target.name) == ("delegate", f"NetworkAttachmentDefinition/{NS}/bridge-net",
                                                     f"{NS}/bridge-net")
    inv = delegated(a)
    assert inv["conflist"] == {"cniVersion": "0.3.1", "name": "bridge-net", "plugins": [
        {"type": "bridge", "bridge": "br1"}]}
    assert (inv["ifname"], inv["container_id"], inv["netns"]) == ("net1", "c1", "/run/netns/p")
    assert inv["cni_args"] == "IgnoreUnknown=1;K8S_POD_NAMESPACE=apps;K8S_POD_NAME=p"
    assert inv["bin_dirs"] == ("/opt/cni/bin", "/usr/lib/cni")
    assert delegated(b)["conflist"]["plugins"] == [{"type": "ptp"}], "no spec.config: the file named like the NAD"


def test_nads_that_cannot_be_had() -> None:
    with pytest.raises(ObjectNotFound) as err:
        wanted({ANN: "ghost"})
    assert "NetworkAttachmentDefinition apps/ghost" in err.value.msg and err.value.details == f"{ANN}[0].name"
    src = world()
    src.add(nad("empty", None))
    with pytest.raises(ObjectNotFound) as err:
        wanted({ANN: "empty"}, source=src)
    assert "has no spec.config" in err.value.msg


def test_namespace_isolation() -> None:
    assert len(wanted({ANN: "other/other"})) == 1, "without isolation any namespace's NAD"
    isolated = {"namespaceIsolation": True, "globalNamespaces": "shared"}
    with pytest.raises(ObjectNotFound) as err:
        wanted({ANN: "other/other"}, isolated)
    assert "namespaceIsolation" in err.value.msg and err.value.details == f"{ANN}[0].namespace"
    assert len(wanted({ANN: "shared/shared"}, isolated)) == 1


def test_runtime_config_needs_a_plugin_with_the_capability() -> None:
    (w,) = wanted({ANN: json.dumps([{"name": "static", "ips": ["192.0.2.5/24"], "mac": "02:00:00:00:00:05",
                                     "cni-args": {"k": "v"}}])})
    inv = delegated(w)
    assert inv["runtime_config"] == {"ips": ["192.0.2.5/24"], "mac": "02:00:00:00:00:05"}
    assert inv["args"] == {"cni": {"k": "v"}}
    with pytest.raises(AnnotationInvalid) as err:
        wanted({ANN: json.dumps([{"name": "bridge-net", "ips": ["192.0.2.5/24"]}])})
    assert err.value.details == f"{ANN}[0].ips" and "capability" in err.value.msg


def test_interface_names_across_both_dialects() -> None:
    spec = json.dumps([{"type": "Network", "name": "net-a"}])
    ws = wanted({ANN: "bridge-net, static@ext0, on-disk", "network.deckhouse.io/networks-spec": spec})
    assert [(w.target.name, w.request.if_name) for w in ws] == [
        ("net-a", "net1"), (f"{NS}/bridge-net", "net2"), (f"{NS}/static", "ext0"), (f"{NS}/on-disk", "net4")]
    with pytest.raises(AnnotationInvalid) as err:
        wanted({ANN: "bridge-net@net1", "network.deckhouse.io/networks-spec": spec})
    assert err.value.details == f"{ANN}[0].interface" and "networks-spec[0]" in err.value.msg
    with pytest.raises(AnnotationInvalid):
        wanted({ANN: "bridge-net@eth0"})
    with pytest.raises(AnnotationInvalid):
        wanted({ANN: "bridge-net@x1, static@x1"})
    with pytest.raises(AnnotationInvalid):
        wanted({ANN: "bridge-net@net1"}, prev=Result((Interface("net1", sandbox="/run/netns/p"),)))


def test_the_cluster_network_comes_first_as_the_runtimes_interface() -> None:
    first, second = wanted({ANN: "bridge-net"}, {"clusterNetwork": "cbr0"})
    assert (first.request.if_name, first.target.default, first.target.key) == (
        "eth0", True, "NetworkAttachmentDefinition/kube-system/cbr0")
    assert delegated(first)["runtime_config"] == {"portMappings": [1]}, "kubelet's runtimeConfig, for eth0 only"
    assert (second.request.if_name, second.target.default) == ("net1", False)
    (node_net,) = wanted({}, {"clusterNetwork": "node-net"})
    assert node_net.target.key == "Delegate/node-net", "a configuration of the node's own directory"
    (override,) = wanted({"v1.multus-cni.io/default-network": "apps/bridge-net"}, {"clusterNetwork": "cbr0"})
    assert override.target.name == "apps/bridge-net" and override.request.if_name == "eth0"
    with pytest.raises(InvalidConfig):
        wanted({}, {"clusterNetwork": "cbr0"}, prev=Result())
    with pytest.raises(InvalidConfig):
        wanted({}, {"clusterNetwork": "nowhere"})


def test_default_networks_except_in_system_namespaces() -> None:
    conf = {"defaultNetworks": ["apps/bridge-net"], "clusterNetwork": "cbr0"}
    assert [w.request.if_name for w in wanted({}, conf)] == ["eth0", "net1"]
    assert [w.request.if_name for w in wanted({}, conf, namespace="kube-system")] == ["eth0"]


def test_plugin_config_defaults_find_what_a_multus_node_has() -> None:
    conf = PluginConfig()
    assert conf.conf_dir == "/etc/cni/multus/net.d" and conf.cni_config_dir == "/etc/cni/net.d"
    assert conf.plugin_dirs("") == ("/opt/cni/bin",)


def deckhouse(kind: str, name: str, spec: dict[str, Any] | None = None, default: bool = False,
              namespace: str = NS) -> Any:
    md: dict[str, Any] = {"name": name}
    if kind == "Network":
        md["namespace"] = namespace
    if default:
        md["labels"] = {"network.deckhouse.io/default-network": "true"}
    base = {"networkClass": "cls"} if kind == "Network" else {"type": "VLAN", "vlan": {"id": 5}}
    return parse_object({"apiVersion": API_VERSION, "kind": kind, "metadata": md, "spec": {**base, **(spec or {})}})


def with_objects(*objs: Any) -> FakeSource:
    src = world()
    for o in objs:
        src.add(o)
    return src


def test_a_pod_that_asks_for_no_network_gets_its_namespaces_default_else_the_clusters() -> None:
    src = with_objects(deckhouse("Network", "ns-default", default=True), deckhouse("Network", "plain"),
                       deckhouse("ClusterNetwork", "cluster-default", default=True),
                       deckhouse("Network", "elsewhere", default=True, namespace="other-ns"))
    (w,) = wanted({}, source=src)
    assert (w.target.key, w.request.if_name) == (f"Network/{NS}/ns-default", "net1"), "the namespace's wins"
    (w,) = wanted({}, namespace="third", source=src)
    assert w.target.key == "ClusterNetwork/cluster-default", "no default in the namespace: the cluster's"
    assert wanted({"network.deckhouse.io/networks-spec": "[]"}, source=src) == [], "an explicit empty list opts out"
    assert [w.target.name for w in wanted({ANN: "bridge-net"}, source=src)] == [f"{NS}/bridge-net"], \
        "a pod that asks for networks gets what it asks, no default on top"
    assert wanted({}, namespace="kube-system", source=src) == [], "system namespaces get none"
    assert wanted({}, namespace="third", source=world()) == [], "no default anywhere: nothing, as before"


def test_two_default_networks_at_one_level_are_refused_naming_both() -> None:
    src = with_objects(deckhouse("Network", "a", default=True), deckhouse("Network", "b", default=True))
    with pytest.raises(InvalidConfig) as err:
        wanted({}, source=src)
    assert err.value.details == "metadata.labels[network.deckhouse.io/default-network]"
    assert f"Network {NS}/a and Network {NS}/b" in err.value.msg
    src = with_objects(deckhouse("ClusterNetwork", "a", default=True), deckhouse("ClusterNetwork", "b", default=True))
    with pytest.raises(InvalidConfig, match="ClusterNetwork a and ClusterNetwork b"):
        wanted({}, source=src)


def test_a_networks_interface_prefix_names_the_interfaces_the_pod_did_not() -> None:
    src = with_objects(deckhouse("Network", "ext", {"interfacePrefix": "ext"}))
    spec = [{"type": "Network", "name": "ext"}, {"type": "Network", "name": "net-a"},
            {"type": "Network", "name": "ext", "ifName": "mine"}, {"type": "Network", "name": "ext"}]
    ws = wanted({"network.deckhouse.io/networks-spec": json.dumps(spec), ANN: "bridge-net@ext1"}, source=src)
    assert [w.request.if_name for w in ws] == ["ext0", "net2", "mine", "ext2", "ext1"], \
        "the same network twice: two interfaces; a name the pod gave wins, and is skipped"


def test_a_prefix_whose_names_outgrow_fifteen_characters_is_refused() -> None:
    src = with_objects(deckhouse("Network", "long", {"interfacePrefix": "abcdefghijklmn"}))
    spec = json.dumps([{"type": "Network", "name": "long"}] * 10)
    assert wanted({"network.deckhouse.io/networks-spec": spec}, source=src)[-1].request.if_name == "abcdefghijklmn9"
    spec = json.dumps([{"type": "Network", "name": "long"}] * 11)
    with pytest.raises(InvalidConfig) as err:
        wanted({"network.deckhouse.io/networks-spec": spec}, source=src)
    assert err.value.details == "spec.interfacePrefix" and "'abcdefghijklmn10'" in err.value.msg


def test_a_routing_table_serves_one_interface_of_a_pod() -> None:
    """A table holds one route per destination: a second interface in it would send its traffic out of the first."""
    ipam = {"ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "p"}}}
    pool = parse_object({"apiVersion": API_VERSION, "kind": "IPAddressPool", "metadata": {"name": "p", "namespace": NS},
                         "spec": {"pools": [{"network": "198.18.60.0/24"}]}})
    src = with_objects(pool, deckhouse("Network", "t1", {"routingTable": 100, **ipam}),
                       deckhouse("Network", "t2", {"routingTable": 100, **ipam}),
                       deckhouse("Network", "t3", {"routingTable": 101, **ipam}),
                       deckhouse("Network", "bare", {"routingTable": 100}))  # no pool, no addresses
    ok = [{"type": "Network", "name": "t1"}, {"type": "Network", "name": "t3"},  # no addresses, no policy routing:
          {"type": "Network", "name": "t1", "skipIPAssignment": True},
          {"type": "Network", "name": "t1", "interfaceType": "tap"},  # a TAP's addresses are the guest's
          {"type": "Network", "name": "bare"}]
    assert len(wanted({"network.deckhouse.io/networks-spec": json.dumps(ok)}, source=src)) == 5
    for second, words in (("t1", "the same network"), ("t2", "Network t1")):
        spec = [{"type": "Network", "name": "t1"}, {"type": "Network", "name": "t3"},
                {"type": "Network", "name": second}]
        with pytest.raises(InvalidConfig) as err:
            wanted({"network.deckhouse.io/networks-spec": json.dumps(spec)}, source=src)
        assert err.value.details == "networks-spec[2]", err.value
        assert "table 100" in err.value.msg and words in err.value.msg, err.value.msg

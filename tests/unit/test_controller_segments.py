"""The controller's Network statuses, in-process (no API server): the one ID picker it shares with the
nodes, conditions that keep their ``lastTransitionTime`` while their status holds, ``observedGeneration``
from ``metadata.generation``, and a Network deleted and made again getting its status again."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client

from ipamd.kube.controller import Controller
from ipamd.model.names import bridge_name
from ipamd.model.objects import API_VERSION, Network, parse_object
from ipamd.model.segments import pods_on_segment
from tests.fakes.source import FakeSource


class Objects:
    """The custom-objects API as the controller uses it: status patches recorded, nothing else expected."""

    def __init__(self) -> None:
        self.patched: list[tuple[str, str, dict[str, Any]]] = []

    def patch_status(self, kind: str, name: str, status: dict[str, Any], namespace: str = "",
                     resource_version: str = "", *, field_manager: str = "") -> None:
        self.patched.append((kind, name, status))

    def create(self, kind: str, body: dict[str, Any], namespace: str = "") -> None:
        raise AssertionError(f"unexpected create of a {kind}")

    def delete(self, kind: str, name: str, namespace: str = "", resource_version: str = "") -> None:
        raise AssertionError(f"unexpected delete of {kind} {name}")

    def patch(self, kind: str, name: str, body: dict[str, Any], namespace: str = "") -> None:
        raise AssertionError(f"unexpected patch of {kind} {name}")

    def get(self, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        raise AssertionError(f"unexpected read of {kind} {name}")


class Source(FakeSource):
    node_name = "ctl"

    def __init__(self, *objs: Any) -> None:
        super().__init__(*objs)
        self.objects = Objects()  # the controller's API
        self.raw: dict[str, list[dict[str, Any]]] = {}

    def items(self, kind: str) -> list[dict[str, Any]]:
        return self.raw.get(kind, [])

    def by_index(self, kind: str, index: str, key: Any) -> list[dict[str, Any]]:
        assert index == "pool"
        return [i for i in self.raw.get(kind, []) if i["spec"]["pool"] == key]


def obj(kind: str, name: str, spec: dict[str, Any], status: dict[str, Any] | None = None, **md: Any) -> Any:
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name, **md}, "spec": spec}
    if kind == "Network":
        doc["metadata"]["namespace"] = "ns"
    if status is not None:
        doc["status"] = status
    return parse_object(doc)


def controller(*objs: Any) -> tuple[Controller, Source]:
    src = Source(obj("NetworkClass", "vl", {"vlan": {"idPool": ["600-601"]}}),
                 obj("NetworkClass", "vx", {"vxlan": {"vniPool": ["5000"]}}), *objs)
    ctl = Controller(client.ApiClient(), src, "plexus-system")
    return ctl, src


def statuses(src: Source) -> dict[str, dict[str, Any]]:
    return {name: status for _, name, status in src.objects.patched}


def test_ids_come_from_the_shared_picker_with_its_reasons() -> None:
    ctl, src = controller(obj("Network", "a", {"networkClass": "vl"}, uid="ua"),
                          obj("Network", "b", {"networkClass": "vl", "vlan": {"id": 601}}, uid="ub"),
                          obj("Network", "c", {"networkClass": "vl"}, uid="uc"),
                          obj("Network", "d", {"networkClass": "vl", "vlan": {"id": 900}}, uid="ud"),
                          obj("Network", "x", {"networkClass": "vx"}, uid="ux"),
                          obj("Network", "y", {"networkClass": "vx"}, uid="uy"),
                          obj("ClusterNetwork", "fixed", {"type": "VLAN", "networkClass": "vl", "vlan": {"id": 42}}))
    ctl.assign_segments()
    got = statuses(src)
    assert got["b"]["vlanID"] == 601 and got["a"]["vlanID"] == 600, "asked-for IDs honoured, the rest in order"
    ready = {n: next(c for c in s["conditions"] if c["type"] == "Ready") for n, s in got.items()}
    assert ready["c"]["status"] == "False" and ready["c"]["message"] == "no free VLAN ID left in the class's pool"
    assert ready["d"]["message"] == "VLAN ID 900 is not in the class's pool"
    assert got["x"]["vni"] == 5000 and got["x"]["vlanID"] == 0 and got["x"]["bridgeName"] == "plx-vb-5000"
    assert ready["y"]["message"] == "no free VNI left in the class's pool", "a VXLAN network's ID is a VNI"
    assert got["fixed"]["vlanID"] == 42, "a ClusterNetwork's own ID is the administrator's, not the pool's"


def test_conditions_keep_their_time_while_their_status_holds_and_generation_is_observed() -> None:
    old = "2026-01-01T00:00:00Z"
    conds = [{"type": "Ready", "status": "True", "reason": "NetworkReady", "message": "", "lastTransitionTime": old},
             {"type": "AllNodeAttachementsAreReady", "status": "False", "reason": "x", "message": "",
              "lastTransitionTime": old}]
    ctl, src = controller(obj("Network", "a", {"networkClass": "vl"}, {"vlanID": 600, "conditions": conds},
                              uid="ua", generation=7))
    src.raw["NodeNetworkInterfaceAttachment"] = [
        {"spec": {"networkRef": {"kind": "Network", "namespace": "ns", "name": "a"}},
         "status": {"conditions": [{"type": "Ready", "status": "True"}]}}]
    ctl.assign_segments()
    status = statuses(src)["a"]
    times = {c["type"]: c["lastTransitionTime"] for c in status["conditions"]}
    assert times["Ready"] == old, "Ready was True and still is: its transition time stays"
    assert times["AllNodeAttachementsAreReady"] != old, "it turned True now"
    assert status["observedGeneration"] == 7
    assert (status["nodeAttachementsCount"], status["readyNodeAttachementsCount"]) == (1, 1)


def test_a_status_is_written_once_until_something_changes_or_the_network_is_made_again() -> None:
    ctl, src = controller(obj("Network", "a", {"networkClass": "vl"}, uid="ua"))
    ctl.assign_segments()
    assert len(src.objects.patched) == 1
    src.add(obj("Network", "a", {"networkClass": "vl"}, {"vlanID": 600}, uid="ua"))  # the informer sees our write
    ctl.assign_segments()
    assert len(src.objects.patched) == 1, "nothing changed: nothing written"
    src.add(obj("Network", "a", {"networkClass": "vl"}, uid="ua-again"))  # deleted and applied again
    ctl.assign_segments()
    assert len(src.objects.patched) == 2 and src.objects.patched[-1][2]["vlanID"] == 600


def test_pool_usage_goes_to_the_pools_status_and_the_gauges_and_is_written_on_change_only() -> None:
    from prometheus_client import REGISTRY

    pool = obj("ClusterIPAddressPool", "usage", {"pools": [{"network": "198.18.99.0/29"}]}, uid="u-pool")  # 6
    ctl, src = controller(pool)
    src.raw["IPAddressLease"] = [
        {"spec": {"pool": "ClusterIPAddressPool/usage", "ip": "198.18.99.1", "holder": "IPAddress/ns/a"}},
        {"spec": {"pool": "ClusterIPAddressPool/usage", "ip": "198.18.99.2", "holder": None}},  # quarantined
        {"spec": {"pool": "ClusterIPAddressPool/other", "ip": "198.18.98.1", "holder": "IPAddress/ns/b"}},
    ]
    src.raw["IPAddressBlock"] = [
        {"spec": {"pool": "ClusterIPAddressPool/usage", "cidr": f"198.18.99.{i * 16}/28", "node": node}}
        for i, node in enumerate(["n2", "n1", "n2"])]
    ctl.pool_usage()
    assert src.objects.patched == [("ClusterIPAddressPool", "usage", {
        "size": 6, "used": 1, "quarantined": 1, "free": 4, "blocks": [{"node": "n1", "count": 1},
                                                                      {"node": "n2", "count": 2}]})]
    assert REGISTRY.get_sample_value("plexus_node_blocks", {"pool": "ClusterIPAddressPool/usage", "node": "n2"}) == 2

    def gauge(state: str) -> float | None:
        return REGISTRY.get_sample_value("plexus_pool_addresses", {"pool": "ClusterIPAddressPool/usage",
                                                                   "state": state})

    assert (gauge("used"), gauge("quarantined"), gauge("free")) == (1, 1, 4)
    ctl.pool_usage()
    assert len(src.objects.patched) == 1, "unchanged: not written again"
    src.raw["IPAddressLease"].pop(1)
    ctl.pool_usage()
    src.raw["IPAddressBlock"] = src.raw["IPAddressBlock"][:1]
    ctl.pool_usage()
    assert src.objects.patched[-1][2] == {"size": 6, "used": 1, "quarantined": 0, "free": 5,
                                          "blocks": [{"node": "n2", "count": 1}]}
    assert REGISTRY.get_sample_value("plexus_node_blocks", {"pool": "ClusterIPAddressPool/usage", "node": "n1"}) is None
    src.remove("ClusterIPAddressPool", "", "usage")
    ctl.pool_usage()
    assert gauge("used") is None, "a deleted pool's gauges go with it"


def test_a_pools_status_is_right_after_leadership_went_away_and_came_back() -> None:
    """Two controller replicas. A leads and writes the pool's usage X; A's Lease lapses (a slow round, an API hiccup)
    and B leads, writing Z while an address is leased; the address goes back (X again) and B stops (a rollout) before
    its next round; A leads again. A remembers having written X (``_usage``) and writes nothing: the status says Z
    for as long as the usage stays X."""
    pool = obj("ClusterIPAddressPool", "usage", {"pools": [{"network": "198.18.99.0/29"}]}, uid="u-pool")
    a, src_a = controller(pool)
    b, src_b = controller(pool)
    status: dict[str, Any] = {}

    def recorder(kind: str, n: str, st: dict[str, Any], namespace: str = "", resource_version: str = "") -> None:
        status.clear()
        status.update(st)

    leads = {"a": True, "b": False}
    for name, ctl, src in (("a", a, src_a), ("b", b, src_b)):
        src.objects.patch_status = recorder  # type: ignore[method-assign,assignment]
        ctl.elector.try_acquire = lambda name=name: leads[name]  # type: ignore[method-assign,misc]
        src.ready = lambda: True  # type: ignore[method-assign]
        for step in ("assign_segments", "allocate_user_ipaddresses", "expire_leases", "label_leases",
                     "reclaim_blocks", "release_unused_leases"):
            setattr(ctl, step, lambda: None)  # the pool usage alone here
    held = {"spec": {"pool": "ClusterIPAddressPool/usage", "ip": "198.18.99.1", "holder": "IPAddress/ns/a"}}
    src_a.raw["IPAddressLease"], src_b.raw["IPAddressLease"] = [], []
    a.run_once()  # A leads
    b.run_once()
    assert status["used"] == 0
    leads.update(a=False, b=True)  # A's Lease lapsed: B leads while an address is leased
    src_a.raw["IPAddressLease"] = src_b.raw["IPAddressLease"] = [held]
    a.run_once()
    b.run_once()
    assert status["used"] == 1
    leads.update(a=True, b=False)  # B rolled out; A leads again; the address was released meanwhile
    src_a.raw["IPAddressLease"] = src_b.raw["IPAddressLease"] = []
    a.run_once()
    assert status["used"] == 0, "the pool's status still shows the address leased while B led"



def test_the_controller_does_not_regrant_a_deleted_networks_id_while_a_node_still_carries_it() -> None:
    """A deleted Network's ID went to the next Network at once, while a node still carried the old one's pods (its
    NodeNetworkInterfaceAttachment names the bridge): now held until that node's side of it goes."""
    ctl, src = controller(obj("Network", "new", {"networkClass": "vl"}, uid="un"))
    # Network ns/old (VLAN 600) was deleted; node n1 still has pods on it, so it keeps its segment and reports it
    src.raw["NodeNetworkInterfaceAttachment"] = [
        {"metadata": {"name": "n1-old"},
         "spec": {"networkRef": {"kind": "Network", "namespace": "ns", "name": "old"}, "nodeName": "n1",
                  "bridgeName": "plx-br-600"},
         "status": {"conditions": [{"type": "Ready", "status": "True"}]}}]
    ctl.assign_segments()
    got = statuses(src)["new"]
    assert got["vlanID"] != 600, (
        "VLAN 600 still carries the deleted Network's pods on node n1 (plx-br-600/plx-vl-600), yet the controller "
        "granted it to Network ns/new: other nodes put ns/new on the same wire VLAN, and n1 refuses its pods (104)")


def test_a_pod_starting_on_its_namespaces_default_network_holds_the_segment() -> None:
    """pods_on_segment counts a pod bound to a node whose networks-spec names the network (its ADD may be building
    on the current segment), but not one that gets the same network as its namespace's default network (no
    annotation at all: README's DANM rule): the controller moves the network's VLAN ID under that pod's ADD."""
    net = parse_object({"apiVersion": API_VERSION, "kind": "Network",
                        "metadata": {"name": "ext", "namespace": "apps",
                                     "labels": {"network.deckhouse.io/default-network": "true"}},
                        "spec": {"networkClass": "cls"}})
    assert isinstance(net, Network) and net.pod.default
    named = {"metadata": {"name": "named", "namespace": "apps", "annotations": {
        "network.deckhouse.io/networks-spec": json.dumps([{"type": "Network", "name": "ext"}])}},
        "spec": {"nodeName": "n1"}, "status": {"phase": "Pending"}}
    by_default = {"metadata": {"name": "by-default", "namespace": "apps", "annotations": {}},
                  "spec": {"nodeName": "n1"}, "status": {"phase": "Pending"}}
    assert pods_on_segment([named, by_default], net, 600) == ["apps/named", "apps/by-default"]

    def unannotated(name: str, phase: str, sandbox: str | None = None, **annotations: str) -> dict[str, Any]:
        conditions = [{"type": "PodReadyToStartContainers", "status": sandbox}] if sandbox else []
        return {"metadata": {"name": name, "namespace": "apps", "annotations": annotations},
                "spec": {"nodeName": "n1"}, "status": {"phase": phase, "conditions": conditions}}

    remade = unannotated("remade", "Running", "False")  # the kubelet makes it a new sandbox: ADD runs again
    made = unannotated("made", "Running", "True")  # made without it (before the label): would hold it for ever
    old_kube = unannotated("old-kube", "Running")  # no sandbox condition (before 1.29): its phase says
    opted_out = unannotated("opted-out", "Pending", **{"network.deckhouse.io/networks-spec": "[]"})
    npwg = unannotated("npwg", "Pending", **{"k8s.v1.cni.cncf.io/networks": "macvlan"})
    assert pods_on_segment([remade, made, old_kube, opted_out, npwg], net, 600) == ["apps/remade"]
    plain = parse_object({"apiVersion": API_VERSION, "kind": "Network",
                          "metadata": {"name": "ext", "namespace": "apps"}, "spec": {"networkClass": "cls"}})
    assert isinstance(plain, Network)
    assert pods_on_segment([by_default], plain, 600) == [], "not the default: ADD does not give it to that pod"


def _report(node: str, ref: dict[str, str], bridge: str) -> dict[str, Any]:
    return {"metadata": {"name": f"{node}-{ref['name']}"},
            "spec": {"networkRef": ref, "nodeName": node, "bridgeName": bridge},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


def test_an_untagged_networks_status_names_the_bridge_its_nodes_report() -> None:
    """Two untagged networks' hashed bridge names may clash on a node, which then takes the network's next candidate
    (``SegmentPlanner._free_bridge``) and reports it in its NodeNetworkInterfaceAttachment. The status named the
    plain hash all the same: users looked for a bridge no node has. Now the name most nodes report (a tie: the one
    the status shows, else the first by name: no flapping); the computed one while none reports. A ClusterNetwork's
    report may carry no namespace at all."""
    flat = "Network/ns/flat"
    plain, renamed = bridge_name("none", 0, flat), bridge_name("none", 0, flat, 1)
    acc_renamed = bridge_name("none", 0, "ClusterNetwork/acc", 2)
    ctl, src = controller(obj("NetworkClass", "plain", {}), obj("Network", "flat", {"networkClass": "plain"}, uid="uf"),
                          obj("ClusterNetwork", "acc", {"type": "Access"}, uid="ua"))
    ctl.assign_segments()
    assert statuses(src)["flat"]["bridgeName"] == plain, "no node reports: the computed name"
    ref = {"kind": "Network", "namespace": "ns", "name": "flat"}
    src.raw["NodeNetworkInterfaceAttachment"] = [
        _report("n1", ref, renamed), _report("n2", ref, renamed), _report("n3", ref, plain),
        _report("n1", {"kind": "Network", "namespace": "ns", "name": f"flat@{plain}"}, "plx-n-00000000"),  # old one
        _report("n1", {"kind": "ClusterNetwork", "name": "acc"}, acc_renamed)]  # no namespace key at all
    ctl.assign_segments()
    got = statuses(src)
    assert got["flat"]["bridgeName"] == renamed, f"2 of 3 nodes have {renamed}, the status says {got['flat']}"
    assert got["acc"]["bridgeName"] == acc_renamed and got["acc"]["nodeAttachementsCount"] == 1
    written = len(src.objects.patched)
    ctl.assign_segments()
    assert len(src.objects.patched) == written, "nothing changed: nothing written"
    src.raw["NodeNetworkInterfaceAttachment"].pop(1)  # n2 gone: one node each, a tie; the status shows the renamed
    src.add(obj("Network", "flat", {"networkClass": "plain"}, {"bridgeName": renamed}, uid="uf"))
    ctl.assign_segments()
    assert statuses(src)["flat"]["bridgeName"] == renamed, "a tie keeps what the status shows"
    src.add(obj("Network", "flat", {"networkClass": "plain"}, {"bridgeName": plain}, uid="uf"))
    ctl.assign_segments()
    assert statuses(src)["flat"]["bridgeName"] == plain, "a tie keeps what the status shows"
    src.add(obj("Network", "flat", {"networkClass": "plain"}, uid="uf"))
    ctl.assign_segments()
    assert statuses(src)["flat"]["bridgeName"] == min(plain, renamed), "a tie, nothing shown: the first by name"

# ---------------------------------------------------------------------------------------------------------------------
# 9. Segments: a ClusterNetwork naming a NetworkClass that does not exist is answered "no free VLAN ID" (100, naming
#    spec.vlan.idPool) instead of 103 for the missing class, as a Network's missing class is.

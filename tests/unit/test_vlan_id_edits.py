"""Cluster mode: a fixed ``spec.vlan.id`` edited under a granted ID is kept while pods use the old segment, and said so
in a condition; moved once none does (as a lone node moves it), and the old ID held while a node carries its bridge."""


from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from ipamd.model.objects import STATUS_ANNOTATION
from tests.unit.test_controller_segments import controller, obj, statuses

PENDING = "VLANIDChangePending"


class Pods:
    """The core API's pod lists, as the controller reads them (JSON, not model objects)."""

    def __init__(self, *pods: dict[str, Any]) -> None:
        self.pods = list(pods)
        self.lists = 0

    def _answer(self, pods: list[dict[str, Any]]) -> Any:
        self.lists += 1
        return SimpleNamespace(data=json.dumps({"items": pods}).encode())

    def list_namespaced_pod(self, namespace: str, _preload_content: bool = True) -> Any:
        return self._answer([p for p in self.pods if p["metadata"]["namespace"] == namespace])

    def list_pod_for_all_namespaces(self, _preload_content: bool = True) -> Any:
        return self._answer(self.pods)


def attached(name: str, namespace: str, kind: str, network: str, vlan_id: int, phase: str = "Running") -> dict[str, Any]:
    entry = {"type": kind, "name": network, "ifName": "net1", "vlanID": vlan_id, "ipAddressConfigs": []}
    return {"metadata": {"name": name, "namespace": namespace,
                         "annotations": {STATUS_ANNOTATION: json.dumps([entry])}},
            "spec": {"nodeName": "n1"}, "status": {"phase": phase}}


def condition_of(status: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in status["conditions"] if c["type"] == ctype), None)


def test_an_edited_fixed_vlan_id_is_kept_while_pods_use_the_old_one_and_said_so_then_moved(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A ClusterNetwork's ``spec.vlan.id`` edited from 42 to 43 after the controller wrote ``status.vlanID: 42`` was
    ignored without a word (the ID is never moved under live pods): now a condition names the field, the ID asked and
    the ID kept and why, and once no pod of the network is left on VLAN 42 the network moves to 43."""
    ctl, src = controller(obj("ClusterNetwork", "public", {"type": "VLAN", "networkClass": "vl", "vlan": {"id": 43}},
                              {"vlanID": 42}, uid="up"))
    ctl.core = Pods(attached("web-1", "apps", "ClusterNetwork", "public", 42),  # type: ignore[assignment]
                    attached("done", "apps", "ClusterNetwork", "public", 42, phase="Succeeded"))
    ctl.assign_segments()
    got = statuses(src)["public"]
    assert got["vlanID"] == 42, "pods still sit on VLAN 42: its ID is not moved under them"
    pending = condition_of(got, PENDING)
    assert pending is not None and pending["status"] == "True", (
        f"conditions {got['conditions']}: spec.vlan.id 43 is silently ignored while status.vlanID stays 42")
    for part in ("spec.vlan.id", "43", "42", "apps/web-1"):
        assert part in pending["message"], f"{part!r} not in {pending['message']!r}"
    assert "done" not in pending["message"], "a finished pod holds no interface"

    ctl.core.pods = []  # type: ignore[attr-defined]  # the last pod left VLAN 42
    monkeypatch.setattr("ipamd.kube.controller.MOVE_LOOK_S", 0.0)  # (its pods are listed again after that)
    src.add(obj("ClusterNetwork", "public", {"type": "VLAN", "networkClass": "vl", "vlan": {"id": 43}},
                {"vlanID": 42, "conditions": got["conditions"]}, uid="up"))  # the informer sees our write
    ctl.assign_segments()
    got = statuses(src)["public"]
    assert got["vlanID"] == 43 and got["bridgeName"] == "plx-br-43", "no pod left on 42: moved to the asked ID"
    assert condition_of(got, PENDING) is None, "the change is made: its condition goes"


def test_a_pending_networks_pods_are_not_listed_every_round() -> None:
    ctl, src = controller(obj("ClusterNetwork", "public", {"type": "VLAN", "networkClass": "vl", "vlan": {"id": 43}},
                              {"vlanID": 42}, uid="up"))
    pods = Pods(attached("web-1", "apps", "ClusterNetwork", "public", 42))
    ctl.core = pods  # type: ignore[assignment]
    for _ in range(5):
        ctl.assign_segments()
    assert pods.lists == 1, "a list of every pod of the cluster each round (2 s) while a change waits"
    assert statuses(src)["public"]["vlanID"] == 42


def test_an_edited_vlan_id_that_is_taken_is_reported_and_an_unused_network_moves_at_once() -> None:
    """A Network granted 600 whose spec asks 601, held by another Network: 600 kept, the condition says 601 is taken.
    One with no pod on its segment moves at once; a pod on another VLAN of the same network does not hold it back."""
    ctl, src = controller(obj("Network", "a", {"networkClass": "vl", "vlan": {"id": 601}}, {"vlanID": 600}, uid="ua"),
                          obj("Network", "b", {"networkClass": "vl"}, {"vlanID": 601}, uid="ub"))
    ctl.core = Pods()  # type: ignore[assignment]
    ctl.assign_segments()
    got = statuses(src)["a"]
    pending = condition_of(got, PENDING)
    assert got["vlanID"] == 600 and pending is not None, f"conditions {got['conditions']}"
    assert "601" in pending["message"] and "600" in pending["message"] and "Network/ns/b" in pending["message"], (
        pending["message"])

    ctl, src = controller(obj("Network", "a", {"networkClass": "vl", "vlan": {"id": 601}}, {"vlanID": 600}, uid="ua"))
    ctl.core = Pods(attached("p", "ns", "Network", "a", 601), attached("q", "other", "Network", "a", 600),  # type: ignore[assignment]
                    attached("r", "ns", "Network", "z", 600))
    ctl.assign_segments()
    got = statuses(src)["a"]
    assert got["vlanID"] == 601 and condition_of(got, PENDING) is None, got


def test_pods_that_cannot_be_listed_keep_the_id_and_say_so() -> None:
    ctl, src = controller(obj("Network", "a", {"networkClass": "vl", "vlan": {"id": 601}}, {"vlanID": 600}, uid="ua"))

    class Away(Pods):
        def list_namespaced_pod(self, namespace: str, _preload_content: bool = True) -> Any:
            raise ApiException(status=503, reason="Service Unavailable")

    ctl.core = Away()  # type: ignore[assignment]
    ctl.assign_segments()
    got = statuses(src)["a"]
    pending = condition_of(got, PENDING)
    assert got["vlanID"] == 600 and pending is not None and pending["reason"] == "PodsNotListed", got


def test_a_moved_networks_old_id_is_not_granted_while_a_node_still_carries_its_bridge() -> None:
    """Moved from 600 to 601, the network's old ID went to the next Network while the nodes still had plx-br-600
    (their NodeNetworkInterfaceAttachment names it until they follow the status): held until they do."""
    ctl, src = controller(obj("Network", "a", {"networkClass": "vl", "vlan": {"id": 601}}, {"vlanID": 601}, uid="ua"),
                          obj("Network", "c", {"networkClass": "vl"}, uid="uc"))
    src.raw["NodeNetworkInterfaceAttachment"] = [
        {"metadata": {"name": "n1-a"},
         "spec": {"networkRef": {"kind": "Network", "namespace": "ns", "name": "a"}, "nodeName": "n1",
                  "bridgeName": "plx-br-600"},
         "status": {"conditions": [{"type": "Ready", "status": "True"}]}}]
    ctl.assign_segments()
    assert statuses(src)["c"]["vlanID"] != 600, "node n1 still carries network a's old bridge plx-br-600"


# -- 2. a Service that stops asking Plexus for endpoints ----------------------------------------------------------


def test_an_id_is_not_moved_under_a_pod_whose_add_is_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod bound to a node, its networks-spec naming the network, shows no status entry for it yet: its ADD may be
    building it on the old ID right now. Moved then, the pod would stay on the old wire segment, cut off from the pods
    after it: it counts as on the old segment until its status says otherwise (or it finishes)."""
    ctl, src = controller(obj("ClusterNetwork", "public", {"type": "VLAN", "networkClass": "vl", "vlan": {"id": 43}},
                              {"vlanID": 42}, uid="up"))
    spec = json.dumps([{"type": "ClusterNetwork", "name": "public"}])
    starting = {"metadata": {"name": "web-2", "namespace": "apps", "annotations": {
        "network.deckhouse.io/networks-spec": spec}}, "spec": {"nodeName": "n1"}, "status": {"phase": "Pending"}}
    unbound = {"metadata": {"name": "web-3", "namespace": "apps", "annotations": {
        "network.deckhouse.io/networks-spec": spec}}, "spec": {}, "status": {"phase": "Pending"}}
    host = {"metadata": {"name": "agent", "namespace": "apps", "annotations": {
        "network.deckhouse.io/networks-spec": spec}}, "spec": {"nodeName": "n1", "hostNetwork": True},
        "status": {"phase": "Running"}}
    ctl.core = Pods(starting, unbound, host)  # type: ignore[assignment]
    ctl.assign_segments()
    got = statuses(src)["public"]
    assert got["vlanID"] == 42, "moved under a pod whose ADD may be on the old ID"
    pending = condition_of(got, PENDING)
    assert pending is not None and "apps/web-2" in pending["message"] and "web-3" not in pending["message"]
    assert "agent" not in pending["message"], "a host-network pod is never attached"

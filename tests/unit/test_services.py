"""Services over an additional network, the pure part: which Services ask (and what is wrong with one that asks
badly, by field), which pods and addresses they select, and the EndpointSlice that says so."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ipamd.model.services import (
    NETWORK_ANNOTATION,
    SELECTOR_ANNOTATION,
    NetworkRef,
    ServiceInvalid,
    endpoint_slice,
    parse_service,
)


def service(annotations: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "db", "namespace": "apps", "uid": "svc-uid", "annotations": annotations},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432, "targetPort": 5433}], **spec}}


def pod(name: str, labels: dict[str, str], statuses: list[dict[str, Any]], ready: bool = True,
        namespace: str = "apps", npwg: list[dict[str, Any]] | None = None, deleting: bool = False) -> dict[str, Any]:
    ann = {"network.deckhouse.io/networks-status": json.dumps(statuses)}
    if npwg is not None:
        ann["k8s.v1.cni.cncf.io/network-status"] = json.dumps(npwg)
    md: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"{name}-uid", "labels": labels,
                          "annotations": ann}
    if deleting:
        md["deletionTimestamp"] = "2026-11-30T00:00:00Z"
    return {"metadata": md, "spec": {"nodeName": "n1"},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def on(name: str, *addresses: str, kind: str = "Network") -> dict[str, Any]:
    return {"type": kind, "name": name, "ifName": "net1", "ipAddressConfigs": [{"address": a} for a in addresses]}


ASKS = {NETWORK_ANNOTATION: "backend", SELECTOR_ANNOTATION: "app=db, tier=x"}


def test_a_service_without_the_annotations_asks_nothing() -> None:
    assert parse_service(service({})) is None


def test_the_network_reference_forms() -> None:
    def ref(text: str) -> NetworkRef:
        svc = parse_service(service({NETWORK_ANNOTATION: text, SELECTOR_ANNOTATION: "app=db"}))
        assert svc is not None
        return svc.network

    assert ref("backend") == NetworkRef("Network", "apps", "backend")
    assert ref("ClusterNetwork/public") == NetworkRef("ClusterNetwork", "", "public")
    assert ref("NetworkAttachmentDefinition/shared/macvlan") == NetworkRef("NetworkAttachmentDefinition", "shared",
                                                                           "macvlan")
    assert ref("NetworkAttachmentDefinition/macvlan") == NetworkRef("NetworkAttachmentDefinition", "apps", "macvlan")


@pytest.mark.parametrize(("annotations", "spec", "field", "reason"), [
    ({SELECTOR_ANNOTATION: "app=db"}, {}, f"metadata.annotations[{NETWORK_ANNOTATION}]", "InvalidAnnotation"),
    ({NETWORK_ANNOTATION: "backend"}, {}, f"metadata.annotations[{SELECTOR_ANNOTATION}]", "InvalidAnnotation"),
    ({NETWORK_ANNOTATION: "backend", SELECTOR_ANNOTATION: "app"}, {}, f"metadata.annotations[{SELECTOR_ANNOTATION}]",
     "InvalidAnnotation"),
    ({NETWORK_ANNOTATION: "Pod/x", SELECTOR_ANNOTATION: "app=db"}, {}, f"metadata.annotations[{NETWORK_ANNOTATION}]",
     "InvalidAnnotation"),
    (ASKS, {"selector": {"app": "db"}}, "spec.selector", "NotSelectorless"),
    (ASKS, {"clusterIP": "10.0.0.5"}, "spec.clusterIP", "NotHeadless"),
])
def test_a_service_that_asks_badly_is_told_which_field(annotations: dict[str, str], spec: dict[str, Any], field: str,
                                                        reason: str) -> None:
    with pytest.raises(ServiceInvalid) as err:
        parse_service(service(annotations, **spec))
    assert (err.value.field, err.value.reason) == (field, reason)


def test_the_slice_holds_the_selected_pods_addresses_on_that_network_with_readiness() -> None:
    svc = parse_service(service(ASKS))
    assert svc is not None
    pods = [pod("a", {"app": "db", "tier": "x"}, [on("backend", "198.18.30.5"), on("other", "198.18.31.5")]),
            pod("b", {"app": "db", "tier": "x"}, [on("backend", "198.18.30.6")], ready=False),
            pod("c", {"app": "db"}, [on("backend", "198.18.30.7")]),  # a label missing: not selected
            pod("d", {"app": "db", "tier": "x"}, [on("backend", "198.18.30.8")], namespace="elsewhere"),
            pod("e", {"app": "db", "tier": "x"}, [on("backend", "198.18.30.9", kind="ClusterNetwork")]),
            pod("f", {"app": "db", "tier": "x"}, [on("backend", "198.18.30.10")], deleting=True)]
    body = endpoint_slice(svc, pods, "discovery.k8s.io/v1beta1")
    assert [(e["addresses"], e["conditions"]["ready"], e["targetRef"]["name"]) for e in body["endpoints"]] == [
        (["198.18.30.5"], True, "a"), (["198.18.30.6"], False, "b"), (["198.18.30.10"], False, "f")]
    assert body["ports"] == [{"name": "pg", "port": 5433, "protocol": "TCP"}], "the endpoints' port: targetPort"
    assert body["metadata"]["labels"]["kubernetes.io/service-name"] == "db"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "svc-uid", "deleted with its Service"
    assert body["addressType"] == "IPv4" and body["apiVersion"] == "discovery.k8s.io/v1beta1"


def test_a_nad_network_reads_the_npwg_network_status() -> None:
    svc = parse_service(service({NETWORK_ANNOTATION: "NetworkAttachmentDefinition/apps/mv",
                                 SELECTOR_ANNOTATION: "app=db"}))
    assert svc is not None
    p = pod("a", {"app": "db"}, [], npwg=[{"name": "apps/mv", "interface": "net1", "ips": ["198.18.32.5"]},
                                          {"name": "cbr0", "interface": "eth0", "ips": ["10.1.0.5"], "default": True}])
    assert [e["addresses"] for e in endpoint_slice(svc, [p], "discovery.k8s.io/v1")["endpoints"]] == [["198.18.32.5"]]

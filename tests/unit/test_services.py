"""Services over an additional network. The pure part: which Services ask (and what is wrong with one that asks
badly, by field), which pods and addresses they select, and the EndpointSlices that say so; then the controller's side
over a fake API server: what it writes, rewrites and deletes, pass after pass."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ipamd.kube.services import ServiceEndpoints
from ipamd.model.objects import parse_object
from ipamd.model.services import (
    NETWORK_ANNOTATION,
    SELECTOR_ANNOTATION,
    NetworkRef,
    ServiceInvalid,
    endpoint_slice,
    endpoint_slices,
    parse_service,
)
from tests.fakes.source import FakeSource

GROUP = "network.deckhouse.io/v1alpha1"


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


def test_a_selector_outside_the_key_value_grammar_is_refused_naming_the_field() -> None:
    """README: a Service that asks badly (a malformed annotation) gets a Warning naming the field. 'app!=db' and
    'app==db' (kubectl's selector spellings) are taken as key 'app!' / value '=db': no label ever matches, and the
    Service is told True with 0 addresses instead of what is wrong."""
    def svc(text: str) -> dict[str, Any]:
        return {"metadata": {"name": "db", "namespace": "apps", "uid": "u",
                             "annotations": {NETWORK_ANNOTATION: "backend", SELECTOR_ANNOTATION: text}},
                "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}

    for text in ("app!=db", "app==db", "-app=db", "app=db!", "Example.com/app=db", "/app=db", "app=" + "x" * 64,
                 "x" * 64 + "=db"):
        with pytest.raises(ServiceInvalid) as err:
            parse_service(svc(text))
        assert err.value.field == f"metadata.annotations[{SELECTOR_ANNOTATION}]", text
    got = parse_service(svc("app.kubernetes.io/name=db, tier=, x_y.z=A-1." + "b" * 10))
    assert got is not None
    assert got.selector == (("app.kubernetes.io/name", "db"), ("tier", ""), ("x_y.z", "A-1." + "b" * 10))


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


def test_a_dual_stack_networks_ipv6_addresses_do_not_go_into_an_ipv4_slice() -> None:
    """A dual-stack Network's IPv6 addresses were written into the one slice, of addressType IPv4 (the API server
    refused the whole slice: the Service got no endpoints at all); now each family has its own slice."""
    svc = parse_service(service({NETWORK_ANNOTATION: "backend", SELECTOR_ANNOTATION: "app=db"}))
    assert svc is not None
    dual = pod("a", {"app": "db"}, [on("backend", "198.18.30.5", "2001:2:0:10::5")])
    body = endpoint_slice(svc, [dual], "discovery.k8s.io/v1")
    family = {"IPv4": 4, "IPv6": 6}[body["addressType"]]
    wrong = [a for e in body["endpoints"] for a in e["addresses"] if (6 if ":" in a else 4) != family]
    assert wrong == [], f"{wrong} in an EndpointSlice of addressType {body['addressType']}: the API server refuses it"


def test_one_slice_per_family_the_ipv4_one_keeping_its_name() -> None:
    svc = parse_service(service({NETWORK_ANNOTATION: "backend", SELECTOR_ANNOTATION: "app=db"}))
    assert svc is not None
    dual = [pod("a", {"app": "db"}, [on("backend", "198.18.30.5", "2001:2:0:10::5")])]
    assert [(b["metadata"]["name"], b["addressType"], [e["addresses"] for e in b["endpoints"]])
            for b in endpoint_slices(svc, dual, "discovery.k8s.io/v1")] == [
        ("db-plexus", "IPv4", [["198.18.30.5"]]), ("db-plexus-v6", "IPv6", [["2001:2:0:10::5"]])]
    only_v4 = [pod("a", {"app": "db"}, [on("backend", "198.18.30.5")])]
    assert [b["metadata"]["name"] for b in endpoint_slices(svc, only_v4, "discovery.k8s.io/v1")] == ["db-plexus"]
    only_v6 = [pod("a", {"app": "db"}, [on("backend", "2001:2:0:10::5")])]
    assert [(b["metadata"]["name"], len(b["endpoints"])) for b in endpoint_slices(svc, only_v6, "discovery.k8s.io/v1")
            ] == [("db-plexus", 0), ("db-plexus-v6", 1)], "the IPv4 slice stays, empty"


def test_the_node_is_the_hostname_topology_in_v1beta1_and_node_name_in_v1() -> None:
    svc = parse_service(service({NETWORK_ANNOTATION: "backend", SELECTOR_ANNOTATION: "app=db"}))
    assert svc is not None
    pods = [pod("a", {"app": "db"}, [on("backend", "198.18.30.5")])]
    (beta,) = endpoint_slice(svc, pods, "discovery.k8s.io/v1beta1")["endpoints"]
    assert beta["topology"] == {"kubernetes.io/hostname": "n1"} and "nodeName" not in beta
    (ga,) = endpoint_slice(svc, pods, "discovery.k8s.io/v1")["endpoints"]
    assert ga["nodeName"] == "n1" and "topology" not in ga


# -- the controller's side, over a fake API server ------------------------------------------------------------------
class SliceApi:
    """The custom-objects API for EndpointSlices. ``drop_node_name`` stores them as a 1.17-1.20 API server does for
    discovery.k8s.io/v1beta1 (nodeName is unknown before 1.20 and behind the alpha gate EndpointSliceNodeName in 1.20,
    off by default: dropped on create and update)."""

    def __init__(self, drop_node_name: bool = False) -> None:
        self.slices: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[str] = []
        self.fail_deletes = 0
        self.drop_node_name = drop_node_name

    def _stored(self, body: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(body)
        if self.drop_node_name:
            for ep in body.get("endpoints") or []:
                ep.pop("nodeName", None)
        return body

    def list_cluster_custom_object(self, group: str, version: str, plural: str, label_selector: str = "") -> Any:
        return {"items": [copy.deepcopy(s) for s in self.slices.values()]}

    def create_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, body: Any) -> None:
        self.writes.append("create")
        self.slices[(ns, body["metadata"]["name"])] = self._stored(body)

    def patch_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, name: str,
                                       body: Any) -> None:
        self.writes.append("patch")
        self.slices[(ns, name)] = self._stored(body)

    def delete_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, name: str) -> None:
        if self.fail_deletes:
            self.fail_deletes -= 1
            raise ApiException(status=503, reason="Service Unavailable")
        self.writes.append("delete")
        self.slices.pop((ns, name), None)


class CoreApi:
    def patch_namespaced_service_status(self, name: str, ns: str, body: Any) -> None:
        pass

    def create_namespaced_event(self, ns: str, body: Any) -> None:
        pass


class ServiceSource(FakeSource):
    def __init__(self, *objs: Any) -> None:
        super().__init__(*objs)
        self.raw: dict[str, list[dict[str, Any]]] = {"Service": [], "Pod/all-namespaces": []}

    def subscribe(self, callback: Any, kinds: Any = None) -> None:
        pass

    def items(self, kind: str) -> list[dict[str, Any]]:
        return self.raw.get(kind, [])

    def by_index(self, kind: str, index: str, key: Any) -> list[dict[str, Any]]:
        assert index == "namespace"
        return [i for i in self.raw.get(kind, []) if i["metadata"]["namespace"] == key]


def _endpoints(api: SliceApi, version: str = "v1") -> tuple[ServiceEndpoints, ServiceSource]:
    backend = parse_object({"apiVersion": GROUP, "kind": "Network", "metadata": {"name": "backend",
                                                                                  "namespace": "apps"},
                            "spec": {"networkClass": "c"}})
    src = ServiceSource(backend)
    se = ServiceEndpoints(client.ApiClient(), src, lambda: True)  # type: ignore[arg-type]
    se.custom, se.core, se.version = api, CoreApi(), version  # type: ignore[assignment]
    return se, src


def test_a_slice_whose_delete_failed_once_is_deleted_on_a_later_pass() -> None:
    """A failed delete (a 5xx, a timeout) was never retried once no Service asked: the pass set ``_managed`` from the
    slices still wanted alone, and later passes returned before listing; now one stays managed while a delete other
    than a 404 failed."""
    api = SliceApi()
    se, src = _endpoints(api)
    asking = service({NETWORK_ANNOTATION: "backend", SELECTOR_ANNOTATION: "app=db"})
    src.raw["Service"] = [asking]
    src.raw["Pod/all-namespaces"] = [pod("a", {"app": "db"}, [on("backend", "198.18.30.5")])]
    se.sync()
    assert ("apps", "db-plexus") in api.slices
    # the Service stops asking (its annotations removed); the first delete meets a passing API server failure
    src.raw["Service"] = [service({})]
    api.fail_deletes = 1
    se.sync()
    for _ in range(3):  # later passes: the API server answers again
        se.sync()
    assert ("apps", "db-plexus") not in api.slices, (
        "the slice of a Service that no longer asks outlives it for good: the failed delete set _managed=False, and "
        "every later pass returns early since no Service asks (DNS keeps answering with the stale addresses)")


def test_an_unchanged_v1beta1_slice_is_not_rewritten_on_every_pass() -> None:
    """A v1beta1 slice (Kubernetes 1.17-1.20) was patched again on every pass: the API server drops a v1beta1
    endpoint's nodeName, so the slice as read never matched the slice as meant; now the node goes in the hostname
    topology there, as kube-controller-manager writes it, and reads back unchanged."""
    api = SliceApi(drop_node_name=True)
    se, src = _endpoints(api, "v1beta1")
    src.raw["Service"] = [service({NETWORK_ANNOTATION: "backend", SELECTOR_ANNOTATION: "app=db"})]
    src.raw["Pod/all-namespaces"] = [pod("a", {"app": "db"}, [on("backend", "198.18.30.5")])]
    for _ in range(4):  # nothing changes between the passes
        se.sync()
    assert api.writes == ["create"], (
        f"writes {api.writes}: the slice carries endpoints[].nodeName, which a 1.17-1.20 API server does not keep in "
        "v1beta1, so _content(current) never equals _content(body) and every pass (each 5 s, and on every pod "
        "change in the cluster) patches every such slice again")


def test_a_dual_stack_services_slices_are_written_once_and_the_ipv6_one_deleted_with_its_addresses() -> None:
    api = SliceApi()
    se, src = _endpoints(api)
    src.raw["Service"] = [service({NETWORK_ANNOTATION: "backend", SELECTOR_ANNOTATION: "app=db"})]
    src.raw["Pod/all-namespaces"] = [pod("a", {"app": "db"}, [on("backend", "198.18.30.5", "2001:2:0:10::5")])]
    se.sync()
    se.sync()
    assert api.writes == ["create", "create"]
    assert {k: s["addressType"] for k, s in api.slices.items()} == {("apps", "db-plexus"): "IPv4",
                                                                    ("apps", "db-plexus-v6"): "IPv6"}
    src.raw["Pod/all-namespaces"] = [pod("a", {"app": "db"}, [on("backend", "198.18.30.5")])]
    se.sync()
    assert list(api.slices) == [("apps", "db-plexus")] and api.writes[2:] == ["delete"]
    src.raw["Service"] = []
    se.sync()
    assert api.slices == {}

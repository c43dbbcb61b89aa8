"""The validating webhook: the daemon's own parsers decide, the answer names the field, and the
HTTPS server really serves it with a certificate the API server can check."""

from __future__ import annotations

import copy
import datetime as dt
import http.client
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cni.errors import AnnotationInvalid
from ipamd.kube import webhook
from ipamd.kube.admission import ReviewInvalid, review
from ipamd.kube.certs import issue, still_good
from ipamd.kube.webhook import WebhookServer
from ipamd.model.npwg import NETWORKS_ANNOTATION
from ipamd.model.objects import AddressPool, ClusterNetwork, Network, NetworkClass, parse_object
from ipamd.model.segments import segment_kind
from ipamd.sources import objectdir
from ipamd.sources.local import LocalSource, read_directory
from tests.conftest import REPO, wait_for
from tests.unit.test_networks import wanted

GROUP = "network.deckhouse.io"
API = f"{GROUP}/v1alpha1"


def request(kind: str, obj: dict[str, Any], operation: str = "CREATE", group: str = GROUP,
            namespace: str = "ns") -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": {"group": group, "version": "v1alpha1" if group else "v1", "kind": kind},
                        "operation": operation, "namespace": namespace, "object": obj}}


def pool(ranges: list[str], name: str = "p") -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "IPAddressPool", "metadata": {"name": name},
            "spec": {"pools": [{"network": "198.18.0.0/24", "ranges": ranges}]}}


def pod(spec: Any) -> dict[str, Any]:
    ann = {} if spec is None else {f"{GROUP}/networks-spec": spec if isinstance(spec, str) else json.dumps(spec)}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-", "annotations": ann},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}


def answer(doc: dict[str, Any]) -> dict[str, Any]:
    out = review(doc)
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    assert out["response"]["uid"] == "u-1"
    return dict(out["response"])


def test_a_pool_range_outside_its_network_is_refused_naming_the_field() -> None:
    resp = answer(request("IPAddressPool", pool(["198.18.1.10-198.18.1.20"])))
    assert resp["allowed"] is False
    assert resp["status"]["code"] == 422
    msg = resp["status"]["message"]
    assert "spec.pools[0].ranges[0]" in msg and "outside 198.18.0.0/24" in msg and "ns/p" in msg


def test_a_pool_change_that_would_orphan_leased_addresses_is_refused_naming_them() -> None:
    leased = {"IPAddressPool/ns/p": ["198.18.0.7", "198.18.0.200"]}
    moved = pool([])
    moved["spec"]["pools"][0]["network"] = "198.18.0.0/25"  # .200 falls out; .7 stays
    got = review(request("IPAddressPool", moved, "UPDATE"), lambda key: leased.get(key, []))["response"]
    assert not got["allowed"]
    assert "1 leased address(es)" in got["status"]["message"] and "198.18.0.200" in got["status"]["message"]
    assert "198.18.0.7" not in got["status"]["message"]
    narrowed = pool(["198.18.0.10-198.18.0.20"])  # ranges shrink: the subnet still holds both (flagged, kept)
    assert review(request("IPAddressPool", narrowed, "UPDATE"), lambda key: leased.get(key, []))["response"]["allowed"]
    assert review(request("IPAddressPool", moved, "UPDATE"))["response"]["allowed"], "nothing leased: anything goes"


def test_a_pool_edit_making_a_leased_address_a_routes_gateway_is_refused() -> None:
    """Adding a route whose ``via`` is an address a pod already holds: the pool never leases a gateway (objects.
    _address_pool cuts it out, refuse_gateway), but the webhook lets the edit through, so the pod keeps the router's
    address (two hosts on one IP) and every other pod routes 10.10.0.0/16 through it."""
    leased = {"IPAddressPool/ns/p": ["198.18.0.1"]}
    edited = pool([])
    edited["spec"]["pools"][0]["routes"] = [{"destination": "10.10.0.0/16", "via": "198.18.0.1"}]
    got = review(request("IPAddressPool", edited, "UPDATE"), lambda key: leased.get(key, []))["response"]
    assert not got["allowed"], "a leased address made a route's gateway"
    assert "spec.pools[0].routes[0].via" in got["status"]["message"] and "198.18.0.1" in got["status"]["message"]
    edited["spec"]["pools"][0]["routes"][0]["via"] = "198.18.0.254"
    assert review(request("IPAddressPool", edited, "UPDATE"), lambda key: leased.get(key, []))["response"]["allowed"], \
        "a gateway nobody holds"
    dual = pool([])
    dual["spec"]["pools"].append({"network": "2001:2::/64", "routes": [
        {"destination": "2001:2:1::/64", "via": "2001:2::9"}, {"destination": "2001:2:2::/64", "via": "2001:2::5"}]})
    got = review(request("IPAddressPool", dual, "UPDATE"),
                 lambda key: ["198.18.0.1", "2001:0002:0000:0000:0000:0000:0000:0005"])["response"]
    assert not got["allowed"] and "spec.pools[1].routes[1].via: 2001:2::5" in got["status"]["message"], got
    assert "routes[0]" not in got["status"]["message"]


def test_a_pool_with_leased_addresses_is_not_deleted() -> None:
    leased = {"IPAddressPool/ns/p": ["198.18.0.200", "198.18.0.7"], "ClusterIPAddressPool/c": ["198.18.1.9"]}
    doc = request("IPAddressPool", {}, "DELETE")
    doc["request"]["object"] = None  # as the API server sends a DELETE: the object in oldObject
    doc["request"]["oldObject"] = {**pool([]), "metadata": {"name": "p", "namespace": "ns"}}
    got = review(doc, lambda key: leased.get(key, []))["response"]
    assert not got["allowed"]
    assert got["status"]["message"].startswith("IPAddressPool ns/p: 2 address(es) still leased from it: "
                                               "198.18.0.7, 198.18.0.200; delete the pods"), got
    doc["request"]["oldObject"]["metadata"]["name"] = "free"
    assert review(doc, lambda key: leased.get(key, []))["response"]["allowed"], "nothing leased: deleted"
    cluster = request("ClusterIPAddressPool", {}, "DELETE", namespace="")
    cluster["request"]["oldObject"] = {"metadata": {"name": "c"}, "spec": "not even a pool any more"}
    got = review(cluster, lambda key: leased.get(key, []))["response"]
    assert not got["allowed"] and "ClusterIPAddressPool c: 1 address(es)" in got["status"]["message"]
    network = request("Network", {}, "DELETE")
    network["request"]["oldObject"] = {"metadata": {"name": "p", "namespace": "ns"}}
    assert review(network, lambda key: leased.get(key, []))["response"]["allowed"], "only pools hold leases"


def network(pool_name: str | None, name: str = "net-b") -> dict[str, Any]:
    spec: dict[str, Any] = {"networkClass": "cls"}
    if pool_name is not None:
        spec["ipam"] = {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": pool_name}}
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "Network", "metadata": {"name": name}, "spec": spec}


def test_a_network_moved_to_another_pool_while_its_old_one_has_leases_is_refused() -> None:
    """Its pods keep the old pool's addresses on their interfaces; the new pool (a renamed one over the same subnet,
    say) knows nothing of them and would hand them to other pods of the same segment (found in review)."""
    leased = {"IPAddressPool/ns/pool-b": ["198.18.41.3"]}
    doc = request("Network", network("pool-b2"), "UPDATE")
    doc["request"]["oldObject"] = network("pool-b")
    got = review(doc, lambda key: leased.get(key, []))["response"]
    assert not got["allowed"]
    msg = got["status"]["message"]
    assert "spec.ipam.ipAddressPoolRef" in msg and "IPAddressPool/ns/pool-b" in msg and "198.18.41.3" in msg, msg
    doc["request"]["object"] = network(None)  # IPAM dropped: the same
    assert not review(doc, lambda key: leased.get(key, []))["response"]["allowed"]
    doc["request"]["object"] = network("pool-b")  # another change, the pool kept
    assert review(doc, lambda key: leased.get(key, []))["response"]["allowed"]
    doc["request"]["object"] = network("pool-b2")
    assert review(doc)["response"]["allowed"], "nothing leased from the old pool: moved"
    doc["request"]["oldObject"] = network(None)
    assert review(doc, lambda key: leased.get(key, []))["response"]["allowed"], "IPAM enabled: nothing to keep"


class _Leases:
    """The controller's caches as ``held_for_network`` reads them: lease objects by pool, IPAddresses parsed."""

    def __init__(self, leases: dict[str, str], addresses: dict[str, str]) -> None:
        from tests.fakes.source import FakeSource
        from tests.unit.test_ipam import obj

        self.leases = [{"spec": {"pool": "IPAddressPool/ns/pool-b", "ip": ip, "holder": holder}}
                       for ip, holder in leases.items()]
        self.source = FakeSource(*(obj("IPAddress", name, {"networkRef": {"kind": "Network", "name": net}})
                                   for name, net in addresses.items()))

    def by_index(self, kind: str, index: str, key: Any) -> list[dict[str, Any]]:
        assert (kind, index) == ("IPAddressLease", "pool")
        return [lease for lease in self.leases if lease["spec"]["pool"] == key]

    def get(self, kind: Any, namespace: str, name: str) -> Any:
        return self.source.get(kind, namespace, name)


def test_a_network_sharing_its_pool_moves_while_only_the_other_networks_and_direct_clients_hold_leases() -> None:
    """net-b and net-c share pool-b. The move of net-b was refused while pool-b had any lease (found in review: all
    of net-c's pods, and every delegate leasing from the pool directly, had to go first). Only the addresses net-b's
    pods may carry hold it now: its IPAddresses' leases, and those of IPAddresses the cache does not show."""
    from ipamd.kube.leases import held_for_network

    leases = _Leases({"198.18.41.3": "IPAddress/ns/c-ip", "198.18.41.4": "IPAMClaim/ns/vm-claim",
                      "198.18.41.5": "CNI/pool-b/0123456789ab/net1", "198.18.41.6": "api/vm-1"},
                     {"c-ip": "net-c", "b-ip": "net-b"})
    doc = request("Network", network("pool-b2"), "UPDATE")
    doc["request"]["oldObject"] = network("pool-b")

    def leased_for(pool: str, net: str) -> list[str]:
        return held_for_network(leases, pool, net)  # type: ignore[arg-type]

    assert held_for_network(leases, "IPAddressPool/ns/pool-b", "Network/ns/net-c") == ["198.18.41.3"]  # type: ignore[arg-type]
    assert review(doc, lambda key: ["198.18.41.3"], leased_for)["response"]["allowed"], "net-c's lease holds net-b"
    leases.leases.append({"spec": {"pool": "IPAddressPool/ns/pool-b", "ip": "198.18.41.7", "holder": "IPAddress/ns/b-ip"}})
    got = review(doc, lambda key: [], leased_for)["response"]
    assert not got["allowed"] and "198.18.41.7" in got["status"]["message"], got
    leases.leases[-1]["spec"]["holder"] = "IPAddress/ns/gone-ip"  # its IPAddress not in the cache: maybe net-b's
    assert not review(doc, lambda key: [], leased_for)["response"]["allowed"]
    assert review(doc, lambda key: ["198.18.41.7"])["response"]["allowed"] is False, "without leased_for: every lease"


def test_a_good_pool_is_allowed_also_without_namespace_in_the_object() -> None:
    resp = answer(request("IPAddressPool", pool(["198.18.0.10-198.18.0.20"])))
    assert resp == {"uid": "u-1", "allowed": True}


def test_an_object_named_by_generate_name_is_checked_too() -> None:
    obj = pool(["198.18.9.1-198.18.9.2"])
    obj["metadata"] = {"generateName": "pool-"}
    assert answer(request("IPAddressPool", obj))["allowed"] is False


@pytest.mark.parametrize("mac, why", [
    ("aa:bb:cc:dd:ee", "is not a MAC address"),
    ("01:00:5e:00:00:01", "multicast"),
    ("00:00:00:00:00:00", "all-zero"),
])
def test_a_pod_annotation_with_a_bad_mac_is_refused(mac: str, why: str) -> None:
    resp = answer(request("Pod", pod([{"type": "Network", "name": "n", "mac": mac}]), group=""))
    assert resp["allowed"] is False
    assert "networks-spec[0].mac" in resp["status"]["message"] and why in resp["status"]["message"]


@pytest.mark.parametrize("spec, field", [
    ("{not json", "is not JSON"),
    ([{"type": "Network", "name": "n", "ifName": "this-name-is-too-long"}], "networks-spec[0].ifName"),
    ([{"type": "Nope", "name": "n"}], "networks-spec[0].type"),
])
def test_other_bad_annotations_are_refused(spec: Any, field: str) -> None:
    resp = answer(request("Pod", pod(spec), group=""))
    assert resp["allowed"] is False and field in resp["status"]["message"]


def test_pods_without_networks_and_with_good_ones_are_allowed() -> None:
    assert answer(request("Pod", pod(None), group=""))["allowed"] is True
    good = [{"type": "Network", "name": "n", "ifName": "veth_a", "mac": "aa:bb:cc:dd:ee:ff"}]
    assert answer(request("Pod", pod(good), group=""))["allowed"] is True


def test_a_nad_whose_config_is_not_a_cni_configuration_is_refused_with_the_reason() -> None:
    def nad(config: str) -> dict[str, Any]:
        return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                "metadata": {"name": "macvlan-conf"}, "spec": {"config": config}}

    refused = answer(request("NetworkAttachmentDefinition", nad('{"cniVersion": "0.3.1", "plugins": []}'),
                             group="k8s.cni.cncf.io"))
    assert refused["allowed"] is False
    assert "NetworkAttachmentDefinition ns/macvlan-conf: spec.config.plugins" in refused["status"]["message"]
    escape = answer(request("NetworkAttachmentDefinition", nad('{"cniVersion": "0.3.1", "type": "../../bin/sh"}'),
                            group="k8s.cni.cncf.io"))
    assert escape["allowed"] is False and "not a plugin name" in escape["status"]["message"]
    good = '{"cniVersion": "0.3.1", "type": "macvlan", "master": "eth0", "ipam": {"type": "static"}}'
    assert answer(request("NetworkAttachmentDefinition", nad(good), group="k8s.cni.cncf.io"))["allowed"] is True


def test_a_pods_npwg_annotation_is_checked_too() -> None:
    bad = pod(None)
    bad["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] = json.dumps(
        [{"name": "a", "default-route": ["198.18.0.1"]}, {"name": "b", "default-route": ["198.18.1.1"]}])
    resp = answer(request("Pod", bad, group=""))
    assert resp["allowed"] is False and "k8s.v1.cni.cncf.io/networks[1].default-route" in resp["status"]["message"]
    good = pod(None)
    good["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] = "macvlan-conf, other/bridge@net5"
    assert answer(request("Pod", good, group=""))["allowed"] is True


def test_deletes_and_kinds_that_are_not_ours_pass() -> None:
    bad = pool(["198.18.1.10-198.18.1.20"])
    assert answer(request("IPAddressPool", bad, operation="DELETE"))["allowed"] is True
    assert answer(request("ConfigMap", {"metadata": {"name": "x"}}, group=""))["allowed"] is True
    assert answer(request("Widget", bad, group="example.com"))["allowed"] is True


@pytest.mark.parametrize("doc", [None, [], {"kind": "AdmissionReview"}, {"kind": "AdmissionReview", "request": {}},
                                 {"kind": "Other", "request": {"uid": "x"}}])
def test_what_is_not_a_review_is_an_error_not_an_answer(doc: Any) -> None:
    with pytest.raises(ReviewInvalid):
        review(doc)


# -- certificates and the HTTPS server ---------------------------------------------------------------

NOW = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)


def test_a_certificate_is_good_for_its_names_until_close_to_expiry() -> None:
    bundle = issue(["plexus-webhook.plexus-system.svc", "127.0.0.1"], NOW)
    assert still_good(bundle, ["plexus-webhook.plexus-system.svc", "127.0.0.1"], NOW)
    assert not still_good(bundle, ["other.svc"], NOW), "a name it does not answer to"
    assert still_good(bundle, ["127.0.0.1"], NOW + dt.timedelta(days=300))
    assert not still_good(bundle, ["127.0.0.1"], NOW + dt.timedelta(days=340)), "renewed 30 days ahead"
    assert not still_good(type(bundle)(bundle.ca_pem, b"garbage", bundle.key_pem), ["127.0.0.1"], NOW)


@pytest.fixture
def server() -> Iterator[tuple[WebhookServer, bytes]]:
    bundle = issue(["127.0.0.1"], dt.datetime.now(dt.UTC))
    srv = WebhookServer(("127.0.0.1", 0), bundle)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv, bundle.ca_pem
    finally:
        srv.shutdown()
        srv.server_close()


def post(srv: WebhookServer, ca_pem: bytes, body: bytes) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cadata=ca_pem.decode())  # verifies the chain and the name, as the API server does
    conn = http.client.HTTPSConnection("127.0.0.1", srv.server_address[1], context=ctx, timeout=10)
    try:
        conn.request("POST", "/validate", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_the_server_answers_over_verified_tls(server: tuple[WebhookServer, bytes]) -> None:
    srv, ca = server
    status, doc = post(srv, ca, json.dumps(request("IPAddressPool", pool(["198.18.1.1-198.18.1.2"]))).encode())
    assert status == 200 and doc["response"]["allowed"] is False
    status, doc = post(srv, ca, b"[1, 2")
    assert status == 400 and "error" in doc


def test_a_renewed_certificate_is_served_from_the_next_connection(server: tuple[WebhookServer, bytes]) -> None:
    srv, old_ca = server
    renewed = issue(["127.0.0.1"], dt.datetime.now(dt.UTC))
    srv.use(renewed)
    with pytest.raises(ssl.SSLCertVerificationError):
        post(srv, old_ca, b"{}")
    status, _ = post(srv, renewed.ca_pem, json.dumps(request("IPAddressPool", pool(["198.18.0.1-198.18.0.2"]))).encode())
    assert status == 200


def test_a_client_that_does_not_trust_the_ca_is_refused(server: tuple[WebhookServer, bytes]) -> None:
    srv, _ = server
    other = issue(["127.0.0.1"], dt.datetime.now(dt.UTC))
    with pytest.raises(ssl.SSLCertVerificationError):
        post(srv, other.ca_pem, b"{}")


def test_answers_leave_without_waiting_for_the_clients_acks(server: tuple[WebhookServer, bytes],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer leaves in two writes (headers, body): with Nagle's algorithm on a kept-open connection the
    body waited for the API server's delayed ACK, 40 ms on every review (make bench-kube measured it)."""
    srv, ca = server
    nodelay: list[int] = []
    close = srv.shutdown_request

    def record(request: Any) -> None:
        nodelay.append(request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        close(request)

    monkeypatch.setattr(srv, "shutdown_request", record)
    status, _ = post(srv, ca, json.dumps(request("IPAddressPool", pool(["198.18.0.1-198.18.0.2"]))).encode())
    assert status == 200
    assert wait_for(lambda: nodelay, timeout=10, step=0.05) and all(nodelay), nodelay


# -- a pod's interface names, as ADD holds them ---------------------------------------------------------

SPEC = "network.deckhouse.io/networks-spec"


def pod_review(annotations: dict[str, str], namespace: str = "apps") -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE",
                        "namespace": namespace, "object": {"apiVersion": "v1", "kind": "Pod",
                                                           "metadata": {"name": "p", "annotations": annotations}}}}


def daemon_refusal(annotations: dict[str, str]) -> AnnotationInvalid:
    with pytest.raises(AnnotationInvalid) as err:
        wanted(annotations)  # the ADD path: ipamd.verbs.networks.Networks.wanted, CNI_IFNAME eth0
    return err.value


@pytest.mark.parametrize("annotations", [
    {NETWORKS_ANNOTATION: "bridge-net@x1, static@x1"},  # twice in the comma form
    {NETWORKS_ANNOTATION: json.dumps([{"name": "bridge-net", "interface": "x1"}, {"name": "static", "interface": "x1"}])},
    {NETWORKS_ANNOTATION: "bridge-net@net1", SPEC: json.dumps([{"type": "Network", "name": "net-a"}])},  # across
    {NETWORKS_ANNOTATION: "bridge-net@x1", SPEC: json.dumps([{"type": "Network", "name": "net-a", "ifName": "x1"}])},
])
def test_an_interface_name_claimed_twice_is_refused_at_admission_as_add_refuses_it(annotations: dict[str, str]) -> None:
    """ADD refuses these (npwg.interface_names); the webhook parses each dialect alone and admits them, so the pod is
    created and then sits in ContainerCreating with the error in its events."""
    refused = daemon_refusal(annotations)
    resp = review(pod_review(annotations))["response"]
    assert resp["allowed"] is False, (refused.msg, resp)
    assert refused.details in resp["status"]["message"] and refused.msg in resp["status"]["message"]


@pytest.mark.parametrize("annotations", [
    {NETWORKS_ANNOTATION: "bridge-net@eth0"},
    {SPEC: json.dumps([{"type": "Network", "name": "net-a", "ifName": "eth0"}])},
])
def test_the_runtimes_own_interface_name_is_refused_at_admission(annotations: dict[str, str]) -> None:
    """Every Kubernetes runtime (containerd, CRI-O) runs CNI with CNI_IFNAME=eth0; ADD refuses a second eth0 (and so
    does Multus, multus#669), the webhook admits it."""
    daemon_refusal(annotations)
    assert review(pod_review(annotations))["response"]["allowed"] is False


# -- the AdmissionReview protocol, and the server's answers to what is not one --------------------------

def test_the_answer_is_in_the_reviews_own_api_version() -> None:
    """The API server checks the response's apiVersion against the one it sent; v1beta1 gets a v1 answer."""
    doc = pod_review({})
    doc["apiVersion"] = "admission.k8s.io/v1beta1"
    try:
        out = review(doc)
    except ReviewInvalid:
        return  # refused as a version it does not speak: also fine (400)
    assert out["apiVersion"] == "admission.k8s.io/v1beta1"


@pytest.mark.parametrize("field, value", [("kind", "Pod"), ("object", {"metadata": None})])
def test_a_malformed_request_is_review_invalid_not_a_crash(field: str, value: Any) -> None:
    doc = pod_review({})
    doc["request"][field] = value
    if field == "object":
        doc["request"]["kind"] = {"group": "network.deckhouse.io", "version": "v1alpha1", "kind": "Network"}
    try:
        review(doc)
    except ReviewInvalid:
        pass  # a 400 with the reason


@pytest.fixture
def quick_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[WebhookServer, ssl.SSLContext]]:
    monkeypatch.setattr(webhook._Handler, "timeout", 0.5)
    bundle = issue(["127.0.0.1"], dt.datetime.now(dt.UTC))
    srv = WebhookServer(("127.0.0.1", 0), bundle)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv, ssl.create_default_context(cadata=bundle.ca_pem.decode())
    finally:
        srv.shutdown()
        srv.server_close()


def connect(srv: WebhookServer, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=5)
    return ctx.wrap_socket(sock, server_hostname="127.0.0.1")


def exchange(srv: WebhookServer, ctx: ssl.SSLContext, head: bytes, body: bytes) -> bytes:
    with connect(srv, ctx) as tls:
        tls.sendall(head + body)
        try:
            return tls.recv(65536)
        except (TimeoutError, OSError):
            return b""


@pytest.mark.parametrize("head, body", [
    (b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", b""),
    (b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 400000\r\n\r\n", b"[" * 200000 + b"]" * 200000),
    (b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 80\r\n\r\n",
     b'{"kind": "AdmissionReview", "request": {"uid": "u", "kind": "Pod"}}'.ljust(80)),
])
def test_a_bad_request_gets_a_400_not_a_dropped_connection(quick_server: tuple[WebhookServer, ssl.SSLContext],
                                                            head: bytes, body: bytes) -> None:
    """A dropped connection is a call failure: under failurePolicy Fail the API server refuses the object with
    "failed calling webhook" and no reason; under Ignore it admits it unreviewed."""
    srv, ctx = quick_server
    assert exchange(srv, ctx, head, body).startswith(b"HTTP/1.1 400")


def test_a_client_that_drips_its_body_is_cut_off(quick_server: tuple[WebhookServer, ssl.SSLContext]) -> None:
    """``timeout`` bounds each recv, not the request: a byte every 0.3 s (timeout 0.5 s here, 15 s deployed) holds
    a thread as long as the client likes, and ThreadingHTTPServer starts one per connection without a limit."""
    srv, ctx = quick_server
    with connect(srv, ctx) as tls:
        tls.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        deadline = time.monotonic() + 4
        cut = False
        while time.monotonic() < deadline and not cut:
            try:
                tls.sendall(b" ")
                tls.settimeout(0.3)
                cut = tls.recv(1024) is not None  # an answer (408/400) or EOF: the server gave up on us
            except TimeoutError:
                continue
            except OSError:
                cut = True
        assert cut, "the server still reads a body that trickles in for 4 s"


def test_a_connection_over_the_cap_is_closed_at_once() -> None:
    """ThreadingHTTPServer started a thread for every connection, without a limit: clients that open many and
    idle or drip (each held up to ``timeout``) ran the controller out of threads. One over the cap is closed at
    accept, before its handshake; a slot is free again when its connection ends."""
    bundle = issue(["127.0.0.1"], dt.datetime.now(dt.UTC))
    srv = WebhookServer(("127.0.0.1", 0), bundle, max_connections=1)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    ctx = ssl.create_default_context(cadata=bundle.ca_pem.decode())
    body = json.dumps(request("IPAddressPool", pool(["198.18.0.1-198.18.0.2"]))).encode()

    def answered() -> bool:
        try:
            return post(srv, bundle.ca_pem, body)[0] == 200
        except OSError:
            return False

    try:
        with connect(srv, ctx):  # handshaken, idle: it holds the one slot
            with pytest.raises(OSError):
                connect(srv, ctx).close()
        assert wait_for(answered, timeout=10, step=0.05), "the slot of a closed connection is free again"
    finally:
        srv.shutdown()
        srv.server_close()


# -- the ValidatingWebhookConfiguration ---------------------------------------------------------------

def test_ipam_claims_are_reviewed_like_the_other_npwg_objects() -> None:
    """The daemon parses IPAMClaims (objects._ipam_claim) and refuses one with two ipRequests, which the CRD allows
    (maxItems: 2, one per family); no rule sends them to the webhook, so such a claim is stored and the pod's ADD
    then reads "IPAMClaim ns/c does not exist" (delegated._claim_object), though review() would refuse it."""
    import yaml

    docs = list(yaml.safe_load_all((REPO / "packaging" / "k8s" / "controller.yaml").read_text()))
    (config,) = [d for d in docs if d and d.get("kind") == "ValidatingWebhookConfiguration"]
    reviewed = {(group, resource) for hook in config["webhooks"] for rule in hook["rules"]
                if "CREATE" in rule["operations"] for group in rule["apiGroups"] for resource in rule["resources"]}
    assert ("k8s.cni.cncf.io", "ipamclaims") in reviewed, sorted(reviewed)


def ip_address(network: str, ip: str = "198.18.41.9", address: str = "", kind: str = "IPAddress") -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": f"{GROUP}/v1alpha1", "kind": kind, "metadata": {"name": "db"},
                           "spec": {"networkRef": {"kind": "Network", "name": network}, "type": "Static",
                                    "static": {"ip": ip}}}
    if address:
        obj["status"] = {"phase": "Allocated", "address": address}
    return obj


def test_an_ip_address_that_holds_its_address_keeps_its_network_and_address() -> None:
    """A user's IPAddress whose address is leased (and maybe on a pod's or VM's interface) cannot be moved to another
    network, nor asked for another address, by an edit: its lease would stay where it was while its status said
    otherwise. Delete it and create it again. An IPAddress without an address yet may be edited freely."""
    doc = request("IPAddress", ip_address("net-b"), "UPDATE")
    doc["request"]["oldObject"] = ip_address("net-a", address="198.18.41.9")
    got = answer(doc)
    assert not got["allowed"] and "spec.networkRef" in got["status"]["message"] \
        and "198.18.41.9" in got["status"]["message"], got
    doc["request"]["object"] = ip_address("net-a", ip="198.18.41.10")
    got = answer(doc)
    assert not got["allowed"] and "spec.static.ip" in got["status"]["message"], got
    auto = ip_address("net-a")
    auto["spec"] = {"networkRef": {"kind": "Network", "name": "net-a"}, "type": "Auto"}
    doc["request"]["object"] = auto
    got = answer(doc)
    assert not got["allowed"] and "spec.type" in got["status"]["message"], got
    doc["request"]["object"] = {**ip_address("net-a"), "metadata": {"name": "db", "labels": {"team": "x"}}}
    assert answer(doc)["allowed"], "another change, the network and address kept"
    doc["request"]["object"] = ip_address("net-b")
    doc["request"]["oldObject"] = ip_address("net-a")
    assert answer(doc)["allowed"], "no address yet: nothing to keep"
    cluster = request("ClusterIPAddress", ip_address("net-b", kind="ClusterIPAddress"), "UPDATE")
    cluster["request"]["oldObject"] = ip_address("net-a", address="198.18.41.9", kind="ClusterIPAddress")
    assert not answer(cluster)["allowed"]


def test_adding_a_matching_ipfamily_to_an_allocated_static_is_not_a_move() -> None:
    """spec.ipFamily: IPv4 added to a Static 192.168.10.50 that holds it: the same address, the same family; the
    webhook compares the parsed family (0 before, 4 after) and refuses it as a move."""
    spec = {"networkRef": {"kind": "Network", "name": "n"}, "type": "Static", "static": {"ip": "192.168.10.50"}}
    old = {"apiVersion": "network.deckhouse.io/v1alpha1", "kind": "IPAddress",
           "metadata": {"name": "a", "namespace": "ns"}, "spec": spec,
           "status": {"address": "192.168.10.50", "phase": "Allocated"}}
    new = {**old, "spec": {**spec, "ipFamily": "IPv4"}}
    doc = request("IPAddress", new, "UPDATE")
    doc["request"]["oldObject"] = old
    got = review(doc)["response"]
    assert got["allowed"], got.get("status")


def test_an_auto_ip_address_may_name_the_family_it_holds_but_not_another() -> None:
    """An Auto's ipFamily left out (0: the pool's first) resolves to the family of the address it holds: naming that
    family, or dropping it again, is no move; asking for the other family is."""
    auto = {"networkRef": {"kind": "Network", "name": "n"}, "type": "Auto"}
    old = {"kind": "IPAddress", "metadata": {"name": "a"}, "spec": auto,
           "status": {"address": "198.18.41.9", "phase": "Allocated"}}
    doc = request("IPAddress", {**old, "spec": {**auto, "ipFamily": "IPv4"}}, "UPDATE")
    doc["request"]["oldObject"] = old
    assert answer(doc)["allowed"], "the family it holds"
    doc["request"]["object"], doc["request"]["oldObject"] = old, doc["request"]["object"]
    assert answer(doc)["allowed"], "the family dropped: still the one it holds"
    doc["request"]["object"] = {**old, "spec": {**auto, "ipFamily": "IPv6"}}
    got = answer(doc)
    assert not got["allowed"] and "spec.ipFamily" in got["status"]["message"], got
    doc["request"]["oldObject"] = old
    assert not answer(doc)["allowed"], "0 holding IPv4, then IPv6: a move"


# -- what the daemon would serve but not as written: refused when written, served when stored ----------------

def update(kind: str, new: dict[str, Any], old: dict[str, Any], namespace: str = "ns") -> dict[str, Any]:
    doc = request(kind, new, "UPDATE", namespace=namespace)
    doc["request"]["oldObject"] = old
    return doc


def refusal(doc: dict[str, Any], **kw: Any) -> str:
    """The webhook's message ("" when it allows the object)."""
    resp = review(doc, **kw)["response"]
    return "" if resp["allowed"] else str(resp["status"]["message"])


# an Auto IPAddress with a static.ip

def auto_address(static_ip: str | None = "198.18.41.9", typ: str | None = "Auto",
                 labels: dict[str, str] | None = None, kind: str = "IPAddress") -> dict[str, Any]:
    spec: dict[str, Any] = {"networkRef": {"kind": "Network" if kind == "IPAddress" else "ClusterNetwork",
                                           "name": "net-a"}}
    if typ is not None:
        spec["type"] = typ
    if static_ip is not None:
        spec["static"] = {"ip": static_ip}
    return {"apiVersion": API, "kind": kind, "metadata": {"name": "a", "labels": labels or {}}, "spec": spec}


@pytest.mark.parametrize("typ", ["Auto", None])  # type left out: Auto
def test_an_auto_ip_address_with_a_static_ip_is_refused_on_create_naming_the_field(typ: str | None) -> None:
    """The seed: "spec.type: Auto (without specifying the static.ip parameter)". The daemon drops it (objects.
    _ip_address reads static only for a Static), so the user who wrote it gets some address of the pool instead."""
    msg = refusal(request("IPAddress", auto_address(typ=typ)))
    assert "IPAddress ns/a: spec.static.ip" in msg and "198.18.41.9" in msg and "Auto" in msg, msg
    assert refusal(request("ClusterIPAddress", auto_address(kind="ClusterIPAddress"), namespace="")), "cluster-scoped too"
    assert not refusal(request("IPAddress", auto_address(static_ip=None, typ=typ))), "an Auto without one"
    assert not refusal(request("IPAddress", auto_address(typ="Static"))), "a Static with one"


def test_an_edit_that_gives_an_auto_ip_address_a_static_ip_is_refused_but_one_stored_with_it_is_kept() -> None:
    msg = refusal(update("IPAddress", auto_address(), auto_address(static_ip=None)))
    assert "spec.static.ip" in msg, "added by the edit"
    assert "spec.static.ip" in refusal(update("IPAddress", auto_address(), auto_address(typ="Static"))), \
        "a Static made Auto keeping its static.ip: the address the user wanted is dropped"
    stored = auto_address()
    assert not refusal(update("IPAddress", auto_address(labels={"team": "x"}), stored)), \
        "stored before this check: another edit (a label, a finalizer gone) is not refused for it"
    assert "spec.static.ip" in refusal(update("IPAddress", auto_address(static_ip="198.18.41.10"), stored)), \
        "another static.ip: added by this edit"


# an untagged network with a VLAN ID

def cluster_network(typ: str = "Access", vlan_id: int | None = 900, name: str = "flat") -> dict[str, Any]:
    spec: dict[str, Any] = {"type": typ, "parentNodeNetworkInterfaces": {"names": ["eth1"]}}
    if vlan_id is not None:
        spec["vlan"] = {"id": vlan_id}
    return {"apiVersion": API, "kind": "ClusterNetwork", "metadata": {"name": name}, "spec": spec}


def network_on(cls: str = "flat-class", vlan_id: int | None = 650, name: str = "net-a") -> dict[str, Any]:
    spec: dict[str, Any] = {"networkClass": cls}
    if vlan_id is not None:
        spec["vlan"] = {"id": vlan_id}
    return {"apiVersion": API, "kind": "Network", "metadata": {"name": name}, "spec": spec}


CLASSES = {
    "flat-class": parse_object({"apiVersion": API, "kind": "NetworkClass", "metadata": {"name": "flat-class"},
                                "spec": {}}),
    "vlan-class": parse_object({"apiVersion": API, "kind": "NetworkClass", "metadata": {"name": "vlan-class"},
                                "spec": {"vlan": {"idPool": ["600-800"]}}}),
    "vxlan-class": parse_object({"apiVersion": API, "kind": "NetworkClass", "metadata": {"name": "vxlan-class"},
                                 "spec": {"vxlan": {"vniPool": ["600-800"]}}}),
}


def classes(name: str) -> NetworkClass | None:
    found = CLASSES.get(name)
    return found if isinstance(found, NetworkClass) else None


def test_an_access_cluster_network_with_a_vlan_id_is_refused_naming_the_field() -> None:
    """Type Access is the parent NIC itself, untagged (segments.segment_kind): its spec.vlan.id is dropped, and the
    administrator who wrote it gets an untagged segment."""
    msg = refusal(request("ClusterNetwork", cluster_network(), namespace=""))
    assert "ClusterNetwork flat: spec.vlan.id" in msg and "Access" in msg, msg
    assert not refusal(request("ClusterNetwork", cluster_network(vlan_id=None), namespace=""))
    assert not refusal(request("ClusterNetwork", cluster_network("VLAN"), namespace=""))
    assert "spec.vlan.id" in refusal(update("ClusterNetwork", cluster_network(), cluster_network(vlan_id=None), ""))
    assert "spec.vlan.id" in refusal(update("ClusterNetwork", cluster_network(), cluster_network("VLAN"), "")), \
        "VLAN made Access keeping its ID"
    stored = cluster_network()
    relabelled = copy.deepcopy(stored)
    relabelled["metadata"]["labels"] = {"team": "x"}
    assert not refusal(update("ClusterNetwork", relabelled, stored, "")), "stored before: kept"
    obj = parse_object(stored)
    assert isinstance(obj, ClusterNetwork) and obj.vlan_id == 900, "the parser still serves it"


def test_a_network_of_an_untagged_class_with_a_vlan_id_is_refused_naming_the_field() -> None:
    """The seed: a Network's spec.vlan.id is "from the pool assigned by the cluster or network administrator"; a class
    with neither vlan nor vxlan has none (its networks are untagged), and the ID was dropped."""
    msg = refusal(request("Network", network_on()), network_class=classes)
    assert "Network ns/net-a: spec.vlan.id" in msg and "flat-class" in msg, msg
    assert not refusal(request("Network", network_on("vlan-class")), network_class=classes)
    assert not refusal(request("Network", network_on("vxlan-class")), network_class=classes), "a VNI asked for"
    assert not refusal(request("Network", network_on("not-yet")), network_class=classes), "a class not known: unsure"
    assert not refusal(request("Network", network_on(vlan_id=None)), network_class=classes)
    assert not refusal(request("Network", network_on())), "without the classes: not checked"
    assert "spec.vlan.id" in refusal(update("Network", network_on(), network_on("vlan-class")), network_class=classes), \
        "moved to an untagged class keeping its ID"
    assert not refusal(update("Network", network_on(), network_on()), network_class=classes), "stored before: kept"


@pytest.mark.parametrize("doc, cls", [
    (cluster_network(), None), (cluster_network("VLAN"), None), (cluster_network(vlan_id=None), None),
    (network_on(), "flat-class"), (network_on("vlan-class"), "vlan-class"), (network_on("vxlan-class"), "vxlan-class"),
    (network_on(vlan_id=None), "flat-class"),
])
def test_the_vlan_id_refusal_agrees_with_the_segment_kind(doc: dict[str, Any], cls: str | None) -> None:
    obj = parse_object({**doc, "metadata": {**doc["metadata"], "namespace": "ns"}})
    assert isinstance(obj, (Network, ClusterNetwork))
    untagged = not segment_kind(obj, classes(cls) if cls else None).tagged
    refused = "spec.vlan.id" in refusal(request(doc["kind"], doc), network_class=classes)
    assert refused == (untagged and obj.vlan_id is not None)


# a pool entry with no address to hand out

def pool_of(entries: list[dict[str, Any]], kind: str = "IPAddressPool") -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": "p"}, "spec": {"pools": entries}}


@pytest.mark.parametrize("entries, index", [
    ([{"network": "198.18.0.0/24", "ranges": ["198.18.0.0"]}], 0),  # the network address only
    ([{"network": "198.18.0.0/24", "ranges": ["198.18.0.255"]}], 0),  # the broadcast address only
    ([{"network": "198.18.0.7/32", "routes": [{"destination": "10.0.0.0/8", "via": "198.18.0.7"}]}], 0),
    ([{"network": "198.18.0.0/24", "ranges": ["198.18.0.1"],
       "routes": [{"destination": "10.0.0.0/8", "via": "198.18.0.1"}]}], 0),  # its one address is the gateway
    ([{"network": "198.18.0.0/24"}, {"network": "2001:2::/64", "ranges": ["2001:2::"]}], 1),  # one family empty
])
def test_a_pool_entry_with_no_address_to_hand_out_is_refused_naming_it(entries: list[dict[str, Any]],
                                                                       index: int) -> None:
    """Accepted silently, and every ADD from it then failed "pool exhausted"."""
    msg = refusal(request("IPAddressPool", pool_of(entries)))
    assert f"IPAddressPool ns/p: spec.pools[{index}]" in msg and entries[index]["network"] in msg, msg
    assert f"spec.pools[{1 - index}]" not in msg
    assert refusal(request("ClusterIPAddressPool", pool_of(entries, "ClusterIPAddressPool"), namespace=""))
    obj = parse_object({**pool_of(entries), "metadata": {"name": "p", "namespace": "ns"}})
    assert isinstance(obj, AddressPool) and obj.subnets[index].size == 0, "the parser still serves it"


def test_a_full_pool_is_not_an_empty_one() -> None:
    """Every address leased: full, not refused (nor is an edit of it)."""
    full = pool_of([{"network": "198.18.0.0/30"}])
    leased = ["198.18.0.1", "198.18.0.2"]
    assert not refusal(request("IPAddressPool", full), leased=lambda key: leased)
    assert not refusal(update("IPAddressPool", full, full), leased=lambda key: leased)


def test_an_edit_that_empties_a_pool_entry_is_allowed_with_a_warning_but_a_new_empty_one_is_refused() -> None:
    """Draining a subnet: its ranges cut while the addresses leased there stay (flagged outside the ranges) until
    their pods go. The edit was refused, and the operator had to keep a range new pods still got addresses from."""
    empty = pool_of([{"network": "198.18.0.0/24", "ranges": ["198.18.0.0"]}])
    good = pool_of([{"network": "198.18.0.0/24", "ranges": ["198.18.0.10-198.18.0.20"]}])
    assert "spec.pools[0]" in refusal(request("IPAddressPool", empty)), "created so: refused"
    got = review(update("IPAddressPool", empty, good))["response"]
    assert got["allowed"], got
    (warning,) = got["warnings"]
    assert warning.startswith("IPAddressPool ns/p: spec.pools[0]: 198.18.0.0/24 has no address") \
        and "kept" in warning, warning
    assert review(update("IPAddressPool", copy.deepcopy(empty), empty))["response"]["allowed"], "stored before: kept"
    assert "warnings" not in review(update("IPAddressPool", good, empty))["response"], "mended: nothing to warn of"
    assert "warnings" not in review(request("IPAddressPool", good))["response"]
    beta = update("IPAddressPool", empty, good)
    beta["apiVersion"] = "admission.k8s.io/v1beta1"  # the same field in both
    assert review(beta)["response"]["warnings"] == [warning]



def test_an_update_adding_a_new_empty_pool_entry_is_refused_as_a_create_of_one_is() -> None:
    """Only an entry the stored pool had is drained by an edit: one ADDED with no address (a typo'd range) was let
    through with a warning, and every ADD from it then failed "pool exhausted" -- the case the refusal is for."""
    good = {"network": "198.18.0.0/24", "ranges": ["198.18.0.10-198.18.0.20"]}
    new_empty = {"network": "198.18.1.0/24", "ranges": ["198.18.1.255"]}  # the broadcast address only
    assert "spec.pools[1]" in refusal(request("IPAddressPool", pool_of([good, new_empty]))), "created so: refused"
    msg = refusal(update("IPAddressPool", pool_of([good, new_empty]), pool_of([good])))
    assert "IPAddressPool ns/p: spec.pools[1]: 198.18.1.0/24 has no address" in msg, msg
    assert "spec.pools[0]" not in msg


# an address with a zone, a link-local or multicast pool network

@pytest.mark.parametrize("kind, new, field", [
    ("IPAddress", auto_address("2001:2:0:7::98%eth0", "Static"), "spec.static.ip"),
    ("IPAddressPool", pool_of([{"network": "2001:2:0:7::/64", "routes": [{"destination": "2001:2:0:8::/64",
                                                                          "via": "2001:2:0:7::1%eth0"}]}]),
     "spec.pools[0].routes[0].via"),
    ("IPAddressPool", pool_of([{"network": "fe80::/64"}]), "spec.pools[0].network"),
    ("ClusterIPAddressPool", pool_of([{"network": "ff05::/64"}], "ClusterIPAddressPool"), "spec.pools[0].network"),
])
def test_a_zone_or_a_link_local_pool_is_refused_when_written_but_one_stored_is_kept(kind: str, new: dict[str, Any],
                                                                                     field: str) -> None:
    """The daemon serves them (a zone dropped; a link-local pool's pods pass ADD, never CHECK): refused at create,
    naming the field; an edit of one stored so (a label) is let through."""
    ns = "" if kind.startswith("Cluster") else "ns"
    assert f": {field}: " in refusal(request(kind, new, namespace=ns)), kind
    relabelled = copy.deepcopy(new)
    relabelled["metadata"]["labels"] = {"team": "x"}
    doc = request(kind, relabelled, "UPDATE", namespace=ns)
    doc["request"]["oldObject"] = new
    assert not refusal(doc), "stored so: kept"


@pytest.mark.parametrize("kind", ["Network", "ClusterNetwork"])
def test_a_zoned_policy_route_via_is_refused_when_written_or_served_without_the_zone(kind: str) -> None:
    """README: an address written with an IPv6 zone (a route's ``via`` ...) is refused; one stored so is served
    without it. A network's ``spec.policyRoutes[i].via`` was neither: let through, and served WITH the zone (which
    netlink cannot carry: ADD answered 999)."""
    doc = routed(kind=kind)  # its policy routes' gateways' section
    doc["spec"]["policyRoutes"] = [{"destination": "2001:2:0:11::/64", "via": "2001:2::1%eth0"}]
    ns = "ns" if kind == "Network" else ""
    if ns:
        doc["metadata"]["namespace"] = ns
    msg = refusal(request(kind, doc, namespace=ns), network_class=classes)
    assert ": spec.policyRoutes[0].via: '2001:2::1%eth0' names an IPv6 zone" in msg, msg
    net = parse_object(doc)
    assert isinstance(net, (Network, ClusterNetwork))
    assert net.pod.routes[0].via == "2001:2::1", "served without the zone"
    relabelled = copy.deepcopy(doc)
    relabelled["metadata"]["labels"] = {"team": "x"}
    edit = request(kind, relabelled, "UPDATE", namespace=ns)
    edit["request"]["oldObject"] = doc
    assert not refusal(edit, network_class=classes), "stored so: kept"


def test_the_webhook_server_refuses_a_vlan_id_of_a_network_of_an_untagged_class() -> None:
    """review() took a NetworkClass lookup, but the WebhookServer called it without one: the running webhook let a
    Network of an untagged class with a spec.vlan.id through (every class "not known")."""
    bundle = issue(["127.0.0.1"], dt.datetime.now(dt.UTC))
    srv = WebhookServer(("127.0.0.1", 0), bundle, network_class=classes)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        status, doc = post(srv, bundle.ca_pem, json.dumps(request("Network", network_on())).encode())
        assert status == 200 and not doc["response"]["allowed"], doc
        assert "spec.vlan.id" in doc["response"]["status"]["message"], doc
        status, doc = post(srv, bundle.ca_pem, json.dumps(request("Network", network_on("vlan-class"))).encode())
        assert status == 200 and doc["response"]["allowed"], doc
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_controller_process_serves_the_webhook_with_its_informers_network_classes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes import client

    from ipamd.kube.controller_process import ControllerProcess, WebhookConfig
    from tests.fakes.source import FakeSource

    proc = ControllerProcess(client.ApiClient(), "plexus-system", WebhookConfig(address="127.0.0.1", port=0),
                             health_port=0)
    monkeypatch.setattr(proc, "source", FakeSource(*CLASSES.values()))
    srv = proc.webhook_server(issue(["127.0.0.1"], dt.datetime.now(dt.UTC)))
    try:
        assert srv.network_class("flat-class") is CLASSES["flat-class"] and srv.network_class("nope") is None
    finally:
        srv.server_close()


# -- local mode: served as before, reported ---------------------------------------------------------------

def test_local_mode_serves_these_objects_as_before_and_reports_each_naming_the_field(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file in the objects directory is what is stored in a cluster: refused, its network, pool or address would
    stop being served at an upgrade. Each is reported (the daemon's log) naming its file and field."""
    docs = {"auto.yaml": {**auto_address(), "metadata": {"name": "a", "namespace": "ns"}},
            "access.yaml": cluster_network(),
            "class.yaml": {"apiVersion": API, "kind": "NetworkClass", "metadata": {"name": "flat-class"}, "spec": {}},
            "net.yaml": {**network_on(), "metadata": {"name": "net-a", "namespace": "ns"}},
            "pool.yaml": {**pool_of([{"network": "198.18.0.0/24", "ranges": ["198.18.0.0"]}]),
                          "metadata": {"name": "p", "namespace": "ns"}},
            "good.yaml": {**network_on("flat-class", None, "net-b"), "metadata": {"name": "net-b", "namespace": "ns"}}}
    for name, doc in docs.items():
        (tmp_path / name).write_text(yaml.safe_dump(doc))
    loaded = read_directory(str(tmp_path))
    assert len(loaded.objects) == len(docs) and loaded.problems == [], "all served"
    got = {(Path(w.source).name, w.field) for w in loaded.warnings}
    assert got == {("auto.yaml", "spec.static.ip"), ("access.yaml", "spec.vlan.id"), ("net.yaml", "spec.vlan.id"),
                   ("pool.yaml", "spec.pools[0]")}, got
    with caplog.at_level(logging.WARNING, logger="ipamd.sources.local"):
        assert LocalSource(str(tmp_path)).sync() == []
    assert sum("spec.vlan.id" in r.getMessage() for r in caplog.records) == 2, caplog.text


def test_local_mode_reports_a_stored_link_local_pool_entry_as_not_served(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A pool entry whose network is IPv6 link-local, stored before such networks were refused, is served to no pod
    (ADD of its networks is refused: ``unserved_entries``), unlike the rest that is served as stored: the daemon's log
    says so, naming the file, the pool and the field, never that it is served."""
    doc = {**pool_of([{"network": "198.18.0.0/24"}, {"network": "fe80::/64"}]), "metadata": {"name": "p", "namespace": "ns"}}
    (tmp_path / "pool.yaml").write_text(yaml.safe_dump(doc))
    loaded = read_directory(str(tmp_path))
    assert len(loaded.objects) == 1 and loaded.problems == [] and loaded.warnings == [], "served, its leases known"
    assert [(Path(u.source).name, u.field) for u in loaded.unserved] == [("pool.yaml", "spec.pools[1].network")]
    with caplog.at_level(logging.WARNING, logger="ipamd.sources.local"):
        assert LocalSource(str(tmp_path)).sync() == []
    (said,) = [r.getMessage() for r in caplog.records if "fe80::/64" in r.getMessage()]
    assert said.startswith("pool entry served to no pod") and "IPAddressPool ns/p" in said, said
    assert "spec.pools[1].network" in said and "pool.yaml" in said, said


# -- local mode: plexusctl apply refuses what the webhook refuses -------------------------------------------------

def ctl_apply(tmp_path: Path, *files: Path) -> int:
    from ipamd.cli import ctl

    return ctl.main(["--objects-dir", str(tmp_path / "objects"), "--grpc-socket", str(tmp_path / "none.sock"),
                     "apply", *(a for f in files for a in ("-f", str(f)))])


def manifest(tmp_path: Path, name: str, doc: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def namespaced(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "metadata": {**doc["metadata"], "namespace": "ns"}}


@pytest.mark.parametrize("doc, field", [
    (namespaced(auto_address()), "spec.static.ip"),
    (cluster_network(), "spec.vlan.id"),
    (namespaced(network_on()), "spec.vlan.id"),  # its class applied just before, in the same call
    (namespaced(pool_of([{"network": "198.18.0.0/24", "ranges": ["198.18.0.0"]}])), "spec.pools[0]"),
    (namespaced(auto_address("2001:2:0:7::98%eth0", "Static")), "spec.static.ip"),  # a zone
    (namespaced(pool_of([{"network": "fe80::/64"}])), "spec.pools[0].network"),  # link-local
])
def test_plexusctl_apply_refuses_what_the_webhook_refuses_naming_the_file_and_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], doc: dict[str, Any], field: str) -> None:
    """The local mode stored them (and served them without the field, or with a pool always "exhausted")."""
    cls = manifest(tmp_path, "class.yaml", {"apiVersion": API, "kind": "NetworkClass",
                                            "metadata": {"name": "flat-class"}, "spec": {}})
    bad = manifest(tmp_path, "bad.yaml", doc)
    assert ctl_apply(tmp_path, cls, bad) == 1
    err = capsys.readouterr().err
    assert f"error: {bad}: " in err and f": {field}: " in err, err
    assert [p.name for p in (tmp_path / "objects").iterdir()] == ["networkclass._.flat-class.yaml"], "nothing else"


def test_plexusctl_apply_keeps_what_a_stored_file_had_and_warns_of_a_pool_entry_drained(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As the webhook holds an UPDATE against the stored object, apply holds an edit against the object's file."""
    objects = tmp_path / "objects"
    objects.mkdir()
    Path(objectdir.object_file(str(objects), "IPAddress", "ns", "a")).write_text(
        yaml.safe_dump(namespaced(auto_address())))  # stored before these checks
    relabelled = manifest(tmp_path, "auto.yaml", namespaced(auto_address(labels={"team": "x"})))
    assert ctl_apply(tmp_path, relabelled) == 0, capsys.readouterr().err
    assert "ipaddress/a configured" in capsys.readouterr().out
    moved = manifest(tmp_path, "auto.yaml", namespaced(auto_address(static_ip="198.18.41.10")))
    assert ctl_apply(tmp_path, moved) == 1
    assert "spec.static.ip" in capsys.readouterr().err, "another static.ip: brought by this edit"

    good = namespaced(pool_of([{"network": "198.18.0.0/24", "ranges": ["198.18.0.10-198.18.0.20"]}]))
    assert ctl_apply(tmp_path, manifest(tmp_path, "pool.yaml", good)) == 0
    capsys.readouterr()
    drained = manifest(tmp_path, "pool.yaml", namespaced(pool_of([{"network": "198.18.0.0/24",
                                                                   "ranges": ["198.18.0.0"]}])))
    assert ctl_apply(tmp_path, drained) == 0
    out = capsys.readouterr()
    assert "ipaddresspool/p configured" in out.out
    assert f"warning: {drained}: IPAddressPool ns/p: spec.pools[0]: 198.18.0.0/24" in out.err, out.err
    written = yaml.safe_load(Path(objectdir.object_file(str(objects), "IPAddressPool", "ns", "p")).read_text())
    assert written["spec"]["pools"][0]["ranges"] == ["198.18.0.0"]
    assert ctl_apply(tmp_path, drained) == 0
    out = capsys.readouterr()
    assert "ipaddresspool/p unchanged" in out.out and "warning: " not in out.err, "nothing written: no word (kubectl's)"
    relabelled_pool = namespaced(pool_of([{"network": "198.18.0.0/24", "ranges": ["198.18.0.0"]}]))
    relabelled_pool["metadata"]["labels"] = {"team": "x"}
    assert ctl_apply(tmp_path, manifest(tmp_path, "pool.yaml", relabelled_pool)) == 0
    out = capsys.readouterr()
    assert "ipaddresspool/p configured" in out.out and "warning: " not in out.err, \
        "an entry stored drained already is not warned of again by a label edit"



def test_plexusctl_apply_refuses_an_edit_adding_a_new_empty_pool_entry(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The same in local mode: the edit was written, with a warning that the new entry's leases "are kept ... until
    their pods ... let them go" (it has none)."""
    good = {"network": "198.18.0.0/24", "ranges": ["198.18.0.10-198.18.0.20"]}
    new_empty = {"network": "198.18.1.0/24", "ranges": ["198.18.1.255"]}
    assert ctl_apply(tmp_path, manifest(tmp_path, "pool.yaml", namespaced(pool_of([good])))) == 0
    capsys.readouterr()
    rc = ctl_apply(tmp_path, manifest(tmp_path, "pool.yaml", namespaced(pool_of([good, new_empty]))))
    err = capsys.readouterr().err
    assert rc == 1, f"written (rc 0), only warned: {err.strip()}"
    assert ": spec.pools[1]: 198.18.1.0/24 has no address" in err and "warning: " not in err, err
    written = yaml.safe_load(Path(objectdir.object_file(str(tmp_path / "objects"), "IPAddressPool", "ns", "p"))
                             .read_text())
    assert written["spec"]["pools"] == [good], "the stored pool as it was"


# -- a network's policy routes' gateways ----------------------------------------------------------------------

def routed(via: str = "198.18.10.50", kind: str = "Network") -> dict[str, Any]:
    ref = {"kind": "IPAddressPool" if kind == "Network" else "ClusterIPAddressPool", "name": "pool"}
    spec: dict[str, Any] = {"ipam": {"ipAddressPoolRef": ref}, "routingTable": 100,
                            "policyRoutes": [{"destination": "10.9.0.0/16", "via": "198.18.10.1"},
                                             {"destination": "0.0.0.0/0", "via": via}]}
    if kind == "Network":
        spec["networkClass"] = "vlan-class"
    else:
        spec.update(type="VLAN", vlan={"id": 700})
    return {"apiVersion": API, "kind": kind, "metadata": {"name": "net"}, "spec": spec}


def test_a_network_written_to_route_via_a_leased_address_is_refused_naming_the_field() -> None:
    """Found in review: a user's Auto IPAddress holds 198.18.10.50, no pod using it; the Network is edited to add a
    policy route via 198.18.10.50. The pool never hands a network's pods its policy routes' gateways (AddressPool.
    for_network), but the IPAddress keeps the address it holds, and the next pod naming it got the router's address.
    Refused as a pool route's via is (``_made_gateway``)."""
    held = {("IPAddressPool/ns/pool", "Network/ns/net"): ["198.18.10.50"],
            ("ClusterIPAddressPool/pool", "ClusterNetwork/net"): ["198.18.10.50"]}

    def leased_for(pool: str, net: str) -> list[str]:
        return held.get((pool, net), [])

    bare = routed()
    del bare["spec"]["policyRoutes"], bare["spec"]["routingTable"]
    msg = refusal(update("Network", routed(), bare), leased_for=leased_for)
    assert "Network ns/net: spec.policyRoutes[1].via: 198.18.10.50" in msg and "policyRoutes[0]" not in msg, msg
    assert refusal(request("Network", routed()), leased_for=leased_for), "created so: refused too"
    msg = refusal(request("ClusterNetwork", routed(kind="ClusterNetwork"), namespace=""), leased_for=leased_for)
    assert "ClusterNetwork net: spec.policyRoutes[1].via: 198.18.10.50" in msg, msg
    assert "spec.policyRoutes[1].via" in refusal(request("Network", routed()), leased=lambda pool: ["198.18.10.50"]), \
        "without leased_for: every lease of the pool"
    assert not refusal(update("Network", routed("198.18.10.51"), bare), leased_for=leased_for), "a gateway unleased"
    assert not refusal(update("Network", routed(), bare), leased_for=lambda pool, net: []), \
        "leased for another network sharing the pool: a router of this one's segment only"
    relabelled = routed()
    relabelled["metadata"]["labels"] = {"team": "x"}
    assert not refusal(update("Network", relabelled, routed()), leased_for=leased_for), \
        "stored so before: another edit (a label) is not refused for it"
    elsewhere = routed()
    elsewhere["spec"]["ipam"]["ipAddressPoolRef"]["name"] = "pool-2"
    held[("IPAddressPool/ns/pool-2", "Network/ns/net")] = ["198.18.10.50"]
    assert "spec.policyRoutes[1].via" in refusal(update("Network", elsewhere, routed()), leased_for=lambda pool, net:
                                                 [] if pool == "IPAddressPool/ns/pool" else held[(pool, net)]), \
        "the same gateway, of another pool: brought by the edit"


def test_the_webhook_warns_of_a_drain_once_not_on_each_later_edit_of_the_drained_pool() -> None:
    """The warning comes with the edit that empties an entry; a later label edit of the pool stored drained is not
    told it again (kubectl printed it on every update)."""
    from ipamd.kube.admission import warnings_of

    good = namespaced(pool_of([{"network": "198.18.0.0/24", "ranges": ["198.18.0.10-198.18.0.20"]}]))
    drained = namespaced(pool_of([{"network": "198.18.0.0/24", "ranges": ["198.18.0.0"]}]))
    (said,) = warnings_of(drained, old=good)
    assert "spec.pools[0]" in said
    relabelled = copy.deepcopy(drained)
    relabelled["metadata"]["labels"] = {"team": "x"}
    assert warnings_of(relabelled, old=drained) == []

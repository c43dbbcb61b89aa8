"""The validating webhook: the daemon's own parsers decide, the answer names the field, and the
HTTPS server really serves it with a certificate the API server can check."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ipamd.kube.admission import ReviewInvalid, review
from ipamd.kube.certs import issue, still_good
from ipamd.kube.webhook import WebhookServer
from tests.conftest import wait_for

GROUP = "network.deckhouse.io"


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

"""The validating webhook against the real API server: what a 1.20 schema cannot refuse (a range outside
its network, a bad MAC in networks-spec) is refused by ``kubectl apply`` with the field named; the
controller keeps the TLS itself (its Secret, the configuration's caBundle); the failure policies do what
controller.yaml says when no controller answers."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, wait_for
from tests.kube.conftest import NS, Cluster, ControllerProcess

GROUP = "network.deckhouse.io"
CONTROLLER_YAML = REPO / "packaging" / "k8s" / "controller.yaml"
TEST_NS = "kwebhook"


def configuration(url: str) -> dict[str, Any]:
    """The packaged ValidatingWebhookConfiguration, pointed at the test controller by URL (the test API
    server has no Service network to reach one through)."""
    (doc,) = [d for d in yaml.safe_load_all(CONTROLLER_YAML.read_text()) if d and d["kind"] == "ValidatingWebhookConfiguration"]
    for hook in doc["webhooks"]:
        hook["clientConfig"] = {"url": url}
    return dict(doc)


@pytest.fixture(scope="module")
def webhook(cluster: Cluster, controller: ControllerProcess) -> Iterator[Cluster]:
    cluster.apply([configuration(controller.url), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TEST_NS}}])
    try:
        # the controller notices the configuration (it looks every 10 s) and trusts its CA there
        assert wait_for(lambda: ca_written(cluster), timeout=30), controller.log.read_text()[-3000:]
        assert "denied the request" in denied(cluster, pool("probe", ["198.18.91.10-198.18.91.20"])), \
            "the API server calls the webhook"
        yield cluster
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", "plexus", "--ignore-not-found")


def ca_written(cluster: Cluster) -> bool:
    hooks = cluster.get("validatingwebhookconfiguration", "plexus")["webhooks"]
    return all(h["clientConfig"].get("caBundle") for h in hooks)


def denied(cluster: Cluster, doc: dict[str, Any], timeout: float = 30) -> str:
    """What ``kubectl apply`` of an object the webhook refuses said, once the API server calls the webhook: the
    caBundle kubectl shows may not be in the API server's webhook client yet, and until it is the call fails ("failed
    calling webhook", Fail: refused too, but not by the webhook). An object stored is returned at once (as "")."""
    last = [""]

    def answered() -> bool:
        code, err = apply(cluster, doc)
        last[0] = err if code != 0 else ""
        return code == 0 or "failed calling webhook" not in err

    wait_for(answered, timeout=timeout, step=1)
    return last[0]


def pool(name: str, ranges: list[str]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "IPAddressPool", "metadata": {"name": name, "namespace": TEST_NS},
            "spec": {"pools": [{"network": "198.18.90.0/24", "ranges": ranges}]}}


def pod(name: str, mac: str) -> dict[str, Any]:
    spec = [{"type": "Network", "name": "n", "ifName": "veth_mynet", "mac": mac}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": TEST_NS,
                                                            "annotations": {f"{GROUP}/networks-spec": json.dumps(spec)}},
            "spec": {"nodeName": "nowhere", "containers": [{"name": "c", "image": "busybox"}]}}


def apply(cluster: Cluster, doc: dict[str, Any]) -> tuple[int, str]:
    res = cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc), check=False)
    return res.returncode, res.stderr


def exists(cluster: Cluster, kind: str, name: str) -> bool:
    return cluster.kubectl("get", kind, "-n", TEST_NS, name, check=False).returncode == 0


@pytest.mark.netns
def test_the_controller_keeps_the_webhook_tls(webhook: Cluster) -> None:
    secret = webhook.get("secret", "-n", NS, "plexus-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"ca.crt", "tls.crt", "tls.key"}
    for hook in webhook.get("validatingwebhookconfiguration", "plexus")["webhooks"]:
        assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"], hook["name"]
    assert base64.b64decode(secret["data"]["ca.crt"]).startswith(b"-----BEGIN CERTIFICATE-----")


@pytest.mark.netns
def test_a_recreated_configuration_trusts_the_controller_again(webhook: Cluster, controller: ControllerProcess) -> None:
    """Deleted and applied again without the caBundle (or replaced, as an upgrade may do): the running
    controller writes its CA back within seconds (it once waited for a certificate check ten minutes on)."""
    webhook.kubectl("delete", "validatingwebhookconfiguration", "plexus")
    webhook.apply([configuration(controller.url)])
    assert wait_for(lambda: ca_written(webhook), timeout=30), controller.log.read_text()[-3000:]
    err = denied(webhook, pool("again", ["198.18.91.10-198.18.91.20"]))
    assert 'admission webhook "objects.plexus.network.deckhouse.io" denied the request' in err, err


@pytest.mark.netns
def test_a_range_outside_its_network_is_refused_by_kubectl_apply(webhook: Cluster) -> None:
    code, err = apply(webhook, pool("outside", ["198.18.91.10-198.18.91.20"]))
    assert code != 0
    assert "objects.plexus.network.deckhouse.io" in err and "denied" in err
    assert ('admission webhook "objects.plexus.network.deckhouse.io" denied the request: IPAddressPool '
            "kwebhook/outside: spec.pools[0].ranges[0]: '198.18.91.10-198.18.91.20' lies outside 198.18.90.0/24") in err, err
    assert not exists(webhook, "ipaddresspool", "outside"), "nothing stored"
    code, err = apply(webhook, pool("inside", ["198.18.90.10-198.18.90.20"]))
    assert code == 0, err
    # an update that moves a range out is refused too, and the stored object stays as it was
    code, err = apply(webhook, pool("inside", ["198.18.90.10-198.18.92.20"]))
    assert code != 0 and "spec.pools[0].ranges[0]" in err
    stored = webhook.get("ipaddresspool", "-n", TEST_NS, "inside")
    assert stored["spec"]["pools"][0]["ranges"] == ["198.18.90.10-198.18.90.20"]


@pytest.mark.netns
@pytest.mark.parametrize("mac", ["aa:bb:cc:dd:ee", "01:00:5e:00:00:01", "zz:bb:cc:dd:ee:ff"])
def test_a_bad_mac_in_networks_spec_is_refused_by_kubectl_apply(webhook: Cluster, mac: str) -> None:
    name = "mac-" + mac.replace(":", "")[:8]
    code, err = apply(webhook, pod(name, mac))
    assert code != 0 and "pods.plexus.network.deckhouse.io" in err and "denied" in err
    assert "networks-spec[0].mac" in err, err
    if mac == "aa:bb:cc:dd:ee":  # the message as the README shows it
        assert ('denied the request: annotation network.deckhouse.io/networks-spec: networks-spec[0].mac '
                "'aa:bb:cc:dd:ee' is not a MAC address like aa:bb:cc:dd:ee:ff") in err, err
    assert not exists(webhook, "pod", name)


@pytest.mark.netns
def test_the_seeds_pod_with_its_mac_is_admitted(webhook: Cluster) -> None:
    code, err = apply(webhook, pod("seed-mac", "aa:bb:cc:dd:ee:ff"))
    assert code == 0, err
    webhook.kubectl("delete", "pod", "-n", TEST_NS, "seed-mac", "--wait=false")


@pytest.mark.netns
def test_without_a_controller_pods_still_start_and_networks_wait(webhook: Cluster,
                                                                 controller: ControllerProcess) -> None:
    with controller.paused():
        # pods: Ignore. A controller outage never stops pods (the node daemon still refuses a bad MAC at ADD)
        code, err = apply(webhook, pod("while-down", "01:00:5e:00:00:01"))
        assert code == 0, err
        # Plexus's own objects: Fail. Nothing unchecked is stored
        code, err = apply(webhook, pool("while-down", ["198.18.90.30-198.18.90.40"]))
        assert code != 0 and "failed calling webhook" in err, err
        assert not exists(webhook, "ipaddresspool", "while-down")
    webhook.kubectl("delete", "pod", "-n", TEST_NS, "while-down", "--wait=false")
    assert wait_for(lambda: apply(webhook, pool("after", ["198.18.90.30-198.18.90.40"]))[0] == 0, timeout=30)


@pytest.mark.netns
def test_user_ipaddresses_are_reviewed_but_not_the_ones_nodes_make_during_add(webhook: Cluster) -> None:
    def static_without_ip(name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "IPAddress",
                "metadata": {"name": name, "namespace": TEST_NS, "labels": labels},
                "spec": {"networkRef": {"kind": "Network", "name": "net"}, "type": "Static"}}

    code, err = apply(webhook, static_without_ip("users", {}))
    assert code != 0 and "spec.static" in err, err
    # a node's Auto IPAddress carries its pod's UID: no review, no round trip on ADD's path
    code, err = apply(webhook, static_without_ip("nodes", {f"{GROUP}/owner-pod-uid": "0000"}))
    assert code == 0, err
    webhook.kubectl("delete", "ipaddress", "-n", TEST_NS, "nodes")


def nad(name: str, config: str) -> dict[str, Any]:
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": TEST_NS}, "spec": {"config": config}}


@pytest.mark.netns
def test_a_nad_that_is_not_a_cni_configuration_is_refused_by_kubectl_apply(webhook: Cluster,
                                                                           controller: ControllerProcess) -> None:
    code, err = apply(webhook, nad("no-plugins", '{"cniVersion": "0.3.1", "plugins": []}'))
    assert code != 0 and 'admission webhook "nads.plexus.network.deckhouse.io" denied the request' in err, err
    assert "spec.config.plugins" in err and "must list at least one plugin" in err, err
    code, err = apply(webhook, nad("escape", '{"cniVersion": "0.3.1", "type": "../../usr/bin/id"}'))
    assert code != 0 and "not a plugin name" in err, err
    assert not exists(webhook, "network-attachment-definitions", "escape")
    code, err = apply(webhook, nad("macvlan-conf", '{"cniVersion": "0.3.1", "type": "macvlan", "master": "eth0", '
                                                   '"mode": "bridge", "ipam": {"type": "static"}}'))
    assert code == 0, err
    with controller.paused():  # NADs are shared with other tools: Ignore, a controller outage never blocks them
        code, err = apply(webhook, nad("while-down", '{"cniVersion": "0.3.1", "type": "bridge"}'))
        assert code == 0, err


@pytest.mark.netns
def test_a_pod_with_a_bad_npwg_annotation_is_refused(webhook: Cluster) -> None:
    bad = pod("npwg-bad", "aa:bb:cc:dd:ee:ff")
    bad["metadata"]["annotations"] = {"k8s.v1.cni.cncf.io/networks": "a/b/c"}
    code, err = apply(webhook, bad)
    assert code != 0 and "k8s.v1.cni.cncf.io/networks[0]" in err, err


@pytest.mark.netns
def test_a_pool_change_that_would_orphan_a_leased_address_is_refused(webhook: Cluster) -> None:
    held = pool("held", [])
    assert apply(webhook, held)[0] == 0
    lease = {"apiVersion": f"{GROUP}/v1alpha1", "kind": "IPAddressLease", "metadata": {"name": "webhook-held-200"},
             "spec": {"pool": f"IPAddressPool/{TEST_NS}/held", "ip": "198.18.90.200", "network": "198.18.90.0/24",
                      "holder": f"IPAddress/{TEST_NS}/someone", "ttl": "60s"}}
    webhook.apply([lease])
    moved = pool("held", [])
    moved["spec"]["pools"][0]["network"] = "198.18.90.0/25"
    try:
        def refused() -> str:  # once the controller's lease informer has it
            code, err = apply(webhook, moved)
            return err if code != 0 else ""

        err = wait_for(refused, timeout=30, step=1)
        assert "1 leased address(es) would lie outside every network of the pool: 198.18.90.200" in err, err
        assert webhook.get("ipaddresspool", "-n", TEST_NS, "held")["spec"]["pools"][0]["network"] == "198.18.90.0/24"
        narrowed = pool("held", ["198.18.90.10-198.18.90.20"])  # the subnet still holds it: allowed (flagged)
        assert apply(webhook, narrowed)[0] == 0
        deleted = webhook.kubectl("delete", "ipaddresspool", "-n", TEST_NS, "held", check=False)
        assert deleted.returncode != 0 and "1 address(es) still leased from it: 198.18.90.200" in deleted.stderr, \
            deleted.stderr
        assert webhook.get("ipaddresspool", "-n", TEST_NS, "held")
    finally:
        webhook.kubectl("delete", "ipaddresslease", "webhook-held-200", check=False)
    # its last lease gone (once the controller's informer sees it), the pool goes
    assert wait_for(lambda: webhook.kubectl("delete", "ipaddresspool", "-n", TEST_NS, "held", check=False).returncode
                    == 0, timeout=30, step=1)


@pytest.mark.netns
def test_an_ip_address_that_holds_its_address_is_not_moved_by_an_edit(webhook: Cluster) -> None:
    """On the real API server: the review sees the stored object's status (``oldObject``), so a user's IPAddress
    that holds its address keeps its network; one that holds none yet may be edited."""
    from ipamd.kube.client import kube_api
    from ipamd.kube.resources import CustomObjects

    def static(name: str, network: str) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "IPAddress", "metadata": {"name": name, "namespace": TEST_NS},
                "spec": {"networkRef": {"kind": "Network", "name": network}, "type": "Static",
                         "static": {"ip": "198.18.90.7"}}}

    assert apply(webhook, static("free", "net-a"))[0] == 0
    assert apply(webhook, static("held", "net-a"))[0] == 0
    api = kube_api(webhook.kubeconfig)
    try:
        objects = CustomObjects(api)

        def refused() -> bool:  # (the status written again each try: the API server's webhook client may lag)
            objects.patch_status("IPAddress", "held", {"phase": "Allocated", "address": "198.18.90.7"}, TEST_NS)
            code, err = apply(webhook, static("held", "net-b"))
            refused.err = err  # type: ignore[attr-defined]
            return code != 0

        assert wait_for(refused, timeout=30, step=1), "an IPAddress holding its address was moved to another network"
        assert "spec.networkRef" in refused.err and "198.18.90.7" in refused.err, refused.err  # type: ignore[attr-defined]
        assert apply(webhook, static("free", "net-b"))[0] == 0, "no address held yet: edited"
    finally:
        api.close()
        webhook.kubectl("delete", "ipaddress", "-n", TEST_NS, "held", "free", "--ignore-not-found")


@pytest.mark.netns
def test_ignored_fields_and_a_pool_entry_with_no_address_are_refused_by_kubectl_apply(webhook: Cluster) -> None:
    """What the daemon would serve but not as written: an Auto IPAddress's static.ip and an Access ClusterNetwork's
    vlan.id (both dropped without a word), a pool entry with no address (every ADD from it: "pool exhausted")."""
    auto: dict[str, Any] = {
        "apiVersion": f"{GROUP}/v1alpha1", "kind": "IPAddress", "metadata": {"name": "auto-ip", "namespace": TEST_NS},
        "spec": {"networkRef": {"kind": "Network", "name": "net"}, "type": "Auto", "static": {"ip": "198.18.90.7"}}}
    access = {"apiVersion": f"{GROUP}/v1alpha1", "kind": "ClusterNetwork", "metadata": {"name": "kwebhook-access"},
              "spec": {"type": "Access", "vlan": {"id": 900}, "parentNodeNetworkInterfaces": {"names": ["eth1"]}}}
    empty = pool("empty", ["198.18.90.0"])  # the network's own address only
    try:
        for doc, field in ((auto, "spec.static.ip"), (access, "spec.vlan.id"), (empty, "spec.pools[0]")):
            code, err = apply(webhook, doc)
            assert code != 0 and "denied the request" in err and field in err, err
        assert not exists(webhook, "ipaddress", "auto-ip") and not exists(webhook, "ipaddresspool", "empty")
        del auto["spec"]["static"]
        assert apply(webhook, auto)[0] == 0, "an Auto without one"
    finally:
        webhook.kubectl("delete", "ipaddress", "-n", TEST_NS, "auto-ip", "--ignore-not-found")
        webhook.kubectl("delete", "clusternetwork", "kwebhook-access", "--ignore-not-found")


@pytest.mark.netns
def test_a_vlan_id_of_an_untagged_class_is_refused_and_a_drained_pool_entry_warned_of(webhook: Cluster) -> None:
    """The running webhook looks a Network's class up in the controller's informer (it once passed no lookup: every
    class "not known", every vlan.id let through). An edit cutting a pool entry's ranges to nothing (a subnet drained
    while its leases stay) is stored, with a warning kubectl prints."""
    flat = {"apiVersion": f"{GROUP}/v1alpha1", "kind": "NetworkClass", "metadata": {"name": "kwebhook-flat"},
            "spec": {}}
    tagged: dict[str, Any] = {"apiVersion": f"{GROUP}/v1alpha1", "kind": "Network",
                              "metadata": {"name": "kwebhook-tagged", "namespace": TEST_NS},
                              "spec": {"networkClass": "kwebhook-flat", "vlan": {"id": 650}}}
    webhook.apply([flat])
    try:
        def refused() -> str:  # once the controller's informer has the class; stored before that: deleted, again
            code, err = apply(webhook, tagged)
            if code == 0:
                webhook.kubectl("delete", "network", "-n", TEST_NS, "kwebhook-tagged")
            return err if code != 0 else ""

        err = wait_for(refused, timeout=30, step=1)
        assert "denied the request" in err and "spec.vlan.id" in err and "kwebhook-flat" in err, err
        del tagged["spec"]["vlan"]
        assert apply(webhook, tagged)[0] == 0, "untagged, as its class says"

        assert apply(webhook, pool("drained", ["198.18.90.10-198.18.90.20"]))[0] == 0
        code, err = apply(webhook, pool("drained", ["198.18.90.0"]))
        assert code == 0 and "Warning:" in err and "spec.pools[0]" in err, err
        assert webhook.get("ipaddresspool", "-n", TEST_NS, "drained")["spec"]["pools"][0]["ranges"] == ["198.18.90.0"]
        code, err = apply(webhook, pool("new-empty", ["198.18.90.0"]))
        assert code != 0 and "spec.pools[0]" in err, "created so: refused"
    finally:
        webhook.kubectl("delete", "network", "-n", TEST_NS, "kwebhook-tagged", "--ignore-not-found")
        webhook.kubectl("delete", "ipaddresspool", "-n", TEST_NS, "drained", "--ignore-not-found")
        webhook.kubectl("delete", "networkclass", "kwebhook-flat", "--ignore-not-found")

"""Services over an additional network on a real API server, written by the packaged controller (its own
ServiceAccount and RBAC): a headless, selectorless Service with Plexus's annotations gets an EndpointSlice of the
selected pods' addresses on that network, kept in step as pods become ready, change labels, come and go; a Service
naming a network that does not exist gets a Warning Event and a False condition, and no endpoints; once it no longer
asks, the condition goes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from ipamd.kube.client import kube_api
from tests.conftest import wait_for
from tests.kube.conftest import Cluster, ControllerProcess
from tests.kube.test_kube_mode import GROUP

NS = "ksvc"


@pytest.fixture
def core(cluster: Cluster) -> Iterator[client.CoreV1Api]:
    api = kube_api(str(cluster.kubeconfig))
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
                   {"apiVersion": GROUP, "kind": "Network", "metadata": {"name": "backend", "namespace": NS},
                    "spec": {"networkClass": "svc-class"}}])
    try:
        yield client.CoreV1Api(api)
    finally:
        cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        api.close()


def pod(name: str, labels: dict[str, str], address: str) -> dict[str, Any]:
    status = [{"type": "Network", "name": "backend", "ifName": "net1",
               "ipAddressConfigs": [{"name": f"{name}-ip", "address": address, "network": "198.18.40.0/24"}]}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": labels,
                         "annotations": {"network.deckhouse.io/networks-status": json.dumps(status)}},
            "spec": {"containers": [{"name": "c", "image": "pause"}]}}


def service(name: str, network: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS,
                         "annotations": {"network.deckhouse.io/service-network": network,
                                         "network.deckhouse.io/service-selector": "app=db"}},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}


def ready(core: client.CoreV1Api, name: str, is_ready: bool) -> None:
    core.patch_namespaced_pod_status(name, NS, {"status": {"conditions": [
        {"type": "Ready", "status": "True" if is_ready else "False"}]}})


@pytest.mark.netns
def test_a_service_gets_the_endpoints_of_its_pods_on_the_network(cluster: Cluster, controller: ControllerProcess,
                                                                 core: client.CoreV1Api) -> None:
    cluster.apply([pod("a", {"app": "db"}, "198.18.40.5"), pod("b", {"app": "db"}, "198.18.40.6"),
                   pod("c", {"app": "web"}, "198.18.40.7"), service("db", "backend")])
    ready(core, "a", True)

    def endpoints() -> dict[str, bool] | None:
        found = cluster.kubectl("get", "endpointslice", "-n", NS, "db-plexus", "-o", "json", check=False)
        if found.returncode:
            return None
        return {e["addresses"][0]: bool(e["conditions"].get("ready")) for e in json.loads(found.stdout)["endpoints"]
                or []}

    def now(expected: dict[str, bool]) -> bool:
        return endpoints() == expected

    log = controller.log
    assert wait_for(lambda: now({"198.18.40.5": True, "198.18.40.6": False}), timeout=30), \
        (endpoints(), log.read_text()[-3000:])
    found = cluster.get("endpointslice", "-n", NS, "db-plexus")
    assert found["metadata"]["labels"]["kubernetes.io/service-name"] == "db"
    assert found["ports"] == [{"name": "pg", "port": 5432, "protocol": "TCP"}]

    ready(core, "b", True)
    assert wait_for(lambda: now({"198.18.40.5": True, "198.18.40.6": True}), timeout=30), "b became ready"
    cluster.kubectl("label", "pod", "-n", NS, "a", "app=other", "--overwrite")
    assert wait_for(lambda: now({"198.18.40.6": True}), timeout=30), "a's labels no longer match"
    cluster.apply([pod("d", {"app": "db"}, "198.18.40.8")])
    assert wait_for(lambda: now({"198.18.40.6": True, "198.18.40.8": False}), timeout=30), "d came"
    cluster.kubectl("delete", "pod", "-n", NS, "b", "--grace-period=0", "--force")
    assert wait_for(lambda: now({"198.18.40.8": False}), timeout=30), "b went"
    time.sleep(7)  # a pass with nothing changed comes every 5 s: it writes nothing
    writes = log.read_text().count(f"EndpointSlice {NS}/db-plexus:")
    assert writes <= 7, f"{writes} writes for 5 changes: a slice is written only when what it says changed"

    cluster.apply([service("broken", "nowhere")])

    def told() -> bool:
        events = cluster.get("events", "-n", NS, "--field-selector", "involvedObject.name=broken")["items"]
        return any(e["reason"] == "NetworkNotFound" and "Network ksvc/nowhere does not exist" in e["message"]
                   for e in events)

    assert wait_for(told, timeout=30), "a Warning Event names the missing network"
    conditions = cluster.get("service", "-n", NS, "broken").get("status", {}).get("conditions", [])
    assert [(c["type"], c["status"], c["reason"]) for c in conditions] == [
        ("network.deckhouse.io/Endpoints", "False", "NetworkNotFound")]
    assert cluster.kubectl("get", "endpointslice", "-n", NS, "broken-plexus", check=False).returncode != 0

    cluster.kubectl("annotate", "service", "-n", NS, "broken", "network.deckhouse.io/service-network-",
                    "network.deckhouse.io/service-selector-")

    def conditions_of_broken() -> list[Any]:
        return list(cluster.get("service", "-n", NS, "broken").get("status", {}).get("conditions") or [])

    assert wait_for(lambda: not conditions_of_broken(), timeout=30), \
        ("a Service that no longer asks loses the condition", conditions_of_broken())

    cluster.kubectl("delete", "service", "-n", NS, "db")
    assert wait_for(lambda: endpoints() is None, timeout=60), "the slice goes with its Service"

"""A node's NodeNetworkInterfaceAttachments that nothing of it stands for after a restart (a Network deleted while
the daemon was down, a segment record a kill cut away): withdrawn by the node's reconcile rounds, another node's
never touched."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.harness import Node
from tests.kube.conftest import Cluster, ControllerProcess
from tests.kube.test_kube_mode import GROUP, kube_node, objects

NS = "ksweep"


def attachment(node: str, network: str, bridge: str) -> dict[str, Any]:
    """An attachment as ``KubePublisher.node_attachment`` makes it for ``node`` (its name too)."""
    name = f"{node}-{hashlib.sha1(f'Network/{NS}/{network}'.encode()).hexdigest()[:12]}"
    return {"apiVersion": GROUP, "kind": "NodeNetworkInterfaceAttachment",
            "metadata": {"name": name, "labels": {f"{GROUP.split('/')[0]}/node": node}},
            "spec": {"networkRef": {"kind": "Network", "name": network, "namespace": NS}, "nodeName": node,
                     "bridgeName": bridge}}


@pytest.fixture
def node(cluster: Cluster, controller: ControllerProcess) -> Iterator[Node]:
    cluster.apply(objects(NS, "1s", "198.18.76.10-198.18.76.20", cidr="198.18.76.0/24", vlan=960))  # an ID no other test asks for
    made = kube_node(cluster, "ksweep-a")
    try:
        yield made
    finally:
        made.close()
        cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        cluster.kubectl("delete", "networkclass", f"{NS}-class", "--ignore-not-found", check=False)
        cluster.kubectl("delete", "nodenetworkinterfaceattachments", "-l", f"{GROUP.split('/')[0]}/node in "
                        "(ksweep-a,ksweep-elsewhere)", "--ignore-not-found", check=False)


@pytest.mark.netns
def test_a_nodes_unheld_reports_are_withdrawn_after_a_restart_and_no_other_nodes(cluster: Cluster,
                                                                                  node: Node) -> None:
    def names(of: str) -> dict[str, str]:
        """``of``'s reports of this test's namespace (a node reports every Network it serves: other tests' namespaces,
        still being deleted, may have a Network of the same name)."""
        items = cluster.get("nodenetworkinterfaceattachments")["items"]
        return {x["metadata"]["name"]: x["spec"]["networkRef"]["name"] for x in items
                if x["spec"]["nodeName"] == of and x["spec"]["networkRef"].get("namespace") == NS}

    # the node reports its side once the controller granted the VLAN ID (one another test's Network still held, in a
    # namespace being deleted, would never be granted)
    assert wait_for(lambda: "net" in names("ksweep-a").values(), timeout=90), node.log_text()[-3000:]
    node.kill()
    stale = attachment("ksweep-a", "gone", "plx-br-969")  # a Network deleted while the daemon was down
    other = attachment("ksweep-elsewhere", "gone", "plx-br-968")  # another node's: never this node's to remove
    cluster.apply([stale, other])
    node.start()
    assert wait_for(lambda: stale["metadata"]["name"] not in names("ksweep-a"), timeout=60), \
        ("this node's report of a deleted Network stays after its restart", node.log_text()[-3000:])
    assert list(names("ksweep-a").values()) == ["net"], "a held report was withdrawn"
    assert other["metadata"]["name"] in names("ksweep-elsewhere"), "another node's report was withdrawn"
    assert "Traceback" not in node.log_text()


@pytest.mark.netns
def test_a_cluster_networks_node_report_is_made_and_counted(cluster: Cluster, node: Node) -> None:
    """A ClusterNetwork has no namespace: its report named one as "" and the API server refused every write of it
    (422, ``spec.networkRef.namespace: Invalid value: "null"``), so its status never counted a node."""
    cnet = f"{NS}-cnet"
    cluster.apply([
        {"apiVersion": GROUP, "kind": "ClusterIPAddressPool", "metadata": {"name": f"{NS}-cpool"},
         "spec": {"pools": [{"network": "198.18.77.0/28"}]}},
        {"apiVersion": GROUP, "kind": "ClusterNetwork", "metadata": {"name": cnet},
         "spec": {"type": "VLAN", "vlan": {"id": 965},
                  "ipam": {"ipAddressPoolRef": {"kind": "ClusterIPAddressPool", "name": f"{NS}-cpool"}}}},
    ])
    try:
        def report() -> dict[str, Any] | None:
            items = cluster.get("nodenetworkinterfaceattachments")["items"]
            return next((x for x in items if x["spec"]["nodeName"] == "ksweep-a"
                         and x["spec"]["networkRef"] == {"kind": "ClusterNetwork", "name": cnet}), None)

        assert wait_for(lambda: report() is not None, timeout=90), node.log_text()[-3000:]
        assert wait_for(lambda: (cluster.get("clusternetwork", cnet).get("status") or {})
                        .get("nodeAttachementsCount") == 1, timeout=30), cluster.get("clusternetwork", cnet)
        assert "refused for good" not in node.log_text(), node.log_text()[-3000:]
    finally:
        cluster.kubectl("delete", "clusternetwork", cnet, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "clusteripaddresspool", f"{NS}-cpool", "--ignore-not-found", check=False)


@pytest.mark.netns
def test_a_segment_the_node_cannot_build_is_reported_not_ready(cluster: Cluster, node: Node) -> None:
    """A node that cannot build a Network's segment (its parent NIC is missing) reports it not Ready with why: the
    report named the bridge as "" and the API server refused every write of it (422, "null")."""
    ns = f"{NS}-noparent"
    docs = objects(ns, "1s", "198.18.83.10-198.18.83.20", cidr="198.18.83.0/24", vlan=970)
    docs[1]["spec"]["vlan"]["parentNodeNetworkInterfaces"] = {"names": ["plxmissing0"]}
    cluster.apply(docs)
    try:
        def report() -> dict[str, Any] | None:
            items = cluster.get("nodenetworkinterfaceattachments")["items"]
            return next((x for x in items if x["spec"]["nodeName"] == "ksweep-a"
                         and x["spec"]["networkRef"].get("namespace") == ns), None)

        assert wait_for(lambda: (r := report()) is not None and (r.get("status") or {}).get("conditions"),
                        timeout=90), node.log_text()[-3000:]
        made = report()
        # the bridge its segment record names (made before the uplink failed), or none: never an empty name
        assert made is not None and made["spec"].get("bridgeName", "plx-br-970") == "plx-br-970", made
        ready = made["status"]["conditions"][0]
        assert (ready["type"], ready["status"]) == ("Ready", "False") and "plxmissing0" in ready["message"], ready
        assert wait_for(lambda: (cluster.get("network", "-n", ns, "net").get("status") or {})
                        .get("nodeAttachementsCount") == 1, timeout=30), cluster.get("network", "-n", ns, "net")
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        cluster.kubectl("delete", "networkclass", f"{ns}-class", "--ignore-not-found", check=False)

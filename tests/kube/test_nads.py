"""NetworkAttachmentDefinitions in Kubernetes mode against a real API server: a node daemon resolves a pod's
``k8s.v1.cni.cncf.io/networks`` with the NAD informer, delegates to Debian's reference plugins in the node's
namespace, writes ``network-status`` on the pod (with its UID as a precondition), and DEL cleans up after
the NAD was deleted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.harness import Node, links_in
from tests.kube.conftest import Cluster
from tests.kube.test_kube_mode import kube_node, nodes  # noqa: F401  (the fixture)

NS = "knad"
REFERENCE = Path("/usr/lib/cni")


@pytest.mark.netns
def test_a_multus_pod_through_the_api(cluster: Cluster, nodes: list[Node], tmp_path: Path) -> None:  # noqa: F811
    data = tmp_path / "host-local"
    data.mkdir()
    config = {"cniVersion": "0.3.1", "type": "bridge", "bridge": "knadbr0",
              "ipam": {"type": "host-local", "subnet": "198.18.95.0/24", "dataDir": str(data)}}
    cluster.apply([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
         "metadata": {"name": "example", "namespace": NS}, "spec": {"config": json.dumps(config)}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "example", "namespace": NS,
                                                         "annotations": {"k8s.v1.cni.cncf.io/networks": "example"}},
         "spec": {"nodeName": "node-nad", "containers": [{"name": "c", "image": "busybox"}]}},
    ])
    uid = cluster.get("pod", "-n", NS, "example")["metadata"]["uid"]
    node = kube_node(cluster, "node-nad")
    nodes.append(node)
    netns = node.pod_netns("example")
    assert wait_for(lambda: "ready" in node.log_text(), timeout=30)
    args = {"CNI_ARGS": f"K8S_POD_NAMESPACE={NS};K8S_POD_NAME=example;K8S_POD_UID={uid}"}
    conf = node.conf(binDir=str(REFERENCE))
    add = node.cni("ADD", "c1", netns, pod=(NS, "example"), conf=conf, env=args)
    assert add.ok, (add, node.log_text()[-3000:])
    assert links_in(netns)["net1"]["addresses"] == ["198.18.95.2/24"]
    assert node.host_links()["knadbr0"]["kind"] == "bridge", "made in the node's namespace"
    assert "knadbr0" not in links_in(None), "never in the daemon's own"
    status = json.loads(cluster.kubectl("get", "pod", "-n", NS, "example", "-o",
                                        r"jsonpath={.metadata.annotations.k8s\.v1\.cni\.cncf\.io/network-status}").stdout)
    assert status == [{"name": f"{NS}/example", "interface": "net1", "ips": ["198.18.95.2"],
                       "mac": links_in(netns)["net1"]["mac"], "dns": {}}]
    cluster.kubectl("delete", "network-attachment-definitions", "-n", NS, "example")
    assert node.cni("DEL", "c1", netns, pod=(NS, "example"), conf=conf, env=args).ok
    assert set(links_in(netns)) == {"lo"} and not list(data.rglob("198.18.95.*"))
    annotations = cluster.get("pod", "-n", NS, "example")["metadata"].get("annotations") or {}
    assert "k8s.v1.cni.cncf.io/network-status" not in annotations

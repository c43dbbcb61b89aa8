"""Multus users' manifests in real network namespaces: NetworkAttachmentDefinitions delegated to Debian's
reference plugins (bridge + host-local, macvlan on a veth end, static IPAM with tuning, host-device, a
chain), the kernel state they leave, network-status, and DEL leaving nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Node, links_in, run
from tests.netns.test_plexusctl import ctl

REFERENCE = Path("/usr/lib/cni")
NS = "my-namespace"
NPWG = "k8s.v1.cni.cncf.io/networks"

pytestmark = pytest.mark.netns


@pytest.fixture(autouse=True)
def _reference_plugins() -> None:
    if not (REFERENCE / "bridge").exists():
        pytest.skip("Debian's containernetworking-plugins are not installed")


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """host-local's leases: in the test's own directory, never the host's /var/lib/cni."""
    d = tmp_path / "host-local"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def nad(name: str, config: dict[str, Any] | None, namespace: str = NS) -> dict[str, Any]:
    spec = {"config": json.dumps(config)} if config is not None else {}
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def bridge_conf(bridge: str, subnet: str, data_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": "0.3.1", "type": "bridge", "bridge": bridge, "isGateway": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": str(data_dir)}, **extra}


def pod(name: str, annotations: dict[str, str], namespace: str = NS) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                          "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "x"}]}}


def conf(node: Node, **extra: Any) -> dict[str, Any]:
    return node.conf(binDir=str(REFERENCE), **extra)


def npwg_status(node: Node, namespace: str, name: str) -> list[dict[str, Any]] | None:
    from ipamd.api import ipam_pb2 as pb

    pods = node.grpc("ListPods", pb.ListPodsRequest(namespace=namespace, name=name)).pods
    return json.loads(pods[0].network_status_json) if pods else None


def attachments(node: Node) -> list[Any]:
    from ipamd.store.sqlite import Store

    store = Store(str(node.db))
    try:
        return store.attachments()
    finally:
        store.close()


def leased_files(data_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*")
                  if p.is_file() and not p.name.startswith(("last_reserved_ip", "lock")))


def test_bridge_with_host_local_through_a_nad(node: Node, data_dir: Path) -> None:
    node.apply([nad("bridge-net", bridge_conf("nadbr0", "198.18.50.0/24", data_dir)),
                pod("app", {NPWG: "bridge-net"})])
    ns = node.pod_netns("app")
    res = node.cni("ADD", "c1", ns, pod=(NS, "app"), conf=conf(node))
    assert res.ok, res
    pod_links = links_in(ns)
    assert "198.18.50.2/24" in pod_links["net1"]["addresses"], pod_links
    assert node.host_links()["nadbr0"]["kind"] == "bridge"
    sandbox = [i for i in res.json["interfaces"] if i.get("sandbox")]
    assert [i["name"] for i in sandbox] == ["net1"]
    assert res.json["ips"][0]["address"] == "198.18.50.2/24"
    (entry,) = npwg_status(node, NS, "app") or []
    assert entry == {"name": f"{NS}/bridge-net", "interface": "net1", "ips": ["198.18.50.2"],
                     "mac": pod_links["net1"]["mac"], "dns": {}}
    assert leased_files(data_dir) == ["bridge-net/198.18.50.2"]
    listed = ctl(node, "get", "nad", "-o", "json")
    assert json.loads(listed.stdout) == [{"namespace": NS, "name": "bridge-net", "plugins": ["bridge"],
                                          "config": "spec.config"}], listed
    shown = ctl(node, "pod", "status", "app", "-n", NS, "--npwg")
    assert json.loads(shown.stdout) == [entry], shown
    (record,) = attachments(node)
    inv = record.interfaces[0].driver["invocation"]
    assert inv["conflist"]["name"] == "bridge-net" and inv["ifname"] == "net1", "the exact delegate, recorded"
    assert node.cni("CHECK", "c1", ns, pod=(NS, "app"), conf={**conf(node), "prevResult": res.json}).ok
    node.delete([nad("bridge-net", None)])  # DEL works with the NAD gone
    for _ in range(2):
        dele = node.cni("DEL", "c1", ns, pod=(NS, "app"), conf=conf(node))
        assert dele.ok and dele.stdout == "", dele
    assert set(links_in(ns)) == {"lo"}
    assert leased_files(data_dir) == []
    assert attachments(node) == [] and npwg_status(node, NS, "app") is None


def test_macvlan_on_a_veth_end_and_static_ipam_with_tuning(node: Node) -> None:
    run("ip", "-n", os.path.basename(node.netns), "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    run("ip", "-n", os.path.basename(node.netns), "link", "set", "uplink0", "up")
    static = {"cniVersion": "0.3.1", "name": "static-mac", "plugins": [
        {"type": "macvlan", "capabilities": {"ips": True}, "master": "uplink0", "mode": "bridge",
         "ipam": {"type": "static"}},
        {"type": "tuning", "capabilities": {"mac": True}}]}
    node.apply([nad("static-mac", static),
                pod("vm", {NPWG: json.dumps([{"name": "static-mac", "ips": ["198.18.51.205/24"],
                                              "mac": "CA:FE:C0:FF:EE:00", "interface": "ext0"}])})])
    ns = node.pod_netns("vm")
    res = node.cni("ADD", "c2", ns, pod=(NS, "vm"), conf=conf(node))
    assert res.ok, res
    ext = links_in(ns)["ext0"]
    assert ext["kind"] == "macvlan" and ext["mac"] == "ca:fe:c0:ff:ee:00"
    assert ext["addresses"] == ["198.18.51.205/24"]
    assert node.cni("DEL", "c2", ns, pod=(NS, "vm"), conf=conf(node)).ok
    assert set(links_in(ns)) == {"lo"}


def test_host_device_and_a_chain_with_tuning(node: Node, data_dir: Path) -> None:
    run("ip", "-n", os.path.basename(node.netns), "link", "add", "dev0", "type", "veth", "peer", "name", "dev0p")
    chain = {"cniVersion": "1.0.0", "name": "tuned", "plugins": [
        bridge_conf("tunedbr0", "198.18.52.0/24", data_dir),
        {"type": "tuning", "sysctl": {"net.ipv4.conf.net2.arp_notify": "1"}}]}
    node.apply([nad("hostdev", {"cniVersion": "0.3.1", "type": "host-device", "device": "dev0"}),
                nad("tuned", chain),
                pod("app", {NPWG: "hostdev@net1, tuned"})])
    ns = node.pod_netns("app")
    res = node.cni("ADD", "c3", ns, pod=(NS, "app"), conf=conf(node))
    assert res.ok, res
    assert {"net1", "net2"} <= set(links_in(ns))
    assert "dev0" not in node.host_links(), "host-device moved the node's device into the pod"
    sysctl = subprocess.run(["ip", "netns", "exec", os.path.basename(ns), "cat",
                             "/proc/sys/net/ipv4/conf/net2/arp_notify"], capture_output=True, text=True, check=True)
    assert sysctl.stdout.strip() == "1"
    assert [e["interface"] for e in npwg_status(node, NS, "app") or []] == ["net1", "net2"]
    assert node.cni("DEL", "c3", ns, pod=(NS, "app"), conf=conf(node)).ok
    assert set(links_in(ns)) == {"lo"}
    assert "dev0" in node.host_links(), "host-device gave the device back to the node"
    assert leased_files(data_dir) == []


def test_both_dialects_in_one_pod(node: Node, data_dir: Path) -> None:
    node.apply([nad("bridge-net", bridge_conf("nadbr1", "198.18.53.0/24", data_dir)),
                pod("both", {NPWG: "bridge-net", "network.deckhouse.io/networks-spec":
                             json.dumps([{"type": "Network", "name": "net-a"}])})])
    ns = node.pod_netns("both")
    res = node.cni("ADD", "c4", ns, pod=(NS, "both"), conf=conf(node))
    assert res.ok, res
    names = links_in(ns)
    assert names["net1"]["addresses"][0].startswith("198.18.10."), "networks-spec first: net1"
    assert names["net2"]["addresses"] == ["198.18.53.2/24"], "then the NAD, numbered after it: net2"
    status = npwg_status(node, NS, "both") or []
    assert [(e["name"], e["interface"]) for e in status] == [(f"{NS}/net-a", "net1"), (f"{NS}/bridge-net", "net2")]
    assert [s["ifName"] for s in node.pod_status(NS, "both") or []] == ["net1"], "networks-spec stays Deckhouse's"
    assert node.cni("DEL", "c4", ns, pod=(NS, "both"), conf=conf(node)).ok
    assert set(links_in(ns)) == {"lo"} and leased_files(data_dir) == []


def test_delegates_run_in_the_nodes_namespace_when_it_is_not_the_daemons(tmp_path: Path) -> None:
    """``--node-netns`` (test nodes, a daemon beside its node's namespace): a delegate's links must be made
    there, never in the daemon's own namespace."""
    from ipamd.invoke.exec import Exec
    from tests.harness import netns_add, netns_del

    name = f"plxt-exec-{os.getpid()}"
    path = netns_add(name)
    try:
        plugin = tmp_path / "where"
        plugin.write_text('#!/bin/sh\necho "{\\"cniVersion\\": \\"1.0.0\\", \\"netns\\": \\"$(readlink /proc/self/ns/net)\\"}"\n')
        plugin.chmod(0o755)
        inside = Exec(str(tmp_path), node_netns=path).run("where", {"CNI_COMMAND": "ADD"}, {}, 10).result["netns"]
        assert inside == f"net:[{os.stat(path).st_ino}]"
        outside = Exec(str(tmp_path)).run("where", {"CNI_COMMAND": "ADD"}, {}, 10).result["netns"]
        assert outside == os.readlink("/proc/self/ns/net")
    finally:
        netns_del(name)

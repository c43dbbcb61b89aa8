"""Plexus as the node's only CNI configuration, as most Multus clusters run: the cluster network attached
first as the runtime's interface, the default networks, a NAD taking the pod's default route, the
default-network override, the readiness indicator file, and STATUS asked of the cluster network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Node, links_in, run
from tests.netns.test_delegation import NPWG, NS, REFERENCE, attachments, leased_files, nad, npwg_status, pod

pytestmark = pytest.mark.netns


def bridge(name: str, subnet: str, data_dir: Path, gateway: bool = False) -> dict[str, Any]:
    ipam: dict[str, Any] = {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": str(data_dir)}
    return {"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": name, "isGateway": gateway, "isDefaultGateway": gateway, "ipam": ipam}]}


@pytest.fixture
def setup(node: Node, tmp_path: Path) -> tuple[Node, dict[str, Any], Path]:
    data = tmp_path / "host-local"
    data.mkdir()
    cluster = tmp_path / "cbr0.conflist"
    cluster.write_text(json.dumps(bridge("cbr0", "198.18.80.0/24", data, gateway=True)))
    ready = tmp_path / "ready"
    ready.write_text("")
    node.apply([nad("extra", bridge("extra", "198.18.81.0/24", data)),
                nad("routed", bridge("routed", "198.18.82.0/24", data)),
                nad("alt", bridge("alt", "198.18.83.0/24", data, gateway=True))])
    conf = node.conf(binDir=str(REFERENCE), clusterNetwork=str(cluster), defaultNetworks=[f"{NS}/extra"],
                     readinessindicatorfile=str(ready), readinessTimeoutSeconds=1)
    return node, conf, data


def routes(ns: str) -> list[str]:
    out = run("ip", "-n", Path(ns).name, "-4", "route", "show", "default").stdout
    return [line.split(" proto ")[0].strip() for line in out.splitlines() if line.strip()]


def test_cluster_network_first_then_defaults_then_the_pods_own(setup: tuple[Node, dict[str, Any], Path]) -> None:
    node, conf, data = setup
    node.apply([pod("app", {NPWG: json.dumps([{"name": "routed", "default-route": ["198.18.82.1"]}])})])
    ns = node.pod_netns("app")
    res = node.cni("ADD", "c1", ns, pod=(NS, "app"), conf=conf)
    assert res.ok, res
    sandbox = [i["name"] for i in res.json["interfaces"] if i.get("sandbox")]
    assert sandbox == ["eth0", "net1", "net2"], "the runtime's interface is the cluster network's"
    first_ip = res.json["ips"][0]
    assert first_ip["address"] == "198.18.80.2/24" and res.json["interfaces"][first_ip["interface"]]["name"] == "eth0"
    links = links_in(ns)
    assert links["eth0"]["addresses"] == ["198.18.80.2/24"] and links["net1"]["addresses"] == ["198.18.81.2/24"]
    assert routes(ns) == ["default via 198.18.82.1 dev net2"], "default-route replaces the cluster network's"
    status = npwg_status(node, NS, "app") or []
    assert [(e["name"], e["interface"], e.get("default", False)) for e in status] == [
        ("cbr0", "eth0", True), (f"{NS}/extra", "net1", False), (f"{NS}/routed", "net2", False)]
    assert status[2]["gateway"] == ["198.18.82.1"]
    assert node.cni("DEL", "c1", ns, pod=(NS, "app"), conf=conf).ok
    assert set(links_in(ns)) == {"lo"} and leased_files(data) == [] and attachments(node) == []


def test_the_default_network_override_and_system_namespaces(setup: tuple[Node, dict[str, Any], Path]) -> None:
    node, conf, data = setup
    node.apply([pod("odd", {"v1.multus-cni.io/default-network": f"{NS}/alt"}), pod("sys", {}, namespace="kube-system")])
    ns = node.pod_netns("odd")
    res = node.cni("ADD", "c2", ns, pod=(NS, "odd"), conf=conf)
    assert res.ok, res
    assert links_in(ns)["eth0"]["addresses"] == ["198.18.83.2/24"]
    assert (npwg_status(node, NS, "odd") or [])[0]["name"] == f"{NS}/alt"
    sys_ns = node.pod_netns("sys")
    res = node.cni("ADD", "c3", sys_ns, pod=("kube-system", "sys"), conf=conf)
    assert res.ok, res
    assert "net1" not in links_in(sys_ns), "no defaultNetworks for kube-system's pods"
    for c, path, p in (("c2", ns, (NS, "odd")), ("c3", sys_ns, ("kube-system", "sys"))):
        assert node.cni("DEL", c, path, pod=p, conf=conf).ok
    assert leased_files(data) == []


def test_add_waits_for_the_readiness_indicator_file(setup: tuple[Node, dict[str, Any], Path]) -> None:
    node, conf, data = setup
    Path(conf["readinessindicatorfile"]).unlink()
    node.apply([pod("early", {})])
    ns = node.pod_netns("early")
    res = node.cni("ADD", "c4", ns, pod=(NS, "early"), conf=conf)
    assert res.code == 11 and conf["readinessindicatorfile"] in res.json["msg"], res
    assert set(links_in(ns)) == {"lo"} and attachments(node) == [] and leased_files(data) == []


def test_status_asks_the_cluster_networks_plugins(node: Node, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    plugin = bin_dir / "not-ready"
    plugin.write_text('#!/bin/sh\necho \'{"cniVersion": "1.1.0", "code": 50, "msg": "no uplink yet"}\'\nexit 1\n')
    plugin.chmod(0o755)
    cluster = tmp_path / "c.conflist"
    cluster.write_text(json.dumps({"cniVersion": "1.1.0", "name": "c", "plugins": [{"type": "not-ready"}]}))
    res = node.cni("STATUS", conf=node.conf(version="1.1.0", binDir=str(bin_dir), clusterNetwork=str(cluster)))
    assert res.code == 50 and "no uplink yet" in res.json["msg"], res
    assert node.cni("STATUS", conf=node.conf(version="1.1.0")).ok

"""Segments on real kernels: macvlan on a parent NIC, VXLAN between two nodes, and VLAN's clear refusal.

This kernel has no 802.1q module, so VLAN sub-interfaces are checked at the netlink-message level
(tests/unit/test_vlan_message.py) and here only for a clear error; segmentation end to end is shown
with VXLAN: two node namespaces joined by an underlay veth, a pod on each, pinging across.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.harness import NS_PREFIX, Node, links_in, pod_manifest, run


def _class_and_network(name: str, cls_spec: str, pool_ranges: str = "") -> str:
    ranges = f"\n      ranges: [{pool_ranges}]" if pool_ranges else ""
    return f"""
apiVersion: network.deckhouse.io/v1alpha1
kind: NetworkClass
metadata: {{name: {name}-class}}
spec:
{cls_spec}
---
apiVersion: network.deckhouse.io/v1alpha1
kind: IPAddressPool
metadata: {{name: {name}-pool, namespace: my-namespace}}
spec:
  leaseTTL: 1h
  pools:
    - network: 198.18.30.0/24{ranges}
---
apiVersion: network.deckhouse.io/v1alpha1
kind: Network
metadata: {{name: {name}, namespace: my-namespace}}
spec:
  networkClass: {name}-class
  ipam: {{ipAddressPoolRef: {{kind: IPAddressPool, name: {name}-pool}}}}
"""


def ping(netns: str, address: str) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", netns.rsplit("/", 1)[-1], "ping", "-c", "2", "-W", "2", "-i", "0.2", address,
               check=False)


@pytest.mark.netns
def test_macvlan_on_parent_nic(node: Node) -> None:
    run("ip", "-n", node.name, "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    run("ip", "-n", node.name, "link", "set", "uplink0", "up")
    run("ip", "-n", node.name, "link", "set", "uplink1", "up")
    node.apply(_class_and_network("mv", "  parentNodeNetworkInterfaces: {names: [uplink0]}"))
    spec = [{"type": "Network", "name": "mv", "ifName": "mv0", "interfaceType": "macvlan"}]
    node.apply([pod_manifest("a", spec), pod_manifest("b", spec)])
    ns_a, ns_b = node.pod_netns("a"), node.pod_netns("b")
    ra = node.cni("ADD", "ca", ns_a, pod=("my-namespace", "a"))
    rb = node.cni("ADD", "cb", ns_b, pod=("my-namespace", "b"))
    assert ra.ok and rb.ok, (ra, rb)
    la, lb = links_in(ns_a)["mv0"], links_in(ns_b)["mv0"]
    assert la["kind"] == "macvlan" and lb["kind"] == "macvlan"
    host = node.host_links()
    assert host["uplink0"]["master"].startswith("plx-n-"), "the parent NIC is the untagged bridge's uplink"
    # the macvlans sit on that bridge, so they share the segment with veth pods and the uplink
    veth_pod = [{"type": "Network", "name": "mv", "ifName": "v0"}]
    node.apply([pod_manifest("c", veth_pod)])
    ns_c = node.pod_netns("c")
    rc = node.cni("ADD", "cc", ns_c, pod=("my-namespace", "c"))
    assert rc.ok, rc
    assert ping(ns_c, la["addresses"][0].split("/")[0]).returncode == 0
    # macvlan bridge mode: pods on one parent reach each other
    assert ping(ns_a, lb["addresses"][0].split("/")[0]).returncode == 0
    assert node.cni("DEL", "ca", ns_a, pod=("my-namespace", "a")).ok
    assert node.cni("DEL", "cb", ns_b, pod=("my-namespace", "b")).ok
    assert node.cni("DEL", "cc", ns_c, pod=("my-namespace", "c")).ok
    assert set(links_in(ns_a)) == {"lo"} and set(links_in(ns_b)) == {"lo"}
    assert not node.plx_links(), "macvlan makes no host-side veth, and the veth pod's is gone"


@pytest.mark.netns
def test_vlan_without_8021q_is_a_clear_error_and_leaves_nothing(node: Node) -> None:
    run("ip", "-n", node.name, "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    node.apply(_class_and_network("vl", "  vlan:\n    idPool: ['700']\n    parentNodeNetworkInterfaces: {names: [uplink0]}"))
    node.apply([pod_manifest("a", [{"type": "Network", "name": "vl"}])])
    ns = node.pod_netns("a")
    before = len(node.leases())
    res = node.cni("ADD", "ca", ns, pod=("my-namespace", "a"))
    if res.ok:  # a kernel with 802.1q: then the VLAN must really be there
        assert node.host_links()["plx-vl-700"]["kind"] == "vlan"
        return
    assert res.code == 105 and "VLAN 700" in res.json["msg"], res
    assert set(links_in(ns)) == {"lo"}
    assert not node.plx_links()
    assert len(node.leases()) == before


@pytest.fixture
def two_nodes() -> Iterator[tuple[Node, Node]]:
    a, b = Node(), Node()
    try:
        run("ip", "link", "add", "plxul-a", "netns", a.name, "type", "veth", "peer", "name", "plxul-b", "netns", b.name)
        for n, dev, ip in ((a, "plxul-a", "198.18.0.1/24"), (b, "plxul-b", "198.18.0.2/24")):
            run("ip", "-n", n.name, "addr", "add", ip, "dev", dev)
            run("ip", "-n", n.name, "link", "set", dev, "up")
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.mark.netns
def test_vxlan_segment_between_two_nodes(two_nodes: tuple[Node, Node]) -> None:
    a, b = two_nodes
    for node, dev, local, remote, ranges in ((a, "plxul-a", "198.18.0.1", "198.18.0.2", '"198.18.30.10-198.18.30.19"'),
                                             (b, "plxul-b", "198.18.0.2", "198.18.0.1", '"198.18.30.20-198.18.30.29"')):
        cls = (f"  vxlan:\n    vniPool: ['5000-5009']\n    underlayInterface: {dev}\n"
               f"    localIP: {local}\n    remotes: [{remote}]")
        node.apply(_class_and_network("vx", cls, ranges), sync=False)
        node.apply([pod_manifest("p", [{"type": "Network", "name": "vx", "ifName": "vx0"}])], sync=False)
        node.start()
    ns_a, ns_b = a.pod_netns("p"), b.pod_netns("p")
    ra = a.cni("ADD", "c1", ns_a, pod=("my-namespace", "p"))
    rb = b.cni("ADD", "c1", ns_b, pod=("my-namespace", "p"))
    assert ra.ok and rb.ok, (ra, rb)
    for node in (a, b):
        host = node.host_links()
        assert host["plx-vx-5000"]["kind"] == "vxlan" and host["plx-vx-5000"]["master"] == "plx-vb-5000"
    addr_b = links_in(ns_b)["vx0"]["addresses"][0].split("/")[0]
    assert addr_b.startswith("198.18.30.2")
    result = ping(ns_a, addr_b)
    assert result.returncode == 0, result.stdout + result.stderr
    assert a.cni("DEL", "c1", ns_a, pod=("my-namespace", "p")).ok
    assert b.cni("DEL", "c1", ns_b, pod=("my-namespace", "p")).ok


def test_no_stray_namespaces_left_by_this_module() -> None:
    """Runs last in the module: every namespace the tests above made is gone."""
    out = run("ip", "netns", "list").stdout
    assert not [line for line in out.splitlines() if line.startswith(NS_PREFIX) and "plxul" in line]



@pytest.mark.netns
def test_bridges_follow_networks_and_stay_while_pods_use_them(node: Node) -> None:
    """A Network's bridge exists before any pod asks for it and goes with the Network, but never
    from under a pod that still uses it."""
    import yaml

    docs = [d for d in yaml.safe_load_all(_class_and_network("gone", "  vlan: {idPool: ['900']}")) if d]
    node.apply(docs)
    assert "plx-br-900" in node.host_links(), "made ahead of pods"
    node.apply([pod_manifest("a", [{"type": "Network", "name": "gone"}])])
    ns = node.pod_netns("a")
    assert node.cni("ADD", "c1", ns, pod=("my-namespace", "a")).ok
    network = [d for d in docs if d["kind"] == "Network"]
    node.delete(network)
    assert "plx-br-900" in node.host_links(), "kept while a pod uses it"
    assert node.cni("DEL", "c1", ns, pod=("my-namespace", "a")).ok
    node.sync()
    assert "plx-br-900" not in node.host_links(), "removed with its Network once unused"

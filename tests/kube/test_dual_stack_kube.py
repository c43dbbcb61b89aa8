"""Dual stack through a real API server: the CRDs take IPv6 pools, Statics and ``ipFamily``; a pod on a dual-stack
Network gets an address of each family, two IPAddress objects (the second asking for IPv6) and a lease object per
address whose name the API server accepts; the pool's status counts a /64 without overflowing; everything goes with
the pod."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.harness import Node
from tests.kube.conftest import Cluster
from tests.kube.test_kube_mode import GROUP, add_once_granted, kube_node, nodes, pod  # noqa: F401  (the fixture)
from tests.netns.test_dual_stack import ipv6_of

pytestmark = pytest.mark.netns
V4, V6 = "198.18.122.0/24", "2001:2:0:122::/64"


def world(ns: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {"apiVersion": GROUP, "kind": "NetworkClass", "metadata": {"name": f"{ns}-class"},
         "spec": {"vlan": {"idPool": ["870-879"]}}},
        {"apiVersion": GROUP, "kind": "IPAddressPool", "metadata": {"name": "pool", "namespace": ns},
         "spec": {"leaseTTL": "2s", "pools": [
             {"network": V4, "ranges": ["198.18.122.10-198.18.122.19"]},
             {"network": V6, "ranges": ["2001:2:0:122::10-2001:2:0:122:ffff:ffff:ffff:ffff"],
              "routes": [{"destination": "2001:2:0:123::/64", "via": "2001:2:0:122::1"}]}]}},
        {"apiVersion": GROUP, "kind": "Network", "metadata": {"name": "net", "namespace": ns},
         "spec": {"networkClass": f"{ns}-class", "vlan": {"id": 870},
                  "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pool"}}}},
        {"apiVersion": GROUP, "kind": "IPAddress", "metadata": {"name": "v6-static", "namespace": ns},
         "spec": {"networkRef": {"kind": "Network", "name": "net"}, "type": "Static",
                  "static": {"ip": "2001:2:0:122::beef"}}},
    ]


def test_a_dual_stack_pod_through_the_api(cluster: Cluster, nodes: list[Node]) -> None:  # noqa: F811
    ns = "kdual"
    cluster.apply(world(ns))
    bad = {"apiVersion": GROUP, "kind": "IPAddress", "metadata": {"name": "bad", "namespace": ns},
           "spec": {"networkRef": {"kind": "Network", "name": "net"}, "ipFamily": "IPv5"}}
    res = cluster.kubectl("apply", "-f", "-", stdin=json.dumps(bad), check=False)
    assert res.returncode != 0 and "ipFamily" in res.stderr, res.stderr
    named = pod(ns, "named", "kdual-node")
    named["metadata"]["annotations"]["network.deckhouse.io/networks-spec"] = json.dumps(
        [{"type": "Network", "name": "net", "ifName": "net1", "ipAddressNames": ["v6-static"]}])
    cluster.apply([pod(ns, "app", "kdual-node"), named])
    uid = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.get("pods", "-n", ns)["items"]}
    node = kube_node(cluster, "kdual-node")
    nodes.append(node)
    paths = {n: node.pod_netns(n) for n in ("app", "named")}
    # made again while the node has not seen the controller's VLAN grant for the Network yet (code 11 only)
    adds = {n: add_once_granted(partial(node.cni, "ADD", f"c-{n}", paths[n], pod=(ns, n), env={
        "CNI_ARGS": f"K8S_POD_NAMESPACE={ns};K8S_POD_NAME={n};K8S_POD_UID={uid[n]}"})) for n in ("app", "named")}
    assert all(a.ok for a in adds.values()), (adds, node.log_text()[-3000:])
    v4, v6 = (ip["address"] for ip in adds["app"].json["ips"])
    assert v4.startswith("198.18.122.1") and v6 == "2001:2:0:122::10/64"
    assert list(ipv6_of(paths["app"], "net1")["addresses"]) == [v6]
    assert [ip["address"] for ip in adds["named"].json["ips"]] == ["2001:2:0:122::beef/64"]

    def objects() -> dict[str, dict[str, Any]]:
        return {i["metadata"]["name"]: i for i in cluster.get("ipaddress", "-n", ns)["items"]
                if (i.get("status") or {}).get("phase") == "Allocated"}

    assert wait_for(lambda: len(objects()) == 3, timeout=30), (objects(), node.log_text()[-3000:])
    by_address = {o["status"]["address"]: o for o in objects().values()}
    six = by_address["2001:2:0:122::10"]
    assert six["spec"].get("ipFamily") == "IPv6" and six["metadata"]["name"].endswith("-v6")
    assert six["status"]["routes"] == [{"destination": "2001:2:0:123::/64", "via": "2001:2:0:122::1"}]
    assert by_address["2001:2:0:122::beef"]["metadata"]["name"] == "v6-static"

    def leased() -> set[str]:
        return {x["spec"]["ip"] for x in cluster.get("ipaddresslease")["items"]
                if x["spec"]["pool"] == f"IPAddressPool/{ns}/pool"}

    assert wait_for(lambda: leased() == {v4.split("/")[0], "2001:2:0:122::10", "2001:2:0:122::beef"}, timeout=30), \
        leased()
    assert wait_for(lambda: (cluster.get("ipaddresspool", "-n", ns, "pool").get("status") or {}).get("used") == 3,
                    timeout=30)
    status = cluster.get("ipaddresspool", "-n", ns, "pool")["status"]
    assert status["size"] == (1 << 63) - 1 and status["free"] == (1 << 63) - 1, "a /64's count is capped, not refused"

    for n in ("app", "named"):
        assert node.cni("DEL", f"c-{n}", paths[n], pod=(ns, n)).ok
    cluster.kubectl("delete", "pod", "-n", ns, "app", "named", "--grace-period=0", "--force")
    assert wait_for(lambda: leased() == {"2001:2:0:122::beef"}, timeout=90), \
        "the pod's own addresses go (the user's Static keeps its lease)"

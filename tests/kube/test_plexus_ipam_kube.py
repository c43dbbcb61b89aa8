"""plexus-ipam in Kubernetes mode against a real API server: four node daemons racing for one pool through
delegated ADDs (every address distinct, exactly as many as the pool has, everything back after deletion), a
daemon SIGKILLed mid-ADD leaking nothing once it is back, and an IPAMClaim's address surviving its pod's
deletion and recreation on another node."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.harness import Node, links_in
from tests.kube.conftest import Cluster
from tests.kube.test_kube_mode import kube_node, nodes  # noqa: F401  (the fixture)

GROUP = "network.deckhouse.io/v1alpha1"
NPWG = "k8s.v1.cni.cncf.io/networks"
REFERENCE = Path("/usr/lib/cni")

pytestmark = pytest.mark.netns


def world(ns: str, pool: str, network: str, first: str, last: str, bridge: str) -> list[dict[str, Any]]:
    config = {"cniVersion": "0.3.1", "type": "bridge", "bridge": bridge, "isGateway": False,
              "ipam": {"type": "plexus-ipam", "ipAddressPoolRef": {"kind": "ClusterIPAddressPool", "name": pool}}}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {"apiVersion": GROUP, "kind": "ClusterIPAddressPool", "metadata": {"name": pool},
         "spec": {"leaseTTL": "2s", "pools": [{"network": network, "ranges": [f"{first}-{last}"]}]}},
        {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
         "metadata": {"name": "shared", "namespace": ns}, "spec": {"config": json.dumps(config)}},
    ]


def pod(ns: str, name: str, node: str, networks: Any = "shared") -> dict[str, Any]:
    value = networks if isinstance(networks, str) else json.dumps(networks)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "annotations": {NPWG: value}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}


def leases_of(cluster: Cluster, pool: str) -> list[dict[str, Any]]:
    return [x for x in cluster.get("ipaddresslease")["items"] if x["spec"]["pool"] == f"ClusterIPAddressPool/{pool}"]


def call(node: Node, verb: str, ns: str, name: str, uid: str, netns: str) -> Any:
    return node.cni(verb, f"c-{name}", netns, pod=(ns, name), conf=node.conf(binDir=str(REFERENCE)),
                    env={"CNI_ARGS": f"K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID={uid}"})


def uids(cluster: Cluster, ns: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.get("pods", "-n", ns)["items"]}


def test_four_nodes_race_for_one_pool_through_delegated_adds(cluster: Cluster, nodes: list[Node]) -> None:  # noqa: F811
    ns, pool = "kpirace", "kpi-race"
    cluster.apply(world(ns, pool, "198.18.80.0/24", "198.18.80.10", "198.18.80.33", "kpibr0"))  # 24 addresses
    names = [f"p{i:02d}" for i in range(40)]
    cluster.apply([pod(ns, n, f"kpi-{i % 4}") for i, n in enumerate(names)])
    uid = uids(cluster, ns)
    for i in range(4):
        nodes.append(kube_node(cluster, f"kpi-{i}"))
    netns = {n: nodes[i % 4].pod_netns(n) for i, n in enumerate(names)}
    results: dict[str, Any] = {}

    def run(k: int) -> None:
        for i, n in enumerate(names):
            if i % 4 == k:
                results[n] = call(nodes[k], "ADD", ns, n, uid[n], netns[n])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = {n: r for n, r in results.items() if r.ok}
    failed = {n: r for n, r in results.items() if not r.ok}
    assert len(ok) == 24, {n: r.stdout for n, r in list(failed.items())[:3]}
    addresses = {n: links_in(netns[n])["net1"]["addresses"] for n in ok}
    assert len({a for v in addresses.values() for a in v}) == 24 and all(len(v) == 1 for v in addresses.values())
    assert all(r.code == 100 and pool in r.json["msg"] for r in failed.values()), list(failed.values())[:2]
    assert all(set(links_in(netns[n])) == {"lo"} for n in failed), "a refused ADD leaves no interface"
    objects = leases_of(cluster, pool)
    assert len(objects) == 24 and {o["spec"]["holder"].split("/")[0] for o in objects} == {"CNI"}
    assert sorted(o["spec"]["ip"] + "/24" for o in objects) == sorted(a for v in addresses.values() for a in v)

    for i, n in enumerate(names):
        assert call(nodes[i % 4], "DEL", ns, n, uid[n], netns[n]).ok
    assert all(set(links_in(netns[n])) == {"lo"} for n in names)
    assert wait_for(lambda: leases_of(cluster, pool) == [], timeout=90), \
        f"{len(leases_of(cluster, pool))} lease objects left after the 2 s quarantine"


def test_a_node_killed_mid_add_leaks_nothing_once_it_is_back(cluster: Cluster, nodes: list[Node]) -> None:  # noqa: F811
    ns, pool = "kpikill", "kpi-kill"
    cluster.apply(world(ns, pool, "198.18.81.0/24", "198.18.81.10", "198.18.81.19", "kpibr1"))
    cluster.apply([pod(ns, n, "kpi-kill") for n in ("leased", "built")])
    uid = uids(cluster, ns)
    node = kube_node(cluster, "kpi-kill")
    nodes.append(node)
    for step, name in (("add:leased", "leased"), ("add:built", "built")):
        node.stop()
        node.start(env={"PLEXUS_FAULT": step})
        netns = node.pod_netns(name)
        res = call(node, "ADD", ns, name, uid[name], netns)
        assert not res.ok and node.wait_exit(10) is not None, f"the daemon died at {step}"
        assert leases_of(cluster, pool), f"at {step} the lease object exists: it was made before the kernel was touched"
        node.start()  # no fault: it recovers the half-done ADD
        assert wait_for(lambda: leases_of(cluster, pool) == [], timeout=60), \
            (step, leases_of(cluster, pool), node.log_text()[-2000:])
        assert "net1" not in links_in(netns), f"{step}: the delegate's interface was undone"
    res = call(node, "ADD", ns, "leased", uid["leased"], netns := node.pod_netns("again"))
    assert res.ok, res
    (address,) = links_in(netns)["net1"]["addresses"]
    assert [o["spec"]["ip"] + "/24" for o in leases_of(cluster, pool)] == [address], "one lease: nothing leaked"
    assert call(node, "DEL", ns, "leased", uid["leased"], netns).ok


def test_an_ipamclaims_address_survives_its_pod_on_another_node(cluster: Cluster, nodes: list[Node]) -> None:  # noqa: F811
    ns, pool = "kpiclaim", "kpi-claim"
    cluster.apply(world(ns, pool, "198.18.82.0/24", "198.18.82.10", "198.18.82.19", "kpibr2"))
    cluster.apply([{"apiVersion": "k8s.cni.cncf.io/v1alpha1", "kind": "IPAMClaim",
                    "metadata": {"name": "db-0.shared", "namespace": ns},
                    "spec": {"network": "shared", "interface": "net1"}}])
    claimed = [{"name": "shared", "interface": "net1", "ipam-claim-reference": "db-0.shared"}]
    cluster.apply([pod(ns, "filler", "kpi-a"), pod(ns, "db-0", "kpi-a", claimed)])
    a, b = kube_node(cluster, "kpi-a"), kube_node(cluster, "kpi-b")
    nodes.extend([a, b])
    uid = uids(cluster, ns)
    filler = a.pod_netns("filler")
    assert call(a, "ADD", ns, "filler", uid["filler"], filler).ok  # .10: so the claim's is not the first
    first = a.pod_netns("db-0")
    assert call(a, "ADD", ns, "db-0", uid["db-0"], first).ok
    (address,) = links_in(first)["net1"]["addresses"]
    status = cluster.get("ipamclaim", "-n", ns, "db-0.shared").get("status") or {}
    assert status == {"ips": [address], "ownerPod": "db-0"}, status

    cluster.apply([pod(ns, "thief", "kpi-b", claimed)])
    thief_uid = uids(cluster, ns)["thief"]
    refused = call(b, "ADD", ns, "thief", thief_uid, b.pod_netns("thief"))
    assert refused.code == 104 and f"{ns}/db-0" in refused.json["msg"], refused

    assert call(a, "DEL", ns, "db-0", uid["db-0"], first).ok
    cluster.kubectl("delete", "pod", "-n", ns, "db-0", "--grace-period=0", "--force")
    assert wait_for(lambda: not (cluster.get("ipamclaim", "-n", ns, "db-0.shared").get("status") or {}).get("ownerPod"),
                    timeout=30), ("no pod holds it now", cluster.get("ipamclaim", "-n", ns, "db-0.shared").get("status"))
    (held,) = [o for o in leases_of(cluster, pool) if o["spec"]["ip"] + "/24" == address]
    assert held["spec"]["holder"] == f"IPAMClaim/{ns}/db-0.shared", "kept while the claim exists"

    cluster.apply([pod(ns, "db-0", "kpi-b", claimed)])  # the StatefulSet's pod again, on another node
    again = b.pod_netns("db-0")
    assert call(b, "ADD", ns, "db-0", uids(cluster, ns)["db-0"], again).ok, b.log_text()[-3000:]
    assert links_in(again)["net1"]["addresses"] == [address], "the address followed the claim"
    assert call(b, "DEL", ns, "db-0", uids(cluster, ns)["db-0"], again).ok
    assert call(a, "DEL", ns, "filler", uid["filler"], filler).ok

    cluster.kubectl("delete", "ipamclaim", "-n", ns, "db-0.shared")
    assert wait_for(lambda: leases_of(cluster, pool) == [], timeout=90), \
        ("released when the claim is deleted, then quarantined", leases_of(cluster, pool))

"""Pods start and stop through a 60 s API server outage: two nodes churn pods while their API server is unreachable;
every ADD a node can serve from its address blocks succeeds, every DEL succeeds, no address is held twice, and once
the API server is back every status and object converges (measured)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipamd.api import ipam_pb2 as pb
from tests.conftest import wait_for
from tests.harness import Node, links_in
from tests.kube.conftest import Cluster, ControllerProcess, Relay
from tests.kube.test_kube_mode import objects, pod

NS = "koutage"
STATUS = "network.deckhouse.io/networks-status"
OUTAGE_S = 60


@pytest.fixture
def two_nodes(cluster: Cluster, controller: ControllerProcess, relay: tuple[Relay, Path]) -> Iterator[list[Node]]:
    made = [Node(kubeconfig=str(relay[1]), node_name=f"outage-{i}", reconcile_interval=2.0) for i in range(2)]
    try:
        yield made
    finally:
        for n in made:
            n.close()


@pytest.mark.netns
def test_pods_start_and_stop_through_a_60s_api_outage(cluster: Cluster, relay: tuple[Relay, Path],
                                                     two_nodes: list[Node]) -> None:
    r, _ = relay
    cluster.apply(objects(NS, "0s", "198.18.70.1-198.18.70.254", cidr="198.18.70.0/24", vlan=860))
    names = {i: [f"n{i}-p{k}" for k in range(10)] for i in range(2)}
    cluster.apply([pod(NS, n, f"outage-{i}") for i in range(2) for n in names[i]])
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.get("pods", "-n", NS)["items"]}
    for node in two_nodes:
        node.start()
    netns = {n: two_nodes[i].pod_netns(n) for i in range(2) for n in names[i]}
    up: dict[str, str] = {}  # pod -> container ID

    def cni(verb: str, i: int, name: str, cid: str) -> Any:
        return two_nodes[i].cni(verb, cid, netns[name], pod=(NS, name), timeout=60,
                                env={"CNI_ARGS": f"K8S_POD_NAMESPACE={NS};K8S_POD_NAME={name};K8S_POD_UID={uids[name]}"})

    last: list[Any] = []

    def first_add(i: int) -> bool:
        last.append(cni("ADD", i, names[i][0], f"c-{names[i][0]}-0"))
        return bool(last[-1].ok)

    for i in range(2):  # before the outage: a pod each (the node claims its block)
        assert wait_for(lambda: first_add(i), timeout=30, step=1), (last[-1:], two_nodes[i].log_text()[-2000:])  # noqa: B023
        up[names[i][0]] = f"c-{names[i][0]}-0"

    r.refuse()
    started, served, refused, rounds = time.monotonic(), 0, [], 0
    while time.monotonic() - started < OUTAGE_S:  # churn: sandboxes of the nodes' pods come and go
        rounds += 1
        for i in range(2):
            for name in names[i][rounds % 3::3]:
                if name in up:
                    res = cni("DEL", i, name, up[name])
                    assert res.ok, res
                    del up[name]
                else:
                    cid = f"c-{name}-{rounds}"
                    res = cni("ADD", i, name, cid)
                    if res.ok:
                        up[name], served = cid, served + 1
                    else:
                        refused.append(res.stdout)
    assert served >= 10 and refused == [], refused[:2]
    live = {name: links_in(netns[name])["net1"]["addresses"][0].split("/")[0] for name in up}
    assert len(set(live.values())) == len(live), "no address held twice"

    r.resume()
    back = time.monotonic()

    def converged() -> bool:
        if any(n.grpc("ListOutbox", pb.ListOutboxRequest(limit=1)).depth for n in two_nodes):
            return False
        pods = {p["metadata"]["name"]: (p["metadata"].get("annotations") or {}) for p in
                cluster.get("pods", "-n", NS)["items"]}
        for name in (n for i in range(2) for n in names[i]):
            status = json.loads(pods[name].get(STATUS) or "[]")
            if name in live and [s["ipAddressConfigs"][0]["address"] for s in status] != [live[name]]:
                return False
            if name not in live and status:
                return False
        leases = {x["spec"]["ip"]: x["spec"].get("holder") for x in cluster.get("ipaddresslease")["items"]
                  if x["spec"]["pool"].endswith(f"{NS}/pool")}
        return all(leases.get(a) for a in live.values())

    assert wait_for(converged, timeout=90, step=1), [n.log_text()[-2000:] for n in two_nodes]
    took = time.monotonic() - back
    print(f"\nAPI server unreachable for {OUTAGE_S} s: {served} ADDs served from the nodes' blocks, {rounds} rounds "
          f"of churn on 2 nodes, none refused; statuses and lease objects converged {took:.1f} s after it came back")
    ips = cluster.get("ipaddress", "-n", NS)["items"]
    by_pod = {(i.get("status") or {}).get("usedByPods", [""])[0] if (i.get("status") or {}).get("usedByPods") else "":
              (i.get("status") or {}).get("address") for i in ips}
    assert all(by_pod.get(f"{NS}/{name}") == address for name, address in live.items()), by_pod

    # and no address is lost: once the pods are gone, every one is back in the pool
    for i in range(2):
        for name in names[i]:
            if name in up:
                assert cni("DEL", i, name, up.pop(name)).ok
    cluster.kubectl("delete", "pods", "-n", NS, "--all", "--grace-period=0", "--force")

    def held() -> list[str]:
        return [x["spec"]["ip"] for x in cluster.get("ipaddresslease")["items"]
                if x["spec"]["pool"].endswith(f"{NS}/pool") and x["spec"].get("holder")]

    assert wait_for(lambda: not held(), timeout=90, step=1), held()


@pytest.mark.netns
def test_a_daemon_restarted_while_the_api_server_is_away_serves_add_from_its_blocks(
        cluster: Cluster, controller: ControllerProcess, relay: tuple[Relay, Path]) -> None:
    """The daemon keeps its informers' caches on disk (``ipamd.kube.snapshot``): killed while the API server is away
    and started again, it serves ADD from the block it holds, where before it answered 11 until the API came back;
    and once the API is back, the objects converge."""
    r, kubeconfig = relay
    ns = "krestart"
    cluster.apply(objects(ns, "0s", "198.18.71.1-198.18.71.254", cidr="198.18.71.0/24", vlan=861))
    names = ["a", "b", "c"]
    cluster.apply([pod(ns, n, "restart-0") for n in names])
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.get("pods", "-n", ns)["items"]}
    node = Node(kubeconfig=str(kubeconfig), node_name="restart-0", reconcile_interval=1.0,
                extra_args=("--snapshot-interval", "1"))
    try:
        node.start()
        netns = {n: node.pod_netns(n) for n in names}

        def add(name: str) -> Any:
            return node.cni("ADD", f"c-{name}", netns[name], pod=(ns, name), timeout=60,
                            env={"CNI_ARGS": f"K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID={uids[name]}"})

        assert wait_for(lambda: add("a").ok, timeout=30, step=1), node.log_text()[-2000:]
        first = links_in(netns["a"])["net1"]["addresses"][0]
        snapshot = node.dir / "informer-cache.json"

        def snapshot_holds_the_block() -> bool:
            """This node's block is in the snapshot, renewed: offline, the daemon leases only in a block whose
            renewal it can see (a block claimed just now has its renewTime written shortly after the claim)."""
            try:
                caches = json.loads(snapshot.read_text())["caches"]
            except (OSError, ValueError, KeyError):
                return False
            return any(b["spec"]["node"] == "restart-0" and (b.get("status") or {}).get("renewTime")
                       for b in caches.get("IPAddressBlock", []))

        assert wait_for(snapshot_holds_the_block, timeout=60), "the snapshot is written, with the block's renewal"
        r.refuse()
        node.kill()
        node.start()
        res = add("b")
        assert res.ok, (res, node.log_text()[-3000:])
        second = links_in(netns["b"])["net1"]["addresses"][0]
        assert second != first and second.startswith("198.18.71."), (first, second)
        assert "serving from the informer snapshot" in node.log_text()
        assert node.cni("DEL", "c-a", netns["a"], pod=(ns, "a"), timeout=60).ok, "DEL too"
        r.resume()

        seen: list[Any] = []

        def converged() -> bool:
            leases = {x["spec"]["ip"]: x["spec"].get("holder") for x in cluster.get("ipaddresslease")["items"]
                      if x["spec"]["pool"].endswith(f"{ns}/pool")}
            status = [json.loads((cluster.get("pod", "-n", ns, n)["metadata"].get("annotations") or {})
                                 .get(STATUS) or "[]") for n in ("a", "b")]
            seen[:] = [leases, status]
            # a's address stays its IPAddress's while the pod exists (a new sandbox of it gets it again)
            return (set(leases) == {first.split("/")[0], second.split("/")[0]} and all(leases.values())
                    and status[0] == []
                    and [s["ipAddressConfigs"][0]["address"] for s in status[1]] == [second.split("/")[0]])

        assert wait_for(converged, timeout=90, step=1), (seen, second, node.log_text()[-3000:])
    finally:
        if r.mode == "refuse":
            r.resume()
        node.close()

"""The outbox against a real API server: while the API server is unreachable DEL succeeds and what it writes is owed
in the node's store; the daemon SIGKILLed with a full outbox restarts and makes every write; an ADD that truly needs
the API (a new address, no block of its own yet) answers code 11, names why, and leaves nothing behind."""

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

NS = "koutbox"
STATUS = "network.deckhouse.io/networks-status"


@pytest.fixture
def node(cluster: Cluster, controller: ControllerProcess, relay: tuple[Relay, Path]) -> Iterator[Node]:
    n = Node(kubeconfig=str(relay[1]), node_name="outbox-a", reconcile_interval=1.0)
    try:
        yield n
    finally:
        n.close()


def owed(node: Node) -> Any:
    return node.grpc("ListOutbox", pb.ListOutboxRequest(limit=100))


@pytest.mark.netns
def test_writes_owed_in_an_outage_survive_a_kill_and_are_made(cluster: Cluster, relay: tuple[Relay, Path],
                                                             node: Node) -> None:
    r, _ = relay
    cluster.apply(objects(NS, "1h", "198.18.69.10-198.18.69.40", cidr="198.18.69.0/24", vlan=790))
    names = ["a0", "a1", "a2", "late"]
    cluster.apply([pod(NS, n, "outbox-a") for n in names])
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.get("pods", "-n", NS)["items"]}
    node.start()
    netns = {n: node.pod_netns(n) for n in names}

    def cni(verb: str, name: str) -> Any:
        return node.cni(verb, f"c-{name}", netns[name], pod=(NS, name), timeout=60,
                        env={"CNI_ARGS": f"K8S_POD_NAMESPACE={NS};K8S_POD_NAME={name};K8S_POD_UID={uids[name]}"})

    assert wait_for(lambda: cni("ADD", "a0").ok, timeout=30, step=1)  # once the controller gave the VLAN ID
    for name in names[1:3]:
        assert cni("ADD", name).ok
    def ip_statuses() -> dict[str, dict[str, Any]]:
        return {i["status"]["usedByPods"][0] if i["status"].get("usedByPods") else i["metadata"]["name"]: i["status"]
                for i in cluster.get("ipaddress", "-n", NS)["items"] if i.get("status")}

    assert wait_for(lambda: len(ip_statuses()) == 3 and owed(node).depth == 0, timeout=30), owed(node)

    r.refuse()  # the API server is unreachable from here on
    started = time.monotonic()
    for name in names[:3]:
        res = cni("DEL", name)
        assert res.ok, res
    del_s = (time.monotonic() - started) / 3
    assert all(set(links_in(netns[n])) == {"lo"} for n in names[:3])
    add = cni("ADD", "late")  # a new address needs a claim the API server must answer
    assert add.code == 11 and "Kubernetes API" in add.json["msg"], add
    assert set(links_in(netns["late"])) == {"lo"} and not [x for x in node.leases() if x.pods == [f"{NS}/late"]]
    waiting = owed(node)
    ops = sorted({(e.target.split("/")[0], e.op) for e in waiting.entries})
    assert ("IPAddress", "patch_status") in ops and ("Pod", "pod_status") in ops, ops
    assert waiting.depth >= 6 and all(e.error or e.attempts == 0 for e in waiting.entries)

    node.kill()  # SIGKILL with a full outbox
    node.kubeconfig = cluster.kubeconfig  # the API server is back
    restarted = time.monotonic()
    node.start()

    def converged() -> bool:
        pods = {p["metadata"]["name"]: p["metadata"].get("annotations", {}) for p in
                cluster.get("pods", "-n", NS)["items"]}
        statuses = ip_statuses()
        return (owed(node).depth == 0 and all(STATUS not in pods[n] for n in names[:3])
                and len(statuses) == 3 and all(not s.get("usedByPods") for s in statuses.values()))

    assert wait_for(converged, timeout=60), (owed(node), node.log_text()[-3000:])
    print(f"\nDEL with the API server unreachable: {del_s * 1000:.0f} ms each; {waiting.depth} writes owed, made "
          f"{time.monotonic() - restarted:.1f} s after the restart")
    conditions = [{c["type"]: c["status"] for c in s["conditions"]} for s in ip_statuses().values()]
    assert all(c["Attached"] == "False" for c in conditions), conditions
    assert cni("ADD", "late").ok  # and a new address is claimed again
    assert json.loads(cluster.get("pod", "-n", NS, "late")["metadata"]["annotations"][STATUS])[0]["ifName"] == "net1"

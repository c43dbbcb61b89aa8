"""Addresses that are never lost: IPAddress lifecycle, quarantine, pool changes, late DELs, churn."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import wait_for as poll
from tests.harness import BASE_OBJECTS, Node, links_in, pod_manifest, post_cni

# a quarantine (leaseTTL) short enough to wait out, long enough that a test process the loaded machine stalls for a
# few seconds still reads an address quarantined right after it went there (the reconciler frees it every 1 s)
SHORT_TTL_POOL = """
apiVersion: network.deckhouse.io/v1alpha1
kind: IPAddressPool
metadata: {name: pool-q, namespace: my-namespace}
spec:
  leaseTTL: 5s
  pools:
    - network: 198.18.12.0/24
      ranges: ["198.18.12.10-198.18.12.12"]
---
apiVersion: network.deckhouse.io/v1alpha1
kind: Network
metadata: {name: net-q, namespace: my-namespace}
spec:
  networkClass: test-class
  ipam: {ipAddressPoolRef: {kind: IPAddressPool, name: pool-q}}
"""


def static_ip(name: str, ip: str, network: str = "net-q") -> dict[str, object]:
    return {"apiVersion": "network.deckhouse.io/v1alpha1", "kind": "IPAddress",
            "metadata": {"name": name, "namespace": "my-namespace"},
            "spec": {"networkRef": {"kind": "Network", "name": network}, "type": "Static", "static": {"ip": ip}}}


def leases_by_address(node: Node) -> dict[str, Any]:
    return {lease.address: lease for lease in node.leases()}


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> bool:
    return bool(poll(predicate, timeout, 0.2))


@pytest.mark.netns
def test_auto_address_quarantined_after_pod_deletion_then_freed(node: Node) -> None:
    node.apply(SHORT_TTL_POOL)
    pod = pod_manifest("app", [{"type": "Network", "name": "net-q"}])
    node.apply([pod])
    ns = node.pod_netns("app")
    add = node.cni("ADD", "c1", ns, pod=("my-namespace", "app"))
    assert add.ok, add
    address = add.json["ips"][0]["address"].split("/")[0]
    assert node.cni("DEL", "c1", ns, pod=("my-namespace", "app")).ok
    # the pod still exists: its Auto IPAddress (and address) is kept for its next sandbox
    assert leases_by_address(node)[address].state == "bound"
    node.delete([pod])
    lease = leases_by_address(node)[address]
    assert lease.state == "orphaned" and lease.holder == "" and lease.ttl_seconds == 5
    assert node.pools()["IPAddressPool/my-namespace/pool-q"].quarantined == 1
    assert wait_for(lambda: address not in leases_by_address(node), timeout=20), "freed after the TTL"


@pytest.mark.netns
def test_static_ipaddress_adopts_a_quarantined_address_at_once(node: Node) -> None:
    node.apply(SHORT_TTL_POOL.replace("leaseTTL: 5s", "leaseTTL: 1h"))
    pod = pod_manifest("app", [{"type": "Network", "name": "net-q"}])
    node.apply([pod])
    ns = node.pod_netns("app")
    add = node.cni("ADD", "c1", ns, pod=("my-namespace", "app"))
    address = add.json["ips"][0]["address"].split("/")[0]
    assert node.cni("DEL", "c1", ns, pod=("my-namespace", "app")).ok
    node.delete([pod])
    assert leases_by_address(node)[address].state == "orphaned"
    node.apply([static_ip("sticky", address)])
    lease = leases_by_address(node)[address]
    assert lease.state == "bound" and lease.holder == "IPAddress/my-namespace/sticky"
    assert node.ipaddresses()["my-namespace/sticky"]["phase"] == "Allocated"


@pytest.mark.netns
def test_user_ipaddress_outlives_pods_and_is_refused_to_a_second_pod(node: Node) -> None:
    node.apply(SHORT_TTL_POOL)
    node.apply([{"apiVersion": "network.deckhouse.io/v1alpha1", "kind": "IPAddress",
                 "metadata": {"name": "mine", "namespace": "my-namespace"},
                 "spec": {"networkRef": {"kind": "Network", "name": "net-q"}, "type": "Auto"}}])
    allocated = node.ipaddresses()["my-namespace/mine"]
    assert allocated["phase"] == "Allocated", "allocated before any pod uses it"
    spec = [{"type": "Network", "name": "net-q", "ipAddressNames": ["mine"]}]
    first = pod_manifest("first", spec)
    node.apply([first, pod_manifest("second", spec)])
    ns1, ns2 = node.pod_netns("first"), node.pod_netns("second")
    a = node.cni("ADD", "c1", ns1, pod=("my-namespace", "first"))
    assert a.ok and a.json["ips"][0]["address"] == f"{allocated['address']}/24"
    status = node.ipaddresses()["my-namespace/mine"]
    assert status["usedByPods"] == ["my-namespace/first"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Allocated": "True", "Attached": "True"}
    refused = node.cni("ADD", "c2", ns2, pod=("my-namespace", "second"))
    assert refused.code == 104 and "first" in refused.json["msg"]
    # the first pod goes; recreated (new UID) with the same ipAddressNames it gets the same address
    assert node.cni("DEL", "c1", ns1, pod=("my-namespace", "first")).ok
    node.delete([first])
    node.apply([pod_manifest("first", spec, uid="new-uid-of-first")])
    again = node.cni("ADD", "c3", ns1, pod=("my-namespace", "first"))
    assert again.ok and again.json["ips"] == a.json["ips"]


@pytest.mark.netns
def test_ipaddress_deleted_while_in_use_keeps_its_address_until_the_pod_goes(node: Node) -> None:
    node.apply(SHORT_TTL_POOL)
    ip = static_ip("held", "198.18.12.11")
    node.apply([ip])
    pod = pod_manifest("app", [{"type": "Network", "name": "net-q", "ipAddressNames": ["held"]}])
    node.apply([pod])
    ns = node.pod_netns("app")
    assert node.cni("ADD", "c1", ns, pod=("my-namespace", "app")).ok
    node.delete([ip])
    assert leases_by_address(node)["198.18.12.11"].state == "bound", "still in use"
    assert links_in(ns)["net1"]["addresses"] == ["198.18.12.11/24"]
    assert node.cni("DEL", "c1", ns, pod=("my-namespace", "app")).ok
    assert leases_by_address(node)["198.18.12.11"].state == "orphaned", "now it goes to quarantine"


@pytest.mark.netns
def test_pool_shrink_keeps_live_leases_flagged_and_deleted_pool_refuses_new(node: Node) -> None:
    node.apply(SHORT_TTL_POOL)
    node.apply([pod_manifest(f"p{i}", [{"type": "Network", "name": "net-q"}]) for i in range(3)])
    nss = [node.pod_netns(f"p{i}") for i in range(3)]
    for i in range(2):
        assert node.cni("ADD", f"c{i}", nss[i], pod=("my-namespace", f"p{i}")).ok
    node.apply(SHORT_TTL_POOL.replace('["198.18.12.10-198.18.12.12"]', '["198.18.12.12-198.18.12.12"]'))
    leases = leases_by_address(node)
    assert leases["198.18.12.10"].outside_ranges and leases["198.18.12.11"].outside_ranges
    assert leases["198.18.12.10"].state == "bound", "kept, not reassigned"
    third = node.cni("ADD", "c2", nss[2], pod=("my-namespace", "p2"))
    assert third.ok and third.json["ips"][0]["address"] == "198.18.12.12/24"
    # remove the pool: new pods are refused, existing ones keep working and can be deleted
    node.delete([d for d in __import__("yaml").safe_load_all(SHORT_TTL_POOL) if d and d["kind"] == "IPAddressPool"])
    node.apply([pod_manifest("late", [{"type": "Network", "name": "net-q"}])])
    refused = node.cni("ADD", "c9", node.pod_netns("late"), pod=("my-namespace", "late"))
    assert refused.code == 103 and "pool-q" in refused.json["msg"]
    assert node.cni("CHECK", "c0", nss[0], pod=("my-namespace", "p0")).ok
    assert node.cni("DEL", "c0", nss[0], pod=("my-namespace", "p0")).ok


@pytest.mark.netns
def test_statefulset_pod_recreated_while_the_old_sandbox_del_arrives_late(node: Node) -> None:
    """web-0 is deleted and recreated with the same name and a new UID; the old sandbox's DEL
    comes after the new pod's ADD. The address is neither lost nor given twice."""
    node.apply(BASE_OBJECTS.replace("kind: NetworkClass", "kind: NetworkClass", 1))
    node.apply([static_ip("web-0-net1", "198.18.10.15", network="net-a")])
    spec = [{"type": "Network", "name": "net-a", "ipAddressNames": ["web-0-net1"]}]
    node.apply([pod_manifest("web-0", spec, uid="uid-old")])
    old_ns, new_ns = node.pod_netns("web-0-old"), node.pod_netns("web-0-new")
    assert node.cni("ADD", "sandbox-old", old_ns, pod=("my-namespace", "web-0")).ok
    # the old pod object goes and a new one with the same name arrives before the old DEL
    node.apply([pod_manifest("web-0", spec, uid="uid-new")])
    node.remove_pod_netns(old_ns)  # the old sandbox's netns is gone by the time its DEL comes
    new = node.cni("ADD", "sandbox-new", new_ns, pod=("my-namespace", "web-0"))
    late_del = node.cni("DEL", "sandbox-old", old_ns, pod=("my-namespace", "web-0"))
    assert late_del.ok, late_del
    if not new.ok:  # refused while the old sandbox still held it: the runtime retries the ADD
        assert new.code == 104, new
        new = node.cni("ADD", "sandbox-new", new_ns, pod=("my-namespace", "web-0"))
    assert new.ok, new
    assert links_in(new_ns)["net1"]["addresses"] == ["198.18.10.15/24"]
    lease = leases_by_address(node)["198.18.10.15"]
    assert lease.state == "bound" and lease.pods == ["my-namespace/web-0"]
    assert [x.address for x in node.leases()].count("198.18.10.15") == 1
    # and a late DEL repeated once more changes nothing
    assert node.cni("DEL", "sandbox-old", "", pod=("my-namespace", "web-0")).ok
    assert links_in(new_ns)["net1"]["addresses"] == ["198.18.10.15/24"]


@pytest.mark.netns
def test_operator_release_needs_confirmation(node: Node) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    node.apply([pod_manifest("app", [{"type": "Network", "name": "net-a"}])])
    ns = node.pod_netns("app")
    add = node.cni("ADD", "c1", ns, pod=("my-namespace", "app"))
    address = add.json["ips"][0]["address"].split("/")[0]
    base = [sys.executable, "-m", "ipamd.cli", "--grpc-socket", str(node.grpc_socket), "ipam", "release",
            "my-namespace/pool-a", address]
    no = subprocess.run(base, capture_output=True, text=True, cwd=REPO, stdin=subprocess.DEVNULL)
    assert no.returncode == 1 and "--yes" in no.stderr
    assert address in leases_by_address(node)
    yes = subprocess.run(base + ["--yes"], capture_output=True, text=True, cwd=REPO)
    assert yes.returncode == 0 and "released" in yes.stdout
    assert address not in leases_by_address(node)


@pytest.fixture
def faulty_node() -> Iterator[Node]:
    n = Node(reconcile_interval=0.5)
    try:
        n.apply(BASE_OBJECTS.replace('ranges: ["198.18.10.10-198.18.10.19"]', 'ranges: ["198.18.10.10-198.18.10.250"]'),
                sync=False)
        n.start(env={"PLEXUS_FAULT_RATE": "0.08", "PLEXUS_FAULT_SEED": "churn"})
        yield n
    finally:
        n.close()


@pytest.mark.netns
def test_churn_1000_cycles_with_random_failures_leaves_exactly_the_live_pods_leases(faulty_node: Node) -> None:
    node = faulty_node
    pods = [f"c{i}" for i in range(12)]
    node.apply([pod_manifest(p, [{"type": "Network", "name": "net-a"}, {"type": "Network", "name": "net-b"}])
                for p in pods])
    nss = {p: node.pod_netns(p) for p in pods}
    up: dict[str, str] = {}  # pod -> container id of its live sandbox
    lock = threading.Lock()
    counts = {"add": 0, "add_failed": 0, "del_retries": 0}
    rng = random.Random(7)

    def delete(pod: str, cid: str) -> None:
        for _ in range(50):  # the runtime retries DEL until it succeeds
            status, _ = post_cni(node, "DEL", cid, nss[pod], ("my-namespace", pod))
            if status == 200:
                return
            counts["del_retries"] += 1
        raise AssertionError(f"DEL of {pod} never succeeded")

    def worker(mine: list[str], cycles: int) -> None:
        for n in range(cycles):
            pod = mine[n % len(mine)]
            with lock:
                cid = up.pop(pod, None)
            if cid:
                delete(pod, cid)
                continue
            cid = f"{pod}-{n}-{rng.random():.6f}"
            status, answer = post_cni(node, "ADD", cid, nss[pod], ("my-namespace", pod))
            counts["add"] += 1
            if status == 200:
                with lock:
                    up[pod] = cid
            else:
                counts["add_failed"] += 1
                assert answer["code"] == 999 and "injected" in answer["msg"], answer
                assert set(links_in(nss[pod])) == {"lo"}, "a failed ADD leaves nothing in the pod"
                delete(pod, cid)  # containerd DELs after a failed ADD

    threads = [threading.Thread(target=worker, args=(pods[i::2], 1000)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts["add_failed"] > 10 and counts["del_retries"] > 5, counts  # the faults really happened

    # the leases in use are exactly those of the live sandboxes, each address once
    node.sync()
    live_addresses: set[str] = set()
    for pod in up:
        for link in links_in(nss[pod]).values():
            live_addresses.update(a.split("/")[0] for a in link["addresses"] if not a.startswith("127."))
    bound = [x for x in node.leases() if x.pods]
    assert sorted(x.address for x in bound) == sorted(live_addresses)
    assert len({x.address for x in node.leases()}) == len(node.leases())
    host_veths = {n for n, link in node.host_links().items() if link["kind"] == "veth"}
    assert len(host_veths) == 2 * len(up), "no veth of a deleted pod is left on the node"
    for pod in pods:  # pods without a sandbox hold only their own Auto addresses, unused
        if pod not in up:
            assert set(links_in(nss[pod])) == {"lo"}

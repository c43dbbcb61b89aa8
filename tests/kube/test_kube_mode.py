"""Kubernetes mode against a real API server: CRD validation, a pod's whole life, and four nodes
racing for one pool."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.harness import CniResult, Node, links_in
from tests.kube.conftest import Cluster, ControllerProcess, free_ports

GROUP = "network.deckhouse.io/v1alpha1"


def objects(ns: str, ttl: str, ranges: str, cidr: str = "198.18.64.0/24", vlan: int = 700) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {"apiVersion": GROUP, "kind": "NetworkClass", "metadata": {"name": f"{ns}-class"},
         "spec": {"vlan": {"idPool": [f"{vlan}-{vlan + 9}"]}}},
        {"apiVersion": GROUP, "kind": "IPAddressPool", "metadata": {"name": "pool", "namespace": ns},
         "spec": {"leaseTTL": ttl, "pools": [{"network": cidr, "ranges": [ranges]}]}},
        {"apiVersion": GROUP, "kind": "Network", "metadata": {"name": "net", "namespace": ns},
         "spec": {"networkClass": f"{ns}-class", "vlan": {"id": vlan},
                  "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pool"}}}},
    ]


def pod(ns: str, name: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "annotations": {
                "network.deckhouse.io/networks-spec": json.dumps([{"type": "Network", "name": "net", "ifName": "net1"}])}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}


def print_requests(what: str, before: dict[str, int], after: dict[str, int], elapsed: float) -> None:
    """The API requests a call made (a figure for the notes; the metrics include nothing else of ours
    but an informer's watch that may restart meanwhile, counted as 'watch')."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    mine = {k: v for k, v in delta.items() if v > 0 and not k.startswith(("WATCH", "get /metrics"))}
    print(f"\n{what}: {sum(mine.values())} API requests in {elapsed * 1000:.0f} ms: {mine}")


def kube_node(cluster: Cluster, name: str, extra_args: tuple[str, ...] = ()) -> Node:
    node = Node(kubeconfig=cluster.kubeconfig, node_name=name, reconcile_interval=1.0, extra_args=extra_args)
    node.start()
    return node


def add_once_granted(call: Callable[[], CniResult], timeout: float = 30) -> CniResult:
    """An ADD made again while it answers 11 (try again later), as a runtime does: what a node answers until its
    informers have seen the controller's grant for the Network (its VLAN ID or VNI), which may come after the test
    applied the objects and started the node. Any other answer, a failure too, is returned at once."""
    last: list[CniResult] = []

    def answered() -> bool:
        last[:] = [call()]
        return last[0].code != 11

    wait_for(answered, timeout=timeout, step=1)
    return last[0]


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def api_requests_counted(port: int) -> dict[tuple[str, str], float]:
    """The daemon's own count of its API requests (``plexus_api_requests_total``), by (path, method)."""
    found = re.findall(r'^plexus_api_requests_total\{method="(\w+)",path="(\w+)"\} (\S+)$', metrics(port), re.M)
    return {(path, method): float(n) for method, path, n in found}


def outbox_depth(port: int) -> float:
    """The writes the node owes, as its ``plexus_outbox_depth`` gauge says."""
    (depth,) = re.findall(r"^plexus_outbox_depth (\S+)$", metrics(port), re.M)
    return float(depth)


@pytest.fixture
def nodes(cluster: Cluster, controller: ControllerProcess) -> Iterator[list[Node]]:
    """Node daemons the test makes (closed at the end), with the cluster's controller running."""
    made: list[Node] = []
    try:
        yield made
    finally:
        for n in made:
            n.close()


@pytest.mark.netns
def test_schema_refuses_bad_objects(cluster: Cluster) -> None:
    cluster.kubectl("create", "namespace", "kschema", check=False)
    bad = {
        "bad CIDR": {"kind": "IPAddressPool", "metadata": {"name": "b1", "namespace": "kschema"},
                     "spec": {"pools": [{"network": "198.18.0.0/33"}]}},
        "bad range": {"kind": "IPAddressPool", "metadata": {"name": "b2", "namespace": "kschema"},
                      "spec": {"pools": [{"network": "198.18.0.0/24", "ranges": ["198.18.0.5-nope"]}]}},
        "VLAN 5000": {"kind": "Network", "metadata": {"name": "b3", "namespace": "kschema"},
                      "spec": {"networkClass": "x", "vlan": {"id": 5000}}},
        "class VLAN 5000": {"kind": "NetworkClass", "metadata": {"name": "b4"}, "spec": {"vlan": {"idPool": ["4000-5000"]}}},
        "bad type": {"kind": "IPAddress", "metadata": {"name": "b5", "namespace": "kschema"},
                     "spec": {"networkRef": {"kind": "Network", "name": "n"}, "type": "Sometimes"}},
        "bad static ip": {"kind": "IPAddress", "metadata": {"name": "b6", "namespace": "kschema"},
                          "spec": {"networkRef": {"kind": "Network", "name": "n"}, "type": "Static",
                                   "static": {"ip": "198.18.0.300"}}},
        "bad parent NIC": {"kind": "ClusterNetwork", "metadata": {"name": "b7"},
                           "spec": {"type": "Access", "parentNodeNetworkInterfaces": {"names": ["has space"]}}},
    }
    for what, doc in bad.items():
        doc["apiVersion"] = GROUP
        res = cluster.kubectl("apply", "-f", "-", stdin=json.dumps(doc), check=False)
        assert res.returncode != 0 and "invalid" in res.stderr.lower(), (what, res.stderr)
    good = cluster.kubectl("apply", "-f", "-", stdin=json.dumps(objects("kschema", "1h", "198.18.64.10-198.18.64.20")[3]
                                                                  | {"metadata": {"name": "ok", "namespace": "kschema"}}))
    assert good.returncode == 0
    columns = cluster.kubectl("get", "ipaddress", "-A").stdout.splitlines()
    assert columns == [] or columns[0].split()[:8] == ["NAMESPACE", "NAME", "TYPE", "KIND", "NAME", "ADDRESS",
                                                      "NETWORK", "PHASE"]


@pytest.mark.netns
def test_pod_flow_through_the_api(cluster: Cluster, nodes: list[Node]) -> None:
    ns = "kflow"
    cluster.apply(objects(ns, "3s", "198.18.65.10-198.18.65.20", cidr="198.18.65.0/24", vlan=720))
    cluster.apply([pod(ns, "app", "node-a")])
    uid = cluster.get("pod", "-n", ns, "app")["metadata"]["uid"]
    node = kube_node(cluster, "node-a")
    nodes.append(node)
    netns = node.pod_netns("app")
    assert wait_for(lambda: "ready" in node.log_text(), timeout=30)
    time.sleep(1)  # let the informers' first lists settle before counting
    before = cluster.requests_served()
    add = node.cni("ADD", "c1", netns, pod=(ns, "app"), env={
        "CNI_ARGS": f"K8S_POD_NAMESPACE={ns};K8S_POD_NAME=app;K8S_POD_UID={uid}"})
    assert add.ok, (add, node.log_text()[-3000:])
    print_requests("ADD (1 network, the pod from the informer)", before, cluster.requests_served(), add.elapsed)
    address = add.json["ips"][0]["address"].split("/")[0]
    assert links_in(netns)["net1"]["addresses"] == [f"{address}/24"]

    status = json.loads(cluster.get("pod", "-n", ns, "app")["metadata"]["annotations"]["network.deckhouse.io/networks-status"])
    assert status[0]["ifName"] == "net1" and status[0]["ipAddressConfigs"][0]["address"] == address
    def written() -> list[dict[str, Any]]:  # the IPAddress and its status are made from the outbox, after ADD
        return [i for i in cluster.get("ipaddress", "-n", ns)["items"] if (i.get("status") or {}).get("conditions")]

    assert wait_for(lambda: len(written()) == 1, timeout=15), node.log_text()[-3000:]
    ip = written()[0]
    assert ip["metadata"]["ownerReferences"][0]["uid"] == uid, "owned by the pod: the GC deletes it with the pod"
    assert ip["status"]["phase"] == "Allocated" and ip["status"]["address"] == address
    assert ip["status"]["usedByPods"] == [f"{ns}/app"]
    assert {c["type"]: c["status"] for c in ip["status"]["conditions"]} == {"Allocated": "True", "Attached": "True"}
    leases = [x for x in cluster.get("ipaddresslease")["items"] if x["spec"]["ip"] == address]
    assert len(leases) == 1 and leases[0]["spec"]["holder"].endswith(ip["metadata"]["name"])
    # Events are posted in the background (best effort, off ADD's path)
    assert wait_for(lambda: any(e["reason"] == "InterfaceAttached" for e in cluster.get("events", "-n", ns)["items"]),
                    timeout=15)

    # the pod is deleted: DEL, then the cluster's GC removes its Auto IPAddress, the lease is
    # orphaned (quarantined for the pool's 3 s leaseTTL), then freed
    before = cluster.requests_served()
    dele = node.cni("DEL", "c1", netns, pod=(ns, "app"))
    assert dele.ok
    print_requests("DEL (1 network)", before, cluster.requests_served(), dele.elapsed)
    assert set(links_in(netns)) == {"lo"}
    cluster.kubectl("delete", "pod", "-n", ns, "app", "--grace-period=0", "--force")
    assert wait_for(lambda: not cluster.get("ipaddress", "-n", ns)["items"], timeout=90), "Auto IPAddress collected"

    def lease_state() -> str:
        items = [x for x in cluster.get("ipaddresslease")["items"] if x["spec"]["ip"] == address]
        if not items:
            return "gone"
        return "orphaned" if (items[0].get("status") or {}).get("orphaningTimestamp") else "bound"

    seen = wait_for(lambda: lease_state() != "bound", timeout=30)
    assert seen, node.log_text()[-4000:]
    assert wait_for(lambda: lease_state() == "gone", timeout=30), "freed after the TTL"


@pytest.mark.netns
def test_an_add_inside_the_nodes_block_waits_on_one_api_request(cluster: Cluster, nodes: list[Node]) -> None:
    """Issue 12's figure, from the daemon's own count: once the node holds a block of the pool, an ADD waits on one
    API request, the pod's status patch; the IPAddress, its status, the lease object and the Event are made in the
    background."""
    ns = "kpath"
    cluster.apply(objects(ns, "0s", "198.18.79.10-198.18.79.200", cidr="198.18.79.0/24", vlan=900))
    names = [f"p{i}" for i in range(4)]
    cluster.apply([pod(ns, n, "node-path") for n in names])
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.get("pods", "-n", ns)["items"]}
    port = int(free_ports(1)[0])  # below the ephemeral range: no outgoing connection takes it before the bind
    node = kube_node(cluster, "node-path", ("--metrics-port", str(port)))
    nodes.append(node)
    assert wait_for(lambda: "ready" in node.log_text(), timeout=30)
    netns = {n: node.pod_netns(n) for n in names}

    def add(name: str) -> dict[tuple[str, str], float]:
        before = api_requests_counted(port)
        result = node.cni("ADD", f"c-{name}", netns[name], pod=(ns, name), env={
            "CNI_ARGS": f"K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID={uids[name]}"})
        assert result.ok, (result, node.log_text()[-3000:])
        after = api_requests_counted(port)
        return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}

    def background_posts() -> float:
        return api_requests_counted(port).get(("background", "POST"), 0)

    # what the ADDs did not wait on is told by the daemon's own count, path="call" (a request made while a call was
    # served) or "background", not by the outbox's depth read just after an ADD: its writes settle for 0.5 s and a
    # stalled test process reads the gauge after they are made
    posted_before = background_posts()
    first = add(names[0])
    assert first.get(("call", "POST"), 0) >= 1, f"the first ADD claims the node's block: {first}"
    for name in names[1:]:
        delta = add(name)
        assert {k: v for k, v in delta.items() if k[0] == "call"} == {("call", "PATCH"): 1}, delta  # no POST
    assert wait_for(lambda: background_posts() - posted_before >= 3 * len(names), timeout=15), \
        "the IPAddress, lease object and Event of every ADD made in the background"
    assert wait_for(lambda: outbox_depth(port) == 0, timeout=15), "and then none is"
    for name in names:
        assert node.cni("DEL", f"c-{name}", netns[name], pod=(ns, name)).ok


@pytest.mark.netns
def test_four_nodes_race_for_one_pool_of_64(cluster: Cluster, nodes: list[Node]) -> None:
    ns = "krace"
    cluster.apply(objects(ns, "2s", "198.18.66.10-198.18.66.73", cidr="198.18.66.0/24", vlan=740))
    names = [f"p{i:03d}" for i in range(100)]
    cluster.apply([pod(ns, n, f"node-{i % 4}") for i, n in enumerate(names)])
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.get("pods", "-n", ns)["items"]}
    for i in range(4):
        nodes.append(kube_node(cluster, f"node-{i}"))
    netns = {n: nodes[i % 4].pod_netns(n) for i, n in enumerate(names)}
    results: dict[str, Any] = {}

    def add(i: int, n: str) -> Any:
        return nodes[i % 4].cni("ADD", f"c-{n}", netns[n], pod=(ns, n), env={
            "CNI_ARGS": f"K8S_POD_NAMESPACE={ns};K8S_POD_NAME={n};K8S_POD_UID={uids[n]}"})

    def run(node_index: int) -> None:
        for i, n in enumerate(names):
            if i % 4 == node_index:
                results[n] = add(i, n)

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    raced = sum(r.ok for r in results.values())
    # the refused ADDs again, as a runtime retries them: a refusal can come while free addresses are still in another
    # node's block (its owner busy past RETURN_WAIT_S, the 100 of "asked back, not returned yet"), or before a node
    # has seen the Network's VLAN grant (11). Passes until one changes nothing: no ADD more succeeds, none is 11
    passes = 0
    while passes < 5:
        passes, retried = passes + 1, 0
        for i, n in enumerate(names):
            if not results[n].ok:
                results[n] = add(i, n)
                retried += results[n].ok
        if not retried and all(r.ok or r.code == 100 for r in results.values()):
            break
    ok = {n: r for n, r in results.items() if r.ok}
    failed = {n: r for n, r in results.items() if not r.ok}
    addresses = [r.json["ips"][0]["address"] for r in ok.values()]
    print(f"race: {raced} ADDs succeeded, {len(results) - raced} refused in {elapsed:.1f}s "
          f"({len(results) / elapsed:.1f} ADD/s over 4 daemons); {len(ok) - raced} more on {passes} retry pass(es)")
    assert len(ok) == 64, ({n: r.stdout for n, r in list(failed.items())[:3]}, _block_lines(nodes))
    assert len(set(addresses)) == 64
    assert all(r.code == 100 and "krace/pool" in r.json["msg"] for r in failed.values()), list(failed.values())[:2]
    def pool_leases() -> int:
        return len([x for x in cluster.get("ipaddresslease")["items"] if x["spec"]["pool"].endswith("krace/pool")])

    # an address of a node's block has its lease object made from the node's outbox, after ADD
    assert wait_for(lambda: pool_leases() == 64, timeout=30), pool_leases()
    blocks = [b for b in cluster.get("ipaddressblock")["items"] if b["spec"]["pool"].endswith("krace/pool")]
    print(f"race: {len(blocks)} address blocks claimed: {sorted(b['spec']['cidr'] for b in blocks)}")

    for i, n in enumerate(names):
        assert nodes[i % 4].cni("DEL", f"c-{n}", netns[n], pod=(ns, n)).ok
    cluster.kubectl("delete", "pods", "-n", ns, "--all", "--grace-period=0", "--force")
    assert wait_for(lambda: pool_leases() == 0, timeout=90), f"{pool_leases()} leases left"


def _block_lines(nodes: list[Node]) -> str:
    """What each daemon logged about blocks (claimed, asked back, returned) and exhausted pools: kept in a failed
    race's message, since a CI run keeps nothing else of the daemons."""
    words = ("block", "exhausted", "return")
    return "\n".join(f"--- {node.node_name}:\n" + "\n".join(
        line for line in node.log_text().splitlines() if any(w in line for w in words))[-6000:] for node in nodes)


@pytest.mark.netns
def test_two_nodes_on_one_vxlan_network_through_the_api(cluster: Cluster, nodes: list[Node]) -> None:
    """One NetworkClass for the cluster (VXLAN, both nodes as remotes), one Network, a pod on each node:
    they ping each other across the two node namespaces. Its objects are deleted at the end: the class names an
    underlay interface (plxul0) only these two nodes have, and every node of a later test would fail to build it."""
    import subprocess

    ns = "kvx"
    try:
        cluster.kubectl("create", "namespace", "plexus-system", check=False)
        a = Node(kubeconfig=cluster.kubeconfig, node_name="vx-a")
        nodes.append(a)
        a.start()
        b = kube_node(cluster, "vx-b")
        nodes.append(b)
        subprocess.run(["ip", "link", "add", "plxul0", "netns", a.name, "type", "veth", "peer", "name", "plxul0",
                        "netns", b.name], check=True)
        for node, ip in ((a, "198.18.1.1/24"), (b, "198.18.1.2/24")):
            subprocess.run(["ip", "-n", node.name, "addr", "add", ip, "dev", "plxul0"], check=True)
            subprocess.run(["ip", "-n", node.name, "link", "set", "plxul0", "up"], check=True)
        cluster.apply([
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
            {"apiVersion": GROUP, "kind": "NetworkClass", "metadata": {"name": "kvx-class"},
             "spec": {"vxlan": {"vniPool": ["7000-7009"], "underlayInterface": "plxul0",
                                "remotes": ["198.18.1.1", "198.18.1.2"]}}},
            {"apiVersion": GROUP, "kind": "IPAddressPool", "metadata": {"name": "pool", "namespace": ns},
             "spec": {"leaseTTL": "1s", "pools": [{"network": "198.18.67.0/24"}]}},
            {"apiVersion": GROUP, "kind": "Network", "metadata": {"name": "net", "namespace": ns},
             "spec": {"networkClass": "kvx-class",
                      "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pool"}}}},
            pod(ns, "pa", "vx-a"), pod(ns, "pb", "vx-b"),
        ])
        # the controller gives the Network its VNI once for the cluster; both nodes take it from the status (an ADD
        # before a node's informer has it answers 11)
        assert wait_for(lambda: (cluster.get("network", "-n", ns, "net").get("status") or {}).get("vni"), timeout=30)
        vni = cluster.get("network", "-n", ns, "net")["status"]["vni"]
        assert vni == 7000
        ips = {}
        for node, name in ((a, "pa"), (b, "pb")):
            uid = cluster.get("pod", "-n", ns, name)["metadata"]["uid"]
            env = {"CNI_ARGS": f"K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID={uid}"}
            res = add_once_granted(partial(node.cni, "ADD", f"c-{name}", node.pod_netns(name), pod=(ns, name), env=env))
            assert res.ok, (res, node.log_text()[-2000:])
            ips[name] = res.json["ips"][0]["address"].split("/")[0]
        assert ips["pa"] != ips["pb"], "one pool for the cluster: distinct addresses on the two nodes"
        for node in (a, b):
            assert node.host_links()[f"plx-vx-{vni}"]["master"] == f"plx-vb-{vni}"
        ping = subprocess.run(["ip", "netns", "exec", a.pods[0].rsplit("/", 1)[-1], "ping", "-c", "2", "-W", "2",
                               ips["pb"]], capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        cluster.kubectl("delete", "network", "-n", ns, "net", "--ignore-not-found", "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        cluster.kubectl("delete", "networkclass", f"{ns}-class", "--ignore-not-found", check=False)


@pytest.mark.netns
def test_churn_survives_daemon_and_api_server_restarts(cluster: Cluster, nodes: list[Node]) -> None:
    """Two nodes create and delete pods while one daemon is killed and restarted and then the API
    server itself is restarted: the watches resume, and at the end every live pod's address has exactly
    one lease, no address is used twice, and no lease is left for a pod that is gone."""
    import os
    import subprocess

    from tests.conftest import REPO

    ns = "kchurn"
    cluster.apply(objects(ns, "1s", "198.18.68.10-198.18.68.60", cidr="198.18.68.0/24", vlan=780))
    names = [f"c{i:02d}" for i in range(12)]
    cluster.apply([pod(ns, n, f"churn-{i % 2}") for i, n in enumerate(names)])
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.get("pods", "-n", ns)["items"]}
    for i in range(2):
        nodes.append(kube_node(cluster, f"churn-{i}"))
    netns = {n: nodes[i % 2].pod_netns(n) for i, n in enumerate(names)}
    up: dict[str, str] = {}
    stop = threading.Event()
    errors: list[str] = []

    def call(node: Node, verb: str, name: str, cid: str) -> bool:
        res = node.cni(verb, cid, netns[name], pod=(ns, name), timeout=90,
                       env={"CNI_ARGS": f"K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID={uids[name]}"})
        if not res.ok and res.code not in (11, 999, 101, 105):
            errors.append(res.stdout)
        return res.ok

    def worker(index: int) -> None:
        n = 0
        while not stop.is_set():
            node = nodes[index]
            for name in names[index::2]:
                if stop.is_set():
                    break
                n += 1
                if name in up:
                    if call(node, "DEL", name, up[name]):
                        del up[name]
                else:
                    cid = f"{name}-{n}"
                    if call(node, "ADD", name, cid):
                        up[name] = cid
                    else:
                        while not call(node, "DEL", name, cid) and not stop.is_set():  # the runtime cleans up
                            time.sleep(0.5)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(8)
        nodes[0].kill()  # a daemon dies mid-churn and comes back
        time.sleep(1)
        nodes[0].start()
        time.sleep(6)
        env = dict(os.environ, **{k: v for k, v in cluster.ports.items()})
        subprocess.run(["bash", str(REPO / "scripts/k8s/down-apiserver.sh"), str(cluster.data)], env=env,
                       capture_output=True, check=True)  # the API server restarts (its data kept)
        time.sleep(2)
        for _attempt in range(3):  # the restart itself is infrastructure: retried like the first start
            again = subprocess.run(["bash", str(REPO / "scripts/k8s/up-apiserver.sh"), str(cluster.data)], env=env,
                                   capture_output=True, text=True)
            if again.returncode == 0:
                break
            time.sleep(2)
        assert again.returncode == 0, again.stderr[-2000:]
        time.sleep(10)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    live_addresses = {}
    for name in names:
        if name in up:
            links = links_in(netns[name])
            live_addresses[name] = links["net1"]["addresses"][0].split("/")[0]
    assert len(set(live_addresses.values())) == len(live_addresses), "no address used twice"

    def leases() -> dict[str, str]:
        return {x["spec"]["ip"]: x["spec"].get("holder", "") for x in cluster.get("ipaddresslease")["items"]
                if x["spec"]["pool"].endswith(f"{ns}/pool")}

    def converged() -> bool:  # the lease objects are owed by the outbox, which may be backing off after the restart
        held = leases()
        return all(held.get(address, "").startswith(f"IPAddress/{ns}/{name}-")
                   for name, address in live_addresses.items())

    wait_for(converged, timeout=45)
    held = leases()
    for name, address in live_addresses.items():
        assert held.get(address, "").startswith(f"IPAddress/{ns}/{name}-"), (name, address, held.get(address))
    holders = [h for h in held.values() if h]
    assert len(holders) == len(set(holders)) and len(holders) <= len(names), "one Auto address per pod, at most"

    # every pod goes: every address comes back (orphaned, then freed after the 1 s quarantine)
    for i, name in enumerate(names):
        if name in up:
            assert nodes[i % 2].cni("DEL", up[name], netns[name], pod=(ns, name)).ok
    cluster.kubectl("delete", "pods", "-n", ns, "--all", "--grace-period=0", "--force")
    assert wait_for(lambda: not leases(), timeout=90, step=2), leases()


@pytest.mark.netns
def test_a_user_ipaddress_named_by_pods_on_two_nodes_goes_to_one_at_a_time(cluster: Cluster, nodes: list[Node]) -> None:
    """A Static IPAddress named by a pod on each of two nodes: the first pod's node writes its pod on the IPAddress
    before the address is used, the second node is refused (code 104, naming the pod and its node) and leaves nothing
    behind, and gets it once the first pod's sandbox is gone; the first pod is then refused in turn."""
    ns = "kusers"
    try:
        cluster.apply(objects(ns, "1s", "198.18.121.2-198.18.121.14", cidr="198.18.121.0/28", vlan=930) + [
            {"apiVersion": GROUP, "kind": "IPAddress", "metadata": {"name": "fixed", "namespace": ns},
             "spec": {"networkRef": {"kind": "Network", "name": "net"}, "type": "Static", "static": {"ip": "198.18.121.9"}}},
        ])
        named = [{"type": "Network", "name": "net", "ifName": "net1", "ipAddressNames": ["fixed"]}]
        pods = [pod(ns, "pa", "users-a"), pod(ns, "pb", "users-b")]
        for p in pods:
            p["metadata"]["annotations"]["network.deckhouse.io/networks-spec"] = json.dumps(named)
        cluster.apply(pods)
        a, b = kube_node(cluster, "users-a"), kube_node(cluster, "users-b")
        nodes.extend((a, b))
        uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.get("pods", "-n", ns)["items"]}
        netns = {"pa": a.pod_netns("pa"), "pb": b.pod_netns("pb")}

        def add(node: Node, name: str) -> Any:
            return node.cni("ADD", f"c-{name}", netns[name], pod=(ns, name), ifname="eth0",
                            env={"CNI_ARGS": f"K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID={uids[name]}"})

        first = wait_for(lambda: (r := add(a, "pa")).ok and r, timeout=30, step=1)
        assert first, a.log_text()[-3000:]
        assert first.json["ips"][0]["address"] == "198.18.121.9/28"
        used_by = json.loads(cluster.get("ipaddress", "-n", ns, "fixed")["metadata"]["annotations"]
                             ["network.deckhouse.io/used-by"])
        assert used_by == {"node": "users-a", "pod": f"{ns}/pa", "uid": uids["pa"]}, "written before the ADD answered"

        refused = add(b, "pb")
        assert refused.code == 104, refused
        assert f"in use by pod {ns}/pa on node users-a" in refused.json["msg"], refused.json
        assert "net1" not in links_in(netns["pb"]), "nothing left in the refused pod"

        # pa's sandbox gone (the pod itself still exists): its node takes it off the IPAddress, and pb gets it
        assert a.cni("DEL", "c-pa", netns["pa"], pod=(ns, "pa")).ok
        second = wait_for(lambda: (r := add(b, "pb")).ok and r, timeout=30, step=1)
        assert second and second.json["ips"][0]["address"] == "198.18.121.9/28", b.log_text()[-3000:]
        assert links_in(netns["pb"])["net1"]["addresses"] == ["198.18.121.9/28"]
        assert json.loads(cluster.get("ipaddress", "-n", ns, "fixed")["metadata"]["annotations"]
                          ["network.deckhouse.io/used-by"])["pod"] == f"{ns}/pb"
        again = add(a, "pa")
        assert again.code == 104 and f"in use by pod {ns}/pb on node users-b" in again.json["msg"], again

        # replaced whole (kubectl replace drops the annotations it does not name): pb is written on the address's
        # lease object too, so pa is still refused, even with users-b's daemon away and not writing pb back
        def lease_names_pb() -> bool:
            items = cluster.get("ipaddressleases")["items"]
            return any(i["spec"]["ip"] == "198.18.121.9" and i["metadata"]["labels"].get(
                "network.deckhouse.io/node") == "users-b" and f'"{ns}/pb"' in (
                i["metadata"].get("annotations") or {}).get("network.deckhouse.io/used-by", "") for i in items)
        assert wait_for(lease_names_pb, timeout=15, step=0.5), cluster.get("ipaddressleases")["items"]
        b.stop()
        fixed = cluster.get("ipaddress", "-n", ns, "fixed")
        bare = {"apiVersion": fixed["apiVersion"], "kind": "IPAddress",
                "metadata": {"name": "fixed", "namespace": ns,
                             "resourceVersion": fixed["metadata"]["resourceVersion"]}, "spec": fixed["spec"]}
        cluster.kubectl("replace", "-f", "-", stdin=json.dumps(bare))
        assert "network.deckhouse.io/used-by" not in (cluster.get("ipaddress", "-n", ns, "fixed")["metadata"]
                                                      .get("annotations") or {})
        replaced = add(a, "pa")
        assert replaced.code == 104 and f"in use by pod {ns}/pb on node users-b (written on its address's lease " \
            "object" in replaced.json["msg"], replaced
        for node in (a, b):
            assert "Traceback" not in node.log_text()
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        cluster.kubectl("delete", "networkclass", f"{ns}-class", "--ignore-not-found", check=False)


def status_sequence(cluster: Cluster, ns: str, name: str, stop: threading.Event) -> tuple[list[str | None],
                                                                                      threading.Thread]:
    """Every value the pod's ``networks-status`` takes, in order, as a watch of it sees them (None: not there).
    Returns once the watch is on: its first event (the pod as it is, ADDED) has come, so no change made after the
    return can be missed."""
    from kubernetes import client, watch

    from ipamd.kube.client import kube_api

    core = client.CoreV1Api(kube_api(str(cluster.kubeconfig)))
    seen: list[str | None] = []
    watching = threading.Event()

    def run() -> None:
        w = watch.Watch()  # type: ignore[no-untyped-call]
        for event in w.stream(  # type: ignore[no-untyped-call]
                core.list_namespaced_pod, ns, field_selector=f"metadata.name={name}", timeout_seconds=120,
                _request_timeout=130):
            annotations = event["object"].metadata.annotations or {}
            value = annotations.get("network.deckhouse.io/networks-status")
            if not seen or seen[-1] != value:
                seen.append(value)
            watching.set()
            if stop.is_set():
                w.stop()  # type: ignore[no-untyped-call]

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert watching.wait(30), "the watch of the pod did not start"
    return seen, t


@pytest.mark.netns
def test_statuses_written_while_the_interfaces_are_built_are_put_back_when_the_add_does_not_finish(
        cluster: Cluster, nodes: list[Node]) -> None:
    """The pod's statuses go to the API server while its interfaces are built. An ADD whose build then fails puts them
    back as they were (none, here) before it answers; a daemon killed while building puts them back when it
    recovers the attachment; a pod's whole ADD leaves them written once, as built."""
    ns = "kahead"
    try:
        cluster.apply(objects(ns, "1s", "198.18.123.10-198.18.123.20", cidr="198.18.123.0/24", vlan=950))
        cluster.apply([pod(ns, "app", "ahead-a")])
        uid = cluster.get("pod", "-n", ns, "app")["metadata"]["uid"]
        node = kube_node(cluster, "ahead-a")
        nodes.append(node)
        netns = node.pod_netns("app")
        env = {"CNI_ARGS": f"K8S_POD_NAMESPACE={ns};K8S_POD_NAME=app;K8S_POD_UID={uid}"}
        assert wait_for(lambda: "ready" in node.log_text(), timeout=30)

        def annotation() -> str | None:
            return (cluster.get("pod", "-n", ns, "app")["metadata"].get("annotations") or {}).get(
                "network.deckhouse.io/networks-status")

        # the build fails: net1 is in the pod already
        subprocess.run(["ip", "-n", os.path.basename(netns), "link", "add", "net1", "type", "veth", "peer", "name",
                        "net1p"], check=True)
        stop = threading.Event()
        seen, watcher = status_sequence(cluster, ns, "app", stop)
        failed = node.cni("ADD", "c1", netns, pod=(ns, "app"), env=env)
        assert not failed.ok and "net1" in failed.json["msg"], failed
        assert annotation() is None, "put back before the ADD answered"
        assert wait_for(lambda: len(seen) >= 3, timeout=10), seen
        stop.set()
        cluster.kubectl("annotate", "pod", "-n", ns, "app", "plexus-test/poke=1")  # the watch sees the stop
        watcher.join(10)
        assert seen[0] is None and json.loads(seen[1] or "[]")[0]["ifName"] == "net1" and seen[2] is None, seen
        subprocess.run(["ip", "-n", os.path.basename(netns), "link", "del", "net1"], check=True)

        # killed once built, before the ADD's commit (after the status written meanwhile has landed: 5 s for that
        # patch, which a loaded API server may take seconds to answer): the statuses foreseen stay on the pod until
        # the daemon is back
        node.stop()
        node.start(env={"PLEXUS_FAULT": "add:built", "PLEXUS_FAULT_DELAY": "5"})
        died = node.cni("ADD", "c2", netns, pod=(ns, "app"), env=env)
        assert not died.ok and node.wait_exit(15) is not None, "the daemon died at add:built"
        assert json.loads(annotation() or "[]")[0]["ifName"] == "net1", "written while the interface was built"
        node.start()
        assert wait_for(lambda: annotation() is None, timeout=30), (annotation(), node.log_text()[-3000:])
        assert "net1" not in links_in(netns)

        # a whole ADD: written as built (its MAC), once; DEL removes it
        stop = threading.Event()
        seen, watcher = status_sequence(cluster, ns, "app", stop)
        done = node.cni("ADD", "c3", netns, pod=(ns, "app"), env=env)
        assert done.ok, (done, node.log_text()[-3000:])
        (entry,) = json.loads(annotation() or "[]")
        assert entry["mac"] == links_in(netns)["net1"]["mac"] and entry["ipAddressConfigs"][0]["address"] == \
            done.json["ips"][0]["address"].split("/")[0]
        assert node.cni("DEL", "c3", netns, pod=(ns, "app")).ok
        assert annotation() is None
        assert wait_for(lambda: len(seen) >= 3, timeout=10), seen
        stop.set()
        cluster.kubectl("annotate", "pod", "-n", ns, "app", "plexus-test/poke=2", "--overwrite")
        watcher.join(10)
        assert [s is not None for s in seen] == [False, True, False], seen
        assert "Traceback" not in node.log_text()
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        cluster.kubectl("delete", "networkclass", f"{ns}-class", "--ignore-not-found", check=False)

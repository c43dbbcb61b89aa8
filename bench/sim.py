"""The scale simulation of cluster IPAM: many simulated nodes against the real test API server, one pool, pods created
and deleted at a steady rate, the per-address scheme and node blocks side by side in the same run.

A simulated node is the node daemon's IPAM and API side, without its kernel side: its own store (SQLite), ``Ipam``,
lease registry (``KubeLeaseRegistry``: one IPAddressLease create per address; or ``BlockRegistry``: node blocks) and
outbox, as ``plexus-ipamd`` wires them. The nodes share one set of informers (one process; a real node has its own,
as far behind the API server as these). Pods start on random nodes, a few alive per node at most: a node full deletes
its oldest pod first. An ADD is ``resolve`` + ``claim`` of one interface, a DEL the pod's release. At a steady rate
(``--rates``: pods started per second over all nodes, open loop: a pod's ADD is timed from when it was due, so a
plane that falls behind shows in the latency) the same load is put on 10 and on 50 nodes, which is what measures the
cost of growth; rate 0 churns as fast as the workers go (the capacity). A checker reads every node's store from
outside, every half second and at the end (all stores held still while they are read), and fails the run if an
address is ever held by two pods.

Usage: ``python -m bench.sim`` (``make bench-sim``), after the control plane is built (``make bench-kube`` builds it
too, cached in /var/cache/plexus-test). It prints, per scheme and node count: pods per second, API requests per pod
(the API server's own count, the background writes included), ADD p50/p99.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from bench.kube import REPO, ControlPlane, ours, write_results
from bench.node import BenchError

API = "network.deckhouse.io/v1alpha1"
NS = "ksim"


def log(msg: str) -> None:
    print(f"[bench.sim] {msg}", file=sys.stderr, flush=True)


class SimNode:
    """One node's IPAM and API side: store, Ipam, lease registry and outbox, as the daemon wires them."""

    def __init__(self, api: Any, source: Any, name: str, scheme: str, work: Path) -> None:
        from ipamd.ipam.addresses import Ipam
        from ipamd.kube.blocks import BlockRegistry
        from ipamd.kube.leases import KubeLeaseRegistry
        from ipamd.kube.outbox import Outbox
        from ipamd.kube.publisher import api_senders
        from ipamd.store.sqlite import Store

        self.name = name
        self.store = Store(str(work / f"{name}.db"))
        self.outbox = Outbox(self.store, api_senders(api), workers=1)
        registry = (BlockRegistry(source, name, self.outbox, leases=self.store) if scheme == "blocks"
                    else KubeLeaseRegistry(source, name, self.outbox))
        self.ipam = Ipam(self.store, source, registry=registry)
        self.live: list[tuple[str, list[str]]] = []  # (pod UID, its IPAddress keys)
        self.lock = threading.Lock()
        self.outbox.start()

    def held(self) -> dict[str, str]:
        return {lease.address: lease.holder for lease in self.store.all_leases() if lease.holder}

    def close(self) -> None:
        self.outbox.stop()


class Plane(Protocol):
    """What a scenario asks of the control plane (``bench.kube.ControlPlane``, or a test's cluster)."""

    def apply(self, docs: list[dict[str, Any]]) -> None: ...

    def requests(self) -> Counter[str]: ...  # the API server's own count, by "resource verb"


class Scenario:
    def __init__(self, api: Any, cp: Plane, scheme: str, nodes: int, pods: int, per_node: int, workers: int,
                 work: Path, prefix: int, rate: float = 0.0) -> None:
        self.api, self.cp, self.scheme, self.n, self.pods = api, cp, scheme, nodes, pods
        self.per_node, self.workers, self.work, self.prefix = per_node, workers, work, prefix
        self.rate = rate  # pods started per second over all nodes (0: as fast as the workers go)
        self.tag = f"{scheme}-{nodes}" + (f"-r{rate:g}" if rate else "")
        self.add_s: list[float] = []
        self.errors: list[str] = []
        self.duplicates: list[str] = []
        self._done = threading.Event()

    def objects(self) -> list[dict[str, Any]]:
        return [
            {"apiVersion": API, "kind": "IPAddressPool", "metadata": {"name": f"pool-{self.tag}", "namespace": NS},
             "spec": {"leaseTTL": "0s", "pools": [{"network": f"198.18.{self.prefix}.0/20"}]}},
            {"apiVersion": API, "kind": "Network", "metadata": {"name": f"net-{self.tag}", "namespace": NS},
             "spec": {"networkClass": "ksim-class",
                      "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": f"pool-{self.tag}"}}}},
        ]

    def check(self, nodes: list[SimNode]) -> None:
        """From outside the nodes: no address held by two pods (two holders) at one moment. Every node's store is held
        still (its transaction) until all are read: read one after the other while they move, an address let go on
        one node after its read and leased on another before its read would show as held twice when it never was."""
        with contextlib.ExitStack() as still:
            for node in nodes:  # always in the same order, and a node never waits on another's store: no deadlock
                still.enter_context(node.store.transaction())
            held = [node.held() for node in nodes]
        seen: dict[str, str] = {}
        for node_held in held:
            for address, holder in node_held.items():
                if seen.setdefault(address, holder) != holder:
                    self.duplicates.append(f"{address}: {seen[address]} and {holder}")

    def _checker(self, nodes: list[SimNode]) -> None:
        while not self._done.wait(0.5):
            self.check(nodes)

    def run(self, informers: Informers) -> dict[str, Any]:
        from ipamd.model.annotations import NetworkSelection
        from ipamd.model.objects import Meta, Pod

        self.cp.apply(self.objects())
        deadline = time.monotonic() + 30
        source = informers.source
        while informers.get_pool_for(self.tag) is None:
            if time.monotonic() > deadline:
                raise BenchError(f"the informers never showed pool-{self.tag}")
            time.sleep(0.2)
        nodes = [SimNode(self.api, source, f"sim-{self.tag}-{i}", self.scheme, self.work) for i in range(self.n)]
        self.nodes = nodes  # what a test reads after the run (their stores stay open)
        sel = NetworkSelection(type="Network", name=f"net-{self.tag}", if_name="net1")
        rng = random.Random(self.tag)
        counter = iter(range(10**9))
        made = threading.Semaphore(self.pods)

        def one(due: float | None = None) -> None:
            late = 0.0 if due is None else max(0.0, time.perf_counter() - due)  # waited for a worker
            node = nodes[rng.randrange(self.n)]
            with node.lock:
                full = len(node.live) >= self.per_node
                gone = node.live.pop(0) if full else None
            if gone is not None:  # DEL: the pod is gone
                node.ipam.release_pod(gone[1], gone[0])
                node.ipam.forget_pod(gone[0])
                if due is None:
                    return  # as fast as it goes: a DEL is one step; at a rate, the pod due starts right after
            if due is None and not made.acquire(blocking=False):
                return
            k = next(counter)
            pod = Pod(Meta("Pod", f"p{k}", NS, str(uuid.uuid4())))
            started = time.perf_counter() - late  # the ADD's time and its wait for a worker (not the DEL before it)
            try:
                net = node.ipam.resolve(sel, NS, "networks-spec[0]")
                claims = node.ipam.claim(pod, sel, net, [])
            except Exception as exc:  # counted: the run reports them
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                return
            self.add_s.append(time.perf_counter() - started)
            with node.lock:
                node.live.append((pod.meta.uid, [c.ip_key for c in claims]))

        checker = threading.Thread(target=self._checker, args=(nodes,), daemon=True)
        checker.start()
        before = self.cp.requests()
        started = time.perf_counter()
        with ThreadPoolExecutor(self.workers) as pool:
            if self.rate:  # open loop: pod i is due at i / rate, whether the ones before it are done or not
                for i in range(self.pods):
                    due = started + i / self.rate
                    time.sleep(max(0.0, due - time.perf_counter()))
                    pool.submit(one, due)
            else:
                while len(self.add_s) + len(self.errors) < self.pods:
                    list(pool.map(lambda _: one(), range(self.workers * 4)))
        elapsed = time.perf_counter() - started
        for node in nodes:  # the rest of the pods go
            for uid, keys in node.live:
                node.ipam.release_pod(keys, uid)
                node.ipam.forget_pod(uid)
            node.live.clear()
        drain_deadline = time.monotonic() + 120
        while any(n.outbox.depth() for n in nodes) and time.monotonic() < drain_deadline:
            time.sleep(0.2)
        after = self.cp.requests()
        self._done.set()
        checker.join()
        self.check(nodes)
        for node in nodes:
            node.close()
        requests = ours(after - before)
        ms = sorted(s * 1000 for s in self.add_s)
        return {"scheme": self.scheme, "nodes": self.n, "rate": self.rate, "pods": len(ms), "errors": len(self.errors),
                "error_sample": self.errors[:3], "duplicates": self.duplicates[:5],
                "pods_per_s": round(len(ms) / elapsed, 1),
                "requests_per_pod": round(sum(requests.values()) / max(1, len(ms)), 2),
                "requests": requests,
                "add_ms": {"p50": round(statistics.median(ms), 2), "p99": round(ms[int(0.99 * (len(ms) - 1))], 2)}}


class Informers:
    """One set of informers for all simulated nodes (``KubernetesSource`` without a pod informer)."""

    def __init__(self, api: Any) -> None:
        from ipamd.kube.resources import DECKHOUSE_KINDS
        from ipamd.kube.source import KubernetesSource

        self.source = KubernetesSource(api, "", kinds=DECKHOUSE_KINDS)

    def get_pool_for(self, tag: str) -> Any:
        from ipamd.model.objects import IP_ADDRESS_POOL, NETWORK

        if self.source.get(NETWORK, NS, f"net-{tag}") is None:
            return None
        return self.source.get(IP_ADDRESS_POOL, NS, f"pool-{tag}")


def connect(apply: Any, kubeconfig: str) -> tuple[Any, Informers]:
    """The simulation's namespace and NetworkClass (the CRDs applied already), its one API client and its informers,
    started and listed."""
    apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
           {"apiVersion": API, "kind": "NetworkClass", "metadata": {"name": "ksim-class"},
            "spec": {"vlan": {"idPool": ["3200-3299"]}}}])
    from ipamd.kube.client import kube_api

    api = kube_api(kubeconfig)
    api.configuration.connection_pool_maxsize = 128  # every simulated node's outbox shares this client
    api.rest_client.pool_manager.connection_pool_kw["maxsize"] = 128
    informers = Informers(api)
    informers.source.start()
    deadline = time.monotonic() + 60
    while not informers.source.ready():
        if time.monotonic() > deadline:
            informers.source.stop()
            raise BenchError("the informers never listed every kind")
        time.sleep(0.2)
    return api, informers


def report(results: list[dict[str, Any]]) -> str:
    lines = ["| pods started per s | scheme | nodes | pods | pods/s | API requests per pod | ADD p50 / p99 | errors "
             "| duplicates |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rate = f"{r['rate']:g}" if r.get("rate") else "as fast as it goes"
        lines.append(f"| {rate} | {r['scheme']} | {r['nodes']} | {r['pods']} | {r['pods_per_s']} | "
                     f"{r['requests_per_pod']} | {r['add_ms']['p50']} / {r['add_ms']['p99']} ms | {r['errors']} | "
                     f"{len(r['duplicates'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", default=os.environ.get("PLEXUS_K8S_CACHE", "/var/cache/plexus-test/k8s-apiserver"))
    p.add_argument("--nodes", default="10,50", help="node counts to run, comma-separated")
    p.add_argument("--schemes", default="per-address,blocks")
    p.add_argument("--pods", type=int, default=1000, help="pods created (and deleted) per scenario")
    p.add_argument("--per-node", type=int, default=4, help="pods alive per node at most")
    p.add_argument("--workers", type=int, default=8, help="ADDs and DELs at a time, over all nodes")
    p.add_argument("--rates", default="100,0", help="pods started per second over all nodes, comma-separated; "
                   "0: as fast as the workers go")
    p.add_argument("--json", default="bench-results/sim.json")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results: list[dict[str, Any]] = []
    try:
        with contextlib.ExitStack() as stack:
            work = Path(tempfile.mkdtemp(prefix="plexus-bench-sim-"))
            stack.callback(subprocess.run, ["rm", "-rf", str(work)], check=False)
            cp = ControlPlane(Path(a.cache), work)
            stack.callback(cp.down)
            cp.up()
            cp.kubectl("apply", "-f", str(REPO / "packaging/k8s/crds.yaml"))
            cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
            api, informers = connect(cp.apply, cp.kubeconfig)
            stack.callback(informers.source.stop)
            prefix = 0
            for rate in (float(x) for x in a.rates.split(",")):
                for n in (int(x) for x in a.nodes.split(",")):
                    for scheme in a.schemes.split(","):
                        pace = f"{rate:g} pods/s" if rate else "as fast as it goes"
                        log(f"{scheme}: {n} nodes, {a.pods} pods at {pace}, at most {a.per_node} alive per node")
                        prefix += 16
                        result = Scenario(api, cp, scheme, n, a.pods, a.per_node, a.workers, work, prefix,
                                          rate).run(informers)
                        log(f"  {result['pods_per_s']} pods/s, {result['requests_per_pod']} API requests per pod, "
                            f"ADD p50 {result['add_ms']['p50']} ms p99 {result['add_ms']['p99']} ms, "
                            f"{result['errors']} errors, {len(result['duplicates'])} duplicates")
                        results.append(result)
    except BenchError as exc:
        print(f"bench.sim: {exc}", file=sys.stderr)
        return 1
    write_results(a.json, {"results": results})
    print(report(results))
    print(f"(written to {a.json})")
    bad = [r for r in results if r["duplicates"]]
    if bad:
        print(f"bench.sim: addresses held twice: {bad[0]['duplicates']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

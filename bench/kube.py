"""Kubernetes-mode figures: ADD and DEL with the API in the loop next to the local mode (the two taking turns),
API requests per ADD and per DEL (in all from the API server's own metrics; on the call's path from the daemon's own
count), allocations per second with racing daemons, and what the pods webhook adds to every pod creation in the
cluster.

Usage: ``python -m bench.kube`` (``make bench-kube``), as root, after ``make build``. It starts the
project's test control plane (scripts/k8s: kube-apiserver, kube-controller-manager and etcd v1.20.2 on
127.0.0.1, built once and cached in /var/cache/plexus-test), the controller (``--mode controller``) and
node daemons whose bridges and veths live in network namespaces of their own, execs the frozen
``plexus`` as containerd would (the pod's annotations in ``runtimeConfig``), and removes everything it
made, also on failure or Ctrl-C.

``--allocation-only [--rounds N] [--baseline REF]``: the allocation race alone, per scheme N times taking turns;
with ``--baseline``, also the daemons of another commit (a git worktree of this repository, e.g. the per-address
code before node blocks), so that "allocations per second against before" is measured on one machine in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from bench.node import BenchError, run

REPO = Path(__file__).resolve().parent.parent
GROUP = "network.deckhouse.io"
API = f"{GROUP}/v1alpha1"
NS = "kbench"
POD_ANNOTATIONS = "io.kubernetes.cri.pod-annotations"
SPEC = json.dumps([{"type": "Network", "name": "net", "ifName": "net1"}])
# requests the bench itself or the cluster's own housekeeping make, not the daemon's ADD/DEL (the controller's
# pool usage status follows the leases, whoever makes them)
NOT_OURS = {"leases", "pods create", "pods delete", "namespaces", "serviceaccounts", "secrets", "services", "endpoints",
            "ipaddresspools/status patch", ""}


def log(msg: str) -> None:
    print(f"[bench.kube] {msg}", file=sys.stderr, flush=True)


def free_ports(n: int) -> list[int]:
    out: list[int] = []
    for port in random.sample(range(20000, 32000), 300):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        out.append(port)
        if len(out) == n:
            return out
    raise BenchError("no free ports")


class ControlPlane:
    def __init__(self, cache: Path, work: Path) -> None:
        self.cache = cache
        self.data = work / "k8s"
        self.env = dict(os.environ)
        self.kubeconfig = str(self.data / "admin.kubeconfig")

    def up(self) -> None:
        log("building (cached) and starting the test control plane")
        run("bash", str(REPO / "scripts/k8s/build-apiserver.sh"), str(self.cache))
        ports = free_ports(3)
        self.env.update(K8S_TEST_APISERVER_PORT=str(ports[0]), K8S_TEST_ETCD_PORT=str(ports[1]),
                        K8S_TEST_ETCD_PEER_PORT=str(ports[2]))
        self.data.mkdir(parents=True)
        proc = subprocess.run(["bash", str(REPO / "scripts/k8s/up-apiserver.sh"), str(self.data), str(self.cache)],
                              capture_output=True, text=True, env=self.env)
        if proc.returncode != 0:
            raise BenchError(f"starting the control plane failed: {proc.stderr[-2000:]}")

    def down(self) -> None:
        if self.data.exists():
            subprocess.run(["bash", str(REPO / "scripts/k8s/down-apiserver.sh"), str(self.data), "--purge"],
                           capture_output=True, text=True, env=self.env)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        proc = subprocess.run([str(self.cache / "bin/kubectl"), "--kubeconfig", self.kubeconfig, *args], input=stdin,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise BenchError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def apply(self, docs: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "-f", "-", stdin="\n".join(json.dumps(d) for d in docs))

    def requests(self) -> Counter[str]:
        """``apiserver_request_total`` by "resource verb" (the API server's own count)."""
        out: Counter[str] = Counter()
        for line in self.kubectl("get", "--raw", "/metrics").splitlines():
            if line.startswith("apiserver_request_total{"):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
                sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
                verb = {"POST": "create"}.get(labels.get("verb", ""), labels.get("verb", "").lower())
                out[f"{labels.get('resource', '')}{sub} {verb}"] += int(float(line.rsplit(" ", 1)[1]))
        return out


def ours(delta: Counter[str]) -> dict[str, int]:
    return {k: v for k, v in sorted(delta.items()) if v > 0 and k.split(" ")[0] not in NOT_OURS
            and k not in NOT_OURS and not k.endswith((" watch", " list"))}


class Daemon:
    """A plexus-ipamd: a node (Kubernetes or local mode, its links in namespace ``netns``) or the controller."""

    def __init__(self, work: Path, name: str, args: list[str], prefix: tuple[str, ...] = (), repo: Path = REPO) -> None:
        self.repo = repo  # another checkout's daemon (--baseline): the same Python, that tree's code
        self.dir = work / name
        self.dir.mkdir(parents=True)
        self.socket = self.dir / "plexus.sock"
        self.log = self.dir / "ipamd.log"
        cmd = [*prefix, sys.executable, "-m", "ipamd", "--db", str(self.dir / "plexus.db"), "--socket", str(self.socket),
               "--grpc-socket", str(self.dir / "ipam.sock"), "--log-file", str(self.log), *args]
        self.metrics_port = int(args[args.index("--metrics-port") + 1]) if "--metrics-port" in args else 0
        self.stderr = open(self.dir / "stderr", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)),
                                     stdout=subprocess.DEVNULL, stderr=self.stderr)

    def wait(self, ready: Any, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{what} did not start: {(self.dir / 'stderr').read_text()[-1500:]}\n"
                                 f"{self.log.read_text()[-1500:] if self.log.exists() else ''}")
            time.sleep(0.1)

    def outbox(self) -> tuple[int, int]:
        """(writes owed, writes made since start) of this node's outbox."""
        import grpc

        from ipamd.api import ipam_pb2 as pb
        from ipamd.api import ipam_pb2_grpc

        with grpc.insecure_channel(f"unix:{self.dir / 'ipam.sock'}") as ch:
            resp = ipam_pb2_grpc.IpamStub(ch).ListOutbox(pb.ListOutboxRequest(limit=1), timeout=10)  # type: ignore[no-untyped-call]
        return int(resp.depth), int(resp.made)

    def drained(self, timeout: float = 60) -> int:
        """Wait until the outbox has made every write; the writes made since start (0 for a baseline daemon from
        before the outbox, which made every write on the call's path)."""
        if self.repo != REPO:
            return 0
        deadline = time.monotonic() + timeout
        while (state := self.outbox())[0] and time.monotonic() < deadline:
            time.sleep(0.2)
        return state[1]

    def api_requests(self, path: str) -> int:
        """The daemon's own count of its API requests on ``path`` ("call": a CNI or gRPC call waited on them;
        "background"), from its ``plexus_api_requests_total``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        return int(sum(float(n) for n in re.findall(
            rf'^plexus_api_requests_total{{method="\w+",path="{path}"}} (\S+)$', text, re.M)))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.stderr.close()


class Bench:
    def __init__(self, args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
        self.args = args
        self.stack = stack
        self.work = Path(tempfile.mkdtemp(prefix="plexus-bench-kube-"))
        stack.callback(shutil.rmtree, self.work, True)
        self.tag = uuid.uuid4().hex[:6]
        self.netns: list[str] = []
        stack.callback(self._remove_netns)
        self.cp = ControlPlane(Path(args.cache), self.work)
        stack.callback(self.cp.down)
        self.baseline = REPO
        if getattr(args, "baseline", ""):  # another commit's daemons, from a worktree of this repository
            self.baseline = self.work / "baseline"
            run("git", "-C", str(REPO), "worktree", "add", "--detach", str(self.baseline), args.baseline)
            stack.callback(run, "git", "-C", str(REPO), "worktree", "remove", "--force", str(self.baseline), check=False)

    def _remove_netns(self) -> None:
        for name in self.netns:
            run("ip", "netns", "del", name, check=False)

    def new_netns(self, what: str) -> str:
        name = f"plxk-{self.tag}-{what}"
        run("ip", "netns", "add", name)
        self.netns.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def drop_netns(self, name: str) -> None:
        run("ip", "netns", "del", name, check=False)
        self.netns.remove(name)

    def daemon(self, name: str, args: list[str], repo: Path = REPO) -> Daemon:
        d = Daemon(self.work, name, args, repo=repo)
        self.stack.callback(d.stop)
        return d

    def node(self, name: str, extra: list[str] | None = None, repo: Path = REPO) -> Daemon:
        netns = self.new_netns(name)
        d = self.daemon(name, ["--kubeconfig", self.cp.kubeconfig, "--node-name", name, "--node-netns",
                               f"/run/netns/{netns}", "--objects-dir", str(self.work / "empty"), *(extra or [])],
                        repo=repo)
        d.wait(d.socket.exists, f"node daemon {name}")
        return d

    # -- objects ----------------------------------------------------------------------------------
    def objects(self, prefix: int) -> list[dict[str, Any]]:
        return [
            {"apiVersion": API, "kind": "NetworkClass", "metadata": {"name": "kbench-class"},
             "spec": {"vlan": {"idPool": ["3100-3199"]}}},
            {"apiVersion": API, "kind": "IPAddressPool", "metadata": {"name": "pool", "namespace": NS},
             "spec": {"leaseTTL": "1s", "pools": [{"network": f"198.18.0.0/{prefix}"}]}},
            {"apiVersion": API, "kind": "IPAddressPool", "metadata": {"name": "race-pool", "namespace": NS},
             "spec": {"leaseTTL": "1s", "pools": [{"network": "198.19.0.0/20"}]}},
            {"apiVersion": API, "kind": "Network", "metadata": {"name": "net", "namespace": NS},
             "spec": {"networkClass": "kbench-class", "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool",
                                                                                  "name": "pool"}}}},
        ]

    def make_pods(self, names: list[tuple[str, str]]) -> dict[str, str]:
        """Pods (name, node) bound to their node as the scheduler would; name → UID."""
        docs = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": n, "namespace": NS,
                                                                "annotations": {f"{GROUP}/networks-spec": SPEC}},
                 "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}} for n, node in names]
        for i in range(0, len(docs), 50):
            self.cp.apply(docs[i:i + 50])
        items = json.loads(self.cp.kubectl("get", "pods", "-n", NS, "-o", "json"))["items"]
        return {p["metadata"]["name"]: p["metadata"]["uid"] for p in items}

    # -- CNI ---------------------------------------------------------------------------------------
    def cni(self, daemon: Daemon, verb: str, pod: str, uid: str, netns: str) -> tuple[float, Any]:
        conf = {"cniVersion": "1.1.0", "name": "plexus", "type": "plexus", "socket": str(daemon.socket),
                "timeoutSeconds": 60, "capabilities": {POD_ANNOTATIONS: True},
                "runtimeConfig": {POD_ANNOTATIONS: {f"{GROUP}/networks-spec": SPEC}}}
        env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": uid.replace("-", ""), "CNI_NETNS": netns,
               "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "PATH": os.environ.get("PATH", "/usr/bin"),
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={pod};K8S_POD_UID={uid}"}
        started = time.perf_counter()
        proc = subprocess.run([self.args.plexus], input=json.dumps(conf).encode(), env=env, capture_output=True,
                              timeout=120)
        elapsed = time.perf_counter() - started
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
        if proc.returncode != 0:
            raise BenchError(f"{verb} {pod}: {proc.stdout.decode()[:500]} {proc.stderr.decode()[-500:]}\n"
                             f"{daemon.log.read_text()[-1500:]}")
        return elapsed, out

    # -- scenarios ---------------------------------------------------------------------------------
    def latency(self, node: Daemon, node_name: str, runs: int, warmup: int, local: bool,
                tag: str = "") -> tuple[list[float], list[float]]:
        """Sequential ADD then DEL of one pod at a time: the seconds of each (the warm-up's left out)."""
        names = [f"{'loc' if local else 'lat'}{tag}-{i}" for i in range(warmup + runs)]
        uids = {n: str(uuid.uuid4()) for n in names} if local else self.make_pods([(n, node_name) for n in names])
        adds: list[float] = []
        dels: list[float] = []
        for i, name in enumerate(names):
            netns = self.new_netns(name)
            t_add, out = self.cni(node, "ADD", name, uids[name], f"/run/netns/{netns}")
            if not out or not out.get("ips"):
                raise BenchError(f"ADD {name} returned no address: {out}")
            t_del, _ = self.cni(node, "DEL", name, uids[name], f"/run/netns/{netns}")
            self.drop_netns(netns)
            if i >= warmup:
                adds.append(t_add)
                dels.append(t_del)
        return adds, dels

    def latency_rounds(self, node: Daemon, node_name: str, local: Daemon, rounds: int, runs: int,
                       warmup: int) -> dict[str, Any]:
        """Kubernetes mode and the local mode taking turns, ``rounds`` times ``runs`` ADD/DEL each, so that a slow
        spell of the machine is shared by both sides of the ratio; each round's median ratio, and the median of all."""
        per = max(1, runs // rounds)
        k_add: list[float] = []
        k_del: list[float] = []
        l_add: list[float] = []
        l_del: list[float] = []
        ratios: list[float] = []
        patches: list[float] = []
        for r in range(rounds):
            ka, kd = self.latency(node, node_name, per, warmup if r == 0 else 1, local=False, tag=str(r))
            node.drained()  # what these ADDs owed is made before the other side is measured
            patches += self.bare_patches([f"lat{r}-{i}" for i in range(per)])
            la, ld = self.latency(local, "", per, warmup if r == 0 else 1, local=True, tag=str(r))
            k_add += ka
            k_del += kd
            l_add += la
            l_del += ld
            ratios.append(round(statistics.median(ka) / statistics.median(la), 2))
            log(f"latency round {r + 1}/{rounds}: ADD {statistics.median(ka) * 1000:.1f} ms Kubernetes mode, "
                f"{statistics.median(la) * 1000:.1f} ms local ({ratios[-1]}x)")
        return {"kubernetes": {"add_ms": summary(k_add), "del_ms": summary(k_del)},
                "local": {"add_ms": summary(l_add), "del_ms": summary(l_del)},
                "add_ratio": round(statistics.median(k_add) / statistics.median(l_add), 2), "add_ratio_rounds": ratios,
                "add_gap_ms": round((statistics.median(k_add) - statistics.median(l_add)) * 1000, 1),
                "bare_patch_ms": summary(patches)}

    def bare_patches(self, pods: list[str], gap_s: float = 0.02) -> list[float]:
        """The yardstick of the ADD's one request: a merge patch of a pod's annotation from a bare client (the
        kubernetes client, as the daemon sends the status, its answer unread), one at a time with the control plane
        idle in between, as it is between one pod's calls."""
        from kubernetes import client

        from ipamd.kube.client import kube_api, unread

        core = client.CoreV1Api(kube_api(self.cp.kubeconfig))
        out = []
        for pod in pods:
            time.sleep(gap_s)
            body = {"metadata": {"annotations": {"bench.plexus.io/yardstick": uuid.uuid4().hex}}}
            started = time.perf_counter()
            unread(core.patch_namespaced_pod(pod, NS, body, _preload_content=False))
            out.append(time.perf_counter() - started)
        return out

    def requests_per_verb(self, node: Daemon, node_name: str, n: int) -> dict[str, Any]:
        """API requests of ``n`` ADDs, then of their ``n`` DELs, counted apart."""
        names = [f"req-{i}" for i in range(n)]
        uids = self.make_pods([(p, node_name) for p in names])
        time.sleep(2)  # the informers have the pods: no direct read is counted
        netns = {p: self.new_netns(p) for p in names}
        node.drained()
        start, path0 = self.cp.requests(), node.api_requests("call")
        for p in names:
            self.cni(node, "ADD", p, uids[p], f"/run/netns/{netns[p]}")
        path1 = node.api_requests("call")  # what the ADDs waited on, counted by the daemon itself
        node.drained()  # the writes the ADDs owed, made in the background
        mid = self.cp.requests()
        for p in names:
            self.cni(node, "DEL", p, uids[p], f"/run/netns/{netns[p]}")
        path2 = node.api_requests("call")
        node.drained()
        end = self.cp.requests()
        for p in names:
            self.drop_netns(netns[p])
        per_add, per_del = ours(mid - start), ours(end - mid)
        return {"per_add": round(sum(per_add.values()) / n, 2), "per_del": round(sum(per_del.values()) / n, 2),
                "add_path": round((path1 - path0) / n, 2), "del_path": round((path2 - path1) / n, 2),
                "add_breakdown": {k: round(v / n, 2) for k, v in per_add.items()},
                "del_breakdown": {k: round(v / n, 2) for k, v in per_del.items()}}

    def race(self, nodes: list[tuple[str, Daemon]], per_node: int, workers: int, local: bool = False) -> dict[str, Any]:
        """Every node ADDs its pods at once, ``workers`` at a time, from one pool: allocations per second."""
        plan = [(f"{'lrace' if local else 'race'}-{i}-{k}", name) for i, (name, _) in enumerate(nodes)
                for k in range(per_node)]
        if local:  # each local daemon leases from a pool of its own: the machine's bound, with nothing shared
            uids = {p: str(uuid.uuid4()) for p, _ in plan}
        else:
            uids = self.make_pods(plan)
            time.sleep(2)
        netns = {p: self.new_netns(p) for p, _ in plan}
        by_node = {name: d for name, d in nodes}
        addresses: list[str] = []
        errors: list[str] = []
        lock = threading.Lock()
        queues = {name: [p for p, n in plan if n == name] for name, _ in nodes}

        def worker(name: str) -> None:
            while True:
                with lock:
                    if not queues[name]:
                        return
                    pod = queues[name].pop()
                try:
                    _, out = self.cni(by_node[name], "ADD", pod, uids[pod], f"/run/netns/{netns[pod]}")
                    with lock:
                        addresses.append(out["ips"][0]["address"])
                except BenchError as exc:
                    with lock:
                        errors.append(str(exc)[:300])

        threads = [threading.Thread(target=worker, args=(name,)) for name, _ in nodes for _ in range(workers)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        if errors:
            raise BenchError(f"{len(errors)} racing ADDs failed, first: {errors[0]}")
        if not local and len(set(addresses)) != len(addresses):
            raise BenchError("two pods got the same address")
        for p, node_name in plan:
            self.cni(by_node[node_name], "DEL", p, uids[p], f"/run/netns/{netns[p]}")
            self.drop_netns(netns[p])
        return {"nodes": len(nodes), "pods": len(plan), "workers_per_node": workers, "seconds": round(elapsed, 2),
                "allocations_per_s": round(len(addresses) / elapsed, 1), "distinct_addresses": len(set(addresses))}

    def allocation_race(self, scheme: str, nodes: int, per_worker: int, workers: int, tag: str = "") -> dict[str, Any]:
        """``nodes`` fresh daemons (``--address-blocks on|off``; ``baseline``: the daemons of the ``--baseline``
        checkout) lease from one pool over the gRPC IPAM API at once, ``workers`` callers each: allocations per second,
        the IPAM and API side alone (no exec, no kernel)."""
        import grpc

        from ipamd.api import ipam_pb2 as pb
        from ipamd.api import ipam_pb2_grpc

        flag = "on" if scheme == "blocks" else "off"
        if scheme == "baseline":
            daemons = [self.node(f"kalloc-base{tag}-{i}", repo=self.baseline) for i in range(nodes)]
        else:
            daemons = [self.node(f"kalloc-{flag}{tag}-{i}", ["--address-blocks", flag]) for i in range(nodes)]
        ref = pb.PoolRef(kind="IPAddressPool", namespace=NS, name="race-pool")
        for d in daemons:  # the pool is in every daemon's informer before the clock starts
            with grpc.insecure_channel(f"unix:{d.dir / 'ipam.sock'}") as ch:
                stub = ipam_pb2_grpc.IpamStub(ch)  # type: ignore[no-untyped-call]
                deadline = time.monotonic() + 30

                def pool_seen(stub: Any = stub) -> bool:
                    try:
                        return any("race-pool" in p.pool for p in stub.ListPools(pb.ListPoolsRequest(), timeout=10).pools)
                    except grpc.RpcError:  # its gRPC socket comes a moment after its CNI socket
                        return False

                while not pool_seen():
                    if time.monotonic() > deadline:
                        raise BenchError(f"{d.dir.name}: the race pool never showed up")
                    time.sleep(0.2)
        got: list[tuple[int, str]] = []
        errors: list[str] = []
        lock = threading.Lock()
        start = threading.Barrier(nodes * workers + 1)

        def worker(i: int, w: int) -> None:
            with grpc.insecure_channel(f"unix:{daemons[i].dir / 'ipam.sock'}") as ch:
                stub = ipam_pb2_grpc.IpamStub(ch)  # type: ignore[no-untyped-call]
                start.wait()
                for k in range(per_worker):
                    try:
                        lease = stub.Allocate(pb.AllocateRequest(pool=ref, owner=f"{flag}-{i}-{w}-{k}"), timeout=30)
                        with lock:
                            got.append((i, lease.address))
                    except grpc.RpcError as exc:
                        with lock:
                            errors.append(str(exc.details())[:300])

        threads = [threading.Thread(target=worker, args=(i, w)) for i in range(nodes) for w in range(workers)]
        for t in threads:
            t.start()
        start.wait()
        began = time.perf_counter()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - began
        if errors:
            raise BenchError(f"{scheme}: {len(errors)} racing allocations failed, first: {errors[0]}")
        addresses = [a for _, a in got]
        if len(set(addresses)) != len(addresses):
            raise BenchError(f"{scheme}: two callers got the same address")
        for i, address in got:
            with grpc.insecure_channel(f"unix:{daemons[i].dir / 'ipam.sock'}") as ch:
                ipam_pb2_grpc.IpamStub(ch).Release(pb.ReleaseRequest(pool=ref, address=address), timeout=30)  # type: ignore[no-untyped-call]
        for d in daemons:
            d.drained()
            d.stop()
        self.settle_leases("race-pool")
        return {"scheme": scheme, "nodes": nodes, "allocations": len(addresses), "callers_per_node": workers,
                "seconds": round(elapsed, 2), "allocations_per_s": round(len(addresses) / elapsed, 1)}

    def settle_leases(self, pool: str, timeout: float = 120) -> None:
        """Wait until the controller has expired every lease object of ``pool`` (their quarantine is 1 s), so that the
        next measurement does not share the API server with the last one's clean-up."""
        deadline = time.monotonic() + timeout
        while True:
            items = json.loads(self.cp.kubectl("get", "ipaddressleases", "-o", "json"))["items"]
            if not [i for i in items if str(i.get("spec", {}).get("pool", "")).endswith(f"/{pool}")]:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"the lease objects of {pool} were not expired within {timeout:.0f} s")
            time.sleep(1)

    def admission(self, url: str, runs: int, warmup: int) -> dict[str, Any]:
        """What the pods webhook costs every pod creation in the cluster: POST /pods timed with the packaged
        ValidatingWebhookConfiguration (pointed at the controller by URL) and without it, in alternating
        blocks so that drift hits both alike."""
        (config,) = [d for d in yaml.safe_load_all((REPO / "packaging/k8s/controller.yaml").read_text())
                     if d and d["kind"] == "ValidatingWebhookConfiguration"]
        for hook in config["webhooks"]:
            hook["clientConfig"] = {"url": url}
        pki = self.cp.data / "pki"
        tls = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        tls.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        conn = http.client.HTTPSConnection("127.0.0.1", int(self.cp.env["K8S_TEST_APISERVER_PORT"]), context=tls)
        self.cp.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kbench-adm"}}])
        timed: dict[bool, list[float]] = {True: [], False: []}
        count = 0

        def create(webhook: bool) -> None:
            nonlocal count
            count += 1
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"adm-{count}",
                                                                   "annotations": {f"{GROUP}/networks-spec": SPEC}},
                   "spec": {"nodeName": "kbench-nowhere", "containers": [{"name": "c", "image": "busybox"}]}}
            started = time.perf_counter()
            conn.request("POST", "/api/v1/namespaces/kbench-adm/pods", json.dumps(pod),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 201:
                raise BenchError(f"creating pod adm-{count}: HTTP {resp.status} {body[:300]!r}")
            timed[webhook].append(time.perf_counter() - started)

        def hooked() -> bool:
            got = json.loads(self.cp.kubectl("get", "validatingwebhookconfiguration", "-o", "json"))["items"]
            return any(all(h["clientConfig"].get("caBundle") for h in c["webhooks"]) for c in got)

        try:
            for block in range(4):
                webhook = block % 2 == 1
                if webhook:
                    self.cp.apply([config])
                    deadline = time.monotonic() + 30  # the controller writes its CA into the configuration
                    while not hooked():
                        if time.monotonic() > deadline:
                            raise BenchError("the controller wrote no caBundle into the webhook configuration")
                        time.sleep(0.5)
                    time.sleep(1)  # the API server's informer has the configuration
                for i in range(warmup + runs // 2):
                    create(webhook)
                    if i < warmup:
                        timed[webhook].pop()
                if webhook:
                    self.cp.kubectl("delete", "validatingwebhookconfiguration", "plexus")
                    time.sleep(1)
        finally:
            conn.close()
            self.cp.kubectl("delete", "validatingwebhookconfiguration", "plexus", "--ignore-not-found")
        with_hook, without = summary(timed[True]), summary(timed[False])
        return {"with_webhook_ms": with_hook, "without_ms": without,
                "added_ms": round(with_hook["median"] - without["median"], 1)}

    def local_node(self, name: str = "local") -> Daemon:
        """The same Network served from a directory (local mode), for the side-by-side figure; local mode
        makes its links where it runs, so it runs inside a namespace of its own."""
        objects = self.work / f"{name}-objects"
        objects.mkdir()
        for i, doc in enumerate(self.objects(22)):
            (objects / f"{i}.yaml").write_text(json.dumps(doc))
        netns = self.new_netns(name)
        d = Daemon(self.work, name, ["--objects-dir", str(objects)], prefix=("ip", "netns", "exec", netns))
        self.stack.callback(d.stop)
        d.wait(d.socket.exists, f"{name} daemon")
        return d

    def start_cluster(self) -> None:
        """The control plane, the CRDs and RBAC, the controller (with its webhook), the bench's objects."""
        self.cp.up()
        self.cp.kubectl("apply", "-f", str(REPO / "packaging/k8s/crds.yaml"), "-f", str(REPO / "packaging/k8s/rbac.yaml"))
        self.cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        self.health, self.hook = health, hook = free_ports(2)
        ctl = self.daemon("controller", ["--mode", "controller", "--kubeconfig", self.cp.kubeconfig,
                                         "--webhook-address", "127.0.0.1", "--webhook-port", str(hook),
                                         "--webhook-name", "127.0.0.1", "--health-port", str(health)])

        def controller_ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        ctl.wait(controller_ready, "controller")
        self.cp.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}] + self.objects(22))
        deadline = time.monotonic() + 60
        while not json.loads(self.cp.kubectl("get", "network", "-n", NS, "net", "-o", "json")).get("status", {}).get("vlanID"):
            if time.monotonic() > deadline:
                raise BenchError("the controller gave the Network no VLAN ID")
            time.sleep(0.5)

    def allocation_rounds(self) -> dict[str, Any]:
        """The allocation race alone, each scheme (and the ``--baseline`` checkout's daemons) ``--rounds`` times,
        the schemes taking turns so that the API server's drift weighs on all alike."""
        a = self.args
        schemes = (["baseline"] if a.baseline else []) + ["per-address", "blocks"]
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in schemes}
        for k in range(a.rounds):
            for scheme in schemes if k % 2 == 0 else list(reversed(schemes)):
                log(f"allocation race {k + 1}/{a.rounds}, {scheme}: {a.nodes} daemons x {a.alloc_callers} callers "
                    f"x {a.alloc_per_caller}")
                r = self.allocation_race(scheme, a.nodes, a.alloc_per_caller, a.alloc_callers, tag=f"r{k}")
                log(f"  {r['allocations_per_s']} allocations/s")
                runs[scheme].append(r)
        out: dict[str, Any] = {"baseline": a.baseline, "rounds": a.rounds}
        for scheme, rs in runs.items():
            rates = [r["allocations_per_s"] for r in rs]
            out[f"allocation_race_{scheme.replace('-', '_')}"] = {**rs[0], "allocations_per_s": statistics.median(rates),
                                                                  "rounds_allocations_per_s": rates}
        if a.baseline:
            base = out["allocation_race_baseline"]["allocations_per_s"]
            for scheme in ("per_address", "blocks"):
                out[f"allocation_race_{scheme}"]["ratio_vs_baseline"] = \
                    round(out[f"allocation_race_{scheme}"]["allocations_per_s"] / base, 2)
        return out

    def run(self) -> dict[str, Any]:
        a = self.args
        self.start_cluster()
        if a.allocation_only:
            return self.allocation_rounds()
        # the latency of one node's calls is measured with that node's daemon alone, as the local mode's is: the other
        # nodes' daemons are other machines in a cluster, and here they would share this node's two cores (every
        # object change reaches every daemon's informers); the API server, etcd and the controller do share them
        name0, node0 = "kbench-0", self.node("kbench-0", ["--metrics-port", str(free_ports(1)[0])])
        time.sleep(2)
        results: dict[str, Any] = {}
        log(f"latency, Kubernetes mode and local mode taking turns: {a.latency_rounds} rounds, {a.warmup}+{a.runs} "
            f"ADD/DEL each in all")
        results.update(self.latency_rounds(node0, name0, self.local_node(), a.latency_rounds, a.runs, a.warmup))
        if a.latency_only:
            return results
        log("API requests per ADD and per DEL")
        results["requests"] = self.requests_per_verb(node0, name0, a.runs)
        log(f"{a.nodes} node daemons")
        nodes = [(name0, node0), *((f"kbench-{i}", self.node(f"kbench-{i}")) for i in range(1, a.nodes))]
        time.sleep(2)
        log(f"race: {a.nodes} nodes x {a.pods_per_node} pods")
        results["race"] = self.race(nodes, a.pods_per_node, a.workers)
        log(f"race, local mode (the machine's bound: nothing shared, no API): {a.nodes} daemons x {a.pods_per_node} pods")
        locals_ = [(f"local-{i}", self.local_node(f"local{i}")) for i in range(a.nodes)]
        results["race_local"] = self.race(locals_, a.pods_per_node, a.workers, local=True)
        for _, d in locals_:
            d.stop()
        for _, d in nodes:  # the allocation races are theirs alone
            d.stop()
        for scheme in ("per-address", "blocks"):
            log(f"allocation race, {scheme}: {a.nodes} daemons x {a.alloc_callers} callers x {a.alloc_per_caller}")
            results[f"allocation_race_{scheme.replace('-', '_')}"] = self.allocation_race(
                scheme, a.nodes, a.alloc_per_caller, a.alloc_callers)
        log(f"pod creation with and without the pods webhook: {a.warmup}+{a.runs} each, alternating")
        results["admission"] = self.admission(f"https://127.0.0.1:{self.hook}/validate", a.runs, a.warmup)
        return results


def summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"median": round(statistics.median(ms), 1), "p90": round(ms[int(0.9 * (len(ms) - 1))], 1),
            "min": round(ms[0], 1), "n": len(ms)}


def report(r: dict[str, Any]) -> str:
    k, loc, req, race = r["kubernetes"], r["local"], r["requests"], r["race"]
    lines = [
        "| figure | Kubernetes mode | local mode |",
        "|---|---|---|",
        f"| ADD, 1 network (median / p90) | {k['add_ms']['median']} / {k['add_ms']['p90']} ms "
        f"| {loc['add_ms']['median']} / {loc['add_ms']['p90']} ms |",
        f"| DEL, 1 network (median / p90) | {k['del_ms']['median']} / {k['del_ms']['p90']} ms "
        f"| {loc['del_ms']['median']} / {loc['del_ms']['p90']} ms |",
        f"| ADD, Kubernetes mode / local mode, taking turns (median of all; per round) | {r.get('add_ratio', '-')} "
        f"({', '.join(str(x) for x in r.get('add_ratio_rounds', []))}) | 1 |",
        yardstick(r),
        f"| API requests per ADD: on its path / in all | {req.get('add_path', '-')} / {req['per_add']} "
        f"({', '.join(f'{n} {v:g}' for n, v in req['add_breakdown'].items())}) | 0 |",
        f"| API requests per DEL: on its path / in all | {req.get('del_path', '-')} / {req['per_del']} "
        f"({', '.join(f'{n} {v:g}' for n, v in req['del_breakdown'].items())}) | 0 |",
        f"| allocations/s, {race['nodes']} racing daemons ({race['pods']} pods, {race['workers_per_node']} at a time "
        f"per node) | {race['allocations_per_s']} | {r['race_local']['allocations_per_s'] if 'race_local' in r else ''} |",
    ]
    for scheme in ("per_address", "blocks"):
        if (ar := r.get(f"allocation_race_{scheme}")) is not None:
            lines.append(f"| allocations/s, {ar['nodes']} daemons racing over gRPC, {scheme.replace('_', '-')} "
                         f"({ar['allocations']} allocations, {ar['callers_per_node']} callers per daemon) "
                         f"| {ar['allocations_per_s']} | |")
    if "admission" in r:
        adm = r["admission"]
        lines.append(f"| pod creation (POST), pods webhook on / off (median) | {adm['with_webhook_ms']['median']} / "
                     f"{adm['without_ms']['median']} ms (+{adm['added_ms']} ms) | |")
    return "\n".join(lines)


def report_latency(r: dict[str, Any]) -> str:
    k, loc = r["kubernetes"], r["local"]
    return "\n".join([
        "| figure | Kubernetes mode | local mode |", "|---|---|---|",
        f"| ADD (median / p90) | {k['add_ms']['median']} / {k['add_ms']['p90']} ms "
        f"| {loc['add_ms']['median']} / {loc['add_ms']['p90']} ms |",
        f"| ADD ratio (median of all; per round) | {r['add_ratio']} ({', '.join(map(str, r['add_ratio_rounds']))}) | 1 |",
        yardstick(r),
    ])


def yardstick(r: dict[str, Any]) -> str:
    """What the ADD's one request costs by itself on this machine, against what Kubernetes mode adds to ADD."""
    return (f"| ADD, Kubernetes mode - local mode (median) / one pod PATCH from a bare client, control plane idle "
            f"(median) | {r['add_gap_ms']} / {r['bare_patch_ms']['median']} ms | |")


def report_allocation(r: dict[str, Any]) -> str:
    lines = ["| scheme | allocations/s (median) | rounds | vs baseline |", "|---|---|---|---|"]
    for scheme in ("baseline", "per_address", "blocks"):
        if (ar := r.get(f"allocation_race_{scheme}")) is not None:
            name = f"baseline ({r['baseline']})" if scheme == "baseline" else scheme.replace("_", "-")
            lines.append(f"| {name} | {ar['allocations_per_s']} | {', '.join(map(str, ar['rounds_allocations_per_s']))} "
                         f"| {ar.get('ratio_vs_baseline', '-')} |")
    return "\n".join(lines)


def default_plexus() -> str:
    for cand in (str(REPO / "dist" / "plexus" / "plexus"), "/opt/cni/bin/plexus"):
        if os.path.exists(cand):
            return cand
    return ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kube", description=__doc__.split("\n\n")[0])
    p.add_argument("--plexus", default=default_plexus(), help="the frozen plugin (default: dist/plexus/plexus)")
    p.add_argument("--cache", default=os.environ.get("PLEXUS_K8S_CACHE", "/var/cache/plexus-test/k8s-apiserver"))
    p.add_argument("--runs", type=int, default=60)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--latency-rounds", type=int, default=5, help="Kubernetes and local mode take turns this often")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--pods-per-node", type=int, default=25)
    p.add_argument("--workers", type=int, default=2, help="concurrent ADDs per node in the race (kubelet: several)")
    p.add_argument("--alloc-callers", type=int, default=4, help="gRPC callers per daemon in the allocation race")
    p.add_argument("--alloc-per-caller", type=int, default=50, help="allocations per caller in the allocation race")
    p.add_argument("--allocation-only", action="store_true",
                   help="only the allocation race over gRPC, --rounds times per scheme, taking turns")
    p.add_argument("--latency-only", action="store_true",
                   help="only ADD/DEL latency, Kubernetes and local mode taking turns (bench-results/kube-latency.json)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per scheme with --allocation-only")
    p.add_argument("--baseline", default="", help="with --allocation-only: a git ref (e.g. 7b4909b) whose daemons race "
                   "too, from a worktree of this repository, the same Python")
    p.add_argument("--json", default="", help="where the results go (default bench-results/kube.json, "
                   "with --allocation-only bench-results/kube-allocation.json)")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.kube: needs root (network namespaces)", file=sys.stderr)
        return 2
    if not a.plexus:
        print("bench.kube: no frozen plexus: run make build", file=sys.stderr)
        return 2
    try:
        with contextlib.ExitStack() as stack:
            results = Bench(a, stack).run()
    except BenchError as exc:
        print(f"bench.kube: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench.kube: interrupted; everything it made is removed", file=sys.stderr)
        return 130
    path = a.json or f"bench-results/kube{'-allocation' if a.allocation_only else '-latency' if a.latency_only else ''}.json"
    write_results(path, results)
    print(report_allocation(results) if a.allocation_only else
          report_latency(results) if a.latency_only else report(results))
    print(f"(written to {path})")
    return 0


def write_results(path: str, results: dict[str, Any]) -> None:
    """The figures as JSON, with the machine they were measured on and the commit."""
    results["machine"] = {"cpus": os.cpu_count(), "load": os.getloadavg()[0]}
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    results["commit"] = commit.stdout.strip()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())

"""Plexus benchmarks: exec latency against Debian's reference plugins, churn, gRPC IPAM, daemon RSS.

    sudo .venv/bin/python -m bench [--runs N] [--quick] [--only SCENARIO[,..]] [--json PATH]
                                   [--plexus PATH] [--churn-seconds S]

Everything runs on a private node: a network namespace ``plxb-node-XXXXXX`` that the bench process
itself enters (``setns``), with its own ``plexus-ipamd`` (this Python, ``-m ipamd``, objects,
SQLite store and sockets in a temporary directory). Each plugin exec (Plexus and the reference
``bridge``/``host-local``) runs from inside it, into fresh pod namespaces made outside the timed
region; Plexus and the reference alternate run by run (A B, B A, ...) so drift hits both alike.
Nothing outside the namespaces and the temporary directory is touched, and all of it is removed at
the end, on failure and on Ctrl-C.

Scenarios (``--only``): version, add (add-1/2/4 and del-1/2/4), chained (add-chained, del-chained),
delegate (the cluster network and 2 or 4 NADs, Plexus delegating: add-delegate-N, del-delegate-N),
plexus-ipam (bridge exec'ing plexus-ipam against bridge with host-local: add-ipam, del-ipam; Plexus delegating
2 NADs whose IPAM is plexus-ipam, leased by the daemon or exec'd: add-delegate-ipam, add-delegate-ipam-exec),
check (check, status), churn, burst (200 pods' ADDs exec'd at once, then their DELs: p99 and the daemon's peak RSS),
rss, ipam-alloc. Latency rows give median, p90, max and runs, and
ratio = Plexus median / reference median; throughput rows give ratio = Plexus / reference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/bench.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cni import (  # noqa: E402
    FILL_POOL_BASE,
    POD_NAMESPACE,
    Cni,
    Pod,
    check_version_support,
    describe_plugin,
    hostlocal_reservations,
    objects,
)
from bench.node import REPO, BenchError, BenchNode  # noqa: E402

SCENARIOS = ("version", "add", "chained", "delegate", "plexus-ipam", "check", "churn", "burst", "rss", "ipam-alloc")
ALIASES = {"del": "add", "add-chained": "chained", "del-chained": "chained", "status": "check", "ipam": "ipam-alloc",
           **{f"{v}-{n}": "add" for v in ("add", "del") for n in (1, 2, 4)},
           **{f"{v}-delegate-{n}": "delegate" for v in ("add", "del") for n in (2, 4)},
           **{f"{v}-{k}": "plexus-ipam" for v in ("add", "del") for k in ("ipam", "delegate-ipam", "delegate-ipam-exec")}}
DELEGATE_SIZES = (2, 4)
ADD_SIZES = (1, 2, 4)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- statistics ----------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def summary(seconds: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in seconds]
    return {"median_ms": statistics.median(ms), "p90_ms": pct(ms, 0.9), "p99_ms": pct(ms, 0.99), "max_ms": max(ms),
            "min_ms": min(ms), "runs": len(ms), "samples_ms": [round(v, 3) for v in ms]}


@dataclass
class Results:
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)
    throughput: dict[str, dict[str, Any]] = field(default_factory=dict)
    rss: dict[str, Any] = field(default_factory=dict)
    burst: dict[str, Any] = field(default_factory=dict)
    machine_end: dict[str, Any] = field(default_factory=dict)

    def add_latency(self, name: str, plexus: list[float], ref: list[float] | None = None, ref_what: str = "",
                    **extra: Any) -> None:
        row: dict[str, Any] = {**summary(plexus), "reference": None, "ratio": None, **extra}
        if ref:
            row["reference"] = {**summary(ref), "what": ref_what}
            row["ratio"] = row["median_ms"] / row["reference"]["median_ms"]
        self.latency[name] = row


# -- the context every scenario gets -------------------------------------------------------------
@dataclass
class Ctx:
    node: BenchNode
    cni: Cni
    res: Results
    runs: int
    warmup: int
    quick: bool
    churn_seconds: float
    ipam_seconds: float
    probes: int
    fill_prefix: int
    stop: threading.Event = field(default_factory=threading.Event)

    def progress(self, name: str, i: int, total: int) -> None:
        if total >= 10 and (i + 1) % max(1, total // 5) == 0:
            log(f"  {name}: {i + 1}/{total}")

    def daemon_ms(self, since: int, verb: str, containers: set[str] | None = None,
                  server: str = "CNI") -> dict[str, Any] | None:
        """Median/p90 of the daemon's own duration for these calls (from its per-call log lines): the plexus
        plugin's (``CNI``) or plexus-ipam's (``IPAM``)."""
        ms = [c["ms"] / 1000 for c in self.node.daemon_calls(since)
              if c["server"] == server and c["verb"] == verb and (containers is None or c["container"] in containers)]
        if not ms:
            return None
        s = summary(ms)
        return {"median_ms": s["median_ms"], "p90_ms": s["p90_ms"], "max_ms": s["max_ms"], "calls": s["runs"]}

    def verify_clean(self, what: str) -> None:
        """After a scenario: no pod attachment, bound lease or host-local reservation may remain."""
        from ipamd.api import ipam_pb2 as pb

        self.node.check_daemon()
        stub = self.node.stub()
        deadline = time.monotonic() + 15  # background DELs (--del-mode background) finish after they answered
        while True:
            pods = stub.ListPods(pb.ListPodsRequest(namespace=POD_NAMESPACE), timeout=30).pods
            bound = [lease for lease in stub.ListLeases(pb.ListLeasesRequest(), timeout=60).leases
                     if lease.state == "bound" and (lease.holder_kind == "CNI" or (
                         "/pool-" in lease.pool and lease.pool.split("/")[-1][5:].isdigit()))]
            held = hostlocal_reservations(self.node)
            if not (pods or bound or held) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if pods or bound or held:
            raise BenchError(f"{what} left state behind: pods={[p.name for p in pods]} "
                             f"bound leases={[(lz.pool, lz.address) for lz in bound][:10]} host-local={held[:10]}")


def paired(i: int, a: Callable[[], Any], b: Callable[[], Any]) -> tuple[Any, Any]:
    """Run A then B on even runs, B then A on odd ones (neither side always goes first); both results."""
    if i % 2 == 0:
        ra = a()
        return ra, b()
    rb = b()
    return a(), rb


@dataclass
class Lifecycle:
    """Timings of pods added and deleted by both sides, A/B interleaved, after warm-up."""

    add_p: list[float] = field(default_factory=list)
    add_r: list[float] = field(default_factory=list)
    del_p: list[float] = field(default_factory=list)
    del_r: list[float] = field(default_factory=list)
    cids: set[str] = field(default_factory=set)  # Plexus's containers, for its daemon's log lines
    since: int = 0  # the daemon log's offset when the timed runs began


def lifecycle(ctx: Ctx, name: str, add_p: Callable[[Any], float], add_r: Callable[[Any], float],
              del_p: Callable[[Any], float], del_r: Callable[[Any], float]) -> Lifecycle:
    """For each run a fresh pod per side: ADD (A B or B A), then DEL the same way; pods removed whatever happens."""
    cni = ctx.cni
    out = Lifecycle()
    for i in range(ctx.warmup + ctx.runs):
        if i == ctx.warmup:
            out.since = ctx.node.log_offset()
        pa, pb = cni.new_pod(), cni.new_pod()
        try:
            add = paired(i, partial(add_p, pa), partial(add_r, pb))
            dele = paired(i, partial(del_p, pa), partial(del_r, pb))
        finally:
            cni.remove_pod(pa)
            cni.remove_pod(pb)
        if i >= ctx.warmup:
            out.cids.add(pa.cid[:12])
            out.add_p.append(add[0])
            out.add_r.append(add[1])
            out.del_p.append(dele[0])
            out.del_r.append(dele[1])
        ctx.progress(name, i, ctx.warmup + ctx.runs)
    return out


# -- scenarios ------------------------------------------------------------------------------------
def sc_version(ctx: Ctx) -> None:
    cni = ctx.cni
    conf_p = cni.plexus_conf([1])
    conf_r = cni.bridge_conf(1)
    p: list[float] = []
    r: list[float] = []
    for i in range(ctx.warmup + ctx.runs):
        timed = i >= ctx.warmup
        (tp, _), (tr, _) = paired(i, partial(cni.exec, "plexus", "VERSION", conf_p),
                                  partial(cni.exec, "bridge", "VERSION", conf_r))
        if timed:
            p.append(tp)
            r.append(tr)
        ctx.progress("version", i, ctx.warmup + ctx.runs)
    ctx.res.add_latency("version", p, r, "bridge VERSION")
    # the floor a Python plugin stands on: the interpreter the frozen plugin bundles, started bare
    bare = [os.path.realpath(sys.executable), "-S", "-I", "-c", "pass"]
    f: list[float] = []
    v: list[float] = []
    for i in range(ctx.warmup + ctx.runs):
        (tv, _), (tf, _) = paired(i, partial(cni.exec, "plexus", "VERSION", conf_p), partial(timed_run, bare))
        if i >= ctx.warmup:
            v.append(tv)
            f.append(tf)
    ctx.res.add_latency("version-vs-interpreter", v, f, f"{' '.join(bare)} (the bundled interpreter, bare)",
                        what="plexus VERSION exec against the bare interpreter's start, interleaved")


def timed_run(argv: list[str]) -> tuple[float, None]:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    return time.perf_counter() - started, None


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sc_add(ctx: Ctx, sizes: tuple[int, ...]) -> None:
    cni = ctx.cni
    for n in sizes:
        nets = list(range(1, n + 1))
        run = lifecycle(ctx, f"add-{n}/del-{n}", partial(cni.plexus_add, nets=nets), partial(cni.bridges_add, nets=nets),
                        partial(cni.plexus_del, nets=nets), partial(cni.bridges_del, nets=nets))
        what = f"{n} x bridge+host-local"
        ctx.res.add_latency(f"add-{n}", run.add_p, run.add_r, f"{what} ADD",
                            daemon=ctx.daemon_ms(run.since, "ADD", run.cids))
        ctx.res.add_latency(f"del-{n}", run.del_p, run.del_r, f"{what} DEL",
                            daemon=ctx.daemon_ms(run.since, "DEL", run.cids))
    ctx.verify_clean("add/del")


def sc_chained(ctx: Ctx) -> None:
    cni = ctx.cni
    add_p: list[float] = []
    add_r: list[float] = []
    del_p: list[float] = []
    del_r: list[float] = []
    part_add: list[float] = []
    part_del: list[float] = []
    cids: set[str] = set()
    since = 0
    for i in range(ctx.warmup + ctx.runs):
        timed = i >= ctx.warmup
        if i == ctx.warmup:
            since = ctx.node.log_offset()
        pa, pb = cni.new_pod(), cni.new_pod()
        try:
            (a_total, a_part), a_ref = paired(i, partial(cni.chained_add, pa), partial(cni.ref_chained_add, pb))
            (d_total, d_part), d_ref = paired(i, partial(cni.chained_del, pa), partial(cni.ref_chained_del, pb))
        finally:
            cni.remove_pod(pa)
            cni.remove_pod(pb)
        if timed:
            cids.add(pa.cid[:12])
            add_p.append(a_total)
            part_add.append(a_part)
            add_r.append(a_ref)
            del_p.append(d_total)
            part_del.append(d_part)
            del_r.append(d_ref)
        ctx.progress("chained", i, ctx.warmup + ctx.runs)
    ctx.res.add_latency("add-chained", add_p, add_r, "3 x bridge ADD (eth0, net1, net2)",
                        plexus_exec=summary(part_add), daemon=ctx.daemon_ms(since, "ADD", cids),
                        what="bridge ADD eth0 + plexus ADD (prevResult, 2 networks)")
    ctx.res.add_latency("del-chained", del_p, del_r, "3 x bridge DEL", plexus_exec=summary(part_del),
                        daemon=ctx.daemon_ms(since, "DEL", cids), what="plexus DEL + bridge DEL eth0")
    ctx.verify_clean("chained")


def sc_delegate(ctx: Ctx) -> None:
    """A Multus node's pod: the cluster network and N NADs (bridge + host-local each), Plexus delegating all
    of them, against the same N+1 reference execs made by the runtime itself."""
    cni = ctx.cni
    for n in DELEGATE_SIZES:
        run = lifecycle(ctx, f"delegate-{n}", partial(cni.delegating_add, nads=n), partial(cni.ref_chained_add, nets=n),
                        partial(cni.delegating_del, nads=n), partial(cni.ref_chained_del, nets=n))
        what = f"{n + 1} x bridge+host-local exec'd by the runtime (eth0 + {n})"
        ctx.res.add_latency(f"add-delegate-{n}", run.add_p, run.add_r, f"{what} ADD",
                            daemon=ctx.daemon_ms(run.since, "ADD", run.cids),
                            what=f"plexus ADD delegating the cluster network and {n} NADs")
        ctx.res.add_latency(f"del-delegate-{n}", run.del_p, run.del_r, f"{what} DEL",
                            daemon=ctx.daemon_ms(run.since, "DEL", run.cids),
                            what=f"plexus DEL of the cluster network and {n} NADs")
    ctx.verify_clean("delegate")


def sc_plexus_ipam(ctx: Ctx) -> None:
    """plexus-ipam: the reference bridge exec'd by the runtime with plexus-ipam as its IPAM plugin, against the
    same bridge with host-local (``add-ipam``); and Plexus delegating the cluster network and 2 NADs whose
    IPAM is plexus-ipam, the daemon leasing first (``add-delegate-ipam``) or the delegates exec'ing plexus-ipam
    (``add-delegate-ipam-exec``), against the runtime exec'ing the same lists with host-local."""
    cni = ctx.cni
    sides: dict[str, tuple[Callable[..., float], Callable[..., float], str, str]] = {
        "ipam": (cni.ipam_add, cni.ipam_del, "1 x bridge+host-local", "bridge+plexus-ipam exec'd by the runtime"),
        "delegate-ipam": (partial(cni.delegating_add, nads=2, ipam="lease"),
                          partial(cni.delegating_del, nads=2, ipam="lease"), "3 x bridge+host-local",
                          "plexus delegating the cluster network and 2 NADs with plexus-ipam, the daemon leasing"),
        "delegate-ipam-exec": (partial(cni.delegating_add, nads=2, ipam="exec"),
                               partial(cni.delegating_del, nads=2, ipam="exec"), "3 x bridge+host-local",
                               "the same, the delegates exec'ing plexus-ipam"),
    }
    refs: dict[str, tuple[Callable[..., float], Callable[..., float]]] = {
        "ipam": (partial(cni.bridges_add, nets=[1]), partial(cni.bridges_del, nets=[1])),
        "delegate-ipam": (cni.ref_chained_add, cni.ref_chained_del),
        "delegate-ipam-exec": (cni.ref_chained_add, cni.ref_chained_del),
    }
    for name, (add_p, del_p, ref_what, what) in sides.items():
        run = lifecycle(ctx, name, add_p, refs[name][0], del_p, refs[name][1])
        server = "IPAM" if name == "ipam" else "CNI"
        ctx.res.add_latency(f"add-{name}", run.add_p, run.add_r, f"{ref_what} ADD", what=what,
                            daemon=ctx.daemon_ms(run.since, "ADD", run.cids, server))
        ctx.res.add_latency(f"del-{name}", run.del_p, run.del_r, f"{ref_what} DEL", what=what,
                            daemon=ctx.daemon_ms(run.since, "DEL", run.cids, server))
    ctx.verify_clean("plexus-ipam")


def sc_check(ctx: Ctx) -> None:
    cni = ctx.cni
    chk_p: list[float] = []
    chk_r: list[float] = []
    status: list[float] = []
    cids: set[str] = set()
    since = 0
    status_conf = cni.plexus_conf([1], version="1.1.0")
    for i in range(ctx.warmup + ctx.runs):
        timed = i >= ctx.warmup
        if i == ctx.warmup:
            since = ctx.node.log_offset()
        pa, pb = cni.new_pod(), cni.new_pod()
        try:
            cni.plexus_add(pa, [1])
            cni.bridges_add(pb, [1])
            (tp, _), (tr, _) = paired(
                i, partial(cni.exec, "plexus", "CHECK", cni.plexus_conf([1], prev=pa.results["plexus"]), pa),
                partial(cni.exec, "bridge", "CHECK", cni.bridge_conf(1, prev=pb.results["net1"]), pb, ifname="net1"))
            ts, _ = cni.exec("plexus", "STATUS", status_conf)
            if timed:
                chk_p.append(tp)
                chk_r.append(tr)
                status.append(ts)
            cni.plexus_del(pa, [1])
            cni.bridges_del(pb, [1])
        finally:
            cni.remove_pod(pa)
            cni.remove_pod(pb)
        if timed:
            cids.add(pa.cid[:12])
        ctx.progress("check/status", i, ctx.warmup + ctx.runs)
    ctx.res.add_latency("check", chk_p, chk_r, "bridge CHECK (1 network)", daemon=ctx.daemon_ms(since, "CHECK", cids),
                        what="plexus CHECK, cniVersion 1.0.0 with prevResult, pod with 1 network")
    ctx.res.add_latency("status", status, None, daemon=ctx.daemon_ms(since, "STATUS"),
                        what="plexus STATUS, cniVersion 1.1.0 (the reference bridge 1.1.1 has no STATUS)")
    ctx.verify_clean("check")


def churn_phase(ctx: Ctx, side: str, seconds: float, workers: int = 2) -> dict[str, Any]:
    """``workers`` threads, each: new netns, ADD a pod with 2 networks, DEL it, remove the netns; for ``seconds``."""
    cni = ctx.cni
    nets = [1, 2]
    lock = threading.Lock()
    done: list[float] = []  # per pod: ADD + DEL seconds (execs only)
    errors: list[BaseException] = []
    deadline = [0.0, 0.0]  # start, end: set by the barrier's action, before any worker is let go

    def begin() -> None:
        deadline[0] = time.perf_counter()
        deadline[1] = deadline[0] + seconds

    start_barrier = threading.Barrier(workers + 1, action=begin)

    def one_pod() -> float:
        pod = cni.new_pod()
        try:
            if side == "plexus":
                return cni.plexus_add(pod, nets) + cni.plexus_del(pod, nets)
            return cni.bridges_add(pod, nets) + cni.bridges_del(pod, nets)
        finally:
            cni.remove_pod(pod)

    def worker() -> None:
        try:
            one_pod()  # warm-up, not counted
            start_barrier.wait()
            while time.perf_counter() < deadline[1] and not ctx.stop.is_set() and not errors:
                t = one_pod()
                with lock:
                    done.append(t)
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:
            errors.append(exc)
            start_barrier.abort()

    threads = [threading.Thread(target=worker, name=f"churn-{side}-{w}", daemon=True) for w in range(workers)]
    for t in threads:
        t.start()
    try:
        start_barrier.wait()
    except threading.BrokenBarrierError:
        pass
    # CPU: every exec'd plugin (this process's children) and, for Plexus, its daemon
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    daemon = ctx.node.proc.pid if side == "plexus" and ctx.node.proc is not None else None
    daemon_cpu = cpu_seconds(daemon) if daemon else 0.0
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    except BaseException:
        ctx.stop.set()
        for t in threads:
            t.join(60)
        raise
    elapsed = time.perf_counter() - deadline[0]
    if errors:
        raise errors[0]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
           + ((cpu_seconds(daemon) - daemon_cpu) if daemon else 0.0))
    return {"pods": len(done), "seconds": elapsed, "pods_per_s": len(done) / elapsed, "workers": workers,
            "pod_cni_ms": summary(done) if done else None, "cpu_s_per_pod": cpu / len(done) if done else None}


CHURN_ROUNDS = 3  # each side's churn in rounds, the sides taking turns: a machine's drift weighs on both alike


def merged_churn(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's rounds as one: pods and seconds summed, CPU weighted by pods, the rounds' own rates kept."""
    pods = sum(p["pods"] for p in phases)
    seconds = sum(p["seconds"] for p in phases)
    cpu = sum((p["cpu_s_per_pod"] or 0.0) * p["pods"] for p in phases)
    return {"pods": pods, "seconds": seconds, "pods_per_s": pods / seconds, "workers": phases[0]["workers"],
            "cpu_s_per_pod": cpu / pods if pods else None, "rounds_pods_per_s": [p["pods_per_s"] for p in phases],
            "pod_cni_ms": [p["pod_cni_ms"] for p in phases]}


def sc_churn(ctx: Ctx) -> None:
    rounds = 1 if ctx.quick else CHURN_ROUNDS
    each = ctx.churn_seconds / rounds
    sides: dict[str, list[dict[str, Any]]] = {"plexus": [], "reference": []}
    for k in range(rounds):
        order = ("plexus", "reference") if k % 2 == 0 else ("reference", "plexus")  # A B, B A, A B
        for side in order:
            phases = sides[side]
            phases.append(churn_phase(ctx, side, each))
            log(f"  churn round {k + 1}/{rounds}: {side} {phases[-1]['pods_per_s']:.2f} pods/s in {each:g} s")
    p, r = merged_churn(sides["plexus"]), merged_churn(sides["reference"])
    ctx.res.throughput["churn"] = {
        "unit": "pods/s", "plexus": p["pods_per_s"], "reference": r["pods_per_s"], "ratio": p["pods_per_s"] / r["pods_per_s"],
        "cpu_s_per_pod": {"plexus": p["cpu_s_per_pod"], "reference": r["cpu_s_per_pod"]},
        "plexus_detail": p, "reference_detail": r,
        "what": f"2 workers: netns add, ADD (2 networks), DEL, netns del; reference = 2 bridge execs per ADD and per "
                f"DEL; {rounds} rounds per side, taking turns (A B, B A, A B)",
    }
    ctx.verify_clean("churn")


BURST_PODS = 200


def sc_burst(ctx: Ctx, pods: int = BURST_PODS) -> None:
    """``pods`` pods' ADDs exec'd at the same moment (a Deployment scaled up onto one node), then their DELs: every
    call must succeed; each call's latency, and the daemon's peak RSS over the burst (VmHWM, reset first)."""
    cni = ctx.cni
    if ctx.node.proc is None:
        raise BenchError("burst: the daemon is not running")
    pid = ctx.node.proc.pid
    made: list[Pod] = []
    try:
        made.extend(cni.new_pod() for _ in range(pods))
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")  # resets the peak RSS the kernel keeps (VmHWM) to the current one
        before = ctx.node.rss_kb()

        def at_once(call: Callable[[Pod], float]) -> list[float]:
            barrier = threading.Barrier(pods)
            times: list[float] = []
            errors: list[BaseException] = []

            def run(pod: Pod) -> None:
                try:
                    barrier.wait(60)
                    t = call(pod)
                    times.append(t)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=(p,), daemon=True) for p in made]
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)
            if errors:
                raise BenchError(f"burst: {len(errors)} of {pods} calls failed, first: {errors[0]}")
            return times

        began = time.perf_counter()
        adds = at_once(lambda pod: cni.plexus_add(pod, [3]))
        add_s = time.perf_counter() - began
        addresses = {p.results["plexus"]["ips"][0]["address"] for p in made}
        if len(addresses) != pods:
            raise BenchError(f"burst: {pods} pods got {len(addresses)} distinct addresses")
        began = time.perf_counter()
        dels = at_once(lambda pod: cni.plexus_del(pod, [3]))
        del_s = time.perf_counter() - began
        peak = peak_rss_kb(pid)
    finally:
        for pod in made:
            cni.remove_pod(pod)
    ctx.res.burst = {"pods": pods, "add": summary(adds), "del": summary(dels), "add_seconds": add_s,
                     "del_seconds": del_s, "rss_before_kb": before, "peak_rss_kb": peak,
                     "what": f"{pods} plexus ADD execs (1 network) released at once, then {pods} DELs; peak RSS: the "
                             "daemon's VmHWM over both"}
    ctx.verify_clean("burst")


def peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(line.split()[1] for line in fh if line.startswith("VmHWM:")))


def _pool_ref(name: str) -> Any:
    from ipamd.api import ipam_pb2 as pb

    return pb.PoolRef(kind="IPAddressPool", namespace=POD_NAMESPACE, name=name)


BATCH = 32  # operations per Leases stream message in the "batch" mode


class LeaseStream:
    """One client's ``Leases`` stream: a message out, its results back (lockstep)."""

    def __init__(self, stub: Any) -> None:
        import queue

        self._out: queue.Queue[Any] = queue.Queue()
        self._results = stub.Leases(iter(self._out.get, None), timeout=600)

    def send(self, ops: list[Any]) -> list[Any]:
        from ipamd.api import ipam_pb2 as pb

        self._out.put(pb.LeaseOps(ops=ops))
        results = list(next(self._results).results)
        failed = [r.error for r in results if r.HasField("error")]
        if failed:
            raise BenchError(f"Leases stream: {failed[0].msg}")
        return results

    def close(self) -> None:
        self._out.put(None)


def alloc_throughput(ctx: Ctx, clients: int, seconds: float, mode: str = "unary") -> dict[str, Any]:
    """Allocate+Release pairs per second: ``unary`` calls, a ``stream`` with one operation per message, or a
    stream with ``BATCH`` operations per message (``batch``)."""
    from ipamd.api import ipam_pb2 as pb

    pool = _pool_ref("pool-api")
    counts = [0] * clients
    errors: list[BaseException] = []
    deadline = [0.0, 0.0]  # start, end: set by the barrier's action, before any client is let go

    def begin() -> None:
        deadline[0] = time.perf_counter()
        deadline[1] = deadline[0] + seconds

    barrier = threading.Barrier(clients + 1, action=begin)

    def worker(w: int) -> None:
        channel = ctx.node.channel()
        try:
            stub = ctx.node.stub(channel)
            stream = LeaseStream(stub) if mode != "unary" else None
            n = 0

            def allocate(k: int) -> list[Any]:
                nonlocal n
                n += k
                asks = [pb.AllocateRequest(pool=pool, owner=f"tp{mode}{clients}-{w}-{n - j}") for j in range(k)]
                if stream is None:
                    return [stub.Allocate(asks[0], timeout=30)]
                return [r.lease for r in stream.send([pb.LeaseOp(allocate=a) for a in asks])]

            def release(leases: list[Any]) -> None:
                asks = [pb.ReleaseRequest(pool=pool, address=lease.address) for lease in leases]
                if stream is None:
                    answers = [stub.Release(asks[0], timeout=30)]
                else:
                    answers = [r.released for r in stream.send([pb.LeaseOp(release=a) for a in asks])]
                if not all(a.released for a in answers):
                    raise BenchError("a Release answered released=false")

            per = BATCH if mode == "batch" else 1

            def pairs() -> int:
                release(allocate(per))
                return per

            for _ in range(5):  # connect and warm up
                pairs()
            barrier.wait()
            while time.perf_counter() < deadline[1] and not errors:
                counts[w] += pairs()
            if stream is not None:
                stream.close()
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            channel.close()

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(clients)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - deadline[0]
    if errors:
        raise BenchError(f"gRPC Allocate/Release failed: {errors[0]}")
    return {"clients": clients, "mode": mode, "pairs": sum(counts), "seconds": elapsed,
            "pairs_per_s": sum(counts) / elapsed}


def fill_pool(ctx: Ctx, addresses: list[int], clients: int = 4) -> float:
    """Lease every address given (Allocate with an explicit address), ``clients`` channels at once."""
    import ipaddress

    from ipamd.api import ipam_pb2 as pb

    pool = _pool_ref("pool-fill")
    errors: list[BaseException] = []
    done = [0]
    lock = threading.Lock()

    def worker(chunk: list[int]) -> None:
        channel = ctx.node.channel()
        try:
            stub = ctx.node.stub(channel)
            for ip in chunk:
                if errors or ctx.stop.is_set():
                    return
                text = str(ipaddress.IPv4Address(ip))
                lease = stub.Allocate(pb.AllocateRequest(pool=pool, owner=f"fill-{ip}", address=text), timeout=60)
                if lease.address != text:
                    raise BenchError(f"asked for {text}, got {lease.address}")
                with lock:
                    done[0] += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            channel.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(addresses[w::clients],), daemon=True) for w in range(clients)]
    for t in threads:
        t.start()
    last = started
    try:
        while any(t.is_alive() for t in threads):
            threads[0].join(1) if threads[0].is_alive() else time.sleep(0.2)
            if time.perf_counter() - last > 10:
                last = time.perf_counter()
                log(f"    filled {done[0]}/{len(addresses)} ({done[0] / (last - started):.0f}/s)")
    except BaseException:
        ctx.stop.set()
        raise
    if errors:
        raise BenchError(f"filling the pool failed: {errors[0]}")
    return time.perf_counter() - started


def alloc_latency(ctx: Ctx, tag: str) -> dict[str, Any]:
    """Allocate (an Auto address) + Release of one more address, ``probes`` times; one channel."""
    from ipamd.api import ipam_pb2 as pb

    pool = _pool_ref("pool-fill")
    channel = ctx.node.channel()
    pairs: list[float] = []
    allocs: list[float] = []
    try:
        stub = ctx.node.stub(channel)
        for k in range(ctx.probes + 5):
            t0 = time.perf_counter()
            lease = stub.Allocate(pb.AllocateRequest(pool=pool, owner=f"probe-{tag}-{k}"), timeout=60)
            t1 = time.perf_counter()
            if not stub.Release(pb.ReleaseRequest(pool=pool, address=lease.address), timeout=60).released:
                raise BenchError(f"Release of {lease.address} answered released=false")
            t2 = time.perf_counter()
            if k >= 5:  # the first few warm the channel
                pairs.append(t2 - t0)
                allocs.append(t1 - t0)
    finally:
        channel.close()
    return {"pair": summary(pairs), "allocate": summary(allocs)}


def sc_ipam(ctx: Ctx) -> None:
    import ipaddress

    runs = {"ipam-alloc-1": (1, "unary"), "ipam-alloc-4": (4, "unary"), "ipam-stream-1": (1, "stream"),
            "ipam-batch-1": (1, "batch")}
    whats = {"unary": "unary Allocate and Release calls", "stream": "a Leases stream, one operation per message",
             "batch": f"a Leases stream, {BATCH} operations per message"}
    for name, (clients, mode) in runs.items():
        log(f"  ipam-alloc: Allocate+Release, {clients} client(s), {whats[mode]}, {ctx.ipam_seconds:g} s")
        got = alloc_throughput(ctx, clients, ctx.ipam_seconds, mode)
        ctx.res.throughput[name] = {
            "unit": "pairs/s", "plexus": got["pairs_per_s"], "reference": None, "ratio": None, "detail": got,
            "what": f"gRPC Allocate+Release pairs per second, {clients} client(s), {whats[mode]}",
        }
    unary = ctx.res.throughput["ipam-alloc-1"]["plexus"]
    for name in ("ipam-stream-1", "ipam-batch-1"):
        ctx.res.throughput[name]["ratio_vs_unary"] = ctx.res.throughput[name]["plexus"] / unary
    net = ipaddress.IPv4Network(f"{FILL_POOL_BASE}/{ctx.fill_prefix}")
    usable = list(range(int(net.network_address) + 1, int(net.broadcast_address)))
    rng = random.Random(20251127)
    rng.shuffle(usable)
    n10, n95 = round(len(usable) * 0.10), round(len(usable) * 0.95)
    lat = {}
    filled = 0
    for frac, upto in ((0.10, n10), (0.95, n95)):
        log(f"  ipam-alloc: filling {net} to {frac:.0%} ({upto} of {len(usable)} addresses, random order)")
        secs = fill_pool(ctx, usable[filled:upto])
        log(f"    {upto - filled} Allocates in {secs:.1f} s ({(upto - filled) / secs:.0f}/s)")
        filled = upto
        lat[frac] = alloc_latency(ctx, f"{int(frac * 100)}")
        lat[frac]["fill_seconds"] = secs
        lat[frac]["leases"] = upto
    for frac in (0.10, 0.95):
        s = lat[frac]["pair"]
        ctx.res.latency[f"alloc@{int(frac * 100)}%"] = {
            **s, "reference": None, "ratio": None, "allocate_only": lat[frac]["allocate"],
            "fill_seconds": lat[frac]["fill_seconds"], "leases": lat[frac]["leases"],
            "what": f"gRPC Allocate+Release of one more address in {net} with {lat[frac]['leases']} leases",
        }
    ratio = lat[0.95]["pair"]["median_ms"] / lat[0.10]["pair"]["median_ms"]
    ctx.res.latency["alloc@95%"]["ratio_vs_10%"] = ratio
    ctx.res.throughput["alloc-fill-ratio"] = {
        "unit": "x", "plexus": ratio, "reference": None, "ratio": None,
        "what": f"median Allocate+Release latency at 95% fill / at 10% fill ({net})",
    }
    ctx.res.rss["after_fill_95_kb"] = ctx.node.rss_kb()


def sc_rss(ctx: Ctx, leases: int = 1000) -> None:
    from ipamd.api import ipam_pb2 as pb

    before = ctx.node.rss_kb()
    pool = _pool_ref("pool-rss")
    channel = ctx.node.channel()
    started = time.perf_counter()
    try:
        stub = ctx.node.stub(channel)
        for k in range(leases):
            stub.Allocate(pb.AllocateRequest(pool=pool, owner=f"rss-{k}"), timeout=60)
    finally:
        channel.close()
    secs = time.perf_counter() - started
    time.sleep(0.5)
    after = ctx.node.rss_kb()
    usage = {p.pool: p for p in ctx.node.stub().ListPools(pb.ListPoolsRequest(), timeout=30).pools}
    used = usage[f"IPAddressPool/{POD_NAMESPACE}/pool-rss"].used
    if used != leases:
        raise BenchError(f"pool-rss has {used} leases, expected {leases}")
    ctx.res.rss.update({"before_leases_kb": before, "after_1000_leases_kb": after, "leases": leases,
                        "allocate_seconds": secs})


# -- report ---------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "python_executable": sys.executable, "cpu_model": cpu,
            "hostname": platform.node(), "loadavg_at_start": list(os.getloadavg())}


def git_info() -> dict[str, Any]:
    """The code the daemon was started from: commit, and a digest of uncommitted changes to it."""
    def git(*args: str) -> str:
        p = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return p.stdout if p.returncode == 0 else ""

    diff = git("diff", "HEAD", "--", "cni", "ipamd", "proto", "packaging")
    return {"commit": git("rev-parse", "HEAD").strip(), "uncommitted_changes": bool(diff),
            "uncommitted_diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else ""}


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[list[str]], header: list[str]) -> str:
    cells = [header] + rows
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


LATENCY_ORDER = ["version", "version-vs-interpreter", "add-1", "del-1", "add-2", "del-2", "add-4", "del-4",
                 "add-chained", "del-chained",
                 "add-delegate-2", "del-delegate-2", "add-delegate-4", "del-delegate-4",
                 "add-ipam", "del-ipam", "add-delegate-ipam", "del-delegate-ipam", "add-delegate-ipam-exec",
                 "del-delegate-ipam-exec", "check", "status", "alloc@10%", "alloc@95%"]


def render(res: Results) -> str:
    out = []
    rows = []
    for name in LATENCY_ORDER:
        r = res.latency.get(name)
        if r is None:
            continue
        ref = r.get("reference")
        rows.append([name, fmt(r["median_ms"]), fmt(r["p90_ms"]), fmt(r["max_ms"]), str(r["runs"]),
                     fmt(ref["median_ms"] if ref else None), fmt(r.get("ratio") or r.get("ratio_vs_10%"), ".2f")])
    if rows:
        out.append(table(rows, ["scenario", "median ms", "p90 ms", "max ms", "runs", "ref median ms", "ratio"]))
        if "alloc@95%" in res.latency:
            out.append("(alloc@95% ratio: median at 95% fill / median at 10% fill)")
    rows = []
    for name in LATENCY_ORDER:
        r = res.latency.get(name)
        if r is None or not r.get("daemon"):
            continue
        d = r["daemon"]
        ex = r.get("plexus_exec") or r
        rows.append([name, fmt(ex["median_ms"]), fmt(d["median_ms"]), fmt(d["p90_ms"]), fmt(ex["median_ms"] - d["median_ms"])])
    if rows:
        out.append("\nwhere a Plexus call's time goes (daemon = its own per-call log line):")
        out.append(table(rows, ["scenario", "plexus exec median ms", "daemon median ms", "daemon p90 ms",
                                "exec - daemon ms"]))
    rows = []
    for name, t in res.throughput.items():
        rows.append([name, fmt(t["plexus"], ".2f"), fmt(t.get("reference"), ".2f"), t["unit"],
                     fmt(t.get("ratio") or t.get("ratio_vs_unary"), ".2f")])
        cpu = t.get("cpu_s_per_pod")
        if cpu:
            rows.append([f"{name} CPU per pod", fmt(cpu["plexus"] * 1000, ".1f"), fmt(cpu["reference"] * 1000, ".1f"),
                         "ms", fmt(cpu["plexus"] / cpu["reference"], ".2f")])
    for key, label in (("idle_kb", "rss idle"), ("before_leases_kb", "rss before leases"),
                       ("after_1000_leases_kb", "rss 1000 leases"), ("after_fill_95_kb", "rss after 95% fill"),
                       ("end_kb", "rss at end")):
        if key in res.rss:
            rows.append([label, f"{res.rss[key] / 1024:.1f}", "-", "MiB", "-"])
    if rows:
        out.append("")
        out.append(table(rows, ["metric", "plexus", "reference", "unit", "ratio"]))
        if "ipam-stream-1" in res.throughput:
            out.append("(ipam-stream-1 and ipam-batch-1 ratio: pairs/s against ipam-alloc-1, unary, same run)")
    if res.burst:
        b = res.burst
        out.append(f"\nburst: {b['pods']} ADDs at once: p50 {b['add']['median_ms']:.0f} ms, p99 {b['add']['p99_ms']:.0f} "
                   f"ms, all in {b['add_seconds']:.1f} s; {b['pods']} DELs at once: p50 {b['del']['median_ms']:.0f} ms, "
                   f"p99 {b['del']['p99_ms']:.0f} ms; the daemon's peak RSS {b['peak_rss_kb'] / 1024:.0f} MiB "
                   f"({b['rss_before_kb'] / 1024:.0f} MiB before)")
    return "\n".join(out)


# -- main -----------------------------------------------------------------------------------------
def default_plexus() -> str:
    for cand in ("/opt/cni/bin/plexus", str(REPO / "dist" / "plexus" / "plexus")):
        if os.path.exists(cand):
            return cand
    return ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plexus", default=default_plexus(),
                   help="the plexus plugin to exec (default: /opt/cni/bin/plexus, else dist/plexus/plexus)")
    p.add_argument("--ref-dir", default="/usr/lib/cni", help="where the reference bridge/host-local plugins are")
    p.add_argument("--runs", type=int, default=None, help="timed runs per latency scenario (default 30; --quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 3; --quick 1)")
    p.add_argument("--quick", action="store_true", help="few runs, short churn, small fill pool: a smoke test")
    p.add_argument("--only", default="", help=f"comma-separated scenarios: {', '.join(SCENARIOS)} "
                                              "(or add-N, del-N, add-chained, status, ...)")
    p.add_argument("--churn-seconds", type=float, default=None, help="seconds of churn per side (default 30; --quick 3)")
    p.add_argument("--ipam-seconds", type=float, default=None, help="seconds per gRPC throughput run (default 5; --quick 1)")
    p.add_argument("--probes", type=int, default=None, help="Allocate+Release probes per fill level (default 200; --quick 20)")
    p.add_argument("--fill-prefix", type=int, default=None,
                   help="prefix length of the fill pool 198.19.0.0/N (default 16; --quick 20)")
    p.add_argument("--reconcile-interval", type=float, default=30.0, help="the daemon's --reconcile-interval")
    p.add_argument("--del-mode", choices=("sync", "background"), default="sync",
                   help="the daemon's --del-mode (the DaemonSet runs background; default %(default)s)")
    p.add_argument("--json", default="bench-results/latest.json", help="write the figures here (default %(default)s)")
    a = p.parse_args(argv)
    q = a.quick
    a.runs = a.runs if a.runs is not None else (3 if q else 30)
    a.warmup = a.warmup if a.warmup is not None else (1 if q else 3)
    a.churn_seconds = a.churn_seconds if a.churn_seconds is not None else (3.0 if q else 30.0)
    a.ipam_seconds = a.ipam_seconds if a.ipam_seconds is not None else (1.0 if q else 5.0)
    a.probes = a.probes if a.probes is not None else (20 if q else 200)
    a.fill_prefix = a.fill_prefix if a.fill_prefix is not None else (20 if q else 16)
    if a.runs < 1 or a.warmup < 0 or not 16 <= a.fill_prefix <= 28:
        p.error("--runs must be >= 1, --warmup >= 0, --fill-prefix between 16 and 28")
    selected: list[str] = []
    a.add_sizes = ADD_SIZES
    sizes: set[int] = set()
    for item in filter(None, (s.strip() for s in a.only.split(","))):
        name = ALIASES.get(item, item)
        if name not in SCENARIOS:
            p.error(f"unknown scenario {item!r}; known: {', '.join(SCENARIOS)}")
        if item[:4] in ("add-", "del-") and item[4:].isdigit():
            sizes.add(int(item[4:]))
        if name not in selected:
            selected.append(name)
    if sizes:
        a.add_sizes = tuple(sorted(sizes))
    a.scenarios = [s for s in SCENARIOS if s in selected] if selected else list(SCENARIOS)
    return a


class Interrupted(BaseException):
    pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("bench: needs root (network namespaces)")
        return 2
    if not args.plexus or not os.access(args.plexus, os.X_OK):
        log(f"bench: no plexus plugin at {args.plexus or '/opt/cni/bin/plexus or dist/plexus/plexus'} (run make build)")
        return 2
    for plugin in ("bridge", "host-local"):
        if not os.access(os.path.join(args.ref_dir, plugin), os.X_OK):
            log(f"bench: the reference plugin {plugin} is not in {args.ref_dir} (apt-get install containernetworking-plugins)")
            return 2
    args.plexus = os.path.abspath(args.plexus)

    def on_signal(signum: int, frame: Any) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    started = time.time()
    machine_start = machine()
    code = git_info()  # now, before the daemon starts: others may be editing the tree meanwhile
    load = machine_start["loadavg_at_start"][0]
    if load > 0.5 * machine_start["nproc"]:
        log(f"bench: warning: load average {load:.2f} on {machine_start['nproc']} CPUs; other work will skew the figures")
    res = Results()
    node = BenchNode(reconcile_interval=args.reconcile_interval)
    rc = 0
    failure = ""
    try:
        node.enter()  # from here on, this process and everything it starts live in the node namespace
        node.write_objects(objects(args.fill_prefix, str(node.hostlocal_dir), str(node.ipam_socket)))
        cni = Cni(node, args.plexus, args.ref_dir)
        versions = check_version_support(cni)
        log(f"bench: node {node.name}, plexus {args.plexus}, reference {args.ref_dir}/bridge; starting plexus-ipamd")
        node.start_daemon(extra_args=("--del-mode", args.del_mode))
        from ipamd.api import ipam_pb2 as pb

        problems = node.stub().Sync(pb.SyncRequest(), timeout=30).problems
        if problems:
            raise BenchError(f"the daemon does not serve the bench's objects: {[p.message for p in problems]}")
        time.sleep(1.0)
        res.rss["idle_kb"] = node.rss_kb()
        ctx = Ctx(node, cni, res, args.runs, args.warmup, args.quick, args.churn_seconds, args.ipam_seconds,
                  args.probes, args.fill_prefix)
        table_fns: dict[str, Callable[[], None]] = {
            "version": lambda: sc_version(ctx), "add": lambda: sc_add(ctx, args.add_sizes),
            "chained": lambda: sc_chained(ctx), "delegate": lambda: sc_delegate(ctx), "check": lambda: sc_check(ctx),
            "plexus-ipam": lambda: sc_plexus_ipam(ctx),
            "churn": lambda: sc_churn(ctx), "burst": lambda: sc_burst(ctx),
            "rss": lambda: sc_rss(ctx), "ipam-alloc": lambda: sc_ipam(ctx),
        }
        for name in args.scenarios:
            t0 = time.perf_counter()
            log(f"bench: {name}")
            table_fns[name]()
            node.check_daemon()
            log(f"bench: {name} done in {time.perf_counter() - t0:.1f} s")
        res.rss["end_kb"] = node.rss_kb()
        res.machine_end = {"loadavg_at_end": list(os.getloadavg())}
    except (KeyboardInterrupt, Interrupted) as exc:
        failure = f"interrupted ({str(exc) or 'SIGINT'})"
        rc = 130
    except BenchError as exc:
        failure = str(exc)
        rc = 1
    except Exception as exc:
        import traceback

        failure = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        if node.proc is not None:
            failure += "\n" + node.daemon_output(15)
        rc = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        leftovers = node.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if leftovers:
        log("bench: cleanup incomplete: " + "; ".join(leftovers))
        rc = rc or 1
    if failure:
        log(f"bench: FAILED: {failure}")
        return rc
    print(render(res))
    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": {**machine_start, **res.machine_end},
        "plexus": {**describe_plugin(args.plexus), "daemon_code": code},
        "reference": {**describe_plugin(os.path.join(args.ref_dir, "bridge")), "package": _ref_package()},
        "supported_versions": versions,
        "config": {"runs": args.runs, "warmup": args.warmup, "quick": args.quick, "scenarios": args.scenarios,
                   "add_sizes": list(args.add_sizes), "churn_seconds": args.churn_seconds,
                   "ipam_seconds": args.ipam_seconds, "probes": args.probes,
                   "fill_pool": f"{FILL_POOL_BASE}/{args.fill_prefix}", "reconcile_interval": args.reconcile_interval,
                   "order": "Plexus and reference alternate per run: A B, then B A",
                   "timing": "time.perf_counter() around subprocess.run, from inside the node namespace"},
        "latency": res.latency, "throughput": res.throughput, "rss": res.rss, "burst": res.burst,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    log(f"bench: wrote {path}")
    return rc


def _ref_package() -> str:
    p = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}", "containernetworking-plugins"],
                       capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else ""


if __name__ == "__main__":
    sys.exit(main())

"""The daemon SIGKILLed in the middle of ADD and DEL: after a restart nothing is leaked or duplicated.

``PLEXUS_FAULT=<step>`` makes plexus-ipamd SIGKILL itself at a named step of ADD or DEL. The plugin
then reports an error (the daemon's socket closed under it), the runtime tries again later, and the
restarted daemon must have finished or rolled back the half-done attachment: no lease held for it,
no address handed out twice, no link left on the node or in the pod, and the retried ADD works.
Also: a second crash while the restart rolls the first back, a pod deleted around the crash, and a
churn of ADD/DEL from two threads with the daemon SIGKILLed once in the middle.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest

from ipamd.sources.objectdir import object_file
from tests.harness import CniResult, Node, links_in, pod_manifest

NS = "my-namespace"
SPEC = [{"type": "Network", "name": "net-a"}, {"type": "Network", "name": "net-b"}]
POD_IFACES = {"net1", "net2"}
ADD_STEPS = ["add:recorded", "add:leased", "add:built"]
DEL_STEPS = ["del:marked", "del:unlinked", "del:released"]
DEAD_DAEMON_CODES = {11, 101, 999}


# -- helpers ---------------------------------------------------------------------------------------
def restart(node: Node, env: dict[str, str] | None = None) -> None:
    """Start the daemon again after it died. A killed daemon leaves its socket files behind, and
    ``Node.start`` takes their existence for readiness, so they go first."""
    if node.proc is not None and node.proc.poll() is None:
        node.stop()
    node.proc = None
    node.socket.unlink(missing_ok=True)
    node.grpc_socket.unlink(missing_ok=True)
    node.start(env=env)


@dataclass
class Live:
    """An attachment the runtime believes exists: its container ID, netns and CNI result."""

    pod: str
    cid: str
    netns: str
    result: dict[str, Any]

    @property
    def host_links(self) -> set[str]:
        return {i["name"] for i in self.result["interfaces"] if not i.get("sandbox")}

    @property
    def addresses(self) -> dict[str, list[str]]:
        """Pod interface name → its CIDRs, as the result says."""
        out: dict[str, list[str]] = {}
        for ip in self.result.get("ips", []):
            out.setdefault(self.result["interfaces"][ip["interface"]]["name"], []).append(ip["address"])
        return out

    @property
    def plain_addresses(self) -> set[str]:
        return {a.split("/")[0] for cidrs in self.addresses.values() for a in cidrs}


def add(node: Node, pod: str, cid: str, netns: str) -> CniResult:
    return node.cni("ADD", cid, netns, pod=(NS, pod), conf=node.conf("1.1.0"))


def delete(node: Node, pod: str, cid: str, netns: str) -> CniResult:
    return node.cni("DEL", cid, netns, pod=(NS, pod), conf=node.conf("1.1.0"))


def assert_consistent(node: Node, live: list[Live], gone: dict[str, str], strict: bool = False) -> None:
    """Kernel, leases and statuses agree with what the runtime believes.

    ``live``: attachments that exist; ``gone``: pod → netns of pods with no attachment.
    ``strict``: every pod is live again, so every lease must be in use by a live attachment.
    """
    live_pods = {lv.pod for lv in live}
    assert not live_pods & set(gone)
    # -- kernel: node veths are exactly the live attachments', pods hold exactly their interfaces
    assert node.plx_links() == set().union(*(lv.host_links for lv in live)), node.host_links()
    seen: list[str] = []
    for lv in live:
        links = links_in(lv.netns)
        assert set(links) == {"lo"} | POD_IFACES, (lv.pod, links)
        for name in POD_IFACES:
            assert links[name]["up"], (lv.pod, name)
            assert links[name]["addresses"] == lv.addresses[name], (lv.pod, name, links[name], lv.result)
            seen += [a.split("/")[0] for a in links[name]["addresses"]]
    dup = [a for a, n in Counter(seen).items() if n > 1]
    assert not dup, f"addresses configured in two pods: {dup}"
    for pod, netns in gone.items():
        assert set(links_in(netns)) == {"lo"}, (pod, links_in(netns))

    # -- leases: every used lease belongs to a live attachment, every live address is leased to its pod
    leases = node.leases()
    by_address = {lease.address: lease for lease in leases}
    assert len(by_address) == len(leases), "one lease per address"
    for lv in live:
        for a in lv.plain_addresses:
            assert a in by_address, (lv.pod, a, leases)
            lease = by_address[a]
            assert lease.state == "bound" and list(lease.pods) == [f"{NS}/{lv.pod}"], (lv.pod, lease)
    live_addresses = set().union(*(lv.plain_addresses for lv in live))
    ips = node.ipaddresses()
    for lease in leases:
        if lease.address in live_addresses:
            continue
        assert not lease.pods, f"lease {lease.address} is used by {list(lease.pods)}, which has no attachment"
        assert not strict, f"leaked lease {lease.address} held by {lease.holder!r} ({lease.state})"
        if lease.state == "bound":
            # only a pod that still exists keeps its Auto IPAddress (and its address) between sandboxes
            holder = lease.holder.removeprefix("IPAddress/")
            assert holder in ips, f"lease {lease.address} held by {lease.holder!r}, which does not exist"
            assert any(holder.startswith(f"{NS}/{pod}-net") for pod in gone), (lease, gone)
    for key, ip in ips.items():
        assert set(ip["usedByPods"]) <= {f"{NS}/{p}" for p in live_pods}, (key, ip)
        if ip.get("address"):
            lease = by_address.get(ip["address"])
            assert lease is not None and lease.holder == f"IPAddress/{key}", (key, ip, lease)
    per_pod = Counter(lease.holder.removeprefix(f"IPAddress/{NS}/").rsplit("-", 2)[0]
                      for lease in leases if lease.holder)
    assert all(n <= len(SPEC) for n in per_pod.values()), f"a pod holds more addresses than interfaces: {per_pod}"

    # -- statuses: the live pods report their interfaces, the others nothing
    for lv in live:
        status = node.pod_status(NS, lv.pod)
        assert status is not None, lv.pod
        assert {s["ifName"] for s in status} == POD_IFACES, (lv.pod, status)
        reported = {c["address"] for s in status for c in s["ipAddressConfigs"]}
        assert reported == lv.plain_addresses, (lv.pod, status, lv.result)
    for pod in gone:
        assert node.pod_status(NS, pod) is None, pod


def gc(node: Node, live: list[Live]) -> CniResult:
    conf = node.conf("1.1.0", **{"cni.dev/valid-attachments": [{"containerID": lv.cid, "ifname": "eth0"}
                                                                for lv in live]})
    return node.cni("GC", conf=conf, ifname="")


def check(node: Node, lv: Live) -> CniResult:
    return node.cni("CHECK", lv.cid, lv.netns, pod=(NS, lv.pod), conf=node.conf("1.1.0", prevResult=lv.result))


def _died(node: Node, res: CniResult, step: str) -> None:
    assert not res.ok and res.code in DEAD_DAEMON_CODES, (step, res)
    assert node.wait_exit(15) == -signal.SIGKILL, f"the daemon did not kill itself at {step}"
    assert f"fault injection: killing the daemon at {step}" in node.log_text()
    node.proc = None


# -- (a) a fault at every step ---------------------------------------------------------------------
@pytest.mark.netns
@pytest.mark.parametrize("step", ADD_STEPS)
def test_crash_during_add(node: Node, step: str) -> None:
    node.apply([pod_manifest(p, SPEC) for p in ("bystander", "app")])
    by_ns, app_ns = node.pod_netns("bystander"), node.pod_netns("app")
    first = add(node, "bystander", "c-by", by_ns)
    assert first.ok, first
    bystander = Live("bystander", "c-by", by_ns, first.json)

    restart(node, env={"PLEXUS_FAULT": step})
    _died(node, add(node, "app", "c-app", app_ns), step)
    restart(node)
    assert_consistent(node, [bystander], {"app": app_ns})

    # the runtime DELs the failed ADD, and may GC with what it knows to exist
    dele = delete(node, "app", "c-app", app_ns)
    assert dele.ok, dele
    sweep = gc(node, [bystander])
    assert sweep.ok, sweep
    assert_consistent(node, [bystander], {"app": app_ns})
    assert check(node, bystander).ok

    retry = add(node, "app", "c-app", app_ns)
    assert retry.ok, retry
    app = Live("app", "c-app", app_ns, retry.json)
    assert {n for n, a in app.addresses.items() if a} == POD_IFACES, retry.json
    assert_consistent(node, [bystander, app], {}, strict=True)
    assert len(node.leases()) == 4
    assert check(node, app).ok and check(node, bystander).ok


@pytest.mark.netns
@pytest.mark.parametrize("step", DEL_STEPS)
def test_crash_during_del(node: Node, step: str) -> None:
    node.apply([pod_manifest(p, SPEC) for p in ("bystander", "app")])
    by_ns, app_ns = node.pod_netns("bystander"), node.pod_netns("app")
    first, second = add(node, "bystander", "c-by", by_ns), add(node, "app", "c-app", app_ns)
    assert first.ok and second.ok, (first, second)
    bystander = Live("bystander", "c-by", by_ns, first.json)
    before = Live("app", "c-app", app_ns, second.json)

    restart(node, env={"PLEXUS_FAULT": step})
    _died(node, delete(node, "app", "c-app", app_ns), step)
    restart(node)
    assert_consistent(node, [bystander], {"app": app_ns})

    again = delete(node, "app", "c-app", app_ns)  # the runtime retries the DEL
    assert again.ok and again.stdout == "", again
    sweep = gc(node, [bystander])
    assert sweep.ok, sweep
    assert_consistent(node, [bystander], {"app": app_ns})
    assert check(node, bystander).ok

    retry = add(node, "app", "c-app-2", app_ns)
    assert retry.ok, retry
    app = Live("app", "c-app-2", app_ns, retry.json)
    assert app.plain_addresses == before.plain_addresses, "the pod keeps its Auto addresses"
    assert_consistent(node, [bystander, app], {}, strict=True)
    assert len(node.leases()) == 4
    assert check(node, app).ok and check(node, bystander).ok


@pytest.mark.netns
@pytest.mark.parametrize("step", ["del:marked", "del:unlinked"])
def test_crash_during_recovery(node: Node, step: str) -> None:
    """Killed in ADD, then killed again while the restart rolls that ADD back: the next start finishes it."""
    node.apply([pod_manifest(p, SPEC) for p in ("bystander", "app")])
    by_ns, app_ns = node.pod_netns("bystander"), node.pod_netns("app")
    first = add(node, "bystander", "c-by", by_ns)
    assert first.ok, first
    bystander = Live("bystander", "c-by", by_ns, first.json)
    restart(node, env={"PLEXUS_FAULT": "add:built"})
    _died(node, add(node, "app", "c-app", app_ns), "add:built")
    with pytest.raises(RuntimeError, match="exited"):
        restart(node, env={"PLEXUS_FAULT": step})  # recovery tears the ADD down and dies at `step`
    assert node.log_text().count(f"fault injection: killing the daemon at {step}") == 1
    node.proc = None
    restart(node)
    assert_consistent(node, [bystander], {"app": app_ns})
    assert delete(node, "app", "c-app", app_ns).ok
    retry = add(node, "app", "c-app", app_ns)
    assert retry.ok, retry
    assert_consistent(node, [bystander, Live("app", "c-app", app_ns, retry.json)], {}, strict=True)


@pytest.mark.netns
def test_crash_during_add_then_pod_deleted(node: Node) -> None:
    """A pod deleted while its ADD was half done: after the restart its addresses go to quarantine."""
    node.apply([pod_manifest("app", SPEC)])
    app_ns = node.pod_netns("app")
    restart(node, env={"PLEXUS_FAULT": "add:built"})
    _died(node, add(node, "app", "c-app", app_ns), "add:built")
    node.delete([pod_manifest("app", SPEC)])
    restart(node)
    node.sync()
    assert_consistent(node, [], {"app": app_ns})
    assert all(lease.state == "orphaned" and not lease.holder for lease in node.leases()), node.leases()
    assert node.ipaddresses() == {}
    assert delete(node, "app", "c-app", app_ns).ok


@pytest.mark.netns
def test_crash_during_del_of_deleted_pod(node: Node) -> None:
    """The usual order in a cluster: the Pod object goes, then the runtime DELs; the daemon dies in the DEL."""
    node.apply([pod_manifest(p, SPEC) for p in ("bystander", "app")])
    by_ns, app_ns = node.pod_netns("bystander"), node.pod_netns("app")
    first, second = add(node, "bystander", "c-by", by_ns), add(node, "app", "c-app", app_ns)
    assert first.ok and second.ok, (first, second)
    bystander = Live("bystander", "c-by", by_ns, first.json)
    app_addresses = Live("app", "c-app", app_ns, second.json).plain_addresses
    restart(node, env={"PLEXUS_FAULT": "del:unlinked"})
    os.unlink(object_file(str(node.objects), "Pod", NS, "app"))  # no Sync: the DEL may come first
    _died(node, delete(node, "app", "c-app", app_ns), "del:unlinked")
    restart(node)
    node.sync()
    assert delete(node, "app", "c-app", app_ns).ok
    assert_consistent(node, [bystander], {"app": app_ns})
    leases = {lease.address: lease for lease in node.leases()}
    assert all(leases[a].state == "orphaned" for a in app_addresses), leases
    assert check(node, bystander).ok


# -- (b) churn from two threads, one SIGKILL in the middle ------------------------------------------
@dataclass
class PodState:
    name: str
    netns: str
    live: Live | None = None
    cids: list[str] = field(default_factory=list)  # every container ID ever used for this pod
    n: int = 0

    def new_cid(self) -> str:
        self.n += 1
        cid = f"{self.name}-sandbox-{self.n}"
        self.cids.append(cid)
        return cid


class Runtime:
    """What a runtime does about a dead daemon: code 11 means try again later."""

    RETRY_FOR_S = 60.0

    def __init__(self, node: Node) -> None:
        self.node = node
        self.ops = 0
        self.unavailable = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def _until_ok(self, call: Callable[[], CniResult], what: str) -> CniResult | None:
        deadline = time.monotonic() + self.RETRY_FOR_S
        while True:
            res = call()
            if res.ok:
                return res
            if res.code not in DEAD_DAEMON_CODES or time.monotonic() > deadline:
                with self.lock:
                    self.errors.append(f"{what}: {res}")
                return None
            with self.lock:
                self.unavailable += 1
            time.sleep(0.1)

    def bring_up(self, pod: PodState) -> None:
        """ADD a new sandbox; a failed one is DELeted (as kubelet tears it down) and a new one tried."""
        deadline = time.monotonic() + self.RETRY_FOR_S
        while time.monotonic() < deadline:
            cid = pod.new_cid()
            res = add(self.node, pod.name, cid, pod.netns)
            if res.ok:
                pod.live = Live(pod.name, cid, pod.netns, res.json)
                return
            if res.code not in DEAD_DAEMON_CODES:
                with self.lock:
                    self.errors.append(f"ADD {pod.name}/{cid}: {res}")
                return
            with self.lock:
                self.unavailable += 1
            self._until_ok(partial(delete, self.node, pod.name, cid, pod.netns), f"DEL {pod.name}/{cid}")
            time.sleep(0.1)
        with self.lock:
            self.errors.append(f"ADD {pod.name}: daemon unavailable for {self.RETRY_FOR_S}s")

    def tear_down(self, pod: PodState) -> None:
        assert pod.live is not None
        cid = pod.live.cid
        if self._until_ok(partial(delete, self.node, pod.name, cid, pod.netns), f"DEL {pod.name}/{cid}"):
            pod.live = None

    def churn(self, pods: list[PodState], ops: int, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(ops):
            pod = rng.choice(pods)
            if pod.live is None:
                self.bring_up(pod)
            else:
                self.tear_down(pod)
            with self.lock:
                self.ops += 1


@pytest.mark.netns
def test_churn_with_sigkill(node: Node) -> None:
    names = [f"p{i}" for i in range(8)]
    node.apply([pod_manifest(p, SPEC) for p in names])
    pods = [PodState(p, node.pod_netns(p)) for p in names]
    runtime = Runtime(node)
    threads = [threading.Thread(target=runtime.churn, args=(pods[i::2], 20, 1000 + i), name=f"churn-{i}")
               for i in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while runtime.ops < 16 and time.monotonic() < deadline:
        time.sleep(0.02)
    node.kill()
    time.sleep(0.5)  # calls in this window find no daemon
    restart(node)
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert runtime.errors == [], runtime.errors
    assert runtime.ops == 40
    assert runtime.unavailable > 0, "some calls should have found the daemon dead"

    # the runtime settles: DEL every sandbox of the pods that should be down, retry ADD of the live ones
    for pod in pods:
        if pod.live is None:
            for cid in pod.cids:
                dele = delete(node, pod.name, cid, pod.netns)
                assert dele.ok, (pod.name, cid, dele)
        else:
            again = add(node, pod.name, pod.live.cid, pod.netns)
            assert again.ok, again
            assert again.json == pod.live.result, "a repeated ADD returns the same result"
    live = [pod.live for pod in pods if pod.live is not None]
    down = {pod.name: pod.netns for pod in pods if pod.live is None}
    assert live and down, "the churn should leave some pods up and some down"
    assert_consistent(node, live, down)
    for lv in live:
        assert check(node, lv).ok, lv.pod

    # the pods that are down are deleted: their addresses go to quarantine, the live ones keep theirs
    node.delete([pod_manifest(p, SPEC) for p in down])
    node.sync()
    assert_consistent(node, live, down)
    bound = {lease.address for lease in node.leases() if lease.state == "bound"}
    assert bound == set().union(*(lv.plain_addresses for lv in live))
    orphaned = [lease for lease in node.leases() if lease.state != "bound"]
    assert all(not lease.holder and not lease.pods for lease in orphaned), orphaned
    assert len(orphaned) == len(SPEC) * len([p for p in pods if p.name in down and p.n]), orphaned

"""A burst of 200 pods started at once against one daemon (the exec'd plugin, 200 processes at the same moment, as
a scale-up of a Deployment gives a node): every ADD succeeds with its own address and its interface in its pod,
nothing times out, the daemon's memory stays bounded; then 200 DELs at once leave nothing behind."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tests.harness import CniResult, Node, links_in, pod_manifest

NS = "my-namespace"
PODS = 200
PEAK_RSS_BOUND_MIB = 400  # idle ~60 MiB; a daemon holding every call's work at once would grow with the burst


def at_once(names: list[str], call: Any) -> dict[str, CniResult]:
    """``call(name)`` from one thread per name, released together."""
    barrier = threading.Barrier(len(names))
    out: dict[str, CniResult] = {}

    def run(name: str) -> None:
        barrier.wait()
        out[name] = call(name)

    threads = [threading.Thread(target=run, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return out


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


@pytest.mark.netns
def test_a_burst_of_200_concurrent_adds_then_dels(node: Node) -> None:
    names = [f"burst-{i}" for i in range(PODS)]
    node.apply([pod_manifest(n, [{"type": "Network", "name": "net-b"}]) for n in names])
    paths = {n: node.pod_netns(n) for n in names}
    adds = at_once(names, lambda n: node.cni("ADD", f"c-{n}", paths[n], pod=(NS, n), timeout=180))
    failed = {n: r for n, r in adds.items() if not r.ok}
    assert len(adds) == PODS and not failed, (len(failed), list(failed.items())[:3])
    addresses = {n: r.json["ips"][0]["address"] for n, r in adds.items()}
    assert len(set(addresses.values())) == PODS, "every pod its own address"
    for n in names:
        assert links_in(paths[n])["net1"]["addresses"] == [addresses[n]], n
    assert node.proc is not None
    peak = peak_rss_mib(node.proc.pid)
    print(f"\ndaemon peak RSS after {PODS} concurrent ADDs: {peak:.0f} MiB")
    assert peak < PEAK_RSS_BOUND_MIB, f"the daemon grew to {peak:.0f} MiB"

    dels = at_once(names, lambda n: node.cni("DEL", f"c-{n}", paths[n], pod=(NS, n), timeout=180))
    assert all(r.ok for r in dels.values()), [r for r in dels.values() if not r.ok][:3]
    assert not node.plx_links(), "no veth left on the node"
    assert all(set(links_in(paths[n])) == {"lo"} for n in names)
    assert all(lease.pods == [] for lease in node.leases()), "no lease left in use"

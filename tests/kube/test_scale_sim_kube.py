"""The scale simulation as a test (issue 12's proof): 50 simulated nodes churn 1,000 pods through one pool of the real
test API server, per-address leases and node blocks; no address is ever held by two pods (checked from outside the
nodes every half second and at the end), and every address is back once the pods are gone.

A simulated node is the daemon's IPAM and API side without the kernel (``bench.sim``: its own SQLite store, ``Ipam``,
lease registry and outbox); ``make bench-sim`` runs the same scenarios for their figures.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.sim import NS, Informers, Scenario, connect
from tests.kube.conftest import Cluster

NODES, PODS = 50, 1000


class Plane:
    """What a scenario asks of the control plane, from the tests' cluster (the request count is the bench's)."""

    def __init__(self, cluster: Cluster) -> None:
        self.apply = cluster.apply

    def requests(self) -> Counter[str]:
        return Counter()


@pytest.fixture(scope="module")
def simulation(cluster: Cluster) -> Iterator[tuple[Any, Informers]]:
    api, informers = connect(cluster.apply, cluster.kubeconfig)
    try:
        yield api, informers
    finally:
        informers.source.stop()
        cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def held_leases(cluster: Cluster, pool: str) -> list[str]:
    """The pool's IPAddressLease objects that still name a holder."""
    items = cluster.get("ipaddressleases")["items"]
    return [f"{i['spec']['ip']} {i['spec'].get('holder')}" for i in items
            if i["spec"].get("pool", "").endswith(f"/{pool}") and i["spec"].get("holder")]


@pytest.mark.parametrize(("scheme", "prefix"), [("blocks", 16), ("per-address", 32)])
def test_fifty_nodes_churn_a_thousand_pods_and_no_address_is_held_twice(
        cluster: Cluster, simulation: tuple[Any, Informers], tmp_path: Path, scheme: str, prefix: int) -> None:
    api, informers = simulation
    scenario = Scenario(api, Plane(cluster), scheme, NODES, PODS, per_node=4, workers=8, work=tmp_path, prefix=prefix)
    with contextlib.ExitStack() as stack:
        result = scenario.run(informers)
        for node in scenario.nodes:
            stack.callback(node.store.close)
        print(f"{scheme}: {result['pods_per_s']} pods/s, ADD p50 {result['add_ms']['p50']} ms "
              f"p99 {result['add_ms']['p99']} ms")
        assert result["errors"] == 0, result["error_sample"]
        assert result["pods"] == PODS
        assert result["duplicates"] == [], "an address held by two pods at once"
        assert {n.name: n.held() for n in scenario.nodes if n.held()} == {}, "a lease left in a node's store"
        assert all(n.outbox.depth() == 0 for n in scenario.nodes), "writes still owed after the drain"
        assert held_leases(cluster, f"pool-{scheme}-{NODES}") == [], "a lease object still held after every pod went"

"""The scale simulation's checker (``bench.sim.Scenario.check``): it reads every simulated node's store from outside, and
must tell an address held by two pods at one moment from one that moved from a node to another between two reads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bench.sim import Scenario, SimNode
from ipamd.store.records import LeaseRecord
from ipamd.store.sqlite import Store

POOL = "ksim/pool"
X = LeaseRecord(pool=POOL, ip=0xC6120005, address="198.18.0.5", network="198.18.0.0/20", holder="IPAddress/ksim/p1-net1")


class Node:
    """A simulated node as the checker sees it: its store, and what it holds (``SimNode.held``)."""

    def __init__(self, store: Store, after_read: Callable[[], None] = lambda: None) -> None:
        self.store, self.after_read = store, after_read

    def held(self) -> dict[str, str]:
        out = SimNode.held(self)  # type: ignore[arg-type]
        self.after_read()
        return out


def scenario(tmp_path: Path) -> Scenario:
    return Scenario(None, None, "per-address", 2, 0, per_node=1, workers=1, work=tmp_path, prefix=0)  # type: ignore[arg-type]


def test_an_address_let_go_on_one_node_and_leased_on_another_between_two_reads_is_not_held_twice(tmp_path: Path) -> None:
    a, b = Store(str(tmp_path / "a.db")), Store(str(tmp_path / "b.db"))
    a.put_lease(X)
    moved = threading.Event()

    def move() -> None:  # node a lets the address go, then node b leases it: never held by both
        with a.transaction():
            a.delete_lease(POOL, X.ip)
        with b.transaction():
            b.put_lease(replace(X, holder="IPAddress/ksim/p2-net1"))
        moved.set()

    mover = threading.Thread(target=move)

    def start_moving() -> None:  # right after node a is read: time to end before node b is read, unless a is held still
        mover.start()
        moved.wait(0.3)

    node_a = Node(a, after_read=start_moving)
    check = scenario(tmp_path)
    check.check([node_a, Node(b)])  # type: ignore[list-item]
    mover.join(5)
    assert moved.is_set()
    assert check.duplicates == []
    assert Node(b).held() == {"198.18.0.5": "IPAddress/ksim/p2-net1"}  # and then it did move


def test_an_address_two_nodes_hold_at_once_is_found(tmp_path: Path) -> None:
    a, b = Store(str(tmp_path / "a.db")), Store(str(tmp_path / "b.db"))
    a.put_lease(X)
    b.put_lease(replace(X, holder="IPAddress/ksim/p2-net1"))
    check = scenario(tmp_path)
    check.check([Node(a), Node(b)])  # type: ignore[list-item]
    assert check.duplicates == ["198.18.0.5: IPAddress/ksim/p1-net1 and IPAddress/ksim/p2-net1"]

"""The outbox's firsts (each target's oldest entry, read on every pass): the same order and content over any
workload, from an index, and a store made before that index upgraded."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from ipamd.store.records import OutboxEntry
from ipamd.store.sqlite import SCHEMA, Store
from tests.fakes.store import MemoryStore


def firsts_of(entries: list[OutboxEntry]) -> list[OutboxEntry]:
    """Each target's oldest entry, in order: what outbox_firsts answers, from the whole outbox."""
    seen: set[str] = set()
    out = []
    for e in entries:
        if e.target not in seen:
            seen.add(e.target)
            out.append(e)
    return out


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_outbox_firsts_order_and_content_over_an_interleaved_workload(kind: str, tmp_path: Path) -> None:
    store: Store | MemoryStore = Store(str(tmp_path / "state.db")) if kind == "sqlite" else MemoryStore()

    def check() -> None:
        assert store.outbox_firsts() == firsts_of(store.outbox_head(10**6))

    ops = ("create", "patch_status", "delete")
    for i in range(60):
        store.outbox_add(OutboxEntry(0, f"IPAddress/ns/{i % 7}", ops[i % 3], {"i": i, "x": [i, str(i)]},
                                     created_at=float(i)), supersede=i % 5 == 0)
        if i % 4 == 0:
            check()
    check()
    first = store.outbox_firsts()
    store.outbox_retry(first[0].seq, 3, 99.0, "refused")  # a first written again: the answer says so
    check()
    assert store.outbox_firsts()[0] == replace(first[0], attempts=3, next_at=99.0, error="refused")
    store.outbox_done(first[1].seq)  # the next of its target comes first
    check()
    store.outbox_drop(first[2].target, first[2].op)
    check()
    with pytest.raises(RuntimeError), store.transaction():  # rolled back: the same seq may come again, other data
        store.outbox_add(OutboxEntry(0, "IPAddress/ns/rolled", "create", {"v": 1}))
        check()
        raise RuntimeError
    check()
    store.outbox_add(OutboxEntry(0, "IPAddress/ns/rolled", "delete", {"v": 2}))
    check()
    assert store.outbox_firsts()[-1].body == {"v": 2} and store.outbox_firsts()[-1].op == "delete"


def test_a_store_made_before_the_firsts_index_is_upgraded(tmp_path: Path) -> None:
    """An existing store opened by this version gets the index that serves outbox_firsts, its outbox unchanged."""
    path = str(tmp_path / "state.db")
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    db.execute("DROP INDEX IF EXISTS outbox_first")  # as an older version made it
    for i in range(10):
        db.execute("INSERT INTO outbox (target, op, data) VALUES (?,?,?)",
                   (f"t{i % 3}", "create", json.dumps({"target": f"t{i % 3}", "op": "create", "body": {"i": i}})))
    db.commit()
    db.close()
    store = Store(path)
    indexes = {name for (name,) in store._db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "outbox_first" in indexes
    assert [(e.seq, e.target, e.body) for e in store.outbox_firsts()] == [(1, "t0", {"i": 0}), (2, "t1", {"i": 1}),
                                                                          (3, "t2", {"i": 2})]
    plan = " ".join(str(row) for row in store._db.execute("EXPLAIN QUERY PLAN SELECT MIN(seq) FROM outbox GROUP BY target"))
    assert "outbox_first" in plan, plan

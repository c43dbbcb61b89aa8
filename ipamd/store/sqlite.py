"""The node's durable state in SQLite: leases, IPAddress statuses, attachments, pod statuses, segments.

One connection, one writer: every change runs in ``transaction()`` (``BEGIN IMMEDIATE``), so an
allocation and the records that depend on it commit together or not at all. WAL mode with
``synchronous=NORMAL`` survives the daemon being killed at any moment (a committed transaction
is in the WAL before ``COMMIT`` returns); only a power loss may drop the last transactions.

Rows carry a few key columns for lookups and the rest as JSON (``data``), read back into the
frozen records below.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from ipamd.store.records import (
    AttachmentRecord,
    ImplicitPoolRecord,
    IPRecord,
    LeaseRecord,
    OutboxEntry,
    PodStatus,
    SegmentRecord,
    dump,
    load_attachment,
    load_implicit_pool,
    load_ip,
    load_lease,
    load_outbox,
    load_pod_status,
    load_segment,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    pool TEXT NOT NULL, ip INTEGER NOT NULL, holder TEXT, data TEXT NOT NULL,
    PRIMARY KEY (pool, ip));
CREATE UNIQUE INDEX IF NOT EXISTS leases_by_holder ON leases(holder) WHERE holder IS NOT NULL;
CREATE INDEX IF NOT EXISTS leases_orphaned ON leases(pool) WHERE holder IS NULL;
CREATE TABLE IF NOT EXISTS cursors (pool TEXT PRIMARY KEY, ip INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ipaddresses (key TEXT PRIMARY KEY, owner_pod_uid TEXT, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attachments (
    container_id TEXT NOT NULL, ifname TEXT NOT NULL, pod_uid TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (container_id, ifname));
CREATE INDEX IF NOT EXISTS attachments_by_pod ON attachments(pod_uid);
CREATE TABLE IF NOT EXISTS pods (uid TEXT PRIMARY KEY, namespace TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS pods_by_name ON pods(namespace, name);
CREATE TABLE IF NOT EXISTS pod_uids (namespace TEXT NOT NULL, name TEXT NOT NULL, uid TEXT NOT NULL,
    PRIMARY KEY (namespace, name));
CREATE TABLE IF NOT EXISTS segments (network TEXT PRIMARY KEY, kind TEXT NOT NULL, id INTEGER NOT NULL, data TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS segments_by_id ON segments(kind, id) WHERE id > 0;
CREATE TABLE IF NOT EXISTS implicit_pools (key TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, target TEXT NOT NULL, op TEXT NOT NULL,
    data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_by_target ON outbox(target, op);
CREATE INDEX IF NOT EXISTS outbox_first ON outbox(target, seq);
"""


_INT64_MAX = (1 << 63) - 1


def _to_db(ip: int) -> int | str:
    """An address as the ``ip`` column keeps it: SQLite's integers are 64-bit, so a larger (IPv6) address is kept as
    ``x`` and its 32 hex digits (the ``x`` keeps the column's integer affinity from reading the digits as a lossy
    REAL; text never equals an integer, so both share the column and the key)."""
    return ip if ip <= _INT64_MAX else f"x{ip:032x}"


def _from_db(value: int | str) -> int:
    return value if isinstance(value, int) else int(value[1:], 16)


class Store:
    """SQLite-backed store. Thread-safe: one lock, one connection, short transactions."""

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()
        self._depth = 0
        # pool -> leased IPs, kept in step with the table (and dropped on ROLLBACK): allocation then
        # costs the same at 95% fill of a /16 as at 10%, instead of reading 60,000 rows each time
        self._taken: dict[str, set[int]] = {}
        self._cursors: dict[str, int | None] = {}
        self._firsts: dict[int, tuple[str, OutboxEntry]] = {}  # seq -> (row, entry): the last ``outbox_firsts``

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        """All changes inside commit together; nested use joins the outer transaction."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self
            except BaseException:
                self._db.execute("ROLLBACK")
                self._taken.clear()
                self._cursors.clear()
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._depth = 0

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _x(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        with self._lock:
            self._db.execute(sql, args)

    # -- leases ---------------------------------------------------------------------------
    def leases_in_pool(self, pool: str) -> dict[int, LeaseRecord]:
        return {_from_db(ip): load_lease(d) for ip, d in self._q("SELECT ip, data FROM leases WHERE pool=?", (pool,))}

    def taken_ips(self, pool: str) -> set[int]:
        """The leased IPs of a pool (read-only: the store keeps this set up to date)."""
        with self._lock:
            taken = self._taken.get(pool)
            if taken is None:
                taken = self._taken[pool] = {_from_db(ip) for (ip,) in self._q("SELECT ip FROM leases WHERE pool=?", (pool,))}
            return taken

    def lease_at(self, pool: str, ip: int) -> LeaseRecord | None:
        rows = self._q("SELECT data FROM leases WHERE pool=? AND ip=?", (pool, _to_db(ip)))
        return load_lease(rows[0][0]) if rows else None

    def lease_of(self, holder: str) -> LeaseRecord | None:
        rows = self._q("SELECT data FROM leases WHERE holder=?", (holder,))
        return load_lease(rows[0][0]) if rows else None

    def put_lease(self, lease: LeaseRecord) -> None:
        self._x(
            # an upsert, not INSERT OR REPLACE: REPLACE would also silently delete a row that clashes
            # on the holder index, i.e. another lease of the same IPAddress
            "INSERT INTO leases (pool, ip, holder, data) VALUES (?,?,?,?) "
            "ON CONFLICT(pool, ip) DO UPDATE SET holder=excluded.holder, data=excluded.data",
            (lease.pool, _to_db(lease.ip), lease.holder, dump(lease)),
        )
        taken = self._taken.get(lease.pool)
        if taken is not None:
            taken.add(lease.ip)

    def delete_lease(self, pool: str, ip: int) -> None:
        self._x("DELETE FROM leases WHERE pool=? AND ip=?", (pool, _to_db(ip)))
        taken = self._taken.get(pool)
        if taken is not None:
            taken.discard(ip)

    def orphan_lease(self, lease: LeaseRecord, now: float) -> LeaseRecord:
        orphan = replace(lease, holder=None, holder_uid="", state="orphaned", orphaned_at=now)
        self.put_lease(orphan)
        return orphan

    def orphaned_leases(self, pool: str | None = None) -> list[LeaseRecord]:
        if pool is None:
            rows = self._q("SELECT data FROM leases WHERE holder IS NULL")
        else:
            rows = self._q("SELECT data FROM leases WHERE holder IS NULL AND pool=?", (pool,))
        return [load_lease(d) for (d,) in rows]

    def all_leases(self) -> list[LeaseRecord]:
        return [load_lease(d) for (d,) in self._q("SELECT data FROM leases ORDER BY pool, ip")]

    def cursor(self, pool: str) -> int | None:
        """Where round-robin allocation resumes (read from memory, written through)."""
        with self._lock:
            if pool not in self._cursors:
                rows = self._q("SELECT ip FROM cursors WHERE pool=?", (pool,))
                self._cursors[pool] = _from_db(rows[0][0]) if rows else None
            return self._cursors[pool]

    def set_cursor(self, pool: str, ip: int) -> None:
        with self._lock:
            self._cursors[pool] = ip
            self._x("INSERT OR REPLACE INTO cursors (pool, ip) VALUES (?,?)", (pool, _to_db(ip)))

    # -- IPAddresses -------------------------------------------------------------------------
    def get_ip(self, key: str) -> IPRecord | None:
        rows = self._q("SELECT data FROM ipaddresses WHERE key=?", (key,))
        return load_ip(rows[0][0]) if rows else None

    def put_ip(self, rec: IPRecord) -> None:
        self._x(
            "INSERT OR REPLACE INTO ipaddresses (key, owner_pod_uid, data) VALUES (?,?,?)",
            (rec.key, rec.owner_pod_uid, dump(rec)),
        )

    def delete_ip(self, key: str) -> None:
        self._x("DELETE FROM ipaddresses WHERE key=?", (key,))

    def all_ips(self) -> list[IPRecord]:
        return [load_ip(d) for (d,) in self._q("SELECT data FROM ipaddresses ORDER BY key")]

    def ips_owned_by(self, pod_uid: str) -> list[IPRecord]:
        return [load_ip(d) for (d,) in self._q("SELECT data FROM ipaddresses WHERE owner_pod_uid=?", (pod_uid,))]

    def ips_with_prefix(self, prefix: str) -> list[IPRecord]:
        # a range on the primary key: every key from the prefix up to the prefix with its last character bumped
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        return [load_ip(d) for (d,) in self._q("SELECT data FROM ipaddresses WHERE key >= ? AND key < ? ORDER BY key",
                                                (prefix, upper))]

    def put_implicit_pool(self, rec: ImplicitPoolRecord) -> None:
        self._x("INSERT OR REPLACE INTO implicit_pools (key, data) VALUES (?,?)", (rec.key, dump(rec)))

    def get_implicit_pool(self, key: str) -> ImplicitPoolRecord | None:
        rows = self._q("SELECT data FROM implicit_pools WHERE key=?", (key,))
        return load_implicit_pool(rows[0][0]) if rows else None

    def implicit_pools(self) -> list[ImplicitPoolRecord]:
        return [load_implicit_pool(d) for (d,) in self._q("SELECT data FROM implicit_pools ORDER BY key")]

    def delete_implicit_pool(self, key: str) -> None:
        self._x("DELETE FROM implicit_pools WHERE key=?", (key,))

    # -- the outbox --------------------------------------------------------------------------
    def outbox_add(self, entry: OutboxEntry, supersede: bool = False) -> int:
        with self.transaction():
            if supersede:
                self.outbox_drop(entry.target, entry.op)
            cur = self._db.execute("INSERT INTO outbox (target, op, data) VALUES (?,?,?)",
                                   (entry.target, entry.op, dump(replace(entry, seq=0))))
            return int(cur.lastrowid or 0)

    def outbox_head(self, limit: int) -> list[OutboxEntry]:
        return [load_outbox(seq, d) for seq, d in self._q("SELECT seq, data FROM outbox ORDER BY seq LIMIT ?", (limit,))]

    def outbox_firsts(self) -> list[OutboxEntry]:
        """Each target's oldest entry, in order, read on every pass of the outbox: the firsts are found in the index
        (``outbox_first``), and an entry whose row is as the last call read it is not decoded again (at 20,000 owed
        targets, decoding was two thirds of the call). The entries are shared between calls: read them only."""
        with self._lock:
            rows = self._q("SELECT seq, data FROM outbox WHERE seq IN (SELECT MIN(seq) FROM outbox GROUP BY target) "
                           "ORDER BY seq")
            known = self._firsts
            self._firsts = {seq: hit if (hit := known.get(seq)) is not None and hit[0] == data
                            else (data, load_outbox(seq, data)) for seq, data in rows}
            return [entry for _, entry in self._firsts.values()]

    def outbox_of(self, target: str) -> list[OutboxEntry]:
        return [load_outbox(seq, d) for seq, d in self._q("SELECT seq, data FROM outbox WHERE target=? ORDER BY seq",
                                                           (target,))]

    def outbox_done(self, seq: int) -> None:
        self._x("DELETE FROM outbox WHERE seq=?", (seq,))

    def outbox_retry(self, seq: int, attempts: int, next_at: float, error: str) -> None:
        with self._lock:
            rows = self._q("SELECT data FROM outbox WHERE seq=?", (seq,))
            if rows:
                entry = replace(load_outbox(seq, rows[0][0]), attempts=attempts, next_at=next_at, error=error)
                self._x("UPDATE outbox SET data=? WHERE seq=?", (dump(replace(entry, seq=0)), seq))

    def outbox_drop(self, target: str, op: str) -> int:
        with self._lock:
            cur = self._db.execute("DELETE FROM outbox WHERE target=? AND op=?", (target, op))
            return cur.rowcount

    def outbox_depth(self) -> int:
        return int(self._q("SELECT COUNT(*) FROM outbox")[0][0])

    # -- attachments -------------------------------------------------------------------------
    def get_attachment(self, container_id: str, ifname: str) -> AttachmentRecord | None:
        rows = self._q("SELECT data FROM attachments WHERE container_id=? AND ifname=?", (container_id, ifname))
        return load_attachment(rows[0][0]) if rows else None

    def put_attachment(self, rec: AttachmentRecord) -> None:
        self._x(
            "INSERT OR REPLACE INTO attachments (container_id, ifname, pod_uid, data) VALUES (?,?,?,?)",
            (rec.container_id, rec.ifname, rec.pod_uid, dump(rec)),
        )

    def delete_attachment(self, container_id: str, ifname: str) -> None:
        self._x("DELETE FROM attachments WHERE container_id=? AND ifname=?", (container_id, ifname))

    def attachments(self) -> list[AttachmentRecord]:
        return [load_attachment(d) for (d,) in self._q("SELECT data FROM attachments ORDER BY container_id, ifname")]

    def attachments_of_pod(self, pod_uid: str) -> list[AttachmentRecord]:
        return [load_attachment(d) for (d,) in self._q("SELECT data FROM attachments WHERE pod_uid=?", (pod_uid,))]

    # -- pods ----------------------------------------------------------------------------------
    def put_pod_status(self, status: PodStatus) -> None:
        self._x(
            "INSERT OR REPLACE INTO pods (uid, namespace, name, data) VALUES (?,?,?,?)",
            (status.uid, status.namespace, status.name, dump(status)),
        )

    def pod_status(self, uid: str) -> PodStatus | None:
        rows = self._q("SELECT data FROM pods WHERE uid=?", (uid,))
        if not rows:
            return None
        return load_pod_status(rows[0][0])

    def pod_statuses(self) -> list[PodStatus]:
        return [load_pod_status(d) for (d,) in self._q("SELECT data FROM pods ORDER BY namespace, name")]

    def delete_pod_status(self, uid: str) -> None:
        self._x("DELETE FROM pods WHERE uid=?", (uid,))

    def generated_uid(self, namespace: str, name: str, new_uid: str) -> str:
        """The UID given to a Pod manifest that has none: made once, then kept."""
        with self.transaction():
            rows = self._q("SELECT uid FROM pod_uids WHERE namespace=? AND name=?", (namespace, name))
            if rows:
                return str(rows[0][0])
            self._x("INSERT INTO pod_uids (namespace, name, uid) VALUES (?,?,?)", (namespace, name, new_uid))
            return new_uid

    def forget_generated_uids(self, keep: set[tuple[str, str]]) -> None:
        for ns, name in self._q("SELECT namespace, name FROM pod_uids"):
            if (ns, name) not in keep:
                self._x("DELETE FROM pod_uids WHERE namespace=? AND name=?", (ns, name))

    # -- segments ------------------------------------------------------------------------------
    def get_segment(self, network: str) -> SegmentRecord | None:
        rows = self._q("SELECT data FROM segments WHERE network=?", (network,))
        return load_segment(rows[0][0]) if rows else None

    def segment_ids(self, kind: str) -> dict[int, str]:
        return {i: n for n, i in self._q("SELECT network, id FROM segments WHERE kind=?", (kind,))}

    def put_segment(self, rec: SegmentRecord) -> None:
        self._x(
            "INSERT INTO segments (network, kind, id, data) VALUES (?,?,?,?) "
            "ON CONFLICT(network) DO UPDATE SET kind=excluded.kind, id=excluded.id, data=excluded.data",
            (rec.network, rec.kind, rec.id, dump(rec)),
        )

    def delete_segment(self, network: str) -> None:
        self._x("DELETE FROM segments WHERE network=?", (network,))

    def segments(self) -> list[SegmentRecord]:
        return [load_segment(d) for (d,) in self._q("SELECT data FROM segments ORDER BY network")]

"""An in-memory store with the SQLite store's contract: the same records, the same uniqueness rules
(one lease per holder, one Network per segment ID and kind), all-or-nothing transactions that nest.

``tests/unit/test_store.py`` runs its contract tests against both, so a unit test over this store
proves what it would over the real one.
"""

from __future__ import annotations

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

TABLES = ("leases", "cursors", "ips", "attachments", "pods", "pod_uids", "segments", "implicit_pools", "outbox")


class MemoryStore:
    """Rows are kept as the JSON the SQLite store writes (so what cannot be stored fails alike)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self.leases: dict[tuple[str, int], str] = {}
        self.cursors: dict[str, int] = {}
        self.ips: dict[str, str] = {}
        self.attachments_: dict[tuple[str, str], str] = {}
        self.pods: dict[str, str] = {}
        self.pod_uids: dict[tuple[str, str], str] = {}
        self.segments_: dict[str, str] = {}
        self.implicit_pools_: dict[str, str] = {}
        self.outbox: dict[int, tuple[str, str, str]] = {}  # seq -> (target, op, data)
        self._seq = [0]  # a list so that a rollback (which restores the tables) never reuses a seq
        self.commits = 0

    def _tables(self) -> list[dict[Any, Any]]:
        return [self.leases, self.cursors, self.ips, self.attachments_, self.pods, self.pod_uids, self.segments_,
                self.implicit_pools_, self.outbox]

    @contextmanager
    def transaction(self) -> Iterator[MemoryStore]:
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            snapshot = [dict(t) for t in self._tables()]
            self._depth = 1
            try:
                yield self
            except BaseException:
                for table, saved in zip(self._tables(), snapshot, strict=True):
                    table.clear()
                    table.update(saved)
                raise
            else:
                self.commits += 1
            finally:
                self._depth = 0

    def close(self) -> None:
        pass

    # -- leases ---------------------------------------------------------------------------------
    def leases_in_pool(self, pool: str) -> dict[int, LeaseRecord]:
        with self._lock:
            return {ip: load_lease(d) for (p, ip), d in self.leases.items() if p == pool}

    def taken_ips(self, pool: str) -> set[int]:
        with self._lock:
            return {ip for (p, ip) in self.leases if p == pool}

    def lease_at(self, pool: str, ip: int) -> LeaseRecord | None:
        with self._lock:
            d = self.leases.get((pool, ip))
        return load_lease(d) if d else None

    def lease_of(self, holder: str) -> LeaseRecord | None:
        with self._lock:
            return next((load_lease(d) for d in self.leases.values() if load_lease(d).holder == holder), None)

    def put_lease(self, lease: LeaseRecord) -> None:
        data = dump(lease)
        with self._lock:
            if lease.holder is not None:
                for key, d in self.leases.items():
                    if key != (lease.pool, lease.ip) and load_lease(d).holder == lease.holder:
                        raise sqlite3.IntegrityError("UNIQUE constraint failed: leases.holder")
            self.leases[(lease.pool, lease.ip)] = data

    def delete_lease(self, pool: str, ip: int) -> None:
        with self._lock:
            self.leases.pop((pool, ip), None)

    def orphan_lease(self, lease: LeaseRecord, now: float) -> LeaseRecord:
        orphan = replace(lease, holder=None, holder_uid="", state="orphaned", orphaned_at=now)
        self.put_lease(orphan)
        return orphan

    def orphaned_leases(self, pool: str | None = None) -> list[LeaseRecord]:
        return [lease for lease in self.all_leases() if lease.holder is None and (pool is None or lease.pool == pool)]

    def all_leases(self) -> list[LeaseRecord]:
        with self._lock:
            return [load_lease(self.leases[k]) for k in sorted(self.leases)]

    def cursor(self, pool: str) -> int | None:
        with self._lock:
            return self.cursors.get(pool)

    def set_cursor(self, pool: str, ip: int) -> None:
        with self._lock:
            self.cursors[pool] = ip

    # -- IPAddresses -----------------------------------------------------------------------------
    def get_ip(self, key: str) -> IPRecord | None:
        with self._lock:
            d = self.ips.get(key)
        return load_ip(d) if d else None

    def put_ip(self, rec: IPRecord) -> None:
        data = dump(rec)
        with self._lock:
            self.ips[rec.key] = data

    def delete_ip(self, key: str) -> None:
        with self._lock:
            self.ips.pop(key, None)

    def all_ips(self) -> list[IPRecord]:
        with self._lock:
            return [load_ip(self.ips[k]) for k in sorted(self.ips)]

    def ips_owned_by(self, pod_uid: str) -> list[IPRecord]:
        return [r for r in self.all_ips() if r.owner_pod_uid == pod_uid]

    def ips_with_prefix(self, prefix: str) -> list[IPRecord]:
        return [r for r in self.all_ips() if r.key.startswith(prefix)]

    def put_implicit_pool(self, rec: ImplicitPoolRecord) -> None:
        with self._lock:
            self.implicit_pools_[rec.key] = dump(rec)

    def get_implicit_pool(self, key: str) -> ImplicitPoolRecord | None:
        with self._lock:
            data = self.implicit_pools_.get(key)
            return load_implicit_pool(data) if data is not None else None

    def implicit_pools(self) -> list[ImplicitPoolRecord]:
        with self._lock:
            return [load_implicit_pool(self.implicit_pools_[k]) for k in sorted(self.implicit_pools_)]

    def delete_implicit_pool(self, key: str) -> None:
        with self._lock:
            self.implicit_pools_.pop(key, None)

    # -- the outbox ------------------------------------------------------------------------------
    def outbox_add(self, entry: OutboxEntry, supersede: bool = False) -> int:
        with self.transaction():
            if supersede:
                self.outbox_drop(entry.target, entry.op)
            self._seq[0] += 1
            self.outbox[self._seq[0]] = (entry.target, entry.op, dump(replace(entry, seq=0)))
            return self._seq[0]

    def outbox_head(self, limit: int) -> list[OutboxEntry]:
        with self._lock:
            return [load_outbox(seq, self.outbox[seq][2]) for seq in sorted(self.outbox)[:limit]]

    def outbox_firsts(self) -> list[OutboxEntry]:
        with self._lock:
            firsts: dict[str, int] = {}
            for seq in sorted(self.outbox):
                firsts.setdefault(self.outbox[seq][0], seq)
            return [load_outbox(seq, self.outbox[seq][2]) for seq in sorted(firsts.values())]

    def outbox_of(self, target: str) -> list[OutboxEntry]:
        with self._lock:
            return [load_outbox(seq, d) for seq, (t, _, d) in sorted(self.outbox.items()) if t == target]

    def outbox_done(self, seq: int) -> None:
        with self._lock:
            self.outbox.pop(seq, None)

    def outbox_retry(self, seq: int, attempts: int, next_at: float, error: str) -> None:
        with self._lock:
            if seq in self.outbox:
                target, op, data = self.outbox[seq]
                entry = replace(load_outbox(seq, data), attempts=attempts, next_at=next_at, error=error)
                self.outbox[seq] = (target, op, dump(replace(entry, seq=0)))

    def outbox_drop(self, target: str, op: str) -> int:
        with self._lock:
            gone = [seq for seq, (t, o, _) in self.outbox.items() if (t, o) == (target, op)]
            for seq in gone:
                del self.outbox[seq]
            return len(gone)

    def outbox_depth(self) -> int:
        with self._lock:
            return len(self.outbox)

    # -- attachments -----------------------------------------------------------------------------
    def get_attachment(self, container_id: str, ifname: str) -> AttachmentRecord | None:
        with self._lock:
            d = self.attachments_.get((container_id, ifname))
        return load_attachment(d) if d else None

    def put_attachment(self, rec: AttachmentRecord) -> None:
        data = dump(rec)
        with self._lock:
            self.attachments_[(rec.container_id, rec.ifname)] = data

    def delete_attachment(self, container_id: str, ifname: str) -> None:
        with self._lock:
            self.attachments_.pop((container_id, ifname), None)

    def attachments(self) -> list[AttachmentRecord]:
        with self._lock:
            return [load_attachment(self.attachments_[k]) for k in sorted(self.attachments_)]

    def attachments_of_pod(self, pod_uid: str) -> list[AttachmentRecord]:
        return [a for a in self.attachments() if a.pod_uid == pod_uid]

    # -- pods -------------------------------------------------------------------------------------
    def put_pod_status(self, status: PodStatus) -> None:
        data = dump(status)
        with self._lock:
            self.pods[status.uid] = data

    def pod_status(self, uid: str) -> PodStatus | None:
        with self._lock:
            d = self.pods.get(uid)
        return load_pod_status(d) if d else None

    def pod_statuses(self) -> list[PodStatus]:
        with self._lock:
            found = [load_pod_status(d) for d in self.pods.values()]
        return sorted(found, key=lambda s: (s.namespace, s.name))

    def delete_pod_status(self, uid: str) -> None:
        with self._lock:
            self.pods.pop(uid, None)

    def generated_uid(self, namespace: str, name: str, new_uid: str) -> str:
        with self.transaction():
            return self.pod_uids.setdefault((namespace, name), new_uid)

    def forget_generated_uids(self, keep: set[tuple[str, str]]) -> None:
        with self._lock:
            for key in [k for k in self.pod_uids if k not in keep]:
                del self.pod_uids[key]

    # -- segments ---------------------------------------------------------------------------------
    def get_segment(self, network: str) -> SegmentRecord | None:
        with self._lock:
            d = self.segments_.get(network)
        return load_segment(d) if d else None

    def segment_ids(self, kind: str) -> dict[int, str]:
        return {s.id: s.network for s in self.segments() if s.kind == kind}

    def put_segment(self, rec: SegmentRecord) -> None:
        data = dump(rec)
        with self._lock:
            if rec.id > 0 and any(s.kind == rec.kind and s.id == rec.id and s.network != rec.network
                                  for s in self.segments()):
                raise sqlite3.IntegrityError("UNIQUE constraint failed: segments.kind, segments.id")
            self.segments_[rec.network] = data

    def delete_segment(self, network: str) -> None:
        with self._lock:
            self.segments_.pop(network, None)

    def segments(self) -> list[SegmentRecord]:
        with self._lock:
            return [load_segment(self.segments_[k]) for k in sorted(self.segments_)]

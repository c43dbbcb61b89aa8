"""The daemon's durable state in SQLite: leases, IPAddress statuses, attachments, pod statuses, segments.

One connection, one writer: every change runs in ``transaction()`` (``BEGIN IMMEDIATE``), so an
allocation and the records that depend on it commit together or not at all. WAL mode with
``synchronous=NORMAL`` survives the daemon being killed at any moment (a committed transaction
is in the WAL before ``COMMIT`` returns); only a power loss may drop the last transactions.

Rows carry a few key columns for lookups and the rest as JSON (``data``), read back into the
frozen records below.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

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
"""


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """One leased IP of a pool, held by an IPAddress (``holder``) or orphaned and quarantined."""

    pool: str
    ip: int
    address: str
    network: str
    holder: str | None
    holder_uid: str = ""
    state: str = "bound"  # bound | orphaned
    ttl: float = 0.0
    created_at: float = 0.0
    orphaned_at: float | None = None
    outside_ranges: bool = False  # the pool changed under a live lease: kept, flagged


@dataclass(frozen=True, slots=True)
class IPRecord:
    """The state Plexus keeps for an IPAddress: its status, and the object itself when Plexus made it."""

    key: str
    kind: str
    namespace: str
    name: str
    network_kind: str
    network_name: str
    type: str = "Auto"
    static_ip: str = ""
    uid: str = ""
    owner_pod_uid: str = ""
    created_by: str = "user"  # user | plexus
    deleted: bool = False  # gone from the source while in use: kept until the pod lets go
    phase: str = "Pending"
    address: str = ""
    network: str = ""
    pool: str = ""
    routes: tuple[dict[str, str], ...] = ()
    used_by_pods: tuple[str, ...] = ()
    used_by_uids: tuple[str, ...] = ()
    conditions: tuple[dict[str, str], ...] = ()
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class BuiltInterface:
    """What one interface of an attachment made, enough to tear it down without any object."""

    if_name: str
    kind: str  # veth | tap | macvlan
    network_key: str
    network_type: str
    network_name: str
    host_link: str = ""  # veth host end, on the node bridge
    bridge: str = ""
    mac: str = ""
    vlan_id: int = 0
    ip_keys: tuple[str, ...] = ()
    created_ip_keys: tuple[str, ...] = ()  # Auto IPAddresses this attachment created
    configure_ips: bool = True
    addresses: tuple[dict[str, Any], ...] = ()  # the networks-status ipAddressConfigs of this interface


@dataclass(frozen=True, slots=True)
class AttachmentRecord:
    """One CNI attachment, keyed as the runtime keys it: (container ID, CNI_IFNAME)."""

    container_id: str
    ifname: str
    pod_uid: str
    namespace: str
    pod_name: str
    netns: str
    state: str  # adding | ready | deleting
    interfaces: tuple[BuiltInterface, ...] = ()
    result: dict[str, Any] = field(default_factory=dict)
    networks_status: tuple[dict[str, Any], ...] = ()
    updated_at: float = 0.0
    network: str = ""  # the CNI network configuration's name (GC judges only its own)
    pod_known: bool = True  # False: the pod came only from the runtime's annotations, not the source


@dataclass(frozen=True, slots=True)
class PodStatus:
    uid: str
    namespace: str
    name: str
    networks_status: tuple[dict[str, Any], ...] = ()
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class SegmentRecord:
    """A Network's L2 segment on this node: the VLAN ID or VNI it got and its bridge."""

    network: str  # the Network / ClusterNetwork key
    kind: str  # vlan | vxlan | none
    id: int
    bridge: str
    network_class: str = ""
    status: dict[str, Any] = field(default_factory=dict)


def _plain(value: Any) -> Any:
    """Records to JSON-ready values; ``dataclasses.asdict`` deep-copies everything and was a
    sixth of an ADD's time."""
    slots = getattr(type(value), "__slots__", None)
    if slots is not None and hasattr(value, "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in slots}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _dump(rec: Any) -> str:
    return json.dumps(_plain(rec), separators=(",", ":"))


def _tuples(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    for k in keys:
        if k in d and isinstance(d[k], list):
            d[k] = tuple(d[k])
    return d


def _lease(data: str) -> LeaseRecord:
    return LeaseRecord(**json.loads(data))


def _ip(data: str) -> IPRecord:
    return IPRecord(**_tuples(json.loads(data), "routes", "used_by_pods", "used_by_uids", "conditions"))


def _attachment(data: str) -> AttachmentRecord:
    d = json.loads(data)
    d["interfaces"] = tuple(
        BuiltInterface(**_tuples(i, "ip_keys", "created_ip_keys", "addresses")) for i in d.get("interfaces", ())
    )
    d["networks_status"] = tuple(d.get("networks_status", ()))
    return AttachmentRecord(**d)


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
        return {ip: _lease(d) for ip, d in self._q("SELECT ip, data FROM leases WHERE pool=?", (pool,))}

    def taken_ips(self, pool: str) -> set[int]:
        """The leased IPs of a pool (read-only: the store keeps this set up to date)."""
        with self._lock:
            taken = self._taken.get(pool)
            if taken is None:
                taken = self._taken[pool] = {ip for (ip,) in self._q("SELECT ip FROM leases WHERE pool=?", (pool,))}
            return taken

    def lease_at(self, pool: str, ip: int) -> LeaseRecord | None:
        rows = self._q("SELECT data FROM leases WHERE pool=? AND ip=?", (pool, ip))
        return _lease(rows[0][0]) if rows else None

    def lease_of(self, holder: str) -> LeaseRecord | None:
        rows = self._q("SELECT data FROM leases WHERE holder=?", (holder,))
        return _lease(rows[0][0]) if rows else None

    def put_lease(self, lease: LeaseRecord) -> None:
        self._x(
            # an upsert, not INSERT OR REPLACE: REPLACE would also silently delete a row that clashes
            # on the holder index, i.e. another lease of the same IPAddress
            "INSERT INTO leases (pool, ip, holder, data) VALUES (?,?,?,?) "
            "ON CONFLICT(pool, ip) DO UPDATE SET holder=excluded.holder, data=excluded.data",
            (lease.pool, lease.ip, lease.holder, _dump(lease)),
        )
        taken = self._taken.get(lease.pool)
        if taken is not None:
            taken.add(lease.ip)

    def delete_lease(self, pool: str, ip: int) -> None:
        self._x("DELETE FROM leases WHERE pool=? AND ip=?", (pool, ip))
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
        return [_lease(d) for (d,) in rows]

    def all_leases(self) -> list[LeaseRecord]:
        return [_lease(d) for (d,) in self._q("SELECT data FROM leases ORDER BY pool, ip")]

    def cursor(self, pool: str) -> int | None:
        """Where round-robin allocation resumes (read from memory, written through)."""
        with self._lock:
            if pool not in self._cursors:
                rows = self._q("SELECT ip FROM cursors WHERE pool=?", (pool,))
                self._cursors[pool] = int(rows[0][0]) if rows else None
            return self._cursors[pool]

    def set_cursor(self, pool: str, ip: int) -> None:
        with self._lock:
            self._cursors[pool] = ip
            self._x("INSERT OR REPLACE INTO cursors (pool, ip) VALUES (?,?)", (pool, ip))

    # -- IPAddresses -------------------------------------------------------------------------
    def get_ip(self, key: str) -> IPRecord | None:
        rows = self._q("SELECT data FROM ipaddresses WHERE key=?", (key,))
        return _ip(rows[0][0]) if rows else None

    def put_ip(self, rec: IPRecord) -> None:
        self._x(
            "INSERT OR REPLACE INTO ipaddresses (key, owner_pod_uid, data) VALUES (?,?,?)",
            (rec.key, rec.owner_pod_uid, _dump(rec)),
        )

    def delete_ip(self, key: str) -> None:
        self._x("DELETE FROM ipaddresses WHERE key=?", (key,))

    def all_ips(self) -> list[IPRecord]:
        return [_ip(d) for (d,) in self._q("SELECT data FROM ipaddresses ORDER BY key")]

    def ips_owned_by(self, pod_uid: str) -> list[IPRecord]:
        return [_ip(d) for (d,) in self._q("SELECT data FROM ipaddresses WHERE owner_pod_uid=?", (pod_uid,))]

    # -- attachments -------------------------------------------------------------------------
    def get_attachment(self, container_id: str, ifname: str) -> AttachmentRecord | None:
        rows = self._q("SELECT data FROM attachments WHERE container_id=? AND ifname=?", (container_id, ifname))
        return _attachment(rows[0][0]) if rows else None

    def put_attachment(self, rec: AttachmentRecord) -> None:
        self._x(
            "INSERT OR REPLACE INTO attachments (container_id, ifname, pod_uid, data) VALUES (?,?,?,?)",
            (rec.container_id, rec.ifname, rec.pod_uid, _dump(rec)),
        )

    def delete_attachment(self, container_id: str, ifname: str) -> None:
        self._x("DELETE FROM attachments WHERE container_id=? AND ifname=?", (container_id, ifname))

    def attachments(self) -> list[AttachmentRecord]:
        return [_attachment(d) for (d,) in self._q("SELECT data FROM attachments ORDER BY container_id, ifname")]

    def attachments_of_pod(self, pod_uid: str) -> list[AttachmentRecord]:
        return [_attachment(d) for (d,) in self._q("SELECT data FROM attachments WHERE pod_uid=?", (pod_uid,))]

    # -- pods ----------------------------------------------------------------------------------
    def put_pod_status(self, status: PodStatus) -> None:
        self._x(
            "INSERT OR REPLACE INTO pods (uid, namespace, name, data) VALUES (?,?,?,?)",
            (status.uid, status.namespace, status.name, _dump(status)),
        )

    def pod_status(self, uid: str) -> PodStatus | None:
        rows = self._q("SELECT data FROM pods WHERE uid=?", (uid,))
        if not rows:
            return None
        d = json.loads(rows[0][0])
        d["networks_status"] = tuple(d["networks_status"])
        return PodStatus(**d)

    def pod_statuses(self) -> list[PodStatus]:
        out = []
        for (data,) in self._q("SELECT data FROM pods ORDER BY namespace, name"):
            d = json.loads(data)
            d["networks_status"] = tuple(d["networks_status"])
            out.append(PodStatus(**d))
        return out

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
        return SegmentRecord(**json.loads(rows[0][0])) if rows else None

    def segment_ids(self, kind: str) -> dict[int, str]:
        return {i: n for n, i in self._q("SELECT network, id FROM segments WHERE kind=?", (kind,))}

    def put_segment(self, rec: SegmentRecord) -> None:
        self._x(
            "INSERT INTO segments (network, kind, id, data) VALUES (?,?,?,?) "
            "ON CONFLICT(network) DO UPDATE SET kind=excluded.kind, id=excluded.id, data=excluded.data",
            (rec.network, rec.kind, rec.id, _dump(rec)),
        )

    def delete_segment(self, network: str) -> None:
        self._x("DELETE FROM segments WHERE network=?", (network,))

    def segments(self) -> list[SegmentRecord]:
        return [SegmentRecord(**json.loads(d)) for (d,) in self._q("SELECT data FROM segments ORDER BY network")]

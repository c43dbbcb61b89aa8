"""The store as its consumers see it: one narrow interface per concern.

IPAM needs leases and the IPAddress records that hold them; the verbs need attachments and pod
statuses; the segments need their ID assignments. Each takes only its interface, so each can be
unit-tested over an in-memory store (``tests/fakes/store.py``) that keeps the same contract as the
SQLite one (``tests/unit/test_store.py`` runs against both). Every interface has ``transaction()``:
changes inside commit together, and a nested use joins the outer transaction.
"""

from __future__ import annotations

from collections.abc import Set
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ipamd.store.records import (
    AttachmentRecord,
    ImplicitPoolRecord,
    IPRecord,
    LeaseRecord,
    OutboxEntry,
    PodStatus,
    SegmentRecord,
)


class Transactional(Protocol):
    def transaction(self) -> AbstractContextManager[Any]: ...


class LeaseStore(Transactional, Protocol):
    """Leases (keyed by pool and IP, one per holder), allocation cursors, IPAddress records (and the records of
    delegates' leases and IPAMClaims, which hold leases the same way), and the implicit pools of inline ranges."""

    def leases_in_pool(self, pool: str) -> dict[int, LeaseRecord]: ...

    def taken_ips(self, pool: str) -> Set[int]: ...

    def lease_at(self, pool: str, ip: int) -> LeaseRecord | None: ...

    def lease_of(self, holder: str) -> LeaseRecord | None: ...

    def put_lease(self, lease: LeaseRecord) -> None: ...

    def delete_lease(self, pool: str, ip: int) -> None: ...

    def orphan_lease(self, lease: LeaseRecord, now: float) -> LeaseRecord: ...

    def orphaned_leases(self, pool: str | None = None) -> list[LeaseRecord]: ...

    def all_leases(self) -> list[LeaseRecord]: ...

    def cursor(self, pool: str) -> int | None: ...

    def set_cursor(self, pool: str, ip: int) -> None: ...

    def get_ip(self, key: str) -> IPRecord | None: ...

    def put_ip(self, rec: IPRecord) -> None: ...

    def delete_ip(self, key: str) -> None: ...

    def all_ips(self) -> list[IPRecord]: ...

    def ips_owned_by(self, pod_uid: str) -> list[IPRecord]: ...

    def ips_with_prefix(self, prefix: str) -> list[IPRecord]: ...  # keys starting with it ("IPAMClaim/")

    def put_implicit_pool(self, rec: ImplicitPoolRecord) -> None: ...

    def get_implicit_pool(self, key: str) -> ImplicitPoolRecord | None: ...

    def implicit_pools(self) -> list[ImplicitPoolRecord]: ...

    def delete_implicit_pool(self, key: str) -> None: ...


class AttachmentStore(Transactional, Protocol):
    """CNI attachments, keyed as the runtime keys them: (container ID, CNI_IFNAME)."""

    def get_attachment(self, container_id: str, ifname: str) -> AttachmentRecord | None: ...

    def put_attachment(self, rec: AttachmentRecord) -> None: ...

    def delete_attachment(self, container_id: str, ifname: str) -> None: ...

    def attachments(self) -> list[AttachmentRecord]: ...

    def attachments_of_pod(self, pod_uid: str) -> list[AttachmentRecord]: ...


class StatusStore(Transactional, Protocol):
    """The pods' networks-status as Plexus last wrote it."""

    def put_pod_status(self, status: PodStatus) -> None: ...

    def pod_status(self, uid: str) -> PodStatus | None: ...

    def pod_statuses(self) -> list[PodStatus]: ...

    def delete_pod_status(self, uid: str) -> None: ...


class SegmentStore(Transactional, Protocol):
    """Which VLAN ID or VNI each Network's segment uses on this node (one Network per ID and kind)."""

    def get_segment(self, network: str) -> SegmentRecord | None: ...

    def segment_ids(self, kind: str) -> dict[int, str]: ...

    def put_segment(self, rec: SegmentRecord) -> None: ...

    def delete_segment(self, network: str) -> None: ...

    def segments(self) -> list[SegmentRecord]: ...


class OutboxStore(Transactional, Protocol):
    """The writes to the cluster's API this node owes (``ipamd.kube.outbox``): durable, so a killed daemon's are made
    after its restart. ``outbox_add`` inside the transaction that made them owed commits with it."""

    def outbox_add(self, entry: OutboxEntry, supersede: bool = False) -> int: ...  # its seq

    def outbox_head(self, limit: int) -> list[OutboxEntry]: ...  # the oldest, in order

    # each target's oldest, in order: what a pass may make next (read only: a store may hand the same entries out again)
    def outbox_firsts(self) -> list[OutboxEntry]: ...

    def outbox_of(self, target: str) -> list[OutboxEntry]: ...

    def outbox_done(self, seq: int) -> None: ...

    def outbox_retry(self, seq: int, attempts: int, next_at: float, error: str) -> None: ...

    def outbox_drop(self, target: str, op: str) -> int: ...  # how many pending writes of ``target``/``op`` went

    def outbox_depth(self) -> int: ...


class VerbStore(AttachmentStore, StatusStore, Protocol):
    """What the CNI verbs keep: attachments and the pod statuses derived from them."""


class NodeStore(LeaseStore, AttachmentStore, StatusStore, SegmentStore, OutboxStore, Protocol):
    """Everything the node keeps (the SQLite store is one)."""

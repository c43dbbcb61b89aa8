"""The store's contract: every record survives the trip through SQLite; transactions are all or nothing.

The contract tests run against the SQLite store and against the in-memory one the unit tests of the
verbs and the reconciler use (``tests/fakes/store.py``), so those tests prove what they would over the
real store; the tests of SQLite's own properties (files, WAL, other connections) run against it alone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipamd.store.protocols import NodeStore
from ipamd.store.records import (
    AttachmentRecord,
    BuiltInterface,
    IPRecord,
    LeaseRecord,
    OutboxEntry,
    PodStatus,
    SegmentRecord,
)
from ipamd.store.sqlite import Store
from tests.fakes.store import MemoryStore

AnyStore = Store | MemoryStore


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest) -> Iterator[AnyStore]:
    s: AnyStore = Store(":memory:") if request.param == "sqlite" else MemoryStore()
    yield s
    s.close()


def lease(ip: int = 3322413066, holder: str | None = "IPAddress/ns/a", pool: str = "IPAddressPool/ns/p",
          **kw: object) -> LeaseRecord:
    return LeaseRecord(pool=pool, ip=ip, address="198.18.10.10", network="198.18.10.0/24", holder=holder,
                       holder_uid="uid-a", ttl=3600.0, created_at=1700000000.5, **kw)  # type: ignore[arg-type]


def ip_record(name: str = "a", owner: str = "") -> IPRecord:
    return IPRecord(
        key=f"IPAddress/ns/{name}", kind="IPAddress", namespace="ns", name=name, network_kind="Network",
        network_name="my-network", type="Static", static_ip="198.18.10.10", uid="uid-a", owner_pod_uid=owner,
        created_by="plexus", deleted=True, phase="Allocated", address="198.18.10.10", network="198.18.10.0/24",
        pool="IPAddressPool/ns/p", routes=({"destination": "198.19.0.0/24", "via": "198.18.10.1"},),
        used_by_pods=("ns/pod-a", "ns/pod-b"), used_by_uids=("u1", "u2"),
        conditions=({"type": "Allocated", "status": "True", "reason": "IPAddressAllocated", "message": "",
                     "lastTransitionTime": "2025-01-01T00:00:00Z"},),
        created_at=1700000000.25,
    )


def attachment(container: str = "c0ffee", ifname: str = "eth0", pod_uid: str = "u1") -> AttachmentRecord:
    iface = BuiltInterface(
        if_name="net1", kind="veth", network_key="Network/ns/my-network", network_type="Network",
        network_name="my-network", host_link="plx1a2b3c", bridge="plxbr600", mac="02:00:00:00:00:01", vlan_id=600,
        ip_keys=("IPAddress/ns/a", "IPAddress/ns/b"), created_ip_keys=("IPAddress/ns/a",), configure_ips=False,
        addresses=({"name": "a", "address": "198.18.10.10", "network": "198.18.10.0/24"},),
    )
    tap = BuiltInterface(if_name="tap0", kind="tap", network_key="ClusterNetwork/flat", network_type="ClusterNetwork",
                         network_name="flat")
    return AttachmentRecord(
        container_id=container, ifname=ifname, pod_uid=pod_uid, namespace="ns", pod_name="pod-a",
        netns="/run/netns/x", state="ready", interfaces=(iface, tap),
        result={"cniVersion": "1.1.0", "interfaces": [{"name": "net1"}], "ips": [], "dns": {}},
        networks_status=({"type": "Network", "name": "my-network", "ifName": "net1", "ipAddressConfigs": [],
                          "conditions": []},),
        updated_at=1700000001.0, network="plexus", pod_known=False,
    )


# -- round trips ----------------------------------------------------------------------------------

def test_lease_round_trip(store: AnyStore) -> None:
    bound = lease()
    orphan = lease(ip=3322413067, holder=None, state="orphaned", orphaned_at=1700000100.0, outside_ranges=True)
    store.put_lease(bound)
    store.put_lease(orphan)
    assert store.lease_at(bound.pool, bound.ip) == bound
    assert store.lease_of("IPAddress/ns/a") == bound
    assert store.leases_in_pool(bound.pool) == {bound.ip: bound, orphan.ip: orphan}
    assert store.taken_ips(bound.pool) == {bound.ip, orphan.ip}
    assert store.orphaned_leases() == [orphan]
    assert store.orphaned_leases(bound.pool) == [orphan]
    assert store.orphaned_leases("IPAddressPool/ns/other") == []
    assert store.all_leases() == [bound, orphan]


def test_lease_lookups_that_find_nothing(store: AnyStore) -> None:
    assert store.lease_at("IPAddressPool/ns/p", 1) is None
    assert store.lease_of("IPAddress/ns/nobody") is None
    assert store.leases_in_pool("IPAddressPool/ns/p") == {}
    assert store.taken_ips("IPAddressPool/ns/p") == set()


def test_orphan_and_delete_lease(store: AnyStore) -> None:
    bound = lease()
    store.put_lease(bound)
    orphan = store.orphan_lease(bound, now=1700000500.0)
    assert orphan.holder is None and orphan.holder_uid == "" and orphan.state == "orphaned"
    assert orphan.orphaned_at == 1700000500.0
    assert store.lease_of("IPAddress/ns/a") is None
    assert store.lease_at(bound.pool, bound.ip) == orphan
    store.delete_lease(bound.pool, bound.ip)
    assert store.all_leases() == []


def test_a_holder_has_one_lease(store: AnyStore) -> None:
    """The unique index ``leases_by_holder`` guards "one lease per IPAddress": a second lease for the same
    holder must be refused, not silently delete the lease (an address in use) the holder already has."""
    store.put_lease(lease(ip=1))
    with pytest.raises(sqlite3.IntegrityError):
        store.put_lease(lease(ip=2))
    assert [rec.ip for rec in store.all_leases()] == [1]


def test_same_ip_in_two_pools_is_two_leases(store: AnyStore) -> None:
    a = lease(ip=5, holder="IPAddress/ns/a", pool="IPAddressPool/ns/p")
    b = lease(ip=5, holder="IPAddress/ns/b", pool="IPAddressPool/ns/q")
    store.put_lease(a)
    store.put_lease(b)
    assert store.lease_of("IPAddress/ns/a") == a
    assert store.lease_of("IPAddress/ns/b") == b


def test_cursor_round_trip(store: AnyStore) -> None:
    assert store.cursor("IPAddressPool/ns/p") is None
    store.set_cursor("IPAddressPool/ns/p", 42)
    store.set_cursor("IPAddressPool/ns/p", 43)
    store.set_cursor("IPAddressPool/ns/q", 7)
    assert store.cursor("IPAddressPool/ns/p") == 43
    assert store.cursor("IPAddressPool/ns/q") == 7


def test_ip_record_round_trip(store: AnyStore) -> None:
    rec = ip_record(owner="u1")
    plain = IPRecord(key="ClusterIPAddress/c", kind="ClusterIPAddress", namespace="", name="c",
                     network_kind="ClusterNetwork", network_name="flat")
    store.put_ip(rec)
    store.put_ip(plain)
    assert store.get_ip(rec.key) == rec
    assert store.get_ip(plain.key) == plain
    assert store.all_ips() == [plain, rec]  # ordered by key
    assert store.ips_owned_by("u1") == [rec]
    assert store.ips_owned_by("u2") == []
    store.delete_ip(rec.key)
    assert store.get_ip(rec.key) is None
    assert store.all_ips() == [plain]


def test_attachment_round_trip(store: AnyStore) -> None:
    a = attachment()
    b = attachment(container="deadbeef", ifname="eth0", pod_uid="u2")
    c = attachment(container="c0ffee", ifname="eth1", pod_uid="u1")
    for rec in (a, b, c):
        store.put_attachment(rec)
    assert store.get_attachment("c0ffee", "eth0") == a
    assert store.get_attachment("c0ffee", "eth2") is None
    assert store.attachments() == [a, c, b]  # by container ID, then ifname
    assert sorted(r.ifname for r in store.attachments_of_pod("u1")) == ["eth0", "eth1"]
    store.delete_attachment("c0ffee", "eth0")
    assert store.get_attachment("c0ffee", "eth0") is None
    assert len(store.attachments()) == 2


def test_attachment_is_replaced_not_duplicated(store: AnyStore) -> None:
    store.put_attachment(attachment())
    newer = AttachmentRecord(container_id="c0ffee", ifname="eth0", pod_uid="u1", namespace="ns", pod_name="pod-a",
                             netns="", state="deleting")
    store.put_attachment(newer)
    assert store.attachments() == [newer]


def test_pod_status_round_trip(store: AnyStore) -> None:
    a = PodStatus(uid="u1", namespace="ns", name="b-pod",
                  networks_status=({"type": "Network", "name": "n", "ifName": "net1", "ipAddressConfigs": []},),
                  updated_at=1.5)
    b = PodStatus(uid="u2", namespace="ns", name="a-pod")
    store.put_pod_status(a)
    store.put_pod_status(b)
    assert store.pod_status("u1") == a
    assert store.pod_status("u3") is None
    assert store.pod_statuses() == [b, a]  # by namespace, then name
    store.delete_pod_status("u1")
    assert store.pod_statuses() == [b]


def test_segment_round_trip(store: AnyStore) -> None:
    vlan = SegmentRecord(network="Network/ns/n", kind="vlan", id=600, bridge="plxbr600",
                         network_class="my-network-class", status={"vlanID": 600, "parents": ["eth1"]})
    vx = SegmentRecord(network="ClusterNetwork/vx", kind="vxlan", id=5000, bridge="plxvx5000")
    flat = SegmentRecord(network="ClusterNetwork/flat", kind="none", id=0, bridge="plxflat")
    flat2 = SegmentRecord(network="ClusterNetwork/flat2", kind="none", id=0, bridge="plxflat2")
    for rec in (vlan, vx, flat, flat2):
        store.put_segment(rec)
    assert store.get_segment("Network/ns/n") == vlan
    assert store.get_segment("Network/ns/none") is None
    assert store.segment_ids("vlan") == {600: "Network/ns/n"}
    assert store.segment_ids("vxlan") == {5000: "ClusterNetwork/vx"}
    assert store.segments() == [flat, flat2, vx, vlan]
    store.delete_segment("ClusterNetwork/vx")
    assert store.segment_ids("vxlan") == {}


def test_a_segment_id_is_given_once_per_kind(store: AnyStore) -> None:
    store.put_segment(SegmentRecord(network="Network/ns/a", kind="vlan", id=600, bridge="b1"))
    store.put_segment(SegmentRecord(network="Network/ns/b", kind="vxlan", id=600, bridge="b2"))  # other kind: fine
    with pytest.raises(sqlite3.IntegrityError):  # segments_by_id: a VLAN ID is one network's
        store.put_segment(SegmentRecord(network="Network/ns/c", kind="vlan", id=600, bridge="b3"))
    assert store.get_segment("Network/ns/a") is not None


def test_generated_uid_is_made_once_then_kept(store: AnyStore) -> None:
    assert store.generated_uid("ns", "pod-a", "uid-1") == "uid-1"
    assert store.generated_uid("ns", "pod-a", "uid-2") == "uid-1"
    assert store.generated_uid("ns", "pod-b", "uid-3") == "uid-3"
    store.forget_generated_uids({("ns", "pod-b")})
    assert store.generated_uid("ns", "pod-a", "uid-4") == "uid-4"
    assert store.generated_uid("ns", "pod-b", "uid-5") == "uid-3"


# -- transactions ---------------------------------------------------------------------------------

class Boom(Exception):
    pass


def fill(store: AnyStore) -> None:
    store.put_lease(lease())
    store.set_cursor("IPAddressPool/ns/p", 10)
    store.put_ip(ip_record())
    store.put_attachment(attachment())
    store.put_pod_status(PodStatus(uid="u1", namespace="ns", name="p"))
    store.put_segment(SegmentRecord(network="Network/ns/n", kind="vlan", id=600, bridge="b"))


def assert_empty(store: AnyStore) -> None:
    assert store.all_leases() == []
    assert store.cursor("IPAddressPool/ns/p") is None
    assert store.all_ips() == []
    assert store.attachments() == []
    assert store.pod_statuses() == []
    assert store.segments() == []


def test_outbox_round_trip_in_order(store: AnyStore) -> None:
    first = store.outbox_add(OutboxEntry(0, "IPAddress/ns/a", "create", {"object": {"x": [1, 2]}}, created_at=5.0))
    second = store.outbox_add(OutboxEntry(0, "IPAddress/ns/a", "patch_status", {"status": {"phase": "Allocated"}}))
    other = store.outbox_add(OutboxEntry(0, "IPAddress/ns/b", "patch_status", {}))
    assert first < second < other and store.outbox_depth() == 3
    head = store.outbox_head(2)
    assert [(e.seq, e.op) for e in head] == [(first, "create"), (second, "patch_status")]
    assert head[0].body == {"object": {"x": [1, 2]}} and head[0].created_at == 5.0
    store.outbox_retry(first, 2, 99.0, "refused")
    retried = store.outbox_of("IPAddress/ns/a")[0]
    assert (retried.seq, retried.attempts, retried.next_at, retried.error) == (first, 2, 99.0, "refused")
    newer = store.outbox_add(OutboxEntry(0, "IPAddress/ns/a", "patch_status", {"status": {}}), supersede=True)
    assert [e.seq for e in store.outbox_of("IPAddress/ns/a")] == [first, newer] and newer > other
    assert store.outbox_drop("IPAddress/ns/b", "patch_status") == 1
    store.outbox_done(first)
    assert [e.seq for e in store.outbox_head(10)] == [newer]


def test_an_outbox_entry_goes_with_its_rolled_back_transaction(store: AnyStore) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.outbox_add(OutboxEntry(0, "IPAddress/ns/a", "create", {}))
        raise RuntimeError("boom")
    assert store.outbox_depth() == 0
    seq = store.outbox_add(OutboxEntry(0, "IPAddress/ns/a", "create", {}))
    assert store.outbox_head(1)[0].seq == seq


def test_commit_keeps_everything(store: AnyStore) -> None:
    with store.transaction() as tx:
        assert tx is store
        fill(store)
    assert len(store.all_leases()) == 1
    assert store.cursor("IPAddressPool/ns/p") == 10
    assert len(store.segments()) == 1


def test_rollback_on_exception_leaves_nothing(store: AnyStore) -> None:
    with pytest.raises(Boom), store.transaction():
        fill(store)
        raise Boom
    assert_empty(store)


def test_rollback_on_base_exception(store: AnyStore) -> None:
    with pytest.raises(KeyboardInterrupt), store.transaction():
        fill(store)
        raise KeyboardInterrupt
    assert_empty(store)


def test_nested_transactions_join_the_outer_one(store: AnyStore) -> None:
    with pytest.raises(Boom), store.transaction():
        store.put_lease(lease())
        with store.transaction():
            store.put_ip(ip_record())
            with store.transaction():
                store.set_cursor("IPAddressPool/ns/p", 1)
        assert store.get_ip("IPAddress/ns/a") is not None  # visible inside
        raise Boom  # the outer failure takes the inner, already "finished", work with it
    assert_empty(store)


def test_failure_in_an_inner_transaction_rolls_back_the_outer(store: AnyStore) -> None:
    with pytest.raises(Boom), store.transaction():
        store.put_lease(lease())
        with store.transaction():
            store.put_ip(ip_record())
            raise Boom
    assert_empty(store)


def test_store_is_usable_after_a_rollback(store: AnyStore) -> None:
    with pytest.raises(Boom), store.transaction():
        store.put_lease(lease())
        raise Boom
    with store.transaction():
        store.put_lease(lease())
    assert store.all_leases() == [lease()]


def test_a_failed_write_rolls_back_the_transaction(store: AnyStore) -> None:
    bad = AttachmentRecord(container_id="c", ifname="eth0", pod_uid="u", namespace="ns", pod_name="p", netns="",
                           state="adding", result={"not": object()})
    with pytest.raises(TypeError), store.transaction():
        store.put_lease(lease(ip=1))
        store.put_attachment(bad)  # cannot be stored as JSON
    assert store.all_leases() == []
    assert store.attachments() == []


def test_inner_commit_is_not_visible_to_others_before_the_outer_ends(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store(str(path))
    other = sqlite3.connect(path)
    try:
        with store.transaction():
            with store.transaction():
                store.put_lease(lease())
            assert other.execute("SELECT COUNT(*) FROM leases").fetchone() == (0,)
        assert other.execute("SELECT COUNT(*) FROM leases").fetchone() == (1,)
    finally:
        other.close()
        store.close()


# -- durability -----------------------------------------------------------------------------------

def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "dir" / "state.db")  # parent directories are made
    store = Store(path)
    with store.transaction():
        fill(store)
    store.generated_uid("ns", "pod", "uid-9")
    expected = (store.all_leases(), store.all_ips(), store.attachments(), store.pod_statuses(), store.segments())
    store.close()

    again = Store(path)
    try:
        assert (again.all_leases(), again.all_ips(), again.attachments(), again.pod_statuses(),
                again.segments()) == expected
        assert again.cursor("IPAddressPool/ns/p") == 10
        assert again.generated_uid("ns", "pod", "uid-10") == "uid-9"
        assert again.get_attachment("c0ffee", "eth0") == attachment()
        assert again.get_ip("IPAddress/ns/a") == ip_record()
    finally:
        again.close()


def test_rolled_back_work_does_not_survive_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    store = Store(path)
    with store.transaction():
        store.put_lease(lease(ip=1))
    with pytest.raises(Boom), store.transaction():
        store.put_lease(lease(ip=2, holder="IPAddress/ns/b"))
        raise Boom
    store.close()
    again = Store(path)
    try:
        assert [rec.ip for rec in again.all_leases()] == [1]
    finally:
        again.close()


def test_file_db_uses_wal(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "state.db"))
    try:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()


def test_both_stores_keep_the_node_store_contract() -> None:
    """mypy checks this assignment: the fake has every method of every store interface the daemon uses."""
    stores: list[NodeStore] = [Store(":memory:"), MemoryStore()]
    assert len(stores) == 2

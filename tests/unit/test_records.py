"""Records in the store survive a change of build: an attachment written by a newer daemon (fields this one does not
know) loads, and one written before a field existed gets its default."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ipamd.store.records import (
    AttachmentRecord,
    BuiltInterface,
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


def record(**iface: object) -> AttachmentRecord:
    return AttachmentRecord("c1", "eth0", "uid", "ns", "pod", "/run/netns/x", "ready",
                            interfaces=(BuiltInterface("net1", "veth", "Network/ns/n", "Network", "n", **iface),))  # type: ignore[arg-type]


def test_a_record_round_trips_with_its_policy_routing() -> None:
    rec = record(table=100, policy_routes=({"destination": "0.0.0.0/0", "via": "198.18.5.1"},))
    assert load_attachment(dump(rec)) == rec


def test_unknown_fields_of_a_newer_build_are_ignored_and_missing_ones_defaulted() -> None:
    data = json.loads(dump(record()))
    data["interfaces"][0]["from_the_future"] = 1
    del data["interfaces"][0]["table"], data["interfaces"][0]["policy_routes"]
    assert load_attachment(json.dumps(data)) == record()


def test_every_kind_of_record_written_by_a_newer_build_loads() -> None:
    """A daemon rolled back to this build reads the store a later one wrote: each record kind, with a field this build
    does not know, loads as the record it knows."""
    records: list[tuple[Any, Callable[[str], Any]]] = [
        (LeaseRecord("IPAddressPool/ns/p", 1, "198.18.0.1", "198.18.0.0/24", "IPAddress/ns/a"), load_lease),
        (IPRecord("IPAddress/ns/a", "IPAddress", "ns", "a", "Network", "n"), load_ip),
        (record(), load_attachment),
        (ImplicitPoolRecord("k", "conf", "ImplicitPool/n", "198.18.0.0/24", ((1, 9),)), load_implicit_pool),
        (PodStatus("uid", "ns", "pod"), load_pod_status),
        (SegmentRecord("Network/ns/n", "vxlan", 7, "plx-br7"), load_segment),
    ]
    for rec, load in records:
        data = json.loads(dump(rec))
        data["from_the_future"] = {"any": "thing"}
        assert load(json.dumps(data)) == rec, type(rec).__name__
    owed = OutboxEntry(0, "Pod/ns/p", "pod_status", {"a": 1}, created_at=1.0)
    data = json.loads(dump(owed))
    data.pop("seq")
    data["from_the_future"] = 1
    assert load_outbox(5, json.dumps(data)) == OutboxEntry(5, "Pod/ns/p", "pod_status", {"a": 1}, created_at=1.0)

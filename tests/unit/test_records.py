"""Records in the store survive a change of build: an attachment written by a newer daemon (fields this one does not
know) loads, and one written before a field existed gets its default."""

from __future__ import annotations

import json

from ipamd.store.records import AttachmentRecord, BuiltInterface, dump, load_attachment


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

"""Inline ranges of NADs that share one configuration name: each keeps the others' empty ranges; a range is
forgotten only once no NAD declares it and it holds no address."""

from __future__ import annotations

import json
from typing import Any

from ipamd.model.objects import NPWG_API_VERSION
from tests.unit.test_plexus_ipam import NS, Node, obj


def nad(namespace: str, name: str, config_name: str, rng: str) -> Any:
    """A NAD whose plugin leases from ``rng`` with plexus-ipam, its configuration named ``config_name``."""
    conf = {"cniVersion": "1.0.0", "name": config_name, "type": "macvlan",
            "ipam": {"type": "plexus-ipam", "range": rng}}
    return obj("NetworkAttachmentDefinition", name, {"config": json.dumps(conf)}, ns=namespace, api=NPWG_API_VERSION)


def lease_and_let_go(node: Node, rng: str, container: str, network: str = "shared") -> None:
    """An address of ``rng`` leased and released, its quarantine over: the range is recorded and holds nothing."""
    node.call("ADD", {"range": rng}, container=container, network=network)
    node.call("DEL", {"range": rng}, container=container, network=network)
    node.clock += 3600
    node.ipam.expire(None, node.clock)


def test_two_nads_of_one_configuration_name_keep_each_others_empty_range() -> None:
    """NADs apps/a and other/b both name their configuration "shared", with ranges of their own. b's first ADD recorded
    its range and forgot a's (it held no address: the pod had left): a configuration that asks not to overlap
    (nad-c over a's range) was then accepted, and a's next ADD recorded its range again over nad-c's."""
    node = Node()
    node.source.add(nad(NS, "a", "shared", "198.18.53.0/24"))
    node.source.add(nad("other", "b", "shared", "198.18.54.0/24"))
    lease_and_let_go(node, "198.18.53.0/24", "a1")
    node.call("ADD", {"range": "198.18.54.0/24"}, container="b1", network="shared")  # b's pod
    err = node.error("ADD", {"range": "198.18.53.0/25", "enable_overlapping_ranges": False}, network="nad-c")
    assert err.code == 7 and "shared (198.18.53.0/24" in str(err), str(err)
    node.call("ADD", {"range": "198.18.53.0/24"}, container="a2", network="shared")  # a's next pod
    assert {p.network for p in node.store.implicit_pools()} == {"198.18.53.0/24", "198.18.54.0/24"}


def test_a_range_no_nad_declares_any_longer_is_forgotten_the_others_kept() -> None:
    """a is edited to another range: its old one (declared by nobody now, holding nothing) goes when the new one is
    recorded; b's, declared and empty, stays."""
    node = Node()
    node.source.add(nad(NS, "a", "shared", "198.18.53.0/24"))
    node.source.add(nad("other", "b", "shared", "198.18.54.0/24"))
    lease_and_let_go(node, "198.18.53.0/24", "a1")
    lease_and_let_go(node, "198.18.54.0/24", "b1")
    node.source.add(nad(NS, "a", "shared", "198.18.58.0/24"))  # a edited
    node.call("ADD", {"range": "198.18.58.0/24"}, container="a2", network="shared")
    assert {p.network for p in node.store.implicit_pools()} == {"198.18.54.0/24", "198.18.58.0/24"}
    got = node.call("ADD", {"range": "198.18.53.0/25", "enable_overlapping_ranges": False}, network="nad-c")
    assert got["ips"]


def test_a_range_still_holding_an_address_is_kept_though_no_nad_declares_it() -> None:
    node = Node()
    node.source.add(nad(NS, "a", "shared", "198.18.53.0/24"))
    node.call("ADD", {"range": "198.18.53.0/24"}, container="a1", network="shared")  # its pod still runs
    node.source.add(nad(NS, "a", "shared", "198.18.58.0/24"))
    node.call("ADD", {"range": "198.18.58.0/24"}, container="a2", network="shared")
    assert {p.network for p in node.store.implicit_pools()} == {"198.18.53.0/24", "198.18.58.0/24"}

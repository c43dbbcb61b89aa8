"""The reconciler in-process, over the same fakes as the verbs (no root): crash recovery, pods that are
gone, user IPAddresses, quarantine, segments made ahead of pods and removed after their Network, and the
cluster's stray leases."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from cni.errors import AddressConflict
from ipamd.ipam.addresses import Ipam
from ipamd.ipam.registry import NodeLocalRegistry
from ipamd.model.objects import API_VERSION, POD_ANNOTATIONS_CAPABILITY, USED_BY_ANNOTATION, parse_object
from ipamd.node.reconcile import Reconciler
from ipamd.store.protocols import LeaseStore
from ipamd.store.records import IPRecord, LeaseRecord
from tests.unit.test_attacher import NS, TWO_NETWORKS, Node, app_pod, obj, undo_could_not_forget


class Registry(NodeLocalRegistry):
    def __init__(self) -> None:
        self.stray_calls: list[float] = []
        self.in_use: Callable[[str, int], bool] | None = None

    def stray(self, store: LeaseStore, grace_s: float,
              in_use: Callable[[str, int], bool] | None = None) -> list[LeaseRecord]:
        self.stray_calls.append(grace_s)
        self.in_use = in_use
        return []


def reconciler(node: Node, cluster: bool = False, registry: Registry | None = None) -> Reconciler:
    node.ipam.registry = registry or Registry()
    return Reconciler(node.store, node.source, node.ipam, node.attacher, node.segments, node.publisher, interval=30,
                      cluster=cluster)


def test_recover_tears_down_what_a_crash_left_half_done_and_only_that() -> None:
    crashed = Node()
    crashed.call("ADD", container="done")  # and below, the record a crash mid-ADD leaves: state adding
    record = crashed.store.attachments()[0]
    crashed.store.put_attachment(record.__class__(**{**{f: getattr(record, f) for f in record.__slots__},
                                                     "container_id": "half", "state": "adding"}))
    assert reconciler(crashed).recover() == 1
    assert [a.container_id for a in crashed.store.attachments()] == ["done"]


def test_attachments_of_pods_that_are_gone_are_released_and_live_pods_kept() -> None:
    node = Node()
    node.call("ADD")
    rec = reconciler(node)
    rec.run_once()
    assert len(node.store.attachments()) == 1, "the pod exists: never touched"
    node.source.remove("Pod", NS, "app")
    rec.run_once()
    assert node.store.attachments() == []
    assert all(lease.state == "orphaned" for lease in node.store.all_leases()), "quarantined, not freed"
    assert node.live() == set()


def test_in_a_cluster_young_attachments_are_never_judged_gone() -> None:
    node = Node()
    node.call("ADD")
    node.source.remove("Pod", NS, "app")  # the pod cache may lag an ADD
    registry = Registry()
    reconciler(node, cluster=True, registry=registry).run_once()
    assert len(node.store.attachments()) == 1
    assert len(registry.stray_calls) == 1, "stray leases of the node looked for in a cluster"
    lease = LeaseRecord(pool="IPAddressPool/ns/p", ip=3323071000, address="198.18.10.24", network="198.18.10.0/24",
                        holder="IPAddress/ns/x")
    assert registry.in_use is not None and not registry.in_use(lease.pool, lease.ip)
    assert node.ipam._reserve(lease) and registry.in_use(lease.pool, lease.ip), \
        "an address a call of the node is claiming or taking up right now is no stray"


def _added_from_the_runtimes_annotations(node: Node) -> None:
    """The ADD takes pod app (uid-app) from the runtime's annotations: the cache does not show it at that UID."""
    spec = {"network.deckhouse.io/networks-spec": json.dumps(TWO_NETWORKS)}
    node.call("ADD", config={"runtimeConfig": {POD_ANNOTATIONS_CAPABILITY: spec}})
    assert [a.pod_known for a in node.store.attachments()] == [False]


def test_an_attachment_of_a_pod_the_cache_never_showed_is_kept() -> None:
    """Added from the runtime's annotations while the cache shows no pod, or the pod's predecessor: never judged
    gone, however many rounds pass (the cache may not have listed it yet)."""
    for cached in (None, app_pod(TWO_NETWORKS, uid="uid-old")):
        node = Node()
        node.source.remove("Pod", NS, "app")
        if cached is not None:
            node.source.add(cached)
        _added_from_the_runtimes_annotations(node)
        rec = reconciler(node)
        rec.run_once()
        rec.run_once()
        assert [(a.pod_uid, a.pod_known) for a in node.store.attachments()] == [("uid-app", False)]
        assert node.live() == {"net1", "net2"}


def test_an_attachment_added_from_the_runtimes_annotations_is_reclaimed_once_its_pod_is_gone() -> None:
    """An ADD that took the pod from the runtime's annotations (the cache had not shown it yet): once the cache
    shows the pod at that UID and it is then deleted without a DEL, the reconciler reclaims its attachment. Its
    record said ``pod_known=False`` for ever, and ``_release_gone_pods`` skipped it: its leases, Auto IPAddresses
    and pod status were kept for good (found in review)."""
    node = Node()
    node.source.remove("Pod", NS, "app")
    _added_from_the_runtimes_annotations(node)
    node.source.add(app_pod(TWO_NETWORKS))  # the cache catches up
    rec = reconciler(node)
    rec.run_once()
    assert [a.pod_known for a in node.store.attachments()] == [True], "its pod is known now"
    node.source.remove("Pod", NS, "app")  # deleted; its DEL never comes (node rebooted, runtime state lost)
    rec.run_once()
    assert node.store.attachments() == [], "the pod is gone: its attachment and addresses must be let go"
    assert node.live() == set() and node.store.pod_status("uid-app") is None
    assert all(lease.state == "orphaned" for lease in node.store.all_leases()), "quarantined, not freed"


def test_a_recreated_pod_added_while_the_cache_showed_its_predecessor_is_reclaimed_once_gone() -> None:
    """The common path to ``pod_known=False``: the cache still shows the pod's predecessor (another UID) at ADD."""
    node = Node()
    node.source.remove("Pod", NS, "app")
    node.source.add(app_pod(TWO_NETWORKS, uid="uid-old"))  # the cache lags: the old pod of that name
    _added_from_the_runtimes_annotations(node)
    node.source.remove("Pod", NS, "app")
    node.source.add(app_pod(TWO_NETWORKS))  # caught up: uid-app
    rec = reconciler(node)
    rec.run_once()
    assert len(node.store.attachments()) == 1
    node.source.remove("Pod", NS, "app")  # deleted; no DEL comes
    rec.run_once()
    assert node.store.attachments() == [], "uid-app is gone: its attachment must not be kept for ever"


def test_user_ipaddresses_get_their_address_and_let_it_go_when_deleted() -> None:
    node = Node()
    node.source.add(obj("IPAddress", "mine", {"networkRef": {"kind": "Network", "name": "net-b"}}))
    rec = reconciler(node)
    rec.run_once()
    (ip,) = node.store.all_ips()
    assert ip.phase == "Allocated" and ip.address.startswith("198.18.41.")
    node.source.remove("IPAddress", NS, "mine")
    rec.run_once()
    assert node.store.all_ips() == []
    (lease,) = node.store.all_leases()
    assert lease.state == "orphaned", "pool-b's leaseTTL is an hour"
    node.ipam.clock = lambda: 1_700_000_000.0 + 3601
    rec.run_once()
    assert node.store.all_leases() == [], "the quarantine is over"


def test_a_static_deleted_in_use_then_made_again_with_another_ip_moves_when_its_pod_goes() -> None:
    """A round sees the Static deleted while its pod uses it (kept, marked deleted); it is made again asking for
    another address: it stays marked (not kept as the new object), lets the old address go with the pod's DEL, and
    the next round leases the new one."""
    node = Node()
    static = {"networkRef": {"kind": "Network", "name": "net-b"}, "type": "Static", "static": {"ip": "198.18.41.7"}}
    node.source.add(obj("IPAddress", "mine", static, uid="old-uid"))
    node.source.add(app_pod([{"type": "Network", "name": "net-b", "ifName": "net2", "ipAddressNames": ["mine"]}]))
    node.call("ADD")
    rec = reconciler(node)
    node.source.remove("IPAddress", NS, "mine")
    rec.run_once()
    node.source.add(obj("IPAddress", "mine", {**static, "static": {"ip": "198.18.41.8"}}, uid="new-uid"))
    rec.run_once()
    (ip,) = node.store.all_ips()
    assert ip.deleted and ip.address == "198.18.41.7", "the pod's interface carries it until its DEL"
    node.call("DEL")
    rec.run_once()
    (ip,) = node.store.all_ips()
    assert (ip.uid, ip.address, ip.phase, ip.deleted) == ("new-uid", "198.18.41.8", "Allocated", False)
    states = {lease.address: lease.state for lease in node.store.all_leases()}
    assert states == {"198.18.41.7": "orphaned", "198.18.41.8": "bound"}


def test_segments_are_made_ahead_of_pods_and_removed_after_their_network() -> None:
    node = Node()
    rec = reconciler(node)
    rec.run_once()
    bridges = {s.network: s.bridge for s in node.store.segments()}
    assert set(bridges) == {f"Network/{NS}/net-a", f"Network/{NS}/net-b"}
    assert all(node.links.index(b) is not None for b in bridges.values())
    assert {k: v[1] for k, v in node.publisher.node_attachments.items()} == dict.fromkeys(bridges, True)
    node.call("ADD")
    node.source.remove("Network", NS, "net-a")
    rec.run_once()
    assert node.links.index(bridges[f"Network/{NS}/net-a"]) is not None, "a pod still uses it"
    node.call("DEL")
    rec.run_once()
    assert node.links.index(bridges[f"Network/{NS}/net-a"]) is None
    assert node.publisher.node_detachments == [f"Network/{NS}/net-a"]


def test_a_segment_that_cannot_be_made_is_reported_and_the_others_still_are() -> None:
    node = Node()
    node.source.add(obj("NetworkClass", "parented", {"vlan": {"idPool": ["900-910"],
                                                               "parentNodeNetworkInterfaces": {"names": ["eth9"]}}},
                        namespaced=False))
    node.source.add(obj("Network", "net-c", {"networkClass": "parented", "vlan": {"id": 905}}))

    def no_parent(parent: str, vlan_id: int, busy: bool = False) -> str:
        raise OSError(f"{parent} does not exist")

    node.links.ensure_vlan = no_parent  # type: ignore[method-assign]
    reconciler(node).run_once()
    assert node.publisher.node_attachments[f"Network/{NS}/net-c"][1] is False
    assert node.publisher.node_attachments[f"Network/{NS}/net-a"][1] is True


def test_a_burst_of_object_changes_makes_one_settled_round_not_one_each() -> None:
    """Every ADD in Kubernetes mode changes objects, each a wake: a woken reconciler waits ``settle_s`` and then makes
    one round for all the changes meanwhile, instead of a round per change competing with the calls."""
    import threading
    import time

    node = Node()
    rec = Reconciler(node.store, node.source, node.ipam, node.attacher, node.segments, node.publisher, interval=30,
                     settle_s=0.3)
    rounds: list[float] = []
    ran = threading.Event()

    def counted() -> None:
        rounds.append(time.monotonic())
        ran.set()

    rec.run_once = counted  # type: ignore[method-assign]
    rec.start()
    try:
        assert ran.wait(5)  # the first round, at start
        woken = time.monotonic()
        for _ in range(20):  # a burst of changes over 0.2 s
            rec.wake()
            time.sleep(0.01)
        time.sleep(0.6)
        after = [t for t in rounds if t > woken]
        assert len(after) == 1, after
        assert after[0] - woken >= 0.29, "settled before its round"
    finally:
        rec.stop()


def granted(name: str, pool: str, vlan_id: int) -> Any:
    """A Network as the controller leaves it, its VLAN ID granted in its status: a cluster node moves it to another
    granted one at once (a lone node waits for its pods to go, as the controller does)."""
    return parse_object({"apiVersion": API_VERSION, "kind": "Network", "metadata": {"name": name, "namespace": NS},
                         "spec": {"networkClass": "cls", "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool",
                                                                                       "name": pool}}},
                         "status": {"vlanID": vlan_id, "bridgeName": f"plx-br-{vlan_id}"}})


def granted_node() -> tuple[Node, Reconciler]:
    """A cluster node whose Networks have their VLAN IDs granted."""
    node = Node()
    node.segments.cluster = True
    node.source.add(granted("net-a", "pool-a", 600))
    node.source.add(granted("net-b", "pool-b", 601))
    return node, reconciler(node, cluster=True)


def test_the_old_segment_of_a_network_given_another_id_is_reported_while_pods_sit_on_it() -> None:
    """A Network given another VLAN ID keeps its old segment while pods sit on its bridge; this node reports it (an
    attachment of its own, under the old segment's key), so that the controller keeps the old ID held meanwhile:
    granted to another Network, that Network would join those pods' wire. Detached once the segment goes."""
    from ipamd.node.segments import retired_key

    node, rec = granted_node()
    node.call("ADD")
    rec.run_once()
    old = {s.network: s for s in node.store.segments()}[f"Network/{NS}/net-a"]
    node.source.add(granted("net-a", "pool-a", 650))
    rec.run_once()
    retired = retired_key(f"Network/{NS}/net-a", old.bridge)
    assert node.publisher.node_attachments.get(retired) == (old.bridge, True, ""), node.publisher.node_attachments
    assert node.publisher.node_attachments[f"Network/{NS}/net-a"][0] == "plx-br-650"
    node.call("DEL")
    rec.run_once()
    assert node.links.index(old.bridge) is None and retired in node.publisher.node_detachments


def test_an_old_segment_taken_up_again_is_detached() -> None:
    """A network given another ID and then its old one back takes its old segment up again: the attachment the node
    reported for that old segment under its own key goes (else it held the ID under that key for ever)."""
    from ipamd.node.segments import retired_key

    node, rec = granted_node()
    node.call("ADD")
    rec.run_once()
    old = {s.network: s for s in node.store.segments()}[f"Network/{NS}/net-a"]
    node.source.add(granted("net-a", "pool-a", 650))
    rec.run_once()
    retired = retired_key(f"Network/{NS}/net-a", old.bridge)
    assert retired in node.publisher.node_attachments
    node.source.add(granted("net-a", "pool-a", old.id))
    rec.run_once()
    assert retired in node.publisher.node_detachments
    assert {s.network: s.bridge for s in node.store.segments()}[f"Network/{NS}/net-a"] == old.bridge


def test_a_round_finishes_an_add_whose_undo_could_not_forget_its_record() -> None:
    """A failed ADD whose last undo step could not forget its record (the store failed) leaves it ``undoing``: the
    round finishes it (``finish_deletions``), not only when some other record is ``deleting``."""
    node = Node()
    stuck = undo_could_not_forget(node)
    assert stuck.state == "undoing"
    with node.store.transaction():  # left long enough ago for the round to judge it left behind
        node.store.put_attachment(replace(stuck, updated_at=stuck.updated_at - 60))
    reconciler(node).run_once()
    node.assert_nothing_left()


def test_an_auto_address_on_a_policy_routes_gateway_is_moved_off_it_and_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """An Auto IPAddress that got its Network's policy-route gateway before gateways were cut out of the ranges, and
    that no pod uses, gets another address (the router's quarantined): a gateway is never a pod's. The round's pool
    check once judged by the raw pool against ``lease_for``'s view of the Network and logged "pool changed" every
    round; now a round that changes nothing logs nothing. (One a pod uses keeps it, flagged:
    ``test_route_gateway.test_the_round_moves_an_unused_ipaddress_off_a_new_gateway_and_keeps_a_used_one_flagged``.)"""
    node = Node()
    pool_ref = {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pool-gw"}}
    node.source.add(obj("IPAddressPool", "pool-gw", {"pools": [{"network": "198.18.5.0/24"}]}))
    node.source.add(obj("Network", "ext", {"networkClass": "cls", "routingTable": 100, "ipam": pool_ref}))
    node.source.add(obj("IPAddress", "mine", {"networkRef": {"kind": "Network", "name": "ext"}}))
    rec = reconciler(node)
    rec.run_once()  # before the upgrade: no policy route, and a pool without ranges hands out .1 first
    (lease,) = node.store.all_leases()
    assert (lease.address, lease.outside_ranges) == ("198.18.5.1", False)
    node.source.add(obj("Network", "ext", {"networkClass": "cls", "routingTable": 100, "ipam": pool_ref,
                                           "policyRoutes": [{"destination": "0.0.0.0/0", "via": "198.18.5.1"}]}))
    logged = []
    with caplog.at_level("WARNING", logger="ipamd.node.reconcile"):
        for _ in range(3):
            rec.run_once()
            leases = sorted((lease.address, lease.holder) for lease in node.store.all_leases())
            assert leases == [("198.18.5.1", None), ("198.18.5.2", f"IPAddress/{NS}/mine")], "moved off the router's"
            logged.append(sum("pool-gw changed" in r.getMessage() for r in caplog.records))
    assert logged[-1] == logged[-2] <= 2, logged


# -- a Static the pool cannot serve: Pending, saying why, holding nothing ---------------------------------------------

def _static(name: str, ip: str, net: str = "net-b") -> Any:
    return obj("IPAddress", name, {"networkRef": {"kind": "Network", "name": net}, "type": "Static",
                                   "static": {"ip": ip}})


def _allocated(node: Node, name: str) -> tuple[IPRecord, dict[str, str]]:
    """The store's record of IPAddress ``name`` and its ``Allocated`` condition (failing when there is none: a
    refused Static was dropped with a line in the log and shown nowhere, not even by ``plexusctl get ipaddresses``)."""
    rec = node.store.get_ip(f"IPAddress/{NS}/{name}")
    assert rec is not None, f"IPAddress {name} is not recorded, not even Pending"
    return rec, next(c for c in rec.conditions if c["type"] == "Allocated")


def _two_statics_for_one_address(node: Node, cluster: bool = False) -> Reconciler:
    rec = reconciler(node, cluster=cluster)
    node.source.add(_static("first", "198.18.41.7"))
    rec.run_once()
    node.source.add(_static("second", "198.18.41.7"))
    rec.run_once()
    return rec


@pytest.mark.parametrize("cluster", [False, True], ids=["local", "kube-node"])
def test_a_static_whose_address_another_holds_is_pending_then_gets_it_once_freed(cluster: bool) -> None:
    """README: an IPAddress gets its address at once. A Static whose address another IPAddress holds was dropped
    (``created``, then a WARNING in the log, and nothing in ``plexusctl get ipaddresses``); it is Pending with
    ``Allocated=False/IPAddressAlreadyLeased`` naming the holder and the pool, holds no lease, and gets the address
    once its holder is deleted (a Static adopts a quarantined address). A node in a cluster leases Statics itself."""
    node = Node()
    rec = _two_statics_for_one_address(node, cluster)
    second, cond = _allocated(node, "second")
    assert (second.phase, second.address, second.network) == ("Pending", "", "")
    assert (cond["status"], cond["reason"]) == ("False", "IPAddressAlreadyLeased")
    assert all(w in cond["message"] for w in ("198.18.41.7", "IPAddress/apps/first", "apps/pool-b")), cond
    assert node.store.lease_of(second.key) is None, "a Pending record holds no lease"
    assert [lease.holder for lease in node.store.all_leases()] == ["IPAddress/apps/first"]
    rec.run_once()
    again, _ = _allocated(node, "second")
    assert again == second, "a round more changes nothing (the condition's time kept)"
    node.source.remove("IPAddress", NS, "first")
    rec.run_once()  # the round lets the deleted ones go before it leases: it adopts the address in this round
    got, cond = _allocated(node, "second")
    assert (got.phase, got.address) == ("Allocated", "198.18.41.7")
    assert (cond["status"], cond["reason"], cond["message"]) == ("True", "IPAddressAllocated", "")
    assert [(lease.holder, lease.state) for lease in node.store.all_leases()] == [(got.key, "bound")]


@pytest.mark.parametrize(("name", "ip", "net", "reason", "words"), [
    ("outside", "198.18.99.5", "net-b", "IPAddressOutsidePool", ("198.18.99.5", "apps/pool-b", "198.18.41.0/24")),
    ("v6", "2001:2::5", "net-b", "IPAddressOutsidePool", ("2001:2::5", "apps/pool-b", "198.18.41.0/24")),
    ("pool-gw", "198.18.42.1", "net-gw", "IPAddressIsGateway", ("198.18.42.1", "apps/pool-gw", "gateway")),
    ("policy-gw", "198.18.42.254", "net-gw", "IPAddressIsGateway",
     ("198.18.42.254", "apps/net-gw", "spec.policyRoutes[0].via")),
], ids=["outside-network", "other-family", "pool-route-gateway", "policy-route-gateway"])
@pytest.mark.parametrize("cluster", [False, True], ids=["local", "kube-node"])
def test_a_static_the_pool_never_leases_is_pending_naming_why(cluster: bool, name: str, ip: str, net: str,
                                                               reason: str, words: tuple[str, ...]) -> None:
    node = Node()
    node.source.add(obj("IPAddressPool", "pool-gw", {"pools": [
        {"network": "198.18.42.0/24", "routes": [{"destination": "198.18.43.0/24", "via": "198.18.42.1"}]}]}))
    node.source.add(obj("Network", "net-gw", {"networkClass": "cls", "routingTable": 100,
                                              "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pool-gw"}},
                                              "policyRoutes": [{"destination": "0.0.0.0/0", "via": "198.18.42.254"}]}))
    node.source.add(_static(name, ip, net))
    reconciler(node, cluster=cluster).run_once()
    got, cond = _allocated(node, name)
    assert (got.phase, got.address, cond["status"], cond["reason"]) == ("Pending", "", "False", reason)
    assert all(w in cond["message"] for w in words), cond["message"]
    assert node.store.all_leases() == [], "nothing leased"


def test_a_pending_static_deleted_goes_and_leaves_the_holders_lease_alone() -> None:
    node = Node()
    node.source.add(_static("outside", "198.18.99.5"))
    rec = _two_statics_for_one_address(node)
    assert {r.name: r.phase for r in node.store.all_ips()} == {"first": "Allocated", "second": "Pending",
                                                               "outside": "Pending"}
    node.source.remove("IPAddress", NS, "second")
    node.source.remove("IPAddress", NS, "outside")
    rec.run_once()
    assert [r.name for r in node.store.all_ips()] == ["first"]
    assert [(lease.holder, lease.state) for lease in node.store.all_leases()] == [("IPAddress/apps/first", "bound")]


def test_a_pending_static_named_by_a_pod_is_refused_and_stays_pending_without_a_lease() -> None:
    node = Node()
    _two_statics_for_one_address(node)
    node.source.add(obj("Pod", "app", {}, uid="uid-app", annotations={"network.deckhouse.io/networks-spec": json.dumps(
        [{"type": "Network", "name": "net-b", "ipAddressNames": ["second"]}])}))
    with pytest.raises(AddressConflict) as refused:
        node.call("ADD")
    assert "IPAddress/apps/first" in refused.value.msg and "apps/pool-b" in refused.value.msg
    second, _ = _allocated(node, "second")
    assert second.phase == "Pending" and not second.used_by_uids and node.store.lease_of(second.key) is None


def test_a_pending_static_survives_a_restart_and_is_published_again() -> None:
    node = Node()
    _two_statics_for_one_address(node)
    before, _ = _allocated(node, "second")
    ipam = Ipam(node.store, node.source, lambda: 1_700_000_000.0 + 60)  # a new daemon over the same store
    restarted = Reconciler(node.store, node.source, ipam, node.attacher, node.segments, node.publisher, interval=30)
    restarted.recover()
    assert any("IPAddress/apps/second" in keys for keys, _ in node.publisher.republished)
    restarted.run_once()
    after, _ = _allocated(node, "second")
    assert after == before and node.store.lease_of(after.key) is None


def test_a_pending_static_edited_to_a_free_address_gets_it() -> None:
    """The webhook lets a Static that holds no address change its static.ip: the Pending record is of the old ask."""
    node = Node()
    rec = _two_statics_for_one_address(node)
    node.source.add(_static("second", "198.18.41.8"))
    rec.run_once()
    got, _ = _allocated(node, "second")
    assert (got.phase, got.address) == ("Allocated", "198.18.41.8")
    assert {lease.address: lease.holder for lease in node.store.all_leases()} == {
        "198.18.41.7": "IPAddress/apps/first", "198.18.41.8": "IPAddress/apps/second"}


# -- a round's change of a user's IPAddress: its status owed, once ----------------------------------------------------

def _written(node: Node, name: str) -> list[tuple[str, str, str]]:
    """The statuses of IPAddress ``name`` owed: phase, address and the reason of ``Allocated``."""
    return [(r.phase, r.address, next(c["reason"] for c in r.conditions if c["type"] == "Allocated"))
            for r in node.publisher.ip_statuses if r.name == name]


@pytest.mark.parametrize("cluster", [False, True], ids=["local", "kube-node"])
def test_a_rounds_change_of_a_statics_status_is_owed_once(cluster: bool) -> None:
    """A Static leased, or Pending, by a round (no pod uses it) had its status written only at a pod's ADD or DEL and
    at the daemon's restart: plexusctl showed it, the object never did. Owed when the round changes it, not every
    round."""
    node = Node()
    rec = _two_statics_for_one_address(node, cluster)
    assert _written(node, "first") == [("Allocated", "198.18.41.7", "IPAddressAllocated")]
    rec.run_once()
    assert _written(node, "second") == [("Pending", "", "IPAddressAlreadyLeased")], "once, not every round"
    node.source.remove("IPAddress", NS, "first")
    rec.run_once()
    rec.run_once()
    assert _written(node, "second")[1:] == [("Allocated", "198.18.41.7", "IPAddressAllocated")]
    assert len(_written(node, "first")) == 1


def test_a_kube_node_leaves_the_status_of_a_static_another_nodes_pod_uses_to_that_node() -> None:
    """Every node leases a Static; the node whose pod uses it writes its status (``usedByPods`` its pods): another
    node's round, leasing it, owes none, which would write that list empty."""
    node = Node()
    rec = reconciler(node, cluster=True)
    user = json.dumps({"uid": "uid-x", "pod": f"{NS}/x", "node": "other"})
    node.source.add(obj("IPAddress", "used", {"networkRef": {"kind": "Network", "name": "net-b"}, "type": "Static",
                                              "static": {"ip": "198.18.41.9"}},
                        annotations={USED_BY_ANNOTATION: user}))
    rec.run_once()
    used, _ = _allocated(node, "used")
    assert used.phase == "Allocated" and _written(node, "used") == []


@pytest.mark.parametrize("gateway", [False, True], ids=["allocated-here", "pending-here-as-a-gateway"])
def test_a_restarted_node_leaves_the_status_of_a_static_another_nodes_pod_uses_alone(gateway: bool) -> None:
    """Every node leases a Static; ``_speaks_for`` keeps a node's round from writing the status of one a pod of
    another node is written on (its ``usedByPods`` would be written empty). ``recover`` (every daemon start) owed
    ``ip_status`` of every record of the store all the same (``KubePublisher.republish``): each node's restart
    wrote the Static's status with its own (empty) ``usedByPods`` over the using node's. It republishes only what
    the round speaks for now (``Reconciler._speaks_for_record``)."""
    from kubernetes import client

    from ipamd.kube.outbox import Outbox
    from ipamd.kube.publisher import KubePublisher
    from tests.fakes.cluster import FakeApi

    api = FakeApi()
    node = Node()
    user = json.dumps({"uid": "uid-x", "pod": f"{NS}/x", "node": "other"})
    spec = {"networkRef": {"kind": "Network", "name": "net-b"}, "type": "Static", "static": {"ip": "198.18.41.9"}}
    node.source.add(obj("IPAddress", "used", spec, annotations={USED_BY_ANNOTATION: user}))
    if gateway:  # the Network routes via it now: kept on the node whose pod uses it, Pending here (``_refused_pending``)
        node.source.add(obj("Network", "net-b", {
            "networkClass": "cls", "routingTable": 100,
            "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pool-b"}},
            "policyRoutes": [{"destination": "0.0.0.0/0", "via": "198.18.41.9"}]}))
    api.objs["IPAddress"]["used"] = {"apiVersion": "v1alpha1", "kind": "IPAddress",
                                     "metadata": {"name": "used", "namespace": NS, "resourceVersion": "1"},
                                     "spec": spec, "status": {"phase": "Allocated", "address": "198.18.41.9",
                                                              "usedByPods": [f"{NS}/x"]}}

    def daemon() -> tuple[Reconciler, Outbox]:
        outbox = Outbox(node.store, {**api.senders(), "event": lambda body: None})
        node.ipam.registry = Registry()
        return Reconciler(node.store, node.source, node.ipam, node.attacher, node.segments,
                          KubePublisher(client.ApiClient(), "n1", outbox), cluster=True), outbox

    rounds, outbox = daemon()
    rounds.run_once()
    outbox.flush()
    assert api.objs["IPAddress"]["used"]["status"]["usedByPods"] == [f"{NS}/x"], "the round left it alone"
    restarted, outbox = daemon()
    restarted.recover()
    outbox.flush()
    assert api.objs["IPAddress"]["used"]["status"]["usedByPods"] == [f"{NS}/x"], \
        f"n1's restart wrote {api.objs['IPAddress']['used']['status']} over the status node other's pod x has"


def test_a_restart_before_the_source_has_listed_republishes_user_ipaddresses_it_speaks_for_at_the_first_round() -> None:
    """``recover`` runs as the daemon starts, before its informers have listed: which node speaks for a user's
    IPAddress (``_speaks_for``) is not known yet. Its status waits for the first round that has the source (a DEL's
    status write a kill cut short is still made), and only if this node speaks for it."""
    from kubernetes import client

    from ipamd.kube.outbox import Outbox
    from ipamd.kube.publisher import KubePublisher
    from tests.fakes.cluster import FakeApi

    api = FakeApi()
    node = Node()
    other = json.dumps({"uid": "uid-x", "pod": f"{NS}/x", "node": "other"})
    for name, address, users in (("used", "198.18.41.9", {USED_BY_ANNOTATION: other}), ("mine", "198.18.41.8", {})):
        node.source.add(obj("IPAddress", name, {"networkRef": {"kind": "Network", "name": "net-b"}, "type": "Static",
                                                "static": {"ip": address}}, annotations=users))
    outbox = Outbox(node.store, {**api.senders(), "event": lambda body: None})
    rounds = Reconciler(node.store, node.source, node.ipam, node.attacher, node.segments,
                        KubePublisher(client.ApiClient(), "n1", outbox), cluster=True)
    node.ipam.registry = Registry()
    rounds.run_once()
    for entry in outbox.owed(f"IPAddress/{NS}/mine"):
        outbox.forget([entry.seq])  # made before the kill
    assert not outbox.owed(f"IPAddress/{NS}/used"), "the round did not speak for it"
    node.source.synced = False  # restarted: the informers have not listed yet
    restarted = Reconciler(node.store, node.source, node.ipam, node.attacher, node.segments,
                           KubePublisher(client.ApiClient(), "n1", outbox), cluster=True)
    restarted.recover()
    assert not outbox.owed(f"IPAddress/{NS}/mine") and not outbox.owed(f"IPAddress/{NS}/used"), "not known yet"
    node.source.synced = True
    restarted.run_once()
    assert [e.op for e in outbox.owed(f"IPAddress/{NS}/mine")] == ["patch_status"], "republished at the first round"
    assert not outbox.owed(f"IPAddress/{NS}/used"), "another node's pod uses it: its status is that node's"
    restarted.run_once()
    assert len(outbox.owed(f"IPAddress/{NS}/mine")) == 1, "once"


class TakenUp:
    """Node n1 and the controller over one fake API server: the user's Auto IPAddress ``u`` (naming ``family``, or
    none), leased by the controller an IPv6 address of pool ``ds``, taken up by n1 for its pod ``app`` (unless not
    ``taken_up``: the pod made, its ADD not yet called); then the pool's IPv6 entry removed (one naming no family
    holds IPv6 from when the pool had IPv6 alone: a pool gaining a family moves no address)."""

    def __init__(self, family: str, monkeypatch: pytest.MonkeyPatch, taken_up: bool = True) -> None:
        import time

        from kubernetes import client

        from ipamd.kube.controller import Controller
        from tests.fakes.cluster import FakeApi
        from tests.unit.test_attacher_kube import KubeNode, a_pod
        from tests.unit.test_ipaddress_users import rounds_of
        from tests.unit.test_lease_versions import ControllerSource

        self.now = 1000.0
        monkeypatch.setattr(time, "monotonic", lambda: self.now)
        four, six = {"network": "198.18.98.0/24"}, {"network": "2001:2:0:98::/64"}
        self.api = api = FakeApi()
        self.node = node = KubeNode(api, "n1")
        node.source.add(obj("IPAddressPool", "ds", {"leaseTTL": "1h", "pools": [four, six] if family else [six]}))
        node.source.add(obj("Network", "ds-net", {"networkClass": "cls", "ipam": {
            "ipAddressPoolRef": {"kind": "IPAddressPool", "name": "ds"}}}))
        node.source.add(obj("IPAddress", "u", {"networkRef": {"kind": "Network", "name": "ds-net"},
                                               **({"ipFamily": family} if family else {})}))
        seen = ControllerSource(api)
        seen.src = node.source  # the controller's cache shows what the node's does
        self.ctl = Controller(client.ApiClient(), seen, "plexus-system")  # type: ignore[arg-type]
        self.controller_round()
        ((self.address, held),) = self.holders().items()
        assert ":" in self.address and held == (self.key, None, False), "the controller's lease"
        self.spec = [{"type": "Network", "name": "ds-net", "ifName": "net1", "ipAddressNames": ["u"]}]
        node.source.add(a_pod("app", self.spec, "uid-app"))
        if taken_up:
            node.call("ADD", "app", "uid-app", "c1")
            assert self.holders()[self.address] == (self.key, "n1", False), "taken up by n1 for its pod"
        node.source.add(obj("IPAddressPool", "ds", {"leaseTTL": "1h", "pools": [four]}))  # the IPv6 entry removed
        self.rounds = rounds_of(node)

    key = f"IPAddress/{NS}/u"

    def holders(self) -> dict[str, tuple[str | None, str | None, bool]]:
        """Pool ds's lease objects: address -> (holder, node label, quarantined)."""
        from ipamd.kube.leases import KIND as LEASE_KIND
        from ipamd.kube.leases import NODE_LABEL

        return {o["spec"]["ip"]: (o["spec"].get("holder"), o["metadata"].get("labels", {}).get(NODE_LABEL),
                                  bool((o.get("status") or {}).get("orphaningTimestamp")))
                for o in self.api.objs[LEASE_KIND].values() if o["spec"]["pool"] == f"IPAddressPool/{NS}/ds"}

    def controller_round(self) -> None:
        self.now += 61  # past ``ALLOCATED_S``
        self.ctl.allocate_user_ipaddresses()

    def pod_gone(self) -> None:
        self.node.call("DEL", "app", "uid-app", "c1")
        self.node.source.remove("Pod", NS, "app")


@pytest.mark.parametrize("family", ["", "IPv6"], ids=["leased-anew", "pending"])
def test_a_kube_node_lets_go_of_a_users_auto_address_it_took_up_once_its_pool_dropped_the_family_and_no_pod_uses_it(
        family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's Auto IPAddress, leased by the controller an IPv6 address of its pool, taken up by a pod of n1; the
    pool's IPv6 entry removed. A node lets go of its own Auto records of a dropped family once no pod uses them
    (``_family_dropped``), a lone node of a user's (``_refused_pending``), and the controller of its own lease of one;
    but a cluster node's rounds lease Statics alone, so n1 held the taken-up lease for ever after its pod went, and
    the controller, which rightly never touches a lease a node took up, could neither set it Pending nor lease it
    anew. Kept while the pod uses it; let go (quarantined) after, and only then leased anew."""
    world = TakenUp(family, monkeypatch)
    node, address, key = world.node, world.address, world.key
    world.rounds.run_once()
    node.outbox.flush()
    world.controller_round()
    assert world.holders() == {address: (key, "n1", False)}, "kept while its pod uses it"

    world.pod_gone()
    world.rounds.run_once()
    world.controller_round()
    assert world.holders() == {address: (key, "n1", False)}, \
        "the let-go not made yet: the controller leases nothing anew meanwhile"
    node.outbox.flush()
    assert world.holders()[address] == (None, "n1", True), \
        f"n1 keeps {address} of the dropped family after its pod went: {world.holders()[address]}"
    assert [lease.holder for lease in node.store.all_leases() if lease.address == address] == [None], \
        "quarantined on the node too"
    assert node.store.get_ip(key) is None
    world.controller_round()
    anew = {ip: h for ip, h in world.holders().items() if h[0] == key}
    status = world.api.objs["IPAddress"][f"{NS}/u"]["status"]
    if family:
        assert anew == {} and (status["phase"], status["address"]) == ("Pending", ""), "IPv6 asked, none left"
    else:
        ((ip, h),) = anew.items()
        assert "." in ip and h == (key, None, False) and status["address"] == ip, "leased anew"
    assert world.holders()[address] == (None, "n1", True), "the old address stays quarantined"


def test_a_kube_node_keeps_a_users_auto_address_a_pods_add_took_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The round finds the taken-up lease of a dropped family unused, then a pod's ADD names the IPAddress (and leases
    it an IPv4 address itself, letting the IPv6 one go) before the round's transaction: read again under the lock,
    the round lets nothing go, and the controller leases nothing while n1 holds the IPAddress's lease."""
    from tests.unit.test_attacher_kube import a_pod

    world = TakenUp("", monkeypatch)
    node, key = world.node, world.key
    world.pod_gone()
    node.source.add(a_pod("b", world.spec, "uid-b"))
    read = node.ipam._unused_of_dropped_family
    added: list[str] = []

    def an_add_after_the_read(key: str, pool: Any) -> Any:
        found = read(key, pool)
        if found is not None and not added:
            added.append(node.call("ADD", "b", "uid-b", "cb")["ips"][0]["address"].split("/")[0])
        return found

    node.ipam._unused_of_dropped_family = an_add_after_the_read  # type: ignore[method-assign]
    world.rounds.run_once()
    node.outbox.flush()
    world.controller_round()
    rec = node.store.get_ip(key)
    assert added and rec is not None and (rec.address, rec.used_by_uids) == (added[0], ("uid-b",))
    assert {ip: h for ip, h in world.holders().items() if h[0] == key} == {added[0]: (key, "n1", False)}, \
        "one lease of the IPAddress: pod b's"
    assert world.holders()[world.address] == (None, "n1", True), "the IPv6 one quarantined by the ADD"


@pytest.mark.parametrize("family", ["", "IPv6"], ids=["leased-anew", "pending"])
def test_a_pods_add_never_takes_up_the_controllers_lease_of_a_family_its_pool_dropped(
        family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller leased ``u`` an IPv6 address; the pool's IPv6 entry removed; a pod's ADD naming ``u`` before the
    controller's next round. The node took that lease up (its pool and holder matched) and gave the pod
    ``2001:2:0:98::1/24``: an IPv6 address of an IPv4-only pool, with the IPv4 entry's prefix length. Leasing ``u``
    anew beside it would give it two live leases. One naming no family: code 11 while that lease is live, then, once
    the controller let it go, an IPv4 address; one naming IPv6: refused as the node refuses a family its pool lacks
    (code 7, ``spec.ipFamily``). Nothing taken up."""
    from cni.errors import CniError

    world = TakenUp(family, monkeypatch, taken_up=False)
    node, address, key = world.node, world.address, world.key
    with pytest.raises(CniError) as err:
        node.call("ADD", "app", "uid-app", "c1")
    assert (err.value.code, err.value.details) == ((7, "spec.ipFamily") if family else (11, "ipAddressNames")), \
        err.value
    node.outbox.flush()
    assert world.holders() == {address: (key, None, False)}, "the controller's lease is left to the controller"
    assert node.store.lease_of(key) is None
    world.controller_round()
    assert world.holders()[address] == (None, None, True), "let go by the controller, quarantined"
    if family:
        assert {ip: h for ip, h in world.holders().items() if h[0] == key} == {}
        return
    out = node.call("ADD", "app", "uid-app", "c1")  # (the controller's new lease taken up, if made by now)
    node.outbox.flush()
    world.controller_round()
    ((ip, held),) = {ip: h for ip, h in world.holders().items() if h[0] == key}.items()
    assert [i["address"] for i in out["ips"]] == [f"{ip}/24"] and "." in ip and held == (key, "n1", False), \
        "one live lease of u, the pod's"

"""A node's NodeNetworkInterfaceAttachment deleted from the API after it was reported (the controller drops the
attachments of a node it took for vanished, silent past --block-ttl with no pod bound to it; or a hand deletes one):
the node's reconciler remembers it as reported and wrote it only on change, so it was never written again until the
daemon restarted, and the controller could give the bridge's ID to another Network while this node's pods are on it."""

from __future__ import annotations

import threading
from collections.abc import Collection
from typing import Any

from kubernetes import client

from ipamd.kube.outbox import Outbox
from ipamd.kube.publisher import ATTACHMENT, KubePublisher
from ipamd.node.reconcile import Reconciler
from ipamd.node.segments import retired_key
from tests.fakes.cluster import FakeApi, FakeCache
from tests.unit.test_attacher import NS, Node, obj
from tests.unit.test_reconcile import Registry, granted, granted_node


class AttachmentCache:
    """The node's informer cache of NodeNetworkInterfaceAttachments over ``api``, looked up by name as
    ``KubernetesSource`` does: it shows the API as it was at the last ``sync()`` (the watch's events come in then)."""

    def __init__(self, api: FakeApi) -> None:
        self.cache = FakeCache(api, live=False)
        self.synced = threading.Event()
        self.synced.set()

    def ready(self, kinds: Collection[str] | None = None) -> bool:
        return self.synced.is_set()

    def cached(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self.cache.items(kind) if o["metadata"]["name"] == name), None)

    def items(self, kind: str) -> list[dict[str, Any]]:
        return self.cache.items(kind)


def _rounds(node: Node, api: FakeApi, cluster: bool = True) -> tuple[Outbox, Reconciler, AttachmentCache]:
    """The node's reconcile rounds in Kubernetes mode, its writes owed in an outbox to ``api``, its source watching
    the attachments, wired as the daemon wires them. Called again over the same node: the daemon restarted (its
    store, and the outbox in it, kept)."""
    outbox = Outbox(node.store, api.senders())
    node.ipam.registry = Registry()
    informer = AttachmentCache(api)
    publisher = KubePublisher(client.ApiClient(), "n1", outbox, informer)
    return outbox, Reconciler(node.store, node.source, node.ipam, node.attacher, node.segments, publisher,
                              cluster=cluster, reports=publisher), informer


def _owed(outbox: Outbox, target: str) -> list[tuple[int, str]]:
    return [(e.seq, e.op) for e in outbox.owed(target)]


def _reported_and_seen(outbox: Outbox, rounds: Reconciler, informer: AttachmentCache) -> None:
    rounds.run_once()
    outbox.flush()
    informer.cache.sync()
    rounds.run_once()


def _one_network_reported(api: FakeApi) -> tuple[Outbox, Reconciler, AttachmentCache, str]:
    """A node with one Network, its attachment reported to ``api`` and shown in the cache; its object's name."""
    node = Node()
    node.source.add(obj("NetworkClass", "plain", {}, namespaced=False))
    node.source.add(obj("Network", "net-z", {"networkClass": "plain"}))
    outbox, rounds, informer = _rounds(node, api)
    _reported_and_seen(outbox, rounds, informer)
    (name,) = api.objs[ATTACHMENT]
    return outbox, rounds, informer, name


def test_an_attachment_deleted_from_the_api_is_written_again_once_the_cache_shows_it_gone() -> None:
    api = FakeApi()
    outbox, rounds, informer, name = _one_network_reported(api)
    target = f"{ATTACHMENT}/{name}"
    bridge = api.objs[ATTACHMENT][name]["spec"]["bridgeName"]
    assert bridge and not outbox.owes(target)

    api.delete(ATTACHMENT, name)  # as the controller's _drop_attachments does
    rounds.run_once()
    assert not outbox.owes(target), "judged gone before the cache showed the delete"
    informer.cache.sync()  # the watch's DELETED
    rounds.run_once()
    assert outbox.owes(target), "this node's attachment was deleted and is never written again"
    owed = _owed(outbox, target)
    rounds.run_once()
    assert _owed(outbox, target) == owed, "written again while its write is still owed"

    outbox.flush()
    again = api.objs[ATTACHMENT][name]
    assert again["spec"]["bridgeName"] == bridge and again["spec"]["nodeName"] == "n1"
    assert again["status"]["conditions"][0]["status"] == "True"
    made = api.requests()
    rounds.run_once()  # made, not in the cache yet: not judged gone
    assert not outbox.owes(target), "a report made but not in the cache yet is written twice"
    informer.cache.sync()
    for _ in range(3):
        rounds.run_once()
        outbox.flush()
    assert api.requests() == made, f"{api.requests() - made} writes for an attachment that is there"


def test_a_report_is_not_judged_gone_before_the_cache_has_listed() -> None:
    api = FakeApi()
    outbox, rounds, informer, name = _one_network_reported(api)
    api.delete(ATTACHMENT, name)
    informer.cache.sync()
    informer.synced.clear()  # (a cache seeded from the snapshot, not listed)
    rounds.run_once()
    assert not outbox.owes(f"{ATTACHMENT}/{name}")
    informer.synced.set()
    rounds.run_once()
    assert outbox.owes(f"{ATTACHMENT}/{name}")


def test_a_deleted_report_of_an_old_segment_is_written_again() -> None:
    """The old segment of a Network given another ID, pods still on it, is reported under ``<network>@<bridge>``: the
    controller holds the old ID by that report. Deleted, it is written again as well."""
    api = FakeApi()
    node, _ = granted_node()
    node.call("ADD")
    outbox, rounds, informer = _rounds(node, api)
    rounds.run_once()
    old = {s.network: s for s in node.store.segments()}[f"Network/{NS}/net-a"]
    node.source.add(granted("net-a", "pool-a", 650))  # granted another ID (a lone node keeps it while pods are on it)
    _reported_and_seen(outbox, rounds, informer)
    retired = retired_key(f"Network/{NS}/net-a", old.bridge)
    (name,) = [n for n, o in api.objs[ATTACHMENT].items() if o["spec"]["bridgeName"] == old.bridge]
    assert api.objs[ATTACHMENT][name]["spec"]["networkRef"]["name"] == retired.rpartition("/")[2]

    api.delete(ATTACHMENT, name)
    informer.cache.sync()
    rounds.run_once()
    assert outbox.owes(f"{ATTACHMENT}/{name}"), "the old segment's report was deleted and is never written again"
    outbox.flush()
    assert api.objs[ATTACHMENT][name]["spec"]["bridgeName"] == old.bridge


def test_the_sources_informer_is_the_cache_looked_up() -> None:
    """The lookup goes by name into ``KubernetesSource``'s own informer of the kind (the fake above stands in for
    it)."""
    from ipamd.kube.source import KubernetesSource
    from tests.fakes.store import MemoryStore

    source = KubernetesSource(client.ApiClient(), "n1")
    informer = source.informers[ATTACHMENT]
    outbox = Outbox(MemoryStore(), FakeApi().senders())
    publisher = KubePublisher(client.ApiClient(), "n1", outbox, source)
    key = f"Network/{NS}/net-z"
    publisher.node_attachment(key, "plx-br-600", True, "")
    target = f"{ATTACHMENT}/{publisher._attachment_name(key)}"
    outbox.forget({e.seq for e in outbox.owed(target)})  # made
    made = {"metadata": {"name": publisher._attachment_name(key), "resourceVersion": "7"}}
    informer.apply("ADDED", made)
    assert publisher.lost_attachments([key]) == [], "not listed yet: nothing judged"
    informer.synced.set()
    assert publisher.lost_attachments([key]) == []
    informer.apply("DELETED", made)
    assert publisher.lost_attachments([key]) == [key]


def test_the_failure_report_of_a_deleted_network_goes_with_it() -> None:
    """A Network whose segment cannot be built (its VLAN ID outside its class's idPool: refused before any segment
    record is made) is reported NotBridged. Reports were withdrawn only through the store's segment records, so once
    the Network was deleted this one stood for ever, and was written back each time someone removed it (found in
    review). It goes with its Network."""
    api = FakeApi()
    node = Node()
    node.source.add(obj("NetworkClass", "narrow", {"vlan": {"idPool": ["600-610"]}}, namespaced=False))
    node.source.add(obj("Network", "net-u", {"networkClass": "narrow", "vlan": {"id": 900}}))
    outbox, rounds, informer = _rounds(node, api, cluster=False)
    rounds.run_once()
    outbox.flush()
    informer.cache.sync()
    rounds.run_once()
    (name,) = [n for n, o in api.objs["NodeNetworkInterfaceAttachment"].items()
               if o["spec"]["networkRef"]["name"] == "net-u"]
    assert api.objs["NodeNetworkInterfaceAttachment"][name]["status"]["conditions"][0]["status"] == "False"
    assert not [s for s in node.store.segments() if "net-u" in s.network], "no segment record was made"
    node.source.remove("Network", NS, "net-u")  # the Network goes
    for _ in range(2):
        rounds.run_once()
        outbox.flush()
    assert name not in api.objs["NodeNetworkInterfaceAttachment"], "the report of a deleted Network is left for ever"
    informer.cache.sync()
    for _ in range(2):
        rounds.run_once()
        outbox.flush()
    assert name not in api.objs["NodeNetworkInterfaceAttachment"], "the report of a deleted Network is written back"


# -- this node's reports that nothing of it stands for after a restart (``Reconciler._sweep_unheld``) -----------------
# What the node reported is remembered in memory only (``Reconciler._reported``): after a restart, a report whose
# Network was deleted while the daemon was down, whose segment record a kill cut away, or that was owed before a kill
# and made after it, was compared with nothing and stood for ever; one naming a bridge kept that bridge's VLAN ID from
# every other Network (the controller counts a reported bridge's ID as held, and drops only a vanished node's).


def _settle(outbox: Outbox, rounds: Reconciler, informer: AttachmentCache, times: int = 3) -> None:
    for _ in range(times):
        rounds.run_once()
        outbox.flush()
        informer.cache.sync()


def _mine(api: FakeApi) -> dict[str, dict[str, Any]]:
    return {n: o for n, o in api.objs[ATTACHMENT].items() if o["spec"]["nodeName"] == "n1"}


def _of(api: FakeApi, network: str) -> list[str]:
    return [n for n, o in _mine(api).items() if o["spec"]["networkRef"]["name"] == network]


def _failing_network() -> Node:
    """A node with a Network whose segment cannot be built (its VLAN ID outside its class's idPool): reported
    NotBridged, with no segment record."""
    node = Node()
    node.source.add(obj("NetworkClass", "narrow", {"vlan": {"idPool": ["600-610"]}}, namespaced=False))
    node.source.add(obj("Network", "net-u", {"networkClass": "narrow", "vlan": {"id": 900}}))
    return node


def test_a_report_of_a_network_deleted_while_the_daemon_was_down_is_withdrawn_after_the_restart() -> None:
    api = FakeApi()
    node = _failing_network()
    _settle(*_rounds(node, api, cluster=False))
    (name,) = _of(api, "net-u")
    node.source.remove("Network", NS, "net-u")  # while the daemon is down
    outbox, rounds, informer = _rounds(node, api, cluster=False)
    rounds.run_once()
    outbox.flush()
    assert name not in api.objs[ATTACHMENT], "the report of a Network deleted while the daemon was down stays"
    rounds.run_once()  # the cache shows it still
    assert not outbox.owes(f"{ATTACHMENT}/{name}"), "its delete owed again while the cache lags"
    assert set(_of(api, "net-a")) | set(_of(api, "net-b")) == set(_mine(api)), "a live Network's report withdrawn"


def test_a_report_owed_before_a_kill_of_a_network_deleted_meanwhile_is_withdrawn_once_made() -> None:
    """Owed, not made yet, when the daemon was killed: the outbox makes it after the restart, when no record and no
    report of this run stands for it."""
    api = FakeApi()
    node = _failing_network()
    _, rounds, _ = _rounds(node, api, cluster=False)
    rounds.run_once()  # owed, never made: killed
    assert not _of(api, "net-u")
    node.source.remove("Network", NS, "net-u")
    outbox, rounds, informer = _rounds(node, api, cluster=False)
    rounds.run_once()
    outbox.flush()  # the create owed before the kill, made now
    assert _of(api, "net-u")
    _settle(outbox, rounds, informer)
    assert not _of(api, "net-u"), "a report owed before the kill, of a Network gone, stays once made"


def test_a_vlan_report_whose_record_a_kill_cut_away_is_withdrawn_and_its_id_no_more_held() -> None:
    api = FakeApi()
    node, _ = granted_node()
    _settle(*_rounds(node, api))
    assert any(o["spec"]["bridgeName"] == "plx-br-600" for o in _mine(api).values())
    node.store.delete_segment(f"Network/{NS}/net-a")  # its record gone, its report not withdrawn: killed between
    node.source.remove("Network", NS, "net-a")
    _settle(*_rounds(node, api))
    assert not [o for o in _mine(api).values() if o["spec"]["bridgeName"] == "plx-br-600"], \
        "a report of a bridge no record holds stays, its VLAN ID held for ever"
    assert [o["spec"]["networkRef"]["name"] for o in _mine(api).values()] == ["net-b"], "a live one's withdrawn"


def test_only_this_nodes_unheld_reports_go_and_held_ones_stay_with_no_write() -> None:
    """Another node's report of a Network this node does not have is never touched; this node's held reports (a live
    Network's, and a deleted one's whose segment still carries a pod) stay, and are written no more."""
    api = FakeApi()
    node, _ = granted_node()
    node.call("ADD")  # pods on net-a and net-b
    _settle(*_rounds(node, api))
    other: dict[str, Any] = {"apiVersion": "network.deckhouse.io/v1alpha1", "kind": ATTACHMENT,
                             "metadata": {"name": "n2-0123456789ab", "labels": {"network.deckhouse.io/node": "n2"}},
                             "spec": {"networkRef": {"kind": "Network", "name": "net-x", "namespace": NS},
                                      "nodeName": "n2", "bridgeName": "plx-br-630"}}
    unlabelled = {**other, "metadata": {"name": "n1-hand-made"}, "spec": {**other["spec"], "nodeName": "n1"}}
    api.create(ATTACHMENT, other)
    api.create(ATTACHMENT, unlabelled)
    node.source.remove("Network", NS, "net-a")  # deleted, a pod still on its bridge: its record (and report) held
    before = set(_mine(api))
    outbox, rounds, informer = _rounds(node, api)
    _settle(outbox, rounds, informer)
    assert {"n2-0123456789ab", "n1-hand-made"} <= set(api.objs[ATTACHMENT]), "an object not this node's withdrawn"
    assert set(_mine(api)) == before, "a held report was withdrawn"
    made = api.requests()
    _settle(outbox, rounds, informer)
    assert api.requests() == made, f"{api.requests() - made} writes with nothing to sweep"


def test_no_report_is_swept_before_the_cache_has_listed() -> None:
    api = FakeApi()
    node = _failing_network()
    _settle(*_rounds(node, api, cluster=False))
    (name,) = _of(api, "net-u")
    node.source.remove("Network", NS, "net-u")
    outbox, rounds, informer = _rounds(node, api, cluster=False)
    informer.synced.clear()  # (a cache seeded from the snapshot, not listed)
    rounds.run_once()
    assert not outbox.owes(f"{ATTACHMENT}/{name}")
    informer.synced.set()
    rounds.run_once()
    assert outbox.owes(f"{ATTACHMENT}/{name}")


def test_a_network_made_again_after_its_report_was_swept_is_reported_again() -> None:
    api = FakeApi()
    node = _failing_network()
    _settle(*_rounds(node, api, cluster=False))
    (name,) = _of(api, "net-u")
    node.source.remove("Network", NS, "net-u")
    outbox, rounds, informer = _rounds(node, api, cluster=False)
    rounds.run_once()
    outbox.flush()
    assert name not in api.objs[ATTACHMENT]
    node.source.add(obj("Network", "net-u", {"networkClass": "narrow", "vlan": {"id": 900}}))
    _settle(outbox, rounds, informer)
    assert _of(api, "net-u") == [name], "a Network made again is never reported again once its report was swept"


def test_a_segment_that_fails_after_it_was_built_is_reported_with_its_bridge() -> None:
    """A Network whose segment was built, then cannot be made as its class now asks (a parent NIC that is not there):
    reported NotBridged naming the bridge still there with its pods, so that the controller keeps holding its ID. It
    was reported with no bridge, and the merge patch of a report leaves out what it does not name: the old name
    stayed only by chance (and an empty one was refused by the API server)."""
    api = FakeApi()
    node = Node()
    node.source.add(obj("NetworkClass", "plain", {"vlan": {"idPool": ["600-610"]}}, namespaced=False))
    node.source.add(obj("Network", "net-f", {"networkClass": "plain", "vlan": {"id": 609}}))
    outbox, rounds, informer = _rounds(node, api, cluster=False)
    _reported_and_seen(outbox, rounds, informer)
    (name,) = _of(api, "net-f")
    bridge = api.objs[ATTACHMENT][name]["spec"]["bridgeName"]
    assert bridge and api.objs[ATTACHMENT][name]["status"]["conditions"][0]["status"] == "True"
    node.source.add(obj("NetworkClass", "plain", {"vlan": {"idPool": ["600-610"],
                                                           "parentNodeNetworkInterfaces": {"names": ["eth9"]}}},
                        namespaced=False))

    def no_parent(parent: str, vlan_id: int, busy: bool) -> str:
        raise OSError(f"no parent interface {parent}")

    node.segments.links.ensure_vlan = no_parent  # type: ignore[method-assign]
    api.objs[ATTACHMENT].pop(name)  # a create of the whole report, as for a first one (no merge with the old object)
    rounds.run_once()
    outbox.flush()
    made = api.objs[ATTACHMENT][name]
    assert made["status"]["conditions"][0]["status"] == "False" and "eth9" in made["status"]["conditions"][0]["message"], \
        made
    assert made["spec"].get("bridgeName") == bridge, "a failed segment's report names no bridge: its ID may be given away"

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


def _rounds(node: Node, api: FakeApi, cluster: bool = True) -> tuple[Outbox, Reconciler, AttachmentCache]:
    """The node's reconcile rounds in Kubernetes mode, its writes owed in an outbox to ``api``, its source watching
    the attachments."""
    outbox = Outbox(node.store, api.senders())
    node.ipam.registry = Registry()
    informer = AttachmentCache(api)
    publisher = KubePublisher(client.ApiClient(), "n1", outbox, informer)
    return outbox, Reconciler(node.store, node.source, node.ipam, node.attacher, node.segments, publisher,
                              cluster=cluster), informer


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

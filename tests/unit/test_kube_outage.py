"""With the API server unreachable, what the node writes to it is owed in its outbox, never raised into a CNI call
or a reconcile round as a traceback; a claim, which needs the answer now, says code 11."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from kubernetes import client

from cni.errors import TryAgainLater
from ipamd.kube.client import TimedApiClient
from ipamd.kube.leases import KubeLeaseRegistry
from ipamd.kube.outbox import Outbox
from ipamd.kube.publisher import KubePublisher, _status_patch, api_senders
from ipamd.model.objects import STATUS_ANNOTATION, Meta, Pod
from ipamd.store.records import IPRecord, LeaseRecord, PodStatus
from tests.fakes.store import MemoryStore


def unreachable() -> TimedApiClient:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = client.Configuration()
    cfg.host = f"https://127.0.0.1:{port}"
    cfg.verify_ssl = False
    return TimedApiClient(cfg)


def test_the_publisher_owes_its_writes_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    api = unreachable()
    store = MemoryStore()
    outbox = Outbox(store, api_senders(api))
    pub = KubePublisher(api, "node-a", outbox)
    pod = Pod(Meta("Pod", "app", "ns", "uid-1"))
    rec = IPRecord(key="IPAddress/ns/a", kind="IPAddress", namespace="ns", name="a", network_kind="Network",
                   network_name="n", address="198.18.0.5", network="198.18.0.0/24")
    claim = IPRecord(key="IPAMClaim/ns/c", kind="IPAMClaim", namespace="ns", name="c", network_kind="CNI",
                     network_name="n", address="198.18.0.6", network="198.18.0.0/24")
    pub.attached(pod, PodStatus("uid-1", "ns", "app"), [rec], [rec, claim])
    pub.attached_now([rec, claim])
    pub.pod_status(pod, PodStatus("uid-1", "ns", "app"))
    pub.detached("ns", "app", "uid-1", [rec])
    pub.pod_status(pod, None)
    pub.node_attachment("Network/ns/n", "plx-br-600", True, "")
    pub.node_detachment("Network/ns/n")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("ipamd")]
    # of the writes someone waits for (the claim's status and the two pod statuses) the first was tried at once; it
    # went unanswered, so the others were owed without waiting for the API server
    assert len(warned) == 1 and "owed in the outbox" in warned[0], warned
    owed = [(e.target, e.op) for e in store.outbox_head(100)]
    assert owed == [  # in order; a later status superseded the earlier one, the attachment's delete its create
        ("IPAddress/ns/a", "create"), ("IPAMClaim/ns/c", "claim_status"), ("IPAddress/ns/a", "patch_status"),
        ("Pod/ns/app", "pod_status"),
        ("NodeNetworkInterfaceAttachment/node-a-" + owed[-1][0].rsplit("-", 1)[1], "delete")], owed
    assert outbox.flush() == len(owed)  # nothing answers: everything stays, the passes back off
    assert store.outbox_head(1)[0].attempts == 1 and store.outbox_head(1)[0].error
    assert outbox.flush() == len(owed) and store.outbox_head(1)[0].attempts == 1  # backing off: not tried again
    assert outbox.api_away()  # so the next pod status is owed at once, without waiting for the API server
    before = len(caplog.records)
    pub.detached("ns", "app", "uid-1", [rec])
    pub.pod_status(pod, None)
    assert [r for r in caplog.records[before:] if r.name.startswith("urllib3")] == []
    outbox.stop()


def test_the_lease_registry_says_try_again_later() -> None:
    api = unreachable()

    class Source:
        objects = None

    from ipamd.kube.resources import CustomObjects

    src = Source()
    src.objects = CustomObjects(api)  # type: ignore[assignment]
    store = MemoryStore()
    registry = KubeLeaseRegistry(src, "node-a", Outbox(store, api_senders(api)))  # type: ignore[arg-type]
    lease = LeaseRecord(pool="IPAddressPool/ns/p", ip=1, address="198.18.0.1", network="198.18.0.0/24",
                        holder="IPAddress/ns/a", orphaned_at=1.0)
    with pytest.raises(TryAgainLater):
        registry.claim(lease)
    registry.orphan(lease)  # letting go is owed, and never fails a DEL
    assert [e.op for e in store.outbox_head(10)] == ["orphan_lease"]  # a checked write: its own object only
    registry.release(lease)  # supersedes the orphaning
    assert [e.op for e in store.outbox_head(10)] == ["release_lease"]  # a checked delete: still its own
    with pytest.raises(TryAgainLater):  # its delete could not be made first: the claim waits for the API
        registry.claim(lease)


def test_a_restart_owes_again_what_the_store_says_without_reordering_owed_writes() -> None:
    api = unreachable()
    store = MemoryStore()
    outbox = Outbox(store, api_senders(api))
    pub = KubePublisher(api, "node-a", outbox)
    auto = IPRecord(key="IPAddress/ns/app-net1-12345", kind="IPAddress", namespace="ns", name="app-net1-12345",
                    network_kind="Network", network_name="n", address="198.18.0.5", network="198.18.0.0/24",
                    created_by="plexus", owner_pod_uid="uid-1", used_by_pods=("ns/app",), used_by_uids=("uid-1",))
    owed = IPRecord(key="IPAddress/ns/user", kind="IPAddress", namespace="ns", name="user", network_kind="Network",
                    network_name="n")
    outbox.add(owed.key, "patch_status", {"kind": "IPAddress", "name": "user", "namespace": "ns", "status": {}})
    outbox.add(auto.key, "create", {"kind": "IPAddress", "namespace": "ns", "object": {"metadata": {"name": auto.name}}})
    pub.republish([auto, owed], [PodStatus("uid-1", "ns", "app", networks_status=({"ifName": "net1"},))])
    head = store.outbox_head(10)
    assert [(e.target, e.op) for e in head] == [
        ("IPAddress/ns/app-net1-12345", "create"),  # owed already: kept, ahead of its status, and not owed twice
        ("IPAddress/ns/app-net1-12345", "patch_status"),
        ("IPAddress/ns/user", "patch_status"),  # the store's status, superseding the one owed before the restart
        ("Pod/ns/app", "pod_status")]
    assert head[2].body["status"]["address"] == owed.address
    assert head[3].body["patch"]["metadata"]["uid"] == "uid-1"
    outbox.stop()


def test_a_restart_creates_an_auto_ipaddress_with_its_pod_as_owner() -> None:
    api = unreachable()
    store = MemoryStore()
    outbox = Outbox(store, api_senders(api))
    auto = IPRecord(key="IPAddress/ns/app-net1-12345", kind="IPAddress", namespace="ns", name="app-net1-12345",
                    network_kind="Network", network_name="n", address="198.18.0.5", network="198.18.0.0/24",
                    created_by="plexus", owner_pod_uid="uid-1", used_by_pods=("ns/app",), used_by_uids=("uid-1",))
    KubePublisher(api, "node-a", outbox).republish([auto], [])
    (create,) = [e for e in store.outbox_head(10) if e.op == "create"]
    assert create.body["object"]["metadata"]["ownerReferences"][0] == {"apiVersion": "v1", "kind": "Pod",
                                                                       "name": "app", "uid": "uid-1"}
    outbox.stop()


def status_owed(store: MemoryStore, target: str) -> Any:
    """The pod's networks-status the last owed write of ``target`` sets (None: removed)."""
    (entry,) = [e for e in store.outbox_of(target) if e.op == "pod_status"]
    value = entry.body["patch"]["metadata"]["annotations"][STATUS_ANNOTATION]
    return None if value is None else json.loads(value)


def test_a_restart_owes_the_stores_pod_status_over_an_older_one_owed_before_the_kill() -> None:
    """The API away: ADD of net1 owes S1; ADD of net2 commits S2 and is killed before owing it. The restart must owe
    S2, not leave S1 to land (found in review: republish skipped a pod with anything owed)."""
    store = MemoryStore()
    outbox = Outbox(store, api_senders(unreachable()))
    pub = KubePublisher(unreachable(), "node-a", outbox)
    s1 = PodStatus("uid-1", "ns", "app", networks_status=({"ifName": "net1"},))
    s2 = PodStatus("uid-1", "ns", "app", networks_status=({"ifName": "net1"}, {"ifName": "net2"}))
    outbox.add("Pod/ns/app", "pod_status", {"namespace": "ns", "name": "app", "patch": _status_patch("uid-1", s1)})
    pub.republish([], [s2])
    assert status_owed(store, "Pod/ns/app") == [{"ifName": "net1"}, {"ifName": "net2"}]
    outbox.stop()


def test_a_restart_removes_an_owed_status_of_a_pod_the_store_has_none_for() -> None:
    """S1 owed, then the pod's DEL removes its status from the store and is killed before owing that: the restart owes
    the removal (at the pod's UID), so S1 never lands on a pod with no attachment."""
    store = MemoryStore()
    outbox = Outbox(store, api_senders(unreachable()))
    s1 = PodStatus("uid-1", "ns", "app", networks_status=({"ifName": "net1"},))
    outbox.add("Pod/ns/app", "pod_status", {"namespace": "ns", "name": "app", "patch": _status_patch("uid-1", s1)})
    KubePublisher(unreachable(), "node-a", outbox).republish([], [])
    assert status_owed(store, "Pod/ns/app") is None
    (entry,) = store.outbox_of("Pod/ns/app")
    assert entry.body["patch"]["metadata"]["uid"] == "uid-1"
    outbox.stop()


def test_a_restart_owes_an_ipaddress_status_a_kill_left_behind_its_create() -> None:
    """Killed between owing an Auto IPAddress's create and its status: the restart owes the status behind the create
    (found in review: republish skipped every object with anything owed, so its status was never written)."""
    store = MemoryStore()
    outbox = Outbox(store, api_senders(unreachable()))
    pub = KubePublisher(unreachable(), "node-a", outbox)
    auto = IPRecord(key="IPAddress/ns/app-net1-1", kind="IPAddress", namespace="ns", name="app-net1-1",
                    network_kind="Network", network_name="n", address="198.18.0.5", network="198.18.0.0/24",
                    created_by="plexus", owner_pod_uid="uid-1", used_by_pods=("ns/app",), used_by_uids=("uid-1",))
    pub._create_auto_ip(auto, Pod(Meta("Pod", "app", "ns", "uid-1")))
    pub.republish([auto], [])
    assert [e.op for e in store.outbox_of(auto.key)] == ["create", "patch_status"]
    outbox.stop()


def test_a_restart_owes_ipamclaim_statuses_instead_of_waiting_on_the_api() -> None:
    """At the start the API server may be away: an IPAMClaim's status is owed, not written with the daemon waiting on
    its timeouts before it serves CNI calls (found in review)."""
    store = MemoryStore()
    outbox = Outbox(store, api_senders(unreachable()))
    pub = KubePublisher(unreachable(), "node-a", outbox)
    written: list[Any] = []

    class Objects:
        def patch_status(self, *args: Any) -> None:
            written.append(args)

    pub.objects = Objects()  # type: ignore[assignment]
    claim = IPRecord(key="IPAMClaim/ns/c", kind="IPAMClaim", namespace="ns", name="c", network_kind="CNI",
                     network_name="n", address="198.18.0.6", network="198.18.0.0/24", used_by_pods=("ns/app",))
    pub.republish([claim], [])
    assert written == []
    (entry,) = store.outbox_of(claim.key)
    assert entry.body["status"] == {"ips": ["198.18.0.6/24"], "ownerPod": "app"}
    outbox.stop()

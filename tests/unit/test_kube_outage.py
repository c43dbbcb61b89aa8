"""With the API server unreachable, what the node writes to it is owed in its outbox, never raised into a CNI call
or a reconcile round as a traceback; a claim, which needs the answer now, says code 11."""

from __future__ import annotations

import socket

import pytest
from kubernetes import client

from cni.errors import TryAgainLater
from ipamd.kube.client import TimedApiClient
from ipamd.kube.leases import KubeLeaseRegistry
from ipamd.kube.outbox import Outbox
from ipamd.kube.publisher import KubePublisher, api_senders
from ipamd.model.objects import Meta, Pod
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
    pub.detached("ns", "app", "uid-1", None, [rec])
    pub.node_attachment("Network/ns/n", "plx-br-600", True, "")
    pub.node_detachment("Network/ns/n")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("ipamd")]
    # the writes someone waits for were tried at once: the claim's status and the two pod statuses
    assert len(warned) == 3 and all("owed in the outbox" in w for w in warned), warned
    owed = [(e.target, e.op) for e in store.outbox_head(100)]
    assert owed == [  # in order; a later status superseded the earlier one, the attachment's delete its create
        ("IPAddress/ns/a", "create"), ("IPAMClaim/ns/c", "patch_status"), ("IPAddress/ns/a", "patch_status"),
        ("Pod/ns/app", "pod_status"),
        ("NodeNetworkInterfaceAttachment/node-a-" + owed[-1][0].rsplit("-", 1)[1], "delete")], owed
    assert outbox.flush() == len(owed)  # nothing answers: everything stays, the passes back off
    assert store.outbox_head(1)[0].attempts == 1 and store.outbox_head(1)[0].error
    assert outbox.flush() == len(owed) and store.outbox_head(1)[0].attempts == 1  # backing off: not tried again
    assert outbox.api_away()  # so the next pod status is owed at once, without waiting for the API server
    before = len(caplog.records)
    pub.detached("ns", "app", "uid-1", None, [rec])
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
    pub.republish([auto, owed], [PodStatus("uid-1", "ns", "app", networks_status=({"ifName": "net1"},))])
    head = store.outbox_head(10)
    assert [(e.target, e.op) for e in head] == [
        ("IPAddress/ns/user", "patch_status"),  # owed already: kept as it was, nothing added behind it
        ("IPAddress/ns/app-net1-12345", "create"), ("IPAddress/ns/app-net1-12345", "patch_status"),
        ("Pod/ns/app", "pod_status")]
    created = head[1].body["object"]
    assert created["metadata"]["ownerReferences"][0] == {"apiVersion": "v1", "kind": "Pod", "name": "app",
                                                         "uid": "uid-1"}
    assert head[3].body["patch"]["metadata"]["uid"] == "uid-1"
    outbox.stop()

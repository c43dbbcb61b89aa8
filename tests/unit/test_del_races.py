"""A DEL in Kubernetes mode, and what it owes the API server, in interleavings found in review (each failing on the
code before its fix): a pod made again under the same name, a daemon killed after the DEL's commit, a dead sandbox's
DEL before the cache has listed."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ipamd.kube.outbox import Outbox
from ipamd.kube.publisher import KubePublisher
from ipamd.model.objects import STATUS_ANNOTATION, Meta, Pod
from ipamd.store.records import PodStatus
from tests.fakes.store import MemoryStore


class FakePods:
    """The pods' annotations as the API server keeps them: a merge patch with a UID precondition (409 on mismatch);
    ``fail`` answers the next patches 500 (the API server flapping)."""

    def __init__(self) -> None:
        self.uid: dict[tuple[str, str], str] = {}
        self.status: dict[tuple[str, str], Any] = {}
        self.fail = 0

    def patch(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> Any:
        if self.fail:
            self.fail -= 1
            raise ApiException(status=500, reason="flapping")
        if self.uid.get((namespace, name)) != body["metadata"]["uid"]:
            raise ApiException(status=409, reason="uid precondition")
        value = body["metadata"]["annotations"][STATUS_ANNOTATION]
        self.status[(namespace, name)] = None if value is None else json.loads(value)

        class Answer:
            def release_conn(self) -> None:
                pass

            def close(self) -> None:
                pass

            def read(self) -> bytes:
                return b""

        return Answer()


def kube_publisher(pods: FakePods) -> tuple[KubePublisher, Outbox, MemoryStore]:
    store = MemoryStore()
    senders = {op: (lambda body: None) for op in ("create", "patch", "patch_status", "delete", "event")}
    senders["pod_status"] = lambda b: pods.patch(b["name"], b["namespace"], b["patch"])
    outbox = Outbox(store, senders)
    pub = KubePublisher(client.ApiClient(), "n1", outbox)
    pub.core.patch_namespaced_pod = pods.patch  # type: ignore[method-assign,assignment]
    return pub, outbox, store


def test_a_dead_sandboxes_del_of_the_old_pod_does_not_drop_the_recreated_pods_owed_status() -> None:
    """A StatefulSet pod ``app`` (uid-old) is deleted and made again (uid-new) on this node. The new pod's ADD writes
    its networks-status; the API server answers 500, so it is owed. Then the old sandbox's late DEL (the runtime's
    clean-up, which the attacher expects to come after the new ADD) writes the old pod's status (none left): the
    target is the pod's *name*, so ``_now_or_owed`` drops the owed write of the new pod before its own patch, which
    the UID precondition then refuses (409: done). The new pod's status is never written."""
    pods = FakePods()
    pub, outbox, _ = kube_publisher(pods)
    pods.uid[("ns", "app")] = "uid-new"  # the old pod is gone, the new one exists
    new = Pod(Meta("Pod", "app", "ns", "uid-new"))
    old = Pod(Meta("Pod", "app", "ns", "uid-old"))
    pods.fail = 1
    pub.pod_status(new, PodStatus("uid-new", "ns", "app", ({"ifName": "net1"},), 0.0, ({"interface": "net1"},)))
    assert outbox.owes("Pod/ns/app"), "the new pod's status is owed (answered 500)"
    pub.pod_status(old, None)  # the old sandbox's DEL: Attacher._release -> PodStatusWriter.write -> pod_status
    outbox.flush()
    assert pods.status.get(("ns", "app")) == [{"ifName": "net1"}], \
        "the recreated pod's owed networks-status was dropped by the old pod's DEL and never written"


def test_a_del_killed_right_after_its_commit_still_removes_the_pods_networks_status() -> None:
    """The pod's last attachment is deleted while the pod stays (a finished Job's pod: the kubelet tears its sandbox
    down, the object remains). ``_release`` commits (record and stored status gone), and the daemon is SIGKILLed
    before ``statuses.write``. Nothing owed it: the restart's ``republish`` owes the store's statuses and removes only
    statuses that were *owed*; the runtime's retried DEL finds no record and returns {}. The pod keeps a
    networks-status naming interfaces and addresses that no longer exist (the addresses go back to the pool)."""
    from ipamd.verbs.pod_statuses import PodStatusWriter
    from tests.unit.test_attacher import Killed, Node

    pods = FakePods()
    pods.uid[("apps", "app")] = "uid-app"
    node = Node()
    pub, outbox, _ = kube_publisher(pods)
    outbox.store = node.store  # one store, as in the daemon
    node.attacher.publisher, node.attacher.statuses = pub, PodStatusWriter(node.store, pub)
    node.call("ADD")
    outbox.flush()
    assert [e["ifName"] for e in pods.status[("apps", "app")]] == ["net1", "net2"]

    def killed(*a: Any, **k: Any) -> None:
        raise Killed("after _release's commit")

    pub.detached = killed  # type: ignore[method-assign]  # the first thing after the commit
    try:
        node.call("DEL")
    except Killed:
        pass
    assert node.store.attachments() == [] and node.store.pod_status("uid-app") is None, "committed"
    # the restart (Reconciler.recover): what the store says is published again
    pub2, outbox2, _ = kube_publisher(pods)
    outbox2.store = node.store
    pub2.republish(node.store.all_ips(), node.store.pod_statuses())
    assert node.call("DEL") == {}, "the runtime's retry: nothing left to do"
    outbox2.flush()
    assert pods.status[("apps", "app")] is None, "the pod's networks-status still names its deleted interfaces"


def test_a_dead_sandboxes_del_before_the_cache_lists_keeps_the_auto_address_the_new_sandbox_uses() -> None:
    """The pod's new sandbox (c2) is up; its dead sandbox's DEL (c1, retried by the runtime) reaches a daemon just
    restarted, before its informers have listed (DEL needs no cache: it never calls ``require_listed``). ``_release``
    keeps the Auto IPAddress for c2 (``shared``), then asks ``source.pod_by_uid``: None, as nothing is listed yet, so
    ``forget_pod`` deletes every Auto IPAddress the pod owns -- the one c2 still has on its interface included. Its
    lease goes (TTL 0 on pool-a), and the address can be leased to another pod while c2 runs."""
    from ipamd.model.objects import POD
    from tests.unit.test_attacher import Node

    node = Node()
    node.call("ADD", container="c1")
    node.call("ADD", container="c2")  # the new sandbox: same pod, same Auto IPAddresses
    used = sorted(k for a in node.store.attachments() if a.container_id == "c2" for i in a.interfaces
                  for k in i.ip_keys)
    assert len(used) == 2
    node.source.synced = False  # the daemon restarted: its informers have not listed
    node.source.remove(POD.name, "apps", "app")
    node.call("DEL", container="c1")
    assert [a.container_id for a in node.store.attachments()] == ["c2"]
    left = sorted(r.key for r in node.store.all_ips())
    assert left == used, f"the Auto IPAddresses the running sandbox c2 uses were deleted: {left} != {used}"
    held = {lease.holder for lease in node.store.all_leases() if lease.orphaned_at is None}
    assert set(used) <= held, "their leases were let go while c2 still uses the addresses"

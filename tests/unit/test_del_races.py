"""A DEL in Kubernetes mode, and what it owes the API server, in interleavings found in review (each failing on the
code before its fix): a pod made again under the same name, a daemon killed after the DEL's commit, a dead sandbox's
DEL before the cache has listed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ipamd.kube.outbox import Outbox
from ipamd.kube.publisher import KubePublisher
from ipamd.model.objects import STATUS_ANNOTATION, Meta, Pod
from ipamd.store.records import PodStatus
from ipamd.verbs.pod_statuses import PodStatusWriter
from tests.fakes.store import MemoryStore
from tests.unit.test_attacher import Killed, Node


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


def _kube_node(pods: FakePods) -> tuple[Node, Any, Any]:
    pods.uid[("apps", "app")] = "uid-app"
    node = Node()
    pub, outbox, _ = kube_publisher(pods)
    outbox.store = node.store  # one store, as in the daemon
    node.attacher.publisher, node.attacher.statuses = pub, PodStatusWriter(node.store, pub)
    return node, pub, outbox


def _restart(node: Node, pods: FakePods) -> None:
    """Reconciler.recover: what the store says is owed again, then the outbox runs."""
    pub2, outbox2, _ = kube_publisher(pods)
    outbox2.store = node.store
    pub2.republish(node.store.all_ips(), node.store.pod_statuses())
    outbox2.flush()


def test_a_del_killed_while_its_status_removal_is_in_flight_still_removes_it() -> None:
    """The pod's last attachment goes while the pod stays (a finished Job's pod). ``_release`` commits and owes the
    removal (``owe_pod_status``); then ``statuses.write`` -> ``_now_or_owed`` drops that owed removal
    (``drop_where``) *before* its PATCH, and the daemon is SIGKILLed while the PATCH is in flight (the longest step
    after the commit: up to CALL_TIMEOUT). After the restart nothing owes the removal: the store has no status, and
    ``republish`` removes only statuses that are owed. The pod keeps a networks-status naming deleted interfaces."""
    pods = FakePods()
    node, pub, outbox = _kube_node(pods)
    node.call("ADD")
    outbox.flush()
    assert [e["ifName"] for e in pods.status[("apps", "app")]] == ["net1", "net2"]
    real = pods.patch

    def patch(name: str, namespace: str, body: dict[str, Any], **kw: Any) -> Any:
        if body["metadata"]["annotations"][STATUS_ANNOTATION] is None:
            raise Killed("SIGKILL while the removal's PATCH is in flight (never reached the API server)")
        return real(name, namespace, body, **kw)

    pub.core.patch_namespaced_pod = patch
    try:
        node.call("DEL")
        raise AssertionError("the removal's PATCH was never tried")
    except Killed:
        pass
    assert node.store.attachments() == [] and node.store.pod_status("uid-app") is None, "committed"
    _restart(node, pods)
    assert node.call("DEL") == {}, "the runtime's retry: nothing left to do"
    assert pods.status[("apps", "app")] is None, \
        "the DEL's owed removal was dropped before its write was made: the pod names deleted interfaces for ever"


def test_another_sandboxes_status_write_read_before_the_last_del_commits_does_not_drop_its_owed_removal() -> None:
    """Pod ``app`` (a finished Job's, the object stays) has two sandboxes' attachments, c1 (dead, its DEL late) and c2.
    DEL c1 commits (status: c2's) and its ``statuses.write`` reads that status under the pod's lock; before it takes
    the target (``outbox.writing``: waiting on a pass, or just the scheduler) DEL c2 commits the pod's last attachment
    away and owes the removal. c1's write then ``drop_where``s every owed write of the UID, the newer removal included,
    and writes its older status. The daemon is killed before DEL c2's own ``statuses.write``: after the restart nothing
    owes the removal, and the pod keeps c2's deleted interfaces."""
    pods = FakePods()
    node, pub, outbox = _kube_node(pods)
    node.call("ADD", container="c1")
    node.call("ADD", container="c2")
    outbox.flush()
    real_writing = outbox.writing
    fired: list[bool] = []

    def detached_killed(*a: Any, **k: Any) -> None:
        raise Killed("after DEL c2's commit")

    def del_c2() -> None:  # another CNI worker: commits, owes the removal, then dies
        try:
            node.call("DEL", container="c2")
        except Killed:
            pass

    other = threading.Thread(target=del_c2)

    @contextmanager
    def writing(target: str, wait: bool = True) -> Iterator[bool]:
        if target == "Pod/apps/app" and not fired:
            fired.append(True)
            pub.detached = detached_killed  # the first thing after _release's commit
            other.start()  # DEL c2 now: its commit may not come between this write's read and its drop
            other.join(0.5)
        with real_writing(target, wait) as ours:
            yield ours

    outbox.writing = writing
    node.call("DEL", container="c1")  # its write read c2's status before DEL c2 committed
    other.join(10)
    outbox.writing = real_writing
    assert node.store.pod_status("uid-app") is None and outbox.owes("Pod/apps/app"), "the removal is owed"
    assert node.store.attachments() == []
    _restart(node, pods)  # the kill that stopped DEL c2 before its statuses.write
    assert pods.status[("apps", "app")] is None, \
        "an older status write of the same UID dropped the removal DEL c2's commit owed: the pod names deleted interfaces"

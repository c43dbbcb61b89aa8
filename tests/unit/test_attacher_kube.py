"""CNI calls in Kubernetes mode through one node's real Attacher over a real SQLite store, a BlockRegistry and an
Outbox over a fake API server (the production wiring, minus the kernel). An ADD claims its addresses beyond the node
outside the store's lock: no other call of the node waits on the API server, and an outbox write the claim must wait
for (its own let-go of the address first) is never stuck behind the lock the ADD holds. A dead sandbox's late DEL
leaves the pod's new sandbox its addresses."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from cni.errors import AddressConflict, InterfaceFailure
from ipamd.ipam.addresses import Ipam
from ipamd.kube.blocks import BlockRegistry
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import lease_body, lease_name
from ipamd.kube.outbox import Outbox
from ipamd.model.objects import Pod
from ipamd.node.segments import Segments
from ipamd.store.records import OutboxEntry
from ipamd.store.sqlite import Store
from ipamd.verbs.attacher import Attacher
from ipamd.verbs.call import CniCall
from tests.fakes.cluster import FakeApi, FakeCache, served_by
from tests.fakes.drivers import FakeDriver, FakeNetns
from tests.fakes.links import FakeNodeLinks
from tests.fakes.publisher import RecordingPublisher
from tests.fakes.source import FakeSource
from tests.unit.test_attacher import NETNS, NS, obj


def a_pod(name: str, networks: list[dict[str, Any]], uid: str) -> Pod:
    p = obj("Pod", name, {}, uid=uid, annotations={"network.deckhouse.io/networks-spec": json.dumps(networks)})
    assert isinstance(p, Pod)
    return p


def world(ttl: str = "0s") -> FakeSource:
    return FakeSource(
        obj("NetworkClass", "cls", {"vlan": {"idPool": ["600-700"]}}, namespaced=False),
        # a /28: leased per address (too small for blocks), as a small pool is in production
        obj("IPAddressPool", "small", {"pools": [{"network": "198.18.40.0/28"}], "leaseTTL": ttl}),
        obj("Network", "net-a", {"networkClass": "cls", "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool",
                                                                                        "name": "small"}}}),
        obj("IPAddress", "fixed", {"networkRef": {"kind": "Network", "name": "net-a"}, "type": "Static",
                                   "static": {"ip": "198.18.40.5"}}),
    )


class KubeNode:
    def __init__(self, api: FakeApi, name: str = "n1", store: Store | None = None, source: FakeSource | None = None,
                 live: bool = True) -> None:
        self.api = api
        self.name = name
        self.store = store or Store(":memory:")
        self.cache = FakeCache(api, live=live)
        self.outbox = Outbox(self.store, api.senders())
        self.registry = BlockRegistry(self.cache, name, self.outbox, spawn=lambda run: run())  # type: ignore[arg-type]
        self.source = source or world()
        served_by(api, self.source)
        self.ipam = Ipam(self.store, self.source, registry=self.registry)
        self.events: list[str] = []
        self.drivers = {k: FakeDriver(k, self.events) for k in ("veth", "tap", "macvlan")}
        self.netns = FakeNetns()
        self.publisher = RecordingPublisher()
        self.attacher = Attacher(self.store, self.source, self.ipam, Segments(self.store, FakeNodeLinks(),
                                                                              lambda: 1_700_000_000.0),
                                 self.drivers, lambda: object(), self.netns.open, self.publisher, lambda: True)

    def call(self, verb: str, pod: str, uid: str, container: str, config: dict[str, Any] | None = None) -> Any:
        args = {"K8S_POD_NAMESPACE": NS, "K8S_POD_NAME": pod, "K8S_POD_UID": uid}
        conf = {"cniVersion": "1.1.0", "name": "plexus", "type": "plexus", **(config or {})}
        return self.attacher.handle(CniCall(verb, container, NETNS, "eth0", args, conf))


POOL = f"IPAddressPool/{NS}/small"


def _lock_is_free(store: Store) -> bool:
    got: list[bool] = []

    def other() -> None:
        with store.transaction():
            got.append(True)

    t = threading.Thread(target=other, daemon=True)
    t.start()
    t.join(2)
    return bool(got)


def test_add_makes_no_api_request_under_the_store_lock() -> None:
    api = FakeApi()
    node = KubeNode(api)
    node.source.add(a_pod("app", [{"type": "Network", "name": "net-a", "ifName": "net1"}], "uid-app"))
    under_lock: list[str] = []
    create = api.create

    def checked_create(kind: str, body: dict[str, Any], namespace: str = "") -> dict[str, Any]:
        if kind == LEASE_KIND and not _lock_is_free(node.store):
            under_lock.append(body["metadata"]["name"])
        return create(kind, body, namespace)

    api.create = checked_create  # type: ignore[method-assign]
    node.call("ADD", "app", "uid-app", "c1")
    assert under_lock == [], f"lease objects created while the store's lock was held: {under_lock}"


class PausingStore(Store):
    """Pauses the outbox worker right after it took a target and before it reads that target's writes (a schedule the
    real worker goes through: _run_chain -> _take -> store.outbox_of)."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.taken = threading.Event()
        self.go = threading.Event()

    def outbox_of(self, target: str) -> list[OutboxEntry]:
        if threading.current_thread().name == "outbox-worker" and not self.taken.is_set():
            self.taken.set()
            self.go.wait(5)
        return super().outbox_of(target)


def test_add_of_a_static_whose_lease_object_has_a_write_owed_does_not_deadlock_with_the_outbox() -> None:
    api = FakeApi()
    store = PausingStore()
    node = KubeNode(api, store=store)
    # the Static's address was let go just before (its old IPAddress deleted, ttl 0): its object's delete is owed
    old = lease_body(POOL, "198.18.40.5", "198.18.40.0/28", f"IPAddress/{NS}/old", 0, "n1")
    api.create(LEASE_KIND, old)
    name = lease_name(POOL, "198.18.40.5")
    node.outbox.add(f"{LEASE_KIND}/{name}", "delete", {"kind": LEASE_KIND, "name": name}, supersede=True)
    node.source.add(a_pod("app", [{"type": "Network", "name": "net-a", "ifName": "net1",
                                   "ipAddressNames": ["fixed"]}], "uid-app"))

    flush_target = node.outbox.flush_target

    def slow_flush_target(target: str) -> bool:
        store.go.set()  # the worker goes on: it now waits for the store's lock, if the ADD holds it
        time.sleep(0.3)
        return flush_target(target)

    node.outbox.flush_target = slow_flush_target  # type: ignore[method-assign]
    worker = threading.Thread(target=node.outbox.flush, name="outbox-worker", daemon=True)
    worker.start()
    assert store.taken.wait(5)
    result: list[object] = []

    def add() -> None:
        try:
            result.append(node.call("ADD", "app", "uid-app", "c1"))
        except Exception as exc:
            result.append(exc)

    cni = threading.Thread(target=add, name="cni", daemon=True)
    cni.start()
    cni.join(5)
    worker.join(1)
    assert not cni.is_alive() and not worker.is_alive(), \
        "deadlock: the ADD holds the store's lock and waits in flush_target for the target the outbox worker " \
        "holds; the worker waits for the store's lock"


FIXED = [{"type": "Network", "name": "net-a", "ifName": "net1", "ipAddressNames": ["fixed"]}]


def test_a_dead_sandboxes_late_del_leaves_the_static_to_the_pods_new_sandbox() -> None:
    """The pod's new sandbox is added before its dead one's DEL comes (the runtime's clean-up after a node restart):
    that DEL keeps the pod among the Static's users, so another pod asking for the Static is refused."""
    node = KubeNode(FakeApi())
    node.source.add(a_pod("app", FIXED, "uid-app"))
    node.source.add(a_pod("other", FIXED, "uid-other"))
    node.call("ADD", "app", "uid-app", "old")
    node.call("ADD", "app", "uid-app", "new")
    node.call("DEL", "app", "uid-app", "old")
    assert [a.container_id for a in node.store.attachments()] == ["new"]
    rec = node.store.get_ip(f"IPAddress/{NS}/fixed")
    assert rec is not None and rec.used_by_uids == ("uid-app",)
    with pytest.raises(AddressConflict):
        node.call("ADD", "other", "uid-other", "o1")
    node.call("DEL", "app", "uid-app", "new")
    rec = node.store.get_ip(f"IPAddress/{NS}/fixed")
    assert rec is not None and not rec.used_by_uids, "the last sandbox's DEL lets the pod go"


AUTO = [{"type": "Network", "name": "net-a", "ifName": "net1"}]


def test_a_failed_adds_undo_keeps_the_auto_address_another_sandbox_of_the_pod_took_up() -> None:
    """Two ADDs of one pod under two container IDs overlap (not under one lock): the second takes up the Auto
    IPAddress the first created, then the first fails and is undone: the address stays the second's."""
    node = KubeNode(FakeApi())
    node.source.add(a_pod("app", AUTO, "uid-app"))
    veth = node.drivers["veth"]
    seen: dict[str, Any] = {}
    build = veth.build

    def slow_build(ctx: Any, iface: Any, undo: Any) -> Any:
        if iface.driver.get("container") == "first" and "second" not in seen:
            seen["second"] = node.call("ADD", "app", "uid-app", "second")  # while the first ADD builds
            veth.fail_build["net1"] = 1  # and the first one's build then fails
        return build(ctx, iface, undo)

    veth.build = slow_build  # type: ignore[method-assign]
    with pytest.raises(InterfaceFailure):
        node.call("ADD", "app", "uid-app", "first")
    second = seen["second"]["ips"][0]["address"].split("/")[0]
    assert [a.container_id for a in node.store.attachments()] == ["second"]
    assert second in {lease.address for lease in node.store.all_leases()}


def test_a_dead_sandboxes_del_while_the_new_one_claims_leaves_it_the_static() -> None:
    """The dead sandbox's DEL runs while the new sandbox's claim is out (after its pick, before its transaction):
    the new sandbox's transaction makes the pod a user of the Static again, with its interface."""
    node = KubeNode(FakeApi())
    node.source.add(a_pod("app", FIXED, "uid-app"))
    node.source.add(a_pod("other", FIXED, "uid-other"))
    node.call("ADD", "app", "uid-app", "old")
    securing = node.ipam.securing
    done: list[Any] = []

    @contextmanager
    def securing_then_del(*a: Any, **k: Any) -> Iterator[Any]:
        with securing(*a, **k) as secured:
            if not done:
                done.append(node.call("DEL", "app", "uid-app", "old"))  # another thread's DEL, at this moment
            yield secured

    node.ipam.securing = securing_then_del  # type: ignore[method-assign]
    node.call("ADD", "app", "uid-app", "new")
    assert done and [a.container_id for a in node.store.attachments()] == ["new"]
    rec = node.store.get_ip(f"IPAddress/{NS}/fixed")
    assert rec is not None and rec.used_by_uids == ("uid-app",)
    with pytest.raises(AddressConflict):
        node.call("ADD", "other", "uid-other", "o1")


def test_a_new_sandboxes_failed_claim_keeps_the_old_sandboxes_static() -> None:
    """The new sandbox asks for the Static the old one uses and for one another node holds: its ADD fails, and the
    Static keeps the pod as its user (the claim and the interface are one transaction, rolled back together)."""
    api = FakeApi()
    node = KubeNode(api)
    node.source.add(a_pod("app", FIXED, "uid-app"))
    node.call("ADD", "app", "uid-app", "old")
    node.source.add(obj("IPAddress", "busy", {"networkRef": {"kind": "Network", "name": "net-a"}, "type": "Static",
                                              "static": {"ip": "198.18.40.9"}}))
    api.create(LEASE_KIND, lease_body(POOL, "198.18.40.9", "198.18.40.0/28", f"IPAddress/{NS}/x", 0, "n2"))
    node.source.add(a_pod("app", [{**FIXED[0], "ipAddressNames": ["fixed", "busy"]}], "uid-app"))
    with pytest.raises(AddressConflict):
        node.call("ADD", "app", "uid-app", "new")
    assert [a.container_id for a in node.store.attachments()] == ["old"]
    rec = node.store.get_ip(f"IPAddress/{NS}/fixed")
    assert rec is not None and rec.used_by_uids == ("uid-app",)


class Killed(BaseException):
    """The daemon's death in the middle of a step (nothing after it runs)."""


def test_a_daemon_killed_while_recording_an_interface_leaves_no_lease_user_behind() -> None:
    node = KubeNode(FakeApi())
    node.source.add(a_pod("app", FIXED, "uid-app"))
    att = node.attacher
    att._planned = lambda *a, **k: (_ for _ in ()).throw(Killed())  # type: ignore[method-assign]
    att._forget_record = lambda *a, **k: None  # type: ignore[method-assign]
    att._undo_leases = lambda *a, **k: None  # type: ignore[method-assign]  # no undo step runs in a real kill
    with pytest.raises(Killed):
        node.call("ADD", "app", "uid-app", "c1")
    assert [a.state for a in node.store.attachments()] == ["adding"]
    rec = node.store.get_ip(f"IPAddress/{NS}/fixed")
    assert rec is None or not rec.used_by_uids, "the claim was not recorded without its interface"


def test_a_retried_add_before_the_let_go_of_its_failed_try_is_made_keeps_the_lease_object() -> None:
    """A failed ADD owes the let-go of the Static it had claimed; its retry comes before that write is made (the API
    slow or away): the claim goes through the owed write first, so the Static keeps a lease object."""
    api = FakeApi()
    node = KubeNode(api)
    node.source.add(obj("IPAddress", "busy", {"networkRef": {"kind": "Network", "name": "net-a"}, "type": "Static",
                                              "static": {"ip": "198.18.40.9"}}))
    api.create(LEASE_KIND, lease_body(POOL, "198.18.40.9", "198.18.40.0/28", f"IPAddress/{NS}/x", 0, "n2"))
    node.source.add(a_pod("app", [{**FIXED[0], "ipAddressNames": ["fixed", "busy"]}], "uid-app"))
    with pytest.raises(AddressConflict):
        node.call("ADD", "app", "uid-app", "c1")
    assert node.outbox.owes(f"{LEASE_KIND}/{lease_name(POOL, '198.18.40.5')}")
    node.source.add(a_pod("app", FIXED, "uid-app"))
    node.call("ADD", "app", "uid-app", "c2")
    node.outbox.flush()
    assert [o["spec"]["holder"] for o in api.objs[LEASE_KIND].values() if o["spec"]["ip"] == "198.18.40.5"] == \
        [f"IPAddress/{NS}/fixed"]


def test_a_retried_auto_add_does_not_adopt_an_object_whose_let_go_is_owed() -> None:
    api = FakeApi()
    node = KubeNode(api)
    node.source.add(a_pod("app", AUTO, "uid-app"))
    planned, calls = node.attacher._planned, []

    def fails_once(*a: Any, **k: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise InterfaceFailure("once", "net1")
        return planned(*a, **k)

    node.attacher._planned = fails_once  # type: ignore[method-assign]
    with pytest.raises(InterfaceFailure):
        node.call("ADD", "app", "uid-app", "c1")
    node.call("ADD", "app", "uid-app", "c2")
    (lease,) = [x for x in node.store.all_leases() if x.holder]
    node.outbox.flush()
    assert [o["spec"]["ip"] for o in api.objs[LEASE_KIND].values()] == [lease.address]


def test_two_sandboxes_of_a_pod_torn_down_at_once_let_the_static_go() -> None:
    """The DELs of a pod's two sandboxes run at once (different attachments, different locks): neither keeps the
    pod on the Static for the other, which is going too."""
    node = KubeNode(FakeApi())
    node.source.add(a_pod("app", FIXED, "uid-app"))
    node.call("ADD", "app", "uid-app", "old")
    node.call("ADD", "app", "uid-app", "new")
    release_pod = node.ipam.release_pod
    other: list[threading.Thread] = []

    def release_pod_while_the_other_del_runs(*a: Any, **k: Any) -> None:
        if not other:
            other.append(threading.Thread(target=node.call, args=("DEL", "app", "uid-app", "new")))
            other[0].start()
            other[0].join(0.3)  # it runs as far as it can meanwhile
        release_pod(*a, **k)

    node.ipam.release_pod = release_pod_while_the_other_del_runs  # type: ignore[method-assign]
    node.call("DEL", "app", "uid-app", "old")
    other[0].join(10)
    assert not node.store.attachments()
    rec = node.store.get_ip(f"IPAddress/{NS}/fixed")
    assert rec is not None and not rec.used_by_uids


def test_del_of_an_attachment_added_from_the_runtimes_annotations_is_published() -> None:
    """An ADD while the API server is away takes the pod from the runtime's annotations and owes its statuses; its DEL
    must publish too, or the ADD's owed status lands once the API is back and the IPAddresses' statuses keep the pod
    as their user, for good (the reconciler leaves such records alone) (found in review)."""
    from ipamd.model.objects import POD_ANNOTATIONS_CAPABILITY

    node = KubeNode(FakeApi())
    spec = json.dumps([{"type": "Network", "name": "net-a", "ifName": "net1"}])
    runtime = {"runtimeConfig": {POD_ANNOTATIONS_CAPABILITY: {"network.deckhouse.io/networks-spec": spec}}}
    node.call("ADD", "app", "uid-app", "c1", runtime)  # the pod is not in the source: the API server is away
    assert node.publisher.attached_pods == ["app"] and "uid-app" in node.publisher.statuses
    node.call("DEL", "app", "uid-app", "c1", runtime)
    assert node.store.attachments() == []
    assert node.publisher.detached_pods == ["app"], "the DEL published nothing: the ADD's status stays the pod's"
    assert "uid-app" not in node.publisher.statuses

"""Lease objects written by several nodes and the controller under one name per address: a delete or a take-over
acts only on the version its writer saw or made, so that no holder's object is removed while its address is in use.
Nodes (each its own store, Ipam and outbox) and the controller over a fake API server, with lagging caches."""

from __future__ import annotations

import builtins
import time
from typing import Any

import pytest
from kubernetes import client

from cni.errors import AddressConflict, PoolExhausted
from ipamd.ipam.allocator import to_int
from ipamd.kube.controller import Controller
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import NODE_LABEL, lease_body, lease_name
from ipamd.kube.server_clock import ServerClock
from ipamd.model.objects import IP_ADDRESS, USED_BY_ANNOTATION
from ipamd.model.used_by import User
from tests.fakes.cluster import FakeApi, FakeCache
from tests.unit.test_blocks import Node, _grow_at, world
from tests.unit.test_ipam import attach, auto_ip, network, pod, pool, static

SMALL = "198.18.43.0/28"  # 14 addresses: leased per address


class ControllerSource:
    """The controller's view: the API through a cache, and the IPAddress objects of a FakeSource."""

    def __init__(self, api: FakeApi, live: bool = True) -> None:
        self.objects, self.node_name = api, "ctl"
        self.cache = FakeCache(api, live=live)
        self.src = world()

    def subscribe(self, fn: Any) -> None:
        pass

    def ready(self) -> bool:
        return True

    def get(self, kind: Any, ns: str, name: str) -> Any:
        return self.src.get(kind, ns, name)

    def list(self, kind: Any) -> Any:
        return self.src.list(kind)

    def items(self, kind: str) -> builtins.list[dict[str, Any]]:
        if kind == "IPAddress":
            return [{"metadata": {"namespace": o.meta.namespace, "name": o.meta.name}} for o in self.src.list(IP_ADDRESS)]
        if kind == "ClusterIPAddress":
            return []
        return self.cache.items(kind)

    def by_index(self, kind: str, index: str, key: Any) -> builtins.list[dict[str, Any]]:
        return self.cache.by_index(kind, index, key)


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


def controller(src: ControllerSource) -> Controller:
    return Controller(client.ApiClient(), src, "plexus-system")  # type: ignore[arg-type]


def small_node(api: FakeApi, name: str, ttl: str) -> Node:
    n = Node(api, name, claim=False)
    n.source.add(pool("q", SMALL, ttl=ttl))
    n.source.add(network("q-net", "q"))
    return n


def objects_of(api: FakeApi, address: str) -> list[dict[str, Any]]:
    return [o for o in api.objs[LEASE_KIND].values() if o["spec"]["ip"] == address]


def test_a_nodes_late_end_of_quarantine_keeps_the_next_holders_lease_object(api: FakeApi) -> None:
    """The controller ends X's quarantine of an address first (every ~2 s; X's own round comes later), Y leases the
    address: X's own end of the quarantine then leaves Y's object alone, and a third node does not get it too."""
    x, y, z = (small_node(api, n, "60s") for n in "xyz")
    got = attach(x.ipam, pod("p1"), net="q-net")[0].address
    x.ipam.delete_ip(next(r for r in x.store.all_ips() if r.address == got))  # quarantined 60 s
    x.outbox.flush()
    ctl = controller(ControllerSource(api))
    ctl.clock = ServerClock(wall=lambda: time.time() + 61)  # 60 s on, by the API server's clock: expired cluster-wide
    ctl.expire_leases()
    assert not objects_of(api, got)
    y.store.set_cursor("IPAddressPool/ns/q", to_int(got) - 1)
    assert attach(y.ipam, pod("p2"), net="q-net")[0].address == got
    x.clock.advance(61)
    assert x.ipam.expire(None, x.clock()) == 1
    x.outbox.flush()
    y_lease = y.store.lease_at("IPAddressPool/ns/q", to_int(got))
    assert y_lease is not None and [o["spec"].get("holder") for o in objects_of(api, got)] == [y_lease.holder]
    z.store.set_cursor("IPAddressPool/ns/q", to_int(got) - 1)
    assert attach(z.ipam, pod("p3"), net="q-net")[0].address != got
    assert not x.outbox.depth()


def test_a_nodes_end_of_quarantine_keeps_a_lease_a_static_adopted_elsewhere(api: FakeApi) -> None:
    x, y = small_node(api, "x", "1h"), small_node(api, "y", "1h")
    got = attach(x.ipam, pod("p1"), net="q-net")[0].address
    x.ipam.delete_ip(next(r for r in x.store.all_ips() if r.address == got))
    x.outbox.flush()
    y.source.add(static("s", got, net="q-net"))
    assert attach(y.ipam, pod("p2"), net="q-net", names=("s",))[0].address == got  # adopted on Y
    x.clock.advance(3601)  # X's quarantine ends before its informer shows the Static
    assert x.ipam.expire(None, x.clock()) == 1
    x.outbox.flush()
    assert [o["spec"].get("holder") for o in objects_of(api, got)] == ["IPAddress/ns/s"]


def test_a_quarantine_of_this_node_that_nobody_ended_is_ended_by_it(api: FakeApi) -> None:
    x = small_node(api, "x", "60s")
    got = attach(x.ipam, pod("p1"), net="q-net")[0].address
    x.ipam.delete_ip(next(r for r in x.store.all_ips() if r.address == got))
    x.outbox.flush()
    assert objects_of(api, got)[0]["status"]["orphaningTimestamp"]
    x.clock.advance(61)
    assert x.ipam.expire(None, x.clock()) == 1
    x.outbox.flush()
    assert not objects_of(api, got), "the orphan this node made is deleted at the end of its quarantine"


def test_a_lagging_node_leaves_the_block_owners_object_of_the_same_static_alone(api: FakeApi) -> None:
    """B's cache shows neither A's block nor A's object of the Static .200: B's create meets A's object (the same
    holder, so 'its already'), then B finds A's block and lets .200 go without deleting A's object."""
    b = Node(api, "b", live=False)
    b.registry.in_blocks = lambda pool: False  # type: ignore[method-assign]
    a = Node(api, "a")
    a.registry.grow = _grow_at(a.registry, "198.18.40.192")  # type: ignore[method-assign]
    a.add()
    assert a.add(names=("fixed",)) == "198.18.40.200"
    a.outbox.flush()
    with pytest.raises(AddressConflict):
        b.add(names=("fixed",))
    b.outbox.flush()
    (obj,) = objects_of(api, "198.18.40.200")
    assert obj["metadata"]["labels"]["network.deckhouse.io/node"] == "a"
    assert Node(api, "c").add(names=("fixed",)) == "198.18.40.200", "granted elsewhere: the owner's object is there"


def test_a_lagging_lease_cache_does_not_give_a_users_auto_ipaddress_two_leases(api: FakeApi) -> None:
    src = ControllerSource(api, live=False)
    src.src.add(auto_ip("user-auto"))
    ctl = controller(src)
    ctl.allocate_user_ipaddresses()
    ctl.allocate_user_ipaddresses()  # a round before the caches show its lease or its status
    assert [o["spec"]["holder"] for o in api.objs[LEASE_KIND].values()] == ["IPAddress/ns/user-auto"]


def test_a_let_go_made_twice_leaves_the_next_holders_object_alone(api: FakeApi) -> None:
    """N1 lets X go (ttl 0); the API server deletes the object but the answer is lost, so the outbox makes the
    write again later, after N2 has leased X: the second time it finds N2's object and leaves it, and a third node
    does not get X too."""
    n1, n2, n3 = (small_node(api, n, "0s") for n in ("n1", "n2", "n3"))
    p = pod("p1")
    x = attach(n1.ipam, p, net="q-net")[0].address
    for _ in range(13):  # the pool is full but for x
        attach(n2.ipam, pod(f"f{_}"), net="q-net")
    name = next(n for n, o in api.objs[LEASE_KIND].items() if o["spec"]["ip"] == x)
    delete, lost = api.delete, [True]

    def delete_then_time_out(kind: str, nm: str, namespace: str = "", resource_version: str = "") -> None:
        delete(kind, nm, namespace, resource_version)
        if nm == name and lost:
            lost.pop()
            raise TimeoutError("read timed out")  # made by the API server, its answer lost

    api.delete = delete_then_time_out  # type: ignore[method-assign,assignment]
    n1.ipam.delete_ip(next(r for r in n1.store.all_ips() if r.address == x))
    n1.outbox.flush()
    assert n1.outbox.depth() == 1 and name not in api.objs[LEASE_KIND], "made, and owed again"
    n2.store.set_cursor("IPAddressPool/ns/q", to_int(x) - 1)
    assert attach(n2.ipam, pod("p2"), net="q-net")[0].address == x
    for entry in n1.store.outbox_head(10):
        n1.store.outbox_retry(entry.seq, entry.attempts, 0.0, "")  # its backoff over
    n1.outbox._away_until = 0.0
    n1.outbox.flush()
    assert not n1.outbox.depth()
    assert [o["metadata"]["labels"]["network.deckhouse.io/node"] for o in objects_of(api, x)] == ["n2"]
    with pytest.raises(PoolExhausted):
        attach(n3.ipam, pod("p3"), net="q-net")


def test_a_failed_add_lets_go_only_of_what_it_made_not_another_nodes_object_of_the_same_static(api: FakeApi) -> None:
    """A uses the Static .7 and made its object; B's ADD asks for it and for a Static someone else holds: B's failed
    transaction lets go of its claim of .7, which found A's object (the same holder): A's object stays."""
    a, b = Node(api, "a", claim=False), Node(api, "b", claim=False)
    for n in (a, b):
        n.source.add(static("s", "198.18.41.7", net="small-net"))
        n.source.add(static("busy", "198.18.41.9", net="small-net"))
    api.create(LEASE_KIND, lease_body("IPAddressPool/ns/small", "198.18.41.9", "198.18.41.0/28", "IPAddress/ns/x", 0,
                                      "c"))
    assert attach(a.ipam, pod("pa"), net="small-net", names=("s",))[0].address == "198.18.41.7"
    a.outbox.flush()
    with pytest.raises(AddressConflict):
        attach(b.ipam, pod("pb"), net="small-net", names=("s", "busy"))
    b.outbox.flush()
    assert [o["metadata"]["labels"]["network.deckhouse.io/node"] for o in objects_of(api, "198.18.41.7")] == ["a"]


@pytest.mark.parametrize("ttl", ["0s", "1h"])
def test_a_static_deleted_while_another_node_uses_it_keeps_that_nodes_object(api: FakeApi, ttl: str) -> None:
    """A's pod uses the Static when the user deletes it (B's pod used it before, one pod at a time, and B made its
    object); B, whose pod is gone, lets it go (deleted at once, or quarantined): the object of the Static A's pod uses
    is not B's to delete or quarantine, and a third node's Static at the same address is refused."""
    a, b, c = (small_node(api, n, ttl) for n in "abc")
    ip = "198.18.43.7"
    for n in (a, b):
        n.source.add(static("s", ip, net="q-net"))
    assert attach(b.ipam, pod("pb"), net="q-net", names=("s",))[0].address == ip
    b.outbox.flush()
    rec = b.store.get_ip("IPAddress/ns/s")
    assert rec is not None
    b.ipam.release_pod([rec.key], rec.used_by_uids[0])
    b.outbox.flush()
    assert attach(a.ipam, pod("pa"), net="q-net", names=("s",))[0].address == ip
    a.outbox.flush()
    rec = b.store.get_ip("IPAddress/ns/s")
    assert rec is not None
    b.ipam.delete_ip(rec)
    b.outbox.flush()
    assert [(o["spec"].get("holder"), "status" in o) for o in objects_of(api, ip)] == [("IPAddress/ns/s", False)]
    c.source.add(static("t", ip, net="q-net"))
    with pytest.raises(AddressConflict):
        attach(c.ipam, pod("pc"), net="q-net", names=("t",))


def test_a_lease_the_controller_made_and_a_node_took_up_is_quarantined_by_that_node(api: FakeApi) -> None:
    """The controller leased a user's Auto IPAddress; the node that runs the pod naming it takes the lease up (and
    labels it its own): when the IPAddress is deleted, that node quarantines it."""
    n = small_node(api, "a", "1h")
    body = lease_body("IPAddressPool/ns/q", "198.18.43.5", "198.18.43.0/28", "IPAddress/ns/u", 3600)
    body["metadata"]["labels"]["network.deckhouse.io/made-by-controller"] = "true"
    api.create(LEASE_KIND, body)
    n.source.add(auto_ip("u", net="q-net"))
    assert attach(n.ipam, pod("p"), net="q-net", names=("u",))[0].address == "198.18.43.5"
    n.outbox.flush()
    assert objects_of(api, "198.18.43.5")[0]["metadata"]["labels"]["network.deckhouse.io/node"] == "a"
    rec = n.store.get_ip("IPAddress/ns/u")
    assert rec is not None
    n.ipam.release_pod([rec.key], rec.used_by_uids[0])
    n.ipam.delete_ip(rec)
    n.outbox.flush()
    (obj,) = objects_of(api, "198.18.43.5")
    assert not obj["spec"].get("holder") and obj["status"]["orphaningTimestamp"]


@pytest.mark.parametrize("write", ["patch", "patch_status"])
def test_a_quarantine_one_of_whose_writes_failed_once_is_finished(api: FakeApi, write: str) -> None:
    """The quarantine of a lease object is two writes (its time, then its holder dropped): either failing once (the
    API server's answer lost), the retry finishes it, so the object expires."""
    n = small_node(api, "a", "1h")
    got = attach(n.ipam, pod("p"), net="q-net")[0].address
    n.outbox.flush()
    rec = next(r for r in n.store.all_ips() if r.address == got)
    real = getattr(api, write)
    failed: list[int] = []

    def fails_once(*a: Any, **k: Any) -> Any:
        if not failed:
            failed.append(1)
            raise TimeoutError("read timed out")
        return real(*a, **k)

    setattr(api, write, fails_once)
    n.ipam.delete_ip(rec)
    n.outbox.flush()
    assert failed and n.outbox.depth()
    n.outbox.clock = lambda: 1e12  # its backoff over
    n.outbox._away_until = 0.0
    n.outbox.flush()
    (obj,) = objects_of(api, got)
    assert not obj["spec"].get("holder") and obj["status"]["orphaningTimestamp"] and not n.outbox.depth()


@pytest.mark.parametrize("ttl", ["0s", "1h"], ids=["deleted", "quarantined"])
def test_a_static_adopted_while_another_node_keeps_it_is_not_let_go_at_the_version_the_adoption_answered(
        ttl: str) -> None:
    """Node y adopts x's quarantined object for Static s: a patch (holder, y's label), then the status patch that ends
    the quarantine. Between the two, node a, whose pod uses s, makes the object its own (its keep_lease). y's status
    patch answers with a's object: y must not take that version as its own, or its let-go of s (a delete, or a
    quarantine) would write a's object at it without reading it (found in review)."""
    api = FakeApi()
    x, y = small_node(api, "x", "1h"), small_node(api, "y", ttl)
    got = attach(x.ipam, pod("p1"), net="q-net")[0].address
    x.ipam.delete_ip(next(r for r in x.store.all_ips() if r.address == got))  # x's quarantine of it
    x.outbox.flush()
    name = lease_name("IPAddressPool/ns/q", got)
    assert objects_of(api, got)[0]["status"]["orphaningTimestamp"]
    patch_status = api.patch_status
    raced: list[str] = []

    def a_keeps_it_meanwhile(kind: str, obj_name: str, status: dict[str, Any], namespace: str = "",
                             resource_version: str = "") -> dict[str, Any]:
        if kind == LEASE_KIND and obj_name == name and status == {"orphaningTimestamp": None} and not raced:
            raced.append(obj_name)
            api.patch(LEASE_KIND, name, {"metadata": {"labels": {NODE_LABEL: "a"}, "annotations": {
                USED_BY_ANNOTATION: User("uid-pa", "ns/pa", "a").text()}}, "spec": {"holder": "IPAddress/ns/s"}})
            patch_status(kind, obj_name, {"orphaningTimestamp": None})
        return patch_status(kind, obj_name, status, namespace, resource_version)

    api.patch_status = a_keeps_it_meanwhile  # type: ignore[method-assign,assignment]
    y.source.add(static("s", got, net="q-net"))
    attach(y.ipam, pod("p2"), net="q-net", names=("s",))
    api.patch_status = patch_status  # type: ignore[method-assign]
    assert raced and objects_of(api, got)[0]["metadata"]["labels"][NODE_LABEL] == "a"

    rec = y.store.get_ip("IPAddress/ns/s")  # y lets s go: its pod gone, the IPAddress deleted
    assert rec is not None
    y.ipam.release_pod([rec.key], rec.used_by_uids[0])
    y.ipam.delete_ip(rec)
    y.outbox.flush()
    left = [(o["spec"].get("holder"), o["metadata"]["labels"].get(NODE_LABEL),
             bool((o.get("status") or {}).get("orphaningTimestamp"))) for o in objects_of(api, got)]
    assert left == [("IPAddress/ns/s", "a", False)], "node a's kept object changed by y"

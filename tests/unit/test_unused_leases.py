"""The controller leases a user's Auto IPAddress before any pod uses it (an IPAddressLease with no node label); a node
whose pod names it takes the lease up, labelling it its own at the version it read, before it uses the address. A
lease no node took up whose IPAddress was deleted, and that no pod names, is released by the controller (it stayed
taken for ever); never one a node uses, whatever the timing (each interleaving below was found in review against a
first version whose take-up was an owed, unguarded relabel, and against its first fix)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from cni.errors import AddressConflict, TryAgainLater
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import NODE_LABEL, lease_body
from ipamd.model.objects import IPAddressObject
from ipamd.model.timefmt import rfc3339
from ipamd.store.records import LeaseRecord
from tests.fakes.cluster import FakeApi
from tests.unit.test_blocks import Node
from tests.unit.test_ipam import attach, obj, pod
from tests.unit.test_reclaim import Cluster, controller

POOL = "IPAddressPool/ns/small"  # tests.unit.test_ipam's world: 198.18.41.0/28, network small-net


def auto_ip(name: str) -> IPAddressObject:
    made = obj("IPAddress", name, {"networkRef": {"kind": "Network", "name": "small-net"}})
    assert isinstance(made, IPAddressObject)
    return made


def leased_by_the_controller(api: FakeApi, ip: str, holder: str) -> None:
    api.create(LEASE_KIND, lease_body(POOL, ip, "198.18.41.0/28", holder, 0))


def held(api: FakeApi) -> dict[str, str]:
    return {o["spec"]["ip"]: o["spec"]["holder"] for o in api.objs[LEASE_KIND].values() if o["spec"].get("holder")}


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


def test_the_lease_of_a_deleted_user_ipaddress_no_node_took_up_is_released(api: FakeApi,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for ip, holder in (("198.18.41.1", "IPAddress/app/reserved"), ("198.18.41.2", "IPAddress/app/named"),
                       ("198.18.41.3", "ClusterIPAddress/cip"), ("198.18.41.4", "IPAddress/app/exists")):
        leased_by_the_controller(api, ip, holder)
    api.create(LEASE_KIND, lease_body(POOL, "198.18.41.5", "198.18.41.0/28", "IPAddress/app/taken-up", 0, "n1"))
    cluster = Cluster(api, user_ips=("IPAddress/app/exists",))
    cluster.specs = [("app", json.dumps([{"type": "Network", "name": "n", "ipAddressNames": ["named"]}])),
                     ("other", json.dumps([{"type": "ClusterNetwork", "name": "c", "ipAddressNames": ["cip"]}])),
                     ("app", "not json [ named")]
    ctl = controller(cluster)
    assert ctl.release_unused_leases() == 0 and len(held(api)) == 5, "gone only just now: the caches may lag"
    monkeypatch.setattr("ipamd.kube.controller.UNUSED_GONE_S", 0.0)
    assert ctl.release_unused_leases() == 1 and "198.18.41.1" not in held(api)
    (released,) = [o for o in api.objs[LEASE_KIND].values() if not o["spec"].get("holder")]
    assert released["status"]["orphaningTimestamp"], "quarantined first, then expired as any other"
    assert set(held(api)) == {"198.18.41.2", "198.18.41.3", "198.18.41.4", "198.18.41.5"}, \
        "named by a pod (even one whose annotation does not parse), still existing, or a node's: kept"
    cluster.specs = []
    assert ctl.release_unused_leases() == 2 and set(held(api)) == {"198.18.41.4", "198.18.41.5"}, "named no more"


def test_a_node_takes_the_lease_up_before_it_uses_the_address(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pod's sandbox may outlive its Pod object (force-deleted, its node cut off from the API): the lease is the
    node's from before the address was used, so the controller leaves it, and no other node gets the address."""
    leased_by_the_controller(api, "198.18.41.1", "IPAddress/ns/ux")
    n1 = Node(api, "n1", claim=False)
    n1.source.add(auto_ip("ux"))
    (c,) = attach(n1.ipam, pod("p"), net="small-net", names=("ux",))
    assert c.address == "198.18.41.1", "the controller's lease, taken up"
    (obj_,) = api.objs[LEASE_KIND].values()
    assert obj_["metadata"]["labels"][NODE_LABEL] == "n1", "labelled before the ADD answered, not owed"
    ctl = controller(Cluster(api, user_ips=()))  # ux deleted, no pod names it any more
    monkeypatch.setattr("ipamd.kube.controller.UNUSED_GONE_S", 0.0)
    assert ctl.release_unused_leases() == 0
    ctl.expire_leases()
    n2 = Node(api, "n2", claim=False)
    assert c.address not in {n2.add(net="small-net") for _ in range(3)}


def test_a_node_whose_cache_lags_does_not_take_up_a_released_lease(api: FakeApi,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller released the lease; a node whose cache still shows it (and the IPAddress) starts a pod naming
    it: its take-up reads the object from the API server, finds it quarantined, and leases another address."""
    leased_by_the_controller(api, "198.18.41.1", "IPAddress/ns/ux")
    n1 = Node(api, "n1", live=False, claim=False)  # its informers lag
    n1.source.add(auto_ip("ux"))
    ctl = controller(Cluster(api, user_ips=()))
    monkeypatch.setattr("ipamd.kube.controller.UNUSED_GONE_S", 0.0)
    assert ctl.release_unused_leases() == 1
    (c,) = attach(n1.ipam, pod("late"), net="small-net", names=("ux",))
    assert c.address != "198.18.41.1"
    n1.outbox.flush()
    ctl.expire_leases()
    n2 = Node(api, "n2", claim=False)
    assert c.address not in {n2.add(net="small-net") for _ in range(3)}


def test_a_take_up_after_the_controllers_read_makes_its_release_fail(api: FakeApi,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller's cache shows the lease unlabelled, but a node took it up since: the release is written at the
    version the cache saw, and fails."""
    leased_by_the_controller(api, "198.18.41.1", "IPAddress/ns/ux")
    cluster = Cluster(api, user_ips=())
    cluster.cache = type(cluster.cache)(api, live=False)  # what the controller saw: unlabelled
    n1 = Node(api, "n1", claim=False)
    n1.source.add(auto_ip("ux"))
    attach(n1.ipam, pod("p"), net="small-net", names=("ux",))
    ctl = controller(cluster)
    monkeypatch.setattr("ipamd.kube.controller.UNUSED_GONE_S", 0.0)
    assert ctl.release_unused_leases() == 0 and held(api) == {"198.18.41.1": "IPAddress/ns/ux"}




def _old(api: FakeApi) -> None:
    """The controller made the object long ago: past the node's stray grace at once."""
    for o in api.objs[LEASE_KIND].values():
        o["metadata"]["creationTimestamp"] = rfc3339(time.time() - 3600)


def test_a_second_call_taking_up_the_same_lease_answers_11_and_the_object_stays(api: FakeApi) -> None:
    """Two calls of one node take one lease up at once (two pods naming one IPAddress, or a pod's sandbox made again
    while its first ADD is out): the second answers 11 while the first's take-up is out, instead of sharing it
    (whose let-go then deleted the object of the address the first uses)."""
    leased_by_the_controller(api, "198.18.41.1", "IPAddress/ns/ux")
    n1 = Node(api, "n1", claim=False)
    n1.source.add(auto_ip("ux"))
    take_up = n1.registry.take_up
    second: list[int] = []

    def another_call_meanwhile(lease: LeaseRecord) -> bool:
        took = take_up(lease)
        if not second:
            with pytest.raises(TryAgainLater) as err:
                attach(n1.ipam, pod("b"), net="small-net", names=("ux",))
            second.append(err.value.code)
        return took

    n1.registry.take_up = another_call_meanwhile  # type: ignore[method-assign]
    (c,) = attach(n1.ipam, pod("a"), net="small-net", names=("ux",))
    assert c.address == "198.18.41.1" and second == [11]
    with pytest.raises(AddressConflict):  # the runtime's retry: the IPAddress is pod a's
        attach(n1.ipam, pod("b"), net="small-net", names=("ux",))
    n1.outbox.flush()
    assert held(api) == {"198.18.41.1": "IPAddress/ns/ux"}
    assert "198.18.41.1" not in {Node(api, "n2", claim=False).add(net="small-net") for _ in range(3)}


def test_the_stray_clean_up_leaves_a_lease_being_taken_up(api: FakeApi) -> None:
    """The reconciler's stray clean-up runs between a take-up and the transaction that records it: the object is
    labelled this node's, old, and not in the store yet, but it is not this node's stray."""
    leased_by_the_controller(api, "198.18.41.1", "IPAddress/ns/ux")
    _old(api)
    n1 = Node(api, "n1", claim=False)
    n1.source.add(auto_ip("ux"))
    take_up = n1.registry.take_up

    def a_round_meanwhile(lease: LeaseRecord) -> bool:
        took = take_up(lease)
        assert n1.registry.stray(n1.store, time.time() - 30) == []
        return took

    n1.registry.take_up = a_round_meanwhile  # type: ignore[method-assign]
    attach(n1.ipam, pod("p"), net="small-net", names=("ux",))
    n1.outbox.flush()
    assert held(api) == {"198.18.41.1": "IPAddress/ns/ux"}


def test_a_take_up_whose_add_fails_is_handed_back(api: FakeApi) -> None:
    """The transaction after a take-up fails: the object is labelled as it was (the controller's again), not left
    this node's for its stray clean-up to delete while the user's IPAddress still has that address."""
    leased_by_the_controller(api, "198.18.41.1", "IPAddress/ns/ux")
    _old(api)
    n1 = Node(api, "n1", claim=False)
    n1.source.add(auto_ip("ux"))
    lease_for = n1.ipam.lease_for

    def fails(*a: Any, **k: Any) -> Any:
        raise RuntimeError("the transaction fails")

    n1.ipam.lease_for = fails  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        attach(n1.ipam, pod("p"), net="small-net", names=("ux",))
    n1.ipam.lease_for = lease_for  # type: ignore[method-assign]
    n1.outbox.flush()
    (obj_,) = api.objs[LEASE_KIND].values()
    assert NODE_LABEL not in obj_["metadata"]["labels"] and obj_["spec"]["holder"] == "IPAddress/ns/ux"
    assert n1.registry.stray(n1.store, time.time() - 30) == []
    (c,) = attach(n1.ipam, pod("p"), net="small-net", names=("ux",))
    assert c.address == "198.18.41.1", "the runtime's retry takes it up again"

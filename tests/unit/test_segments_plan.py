"""Which VLAN ID a Network's segment gets: on one node the node picks it, in a cluster the controller does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cni.errors import CniError, TryAgainLater
from ipamd.ipam.addresses import ResolvedNetwork
from ipamd.model.objects import ClusterNetwork, Network, NetworkClass, parse_object
from ipamd.node.segments import Segments
from ipamd.store.sqlite import Store
from tests.fakes.links import FakeNodeLinks
from tests.fakes.store import MemoryStore
from tests.unit.test_segment_edits import cls_of
from tests.unit.test_segment_edits import net as net_of

GROUP = "network.deckhouse.io/v1alpha1"
CLASS: Any = parse_object({"apiVersion": GROUP, "kind": "NetworkClass", "metadata": {"name": "c"},
                           "spec": {"vlan": {"idPool": ["600-609"]}}})


def network(name: str, vlan: int | None = None, status_vlan: int | None = None) -> ResolvedNetwork:
    doc: dict[str, Any] = {"apiVersion": GROUP, "kind": "Network", "metadata": {"name": name, "namespace": "ns"},
                           "spec": {"networkClass": "c"}}
    if vlan is not None:
        doc["spec"]["vlan"] = {"id": vlan}
    if status_vlan is not None:
        doc["status"] = {"vlanID": status_vlan}
    obj = parse_object(doc)
    assert isinstance(obj, Network) and isinstance(CLASS, NetworkClass)
    return ResolvedNetwork(obj.meta.key, "Network", name, "ns", obj, CLASS, None)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "plexus.db"))


def test_a_lone_node_picks_the_first_free_id_or_the_one_asked_for(store: Store) -> None:
    seg = Segments(store, FakeNodeLinks(), lambda: 0.0)
    assert seg.plan(network("a")).record.id == 600
    assert seg.plan(network("b", vlan=605)).record.id == 605
    assert seg.plan(network("c")).record.id == 601


def test_in_a_cluster_the_node_waits_for_the_controllers_id(store: Store) -> None:
    seg = Segments(store, FakeNodeLinks(), lambda: 0.0, cluster=True)
    for net in (network("a"), network("b", vlan=605)):  # even the one asked for: the controller may refuse it
        with pytest.raises(TryAgainLater) as err:
            seg.plan(net)
        assert err.value.code == 11 and err.value.details == "status.vlanID"
        assert "controller" in err.value.msg and net.key in err.value.msg
    assert store.segments() == [], "nothing recorded for a Network without its ID"
    plan = seg.plan(network("b", vlan=605, status_vlan=607))
    assert plan.record.id == 607 and plan.record.bridge == "plx-br-607"


def cluster_network(name: str, status_vlan: int | None = None) -> ResolvedNetwork:
    """A VLAN ClusterNetwork with a class and no ID of its own: the class's pool gives it one."""
    doc: dict[str, Any] = {"apiVersion": GROUP, "kind": "ClusterNetwork", "metadata": {"name": name},
                           "spec": {"type": "VLAN", "networkClass": "c"}}
    if status_vlan is not None:
        doc["status"] = {"vlanID": status_vlan}
    obj = parse_object(doc)
    assert isinstance(obj, ClusterNetwork) and isinstance(CLASS, NetworkClass)
    return ResolvedNetwork(obj.meta.key, "ClusterNetwork", name, "", obj, CLASS, None)


def test_a_cluster_network_without_its_own_id_takes_one_from_its_class(store: Store) -> None:
    assert Segments(store, FakeNodeLinks(), lambda: 0.0).plan(cluster_network("cn")).record.id == 600
    seg = Segments(store, FakeNodeLinks(), lambda: 0.0, cluster=True)
    with pytest.raises(TryAgainLater):
        seg.plan(cluster_network("cn2"))
    assert seg.plan(cluster_network("cn2", status_vlan=604)).record.id == 604, "the controller's, in a cluster"



def test_two_untagged_networks_do_not_silently_share_one_parent_nic() -> None:
    """The second untagged Network of a class naming eth1 took eth1 from the first one's bridge (a NIC is the port of
    one bridge), cutting its pods off the wire while both said Ready: now refused (``segment_links.ensure_bridge``, checked
    in a namespace by tests/netns/test_uplink_once.py), and the reconciler reports that segment not ready."""
    cls = parse_object({"apiVersion": GROUP, "kind": "NetworkClass", "metadata": {"name": "flat"},
                        "spec": {"parentNodeNetworkInterfaces": {"names": ["eth1"]}}})
    assert isinstance(cls, NetworkClass)

    def net(name: str) -> ResolvedNetwork:
        o = parse_object({"apiVersion": GROUP, "kind": "Network", "metadata": {"name": name, "namespace": "ns"},
                          "spec": {"networkClass": "flat"}})
        assert isinstance(o, Network)
        return ResolvedNetwork(o.meta.key, "Network", name, "ns", o, cls, None)

    fake = FakeNodeLinks()
    seg = Segments(MemoryStore(), fake, lambda: 0.0)
    first, _ = seg.ensure(net("a"))
    try:
        seg.ensure(net("b"))
    except CniError:
        return  # refused: fine
    assert fake.links["eth1"]["master"] == first.bridge, (
        f"eth1 moved to {fake.links['eth1']['master']}: Network ns/a's bridge {first.bridge} lost its uplink "
        "without a word (both Networks are reported Ready)")


def test_a_vlan_cluster_network_of_a_class_without_id_pool_is_told_so_not_pool_exhausted() -> None:
    """A ClusterNetwork of type VLAN with no ``spec.vlan.id`` is accepted when it names a class; a class with no
    ``spec.vlan`` has no ``idPool``, so ``pick_id`` on an empty pool answers 'exhausted': ADD fails with
    PoolExhausted (a retryable 'no free VLAN ID left in the class's pool', naming a field the class does not have)
    for a configuration that can never work. Expected: a config error naming spec.vlan.id (or the class)."""
    from cni.errors import InvalidConfig, PoolExhausted

    cls = cls_of({}, name="u")
    cn = parse_object({"apiVersion": GROUP, "kind": "ClusterNetwork", "metadata": {"name": "x"},
                       "spec": {"type": "VLAN", "networkClass": "u"}})
    assert isinstance(cn, ClusterNetwork)
    segments = Segments(MemoryStore(), FakeNodeLinks(), lambda: 0.0)
    with pytest.raises((InvalidConfig, PoolExhausted)) as info:
        segments.ensure(ResolvedNetwork(cn.meta.key, "ClusterNetwork", "x", "", cn, cls, None))
    assert not isinstance(info.value, PoolExhausted), f"{info.value}: nothing was exhausted, the class has no pool"


def test_two_untagged_networks_whose_key_hashes_share_8_hex_digits_share_one_bridge() -> None:
    """``bridge_name`` names an untagged segment by 32 bits of SHA-1 of the network key and ``plan`` never asks
    whether another network's record has that bridge: Network ns/n15578 and ns/n88625 (found by a birthday search of
    ~90k names; 1% odds among 10k networks) get the same ``plx-n-9edcea79`` and silently share one L2 segment."""
    store, links = MemoryStore(), FakeNodeLinks()
    segments = Segments(store, links, lambda: 0.0)
    local = cls_of({})
    a, _ = segments.ensure(net_of(local, name="n15578"))
    try:
        b, _ = segments.ensure(net_of(local, name="n88625"))
    except Exception:  # refused naming the clash: fine
        return
    assert a.bridge != b.bridge, f"two networks on one bridge {a.bridge}: their pods share a segment"

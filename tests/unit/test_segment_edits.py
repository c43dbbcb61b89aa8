"""A class edited while its segment exists is applied (VXLAN remotes, a VLAN's parent), and ``ensure_vlan`` on a
sub-interface of the same name that is another one (checked as netlink messages: this kernel has no 802.1q)."""

from __future__ import annotations

import errno
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from cni.errors import CniError, InterfaceFailure
from ipamd.ipam.addresses import ResolvedNetwork
from ipamd.model.objects import Network, NetworkClass, VxlanSpec, parse_object
from ipamd.model.segments import SegmentInUse
from ipamd.netlink import segment_links
from ipamd.node.segments import Segments
from ipamd.store.records import AttachmentRecord, BuiltInterface, SegmentRecord
from tests.fakes.links import FakeNodeLinks
from tests.fakes.messages import encode
from tests.fakes.store import MemoryStore

GROUP = "network.deckhouse.io/v1alpha1"


def vxlan_class(remotes: list[str]) -> NetworkClass:
    cls = parse_object({"apiVersion": GROUP, "kind": "NetworkClass", "metadata": {"name": "vx"},
                        "spec": {"vxlan": {"vniPool": ["5000-5009"], "remotes": remotes}}})
    assert isinstance(cls, NetworkClass)
    return cls


def vlan_class(parent: str) -> NetworkClass:
    cls = parse_object({"apiVersion": GROUP, "kind": "NetworkClass", "metadata": {"name": "vx"},
                        "spec": {"vlan": {"idPool": ["600-609"], "parentNodeNetworkInterfaces": {"names": [parent]}}}})
    assert isinstance(cls, NetworkClass)
    return cls


def network(cls: NetworkClass) -> ResolvedNetwork:
    doc: dict[str, Any] = {"apiVersion": GROUP, "kind": "Network", "metadata": {"name": "a", "namespace": "ns"},
                           "spec": {"networkClass": "vx"}}
    obj = parse_object(doc)
    assert isinstance(obj, Network)
    return ResolvedNetwork(obj.meta.key, "Network", "a", "ns", obj, cls, None)


def cls_of(spec: dict[str, Any], name: str = "c") -> NetworkClass:
    cls = parse_object({"apiVersion": GROUP, "kind": "NetworkClass", "metadata": {"name": name}, "spec": spec})
    assert isinstance(cls, NetworkClass)
    return cls


def net(cls: NetworkClass, name: str = "a") -> ResolvedNetwork:
    obj = parse_object({"apiVersion": GROUP, "kind": "Network", "metadata": {"name": name, "namespace": "ns"},
                        "spec": {"networkClass": cls.meta.name}})
    assert isinstance(obj, Network)
    return ResolvedNetwork(obj.meta.key, "Network", name, "ns", obj, cls, None)


def bridge_of(store: MemoryStore, key: str) -> str:
    rec = store.get_segment(key)
    assert rec is not None, f"{key} has no segment"
    return rec.bridge


UNTAGGED = {"parentNodeNetworkInterfaces": {"names": ["eth1"]}}
VLAN = {"vlan": {"idPool": ["600-609"], "parentNodeNetworkInterfaces": {"names": ["eth2"]}}}


class VxlanLinks(FakeNodeLinks):
    """Node links that keep each VXLAN device's remotes as ``segment_links.ensure_vxlan`` leaves them in the kernel:
    exactly the class's (the kernel side of it is checked by tests/netns/test_segment_links.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.remotes: dict[int, set[str]] = {}

    def ensure_vxlan(self, vni: int, spec: VxlanSpec, busy: bool = False) -> str:
        self.remotes[vni] = set(spec.remotes)
        return super().ensure_vxlan(vni, spec, busy)


def test_a_remote_taken_out_of_the_vxlan_class_gets_no_more_of_the_segments_traffic() -> None:
    links = VxlanLinks()
    segments = Segments(MemoryStore(), links, lambda: 0.0)
    rec, _ = segments.ensure(network(vxlan_class(["198.18.0.2", "198.18.0.3"])))
    assert links.remotes[rec.id] == {"198.18.0.2", "198.18.0.3"}

    segments.ensure(network(vxlan_class(["198.18.0.2"])))  # the class edited: 198.18.0.3 is gone
    assert links.remotes[rec.id] == {"198.18.0.2"}, \
        f"VNI {rec.id} still floods to {sorted(links.remotes[rec.id] - {'198.18.0.2'})}, no longer a remote of the class"


def test_a_remote_added_to_the_vxlan_class_is_reached_without_a_restart() -> None:
    links = VxlanLinks()
    segments = Segments(MemoryStore(), links, lambda: 0.0)
    rec, _ = segments.ensure(network(vxlan_class(["198.18.0.2"])))
    segments.ensure(network(vxlan_class(["198.18.0.2", "198.18.0.4"])))  # a node joined
    assert "198.18.0.4" in links.remotes[rec.id], "the new node gets none of the segment's broadcasts"


def test_an_unchanged_class_costs_no_link_call() -> None:
    links = FakeNodeLinks()
    segments = Segments(MemoryStore(), links, lambda: 0.0)
    net = network(vxlan_class(["198.18.0.2"]))
    rec, index = segments.ensure(net)
    made = list(links.calls)
    assert segments.ensure(network(vxlan_class(["198.18.0.2"]))) == (segments.plan(net).record, index)
    assert segments.bridge_index(net, rec.bridge) == index
    assert links.calls == made, f"asked the kernel again for nothing: {links.calls[len(made):]}"


def test_the_bridge_mtu_is_known_without_a_netlink_call_on_add_and_follows_its_uplink() -> None:
    """A pod's interface gets its bridge's MTU (its uplink's) from the segments service, read when the bridge is set
    up and again on each reconcile round (an uplink's MTU changed since), forgotten with a bridge found lost."""
    links = FakeNodeLinks()
    segments = Segments(MemoryStore(), links, lambda: 0.0)
    net = network(vxlan_class(["198.18.0.2"]))
    rec, index = segments.ensure(net)
    assert segments.bridge_mtu(rec.bridge) == 1500
    links.mtus[index] = 1450  # the underlay's MTU lowered
    assert segments.bridge_mtu(rec.bridge) == 1500, "ADD reads the cache only"
    segments.ensure(net)  # the reconcile round
    assert segments.bridge_mtu(rec.bridge) == 1450
    del links.links[rec.bridge]  # removed behind Plexus's back
    assert segments.lost(rec.bridge) and segments.bridge_mtu(rec.bridge) is None, "the driver reads it itself"


def test_a_class_edit_that_cannot_be_applied_leaves_the_bridge_serving_and_is_tried_again() -> None:
    links = FakeNodeLinks()
    segments = Segments(MemoryStore(), links, lambda: 0.0)
    rec, index = segments.ensure(network(vlan_class("eth1")))
    assert links.links[f"plx-vl-{rec.id}"]["parent"] == "eth1"

    def refused(parent: str, vlan_id: int, busy: bool = False) -> str:
        raise InterfaceFailure("pods are on it", "parentNodeNetworkInterfaces")

    links.ensure_vlan = refused  # type: ignore[method-assign]
    with pytest.raises(CniError):
        segments.ensure(network(vlan_class("eth2")))
    assert segments.bridge_index(network(vlan_class("eth2")), rec.bridge) == index, "ADDs keep the bridge there is"
    del links.ensure_vlan  # the pods gone: now it can be
    segments.ensure(network(vlan_class("eth2")))
    assert links.links[f"plx-vl-{rec.id}"]["parent"] == "eth2"
    calls = len(links.calls)
    segments.ensure(network(vlan_class("eth2")))
    assert len(links.calls) == calls, "applied: no more calls"


def test_a_restarted_daemon_serves_the_bridge_whose_edit_waits_for_its_pods() -> None:
    """After a restart nothing is known to be set up: the bridge of a segment whose class edit is refused while pods
    sit on it serves ADDs as it is (as it did before the restart), and the reconcile round still reports the edit."""
    links, store = FakeNodeLinks(), MemoryStore()
    rec, index = Segments(store, links, lambda: 0.0).ensure(network(vlan_class("eth1")))

    def pods_on_it(parent: str, vlan_id: int, busy: bool = False) -> str:
        raise SegmentInUse("pods are on it", "parentNodeNetworkInterfaces")

    links.ensure_vlan = pods_on_it  # type: ignore[method-assign]
    restarted = Segments(store, links, lambda: 0.0)
    with pytest.raises(SegmentInUse):
        restarted.ensure(network(vlan_class("eth2")))  # the round: reported on the Network
    assert restarted.bridge_index(network(vlan_class("eth2")), rec.bridge) == index, "ADDs keep the bridge there is"
    assert restarted.bridge_mtu(rec.bridge) == 1500

    del links.ensure_vlan  # the pods gone: the edit is applied at the next round
    restarted.ensure(network(vlan_class("eth2")))
    assert links.links[f"plx-vl-{rec.id}"]["parent"] == "eth2"


def test_a_refused_edit_serves_no_bridge_that_is_not_there() -> None:
    links, store = FakeNodeLinks(), MemoryStore()
    rec, _ = Segments(store, links, lambda: 0.0).ensure(network(vlan_class("eth1")))
    del links.links[rec.bridge]

    def pods_on_it(parent: str, vlan_id: int, busy: bool = False) -> str:
        raise SegmentInUse("pods are on it", "parentNodeNetworkInterfaces")

    links.ensure_vlan = pods_on_it  # type: ignore[method-assign]
    with pytest.raises(SegmentInUse):
        Segments(store, links, lambda: 0.0).bridge_index(network(vlan_class("eth2")), rec.bridge)


def test_removing_the_segment_forgets_what_was_applied() -> None:
    links = FakeNodeLinks()
    segments = Segments(MemoryStore(), links, lambda: 0.0)
    rec, _ = segments.ensure(network(vxlan_class(["198.18.0.2"])))
    segments.remove(rec)
    assert links.index(rec.bridge) is None and f"plx-vx-{rec.id}" not in links.links
    rec, _ = segments.ensure(network(vxlan_class(["198.18.0.2"])))
    assert links.index(rec.bridge) is not None, "made again"


def test_the_reconcile_round_applies_a_class_edit() -> None:
    from tests.unit.test_attacher import NS, Node, obj
    from tests.unit.test_reconcile import reconciler

    node = Node()
    node.links = VxlanLinks()
    node.segments.links = node.links
    cls = {"vxlan": {"vniPool": ["5000-5009"], "remotes": ["198.18.0.2", "198.18.0.3"]}}
    node.source.add(obj("NetworkClass", "vx", cls, namespaced=False))
    node.source.add(obj("Network", "net-v", {"networkClass": "vx"}))
    rec = reconciler(node)
    rec.run_once()
    assert node.links.remotes[5000] == {"198.18.0.2", "198.18.0.3"}
    node.source.add(obj("NetworkClass", "vx", {"vxlan": {**cls["vxlan"], "remotes": ["198.18.0.2"]}}, namespaced=False))
    rec.run_once()
    assert node.links.remotes[5000] == {"198.18.0.2"}
    assert node.publisher.node_attachments[f"Network/{NS}/net-v"][1] is True


def test_untagged_to_vlan_and_back_leaves_a_retired_record_that_owns_the_live_bridge() -> None:
    """untagged -> VLAN -> untagged: the first retirement keeps a record ``A@plx-n-…`` with the bridge name the
    network gets again; its removal (no pod on it) deletes the live network's bridge."""
    store, links = MemoryStore(), FakeNodeLinks()
    segments = Segments(store, links, lambda: 0.0)
    first, _ = segments.ensure(net(cls_of(UNTAGGED)))
    segments.ensure(net(cls_of(VLAN)))
    back, _ = segments.ensure(net(cls_of(UNTAGGED)))
    assert back.bridge == first.bridge
    others = [r for r in store.segments() if r.network != back.network and r.bridge == back.bridge]
    assert others == [], f"retired records {[r.network for r in others]} share live bridge {back.bridge}: " \
                         "the reconciler's removal of them deletes it"


def test_a_pod_on_the_untagged_bridge_across_the_edits_then_gone_and_the_live_bridge_is_deleted() -> None:
    from ipamd.store.records import AttachmentRecord, BuiltInterface
    from tests.unit.test_attacher import NS, Node, obj
    from tests.unit.test_reconcile import reconciler

    node = Node()
    key = f"Network/{NS}/net-u"
    node.source.add(obj("NetworkClass", "c", UNTAGGED, namespaced=False))
    node.source.add(obj("Network", "net-u", {"networkClass": "c"}))
    rec = reconciler(node)
    rec.run_once()
    bridge = bridge_of(node.store, key)
    with node.store.transaction():  # a pod on the untagged bridge
        node.store.put_attachment(AttachmentRecord("c1", "eth0", "uid-p", NS, "p", "/run/netns/p", "ready", (
            BuiltInterface("net1", "veth", key, "Network", "net-u", "plxaaaa", bridge),)))
    node.source.add(obj("NetworkClass", "c", VLAN, namespaced=False))
    rec.run_once()
    node.source.add(obj("NetworkClass", "c", UNTAGGED, namespaced=False))
    rec.run_once()
    with node.store.transaction():  # the pod is gone (DEL)
        node.store.delete_attachment("c1", "eth0")
    rec.run_once()
    assert bridge_of(node.store, key) == bridge
    assert node.publisher.node_attachments[key][1] is True, "reported ready"
    assert node.links.index(bridge) is not None, f"{bridge}, the live segment's bridge, was deleted by the round " \
                                                 "that removed a retired record of the same bridge name"


def test_a_retired_segments_report_survives_a_kill_right_after_its_take_back() -> None:
    """untagged -> VLAN -> untagged with a pod on the untagged bridge: the VLAN edit retires ``N@<bridge>`` and
    reports it under its own key (a NodeNetworkInterfaceAttachment). The edit back takes that record back in
    ``Segments._assign`` (deleted from the store in ``plan``'s commit, an ADD's or a round's); its report's delete is
    owed by the next round. A daemon killed in between still owes it after its restart: the take-back is in the
    store (the network's record says so until the round owed it), not in memory only."""
    from ipamd.node.reconcile import Reconciler
    from ipamd.node.segments import TAKEN_BACK
    from tests.unit.test_attacher import NS, Node, obj
    from tests.unit.test_reconcile import reconciler

    node = Node()
    key = f"Network/{NS}/net-u"
    node.source.add(obj("NetworkClass", "c", UNTAGGED, namespaced=False))
    node.source.add(obj("Network", "net-u", {"networkClass": "c"}))
    rounds = reconciler(node)
    rounds.run_once()
    bridge = bridge_of(node.store, key)
    with node.store.transaction():  # a pod on the untagged bridge
        node.store.put_attachment(AttachmentRecord("c1", "eth0", "uid-p", NS, "p", "/run/netns/p", "ready", (
            BuiltInterface("net1", "veth", key, "Network", "net-u", "plxaaaa", bridge),)))
    node.source.add(obj("NetworkClass", "c", VLAN, namespaced=False))
    rounds.run_once()
    retired = f"{key}@{bridge}"
    assert retired in node.publisher.node_attachments, "the old segment reported under its own key"
    node.source.add(obj("NetworkClass", "c", UNTAGGED, namespaced=False))
    node.segments.plan(rounds._live_networks()[key])  # an ADD's plan takes it back (committed) ...
    assert node.store.get_segment(retired) is None
    # ... and the daemon is killed before the next round: a new one over the same store and API
    node.segments = Segments(node.store, node.links, lambda: 1_700_000_000.0)
    again = Reconciler(node.store, node.source, node.ipam, node.attacher, node.segments, node.publisher, interval=30)
    again.recover()
    for _ in range(3):
        again.run_once()
    assert retired in node.publisher.node_detachments, \
        f"{retired}'s NodeNetworkInterfaceAttachment is never deleted: no record, nothing owed"
    assert node.publisher.node_detachments.count(retired) == 1, "its delete owed once, not every round"
    live = node.store.get_segment(key)
    assert live is not None and live.bridge == bridge and TAKEN_BACK not in live.status
    assert node.links.index(bridge) is not None, "the live segment's bridge stays"


def test_a_vlan_class_whose_parent_is_removed_keeps_its_segment_on_the_wire() -> None:
    """A VLAN class edited to name no parent NIC: its networks are to stay on the node's bridges (README), and
    'class edits reach the kernel'. ``plan`` gives uplink "", ``ensure_bridge(name, "")`` leaves the VLAN
    sub-interface a port of the bridge, and ``_applied`` records the edit as done: the segment still floods onto
    eth2 VLAN 600 for ever."""
    links = FakeNodeLinks()
    segments = Segments(MemoryStore(), links, lambda: 0.0)
    rec, _ = segments.ensure(net(cls_of(VLAN)))
    assert links.links["plx-vl-600"].get("master") == rec.bridge
    local = {"vlan": {"idPool": ["600-609"]}}
    rec2, _ = segments.ensure(net(cls_of(local)))
    assert rec2.bridge == rec.bridge
    uplink = links.links.get("plx-vl-600")
    assert uplink is None or uplink.get("master") != rec.bridge, \
        "the class names no parent any more, yet plx-vl-600 is still the bridge's uplink and nothing asked it off"


def test_a_lone_node_moves_an_edited_vlan_id_under_live_pods() -> None:
    """Local mode: ``spec.vlan.id`` edited 600 -> 601 while a pod is on VLAN 600. The controller never moves an ID
    under live pods ("as a lone node moves it once its old segment is unused", controller.py ``_move``), but the
    lone node's ``plan`` moves at once: the next pods land on VLAN 601, cut off from the one on 600."""
    from ipamd.store.records import AttachmentRecord, BuiltInterface
    from tests.unit.test_attacher import NS, Node, obj
    from tests.unit.test_reconcile import reconciler

    node = Node()
    key = f"Network/{NS}/net-v"
    node.source.add(obj("NetworkClass", "c", VLAN, namespaced=False))
    node.source.add(obj("Network", "net-v", {"networkClass": "c", "vlan": {"id": 605}}))
    rec = reconciler(node)
    rec.run_once()
    assert bridge_of(node.store, key) == "plx-br-605"
    with node.store.transaction():  # a pod on VLAN 600
        node.store.put_attachment(AttachmentRecord("c1", "eth0", "uid-p", NS, "p", "/run/netns/p", "ready", (
            BuiltInterface("net1", "veth", key, "Network", "net-v", "plxaaaa", "plx-br-605", vlan_id=605),)))
    node.source.add(obj("Network", "net-v", {"networkClass": "c", "vlan": {"id": 606}}))
    rec.run_once()
    assert bridge_of(node.store, key) == "plx-br-605", \
        f"moved to {bridge_of(node.store, key)} while a pod is on plx-br-605: new pods join another wire"
    kept = node.store.get_segment(key)
    assert kept is not None and "VLANIDChangePending" in [c["type"] for c in kept.status["conditions"]]
    with node.store.transaction():  # the pod is gone (DEL): moved
        node.store.delete_attachment("c1", "eth0")
    rec.run_once()
    moved = node.store.get_segment(key)
    assert moved is not None and moved.bridge == "plx-br-606"
    assert "VLANIDChangePending" not in [c["type"] for c in moved.status.get("conditions", ())]


def test_a_lone_nodes_pending_id_change_is_written_once_not_on_every_add() -> None:
    """Local mode: ``spec.vlan.id`` edited 605 -> 606 while a pod is on VLAN 605. The change pending is written to the
    segment's record once; the ADDs after it (more pods on the old segment) and the rounds write nothing more (its
    message counted the attachments: each ADD wrote the record again)."""
    from tests.unit.test_attacher import NS, Node, obj
    from tests.unit.test_reconcile import reconciler

    node = Node()
    key = f"Network/{NS}/net-a"
    written: list[SegmentRecord] = []
    put = node.store.put_segment

    def counted(rec: SegmentRecord) -> None:
        written.append(rec)
        put(rec)

    node.store.put_segment = counted  # type: ignore[method-assign]
    ipam = {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pool-a"}}
    node.source.add(obj("Network", "net-a", {"networkClass": "cls", "vlan": {"id": 605}, "ipam": ipam}))
    node.call("ADD", container="c1")
    node.source.add(obj("Network", "net-a", {"networkClass": "cls", "vlan": {"id": 606}, "ipam": ipam}))
    node.call("ADD", container="c2")  # the change shown pending: written
    pending = node.store.get_segment(key)
    assert pending is not None and pending.id == 605
    assert "VLANIDChangePending" in [c["type"] for c in pending.status["conditions"]]
    written.clear()
    for container in ("c3", "c4", "c5"):
        node.call("ADD", container=container)
    reconciler(node).run_once()
    assert [r.network for r in written if r.network == key] == [], \
        f"the segment's record written {len(written)} times, its pending change the same"
    assert node.store.get_segment(key) == pending


# -- ensure_vlan at the message level ---------------------------------------------------------------------------------

class MessageIPRoute:
    """An IPRoute whose links are the RTM_NEWLINK requests it was sent, decoded (each with an index): what
    ``ensure_vlan`` asks of the kernel, and what it reads back, as netlink messages."""

    def __init__(self) -> None:
        self.links: dict[int, ifinfmsg] = {}
        self.sent: list[tuple[str, ifinfmsg | int]] = []

    def made(self, **spec: Any) -> int:
        msg = encode(spec)
        msg["index"] = index = len(self.links) + 2
        self.links[index] = msg
        return index

    def _find(self, ifname: str = "", index: int = 0) -> ifinfmsg:
        for msg in self.links.values():
            if msg["index"] == index or (ifname and msg.get_attr("IFLA_IFNAME") == ifname):
                return msg
        raise NetlinkError(errno.ENODEV, "No such device")

    def link(self, cmd: str, **kw: Any) -> list[ifinfmsg]:
        if cmd == "get":
            return [self._find(kw.get("ifname", ""), kw.get("index", 0))]
        if cmd == "add":
            if any(m.get_attr("IFLA_IFNAME") == kw["ifname"] for m in self.links.values()):
                raise NetlinkError(errno.EEXIST, "File exists")
            index = self.made(**kw)
            self.sent.append(("add", self.links[index]))
            return []
        if cmd == "del":
            self.sent.append(("del", self.links.pop(self._find(index=kw["index"])["index"])["index"]))
            return []
        raise AssertionError(f"unexpected link {cmd}")

    def get_links(self) -> list[ifinfmsg]:
        return list(self.links.values())


@pytest.fixture
def ipv6_off(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The links ``l2_only`` was asked for (its sysctl is checked in namespaces)."""
    asked: list[str] = []
    monkeypatch.setattr(segment_links, "l2_only", lambda host, name: asked.append(name))
    return asked


def _vlan(msg: ifinfmsg) -> tuple[int, int, str]:
    info = msg.get_attr("IFLA_LINKINFO")
    return msg.get_attr("IFLA_LINK"), info.get_attr("IFLA_INFO_DATA").get_attr("IFLA_VLAN_ID"), \
        info.get_attr("IFLA_INFO_KIND")


def test_a_new_vlan_is_made_on_its_parent_with_ipv6_off(ipv6_off: list[str]) -> None:
    ipr = MessageIPRoute()
    eth1 = ipr.made(ifname="eth1", kind="veth")
    assert segment_links.ensure_vlan(ipr, "eth1", 700) == "plx-vl-700"
    [(cmd, msg)] = ipr.sent
    assert cmd == "add" and isinstance(msg, ifinfmsg) and _vlan(msg) == (eth1, 700, "vlan")
    assert ipv6_off == ["plx-vl-700"]


def test_the_vlan_there_is_kept_when_it_is_the_one_asked_for(ipv6_off: list[str]) -> None:
    ipr = MessageIPRoute()
    eth1 = ipr.made(ifname="eth1", kind="veth")
    ipr.made(**segment_links.vlan_spec(eth1, "plx-vl-700", 700))
    assert segment_links.ensure_vlan(ipr, "eth1", 700) == "plx-vl-700"
    assert ipr.sent == [], "nothing made again"
    assert ipv6_off == ["plx-vl-700"], "adopted: IPv6 off on it too"


def test_a_vlan_on_the_old_parent_is_made_again_on_the_new_one_while_no_pod_uses_it(ipv6_off: list[str]) -> None:
    """The class's parent NIC edited from eth1 to eth2: the sub-interface by that name was reused on eth1."""
    ipr = MessageIPRoute()
    eth1, eth2 = ipr.made(ifname="eth1", kind="veth"), ipr.made(ifname="eth2", kind="veth")
    bridge = ipr.made(ifname="plx-br-700", kind="bridge")
    old = ipr.made(**segment_links.vlan_spec(eth1, "plx-vl-700", 700), master=bridge)
    assert segment_links.ensure_vlan(ipr, "eth2", 700) == "plx-vl-700"
    assert [cmd for cmd, _ in ipr.sent] == ["del", "add"] and ipr.sent[0][1] == old
    made = ipr.sent[1][1]
    assert isinstance(made, ifinfmsg) and _vlan(made) == (eth2, 700, "vlan")
    assert ipv6_off == ["plx-vl-700"]


def test_a_vlan_on_the_old_parent_is_refused_while_pods_use_it(ipv6_off: list[str]) -> None:
    ipr = MessageIPRoute()
    eth1 = ipr.made(ifname="eth1", kind="veth")
    ipr.made(ifname="eth2", kind="veth")
    bridge = ipr.made(ifname="plx-br-700", kind="bridge")
    ipr.made(**segment_links.vlan_spec(eth1, "plx-vl-700", 700), master=bridge)
    ipr.made(ifname="plx0123456789a", kind="veth", master=bridge)  # a pod's node end
    with pytest.raises(SegmentInUse) as err:  # (the bridge serves as it is: the segments service reads it so)
        segment_links.ensure_vlan(ipr, "eth2", 700)
    assert err.value.details == "parentNodeNetworkInterfaces"
    for word in ("plx-vl-700", "eth1", "eth2", "plx-br-700"):
        assert word in err.value.msg
    assert ipr.sent == [] and ipv6_off == [], "the pods' uplink is left as it is"


def test_a_link_of_the_vlans_name_and_another_kind_is_made_again(ipv6_off: list[str]) -> None:
    ipr = MessageIPRoute()
    eth1 = ipr.made(ifname="eth1", kind="veth")
    ipr.made(ifname="plx-vl-700", kind="bridge")
    segment_links.ensure_vlan(ipr, "eth1", 700)
    assert [cmd for cmd, _ in ipr.sent] == ["del", "add"]
    made = ipr.sent[1][1]
    assert isinstance(made, ifinfmsg) and _vlan(made) == (eth1, 700, "vlan")


def test_a_missing_parent_is_named(ipv6_off: list[str]) -> None:
    with pytest.raises(InterfaceFailure) as err:
        segment_links.ensure_vlan(MessageIPRoute(), "eth9", 700)
    assert err.value.details == "eth9"


def test_a_node_does_not_serve_another_kinds_id_as_granted_after_a_class_edit() -> None:
    """A Network moved from a VXLAN class to a VLAN class still shows VNI 603 in its status until the controller grants
    it a VLAN ID: a node in a cluster waits for that (code 11), instead of building VLAN 603, which the controller may
    have given another Network (both would share one wire); the reconcile round does not make it either."""
    from cni.errors import TryAgainLater
    from tests.unit.test_attacher import NS, Node, obj
    from tests.unit.test_reconcile import reconciler

    doc: dict[str, Any] = {"apiVersion": GROUP, "kind": "Network", "metadata": {"name": "a", "namespace": "ns"},
                           "spec": {"networkClass": "vx"}, "status": {"vni": 603, "bridgeName": "plx-vb-603"}}
    moved = parse_object(doc)
    assert isinstance(moved, Network)
    cls = vlan_class("eth1")
    segments = Segments(MemoryStore(), FakeNodeLinks(), lambda: 0.0, cluster=True)
    with pytest.raises(TryAgainLater):
        segments.plan(ResolvedNetwork(moved.meta.key, "Network", "a", "ns", moved, cls, None))

    node = Node()
    node.source.add(obj("NetworkClass", "vl", {"vlan": {"idPool": ["600-609"]}}, namespaced=False))
    node.source.add(parse_object({**doc, "metadata": {"name": "moved", "namespace": NS}, "spec": {"networkClass": "vl"}}))
    reconciler(node, cluster=True).run_once()
    assert node.links.index("plx-br-603") is None, "VLAN 603 made for a network whose status shows a VNI"


class RoutedHost(MessageIPRoute):
    """A node whose every VXLAN remote is reached over eth1, but those in ``unrouted`` (the error a route lookup of
    them answers)."""

    def __init__(self, unrouted: dict[str, int] | None = None) -> None:
        super().__init__()
        self.unrouted = unrouted or {}

    def get_addr(self) -> list[Any]:
        return []

    def fdb(self, cmd: str, **kw: Any) -> list[Any]:
        return []

    def route(self, cmd: str, **kw: Any) -> list[Any]:
        assert cmd == "get"
        if kw["dst"] in self.unrouted:
            raise NetlinkError(self.unrouted[kw["dst"]], "route")
        msg = rtmsg()
        msg["attrs"] = [["RTA_DST", kw["dst"]], ["RTA_OIF", self._find(ifname="eth1")["index"]]]
        return [msg]


def test_a_vxlan_device_without_underlay_interface_gets_no_mtu_under_its_underlay(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``underlayInterface`` is optional; without it the RTM_NEWLINK carries neither IFLA_VXLAN_LINK nor IFLA_MTU, and
    the kernel (vxlan_config_apply: no lower device, max_mtu = ETH_MAX_MTU) leaves the device at ether_setup's 1500.
    The bridge then has MTU 1500 and so do its pods: a full-size frame becomes a 1550-byte outer packet on a 1500-byte
    underlay (fragmented, or dropped where DF is set or fragments are filtered). README: 'a VXLAN uplink 50 bytes
    under its underlay'."""
    monkeypatch.setattr(segment_links, "l2_only", lambda host, name: None)
    host = RoutedHost()
    host.made(ifname="eth1", kind="dummy", mtu=1400)
    segment_links.ensure_vxlan(host, 5000, "", ["198.18.0.2"], "", 4789, "")
    (msg,) = [m for cmd, m in host.sent if cmd == "add"]
    assert isinstance(msg, ifinfmsg)
    data = msg.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    assert msg.get_attr("IFLA_MTU") is not None or data.get_attr("IFLA_VXLAN_LINK") is not None, \
        "the VXLAN device is made with the kernel's default MTU (1500), not 50 under its underlay's"
    assert msg.get_attr("IFLA_MTU") == 1350


class PortsHost(MessageIPRoute):
    """The node's links as messages, whose ``set master`` moves a port, and whose indexes are never reused (the
    base's collide after a delete)."""

    next_index = 100

    def made(self, **spec: Any) -> int:
        msg = encode(spec)
        msg["index"] = index = PortsHost.next_index = PortsHost.next_index + 1
        self.links[index] = msg
        return index

    def link(self, cmd: str, **kw: Any) -> list[Any]:
        if cmd != "set":
            return super().link(cmd, **kw)
        msg = self._find(index=kw["index"])
        if "master" in kw:
            msg["attrs"] = [a for a in msg["attrs"] if a[0] != "IFLA_MASTER"] + [["IFLA_MASTER", kw["master"]]]
        return []


@pytest.mark.parametrize("code", [errno.EINVAL, errno.EACCES, errno.EAGAIN, errno.ENETUNREACH],
                         ids=["blackhole", "prohibit", "throw", "unreachable"])
def test_a_vxlan_remote_not_routed_leaves_the_mtu_to_the_others_and_fails_nothing(
        monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """The MTU lookup only picks an MTU: a remote under a blackhole, prohibit or throw route (IPv4 answers EINVAL,
    EACCES, EAGAIN) or none is skipped, where it failed the device and every ADD on the network."""
    monkeypatch.setattr(segment_links, "l2_only", lambda host, name: None)
    host = RoutedHost({"198.18.0.3": code})
    host.made(ifname="eth1", kind="dummy", mtu=1400)
    segment_links.ensure_vxlan(host, 5000, "", ["198.18.0.2", "198.18.0.3"], "", 4789, "")
    (msg,) = [m for cmd, m in host.sent if cmd == "add"]
    assert isinstance(msg, ifinfmsg) and msg.get_attr("IFLA_MTU") == 1350


def test_an_untagged_class_whose_parent_nic_is_edited_never_gets_the_new_one_even_with_no_pod(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Untagged class, parent eth1 edited to eth3, and no pod on the bridge: ``_refuse_second_uplink`` raises
    SegmentInUse ('the edit is applied once they are gone') although no pod is there, and nothing ever takes eth1
    off the bridge: the segment stays on eth1 and its attachment not Ready for ever."""
    from ipamd.netlink import segment_links

    monkeypatch.setattr(segment_links, "l2_only", lambda host, name: None)
    host = PortsHost()
    host.made(ifname="eth1", kind="dummy")
    host.made(ifname="eth3", kind="dummy")
    bridge = segment_links.ensure_bridge(host, "plx-n-00000000", "eth1")
    assert host._find(ifname="eth1").get_attr("IFLA_MASTER") == bridge
    try:
        segment_links.ensure_bridge(host, "plx-n-00000000", "eth3")  # the class edited; no pod on the bridge
    except SegmentInUse as exc:
        pytest.fail(f"refused with no pod on the bridge, and never applied: {exc}")
    assert host._find(ifname="eth3").get_attr("IFLA_MASTER") == bridge


def test_a_vlan_parent_edit_is_applied_under_live_macvlan_pods(monkeypatch: pytest.MonkeyPatch) -> None:
    """'made again once no pod is on its segment': the pods are counted as the bridge's ports (``_ports``), but a
    macvlan pod is no port of the bridge (its IFLA_LINK is, in the pod's namespace: invisible in the node's dump). A
    segment whose pods are all macvlans has its uplink deleted and made on the new parent under them."""
    from ipamd.netlink import segment_links
    from ipamd.netlink.node import NetlinkNodeLinks
    from ipamd.store.records import AttachmentRecord, BuiltInterface

    monkeypatch.setattr(segment_links, "l2_only", lambda host, name: None)
    host = PortsHost()
    host.made(ifname="eth2", kind="dummy")
    host.made(ifname="eth3", kind="dummy")
    store = MemoryStore()
    segments = Segments(store, NetlinkNodeLinks(lambda: host), lambda: 0.0)
    rec, _ = segments.ensure(net(cls_of(VLAN)))
    with store.transaction():  # a macvlan pod on the segment
        store.put_attachment(AttachmentRecord("c1", "eth0", "uid-p", "ns", "p", "/run/netns/p", "ready", (
            BuiltInterface("net1", "macvlan", rec.network, "Network", "a", "", rec.bridge, "02:00:00:00:00:01", 600),)))
    host.sent.clear()
    edited = {"vlan": {"idPool": ["600-609"], "parentNodeNetworkInterfaces": {"names": ["eth3"]}}}
    with pytest.raises(SegmentInUse):  # served as it is until the pod is gone
        segments.ensure(net(cls_of(edited)))
    assert not [m for cmd, m in host.sent if cmd == "del"], "plx-vl-600 was deleted and made on eth3 under a live pod"


def _macvlan_pod(store: MemoryStore, network: str, bridge: str) -> None:
    """A pod on the segment by a macvlan: no port of the bridge (a child of its uplink, in the pod's namespace)."""
    with store.transaction():
        store.put_attachment(AttachmentRecord("c1", "eth0", "uid-p", "ns", "p", "/run/netns/p", "ready", (
            BuiltInterface("net1", "macvlan", network, "Network", "a", "", bridge, "02:00:00:00:00:01", 600),)))


def test_after_a_restart_a_vlan_parent_edit_waits_for_macvlan_pods(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a restart nothing is known to be applied, and the kernel's ports tell of no macvlan pod: the node's
    attachments do, and the uplink is not deleted and made on the new parent under them."""
    from ipamd.netlink.node import NetlinkNodeLinks

    monkeypatch.setattr(segment_links, "l2_only", lambda host, name: None)
    host = PortsHost()
    host.made(ifname="eth2", kind="dummy")
    host.made(ifname="eth3", kind="dummy")
    store = MemoryStore()
    rec, _ = Segments(store, NetlinkNodeLinks(lambda: host), lambda: 0.0).ensure(net(cls_of(VLAN)))
    _macvlan_pod(store, rec.network, rec.bridge)
    host.sent.clear()
    restarted = Segments(store, NetlinkNodeLinks(lambda: host), lambda: 0.0)
    edited = {"vlan": {"idPool": ["600-609"], "parentNodeNetworkInterfaces": {"names": ["eth3"]}}}
    with pytest.raises(SegmentInUse):
        restarted.ensure(net(cls_of(edited)))
    assert not [m for cmd, m in host.sent if cmd == "del"], "plx-vl-600 deleted and made on eth3 under a live pod"
    assert restarted.bridge_index(net(cls_of(edited)), rec.bridge) == host._find(ifname=rec.bridge)["index"], \
        "ADDs keep the bridge there is"

    with store.transaction():  # the pod is gone (DEL): the edit is applied at the next round
        store.delete_attachment("c1", "eth0")
    restarted.ensure(net(cls_of(edited)))
    assert _vlan(host._find(ifname="plx-vl-600"))[0] == host._find(ifname="eth3")["index"]


def test_after_a_restart_an_untagged_nic_swap_waits_for_macvlan_pods(monkeypatch: pytest.MonkeyPatch) -> None:
    from ipamd.netlink.node import NetlinkNodeLinks

    monkeypatch.setattr(segment_links, "l2_only", lambda host, name: None)
    host = PortsHost()
    eth1 = host.made(ifname="eth1", kind="dummy")
    eth3 = host.made(ifname="eth3", kind="dummy")
    store = MemoryStore()
    rec, bridge = Segments(store, NetlinkNodeLinks(lambda: host), lambda: 0.0).ensure(net(cls_of(UNTAGGED)))
    assert host._find(index=eth1).get_attr("IFLA_MASTER") == bridge
    _macvlan_pod(store, rec.network, rec.bridge)
    restarted = Segments(store, NetlinkNodeLinks(lambda: host), lambda: 0.0)
    swapped = cls_of({"parentNodeNetworkInterfaces": {"names": ["eth3"]}})
    with pytest.raises(SegmentInUse):
        restarted.ensure(net(swapped))
    assert host._find(index=eth1).get_attr("IFLA_MASTER") == bridge, "eth1 taken off the bridge under a macvlan pod"
    assert not host._find(index=eth3).get_attr("IFLA_MASTER"), "eth3 joined the bridge beside eth1"

    with store.transaction():  # the pod is gone (DEL): the edit is applied at the next round
        store.delete_attachment("c1", "eth0")
    restarted.ensure(net(swapped))
    assert not host._find(index=eth1).get_attr("IFLA_MASTER") and host._find(index=eth3).get_attr("IFLA_MASTER") == bridge


@pytest.mark.parametrize("restarted", [False, True], ids=["running", "restarted"])
def test_an_untagged_class_edited_to_no_parent_releases_its_nic_once_no_pod_is_on_it(
        monkeypatch: pytest.MonkeyPatch, restarted: bool) -> None:
    """Untagged class, its parent eth1 removed from it: eth1 stays a port of the bridge while a pod (a macvlan, no
    port) is on it, then is taken off it (no master), not deleted: it is the node's."""
    from ipamd.netlink.node import NetlinkNodeLinks

    monkeypatch.setattr(segment_links, "l2_only", lambda host, name: None)
    host = PortsHost()
    eth1 = host.made(ifname="eth1", kind="dummy")
    store = MemoryStore()
    segments = Segments(store, NetlinkNodeLinks(lambda: host), lambda: 0.0)
    rec, bridge = segments.ensure(net(cls_of(UNTAGGED)))
    assert host._find(index=eth1).get_attr("IFLA_MASTER") == bridge
    _macvlan_pod(store, rec.network, rec.bridge)
    if restarted:
        segments = Segments(store, NetlinkNodeLinks(lambda: host), lambda: 0.0)
    alone = cls_of({})
    with pytest.raises(SegmentInUse) as err:
        segments.ensure(net(alone))
    assert err.value.details == "parentNodeNetworkInterfaces"
    assert host._find(index=eth1).get_attr("IFLA_MASTER") == bridge, "eth1 taken off the bridge under a macvlan pod"

    with store.transaction():  # the pod is gone (DEL): the edit is applied at the next round
        store.delete_attachment("c1", "eth0")
    assert segments.ensure(net(alone))[1] == bridge
    assert not host._find(index=eth1).get_attr("IFLA_MASTER"), "the class names no parent, yet eth1 is its port"
    assert not [m for cmd, m in host.sent if cmd == "del"], "the node's NIC is not deleted"


def test_a_vxlan_tunnel_edit_waits_for_pods_that_are_no_ports_of_its_bridge(ipv6_off: list[str]) -> None:
    """The bridge has no port but the device; ``busy`` (the node's attachments) says pods are on it all the same."""
    class Host(PortsHost):
        def get_addr(self) -> list[Any]:
            return []

        def fdb(self, cmd: str, **kw: Any) -> list[Any]:
            return []

        def route(self, cmd: str, **kw: Any) -> list[Any]:
            return []

    host = Host()
    bridge = host.made(ifname="plx-vb-5000", kind="bridge")
    host.made(**segment_links.vxlan_spec("plx-vx-5000", 5000, None, 4789, "", ""), master=bridge)
    with pytest.raises(SegmentInUse) as err:  # the class's port edited
        segment_links.ensure_vxlan(host, 5000, "", ["198.18.0.2"], "", 8472, "", busy=True)
    assert err.value.details == "spec.vxlan" and "plx-vb-5000" in err.value.msg
    assert host.sent == [], "the pods' tunnel is left as it is"
    segment_links.ensure_vxlan(host, 5000, "", ["198.18.0.2"], "", 8472, "")  # the pods gone
    assert [cmd for cmd, _ in host.sent] == ["del", "add"]

"""A Network given another VLAN ID (or kind) while pods sit on its bridge: the old segment keeps its ID until no
pod uses it, then the reconciler removes its links (found in review: the old ID was handed to the next Network,
which joined those pods' L2 segment)."""

from __future__ import annotations

from ipamd.ipam.addresses import ResolvedNetwork
from ipamd.model.annotations import NetworkSelection
from ipamd.node.reconcile import Reconciler
from tests.unit.test_attacher import NS, Node
from tests.unit.test_attacher import obj as att_obj

POOL_A = {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pool-a"}}


def _resolved(node: Node, name: str) -> ResolvedNetwork:
    return node.ipam.resolve(NetworkSelection("Network", name, "net9"), NS, "networks-spec[0]")


def _rounds(node: Node) -> Reconciler:
    return Reconciler(node.store, node.source, node.ipam, node.attacher, node.segments,
                      node.publisher)



def test_an_edited_vlan_id_is_not_handed_to_another_network_while_pods_sit_on_the_old_bridge() -> None:
    """The segment's record was overwritten with the new ID: the old one was free at once, for another Network."""
    node = Node()
    node.call("ADD")  # pod app: net-a (VLAN 600) and net-b (VLAN 601)
    (att,) = node.store.attachments()
    on_bridges = {i.bridge for i in att.interfaces}
    assert on_bridges == {"plx-br-600", "plx-br-601"}
    pool_a = POOL_A
    # the administrator moves net-a to VLAN 650 (the pod is still attached to plx-br-600)
    node.source.add(att_obj("Network", "net-a", {"networkClass": "cls", "vlan": {"id": 650}, "ipam": pool_a}))
    assert node.segments.ensure(_resolved(node, "net-a"))[0].bridge == "plx-br-650"
    # another Network of the class is created
    node.source.add(att_obj("Network", "net-c", {"networkClass": "cls", "ipam": pool_a}))
    rec, _ = node.segments.ensure(_resolved(node, "net-c"))
    assert rec.bridge not in on_bridges, (
        f"net-c got {rec.bridge}, the bridge the pod's net-a interface still sits on: two Networks share one L2 "
        "segment (the old ID was forgotten when net-a's record was overwritten, and the old bridge is never removed)")


# ---------------------------------------------------------------------------------------------------------------------
# 2. Controller: a Network deleted while pods on some node still use it loses its ID at once; the controller hands it
#    to the next Network while the node still reports the old bridge (NodeNetworkInterfaceAttachment plx-br-600).


def test_the_old_segment_goes_once_its_pods_are_gone_and_an_edit_back_takes_it_up_again() -> None:
    node = Node()
    node.call("ADD")  # pod app: net-a on plx-br-600
    node.source.add(att_obj("Network", "net-a", {"networkClass": "cls", "vlan": {"id": 650}, "ipam": POOL_A}))
    _rounds(node)._sync_segments()
    assert {"plx-br-600", "plx-br-650"} <= set(node.links.links), "the pod's bridge stays beside the new one"
    node.source.add(att_obj("Network", "net-a", {"networkClass": "cls", "vlan": {"id": 600}, "ipam": POOL_A}))
    assert node.segments.ensure(_resolved(node, "net-a"))[0].bridge == "plx-br-600", "edited back: its own again"
    node.source.add(att_obj("Network", "net-a", {"networkClass": "cls", "vlan": {"id": 650}, "ipam": POOL_A}))
    node.segments.ensure(_resolved(node, "net-a"))
    node.call("DEL")
    _rounds(node)._sync_segments()
    assert "plx-br-600" not in node.links.links and "plx-br-650" in node.links.links, \
        "no pod on the old bridge: it goes, and its ID is free again"
    assert 600 not in node.store.segment_ids("vlan")

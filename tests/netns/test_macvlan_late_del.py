"""A macvlan pod's late DEL (its sandbox gone, the runtime's DEL still to come) on a bridge where another pod has its
MAC now (a StatefulSet pod given a fixed ``mac``, made again before the old sandbox's DEL): the bridge's static
entry for that MAC is the new pod's, and the late DEL leaves it, or the new pod's unicast would be flooded to the
whole segment."""

from __future__ import annotations

import pytest
from pyroute2 import IPRoute

from tests.harness import Node, pod_manifest
from tests.netns.test_segments import _class_and_network

MAC = "02:18:00:aa:bb:01"


def _fdb_macs(node: Node, bridge: str) -> set[str]:
    """The MACs of the bridge's forwarding table entries on the bridge device itself, in the node's namespace (the
    dump also lists the device's unicast address list, where a macvlan on it puts its MAC, as entries without
    ``NDA_MASTER``: not the table's)."""
    with IPRoute(netns=node.name) as ipr:
        idx = ipr.link_lookup(ifname=bridge)[0]
        return {e.get_attr("NDA_LLADDR") for e in ipr.fdb("dump", ifindex=idx)
                if e["ifindex"] == idx and e.get_attr("NDA_MASTER") is not None}


@pytest.mark.netns
def test_a_late_del_leaves_the_bridge_entry_of_the_pod_that_has_the_mac_now(node: Node) -> None:
    node.apply(_class_and_network("mv", "  {}"))
    spec = [{"type": "Network", "name": "mv", "ifName": "mv0", "interfaceType": "macvlan", "mac": MAC}]
    node.apply([pod_manifest("old", spec), pod_manifest("new", spec)])
    ns_old = node.pod_netns("old")
    assert node.cni("ADD", "c-old", ns_old, pod=("my-namespace", "old")).ok
    bridges = [n for n, link in node.host_links().items() if link.get("kind") == "bridge"]
    (bridge,) = [b for b in bridges if MAC in _fdb_macs(node, b)]
    node.remove_pod_netns(ns_old)  # the old sandbox gone, and its macvlan with it; its DEL not come yet
    ns_new = node.pod_netns("new")
    added = node.cni("ADD", "c-new", ns_new, pod=("my-namespace", "new"))
    assert added.ok, added
    assert node.cni("DEL", "c-old", ns_old, pod=("my-namespace", "old")).ok, "the late DEL"
    assert MAC in _fdb_macs(node, bridge), "the late DEL removed the entry of the pod that has the MAC now"
    assert node.cni("DEL", "c-new", ns_new, pod=("my-namespace", "new")).ok
    assert MAC not in _fdb_macs(node, bridge), "the last pod with the MAC gone: its entry goes"

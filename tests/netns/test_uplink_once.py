"""A NIC is the port of one bridge: a segment's bridge never takes the uplink another Plexus segment's bridge has
(found in review: two untagged Networks of a class naming one parent NIC moved it between their bridges, the first
one's pods cut off the wire while both said Ready). In a namespace of the test's own, with a veth end as the NIC."""

from __future__ import annotations

import uuid

import pytest

from cni.errors import InterfaceFailure
from ipamd.netlink import segment_links
from ipamd.netlink.netns import netlink_at
from tests.harness import NS_PREFIX, netns_add, netns_del

pytestmark = pytest.mark.netns


def test_a_nic_another_plexus_bridge_has_is_refused_and_stays_where_it_is() -> None:
    name = f"{NS_PREFIX}uplink-{uuid.uuid4().hex[:6]}"
    try:
        with netlink_at(netns_add(name)) as node:
            node.link("add", ifname="nic0", kind="veth", peer={"ifname": "nic0p"})
            first = segment_links.ensure_bridge(node, "plx-n-aaaa1111", "nic0")
            assert segment_links.ensure_bridge(node, "plx-n-aaaa1111", "nic0") == first, "its own uplink: no change, no error"
            with pytest.raises(InterfaceFailure) as err:
                segment_links.ensure_bridge(node, "plx-n-bbbb2222", "nic0")
            assert err.value.details == "parentNodeNetworkInterfaces" and "plx-n-aaaa1111" in err.value.msg
            nic = node.link("get", ifname="nic0")[0]
            assert nic.get_attr("IFLA_MASTER") == first, "the NIC stays the first bridge's port"
    finally:
        netns_del(name)

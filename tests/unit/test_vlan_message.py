"""VLAN and VXLAN segments at the netlink-message level.

The test machines' kernel has no 802.1q module, so the RTM_NEWLINK request Plexus sends for a VLAN
sub-interface is checked as a message: built by pyroute2's IPBatch (which encodes requests without
sending them), decoded back, and its attributes compared with what the kernel expects.
"""

from __future__ import annotations

from pyroute2.netlink.rtnl import RTM_NEWLINK

from ipamd.netlink.segment_links import vlan_spec, vxlan_spec
from tests.fakes.messages import encode

NLM_F_CREATE = 0x400
NLM_F_EXCL = 0x200


def test_vlan_request_carries_kind_id_protocol_and_parent() -> None:
    msg = encode(vlan_spec(parent_index=7, name="plx-vl-700", vlan_id=700))
    assert msg["header"]["type"] == RTM_NEWLINK
    assert msg["header"]["flags"] & NLM_F_CREATE and msg["header"]["flags"] & NLM_F_EXCL
    assert msg.get_attr("IFLA_IFNAME") == "plx-vl-700"
    assert msg.get_attr("IFLA_LINK") == 7
    info = msg.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "vlan"
    data = info.get_attr("IFLA_INFO_DATA")
    assert data.get_attr("IFLA_VLAN_ID") == 700
    assert data.get_attr("IFLA_VLAN_PROTOCOL") == 0x8100


def test_vlan_ids_at_the_edges() -> None:
    for vid in (1, 4094):
        data = encode(vlan_spec(3, f"plx-vl-{vid}", vid)).get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
        assert data.get_attr("IFLA_VLAN_ID") == vid


def test_vxlan_request() -> None:
    msg = encode(vxlan_spec("plx-vx-5000", 5000, 4, 4789, "", "198.18.0.1"))
    info = msg.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "vxlan"
    data = info.get_attr("IFLA_INFO_DATA")
    assert data.get_attr("IFLA_VXLAN_ID") == 5000
    assert data.get_attr("IFLA_VXLAN_LINK") == 4
    assert data.get_attr("IFLA_VXLAN_PORT") == 4789
    assert data.get_attr("IFLA_VXLAN_LOCAL") == "198.18.0.1"

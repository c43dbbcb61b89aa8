"""The node's own links that segments need (bridges, VLAN and VXLAN uplinks), over this thread's socket.

Implements ``NodeLinks`` (``ipamd.node.segments``): the segments service asks for links by name and
never holds a netlink socket itself, so it is unit-tested with a fake.
"""

from __future__ import annotations

from collections.abc import Callable

from pyroute2 import IPRoute

from ipamd.model.objects import VxlanSpec
from ipamd.netlink import links, segment_links


class NetlinkNodeLinks:
    def __init__(self, host: Callable[[], IPRoute]) -> None:
        self.host = host

    def ensure_bridge(self, name: str, uplink: str, busy: bool) -> int:
        return segment_links.ensure_bridge(self.host(), name, uplink, busy)

    def ensure_vlan(self, parent: str, vlan_id: int, busy: bool) -> str:
        return segment_links.ensure_vlan(self.host(), parent, vlan_id, busy)

    def ensure_vxlan(self, vni: int, spec: VxlanSpec, busy: bool) -> str:
        return segment_links.ensure_vxlan(self.host(), vni, spec.underlay, spec.remotes, spec.group, spec.port,
                                          spec.local_ip, busy)

    def index(self, name: str) -> int | None:
        return segment_links.bridge_index(self.host(), name)

    def mtu(self, index: int) -> int:
        return links.mtu_of(self.host(), index)

    def delete(self, name: str) -> bool:
        return links.delete_link(self.host(), name)

"""``veth``: the default pod interface, a veth pair whose node end joins the segment's bridge."""

from __future__ import annotations

import contextlib

from cni.types import Interface
from ipamd.drivers import kernel
from ipamd.drivers.base import BuildContext, Built, InterfaceKey, InterfaceRequest, LinksContext, Plan, undo_in_kernel
from ipamd.model.names import host_link_name
from ipamd.netlink import links
from ipamd.store.records import BuiltInterface


class VethDriver:
    kind = "veth"

    def plan(self, key: InterfaceKey, request: InterfaceRequest) -> Plan:
        return Plan(host_link_name(key.container_id, key.runtime_ifname, request.if_name), not request.skip_ip_assignment,
                    request.mac or links.generate_mac())

    def build(self, ctx: BuildContext, iface: BuiltInterface, undo: contextlib.ExitStack) -> Built:
        bridge = ctx.bridge_index()
        undo_in_kernel(undo, ctx.not_undone, iface, f"veth {iface.host_link}", links.delete_link, ctx.host,
                       iface.host_link)
        link = links.add_veth(ctx.host, ctx.pod.netlink(), ctx.pod.fd, iface.host_link, iface.if_name, iface.mac, bridge,
                              ctx.bridge_mtu())
        left_out = kernel.configure(ctx.pod.netlink(), link.index, iface, undo, ctx.not_undone)
        return kernel.built(self.foresee, iface, ctx.pod.path, left_out)  # the link has the MAC of the plan

    def foresee(self, iface: BuiltInterface, sandbox: str) -> Built:
        return Built(iface.mac, kernel.result(iface, iface.mac, sandbox, (Interface(iface.host_link),)))

    def teardown(self, ctx: LinksContext, iface: BuiltInterface) -> None:
        kernel.unconfigure(ctx, iface)
        if ctx.doomed is not None:  # removed with the attachment's other links, in one request
            if links.doom_link(ctx.host, iface.host_link):
                ctx.doomed.append(iface.host_link)
            return
        links.delete_link(ctx.host, iface.host_link)  # the pod end goes with it

    def cut_off(self, ctx: LinksContext, iface: BuiltInterface) -> bool:
        """The node end down: the pod end loses its carrier, nothing goes in or out (one request, no RCU wait)."""
        links.set_down(ctx.host, iface.host_link)
        return True

    def check(self, ctx: LinksContext, iface: BuiltInterface) -> list[str]:
        return kernel.check(ctx.host, ctx.pod_netlink(), iface)

    def collect(self, kept: list[BuiltInterface]) -> None:
        pass  # nothing outside the kernel to tell

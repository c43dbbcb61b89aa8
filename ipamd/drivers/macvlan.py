"""``macvlan``: a macvlan (bridge mode) made straight into the pod, on the segment's bridge.

On the bridge, not its uplink: a NIC enslaved to a bridge cannot also carry macvlans (EBUSY), and
this way veth, TAP and macvlan pods share one L2 segment. It has the bridge's MTU (a macvlan takes its
lower device's), and the bridge a static entry for its MAC (``links.add_local_mac``), or unicast to it
would be flooded to the whole segment.
"""

from __future__ import annotations

import contextlib

from ipamd.drivers import kernel
from ipamd.drivers.base import BuildContext, Built, InterfaceKey, InterfaceRequest, LinksContext, Plan, undo_in_kernel
from ipamd.netlink import links
from ipamd.store.records import BuiltInterface


class MacvlanDriver:
    kind = "macvlan"

    def plan(self, key: InterfaceKey, request: InterfaceRequest) -> Plan:
        return Plan("", not request.skip_ip_assignment, request.mac or links.generate_mac())

    def build(self, ctx: BuildContext, iface: BuiltInterface, undo: contextlib.ExitStack) -> Built:
        pod = ctx.pod.netlink()
        bridge = ctx.bridge_index()
        links.add_macvlan(ctx.host, ctx.pod.fd, bridge, iface.if_name, iface.mac)
        # undone before it is up: bringing it up can fail (EADDRINUSE), and a failed ADD must not leave it in the pod
        undo_in_kernel(undo, ctx.not_undone, iface, f"macvlan {iface.if_name}", links.delete_link, pod, iface.if_name)
        links.ignore_router_advertisements(ctx.pod.fd, iface.if_name)
        index = links.bring_up(pod, iface.if_name)
        # once up: a MAC another macvlan of the bridge has is refused there, before its FDB entry could be taken over
        links.add_local_mac(ctx.host, bridge, iface.mac)
        undo_in_kernel(undo, ctx.not_undone, iface, f"FDB entry of {iface.if_name}", links.delete_local_mac, ctx.host,
                       bridge, iface.mac)
        left_out = kernel.configure(pod, index, iface, undo, ctx.not_undone)
        return kernel.built(self.foresee, iface, ctx.pod.path, left_out)  # the link has the MAC of the plan

    def foresee(self, iface: BuiltInterface, sandbox: str) -> Built:
        return Built(iface.mac, kernel.result(iface, iface.mac, sandbox))

    def teardown(self, ctx: LinksContext, iface: BuiltInterface) -> None:
        kernel.unconfigure(ctx, iface)
        pod = ctx.pod_netlink()
        if pod is not None:  # a namespace that is gone took the macvlan with it
            links.delete_link(pod, iface.if_name)
        if not ctx.mac_held_elsewhere(iface.bridge, iface.mac):  # (else the entry is the pod's that has the MAC now)
            links.forget_local_mac(ctx.host, iface.bridge, iface.mac)  # the bridge keeps it: not the macvlan's

    def cut_off(self, ctx: LinksContext, iface: BuiltInterface) -> bool:
        return False  # removed before DEL answers

    def check(self, ctx: LinksContext, iface: BuiltInterface) -> list[str]:
        return kernel.check(ctx.host, ctx.pod_netlink(), iface)

    def collect(self, kept: list[BuiltInterface]) -> None:
        pass  # nothing outside the kernel to tell

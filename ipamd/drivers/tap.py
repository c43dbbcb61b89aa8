"""``tap``: a TAP device in the pod for a VM's NIC (KubeVirt-style), bridged inside the pod to a veth
into the segment's node bridge. Its address is reserved for the guest, never configured on the TAP.

The guest keeps the MAC of the plan, which the result reports; the TAP, the host side of the NIC, has one of
its own (``tap_mac``), as under libvirt. The TAP is made inside the pod's namespace (TUNSETIFF works in the
caller's). The names of the inner bridge and the inner veth end are kept in the record (``driver``), so DEL
needs nothing else; so is whether it was asked multi-queue (``multiQueue``), which CHECK holds the TAP to, and
whether the node answers the guest's DHCP on it (``ipAssignmentMode: DHCP``): from the build to the teardown, and
again from a restarted daemon's start (``GuestDhcp.resume``).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

from cni.errors import InterfaceFailure
from ipamd.dhcp.offers import guest_lease
from ipamd.dhcp.server import STATE_KEY, GuestDhcp
from ipamd.drivers import kernel
from ipamd.drivers.base import BuildContext, Built, InterfaceKey, InterfaceRequest, LinksContext, Plan, undo_in_kernel
from ipamd.model.names import TapNames, host_link_name, tap_mac
from ipamd.netlink import links, tap_links
from ipamd.store.records import BuiltInterface


def _names(iface: BuiltInterface) -> TapNames:
    state = iface.driver
    if {"innerBridge", "innerVeth", "temporary"} <= state.keys():
        return TapNames(state["innerBridge"], state["innerVeth"], state["temporary"])
    return TapNames.of(iface.host_link)  # a record written before the names were kept


def _multi_queue(iface: BuiltInterface) -> bool:
    """Whether the TAP was asked multi-queue; a record written before the choice was kept is of a single-queue one."""
    return bool(iface.driver.get("multiQueue", False))


def _queue_problems(pod: Any, iface: BuiltInterface) -> list[str]:
    """The TAP's queues as asked: a VM's qemu attaches all of its queues with IFF_MULTI_QUEUE or none, and the
    kernel refuses the other kind. Nothing to say of a TAP missing (``kernel.check`` says it) or a kernel silent."""
    have = tap_links.is_multi_queue(pod, iface.if_name)
    want = _multi_queue(iface)
    if have is None or have == want:
        return []
    kinds = {True: "multi-queue", False: "single-queue"}
    return [f"TAP {iface.if_name} is {kinds[have]}, expected {kinds[want]} (multiQueue: {str(want).lower()})"]


def _tap_mac(iface: BuiltInterface) -> str:
    """The TAP's own MAC, derived from the guest's ("" for none: the kernel's, then)."""
    return tap_mac(iface.mac) if iface.mac else ""


def _remove_pod_side(pod: Any, iface: BuiltInterface) -> None:
    names = _names(iface)
    for name in (iface.if_name, names.inner_bridge, names.inner_veth):
        links.delete_link(pod, name)


class TapDriver:
    kind = "tap"

    def __init__(self, guest_dhcp: GuestDhcp | None = None) -> None:
        self.guest_dhcp = guest_dhcp if guest_dhcp is not None else GuestDhcp()

    def plan(self, key: InterfaceKey, request: InterfaceRequest) -> Plan:
        host_link = host_link_name(key.container_id, key.runtime_ifname, request.if_name)
        names = TapNames.of(host_link)
        return Plan(host_link, False, request.mac or links.generate_mac(),
                    {"innerBridge": names.inner_bridge, "innerVeth": names.inner_veth, "temporary": names.temporary,
                     "uid": request.tap_uid, "gid": request.tap_gid,
                     "multiQueue": request.tap_multi_queue, **({STATE_KEY: True} if request.guest_dhcp else {})})

    def build(self, ctx: BuildContext, iface: BuiltInterface, undo: contextlib.ExitStack) -> Built:
        pod = ctx.pod.netlink()
        names = _names(iface)
        # refused first: the undo steps below remove these names from the pod, and must not take someone else's link
        links.pod_names_free(pod, iface.if_name, names.inner_bridge, names.inner_veth)
        bridge = ctx.bridge_index()
        mtu = ctx.bridge_mtu() or links.mtu_of(ctx.host, bridge)
        # joins the node bridge in the request that makes it: a bridge gone leaves nothing for a second build
        tap_links.add_node_veth(ctx.host, ctx.pod.fd, iface.host_link, names.inner_veth, bridge, mtu)
        undo_in_kernel(undo, ctx.not_undone, iface, f"veth {iface.host_link}", links.delete_link, ctx.host,
                       iface.host_link)
        inner = tap_links.add_inner_bridge(pod, names.inner_bridge, mtu)
        undo_in_kernel(undo, ctx.not_undone, iface, f"bridge {names.inner_bridge}", links.delete_link, pod,
                       names.inner_bridge)
        tap_links.keep_off_the_pod_stack(ctx.pod.fd, names.inner_bridge, names.inner_veth)
        tap_links.add_tap(ctx.pod.fd, iface.if_name, iface.driver.get("uid"), iface.driver.get("gid"), _multi_queue(iface))
        undo_in_kernel(undo, ctx.not_undone, iface, f"tap {iface.if_name}", links.delete_link, pod, iface.if_name)
        tap_links.join_inner_bridge(pod, names.inner_veth, inner)
        tap_links.join_inner_bridge(pod, iface.if_name, inner, _tap_mac(iface), mtu)
        if iface.driver.get(STATE_KEY):
            self._serve_guest(ctx, iface, undo)
        return self.foresee(iface, ctx.pod.path)  # the guest's MAC, the plan's

    def _serve_guest(self, ctx: BuildContext, iface: BuiltInterface, undo: contextlib.ExitStack) -> None:
        lease = guest_lease(iface)
        if lease is None:  # the request was refused before anything was leased (``Ipam.validate``): not from a pod
            raise InterfaceFailure(f"TAP {iface.if_name} has no IPv4 address to hand its guest over DHCP", iface.if_name)
        self.guest_dhcp.serve(iface.host_link, ctx.pod.fd, iface.if_name, lease)
        undo.callback(self.guest_dhcp.stop, iface.host_link)

    def foresee(self, iface: BuiltInterface, sandbox: str) -> Built:
        return Built(iface.mac, kernel.result(iface, iface.mac, sandbox))

    def teardown(self, ctx: LinksContext, iface: BuiltInterface) -> None:
        self.guest_dhcp.stop(iface.host_link)
        for name in (iface.host_link, _names(iface).temporary):
            links.delete_link(ctx.host, name)
        pod = ctx.pod_netlink()
        if pod is not None:
            _remove_pod_side(pod, iface)

    def cut_off(self, ctx: LinksContext, iface: BuiltInterface) -> bool:
        return False  # removed before DEL answers

    def check(self, ctx: LinksContext, iface: BuiltInterface) -> list[str]:
        """As any kernel interface's, the TAP with its own MAC (the guest's is the guest's to have), and its queues."""
        pod = ctx.pod_netlink()
        problems = kernel.check(ctx.host, pod, replace(iface, mac=_tap_mac(iface)))
        if iface.driver.get(STATE_KEY) and self.guest_dhcp.serving(iface.host_link) is None:
            problems.append(f"no DHCP server answers the guest of TAP {iface.if_name} (ipAssignmentMode: DHCP)")
        return problems + (_queue_problems(pod, iface) if pod is not None else [])

    def collect(self, kept: list[BuiltInterface]) -> None:
        pass  # nothing outside the kernel to tell

"""``tap``: a TAP device in the pod for a VM's NIC (KubeVirt-style), bridged inside the pod to a veth
into the segment's node bridge. Its address is reserved for the guest, never configured on the TAP.

TUNSETIFF creates the device in the caller's namespace, so it is made on the node under a temporary
name and moved into the pod. The names of the inner bridge, the inner veth end and the temporary
TAP are kept in the record (``driver``), so DEL needs nothing else.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ipamd.drivers import kernel
from ipamd.drivers.base import BuildContext, Built, InterfaceKey, InterfaceRequest, LinksContext, Plan, quietly
from ipamd.model.names import TapNames, host_link_name
from ipamd.netlink import links, tap_links
from ipamd.store.records import BuiltInterface


def _names(iface: BuiltInterface) -> TapNames:
    state = iface.driver
    if {"innerBridge", "innerVeth", "temporary"} <= state.keys():
        return TapNames(state["innerBridge"], state["innerVeth"], state["temporary"])
    return TapNames.of(iface.host_link)  # a record written before the names were kept


def _remove_pod_side(pod: Any, iface: BuiltInterface) -> None:
    names = _names(iface)
    for name in (iface.if_name, names.inner_bridge, names.inner_veth):
        links.delete_link(pod, name)


class TapDriver:
    kind = "tap"

    def plan(self, key: InterfaceKey, request: InterfaceRequest) -> Plan:
        host_link = host_link_name(key.container_id, key.runtime_ifname, request.if_name)
        names = TapNames.of(host_link)
        return Plan(host_link, False, request.mac or links.generate_mac(),
                    {"innerBridge": names.inner_bridge, "innerVeth": names.inner_veth, "temporary": names.temporary,
                     "uid": request.tap_uid, "gid": request.tap_gid})

    def build(self, ctx: BuildContext, iface: BuiltInterface, undo: contextlib.ExitStack) -> Built:
        pod = ctx.pod.netlink()
        names = _names(iface)
        bridge = ctx.bridge_index()
        # refused first: the undo below removes these names from the pod, and must not take someone else's link
        links.pod_names_free(pod, iface.if_name, names.inner_bridge, names.inner_veth)
        undo.callback(quietly, f"tap {iface.if_name}", _remove_pod_side, pod, iface)
        undo.callback(quietly, "temporary tap", links.delete_link, ctx.host, names.temporary)
        tap_links.add_tap(ctx.host, pod, ctx.pod.fd, iface.host_link, names, iface.if_name, iface.mac, bridge,
                      iface.driver.get("uid"), iface.driver.get("gid"))
        undo.callback(quietly, f"veth {iface.host_link}", links.delete_link, ctx.host, iface.host_link)
        return self.foresee(iface, ctx.pod.path)  # the pod end has the MAC of the plan

    def foresee(self, iface: BuiltInterface, sandbox: str) -> Built:
        return Built(iface.mac, kernel.result(iface, iface.mac, sandbox))

    def teardown(self, ctx: LinksContext, iface: BuiltInterface) -> None:
        for name in (iface.host_link, _names(iface).temporary):
            links.delete_link(ctx.host, name)
        pod = ctx.pod_netlink()
        if pod is not None:
            _remove_pod_side(pod, iface)

    def cut_off(self, ctx: LinksContext, iface: BuiltInterface) -> bool:
        return False  # removed before DEL answers

    def check(self, ctx: LinksContext, iface: BuiltInterface) -> list[str]:
        return kernel.check(ctx.host, ctx.pod_netlink(), iface)

    def collect(self, kept: list[BuiltInterface]) -> None:
        pass  # nothing outside the kernel to tell

"""A multi-queue TAP (``multiQueue: true``), in namespaces of the test's own (``world``): qemu with ``queues=N``
(KubeVirt's ``networkInterfaceMultiqueue``) attaches one file descriptor per queue with IFF_MULTI_QUEUE, which the
kernel refuses (EINVAL) on a TAP made without it. Built, checked and removed as the daemon does (``test_tap``)."""

from __future__ import annotations

import errno
import os
from dataclasses import replace
from typing import Any

import pytest

from ipamd.drivers.base import InterfaceKey, InterfaceRequest
from ipamd.drivers.tap import TapDriver
from ipamd.store.records import BuiltInterface
from tests.harness import Node, pod_manifest
from tests.netns.kernel_world import World, in_ns, link, link_names, run_in
from tests.netns.test_tap import (
    BRIDGE,
    IFF_NO_PI,
    IFF_TAP,
    _build_tap_in_node,
    _check_in_node,
    _open_tap,
    _teardown_in_node,
)

pytestmark = pytest.mark.netns

IFF_VNET_HDR, IFF_MULTI_QUEUE, IFF_PERSIST = 0x4000, 0x0100, 0x0800
QEMU_MQ = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE  # what qemu asks with queues=N


def _iface(if_name: str = "net1", multi_queue: bool = True, **request: Any) -> BuiltInterface:
    """The TAP's record as ADD writes it: the driver's plan, with ``multiQueue`` as asked (the record is what build,
    CHECK and DEL read; the plan's copy of the request's choice is ``tests/unit/test_tap_multi_queue.py``'s)."""
    plan = TapDriver().plan(InterfaceKey("c" * 64, "eth0", "/x"), InterfaceRequest(if_name, **request))
    state = {**(plan.state or {}), "multiQueue": multi_queue}
    return BuiltInterface(if_name, "tap", "ns/net", "Network", "net", host_link=plan.host_link, bridge=BRIDGE,
                          mac=plan.mac, configure_ips=plan.configure_ips, addresses=(), driver=state)


def _kernel_multi_queue(w: World, name: str) -> int:
    """IFLA_TUN_MULTI_QUEUE of the pod's TAP, as the kernel reports it over netlink."""
    info = link(w.pod.netlink(), name).get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "tun"
    return int(info.get_attr("IFLA_INFO_DATA").get_attr("IFLA_TUN_MULTI_QUEUE"))


def _tun_flags(w: World, name: str) -> int:
    """The TAP's flags from sysfs as the pod's namespace mounts it (``ip netns exec``): a second witness."""
    read = run_in(w.paths["pod"], ["cat", f"/sys/class/net/{name}/tun_flags"])
    assert read.returncode == 0, read.stderr
    return int(read.stdout, 16)


def _attach(w: World, name: str, flags: int, queues: int) -> list[int]:
    """What qemu does: ``queues`` file descriptors on the persistent TAP ``name``, opened in the pod's namespace
    (TUNSETIFF finds the TAP in the namespace the file was opened in). All closed again on a failure."""
    def body() -> list[int]:
        fds: list[int] = []
        try:
            for _ in range(queues):
                fds.append(_open_tap(name, flags))
        except OSError:
            _close(fds)
            raise
        return fds
    return in_ns(w.paths["pod"], body)


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def test_a_multi_queue_tap_takes_a_queue_per_vcpu_passes_check_and_goes_with_del(world: World) -> None:
    iface = _iface(tap_uid=107, tap_gid=108)
    _build_tap_in_node(world, iface)
    assert _kernel_multi_queue(world, "net1") == 1
    flags = _tun_flags(world, "net1")
    assert flags & (QEMU_MQ | IFF_PERSIST) == QEMU_MQ | IFF_PERSIST, hex(flags)
    owner = run_in(world.paths["pod"], ["cat", "/sys/class/net/net1/owner", "/sys/class/net/net1/group"])
    assert owner.stdout.split() == ["107", "108"], "owner and group as before"
    queues = _attach(world, "net1", QEMU_MQ, 2)
    try:
        assert len(queues) == 2
        assert _check_in_node(world, iface) == [], "CHECK with the VM's queues attached"
    finally:
        _close(queues)
    assert _check_in_node(world, iface) == []
    _teardown_in_node(world, iface)
    assert link_names(world.pod.netlink()) == {"lo"}
    assert link_names(world.host) == {"lo", BRIDGE}
    _teardown_in_node(world, iface)  # idempotent


def test_a_single_queue_tap_is_as_before_and_refuses_a_second_queue(world: World) -> None:
    iface = _iface(multi_queue=False, tap_uid=107)
    _build_tap_in_node(world, iface)
    assert _kernel_multi_queue(world, "net1") == 0
    flags = _tun_flags(world, "net1")
    base = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_PERSIST
    assert flags & (base | IFF_MULTI_QUEUE) == base, hex(flags)
    with pytest.raises(OSError) as err:
        _close(_attach(world, "net1", QEMU_MQ, 1))
    assert err.value.errno == errno.EINVAL
    _close(_attach(world, "net1", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 1))  # as a single-queue VM opens it
    assert _check_in_node(world, iface) == []
    old = replace(iface, driver={k: v for k, v in iface.driver.items() if k != "multiQueue"})
    assert _check_in_node(world, old) == [], "a record from before counts as single-queue"
    _teardown_in_node(world, iface)
    assert link_names(world.pod.netlink()) == {"lo"}


def test_check_reports_a_tap_whose_queues_are_not_what_was_asked(world: World) -> None:
    single, multi = _iface("net1", multi_queue=False), _iface("net2", multi_queue=True)
    _build_tap_in_node(world, single)
    _build_tap_in_node(world, multi)
    assert _check_in_node(world, single) == [] and _check_in_node(world, multi) == []
    assert _check_in_node(world, replace(single, driver={**single.driver, "multiQueue": True})) == \
        ["TAP net1 is single-queue, expected multi-queue (multiQueue: true)"]
    assert _check_in_node(world, replace(multi, driver={**multi.driver, "multiQueue": False})) == \
        ["TAP net2 is multi-queue, expected single-queue (multiQueue: false)"]
    old = {k: v for k, v in multi.driver.items() if k != "multiQueue"}
    assert _check_in_node(world, replace(multi, driver=old)) == \
        ["TAP net2 is multi-queue, expected single-queue (multiQueue: false)"]
    for iface in (single, multi):
        _teardown_in_node(world, iface)
    assert link_names(world.pod.netlink()) == {"lo"}
    assert link_names(world.host) == {"lo", BRIDGE}


def test_a_pod_asks_for_a_multi_queue_tap_in_its_networks_spec(node: Node) -> None:
    """The whole path: the pod's ``multiQueue: true`` through the daemon's ADD to the kernel's TAP, the other TAP of
    the pod single-queue; CHECK passes on both, DEL leaves nothing."""
    node.apply([pod_manifest("vm", [
        {"type": "Network", "name": "net-a", "ifName": "tap0", "interfaceType": "tap", "multiQueue": True, "uid": 107},
        {"type": "Network", "name": "net-b", "ifName": "tap1", "interfaceType": "tap"},
    ])])
    ns = node.pod_netns("vm")
    add = node.cni("ADD", "c1", ns, pod=("my-namespace", "vm"))
    assert add.ok, add
    flags = {n: int(run_in(ns, ["cat", f"/sys/class/net/{n}/tun_flags"]).stdout, 16) for n in ("tap0", "tap1")}
    assert flags["tap0"] & 0x0100 and not flags["tap1"] & 0x0100, flags
    check = node.cni("CHECK", "c1", ns, pod=("my-namespace", "vm"), conf=node.conf(prevResult=add.json))
    assert check.ok, check
    assert node.cni("DEL", "c1", ns, pod=("my-namespace", "vm")).ok
    assert not node.plx_links()

"""A VM's TAP (``tap_links``, the TAP driver), in namespaces of the test's own (``world``): made in the pod
whatever the daemon's namespace, with a MAC of its own so frames reach the guest, the segment's MTU, nothing left of a
failed build, and the pod's own stack kept off the VM's segment."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from pyroute2 import IPRoute

from cni.errors import CniError, InterfaceFailure
from ipamd.drivers.base import BuildContext, InterfaceKey, InterfaceRequest, LinksContext
from ipamd.drivers.table import kernel_drivers
from ipamd.drivers.tap import TapDriver
from ipamd.ipam.addresses import Ipam
from ipamd.model.names import TapNames, tap_mac
from ipamd.netlink import links, segment_links, sysctl, tap_links
from ipamd.netlink.netns import netlink_at, netlink_in_path, open_netns, pod_namespace
from ipamd.store.records import BuiltInterface
from ipamd.verbs.attacher import Attacher
from tests.fakes.publisher import RecordingPublisher
from tests.fakes.source import FakeSource
from tests.fakes.store import MemoryStore
from tests.netns.kernel_world import World, in_ns, link, link_names, nic_to_peer, read_in, run_in, up

pytestmark = pytest.mark.netns

BRIDGE = "plx-n-rv000001"


def _iface(if_name: str = "net1", mac: str = "", **request: Any) -> BuiltInterface:
    plan = TapDriver().plan(InterfaceKey("c" * 64, "eth0", "/x"), InterfaceRequest(if_name, mac=mac, **request))
    return BuiltInterface(if_name, "tap", "ns/net", "Network", "net", host_link=plan.host_link, bridge=BRIDGE,
                          mac=plan.mac, configure_ips=plan.configure_ips, addresses=(), driver=plan.state or {})


IFF_TAP, IFF_NO_PI, TUNSETIFF = 0x0002, 0x1000, 0x400454CA


def _open_tap(name: str, flags: int = IFF_TAP | IFF_NO_PI) -> int:
    """What the VM (qemu) does: attach to the persistent TAP by name (in the caller's namespace)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    except OSError:
        os.close(fd)
        raise
    return fd


def _build_tap_in_node(w: World, iface: BuiltInterface, uplink: str = "") -> Any:
    """The TAP driver's build as the daemon runs it: from a thread in the node's namespace, sockets of its own."""
    def body() -> Any:
        with contextlib.closing(IPRoute()) as host, pod_namespace(w.paths["pod"]) as pod, \
                contextlib.ExitStack() as undo:
            built = TapDriver().build(BuildContext(host, pod, lambda: segment_links.ensure_bridge(host, BRIDGE, uplink)),
                                      iface, undo)
            undo.pop_all()
            return built
    return in_ns(w.node_path, body)


def _teardown_in_node(w: World, iface: BuiltInterface) -> None:
    def body() -> None:
        with contextlib.closing(IPRoute()) as host, pod_namespace(w.paths["pod"]) as pod:
            TapDriver().teardown(LinksContext(host, lambda: pod.netlink(), pod.path), iface)
    in_ns(w.node_path, body)


def _check_in_node(w: World, iface: BuiltInterface) -> list[str]:
    def body() -> list[str]:
        with contextlib.closing(IPRoute()) as host, pod_namespace(w.paths["pod"]) as pod:
            return TapDriver().check(LinksContext(host, lambda: pod.netlink(), pod.path), iface)
    return in_ns(w.node_path, body)


def _probe_on_bridge(w: World) -> None:
    """``probe0`` on the node bridge, its far end ``probe0p`` up in the peer namespace."""
    fd = open_netns(w.paths["peer"])
    try:
        w.host.link("add", ifname="probe0", kind="veth", peer={"ifname": "probe0p", "net_ns_fd": fd})
    finally:
        os.close(fd)
    w.host.link("set", index=link(w.host, "probe0")["index"], master=link(w.host, BRIDGE)["index"], state="up")
    with netlink_at(w.paths["peer"]) as peer:
        up(peer, "probe0p")


def _pod_side(names: TapNames, if_name: str) -> tuple[str, str, str]:
    return if_name, names.inner_bridge, names.inner_veth


# -- bug 1: MTU ------------------------------------------------------------------------------------------------------

def test_pod_interface_mtu_fits_the_segment_uplink(world: World) -> None:
    """(copied, ``tap`` case) The segment's NIC has MTU 1400: the TAP's inner veth (both ends) and the TAP must not
    be made with the kernel's 1500; now also every one of them is asserted."""
    nic_to_peer(world, 1400, "198.18.60.2/24")
    segment_links.ensure_bridge(world.host, BRIDGE, "nic0")
    iface = _iface()
    _build_tap_in_node(world, iface, uplink="nic0")  # the bridge has exactly the uplink asked for
    bridge_mtu = link(world.host, BRIDGE).get_attr("IFLA_MTU")
    pod_mtu = link(world.pod.netlink(), "net1").get_attr("IFLA_MTU")
    assert bridge_mtu == 1400
    assert pod_mtu <= bridge_mtu, f"tap net1 has MTU {pod_mtu} on a segment whose uplink carries {bridge_mtu}"
    names = TapNames.of(iface.host_link)
    assert link(world.host, iface.host_link).get_attr("IFLA_MTU") == 1400
    for name in (names.inner_veth, names.inner_bridge, "net1"):
        assert link(world.pod.netlink(), name).get_attr("IFLA_MTU") == 1400, name


def test_tap_mtu_fits_a_vxlan_uplink(world: World) -> None:
    nic_to_peer(world, 1500, "198.18.61.2/24")
    world.host.addr("add", index=up(world.host, "nic0"), **links.address_request("198.18.61.1/24"))
    vx = segment_links.ensure_vxlan(world.host, 5000, "nic0", ["198.18.61.2"], "", 4789, "198.18.61.1")
    iface = _iface()
    _build_tap_in_node(world, iface, uplink=vx)
    names = TapNames.of(iface.host_link)
    assert link(world.host, vx).get_attr("IFLA_MTU") == 1450
    assert link(world.host, iface.host_link).get_attr("IFLA_MTU") == 1450
    for name in (names.inner_veth, names.inner_bridge, "net1"):
        assert link(world.pod.netlink(), name).get_attr("IFLA_MTU") == 1450, name


# -- bug 2: the TAP's own MAC ------------------------------------------------------------------------------------------

def test_a_frame_to_the_taps_reported_mac_reaches_the_vm(world: World) -> None:
    """(copied) A frame to the MAC reported for the VM's NIC (the guest's) reaches the VM through the TAP."""
    iface = _iface(mac="02:00:00:00:00:07")
    _build_tap_in_node(world, iface)
    _probe_on_bridge(world)
    vm = in_ns(world.paths["pod"], lambda: _open_tap("net1"))
    raw = in_ns(world.paths["peer"], lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
    try:
        raw.bind(("probe0p", 0))

        def delivered(dst: str, tag: bytes) -> bool:
            frame = bytes.fromhex(dst.replace(":", "")) + bytes.fromhex("02000000ee01") + b"\x88\xb5" + tag + \
                bytes(46)
            for _ in range(3):
                raw.send(frame)
                while select.select([vm], [], [], 0.5)[0]:
                    if tag in os.read(vm, 2048):
                        return True
            return False

        assert delivered("02:00:00:00:00:aa", b"plexus-other"), "an unknown MAC is flooded to the TAP"
        assert delivered(iface.mac, b"plexus-guest"), \
            f"a frame to {iface.mac}, the MAC reported for the VM's net1, was kept by the pod's inner bridge"
    finally:
        raw.close()
        os.close(vm)


def test_the_result_reports_the_guests_mac_and_the_tap_has_one_of_its_own(world: World) -> None:
    iface = _iface(mac="02:00:00:00:00:07")
    built = _build_tap_in_node(world, iface)
    assert built.mac == "02:00:00:00:00:07"
    assert [(i.name, i.mac) for i in built.result.interfaces] == [("net1", "02:00:00:00:00:07")]
    tap = link(world.pod.netlink(), "net1").get_attr("IFLA_ADDRESS")
    assert tap == tap_mac("02:00:00:00:00:07") == "fe:00:00:00:00:07"
    assert _check_in_node(world, iface) == []
    world.pod.netlink().link("set", index=link(world.pod.netlink(), "net1")["index"], address="02:00:00:00:00:07")
    assert _check_in_node(world, iface) == [f"net1 has MAC 02:00:00:00:00:07, expected {tap}"]


def test_tap_mac_is_a_unicast_of_its_own() -> None:
    assert tap_mac("52:54:00:12:34:56") == "fe:54:00:12:34:56"
    assert tap_mac("FE:54:00:12:34:56") == "fa:54:00:12:34:56", "never the guest's own"
    for guest in ("02:00:00:00:00:01", "fe:ff:ff:ff:ff:ff", "aa:bb:cc:dd:ee:ff"):
        first = int(tap_mac(guest)[:2], 16)
        assert tap_mac(guest) != guest.lower() and not first & 1 and first & 2


# -- bug 3: --node-netns ---------------------------------------------------------------------------------------------

def test_tap_made_in_the_node_netlink_namespace_not_the_callers(world: World) -> None:
    """(copied) ``--node-netns``: the daemon's own namespace is not the node's; the TAP is made in the pod's, nothing
    in the daemon's."""
    daemon = world.paths["peer"]  # the daemon's own namespace, for this test
    iface = _iface()

    def body() -> str:
        with contextlib.closing(netlink_in_path(world.node_path)) as host, \
                pod_namespace(world.paths["pod"]) as pod, contextlib.ExitStack() as undo:
            try:
                TapDriver().build(BuildContext(host, pod, lambda: segment_links.ensure_bridge(host, BRIDGE, "")), iface, undo)
            except CniError as exc:
                undo.close()
                return str(exc)
            undo.pop_all()
            return ""

    failure = in_ns(daemon, body)
    with netlink_at(daemon) as own:
        left = link_names(own) - {"lo", "wire0"}
    assert not left, f"the failed ADD ({failure}) left {left} in the daemon's own namespace"
    assert failure == "", failure
    names = TapNames.of(iface.host_link)
    assert set(_pod_side(names, "net1")) <= link_names(world.pod.netlink())
    assert link(world.pod.netlink(), "net1").get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND") == "tun"


def test_tap_keeps_its_flags_and_owner(world: World) -> None:
    """Made in the pod now, the TAP is still a persistent, vnet_hdr, no-PI TAP owned by the requested uid/gid."""
    iface = _iface(tap_uid=107, tap_gid=108)
    _build_tap_in_node(world, iface)
    read = run_in(world.paths["pod"], ["cat", "/sys/class/net/net1/tun_flags", "/sys/class/net/net1/owner",
                                           "/sys/class/net/net1/group"])  # sysfs as the pod's namespace has it
    flags, owner, group = read.stdout.split()
    IFF_VNET_HDR, IFF_PERSIST = 0x4000, 0x0800  # noqa: N806
    assert int(flags, 16) & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_PERSIST) == \
        IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_PERSIST, flags
    assert (owner, group) == ("107", "108")


def test_a_tap_owner_past_a_c_int_is_the_one_asked_for(world: World) -> None:
    """A uid_t is 32 bits: an owner of 2**31 and up (4294967294 is the largest valid one) reaches the kernel as it is,
    not as an OverflowError of the ioctl's C int argument."""
    iface = _iface(tap_uid=2**31, tap_gid=4294967294)
    _build_tap_in_node(world, iface)
    read = run_in(world.paths["pod"], ["cat", "/sys/class/net/net1/owner", "/sys/class/net/net1/group"])
    assert read.stdout.split() == [str(2**31), "4294967294"]


def test_del_removes_everything_and_again_is_fine(world: World) -> None:
    iface = _iface()
    _build_tap_in_node(world, iface)
    assert iface.host_link in link_names(world.host)
    _teardown_in_node(world, iface)
    assert link_names(world.pod.netlink()) == {"lo"}
    assert link_names(world.host) == {"lo", BRIDGE}
    _teardown_in_node(world, iface)  # idempotent


def test_a_failed_build_is_undone(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The undo registered after each side effect removes what the build made when its last step fails."""
    iface = _iface(tap_uid=107)
    real = tap_links.join_inner_bridge

    def join(pod: Any, name: str, *args: Any, **kwargs: Any) -> None:
        if name == "net1":
            raise InterfaceFailure("joining net1 to the pod's bridge failed", "net1")
        real(pod, name, *args, **kwargs)

    monkeypatch.setattr(tap_links, "join_inner_bridge", join)
    segment_links.ensure_bridge(world.host, BRIDGE, "")
    with pytest.raises(InterfaceFailure):
        _build_tap_in_node(world, iface)  # the ExitStack unwinds on the failure
    assert link_names(world.pod.netlink()) == {"lo"}
    assert link_names(world.host) == {"lo", BRIDGE}


# -- bug 4: a build made again once the lost bridge is -----------------------------------------------------------------

def test_tap_build_is_made_again_once_the_lost_bridge_is(world: World) -> None:
    """(copied) ``Attacher._build`` builds again when the segment's bridge was removed behind our back: the first TAP
    build must leave nothing the second one trips over."""

    def body() -> str:
        with contextlib.closing(IPRoute()) as host, pod_namespace(world.paths["pod"]) as pod:
            stale = segment_links.ensure_bridge(host, BRIDGE, "")
            host.link("del", ifname=BRIDGE)  # removed by someone else; Segments still has its index

            class Known:  # Segments' cache: the index known, the bridge made again once found lost
                index: int | None = stale

                def bridge_index(self, net: Any, bridge: str) -> int:
                    if self.index is None:
                        self.index = segment_links.ensure_bridge(host, bridge, "")
                    return self.index

                def bridge_mtu(self, bridge: str) -> int | None:
                    return None

                def lost(self, bridge: str) -> bool:
                    if segment_links.bridge_index(host, bridge) is not None:
                        return False
                    self.index = None
                    return True

            store, source = MemoryStore(), FakeSource()
            attacher = Attacher(store, source, Ipam(store, source, lambda: 0.0), Known(), kernel_drivers(),  # type: ignore[arg-type]
                                lambda: host, pod_namespace, RecordingPublisher(), lambda: True)
            with contextlib.ExitStack() as undo:
                try:
                    attacher._build(pod, SimpleNamespace(net=object()), _iface(), undo, [])  # type: ignore[arg-type]
                except CniError as exc:
                    return str(exc)
                undo.pop_all()
            return ""

    failure = in_ns(world.node_path, body)
    assert failure == "", f"the ADD failed after the bridge was made again: {failure}"
    bridge = link(world.host, BRIDGE)["index"]
    host_links = [link for link in world.host.get_links() if link.get_attr("IFLA_IFNAME").startswith("plx")
                  and link.get_attr("IFLA_IFNAME") != BRIDGE]
    assert len(host_links) == 1 and host_links[0].get_attr("IFLA_MASTER") == bridge


def test_a_tap_whose_bridge_is_gone_leaves_nothing(world: World) -> None:
    """The node veth joins the bridge in the request that makes it: no bridge, no veth, nothing in the pod."""
    iface = _iface()

    def body() -> None:
        with contextlib.closing(IPRoute()) as host, pod_namespace(world.paths["pod"]) as pod:
            stale = segment_links.ensure_bridge(host, BRIDGE, "")
            host.link("del", ifname=BRIDGE)
            with contextlib.ExitStack() as undo:
                TapDriver().build(BuildContext(host, pod, lambda: stale), iface, undo)
                undo.pop_all()

    with pytest.raises(InterfaceFailure):
        in_ns(world.node_path, body)
    assert link_names(world.pod.netlink()) == {"lo"}
    assert link_names(world.host) == {"lo"}


# -- the pod's inner bridge is L2 only ---------------------------------------------------------------------------------

def test_the_pod_stack_has_no_ipv6_on_the_taps_links(world: World) -> None:
    """The inner bridge (and its ports) carry the VM's segment at L2 only: no link-local address, no RA taken, no ND
    sent from the pod's own stack."""
    iface = _iface()
    _build_tap_in_node(world, iface)
    names = TapNames.of(iface.host_link)
    pod = world.pod.netlink()
    for name in _pod_side(names, "net1"):
        assert read_in(world.paths["pod"], f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6") == "1", name
        assert pod.get_addr(family=socket.AF_INET6, index=link(pod, name)["index"]) == (), name


def test_the_pod_stack_does_not_answer_the_vms_segment_over_ipv4(world: World) -> None:
    """The inner bridge has no IPv4 address, but the pod's stack (weak host model) would answer ARP for its other
    addresses through it and take packets to them from the segment: the VM's network would reach the pod's own
    services (virt-launcher's)."""
    iface = _iface()
    _build_tap_in_node(world, iface)
    names = TapNames.of(iface.host_link)
    pod = world.pod.netlink()
    pod.addr("add", index=link(pod, "lo")["index"], address="198.18.62.5", prefixlen=32)  # the pod's own address
    _probe_on_bridge(world)
    with netlink_at(world.paths["peer"]) as peer:
        probe = link(peer, "probe0p")["index"]
        peer.addr("add", index=probe, address="198.18.62.9", prefixlen=24)
    listener = in_ns(world.paths["pod"], lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        listener.bind(("0.0.0.0", 9999))
        listener.setblocking(False)
        # ARP for the pod's address, from the VM's segment: not answered
        run_in(world.paths["peer"], ["ping", "-c1", "-W1", "198.18.62.5"])
        with netlink_at(world.paths["peer"]) as peer:
            learnt = [n for n in peer.get_neighbours(ifindex=probe) if n.get_attr("NDA_DST") == "198.18.62.5"
                      and n.get_attr("NDA_LLADDR")]
        assert not learnt, f"the pod's stack answered ARP through {names.inner_bridge}"
        # a datagram to the pod's address at the inner bridge's MAC: not delivered
        bridge_mac = link(pod, names.inner_bridge).get_attr("IFLA_ADDRESS")
        with netlink_at(world.paths["peer"]) as peer:
            peer.neigh("replace", dst="198.18.62.5", lladdr=bridge_mac, ifindex=probe, state=0x80)  # NUD_PERMANENT
        sender = in_ns(world.paths["peer"], lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

        def taken() -> bool:
            for _ in range(3):
                sender.sendto(b"plexus-l3", ("198.18.62.5", 9999))
            return bool(select.select([listener], [], [], 1.0)[0])

        try:
            assert not taken(), f"the pod's stack took a datagram from the VM's segment through {names.inner_bridge}"
            assert read_in(world.paths["pod"], f"/proc/sys/net/ipv4/conf/{names.inner_bridge}/rp_filter") == "1"
            fd = open_netns(world.paths["pod"])
            try:  # the control: without the filter, the same datagrams are taken (the probe is sound)
                sysctl.set_conf(fd, socket.AF_INET, names.inner_bridge, "rp_filter", "0")
            finally:
                os.close(fd)
            assert taken()
        finally:
            sender.close()
    finally:
        listener.close()

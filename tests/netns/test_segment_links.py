"""The node side of a segment (``segment_links``), in namespaces of the test's own (``world``): the bridge and the
uplinks Plexus makes are L2 only (IPv6 off), a NIC another master has is not taken, and a VXLAN device floods to
exactly the class's remotes."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import pytest
from pyroute2 import IPRoute

from cni.errors import CniError, InterfaceFailure
from ipamd.drivers.base import BuildContext, InterfaceKey, InterfaceRequest
from ipamd.drivers.veth import VethDriver
from ipamd.ipam.addresses import ResolvedNetwork
from ipamd.model.objects import Network, NetworkClass, parse_object
from ipamd.model.segments import SegmentInUse
from ipamd.netlink import segment_links
from ipamd.netlink.node import NetlinkNodeLinks
from ipamd.node.segments import Segments
from ipamd.store.records import AttachmentRecord, BuiltInterface
from tests.conftest import wait_for
from tests.fakes.store import MemoryStore
from tests.netns.kernel_world import World, in_ns, link, read_in, read_text, ready_link_local, up

pytestmark = pytest.mark.netns

BRIDGE = "plx-n-rv000001"
ADDR6 = {"address": "2001:2:0:60::3", "network": "2001:2:0:60::/64",
         "routes": [{"destination": "2001:2:0:61::/64", "via": "2001:2:0:60::1"}]}


def _ctx(w: World, bridge: str = BRIDGE, uplink: str = "") -> BuildContext:
    return BuildContext(w.host, w.pod, lambda: segment_links.ensure_bridge(w.host, bridge, uplink))


def _iface(kind: str, if_name: str = "net1", addresses: tuple[dict[str, Any], ...] = (ADDR6,)) -> BuiltInterface:
    plan = VethDriver().plan(InterfaceKey("c" * 64, "eth0", "/x"), InterfaceRequest(if_name))
    return BuiltInterface(if_name, kind, "ns/net", "Network", "net", host_link=plan.host_link, bridge=BRIDGE,
                          mac=plan.mac, configure_ips=plan.configure_ips, addresses=addresses,
                          driver=plan.state or {})


def _ipv6_off(w: World, name: str) -> str:
    return str(read_in(w.node_path, f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"))


def _flood(w: World, vx: str) -> list[str]:
    idx = link(w.host, vx)["index"]
    return sorted(n.get_attr("NDA_DST") for n in w.host.fdb("dump", ifindex=idx)
                  if n["ifindex"] == idx and n.get_attr("NDA_DST") and n.get_attr("NDA_LLADDR") == "00:00:00:00:00:00")


# -- the node on a tenant segment ----------------------------------------------------------------------------

def test_node_is_not_reachable_at_l3_from_a_tenant_segment(world: World) -> None:
    """A segment's bridge is L2 only, yet the kernel gives it an IPv6 link-local address and accepts Router
    Advertisements on it: a pod of the segment reaches whatever listens on the node's ``[::]`` at the bridge's fe80
    address. The test's thread is not in the node's namespace: as the daemon under ``--node-netns``."""
    iface = _iface("veth")
    with contextlib.ExitStack() as undo:
        VethDriver().build(_ctx(world), iface, undo)
        undo.pop_all()

    lladdr = wait_for(lambda: ready_link_local(world.host, BRIDGE), 5, 0.1)
    own = wait_for(lambda: ready_link_local(world.pod.netlink(), "net1"), 5, 0.1)
    server = in_ns(world.node_path, lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
    client = in_ns(world.paths["pod"], lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
    try:
        server.bind(("::", 0))
        server.listen(1)
        reached = False
        if lladdr and own:
            scope = link(world.pod.netlink(), "net1")["index"]
            client.settimeout(3)
            client.bind((own, 0, 0, scope))
            client.connect((lladdr, server.getsockname()[1], 0, scope))
            reached = True
        sysctl = read_in(world.node_path, f"/proc/sys/net/ipv6/conf/{BRIDGE}/accept_ra")
        assert not reached and not lladdr, (
            f"the pod reached a socket listening on the node's [::] through the segment bridge's {lladdr} "
            f"(accept_ra={sysctl} on {BRIDGE})")
    finally:
        server.close()
        client.close()
    assert _ipv6_off(world, BRIDGE) == "1"
    assert own, "the pod's own interface keeps its IPv6 (only the node's side is L2 only)"


def test_a_bridge_made_before_is_adopted_l2_only(world: World) -> None:
    """A bridge an earlier version made (IPv6 on, its fe80 address there) loses it when a daemon adopts it."""
    world.host.link("add", ifname=BRIDGE, kind="bridge")
    up(world.host, BRIDGE)
    assert wait_for(lambda: ready_link_local(world.host, BRIDGE), 5, 0.1), "the kernel gave it an fe80 address"
    segment_links.ensure_bridge(world.host, BRIDGE, "")
    assert _ipv6_off(world, BRIDGE) == "1"
    assert not [a for a in world.host.get_addr(index=link(world.host, BRIDGE)["index"], family=socket.AF_INET6)]


def test_in_its_own_namespace_too(world: World) -> None:
    """The daemon in the node's namespace (no ``--node-netns``): the sysctl is written without entering one."""
    def body() -> str:
        with contextlib.closing(IPRoute()) as host:
            segment_links.ensure_bridge(host, BRIDGE, "")
            return read_text(f"/proc/sys/net/ipv6/conf/{BRIDGE}/disable_ipv6")
    assert in_ns(world.node_path, body) == "1"


# -- segments: the parent NIC (and one uplink) ----------------------------------------------------------------

def test_a_parent_nic_another_master_has_is_not_taken_from_it(world: World) -> None:
    """The class names a NIC already a port of something the node's admin made (a bridge carrying the node's
    address; a bond's slave alike): setting its master would take it out of that one first."""
    world.host.link("add", ifname="nic0", kind="veth", peer={"ifname": "nic0p"})
    world.host.link("add", ifname="br-admin", kind="bridge")
    admin = link(world.host, "br-admin")["index"]
    world.host.link("set", index=link(world.host, "nic0")["index"], master=admin, state="up")
    with contextlib.suppress(CniError):
        segment_links.ensure_bridge(world.host, BRIDGE, "nic0")
    master = link(world.host, "nic0").get_attr("IFLA_MASTER")
    assert master == admin, f"the NIC was taken out of the admin's bridge br-admin (now a port of #{master})"
    with pytest.raises(InterfaceFailure) as err:
        segment_links.ensure_bridge(world.host, BRIDGE, "nic0")
    assert err.value.details == "parentNodeNetworkInterfaces"
    assert "nic0" in err.value.msg and "br-admin" in err.value.msg
    assert _ipv6_off(world, "br-admin") == "0", "the admin's bridge is left as it is"


def test_a_bridge_takes_no_second_nic(world: World) -> None:
    """The class's parent NIC edited: the bridge would have both NICs as ports, joining their two networks. While a
    pod is on the bridge the edit is refused; once none is, the old NIC is taken off (no master) and the new one
    takes its place."""
    for nic in ("nic0", "nic1"):
        world.host.link("add", ifname=nic, kind="veth", peer={"ifname": f"{nic}p"})
    idx = segment_links.ensure_bridge(world.host, BRIDGE, "nic0")
    world.host.link("add", ifname="plx0123456789a", kind="veth", peer={"ifname": "podp"}, master=idx)  # a pod's end
    with pytest.raises(InterfaceFailure) as err:
        segment_links.ensure_bridge(world.host, BRIDGE, "nic1")
    assert err.value.details == "parentNodeNetworkInterfaces" and "nic0" in err.value.msg
    assert not link(world.host, "nic1").get_attr("IFLA_MASTER")
    assert link(world.host, "nic0").get_attr("IFLA_MASTER") == idx, "the pods' uplink is left as it is"
    world.host.link("del", index=link(world.host, "plx0123456789a")["index"])  # the pod gone
    assert segment_links.ensure_bridge(world.host, BRIDGE, "nic1") == idx
    assert link(world.host, "nic1").get_attr("IFLA_MASTER") == idx
    assert not link(world.host, "nic0").get_attr("IFLA_MASTER"), "the old NIC is taken off, not left joining them"
    assert _ipv6_off(world, "nic1") == "0", "a NIC is the admin's: its IPv6 is left as it is"


def _untagged(parent: str = "") -> ResolvedNetwork:
    """Network ns/a of an untagged class naming ``parent`` (none: node-local)."""
    group = "network.deckhouse.io/v1alpha1"
    spec = {"parentNodeNetworkInterfaces": {"names": [parent]}} if parent else {}
    cls = parse_object({"apiVersion": group, "kind": "NetworkClass", "metadata": {"name": "flat"}, "spec": spec})
    obj = parse_object({"apiVersion": group, "kind": "Network", "metadata": {"name": "a", "namespace": "ns"},
                        "spec": {"networkClass": "flat"}})
    assert isinstance(cls, NetworkClass) and isinstance(obj, Network)
    return ResolvedNetwork(obj.meta.key, "Network", "a", "ns", obj, cls, None)


@pytest.mark.parametrize("restarted", [False, True], ids=["running", "restarted"])
def test_an_untagged_class_edited_to_no_parent_releases_its_old_nic_once_no_pod_is_on_it(
        world: World, restarted: bool) -> None:
    """The NIC stays a port while a pod is on the bridge (a macvlan pod, no port: the node's attachments tell), then
    is taken off it (no master), not deleted: it is the node's."""
    world.host.link("add", ifname="nic0", kind="veth", peer={"ifname": "nic0p"})
    store, links = MemoryStore(), NetlinkNodeLinks(lambda: world.host)
    segments = Segments(store, links, lambda: 0.0)
    rec, bridge = segments.ensure(_untagged("nic0"))
    assert link(world.host, "nic0").get_attr("IFLA_MASTER") == bridge
    with store.transaction():  # a macvlan pod on the segment
        store.put_attachment(AttachmentRecord("c1", "eth0", "uid-p", "ns", "p", "/run/netns/p", "ready", (
            BuiltInterface("net1", "macvlan", rec.network, "Network", "a", "", rec.bridge, "02:00:00:00:00:01"),)))
    if restarted:
        segments = Segments(store, links, lambda: 0.0)
    with pytest.raises(SegmentInUse) as err:
        segments.ensure(_untagged())
    assert err.value.details == "parentNodeNetworkInterfaces", err.value.msg
    assert link(world.host, "nic0").get_attr("IFLA_MASTER") == bridge, "taken off under a pod"
    assert segments.bridge_index(_untagged(), rec.bridge) == bridge, "ADDs keep the bridge there is"
    with store.transaction():  # the pod is gone (DEL)
        store.delete_attachment("c1", "eth0")
    assert segments.ensure(_untagged())[1] == bridge
    assert not link(world.host, "nic0").get_attr("IFLA_MASTER"), "the class names no parent: nic0 still its port"
    assert link(world.host, "nic0")["index"], "the node's NIC is left (not deleted)"


# -- VXLAN: the flood list -----------------------------------------------------------------------------------

def test_a_remote_taken_out_of_the_class_leaves_the_vxlan_flood_list(world: World) -> None:
    vx = segment_links.ensure_vxlan(world.host, 5002, "", ["198.18.0.2", "198.18.0.3"], "", 4789, "")
    segment_links.ensure_vxlan(world.host, 5002, "", ["198.18.0.2"], "", 4789, "")
    idx = link(world.host, vx)["index"]
    flood = sorted(n.get_attr("NDA_DST") for n in world.host.fdb("dump", ifindex=idx) if n.get_attr("NDA_DST"))
    assert flood == ["198.18.0.2"], f"{vx} still floods to {flood}"


def test_the_vxlan_flood_list_follows_the_class(world: World) -> None:
    """Added, removed, this node's own address dropped when it appears, the same list twice is no change; the device
    is L2 only; a learnt entry behind a removed remote goes with it."""
    lo = link(world.host, "lo")["index"]
    world.host.addr("add", index=lo, address="198.18.0.1", prefixlen=32)
    vx = segment_links.ensure_vxlan(world.host, 5003, "", ["198.18.0.2", "198.18.0.3"], "", 4789, "")
    assert _flood(world, vx) == ["198.18.0.2", "198.18.0.3"]
    assert _ipv6_off(world, vx) == "1"
    idx = link(world.host, vx)["index"]
    world.host.fdb("add", ifindex=idx, lladdr="02:00:00:00:00:33", dst="198.18.0.3")  # as if learnt
    segment_links.ensure_vxlan(world.host, 5003, "", ["198.18.0.1", "198.18.0.2", "198.18.0.4"], "", 4789, "")
    assert _flood(world, vx) == ["198.18.0.2", "198.18.0.4"]
    left = [n.get_attr("NDA_DST") for n in world.host.fdb("dump", ifindex=idx) if n["ifindex"] == idx]
    assert "198.18.0.3" not in left, f"an entry still sends to the removed remote: {left}"
    segment_links.ensure_vxlan(world.host, 5003, "", ["198.18.0.2", "198.18.0.4"], "", 4789, "")
    assert _flood(world, vx) == ["198.18.0.2", "198.18.0.4"]
    assert link(world.host, vx)["index"] == idx, "the device is kept"


def test_a_vxlan_device_without_an_underlay_is_50_bytes_under_the_link_to_its_remotes(world: World) -> None:
    """No ``underlayInterface``: the kernel leaves the device at 1500, so its MTU is set from the link the route to its
    remotes leaves by (a veth of MTU 1400 here), 50 bytes under it, and the bridge it is the uplink of follows."""
    world.host.link("add", ifname="und0", kind="veth", mtu=1400, peer={"ifname": "und0p", "mtu": 1400})
    under = up(world.host, "und0")
    world.host.addr("add", index=under, address="198.18.5.1", prefixlen=24)
    vx = segment_links.ensure_vxlan(world.host, 5006, "", ["198.18.5.2"], "", 4789, "")
    assert link(world.host, vx).get_attr("IFLA_MTU") == 1350
    idx = segment_links.ensure_bridge(world.host, "plx-vb-5006", vx)
    assert NetlinkNodeLinks(lambda: world.host).mtu(idx) == 1350, "the pods on it get the tunnel's MTU"


def _old_vxlan_behind_a_1400_underlay(w: World, vni: int) -> tuple[str, int, int]:
    """A VXLAN device as a Plexus of before the MTU fix made it (no MTU: the kernel's 1500), its remote routed over a
    veth of MTU 1400, the uplink of its bridge: (device, its index, the bridge's index)."""
    w.host.link("add", ifname="und0", kind="veth", mtu=1400, peer={"ifname": "und0p", "mtu": 1400})
    under = up(w.host, "und0")
    w.host.addr("add", index=under, address="198.18.5.1", prefixlen=24)
    vx = f"plx-vx-{vni}"
    w.host.link("add", **segment_links.vxlan_spec(vx, vni, None, 4789, "", ""))
    bridge = segment_links.ensure_bridge(w.host, f"plx-vb-{vni}", vx)
    assert _mtu(w, vx) == 1500 and _mtu(w, f"plx-vb-{vni}") == 1500, "made as before the fix"
    return vx, int(link(w.host, vx)["index"]), bridge


def _mtu(w: World, name: str) -> int:
    return int(link(w.host, name).get_attr("IFLA_MTU"))


def test_a_vxlan_device_made_before_the_mtu_fix_is_lowered_to_its_underlays(world: World) -> None:
    """Found again (of the VNI and tunnel asked for) at 1500 behind a 1400-byte underlay: lowered to 1350, the device
    kept; the bridge follows by itself (the kernel gives it its ports' smallest MTU), and so do the pods made after."""
    vx, index, bridge = _old_vxlan_behind_a_1400_underlay(world, 5007)
    assert segment_links.ensure_vxlan(world.host, 5007, "", ["198.18.5.2"], "", 4789, "") == vx
    assert _mtu(world, vx) == 1350, "the device keeps the kernel's 1500 above a 1400-byte underlay"
    assert link(world.host, vx)["index"] == index, "lowered, not made again"
    assert NetlinkNodeLinks(lambda: world.host).mtu(bridge) == 1350, "the bridge its pods take their MTU from"


def test_a_vxlan_devices_lower_mtu_is_never_raised(world: World) -> None:
    """An MTU below the underlay's (the operator's choice) is left as it is."""
    vx, index, _ = _old_vxlan_behind_a_1400_underlay(world, 5008)
    world.host.link("set", index=index, mtu=1300)
    segment_links.ensure_vxlan(world.host, 5008, "", ["198.18.5.2"], "", 4789, "")
    assert _mtu(world, vx) == 1300


def test_a_vxlan_devices_mtu_is_lowered_once_no_pod_is_on_its_bridge(world: World) -> None:
    """Under a pod (its interface keeps 1500, and its bigger frames would be dropped at the device), the device is
    left as it is, refused naming spec.vxlan (the segment served as it is, its attachment not Ready, as for a class
    edit): a restarted daemon serves the bridge as it is; once no pod is on it (a
    veth pod, a port of the bridge, then a macvlan pod, which the node's attachments tell of), the round lowers it, and
    the bridge's MTU read follows."""
    vx, _, bridge = _old_vxlan_behind_a_1400_underlay(world, 5009)
    world.host.link("add", ifname="plx0123456789a", kind="veth", peer={"ifname": "podp"}, master=bridge)  # a pod's
    with pytest.raises(SegmentInUse) as err:
        segment_links.ensure_vxlan(world.host, 5009, "", ["198.18.5.2"], "", 4789, "")
    assert err.value.details == "spec.vxlan" and vx in err.value.msg and "1350" in err.value.msg, err.value.msg
    assert _mtu(world, vx) == 1500, "lowered under a pod whose interface keeps 1500"

    store, net = MemoryStore(), _vxlan_network(4789, vni=5009, remotes=["198.18.5.2"])
    segments = Segments(store, NetlinkNodeLinks(lambda: world.host), lambda: 0.0)  # restarted on the new version
    with pytest.raises(SegmentInUse):
        segments.ensure(net)
    assert segments.bridge_index(net, "plx-vb-5009") == bridge, "ADDs keep the bridge there is"
    world.host.link("del", index=link(world.host, "plx0123456789a")["index"])  # the veth pod gone
    rec = store.get_segment(net.key)
    assert rec is not None
    with store.transaction():  # a macvlan pod on it: no port
        store.put_attachment(AttachmentRecord("c1", "eth0", "uid-p", "ns", "p", "/run/netns/p", "ready", (
            BuiltInterface("net1", "macvlan", rec.network, "Network", "a", "", rec.bridge, "02:00:00:00:00:01"),)))
    with pytest.raises(SegmentInUse):
        segments.ensure(net)
    assert _mtu(world, vx) == 1500, "lowered under a macvlan pod"
    with store.transaction():  # the pod is gone (DEL)
        store.delete_attachment("c1", "eth0")
    segments.ensure(net)
    assert _mtu(world, vx) == 1350 and segments.bridge_mtu("plx-vb-5009") == 1350


def test_a_multicast_groups_entry_is_kept(world: World) -> None:
    """A group's all-zero entry is the kernel's own: converging the remotes does not remove it."""
    up(world.host, "lo")
    vx = segment_links.ensure_vxlan(world.host, 5004, "lo", ["198.18.0.2"], "239.1.1.1", 4789, "")
    assert _flood(world, vx) == ["198.18.0.2", "239.1.1.1"]
    segment_links.ensure_vxlan(world.host, 5004, "lo", [], "239.1.1.1", 4789, "")
    assert _flood(world, vx) == ["239.1.1.1"]


def test_removing_the_segment_removes_what_was_made(world: World) -> None:
    vx = segment_links.ensure_vxlan(world.host, 5005, "", ["198.18.0.2"], "", 4789, "")
    segment_links.ensure_bridge(world.host, "plx-vb-5005", vx)
    from ipamd.netlink.node import NetlinkNodeLinks
    node = NetlinkNodeLinks(lambda: world.host)
    assert node.delete("plx-vb-5005") and node.delete(vx)
    names = {link.get_attr("IFLA_IFNAME") for link in world.host.get_links()}
    assert not {"plx-vb-5005", vx} & names


def test_two_adds_setting_the_bridge_up_at_once_both_take_its_uplink(world: World) -> None:
    """Two first ADDs (or an ADD and the reconcile loop's first round) set the same bridge up at the same moment: one
    made the NIC its port between the other's read of the NIC's master and its look at the bridge's ports. That NIC
    is the bridge's own uplink, not a second one."""
    world.host.link("add", ifname="nic0", kind="veth", peer={"ifname": "nic0p"})
    idx = segment_links.ensure_bridge(world.host, BRIDGE, "nic0")  # the other ADD's
    segment_links._release_old_uplink(world.host, idx, "nic0", BRIDGE)  # this ADD's look, after its stale read
    assert link(world.host, "nic0").get_attr("IFLA_MASTER") == idx


def test_a_sysctl_that_cannot_be_written_is_an_interface_failure(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only ``/proc/sys`` (a node container without the rights): ADD answers 105 naming the bridge, not 999."""
    def refused(*args: Any) -> bool:
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr("ipamd.netlink.sysctl.set_conf", refused)
    with pytest.raises(InterfaceFailure, match=BRIDGE):
        segment_links.ensure_bridge(world.host, BRIDGE, "")


def test_an_edited_tunnel_is_made_again_while_no_pod_is_on_its_segment(world: World) -> None:
    """The class's port (or group, local address, underlay) edited: the device is made again with it once no pod is
    on the segment, and refused naming spec.vxlan while one is; an unchanged class keeps its device."""
    vx = segment_links.ensure_vxlan(world.host, 5004, "", ["198.18.0.2"], "", 4789, "")
    first = link(world.host, vx)["index"]
    assert segment_links.ensure_vxlan(world.host, 5004, "", ["198.18.0.2"], "", 4789, "") == vx
    assert link(world.host, vx)["index"] == first, "unchanged: kept"

    segment_links.ensure_vxlan(world.host, 5004, "", ["198.18.0.2"], "", 8472, "")
    data = link(world.host, vx).get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    assert data.get_attr("IFLA_VXLAN_PORT") == 8472, "the tunnel keeps the port the class no longer says"
    assert _flood(world, vx) == ["198.18.0.2"]

    segment_links.ensure_bridge(world.host, BRIDGE, vx)
    with contextlib.ExitStack() as undo:
        VethDriver().build(_ctx(world), _iface("veth"), undo)
        undo.pop_all()
    with pytest.raises(InterfaceFailure) as refused:
        segment_links.ensure_vxlan(world.host, 5004, "", ["198.18.0.2"], "", 4789, "")
    assert refused.value.details == "spec.vxlan" and "port 8472" in refused.value.msg, refused.value.msg
    assert link(world.host, vx).get_attr("IFLA_MASTER") == link(world.host, BRIDGE)["index"], "left as it was"


def test_a_restarted_daemon_serves_a_segment_whose_tunnel_edit_waits_for_its_pods(world: World) -> None:
    """The class's tunnel edited while a pod is on the segment, then the daemon restarted (nothing known to be set up):
    its ADDs get the bridge there is, with the tunnel it has, as before the restart; the round reports the edit."""
    store, links = MemoryStore(), NetlinkNodeLinks(lambda: world.host)
    rec, index = Segments(store, links, lambda: 0.0).ensure(_vxlan_network(4789))
    with contextlib.ExitStack() as undo:
        VethDriver().build(_ctx(world, rec.bridge), _iface("veth"), undo)
        undo.pop_all()
    restarted = Segments(store, links, lambda: 0.0)
    with pytest.raises(InterfaceFailure) as refused:
        restarted.ensure(_vxlan_network(8472))
    assert refused.value.details == "spec.vxlan", refused.value.msg
    assert restarted.bridge_index(_vxlan_network(8472), rec.bridge) == index
    vx = link(world.host, f"plx-vx-{rec.id}")
    assert vx.get_attr("IFLA_MASTER") == index, "the pod's wire is left as it was"


def _vxlan_network(port: int, vni: int = 0, remotes: list[str] | None = None) -> ResolvedNetwork:
    """Network ns/a of a VXLAN class (VNI ``vni``, else one of 5100-5109) with ``port``."""
    group = "network.deckhouse.io/v1alpha1"
    pool = f"{vni}-{vni}" if vni else "5100-5109"
    cls = parse_object({"apiVersion": group, "kind": "NetworkClass", "metadata": {"name": "vx"},
                        "spec": {"vxlan": {"vniPool": [pool], "remotes": remotes or ["198.18.0.2"], "port": port}}})
    obj = parse_object({"apiVersion": group, "kind": "Network", "metadata": {"name": "a", "namespace": "ns"},
                        "spec": {"networkClass": "vx"}})
    assert isinstance(cls, NetworkClass) and isinstance(obj, Network)
    return ResolvedNetwork(obj.meta.key, "Network", "a", "ns", obj, cls, None)

"""What an undone ADD and a DEL give back, in namespaces of the test's own (``world``): every interface a parallel
build made (its undo runs on the sockets of the thread that built it), and the pod's default route that a delegate
took (NPWG ``default-route``), as it was."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni.errors import CniError
from ipamd.drivers.base import BuildContext, InterfaceKey, InterfaceRequest, LinksContext
from ipamd.drivers.delegate import DelegateDriver
from ipamd.drivers.macvlan import MacvlanDriver
from ipamd.drivers.table import kernel_drivers
from ipamd.drivers.veth import VethDriver
from ipamd.invoke.chain import Invocation
from ipamd.ipam import addresses as addresses_module
from ipamd.ipam.addresses import Ipam
from ipamd.netlink import links, segment_links
from ipamd.netlink.netns import HostNetlink, pod_namespace
from ipamd.store.records import BuiltInterface
from ipamd.verbs.attacher import Attacher
from tests.conftest import REPO
from tests.fakes.publisher import RecordingPublisher
from tests.fakes.source import FakeSource
from tests.fakes.store import MemoryStore
from tests.netns.kernel_world import World, in_ns, link_names, up

pytestmark = pytest.mark.netns

BRIDGE = "plx-n-rv000002"


def _iface(kind: str, if_name: str = "net1") -> BuiltInterface:
    driver: Any = {"veth": VethDriver(), "macvlan": MacvlanDriver()}[kind]
    plan = driver.plan(InterfaceKey("c" * 64, "eth0", "/x"), InterfaceRequest(if_name))
    return BuiltInterface(if_name, kind, "ns/net", "Network", "net", host_link=plan.host_link, bridge=BRIDGE,
                          mac=plan.mac, configure_ips=plan.configure_ips, addresses=(), driver=plan.state or {})


# -- a pod's interfaces built at once (the ``parallel`` delegation annotation) -----------------------------------------

def _parallel_add_with_net2_taken(node_path: str, pod_path: str, kind: str) -> tuple[str, list[str]]:
    """Two interfaces of ``kind`` built at once by ``Attacher._build_at_once``, net2's name taken in the pod: the
    ADD's error, and what the undo steps logged. Run in a process of its own (``__main__`` below): what pyroute2
    leaves of the pool threads' sockets goes with it."""
    class Segments:
        def bridge_index(self, net: Any, bridge: str) -> int:
            return segment_links.bridge_index(host(), bridge) or 0

        def bridge_mtu(self, bridge: str) -> int | None:
            return None

        def lost(self, bridge: str) -> bool:
            return False

    host = HostNetlink(node_path)
    opened: list[IPRoute] = []

    def host_netlink() -> IPRoute:  # this thread's node socket, as ``HostNetlink`` keeps it, closed at the end
        ipr = host()
        if ipr not in opened:
            opened.append(ipr)
        return ipr

    store, source = MemoryStore(), FakeSource()
    attacher = Attacher(store, source, Ipam(store, source, lambda: 0.0), Segments(), kernel_drivers(), host_netlink,  # type: ignore[arg-type]
                        pod_namespace, RecordingPublisher(), lambda: True)
    planned = [(SimpleNamespace(net=object()), _iface(kind, name), None) for name in ("net1", "net2")]
    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("ipamd.drivers.base").addHandler(handler)

    def body() -> str:
        with pod_namespace(pod_path) as pod_side:
            try:
                with contextlib.ExitStack() as undo:
                    attacher._build_at_once(pod_side, planned, undo, [])  # type: ignore[arg-type]
            except CniError as exc:
                return str(exc)
        return ""

    try:
        return in_ns(node_path, body), logged
    finally:
        logging.getLogger("ipamd.drivers.base").removeHandler(handler)
        attacher.pool.shutdown()
        for ipr in opened:
            ipr.close()


@pytest.mark.parametrize("kind", ["macvlan", "veth"])
def test_parallel_add_that_fails_undoes_the_interfaces_it_made(world: World, kind: str) -> None:
    """Each interface of a parallel ADD is built in a pool thread, its undo steps holding that thread's sockets (the
    pod's, the node's): they run in that same thread, so net1 (and a veth's node end) goes, and nothing of the node's
    own (its ``net1``) is touched."""
    pod = world.pod.netlink()
    pod.link("add", ifname="net2", kind="veth", peer={"ifname": "net2-peer"})  # net2 is taken in the pod
    segment_links.ensure_bridge(world.host, BRIDGE, "")
    world.host.link("add", ifname="net1", kind="veth", peer={"ifname": "net1-node"})  # the node's own net1
    before, node_before = link_names(pod), link_names(world.host)
    child = subprocess.run([sys.executable, "-W", "ignore", "-m", __name__, world.node_path, world.paths["pod"], kind],
                           capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.returncode == 0, child.stderr
    failure, logged = json.loads(child.stdout.splitlines()[-1])
    assert "net2 already exists" in failure
    assert link_names(world.host) == node_before, f"the undo removed {node_before - link_names(world.host)} on the node"
    assert link_names(pod) == before, f"the failed ADD left {link_names(pod) - before} in the pod; {logged}"
    assert not logged, f"an undo step failed: {logged}"


# -- the pod's default route (NPWG default-route) ---------------------------------------------------------------------

class _Chain:
    """A delegate's plugins, scripted: ADD answers with ``net1`` (made beforehand by the test), DEL succeeds."""

    def __init__(self, sandbox: str) -> None:
        self.sandbox = sandbox

    def add_each(self, inv: Invocation) -> Iterator[dict[str, Any]]:
        yield {"cniVersion": "1.0.0", "interfaces": [{"name": "net1", "sandbox": self.sandbox}],
               "ips": [{"address": "198.18.40.3/24", "interface": 0}]}

    def delete_each(self, inv: Invocation, prev: Any = None, netns: Any = None) -> list[Any]:
        return []

    def delete(self, inv: Invocation, prev: Any = None, netns: Any = None) -> list[str]:
        return []


def _cluster_and_delegate(w: World, **cluster_route: Any) -> IPRoute:
    """The pod as the cluster network left it (``eth0``, its default route via 198.18.43.1 unless ``cluster_route``
    says otherwise), and ``net1`` as a delegated plugin made it."""
    pod = w.pod.netlink()
    for name, cidrs in (("eth0", ("198.18.43.3/24", "2001:2:0:43::3/64")),
                        ("net1", ("198.18.40.3/24", "2001:2:0:40::3/64"))):
        pod.link("add", ifname=name, kind="veth", peer={"ifname": f"{name}-peer"})
        up(pod, f"{name}-peer")
        idx = up(pod, name)
        for cidr in cidrs:
            pod.addr("add", index=idx, **links.address_request(cidr))
    pod.route("add", **{"dst": "0.0.0.0/0", "gateway": "198.18.43.1", **cluster_route, "oif": up(pod, "eth0")})
    return pod


def _defaults(pod: IPRoute, family: int = socket.AF_INET) -> list[str]:
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in pod.get_links()}
    return [f"via {r.get_attr('RTA_GATEWAY')} dev {names.get(r.get_attr('RTA_OIF'))}"
            for r in pod.get_routes(family=family, table=254) if r["dst_len"] == 0]


def _default_details(pod: IPRoute, family: int = socket.AF_INET) -> list[tuple[Any, ...]]:
    """The pod's default routes with what a restore must keep: gateway, interface, metric, protocol, onlink, source,
    metrics (MTU), next hops."""
    def metrics(r: Any) -> str:
        return str(r.get_attr("RTA_METRICS") and r.get_attr("RTA_METRICS")["attrs"])

    def hops(r: Any) -> str:
        return str([(h.get_attr("RTA_GATEWAY"), h["oif"], h["hops"]) for h in r.get_attr("RTA_MULTIPATH") or ()])

    return sorted(((r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_OIF"), r.get_attr("RTA_PRIORITY"), r["proto"],
                    r["flags"] & 0x04, r.get_attr("RTA_PREFSRC"), metrics(r), hops(r))
                   for r in pod.get_routes(family=family, table=254) if r["dst_len"] == 0), key=str)


def _delegated(w: World, *gateways: str) -> tuple[DelegateDriver, BuiltInterface]:
    driver = DelegateDriver(_Chain(w.paths["pod"]))  # type: ignore[arg-type]
    inv = Invocation({"cniVersion": "1.0.0", "name": "d", "plugins": [{"type": "bridge"}]}, "c1", w.paths["pod"], "net1")
    plan = driver.plan(InterfaceKey("c1", "eth0", w.paths["pod"]),
                       InterfaceRequest("net1", delegate=inv, default_route=gateways))
    return driver, BuiltInterface("net1", "delegate", "ns/d", "NetworkAttachmentDefinition", "d",
                                  driver=plan.state or {})


def test_undone_add_gives_the_pod_its_default_route_back(world: World) -> None:
    """The delegate took the pod's default route (the cluster network's was deleted); a later interface of the
    ADD fails and the undo removes the delegate's route and puts the cluster network's back."""
    pod = _cluster_and_delegate(world)
    driver, iface = _delegated(world, "198.18.40.1")
    with contextlib.ExitStack() as undo:
        driver.build(BuildContext(world.host, world.pod, lambda: 0), iface, undo)
        assert _defaults(pod) == ["via 198.18.40.1 dev net1"]
    assert _defaults(pod) == ["via 198.18.43.1 dev eth0"], "the ADD was undone; the cluster network's route is gone"


def test_default_route_that_cannot_be_added_keeps_the_one_there(world: World) -> None:
    """The gateway asked for is not on ``net1``'s network: the kernel refuses it (ENETUNREACH) and the cluster
    network's default route stays."""
    pod = _cluster_and_delegate(world)
    driver, iface = _delegated(world, "198.18.99.1")
    with pytest.raises(CniError), contextlib.ExitStack() as undo:
        driver.build(BuildContext(world.host, world.pod, lambda: 0), iface, undo)
    assert _defaults(pod) == ["via 198.18.43.1 dev eth0"], "a failed ADD took the pod's default route"


def test_a_refused_second_family_gives_the_first_back(world: World) -> None:
    """Both families asked for, the IPv6 gateway not on net1: the IPv4 swap already made is undone before the error."""
    pod = _cluster_and_delegate(world)
    eth0 = up(pod, "eth0")
    pod.route("add", dst="::/0", gateway="2001:2:0:43::1", oif=eth0)
    before4, before6 = _default_details(pod), _default_details(pod, socket.AF_INET6)
    driver, iface = _delegated(world, "198.18.40.1", "2001:2:0:99::1")
    with pytest.raises(CniError), contextlib.ExitStack() as undo:
        driver.build(BuildContext(world.host, world.pod, lambda: 0), iface, undo)
    assert _default_details(pod) == before4
    assert _default_details(pod, socket.AF_INET6) == before6


def test_the_route_given_back_is_the_one_taken(world: World) -> None:
    """A cluster network's default route with a metric, a protocol, ``onlink``, a preferred source and an MTU
    (Calico's style, with its gateway off-link), a second one at another metric, and a third over two next hops: all
    come back as they were."""
    pod = _cluster_and_delegate(world, gateway="198.18.42.1", priority=100, proto=4, flags=0x04,
                                prefsrc="198.18.43.3", metrics={"mtu": 1400})
    pod.route("add", dst="0.0.0.0/0", gateway="198.18.43.1", priority=200)
    pod.route("add", dst="0.0.0.0/0", priority=300, multipath=[
        {"gateway": "198.18.43.1", "oif": up(pod, "eth0"), "hops": 2}, {"gateway": "198.18.40.9", "oif": up(pod, "net1")}])
    before = _default_details(pod)
    driver, iface = _delegated(world, "198.18.40.1")
    with contextlib.ExitStack() as undo:
        driver.build(BuildContext(world.host, world.pod, lambda: 0), iface, undo)
        assert _defaults(pod) == ["via 198.18.40.1 dev net1"]
    assert _default_details(pod) == before


def test_ipv6_default_route_swaps_and_comes_back(world: World) -> None:
    """The IPv6 default route (metric 1024, the one the new route replaces in place) and one over two next hops."""
    pod = _cluster_and_delegate(world)
    pod.route("add", dst="::/0", gateway="2001:2:0:43::1", oif=up(pod, "eth0"))
    pod.route("add", dst="::/0", priority=300, multipath=[{"gateway": "2001:2:0:43::1", "oif": up(pod, "eth0")},
                                                          {"gateway": "2001:2:0:40::9", "oif": up(pod, "net1")}])
    before = _default_details(pod, socket.AF_INET6)
    driver, iface = _delegated(world, "2001:2:0:40::1")
    with contextlib.ExitStack() as undo:
        driver.build(BuildContext(world.host, world.pod, lambda: 0), iface, undo)
        assert _defaults(pod, socket.AF_INET6) == ["via 2001:2:0:40::1 dev net1"]
        assert _defaults(pod) == ["via 198.18.43.1 dev eth0"], "the other family's stays"
    assert _default_details(pod, socket.AF_INET6) == before


def _delegate_added_then_its_interface_gone(world: World) -> tuple[IPRoute, DelegateDriver, BuiltInterface]:
    """A delegate that took the pod's default route, its record as the store keeps it, and its interface removed as
    the delegate's own DEL does: what the driver's teardown is left to do."""
    pod = _cluster_and_delegate(world)
    driver, iface = _delegated(world, "198.18.40.1")
    with contextlib.ExitStack() as undo:
        done = driver.build(BuildContext(world.host, world.pod, lambda: 0), iface, undo)
        undo.pop_all()
    built = BuiltInterface(iface.if_name, iface.kind, iface.network_key, iface.network_type, iface.network_name,
                           driver=json.loads(json.dumps(done.state)))
    pod.link("del", index=up(pod, "net1"))
    return pod, driver, built


def test_del_gives_the_pod_its_default_route_back(world: World) -> None:
    """The runtime's DEL of an attachment whose delegate took the default route (a network unplugged from a running
    pod): the delegate's interface goes, and the cluster network's route comes back; a DEL again changes nothing."""
    pod, driver, built = _delegate_added_then_its_interface_gone(world)
    ctx = LinksContext(world.host, world.pod.netlink, world.paths["pod"])
    driver.teardown(ctx, built)
    assert _defaults(pod) == ["via 198.18.43.1 dev eth0"]
    driver.teardown(ctx, built)
    assert _defaults(pod) == ["via 198.18.43.1 dev eth0"]


def test_del_leaves_a_default_route_someone_else_set_alone(world: World) -> None:
    """The pod has a default route again by the time of the DEL (another attachment took it): it is not replaced."""
    pod, driver, built = _delegate_added_then_its_interface_gone(world)
    pod.route("add", dst="0.0.0.0/0", gateway="198.18.43.7")
    driver.teardown(LinksContext(world.host, world.pod.netlink, world.paths["pod"]), built)
    assert _defaults(pod) == ["via 198.18.43.7 dev eth0"]


# -- a kernel side effect the undo could not undo, and a namespace that cannot be opened now ----------------------------

class _RealBridges:
    """The segments of ``test_attacher``'s node, each bridge made in the world's node namespace."""

    def __init__(self, planned: Any, host: IPRoute) -> None:
        self.planned, self.host = planned, host

    def plan(self, net: Any) -> Any:
        return self.planned.plan(net)

    def bridge_index(self, net: Any, bridge: str) -> int:
        return segment_links.ensure_bridge(self.host, bridge, "")

    def bridge_mtu(self, bridge: str) -> int | None:
        return None

    def lost(self, bridge: str) -> bool:
        return False


def _verbs_on_the_kernel(w: World) -> Any:
    """``test_attacher``'s node (pod ``app``: net1 a veth on net-a, net2 a scripted macvlan on net-b) with the real veth
    driver over the world's namespaces; its CNI calls run in the test's thread, which owns ``w.host``."""
    from tests.unit.test_attacher import Node

    node = Node()
    node.drivers["veth"] = VethDriver()  # type: ignore[assignment]
    node.attacher.segments = _RealBridges(node.segments, w.host)
    node.attacher.host_netlink = lambda: w.host
    node.attacher.open_pod = pod_namespace
    return node


def _net1_holders(node: Any) -> list[tuple[str, tuple[str, ...]]]:
    """net1's address (pool-a) as the store holds it: each lease's address and the pods using it (none once let go;
    the pod's Auto IPAddress itself stays while the pod is there)."""
    users = {rec.address: rec.used_by_uids for rec in node.store.all_ips()}
    return [(lease.address, users.get(lease.address, ())) for lease in node.store.all_leases()
            if lease.address.startswith("198.18.40.")]


def test_an_undo_that_cannot_remove_the_veth_keeps_it_for_the_runtimes_del(world: World,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """net1's veth made, net2's build fails, and the undo's delete of net1's node end is refused once: the step was
    logged and the record forgotten, so the veth (its pod end holding net1's address) stayed for good while the address
    went back to the pool. The record now stays ``deleting`` with net1 alone, its address held, and the runtime's DEL
    removes the veth from the kernel, then lets the address go (and the Auto IPAddress the failed ADD made, which no
    ready ADD ever had made: the pod's next ADD makes it anew)."""
    node = _verbs_on_the_kernel(world)
    node.drivers["macvlan"].fail_build["net2"] = 1
    real, refusals = links.delete_link, [NetlinkError(errno.EBUSY, "Device or resource busy")]

    def delete_link(ipr: IPRoute, name: str) -> bool:
        if refusals:
            raise refusals.pop()
        return real(ipr, name)

    monkeypatch.setattr(links, "delete_link", delete_link)
    with pytest.raises(CniError):
        node.call("ADD", netns=world.paths["pod"])
    assert not refusals, "the veth's undo step never ran"
    (kept,) = node.store.attachments()
    assert kept.state == "deleting" and [i.if_name for i in kept.interfaces] == ["net1"]
    host_link = kept.interfaces[0].host_link
    assert host_link in link_names(world.host), "the refused delete left the veth"
    assert _net1_holders(node) == [("198.18.40.1", ("uid-app",))], "net1's address let go while its veth is there"
    assert node.call("DEL", netns=world.paths["pod"]) == {}
    assert host_link not in link_names(world.host) and "net1" not in link_names(world.pod.netlink())
    assert node.store.attachments() == [] and _net1_holders(node) == [], \
        "let go with the veth: the pod's Auto IPAddress the failed ADD made, as its undo would have"


def test_del_with_a_namespace_that_cannot_be_opened_now_answers_try_again_later(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening the pod's namespace fails with EMFILE (the daemon out of descriptors for a moment): the namespace is
    there, so the DEL keeps the addresses, and answers 11 (try again later) naming the namespace, not 105 as if a
    driver had failed. The DEL the runtime retries, which opens it, removes the links and lets the addresses go."""
    node = _verbs_on_the_kernel(world)
    path = world.paths["pod"]
    node.call("ADD", netns=path)
    real_open = os.open

    def refused(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if file == path:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(CniError) as err:
        node.call("DEL", netns=path)
    monkeypatch.setattr(os, "open", real_open)
    assert err.value.code == 11 and path in err.value.msg, err.value.to_dict()
    assert _net1_holders(node) == [("198.18.40.1", ("uid-app",))], "the addresses of a pod still there were let go"
    assert node.call("DEL", netns=path) == {}
    assert node.store.attachments() == [] and _net1_holders(node) == [("198.18.40.1", ())]
    assert "net1" not in link_names(world.pod.netlink())


def test_a_pod_holding_an_address_of_a_pool_entry_no_longer_served_is_deleted(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """pool-a is an IPv6 link-local one stored before such pools were refused, and the pod got its address from it
    then (an ADD before ADD refused such a pool: the refusal left out). A new ADD of the pool's network is refused
    (code 7, naming the entry) and leaves nothing; the pod's DEL still removes its veth and lets the address go."""
    from tests.unit.test_attacher import obj

    node = _verbs_on_the_kernel(world)
    node.source.add(obj("IPAddressPool", "pool-a", {"pools": [{"network": "fe80::/64"}]}))
    path = world.paths["pod"]
    with monkeypatch.context() as before:
        before.setattr(addresses_module, "unserved_entries", lambda pool: ())  # (``refuse_unserved``'s)
        node.call("ADD", netns=path)
    pod = world.pod.netlink()
    net1 = links.index_of(pod, "net1")
    assert "fe80::1" in [a.get_attr("IFA_ADDRESS") for a in pod.get_addr(index=net1, family=socket.AF_INET6)]
    (attached,) = node.store.attachments()
    with pytest.raises(CniError) as refused:
        node.call("ADD", container="c2", netns=path)
    assert (refused.value.code, refused.value.details) == (7, "spec.pools[0].network"), refused.value.to_dict()
    assert "IPAddressPool apps/pool-a" in refused.value.msg and "link-local" in refused.value.msg
    assert node.store.attachments() == [attached], "the refused ADD left a record"
    assert node.call("DEL", netns=path) == {}
    assert "net1" not in link_names(pod) and attached.interfaces[0].host_link not in link_names(world.host)
    assert node.store.attachments() == []
    assert [(rec.address, rec.used_by_uids) for rec in node.store.all_ips() if rec.address.startswith("fe80")] == \
        [("fe80::1", ())], "the address is still used by the deleted pod (its Auto IPAddress stays with the pod)"


if __name__ == "__main__":  # the parallel ADD, in a process of its own
    print(json.dumps(_parallel_add_with_net2_taken(sys.argv[1], sys.argv[2], sys.argv[3])))

"""The verbs in-process, with fakes at every I/O seam (no root, no kernel): the order ADD unwinds in after
a failure at each of its steps, and DEL, CHECK and GC working from the record alone.

The store is the in-memory one (same contract as SQLite, ``test_store.py``), IPAM and the segments are
the real ones over it, the drivers are scripted (``tests/fakes/drivers.py``), and one event log records
every side effect and every undo step.
"""

from __future__ import annotations

import contextlib
import errno
import json
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from pyroute2.netlink.exceptions import NetlinkError

from cni.errors import CniError, InterfaceFailure, InternalError, PluginNotAvailable, TryAgainLater, UnknownContainer
from cni.types import Result
from ipamd.drivers import kernel
from ipamd.drivers.base import BuildContext, InterfaceKey, InterfaceRequest, undo_in_kernel
from ipamd.drivers.macvlan import MacvlanDriver
from ipamd.drivers.tap import TapDriver, _names
from ipamd.ipam.addresses import Claim, Ipam, ResolvedNetwork
from ipamd.kube.outbox import Outbox
from ipamd.kube.publisher import KubePublisher, api_senders
from ipamd.model.annotations import NetworkSelection
from ipamd.model.objects import API_VERSION, POD, IPAddressObject, Pod, parse_object
from ipamd.netlink import links
from ipamd.node.segments import Segments
from ipamd.store.records import AttachmentRecord, BuiltInterface, IPRecord, PodStatus
from ipamd.verbs.attacher import Attacher
from ipamd.verbs.call import CniCall
from ipamd.verbs.pod_statuses import PodStatusWriter
from tests.fakes.drivers import FakeDriver, FakeNetns
from tests.fakes.links import FakeNodeLinks
from tests.fakes.publisher import RecordingPublisher
from tests.fakes.source import FakeSource
from tests.fakes.store import MemoryStore
from tests.unit.test_podopts import PodNetlink

NS = "apps"
NETNS = "/run/netns/app"


def obj(kind: str, name: str, spec: dict[str, Any], namespaced: bool = True, **metadata: Any) -> Any:
    md: dict[str, Any] = {"name": name, **metadata}
    if namespaced:
        md["namespace"] = NS
    return parse_object({"apiVersion": "v1" if kind == "Pod" else API_VERSION, "kind": kind, "metadata": md,
                         "spec": spec})


def app_pod(networks: list[dict[str, Any]], uid: str = "uid-app") -> Pod:
    pod = obj("Pod", "app", {}, uid=uid, annotations={"network.deckhouse.io/networks-spec": json.dumps(networks)})
    assert isinstance(pod, Pod)
    return pod


TWO_NETWORKS = [{"type": "Network", "name": "net-a", "ifName": "net1"},
                {"type": "Network", "name": "net-b", "ifName": "net2", "interfaceType": "macvlan"}]


def world() -> FakeSource:
    return FakeSource(
        obj("NetworkClass", "cls", {"vlan": {"idPool": ["600-700"]}}, namespaced=False),
        obj("IPAddressPool", "pool-a", {"pools": [{"network": "198.18.40.0/24"}]}),
        obj("IPAddressPool", "pool-b", {"pools": [{"network": "198.18.41.0/24"}], "leaseTTL": "1h"}),
        obj("Network", "net-a", {"networkClass": "cls", "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool",
                                                                                        "name": "pool-a"}}}),
        obj("Network", "net-b", {"networkClass": "cls", "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool",
                                                                                        "name": "pool-b"}}}),
        app_pod(TWO_NETWORKS),
    )


class SpyStore(MemoryStore):
    """Logs the attachment record's writes that ADD and its undo make."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def put_attachment(self, rec: AttachmentRecord) -> None:
        if rec.state == "adding" and not rec.interfaces:
            self.events.append("record")
        super().put_attachment(rec)

    def delete_attachment(self, container_id: str, ifname: str) -> None:
        self.events.append("forget record")
        super().delete_attachment(container_id, ifname)


class SpyIpam(Ipam):
    def __init__(self, store: MemoryStore, source: FakeSource, events: list[str]) -> None:
        super().__init__(store, source, lambda: 1_700_000_000.0)
        self.events = events
        self._names: dict[tuple[str, ...], str] = {}

    @contextmanager
    def claiming(self, pod: Pod, sel: NetworkSelection, net: ResolvedNetwork, user_objs: list[IPAddressObject],
                 where: str = "networks-spec") -> Iterator[Callable[[], list[Claim]]]:
        with super().claiming(pod, sel, net, user_objs, where) as record:
            def recorded() -> list[Claim]:
                claims = record()
                self._names[tuple(c.ip_key for c in claims)] = sel.if_name
                self.events.append(f"lease {sel.if_name}")
                return claims

            yield recorded

    def undo_claims(self, claims: list[Claim], pod: Pod, attachment: str = "", shared: Collection[str] = ()) -> None:
        self.events.append(f"undo leases {self._names[tuple(c.ip_key for c in claims)]}")
        super().undo_claims(claims, pod, attachment, shared)


class Faults:
    """The daemon's fault hook: fails ADD at the n-th time it reaches ``step``."""

    def __init__(self, step: str = "", nth: int = 1) -> None:
        self.step, self.nth, self.seen = step, nth, 0

    def __call__(self, step: str) -> None:
        if step == self.step:
            self.seen += 1
            if self.seen == self.nth:
                raise InternalError(f"injected failure at {step}", "test")


class Node:
    """One node's verbs over fakes."""

    def __init__(self, fault: Callable[[str], None] | None = None, publisher: RecordingPublisher | None = None) -> None:
        self.events: list[str] = []
        self.store = SpyStore(self.events)
        self.source = world()
        self.ipam = SpyIpam(self.store, self.source, self.events)
        self.links = FakeNodeLinks()
        self.segments = Segments(self.store, self.links, lambda: 1_700_000_000.0)
        self.drivers = {k: FakeDriver(k, self.events) for k in ("veth", "tap", "macvlan")}
        self.netns = FakeNetns()
        self.publisher = publisher or RecordingPublisher()
        self.attacher = Attacher(self.store, self.source, self.ipam, self.segments, self.drivers, lambda: object(),
                                 self.netns.open, self.publisher, lambda: True, fault or Faults())

    def call(self, verb: str, container: str = "c1", netns: str = NETNS,
             config: dict[str, Any] | None = None) -> dict[str, Any]:
        args = {"K8S_POD_NAMESPACE": NS, "K8S_POD_NAME": "app", "K8S_POD_UID": "uid-app"}
        conf = {"cniVersion": "1.1.0", "name": "plexus", "type": "plexus", **(config or {})}
        return self.attacher.handle(CniCall(verb, container, netns, "eth0", args, conf))

    def live(self) -> set[str]:
        return {name for d in self.drivers.values() for name in d.live}

    def assert_nothing_left(self) -> None:
        assert self.store.attachments() == []
        assert self.store.all_leases() == []
        assert self.store.all_ips() == []
        assert self.store.pod_statuses() == []
        assert self.live() == set()


# every address is leased before anything is built: an exhausted pool fails before any link is made
DONE = ["record", "lease net1", "lease net2", "build net1", "build net2"]
UNDO = {"record": "forget record", "lease net1": "undo leases net1", "build net1": "undo build net1",
        "lease net2": "undo leases net2", "build net2": "undo build net2"}


@pytest.mark.parametrize(("step", "nth", "done"), [
    ("add:recorded", 1, 1), ("add:leased", 1, 2), ("add:leased", 2, 3), ("add:built", 1, 4), ("add:built", 2, 5),
], ids=["recorded", "leased-net1", "leased-net2", "built-net1", "built-net2"])
def test_add_unwinds_every_step_in_reverse_after_a_failure(step: str, nth: int, done: int) -> None:
    node = Node(Faults(step, nth))
    with pytest.raises(InternalError):
        node.call("ADD")
    assert node.events == DONE[:done] + [UNDO[e] for e in reversed(DONE[:done])]
    node.assert_nothing_left()
    assert len(node.publisher.failed_with) == 1 and step in node.publisher.failed_with[0]
    assert node.publisher.statuses == {}, "statuses written ahead of the build are put back"


class StatusWaitedFor(RecordingPublisher):
    """A publisher whose pod-status write says when it has begun."""

    def __init__(self) -> None:
        super().__init__()
        self.begun = threading.Event()

    def pod_status(self, pod: Pod, status: PodStatus | None) -> None:
        self.begun.set()
        super().pod_status(pod, status)


def test_the_pods_statuses_are_written_while_its_interfaces_are_built() -> None:
    node = Node(publisher=(publisher := StatusWaitedFor()))
    building = node.drivers["veth"].build

    def build_once_the_status_is_on_its_way(ctx: Any, iface: BuiltInterface, undo: Any) -> Any:
        assert publisher.begun.wait(5), "the statuses were not sent before the build"
        return building(ctx, iface, undo)

    node.drivers["veth"].build = build_once_the_status_is_on_its_way  # type: ignore[method-assign]
    node.call("ADD")
    stored = node.store.pod_status("uid-app")
    assert stored is not None and [e["ifName"] for e in stored.networks_status] == ["net1", "net2"]
    assert [(uid, s.networks_status, s.network_status) for uid, s in publisher.pod_statuses if s] == \
        [("uid-app", stored.networks_status, stored.network_status)], "written once, ahead, as the store has them"
    macs = [i.mac for i in node.store.attachments()[0].interfaces]
    assert [e["mac"] for e in stored.networks_status] == macs and all(macs), "the MACs chosen in the plan"


class SlowStatus(RecordingPublisher):
    def pod_status(self, pod: Pod, status: PodStatus | None) -> None:
        time.sleep(0.3)
        super().pod_status(pod, status)


def test_add_answers_once_the_statuses_written_ahead_have_landed() -> None:
    node = Node(publisher=SlowStatus())
    node.call("ADD")
    assert len(node.publisher.pod_statuses) == 1, "written before the ADD answered"


def test_statuses_written_ahead_are_put_back_when_a_build_fails() -> None:
    node = Node()
    node.drivers["macvlan"].fail_build["net2"] = 1
    with pytest.raises(InterfaceFailure):
        node.call("ADD")
    (ahead, back) = node.publisher.pod_statuses
    assert ahead[1] is not None and [e["ifName"] for e in ahead[1].networks_status] == ["net1", "net2"]
    assert back == ("uid-app", None), "the pod had no statuses before: they are removed"
    node.assert_nothing_left()


def test_a_build_that_turns_out_otherwise_writes_the_statuses_again() -> None:
    node = Node()
    node.drivers["veth"].foreseen_mac = "02:00:00:00:00:99"
    node.call("ADD")
    (ahead, after) = node.publisher.pod_statuses
    assert ahead[1] is not None and ahead[1].networks_status[0]["mac"] == "02:00:00:00:00:99"
    stored = node.store.pod_status("uid-app")
    assert after == ("uid-app", stored) and stored is not None and stored.networks_status[0]["mac"] != \
        "02:00:00:00:00:99", "the built one lands last"


def test_statuses_are_written_once_built_when_a_driver_cannot_tell_before() -> None:
    node = Node()
    node.drivers["macvlan"].unforeseen = True
    node.call("ADD")
    assert node.publisher.pod_statuses == [("uid-app", node.store.pod_status("uid-app"))]


def test_a_pool_default_route_left_to_the_pods_own_is_foreseen_and_the_statuses_written_once() -> None:
    """The pod has its own IPv4 default route (the cluster network's, in ``prevResult``) and net1's pool routes
    ``0.0.0.0/0``: the kernel side leaves that route out (``links.add_pool_route``). The statuses written ahead named
    it (and net1 the default-route gateway), so every such ADD wrote the pod's statuses a second time."""
    node = Node()
    node.source.add(obj("IPAddressPool", "pool-a", {"pools": [{"network": "198.18.40.0/24", "routes": [
        {"destination": "0.0.0.0/0", "via": "198.18.40.1"}, {"destination": "198.19.40.0/24", "via": "198.18.40.1"}]}]}))
    building = node.drivers["veth"].build

    def build_as_the_kernel(ctx: Any, iface: BuiltInterface, undo: Any) -> Any:  # the pod's own default stays
        return replace(building(ctx, iface, undo),
                       addresses=kernel.as_built(iface, [("0.0.0.0/0", "198.18.40.1")]).addresses)

    node.drivers["veth"].build = build_as_the_kernel  # type: ignore[method-assign]
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": NETNS}],
            "ips": [{"address": "198.18.92.2/24", "gateway": "198.18.92.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "198.18.92.1"}]}
    node.call("ADD", config={"prevResult": prev})
    stored = node.store.pod_status("uid-app")
    assert stored is not None and stored.networks_status[0]["ipAddressConfigs"][0]["routes"] == \
        [{"destination": "198.19.40.0/24", "via": "198.18.40.1"}]
    assert [(uid, s.networks_status, s.network_status) for uid, s in node.publisher.pod_statuses if s] == \
        [("uid-app", stored.networks_status, stored.network_status)], "written once, ahead, as built"


def _routed(if_name: str, routes: list[tuple[str, str]], **kw: Any) -> BuiltInterface:
    address = {"name": if_name, "address": "198.18.40.2", "network": "198.18.40.0/24",
               "routes": [{"destination": d, "via": v} for d, v in routes]}
    return BuiltInterface(if_name, "veth", "Network/apps/net-a", "Network", "net-a", addresses=(address,), **kw)


@pytest.mark.parametrize(("prev_routes", "ifaces", "kept"), [
    ([("0.0.0.0/0", "198.18.92.1")], [[("0.0.0.0/0", "198.18.40.1"), ("::/0", "2001:2::1")]], [["::/0"]]),
    ([("0.0.0.0/0", "198.18.40.1")], [[("0.0.0.0/0", "198.18.40.1")]], [["0.0.0.0/0"]]),  # the same route: the pod's
    ([], [[("0.0.0.0/0", "198.18.40.1")], [("0.0.0.0/0", "198.18.41.1")]], [["0.0.0.0/0"], []]),  # the first's stays
    (None, [[("0.0.0.0/0", "198.18.40.1")]], [["0.0.0.0/0"]]),
], ids=["other-family-kept", "same-gateway", "first-interface-wins", "no-prev"])
def test_foreseen_pool_default_routes_are_those_the_kernel_side_keeps(
        prev_routes: list[tuple[str, str]] | None, ifaces: list[list[tuple[str, str]]], kept: list[list[str]]) -> None:
    prev = None if prev_routes is None else Result.from_dict(
        {"cniVersion": "1.1.0", "routes": [{"dst": d, "gw": g} for d, g in prev_routes]})
    foreseen = kernel.as_foreseen([_routed(f"net{i}", r) for i, r in enumerate(ifaces)], prev)
    assert [[r["destination"] for a in i.addresses for r in a.get("routes", ())] for i in foreseen] == kept


def test_a_policy_routed_interface_keeps_its_pool_default_route_foreseen() -> None:
    """With a table the pool's routes go into it, not the main table: nothing is left to the pod's own default."""
    prev = Result.from_dict({"cniVersion": "1.1.0", "routes": [{"dst": "0.0.0.0/0", "gw": "198.18.92.1"}]})
    iface = _routed("net1", [("0.0.0.0/0", "198.18.40.1")], table=100)
    assert kernel.as_foreseen([iface], prev) == [iface]


class Killed(BaseException):
    """The daemon SIGKILLed at a step: nothing after it runs, what it committed stays in the store."""


def killed_at(wanted: str) -> Callable[[str], None]:
    def fault(step: str) -> None:
        if step == wanted:
            raise Killed(step)

    return fault


def test_a_daemon_killed_right_after_the_adds_commit_still_owes_what_the_add_made() -> None:
    node = Node(killed_at("add:committed"))
    api = client.ApiClient()
    outbox = Outbox(node.store, api_senders(api))  # not started, the API server away (below): every write owed
    kube = KubePublisher(api, "node-a", outbox)
    node.attacher.publisher, node.attacher.statuses = kube, PodStatusWriter(node.store, kube)
    outbox.unanswered()
    with pytest.raises(Killed):
        node.call("ADD")
    assert [a.state for a in node.store.attachments()] == ["ready"], "committed"
    owed = [(e.target, e.op) for e in node.store.outbox_head(100)]
    ips = sorted(r.key for r in node.store.all_ips())
    assert len(ips) == 2 and all((key, "create") in owed and (key, "patch_status") in owed for key in ips), owed
    events = [e.body["event"] for e in node.store.outbox_head(100) if e.op == "event"]
    assert [(e["reason"], e["message"].split(" ")[0]) for e in events] == \
        [("InterfaceAttached", "net1"), ("InterfaceAttached", "net2")], "an Event per interface, not lost"
    assert ("Pod/apps/app", "pod_status") in owed
    outbox.stop()


def test_statuses_that_live_in_the_store_only_are_written_nowhere() -> None:
    node = Node()
    node.publisher.remote = False
    node.call("ADD")
    assert node.store.pod_status("uid-app") is not None and node.publisher.pod_statuses == []


def test_a_driver_failing_after_its_side_effect_is_undone_with_everything_before_it() -> None:
    node = Node()
    node.drivers["macvlan"].fail_build["net2"] = 1
    with pytest.raises(InterfaceFailure):
        node.call("ADD")
    assert node.events == DONE + [UNDO[e] for e in reversed(DONE)]
    node.assert_nothing_left()


def test_add_records_each_interface_with_its_driver_state_then_del_needs_nothing_else() -> None:
    node = Node()
    result = node.call("ADD")
    assert [i["name"] for i in result["interfaces"]] == ["net1", "net2"]
    assert [ip["interface"] for ip in result["ips"]] == [0, 1], "each share renumbered into the whole result"
    (record,) = node.store.attachments()
    assert record.state == "ready"
    assert [(i.if_name, i.kind, i.driver["made-by"]) for i in record.interfaces] == [("net1", "veth", "veth"),
                                                                                       ("net2", "macvlan", "macvlan")]
    assert node.store.pod_status("uid-app") is not None
    node.source.remove("Network", NS, "net-a")  # DEL works with the objects gone
    node.source.remove("IPAddressPool", NS, "pool-b")
    node.events.clear()
    assert node.call("DEL") == {}
    assert node.events == ["teardown net2", "teardown net1", "forget record"], "the last built goes first"
    assert node.store.attachments() == [] and node.store.pod_statuses() == []
    assert node.live() == set()
    assert node.call("DEL") == {}, "DEL is idempotent"


def test_del_of_a_pod_that_is_gone_orphans_its_auto_addresses() -> None:
    node = Node()
    node.call("ADD")
    node.source.remove("Pod", NS, "app")
    node.call("DEL")
    leases = node.store.all_leases()
    assert len(leases) == 2 and all(lease.holder is None and lease.state == "orphaned" for lease in leases)
    assert node.store.all_ips() == []


def test_del_with_the_netns_gone_succeeds_and_tells_the_drivers() -> None:
    node = Node()
    node.call("ADD")
    node.netns.gone.add(NETNS)
    node.events.clear()
    assert node.call("DEL", netns="") == {}
    assert node.events[:2] == ["teardown net2 (netns gone)", "teardown net1 (netns gone)"]


def test_del_with_a_netns_that_cannot_be_opened_now_fails_and_keeps_the_addresses() -> None:
    """A namespace that is there but cannot be opened now (EMFILE, EACCES) is not one gone: the DEL fails with 11 (try
    again later, naming the namespace; not 105, a driver's failure) rather than take the pod's links for gone and let
    their addresses go. ``tests/netns/test_undo_gives_back.py`` has it from the kernel's EMFILE."""
    node = Node()
    node.call("ADD")

    @contextmanager
    def refused(path: str) -> Iterator[Any]:
        raise TryAgainLater(f"network namespace {path} cannot be opened", "[Errno 24] Too many open files")
        yield

    node.attacher.open_pod = refused
    with pytest.raises(TryAgainLater) as err:
        node.call("DEL")
    assert err.value.code == 11 and NETNS in err.value.msg and "Too many open files" in err.value.details
    assert [a.state for a in node.store.attachments()] == ["deleting"] and len(node.store.all_leases()) == 2
    node.attacher.open_pod = node.netns.open
    node.call("DEL")
    assert node.store.attachments() == [] and node.live() == set()


def undo_could_not_forget(node: Node) -> AttachmentRecord:
    """A failed ADD (net2's build) whose last undo step, forgetting its record, failed once (the store's I/O): the
    record it left."""
    node.drivers["macvlan"].fail_build["net2"] = 1
    real, failures = node.store.delete_attachment, [OSError("disk I/O error")]

    def delete_attachment(container_id: str, ifname: str) -> None:
        if failures:
            raise failures.pop()
        real(container_id, ifname)

    node.store.delete_attachment = delete_attachment  # type: ignore[method-assign]
    with pytest.raises(CniError):
        node.call("ADD")
    (stuck,) = node.store.attachments()
    return stuck


def test_a_kernel_interface_whose_undo_steps_failed_is_kept_once_for_the_runtimes_del() -> None:
    """net1's build made two kernel side effects (a link, an FDB entry: a macvlan's), net2's build fails, and both of
    net1's undo steps fail: each tells ``not_undone``, and the record keeps net1 once (DEL tears it down once), its
    address held until that DEL; net2's goes back with the undo."""
    node = Node()
    node.drivers["macvlan"].fail_build["net2"] = 1
    building = node.drivers["veth"].build

    def refused(what: str) -> None:
        raise OSError(errno.EBUSY, f"{what}: device or resource busy")

    def build_with_two_kernel_steps(ctx: BuildContext, iface: BuiltInterface, undo: contextlib.ExitStack) -> Any:
        done = building(ctx, iface, undo)
        for what in ("link", "FDB entry"):
            undo_in_kernel(undo, ctx.not_undone, iface, what, refused, what)
        return done

    node.drivers["veth"].build = build_with_two_kernel_steps  # type: ignore[method-assign]
    with pytest.raises(InterfaceFailure):
        node.call("ADD")
    (kept,) = node.store.attachments()
    assert kept.state == "deleting" and [i.if_name for i in kept.interfaces] == ["net1"]
    assert [lease.address for lease in node.store.all_leases()] == [kept.interfaces[0].addresses[0]["address"]]
    node.events.clear()
    assert node.call("DEL") == {}
    assert node.events == ["teardown net1", "forget record"] and node.store.attachments() == []


class CreatesTold(RecordingPublisher):
    """A publisher that remembers the Auto IPAddresses each ready ADD told it to create (their objects)."""

    def __init__(self) -> None:
        super().__init__()
        self.created: list[list[str]] = []

    def attached(self, pod: Pod, status: PodStatus, created: Iterable[IPRecord], used: Iterable[IPRecord]) -> None:
        self.created.append(sorted(r.name for r in created))
        super().attached(pod, status, created, used)


def net1_left_by_a_failed_add(node: Node) -> str:
    """ADD c1 fails at net2's build, and net1's link delete is refused once: the record is kept ``deleting`` with
    net1, which holds the Auto IPAddress that ADD made (never published: only a ready ADD tells it). Its name."""
    node.drivers["macvlan"].fail_build["net2"] = 1
    building, refusals = node.drivers["veth"].build, [OSError(errno.EBUSY, "link: device or resource busy")]

    def refused(what: str) -> None:
        if refusals:
            raise refusals.pop()

    def build(ctx: BuildContext, iface: BuiltInterface, undo: contextlib.ExitStack) -> Any:
        done = building(ctx, iface, undo)
        undo_in_kernel(undo, ctx.not_undone, iface, "link", refused, "link")
        return done

    node.drivers["veth"].build = build  # type: ignore[method-assign]
    with pytest.raises(InterfaceFailure):
        node.call("ADD")
    (kept,) = node.store.attachments()
    assert kept.state == "deleting" and [i.if_name for i in kept.interfaces] == ["net1"]
    (name,) = [r.name for r in node.store.all_ips()]
    return name


def test_the_auto_ipaddress_of_an_interface_a_failed_add_left_is_created_by_the_pods_next_add() -> None:
    """The failed ADD's Auto IPAddress of net1 survived its record's DEL (the pod still exists, and a pod's Auto ones
    outlive its sandboxes); the pod's next ADD reused it as not created, so it was never told to the publisher: in a
    cluster its object was missing (a restart makes only those a pod uses). The DEL of a record that never was ready
    lets go of what its ADD created once nothing uses it, as the ADD's undo would have (freed: no pod ran with it),
    and the next ADD makes it anew, and has its object made."""
    node = Node(publisher=(publisher := CreatesTold()))
    net1 = net1_left_by_a_failed_add(node)
    assert node.call("DEL") == {}
    left = (node.store.all_ips(), [(lease.holder, lease.state) for lease in node.store.all_leases()])
    node.call("ADD", container="c2")
    assert len(publisher.created) == 1 and net1 in publisher.created[0] and len(publisher.created[0]) == 2, \
        f"ADD c2 told to create {publisher.created}"
    assert left == ([], []), "let go with the interface that carried it, as the ADD's undo lets go of it"


def test_an_add_beside_a_failed_adds_left_interface_has_the_auto_ipaddress_it_reuses_created() -> None:
    """As above, but the pod's next sandbox is added before the failed one's DEL (its link still refused): the new
    ADD reuses the Auto IPAddress the failed one made, whose object was never made, and has it made; the late DEL of
    the failed one lets go of nothing the new sandbox uses."""
    node = Node(publisher=(publisher := CreatesTold()))
    net1 = net1_left_by_a_failed_add(node)
    out = node.call("ADD", container="c2")
    assert len(publisher.created) == 1 and net1 in publisher.created[0] and len(publisher.created[0]) == 2, \
        f"ADD c2 told to create {publisher.created}"
    assert node.call("DEL") == {}
    (rec,) = [r for r in node.store.all_ips() if r.name == net1]
    assert rec.used_by_uids == ("uid-app",) and rec.address in {i["address"].split("/")[0] for i in out["ips"]}
    assert len(node.store.all_leases()) == 2, "the new sandbox keeps both addresses"


def test_a_late_del_of_a_failed_add_quarantines_the_auto_ipaddress_a_ready_sandbox_used_since() -> None:
    """The pod's next sandbox used (and had made) the Auto IPAddress the failed ADD made, and was deleted before the
    failed one's record: that record's DEL lets it go as one a ready sandbox used, its address quarantined (it
    carried the pod's traffic), its object deleted (``auto_ip_gone``), never freed at once."""
    node = Node()
    gone: list[str] = []
    node.ipam.registry.auto_ip_gone = lambda rec: gone.append(rec.name)  # type: ignore[method-assign]
    net1 = net1_left_by_a_failed_add(node)
    node.call("ADD", container="c2")
    node.call("DEL", container="c2")
    assert net1 in {r.name for r in node.store.all_ips()}, "kept for the pod's next sandbox"
    assert node.call("DEL") == {}
    assert net1 not in {r.name for r in node.store.all_ips()} and gone == [net1]
    assert [lease.state for lease in node.store.all_leases() if not lease.holder] == ["orphaned"], \
        "quarantined, with the pool's leaseTTL"
    assert len(node.store.all_leases()) == 2, "net2's kept for the pod"


def test_an_add_whose_undo_could_not_forget_its_record_is_finished_by_the_reconciler() -> None:
    """A failed ADD's last undo step (``_forget_record``) runs ``quietly``: when its transaction fails, the record
    stays ``undoing`` (or ``adding``). ``_release_gone_pods`` takes only ready ones, ``finish_deletions`` only
    ``deleting`` ones: nothing but a restart's ``recover`` (or a runtime's DEL) finished it, and meanwhile it kept
    the pod's addresses from being forgotten. ``finish_deletions`` now finishes it, once no call holds it."""
    node = Node()
    stuck = undo_could_not_forget(node)
    assert stuck.state == "undoing"
    with node.attacher.locks.hold(("c1", "eth0")):  # an ADD of it in flight: not touched
        assert node.attacher.finish_deletions(older_than_s=0) == 0
    assert node.attacher.finish_deletions(older_than_s=0) == 1
    node.assert_nothing_left()


def test_del_of_an_interface_no_driver_knows_fails_and_keeps_the_addresses() -> None:
    node = Node()
    node.call("ADD")
    (record,) = node.store.attachments()
    odd = BuiltInterface(**{**{f: getattr(record.interfaces[0], f) for f in BuiltInterface.__slots__}, "kind": "odd"})
    node.store.put_attachment(AttachmentRecord(**{**{f: getattr(record, f) for f in AttachmentRecord.__slots__},
                                                  "interfaces": (odd, record.interfaces[1])}))
    with pytest.raises(InterfaceFailure) as err:
        node.call("DEL")
    assert err.value.code == 105 and "odd" in err.value.details
    assert "teardown net2" in node.events, "every interface is tried"
    assert len(node.store.all_leases()) == 2 and node.store.attachments()[0].state == "deleting"


def test_a_bridge_removed_behind_our_back_is_made_again() -> None:
    node = Node()
    node.call("ADD")  # the segments' bridges are set up and known
    node.call("DEL")
    bridge = node.store.segments()[0].bridge
    node.links.delete(bridge)
    node.drivers["veth"].fail_build["net1"] = 1  # the port cannot join the bridge that is gone
    node.call("ADD", container="c2")
    assert [c for c in node.links.calls if c[0] == "bridge" and c[1] == bridge][-1] == ("bridge", bridge, "")
    assert node.events.count("build net1") == 3


def test_repeated_add_answers_the_recorded_result() -> None:
    node = Node()
    first = node.call("ADD")
    node.events.clear()
    assert node.call("ADD") == first
    assert node.events == []


def test_check_asks_every_driver() -> None:
    node = Node()
    node.call("ADD")
    assert node.call("CHECK") == {}
    node.drivers["macvlan"].problems = ["net2 is down"]
    with pytest.raises(InterfaceFailure) as err:
        node.call("CHECK")
    assert err.value.details == "net2 is down"
    with pytest.raises(UnknownContainer):
        node.call("CHECK", container="other")


def test_gc_tears_down_what_is_not_valid_and_keeps_what_is() -> None:
    node = Node()
    node.call("ADD", container="keep")
    node.call("ADD", container="stale")
    node.call("GC", config={"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    assert [a.container_id for a in node.store.attachments()] == ["keep"]


def test_status_says_whether_the_daemon_is_ready() -> None:
    node = Node()
    assert node.call("STATUS") == {}
    node.attacher.ready = lambda: False
    with pytest.raises(PluginNotAvailable):
        node.call("STATUS")


def test_a_pod_the_source_has_not_seen_is_waited_for() -> None:
    node = Node()
    pod = node.source.get(POD, NS, "app")
    assert pod is not None
    node.source.remove("Pod", NS, "app")
    node.source.late[(NS, "app")] = pod
    node.call("ADD")
    assert node.source.waited == [(NS, "app")]
    node.source.late.clear()
    with pytest.raises(CniError) as err:
        node.call("ADD", container="c9")
    assert err.value.code == 3


def test_add_before_the_source_has_read_its_objects_answers_try_again_not_does_not_exist() -> None:
    node = Node()
    node.source.synced = False  # a daemon just started: its informers have not listed yet
    with pytest.raises(CniError) as err:
        node.call("ADD")
    assert err.value.code == 11 and "Network" in str(err.value), err.value
    node.assert_nothing_left()
    assert node.events == []
    node.source.synced = True
    assert node.call("ADD")["interfaces"]


def test_the_tap_driver_keeps_its_derived_names_in_the_record() -> None:
    request = InterfaceRequest("tap0", tap_uid=107, tap_gid=107)
    plan = TapDriver().plan(InterfaceKey("c1", "eth0", NETNS), request)
    assert plan.state is not None and plan.state["uid"] == 107 and not plan.configure_ips
    iface = BuiltInterface("tap0", "tap", "Network/ns/vm-net", "Network", "vm-net", host_link=plan.host_link,
                           driver=plan.state)
    names = _names(iface)
    assert (names.inner_bridge, names.inner_veth, names.temporary) == (
        plan.state["innerBridge"], plan.state["innerVeth"], plan.state["temporary"])
    old = BuiltInterface("tap0", "tap", "Network/ns/vm-net", "Network", "vm-net", host_link="plxabc")
    assert _names(old).inner_bridge == "plxabcb", "a record written before the names were kept still tears down"


def test_check_does_not_fail_a_pool_less_network_with_a_routing_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """A network without a pool, with routingTable and policyRoutes, got no policy routing (README), but its
    interface recorded the table anyway, and CHECK reported its routes missing for ever; now an interface with no
    addresses to route from records none."""
    node = Node()
    node.source.add(obj("Network", "plain", {"networkClass": "cls", "routingTable": 100,
                                             "policyRoutes": [{"destination": "0.0.0.0/0", "via": "198.18.5.1"}]}))
    node.source.add(obj("Pod", "app", {}, uid="uid-app", annotations={
        "network.deckhouse.io/networks-spec": json.dumps([{"type": "Network", "name": "plain", "ifName": "net1"}])}))
    node.call("ADD")  # README: "a network without a pool gets no policy routing"
    (att,) = node.store.attachments()
    (iface,) = att.interfaces
    pod = PodNetlink()
    with contextlib.ExitStack() as undo:
        kernel.configure(pod, 7, iface, undo)  # what the veth/macvlan drivers do after making the link
    assert pod.rules == [] and pod.routes == {}, "nothing is configured: no addresses"
    monkeypatch.setattr(links, "link_state", lambda ipr, name: {"name": name, "mac": iface.mac, "up": True,
                                                                "addresses": [], "routes": [], "kind": "veth"})
    problems = kernel.check(object(), pod, replace_host_link(iface))
    assert problems == [], f"CHECK of a freshly added, untouched pod fails for ever: {problems}"


def replace_host_link(iface: BuiltInterface) -> BuiltInterface:
    from dataclasses import replace
    return replace(iface, host_link="")  # (the host side is not what this test is about)


class HostNetlink:
    def __init__(self, pod: Any) -> None:
        self.pod = pod

    def link(self, cmd: str, **kw: Any) -> Any:
        if cmd == "add":  # made straight into the pod (net_ns_fd)
            self.pod.links[kw["ifname"]] = 42
            return None
        raise AssertionError(cmd)


class MacvlanPod:
    def __init__(self) -> None:
        self.links: dict[str, int] = {}
        self.deleted: list[str] = []

    def link(self, cmd: str, **kw: Any) -> Any:
        if cmd == "get":
            if kw["ifname"] not in self.links:
                raise NetlinkError(errno.ENODEV, "No such device")
            return [{"index": self.links[kw["ifname"]]}]
        if cmd == "set":
            raise NetlinkError(errno.EADDRINUSE, "Address already in use")
        if cmd == "del":
            self.deleted.append(kw["ifname"])
            self.links.pop(kw["ifname"], None)
            return None
        raise AssertionError(cmd)


class PodSide:
    def __init__(self, nl: Any) -> None:
        self.nl, self.path, self.fd = nl, "/run/netns/app", 5

    def netlink(self) -> Any:
        return self.nl


def test_a_macvlan_that_cannot_be_brought_up_is_undone_and_answered_with_code_105(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A macvlan made in the pod that could not be brought up (EADDRINUSE: its MAC another macvlan's on the same
    bridge, e.g. a fixed "mac" in networks-spec) was left behind, and the error escaped as a raw NetlinkError (999);
    now its undo is registered before it is brought up, and the failure is an InterfaceFailure (105)."""
    monkeypatch.setattr("ipamd.netlink.links.ignore_router_advertisements", lambda fd, if_name: None)  # a sysctl
    pod = MacvlanPod()
    iface = BuiltInterface(if_name="net2", kind="macvlan", network_key="Network/apps/net-b", network_type="Network",
                           network_name="net-b", host_link="", bridge="plx-br-601", mac="02:00:00:00:00:01")
    ctx = BuildContext(HostNetlink(pod), PodSide(pod), lambda: 11)
    raised: BaseException | None = None
    try:
        with contextlib.ExitStack() as undo:
            MacvlanDriver().build(ctx, iface, undo)
    except BaseException as exc:  # noqa: BLE001
        raised = exc
    assert raised is not None
    assert pod.links == {}, f"the failed ADD left macvlan {list(pod.links)} in the pod (no undo registered yet)"
    assert isinstance(raised, CniError) and raised.code == 105, f"answered with {raised!r}, not a CNI error 105"



def test_a_cluster_network_whose_class_is_missing_is_object_not_found() -> None:
    """A ClusterNetwork naming a NetworkClass that does not exist was answered "no free VLAN ID" (100, naming
    spec.vlan.idPool), as a Network's missing class is not: now 103 naming spec.networkClass."""
    node = Node()
    node.source.add(obj("ClusterNetwork", "pub", {"type": "VLAN", "networkClass": "nope"}, namespaced=False))
    node.source.add(obj("Pod", "app", {}, uid="uid-app", annotations={
        "network.deckhouse.io/networks-spec": json.dumps([{"type": "ClusterNetwork", "name": "pub"}])}))
    with pytest.raises(CniError) as err:
        node.call("ADD")
    assert err.value.code == 103 and "networkClass" in err.value.details, (
        f"code {err.value.code} {err.value.msg!r} (field {err.value.details}) for a ClusterNetwork whose class is "
        "missing")


# ---------------------------------------------------------------------------------------------------------------------
# 10. Segments: two untagged Networks of a class naming a parent NIC both take that NIC as their bridge's uplink; the
#     second silently steals it from the first bridge (a NIC is a port of one bridge), cutting its pods off the wire.


def test_a_tap_whose_name_is_taken_in_the_pod_is_refused_without_removing_the_other_link() -> None:
    """The TAP driver registered its undo (remove the TAP's names from the pod) before ``add_tap`` refused a name
    already taken there: the refusal then deleted the other interface (the cluster network's eth0, say)."""
    request = InterfaceRequest("eth0")
    plan = TapDriver().plan(InterfaceKey("c1", "eth0", NETNS), request)
    iface = BuiltInterface("eth0", "tap", "Network/ns/vm-net", "Network", "vm-net", host_link=plan.host_link,
                           driver=plan.state or {})
    pod = MacvlanPod()
    pod.links["eth0"] = 2  # the cluster network's
    ctx = BuildContext(HostNetlink(pod), PodSide(pod), lambda: 11)
    with pytest.raises(CniError) as err, contextlib.ExitStack() as undo:
        TapDriver().build(ctx, iface, undo)
    assert err.value.code == 105 and pod.deleted == [] and pod.links == {"eth0": 2}, pod.deleted


# -- CHECK consults prevResult (SPEC 1.x "CHECK": "The plugin must consult the prevResult") -----------------------

def test_check_fails_when_prev_result_lists_an_address_the_attachment_does_not_have() -> None:
    node = Node()
    result = node.call("ADD")
    prev = {**result, "ips": [{**ip, "address": "198.18.40.250/24"} for ip in result["ips"]]}
    assert prev["ips"] != result["ips"]
    with pytest.raises(CniError):
        node.call("CHECK", config={"prevResult": prev})


def test_check_holds_the_result_add_gave_even_after_the_network_plexus_is_chained_after() -> None:
    node = Node()
    result = node.call("ADD")
    cluster = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "mac": "0a:58:0a:00:00:05", "sandbox": "/x"}],
               "ips": [{"address": "10.0.0.5/24", "interface": 0}]}
    assert node.call("CHECK", config={"prevResult": result}) == {}
    whole = Result.from_dict(result).merged_after(Result.from_dict(cluster)).to_dict()
    assert node.call("CHECK", config={"prevResult": whole}) == {}
    other_mac = {**result, "interfaces": [{**result["interfaces"][0], "mac": "02:00:00:00:00:99"},
                                          *result["interfaces"][1:]]}
    with pytest.raises(InterfaceFailure) as err:
        node.call("CHECK", config={"prevResult": other_mac})
    assert "net1" in err.value.details and "02:00:00:00:00:99" in err.value.details
    moved = {**result, "ips": [{**result["ips"][0], "address": "198.18.40.250/24"}, *result["ips"][1:]]}
    with pytest.raises(InterfaceFailure) as err:
        node.call("CHECK", config={"prevResult": moved})
    assert "net1" in err.value.details and "198.18.40.250/24" in err.value.details


# -- STATUS (SPEC 1.1 "STATUS": "If the plugin knows that it cannot service ADD requests, it must exit with a
#    non-zero return code") -------------------------------------------------------------------------------------

def test_status_is_not_available_while_the_readiness_indicator_file_is_missing(tmp_path: Path) -> None:
    """ADD would wait for the file and then answer 11; STATUS says ready all along."""
    node = Node()
    with pytest.raises(PluginNotAvailable):
        node.call("STATUS", config={"readinessindicatorfile": str(tmp_path / "missing")})


def test_status_is_ready_once_the_readiness_indicator_file_exists(tmp_path: Path) -> None:
    node = Node()
    (tmp_path / "ready").write_text("")
    assert node.call("STATUS", config={"readinessindicatorfile": str(tmp_path / "ready")}) == {}


def test_gc_leaves_an_attachment_whose_add_was_in_flight_when_it_listed() -> None:
    """GC lists the attachments, then tears each stale one down under its lock. One whose ADD was in flight when GC
    listed it (not in the runtime's list of valid attachments yet) has finished by the time GC holds its lock: it is
    left, not torn down under the pod that just got it."""
    import threading
    from dataclasses import replace

    node = Node()
    node.call("ADD", container="busy")
    done = node.store.get_attachment("busy", "eth0")
    assert done is not None
    with node.store.transaction():
        node.store.put_attachment(replace(done, state="adding"))  # as GC will list it: mid-ADD
    key = ("busy", "eth0")
    with node.attacher.locks.hold(key):  # the ADD holds its attachment
        gc = threading.Thread(target=node.call, args=("GC",), kwargs={"config": {"cni.dev/valid-attachments": []}})
        gc.start()
        deadline = time.monotonic() + 5
        while node.attacher.locks._locks[key][1] < 2 and time.monotonic() < deadline:  # GC listed it, waits for it
            time.sleep(0.01)
        with node.store.transaction():
            node.store.put_attachment(done)  # the ADD finishes
    gc.join(5)
    assert not gc.is_alive()
    assert node.store.get_attachment("busy", "eth0") == done, "GC tore down an ADD that finished while it waited"

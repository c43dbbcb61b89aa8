"""The controller, mended after a review (each failing on the code before its fix): a Lease handed back keeps no 1 s
duration for the next holder; an ID just granted is not granted again; a ClusterNetwork's refused fixed ID is not
served; users' Auto IPAddresses get their status; a network moved from a VXLAN class to a VLAN class; a user's Auto
IPAddress never holds the controller's lease beside a node's, nor one of a pool its network left, or a gateway."""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ipamd.kube.controller import Controller
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.model.segments import granted_id
from ipamd.model.timefmt import rfc3339_micro
from tests.fakes.cluster import FakeApi
from tests.unit.test_attacher import NS
from tests.unit.test_attacher import obj as aobj
from tests.unit.test_controller_segments import controller as seg_controller
from tests.unit.test_controller_segments import obj, statuses


# -- the election ---------------------------------------------------------------------------------------------------
class Clock:
    """The true time, and each replica's wall clock as an offset from it."""

    def __init__(self) -> None:
        self.true = 1_000_000.0
        self.skew = 0.0  # the wall clock of the replica acting now

    def wall(self) -> float:
        return self.true + self.skew


class FakeCoord:
    """coordination.k8s.io/v1 Leases as the API server keeps them: create-if-absent, replace at the resourceVersion."""

    def __init__(self) -> None:
        self.lease: client.V1Lease | None = None
        self.version = 0

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> client.V1Lease:
        if self.lease is None:
            raise ApiException(status=404, reason="NotFound")
        return copy.deepcopy(self.lease)

    def create_namespaced_lease(self, namespace: str, body: dict[str, Any], **_: Any) -> None:
        if self.lease is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        spec = body["spec"]
        self.version += 1
        self.lease = client.V1Lease(
            metadata=client.V1ObjectMeta(name=body["metadata"]["name"], resource_version=str(self.version)),
            spec=client.V1LeaseSpec(holder_identity=spec["holderIdentity"],
                                    lease_duration_seconds=spec["leaseDurationSeconds"],
                                    renew_time=datetime.fromisoformat(spec["renewTime"].replace("Z", "+00:00")),
                                    lease_transitions=0))

    def replace_namespaced_lease(self, name: str, namespace: str, body: Any, **_: Any) -> None:
        assert self.lease is not None
        if body.metadata.resource_version != self.lease.metadata.resource_version:  # type: ignore[union-attr]
            raise ApiException(status=409, reason="Conflict")
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease.metadata.resource_version = str(self.version)  # type: ignore[union-attr]


def _replicas(monkeypatch: pytest.MonkeyPatch, clock: Clock, *names: str) -> tuple[Controller, ...]:
    class _Dt:
        @staticmethod
        def now(tz: Any = None) -> datetime:
            return datetime.fromtimestamp(clock.wall(), tz or UTC)

    monkeypatch.setattr(time, "monotonic", lambda: clock.true)  # each replica's own monotonic clock: true time
    monkeypatch.setattr("ipamd.kube.elector.time", SimpleNamespace(time=clock.wall, monotonic=lambda: clock.true))
    monkeypatch.setattr("ipamd.kube.elector.datetime", _Dt)
    monkeypatch.setattr("ipamd.kube.elector.rfc3339_micro", lambda ts=None: rfc3339_micro(clock.wall()))
    coord = FakeCoord()
    made = []
    for name in names:
        src = SimpleNamespace(objects=None, node_name=name, subscribe=lambda *a: None, ready=lambda *a: False)
        ctl = Controller(client.ApiClient(), src, "plexus-system")
        ctl.identity = ctl.elector.identity = name
        ctl.elector.coord = coord  # type: ignore[assignment]
        made.append(ctl)
    return tuple(made)


def test_a_lease_handed_back_keeps_its_one_second_duration_for_the_next_holder(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rollout: replica A stops and hands the Lease back (``release``: holder "", leaseDurationSeconds 1). B takes
    it over (``try_acquire`` sets holder, renewTime, acquireTime, transitions -- never leaseDurationSeconds), so the
    Lease B holds says it expires 1 s after each renewal, while B renews every 2 s (its round interval) and acts for
    10 s after each renewal (its own 15 s duration's renew deadline). The new replica C, started by the rollout,
    finds the Lease expired 1 s after B's renewal and takes it over while B still acts: two leaders."""
    clock = Clock()
    a, b, c = _replicas(monkeypatch, clock, "a", "b", "c")
    a.run_once()
    assert a.leading
    b.run_once()
    assert not b.leading
    a.stop()  # the rollout stops A: it hands the Lease back
    clock.true += 1.5
    b.run_once()
    assert b.acting, "B takes the Lease over at once"
    clock.true += 1.5  # B's next renewal is due 2 s after the last one
    c.run_once()
    coord: Any = c.elector.coord
    assert not (b.acting and c.leading), (
        f"two replicas act as leader: B (renewed 1.5 s ago, acting for 10 s) and C, which found the Lease "
        f"(leaseDurationSeconds={coord.lease.spec.lease_duration_seconds}) expired")



def test_a_standby_whose_clock_is_ahead_does_not_take_the_lease_while_the_leader_renews(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The Lease's expiry was judged as its renewTime (the holder's clock) plus its duration against the standby's
    wall clock: a standby 20 s ahead took it over between two renewals of a leader that still acted. As client-go's
    leaderelection does, a Lease expires a duration after this replica last saw it change (its own monotonic clock);
    one handed back (no holder) is taken at once, and one no longer renewed still expires."""
    clock = Clock()
    a, b = _replicas(monkeypatch, clock, "a", "b")
    a.run_once()
    assert a.leading
    clock.skew = 20.0  # B's wall clock runs 20 s ahead
    b.run_once()
    assert not b.leading, "A renewed a moment ago"
    for _ in range(3):
        clock.skew = 0.0
        clock.true += 2
        a.run_once()  # A renews every 2 s
        clock.skew = 20.0
        b.run_once()
        assert not (a.acting and b.leading), "two leaders: B took the Lease over from a leader that renews"
    clock.true += 16  # A died: not renewed for longer than the duration
    b.run_once()
    assert b.leading, "a Lease no longer renewed is taken over"


def test_an_id_just_granted_is_not_granted_again_before_the_cache_shows_it() -> None:
    """Round 1 grants ClusterNetwork ``public`` (no fixed ID: from the pool) VLAN 600 (status written). Before the
    controller's informer shows that write, the next round runs (woken by a new Network's event, on another watch):
    ``held`` is built from the cache alone, so Network ``ns/new`` (listed before the ClusterNetworks) is given 600, and
    ``public``, picked again, gets 601: its status goes 600 -> 601 under the pods the nodes already put on VLAN 600,
    and two Networks are on VLAN 600 meanwhile. ``_written`` knows what was granted; ``held`` ignores it."""
    ctl, src = seg_controller(obj("ClusterNetwork", "public", {"type": "VLAN", "networkClass": "vl"}, uid="up"))
    ctl.assign_segments()
    assert statuses(src)["public"]["vlanID"] == 600
    src.add(obj("Network", "new", {"networkClass": "vl"}, uid="un"))  # the informer: `public`'s status not seen yet
    ctl.assign_segments()
    got = statuses(src)
    assert got["public"]["vlanID"] == 600, f"public's granted VLAN ID moved from 600 to {got['public']['vlanID']}"
    assert got["new"]["vlanID"] != 600, "VLAN 600 granted to a second Network"


def test_two_cluster_networks_fixed_on_one_vlan_id_are_not_both_used_by_the_nodes() -> None:
    """Two ClusterNetworks whose ``spec.vlan.id`` is 42. The controller refuses the second (Ready=False, "already used
    by ClusterNetwork/a", status.vlanID 0) -- but a node takes a ClusterNetwork's ID from ``granted_id``, which is its
    status ID *or its spec's*: the second is served on VLAN 42 by every node that does not carry the first (a node
    refuses only an ID its own store holds), and the two networks share one wire VLAN. The same for a ClusterNetwork
    fixed on an ID the controller already granted a Network."""
    ctl, src = seg_controller(
        obj("ClusterNetwork", "a", {"type": "VLAN", "networkClass": "vl", "vlan": {"id": 42}}, uid="ua"),
        obj("ClusterNetwork", "b", {"type": "VLAN", "networkClass": "vl", "vlan": {"id": 42}}, uid="ub"),
        obj("Network", "n", {"networkClass": "vl"}, {"vlanID": 600}, uid="un"),
        obj("ClusterNetwork", "c", {"type": "VLAN", "networkClass": "vl", "vlan": {"id": 600}}, uid="uc"))
    ctl.assign_segments()
    got = statuses(src)
    ready = {n: next(c for c in s["conditions"] if c["type"] == "Ready")["status"] for n, s in got.items()}
    assert ready["b"] == "False" and ready["c"] == "False", "the controller refuses both"
    as_nodes_see = {name: granted_id(obj("ClusterNetwork", name, {"type": "VLAN", "networkClass": "vl",
                                                                 "vlan": {"id": fixed}}, got[name]))
                    for name, fixed in (("a", 42), ("b", 42), ("c", 600))}
    assert as_nodes_see["b"] is None and as_nodes_see["c"] is None, (
        f"the IDs the nodes use (granted_id): {as_nodes_see}: ClusterNetwork b on VLAN 42 beside a, c on VLAN 600 "
        "beside Network ns/n, although the controller refused both")



# -- users' Auto IPAddresses ---------------------------------------------------------------------------------------
def test_a_users_auto_ipaddress_whose_status_write_failed_gets_it_in_a_later_round(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller leases a user's Auto IPAddress and writes its status (``_ip_status``): that one write meets a
    503 (or a timeout) and is only logged. Every later round skips the IPAddress (``obj.meta.key in held``: it holds
    a lease), so its status never shows the address nor ``phase: Allocated``."""
    from tests.unit.test_api_away_answers import user_auto_controller

    api, ctl, now = user_auto_controller(monkeypatch)
    patch_status, failed = api.patch_status, list[str]()

    def once_503(kind: str, name: str, status: dict[str, Any], *a: Any, **k: Any) -> Any:
        if kind == "IPAddress" and not failed:
            failed.append(name)
            raise ApiException(status=503, reason="Service Unavailable")
        return patch_status(kind, name, status, *a, **k)

    api.patch_status = once_503  # type: ignore[method-assign]
    ctl.allocate_user_ipaddresses()
    assert failed and [o["spec"]["holder"] for o in api.objs[LEASE_KIND].values()] == ["IPAddress/ns/user-auto"]
    for _ in range(3):  # later rounds, past ALLOCATED_S
        now[0] += 61
        ctl.allocate_user_ipaddresses()
    status = api.objs["IPAddress"]["ns/user-auto"].get("status") or {}
    assert status.get("phase") == "Allocated" and status.get("address"), \
        f"the IPAddress holds a lease, but its status was never written: {status}"


def test_a_users_auto_ipaddress_made_again_under_the_same_name_gets_its_status(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A user deletes an unused Auto IPAddress and applies it again (``kubectl replace --force``, a GitOps re-sync)
    within ``UNUSED_GONE_S``: the controller's lease, held by the key ``IPAddress/ns/user-auto``, is the new object's,
    but the new object's status is empty and every round skips it (``obj.meta.key in held``): no phase, no address."""
    from tests.fakes.cluster import served_by
    from tests.unit.test_ipam import obj as ipam_obj
    from tests.unit.test_lease_versions import ControllerSource
    from tests.unit.test_lease_versions import controller as lease_controller

    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    api = FakeApi()
    src = ControllerSource(api)
    served_by(api, src.src)
    spec = {"networkRef": {"kind": "Network", "name": "small-net"}}
    src.src.add(ipam_obj("IPAddress", "user-auto", spec, uid="first"))
    ctl = lease_controller(src)
    ctl.allocate_user_ipaddresses()
    assert api.objs["IPAddress"]["ns/user-auto"]["status"]["phase"] == "Allocated"
    src.src.remove("IPAddress", "ns", "user-auto")
    src.src.add(ipam_obj("IPAddress", "user-auto", spec, uid="second"))  # made again: a new object, no status
    for _ in range(3):
        now[0] += 61
        ctl.allocate_user_ipaddresses()
    status = api.objs["IPAddress"]["ns/user-auto"].get("status") or {}
    assert status.get("phase") == "Allocated" and status.get("address"), \
        f"the IPAddress made again holds the lease, but its status is never written: {status}"



def test_a_network_moved_from_a_vxlan_class_to_a_vlan_class_gets_a_vlan_id() -> None:
    """Network ns/a was given VNI 5000 by its VXLAN class (status ``vni: 5000``); its ``spec.networkClass`` is edited to
    the VLAN class (pool 600-601; nothing refuses the edit). ``_status_id`` reads ``vni or vlanID``, so the VNI is
    taken for a granted VLAN ID: the status says ``vlanID: 5000`` (not a VLAN ID at all), bridge plx-br-5000, Ready --
    and every node refuses the network's ADDs (``pick_id``: VLAN ID 5000 is not in the class's pool). Nothing ever
    gives it an ID of its class."""
    ctl, src = seg_controller(obj("Network", "a", {"networkClass": "vl"},
                                  {"vlanID": 0, "vni": 5000, "bridgeName": "plx-vb-5000"}, uid="ua"))
    ctl.assign_segments()
    got = statuses(src)["a"]
    assert 1 <= got["vlanID"] <= 4094 and got["vlanID"] in (600, 601), f"the status after the class edit: {got}"
    assert "vni" in got and got["vni"] is None, f"the merge patch keeps the old VNI: {got}"
    assert got["bridgeName"] == f"plx-br-{got['vlanID']}"



def _shown_source(api: FakeApi, pools: list[dict[str, str]]) -> Any:
    """The controller's view (``ControllerSource``) whose IPAddress items are the API's objects, statuses included, as
    the informer shows them; over pool ``ds`` (``leaseTTL: 1h``, ``pools``) of network ``ds-net``."""
    from tests.fakes.cluster import served_by
    from tests.unit.test_ipam import network
    from tests.unit.test_ipam import obj as ipam_obj
    from tests.unit.test_lease_versions import ControllerSource

    class Shown(ControllerSource):
        def items(self, kind: str) -> list[dict[str, Any]]:
            if kind != "IPAddress":
                return super().items(kind)
            return [{**o, "metadata": {**o["metadata"], "namespace": key.partition("/")[0]}}
                    for key, o in copy.deepcopy(api.objs["IPAddress"]).items()]

    src = Shown(api)
    served_by(api, src.src)
    src.src.add(ipam_obj("IPAddressPool", "ds", {"leaseTTL": "1h", "pools": pools}))
    src.src.add(network("ds-net", "ds"))
    return src


def _allocated(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or () if c["type"] == "Allocated")


def _as_the_node_refuses(name: str, family: int, pool: Any) -> str:
    """The message the node records on a user's Auto IPAddress naming ``family`` that ``pool`` lacks
    (``_refused_pending``, from ``family_view``'s refusal)."""
    from cni.errors import InvalidConfig
    from ipamd.ipam.addresses import family_view
    from ipamd.store.records import IPRecord

    rec = IPRecord(f"IPAddress/ns/{name}", "IPAddress", "ns", name, "Network", "ds-net", family=family)
    with pytest.raises(InvalidConfig) as refused:
        family_view(rec, pool)
    return refused.value.msg


def test_a_users_auto_ipaddress_whose_pool_dropped_its_family_goes_pending_and_lets_its_lease_go(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``spec.ipFamily: IPv6`` on a dual-stack pool, leased by the controller; the pool's IPv6 entry removed. A node
    records such an IPAddress Pending (``Allocated=False``, ``IPAddressOutsidePool``) and lets its lease go once no
    pod uses it (``_refused_pending``); the controller, which leases users' Auto IPAddresses in a cluster, kept its
    status Allocated and its lease (``_complete_status`` found no subnet, and said nothing) until the IPAddress was
    deleted. One a node took up (a pod there uses it) stays that node's."""
    from ipamd.ipam.addresses import OUTSIDE_POOL
    from ipamd.kube.leases import NODE_LABEL
    from ipamd.model.objects import IP_ADDRESS_POOL
    from tests.unit.test_ipam import obj as ipam_obj

    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    api = FakeApi()
    four, six = {"network": "198.18.96.0/24"}, {"network": "2001:2:0:96::/64"}
    src = _shown_source(api, [four, six])
    ref = {"networkRef": {"kind": "Network", "name": "ds-net"}}
    for name in ("u6", "used6"):
        src.src.add(ipam_obj("IPAddress", name, {**ref, "ipFamily": "IPv6"}, uid=f"uid-{name}"))
    ctl = Controller(client.ApiClient(), src, "plexus-system")
    ctl.allocate_user_ipaddresses()
    leases = {o["spec"]["holder"]: name for name, o in api.objs[LEASE_KIND].items()}
    assert set(leases) == {"IPAddress/ns/u6", "IPAddress/ns/used6"}
    address = api.objs["IPAddress"]["ns/u6"]["status"]["address"]
    assert ":" in address
    api.patch(LEASE_KIND, leases["IPAddress/ns/used6"], {"metadata": {"labels": {NODE_LABEL: "n1"}}})  # taken up
    used_status = copy.deepcopy(api.objs["IPAddress"]["ns/used6"]["status"])
    src.src.add(ipam_obj("IPAddressPool", "ds", {"leaseTTL": "1h", "pools": [four]}))  # IPv6 drained
    for _ in range(3):
        now[0] += 61
        ctl.allocate_user_ipaddresses()
    status = api.objs["IPAddress"]["ns/u6"]["status"]
    cond = _allocated(status)
    assert (status["phase"], status["address"], cond["status"]) == ("Pending", "", "False"), \
        f"u6 names IPv6, which its pool no longer has: its status {status}"
    pool = src.src.get(IP_ADDRESS_POOL, "ns", "ds")
    assert (cond["reason"], cond["message"]) == (OUTSIDE_POOL, _as_the_node_refuses("u6", 6, pool)), \
        "as a node says it"
    lease = api.objs[LEASE_KIND][leases["IPAddress/ns/u6"]]
    assert lease["spec"].get("holder") is None and lease["status"].get("orphaningTimestamp"), \
        f"its lease let go (quarantined, as a node lets it go): {lease}"
    assert [o["spec"].get("holder") for o in api.objs[LEASE_KIND].values()].count("IPAddress/ns/u6") == 0, \
        "nothing leased anew"
    writes = api.calls["patch_status IPAddress"]
    now[0] += 61
    ctl.allocate_user_ipaddresses()
    assert api.calls["patch_status IPAddress"] == writes, "shown already: not written again every round"
    taken = api.objs[LEASE_KIND][leases["IPAddress/ns/used6"]]
    assert taken["spec"]["holder"] == "IPAddress/ns/used6" and not (taken.get("status") or {}), \
        "a node's lease is that node's to let go"
    assert api.objs["IPAddress"]["ns/used6"]["status"] == used_status, "its status is the node's to write"


def test_a_users_auto_ipaddress_naming_a_family_its_pool_lacks_is_pending_for_that_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An Auto IPAddress naming IPv6 of a pool with none (the pool drained before it was leased): ``NoFreeIPAddress``
    ("pool has no free address") said the controller; the node says why (``IPAddressOutsidePool``)."""
    from ipamd.ipam.addresses import OUTSIDE_POOL
    from ipamd.model.objects import IP_ADDRESS_POOL
    from tests.unit.test_ipam import obj as ipam_obj

    monkeypatch.setattr(time, "monotonic", lambda: 1000.0)
    api = FakeApi()
    src = _shown_source(api, [{"network": "198.18.97.0/24"}])
    src.src.add(ipam_obj("IPAddress", "u6", {"networkRef": {"kind": "Network", "name": "ds-net"}, "ipFamily": "IPv6"},
                         uid="uid-u6"))
    Controller(client.ApiClient(), src, "plexus-system").allocate_user_ipaddresses()
    status = api.objs["IPAddress"]["ns/u6"]["status"]
    cond = _allocated(status)
    pool = src.src.get(IP_ADDRESS_POOL, "ns", "ds")
    assert (status["phase"], cond["status"], cond["reason"], cond["message"]) == \
        ("Pending", "False", OUTSIDE_POOL, _as_the_node_refuses("u6", 6, pool)), status
    assert not api.objs[LEASE_KIND]


def test_a_users_auto_ipaddress_holding_a_family_its_pool_dropped_is_leased_anew_in_the_pools_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``spec.ipFamily``: the family it holds while its pool has it, else the pool's first (``asked_family``). Its
    pool was IPv6 alone and is IPv4 alone now: a node lets the IPv6 lease go and leases an IPv4 address (``lease_for``:
    ``starts_over``); the controller kept the IPv6 address Allocated."""
    from ipamd.ipam.allocator import family_of, to_int
    from tests.unit.test_ipam import obj as ipam_obj

    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    api = FakeApi()
    src = _shown_source(api, [{"network": "2001:2:0:97::/64"}])
    src.src.add(ipam_obj("IPAddress", "plain", {"networkRef": {"kind": "Network", "name": "ds-net"}}, uid="uid-p"))
    ctl = Controller(client.ApiClient(), src, "plexus-system")
    ctl.allocate_user_ipaddresses()
    (six,) = api.objs[LEASE_KIND]
    src.src.add(ipam_obj("IPAddressPool", "ds", {"leaseTTL": "1h", "pools": [{"network": "198.18.98.0/24"}]}))
    for _ in range(2):
        now[0] += 61
        ctl.allocate_user_ipaddresses()
    status = api.objs["IPAddress"]["ns/plain"]["status"]
    assert status["phase"] == "Allocated" and status["address"].startswith("198.18.98."), status
    assert api.objs[LEASE_KIND][six]["spec"].get("holder") is None, "the IPv6 lease let go"
    held = [o for o in api.objs[LEASE_KIND].values() if o["spec"].get("holder") == "IPAddress/ns/plain"]
    assert [family_of(to_int(o["spec"]["ip"])) for o in held] == [4]


def test_a_users_auto_ipaddress_made_again_naming_another_family_is_leased_in_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Made again under its name with ``spec.ipFamily: IPv6`` (it held IPv4 from the dual-stack pool): a node lets the
    old record's address go and leases one of the family named (``made_again``); the controller, its lease held by
    the name, wrote the IPv4 address into the new object's status."""
    from tests.unit.test_ipam import obj as ipam_obj

    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    api = FakeApi()
    src = _shown_source(api, [{"network": "198.18.99.0/24"}, {"network": "2001:2:0:99::/64"}])
    ref = {"networkRef": {"kind": "Network", "name": "ds-net"}}
    src.src.add(ipam_obj("IPAddress", "m", ref, uid="first"))
    ctl = Controller(client.ApiClient(), src, "plexus-system")
    ctl.allocate_user_ipaddresses()
    assert api.objs["IPAddress"]["ns/m"]["status"]["address"].startswith("198.18.99.")
    src.src.remove("IPAddress", "ns", "m")
    src.src.add(ipam_obj("IPAddress", "m", {**ref, "ipFamily": "IPv6"}, uid="second"))
    for _ in range(2):
        now[0] += 61
        ctl.allocate_user_ipaddresses()
    status = api.objs["IPAddress"]["ns/m"]["status"]
    assert status["phase"] == "Allocated" and ":" in status["address"], status
    held = [o["spec"]["ip"] for o in api.objs[LEASE_KIND].values() if o["spec"].get("holder") == "IPAddress/ns/m"]
    assert held == [status["address"]], "the IPv4 lease let go"


# -- a user's Auto IPAddress the controller leases while a node's ADD takes it up or leases it ------------------------
U = f"IPAddress/{NS}/u"


class _NodeAndController:
    """A kube node (``KubeNode``: blocks, its outbox) and the controller over one fake API server, around pool ``ds``
    (``leaseTTL: 1h``, ``pools``) of network ``ds-net`` and a user's Auto IPAddress ``u`` of it. The controller sees the
    node's objects, and the IPAddresses as the API server has them (the statuses written, the pod a node wrote on one);
    its lease cache is live, or as of its last ``sync()``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, pools: list[dict[str, str]], live: bool = True) -> None:
        from tests.unit.test_attacher_kube import KubeNode
        from tests.unit.test_lease_versions import ControllerSource

        self.now = 1000.0
        monkeypatch.setattr(time, "monotonic", lambda: self.now)
        self.api = api = FakeApi()
        self.node = KubeNode(api, "n1")
        self.node.source.add(aobj("IPAddressPool", "ds", {"leaseTTL": "1h", "pools": pools}))
        self.node.source.add(aobj("Network", "ds-net", {"networkClass": "cls", "ipam": {
            "ipAddressPoolRef": {"kind": "IPAddressPool", "name": "ds"}}}))
        self.node.source.add(aobj("IPAddress", "u", {"networkRef": {"kind": "Network", "name": "ds-net"}}))

        class Shown(ControllerSource):
            def items(self, kind: str) -> list[dict[str, Any]]:
                if kind != "IPAddress":
                    return super().items(kind)
                return [{**o, "metadata": {**o["metadata"], "namespace": key.partition("/")[0]}}
                        for key, o in copy.deepcopy(api.objs["IPAddress"]).items()]

        self.seen = Shown(api, live=live)
        self.seen.src = self.node.source
        self.ctl = Controller(client.ApiClient(), self.seen, "plexus-system")  # type: ignore[arg-type]

    def round(self) -> None:
        """A controller round past ``ALLOCATED_S``."""
        self.now += 61
        self.ctl.allocate_user_ipaddresses()

    def pool(self, pools: list[dict[str, Any]], name: str = "ds") -> None:
        self.node.source.add(aobj("IPAddressPool", name, {"leaseTTL": "1h", "pools": pools}))

    def add(self) -> str:
        """A pod naming ``u`` started on the node: the address it got."""
        from tests.unit.test_attacher_kube import a_pod

        spec = [{"type": "Network", "name": "ds-net", "ifName": "net1", "ipAddressNames": ["u"]}]
        self.node.source.add(a_pod("app", spec, "uid-app"))
        out = self.node.call("ADD", "app", "uid-app", "c1")
        self.node.outbox.flush()
        return str(out["ips"][0]["address"]).split("/")[0]

    def controller_round_inside(self, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
        """The controller's round runs inside the node's registry ``step`` (once), before it is made."""
        real, ran = getattr(self.node.registry, step), list[bool]()

        def controller_first(*a: Any, **k: Any) -> Any:
            if not ran:
                ran.append(True)
                self.round()
            return real(*a, **k)

        monkeypatch.setattr(self.node.registry, step, controller_first)

    def held(self) -> dict[str, str]:
        """The addresses ``u``'s lease objects hold, each with the node it is labelled with ("": the controller's)."""
        from ipamd.kube.leases import NODE_LABEL

        return {o["spec"]["ip"]: o["metadata"].get("labels", {}).get(NODE_LABEL, "")
                for o in self.api.objs[LEASE_KIND].values() if o["spec"].get("holder") == U}

    def status(self) -> dict[str, Any]:
        return dict(self.api.objs["IPAddress"][f"{NS}/u"].get("status") or {})


def test_the_controller_leases_anew_in_a_later_round_than_its_let_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller leased ``u`` an IPv6 address; the pool is IPv4 alone now. Its round lets that lease go and, in
    the same round, from the same cache, leased ``u`` an IPv4 address; a pod's ADD naming ``u`` between the two, its
    cache showing the let-go, leased another on its own. ``u`` held two leases for ever (the controller's is released
    only once ``u`` is deleted), the pod used the node's, and the status said the controller's (``_complete_status``
    wrote it over the node's every round). The new lease waits for a later round, whose cache shows the node's."""
    w = _NodeAndController(monkeypatch, [{"network": "2001:2:0:98::/64"}], live=False)
    w.round()
    (six,) = w.held()
    w.seen.cache.sync()
    w.pool([{"network": "198.18.98.0/24"}])
    patch, used = w.api.patch, list[str]()

    def node_add_after_the_let_go(kind: str, name: str, body: dict[str, Any], namespace: str = "") -> Any:
        made = patch(kind, name, body, namespace)
        if kind == LEASE_KIND and made["spec"]["ip"] == six and "holder" not in made["spec"] and not used:
            used.append(w.add())
        return made

    monkeypatch.setattr(w.api, "patch", node_add_after_the_let_go)
    w.round()
    assert used and w.held() == {used[0]: "n1"}, f"u holds {w.held()}; the pod uses {used}"
    w.seen.cache.sync()
    for _ in range(2):
        w.round()
        w.seen.cache.sync()
    assert w.held() == {used[0]: "n1"}, f"u holds {w.held()}; the pod uses {used}"
    status = w.status()
    assert (status.get("phase"), status.get("address")) == ("Allocated", used[0]), status


@pytest.mark.parametrize("step", ["claim", "grow"])
def test_the_controllers_first_lease_racing_a_nodes_add_is_let_go(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """A fresh ``u``: a pod's ADD naming it finds no lease in its cache and leases one (in its block: ``grow``, then
    ``claim``); the controller's round lands in between and leases ``u`` another, writing its status. Neither sees the
    other's in time: ``u`` holds two. The controller, finding its own lease beside the one a node holds, lets its own go
    (quarantined, as it lets one go) and writes the status from the node's, which the pod uses."""
    w = _NodeAndController(monkeypatch, [{"network": "198.18.98.0/24"}])
    w.controller_round_inside(monkeypatch, step)
    used = w.add()
    mine = [ip for ip, node in w.held().items() if not node]
    assert len(mine) == 1 and mine != [used], f"the race as found: u holds {w.held()}"
    for _ in range(2):
        w.round()
    assert w.held() == {used: "n1"}, f"u holds {w.held()}; the pod uses {used}"
    (let_go,) = [o for o in w.api.objs[LEASE_KIND].values() if o["spec"]["ip"] == mine[0]]
    assert let_go["spec"].get("holder") is None and let_go["status"].get("orphaningTimestamp"), \
        f"quarantined, not deleted: {let_go}"
    status = w.status()
    assert (status.get("phase"), status.get("address"), status.get("usedByPods")) == ("Allocated", used, [f"{NS}/app"]), \
        status


def test_a_lagging_controller_cache_writing_over_a_nodes_status_is_mended(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node leased ``u`` for its pod; the controller's cache, not showing that lease yet, leases ``u`` another
    address and writes its status over the node's. Once its cache shows both, the controller lets its own go and
    writes the status from the node's lease (at the version it saw: a node's write since is not written over)."""
    w = _NodeAndController(monkeypatch, [{"network": "198.18.98.0/24"}], live=False)
    used = w.add()
    w.round()  # the cache as before the ADD
    assert len(w.held()) == 2 and w.status().get("address") != used
    w.seen.cache.sync()
    w.round()
    assert w.held() == {used: "n1"}
    status = w.status()
    assert (status.get("phase"), status.get("address"), status.get("usedByPods")) == ("Allocated", used, [f"{NS}/app"]), \
        status
    writes = w.api.calls["patch_status IPAddress"]
    w.round()
    assert w.api.calls["patch_status IPAddress"] == writes, "written once"


def test_the_controller_does_not_lease_an_ipaddress_a_node_leased_during_its_round(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The round read the lease objects once, at its start; a node leased ``u`` for its pod while the round made other
    writes (another IPAddress's lease): the controller leased ``u`` a second address, its cache showing the node's
    already. It asks its cache again right before it creates a lease."""
    w = _NodeAndController(monkeypatch, [{"network": "198.18.98.0/24"}])
    ref = {"networkRef": {"kind": "Network", "name": "ds-net"}}
    w.node.source.remove("IPAddress", NS, "u")
    w.node.source.add(aobj("IPAddress", "a-first", ref))
    w.node.source.add(aobj("IPAddress", "u", ref))  # looked at after a-first
    create, used = w.api.create, list[str]()

    def node_add_after(kind: str, body: dict[str, Any], namespace: str = "") -> Any:
        made = create(kind, body, namespace)
        if kind == LEASE_KIND and body["spec"].get("holder") == f"IPAddress/{NS}/a-first" and not used:
            used.append(w.add())
        return made

    monkeypatch.setattr(w.api, "create", node_add_after)
    w.round()
    assert used and w.held() == {used[0]: "n1"}, f"u holds {w.held()}; the pod uses {used}"


@pytest.mark.parametrize("moved", ["pool", "gateway"])
def test_the_controllers_lease_is_let_go_when_its_network_moves_pools_or_it_becomes_a_gateway(
        monkeypatch: pytest.MonkeyPatch, moved: str) -> None:
    """A node lets a user's IPAddress's lease go once no pod uses it when it ``starts_over``: its Network moved to
    another pool, its family dropped, or its address a route's gateway now. The controller let its own go only for the
    family: ``u`` kept the lease of the old pool (its status naming it) for ever, or a router's address."""
    w = _NodeAndController(monkeypatch, [{"network": "198.18.98.0/24"}])
    w.round()
    (old,) = w.held()
    if moved == "pool":
        w.pool([{"network": "198.18.99.0/24"}], "ds2")
        w.node.source.add(aobj("Network", "ds-net", {"networkClass": "cls", "ipam": {
            "ipAddressPoolRef": {"kind": "IPAddressPool", "name": "ds2"}}}))
        prefix = "198.18.99."
    else:
        w.pool([{"network": "198.18.98.0/24", "routes": [{"destination": "198.19.98.0/24", "via": old}]}])
        prefix = "198.18.98."
    for _ in range(3):
        w.round()
    (new,) = w.held()
    assert new != old and new.startswith(prefix), f"u holds {w.held()}"
    (let_go,) = [o for o in w.api.objs[LEASE_KIND].values() if o["spec"]["ip"] == old]
    assert let_go["spec"].get("holder") is None and let_go["status"].get("orphaningTimestamp"), let_go
    assert w.status().get("address") == new, w.status()

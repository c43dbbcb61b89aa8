"""The controller, mended after a review (each failing on the code before its fix): a Lease handed back keeps no 1 s
duration for the next holder; an ID just granted is not granted again; a ClusterNetwork's refused fixed ID is not
served; users' Auto IPAddresses get their status; a network moved from a VXLAN class to a VLAN class."""

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


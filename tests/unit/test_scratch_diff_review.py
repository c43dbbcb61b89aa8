"""Scratch: failing tests for the review of da02869..HEAD (not part of the suite)."""

from __future__ import annotations

from typing import Any

import pytest

from cni.errors import TryAgainLater
from ipamd.ipam.addresses import ResolvedNetwork
from ipamd.model.objects import Network, NetworkClass, parse_object
from ipamd.node.segments import Segments
from tests.fakes.links import FakeNodeLinks
from tests.fakes.store import MemoryStore
from tests.unit.test_segments_plan import CLASS, GROUP


def _moved_from_vxlan(vni: int) -> ResolvedNetwork:
    """Network ns/a, given VNI ``vni`` by a VXLAN class, its spec.networkClass now edited to VLAN class c (600-609):
    the controller has not written its VLAN ID yet (its status still shows the VNI and the vxlan bridge)."""
    obj = parse_object({"apiVersion": GROUP, "kind": "Network", "metadata": {"name": "a", "namespace": "ns"},
                        "spec": {"networkClass": "c"},
                        "status": {"vlanID": 0, "vni": vni, "bridgeName": f"plx-vb-{vni}"}})
    assert isinstance(obj, Network) and isinstance(CLASS, NetworkClass)
    return ResolvedNetwork(obj.meta.key, "Network", "a", "ns", obj, CLASS, None)


def test_node_does_not_serve_a_vni_as_a_vlan_id_after_a_class_edit() -> None:
    """44d79ea/c8f3f60 taught ``granted_id`` a ``kind`` (a status's ID of another kind is no grant), but only the
    controller passes it: the node (``Segments.plan``, node/segments.py:151) still takes the VNI for a granted VLAN ID
    until the controller's next write, and builds VLAN 603 -- an ID the controller may have granted another Network
    (two networks on one wire segment)."""
    seg = Segments(MemoryStore(), FakeNodeLinks(), lambda: 0.0, cluster=True)
    net = _moved_from_vxlan(603)
    try:
        plan = seg.plan(net)
    except TryAgainLater:
        return  # waits for the controller's VLAN ID: right
    pytest.fail(f"the node built VLAN {plan.record.id} ({plan.record.bridge}) from the old VNI: never granted")


def test_a_lease_whose_block_check_and_undo_both_failed_is_not_given_its_status_unchecked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """fbb2fab undoes a user's Auto IPAddress lease whose block check fails, but the delete is ``suppress``ed: with the
    API server away both fail (the usual case). c8f3f60's ``_complete_status`` then looks at the IPAddress again
    (held, ``mine``) and writes ``Allocated`` with that address, never asking whether a node claimed the block around
    it meanwhile (where that node leases with no request: two holders of one address)."""
    from kubernetes.client.exceptions import ApiException

    from ipamd.ipam.allocator import to_int
    from ipamd.ipam.blocks import Block, window_of
    from ipamd.kube.blocks import KIND as BLOCK_KIND
    from ipamd.kube.blocks import block_body
    from ipamd.kube.leases import KIND as LEASE_KIND
    from tests.unit.test_api_away_answers import _only, user_auto_controller

    api, ctl, now = user_auto_controller(monkeypatch)
    _only(ctl, monkeypatch, "allocate_user_ipaddresses")
    get, delete = api.get, api.delete

    def away_get(kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        if kind == BLOCK_KIND:
            raise ApiException(status=503, reason="Service Unavailable")
        return get(kind, name, namespace)

    def away_delete(kind: str, name: str, *a: Any, **k: Any) -> None:
        raise ApiException(status=503, reason="Service Unavailable")

    api.get, api.delete = away_get, away_delete  # type: ignore[method-assign]
    with pytest.raises(ApiException):
        ctl.run_once()
    (lease,) = api.objs[LEASE_KIND].values()
    ip = to_int(lease["spec"]["ip"])
    # meanwhile node n1 claimed the block around it (its create came first; our cache had not shown it)
    api.create(BLOCK_KIND, block_body(Block(lease["spec"]["pool"], window_of(ip), 16, "n1")))
    api.get, api.delete = get, delete  # type: ignore[method-assign]
    now[0] += 61
    ctl.run_once()
    status = api.objs["IPAddress"]["ns/user-auto"].get("status") or {}
    left = [o["spec"]["ip"] for o in api.objs[LEASE_KIND].values() if o["spec"]["holder"] == "IPAddress/ns/user-auto"]
    assert not (status.get("address") == lease["spec"]["ip"] and lease["spec"]["ip"] in left), \
        f"the IPAddress was given {status.get('address')} inside node n1's block, never checked: {status}"

"""One pod at a time per user IPAddress across the cluster (``ipamd.kube.users``): two nodes, each with its real
Attacher, store and outbox, over one fake API server that holds the IPAddresses and pods. Each node's store knows only
its own pods; the pod that uses the IPAddress is written on it at the version read, before the address is used."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from cni.errors import AddressConflict, TryAgainLater
from ipamd.kube.publisher import auto_ip_body
from ipamd.kube.users import parse_user
from tests.fakes.cluster import FakeApi
from tests.unit.test_attacher import NS, obj
from tests.unit.test_attacher_kube import AUTO, FIXED, KubeNode, a_pod


def used_by(api: FakeApi, name: str = "fixed") -> dict[str, str]:
    user = parse_user(api.get("IPAddress", name, NS))
    return {"uid": user.uid, "pod": user.pod, "node": user.node} if user else {}


def leased(node: KubeNode) -> list[tuple[str, tuple[str, ...]]]:
    return [(r.name, r.used_by_uids) for r in node.store.all_ips() if r.used_by_uids]


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def two(api: FakeApi) -> tuple[KubeNode, KubeNode]:
    a, b = KubeNode(api, "n1"), KubeNode(api, "n2")
    for node in (a, b):  # both nodes' caches show both pods (the API server has them)
        node.source.add(a_pod("pa", FIXED, "uid-pa"))
        node.source.add(a_pod("pb", FIXED, "uid-pb"))
    return a, b


def test_a_static_used_by_a_pod_on_one_node_is_refused_to_a_pod_on_another(api: FakeApi,
                                                                           two: tuple[KubeNode, KubeNode]) -> None:
    a, b = two
    got = a.call("ADD", "pa", "uid-pa", "ca")
    assert got["ips"][0]["address"] == "198.18.40.5/28"
    assert used_by(api) == {"uid": "uid-pa", "pod": f"{NS}/pa", "node": "n1"}, "written before the ADD answered"
    with pytest.raises(AddressConflict) as refused:
        b.call("ADD", "pb", "uid-pb", "cb")
    assert f"in use by pod {NS}/pa on node n1" in refused.value.msg and refused.value.details == "ipAddressNames"
    assert leased(b) == [] and b.store.attachments() == [], "nothing left behind on the refused node"
    assert used_by(api)["uid"] == "uid-pa"

    a.call("DEL", "pa", "uid-pa", "ca")
    with pytest.raises(AddressConflict):  # its sandbox gone, but the pod still exists: it may be given one again
        b.call("ADD", "pb", "uid-pb", "cb")
    for node in (a, b):
        node.source.remove("Pod", NS, "pa")
    got = b.call("ADD", "pb", "uid-pb", "cb")
    assert got["ips"][0]["address"] == "198.18.40.5/28"
    assert used_by(api) == {"uid": "uid-pb", "pod": f"{NS}/pb", "node": "n2"}


def test_a_finished_pod_or_a_new_one_of_the_same_name_gives_the_ipaddress_up(api: FakeApi,
                                                                            two: tuple[KubeNode, KubeNode]) -> None:
    a, b = two
    a.call("ADD", "pa", "uid-pa", "ca")
    api.patch_status("Pod", "pa", {"phase": "Succeeded"}, NS)  # the kubelet tears a finished pod's sandbox down:
    a.call("DEL", "pa", "uid-pa", "ca")
    assert b.call("ADD", "pb", "uid-pb", "cb")["ips"][0]["address"] == "198.18.40.5/28"
    b.call("DEL", "pb", "uid-pb", "cb")
    b.source.remove("Pod", NS, "pb")
    a.source.add(a_pod("pb", FIXED, "uid-pb-2"))  # a StatefulSet's pod made again, on the other node
    assert a.call("ADD", "pb", "uid-pb-2", "cb2")["ips"][0]["address"] == "198.18.40.5/28"
    assert used_by(api)["uid"] == "uid-pb-2"


def test_a_retried_add_of_the_same_pod_writes_nothing(api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    a, _ = two
    a.call("ADD", "pa", "uid-pa", "ca")
    before = api.calls["patch IPAddress"]
    a.call("ADD", "pa", "uid-pa", "ca")
    assert api.calls["patch IPAddress"] == before


def test_two_nodes_writing_at_once_one_wins_the_other_reads_again(api: FakeApi,
                                                                  two: tuple[KubeNode, KubeNode]) -> None:
    """B read the IPAddress with nobody on it; A wrote its pod meanwhile: B's write at the version it read fails, B
    reads again, finds A's pod running, and is refused."""
    a, b = two
    get = api.get
    raced: list[bool] = []

    def get_then_a_writes(kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        found = get(kind, name, namespace)
        if kind == "IPAddress" and not raced:
            raced.append(True)
            a.call("ADD", "pa", "uid-pa", "ca")
        return found

    api.get = get_then_a_writes  # type: ignore[method-assign]
    with pytest.raises(AddressConflict, match="in use by pod .*/pa on node n1"):
        b.call("ADD", "pb", "uid-pb", "cb")
    assert used_by(api)["uid"] == "uid-pa" and leased(b) == []


def test_without_the_api_the_user_cannot_be_made_sure_of(api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    _, b = two

    def down(*_: Any, **__: Any) -> Any:
        raise ApiException(status=503, reason="Service Unavailable")

    api.get = down  # type: ignore[method-assign]
    with pytest.raises(TryAgainLater):
        b.call("ADD", "pb", "uid-pb", "cb")
    assert leased(b) == [] and b.store.attachments() == []


def test_an_auto_ipaddress_a_node_made_for_its_pod_is_that_pods(api: FakeApi) -> None:
    """The Auto IPAddress a node makes for its pod is created with the pod written on it: another pod naming it is
    refused while that pod runs."""
    a, b = KubeNode(api, "n1"), KubeNode(api, "n2")
    a.source.add(a_pod("pa", AUTO, "uid-pa"))
    a.call("ADD", "pa", "uid-pa", "ca")
    (rec,) = [r for r in a.store.all_ips() if r.created_by == "plexus"]
    typed = obj("IPAddress", rec.name, {"networkRef": {"kind": "Network", "name": "net-a"}, "type": "Auto"})
    body = auto_ip_body(rec, a_pod("pa", AUTO, "uid-pa"), "n1")
    body["metadata"]["uid"] = typed.meta.uid
    api.create("IPAddress", body, NS)  # what the outbox makes
    b.source.add(typed)
    b.source.add(a_pod("pb", [{"type": "Network", "name": "net-a", "ifName": "net1", "ipAddressNames": [rec.name]}],
                       "uid-pb"))
    with pytest.raises(AddressConflict, match=f"in use by pod {NS}/pa on node n1"):
        b.call("ADD", "pb", "uid-pb", "cb")
    assert leased(b) == []

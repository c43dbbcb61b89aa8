"""One pod at a time per user IPAddress across the cluster (``ipamd.kube.users``): two nodes, each with its real
Attacher, store and outbox, over one fake API server that holds the IPAddresses and pods. Each node's store knows only
its own pods; the pod that uses the IPAddress is written on it at the version read, before the address is used."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from cni.errors import AddressConflict, InternalError, ObjectNotFound, TryAgainLater
from ipamd.ipam.allocator import to_int
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import NODE_LABEL
from ipamd.kube.publisher import auto_ip_body
from ipamd.model.objects import IP_ADDRESS, IP_ADDRESS_POOL, USED_BY_ANNOTATION
from ipamd.model.used_by import User, parse_user
from ipamd.node.reconcile import Reconciler
from tests.fakes.cluster import FakeApi
from tests.unit.test_attacher import NS, obj
from tests.unit.test_attacher_kube import AUTO, FIXED, KubeNode, a_pod


def used_by(api: FakeApi, name: str = "fixed") -> dict[str, str]:
    user = parse_user(api.get("IPAddress", name, NS))
    return {"uid": user.uid, "pod": user.pod, "node": user.node} if user else {}


def leased(node: KubeNode) -> list[tuple[str, tuple[str, ...]]]:
    return [(r.name, r.used_by_uids) for r in node.store.all_ips() if r.used_by_uids]


def answering(status: int, reason: str) -> Callable[..., Any]:
    """An API call the server answers with ``status``."""
    def call(*_: Any, **__: Any) -> Any:
        raise ApiException(status=status, reason=reason)

    return call


def fixed_again() -> Any:
    """The Static ``fixed`` as the node's cache shows it (made again after a test deleted it)."""
    return obj("IPAddress", "fixed", {"networkRef": {"kind": "Network", "name": "net-a"}, "type": "Static",
                                      "static": {"ip": "198.18.40.5"}})


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
    assert f"in use by pod {NS}/pa on node n1" in refused.value.msg
    assert refused.value.details == "networks-spec[0].ipAddressNames"
    assert leased(b) == [] and b.store.attachments() == [], "nothing left behind on the refused node"
    b.outbox.flush()
    assert used_by(api)["uid"] == "uid-pa", "the refused pod's node takes nothing off"

    a.call("DEL", "pa", "uid-pa", "ca")
    with pytest.raises(AddressConflict):  # taking it off is owed, not made yet
        b.call("ADD", "pb", "uid-pb", "cb")
    a.outbox.flush()
    assert used_by(api) == {}, "its last sandbox gone, the pod no longer holds it (it may get it back, or not)"
    got = b.call("ADD", "pb", "uid-pb", "cb")
    assert got["ips"][0]["address"] == "198.18.40.5/28"
    assert used_by(api) == {"uid": "uid-pb", "pod": f"{NS}/pb", "node": "n2"}
    with pytest.raises(AddressConflict, match=f"in use by pod {NS}/pb on node n2"):
        a.call("ADD", "pa", "uid-pa", "ca2")


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


def test_a_new_sandbox_of_the_pod_that_uses_it_asks_the_api_nothing(api: FakeApi,
                                                                     two: tuple[KubeNode, KubeNode]) -> None:
    """A retried ADD, or the pod's sandbox made again, while the node's store has the pod as the user: no request,
    so that it works while the API server is away."""
    a, _ = two
    a.call("ADD", "pa", "uid-pa", "ca")
    a.outbox.flush()
    assert api.calls["patch IPAddress"] == 1 and used_by(api)["uid"] == "uid-pa"

    api.get = api.patch = answering(503, "Service Unavailable")  # type: ignore[method-assign]
    assert a.call("ADD", "pa", "uid-pa", "ca")["ips"][0]["address"] == "198.18.40.5/28"
    assert a.call("ADD", "pa", "uid-pa", "ca-new")["ips"][0]["address"] == "198.18.40.5/28"


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
    get = api.get

    def ipaddresses_down(kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        if kind == "IPAddress":
            raise ApiException(status=503, reason="Service Unavailable")
        return get(kind, name, namespace)

    api.get = ipaddresses_down  # type: ignore[method-assign]
    with pytest.raises(TryAgainLater, match="Kubernetes API is not available"):
        b.call("ADD", "pb", "uid-pb", "cb")
    assert leased(b) == [] and b.store.attachments() == []


def test_an_ipaddress_deleted_meanwhile_or_always_changing(api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    a, _ = two
    api.delete("IPAddress", "fixed", NS)  # the node's cache still shows it
    with pytest.raises(ObjectNotFound, match=f"IPAddress {NS}/fixed does not exist"):
        a.call("ADD", "pa", "uid-pa", "ca")
    a.source.add(fixed_again())

    api.patch = answering(409, "Conflict")  # type: ignore[method-assign]
    with pytest.raises(TryAgainLater, match="kept changing"):
        a.call("ADD", "pa", "uid-pa", "ca")
    assert leased(a) == [] and a.store.attachments() == []


def test_a_pod_refused_one_of_its_ipaddresses_is_taken_off_the_others(api: FakeApi,
                                                                      two: tuple[KubeNode, KubeNode]) -> None:
    """pb names fixed and second; second is pa's: pb is written on fixed, then refused; it is taken off fixed again,
    or a third pod naming fixed alone would wait for pb, which never used it."""
    a, b = two
    second = obj("IPAddress", "second", {"networkRef": {"kind": "Network", "name": "net-a"}, "type": "Static",
                                         "static": {"ip": "198.18.40.6"}})
    both = [{"type": "Network", "name": "net-a", "ifName": "net1", "ipAddressNames": ["second", "fixed"]}]
    for node in (a, b):
        node.source.add(second)
        node.source.add(a_pod("pa", [{**FIXED[0], "ipAddressNames": ["second"]}], "uid-pa"))
        node.source.add(a_pod("pb", both, "uid-pb"))
        node.source.add(a_pod("pc", FIXED, "uid-pc"))
    a.call("ADD", "pa", "uid-pa", "ca")
    with pytest.raises(AddressConflict, match=f"IPAddress {NS}/second is in use by pod {NS}/pa"):
        b.call("ADD", "pb", "uid-pb", "cb")
    assert used_by(api)["uid"] == "uid-pb", "written first (fixed comes before second on every node)"
    b.outbox.flush()
    assert used_by(api) == {}
    assert a.call("ADD", "pc", "uid-pc", "cc")["ips"][0]["address"] == "198.18.40.5/28"


def test_two_pods_naming_two_ipaddresses_in_opposite_orders_do_not_block_each_other(
        api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    a, b = two
    second = obj("IPAddress", "second", {"networkRef": {"kind": "Network", "name": "net-a"}, "type": "Static",
                                         "static": {"ip": "198.18.40.6"}})
    for node in (a, b):
        node.source.add(second)
        node.source.add(a_pod("pa", [{**FIXED[0], "ipAddressNames": ["fixed", "second"]}], "uid-pa"))
        node.source.add(a_pod("pb", [{**FIXED[0], "ipAddressNames": ["second", "fixed"]}], "uid-pb"))
    patch = api.patch
    turns: list[str] = []

    def b_adds_once_a_wrote_its_first(kind: str, name: str, body: dict[str, Any], namespace: str = "") -> Any:
        done = patch(kind, name, body, namespace)
        if kind == "IPAddress" and not turns:  # pa is on fixed: pb's ADD runs whole now (b's writes not flushed)
            turns.append(name)
            with pytest.raises(AddressConflict, match=f"{NS}/fixed is in use by pod {NS}/pa"):
                b.call("ADD", "pb", "uid-pb", "cb")
        return done

    api.patch = b_adds_once_a_wrote_its_first  # type: ignore[method-assign]
    got = a.call("ADD", "pa", "uid-pa", "ca")
    assert turns == ["fixed"], "both take them in one order: pb asked for fixed first, and wrote nothing"
    assert [ip["address"] for ip in got["ips"]] == ["198.18.40.5/28", "198.18.40.6/28"]


def test_a_pod_that_uses_an_ipaddress_without_being_written_on_it_is_written_by_the_reconciler(
        api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    """Attached by a version before this one (or the IPAddress recreated, its annotation edited): the node's next
    round writes its pod there, and a pod on another node is refused from then on."""
    a, b = two
    a.call("ADD", "pa", "uid-pa", "ca")
    api.patch("IPAddress", "fixed", {"metadata": {"annotations": {USED_BY_ANNOTATION: None}}}, NS)
    rounds_of(a).run_once()
    a.outbox.flush()
    assert used_by(api) == {"uid": "uid-pa", "pod": f"{NS}/pa", "node": "n1"}
    with pytest.raises(AddressConflict, match=f"in use by pod {NS}/pa on node n1"):
        b.call("ADD", "pb", "uid-pb", "cb")


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


def test_taking_a_pod_off_waits_for_a_call_that_makes_it_the_user_again(api: FakeApi,
                                                                        two: tuple[KubeNode, KubeNode]) -> None:
    """Two ADDs of one pod (two sandboxes) at once: the first writes the pod, the second finds it written, then the
    first fails. Taking the pod off (owed by the first) must not be made under the second, which goes on to use the
    address; should the second fail too, it is taken off after all (found in review: it was lost)."""
    a, _ = two
    obj_ = a.source.get(IP_ADDRESS, NS, "fixed")
    assert obj_ is not None
    rec = a.ipam.record_for(obj_)
    p = a_pod("pa", FIXED, "uid-pa")
    for second_fails in (False, True):
        a.registry.use(rec, p, "f")  # the first
        a.registry.use(rec, p, "f")  # the second: written already
        a.registry.use_ended(rec, "uid-pa")  # the first failed
        a.outbox.flush()
        assert used_by(api)["uid"] == "uid-pa", "the second is still making the pod its user"
        if not second_fails:
            with a.store.transaction():  # what the second's transaction records
                a.store.put_ip(replace(rec, used_by_uids=("uid-pa",), used_by_pods=(f"{NS}/pa",)))
        a.registry.use_ended(rec, "uid-pa")
        a.outbox.flush()
        assert used_by(api) == ({} if second_fails else {"uid": "uid-pa", "pod": f"{NS}/pa", "node": "n1"})
        assert a.outbox.depth() == 0, "nothing left parked once no call is in flight (found in review)"
        with a.store.transaction():
            a.store.put_ip(rec)  # no user: the next turn starts afresh


def test_a_late_del_of_the_pods_old_sandbox_under_its_new_ones_add_leaves_it_written(
        api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    """pa uses fixed through sandbox c1; the ADD of its new sandbox c2 asks nothing (pa uses it here), and while its
    claim is out c1's DEL lets pa go: c2 must not record pa on an IPAddress it is being taken off (found in review:
    it was, and another node's pod then got the address)."""
    a, b = two
    a.call("ADD", "pa", "uid-pa", "c1")
    securing = a.ipam.securing
    fired: list[bool] = []

    @contextmanager
    def securing_after_the_old_del(rec: Any, pool: Any) -> Iterator[Any]:  # c2, outside the lock
        if not fired:
            fired.append(True)
            a.call("DEL", "pa", "uid-pa", "c1")
            a.outbox.flush()  # taken off the IPAddress at once
        with securing(rec, pool) as secured:
            yield secured

    a.ipam.securing = securing_after_the_old_del  # type: ignore[method-assign]
    a.call("ADD", "pa", "uid-pa", "c2")
    a.outbox.flush()
    assert fired and leased(a) == [("fixed", ("uid-pa",))]
    assert used_by(api)["uid"] == "uid-pa"
    with pytest.raises(AddressConflict):
        b.call("ADD", "pb", "uid-pb", "cb")


def test_a_failed_add_after_another_sandbox_of_the_pod_took_it_leaves_it_written(
        api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    """Two ADDs of pa at once: c2 records pa, then c1 (which wrote pa first) fails: pa stays written, as the store
    has it as a user (found in review)."""
    a, _ = two
    securing = a.ipam.securing
    fired: list[bool] = []

    @contextmanager
    def c2_whole_then_c1_fails(rec: Any, pool: Any) -> Iterator[Any]:
        if not fired:
            fired.append(True)
            a.ipam.securing = securing  # type: ignore[method-assign]
            a.call("ADD", "pa", "uid-pa", "c2")
            raise TryAgainLater("c1's claim fails", "x")
        with securing(rec, pool) as secured:
            yield secured

    a.ipam.securing = c2_whole_then_c1_fails  # type: ignore[method-assign]
    with pytest.raises(TryAgainLater):
        a.call("ADD", "pa", "uid-pa", "c1")
    assert not a.outbox.owes(f"IPAddress/{NS}/fixed/used-by"), "nothing to take off: the store has pa as a user"
    a.outbox.flush()
    assert leased(a) == [("fixed", ("uid-pa",))] and used_by(api)["uid"] == "uid-pa"


def test_an_add_after_a_del_on_the_node_makes_the_owed_take_off_first(api: FakeApi,
                                                                       two: tuple[KubeNode, KubeNode]) -> None:
    """pa's DEL owes taking it off (pa itself still exists); an ADD on the node comes before that is made: it makes
    it first, so another pod of the node is not refused for pa, and pa's own next ADD writes it again."""
    a, b = two
    a.source.add(a_pod("pc", FIXED, "uid-pc"))
    a.call("ADD", "pa", "uid-pa", "c1")
    a.call("DEL", "pa", "uid-pa", "c1")
    assert a.outbox.owes(f"IPAddress/{NS}/fixed/used-by")
    assert a.call("ADD", "pc", "uid-pc", "cc")["ips"][0]["address"] == "198.18.40.5/28"
    assert used_by(api)["uid"] == "uid-pc"
    a.call("DEL", "pc", "uid-pc", "cc")
    a.call("ADD", "pa", "uid-pa", "c2")
    a.outbox.flush()
    assert used_by(api)["uid"] == "uid-pa"
    with pytest.raises(AddressConflict):
        b.call("ADD", "pb", "uid-pb", "cb")


def test_an_owed_take_off_is_not_made_while_the_store_has_the_pod_as_a_user(api: FakeApi,
                                                                               two: tuple[KubeNode, KubeNode]) -> None:
    """Owed before a restart (what a call had in flight is forgotten then), made after the pod became a user here
    again: the store's word wins."""
    a, _ = two
    a.call("ADD", "pa", "uid-pa", "c1")
    a.outbox.add(f"IPAddress/{NS}/fixed/used-by", "unuse", {"kind": "IPAddress", "namespace": NS, "name": "fixed",
                                                             "key": f"IPAddress/{NS}/fixed", "uid": "uid-pa"})
    a.outbox.flush()
    assert used_by(api)["uid"] == "uid-pa"


def test_the_reconciler_never_writes_over_another_pod_that_runs_and_looks_again_later(
        api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    """Two pods use the address already (attached before this version): the repair logs it, writes nothing, and does
    not ask the API server about it every round."""
    a, _ = two
    a.call("ADD", "pa", "uid-pa", "ca")
    other = User("uid-pb", f"{NS}/pb", "n2").text()
    api.patch("IPAddress", "fixed", {"metadata": {"annotations": {USED_BY_ANNOTATION: other}}}, NS)
    a.source.add(replace(a.source.get(IP_ADDRESS, NS, "fixed"), used_by=other))  # type: ignore[arg-type, type-var]
    rounds = rounds_of(a)
    assert reads_over(a, rounds, api, 3) == 1, "looked at once, then again after CLASH_S"
    later = a.registry.users.clock() + 301
    a.registry.users.clock = lambda: later
    assert reads_over(a, rounds, api, 1) == 1
    assert used_by(api)["uid"] == "uid-pb"


def test_a_repair_owed_before_the_pods_del_writes_nothing(api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    """The round saw pa using the address unwritten and owed its write; pa's DEL came before it was made: nothing is
    written (found in review: pa was, and kept others off an address no pod used)."""
    a, _ = two
    a.call("ADD", "pa", "uid-pa", "ca")
    api.patch("IPAddress", "fixed", {"metadata": {"annotations": {USED_BY_ANNOTATION: None}}}, NS)
    rec = a.store.get_ip(f"IPAddress/{NS}/fixed")  # what the round read
    assert rec is not None
    a.call("DEL", "pa", "uid-pa", "ca")
    a.outbox.flush()
    a.registry.repair_use(rec, "")
    a.outbox.flush()
    assert leased(a) == [] and used_by(api) == {}


def test_a_take_off_left_to_a_call_that_then_fails_before_writing_is_made(api: FakeApi,
                                                                         two: tuple[KubeNode, KubeNode]) -> None:
    """The take-off owed by pa's failed ADD is left to pa's next ADD, in flight; that one fails at its read: the
    take-off is owed again (found in review: it was lost, and pa kept the IPAddress unused)."""
    a, _ = two
    obj_ = a.source.get(IP_ADDRESS, NS, "fixed")
    assert obj_ is not None
    rec = a.ipam.record_for(obj_)
    p = a_pod("pa", FIXED, "uid-pa")
    a.registry.use(rec, p, "f")
    a.registry.use_ended(rec, "uid-pa")  # failed after writing: its take-off owed
    get = api.get

    def unavailable(kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        if kind == "IPAddress":
            raise ApiException(status=503, reason="Service Unavailable")
        return get(kind, name, namespace)

    api.get = unavailable  # type: ignore[method-assign]  # after the take-off is looked at (flush_target) ...
    with pytest.raises(TryAgainLater):  # ... the next ADD's read fails
        a.registry.use(rec, p, "f")
    api.get = get  # type: ignore[method-assign]
    a.outbox.flush()
    assert used_by(api) == {}


def test_what_the_api_refuses_is_said_as_a_cni_error(api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    """Deleted between the read and the write: 103; a write RBAC refuses (a role not applied yet): named, not an HTTP
    dump; nothing left behind either way."""
    a, _ = two
    patch = api.patch

    def deleted_meanwhile(kind: str, name: str, body: dict[str, Any], namespace: str = "") -> Any:
        if kind == "IPAddress":
            api.delete("IPAddress", name, namespace)
        return patch(kind, name, body, namespace)

    api.patch = deleted_meanwhile  # type: ignore[method-assign]
    with pytest.raises(ObjectNotFound, match=f"IPAddress {NS}/fixed does not exist"):
        a.call("ADD", "pa", "uid-pa", "ca")
    a.source.add(fixed_again())

    api.patch = answering(403, "Forbidden")  # type: ignore[method-assign]
    with pytest.raises(InternalError, match="403 Forbidden .*ClusterRole needs .*patch on ipaddresses") as refused:
        a.call("ADD", "pa", "uid-pa", "ca")
    assert refused.value.details == "networks-spec[0].ipAddressNames"
    assert leased(a) == [] and a.store.attachments() == []


def test_another_pods_owed_take_off_is_not_superseded(api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    """pc is written on fixed, then refused second (pb's, elsewhere): its take-off is owed. pa, which read fixed with
    nobody on it before pc's write, is refused fixed and owes its own take-off: pc's must stay owed, or pc keeps fixed
    from every pod (found in review)."""
    a, b = two
    second = obj("IPAddress", "second", {"networkRef": {"kind": "Network", "name": "net-a"}, "type": "Static",
                                         "static": {"ip": "198.18.40.6"}})
    for node in (a, b):
        node.source.add(second)
        node.source.add(a_pod("pb", [{**FIXED[0], "ipAddressNames": ["second"]}], "uid-pb"))
        node.source.add(a_pod("pc", [{**FIXED[0], "ipAddressNames": ["fixed", "second"]}], "uid-pc"))
    b.call("ADD", "pb", "uid-pb", "cb")
    get = api.get
    fired: list[bool] = []

    def pc_adds_after_pa_read(kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        found = get(kind, name, namespace)
        if kind == "IPAddress" and name == "fixed" and not fired:
            fired.append(True)
            with pytest.raises(AddressConflict):
                a.call("ADD", "pc", "uid-pc", "cc")
        return found

    api.get = pc_adds_after_pa_read  # type: ignore[method-assign]
    with pytest.raises(AddressConflict, match=f"in use by pod {NS}/pc"):
        a.call("ADD", "pa", "uid-pa", "ca")
    api.get = get  # type: ignore[method-assign]
    a.outbox.flush()
    assert used_by(api) == {}


def test_a_repair_the_api_refuses_is_not_made_again_every_round(api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    a, _ = two
    a.call("ADD", "pa", "uid-pa", "ca")
    api.patch("IPAddress", "fixed", {"metadata": {"annotations": {USED_BY_ANNOTATION: None}}}, NS)
    api.patch = answering(403, "Forbidden")  # type: ignore[method-assign]
    assert reads_over(a, rounds_of(a), api, 5) == 1, "once, then again after REPAIR_S"


def test_an_auto_ipaddress_made_for_a_pod_before_this_version_is_written_by_the_reconciler(api: FakeApi) -> None:
    a, b = KubeNode(api, "n1"), KubeNode(api, "n2")
    a.source.add(a_pod("pa", AUTO, "uid-pa"))
    got = a.call("ADD", "pa", "uid-pa", "ca")
    (rec,) = [r for r in a.store.all_ips() if r.created_by == "plexus"]
    typed = obj("IPAddress", rec.name, {"networkRef": {"kind": "Network", "name": "net-a"}, "type": "Auto"})
    body = auto_ip_body(rec, a_pod("pa", AUTO, "uid-pa"), "n1")
    body["metadata"]["uid"] = typed.meta.uid
    del body["metadata"]["annotations"]  # made by the version before this one
    api.create("IPAddress", body, NS)
    for node in (a, b):
        node.source.add(typed)
    rounds_of(a).run_once()
    a.outbox.flush()
    assert used_by(api, rec.name)["uid"] == "uid-pa"
    b.source.add(a_pod("pb", [{"type": "Network", "name": "net-a", "ifName": "net1", "ipAddressNames": [rec.name]}],
                       "uid-pb"))
    with pytest.raises(AddressConflict, match=f"in use by pod {NS}/pa on node n1"):
        b.call("ADD", "pb", "uid-pb", "cb")
    assert got["ips"][0]["address"] not in {lease.address for lease in b.store.all_leases() if lease.holder}


def reads_over(node: KubeNode, rounds: Reconciler, api: FakeApi, n: int) -> int:
    """The IPAddress reads ``n`` reconcile rounds of a node make, each round's owed writes made after it."""
    gets = api.calls["get IPAddress"]
    for _ in range(n):
        rounds.run_once()
        node.outbox.flush()
    return int(api.calls["get IPAddress"] - gets)


def rounds_of(node: KubeNode) -> Reconciler:
    return Reconciler(node.store, node.source, node.ipam, node.attacher, node.attacher.segments,  # type: ignore[arg-type]
                      node.publisher, cluster=True)


def test_a_round_leasing_a_static_does_not_write_back_what_it_read_before_an_add(
        api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    """The round reads the Static's record, pa's ADD makes pa its user, then the round leases the record it read:
    pa must stay its user here, or pa's DEL takes nothing off and pa stays written (found in review)."""
    a, _ = two
    lease_alone = a.ipam.lease_alone
    fired: list[bool] = []

    def add_in_between(rec: Any, pool: Any) -> Any:
        if not fired and rec.name == "fixed":
            fired.append(True)
            a.call("ADD", "pa", "uid-pa", "ca")
        return lease_alone(rec, pool)

    a.ipam.lease_alone = add_in_between  # type: ignore[method-assign,assignment]
    rounds_of(a)._sync_ipaddresses(statics_only=True)
    a.ipam.lease_alone = lease_alone  # type: ignore[method-assign]
    assert fired and leased(a) == [("fixed", ("uid-pa",))]
    a.call("DEL", "pa", "uid-pa", "ca")
    a.outbox.flush()
    assert used_by(api) == {}


def test_a_round_marking_a_gone_ipaddress_deleted_does_not_undo_a_del_meanwhile(
        api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    a, _ = two
    a.call("ADD", "pa", "uid-pa", "ca")
    a.source.remove("IPAddress", NS, "fixed")
    all_ips = a.store.all_ips
    fired: list[bool] = []

    def del_after_the_list() -> Any:
        listed = all_ips()
        if not fired:
            fired.append(True)
            a.call("DEL", "pa", "uid-pa", "ca")
        return listed

    a.store.all_ips = del_after_the_list  # type: ignore[method-assign]
    rounds_of(a)._sync_ipaddresses(statics_only=True)
    a.store.all_ips = all_ips  # type: ignore[method-assign]
    assert fired and leased(a) == [], "pa's DEL stands"


class Kill:
    """The daemon killed at a point of a call: the calling thread stops there for good (no undo, no ``finally``)."""

    def __init__(self) -> None:
        self.victim: threading.Thread | None = None
        self.dead = threading.Event()
        self._never = threading.Event()

    def here(self) -> None:
        if threading.current_thread() is self.victim:
            self.dead.set()
            self._never.wait()

    def run(self, call: Callable[[], Any]) -> None:
        def body() -> None:
            with suppress(Exception):
                call()

        self.victim = threading.Thread(target=body, daemon=True)
        self.victim.start()
        assert self.dead.wait(5), "the kill point was not reached"


def restarted(node: KubeNode, api: FakeApi) -> KubeNode:
    """A new daemon over the killed one's store, started as ``ipamd.node.daemon`` starts it."""
    new = KubeNode(api, node.name, store=node.store, source=node.source)
    new.outbox.unpark_all("unuse")
    new.outbox.unpark_all("hand_back")
    rounds = rounds_of(new)
    rounds.recover()
    rounds.run_once()
    new.outbox.flush()
    return new


def test_a_daemon_killed_right_after_writing_the_pod_takes_it_off_after_its_restart(
        api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    """Killed between the write of pa on the IPAddress and the transaction that records it: no sandbox of pa has
    the address, so the take-off written ahead is made after the restart (found in review: pa stayed written)."""
    a, b = two
    kill = Kill()
    patch = api.patch

    def killed_after(kind: str, name: str, body: dict[str, Any], namespace: str = "") -> Any:
        done = patch(kind, name, body, namespace)
        if kind == "IPAddress":
            kill.here()
        return done

    api.patch = killed_after  # type: ignore[method-assign]
    kill.run(lambda: a.call("ADD", "pa", "uid-pa", "c1"))
    api.patch = patch  # type: ignore[method-assign]
    assert used_by(api)["uid"] == "uid-pa"
    new = restarted(a, api)
    assert leased(new) == [] and used_by(api) == {}
    assert b.call("ADD", "pb", "uid-pb", "cb")["ips"][0]["address"] == "198.18.40.5/28"


def test_a_take_off_left_to_a_call_the_kill_cut_short_is_made_after_the_restart(
        api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    """pa's DEL owed the take-off; pa's next ADD, in flight, left it parked for itself; the daemon is killed before
    that ADD records pa: the take-off is made after the restart."""
    a, _ = two
    a.call("ADD", "pa", "uid-pa", "c1")
    a.outbox.flush()
    a.call("DEL", "pa", "uid-pa", "c1")
    kill = Kill()
    securing = a.ipam.securing

    def killed_in(rec: Any, pool: Any) -> Any:
        kill.here()
        return securing(rec, pool)

    a.ipam.securing = killed_in  # type: ignore[method-assign]
    kill.run(lambda: a.call("ADD", "pa", "uid-pa", "c2"))
    new = restarted(a, api)
    assert leased(new) == [] and used_by(api) == {}


def test_an_operators_release_on_another_node_keeps_the_address_of_a_pod_written_there(
        api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    """Every node leases a Static: n2's round made its lease object, pa uses it on n1. `plexusctl ipam release` on n2
    without force must not free it (found in review: n2's store knew no user, and a third node could lease it)."""
    a, b = two
    rounds_of(b)._sync_ipaddresses(statics_only=True)
    b.outbox.flush()
    a.call("ADD", "pa", "uid-pa", "ca")
    written = api.get("IPAddress", "fixed", NS)["metadata"]["annotations"][USED_BY_ANNOTATION]
    b.source.add(replace(b.source.get(IP_ADDRESS, NS, "fixed"), used_by=written))  # type: ignore[arg-type, type-var]
    pool = b.source.get(IP_ADDRESS_POOL, NS, "small")
    assert pool is not None
    with pytest.raises(AddressConflict, match=f"in use by pod {NS}/pa on node n1") as refused:
        b.ipam.release_address(pool, "198.18.40.5", force=False)
    assert refused.value.details == "force"
    assert b.store.lease_at(pool.meta.key, to_int("198.18.40.5")) is not None


def test_an_operators_release_waits_for_an_add_in_flight(api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    """The release reads the lease and its users under the store's lock: an ADD of another thread lands before it
    (refused: in use) or after it (the pod leases the address again), never between its check and its write."""
    a, _ = two
    rounds_of(a)._sync_ipaddresses(statics_only=True)
    pool = a.source.get(IP_ADDRESS_POOL, NS, "small")
    assert pool is not None
    lease_at = a.store.lease_at
    adding: list[threading.Thread] = []

    def an_add_starts(pool_key: str, ip: int) -> Any:
        found = lease_at(pool_key, ip)
        if not adding:
            adding.append(threading.Thread(target=a.call, args=("ADD", "pa", "uid-pa", "ca")))
            adding[0].start()
            adding[0].join(0.3)  # it waits for the lock the release holds
        return found

    a.store.lease_at = an_add_starts  # type: ignore[method-assign, assignment]
    released = a.ipam.release_address(pool, "198.18.40.5", force=False)
    a.store.lease_at = lease_at  # type: ignore[method-assign]
    adding[0].join(5)
    assert released and leased(a) == [("fixed", ("uid-pa",))]
    assert a.store.lease_of(f"IPAddress/{NS}/fixed") is not None, "the pod's address is leased to its IPAddress"


def test_a_take_off_parked_again_after_its_call_recorded_the_pod_does_not_stay_parked(
        api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    """A take-off of pa made due (another sandbox's DEL) while a call of pa is in flight; an outbox pass reads it, the
    call records pa, then the sender finds the call in flight and parks it again: once the call ends, nothing is left
    parked (found in review: it stayed so for the pod's life, the outbox's depth 1 on a healthy node)."""
    a, _ = two
    obj_ = a.source.get(IP_ADDRESS, NS, "fixed")
    assert obj_ is not None
    rec = a.ipam.record_for(obj_)
    a.registry.use(rec, a_pod("pa", FIXED, "uid-pa"), "f")
    a.registry.unused(rec, "uid-pa")
    send = a.outbox.senders["unuse"]

    def the_call_records_first(body: dict[str, Any]) -> None:
        with a.store.transaction():
            a.store.put_ip(replace(rec, used_by_uids=("uid-pa",), used_by_pods=(f"{NS}/pa",)))
            a.registry.use_recorded(rec, "uid-pa")
        send(body)

    a.outbox.senders["unuse"] = the_call_records_first
    a.outbox.flush()
    a.outbox.senders["unuse"] = send
    a.registry.use_ended(rec, "uid-pa")
    a.outbox.flush()
    assert used_by(api)["uid"] == "uid-pa" and a.outbox.depth() == 0


def test_an_ipaddress_made_again_soon_after_a_repair_is_written_at_the_next_round(
        api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    """Made again (``kubectl replace``: a new object, a new UID, no annotation) less than REPAIR_S after the node last
    wrote its pod on it: the next round writes the pod on the new object, not a minute later, so another node's pod
    is refused from then on (the pause after a repair is for a write refused on the same object)."""
    a, b = two
    a.call("ADD", "pa", "uid-pa", "ca")
    api.patch("IPAddress", "fixed", {"metadata": {"annotations": {USED_BY_ANNOTATION: None}}}, NS)
    rounds = rounds_of(a)
    rounds.run_once()
    a.outbox.flush()
    assert used_by(api)["uid"] == "uid-pa"
    replaced = obj("IPAddress", "fixed", {"networkRef": {"kind": "Network", "name": "net-a"}, "type": "Static",
                                          "static": {"ip": "198.18.40.5"}}, uid="uid-fixed-replaced")
    for node in (a, b):
        node.source.add(replaced)
    assert used_by(api) == {}, "the new object comes without the annotation"
    rounds.run_once()
    a.outbox.flush()
    assert used_by(api) == {"uid": "uid-pa", "pod": f"{NS}/pa", "node": "n1"}
    with pytest.raises(AddressConflict, match=f"in use by pod {NS}/pa on node n1"):
        b.call("ADD", "pb", "uid-pb", "cb")


@pytest.mark.parametrize("first", ["the other node", "this node"])
def test_a_static_deleted_while_its_pod_runs_keeps_its_lease_object(api: FakeApi, two: tuple[KubeNode, KubeNode],
                                                                     first: str) -> None:
    """Node n2 made the Static's lease object (every node leases a Static); pa on n1 uses the address. The user deletes
    the Static while pa runs, before n1 has made the object its own for pa (a write owed by the ADD): n2 lets its lease
    go, and n1 keeps the object, made its own (or made again when n2 deleted it first), so that no other pod gets the
    address while pa has it (found in review: the object went, and the pool could hand the address out again). pa's
    DEL lets it go at last."""
    a, b = two
    rounds_of(b).run_once()  # n2 leases the Static first: the object is n2's
    b.outbox.flush()
    a.call("ADD", "pa", "uid-pa", "ca")
    (obj_,) = [o for o in api.objs[LEASE_KIND].values() if o["spec"]["ip"] == "198.18.40.5"]
    assert obj_["metadata"]["labels"][NODE_LABEL] == "n2"
    assert [e.body["object"]["spec"]["holder"] for e in a.outbox.of_op("keep_lease")] == [f"IPAddress/{NS}/fixed"]
    for node in (a, b):
        node.source.remove("IPAddress", NS, "fixed")
    order = [(b, rounds_of(b)), (a, rounds_of(a))] if first == "the other node" else [(a, rounds_of(a)),
                                                                                       (b, rounds_of(b))]
    for node, rounds in order:
        rounds.run_once()
        node.outbox.flush()
    held = [(o["spec"]["holder"], o["metadata"]["labels"][NODE_LABEL]) for o in api.objs[LEASE_KIND].values()
            if o["spec"]["ip"] == "198.18.40.5"]
    assert held == [(f"IPAddress/{NS}/fixed", "n1")]
    a.call("DEL", "pa", "uid-pa", "ca")
    rounds_of(a).run_once()
    a.outbox.flush()
    assert [o for o in api.objs[LEASE_KIND].values() if o["spec"]["ip"] == "198.18.40.5"] == []


@pytest.mark.parametrize("first", ["the other node", "this node"])
def test_the_node_whose_pod_uses_a_static_holds_its_lease_object(api: FakeApi, two: tuple[KubeNode, KubeNode],
                                                                  first: str) -> None:
    """The lease object of a Static follows the node whose pod uses the address: n2 made it, pa's ADD on n1 makes it
    n1's. Deleted while pa runs, the Static's address then has its object at every moment, whichever node's round comes
    first (before, n2 deleted the object it made and n1 made it again a round later: a node leasing that exact address
    in between won it while pa had it)."""
    a, b = two
    rounds_of(b).run_once()  # n2 leases the Static first: the object is n2's
    b.outbox.flush()
    a.call("ADD", "pa", "uid-pa", "ca")
    a.outbox.flush()

    def held() -> list[tuple[str, str]]:
        return [(o["spec"]["holder"], o["metadata"]["labels"][NODE_LABEL]) for o in api.objs[LEASE_KIND].values()
                if o["spec"]["ip"] == "198.18.40.5"]

    assert held() == [(f"IPAddress/{NS}/fixed", "n1")], "made n1's once pa uses it"
    for node in (a, b):
        node.source.remove("IPAddress", NS, "fixed")
    for node in ((b, a) if first == "the other node" else (a, b)):
        rounds_of(node).run_once()
        node.outbox.flush()
        assert held() == [(f"IPAddress/{NS}/fixed", "n1")], "never without its object while pa uses it"
    b.source.add(obj("IPAddress", "other", {"networkRef": {"kind": "Network", "name": "net-a"}, "type": "Static",
                                            "static": {"ip": "198.18.40.5"}}, uid="uid-other"))
    rounds_of(b).run_once()  # a new Static naming the address, leased on n2: refused while pa has it
    b.outbox.flush()
    assert b.store.lease_of(f"IPAddress/{NS}/other") is None and held() == [(f"IPAddress/{NS}/fixed", "n1")]
    a.call("DEL", "pa", "uid-pa", "ca")
    rounds_of(a).run_once()
    a.outbox.flush()
    assert held() == []


@pytest.mark.parametrize("how", ["deleted and made again", "replaced whole"])
def test_an_ipaddress_made_again_while_in_use_is_refused_to_another_nodes_pod(
        api: FakeApi, two: tuple[KubeNode, KubeNode], how: str) -> None:
    """The Static pa uses is deleted and made again under the same name (``kubectl replace --force``), or replaced whole
    (``kubectl replace``, which drops the annotations it does not name): the object comes without pa written on it. pb
    on n2 naming it before n1 writes pa there again is refused all the same, by the pod n1 wrote on the address's lease
    object (found as a known gap: pb got the address pa still had). Once pa lets it go, pb gets it."""
    a, b = two
    a.call("ADD", "pa", "uid-pa", "ca")
    a.outbox.flush()
    if how == "deleted and made again":
        for node in (a, b):
            node.source.remove("IPAddress", NS, "fixed")
        rounds_of(a).run_once()  # kept
        a.outbox.flush()
        for node in (a, b):
            node.source.add(obj("IPAddress", "fixed", {"networkRef": {"kind": "Network", "name": "net-a"},
                                                       "type": "Static", "static": {"ip": "198.18.40.5"}},
                                uid="uid-fixed-again"))
    else:
        api.patch("IPAddress", "fixed", {"metadata": {"annotations": {USED_BY_ANNOTATION: None}}}, NS)
    assert used_by(api) == {}, "the object comes without the annotation"
    with pytest.raises(AddressConflict, match=f"in use by pod {NS}/pa on node n1 \\(written on its address's lease object"):
        b.call("ADD", "pb", "uid-pb", "cb")
    assert leased(b) == [] and used_by(api) == {}, "nothing written, nothing left behind"

    rounds_of(a).run_once()  # made again: n1 writes pa on it
    a.outbox.flush()
    assert used_by(api)["uid"] == "uid-pa"
    a.call("DEL", "pa", "uid-pa", "ca")
    a.outbox.flush()
    (kept,) = [o for o in api.objs[LEASE_KIND].values() if o["spec"]["ip"] == "198.18.40.5"]
    assert USED_BY_ANNOTATION not in (kept["metadata"].get("annotations") or {}), "pa no longer written on it"
    assert b.call("ADD", "pb", "uid-pb", "cb")["ips"][0]["address"] == "198.18.40.5/28"
    assert used_by(api) == {"uid": "uid-pb", "pod": f"{NS}/pb", "node": "n2"}


def test_a_late_write_of_a_pod_gone_from_one_node_leaves_the_next_users_lease_object(
        api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    """pa's ADD on n1 owes the lease object of the Static; pa finishes and goes before n1 writes it, and pb on n2 uses
    the address and has the object made its own. n1's write, made late, neither takes it back nor names pa on it, so
    that the object still names pb (found in review: it named nobody, was n1's, and a Static made again went to a
    third pod while pb had it)."""
    a, b = two
    a.call("ADD", "pa", "uid-pa", "ca")  # n1's keep of it owed, not made
    api.patch_status("Pod", "pa", {"phase": "Succeeded"}, NS)
    a.call("DEL", "pa", "uid-pa", "ca")
    b.call("ADD", "pb", "uid-pb", "cb")
    b.outbox.flush()
    a.outbox.flush()
    (kept,) = [o for o in api.objs[LEASE_KIND].values() if o["spec"]["ip"] == "198.18.40.5"]
    assert kept["metadata"]["labels"][NODE_LABEL] == "n2"
    assert '"uid-pb"' in kept["metadata"]["annotations"][USED_BY_ANNOTATION]


def test_a_late_write_of_a_pod_that_still_uses_the_address_does_not_take_another_nodes_keep(
        api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    """Two pods on two nodes both think they use the Static (a window the README names): the write of the one whose
    node comes second leaves the other's lease object alone, and says so."""
    import copy

    from ipamd.model.used_by import User

    a, _ = two
    a.call("ADD", "pa", "uid-pa", "ca")
    (owed,) = a.outbox.of_op("keep_lease")
    body = copy.deepcopy(owed.body["object"])  # n2's, for pb
    body["metadata"]["labels"][NODE_LABEL] = "n2"
    body["metadata"]["annotations"] = {USED_BY_ANNOTATION: User("uid-pb", f"{NS}/pb", "n2").text()}
    name = body["metadata"]["name"]
    api.objs[LEASE_KIND].pop(name, None)
    api.create(LEASE_KIND, body)
    a.outbox.flush()
    kept = api.objs[LEASE_KIND][name]
    assert kept["metadata"]["labels"][NODE_LABEL] == "n2" and '"uid-pb"' in kept["metadata"]["annotations"][
        USED_BY_ANNOTATION]


def test_a_kept_lease_object_another_node_quarantined_is_taken_back_whole(api: FakeApi,
                                                                          two: tuple[KubeNode, KubeNode]) -> None:
    """With a leaseTTL the other node quarantines its object instead of deleting it (its holder dropped, an orphaning
    time set): the pod's node takes it back, holder, label and all, and a write that failed half way is finished by
    the retry."""
    from ipamd.kube.leases import lease_body

    a, _ = two
    body = lease_body("IPAddressPool/ns/pool", "198.18.40.5", "198.18.40.0/28", f"IPAddress/{NS}/fixed", 60.0, "n2")
    name = body["metadata"]["name"]
    api.create(LEASE_KIND, body)
    api.patch(LEASE_KIND, name, {"spec": {"holder": None}})
    api.patch_status(LEASE_KIND, name, {"orphaningTimestamp": "2026-12-01T00:00:00Z"})
    kept = {"object": lease_body("IPAddressPool/ns/pool", "198.18.40.5", "198.18.40.0/28", f"IPAddress/{NS}/fixed",
                                 60.0, "n1")}
    patch_status = api.patch_status
    api.patch_status = answering(503, "Service Unavailable")  # type: ignore[method-assign]
    with pytest.raises(ApiException):
        a.registry._keep_lease(kept)
    api.patch_status = patch_status  # type: ignore[method-assign]
    a.registry._keep_lease(kept)  # the outbox's retry
    got = api.objs[LEASE_KIND][name]
    assert got["spec"]["holder"] == f"IPAddress/{NS}/fixed" and got["metadata"]["labels"][NODE_LABEL] == "n1"
    assert not (got.get("status") or {}).get("orphaningTimestamp")


def test_a_keep_the_other_nodes_delete_overtakes_makes_the_object_again(api: FakeApi,
                                                                         two: tuple[KubeNode, KubeNode]) -> None:
    """n2 deletes the object it made between n1's read of it and n1's patch (both react to the same deletion): the
    patch's 404 is retried, not taken as done, and the object is made again (found in review: the keep was dropped,
    and no object kept the address pa used). The Static is deleted before n1 made the object its own for pa."""
    a, b = two
    rounds_of(b).run_once()
    b.outbox.flush()
    a.call("ADD", "pa", "uid-pa", "ca")
    for node in (a, b):
        node.source.remove("IPAddress", NS, "fixed")
    rounds_of(a).run_once()  # owes the keep
    rounds_of(b).run_once()  # owes its release
    get = api.get
    fired: list[bool] = []

    def n2_releases_after_n1_read(kind: str, name: str, namespace: str = "") -> Any:
        found = get(kind, name, namespace)
        if kind == LEASE_KIND and not fired:
            fired.append(True)
            b.outbox.flush()
        return found

    api.get = n2_releases_after_n1_read  # type: ignore[method-assign]
    a.outbox.flush()
    api.get = get  # type: ignore[method-assign]
    assert fired
    (retried,) = a.outbox.of_op("keep_lease")  # owed still, not dropped as done
    a.outbox.flush_target(retried.target)  # the retry, once its backoff is over
    assert [(o["spec"]["holder"], o["metadata"]["labels"][NODE_LABEL]) for o in api.objs[LEASE_KIND].values()
            if o["spec"]["ip"] == "198.18.40.5"] == [(f"IPAddress/{NS}/fixed", "n1")]


def test_a_restart_keeps_the_lease_of_an_ipaddress_deleted_while_in_use(api: FakeApi,
                                                                        two: tuple[KubeNode, KubeNode]) -> None:
    """A record marked deleted while in use before the restart (or by the version before this one) is kept again at
    the start: its keep is owed by the recovery."""
    a, _ = two
    a.call("ADD", "pa", "uid-pa", "ca")
    a.outbox.flush()
    rec = a.store.get_ip(f"IPAddress/{NS}/fixed")
    assert rec is not None
    with a.store.transaction():
        a.store.put_ip(replace(rec, deleted=True))  # marked by a version that owed no keep
    assert a.outbox.of_op("keep_lease") == []
    rounds_of(a).recover()
    assert [e.body["object"]["spec"]["holder"] for e in a.outbox.of_op("keep_lease")] == [f"IPAddress/{NS}/fixed"]


def test_a_restart_owes_the_keep_of_a_static_its_pods_used_before_this_version(
        api: FakeApi, two: tuple[KubeNode, KubeNode]) -> None:
    """A Static a pod of the node used before this version (no keep owed, nor made) is made the node's, with the pod
    written on its lease object, at the start."""
    a, _ = two
    a.call("ADD", "pa", "uid-pa", "ca")
    a.outbox.drop_where(a.outbox.of_op("keep_lease")[0].target, "keep_lease", lambda body: True)  # as before it
    rounds_of(a).recover()
    (owed,) = a.outbox.of_op("keep_lease")
    assert '"uid-pa"' in owed.body["object"]["metadata"]["annotations"][USED_BY_ANNOTATION]

"""The controller gives back what a vanished node held: its blocks, and its gone pods' leases (quarantined), never
what a pod still bound to the node or a living object holds. The judgements alone, then the controller over a
fake API server with a node that leased through blocks."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ipamd.kube.blocks import KIND as BLOCK_KIND
from ipamd.kube.controller import Controller
from ipamd.kube.heartbeat import LABEL as HEARTBEAT_LABEL
from ipamd.kube.heartbeat import heartbeat_ages, heartbeat_body
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import NODE_LABEL, POOL_LABEL, pool_label
from ipamd.kube.reclaim import GONE_GRACE_S, may_hold_addresses, silent_nodes, stray_leases, vanished
from ipamd.model.objects import SPEC_ANNOTATION
from ipamd.model.timefmt import rfc3339
from tests.fakes.cluster import FakeApi, FakeCache
from tests.unit.test_blocks import Node

OLD = "2026-01-01T00:00:00Z"


def block(name: str, node: str, renewed: str | None, created: str = OLD) -> dict[str, Any]:
    item: dict[str, Any] = {"metadata": {"name": name, "creationTimestamp": created},
                            "spec": {"pool": "ns/big", "cidr": "198.18.40.0/28", "node": node}}
    if renewed:
        item["status"] = {"renewTime": renewed}
    return item


def lease(name: str, node: str, holder: str | None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {NODE_LABEL: node}}, "spec": {"holder": holder, "ip": "198.18.40.1"}}


def test_a_node_is_as_silent_as_its_most_recently_renewed_block() -> None:
    now = float(int(time.time()))  # RFC 3339 here keeps whole seconds
    found = silent_nodes([block("a", "n1", rfc3339(now - 700)), block("b", "n1", rfc3339(now - 30)),
                          block("c", "n2", None, created=rfc3339(now - 900)), {"metadata": {"name": "bad"}}], now)
    assert {n: (round(s), sorted(names)) for n, (s, names) in found.items()} == {
        "n1": (30, ["a", "b"]), "n2": (900, ["c"])}, "never renewed: its creation counts; unparsable: skipped"


def test_a_node_is_as_silent_as_its_newest_block_or_heartbeat() -> None:
    now = float(int(time.time()))
    beats = heartbeat_ages([heartbeat_body("n1", "plexus-system", now - 20), heartbeat_body("n3", "x", now - 400),
                            {"metadata": {"name": "no-holder"}, "spec": {"renewTime": rfc3339(now)}},
                            {"metadata": {"labels": {HEARTBEAT_LABEL: "true"}},
                             "spec": {"holderIdentity": "bad", "renewTime": "yesterday"}}], now)
    assert {n: round(a) for n, a in beats.items()} == {"n1": 20, "n3": 400}
    found = silent_nodes([block("a", "n1", rfc3339(now - 700)), block("c", "n2", rfc3339(now - 900))], now, beats)
    assert {n: (round(s), names) for n, (s, names) in found.items()} == {
        "n1": (20, ["a"]), "n2": (900, ["c"]), "n3": (400, [])}, "a node without blocks is judged by its heartbeat"


def test_a_node_vanishes_after_the_ttl_or_sooner_once_its_node_object_is_gone() -> None:
    asked: list[bool] = []

    def exists(answer: bool) -> Any:
        def ask() -> bool:
            asked.append(answer)
            return answer
        return ask

    assert vanished(601, 600, exists(True)), "silent past the TTL: whether the Node exists does not matter"
    assert not vanished(GONE_GRACE_S - 1, 600, exists(False)), "the Node gone but a renewal could still be due"
    assert vanished(GONE_GRACE_S + 1, 600, exists(False))
    assert not vanished(GONE_GRACE_S + 1, 600, exists(True)), "the Node is there: it may come back, wait the TTL"
    assert asked == [False, True], "the API is asked only when the answer matters"


def test_stray_leases_are_the_nodes_own_whose_holder_is_gone() -> None:
    items = [lease("pod-gone", "n1", "IPAddress/ns/auto-gone"), lease("user-ip", "n1", "IPAddress/ns/kept"),
             lease("claim", "n1", "IPAMClaim/ns/vm"), lease("delegate", "n1", "CNI/net/abc/net1"),
             lease("quarantined", "n1", None), lease("other-node", "n2", "IPAddress/ns/auto-gone"),
             {"metadata": {"name": "unlabelled"}, "spec": {"holder": "IPAddress/ns/x"}}]
    assert [i["metadata"]["name"] for i in stray_leases(items, "n1", {"IPAddress/ns/kept"})] == ["pod-gone", "delegate"]


class Cluster:
    """The controller's source and CoreV1 reads over a fake API: pods bound to nodes, and Node objects."""

    def __init__(self, api: FakeApi, user_ips: tuple[str, ...] = ()) -> None:
        self.objects, self.node_name, self.cache = api, "ctl", FakeCache(api)
        self.pods: list[str] = []  # a running pod with a network namespace of its own on each of these nodes
        self.bound: list[dict[str, Any]] = []  # other pods, as the API server has them
        self.nodes: list[str] = []
        self.specs: list[tuple[str, str]] = []  # the pods' (namespace, networks-spec)
        self.user_ips = user_ips

    def subscribe(self, fn: Any) -> None:
        pass

    def items(self, kind: str) -> list[dict[str, Any]]:
        if kind in ("IPAddress", "ClusterIPAddress"):  # raw, as the informers keep them
            return [{"metadata": {"namespace": k.split("/")[1], "name": k.split("/")[2]}}
                    for k in self.user_ips if k.startswith(f"{kind}/")]
        return self.cache.items(kind)

    def by_index(self, kind: str, index: str, key: Any) -> list[dict[str, Any]]:
        return self.cache.by_index(kind, index, key)

    # CoordinationV1Api: the nodes' heartbeat Leases
    def list_namespaced_lease(self, namespace: str, label_selector: str, _preload_content: bool) -> Any:
        items = [o for o in self.objects.objs["Lease"].values() if label_selector in o["metadata"].get("labels", {})]
        return SimpleNamespace(data=json.dumps({"items": items}).encode())

    def delete_namespaced_lease(self, name: str, namespace: str) -> None:
        self.objects.delete("Lease", name)

    def list_pod_for_all_namespaces(self, field_selector: str = "", limit: int = 0, **_: Any) -> Any:
        if not field_selector:  # every pod, as JSON: what their networks-spec names
            return self.list_namespaced_pod("")
        node = field_selector.split("=", 1)[1]
        items = [pod for pod in self.bound if pod["spec"]["nodeName"] == node]
        items += [{"spec": {"nodeName": node}, "status": {"phase": "Running"}}] if node in self.pods else []
        return SimpleNamespace(data=json.dumps({"items": items}).encode())

    def list_namespaced_pod(self, namespace: str, **_: Any) -> Any:
        items = [{"metadata": {"namespace": ns, "annotations": {SPEC_ANNOTATION: spec}}}
                 for ns, spec in self.specs if ns == namespace or not namespace]
        return SimpleNamespace(data=json.dumps({"items": items}).encode())

    def read_node(self, name: str) -> Any:
        if name not in self.nodes:
            raise ApiException(status=404, reason="NotFound")
        return SimpleNamespace()


@pytest.fixture
def gone(api: FakeApi) -> tuple[Node, list[tuple[str, str]]]:
    node = Node(api, "gone")
    node.add(), node.add()
    node.outbox.flush()
    return node, node.held_by_holder()


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


def controller(cluster: Cluster) -> Controller:
    ctl = Controller(client.ApiClient(), cluster, "plexus-system", block_ttl_s=600)  # type: ignore[arg-type]
    ctl.core = cluster  # type: ignore[assignment]
    ctl.coord = cluster  # type: ignore[assignment]
    return ctl


def silence(api: FakeApi, seconds: float) -> None:
    """The blocks last renewed ``seconds`` ago, by the node's clock and by the API server's stamp alike."""
    for o in api.objs[BLOCK_KIND].values():
        o.setdefault("status", {})["renewTime"] = rfc3339(time.time() - seconds)
        for entry in o["metadata"].get("managedFields") or ():
            entry["time"] = rfc3339(time.time() - seconds)


def silence_beats(api: FakeApi, seconds: float) -> None:
    """The nodes' heartbeats last renewed ``seconds`` ago, by the node's clock and by the API server's stamp alike."""
    for o in api.objs["Lease"].values():
        o["spec"]["renewTime"] = rfc3339(time.time() - seconds)
        for entry in o["metadata"].get("managedFields") or ():
            entry["time"] = rfc3339(time.time() - seconds)


def test_the_controller_reclaims_a_silent_node_that_runs_no_pod(api: FakeApi, gone: tuple[Node, list[tuple[str, str]]],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ipamd.kube.controller.VANISHED_LOOK_S", 0.0)  # a reclaimed node looked at every round
    _, held = gone
    kept_ip, kept_holder = held[0]
    cluster = Cluster(api, user_ips=(kept_holder,))  # the first address is a user's IPAddress, which still exists
    cluster.pods, cluster.nodes = ["gone"], ["gone"]
    ctl = controller(cluster)
    ctl.reclaim_blocks()
    assert len(api.objs[BLOCK_KIND]) == 1, "renewed lately (its creation here): kept"
    silence(api, 3600)
    ctl.reclaim_blocks()
    assert len(api.objs[BLOCK_KIND]) == 1, "silent, but a pod is still bound to it: kept"
    assert all(o["spec"].get("holder") for o in api.objs[LEASE_KIND].values()), "and every lease held"
    cluster.pods = []
    ctl.reclaim_blocks()
    assert not api.objs[BLOCK_KIND], "silent and no pod: reclaimed"
    by_ip = {o["spec"]["ip"]: o for o in api.objs[LEASE_KIND].values()}
    assert by_ip[kept_ip]["spec"]["holder"] == kept_holder and "status" not in by_ip[kept_ip], \
        "the user's IPAddress still exists: it keeps its address"
    orphaned = [o for ip, o in by_ip.items() if ip != kept_ip]
    assert len(orphaned) == 1 and "holder" not in orphaned[0]["spec"], "the gone pod's lease is let go"
    assert orphaned[0]["status"]["orphaningTimestamp"], "in quarantine first, like any lease a pod let go"
    ctl.expire_leases()
    assert set(by_ip) - {kept_ip} and not {o["spec"]["ip"] for o in api.objs[LEASE_KIND].values()} - {kept_ip}, \
        "its quarantine (leaseTTL 0s here) over, the address is free again"
    cluster.user_ips = ()  # the IPAddress goes too (a pod's own, which the garbage collector deletes late)
    ctl.reclaim_blocks()
    (kept,) = api.objs[LEASE_KIND].values()
    assert "holder" not in kept["spec"] and kept["status"]["orphaningTimestamp"], \
        "a node reclaimed earlier is looked at again: the lease its holder kept goes once the holder has"


def test_a_silent_node_whose_pods_may_hold_no_address_is_reclaimed(api: FakeApi,
                                                                    gone: tuple[Node, list[tuple[str, str]]]) -> None:
    """A dead node keeps its DaemonSets' host-network pods (Plexus's own among them) and its finished pods bound to it
    for ever: they do not keep its blocks. A pod being deleted may still run there (a node cut off): it does."""
    cluster = Cluster(api)
    cluster.nodes = ["gone"]
    daemon = {"spec": {"nodeName": "gone", "hostNetwork": True}, "status": {"phase": "Running"}}
    done = {"spec": {"nodeName": "gone"}, "status": {"phase": "Succeeded"}}
    failed = {"spec": {"nodeName": "gone"}, "status": {"phase": "Failed"}}
    terminating = {"metadata": {"deletionTimestamp": "2026-12-02T00:00:00Z"}, "spec": {"nodeName": "gone"},
                   "status": {"phase": "Running"}}
    elsewhere = {"spec": {"nodeName": "other"}, "status": {"phase": "Running"}}
    cluster.bound = [daemon, done, failed, terminating, elsewhere]
    ctl = controller(cluster)
    silence(api, 3600)
    ctl.reclaim_blocks()
    assert len(api.objs[BLOCK_KIND]) == 1, "a pod being deleted may still run there: kept"
    cluster.bound = [daemon, done, failed, elsewhere]
    ctl.reclaim_blocks()
    assert not api.objs[BLOCK_KIND], "only host-network and finished pods left on it: reclaimed"


@pytest.mark.parametrize(("pod", "holds"), [
    ({"spec": {}, "status": {"phase": "Running"}}, True),
    ({"spec": {}, "status": {"phase": "Pending"}}, True),
    ({}, True),  # nothing known of it: it may hold one
    ({"spec": {"hostNetwork": True}, "status": {"phase": "Running"}}, False),
    ({"spec": {}, "status": {"phase": "Succeeded"}}, False),
    ({"spec": {}, "status": {"phase": "Failed"}}, False),
])
def test_which_pods_of_a_silent_node_may_hold_an_address(pod: dict[str, Any], holds: bool) -> None:
    assert may_hold_addresses(pod) is holds


def test_a_lease_made_again_meanwhile_is_not_quarantined(api: FakeApi,
                                                         gone: tuple[Node, list[tuple[str, str]]]) -> None:
    silence(api, 3600)
    cluster = Cluster(api)
    cluster.cache = FakeCache(api, live=False)  # the controller's view lags behind the API
    cluster.cache.sync()
    for o in api.objs[LEASE_KIND].values():  # each lease deleted and made again (another holder) since
        o["metadata"]["resourceVersion"] += "-again"
    ctl = controller(cluster)
    ctl.reclaim_blocks()
    assert all(o["spec"].get("holder") and "status" not in o for o in api.objs[LEASE_KIND].values()), \
        "the version the cache saw is gone: the lease is left to whoever holds it now"


def test_a_quarantined_lease_adopted_meanwhile_is_not_expired(api: FakeApi,
                                                              gone: tuple[Node, list[tuple[str, str]]]) -> None:
    """The controller's cache shows a lease in quarantine and past its TTL, but a Static IPAddress adopted it since
    (its holder set, the orphaning time dropped): the expiry's delete is conditional on the version the cache saw,
    so the adopted lease stays."""
    for o in api.objs[LEASE_KIND].values():
        api.patch_status(LEASE_KIND, o["metadata"]["name"], {"orphaningTimestamp": rfc3339(time.time() - 60)})
    cluster = Cluster(api)
    cluster.cache = FakeCache(api, live=False)  # what the controller saw: in quarantine, its TTL (0s) over
    cluster.cache.sync()
    adopted = next(iter(api.objs[LEASE_KIND]))
    api.patch(LEASE_KIND, adopted, {"spec": {"holder": "IPAddress/ns/fixed"}})
    api.patch_status(LEASE_KIND, adopted, {"orphaningTimestamp": None})
    ctl = controller(cluster)
    ctl.expire_leases()
    assert list(api.objs[LEASE_KIND]) == [adopted], "the others expired, the adopted one kept"


def test_a_deleted_node_is_reclaimed_after_a_few_missed_renewals(api: FakeApi, gone: tuple[Node, list[tuple[str, str]]],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ipamd.kube.controller.NODE_SEEN_S", 0.0)  # a Node seen is asked for again at once
    cluster = Cluster(api)
    cluster.nodes = ["gone"]
    ctl = controller(cluster)
    silence(api, GONE_GRACE_S + 10)
    ctl.reclaim_blocks()
    assert len(api.objs[BLOCK_KIND]) == 1, "its Node exists: the whole TTL is waited for"
    cluster.nodes = []
    ctl.reclaim_blocks()
    assert not api.objs[BLOCK_KIND], "its Node deleted and no pod bound to it: reclaimed without waiting the TTL"
    assert not [o for o in api.objs[LEASE_KIND].values() if o["spec"].get("holder")]


def test_lease_objects_of_earlier_versions_get_their_pool_label_once(api: FakeApi) -> None:
    """A node that claims a block lists the pool's lease objects by their pool label: one made before that label
    existed would be missed, so the controller labels it."""
    api.objs[LEASE_KIND]["old"] = {"metadata": {"name": "old", "resourceVersion": "1"},
                                   "spec": {"pool": "IPAddressPool/ns/big", "ip": "198.18.40.7", "holder": "x"}}
    cluster = Cluster(api)
    ctl = controller(cluster)
    assert ctl.label_leases() == 1
    assert api.objs[LEASE_KIND]["old"]["metadata"]["labels"] == {POOL_LABEL: pool_label("IPAddressPool/ns/big")}
    assert ctl.label_leases() == 0, "labelled once"


def test_a_node_that_leased_per_address_is_reclaimed_by_its_heartbeat(api: FakeApi,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A node whose pools were too small for blocks (or run with --address-blocks off) renews nothing but its
    heartbeat: silent past the TTL with no pod bound to it, its gone pods' leases are let go and its heartbeat
    deleted. Before heartbeats, only blocks told the controller a node was alive, so such a node was never judged and
    its addresses stayed taken for ever."""
    monkeypatch.setattr("ipamd.kube.controller.VANISHED_LOOK_S", 0.0)
    node = Node(api, "solo", claim=False)
    node.registry.heartbeat_namespace = "plexus-system"
    node.add(), node.add()
    node.clock.now = time.time()  # the heartbeat's time is the node's clock
    node.registry.housekeep([], lambda pool, ip: True, node.store.transaction)
    node.outbox.flush()
    assert not api.objs[BLOCK_KIND] and len(api.objs[LEASE_KIND]) == 2, "leased per address, no block"
    (beat,) = api.objs["Lease"].values()
    assert beat["metadata"]["labels"] == {HEARTBEAT_LABEL: "true"} and beat["spec"]["holderIdentity"] == "solo"
    cluster = Cluster(api)
    ctl = controller(cluster)
    ctl.reclaim_blocks()
    assert all(o["spec"].get("holder") for o in api.objs[LEASE_KIND].values()), "renewed just now: alive"
    silence_beats(api, 3600)
    ctl.reclaim_blocks()
    assert all(o["spec"].get("holder") for o in api.objs[LEASE_KIND].values()), "listed every 30 s, not every round"
    monkeypatch.setattr("ipamd.kube.controller.HEARTBEATS_READ_S", 0.0)
    silence_beats(api, 3600)
    cluster.pods = ["solo"]
    ctl.reclaim_blocks()
    assert all(o["spec"].get("holder") for o in api.objs[LEASE_KIND].values()), "silent, but a pod is bound to it"
    cluster.pods = []
    ctl.reclaim_blocks()
    assert not [o for o in api.objs[LEASE_KIND].values() if o["spec"].get("holder")], "its gone pods' leases let go"
    assert all(o["status"]["orphaningTimestamp"] for o in api.objs[LEASE_KIND].values()), "quarantined first"
    assert api.objs["Lease"], "its heartbeat stays while it has lease objects"
    ctl.expire_leases()
    ctl.reclaim_blocks()
    assert not api.objs[LEASE_KIND] and not api.objs["Lease"], "its last lease expired: its heartbeat deleted"


def test_a_controller_started_since_still_gives_back_what_a_vanished_node_kept(api: FakeApi,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A vanished node's lease held by a user's IPAddress stays while the IPAddress exists; deleted after the
    controller restarted (or another replica took over), it is still given back: the node's heartbeat, silent, stays
    until its last lease object goes (the controller's memory of the nodes it reclaimed is lost with it)."""
    monkeypatch.setattr("ipamd.kube.controller.HEARTBEATS_READ_S", 0.0)
    node = Node(api, "solo", claim=False)
    node.registry.heartbeat_namespace = "plexus-system"
    node.add(), node.add()
    node.clock.now = time.time() - 3600  # its last heartbeat, an hour ago
    node.registry.housekeep([], lambda pool, ip: True, node.store.transaction)
    node.outbox.flush()
    silence_beats(api, 3600)
    kept_ip, kept_holder = node.held_by_holder()[0]
    cluster = Cluster(api, user_ips=(kept_holder,))
    controller(cluster).reclaim_blocks()
    held = {o["spec"]["ip"]: o["spec"].get("holder") for o in api.objs[LEASE_KIND].values()}
    assert held[kept_ip] == kept_holder and sum(h is None for h in held.values()) == 1, "the gone pod's let go"
    cluster.user_ips = ()  # the user deletes the IPAddress; a new controller process runs
    controller(cluster).reclaim_blocks()
    assert not [o for o in api.objs[LEASE_KIND].values() if o["spec"].get("holder")], "given back all the same"


def test_a_node_renews_its_heartbeat_with_its_blocks(api: FakeApi) -> None:
    node = Node(api, "beating")
    node.registry.heartbeat_namespace = "plexus-system"
    node.add()
    node.registry.housekeep([], lambda pool, ip: True, node.store.transaction)
    node.outbox.flush()
    first = api.objs["Lease"]["plexus-node-beating"]["spec"]["renewTime"]
    node.registry.housekeep([], lambda pool, ip: True, node.store.transaction)
    node.outbox.flush()
    assert api.objs["Lease"]["plexus-node-beating"]["spec"]["renewTime"] == first, "not again within a minute"
    node.clock.now += 61
    node.registry.housekeep([], lambda pool, ip: True, node.store.transaction)
    node.outbox.flush()
    assert api.objs["Lease"]["plexus-node-beating"]["spec"]["renewTime"] > first



def test_a_reclaimed_node_that_keeps_leases_is_looked_at_once_a_minute(api: FakeApi,
                                                                       gone: tuple[Node, list[tuple[str, str]]]) -> None:
    """A vanished node whose leases are held by objects that still exist (a Static, a user's IPAddress, an IPAMClaim)
    keeps being looked at, but not with a list of its pods every controller round (every 2 s) for as long."""
    _, held = gone
    cluster = Cluster(api, user_ips=tuple(h for _, h in held))  # every lease held by an IPAddress that exists
    silence(api, 3600)
    ctl = controller(cluster)
    asked: list[str] = []
    list_pods = cluster.list_pod_for_all_namespaces

    def counted(*a: Any, **k: Any) -> Any:
        asked.append(k.get("field_selector", ""))
        return list_pods(*a, **k)

    cluster.list_pod_for_all_namespaces = counted  # type: ignore[method-assign]
    for _ in range(5):
        ctl.reclaim_blocks()
    assert asked == ["spec.nodeName=gone"] and all(o["spec"].get("holder") for o in api.objs[LEASE_KIND].values())


REVIEW_POOL = "IPAddressPool/ns/big"


def _claimed_lease(api: FakeApi, ip: str, holder: str, node: str) -> str:
    name = f"ip-{ip.replace('.', '-')}-x"
    labels = {NODE_LABEL: node, POOL_LABEL: pool_label(REVIEW_POOL)}
    api.create(LEASE_KIND, {"metadata": {"name": name, "labels": labels},
                            "spec": {"pool": REVIEW_POOL, "ip": ip, "network": "198.18.40.0/24", "holder": holder,
                                     "ttl": "0s"}})
    return name


def _silent_block(api: FakeApi, node: str, cidr: str = "198.18.40.0/28") -> str:
    name = f"blk-{cidr.replace('.', '-').replace('/', '-')}"
    api.create(BLOCK_KIND, {"metadata": {"name": name}, "spec": {"pool": REVIEW_POOL, "cidr": cidr, "node": node}})
    return name


def test_a_vanished_nodes_lease_of_a_deleted_ipamclaim_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A KubeVirt VM (IPAMClaim ``ns/vm``) ran on node ``gone``; the node died, and the VM and its claim were deleted
    (the claim's ownerReference) before any other node took the claim up. The only node that could release the lease
    (its reconciler's ``_sync_ipaddresses``) is gone; the controller keeps every ``IPAMClaim/...`` holder for ever
    (``stray_leases``), whether the claim exists or not. README: "a lease held by an IPAddress or an IPAMClaim *that
    still exists* stays with it"."""
    monkeypatch.setattr("ipamd.kube.controller.VANISHED_LOOK_S", 0.0)
    api = FakeApi()
    _silent_block(api, "gone")
    claim_lease = _claimed_lease(api, "198.18.40.3", "IPAMClaim/ns/vm", "gone")
    api.create("IPAMClaim", {"metadata": {"name": "vm", "namespace": "ns"}, "spec": {"network": "net"}}, "ns")
    silence(api, 3600)
    cluster = Cluster(api)
    ctl = controller(cluster)
    ctl.reclaim_blocks()
    assert not api.objs[BLOCK_KIND], "silent, no pod: reclaimed"
    assert api.objs[LEASE_KIND][claim_lease]["spec"].get("holder") == "IPAMClaim/ns/vm", "the claim exists: kept"
    api.delete("IPAMClaim", "vm", "ns")  # the VM deleted; its claim goes with it
    for _ in range(3):
        ctl.reclaim_blocks()
        ctl.expire_leases()
    left = api.objs[LEASE_KIND].get(claim_lease)
    assert left is None or not left["spec"].get("holder"), \
        "the claim is gone and no node holds its address: it must come back (it stays taken for ever)"


def test_a_block_renewed_after_the_controllers_judgement_is_not_deleted() -> None:
    """The controller judges a node silent by its informer's view of the block (and a round may spend seconds on the
    pod list and one patch pair per lease before it deletes); the node's daemon comes back and renews the block
    meanwhile. Every other reclaim write carries the version the cache saw (``_orphan``, ``expire_leases``); the
    block's delete carries none, so a block just renewed by a live daemon is deleted under it (which then leases in it
    until its informer shows the delete, its lease objects owed: another node may claim the window meanwhile)."""
    api = FakeApi()
    name = _silent_block(api, "back")
    silence(api, 3600)
    cluster = Cluster(api)
    cluster.cache = FakeCache(api, live=False)  # the controller's view: silent for an hour
    cluster.cache.sync()
    api.patch_status(BLOCK_KIND, name, {"renewTime": rfc3339(time.time())})  # the daemon is back: renewed now
    controller(cluster).reclaim_blocks()
    assert name in api.objs[BLOCK_KIND], "renewed after the controller's cache saw it: the delete must not land"


def test_a_daemon_back_that_renewed_one_of_its_two_blocks_keeps_both() -> None:
    """The controller deleted a silent node's blocks at the versions its cache judged them by one after the other,
    stopping at the first 409 (renewed: the daemon is back). A daemon back renews every block in one round, each a
    write of its own, made by the outbox's 4 workers in any order: the delete of the first block lands before that
    block's renewal, the delete of the second after the second's, and the first block is deleted under the live daemon
    (which leases there, its lease objects owed, until its informer shows the delete). Found in review."""
    api = FakeApi()
    first = _silent_block(api, "back", "198.18.40.0/28")
    second = _silent_block(api, "back", "198.18.40.16/28")
    silence(api, 3600)
    cluster = Cluster(api)
    cluster.cache = FakeCache(api, live=False)  # the controller's view: both silent for an hour
    cluster.cache.sync()
    api.patch_status(BLOCK_KIND, second, {"renewTime": rfc3339(time.time())})  # one worker renewed this one already
    controller(cluster).reclaim_blocks()  # (the other worker's renewal of ``first`` lands after this)
    assert first in api.objs[BLOCK_KIND], "the daemon is back (a block of it renewed), yet its other block is deleted"


def test_a_quarantine_cut_at_the_renew_deadline_between_its_two_writes_is_finished(
        api: FakeApi, gone: tuple[Node, list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The orphaning time is written slowly and the renew deadline passes meanwhile. The holder's drop, which
    completes that quarantine, was refused (NotLeading), leaving the object between its two writes: a later round
    wrote a new orphaning time over it, so its quarantine (its address's) started again, later than it was."""
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    silence(api, 3600)
    cluster = Cluster(api)
    cluster.ready = lambda *a: True  # type: ignore[attr-defined]
    ctl = controller(cluster)
    monkeypatch.setattr(ctl.elector, "try_acquire", lambda: True)
    for step in ("assign_segments", "allocate_user_ipaddresses", "expire_leases", "label_leases",
                 "release_unused_leases", "pool_usage"):
        monkeypatch.setattr(ctl, step, lambda: None)  # the reclaim alone
    patch_status = api.patch_status

    def slow_patch_status(kind: str, name: str, body: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        made = patch_status(kind, name, body, *args, **kwargs)
        if kind == LEASE_KIND:
            now[0] += 11  # past the renew deadline (10 s of the Lease's 15)
        return made

    api.patch_status = slow_patch_status  # type: ignore[method-assign,assignment]
    ctl.run_once()
    orphaned = [o for o in api.objs[LEASE_KIND].values() if (o.get("status") or {}).get("orphaningTimestamp")]
    assert orphaned and all(not o["spec"].get("holder") for o in orphaned), \
        "a quarantine begun is finished: its holder dropped at the version its first write made"


def _attachment(api: FakeApi, node: str, network: str) -> None:
    api.create("NodeNetworkInterfaceAttachment", {
        "apiVersion": "network.deckhouse.io/v1alpha1", "kind": "NodeNetworkInterfaceAttachment",
        "metadata": {"name": f"{node}-{network}", "labels": {"network.deckhouse.io/node": node}},
        "spec": {"networkRef": {"kind": "Network", "namespace": "ns", "name": network}, "nodeName": node,
                 "bridgeName": "plx-br-600"}})


def test_a_reclaimed_nodes_attachments_go_with_its_blocks(api: FakeApi, gone: tuple[Node, list[tuple[str, str]]]) -> None:
    """A vanished node's NodeNetworkInterfaceAttachments have no daemon left to remove them: one that names the bridge
    of a deleted Network held that Network's VLAN ID for ever (with a one-ID pool, no Network could have one again).
    They go with its blocks, once no pod is bound to it; another node's stay."""
    _attachment(api, "gone", "deleted-net")
    _attachment(api, "other", "deleted-net")
    cluster = Cluster(api)
    cluster.pods, cluster.nodes = ["gone"], ["gone", "other"]
    ctl = controller(cluster)
    silence(api, 3600)
    ctl.reclaim_blocks()
    assert set(api.objs["NodeNetworkInterfaceAttachment"]) == {"gone-deleted-net", "other-deleted-net"}, \
        "a pod is still bound to it: kept"
    cluster.pods = []
    ctl.reclaim_blocks()
    assert not api.objs[BLOCK_KIND]
    assert set(api.objs["NodeNetworkInterfaceAttachment"]) == {"other-deleted-net"}


def test_a_reclaimed_nodes_leases_are_quarantined_even_when_its_attachments_cannot_be_deleted(
        api: FakeApi, gone: tuple[Node, list[tuple[str, str]]]) -> None:
    """A controller whose role lacks the delete of NodeNetworkInterfaceAttachments (an older rbac.yaml) logs it: the
    node's gone pods' leases are quarantined all the same, not held for ever behind the 403."""
    _attachment(api, "gone", "deleted-net")
    delete = api.delete

    def refused(kind: str, name: str, *a: Any, **k: Any) -> None:
        if kind == "NodeNetworkInterfaceAttachment":
            raise ApiException(status=403, reason="Forbidden")
        delete(kind, name, *a, **k)

    api.delete = refused  # type: ignore[method-assign]
    cluster = Cluster(api)
    cluster.nodes = ["gone"]
    ctl = controller(cluster)
    silence(api, 3600)
    ctl.reclaim_blocks()
    assert not api.objs[BLOCK_KIND]
    assert all("holder" not in o["spec"] for o in api.objs[LEASE_KIND].values()), "its gone pods' leases quarantined"

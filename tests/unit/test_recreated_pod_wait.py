"""A StatefulSet pod made again under the same name (a new UID) whose ADD comes while this node's informer still shows
the old pod: one wait for the pod at the call's UID, in the object source (``KubernetesSource.wait_for_pod``), ended by
one direct read, shared by the meta-plugin (``find_pod``) and plexus-ipam (``IpamPlugin._pod``); none when the runtime
passed the pod's annotations and UID; none on DEL."""

from __future__ import annotations

import errno
import json
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
import urllib3
from kubernetes import client

from cni.errors import CniError
from ipamd.kube.source import KubernetesSource
from ipamd.model.npwg import NETWORKS_ANNOTATION
from ipamd.model.objects import POD, POD_ANNOTATIONS_CAPABILITY
from tests.fakes.cluster import FakeApi, not_found
from tests.fakes.source import FakeSource
from tests.unit import test_plexus_ipam as tpi
from tests.unit.test_attacher import NS
from tests.unit.test_attacher_kube import KubeNode, a_pod

WAIT_S = 0.3
SPEC = "network.deckhouse.io/networks-spec"
API_AWAY = urllib3.exceptions.MaxRetryError(None, "/api/v1/namespaces/apps/pods/db-0",  # type: ignore[arg-type]
                                            ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))


def pod_doc(name: str, uid: str, annotations: dict[str, str], version: str = "1") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "uid": uid,
                                                            "resourceVersion": version, "annotations": annotations},
            "spec": {"nodeName": "n1"}}


class FakeCore:
    """``CoreV1Api``'s pod GET: the pod the API server has now (None: a 404), or the failure to reach it."""

    def __init__(self, answer: dict[str, Any] | BaseException | None) -> None:
        self.answer = answer
        self.reads: list[tuple[str, str]] = []

    def read_namespaced_pod(self, name: str, namespace: str, **_: Any) -> Any:
        self.reads.append((namespace, name))
        if isinstance(self.answer, BaseException):
            raise self.answer
        if self.answer is None:
            raise not_found("Pod", name)
        return SimpleNamespace(data=json.dumps(self.answer).encode())


def kube_pods(cached: dict[str, Any] | None,
              api: dict[str, Any] | BaseException | None) -> tuple[KubernetesSource, FakeCore]:
    """A real Kubernetes source whose informer shows ``cached`` and never catches up, and whose GET answers ``api``."""
    kube = KubernetesSource(client.ApiClient(), "n1", pod_wait_s=WAIT_S)
    if cached is not None:
        kube.informers[POD.name].apply("ADDED", cached)
    core = FakeCore(api)
    kube.core = core  # type: ignore[assignment]
    return kube, core


def pods_from(source: FakeSource, kube: KubernetesSource) -> None:
    """The fake source's objects, but its pods (and its wait for one) from ``kube``."""
    real = source.get

    def get(kind: Any, namespace: str, name: str) -> Any:
        return kube.get(kind, namespace, name) if kind is POD else real(kind, namespace, name)

    source.get = get  # type: ignore[method-assign]
    source.wait_for_pod = kube.wait_for_pod  # type: ignore[method-assign]


# -- the meta-plugin ----------------------------------------------------------------------------------------------------

def _selection(if_name: str) -> str:
    return json.dumps([{"type": "Network", "name": "net-a", "ifName": if_name}])


def test_meta_plugin_add_takes_the_runtimes_pod_at_once_while_the_cache_shows_the_old_uid() -> None:
    node = KubeNode(FakeApi())
    node.source.add(a_pod("app", [{"type": "Network", "name": "net-a", "ifName": "net1"}], "uid-old"))
    runtime = {"runtimeConfig": {POD_ANNOTATIONS_CAPABILITY: {SPEC: _selection("net2")}}}
    started = time.monotonic()
    node.call("ADD", "app", "uid-new", "c1", runtime)
    assert time.monotonic() - started < 1.0 and node.source.waited == [], "waited for a pod the runtime described"
    (rec,) = node.store.attachments()
    assert rec.pod_uid == "uid-new" and [i.if_name for i in rec.interfaces] == ["net2"], "not the runtime's selection"
    node.call("DEL", "app", "uid-new", "c1", runtime)
    assert node.store.attachments() == []


def test_meta_plugin_add_takes_the_pod_the_direct_read_shows_at_the_calls_uid() -> None:
    node = KubeNode(FakeApi())
    kube, core = kube_pods(pod_doc("app", "uid-old", {SPEC: _selection("net1")}),
                           pod_doc("app", "uid-new", {SPEC: _selection("net2")}, "2"))
    pods_from(node.source, kube)
    node.call("ADD", "app", "uid-new", "c1")
    assert core.reads == [(NS, "app")]
    (rec,) = node.store.attachments()
    assert rec.pod_uid == "uid-new" and [i.if_name for i in rec.interfaces] == ["net2"]


@pytest.mark.parametrize("api", [pod_doc("app", "uid-old", {}), pod_doc("app", "uid-newer", {}), None],
                         ids=["old-uid-still", "a-newer-pod", "gone"])
def test_meta_plugin_add_of_a_pod_the_direct_read_does_not_show_at_its_uid_is_unknown(api: Any) -> None:
    node = KubeNode(FakeApi())
    kube, core = kube_pods(pod_doc("app", "uid-old", {SPEC: _selection("net1")}), api)
    pods_from(node.source, kube)
    with pytest.raises(CniError) as err:
        node.call("ADD", "app", "uid-new", "c1")
    assert (err.value.code, err.value.details) == (3, "K8S_POD_UID"), err.value
    assert core.reads == [(NS, "app")] and node.store.attachments() == []


def test_meta_plugin_add_while_the_api_is_away_is_try_again_naming_the_pod_and_its_uid() -> None:
    node = KubeNode(FakeApi())
    kube, core = kube_pods(pod_doc("app", "uid-old", {SPEC: _selection("net1")}), API_AWAY)
    pods_from(node.source, kube)
    with pytest.raises(CniError) as err:
        node.call("ADD", "app", "uid-new", "c1")
    assert (err.value.code, err.value.details) == (11, "K8S_POD_UID"), err.value
    assert f"{NS}/app" in err.value.msg and "uid-new" in err.value.msg, err.value.msg
    assert core.reads == [(NS, "app")] and node.store.attachments() == []


def test_meta_plugin_add_of_a_pod_not_cached_while_the_api_is_away_is_try_again_naming_the_pod() -> None:
    node = KubeNode(FakeApi())
    kube, core = kube_pods(None, API_AWAY)
    pods_from(node.source, kube)
    with pytest.raises(CniError) as err:
        node.call("ADD", "app", "uid-new", "c1")
    assert (err.value.code, err.value.details) == (11, "K8S_POD_NAME"), err.value
    assert f"{NS}/app" in err.value.msg and "not reachable" in err.value.msg, err.value.msg
    assert core.reads == [(NS, "app")]


# -- plexus-ipam --------------------------------------------------------------------------------------------------------

CLAIMED = {NETWORKS_ANNOTATION: json.dumps([{"name": "nad-a", "interface": "net1", "ipam-claim-reference": "db-0"}])}


def _recreated(api: dict[str, Any] | BaseException | None) -> tuple[tpi.Node, str, FakeCore]:
    """db-0 at uid-1 ADDed and DELeted (its claim bound); the cache shows it at uid-1 for ever, the API ``api``."""
    node = tpi.Node()
    node.source.add(tpi.claim("db-0"))
    node.source.add(tpi.pod("db-0", "uid-1", json.loads(CLAIMED[NETWORKS_ANNOTATION])))
    first = node.call("ADD", tpi.SHARED, container="c1", pod_name="db-0", uid="uid-1")
    node.call("DEL", tpi.SHARED, container="c1", pod_name="db-0", uid="uid-1")
    kube, core = kube_pods(pod_doc("db-0", "uid-1", CLAIMED), api)
    pods_from(node.source, kube)
    return node, str(first["ips"][0]["address"]), core


def test_plexus_ipam_add_takes_the_pod_the_direct_read_shows_when_the_cache_never_catches_up() -> None:
    node, first, core = _recreated(pod_doc("db-0", "uid-2", CLAIMED, "2"))
    published = len(node.publisher.ip_statuses)
    again = node.call("ADD", tpi.SHARED, container="c2", pod_name="db-0", uid="uid-2")
    assert core.reads == [(tpi.NS, "db-0")], "one direct read"
    assert again["ips"][0]["address"] == first, "the claim's address"
    (written,) = node.publisher.ip_statuses[published:]
    assert (written.kind, written.used_by_pods) == ("IPAMClaim", (f"{tpi.NS}/db-0",))


def test_plexus_ipam_add_while_the_api_is_away_is_try_again_naming_the_pod_and_its_uid() -> None:
    node, _, core = _recreated(API_AWAY)
    err = node.error("ADD", tpi.SHARED, container="c2", pod_name="db-0", uid="uid-2")
    assert (err.code, err.details) == (11, "K8S_POD_UID"), err
    assert f"{tpi.NS}/db-0" in err.msg and "uid-2" in err.msg, err.msg
    assert core.reads == [(tpi.NS, "db-0")]


@pytest.mark.parametrize("api", [pod_doc("db-0", "uid-1", CLAIMED), None], ids=["old-uid-still", "gone"])
def test_plexus_ipam_add_of_a_pod_the_direct_read_does_not_show_at_its_uid_is_try_again_as_before(api: Any) -> None:
    node, _, core = _recreated(api)
    err = node.error("ADD", tpi.SHARED, container="c2", pod_name="db-0", uid="uid-2")
    assert (err.code, err.details) == (11, "K8S_POD_UID"), err
    assert "uid-1" in err.msg and "uid-2" in err.msg, err.msg
    assert core.reads == [(tpi.NS, "db-0")]
    (lease,) = node.store.all_leases()
    assert lease.holder == "IPAMClaim/apps/db-0", "the claim keeps its address for the pod's retry"


# -- DEL never waits, nor reads the API -----------------------------------------------------------------------------------

def test_del_of_either_path_neither_waits_nor_reads_the_api_while_the_cache_shows_another_uid() -> None:
    node, _, core = _recreated(API_AWAY)
    started = time.monotonic()
    node.call("DEL", tpi.SHARED, container="c2", pod_name="db-0", uid="uid-2")
    meta = KubeNode(FakeApi())
    kube, meta_core = kube_pods(pod_doc("app", "uid-old", {SPEC: _selection("net1")}), API_AWAY)
    runtime = {"runtimeConfig": {POD_ANNOTATIONS_CAPABILITY: {SPEC: _selection("net2")}}}
    meta.call("ADD", "app", "uid-new", "c1", runtime)
    pods_from(meta.source, kube)
    meta.call("DEL", "app", "uid-new", "c1", runtime)
    assert time.monotonic() - started < WAIT_S, "a DEL waited"
    assert core.reads == [] and meta_core.reads == [] and meta.store.attachments() == []


# -- the source's wait ----------------------------------------------------------------------------------------------------

def test_the_wait_ends_without_a_read_once_the_cache_shows_the_pod_at_the_uid() -> None:
    kube, core = kube_pods(pod_doc("db-0", "uid-1", {}), API_AWAY)
    kube.pod_wait_s = 10.0
    later = threading.Timer(0.1, kube.informers[POD.name].apply, ("MODIFIED", pod_doc("db-0", "uid-2", {}, "2")))
    later.start()
    started = time.monotonic()
    got = kube.wait_for_pod(NS, "db-0", "uid-2")
    later.join()
    assert got is not None and got.meta.uid == "uid-2" and core.reads == []
    assert time.monotonic() - started < 5.0


def test_the_wait_without_a_uid_takes_the_pod_the_cache_shows() -> None:
    kube, core = kube_pods(pod_doc("db-0", "uid-1", {}), API_AWAY)
    got = kube.wait_for_pod(NS, "db-0")
    assert got is not None and got.meta.uid == "uid-1" and core.reads == []

"""The informer's indexes stay in step with its cache through a list and every kind of watch event, so the
lease registry answers "is (pool, IP) taken?" and "what does this holder have?" without scanning the cluster."""

from __future__ import annotations

import json
from typing import Any

from ipamd.ipam.allocator import to_int
from ipamd.kube.informer import Informer
from ipamd.kube.leases import KIND, LEASE_INDEXERS, NODE_LABEL, KubeLeaseRegistry
from ipamd.kube.outbox import Outbox
from tests.fakes.store import MemoryStore


def lease(ip: str, holder: str | None, pool: str = "IPAddressPool/ns/p", node: str = "n1") -> dict[str, Any]:
    return {"metadata": {"name": f"ip-{ip}", "labels": {NODE_LABEL: node}},
            "spec": {"pool": pool, "ip": ip, "holder": holder}}


class Listed:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.data = json.dumps({"metadata": {"resourceVersion": "1"}, "items": items}).encode()


def informer(*items: dict[str, Any]) -> Informer:
    inf = Informer(KIND, lambda **kw: Listed(list(items)), KIND, "v1", lambda: None, LEASE_INDEXERS)
    inf._list()
    return inf


class Source:
    """The two lookups the registry makes, over one informer."""

    def __init__(self, inf: Informer) -> None:
        self.inf, self.objects = inf, None

    def by_index(self, kind: str, index: str, key: Any) -> list[dict[str, Any]]:
        return self.inf.by_index(index, key)

    def indexed(self, kind: str, index: str, key: Any) -> bool:
        return self.inf.indexed(index, key)


def test_indexes_follow_list_and_watch_events() -> None:
    inf = informer(lease("198.18.0.1", "IPAddress/ns/a"), lease("198.18.0.2", "IPAddress/ns/b", node="n2"))
    registry = KubeLeaseRegistry(Source(inf), "n1", Outbox(MemoryStore(), {}))  # type: ignore[arg-type]
    taken = registry.taken_elsewhere("IPAddressPool/ns/p")
    assert to_int("198.18.0.1") in taken and to_int("198.18.0.3") not in taken
    assert to_int("198.18.0.1") not in registry.taken_elsewhere("IPAddressPool/ns/other")
    assert registry.held_by("IPAddress/ns/b", "IPAddressPool/ns/p") == to_int("198.18.0.2")
    assert [o["spec"]["ip"] for o in inf.by_index("node", "n1")] == ["198.18.0.1"]

    inf.apply("MODIFIED", lease("198.18.0.2", None, node="n2"))  # orphaned: holder dropped
    assert registry.held_by("IPAddress/ns/b", "IPAddressPool/ns/p") is None
    assert to_int("198.18.0.2") in taken, "an orphaned lease still takes its address"
    inf.apply("ADDED", lease("198.18.0.3", "IPAddress/ns/c"))
    assert to_int("198.18.0.3") in taken
    inf.apply("DELETED", lease("198.18.0.1", "IPAddress/ns/a"))
    assert to_int("198.18.0.1") not in taken and registry.held_by("IPAddress/ns/a", "IPAddressPool/ns/p") is None
    assert sorted(o["spec"]["ip"] for o in inf.by_index("node", "n1")) == ["198.18.0.3"]

    inf._list_fn = lambda **kw: Listed([lease("198.18.0.9", "IPAddress/ns/z")])  # a relist: everything anew
    inf._list()
    assert to_int("198.18.0.3") not in taken and to_int("198.18.0.9") in taken
    assert inf._indexes["holder"] == {("IPAddress/ns/z", "IPAddressPool/ns/p"): {("", "ip-198.18.0.9")}}


def test_a_404_after_the_kind_was_served_keeps_the_cache() -> None:
    """An API server restarting answers 404 for custom kinds until it has loaded their CRDs: that is not the kind
    gone (the pods of a node would be refused their networks meanwhile), only a kind never served is empty."""
    import threading
    import time

    from kubernetes.client.exceptions import ApiException

    calls: list[int] = []

    def lister(**kw: Any) -> Listed:
        calls.append(1)
        if len(calls) == 1:
            return Listed([lease("198.18.0.5", "IPAddress/ns/a")])
        raise ApiException(status=404, reason="NotFound")

    inf = Informer(KIND, lister, KIND, "v1", lambda: None, LEASE_INDEXERS)
    thread = threading.Thread(target=inf.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    inf.stop()
    thread.join(5)
    assert len(calls) >= 2, "the watch (or relist) was answered 404"
    assert [o["spec"]["ip"] for o in inf.items()] == ["198.18.0.5"], "the cache of a kind served before is kept"


def test_a_pod_is_parsed_by_itself_while_its_kind_changes_and_once_per_version(monkeypatch: Any) -> None:
    """A CNI call reads its pod after other pods of the node changed: only that pod is parsed (not every pod of the
    node each time), once per resourceVersion, and a change of it is seen."""
    from kubernetes import client

    from ipamd.kube import source as source_module
    from ipamd.model.objects import POD

    def pod(name: str, version: str, note: str = "") -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": version,
            "annotations": {"note": note}}, "spec": {"nodeName": "n1"}}

    src = source_module.KubernetesSource(client.ApiClient(), "n1")
    pods = src.informers[POD.name]
    for k in range(50):
        pods.apply("ADDED", pod(f"p{k}", str(k + 1)))
    parsed: list[str] = []
    real = source_module.parse_object  # type: ignore[attr-defined]

    def counting(doc: dict[str, Any], origin: str) -> Any:
        parsed.append(doc["metadata"]["name"])
        return real(doc, origin)

    monkeypatch.setattr(source_module, "parse_object", counting)
    for k in range(10):  # another pod changes before every read of p0 (its status patch, say)
        pods.apply("MODIFIED", pod("p1", str(100 + k)))
        got = src.get(POD, "ns", "p0")
        assert got is not None and got.meta.uid == "uid-p0"
    assert parsed == ["p0"], "p0 alone, and once for its one version"
    pods.apply("MODIFIED", pod("p0", "200", note="new"))
    got = src.get(POD, "ns", "p0")
    assert got is not None and got.annotations.get("note") == "new"
    assert src.get(POD, "ns", "nope") is None
    assert len(src.list(POD)) == 50

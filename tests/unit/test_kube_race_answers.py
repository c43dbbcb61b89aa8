"""What an ADD answers when the API server answers a write it waits on with a timeout or a race (each found in review,
failing on the code before its fix)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from cni.errors import TryAgainLater
from ipamd.model.objects import IP_ADDRESS
from tests.fakes.cluster import FakeApi
from tests.unit.test_attacher import NS
from tests.unit.test_attacher_kube import FIXED, KubeNode, a_pod


def test_a_408_writing_which_pod_uses_an_ipaddress_is_code_11_not_999() -> None:
    """errors.py now takes 408 (Request Timeout: etcd slow) for "try again" (code 11), as the outbox and ask_return
    do; users.use's own handler, which runs first, still takes everything but None/5xx/429 for a refusal for good:
    a 408 fails the ADD with 999 "the Kubernetes API refused to write which pod uses ...", and the runtime is told
    the IPAddress is refused, not that it may retry."""
    api = FakeApi()
    node = KubeNode(api, "n1")
    node.source.add(a_pod("pa", FIXED, "uid-pa"))
    found = node.source.get(IP_ADDRESS, NS, "fixed")
    assert found is not None
    rec = node.ipam.record_for(found)
    patch = api.patch

    def timed_out(kind: str, name: str, body: dict[str, Any], namespace: str = "") -> Any:
        if kind == "IPAddress":
            raise ApiException(status=408, reason="Request Timeout")
        return patch(kind, name, body, namespace)

    api.patch = timed_out  # type: ignore[method-assign]
    with pytest.raises(TryAgainLater):
        node.registry.use(rec, a_pod("pa", FIXED, "uid-pa"), "f")


def test_a_lease_object_gone_between_the_409_and_the_read_is_a_lost_race_not_an_outage() -> None:
    """leases._claim: the create answers 409 (another node's object), the read that follows 404 (that node let it go
    meanwhile). The 404 escapes into api_unavailable_is_11, which now says code 11 "the Kubernetes API does not serve
    this kind (yet): an API server starting, or a CustomResourceDefinition missing": a benign race fails the ADD
    (and a Static's, every retry that meets the same churn) with a false diagnosis, where the address is simply free
    (claim it again) or lost (False: the next one)."""
    from ipamd.ipam.allocator import to_int
    from ipamd.kube.leases import KIND as LEASE_KIND
    from ipamd.store.records import LeaseRecord
    from tests.unit.test_attacher_kube import POOL

    api = FakeApi()
    node = KubeNode(api, "n1")
    create, get = api.create, api.get
    raced: list[str] = []

    def taken(kind: str, body: dict[str, Any], namespace: str = "") -> dict[str, Any]:
        if kind == LEASE_KIND and not raced:
            raced.append(body["metadata"]["name"])
            raise ApiException(status=409, reason="AlreadyExists")  # another node's, at this moment
        return create(kind, body, namespace)

    def gone(kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        if kind == LEASE_KIND and raced and name == raced[0]:
            raise ApiException(status=404, reason="NotFound")  # ... which it let go of just now
        return get(kind, name, namespace)

    api.create, api.get = taken, gone  # type: ignore[method-assign]
    lease = LeaseRecord(pool=POOL, ip=to_int("198.18.40.9"), address="198.18.40.9", network="198.18.40.0/28",
                        holder=f"IPAddress/{NS}/x")
    try:
        got = node.registry.claim(lease)
    except TryAgainLater as exc:
        pytest.fail(f"a lost race said as an API outage: {exc} ({exc.details})")
    assert isinstance(got, bool)

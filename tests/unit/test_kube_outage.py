"""With the API server unreachable, what the node writes to it is logged, never raised into a CNI call or a
reconcile round as a traceback: the publisher swallows it, the lease registry says code 11."""

from __future__ import annotations

import socket

import pytest
from kubernetes import client

from cni.errors import TryAgainLater
from ipamd.kube.client import TimedApiClient
from ipamd.kube.leases import KubeLeaseRegistry
from ipamd.kube.publisher import KubePublisher
from ipamd.model.objects import Meta, Pod
from ipamd.store.records import IPRecord, LeaseRecord, PodStatus


def unreachable() -> TimedApiClient:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = client.Configuration()
    cfg.host = f"https://127.0.0.1:{port}"
    cfg.verify_ssl = False
    return TimedApiClient(cfg)


def test_the_publisher_logs_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    pub = KubePublisher(unreachable(), "node-a")
    pod = Pod(Meta("Pod", "app", "ns", "uid-1"))
    rec = IPRecord(key="IPAddress/ns/a", kind="IPAddress", namespace="ns", name="a", network_kind="Network",
                   network_name="n", address="198.18.0.5", network="198.18.0.0/24")
    claim = IPRecord(key="IPAMClaim/ns/c", kind="IPAMClaim", namespace="ns", name="c", network_kind="CNI",
                     network_name="n", address="198.18.0.6", network="198.18.0.0/24")
    pub.attached(pod, PodStatus("uid-1", "ns", "app"), [rec], [rec, claim])
    pub.detached("ns", "app", "uid-1", None, [rec])
    pub.node_attachment("Network/ns/n", "plx-br-600", True, "")
    pub.node_detachment("Network/ns/n")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) >= 5 and not any("Traceback" in w for w in warned), warned


def test_the_lease_registry_says_try_again_later() -> None:
    api = unreachable()

    class Source:
        objects = None

    from ipamd.kube.resources import CustomObjects

    src = Source()
    src.objects = CustomObjects(api)  # type: ignore[assignment]
    registry = KubeLeaseRegistry(src, "node-a")  # type: ignore[arg-type]
    lease = LeaseRecord(pool="IPAddressPool/ns/p", ip=1, address="198.18.0.1", network="198.18.0.0/24",
                        holder="IPAddress/ns/a")
    for call in (registry.claim, registry.orphan, registry.release):
        with pytest.raises(TryAgainLater):
            call(lease)

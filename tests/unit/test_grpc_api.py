"""The gRPC IPAM API over a real unix socket (no root): unary Allocate and Release with the CNI code in the
trailing metadata, and the Leases stream (many operations per message, each with its own result)."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ipamd.api import ipam_pb2 as pb
from ipamd.api import ipam_pb2_grpc as pb_grpc
from ipamd.ipam.addresses import Ipam
from ipamd.model.objects import API_VERSION, parse_object
from ipamd.model.services import NETWORK_ANNOTATION, SELECTOR_ANNOTATION, ServiceInvalid, parse_service
from ipamd.server.grpc_api import CNI_CODE_KEY, IpamService, serve
from ipamd.store.records import PodStatus
from tests.fakes.source import FakeSource
from tests.fakes.store import MemoryStore
from tests.unit.test_attacher import Node as AttacherNode
from tests.unit.test_attacher import obj
from tests.unit.test_plexus_ipam import Node

POOL = pb.PoolRef(kind="IPAddressPool", namespace="apps", name="tiny")


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[Any]:
    pool = parse_object({"apiVersion": API_VERSION, "kind": "IPAddressPool",
                         "metadata": {"name": "tiny", "namespace": "apps"},
                         "spec": {"leaseTTL": "0s", "pools": [{"network": "198.18.90.0/30"}]}})  # .1 and .2
    store, source = MemoryStore(), FakeSource(pool)
    server, _ = serve(str(tmp_path / "ipam.sock"), IpamService(store, source, Ipam(store, source), list),
                      lambda: True)
    channel = grpc.insecure_channel(f"unix:{tmp_path / 'ipam.sock'}")
    try:
        yield pb_grpc.IpamStub(channel)  # type: ignore[no-untyped-call]
    finally:
        channel.close()
        server.stop(None)


def test_unary_allocate_release_and_the_cni_code_of_a_failure(stub: Any) -> None:
    first = stub.Allocate(pb.AllocateRequest(pool=POOL, owner="a"))
    assert (first.address, first.holder) == ("198.18.90.1", "api/a")
    assert stub.Allocate(pb.AllocateRequest(pool=POOL, owner="a")).address == "198.18.90.1", "the same owner keeps it"
    stub.Allocate(pb.AllocateRequest(pool=POOL, owner="b"))
    with pytest.raises(grpc.RpcError) as exc:
        stub.Allocate(pb.AllocateRequest(pool=POOL, owner="c"))
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(exc.value.trailing_metadata())[CNI_CODE_KEY] == "100"
    assert stub.Release(pb.ReleaseRequest(pool=POOL, address="198.18.90.1")).released
    assert not stub.Release(pb.ReleaseRequest(pool=POOL, address="198.18.90.1")).released


def test_an_ipv6_64_is_leased_over_the_api_and_its_count_capped(tmp_path: Path) -> None:
    pool = parse_object({"apiVersion": API_VERSION, "kind": "IPAddressPool", "metadata": {"name": "six", "namespace": "apps"},
                         "spec": {"pools": [{"network": "198.18.91.0/24"}, {"network": "2001:2:0:91::/64"}]}})
    store, source = MemoryStore(), FakeSource(pool)
    server, _ = serve(str(tmp_path / "ipam.sock"), IpamService(store, source, Ipam(store, source), list), lambda: True)
    channel = grpc.insecure_channel(f"unix:{tmp_path / 'ipam.sock'}")
    try:
        stub = pb_grpc.IpamStub(channel)  # type: ignore[no-untyped-call]
        ref = pb.PoolRef(kind="IPAddressPool", namespace="apps", name="six")
        assert stub.Allocate(pb.AllocateRequest(pool=ref, owner="a")).address == "198.18.91.1"
        assert stub.Allocate(pb.AllocateRequest(pool=ref, owner="b", address="2001:2:0:91::7")).address == \
            "2001:2:0:91::7", "an exact IPv6 address of the pool"
        (usage,) = stub.ListPools(pb.ListPoolsRequest()).pools
        assert (usage.size, usage.used, usage.free) == ((1 << 63) - 1, 2, (1 << 63) - 1)
        assert list(usage.networks) == ["198.18.91.0/24", "2001:2:0:91::/64"]
    finally:
        channel.close()
        server.stop(None)



def test_grpc_allocate_of_an_exact_address_never_answers_another_one() -> None:
    """proto: ``address``: "optional: exactly this address". An owner that held one address and asked for exactly
    another was answered, without an error, with the address it held: ``allocate_for`` took the stored record (its
    old static_ip, or none) and ignored the address asked for. Now it is refused (code 104, ``address``), and the
    same address asked again is answered as before."""
    node = Node()
    service = IpamService(node.store, node.source, node.ipam, list)
    ref = pb.PoolRef(kind="ClusterIPAddressPool", name="shared")
    first = service.Allocate(pb.AllocateRequest(pool=ref, owner="vm-1", address="198.18.52.10"), None)
    assert first.address == "198.18.52.10"
    try:
        again = service.Allocate(pb.AllocateRequest(pool=ref, owner="vm-1", address="198.18.52.20"), None)
    except Exception:  # refused (the servicer aborts the call): fine, as long as no other address is answered
        return
    assert again.address == "198.18.52.20", f"asked for exactly 198.18.52.20, answered {again.address}"


def test_grpc_allocate_of_an_address_held_by_another_owner_names_the_address_field() -> None:
    """Every refusal names the offending field of the request: a gRPC Allocate's is ``address``. An address another
    API owner held was refused with details ``spec.static.ip`` (an IPAddress manifest's field) and a message about
    "IPAddress <owner>", since ``allocate_for`` reused ``lease_for``'s IPAddress wording as is; now it names
    ``address`` and the API client."""
    node = Node()
    service = IpamService(node.store, node.source, node.ipam, list)
    ref = pb.PoolRef(kind="ClusterIPAddressPool", name="shared")
    service.Allocate(pb.AllocateRequest(pool=ref, owner="a", address="198.18.52.9"), None)

    class Aborted(Exception):
        pass

    class Context:
        metadata: Any = ()
        status: Any = None

        def set_trailing_metadata(self, md: Any) -> None:
            self.metadata = md

        def abort(self, code: Any, details: str) -> None:
            self.status = (code, details)
            raise Aborted(details)

    ctx = Context()
    with pytest.raises(Aborted):
        service.Allocate(pb.AllocateRequest(pool=ref, owner="b", address="198.18.52.9"), ctx)
    assert dict(ctx.metadata)["plexus-cni-code"] == "104"
    assert ctx.status[1].endswith(": address"), ctx.status[1]


def test_the_leases_stream_applies_each_operation_on_its_own(stub: Any) -> None:
    out: queue.Queue[Any] = queue.Queue()
    results = stub.Leases(iter(out.get, None), timeout=30)

    def send(*ops: Any) -> list[Any]:
        out.put(pb.LeaseOps(ops=list(ops)))
        return list(next(results).results)

    def allocate(owner: str) -> Any:
        return pb.LeaseOp(allocate=pb.AllocateRequest(pool=POOL, owner=owner))

    got = send(allocate("x"), allocate("y"), allocate("z"))
    assert [r.WhichOneof("result") for r in got] == ["lease", "lease", "error"]
    assert sorted(r.lease.address for r in got[:2]) == ["198.18.90.1", "198.18.90.2"]
    assert got[2].error.code == 100, "the third finds the pool exhausted; the first two stand"
    released = send(pb.LeaseOp(release=pb.ReleaseRequest(pool=POOL, address=got[0].lease.address)),
                    pb.LeaseOp(release=pb.ReleaseRequest(pool=pb.PoolRef(kind="IPAddressPool", namespace="apps",
                                                                          name="missing"), address="198.18.90.2")),
                    pb.LeaseOp())
    assert [r.WhichOneof("result") for r in released] == ["released", "error", "error"]
    assert released[0].released.released and released[1].error.code == 103 and released[2].error.code == 7
    assert send(allocate("z"))[0].lease.address == got[0].lease.address, "the released address, leaseTTL 0s"
    out.put(None)


def test_a_local_services_bad_port_is_refused_naming_the_field_not_a_traceback() -> None:
    """Local mode: Services in the objects directory are stored unchecked (objects._service), and parse_service
    does int() on spec.ports[i].port: a named port ('pg') raises ValueError, not ServiceInvalid, so
    ListServiceEndpoints (plexusctl get endpoints) fails whole instead of showing the field in PROBLEM."""
    def svc(name: str, *ports: Any) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "apps", "uid": "u",
                             "annotations": {NETWORK_ANNOTATION: "back", SELECTOR_ANNOTATION: "app=db"}},
                "spec": {"clusterIP": "None", "ports": list(ports)}}

    with pytest.raises(ServiceInvalid) as err:
        parse_service(svc("db", {"name": "pg", "port": "pg"}))
    assert err.value.field.startswith("spec.ports[0]")
    for ports, field in ((({"port": 5432}, {"port": 0}), "spec.ports[1].port"),
                         (({"port": 70000},), "spec.ports[0].port"),
                         (({"port": True},), "spec.ports[0].port"),
                         (({},), "spec.ports[0].port"),
                         (({"port": 5432, "targetPort": 65536},), "spec.ports[0].targetPort"),
                         (("5432",), "spec.ports[0]")):
        with pytest.raises(ServiceInvalid) as err:
            parse_service(svc("db", *ports))
        assert err.value.field == field, ports
    named_target = parse_service(svc("db", {"port": 5432, "targetPort": "pg"}, {"port": 80, "targetPort": 0}))
    assert named_target is not None and [p for _, p, _ in named_target.ports] == [5432, 80], "port is the fallback"

    node = AttacherNode()
    node.source.add(obj("Network", "back", {"networkClass": "cls"}))
    node.source.add(parse_object(svc("bad", {"name": "pg", "port": "pg"})))
    node.source.add(parse_object(svc("good", {"name": "pg", "port": 5432})))
    listed = IpamService(node.store, node.source, node.ipam, list).ListServiceEndpoints(
        pb.ListServiceEndpointsRequest(), None).services
    shown = {s.name: (s.network, s.problem) for s in listed}
    assert shown["bad"][1].startswith("spec.ports[0].port: "), shown
    assert shown["good"] == ("Network apps/back", ""), "one bad Service leaves the others listed"


def test_local_endpoints_read_the_statuses_of_the_pod_itself_not_of_an_older_pod_of_its_name() -> None:
    """Local mode's ListServiceEndpoints keys the store's statuses by (namespace, name), not by UID: a pod made
    again under its name (new UID, not attached yet) while the old one's statuses are still stored (its sandbox
    not DEL'd yet) is listed ready, with the old pod's address."""
    node = AttacherNode()
    node.source.add(obj("Network", "back", {"networkClass": "cls"}))
    node.source.add(obj("Pod", "app", {}, uid="uid-new", labels={"app": "db"}))
    node.source.add(parse_object({"apiVersion": "v1", "kind": "Service", "metadata": {
        "name": "db", "namespace": "apps", "annotations": {
            "network.deckhouse.io/service-network": "back", "network.deckhouse.io/service-selector": "app=db"}},
        "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}))
    entry = {"type": "Network", "name": "back", "ifName": "net1",
             "ipAddressConfigs": [{"address": "198.18.40.7", "network": "198.18.40.0/24"}]}
    node.store.put_pod_status(PodStatus("uid-old", "apps", "app", (entry,)))
    service = IpamService(node.store, node.source, node.ipam, list)
    (found,) = service.ListServiceEndpoints(pb.ListServiceEndpointsRequest(), None).services
    shown = [(e.address, e.ready) for e in found.endpoints]
    assert shown == [], f"pod apps/app (uid-new) has no address yet, but is listed with the old pod's: {shown}"
    own = {**entry, "ipAddressConfigs": [{"address": "198.18.40.8", "network": "198.18.40.0/24"}]}
    node.store.put_pod_status(PodStatus("uid-new", "apps", "app", (own,)))
    (found,) = service.ListServiceEndpoints(pb.ListServiceEndpointsRequest(), None).services
    assert [(e.address, e.ready, e.pod) for e in found.endpoints] == [("198.18.40.8", True, "apps/app")]


def test_plexusctl_outbox_lists_the_owed_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ipamd.cli.ctl import main
    from ipamd.store.records import OutboxEntry

    store = MemoryStore()
    for i in range(3):
        store.outbox_add(OutboxEntry(0, f"IPAddress/apps/ip{i}", "create", {}, created_at=1.0))
    store.outbox_retry(store.outbox_head(1)[0].seq, 4, 2e9, "the API server is not answering")
    sock = str(tmp_path / "grpc.sock")
    server, _ = serve(sock, IpamService(store, FakeSource(), Ipam(store, FakeSource()), list), lambda: True)
    try:
        assert main(["--grpc-socket", sock, "outbox", "--limit", "2"]) == 0
        text = capsys.readouterr().out
        assert text.startswith("3 writes to the cluster's API owed (the oldest 2 below)")
        assert "IPAddress/apps/ip0" in text and "the API server is not answering" in text and "ip2" not in text
        assert main(["--grpc-socket", sock, "outbox", "-o", "json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["depth"] == 3 and [e["attempts"] for e in data["entries"]] == [4, 0, 0]
        store.outbox_add(OutboxEntry(0, "IPAddressLease/x", "hand_back", {}, created_at=1.0, next_at=float("inf")))
        assert main(["--grpc-socket", sock, "outbox"]) == 0  # a take-up's parked undo: no infinite time to print
        assert "parked" in capsys.readouterr().out
        assert main(["--grpc-socket", sock, "outbox", "-o", "json"]) == 0
        parked = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
        assert [(e["parked"], e["nextAt"]) for e in parked["entries"]][-1] == (True, None)
    finally:
        server.stop(None)

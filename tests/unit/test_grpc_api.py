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
from ipamd.model.objects import API_VERSION, parse_object, unserved_entries
from ipamd.model.services import NETWORK_ANNOTATION, SELECTOR_ANNOTATION, ServiceInvalid, parse_service
from ipamd.server.grpc_api import CNI_CODE_KEY, IpamService, serve
from ipamd.store.records import PodStatus, SegmentRecord
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


def _pool(name: str, network: str) -> Any:
    return parse_object({"apiVersion": API_VERSION, "kind": "IPAddressPool",
                         "metadata": {"name": name, "namespace": "apps"},
                         "spec": {"leaseTTL": "1h", "pools": [{"network": network}]}})


POOL_A = pb.PoolRef(kind="IPAddressPool", namespace="apps", name="a")
POOL_B = pb.PoolRef(kind="IPAddressPool", namespace="apps", name="b")


@pytest.fixture
def two_pools(tmp_path: Path) -> Iterator[tuple[Any, MemoryStore, Ipam]]:
    """A served API over pools apps/a (198.18.90.0/29) and apps/b (198.18.91.0/29), leaseTTL 1h."""
    store, source = MemoryStore(), FakeSource(_pool("a", "198.18.90.0/29"), _pool("b", "198.18.91.0/29"))
    ipam = Ipam(store, source)
    sock = str(tmp_path / "ipam.sock")
    server, _ = serve(sock, IpamService(store, source, ipam, list), lambda: True)
    channel = grpc.insecure_channel(f"unix:{sock}")
    try:
        yield pb_grpc.IpamStub(channel), store, ipam  # type: ignore[no-untyped-call]
    finally:
        channel.close()
        server.stop(None)


def _refusal(exc: pytest.ExceptionInfo[grpc.RpcError]) -> tuple[grpc.StatusCode, str, str]:
    """(status, CNI code, details) of a refused call."""
    return exc.value.code(), dict(exc.value.trailing_metadata() or ())[CNI_CODE_KEY], exc.value.details() or ""


def test_grpc_allocate_in_another_pool_is_refused_naming_pool_and_the_lease_held_stays(two_pools: Any) -> None:
    """Found in review: asking for the same owner in another pool answered a new address and orphaned (quarantined)
    the one it held in the first pool, unknown to the client, which kept using it until the pool handed it to
    somebody else. An owner holds one address: refused (104 naming ``pool``) as an exact other address is."""
    stub, store, _ = two_pools
    first = stub.Allocate(pb.AllocateRequest(pool=POOL_A, owner="vm-1"))
    for ask in (pb.AllocateRequest(pool=POOL_B, owner="vm-1"),
                pb.AllocateRequest(pool=POOL_B, owner="vm-1", address="198.18.91.3")):
        with pytest.raises(grpc.RpcError) as exc:
            stub.Allocate(ask)
        status, code, details = _refusal(exc)
        assert (status, code) == (grpc.StatusCode.ALREADY_EXISTS, "104"), details
        assert details.endswith(": pool") and first.address in details and "Release" in details, details
    held = {(x.pool, x.address): (x.state, x.holder) for x in store.all_leases()}
    assert held == {(first.pool, first.address): ("bound", "api/vm-1")}, held
    assert stub.Allocate(pb.AllocateRequest(pool=POOL_A, owner="vm-1")).address == first.address, "asked again: kept"
    assert stub.Release(pb.ReleaseRequest(pool=POOL_A, address=first.address)).released
    assert stub.Allocate(pb.AllocateRequest(pool=POOL_B, owner="vm-1")).address == "198.18.91.1", "released first"


def test_grpc_release_without_an_address_is_refused_naming_address_not_an_unknown_status(two_pools: Any) -> None:
    """Found in review: ``Release`` with ``address`` unset raised ValueError (``to_int("")``), which the servicer
    did not map: UNKNOWN "Exception calling application", no ``plexus-cni-code``."""
    stub, *_ = two_pools
    with pytest.raises(grpc.RpcError) as exc:
        stub.Release(pb.ReleaseRequest(pool=POOL_A, address=""))
    status, code, details = _refusal(exc)
    assert (status, code) == (grpc.StatusCode.INVALID_ARGUMENT, "7"), details
    assert details.endswith(": address"), details


def test_leases_stream_release_without_an_address_is_that_operations_error_not_the_end_of_the_stream(
        two_pools: Any) -> None:
    """proto: "applied in order, each on its own: one failing does not undo the others". Found in review: the
    ValueError of an empty address ended the whole stream (UNKNOWN), losing the batch's other results."""
    stub, store, _ = two_pools
    ops = pb.LeaseOps(ops=[pb.LeaseOp(allocate=pb.AllocateRequest(pool=POOL_A, owner="x")),
                           pb.LeaseOp(release=pb.ReleaseRequest(pool=POOL_A, address=""))])
    try:
        (results,) = list(stub.Leases(iter([ops])))
    except grpc.RpcError as exc:
        pytest.fail(f"the stream ended with {exc.code()}: {exc.details()} (leases now: "
                    f"{[x.address for x in store.all_leases()]})")
    assert results.results[0].lease.address == "198.18.90.1"
    assert (results.results[1].error.code, results.results[1].error.details) == (7, "address")


def test_an_unexpected_failure_is_the_internal_error_and_a_stream_goes_on(
        two_pools: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever fails unexpectedly is answered 999 (INTERNAL, the details saying what), never an UNKNOWN status
    without a CNI code, and in the Leases stream that operation's result: the stream answers the next batch."""
    stub, _, ipam = two_pools
    real = ipam.allocate_for

    def allocate_for(owner: str, *args: Any) -> Any:
        if owner == "bad":
            raise RuntimeError("the store broke")
        return real(owner, *args)

    monkeypatch.setattr(ipam, "allocate_for", allocate_for)
    with pytest.raises(grpc.RpcError) as exc:
        stub.Allocate(pb.AllocateRequest(pool=POOL_A, owner="bad"))
    status, code, details = _refusal(exc)
    assert (status, code) == (grpc.StatusCode.INTERNAL, "999")
    assert "RuntimeError: the store broke" in details, details
    batches = [pb.LeaseOps(ops=[pb.LeaseOp(allocate=pb.AllocateRequest(pool=POOL_A, owner="bad"))]),
               pb.LeaseOps(ops=[pb.LeaseOp(allocate=pb.AllocateRequest(pool=POOL_A, owner="good"))])]
    first, second = list(stub.Leases(iter(batches)))
    assert (first.results[0].error.code, first.results[0].error.details) == (999, "RuntimeError: the store broke")
    assert second.results[0].lease.address == "198.18.90.1"


def test_a_pool_kind_that_is_no_pool_kind_is_refused_naming_it(two_pools: Any) -> None:
    """Found in review: an unknown ``PoolRef.kind`` (a misspelt one) was read as an IPAddressPool when a namespace
    was given, a ClusterIPAddressPool otherwise. Empty is still read by the namespace."""
    stub, *_ = two_pools
    with pytest.raises(grpc.RpcError) as exc:
        stub.Allocate(pb.AllocateRequest(pool=pb.PoolRef(kind="IPAdressPool", namespace="apps", name="a"), owner="x"))
    status, code, details = _refusal(exc)
    assert (status, code) == (grpc.StatusCode.INVALID_ARGUMENT, "7") and details.endswith(": pool.kind"), details
    assert stub.Allocate(pb.AllocateRequest(pool=pb.PoolRef(namespace="apps", name="a"), owner="x")).pool == \
        "IPAddressPool/apps/a"


def test_every_cni_code_has_its_grpc_status_and_the_internal_error_is_internal() -> None:
    """Found in review: ``STATUS_FOR_CODE`` had no 999 (nor 4, 5, 6, 105): an unexpected failure reached a client as
    FAILED_PRECONDITION, which says the request is wrong for the system's state."""
    from cni.errors import BY_CODE, InternalError
    from ipamd.server.grpc_api import STATUS_FOR_CODE, _abort

    assert set(STATUS_FOR_CODE) == set(BY_CODE), "a code of cni.errors without its gRPC status, or one too many"
    assert {c: STATUS_FOR_CODE[c] for c in (4, 6, 7, 999)} == {
        4: grpc.StatusCode.INVALID_ARGUMENT, 6: grpc.StatusCode.INVALID_ARGUMENT, 7: grpc.StatusCode.INVALID_ARGUMENT,
        999: grpc.StatusCode.INTERNAL}
    seen: list[Any] = []

    class Ctx:
        def set_trailing_metadata(self, md: Any) -> None:
            seen.append(dict(md))

        def abort(self, code: Any, details: str) -> None:
            seen.append(code)

    _abort(Ctx(), InternalError("patch on ipaddresses is forbidden", "rbac"))
    assert seen == [{CNI_CODE_KEY: "999"}, grpc.StatusCode.INTERNAL]


def _serve_statuses(tmp_path: Path, store: MemoryStore, source: FakeSource) -> Any:
    server, _ = serve(str(tmp_path / "grpc.sock"), IpamService(store, source, Ipam(store, source), list),
                      lambda: True)
    return server


def test_plexusctl_pod_status_prints_the_pod_of_that_name_now_not_an_older_sandboxs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found in review: ``pod status`` printed the first status of the name: with a pod made again under its name
    while its predecessor's statuses are still stored (its sandbox not DEL'd yet), the old pod's interfaces. The
    pod the object source shows comes first; without one, the most recently updated."""
    from ipamd.cli.ctl import main
    from tests.unit.test_ipam import obj

    store = MemoryStore()
    source = FakeSource(obj("Pod", "app", {}, namespace="apps", uid="uid-new"))
    old = {"type": "Network", "name": "back", "ifName": "net1", "mac": "02:00:00:00:00:01",
           "ipAddressConfigs": [{"address": "198.18.40.7", "network": "198.18.40.0/24"}]}
    new = {**old, "mac": "02:00:00:00:00:02", "ipAddressConfigs": [{"address": "198.18.40.8", "network": "198.18.40.0/24"}]}
    store.put_pod_status(PodStatus("uid-new", "apps", "app", (new,), updated_at=1.0))
    store.put_pod_status(PodStatus("uid-old", "apps", "app", (old,), updated_at=2.0))  # its late DEL rewrote it
    store.put_pod_status(PodStatus("uid-b1", "apps", "gone", (old,), updated_at=1.0))
    store.put_pod_status(PodStatus("uid-b2", "apps", "gone", (new,), updated_at=3.0))
    server = _serve_statuses(tmp_path, store, source)
    try:
        assert main(["--grpc-socket", str(tmp_path / "grpc.sock"), "pod", "status", "app", "-n", "apps"]) == 0
        assert json.loads(capsys.readouterr().out) == [new], "the source's pod of that name"
        assert main(["--grpc-socket", str(tmp_path / "grpc.sock"), "pod", "status", "gone", "-n", "apps"]) == 0
        assert json.loads(capsys.readouterr().out) == [new], "none in the source: the newest"
    finally:
        server.stop(None)


def test_plexusctl_pod_list_shows_a_pods_nad_interfaces_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """README: ``plexusctl pod list``: "every pod interface, network, MAC and address". Found in review: it read
    only ``networks-status`` (Deckhouse networks), so a pod's NAD interfaces (only in ``network-status``) were not
    listed. ``network-status`` lists the Deckhouse networks' interfaces too, and the default network's: not again."""
    from ipamd.cli.ctl import main

    store = MemoryStore()
    nad = {"name": "apps/macvlan-conf", "interface": "net1", "ips": ["198.18.73.5"], "mac": "02:00:00:00:00:05",
           "dns": {}}
    deckhouse = {"type": "Network", "name": "back", "ifName": "net2", "mac": "02:00:00:00:00:06",
                 "ipAddressConfigs": [{"address": "198.18.40.7", "network": "198.18.40.0/24"}]}
    default = {"name": "cbr0", "interface": "eth0", "ips": ["10.244.0.5"], "default": True, "dns": {}}
    both = {"name": "apps/back", "interface": "net2", "ips": ["198.18.40.7"], "mac": "02:00:00:00:00:06", "dns": {}}
    store.put_pod_status(PodStatus("uid-1", "apps", "vm", (deckhouse,), updated_at=1.0,
                                   network_status=(default, both, nad)))
    server = _serve_statuses(tmp_path, store, FakeSource())
    try:
        assert main(["--grpc-socket", str(tmp_path / "grpc.sock"), "pod", "list"]) == 0
        rows = capsys.readouterr().out.splitlines()[1:]
        assert [r.split()[2:] for r in rows] == [
            ["net2", "Network/back", "02:00:00:00:00:06", "198.18.40.7"],
            ["net1", "NetworkAttachmentDefinition/apps/macvlan-conf", "02:00:00:00:00:05", "198.18.73.5"]], rows
        assert main(["--grpc-socket", str(tmp_path / "grpc.sock"), "pod", "list", "-o", "json"]) == 0
        (pod,) = json.loads(capsys.readouterr().out)
        assert pod["networkStatus"] == [default, both, nad] and pod["networksStatus"] == [deckhouse]
    finally:
        server.stop(None)


@pytest.fixture
def pod_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[str], Any]]:
    """``pod run`` of a Pod manifest against a served daemon, its network namespaces made and removed in a list."""
    import pyroute2.netns

    from ipamd.cli import ctl

    made: list[str] = []
    monkeypatch.setattr(pyroute2.netns, "create", lambda name, *a, **k: made.append(name))
    monkeypatch.setattr(pyroute2.netns, "remove", lambda name, *a, **k: made.remove(name))
    monkeypatch.setattr(ctl, "_loopback_up", lambda path: None)
    store, source = MemoryStore(), FakeSource()
    sock = str(tmp_path / "grpc.sock")
    server, _ = serve(sock, IpamService(store, source, Ipam(store, source), list), lambda: True)
    pod = tmp_path / "pod.yaml"
    pod.write_text(json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "ctl-pod-run", "namespace": "default", "uid": "u-1"}, "spec": {}}))

    def run(*argv: str, socket: str = sock) -> int:
        return ctl.main(["--grpc-socket", socket, "--objects-dir", str(tmp_path / "objects"), "--state-dir",
                         str(tmp_path / "state"), "pod", "run", "-f", str(pod), *argv])

    try:
        yield made, run
    finally:
        server.stop(None)


def test_plexusctl_pod_run_that_fails_before_add_leaves_no_network_namespace(
        pod_run: tuple[list[str], Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: ``pod run`` created the netns, then looked for the conflist: when there was none it failed
    with the netns left, and every later ``pod run`` of the pod failed with "network namespace NAME already exists".
    The conflist is read first; whatever fails once the netns is made (not only a failed ADD) removes it."""
    from ipamd.cli import ctl

    made, run = pod_run
    assert run("--conf-dir", str(tmp_path / "none")) == 1
    assert "no CNI network configuration" in capsys.readouterr().err
    assert made == [], f"network namespaces left behind by a pod run that failed: {made}"
    conflist = tmp_path / "net.conflist"
    conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "nothing-here"}]}))

    def broken(path: str) -> None:
        raise OSError(f"cannot enter {path}")

    monkeypatch.setattr(ctl, "_loopback_up", broken)
    assert run("--conflist", str(conflist)) == 1
    assert "cannot enter" in capsys.readouterr().err
    assert made == [], f"network namespaces left behind by a pod run that failed: {made}"
    monkeypatch.setattr(ctl, "_loopback_up", lambda path: None)
    assert run("--conflist", str(conflist), "--cni-path", str(tmp_path / "no-plugins")) == 1
    assert "ADD failed" in capsys.readouterr().err
    assert made == [], f"network namespaces left behind by a failed ADD: {made}"


POD_BEFORE = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ctl-pod-run\n  namespace: default\n  uid: u-0\nspec: {}\n"


def test_plexusctl_pod_run_whose_add_never_reached_the_daemon_leaves_the_manifest_as_it_was(
        pod_run: tuple[list[str], Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: ``pod run`` with the daemon stopped failed ("not reachable") and left the Pod manifest in the
    objects directory. Failing before ADD, the manifest is as it was (none, or the one there before); a failed ADD
    keeps it (README: "it stays when ADD fails")."""
    from ipamd.cli import ctl

    made, run = pod_run
    conflist = tmp_path / "net.conflist"
    conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "nothing-here"}]}))
    args = ("--conflist", str(conflist), "--cni-path", str(tmp_path / "no-plugins"))
    manifest = tmp_path / "objects" / "pod.default.ctl-pod-run.yaml"
    assert run(*args, socket=str(tmp_path / "none.sock")) == 1
    assert "not reachable" in capsys.readouterr().err
    assert not manifest.exists(), "the manifest of a pod run whose ADD never reached the daemon"
    manifest.write_text(POD_BEFORE)
    assert run(*args, socket=str(tmp_path / "none.sock")) == 1
    assert manifest.read_text() == POD_BEFORE, "the manifest there before, put back"

    def broken(path: str) -> None:
        raise OSError(f"cannot enter {path}")

    manifest.unlink()
    monkeypatch.setattr(ctl, "_loopback_up", broken)  # after the daemon read it, before ADD
    assert run(*args) == 1
    assert "cannot enter" in capsys.readouterr().err
    assert not manifest.exists() and made == []
    monkeypatch.setattr(ctl, "_loopback_up", lambda path: None)
    assert run(*args) == 1
    assert "ADD failed" in capsys.readouterr().err
    assert manifest.exists() and made == []


def test_plexusctl_pod_run_of_a_pod_already_running_leaves_its_manifest(
        pod_run: tuple[list[str], Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``pod run`` of a running pod is refused before its manifest is written: the running pod's stays."""
    _, run = pod_run
    (tmp_path / "objects").mkdir()
    manifest = tmp_path / "objects" / "pod.default.ctl-pod-run.yaml"
    manifest.write_text(POD_BEFORE)
    (tmp_path / "state" / "pods").mkdir(parents=True)
    (tmp_path / "state" / "pods" / "default.ctl-pod-run.json").write_text("{}")
    conflist = tmp_path / "net.conflist"
    conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "nothing-here"}]}))
    assert run("--conflist", str(conflist)) == 1
    assert "already running" in capsys.readouterr().err
    assert manifest.read_text() == POD_BEFORE


def test_get_networks_shows_the_id_a_segment_record_has_before_any_status_was_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found walking the README: a network whose record has an ID but no status yet (its parent NIC missing, so never
    Ready) was listed with a bare bridge name, its VLAN ID or VNI shown as none."""
    from ipamd.cli.ctl import main

    store = MemoryStore()
    with store.transaction():
        store.put_segment(SegmentRecord("ns/vl", "vlan", 750, "plx-br-750"))
        store.put_segment(SegmentRecord("ns/vx", "vxlan", 5000, "plx-vb-5000"))
        store.put_segment(SegmentRecord("ns/flat", "none", 0, "plx-n-1234abcd"))
        store.put_segment(SegmentRecord("ns/back", "vlan", 751, "plx-br-751", status={  # took back ns/back@plx-br-752
            "bridgeName": "plx-br-751", "vlanID": 751, "takenBack": "ns/back@plx-br-752"}))
    server = _serve_statuses(tmp_path, store, FakeSource())
    try:
        assert main(["--grpc-socket", str(tmp_path / "grpc.sock"), "get", "networks", "-o", "json"]) == 0
        shown = {n["network"]: n["status"] for n in json.loads(capsys.readouterr().out)}
    finally:
        server.stop(None)
    assert shown["ns/vl"] == {"bridgeName": "plx-br-750", "vlanID": 750}
    assert shown["ns/vx"] == {"bridgeName": "plx-vb-5000", "vlanID": 0, "vni": 5000}
    assert shown["ns/flat"] == {"bridgeName": "plx-n-1234abcd"}
    assert shown["ns/back"] == {"bridgeName": "plx-br-751", "vlanID": 751}, "the node's own bookkeeping is not shown"


def test_grpc_allocate_from_a_pool_with_an_entry_stored_before_its_network_was_refused_is_refused(
        tmp_path: Path) -> None:
    """A pool whose ``spec.pools[1].network`` is fe80::/64, stored before such networks were refused, is served to
    no pod (``attacher._refuse_unserved``), but the API leased from it. Allocate is refused as ADD is, INVALID_ARGUMENT
    (CNI code 7) naming the API client, the pool and the entry's field, in a Leases stream too, leasing nothing; an
    address an owner got before is still released."""
    v4 = {"apiVersion": API_VERSION, "kind": "IPAddressPool", "metadata": {"name": "ll", "namespace": "apps"},
          "spec": {"leaseTTL": "0s", "pools": [{"network": "198.18.92.0/29"}]}}
    source, store = FakeSource(parse_object(v4)), MemoryStore()
    ipam = Ipam(store, source)
    sock = str(tmp_path / "ipam.sock")
    server, _ = serve(sock, IpamService(store, source, ipam, list), lambda: True)
    channel = grpc.insecure_channel(f"unix:{sock}")
    ref = pb.PoolRef(kind="IPAddressPool", namespace="apps", name="ll")
    try:
        stub = pb_grpc.IpamStub(channel)  # type: ignore[no-untyped-call]
        held = stub.Allocate(pb.AllocateRequest(pool=ref, owner="old")).address  # leased before the entry was read
        stored = parse_object({**v4, "spec": {"leaseTTL": "0s", "pools": [{"network": "198.18.92.0/29"},
                                                                          {"network": "fe80::/64"}]}})
        source.add(stored)
        (entry,) = unserved_entries(stored)  # type: ignore[arg-type]
        for ask in (pb.AllocateRequest(pool=ref, owner="vm-1"), pb.AllocateRequest(pool=ref, owner="vm-1",
                                                                                   address="fe80::5"),
                    pb.AllocateRequest(pool=ref, owner="old")):
            with pytest.raises(grpc.RpcError) as exc:
                stub.Allocate(ask)
            status, code, details = _refusal(exc)
            assert (status, code) == (grpc.StatusCode.INVALID_ARGUMENT, "7"), details
            assert details == f"API client {ask.owner} uses {entry.msg}: spec.pools[1].network", details
        (result,) = list(stub.Leases(iter([pb.LeaseOps(ops=[pb.LeaseOp(allocate=pb.AllocateRequest(pool=ref,
                                                                                                 owner="s"))])])))
        (err,) = [r.error for r in result.results]
        assert (err.code, err.msg, err.details) == (7, f"API client s uses {entry.msg}", "spec.pools[1].network")
        assert [(x.address, x.holder) for x in store.all_leases()] == [(held, "api/old")], "nothing leased"
        assert stub.Release(pb.ReleaseRequest(pool=ref, address=held)).released, "what was held is let go"
        assert store.all_leases() == [] and store.all_ips() == []
    finally:
        channel.close()
        server.stop(None)

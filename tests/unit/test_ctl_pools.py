"""plexusctl names a pool the same way for `ipam leases --pool` and `ipam release`; an unknown pool is an error,
and an address that is not leased is said so without asking; a daemon that refuses is told from one that is not
running. Its other answers a reviewer walking the README found wanting: `apply` of a file that is not YAML (or not
there, or no manifest), `get networks` of a VXLAN network, `ipam pools` of a /64, `ipam release` of an address outside
the pool or in an implicit one, `pod status`/`pod rm` of a pod not there."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni.errors import TryAgainLater
from ipamd.ipam.addresses import Ipam
from ipamd.model.objects import AddressPool
from ipamd.server.grpc_api import CNI_CODE_KEY, IpamService, serve
from ipamd.store.records import ImplicitPoolRecord, LeaseRecord, PodStatus, SegmentRecord
from ipamd.store.sqlite import Store
from tests.fakes.source import FakeSource
from tests.fakes.store import MemoryStore
from tests.unit.test_ipam import Clock, obj

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, Ipam]]:
    src = FakeSource(
        obj("IPAddressPool", "my-net-pool", {"pools": [{"network": "198.18.13.0/24"}]}, namespace="my-namespace"),
        obj("ClusterIPAddressPool", "cpool", {"pools": [{"network": "198.18.17.0/24"}]}, namespace=None),
        obj("ClusterIPAddressPool", "v6", {"pools": [{"network": "2001:2::/64"}]}, namespace=None),
    )
    store = Store(":memory:")
    ipam = Ipam(store, src, Clock())
    sock = str(tmp_path / "ipam.sock")
    server, _ = serve(sock, IpamService(store, src, ipam, list), lambda: True)
    try:
        yield sock, ipam
    finally:
        server.stop(None)
        store.close()


def ctl(sock: str, *argv: str) -> int:
    from ipamd.cli.ctl import main

    return main(["--grpc-socket", sock, *argv])


@pytest.mark.parametrize("form", ["my-namespace/my-net-pool", "IPAddressPool/my-namespace/my-net-pool"])
def test_ipam_leases_takes_the_pool_forms_release_takes(served: tuple[str, Ipam], form: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    sock, ipam = served
    from ipamd.model.objects import CLUSTER_IP_ADDRESS_POOL, IP_ADDRESS_POOL

    mine = ipam.source.get(IP_ADDRESS_POOL, "my-namespace", "my-net-pool")
    theirs = ipam.source.get(CLUSTER_IP_ADDRESS_POOL, "", "cpool")
    assert isinstance(mine, AddressPool) and isinstance(theirs, AddressPool)
    ipam.allocate_for("a", mine)
    ipam.allocate_for("b", theirs)
    assert ctl(sock, "ipam", "leases", "--pool", form, "-o", "json") == 0
    assert [d["address"] for d in json.loads(capsys.readouterr().out)] == ["198.18.13.1"]
    assert ctl(sock, "ipam", "leases", "--pool", "cpool", "-o", "json") == 0
    assert [d["address"] for d in json.loads(capsys.readouterr().out)] == ["198.18.17.1"]


@pytest.mark.parametrize("form", ["nonsense", "my-namespace/nope", "IPAddressPool/my-namespace/nope"])
def test_ipam_leases_of_a_pool_that_does_not_exist_fails_naming_it(served: tuple[str, Ipam], form: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    sock, _ = served
    assert ctl(sock, "ipam", "leases", "--pool", form) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert form in captured.err and "does not exist" in captured.err


def test_ipam_release_of_an_address_not_leased_says_so_without_asking(
        served: tuple[str, Ipam], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    sock, _ = served
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda *_: pytest.fail("asked for confirmation"))
    assert ctl(sock, "ipam", "release", "my-namespace/my-net-pool", "198.18.13.77") == 0
    assert capsys.readouterr().out.strip() == "198.18.13.77 was not leased"


def test_ipam_release_of_a_pool_that_does_not_exist_fails_without_asking(
        served: tuple[str, Ipam], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    sock, _ = served
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda *_: pytest.fail("asked for confirmation"))
    assert ctl(sock, "ipam", "release", "my-namespace/nope", "198.18.13.1") == 1
    assert "my-namespace/nope" in capsys.readouterr().err


def test_ipam_release_of_a_leased_address_still_asks(served: tuple[str, Ipam], capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from ipamd.model.objects import IP_ADDRESS_POOL

    sock, ipam = served
    mine = ipam.source.get(IP_ADDRESS_POOL, "my-namespace", "my-net-pool")
    assert isinstance(mine, AddressPool)
    ipam.allocate_for("a", mine)
    asked: list[str] = []

    def answer(prompt: str) -> str:
        asked.append(prompt)
        return "y"

    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", answer)
    assert ctl(sock, "ipam", "release", "IPAddressPool/my-namespace/my-net-pool", "198.18.13.1") == 0
    assert len(asked) == 1
    assert capsys.readouterr().out.strip() == "198.18.13.1 released"


def test_plexusctl_shows_the_daemons_try_again_message_not_daemon_unreachable(
        served: tuple[str, Ipam], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """Found in review: the daemon answers CNI code 11 (the API server is away, the message says for what) with
    UNAVAILABLE, and plexusctl read every UNAVAILABLE as a daemon that is not running. It says so only when no
    daemon answered (no ``plexus-cni-code``)."""
    from ipamd.cli.ctl import CNI_CODE_KEY as ctl_key

    sock, ipam = served
    assert ctl_key == CNI_CODE_KEY

    def refuse(*_: Any) -> bool:
        raise TryAgainLater("the Kubernetes API does not answer: cannot free the lease object", "IPAddressLease")

    monkeypatch.setattr(ipam, "release_address", refuse)
    assert ctl(sock, "ipam", "release", "my-namespace/my-net-pool", "198.18.13.1", "--yes") == 1
    err = capsys.readouterr().err
    assert "Kubernetes API does not answer" in err and "not reachable" not in err, err
    assert ctl(str(tmp_path / "none.sock"), "ipam", "release", "my-namespace/my-net-pool", "198.18.13.1", "--yes") == 1
    assert "plexus-ipamd is not reachable on" in capsys.readouterr().err


def test_ipam_release_confirmed_releases_as_the_question_says_even_while_a_pod_uses_it(
        served: tuple[str, Ipam], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: the question says "A pod using it will keep it configured", and the request then went without
    ``force``, so the daemon refused an address a pod uses after the operator said yes. Confirmed is as ``--yes``."""
    from ipamd.model.objects import IP_ADDRESS_POOL

    sock, ipam = served
    mine = ipam.source.get(IP_ADDRESS_POOL, "my-namespace", "my-net-pool")
    assert isinstance(mine, AddressPool)
    ipam.allocate_for("a", mine)
    ipam.allocate_for("b", mine)
    forced: list[bool] = []
    real = ipam.release_address

    def release_address(pool: AddressPool, address: str, force: bool) -> bool:
        forced.append(force)
        return real(pool, address, force)

    monkeypatch.setattr(ipam, "release_address", release_address)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "y" if "will keep it configured" in prompt else "n")
    assert ctl(sock, "ipam", "release", "my-namespace/my-net-pool", "198.18.13.1") == 0
    assert ctl(sock, "ipam", "release", "my-namespace/my-net-pool", "198.18.13.2", "--yes") == 0
    assert forced == [True, True]
    assert capsys.readouterr().out.splitlines() == ["198.18.13.1 released", "198.18.13.2 released"]


@pytest.mark.parametrize(("content", "where"), [
    ("kind: [\n", "line 2, column 1"),
    ("\tkind: x\n", "line 1, column 1"),
    (b"kind: \xff\xfe\n", "UTF-8"),
])
def test_apply_of_a_file_that_is_not_yaml_names_the_file_and_where(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | bytes, where: str) -> None:
    """Found in review: ``apply -f`` of malformed YAML died with the parser's traceback. README: "refuses a manifest
    that is invalid (exit 1, naming the file ...)": one line naming the file and where the parser stopped, and
    nothing of the other files written."""
    bad = tmp_path / "bad.yaml"
    good = tmp_path / "good.yaml"
    good.write_text(json.dumps({"apiVersion": "network.deckhouse.io/v1alpha1", "kind": "ClusterIPAddressPool",
                                "metadata": {"name": "p"}, "spec": {"pools": [{"network": "198.18.20.0/24"}]}}))
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        bad.write_text(content)
    objects = tmp_path / "objects"
    rc = ctl(str(tmp_path / "none.sock"), "--objects-dir", str(objects), "apply", "-f", str(good), "-f", str(bad))
    captured = capsys.readouterr()
    assert rc == 1
    assert captured.err.startswith(f"error: {bad}: cannot be read as YAML: "), captured.err
    assert where in captured.err and "Traceback" not in captured.err
    assert len(captured.err.splitlines()) == 1, captured.err
    assert not objects.exists() or not list(objects.iterdir()), "nothing is written when an input cannot be read"


def test_apply_of_a_directory_names_the_file_in_it_that_is_not_yaml(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each file of a directory that is not YAML is named: the file in it, not the directory."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.yaml").write_text("kind: [\n")
    (d / "b.yml").write_text("a: b: c\n")
    assert ctl(str(tmp_path / "none.sock"), "--objects-dir", str(tmp_path / "o"), "apply", "-f", str(d)) == 1
    err = capsys.readouterr().err.splitlines()
    assert [e.split(": cannot be read as YAML: ")[0] for e in err] == [f"error: {d / 'a.yaml'}", f"error: {d / 'b.yml'}"]
    assert "line 1, column 5" in err[1], err


def test_apply_of_stdin_that_is_not_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("kind: [\n"))
    assert ctl(str(tmp_path / "none.sock"), "--objects-dir", str(tmp_path / "o"), "apply", "-f", "-") == 1
    assert capsys.readouterr().err.startswith("error: <stdin>: cannot be read as YAML: line 2, column 1: ")


def test_apply_of_a_file_that_is_not_there_or_a_directory_with_no_manifests(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is not there is named in the usual ``error: FILE: ...`` form; a directory with no manifest is
    said to hold none (it applied nothing, silently, exit 0)."""
    sock = str(tmp_path / "none.sock")
    assert ctl(sock, "--objects-dir", str(tmp_path / "o"), "apply", "-f", str(tmp_path / "nope.yaml")) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.yaml'}: No such file or directory\n"
    (tmp_path / "empty").mkdir()
    assert ctl(sock, "--objects-dir", str(tmp_path / "o"), "delete", "-f", str(tmp_path / "empty")) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no objects in ") and str(tmp_path / "empty") in err, err


@pytest.mark.parametrize(("content", "what"), [("- a\n- b\n", "a list"), ("hello\n", "a string"), ("42\n", "a number")])
def test_apply_of_a_document_that_is_not_a_mapping_says_what_it_is(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, what: str) -> None:
    """Found in review: a document that is a list or a scalar was refused as ``manifest: : must be a mapping``."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    assert ctl(str(tmp_path / "none.sock"), "--objects-dir", str(tmp_path / "o"), "apply", "-f", str(bad)) == 1
    err = capsys.readouterr().err
    assert err == f"error: {bad}: not a manifest: {what}, where a mapping (apiVersion, kind, metadata) belongs\n", err


def test_apply_names_the_document_of_several_that_is_not_a_mapping(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A document of several is named ``FILE#i``, as the daemon names it."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n---\n7\n")
    assert ctl(str(tmp_path / "none.sock"), "--objects-dir", str(tmp_path / "o"), "apply", "-f", str(bad)) == 1
    assert [e.split(": not a manifest: ")[0] for e in capsys.readouterr().err.splitlines()] == [
        f"error: {bad}#0", f"error: {bad}#1"]

def test_get_networks_shows_a_vxlan_networks_vni_and_no_id_as_dash(
        served: tuple[str, Ipam], capsys: pytest.CaptureFixture[str]) -> None:
    """Found in review: ``get networks`` showed a VXLAN network's ID as 0 (its ``vlanID``; the VNI nowhere), and 0 for a
    network whose status has no ID yet (its parent NIC missing). A VNI column; ``-`` where there is no ID; a record with
    an ID but no status yet shows the ID it has."""
    sock, ipam = served
    store = ipam.store
    assert isinstance(store, Store)
    with store.transaction():
        store.put_segment(SegmentRecord("Network/ns/over", "vxlan", 5000, "plx-vb-5000", status={
            "bridgeName": "plx-vb-5000", "vlanID": 0, "vni": 5000,
            "conditions": [{"type": "Ready", "status": "True"}]}))
        store.put_segment(SegmentRecord("Network/ns/tagged", "vlan", 650, "plx-br-650", status={
            "bridgeName": "plx-br-650", "vlanID": 650, "conditions": [{"type": "Ready", "status": "True"}]}))
        store.put_segment(SegmentRecord("ClusterNetwork/nonic", "vlan", 900, "plx-br-900"))  # parent NIC missing
        store.put_segment(SegmentRecord("Network/ns/plain", "none", 0, "plx-n-abc", status={
            "bridgeName": "plx-n-abc", "vlanID": 0, "conditions": [{"type": "Ready", "status": "True"}]}))
    assert ctl(sock, "get", "networks") == 0
    rows = [r.split() for r in capsys.readouterr().out.splitlines()]
    assert rows == [["NETWORK", "BRIDGE", "VLAN", "VNI", "READY"],
                    ["ClusterNetwork/nonic", "plx-br-900", "900", "-", "Unknown"],  # the ID it has, no status yet
                    ["Network/ns/over", "plx-vb-5000", "-", "5000", "True"],
                    ["Network/ns/plain", "plx-n-abc", "-", "-", "True"],
                    ["Network/ns/tagged", "plx-br-650", "650", "-", "True"]], rows


def test_ipam_pools_of_a_64_shows_no_int64_clamp(served: tuple[str, Ipam], capsys: pytest.CaptureFixture[str]) -> None:
    """Found in review: a /64 pool's SIZE and FREE were 9223372036854775807, the API's int64 clamp, shown as a count.
    A clamped count is shown as the lower bound it is; USED stays exact."""
    from ipamd.model.objects import CLUSTER_IP_ADDRESS_POOL

    sock, ipam = served
    v6 = ipam.source.get(CLUSTER_IP_ADDRESS_POOL, "", "v6")
    assert isinstance(v6, AddressPool)
    ipam.allocate_for("a", v6)
    ipam.allocate_for("b", v6)
    assert ctl(sock, "ipam", "pools") == 0
    out = capsys.readouterr().out
    assert "9223372036854775807" not in out, out
    row = next(r.split() for r in out.splitlines() if r.startswith("ClusterIPAddressPool/v6"))
    assert row == ["ClusterIPAddressPool/v6", "2001:2::/64", ">=9.2e18", "2", "0", ">=9.2e18"], row
    small = next(r.split() for r in out.splitlines() if r.startswith("ClusterIPAddressPool/cpool"))
    assert small[2:] == ["254", "0", "0", "254"], small


@pytest.mark.parametrize("yes", [False, True])
def test_ipam_release_of_an_address_outside_the_pool_says_so(
        served: tuple[str, Ipam], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        yes: bool) -> None:
    """Found in review: an address outside the pool's networks was answered "was not leased", exit 0."""
    sock, _ = served
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda *_: pytest.fail("asked for confirmation"))
    assert ctl(sock, "ipam", "release", "my-namespace/my-net-pool", "198.18.99.7", *(["--yes"] if yes else [])) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("error: 198.18.99.7 is not in pool IPAddressPool/my-namespace/my-net-pool "
                            "(198.18.13.0/24)\n"), captured.err


def test_ipam_release_frees_a_lease_left_outside_the_pools_networks_by_an_edit(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture[str],
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: the outside-the-pool refusal read the pool's networks as served now, before asking whether the
    address is leased. A lease a pool edit left outside its networks (local mode: ``plexusctl apply`` does not know
    the leases; ``ipam leases --pool`` lists it) is exactly the stuck address release is for: ``--yes`` frees it."""
    from ipamd.model.objects import IP_ADDRESS_POOL

    src = FakeSource(obj("IPAddressPool", "p", {"pools": [{"network": "198.18.13.0/24"}]}, namespace="ns"))
    store = Store(":memory:")
    ipam = Ipam(store, src, Clock())
    sock = str(tmp_path / "ipam.sock")
    server, _ = serve(sock, IpamService(store, src, ipam, list), lambda: True)
    try:
        pool = src.get(IP_ADDRESS_POOL, "ns", "p")
        assert isinstance(pool, AddressPool)
        ipam.allocate_for("client", pool)  # 198.18.13.1
        src.add(obj("IPAddressPool", "p", {"pools": [{"network": "198.18.14.0/24"}]}, namespace="ns"))  # edited
        assert ctl(sock, "ipam", "leases", "--pool", "ns/p", "-o", "json") == 0
        assert [d["address"] for d in json.loads(capsys.readouterr().out)] == ["198.18.13.1"], "still leased"
        monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
        rc = ctl(sock, "ipam", "release", "ns/p", "198.18.13.1", "--yes")
        out = capsys.readouterr()
        assert rc == 0 and "released" in out.out, f"rc={rc}: {out.err.strip()}"
        assert ctl(sock, "ipam", "leases", "--pool", "ns/p", "-o", "json") == 0
        assert json.loads(capsys.readouterr().out) == [], "freed"
        assert ctl(sock, "ipam", "release", "ns/p", "198.18.13.1", "--yes") == 1  # neither leased nor in the pool
        assert capsys.readouterr().err == "error: 198.18.13.1 is not in pool IPAddressPool/ns/p (198.18.14.0/24)\n"
    finally:
        server.stop(None)
        store.close()


@pytest.mark.parametrize("yes", [False, True])
def test_ipam_release_in_an_implicit_pool_says_what_to_do_instead(
        served: tuple[str, Ipam], capsys: pytest.CaptureFixture[str], yes: bool) -> None:
    """An implicit pool's address is refused by design (it goes with its attachment); the refusal says what to do
    instead, ``--yes`` or not."""
    sock, ipam = served
    store = ipam.store
    with store.transaction():
        store.put_implicit_pool(ImplicitPoolRecord("k", "whereaboutsexample", "ImplicitPool/unnamed",
                                                   "198.18.71.224/28", ((0xC61247E1, 0xC61247E9),)))
        store.put_lease(LeaseRecord("ImplicitPool/unnamed", 0xC61247E1, "198.18.71.225", "198.18.71.224/28", "x"))
    assert ctl(sock, "ipam", "release", "ImplicitPool/unnamed", "198.18.71.225", *(["--yes"] if yes else [])) == 1
    err = capsys.readouterr().err
    assert "go with their attachments" in err and "plexusctl pod rm" in err, err
    assert "plexusctl ipam leases --pool ImplicitPool/unnamed" in err, err
    assert [x.address for x in store.leases_in_pool("ImplicitPool/unnamed").values()] == ["198.18.71.225"]


def test_pod_status_and_pod_rm_of_a_pod_not_there_agree_and_name_the_namespace(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found in review: ``pod status`` of a pod not there (``-n`` forgotten) said it "has no networks-status", ``pod rm``
    that it "is not running here". Both say the latter, naming the namespace looked in and where the pod is."""
    store = MemoryStore()
    store.put_pod_status(PodStatus("uid-a", "my-namespace", "pod-a", (), updated_at=1.0))
    source = FakeSource()
    sock = str(tmp_path / "grpc.sock")
    server, _ = serve(sock, IpamService(store, source, Ipam(store, source), list), lambda: True)
    state = tmp_path / "state"
    (state / "pods").mkdir(parents=True)
    (state / "pods" / "my-namespace.pod-a.json").write_text("{}")
    try:
        assert ctl(sock, "--state-dir", str(state), "pod", "status", "pod-a") == 1
        status_err = capsys.readouterr().err
        assert ctl(sock, "--state-dir", str(state), "pod", "rm", "pod-a") == 1
        rm_err = capsys.readouterr().err
        expected = ("error: pod pod-a is not running here in namespace default "
                    "(it is in namespace my-namespace: add -n my-namespace)\n")
        assert status_err == expected and rm_err == expected, (status_err, rm_err)
        assert ctl(sock, "--state-dir", str(state), "pod", "status", "other", "-n", "x") == 1
        assert capsys.readouterr().err == "error: pod other is not running here in namespace x\n"
        assert ctl(sock, "--state-dir", str(state), "pod", "rm", "other", "-n", "x") == 1
        assert capsys.readouterr().err == "error: pod other is not running here in namespace x\n"
    finally:
        server.stop(None)

"""plexusctl names a pool the same way for `ipam leases --pool` and `ipam release`; an unknown pool is an error,
and an address that is not leased is said so without asking; a daemon that refuses is told from one that is not
running."""

from __future__ import annotations

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
from ipamd.store.sqlite import Store
from tests.fakes.source import FakeSource
from tests.unit.test_ipam import Clock, obj

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, Ipam]]:
    src = FakeSource(
        obj("IPAddressPool", "my-net-pool", {"pools": [{"network": "198.18.13.0/24"}]}, namespace="my-namespace"),
        obj("ClusterIPAddressPool", "cpool", {"pools": [{"network": "198.18.17.0/24"}]}, namespace=None),
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

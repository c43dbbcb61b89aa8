"""Every API call has a deadline: the (connect, read) timeouts the client sets are per attempt, and urllib3's default
Retry(total=3) made up to four attempts (connect errors on every method, read timeouts on GET/PUT/DELETE), so a GET
with a 0.5 s read timeout took 2.6 s and the controller's Lease hand-back 12 s (found in review)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from urllib3.util import Retry

from ipamd.kube.client import TimedApiClient, kube_api
from ipamd.kube.elector import RELEASE_TIMEOUT, LeaderElector


@pytest.fixture
def hung_server() -> Iterator[str]:
    """Accepts connections and never answers (an API server stuck, or a balancer in front of a dead one)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    kept: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            kept.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()
    for conn in kept:
        conn.close()


def hung_client(url: str) -> TimedApiClient:
    cfg = client.Configuration()
    cfg.host = url
    return TimedApiClient(cfg)


def test_a_get_gives_up_after_its_timeout(hung_server: str) -> None:
    api = hung_client(hung_server)
    api.timeout = (0.5, 0.5)
    started = time.monotonic()
    with pytest.raises(Exception, match="(?i)timed out"):
        client.CoreV1Api(api).read_namespaced_pod("a", "b")
    assert time.monotonic() - started < 1.5, "the read was made again"


def test_the_controller_hands_its_lease_back_within_its_timeout(hung_server: str) -> None:
    started = time.monotonic()
    LeaderElector(hung_client(hung_server), "ns", "me").release()  # logs and gives up
    assert time.monotonic() - started < sum(RELEASE_TIMEOUT) + 1.5


def test_a_client_from_a_kubeconfig_makes_each_request_once(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("""apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
""")
    api = kube_api(str(kubeconfig))
    assert Retry.from_int(api.rest_client.pool_manager.connection_pool_kw["retries"]).total is False

"""Every API call has a deadline: the (connect, read) timeouts the client sets are per attempt, and urllib3's default
Retry(total=3) made up to four attempts (connect errors on every method, read timeouts on GET/PUT/DELETE), so a GET
with a 0.5 s read timeout took 2.6 s and the controller's Lease hand-back 12 s (found in review)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.client import RemoteDisconnected
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError
from urllib3.util import Retry

from ipamd.kube.api_calls import call_in_progress
from ipamd.kube.client import OnceMoreOnADroppedConnection, TimedApiClient, kube_api
from ipamd.kube.elector import RELEASE_TIMEOUT, LeaderElector
from ipamd.kube.errors import api_unavailable_is_11
from ipamd.kube.outbox import CALLS_OWE_S, Outbox
from ipamd.kube.publisher import KubePublisher, api_senders
from ipamd.model.objects import Meta, Pod
from ipamd.store.records import PodStatus
from tests.fakes.store import MemoryStore


class HungServer:
    """Accepts connections and never answers (an API server stuck, or a balancer in front of a dead one); counts the
    connections, one per attempt of a request."""

    def __init__(self) -> None:
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.kept: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self.srv.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            self.kept.append(conn)

    def close(self) -> None:
        self.srv.close()
        for conn in self.kept:
            conn.close()


@pytest.fixture
def hung_server() -> Iterator[HungServer]:
    server = HungServer()
    yield server
    server.close()


def hung_client(url: str) -> TimedApiClient:
    cfg = client.Configuration()
    cfg.host = url
    return TimedApiClient(cfg)


def test_a_get_gives_up_after_its_timeout(hung_server: HungServer) -> None:
    api = hung_client(hung_server.url)
    api.timeout = (0.5, 0.5)
    with pytest.raises(Exception, match="(?i)timed out"):
        client.CoreV1Api(api).read_namespaced_pod("a", "b")
    assert len(hung_server.kept) == 1, "the read was made again, each time with the whole timeout"


def test_the_controller_hands_its_lease_back_within_its_timeout(hung_server: HungServer) -> None:
    LeaderElector(hung_client(hung_server.url), "ns", "me").release()  # its read times out: it logs and gives up
    assert len(hung_server.kept) == 1, f"{len(hung_server.kept)} attempts of {sum(RELEASE_TIMEOUT)} s each at most"


def test_a_client_from_a_kubeconfig_makes_no_request_again_after_a_timeout(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("""apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
""")
    api = kube_api(str(kubeconfig))
    retries = Retry.from_int(api.rest_client.pool_manager.connection_pool_kw["retries"])
    assert isinstance(retries, OnceMoreOnADroppedConnection) and retries.connect == 0


ANSWER = b'{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"x"}}'


@pytest.fixture
def closing_server() -> Iterator[str]:
    """Answers on a kept-alive connection once, then closes it as the next request comes in (an API server, or a
    balancer before it, ending an idle connection just as the client reuses it); answers on new connections."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def serve() -> None:
        first = True
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                answered = 0
                while True:
                    data = b""
                    while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                        data += chunk
                    if not data or (first and answered == 1):
                        break
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER)
                    answered += 1
            first = False

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()


def test_a_get_on_a_kept_alive_connection_the_server_closed_is_made_again(closing_server: str) -> None:
    """That is no outage: an ADD's read must not answer code 11 for an API server that is up (found in review: with
    no retry at all, it did)."""
    core = client.CoreV1Api(hung_client(closing_server))
    core.read_namespace("x")
    with api_unavailable_is_11():
        assert core.read_namespace("x").metadata.name == "x"  # type: ignore[union-attr]


def test_a_refused_connection_or_a_timeout_is_not_tried_again_and_a_dropped_one_once() -> None:
    once = OnceMoreOnADroppedConnection()
    with pytest.raises((MaxRetryError, NewConnectionError)):  # (urllib3 counts a refusal as a connect timeout)
        once.increment("GET", "/api", error=NewConnectionError(None, "Connection refused"))  # type: ignore[arg-type]
    with pytest.raises(ReadTimeoutError):
        once.increment("GET", "/api", error=ReadTimeoutError(None, "/api", "timed out"))  # type: ignore[arg-type]
    dropped = ProtocolError("Connection aborted.", RemoteDisconnected("closed"))
    again = once.increment("GET", "/api", error=dropped)
    with pytest.raises(MaxRetryError):
        again.increment("GET", "/api", error=dropped)
    with pytest.raises(ProtocolError):  # a PATCH is never made twice
        once.increment("PATCH", "/api", error=dropped)


def test_a_call_waits_once_for_a_server_that_does_not_answer_and_then_owes_its_writes(
        hung_server: HungServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against an API server that accepts and never answers, every ADD and DEL waited out the request's deadline
    (10 s) for the pod's status (found in review): now the first waits the call's own deadline, and the calls after
    it owe their writes at once for ``CALLS_OWE_S``; then one tries again."""
    monkeypatch.setattr("ipamd.kube.publisher.CALL_TIMEOUT", (0.5, 0.3))
    clock = [1000.0]
    api = hung_client(hung_server.url)
    store = MemoryStore()
    outbox = Outbox(store, api_senders(api), clock=lambda: clock[0])
    pub = KubePublisher(api, "node-a", outbox)
    pod = Pod(Meta("Pod", "app", "ns", "uid-1"))
    started = time.monotonic()
    pub.pod_status(pod, PodStatus("uid-1", "ns", "app"))
    assert 0.25 < time.monotonic() - started < 2, "the call's deadline, not the client's 10 s"
    for _ in range(5):
        pub.pod_status(pod, PodStatus("uid-1", "ns", "app"))
    assert len(hung_server.kept) == 1, "the calls after it sent nothing"
    assert [(e.target, e.op) for e in store.outbox_head(10)] == [("Pod/ns/app", "pod_status")], "owed, superseded"
    clock[0] += CALLS_OWE_S
    pub.pod_status(pod, None)
    assert len(hung_server.kept) == 2, "a while later, one call tries again"
    outbox.stop()


def test_an_owed_write_a_call_makes_now_has_the_calls_deadline(
        hung_server: HungServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """An owed write made now on a call's path (``flush_target``: the lease object of a holder that outlives its pods,
    a let-go before a new claim) went through the outbox's senders with the client's 10 s deadline, not the call's
    3 s: every request a caller waits on now has the call's; the background's keep the client's."""
    monkeypatch.setattr("ipamd.kube.client.CALL_TIMEOUT", (0.5, 0.3))
    api = hung_client(hung_server.url)
    api.timeout = (0.5, 1.5)
    outbox = Outbox(MemoryStore(), api_senders(api))
    outbox.add("IPAddressLease/x", "create", {"kind": "IPAddressLease", "object": {"metadata": {"name": "x"}}})
    started = time.monotonic()
    with call_in_progress():
        assert not outbox.flush_target("IPAddressLease/x"), "unanswered: still owed"
    assert time.monotonic() - started < 1.2, "the call's read deadline (0.3 s), not the client's (1.5 s)"
    started = time.monotonic()
    assert not outbox.flush_target("IPAddressLease/x")
    assert time.monotonic() - started > 1.2, "off a call's path, the client's own"
    outbox.stop()


def test_a_pools_whole_list_on_a_calls_path_keeps_the_clients_deadline() -> None:
    """A block claimed for an ADD reads every lease object and block of its pool (the quorum reads after the claim):
    with the call's 3 s, a large pool's list could time out on every try, the block be given back each time and the
    ADD never served; those lists keep the client's deadline (found in review)."""
    from ipamd.ipam.allocator import to_int
    from ipamd.ipam.blocks import Block
    from ipamd.kube.client import REQUEST_TIMEOUT
    from tests.fakes.cluster import FakeApi
    from tests.unit.test_blocks import Node

    api = FakeApi()
    node = Node(api, "a")
    asked: list[Any] = []
    lister = api.lister

    def recording(kind: str) -> Any:
        def list_objects(**kwargs: Any) -> Any:
            asked.append(kwargs.get("_request_timeout"))
            return lister(kind)(**kwargs)
        return list_objects

    api.lister = recording  # type: ignore[method-assign]
    with call_in_progress():
        node.registry._exclude_leased(Block("IPAddressPool/ns/big", to_int("198.18.40.16"), 16, "a"))
    assert asked == [REQUEST_TIMEOUT]

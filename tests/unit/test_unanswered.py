"""What counts as the API server not answering (an outage: code 11, the outbox backing off as a whole) and what is a
failure of this node's own (its certificate, key or token files, its resources): never taken for an outage."""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client

from cni.errors import InternalError, TryAgainLater
from ipamd.kube.client import TimedApiClient
from ipamd.kube.errors import api_unavailable_is_11, transient, unanswered
from ipamd.kube.outbox import Outbox, judge
from tests.fakes.store import MemoryStore


class Server:
    """A loopback server that does ``behaviour`` with each connection it accepts."""

    def __init__(self, behaviour: Callable[[socket.socket], Any]) -> None:
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.port = self.srv.getsockname()[1]
        self.kept: list[socket.socket] = []
        self.behaviour = behaviour
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            self.kept.append(conn)
            self.behaviour(conn)

    def close(self) -> None:
        self.srv.close()
        for conn in self.kept:
            conn.close()


@pytest.fixture
def servers() -> Iterator[Callable[[Callable[[socket.socket], Any]], Server]]:
    made: list[Server] = []

    def make(behaviour: Callable[[socket.socket], Any]) -> Server:
        made.append(Server(behaviour))
        return made[-1]

    yield make
    for s in made:
        s.close()


def read_pod(host: str, **settings: Any) -> BaseException:
    """What reading a pod raises, through the daemon's API client as configured (its retries, a short deadline)."""
    conf = client.Configuration()
    conf.host = host
    for key, value in settings.items():
        setattr(conf, key, value)
    api = TimedApiClient(conf)
    api.timeout = (1.0, 1.0)
    with pytest.raises(Exception) as info:
        client.CoreV1Api(api).read_namespaced_pod("p", "ns")
    return info.value


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


PLAIN_HTTP = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"


def plain_http(conn: socket.socket) -> None:
    """A server that speaks plain HTTP where TLS was asked for (the wrong port, a balancer misconfigured)."""
    conn.recv(4096)
    conn.sendall(PLAIN_HTTP)


def no_answers(servers: Callable[[Callable[[socket.socket], Any]], Server]) -> dict[str, BaseException]:
    return {
        "refused": read_pod(f"http://127.0.0.1:{closed_port()}"),
        "hung": read_pod(f"http://127.0.0.1:{servers(lambda c: None).port}"),
        "closed": read_pod(f"http://127.0.0.1:{servers(lambda c: c.close()).port}"),
        "tls closed": read_pod(f"https://127.0.0.1:{servers(lambda c: c.close()).port}", verify_ssl=False),
        "tls to plain http": read_pod(f"https://127.0.0.1:{servers(plain_http).port}", verify_ssl=False),
    }


def test_no_answer_is_an_outage_and_code_11(servers: Callable[[Callable[[socket.socket], Any]], Server]) -> None:
    for what, exc in no_answers(servers).items():
        assert unanswered(exc) and transient(exc), (what, repr(exc))
        assert judge("create", exc).api_away, what
        with pytest.raises(TryAgainLater), api_unavailable_is_11():
            raise exc


def ours(servers: Callable[[Callable[[socket.socket], Any]], Server], tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> dict[str, BaseException]:
    tls = f"https://127.0.0.1:{servers(lambda c: c.close()).port}"
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate")
    got = {
        "CA file missing": read_pod(tls, ssl_ca_cert=str(tmp_path / "ca.crt")),
        "CA file not a certificate": read_pod(tls, ssl_ca_cert=str(garbage)),
        "client certificate missing": read_pod(tls, verify_ssl=False, cert_file=str(tmp_path / "c.crt"),
                                               key_file=str(tmp_path / "c.key")),
    }

    def token_unreadable(conf: Any) -> None:  # the service account's token read again as it expires
        raise PermissionError(errno.EACCES, "Permission denied", "/var/run/secrets/kubernetes.io/serviceaccount/token")

    got["token unreadable"] = read_pod(f"http://127.0.0.1:{closed_port()}", refresh_api_key_hook=token_unreadable,
                                       api_key={"authorization": "x"})

    def no_descriptor(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")  # as socket() raises it

    with monkeypatch.context() as m:
        m.setattr(urllib3.util.connection, "create_connection", no_descriptor)
        got["out of file descriptors"] = read_pod(f"http://127.0.0.1:{closed_port()}")
    return got


def test_a_failure_of_our_own_is_no_outage_and_said_as_what_it_is(
        servers: Callable[[Callable[[socket.socket], Any]], Server], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A certificate file missing or broken, the token unreadable, no file descriptor left: the API server was never
    asked. Taken for an outage, it was retried for ever as one (the outbox backing off as a whole, CNI calls owing
    their writes, ADDs answered 11 'not reachable') and never said."""
    for what, exc in ours(servers, tmp_path, monkeypatch).items():
        assert not unanswered(exc) and not transient(exc), (what, repr(exc))
        verdict = judge("create", exc)
        assert not verdict.done and not verdict.api_away and verdict.error.startswith("failed before it was sent"), \
            (what, verdict)
        with pytest.raises(InternalError) as err, api_unavailable_is_11():
            raise exc
        assert err.value.code == 999, (what, err.value)


def test_the_outbox_owes_through_an_outage_but_not_for_a_failure_of_its_own(
        servers: Callable[[Callable[[socket.socket], Any]], Server], tmp_path: Path) -> None:
    refused = read_pod(f"http://127.0.0.1:{closed_port()}")
    local = read_pod(f"https://127.0.0.1:{servers(lambda c: c.close()).port}", ssl_ca_cert=str(tmp_path / "ca.crt"))
    for exc, outage in ((refused, True), (local, False)):
        store = MemoryStore()

        def send(body: dict[str, Any], exc: BaseException = exc) -> None:
            raise exc

        outbox = Outbox(store, {"create": send}, lambda: 1000.0)
        outbox.add("IPAddress/ns/a", "create", {})
        outbox.add("IPAddress/ns/b", "create", {})
        assert outbox.flush() == 2, "retried, never dropped"
        assert outbox.api_away() is outage, "CNI calls owe their writes while the API server does not answer"
        (entry, _) = store.outbox_head(2)
        assert entry.attempts == 1 and ("failed before it was sent" in entry.error) is not outage, entry.error

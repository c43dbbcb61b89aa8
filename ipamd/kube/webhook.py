"""The validating webhook's HTTPS server: ``POST /validate`` answers AdmissionReviews (admission.py).

Standard library only (``http.server`` and ``ssl``). Accepted sockets are wrapped with the context
of the moment, so a renewed certificate is served from the next connection on, and the TLS handshake
runs in the connection's own thread: a slow client never holds up the accept loop.

Every request gets an answer the API server can read: 400 for one that is not a review it could have sent, 500
(logged) for a failure here; a dropped connection would be a failed call, which refuses the object under
``failurePolicy: Fail`` with no reason and admits it unreviewed under ``Ignore``. A body must arrive within
``timeout`` in all, and at most ``max_connections`` connections are served at once (one more is closed at accept):
a client that drips its bytes holds one thread for a while, not the process's threads for ever.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import ssl
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ipamd.kube.admission import ClassOf, Leased, LeasedFor, ReviewInvalid, review
from ipamd.kube.certs import TlsBundle

log = logging.getLogger(__name__)
MAX_BODY = 8 * 1024 * 1024  # the API server's own request limit is 3 MiB per object
#: Connections served at once: the API servers' kept-open ones and a burst of reviews fit many times over.
MAX_CONNECTIONS = 64
_LENGTH = re.compile(r"[0-9]+")


class _Unreadable(Exception):
    """A request whose body cannot be read as sent (its HTTP status, and why)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def server_context(bundle: TlsBundle) -> ssl.SSLContext:
    """A server context for ``bundle`` (``load_cert_chain`` reads files: a private temporary dir)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="plexus-tls-") as tmp:
        cert, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        for path, data in ((cert, bundle.cert_pem + bundle.ca_pem), (key, bundle.key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        ctx.load_cert_chain(cert, key)
    return ctx


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer
    protocol_version = "HTTP/1.1"  # the API server keeps connections open between reviews
    # headers and body leave in two writes: with Nagle's algorithm on a kept-open connection the body
    # waits for the client's delayed ACK of the headers, 40 ms added to every review (measured)
    disable_nagle_algorithm = True
    timeout = 15

    def setup(self) -> None:
        super().setup()  # applies ``timeout`` to the socket: the handshake below cannot hang forever
        self.connection.do_handshake()

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("webhook: " + fmt, *args)

    def _send(self, status: int, body: bytes, ctype: str = "application/json", close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if close:  # also ends this handler's loop over the connection's requests
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, why: str, close: bool = False) -> None:
        self._send(status, json.dumps({"error": why}).encode(), close=close)

    def _body(self) -> bytes:
        """The request's body, all of it within ``timeout`` (which alone bounds each recv, not the request)."""
        text = (self.headers.get("Content-Length") or "0").strip()
        if not _LENGTH.fullmatch(text):
            raise _Unreadable(400, f"Content-Length {text[:40]!r} is not a length")
        length = int(text)
        if not 0 < length <= MAX_BODY:
            raise _Unreadable(400, f"a JSON AdmissionReview body of at most {MAX_BODY} bytes is required")
        deadline, chunks, left = time.monotonic() + self.timeout, [], length
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Unreadable(408, f"the body did not arrive within {self.timeout} s")
            self.connection.settimeout(remaining)
            try:
                chunk = self.rfile.read1(min(left, 1 << 16))
            except TimeoutError:
                raise _Unreadable(408, f"the body did not arrive within {self.timeout} s") from None
            if not chunk:
                raise _Unreadable(400, f"the body ended {left} bytes short of its Content-Length")
            chunks.append(chunk)
            left -= len(chunk)
        self.connection.settimeout(self.timeout)
        return b"".join(chunks)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path in ("/healthz", "/readyz"):
            self._send(200, b"ok\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != "/validate":
            self._send(404, b"not found\n", "text/plain")
            return
        try:
            body = self._body()
        except _Unreadable as exc:  # what is left of the body cannot be told from a next request: closed
            self._error(exc.status, str(exc), close=True)
            return
        try:
            answer = review(json.loads(body), self.server.leased, self.server.leased_for, self.server.network_class)
        except RecursionError:  # JSON nested deeper than Python's stack: no review the API server sends
            self._error(400, "the body is nested too deeply to be an AdmissionReview")
            return
        except (ValueError, ReviewInvalid) as exc:
            self._error(400, str(exc))
            return
        except Exception:
            log.exception("webhook: reviewing a request failed")
            self._error(500, "the review failed: the controller's log says why")
            return
        resp = answer["response"]
        if not resp["allowed"]:
            log.info("webhook refused %s: %s", resp["uid"], resp["status"]["message"])
        for warning in resp.get("warnings", ()):
            log.info("webhook allowed %s with a warning: %s", resp["uid"], warning)
        self._send(200, json.dumps(answer).encode())


class WebhookServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], bundle: TlsBundle, leased: Leased = lambda pool: (),
                 leased_for: LeasedFor | None = None, max_connections: int = MAX_CONNECTIONS,
                 network_class: ClassOf = lambda name: None) -> None:
        self.context = server_context(bundle)
        self.leased = leased  # a pool's held addresses (the controller's lease informer)
        self.leased_for = leased_for  # those a network may use
        self.network_class = network_class  # a NetworkClass by name (the controller's informer): a Network's vlan.id
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def use(self, bundle: TlsBundle) -> None:
        """Serve ``bundle`` from the next connection on."""
        ctx = server_context(bundle)
        with self._lock:
            self.context = ctx

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        with self._lock:
            ctx = self.context
        return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread for the connection while one of ``max_connections`` is free; else it is closed at once."""
        if not self._slots.acquire(blocking=False):
            log.warning("webhook: %d connections open already: closed the one from %s", self.max_connections,
                        client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: nothing else gives the slot back
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("webhook connection from %s failed", client_address, exc_info=True)

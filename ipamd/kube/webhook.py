"""The validating webhook's HTTPS server: ``POST /validate`` answers AdmissionReviews (admission.py).

Standard library only (``http.server`` and ``ssl``). Accepted sockets are wrapped with the context
of the moment, so a renewed certificate is served from the next connection on, and the TLS handshake
runs in the connection's own thread: a slow client never holds up the accept loop.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ipamd.kube.admission import Leased, LeasedFor, ReviewInvalid, review
from ipamd.kube.certs import TlsBundle

log = logging.getLogger(__name__)
MAX_BODY = 8 * 1024 * 1024  # the API server's own request limit is 3 MiB per object


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

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path in ("/healthz", "/readyz"):
            self._send(200, b"ok\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != "/validate":
            self._send(404, b"not found\n", "text/plain")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            self._send(400, b'{"error": "a JSON AdmissionReview body is required"}')
            return
        try:
            answer = review(json.loads(self.rfile.read(length)), self.server.leased, self.server.leased_for)
        except (ValueError, ReviewInvalid) as exc:
            self._send(400, json.dumps({"error": str(exc)}).encode())
            return
        resp = answer["response"]
        if not resp["allowed"]:
            log.info("webhook refused %s: %s", resp["uid"], resp["status"]["message"])
        self._send(200, json.dumps(answer).encode())


class WebhookServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], bundle: TlsBundle, leased: Leased = lambda pool: (),
                 leased_for: LeasedFor | None = None) -> None:
        self.context = server_context(bundle)
        self.leased = leased  # a pool's held addresses (the controller's lease informer)
        self.leased_for = leased_for  # those a network may use
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

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("webhook connection from %s failed", client_address, exc_info=True)

"""The shim endpoint: HTTP/1.1 over a unix socket, JSON bodies (DESIGN §1).

``POST /v1/cni`` (the ``plexus`` plugin's socket) or ``POST /v1/ipam`` (``plexus-ipam``'s, a socket of its
own so that a delegate's IPAM call never waits behind the ADD that exec'd it) takes ``{env, config}`` and
answers 200 with the CNI result, or 4xx/5xx with a CNI error object that the shim prints verbatim.
``GET /healthz`` is liveness, ``GET /readyz`` readiness
(object source synced, store open). The socket lives in a 0700 directory and is itself 0600: only
root may ask the daemon to plumb interfaces.
"""

from __future__ import annotations

import json
import logging
import os
import socketserver
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from typing import Any

from cni.errors import CniError, DecodingFailure, InternalError
from ipamd.kube.api_calls import call_in_progress
from ipamd.server.metrics import CNI_REQUESTS, CNI_SECONDS
from ipamd.verbs.call import CniCall

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    server: CniHttpServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass  # every call is logged once, with its outcome, in _cni

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/healthz":
            self._send(200, {"ok": True})
        elif self.path == "/readyz":
            ready = self.server.ready()
            self._send(200 if ready else 503, {"ready": ready})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != self.server.endpoint:
            self._send(404, {"error": "not found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        status, body = self.server.serve_cni(self.rfile.read(length))
        self._send(status, body)


class CniHttpServer(socketserver.UnixStreamServer):
    """Serves each connection on a fixed pool of worker threads.

    A pool rather than a thread per call: it bounds how much work a burst of pod starts can pile
    onto the node (multus#1346), and lets each worker keep its netlink socket open between calls.
    Connections are accepted at once and wait for a worker in order (a queued call costs a socket and
    its request, a few KiB); the listen backlog is deep, so a burst never finds the socket refusing.
    """

    request_queue_size = 1024

    def __init__(self, path: str, handle: Callable[[CniCall], dict[str, Any]], ready: Callable[[], bool],
                 workers: int = 8, endpoint: str = "/v1/cni") -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cni")
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        if os.path.exists(path):
            os.unlink(path)
        self.handle = handle
        self.endpoint = endpoint
        self.name = "IPAM" if endpoint == "/v1/ipam" else "CNI"  # in log lines and metrics
        self.ready = ready
        old = os.umask(0o177)
        try:
            super().__init__(path, _Handler)
        finally:
            os.umask(old)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._pool.submit(self._work, request, client_address)

    def _work(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def serve_cni(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        started = time.monotonic()
        version = "1.1.0"
        verb = "?"
        call = None
        try:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise DecodingFailure("request body is not JSON", str(exc)) from None
            call = CniCall.from_wire(body)
            verb, version = call.verb, call.version
            with call_in_progress():
                answer = self.handle(call)
            status, out, outcome = 200, answer, "ok"
        except CniError as err:
            status, out, outcome = 400, err.to_dict(version), f"error {err.code}: {err}"
        except Exception as exc:
            log.exception("CNI %s failed unexpectedly", verb)
            internal = InternalError("plexus-ipamd failed unexpectedly", f"{type(exc).__name__}: {exc}")
            status, out, outcome = 500, internal.to_dict(version), f"error 999: {exc}"
        elapsed = time.monotonic() - started
        label = verb if self.name == "CNI" else f"{self.name}_{verb}"
        CNI_REQUESTS.labels(label, "ok" if status == 200 else "error").inc()
        CNI_SECONDS.labels(label).observe(elapsed)
        if call is not None:
            pod = f"{call.args.get('K8S_POD_NAMESPACE', '')}/{call.args.get('K8S_POD_NAME', '')}"
            log.info("%s %s container=%s ifname=%s pod=%s %.1fms %s", self.name, verb, call.container_id[:12],
                     call.ifname, pod, elapsed * 1000, outcome)
        else:
            log.info("%s request rejected: %s", self.name, outcome)
        return status, out

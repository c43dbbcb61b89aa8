"""Which API requests a caller waits on: a CNI or gRPC call marks its thread while it is served, and every request
of the API client is counted under ``path="call"`` then, ``path="background"`` otherwise (the outbox, informers,
reconcile rounds, a block claimed ahead). So "API requests on the ADD path" is the daemon's own count
(``plexus_api_requests_total``), not an estimate from the API server's totals."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter

API_REQUESTS = Counter("plexus_api_requests_total", "Requests to the cluster's API server, by whether a CNI or gRPC "
                       "call waited on them (path=call) or not (path=background), and HTTP method", ["path", "method"])
_serving = threading.local()


@contextmanager
def call_in_progress() -> Iterator[None]:
    """Mark this thread as serving a caller (nested marks are one)."""
    depth = getattr(_serving, "depth", 0)
    _serving.depth = depth + 1
    try:
        yield
    finally:
        _serving.depth = depth


def count(method: str) -> None:
    API_REQUESTS.labels("call" if getattr(_serving, "depth", 0) else "background", str(method).upper()).inc()

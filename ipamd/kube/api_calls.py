"""Which API requests a caller waits on: a CNI or gRPC call marks its thread while it is served, and every request
of the API client is counted under ``path="call"`` then, ``path="background"`` otherwise (the outbox, informers,
reconcile rounds, a block claimed ahead). So "API requests on the ADD path" is the daemon's own count
(``plexus_api_requests_total``), not an estimate from the API server's totals."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prometheus_client import Counter

API_REQUESTS = Counter("plexus_api_requests_total", "Requests to the cluster's API server, by whether a CNI or gRPC "
                       "call waited on them (path=call) or not (path=background), and HTTP method", ["path", "method"])
# a context variable, not a thread-local: work a call hands to another thread in its context (``Attacher``'s pod
# status written while the interfaces are built) is the call's too
_serving: ContextVar[int] = ContextVar("plexus_serving_depth", default=0)


@contextmanager
def call_in_progress() -> Iterator[None]:
    """Mark this thread (its context) as serving a caller (nested marks are one)."""
    token = _serving.set(_serving.get() + 1)
    try:
        yield
    finally:
        _serving.reset(token)


def serving() -> bool:
    """Whether this thread (its context) serves a caller, who waits on its requests."""
    return bool(_serving.get())


def count(method: str) -> None:
    API_REQUESTS.labels("call" if _serving.get() else "background", str(method).upper()).inc()

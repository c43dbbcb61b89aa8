"""The Kubernetes API's failures as CNI errors, mapped once at the boundary."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import urllib3
from kubernetes.client.exceptions import ApiException

from cni.errors import InternalError, TryAgainLater


@contextmanager
def api_unavailable_is_11() -> Iterator[None]:
    """The API unreachable or overloaded mid-ADD: CNI code 11, so the runtime retries (not 999). Any other answer a
    caller inside did not handle is a CNI error too, never a bare exception: a 404 (a kind not served yet: the API
    server restarting serves custom resources only once it has read their definitions again) or a 409 (changed
    meanwhile) is worth a retry as well; a refusal (401, 403: the node's credentials or RBAC) is said as one."""
    try:
        yield
    except ApiException as exc:
        if unserved(exc):
            raise TryAgainLater("the Kubernetes API does not serve this kind (yet): an API server starting, or a "
                                "CustomResourceDefinition missing", str(exc.reason)) from None
        if transient(exc):
            raise TryAgainLater("the Kubernetes API is not available", f"{exc.status} {exc.reason}") from None
        if exc.status == 404:
            raise TryAgainLater("the Kubernetes API answered that an object it needs is not there (an API server "
                                "starting, or the object deleted meanwhile)", f"{exc.status} {reason_of(exc)}") from None
        if exc.status == 409:
            raise TryAgainLater("an object changed while this call wrote it", f"{exc.status} {reason_of(exc)}") from None
        hint = " (the node's credentials or RBAC: apply packaging/k8s/rbac.yaml)" if exc.status in (401, 403) else ""
        raise InternalError(f"the Kubernetes API refused a request: {exc.status} {reason_of(exc)}{hint}",
                            "kubernetes") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TryAgainLater("the Kubernetes API is not reachable", str(exc)[:300]) from None


def transient(exc: BaseException) -> bool:
    """Whether a failure says the API server is away or overloaded (no answer, 408, 429, 5xx): worth a retry later,
    never a refusal of the request itself."""
    status = exc.status if isinstance(exc, ApiException) else None
    return unanswered(exc) or (status is not None and (status in (408, 429) or status >= 500))


def unanswered(exc: BaseException) -> bool:
    """Whether a request got no answer at all (refused, timed out, cut), not an answer, nor a failure of our own."""
    if isinstance(exc, ApiException):
        return exc.status is None
    return isinstance(exc, (urllib3.exceptions.HTTPError, OSError))


class KindNotServed(ApiException):
    """A 404 of a kind's path, answered as the API server unavailable (503) so that every caller retries it: the kind
    is not served (yet), by an API server starting again or for want of its CustomResourceDefinition."""

    def __init__(self, kind: str) -> None:
        super().__init__(status=503, reason=f"the API server does not serve {kind} (yet): an API server starting, or "
                                            "its CustomResourceDefinition missing (kubectl apply -f crds.yaml)")


def unserved(exc: BaseException) -> bool:
    """Whether an answer is a 404 of the path, not of an object (or ``KindNotServed``, as the custom objects' seam
    answers one): the kind is not served (yet), as by an API server starting again, which serves custom resources only
    once it has read their definitions. The API server's 404 of an object, or of its namespace, names it
    (``details.name``); that of a path names nothing, or is no Status at all."""
    if isinstance(exc, KindNotServed):
        return True
    if not isinstance(exc, ApiException) or exc.status != 404:
        return False
    try:
        body = json.loads(exc.body or "")
    except (ValueError, TypeError):
        return True
    details = body.get("details") if isinstance(body, dict) else None
    return not (isinstance(details, dict) and details.get("name"))


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an API failure (None when the API was not reached at all)."""
    return exc.status if isinstance(exc, ApiException) else None


def reason_of(exc: BaseException) -> str:
    """What an API failure says, for the log: the API's reason and message, else the exception itself."""
    if not isinstance(exc, ApiException):
        return str(exc)
    try:
        message = json.loads(exc.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        message = ""
    return f"{exc.reason}: {message}" if message else str(exc.reason)

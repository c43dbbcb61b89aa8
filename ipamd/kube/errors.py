"""The Kubernetes API's failures as CNI errors, mapped once at the boundary."""

from __future__ import annotations

import errno
import http.client
import json
import socket
import ssl
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
    meanwhile) is worth a retry as well; a refusal (401, 403: the node's credentials or RBAC) is said as one, and so is
    a failure of this node's own before the request was sent (``unanswered``: no outage)."""
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
        if unanswered(exc):
            raise TryAgainLater("the Kubernetes API is not reachable", str(exc)[:300]) from None
        raise InternalError("this node failed to make its request to the Kubernetes API, which was not asked (its "
                            f"certificate, key or token files, or its resources): {str(exc)[:300]}",
                            "kubernetes") from None


def transient(exc: BaseException) -> bool:
    """Whether a failure says the API server is away or overloaded (no answer, 408, 429, 5xx): worth a retry later,
    never a refusal of the request itself."""
    status = exc.status if isinstance(exc, ApiException) else None
    return unanswered(exc) or (status is not None and (status in (408, 429) or status >= 500))


#: What a connection the API server (or the network to it) refused, cut or never answered fails with.
NO_ANSWER_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ESHUTDOWN,
                              errno.ENOTCONN, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETUNREACH,
                              errno.ENETDOWN, errno.ENETRESET})
#: A name server that did not answer (a name that does not exist is a configuration of ours).
NO_ANSWER_LOOKUPS = frozenset({socket.EAI_AGAIN, socket.EAI_FAIL})


def unanswered(exc: BaseException) -> bool:
    """Whether a request got no answer at all (refused, timed out, cut; the network or a name server not answering;
    the TLS connection failing), not an answer, nor a failure of our own: a certificate, key or token file missing,
    unreadable or broken, no file descriptor or memory left. Ours are no outage: retried as one, they would be retried
    for ever and never said. What decides is what failed beneath the client's wrappers (``_beneath``)."""
    cause = _beneath(exc)
    if isinstance(cause, ApiException):
        return cause.status is None
    if isinstance(cause, ssl.SSLError):
        return _of_the_connection(cause)
    if isinstance(cause, socket.gaierror):
        return cause.errno in NO_ANSWER_LOOKUPS
    if isinstance(cause, (ConnectionError, TimeoutError, http.client.IncompleteRead)):
        return True
    if isinstance(cause, OSError):
        return cause.errno in NO_ANSWER_ERRNOS
    # a wrapper with nothing beneath it: a request timed out, cut, or out of retries
    return isinstance(cause, (urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError,
                              urllib3.exceptions.SSLError, urllib3.exceptions.MaxRetryError,
                              urllib3.exceptions.ProxyError))


def _beneath(exc: BaseException) -> BaseException:
    """What failed beneath the wrappers of the API client: urllib3's (``MaxRetryError``'s reason; a ``ProtocolError``'s,
    ``SSLError``'s or ``NewConnectionError``'s cause or argument) and the client's answerless ``ApiException`` (status 0,
    raised while handling an ``SSLError``)."""
    for _ in range(8):  # a chain of wrappers is short; never a loop
        if isinstance(exc, ApiException):
            inner = None if exc.status else exc.__cause__ or exc.__context__
        elif isinstance(exc, urllib3.exceptions.MaxRetryError):
            inner = exc.reason
        elif isinstance(exc, urllib3.exceptions.HTTPError):
            inner = exc.__cause__ or next((a for a in exc.args if isinstance(a, BaseException)), None)
        else:
            inner = None
        if not isinstance(inner, BaseException):
            return exc
        exc = inner
    return exc


def _of_the_connection(exc: ssl.SSLError) -> bool:
    """A TLS failure of the connection (its handshake, a read, a write: raised by the ``ssl`` module's socket), not of
    loading our own CA, certificate or key (a file that does not parse: raised where the client loads it)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is None or tb.tb_frame.f_code.co_filename == ssl.__file__


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

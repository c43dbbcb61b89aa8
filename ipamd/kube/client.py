"""An API client for Kubernetes mode: from a kubeconfig, or from the pod's service account.

Every request has a deadline (``REQUEST_TIMEOUT``, connect and read) unless its caller gives its own: an API
server that accepts connections but never answers must not hold an ADD, a reconcile round or a shutdown
for ever. A request a CNI or gRPC call waits on (``ipamd.kube.api_calls.call_in_progress``) has the call's shorter
one (``CALL_TIMEOUT``), whichever path makes it: a pod's status, or an owed write made now before the call goes on.
Watches give their own, longer than the server-side timeout they ask for (``ipamd.kube.informer``).
"""

from __future__ import annotations

import time
from typing import Any, Self

from kubernetes import client, config
from urllib3.exceptions import ConnectTimeoutError, ReadTimeoutError
from urllib3.util import Retry

from ipamd.kube.api_calls import count, serving
from ipamd.kube.server_clock import ServerClock

REQUEST_TIMEOUT = (3.0, 10.0)  # seconds: (connect, read)
#: The deadline of a write a CNI call waits for (the pod's status): a healthy API server answers in milliseconds, and
#: one that does not answer in this time has the write owed instead (``ipamd.kube.outbox``), the call not held up.
CALL_TIMEOUT = (2.0, 3.0)


class OnceMoreOnADroppedConnection(Retry):
    """A request is made once more only when a kept-alive connection it was sent on had been closed by the server (or
    a balancer before it) as it was reused, and only for a method urllib3 deems safe to repeat (not a PATCH, not a
    POST): never after a timeout or a refused connection, so a call's deadline stays what its caller gave."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.update(total=kwargs.get("total", 1), connect=0, status=0, other=0, redirect=0)
        kwargs.setdefault("read", 1)
        super().__init__(**kwargs)

    def increment(self, method: str | None = None, url: str | None = None, response: Any = None,
                  error: Exception | None = None, _pool: Any = None, _stacktrace: Any = None) -> Self:
        if isinstance(error, (ReadTimeoutError, ConnectTimeoutError)):
            raise error
        return super().increment(method, url, response, error, _pool, _stacktrace)


class TimedApiClient(client.ApiClient):
    """``client.ApiClient`` whose requests time out by default, are not made again after a timeout, and are counted
    (``ipamd.kube.api_calls``). urllib3's default ``Retry(total=3)`` made up to four attempts (a connect error on any
    method, a read timeout on a GET, PUT or DELETE), each with the whole timeout, so a call's deadline was four times
    what its caller gave; every caller here owes, retries or gives up by itself. A GET on a kept-alive connection the
    server closed is made once more (``OnceMoreOnADroppedConnection``): that is no outage. Every answer's Date sets
    the estimate of the API server's clock (``server_clock``), which times the server stamped are judged by."""

    timeout: tuple[float, float] = REQUEST_TIMEOUT

    def __init__(self, configuration: Any = None, *args: Any, **kwargs: Any) -> None:
        configuration = configuration if configuration is not None else client.Configuration.get_default_copy()
        configuration.retries = OnceMoreOnADroppedConnection()  # read by the REST client it makes: set before
        super().__init__(configuration, *args, **kwargs)
        self.server_clock = ServerClock()

    def call_api(self, method: Any, url: Any, header_params: Any = None, body: Any = None, post_params: Any = None,
                 _request_timeout: Any = None) -> Any:
        count(method)
        if _request_timeout is None:
            _request_timeout = self.timeout
            if serving():  # a caller waits: the call's deadline, or the client's where that is shorter
                _request_timeout = (min(self.timeout[0], CALL_TIMEOUT[0]), min(self.timeout[1], CALL_TIMEOUT[1]))
        sent = time.monotonic()
        answer = super().call_api(method, url, header_params, body, post_params, _request_timeout=_request_timeout)
        self.server_clock.observe(answer.headers.get("Date"), sent, time.monotonic())
        return answer


def kube_api(kubeconfig: str, timeout: tuple[float, float] = REQUEST_TIMEOUT) -> Any:
    """An API client from a kubeconfig, or from the pod's service account ("in-cluster")."""
    configuration = client.Configuration()
    configuration.connection_pool_maxsize = 32  # informers, the outbox's writers and CNI calls side by side
    if kubeconfig == "in-cluster":
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(config_file=kubeconfig,  # type: ignore[no-untyped-call]
                                client_configuration=configuration)
    api = TimedApiClient(configuration)
    api.timeout = timeout
    return api


def unread(resp: Any) -> None:
    """The answer to a write nobody reads, left as bytes: the client would otherwise turn the whole object it sends
    back (a pod, with every field of its spec and status) into model objects, milliseconds of CPU on the ADD's path.
    Drained, so that its connection goes back to the pool; an error status has raised already."""
    resp.read()
    resp.release_conn()

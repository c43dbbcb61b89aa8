"""An API client for Kubernetes mode: from a kubeconfig, or from the pod's service account.

Every request has a deadline (``REQUEST_TIMEOUT``, connect and read) unless its caller gives its own: an API
server that accepts connections but never answers must not hold an ADD, a reconcile round or a shutdown
for ever. Watches give their own, longer than the server-side timeout they ask for (``ipamd.kube.informer``).
"""

from __future__ import annotations

from typing import Any

from kubernetes import client, config

from ipamd.kube.api_calls import count

REQUEST_TIMEOUT = (3.0, 10.0)  # seconds: (connect, read)


class TimedApiClient(client.ApiClient):
    """``client.ApiClient`` whose requests time out by default, are made once, and are counted
    (``ipamd.kube.api_calls``). Once: urllib3's default ``Retry(total=3)`` makes up to four attempts (a connect error
    on any method, a read timeout on a GET, PUT or DELETE), each with the whole timeout, so a call's deadline would be
    four times what its caller gave; every caller here owes, retries or gives up by itself."""

    timeout: tuple[float, float] = REQUEST_TIMEOUT

    def __init__(self, configuration: Any = None, *args: Any, **kwargs: Any) -> None:
        configuration = configuration if configuration is not None else client.Configuration.get_default_copy()
        configuration.retries = False  # read by the REST client it makes: before super().__init__
        super().__init__(configuration, *args, **kwargs)

    def call_api(self, method: Any, url: Any, header_params: Any = None, body: Any = None, post_params: Any = None,
                 _request_timeout: Any = None) -> Any:
        count(method)
        return super().call_api(method, url, header_params, body, post_params,
                                _request_timeout=self.timeout if _request_timeout is None else _request_timeout)


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

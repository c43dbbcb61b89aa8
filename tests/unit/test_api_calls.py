"""The daemon counts its API requests by whether a CNI or gRPC call waited on them: the figure behind "API requests
on the ADD path" (``plexus_api_requests_total``)."""

from __future__ import annotations

import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client
from prometheus_client import REGISTRY

from ipamd.kube.api_calls import call_in_progress
from ipamd.kube.client import TimedApiClient


def counted(path: str, method: str) -> float:
    return REGISTRY.get_sample_value("plexus_api_requests_total", {"path": path, "method": method}) or 0.0


def test_requests_made_while_a_call_is_served_are_counted_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []

    def call_api(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(method)
        return SimpleNamespace(headers={})  # an answer without a Date

    monkeypatch.setattr(client.ApiClient, "call_api", call_api)
    api = TimedApiClient(client.Configuration())
    before = {(p, m): counted(p, m) for p in ("call", "background") for m in ("PATCH", "POST")}
    with call_in_progress():
        api.call_api("PATCH", "/api/v1/namespaces/ns/pods/p")
        with call_in_progress():  # nested marks are one
            pass
        api.call_api("PATCH", "/api/v1/namespaces/ns/pods/p")
        # work the call hands to another thread (a block claimed ahead) is not the call's
        side = threading.Thread(target=api.call_api, args=("POST", "/apis/x"))
        side.start()
        side.join()
        # but work it hands over in its context is (the pod's status written while its interfaces are built)
        with ThreadPoolExecutor(1) as pool:
            pool.submit(contextvars.copy_context().run, api.call_api, "PATCH", "/api/v1/namespaces/ns/pods/p").result()
    api.call_api("post", "/apis/y")
    assert sent == ["PATCH", "PATCH", "POST", "PATCH", "post"]
    assert counted("call", "PATCH") - before[("call", "PATCH")] == 3
    assert counted("call", "POST") - before[("call", "POST")] == 0
    assert counted("background", "POST") - before[("background", "POST")] == 2
    assert counted("background", "PATCH") - before[("background", "PATCH")] == 0

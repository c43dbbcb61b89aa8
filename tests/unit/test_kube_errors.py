"""The Kubernetes API failing mid-ADD gives CNI code 11 (the runtime retries), not 999."""

from __future__ import annotations

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from cni.errors import TryAgainLater
from ipamd.kube.errors import api_unavailable_is_11
from ipamd.kube.leases import lease_name


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_side_failures_are_try_again_later(status: int) -> None:
    with pytest.raises(TryAgainLater) as info, api_unavailable_is_11():
        raise ApiException(status=status, reason="boom")
    assert info.value.code == 11 and str(status) in info.value.details


def test_unreachable_api_is_try_again_later() -> None:
    with pytest.raises(TryAgainLater), api_unavailable_is_11():
        raise urllib3.exceptions.MaxRetryError(None, "/api", reason=ConnectionRefusedError())  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [404, 409, 422, 403])
def test_answers_about_the_request_pass_through(status: int) -> None:
    with pytest.raises(ApiException), api_unavailable_is_11():
        raise ApiException(status=status, reason="client side")


def test_lease_names_are_valid_and_distinct_per_pool() -> None:
    a = lease_name("IPAddressPool/ns/pool-a", "198.18.10.5")
    b = lease_name("IPAddressPool/ns/pool-b", "198.18.10.5")
    assert a != b and a.startswith("ip-198-18-10-5-") and len(a) <= 63 and a == a.lower()

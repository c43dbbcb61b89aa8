"""The Kubernetes API failing mid-ADD gives CNI code 11 (the runtime retries), not 999."""

from __future__ import annotations

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from cni.errors import InternalError, TryAgainLater
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


@pytest.mark.parametrize("status", [404, 409])
def test_a_kind_not_served_yet_or_an_object_changed_meanwhile_is_code_11(status: int) -> None:
    """An API server just restarted answers 404 for custom resources until it serves their definitions again (found in
    review: an ADD then failed with 999 and a traceback)."""
    with pytest.raises(TryAgainLater), api_unavailable_is_11():
        raise ApiException(status=status, reason="client side")


@pytest.mark.parametrize("status", [422, 403, 401])
def test_a_refusal_no_caller_handled_is_a_cni_error_that_says_it(status: int) -> None:
    with pytest.raises(InternalError, match=f"refused a request: {status}") as err, api_unavailable_is_11():
        raise ApiException(status=status, reason="client side")
    assert err.value.code == 999 and ("RBAC" in str(err.value)) == (status in (401, 403))


def test_lease_names_are_valid_and_distinct_per_pool() -> None:
    a = lease_name("IPAddressPool/ns/pool-a", "198.18.10.5")
    b = lease_name("IPAddressPool/ns/pool-b", "198.18.10.5")
    assert a != b and a.startswith("ip-198-18-10-5-") and len(a) <= 63 and a == a.lower()

"""Leader election through a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does it:
the holder renews the Lease; another replica takes it over when it is not renewed in time, and a
stopping holder hands it back so the standby need not wait out the lease duration."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ipamd.kube.errors import reason_of
from ipamd.model.timefmt import rfc3339_micro

log = logging.getLogger(__name__)
LEASE_NAME = "plexus-controller"
RELEASE_TIMEOUT = (2.0, 3.0)  # a stopping replica has its grace period; the hand-back is a courtesy


class LeaderElector:
    """A coordination.k8s.io/v1 Lease held by renewing it; taken over when not renewed in time."""

    def __init__(self, api: client.ApiClient, namespace: str, identity: str, duration_s: int = 15) -> None:
        self.coord = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.identity = identity
        self.duration_s = duration_s
        # the Lease as last seen changing (holder, renewTime, duration) and when, by this replica's monotonic clock: it
        # expires a duration after that, as client-go judges it (``observedTime``), so that no replica's wall clock,
        # ahead or behind the holder's, makes it expire early
        self._seen: tuple[str, str, int] | None = None
        self._seen_at = 0.0

    def try_acquire(self) -> bool:
        try:
            lease: Any = self.coord.read_namespaced_lease(LEASE_NAME, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {"metadata": {"name": LEASE_NAME, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration_s,
                             "acquireTime": rfc3339_micro(), "renewTime": rfc3339_micro(), "leaseTransitions": 0}}
            try:
                self.coord.create_namespaced_lease(self.namespace, body)  # type: ignore[arg-type]
                return True
            except ApiException as exc2:
                if exc2.status == 409:
                    return False
                raise
        spec = lease.spec
        mine = spec.holder_identity == self.identity
        duration = spec.lease_duration_seconds or self.duration_s
        seen = (spec.holder_identity or "", str(spec.renew_time), duration)
        if seen != self._seen:
            self._seen, self._seen_at = seen, time.monotonic()
        expired = not spec.holder_identity or time.monotonic() - self._seen_at > duration
        if not mine and not expired:
            return False
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = self.duration_s  # not the 1 s a hand-back (``release``) left there
        spec.renew_time = datetime.now(UTC)
        if not mine:
            spec.acquire_time = datetime.now(UTC)
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        try:
            self.coord.replace_namespaced_lease(LEASE_NAME, self.namespace, lease)  # resourceVersion: optimistic
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise


    def release(self) -> None:
        """Hand the Lease back when stopping (as client-go's ReleaseOnCancel): the standby takes over at
        its next try instead of after the lease duration."""
        try:
            lease: Any = self.coord.read_namespaced_lease(LEASE_NAME, self.namespace, _request_timeout=RELEASE_TIMEOUT)
            if lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = ""
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = datetime.now(UTC)
            self.coord.replace_namespaced_lease(LEASE_NAME, self.namespace, lease, _request_timeout=RELEASE_TIMEOUT)
            log.info("handed the controller Lease back")
        except Exception as exc:  # unreachable, hung, refused: the standby takes over when the Lease expires
            log.warning("could not hand the controller Lease back (the standby takes over in %d s): %s",
                        self.duration_s, reason_of(exc))

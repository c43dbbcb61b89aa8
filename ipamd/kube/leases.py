"""Cluster-wide lease uniqueness through IPAddressLease objects (cluster-scoped, one per IP).

An IPAddressLease's name is derived from its pool and IP, so the API server's name uniqueness
makes the allocation atomic: the node whose create succeeds holds the address; AlreadyExists
means another node does, and the allocator moves to its next candidate (from the informer's
cache, never by listing the pool). Orphaning sets ``status.orphaningTimestamp``; a quarantined
lease is adopted by a Static IPAddress asking for exactly that IP.
"""

from __future__ import annotations

import calendar
import hashlib
import logging
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cni.errors import TryAgainLater
from ipamd.allocator import to_int
from ipamd.kube.source import PLURALS, VERSION, KubernetesSource
from ipamd.objects import GROUP
from ipamd.store import LeaseRecord, Store

log = logging.getLogger(__name__)
PLURAL = PLURALS["IPAddressLease"]


@contextmanager
def api_unavailable_is_11() -> Iterator[None]:
    """The API unreachable or overloaded mid-ADD: CNI code 11, so the runtime retries (not 999)."""
    try:
        yield
    except ApiException as exc:
        if exc.status is None or exc.status >= 500 or exc.status == 429:
            raise TryAgainLater("the Kubernetes API is not available", f"{exc.status} {exc.reason}") from None
        raise
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TryAgainLater("the Kubernetes API is not reachable", str(exc)[:300]) from None


def lease_name(pool: str, address: str) -> str:
    """``ip-198-18-10-5-<hash of the pool>``: readable, a valid name, unique per (pool, IP)."""
    return f"ip-{address.replace('.', '-')}-{hashlib.sha1(pool.encode()).hexdigest()[:10]}"


def _rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class KubeLeaseRegistry:
    def __init__(self, source: KubernetesSource, node_name: str) -> None:
        self.custom = source.custom
        self.source = source
        self.node_name = node_name

    def taken_elsewhere(self, pool: str) -> Collection[int]:
        out = set()
        for item in self.source.lease_items():
            spec = item.get("spec") or {}
            if spec.get("pool") == pool and spec.get("ip"):
                out.add(to_int(str(spec["ip"])))
        return out

    def held_by(self, holder: str, pool: str) -> int | None:
        for item in self.source.lease_items():
            spec = item.get("spec") or {}
            if spec.get("holder") == holder and spec.get("pool") == pool and spec.get("ip"):
                return to_int(str(spec["ip"]))
        return None

    def stray(self, store: Store, older_than: float) -> list[LeaseRecord]:
        """Delete this node's lease objects that the store does not hold (see the reconciler)."""
        out = []
        for item in self.source.lease_items():
            md, spec = item.get("metadata") or {}, item.get("spec") or {}
            if (md.get("labels") or {}).get(f"{GROUP}/node") != self.node_name or not spec.get("holder"):
                continue
            created = str(md.get("creationTimestamp") or "")
            if not created or calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")) > older_than:
                continue
            pool, address = str(spec.get("pool")), str(spec.get("ip"))
            local = store.lease_at(pool, to_int(address))
            if local is not None and local.holder == spec.get("holder"):
                continue
            lease = LeaseRecord(pool=pool, ip=to_int(address), address=address, network=str(spec.get("network", "")),
                                holder=str(spec.get("holder")))
            self.release(lease)
            out.append(lease)
        return out

    def _body(self, lease: LeaseRecord) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "IPAddressLease",
            "metadata": {"name": lease_name(lease.pool, lease.address),
                         "labels": {f"{GROUP}/node": self.node_name}},
            "spec": {"pool": lease.pool, "ip": lease.address, "network": lease.network,
                     "holder": lease.holder or "", "ttl": f"{int(lease.ttl)}s"},
        }

    def claim(self, lease: LeaseRecord) -> bool:
        with api_unavailable_is_11():
            return self._claim(lease)

    def _claim(self, lease: LeaseRecord) -> bool:
        body = self._body(lease)
        name = body["metadata"]["name"]
        try:
            self.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
            return True
        except ApiException as exc:
            if exc.status != 409:
                raise
        current: dict[str, Any] = self.custom.get_cluster_custom_object(  # type: ignore[assignment]
            GROUP, VERSION, PLURAL, name)
        spec = current.get("spec") or {}
        if spec.get("holder") == lease.holder:
            return True  # ours already (a retried ADD)
        if (current.get("status") or {}).get("orphaningTimestamp") and lease.holder:
            # quarantined: only a Static IPAddress asks for one exact address, and it may adopt it
            patch = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                     "spec": {"holder": lease.holder}}
            try:
                self.custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, patch)
                self.custom.patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, name,
                                                               {"status": {"orphaningTimestamp": None}})
                return True
            except ApiException as exc:
                if exc.status == 409:
                    return False
                raise
        return False

    def orphan(self, lease: LeaseRecord) -> None:
        name = lease_name(lease.pool, lease.address)
        try:
            # the holder is dropped (a merge patch with null), not emptied: the client sends "" as null
            self.custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"spec": {"holder": None}})
            self.custom.patch_cluster_custom_object_status(
                GROUP, VERSION, PLURAL, name,
                {"status": {"orphaningTimestamp": _rfc3339(lease.orphaned_at or time.time())}})
        except ApiException as exc:
            if exc.status != 404:
                raise

    def release(self, lease: LeaseRecord) -> None:
        try:
            self.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, lease_name(lease.pool, lease.address))
        except ApiException as exc:
            if exc.status != 404:
                raise


__all__ = ["KubeLeaseRegistry", "lease_name", "client"]

"""Timestamps as Kubernetes writes them (RFC 3339, UTC), and back. One place for every status and object."""

from __future__ import annotations

import calendar
import time


def rfc3339(ts: float | None = None) -> str:
    """``2026-11-30T13:49:22Z``: a ``metav1.Time`` (conditions, orphaningTimestamp, Events)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if ts is None else ts))


def rfc3339_micro(ts: float | None = None) -> str:
    """``2026-11-30T13:49:22.123456Z``: a ``metav1.MicroTime`` (a coordination Lease's renewTime)."""
    ts = time.time() if ts is None else ts
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(ts))}.{int(ts % 1 * 1_000_000):06d}Z"


def parse_rfc3339(text: str) -> float:
    """Seconds since the epoch of either form (fractions are dropped); ``ValueError`` when it is neither."""
    return float(calendar.timegm(time.strptime(text.rstrip("Z").split(".")[0], "%Y-%m-%dT%H:%M:%S")))

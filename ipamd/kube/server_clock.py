"""The API server's clock, as this process reads it from the ``Date`` header of the API server's answers.

The controller judges times the API server stamped (a node's renewals in ``metadata.managedFields``, a lease's
quarantine write) against the present. Judged by its own clock, a controller whose clock ran minutes ahead of the
API server's would reclaim a live node, or end a quarantine early; one behind would hold them too long. Every answer
carries the server's time to the second, so every request made through ``ipamd.kube.client.TimedApiClient`` reads
it, and ``now()`` carries the last reading on by the monotonic clock: the server's present, to within a second and
half a round trip, whatever this machine's wall clock says or does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from ipamd.model.timefmt import parse_rfc3339

#: An answer whose round trip took longer says too little about when the server wrote its Date: not used.
MAX_ROUND_TRIP_S = 2.0


def server_time(date: str) -> float | None:
    """An HTTP ``Date`` (``Thu, 03 Dec 2026 12:04:34 GMT``) as seconds since the epoch; None when it is not one."""
    try:
        return parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def anchor_of(date: str, sent: float, received: float) -> tuple[float, float] | None:
    """One answer's reading of the server's clock: (the server's time, this process's monotonic time) at one instant,
    from its ``Date`` and the monotonic times its request was sent and its answer came. The Date is cut to the
    second: the server wrote it somewhere in [Date, Date + 1), somewhere between ``sent`` and ``received``, so the
    middle of both is taken. None when it says too little."""
    at = server_time(date)
    if at is None or not 0 <= received - sent <= MAX_ROUND_TRIP_S:
        return None
    return at + 0.5, (sent + received) / 2


def stamped_at(obj: Mapping[str, Any], manager: str, written: Any = None) -> float | None:
    """When the API server last applied a write of ``manager`` to ``obj`` that changed it (its ``managedFields``
    time, by the server's clock); else ``written`` (a time the writer wrote, by its own clock: an object written by a
    version before the field manager, or no managedFields); None when neither is known."""
    stamps = []
    for entry in (obj.get("metadata") or {}).get("managedFields") or ():
        if isinstance(entry, Mapping) and entry.get("manager") == manager and entry.get("time"):
            try:
                stamps.append(parse_rfc3339(str(entry["time"])))
            except ValueError:
                continue
    if stamps or not written:
        return max(stamps, default=None)
    try:
        return parse_rfc3339(str(written))
    except ValueError:
        return None


class ServerClock:
    """The server's present: its time at the last answer read, carried on by this process's monotonic clock, so that
    a step of this machine's wall clock (NTP correcting the very skew this is for, a VM restored) moves nothing;
    this machine's wall clock until an answer has been read. One Date a second is parsed: answers within the same
    second say nothing new."""

    def __init__(self, wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._wall, self._monotonic = wall, monotonic
        self._lock = threading.Lock()
        self._anchor: tuple[float, float] | None = None  # (server time, monotonic time) at one instant
        self._date = ""  # the last Date read

    @property
    def offset(self) -> float:
        """How far the server's clock is ahead of this machine's wall clock (negative: behind)."""
        return self.now() - self._wall()

    def observe(self, date: str | None, sent: float, received: float) -> None:
        """Take in one answer's Date (``sent``/``received``: this process's monotonic times around its request)."""
        if not date or date == self._date:
            return
        anchor = anchor_of(date, sent, received)
        if anchor is None:
            return
        with self._lock:
            self._anchor, self._date = anchor, date

    def now(self) -> float:
        """The API server's present, as seconds since the epoch."""
        anchor = self._anchor
        if anchor is None:
            return self._wall()
        return anchor[0] + (self._monotonic() - anchor[1])

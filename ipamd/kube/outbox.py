"""The writes to the cluster's API that a CNI call must not wait for, owed durably in the node's store.

An ADD with the API in the loop once made five requests; only the pod's ``networks-status`` is something the pod's
user waits for. IPAddress objects and their statuses, IPAMClaim statuses, lease objects let go and Events are written
to the store's outbox (in the transaction that made them owed, or right after it) and made here: in order per object
(``target``), objects side by side on a few threads, a failure retried with backoff. While the API server is away
every write waits in the store, across restarts and SIGKILLs, and is made once it is back; ``plexusctl outbox`` shows
what waits and why.

A write the API refuses for good (400, 403, 422) is dropped with a warning: kept, it would block its object forever.
"Already there" (409 on a create) and "already gone" (404) are what the write wanted, and count as done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ipamd.kube.errors import reason_of, status_of, transient, unanswered, unserved
from ipamd.store.protocols import OutboxStore
from ipamd.store.records import OutboxEntry

log = logging.getLogger(__name__)

#: op -> the API call that makes it (given the entry's body), built by the caller around its API client
Senders = dict[str, Callable[[dict[str, Any]], None]]

HEAD = 500  # targets made per pass (the rest by the next one, at once)
#: A node daemon's outbox waits this long after being woken before it writes: the CNI call that owed the writes
#: finishes first instead of sharing the node's CPU with them (ADD with the API in the loop: 48.0 ms -> 32.0 against
#: the local mode's 20-24 in bench-kube), and a later status of the same object supersedes an earlier one.
OUTBOX_SETTLE_S = 0.5
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.25, 30.0
#: After the API server left a write unanswered (a CNI call's or a pass's), CNI calls owe their writes at once for
#: this long instead of each waiting out a request's deadline against a server that accepts and never answers; then
#: one call tries again. A call's write answered ends it, and wakes the passes backing off.
CALLS_OWE_S = 5.0
#: ``next_at`` of a write parked until ``unpark``: the undo of something in flight, made only if that fails (or the
#: daemon restarts: nothing is in flight then). Passes and ``flush_target`` leave it, and what follows it, alone.
PARKED = float("inf")


@dataclass(frozen=True, slots=True)
class Verdict:
    done: bool  # made, or never to be made (the entry leaves the outbox)
    api_away: bool = False  # the API server did not answer: the rest of this pass waits too
    error: str = ""


#: Answers that refuse the write itself, whenever it is made again (a body the API server or a webhook rejects, RBAC):
#: dropped, and logged. Any other answer says nothing against the write (401: a token being rotated; 408: the API
#: server gave up waiting): it is made again, so that nothing owed is lost.
REFUSED_FOR_GOOD = frozenset({400, 403, 405, 413, 415, 422})


class NotYet(Exception):
    """Raised by a sender whose write may not be made yet (what it stands for is not committed yet): tried again
    ``NOT_YET_S`` later, not counted as an attempt (it was not sent, so ``drop_unsent`` still knows it unsent), never
    taken for trouble with the API server."""


#: How soon a write a sender said ``NotYet`` of is tried again: what it waits for is a transaction a moment away.
NOT_YET_S = 0.05


def judge(op: str, exc: BaseException) -> Verdict:
    """What a failed write means: done after all (409 on a create, an object's 404), worth a retry (the API away: no
    answer, 408, 429, 5xx; a conflict on an update; a kind not served yet; an answer that does not refuse the write; a
    failure of our own, never taken for an outage) or refused for good."""
    if unserved(exc):  # not an answer about the object, nor the API away: made once the kind is served again
        return Verdict(False, error=f"the API server does not serve this kind (yet): {reason_of(exc)[:300]}")
    if transient(exc):
        return Verdict(False, api_away=True, error=reason_of(exc)[:300])
    status = status_of(exc)
    if status is None:
        return Verdict(False, error=f"failed before it was sent: {type(exc).__name__}: {str(exc)[:300]}")
    # 409 on a delete: its precondition failed, the object is someone else's now
    # 409 on a pod's status: its UID precondition failed (the pod was made again; a patch without a resourceVersion
    # has no other conflict), as for a status written directly
    if status == 404 or (status == 409 and op in ("create", "event", "delete", "pod_status")):
        return Verdict(True)
    if status in REFUSED_FOR_GOOD:
        return Verdict(True, error=f"refused for good: {status} {reason_of(exc)[:300]}")
    return Verdict(False, error=f"{status} {reason_of(exc)[:300]}")


def backoff(attempts: int) -> float:
    """(The exponent is bounded: past 1025 attempts, some 8 hours of a write failing, ``2 ** n`` no longer converts to
    a float, and every pass raised.)"""
    return float(min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** min(max(0, attempts - 1), 64)))


def _left(until: float, now: float) -> float:
    """How long until ``until``, a deadline set at most ``BACKOFF_MAX_S`` ahead (a write's backoff, the passes'): one
    further off was set before the clock was stepped back (NTP's step, a VM restored), and is over, not waited out
    for the length of the step. (``PARKED`` is no deadline: its callers leave it alone.)"""
    return until - now if now < until <= now + BACKOFF_MAX_S else 0.0


#: What a pass learned of the API server from one target's writes (``_send_chain``): nothing against it (made, or
#: waiting), a write answered 408, 429 or 5xx (by the server, or by the object's webhook), or one not answered at all.
FINE, FAILED, UNANSWERED = "fine", "failed", "unanswered"


def _an_outage(results: list[str]) -> bool:
    """Whether a pass that made nothing found the API server away: a write it did not answer at all, or the writes of
    two objects or more answered 5xx or 429. One object's write failing alone may be its own (its webhook's): taken
    for an outage, it held every later write up to ``BACKOFF_MAX_S``."""
    return UNANSWERED in results or results.count(FAILED) >= 2


class Outbox:
    """Owes writes (``add``) and makes them on a background thread (``start``); ``flush`` makes one pass now.

    ``clock`` stamps what the store keeps (``created_at``, ``next_at``: wall-clock, valid across restarts);
    ``monotonic`` times the waits kept in memory (the passes' backoff, ``api_away``), which a step of the wall clock
    must not stretch: ``time.monotonic`` with the wall clock, else (a test's) ``clock`` too."""

    def __init__(self, store: OutboxStore, senders: Senders, clock: Callable[[], float] = time.time,
                 workers: int = 4, settle_s: float = 0.0,
                 lull: Callable[[threading.Event], object] | None = None,
                 monotonic: Callable[[], float] | None = None) -> None:
        self.store, self.senders, self.clock = store, senders, clock
        self.monotonic = monotonic or (time.monotonic if clock is time.time else clock)
        self.settle_s = settle_s
        self.lull = lull  # after the settle, wait for a lull in the node's CNI calls (``ipamd.node.activity``)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._busy: set[str] = set()  # targets being written right now (by a pass or ``flush_target``)
        self._first_seq = 0  # the first write this process owed (seqs only grow): the ones before may have been in flight
        self._busy_lock = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="outbox")
        self._away_until = 0.0  # the API server did not answer: no pass before this (``monotonic``)
        self._away_attempts = 0
        self._calls_owe_until = 0.0  # CNI calls owe their writes at once until then (``api_away``; ``monotonic``)
        self._back = False  # the API server answers again: the next pass makes every write now, whatever its backoff
        self._outage = False  # a pass had nothing made, and a write unanswered or several objects' failing (``flush``)
        self.sent = 0  # writes made since start (the bench tells the ADD path's requests from these)
        # writes the API server refused for good since start, by (op, kind): dropped, so only a log line and this
        # count (``plexus_outbox_refused_total``) tell of them
        self.refused: Counter[tuple[str, str]] = Counter()
        self._sent_lock = threading.Lock()

    # -- owing ----------------------------------------------------------------------------------
    def refusals(self) -> dict[tuple[str, str], int]:
        """The writes refused for good since start, by (op, kind) (a copy: counted from the outbox's threads)."""
        with self._sent_lock:
            return dict(self.refused)

    def add(self, target: str, op: str, body: dict[str, Any], supersede: bool = False, not_before: float = 0.0) -> int:
        """Owe a write of ``target``; ``supersede``: it replaces the pending writes of the same target and op;
        ``not_before``: a write that undoes something unless dropped first (made by a pass after that time, or at
        once by ``flush_target``)."""
        if op not in self.senders:
            raise ValueError(f"no sender for outbox op {op!r}")
        seq = self.store.outbox_add(OutboxEntry(0, target, op, body, created_at=self.clock(), next_at=not_before),
                                    supersede=supersede)
        if not self._first_seq:
            self._first_seq = seq
        self._wake.set()
        return seq

    def unpark(self, target: str, op: str) -> None:
        """Make ``target``'s parked ``op`` writes due now (what they undo has failed)."""
        for e in self.store.outbox_of(target):
            if e.op == op and e.next_at == PARKED:
                self.store.outbox_retry(e.seq, e.attempts, 0.0, e.error)

    def unpark_where(self, target: str, op: str, match: Callable[[dict[str, Any]], bool]) -> None:
        """``unpark``, of the parked ``op`` writes whose body ``match``es only."""
        for e in self.store.outbox_of(target):
            if e.op == op and e.next_at == PARKED and match(e.body):
                self.store.outbox_retry(e.seq, e.attempts, 0.0, e.error)

    def drop_where(self, target: str, op: str, match: Callable[[dict[str, Any]], bool]) -> None:
        """``drop``, of the ``op`` writes whose body ``match``es only (parked or due)."""
        for e in self.store.outbox_of(target):
            if e.op == op and match(e.body):
                self.store.outbox_done(e.seq)

    def unpark_all(self, op: str) -> int:
        """At the daemon's start, before any call: every parked ``op`` write is due (what it guarded died with the
        process that parked it). How many."""
        parked = [e for e in self.of_op(op) if e.next_at == PARKED]
        for e in parked:
            self.store.outbox_retry(e.seq, e.attempts, 0.0, e.error)
        return len(parked)

    def drop(self, target: str, op: str) -> int:
        """Forget the pending writes of ``target``/``op`` (a newer one was just made directly)."""
        return self.store.outbox_drop(target, op)

    def forget(self, seqs: Collection[int]) -> None:
        """Drop these owed writes (made by a newer write of their target, ``KubePublisher._now_or_owed``)."""
        for seq in seqs:
            self.store.outbox_done(seq)

    def drop_unsent(self, target: str, op: str,
                    match: Callable[[dict[str, Any]], bool] = lambda body: True) -> list[OutboxEntry] | None:
        """``drop_where``: the writes dropped, when none of them can have reached the API server (else None): none was
        tried, this process owed each (one owed before a restart may have been in flight when its process died), and
        nothing is writing the target (a pass, or ``flush_target``, takes it before it reads its writes, and reads them
        under the store's lock, which this holds meanwhile)."""
        with self.store.transaction():
            dropped = [e for e in self.store.outbox_of(target) if e.op == op and match(e.body)]
            with self._busy_lock:
                busy = target in self._busy
            for e in dropped:
                self.store.outbox_done(e.seq)
        unsent = not busy and all(e.attempts == 0 and self._first_seq and e.seq >= self._first_seq for e in dropped)
        return dropped if unsent else None

    def owes(self, target: str, but: Collection[str] = ()) -> bool:
        """Whether a write of ``target`` is owed (``but``: other than these ops)."""
        return any(e.op not in but for e in self.store.outbox_of(target))

    def owed(self, target: str) -> list[OutboxEntry]:
        """The writes of ``target`` owed, in order."""
        return list(self.store.outbox_of(target))

    def of_op(self, op: str) -> list[OutboxEntry]:
        """Every owed ``op`` write, in order (a restart's look at what was owed before it)."""
        return [e for e in self.store.outbox_head(10**9) if e.op == op]

    def depth(self) -> int:
        return self.store.outbox_depth()

    def api_away(self) -> bool:
        """The API server left a write unanswered lately (``CALLS_OWE_S``): a write a CNI call would wait for is
        better owed at once."""
        return _left(self._calls_owe_until, self.monotonic()) > 0

    def unanswered(self) -> None:
        """A write got no answer at all (a timeout, a refused connection): the node's calls owe theirs for a while.
        (An API server that answers 5xx or 429 answers at once: calls keep writing, and their failures are owed.)"""
        self._calls_owe_until = self.monotonic() + CALLS_OWE_S

    def answered(self) -> None:
        """A write a CNI call made was answered: after an outage (a pass that had nothing answered, or a call's write
        unanswered) the API server is back, and the next pass makes every owed write at once. A write that keeps
        failing while others are made is no outage: it keeps its own backoff."""
        if self._outage or self._calls_owe_until:
            self._outage = False
            self._calls_owe_until = self._away_until = 0.0
            self._away_attempts = 0
            self._back = True
            self._wake.set()

    # -- making them ----------------------------------------------------------------------------
    def _take(self, target: str, wait: bool) -> bool:
        with self._busy_lock:
            while target in self._busy:
                if not wait:
                    return False
                self._busy_lock.wait()
            self._busy.add(target)
            return True

    def _give(self, target: str) -> None:
        with self._busy_lock:
            self._busy.discard(target)
            self._busy_lock.notify_all()

    def _send_chain(self, chain: list[OutboxEntry], now: float) -> str:
        """Make one target's writes in order, stopping at the first that must wait; what that said of the API server
        (``FINE``, ``FAILED``, ``UNANSWERED``)."""
        for entry in chain:
            if entry.next_at == PARKED or _left(entry.next_at, now):
                return FINE
            try:
                self.senders[entry.op](entry.body)
            except NotYet:  # not sent: it and the writes behind it wait a moment, as they are
                self.store.outbox_retry(entry.seq, entry.attempts, self.clock() + NOT_YET_S, entry.error)
                return FINE
            except Exception as exc:  # every failure is judged: none may stop the outbox
                verdict = judge(entry.op, exc)
                if unanswered(exc):
                    self.unanswered()  # no answer at all: the node's calls do not wait for one either
                if not verdict.done:
                    attempts = entry.attempts + 1
                    self.store.outbox_retry(entry.seq, attempts, self.clock() + backoff(attempts), verdict.error)
                    return (UNANSWERED if unanswered(exc) else FAILED) if verdict.api_away else FINE
                if verdict.error:
                    log.warning("outbox: %s %s dropped, %s", entry.op, entry.target, verdict.error)
                    with self._sent_lock:
                        self.refused[(entry.op, entry.target.split("/", 1)[0])] += 1
            self.store.outbox_done(entry.seq)
            with self._sent_lock:
                self.sent += 1
        return FINE

    def _run_chain(self, chain: list[OutboxEntry], now: float) -> str:
        target = chain[0].target
        if not self._take(target, wait=False):
            return FINE  # being written by flush_target right now
        try:
            # read again once the target is ours: a flush_target may have made (and a claim followed with new
            # writes) what the pass's head read showed, and a write made twice could undo a later one
            return self._send_chain(self.store.outbox_of(target), now)
        finally:
            self._give(target)

    def flush(self) -> int:
        """One pass over the oldest entries; how many are left. While the API server does not answer, passes back
        off as a whole instead of failing every entry in turn."""
        if _left(self._away_until, self.monotonic()):
            return self.depth()
        now = self.clock()
        due = float("inf") if self._back else now  # back after an outage: no write waits out its backoff
        self._back = False
        # the targets whose oldest write may be made now (the rest wait behind it, in backoff or parked): however many
        # wait, the next ones are found, and none is left behind them; the longest due first (since it was owed, or
        # since its backoff ended; a stamp ahead of the clock stepped back counts as now), so that neither a stream of
        # new writes nor writes retried over and over crowd out the rest
        ready = sorted((e for e in self.store.outbox_firsts() if e.next_at != PARKED and not _left(e.next_at, due)),
                       key=lambda e: (min(now, max(e.next_at, e.created_at)), e.seq))[:HEAD]
        sent = self.sent
        if ready:
            todo = [[e] for e in ready]  # (each chain is read whole once its target is the pass's, ``_run_chain``)
            if len(todo) == 1:  # the usual case on a quiet node: no hand-over to the pool
                results = [self._run_chain(todo[0], due)]
            else:
                results = list(self._pool.map(lambda c: self._run_chain(c, due), todo))
            if self.sent > sent or all(r == FINE for r in results):  # answered
                if self._outage and self.sent > sent:
                    self.answered()  # back after an outage: what waits out its backoff goes now
                self._away_attempts = 0
            elif _an_outage(results):  # (else one object's write failed alone: it keeps its own backoff, no more)
                self._outage = True
                self._away_attempts += 1
                self._away_until = self.monotonic() + backoff(self._away_attempts)
                log.info("outbox: the API server is not answering; %d writes wait (next try in %.1f s)",
                         self.depth(), backoff(self._away_attempts))
        return self.depth()

    @contextmanager
    def writing(self, target: str, wait: bool = True) -> Iterator[bool]:
        """``target`` is the caller's while it writes it directly: a pass already sending an older owed write of it
        finishes first (so the caller's lands last), and no pass starts one meanwhile. ``wait=False``: not waited
        for (a CNI call's write: a pass may be waiting out a hung API server's deadline), False when it is busy."""
        if not self._take(target, wait=wait):
            yield False
            return
        try:
            yield True
        finally:
            self._give(target)
            self._wake.set()  # the loop waited without this target (``_next_wait``): it looks again

    def flush_target(self, target: str) -> bool:
        """Make the pending writes of one object now (before a write that must come after them); True when none is
        left."""
        with self.writing(target):
            self._send_chain(self.store.outbox_of(target), float("inf"))
            return all(e.next_at == PARKED for e in self.store.outbox_of(target))

    def _next_wait(self) -> float:
        """Until the soonest a target's oldest write may be made (a write behind it waits for it, whatever its own)."""
        if not self.depth():  # the usual case: everything made (a count, not a read of the entries)
            return 5.0
        with self._busy_lock:  # a target written directly right now: woken when it is given back (``writing``)
            busy = set(self._busy)
        now = self.clock()
        waits = [_left(e.next_at, now) for e in self.store.outbox_firsts() if e.next_at != PARKED and e.target not in busy]
        if not waits:
            return 5.0
        return min(5.0, max(_left(self._away_until, self.monotonic()), min(waits)))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before the pass: an add() during it wakes the next one at once
            try:
                self.flush()
                if self._wake.wait(self._next_wait()) and self.settle_s:
                    self._stop.wait(self.settle_s)  # let the CNI call that owed it finish before its writes compete
                    if self.lull is not None:  # and the calls right behind it
                        self.lull(self._stop)
            except Exception:  # the store or a bug: logged, and the loop goes on
                if self._stop.is_set():
                    return  # stopping cut the pass short: what it did not make is made after the restart
                log.exception("outbox pass")
                self._stop.wait(1.0)

    def start(self) -> None:
        threading.Thread(target=self._loop, name="outbox", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

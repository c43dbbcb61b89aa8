"""The node daemon's informer caches on disk, so that a daemon restarted while the API server is away still serves ADD.

A node holds free addresses in its blocks, and leases them with no API request; but a daemon that starts reads the
cluster's objects (Networks, pools, its blocks, its pods) from informers, and with the API server away it had none:
every ADD answered code 11 until the API came back. The daemon writes its caches here every ``EVERY_S`` (and when it
stops), and one that starts seeds its informers from a snapshot no older than ``TRUST_S``; the first list replaces
them whole.

What must not be stale is whose a block is: the controller reclaims a node's blocks once the node has not renewed
them for ``GONE_GRACE_S`` (its Node object deleted) or ``--block-ttl``. So this node's blocks are seeded only if
renewed within ``TRUST_S``, below both: an older one is left out, and its addresses are leased once the API is
back. Other nodes' blocks and every lease object are kept whatever their age: they only keep addresses from being
picked. And nothing judges by absence from a seeded cache: the reconciler waits for a real list (``synced``).

``encode``/``decode`` are pure; ``Keeper`` does the file and the threads.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ipamd.kube.blocks import KIND as BLOCK_KIND
from ipamd.kube.blocks import parse_block
from ipamd.kube.reclaim import GONE_GRACE_S
from ipamd.model.timefmt import parse_rfc3339

log = logging.getLogger(__name__)

EVERY_S = 30.0
SEED_AFTER_S = 2.0  # a daemon whose informers have not listed by then (the API server away) seeds them
#: A snapshot, and a block of this node in it, renewed longer ago than this is not used (below the controller's
#: quickest reclaim, ``GONE_GRACE_S``: a daemon restarts in seconds).
TRUST_S = GONE_GRACE_S - 60.0
VERSION = 1
FILE = "informer-cache.json"

Caches = dict[str, list[dict[str, Any]]]


def path_for(db: str) -> str:
    """Beside the node's store (a hostPath in the DaemonSet: it outlives the daemon's container)."""
    return os.path.join(os.path.dirname(os.path.abspath(db)), FILE)


def encode(caches: Mapping[str, list[dict[str, Any]]], node: str, now: float) -> bytes:
    return json.dumps({"version": VERSION, "node": node, "at": now, "caches": caches},
                      separators=(",", ":")).encode()


def decode(data: bytes, node: str, now: float) -> Caches | None:
    """The caches to seed from, or None when the snapshot is not this node's, too old or unreadable; this node's
    blocks renewed longer than ``TRUST_S`` ago are left out."""
    try:
        doc = json.loads(data)
        if doc.get("version") != VERSION or doc.get("node") != node:
            return None
        age = now - float(doc["at"])
        caches = {str(k): list(v) for k, v in dict(doc["caches"]).items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if not 0 <= age <= TRUST_S:
        return None
    if BLOCK_KIND in caches:
        caches[BLOCK_KIND] = [o for o in caches[BLOCK_KIND] if _trusted(o, node, now)]
    return caches


def _trusted(obj: dict[str, Any], node: str, now: float) -> bool:
    block = parse_block(obj)
    if block is None or block.node != node:
        return True  # another node's: it keeps its window from being picked, whatever its age
    renewed = (obj.get("status") or {}).get("renewTime") or (obj.get("metadata") or {}).get("creationTimestamp")
    try:
        return bool(renewed) and now - parse_rfc3339(str(renewed)) <= TRUST_S
    except ValueError:
        return False


def write(path: str, caches: Mapping[str, list[dict[str, Any]]], node: str, now: float) -> None:
    """Replace the snapshot at ``path`` whole (a file written beside it, then renamed over it)."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(encode(caches, node, now))
    os.replace(tmp, path)


def load(path: str, node: str, now: float) -> Caches | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    caches = decode(data, node, now)
    if caches is None:
        log.info("informer snapshot %s: not used (another node's, older than %.0f s, or unreadable)", path, TRUST_S)
    return caches


class Snapshotted(Protocol):
    """What the keeper needs of the object source (``KubernetesSource``)."""

    def ready(self) -> bool: ...

    def snapshot(self) -> Caches | None: ...

    def seed(self, caches: Caches) -> None: ...


class Keeper:
    """Seeds the source from the snapshot when it has not listed ``SEED_AFTER_S`` after start, writes the snapshot
    every ``every_s`` while it has, and once more on ``stop``."""

    def __init__(self, source: Snapshotted, path: str, node: str, every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.time,
                 given_back: Callable[[dict[str, Any]], bool] = lambda obj: False) -> None:
        self.source, self.path, self.node, self.every_s, self.clock = source, path, node, every_s, clock
        self.given_back = given_back  # a block of this node it no longer leases in: never written as its own
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # one write at a time: a save that read the caches before a block was given back never lands after the
        # ``refresh`` that dropped it
        self._writing = threading.Lock()
        self.seeded = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="informer-snapshot", daemon=True)
        self._thread.start()

    def seed_if_unlisted(self) -> bool:
        if self.source.ready():
            return False
        caches = load(self.path, self.node, self.clock())
        if caches is None:
            return False
        self.source.seed(caches)
        self.seeded = True
        log.warning("the Kubernetes API has not answered since start: serving from the informer snapshot %s "
                    "(%d objects) until it does", self.path, sum(len(v) for v in caches.values()))
        return True

    def save(self) -> None:
        with self._writing:
            self._save()

    def _save(self) -> None:
        caches = self.source.snapshot()
        if caches is None:
            return
        if BLOCK_KIND in caches:
            caches[BLOCK_KIND] = [o for o in caches[BLOCK_KIND] if not self.given_back(o)]
        try:
            write(self.path, caches, self.node, self.clock())
        except OSError as exc:
            log.warning("writing the informer snapshot %s: %s", self.path, exc)

    def refresh(self) -> None:
        """A block of this node is about to be deleted (``BlockRegistry.on_return``): the snapshot that may show it
        goes, and one without it is written (when the informers have listed)."""
        with self._writing:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self._save()

    def _run(self) -> None:
        if self._stop.wait(SEED_AFTER_S):
            return
        self.seed_if_unlisted()
        while not self._stop.is_set():
            self.save()
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.save()

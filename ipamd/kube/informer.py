"""A minimal informer: list, then watch from the list's resourceVersion, with a local cache.

A watch that ends (server timeout) resumes from the last resourceVersion seen; ``410 Gone`` (the
version is too old) relists; any other failure backs off exponentially (0.5 s to 30 s) and
relists. Handlers are told after every change, and ``synced`` says the first list is in.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

ListFn = Callable[..., Any]
#: An index of an informer's cache: the keys an object is found under (client-go's IndexFunc).
IndexFn = Callable[[dict[str, Any]], Iterable[Hashable]]
ABSENT_RECHECK_S = 30.0
WATCH_TIMEOUT_S = 30  # the server ends a watch after this; the client's read deadline is a little longer
WATCH_REQUEST_TIMEOUT = (3.0, WATCH_TIMEOUT_S + 15.0)
LIST_REQUEST_TIMEOUT = (3.0, 60.0)  # a first list of a large cluster may take a while


def plain_lister(fn: Callable[..., Any], *args: Any) -> ListFn:
    """``fn`` as a list function without a docstring: the kubernetes watch then hands back plain dicts
    instead of building a model object for every event."""
    def list_objects(**kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return list_objects


class Informer:
    def __init__(self, name: str, list_fn: ListFn, kind: str, api_version: str,
                 on_change: Callable[[], None], indexers: Mapping[str, IndexFn] | None = None,
                 **list_kwargs: Any) -> None:
        self.name = name
        self._list_fn = list_fn
        self._kwargs = list_kwargs
        self.kind = kind
        self.api_version = api_version
        self._on_change = on_change
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}
        self._indexers = dict(indexers or {})
        # index name -> index key -> the cache keys of the objects found under it, kept in step with the cache
        self._indexes: dict[str, dict[Hashable, set[tuple[str, str]]]] = {n: {} for n in self._indexers}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        # what the cache holds may serve a CNI call: listed, or seeded from the daemon's snapshot (``seed``) while
        # the API server cannot be listed; what judges by absence (the reconciler) waits for ``synced``
        self.usable = threading.Event()
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self.relists = 0
        self.served = False  # listed once: a later 404 (an API server restarting) keeps the cache

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._cache.values())

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._cache.get((namespace, name))

    def by_index(self, index: str, key: Hashable) -> list[dict[str, Any]]:
        """The cached objects found under ``key`` of ``index``: O(their number), not O(the cache)."""
        with self._lock:
            return [self._cache[k] for k in self._indexes[index].get(key, ())]

    def indexed(self, index: str, key: Hashable) -> bool:
        with self._lock:
            return bool(self._indexes[index].get(key))

    def _unindex(self, key: tuple[str, str], obj: dict[str, Any] | None) -> None:
        if obj is None:
            return
        for name, fn in self._indexers.items():
            for value in fn(obj):
                keys = self._indexes[name].get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._indexes[name][value]

    def _index(self, key: tuple[str, str], obj: dict[str, Any]) -> None:
        for name, fn in self._indexers.items():
            for value in fn(obj):
                self._indexes[name].setdefault(value, set()).add(key)

    def _key(self, obj: dict[str, Any]) -> tuple[str, str]:
        md = obj.get("metadata") or {}
        return str(md.get("namespace") or ""), str(md.get("name") or "")

    def _normalise(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj.setdefault("kind", self.kind)
        obj.setdefault("apiVersion", self.api_version)
        return obj

    def seed(self, items: Iterable[dict[str, Any]]) -> None:
        """Fill the cache from a snapshot (``ipamd.kube.snapshot``) before anything was listed: the first list
        replaces it whole."""
        with self._lock:
            if self.synced.is_set():
                return
            self._cache = {self._key(o): self._normalise(o) for o in items}
            self._indexes = {n: {} for n in self._indexers}
            for key, obj in self._cache.items():
                self._index(key, obj)
        self.usable.set()
        self._on_change()

    def _list(self) -> str:
        resp = self._list_fn(_preload_content=False, _request_timeout=LIST_REQUEST_TIMEOUT, **self._kwargs)
        data = json.loads(resp.data)
        items = {self._key(o): self._normalise(o) for o in data.get("items") or []}
        with self._lock:  # synced with the swap: a seed (which checks it under the lock) never lands over a list
            self._cache = items
            self._indexes = {n: {} for n in self._indexers}
            for key, obj in items.items():
                self._index(key, obj)
            self.synced.set()
            self.usable.set()
        self.relists += 1
        self.served = True
        self._on_change()
        return str((data.get("metadata") or {}).get("resourceVersion") or "")

    def _absent(self) -> None:
        """A kind the cluster does not have is an empty kind, not an unsynced one (a cluster without
        NetworkAttachmentDefinitions still gets its Deckhouse networks); it is looked for again later."""
        if not self.synced.is_set():
            log.info("%s: the API does not serve it (no CRD?); it counts as empty until it does", self.name)
        with self._lock:
            self._cache = {}
            self._indexes = {n: {} for n in self._indexers}
            self.synced.set()
            self.usable.set()
        self._on_change()

    def run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                rv = self._list()
                backoff = 0.5
                while not self._stop.is_set():
                    rv = self._watch_once(rv)
                    if not rv:
                        break  # 410 Gone: relist
            except ApiException as exc:
                if exc.status == 404 and not self.served:  # the API does not serve the kind (no CRD): none of it
                    self._absent()
                    self._stop.wait(ABSENT_RECHECK_S)
                elif exc.status != 410:  # a 404 for a kind served before: an API server still starting, not absence
                    log.warning("%s: %s; retrying in %.1fs", self.name, exc.reason, backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
            except Exception as exc:  # connection refused, API server restarting, ...
                if self._stop.is_set():
                    return
                log.warning("%s: %s; retrying in %.1fs", self.name, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _watch_once(self, rv: str) -> str:
        """Watch from ``rv`` until the server ends the stream; the last version seen, or "" on 410."""
        self._watch = watch.Watch()  # type: ignore[no-untyped-call]
        events = self._watch.stream(  # type: ignore[no-untyped-call]
            self._list_fn, resource_version=rv, timeout_seconds=WATCH_TIMEOUT_S, allow_watch_bookmarks=True,
            _request_timeout=WATCH_REQUEST_TIMEOUT, **self._kwargs)
        for event in events:
            if self._stop.is_set():
                break
            kind, obj = event.get("type"), event.get("raw_object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    return ""
                raise ApiException(status=obj.get("code"), reason=str(obj.get("message")))
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
            if kind == "BOOKMARK":
                continue
            self.apply(str(kind), obj)
        return rv

    def apply(self, event: str, obj: dict[str, Any]) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) into the cache and its indexes."""
        key = self._key(obj)
        with self._lock:
            self._unindex(key, self._cache.pop(key, None))
            if event != "DELETED":
                self._cache[key] = self._normalise(obj)
                self._index(key, obj)
        self._on_change()

    def start(self) -> None:
        threading.Thread(target=self.run, name=f"informer-{self.name}", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()  # type: ignore[no-untyped-call]

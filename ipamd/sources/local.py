"""The local object source: a directory of manifests (the YAML a user would ``kubectl apply``).

Re-read when it changes; an invalid manifest is reported with its file and field while every valid
one keeps being served. One the webhook would refuse to store (``refused_when_written``: an ignored field, a
pool entry with no address) is served as a stored one is, and reported too; a pool entry no pod could use
(``unserved_entries``: an IPv6 link-local network) is reported as served to no pod. Implements ``ObjectSource``
(``ipamd.sources.base``).
"""

from __future__ import annotations

import builtins
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from ipamd.model.objects import (
    AddressPool,
    ApiObject,
    Kind,
    ManifestInvalid,
    Meta,
    Network,
    NetworkClass,
    Pod,
    parse_object,
    refused_when_written,
    unserved_entries,
)
from ipamd.sources.base import Problem

log = logging.getLogger(__name__)
T = TypeVar("T")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_documents(path: str) -> Iterator[Any]:
    """Every document of a YAML/JSON file, with ``kind: List`` unpacked."""
    with open(path, encoding="utf-8") as fh:
        for doc in yaml.load_all(fh, Loader=_Loader):
            if doc is None:
                continue
            if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
                yield from doc["items"]
            else:
                yield doc


def manifest_files(directory: str) -> list[str]:
    out: list[str] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(os.path.join(root, f) for f in sorted(files)
                   if f.endswith(MANIFEST_SUFFIXES) and not f.startswith("."))
    return out


Objects = dict[tuple[str, str, str], ApiObject]


@dataclass(frozen=True, slots=True)
class Loaded:
    """A directory as read: what is served, what is not (``problems``), what is served though the webhook would
    refuse to store it (``warnings``), and the pool entries of objects served that no pod is given an address from
    (``unserved``: ADD of their networks is refused)."""

    objects: Objects
    problems: list[Problem]
    warnings: list[Problem]
    unserved: list[Problem] = field(default_factory=list)


def load_directory(
    directory: str, uid_for: Callable[[str, str], str] | None = None
) -> tuple[Objects, list[Problem]]:
    """Parse every manifest below ``directory``; a bad one becomes a Problem, never an exception."""
    loaded = read_directory(directory, uid_for)
    return loaded.objects, loaded.problems


def _warnings(read: list[tuple[str, Any, ApiObject]], objects: Objects) -> list[Problem]:
    """The objects served that a write would be refused for: a file in the directory is what a cluster has stored,
    so refusing it would stop serving it (and what it holds) at an upgrade."""
    def class_of(obj: ApiObject) -> NetworkClass | None:
        found = objects.get(("NetworkClass", "", obj.network_class)) if isinstance(obj, Network) else None
        return found if isinstance(found, NetworkClass) else None

    return [Problem(where, exc.field, f"{where}: {exc}") for where, doc, obj in read
            for exc in refused_when_written(doc, obj, class_of(obj)) if exc.field not in _unserved_fields(obj)]


def _unserved_fields(obj: ApiObject) -> set[str]:
    return {exc.field for exc in unserved_entries(obj)} if isinstance(obj, AddressPool) else set()


def _unserved(read: list[tuple[str, Any, ApiObject]]) -> list[Problem]:
    """The pool entries served to no pod (``unserved_entries``), each naming its file and field."""
    return [Problem(where, exc.field, f"{where}: {exc}") for where, _, obj in read if isinstance(obj, AddressPool)
            for exc in unserved_entries(obj)]


def read_directory(directory: str, uid_for: Callable[[str, str], str] | None = None) -> Loaded:
    """``load_directory``, with the warnings."""
    objects: Objects = {}
    problems: list[Problem] = []
    read: list[tuple[str, Any, ApiObject]] = []
    for path in manifest_files(directory):
        try:
            docs = list(read_documents(path))
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
            problems.append(Problem(path, "", f"cannot be read as YAML: {exc}".replace("\n", " ")))
            continue
        for i, doc in enumerate(docs):
            where = path if len(docs) == 1 else f"{path}#{i}"
            try:
                obj = parse_object(doc, where)
            except ManifestInvalid as exc:
                problems.append(Problem(where, exc.field, str(exc)))
                continue
            meta = obj.meta
            if isinstance(obj, Pod) and not meta.uid and uid_for is not None:
                obj = Pod(Meta(meta.kind, meta.name, meta.namespace, uid_for(meta.namespace, meta.name), where),
                          obj.annotations, obj.node_name)
            key = (meta.kind, meta.namespace, meta.name)
            if key in objects:
                problems.append(Problem(where, "metadata.name",
                                        f"{meta.display} is also defined in {objects[key].meta.source}"))
                continue
            objects[key] = obj
            read.append((where, doc, obj))
    return Loaded(objects, problems, _warnings(read, objects), _unserved(read))


class LocalSource:
    """A directory of manifests, re-read when a file in it changes (polled: no inotify in the stdlib)."""

    def __init__(self, directory: str, uid_for: Callable[[str, str], str] | None = None,
                 poll_interval: float = 1.0) -> None:
        self.directory = directory
        self._uid_for = uid_for or (lambda ns, name: str(uuid.uuid4()))
        self._poll = poll_interval
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str, str], ApiObject] = {}
        self._by_uid: dict[str, Pod] = {}
        self._problems: list[Problem] = []
        self._signature: tuple[Any, ...] = ()
        self._subscribers: list[Callable[[], None]] = []
        self._synced = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _dir_signature(self) -> tuple[Any, ...]:
        sig = []
        for path in manifest_files(self.directory) if os.path.isdir(self.directory) else []:
            try:
                st = os.stat(path)
            except OSError:
                continue
            sig.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(sig)

    def sync(self) -> list[Problem]:
        """Re-read the directory now; tell subscribers when anything changed."""
        os.makedirs(self.directory, exist_ok=True)
        signature = self._dir_signature()
        loaded = read_directory(self.directory, self._uid_for)
        objects, problems = loaded.objects, loaded.problems
        for p in problems:
            log.warning("manifest not served: %s", p.message)
        for p in loaded.warnings:
            log.warning("manifest served as stored, but a write of it would be refused: %s", p.message)
        for p in loaded.unserved:
            log.warning("pool entry served to no pod (ADD of its networks is refused): %s", p.message)
        with self._lock:
            changed = objects != self._objects or not self._synced
            self._objects = objects
            self._by_uid = {o.meta.uid: o for o in objects.values() if isinstance(o, Pod)}
            self._problems = problems
            self._signature = signature
            self._synced = True
        if changed:
            for callback in list(self._subscribers):
                try:
                    callback()
                except Exception:
                    log.exception("object-change handler failed")
        return problems

    def start(self) -> None:
        self.sync()
        self._thread = threading.Thread(target=self._watch, name="local-source", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                if self._dir_signature() != self._signature:
                    self.sync()
            except Exception:
                log.exception("re-reading %s failed", self.directory)

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._subscribers.append(callback)

    def ready(self) -> bool:
        return self._synced

    def unlisted(self, timeout_s: float) -> builtins.list[str]:
        return [] if self._synced else [f"the objects directory {self.directory}"]

    def get(self, kind: Kind[T], namespace: str, name: str) -> T | None:
        with self._lock:
            obj = self._objects.get((kind.name, namespace, name))
        return obj if isinstance(obj, kind.type) else None

    def list(self, kind: Kind[T]) -> builtins.list[T]:
        with self._lock:
            return [o for (k, _, _), o in self._objects.items() if k == kind.name and isinstance(o, kind.type)]

    def pod_by_uid(self, uid: str) -> Pod | None:
        with self._lock:
            return self._by_uid.get(uid)

    def wait_for_pod(self, namespace: str, name: str, uid: str = "") -> Pod | None:
        return None  # the directory was read: a pod not in it (or not at that UID) is not coming

    def problems(self) -> builtins.list[Problem]:
        with self._lock:
            return list(self._problems)

"""Writing the local object source: ``plexusctl apply`` and ``delete`` on a directory of manifests.

Each applied object gets its own file, ``<kind>.<namespace>.<name>.yaml``, written atomically
(temporary file + rename) so the daemon never reads half a manifest. A Pod keeps its
``metadata.uid`` across re-applies, and gets a new one when it is created without one.

``apply`` refuses what the webhook refuses in a cluster though the daemon would serve it (``brought_by_write``: an
ignored field, a new pool entry with no address), held against the object's file as an UPDATE is against the stored
object, and warns of what the webhook warns of (``warned_when_written``: a pool entry drained by an edit).
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from ipamd.model.objects import (
    KINDS,
    POD,
    ApiObject,
    ManifestInvalid,
    NetworkClass,
    brought_by_write,
    parse_object,
    warned_when_written,
)
from ipamd.sources.local import load_directory, manifest_files, read_documents


@dataclass(frozen=True, slots=True)
class Applied:
    kind: str
    namespace: str
    name: str
    action: str  # created | configured | unchanged | deleted | not found

    def __str__(self) -> str:
        return f"{self.kind.lower()}/{self.name} {self.action}"


def read_inputs(paths: Iterable[str]) -> list[tuple[str, Any]]:
    """Documents from files, directories (their manifests, sorted) and ``-`` (standard input)."""
    out: list[tuple[str, Any]] = []
    for path in paths:
        if path == "-":
            out.extend(("<stdin>", d) for d in yaml.safe_load_all(sys.stdin) if d is not None)
        elif os.path.isdir(path):
            for f in manifest_files(path):
                out.extend((f, d) for d in read_documents(f))
        else:
            out.extend((path, d) for d in read_documents(path))
    return out


def object_file(directory: str, kind: str, namespace: str, name: str) -> str:
    return os.path.join(directory, f"{kind.lower()}.{namespace or '_'}.{name}.yaml")


def _write_atomic(path: str, doc: dict[str, Any]) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yaml.safe_dump(doc, fh, sort_keys=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _identity(doc: dict[str, Any]) -> tuple[str, str, str]:
    md = doc.get("metadata") or {}
    kind = str(doc.get("kind"))
    namespaced = kind in KINDS and KINDS[kind].namespaced
    ns = (md.get("namespace") or "default") if namespaced else ""
    return kind, ns, str(md.get("name"))


def _own_file(directory: str, existing: dict[tuple[str, str, str], ApiObject], identity: tuple[str, str, str],
              source: str, instead: str) -> str:
    """The object's own file; ``ManifestInvalid`` when another file (one a user wrote) defines it."""
    kind, ns, name = identity
    path = object_file(directory, kind, ns, name)
    current = existing.get(identity)
    if current is not None and os.path.abspath(current.meta.source.split("#")[0]) != os.path.abspath(path):
        raise ManifestInvalid(f"{kind} {name}", "metadata.name", f"is defined in {current.meta.source}; {instead}", source)
    return path


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _refusal(found: tuple[ManifestInvalid, ...], source: str) -> ManifestInvalid:
    """``brought_by_write``'s findings as one refusal naming the file, the object and each field."""
    first, *more = found
    return ManifestInvalid(first.obj, first.field, "; ".join([first.problem, *(f"{p.field}: {p.problem}"
                                                                               for p in more)]), source)


def apply(directory: str, docs: list[tuple[str, Any]],
          warn: Callable[[str], None] = _warn) -> tuple[list[Applied], list[ManifestInvalid]]:
    """Validate every document, then write the valid ones; invalid ones are returned, not written. ``warn``: told of
    each object written with a warning (standard error, as kubectl prints the webhook's)."""
    os.makedirs(directory, exist_ok=True)
    existing, _ = load_directory(directory)
    classes = {o.meta.name: o for o in existing.values() if isinstance(o, NetworkClass)}  # and those applied here

    def write(source: str, doc: dict[str, Any], identity: tuple[str, str, str]) -> Applied:
        obj = parse_object(doc, source)
        kind, ns, name = identity
        path = _own_file(directory, existing, identity, source, "edit that file instead")
        md = dict(doc.get("metadata") or {})
        if ns:
            md["namespace"] = ns
        current = existing.get(identity)
        if kind == POD.name and not md.get("uid"):
            md["uid"] = current.meta.uid if current is not None and current.meta.uid else str(uuid.uuid4())
        doc = {**doc, "metadata": md}
        action, stored = "created", None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                stored = yaml.safe_load(fh)
            action = "unchanged" if stored == doc else "configured"
        old = stored if isinstance(stored, dict) else None  # the object as stored: what an edit is held against
        found = brought_by_write(doc, obj, old, classes.get)
        if found:
            raise _refusal(found, source)
        if action != "unchanged":
            for w in warned_when_written(obj, old=old):
                warn(f"{source}: {w.msg}")
            _write_atomic(path, doc)
        if isinstance(obj, NetworkClass):
            classes[name] = obj
        return Applied(kind, ns, name, action)

    return _each(docs, write)


def delete(directory: str, docs: list[tuple[str, Any]]) -> tuple[list[Applied], list[ManifestInvalid]]:
    existing, _ = load_directory(directory) if os.path.isdir(directory) else ({}, [])

    def remove(source: str, doc: dict[str, Any], identity: tuple[str, str, str]) -> Applied:
        path = _own_file(directory, existing, identity, source, "remove it from that file")
        if not os.path.exists(path):
            return Applied(*identity, "not found")
        os.unlink(path)
        return Applied(*identity, "deleted")

    return _each(docs, remove)


def _each(docs: list[tuple[str, Any]], act: Callable[[str, dict[str, Any], tuple[str, str, str]], Applied],
          ) -> tuple[list[Applied], list[ManifestInvalid]]:
    """``act`` on every document; what it refuses is collected, and the others still happen."""
    done, bad = [], []
    for source, doc in docs:
        try:
            if not isinstance(doc, dict):
                raise ManifestInvalid("manifest", "", "must be a mapping", source)
            done.append(act(source, doc, _identity(doc)))
        except ManifestInvalid as exc:
            bad.append(exc)
    return done, bad

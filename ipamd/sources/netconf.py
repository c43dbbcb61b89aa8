"""CNI configurations on the node's disk, found by the name inside them (NPWG §3 steps 2 and 3), or read
from a path (a ``clusterNetwork`` given as a file)."""

from __future__ import annotations

import json
import os
from typing import Any

from cni.errors import InvalidConfig
from ipamd.model.cniconf import MAX_CONFIG_BYTES, ConfigInvalid, as_conflist

CONFLIST_SUFFIXES = (".conflist",)
CONF_SUFFIXES = (".conf", ".json")


def _read(path: str) -> Any:
    with open(path, "rb") as fh:
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"larger than {MAX_CONFIG_BYTES} bytes")
    return json.loads(data)


def find_on_disk(directory: str, name: str) -> dict[str, Any] | None:
    """The ``.conflist`` of ``directory`` whose ``name`` is ``name``, else such a ``.conf``, as a conflist;
    None when there is none. Files that cannot be read or are not configurations are passed over."""
    try:
        files = sorted(os.listdir(directory))
    except OSError:
        return None
    for suffixes in (CONFLIST_SUFFIXES, CONF_SUFFIXES):
        for f in files:
            if not f.endswith(suffixes):
                continue
            try:
                doc = _read(os.path.join(directory, f))
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and doc.get("name") == name:
                try:
                    return as_conflist(doc)
                except ConfigInvalid:
                    continue
    return None


def load_file(path: str, where: str) -> dict[str, Any]:
    """The configuration in the file at ``path``, as a conflist; ``InvalidConfig`` naming ``where`` when it is
    missing or is not one."""
    try:
        return as_conflist(_read(path))
    except (OSError, ValueError) as exc:
        raise InvalidConfig(f"{where}: {path} cannot be read as a CNI configuration", str(exc)) from None

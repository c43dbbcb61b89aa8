"""The ``network.deckhouse.io/used-by`` annotation on a user's IPAddress: the one pod of the cluster that uses it
(written and read by ``ipamd.kube.users``; read by ``plexusctl ipam release`` too). Pure: no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ipamd.model.objects import USED_BY_ANNOTATION, Pod


@dataclass(frozen=True, slots=True)
class User:
    """The pod an IPAddress is used by, as written on it."""

    uid: str
    pod: str  # namespace/name
    node: str

    def text(self) -> str:
        return json.dumps({"uid": self.uid, "pod": self.pod, "node": self.node}, sort_keys=True)


def user_of(pod: Pod, node: str) -> User:
    return User(pod.meta.uid, f"{pod.meta.namespace}/{pod.meta.name}", node)


def parse_user_text(text: object) -> User | None:
    """The pod written on an IPAddress; None when there is none, or the annotation does not parse (edited by hand:
    then nobody is known to use it here, and a node whose pod does writes it again, ``repair``)."""
    try:
        doc = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) and doc[k] for k in ("uid", "pod")):
        return None
    namespace, _, name = doc["pod"].partition("/")
    if not namespace or not name:
        return None
    return User(doc["uid"], doc["pod"], str(doc.get("node") or ""))


def parse_user(obj: dict[str, Any]) -> User | None:
    return parse_user_text(((obj.get("metadata") or {}).get("annotations") or {}).get(USED_BY_ANNOTATION))

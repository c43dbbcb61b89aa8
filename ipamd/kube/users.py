"""One pod at a time per user IPAddress, across the cluster.

A user's IPAddress (a Static one, or an Auto one made by hand) may be named in ``ipAddressNames`` by pods on several
nodes, and each node's store knows only its own pods: without more, two pods on two nodes would both get its address.
The pod that uses it is written on the IPAddress itself (the ``USED_BY`` annotation), at the version read, before the
address is used: two nodes cannot both write it, and a node takes it over only once the pod written there is gone
(deleted, or finished: the kubelet has torn its sandbox down by then). It is read from the API server on every such
ADD, never from a cache, which may not show another node's write yet. An Auto IPAddress a node makes for its pod is
created with its pod written there already, so naming it from another pod waits for that pod too.

A pod whose ADD failed after the write keeps the IPAddress until it is gone or its ADD succeeds (the kubelet retries
it): first come, first served. Without the API the owner cannot be made sure of, and the ADD answers code 11.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cni.errors import AddressConflict, ObjectNotFound, TryAgainLater
from ipamd.kube.errors import api_unavailable_is_11, status_of
from ipamd.model.objects import GROUP, Pod

USED_BY = f"{GROUP}/used-by"
TRIES = 3  # writes lost to another writer of the object (its status, another node) before answering 11
FINISHED = ("Succeeded", "Failed")


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


def parse_user(obj: dict[str, Any]) -> User | None:
    """The pod written on an IPAddress; None when there is none (or the annotation was mangled by hand: then nobody
    is known to use it, as before any pod did)."""
    text = ((obj.get("metadata") or {}).get("annotations") or {}).get(USED_BY)
    try:
        doc = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) and doc[k] for k in ("uid", "pod")):
        return None
    return User(doc["uid"], doc["pod"], str(doc.get("node") or ""))


def still_running(user: User, found: dict[str, Any] | None) -> bool:
    """Whether the pod written on an IPAddress may still have its sandbox: it exists (the same pod, not a new one of
    the same name) and has not finished."""
    if found is None:
        return False
    if (found.get("metadata") or {}).get("uid") != user.uid:
        return False
    return (found.get("status") or {}).get("phase") not in FINISHED


class IPAddressUsers:
    """Writes which pod uses a user's IPAddress (``use``), through the API server, outside the store's lock."""

    def __init__(self, objects: Any, read_pod: Callable[[str, str], dict[str, Any] | None], node_name: str) -> None:
        self.objects = objects
        self.read_pod = read_pod
        self.node_name = node_name

    def use(self, kind: str, namespace: str, name: str, pod: Pod, field: str) -> None:
        """Make ``pod`` the one that uses the IPAddress; AddressConflict while another pod that still runs does."""
        me = user_of(pod, self.node_name)
        what = f"{kind} {namespace + '/' if namespace else ''}{name}"
        with api_unavailable_is_11():
            for _ in range(TRIES):
                try:
                    current = self.objects.get(kind, name, namespace)
                except Exception as exc:
                    if status_of(exc) == 404:
                        raise ObjectNotFound(f"{what} does not exist", field) from None
                    raise
                user = parse_user(current)
                if user is not None and user.uid == me.uid:
                    return  # a retried ADD, or another interface of the pod
                if user is not None:
                    ns, _, pod_name = user.pod.partition("/")
                    if still_running(user, self.read_pod(ns, pod_name)):
                        where = f" on node {user.node}" if user.node else ""
                        raise AddressConflict(f"{what} is in use by pod {user.pod}{where}", field)
                md = current.get("metadata") or {}
                try:
                    self.objects.patch(kind, name, {"metadata": {"annotations": {USED_BY: me.text()},
                                                                 "resourceVersion": md.get("resourceVersion")}},
                                       namespace)
                    return
                except Exception as exc:
                    if status_of(exc) != 409:
                        raise
        raise TryAgainLater(f"{what}: the pod that uses it could not be written", "it kept changing under the write")

"""One CNI call as the plugin forwarded it, and the per-attachment lock every verb holds."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cni.errors import InvalidConfig, InvalidEnvironment
from cni.version import CURRENT_VERSION

VALID_ATTACHMENTS = "cni.dev/valid-attachments"  # GC's list of the attachments that are still valid


@dataclass(frozen=True, slots=True)
class CniCall:
    """One CNI invocation as the shim forwarded it."""

    verb: str
    container_id: str
    netns: str
    ifname: str
    args: dict[str, str]
    config: dict[str, Any]
    raw_args: str = ""  # CNI_ARGS as given, for the plugins Plexus delegates to
    cni_path: str = ""  # CNI_PATH: where the runtime keeps its plugins

    @classmethod
    def from_wire(cls, body: Any) -> CniCall:
        if not isinstance(body, dict) or not isinstance(body.get("env"), dict) or not isinstance(body.get("config"), dict):
            raise InvalidConfig("request must be {env: {...}, config: {...}}", "body")
        env = body["env"]
        args: dict[str, str] = {}
        for part in str(env.get("CNI_ARGS", "")).split(";"):
            k, sep, v = part.partition("=")
            if sep and k:
                args[k.strip()] = v.strip()
        return cls(str(env.get("CNI_COMMAND", "")), str(env.get("CNI_CONTAINERID", "")),
                   str(env.get("CNI_NETNS", "")), str(env.get("CNI_IFNAME", "")), args, body["config"],
                   str(env.get("CNI_ARGS", "")), str(env.get("CNI_PATH", "")))

    @property
    def version(self) -> str:
        return str(self.config.get("cniVersion", CURRENT_VERSION))

    @property
    def network_name(self) -> str:
        return str(self.config.get("name", ""))

    @property
    def key(self) -> tuple[str, str]:
        """The attachment this call is about, as the runtime keys it."""
        return self.container_id, self.ifname


Handler = Callable[["CniCall"], dict[str, Any]]


def dispatch(call: CniCall, handlers: Mapping[str, Handler]) -> dict[str, Any]:
    """Run the handler of the call's verb (ADD, DEL, CHECK, GC, STATUS); an unknown verb is code 4."""
    handler = handlers.get(call.verb)
    if handler is None:
        raise InvalidEnvironment(f"unknown CNI_COMMAND {call.verb!r}", "CNI_COMMAND")
    return handler(call)


def valid_attachments(call: CniCall) -> set[tuple[str, str]]:
    """GC's ``cni.dev/valid-attachments``: the (container ID, ifname) pairs that are still in use."""
    valid = call.config.get(VALID_ATTACHMENTS)
    if not isinstance(valid, list):
        raise InvalidConfig(f"GC needs {VALID_ATTACHMENTS} as a list", VALID_ATTACHMENTS)
    return {(str(v.get("containerID")), str(v.get("ifname"))) for v in valid if isinstance(v, dict)}


class KeyedLocks:
    """One lock per attachment: the runtime may send two DELs for one container at the same time.

    A lock lives while somebody holds or waits for it, so the table stays as small as the calls in flight.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: tuple[str, str]) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key) or (threading.Lock(), 0)
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    def busy(self) -> set[tuple[str, str]]:
        """The attachments a call holds or waits for right now."""
        with self._guard:
            return set(self._locks)

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)

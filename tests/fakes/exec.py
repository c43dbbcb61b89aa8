"""Plugin execs scripted in order, as Multus's fakeExec: each expected call names the plugin and verb and
what it answers (a result, or a CNI error to raise); a call nobody expected fails the test."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cni.errors import CniError
from ipamd.invoke.exec import PluginRun


@dataclass
class Expected:
    plugin: str
    verb: str
    result: dict[str, Any] = field(default_factory=dict)
    error: CniError | None = None


class FakeExec:
    def __init__(self, *expected: Expected) -> None:
        self.expected = list(expected)
        self.calls: list[tuple[str, str, dict[str, str], dict[str, Any]]] = []

    def run(self, plugin: str, env: Mapping[str, str], config: Mapping[str, Any], timeout: float) -> PluginRun:
        verb = env.get("CNI_COMMAND", "")
        self.calls.append((plugin, verb, dict(env), dict(config)))
        assert self.expected, f"unexpected exec of {plugin} {verb}"
        want = self.expected.pop(0)
        assert (want.plugin, want.verb) == (plugin, verb), f"expected {want.plugin} {want.verb}, got {plugin} {verb}"
        if want.error is not None:
            raise want.error
        return PluginRun(dict(want.result), "", 0.0)

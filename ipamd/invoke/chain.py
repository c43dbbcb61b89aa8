"""A network configuration list run as a runtime runs it (libcni ``AddNetworkList`` and friends).

ADD runs the plugins in order, each with the previous one's result as ``prevResult``; DEL runs them in
reverse with the final result, tries every one and reports the failures together; CHECK runs them in
order with the final result (from spec 0.4.0 on); GC and STATUS go to every plugin (from 1.1.0 on).
An ``Invocation`` is everything a chain needs, recorded before the first exec, so DEL, CHECK and GC
can run it again with the NetworkAttachmentDefinition, the file or the pod long gone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cni.errors import CniError, InvalidConfig
from cni.version import version_tuple
from ipamd.invoke.exec import PluginExec, PluginFailed
from ipamd.model.cniconf import ConfigInvalid, list_flag, plugin_config


@dataclass(frozen=True, slots=True)
class Invocation:
    """A delegate as it will be (and was) exec'd."""

    conflist: dict[str, Any]  # the exact configuration list, named
    container_id: str
    netns: str
    ifname: str  # CNI_IFNAME of the delegate: the pod interface it makes
    cni_args: str = ""  # CNI_ARGS, as the runtime passed them (K8S_POD_*)
    runtime_config: dict[str, Any] = field(default_factory=dict)  # capability values, given to who declares them
    args: dict[str, Any] = field(default_factory=dict)  # the configuration's "args" (NPWG cni-args go under "cni")
    bin_dirs: tuple[str, ...] = ()
    timeout_s: float = 30.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Invocation:
        return cls(**{**d, "bin_dirs": tuple(d.get("bin_dirs") or ())})

    @property
    def version(self) -> tuple[int, ...]:
        return version_tuple(str(self.conflist["cniVersion"]))

    def env(self, verb: str, netns: str | None = None) -> dict[str, str]:
        env = {"CNI_COMMAND": verb}
        if verb not in ("GC", "STATUS"):  # about the plugin, not an attachment
            env.update({"CNI_CONTAINERID": self.container_id, "CNI_NETNS": self.netns if netns is None else netns,
                        "CNI_IFNAME": self.ifname, "CNI_ARGS": self.cni_args})
        if self.bin_dirs:
            env["CNI_PATH"] = ":".join(self.bin_dirs)
        return env


class Chain:
    def __init__(self, plugins: PluginExec) -> None:
        self.plugins = plugins

    def _run(self, inv: Invocation, verb: str, index: int, prev: Mapping[str, Any] | None,
             netns: str | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        conf = plugin_config(inv.conflist, index, inv.runtime_config, inv.args, prev)
        conf.update(extra or {})
        plugin = str(inv.conflist["plugins"][index]["type"])
        result = self.plugins.run(plugin, inv.env(verb, netns), conf, inv.timeout_s).result
        if verb == "ADD" and not result:  # (as libcni: an ADD that describes nothing has failed)
            raise PluginFailed(f"{plugin} ADD printed no result", f"{inv.conflist.get('name', '')}: plugins[{index}]")
        return result

    def add_each(self, inv: Invocation) -> Iterator[dict[str, Any]]:
        """ADD every plugin in order, yielding each one's result (the caller keeps the last, and on a
        failure DELs the whole list with the last it got)."""
        prev: dict[str, Any] | None = None
        for i in range(len(inv.conflist["plugins"])):
            prev = self._run(inv, "ADD", i, prev)
            yield prev

    def add(self, inv: Invocation) -> dict[str, Any]:
        last: dict[str, Any] = {"cniVersion": inv.conflist["cniVersion"]}
        for result in self.add_each(inv):
            last = result
        return last

    def delete(self, inv: Invocation, prev: Mapping[str, Any] | None = None, netns: str | None = None) -> list[str]:
        """DEL every plugin in reverse, each tried whatever the others did; the failures, one line each."""
        return [f"{inv.conflist['plugins'][i]['type']}: {exc}" for i, exc in self.delete_each(inv, prev, netns)]

    def delete_each(self, inv: Invocation, prev: Mapping[str, Any] | None = None,
                    netns: str | None = None) -> list[tuple[int, CniError]]:
        """DEL every plugin in reverse, each tried whatever the others did; the failures, by plugin index."""
        failed: list[tuple[int, CniError]] = []
        prev = prev if inv.version >= (0, 4, 0) else None  # (as libcni: a DEL's prevResult came with 0.4.0)
        for i in reversed(range(len(inv.conflist["plugins"]))):
            try:
                self._run(inv, "DEL", i, prev, netns)
            except CniError as exc:
                failed.append((i, exc))
        return failed

    def check(self, inv: Invocation, prev: Mapping[str, Any] | None) -> None:
        if inv.version < (0, 4, 0) or _disabled(inv, "disableCheck"):
            return  # CHECK came with 0.4.0; a list may opt out
        for i in range(len(inv.conflist["plugins"])):
            self._run(inv, "CHECK", i, prev)

    def gc(self, inv: Invocation, valid: list[dict[str, str]]) -> None:
        """GC (1.1.0): each plugin releases what is not in ``valid`` (``cni.dev/valid-attachments``)."""
        if inv.version < (1, 1, 0) or _disabled(inv, "disableGC"):
            return
        failed: list[CniError] = []
        for i in range(len(inv.conflist["plugins"])):  # each one, whatever the others did (as libcni's GC)
            try:
                self._run(inv, "GC", i, None, "", {"cni.dev/valid-attachments": valid})
            except CniError as exc:
                failed.append(exc)
        if failed:
            first = failed[0]
            raise type(first)(first.msg, "; ".join(str(exc) for exc in failed), code=first.code)

    def status(self, inv: Invocation) -> None:
        """STATUS (1.1.0): every plugin ready, or the CNI error (50, 51) of the first that is not."""
        if inv.version < (1, 1, 0):
            return
        for i in range(len(inv.conflist["plugins"])):
            self._run(inv, "STATUS", i, None, "")


def _disabled(inv: Invocation, key: str) -> bool:
    """The list opts out of a verb (``disableCheck``, ``disableGC``), read as libcni reads it: "false" does not."""
    try:
        return list_flag(inv.conflist, key)
    except ConfigInvalid as exc:  # a list recorded before ``as_conflist`` checked the key
        raise InvalidConfig(exc.problem, f"{inv.conflist.get('name', '')}: {exc.field}") from None

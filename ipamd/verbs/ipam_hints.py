"""What Plexus, delegating with ``delegateIPAM: exec``, tells plexus-ipam in a delegate's ``args``, vouched for
in memory while the delegate runs.

Plexus resolves a pod's NPWG element from the pod it was given: the runtime's annotations
(``io.kubernetes.cri.pod-annotations``) when it passes them, which the delegate does not pass on to plexus-ipam
and which the object source may not show (local mode, the API server away) or show otherwise (the annotation
edited after the sandbox was made). The same daemon serves plexus-ipam: while Plexus execs a delegate's ADD, the
hint it wrote is registered under the delegate's attachment (CNI_CONTAINERID, CNI_IFNAME), and plexus-ipam takes
a hint so registered as Plexus's word. Any other hint (under Multus, ``args`` is the NAD author's) is checked
against the pod's own selection (``ipam_plugin.told_by_plexus``). A daemon restarted meanwhile has no
registration: the hint is checked as any other, and a refused ADD is retried.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ipamd.invoke.exec import PluginExec, PluginRun
from ipamd.verbs.networks import PLEXUS_IPAM_ARGS


@dataclass(frozen=True, slots=True)
class Told:
    """The NAD, IPAMClaim and selection element (``k8s.v1.cni.cncf.io/networks[i]``, ``defaultNetworks[i]``,
    ``clusterNetwork``) Plexus resolved for one delegate."""

    nad: str
    claim: str
    where: str

    @classmethod
    def of(cls, told: Any) -> Told | None:
        """The hint as written in ``args``; None when it is no object (refused as such by ``told_by_plexus``)."""
        if not isinstance(told, dict):
            return None
        return cls(*(str(told.get(key) or "") for key in ("nad", "claim", "where")))

    @property
    def claim_field(self) -> str:
        return f"{self.where}.ipam-claim-reference" if self.claim else ""


def told_in(config: Mapping[str, Any]) -> Told | None:
    """The hint in a plugin's configuration (its ``args``), if any."""
    args = config.get("args")
    return Told.of(args.get(PLEXUS_IPAM_ARGS)) if isinstance(args, dict) else None


class PlexusHints:
    """The hints of the delegates Plexus is running now, by attachment. Entries live as long as the exec that
    may call plexus-ipam with them: nothing is kept once a delegate has answered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._told: dict[tuple[str, str], list[Told]] = {}

    @contextmanager
    def telling(self, container_id: str, ifname: str, told: Told) -> Iterator[None]:
        key = (container_id, ifname)
        with self._lock:
            self._told.setdefault(key, []).append(told)
        try:
            yield
        finally:
            with self._lock:
                left = self._told[key]
                left.remove(told)
                if not left:
                    del self._told[key]

    def vouches(self, container_id: str, ifname: str, told: Told) -> bool:
        """Whether Plexus is running a delegate of this attachment with exactly this hint."""
        with self._lock:
            return told in self._told.get((container_id, ifname), ())

    def running(self) -> int:
        """How many attachments have a delegate running with a hint (none once every delegate has answered)."""
        with self._lock:
            return len(self._told)


class HintingExec:
    """A ``PluginExec`` that registers the hint of each delegate ADD it runs for the run's duration. The hint is
    Plexus's: ``Networks`` refuses a configuration that writes that key of ``args`` itself."""

    def __init__(self, plugins: PluginExec, hints: PlexusHints) -> None:
        self.plugins = plugins
        self.hints = hints

    def run(self, plugin: str, env: Mapping[str, str], config: Mapping[str, Any], timeout: float) -> PluginRun:
        told = told_in(config) if env.get("CNI_COMMAND") == "ADD" else None  # DEL, CHECK, GC name no claim
        if told is None:
            return self.plugins.run(plugin, env, config, timeout)
        with self.hints.telling(env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", ""), told):
            return self.plugins.run(plugin, env, config, timeout)

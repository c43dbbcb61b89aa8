"""A small CNI runtime, for ``plexusctl pod run/rm``: it execs a conflist exactly as containerd does.

Each plugin of the list runs in order with ``prevResult`` from the one before, ``runtimeConfig``
for the capabilities it declares (``io.kubernetes.cri.pod-annotations`` gets the pod's annotations),
and ``CNI_ARGS`` with the ``K8S_POD_*`` keys kubelet adds. The final result is cached, as libcni
caches it, and handed to DEL as ``prevResult``; DEL runs the plugins in reverse order and keeps
going past failures. A failed ADD is followed by a DEL, as containerd does. Each plugin runs through
the exec seam (``ipamd.invoke.exec``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from cni.errors import CniError, InvalidConfig
from ipamd.invoke.chain import Chain, Invocation
from ipamd.invoke.exec import Exec, PluginExec
from ipamd.model.objects import POD_ANNOTATIONS_CAPABILITY

log = logging.getLogger(__name__)

DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_CNI_PATH = "/opt/cni/bin"


@dataclass(frozen=True, slots=True)
class PodIdentity:
    """The pod as a runtime knows it when it calls a plugin."""

    namespace: str
    name: str
    uid: str
    container_id: str
    netns: str
    ifname: str = "eth0"
    annotations: dict[str, str] | None = None

    def cni_args(self) -> str:
        return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};K8S_POD_NAME={self.name};"
                f"K8S_POD_INFRA_CONTAINER_ID={self.container_id};K8S_POD_UID={self.uid}")


def find_conflist(conf_dir: str = DEFAULT_CONF_DIR) -> str:
    """The network configuration a runtime would use: the first file of the directory, in lexical order."""
    try:
        names = sorted(n for n in os.listdir(conf_dir) if n.endswith((".conflist", ".conf", ".json")))
    except FileNotFoundError:
        names = []
    if not names:
        raise InvalidConfig(f"no CNI network configuration in {conf_dir}", conf_dir)
    return os.path.join(conf_dir, names[0])


def load_conflist(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            conf: dict[str, Any] = json.load(fh)
    except (OSError, ValueError) as exc:
        raise InvalidConfig(f"cannot read CNI configuration {path}", str(exc)) from None
    if "plugins" not in conf:  # a single-plugin .conf
        conf = {"cniVersion": conf.get("cniVersion", "1.0.0"), "name": conf.get("name", ""), "plugins": [conf]}
    if not isinstance(conf.get("plugins"), list) or not conf["plugins"]:
        raise InvalidConfig(f"{path} has no plugins", "plugins")
    return conf


class Runtime:
    def __init__(self, cni_path: str = DEFAULT_CNI_PATH, cache_dir: str = "/var/lib/plexus/ctl/results",
                 timeout: float = 120.0, plugins: PluginExec | None = None) -> None:
        self.cni_path = cni_path
        self.cache_dir = cache_dir
        self.timeout = timeout
        self.chain = Chain(plugins or Exec(cni_path))

    def _invocation(self, conflist: dict[str, Any], pod: PodIdentity, netns: str) -> Invocation:
        runtime_config = {POD_ANNOTATIONS_CAPABILITY: dict(pod.annotations)} if pod.annotations is not None else {}
        return Invocation(conflist, pod.container_id, netns, pod.ifname, pod.cni_args(), runtime_config,
                          bin_dirs=tuple(self.cni_path.split(":")), timeout_s=self.timeout)

    def _cache_path(self, conflist: dict[str, Any], pod: PodIdentity) -> str:
        return os.path.join(self.cache_dir, f"{conflist['name']}-{pod.container_id}-{pod.ifname}.json")

    def add(self, conflist: dict[str, Any], pod: PodIdentity) -> dict[str, Any]:
        prev: dict[str, Any] | None = None
        try:
            for result in self.chain.add_each(self._invocation(conflist, pod, pod.netns)):
                prev = result
        except CniError:
            self.delete(conflist, pod, prev)
            raise
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        with open(self._cache_path(conflist, pod), "w", encoding="utf-8") as fh:
            json.dump(prev or {}, fh)
        return prev or {}

    def delete(self, conflist: dict[str, Any], pod: PodIdentity, prev: dict[str, Any] | None = None) -> list[str]:
        """DEL every plugin in reverse order; returns the failures (DEL goes on past them)."""
        cache = self._cache_path(conflist, pod)
        if prev is None and os.path.exists(cache):
            try:
                with open(cache, encoding="utf-8") as fh:
                    prev = json.load(fh) or None
            except (OSError, ValueError) as exc:  # as libcni: DEL goes on without it (the plugins tolerate that)
                log.warning("the cached result %s cannot be read (%s): DEL without prevResult", cache, exc)
                prev = None
        netns = pod.netns if os.path.exists(pod.netns) else ""
        errors = self.chain.delete(self._invocation(conflist, pod, netns), prev)
        if not errors and os.path.exists(cache):
            os.unlink(cache)
        return errors

"""Plexus's keys in its own CNI configuration (the conflist a runtime execs ``plexus`` with).

The delegation keys are Multus's, spelled as Multus spells them, so a Multus user's settings carry over:
``binDir``, ``confDir``, ``cniConfigDir``, ``clusterNetwork``, ``defaultNetworks``, ``namespaceIsolation``,
``globalNamespaces``, ``multusNamespace``, ``systemNamespaces``, ``readinessindicatorfile``. Plexus's own:
``delegateTimeoutSeconds``, ``readinessTimeoutSeconds``, ``delegateIPAM`` (how a delegate whose IPAM is
``plexus-ipam`` gets its addresses: ``lease`` (the default), leased by the daemon before the delegate runs
and handed over as the reference ``static`` plugin's configuration; or ``exec``, the delegate execs
``plexus-ipam`` itself, which asks the daemon over its own socket). Pure: the daemon reads them from every call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cni.errors import InvalidConfig

DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/multus/net.d"  # where Multus keeps delegate configurations
DEFAULT_CNI_CONFIG_DIR = "/etc/cni/net.d"  # the node's own: where a cluster network's file usually is


@dataclass(frozen=True, slots=True)
class PluginConfig:
    bin_dirs: tuple[str, ...] = ()  # empty: the runtime's CNI_PATH, else /opt/cni/bin
    conf_dir: str = DEFAULT_CONF_DIR
    cni_config_dir: str = DEFAULT_CNI_CONFIG_DIR
    cluster_network: str = ""  # a NAD (name, ns/name), a configuration's name on disk, or a file's path
    default_networks: tuple[str, ...] = ()  # NADs every pod gets after the cluster network
    namespace_isolation: bool = False  # a pod may use the NADs of its own namespace only (and the global ones)
    global_namespaces: tuple[str, ...] = ()
    multus_namespace: str = "kube-system"  # where clusterNetwork and defaultNetworks NADs are looked up
    system_namespaces: tuple[str, ...] = ("kube-system",)  # their pods get no defaultNetworks
    readiness_indicator_file: str = ""  # ADD waits for it: the cluster network is up
    readiness_timeout_s: float = 10.0
    delegate_timeout_s: float = 30.0
    delegate_ipam: str = "lease"  # lease | exec

    def plugin_dirs(self, cni_path: str) -> tuple[str, ...]:
        return self.bin_dirs or tuple(d for d in cni_path.split(":") if d) or (DEFAULT_BIN_DIR,)

    def is_global(self, namespace: str) -> bool:
        """A NAD of this namespace may be used by pods of any namespace under isolation."""
        return namespace in ("default", *self.global_namespaces)


def _str(conf: Mapping[str, Any], key: str, default: str) -> str:
    value = conf.get(key, default)
    if not isinstance(value, str):
        raise InvalidConfig(f"{key} must be a string", key)
    return value


def _names(value: Any, key: str) -> tuple[str, ...]:
    """A list of names, or Multus's comma-separated string of them."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise InvalidConfig(f"{key} must be a list of names (or a comma-separated string)", key)


def _seconds(conf: Mapping[str, Any], key: str, default: float) -> float:
    value = conf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
        raise InvalidConfig(f"{key} must be a number of seconds between 0 and 3600", key)
    return float(value)


def parse_plugin_config(conf: Mapping[str, Any]) -> PluginConfig:
    """Plexus's keys of ``conf``; ``InvalidConfig`` naming the key that is wrong."""
    isolation = conf.get("namespaceIsolation", False)
    if not isinstance(isolation, bool):
        raise InvalidConfig("namespaceIsolation must be true or false", "namespaceIsolation")
    bin_dir = conf.get("binDir", "")
    return PluginConfig(
        bin_dirs=tuple(d for n in _names(bin_dir, "binDir") for d in n.split(":") if d) if bin_dir else (),
        conf_dir=_str(conf, "confDir", DEFAULT_CONF_DIR),
        cni_config_dir=_str(conf, "cniConfigDir", DEFAULT_CNI_CONFIG_DIR),
        cluster_network=_str(conf, "clusterNetwork", ""),
        default_networks=_names(conf.get("defaultNetworks", []), "defaultNetworks"),
        namespace_isolation=isolation,
        global_namespaces=_names(conf.get("globalNamespaces", []), "globalNamespaces"),
        multus_namespace=_str(conf, "multusNamespace", "kube-system"),
        system_namespaces=_names(conf.get("systemNamespaces", ["kube-system"]), "systemNamespaces"),
        readiness_indicator_file=_str(conf, "readinessindicatorfile", ""),
        readiness_timeout_s=_seconds(conf, "readinessTimeoutSeconds", 10.0),
        delegate_timeout_s=_seconds(conf, "delegateTimeoutSeconds", 30.0),
        delegate_ipam=_choice(conf, "delegateIPAM", DELEGATE_IPAM),
    )


DELEGATE_IPAM = ("lease", "exec")


def _choice(conf: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = conf.get(key, choices[0])
    if value not in choices:
        raise InvalidConfig(f"{key} must be one of {', '.join(choices)}", key)
    return str(value)

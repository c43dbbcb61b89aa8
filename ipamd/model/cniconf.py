"""CNI network configurations as data: a single-plugin ``.conf`` or a ``.conflist``, checked and brought
to one form (a conflist), and the configuration each plugin of a list gets when it is exec'd.

Pure. A NetworkAttachmentDefinition's ``spec.config``, a file of the node's configuration directory and
Plexus's own cluster network all come through ``as_conflist``, so the delegate driver sees one shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cni.errors import InvalidConfig
from cni.version import SUPPORTED_VERSIONS

MAX_CONFIG_BYTES = 64 * 1024  # a real configuration is a few hundred bytes
#: The NPWG selection keys that become ``runtimeConfig`` keys, and the capability a plugin must declare.
CAPABILITIES = {"ips": "ips", "mac": "mac", "portMappings": "portMappings", "bandwidth": "bandwidth",
                "infiniband-guid": "infinibandGUID", "deviceID": "deviceID"}
#: A list's own switches, read as libcni reads them (``readBool``).
LIST_FLAGS = ("disableCheck", "disableGC")


class ConfigInvalid(ValueError):
    """Not a CNI configuration; ``field`` says where (``plugins[1].type``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


def plugin_name_ok(plugin: object) -> bool:
    """A plugin type is a file name in the plugin directory, never a path."""
    return (isinstance(plugin, str) and bool(plugin) and "/" not in plugin and plugin not in (".", "..")
            and "\0" not in plugin)


def parse_config_text(text: str) -> Any:
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise ConfigInvalid("", f"is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigInvalid("", f"is not JSON ({exc})") from None


def as_conflist(doc: Any, default_name: str = "") -> dict[str, Any]:
    """A ``.conf`` or ``.conflist`` as a conflist ``{cniVersion, name, plugins}``: the name given when it
    has none (NPWG §3: a NAD's config takes the NAD's name), every plugin a name-only ``type``."""
    if not isinstance(doc, dict):
        raise ConfigInvalid("", "must be a JSON object")
    version = config_version(doc)
    name = doc.get("name") or default_name
    if not isinstance(name, str) or not name:
        raise ConfigInvalid("name", "is required")
    if "plugins" in doc:
        plugins = doc["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise ConfigInvalid("plugins", "must list at least one plugin")
        where = "plugins[{}]"
    elif "type" in doc:
        plugins = [{k: v for k, v in doc.items() if k not in ("cniVersion", "cniVersions", "name")}]
        where = "{}"
    else:
        raise ConfigInvalid("", "has neither type (a plugin) nor plugins (a list)")
    for i, plugin in enumerate(plugins):
        prefix = where.format(i) if where != "{}" else ""
        if not isinstance(plugin, dict):
            raise ConfigInvalid(prefix, "must be an object")
        if not plugin_name_ok(plugin.get("type")):
            field = f"{prefix}.type" if prefix else "type"
            raise ConfigInvalid(field, f"{plugin.get('type')!r} is not a plugin name (a file of the plugin directory)")
        caps = plugin.get("capabilities", {})
        if not isinstance(caps, dict):
            raise ConfigInvalid(f"{prefix}.capabilities" if prefix else "capabilities", "must be an object")
    if "plugins" in doc:  # the list's own keys (disableCheck, ...) stay with it
        flags = {key: list_flag(doc, key) for key in LIST_FLAGS if key in doc}
        return {**doc, "cniVersion": version, "name": name, "plugins": plugins, **flags}
    return {"cniVersion": version, "name": name, "plugins": plugins}  # a single plugin's keys are the plugin's


def config_version(doc: Mapping[str, Any]) -> str:
    """The version the configuration is run at (SPEC 1.1 §1, as libcni picks it): the highest of ``cniVersions``
    and ``cniVersion`` that Plexus supports, so a list offering 1.1.0 gets GC and STATUS; ``cniVersion`` alone is
    taken as given."""
    version = doc.get("cniVersion")
    if version is not None and (not isinstance(version, str) or not version):
        raise ConfigInvalid("cniVersion", "must be a version string")
    if "cniVersions" not in doc:
        if version is None:
            raise ConfigInvalid("cniVersion", "is required (the CNI spec version the plugins speak), or cniVersions")
        return version
    offered = doc["cniVersions"]
    if not isinstance(offered, list) or not all(isinstance(v, str) and v for v in offered):
        raise ConfigInvalid("cniVersions", "must be a list of version strings")
    spoken = [v for v in SUPPORTED_VERSIONS if v in offered or v == version]  # in ascending order
    if spoken:
        return spoken[-1]
    if version is None:
        raise ConfigInvalid("cniVersions", f"names no version Plexus speaks ({', '.join(SUPPORTED_VERSIONS)})")
    return version


def list_flag(conflist: Mapping[str, Any], key: str) -> bool:
    """A list's ``disableCheck`` or ``disableGC`` as libcni's ``readBool`` reads it: a bool, or "true"/"false" in
    any case (absent: false)."""
    value = conflist.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigInvalid(key, f"{value!r} is not a boolean (true or false)")


def capabilities(conflist: Mapping[str, Any]) -> set[str]:
    """Every capability some plugin of the list declares (``"capabilities": {"ips": true}``)."""
    return {k for p in conflist["plugins"] for k, v in (p.get("capabilities") or {}).items() if v}


def plugin_config(conflist: Mapping[str, Any], index: int, runtime_config: Mapping[str, Any],
                  args: Mapping[str, Any] | None = None, prev_result: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What plugin ``index`` of the list gets on stdin, as libcni builds it: its own keys, the list's name
    and version, ``runtimeConfig`` with only the capabilities it declares, ``args``, ``prevResult``."""
    plugin = dict(conflist["plugins"][index])
    declared = {k for k, v in (plugin.pop("capabilities", None) or {}).items() if v}
    conf: dict[str, Any] = {**plugin, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
    where = f"plugins[{index}]"
    runtime = {k: v for k, v in runtime_config.items() if k in declared}
    if runtime:
        own = _mergeable(conf.get("runtimeConfig"), f"{where}.runtimeConfig")
        conf["runtimeConfig"] = {**own, **runtime}
    if args:
        merged = _mergeable(conf.get("args"), f"{where}.args")
        for key, value in args.items():
            if isinstance(value, dict):
                value = {**_mergeable(merged.get(key), f"{where}.args.{key}"), **value}
            merged[key] = value
        conf["args"] = merged
    if prev_result is not None:
        conf["prevResult"] = dict(prev_result)
    return conf


def _mergeable(value: Any, field: str) -> dict[str, Any]:
    """A plugin's own object that the runtime's values are added to (``runtimeConfig``, ``args``, ``args.cni``):
    absent or an object. Anything else is the configuration's error, named, not a failure of the call."""
    if not value:
        return {}
    if not isinstance(value, dict):
        raise InvalidConfig(f"{field} must be an object (the runtime adds its values to it), not a {type(value).__name__}",
                            field)
    return dict(value)

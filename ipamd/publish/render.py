"""A pod's two status annotations, rendered from the same attachment records: the Deckhouse
``networks-status`` (its networks only, in the seed's shape) and the NPWG ``network-status`` (every
interface Plexus attached, the cluster network first and marked default)."""

from __future__ import annotations

from typing import Any

from ipamd.model.annotations import AddressConfig, InterfaceStatus, build_networks_status
from ipamd.model.npwg import entry_from_result
from ipamd.model.objects import NETWORK_KINDS
from ipamd.store.records import BuiltInterface


def networks_status(interfaces: list[BuiltInterface], since: str) -> list[dict[str, Any]]:
    """``network.deckhouse.io/networks-status``: the interfaces on Deckhouse networks."""
    return build_networks_status([
        InterfaceStatus(
            iface.network_type, iface.network_name, iface.if_name, iface.mac, iface.vlan_id,
            tuple(AddressConfig(a["name"], a["address"], a["network"], tuple(a.get("routes", ()))) for a in iface.addresses),
            True, "InterfaceConfiguredSuccessfully", "", True, since,
        )
        for iface in interfaces if iface.network_type in NETWORK_KINDS
    ])


def network_status(interfaces: list[BuiltInterface], cluster: tuple[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """``k8s.v1.cni.cncf.io/network-status``: ``cluster`` is the network Plexus was chained after (its
    name and result), which is then the default; each interface is named ``namespace/name`` (a
    cluster-scoped network or a configuration by its name alone)."""
    out = []
    if cluster is not None:
        entry = entry_from_result(cluster[0], cluster[1], default=True)
        if entry is not None:
            out.append(entry)
    for iface in interfaces:
        entry = entry_from_result(iface.network_key.split("/", 1)[1], iface.result, default=iface.default,
                                  device_info=iface.device_info or None, ifname=iface.if_name)
        if entry is not None:
            out.append(entry)
    return out

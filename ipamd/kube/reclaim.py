"""Giving back what a vanished node held: its address blocks, and the leases of its pods that are gone.

A node is vanished when its daemon has not renewed its blocks for the controller's ``--block-ttl``, or for
``GONE_GRACE_S`` once its Node object is deleted; and, either way, no pod bound to it may still hold an address
(``may_hold_addresses``: a pod that may still run there keeps its address; the DaemonSets' host-network pods and
finished pods, which stay bound to a dead node, do not keep it from being reclaimed). Its blocks are deleted,
and its lease objects are orphaned (quarantined for their ``ttl``, then expired like any other) unless they are
held by an object that still exists: a user's IPAddress keeps its address, and so does an IPAMClaim, which
outlives its pods. Before this, the addresses a dead node's pods had leased stayed taken for ever.

The judgements are pure functions; the controller does the reads and writes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from ipamd.kube.blocks import RENEW_S, parse_block
from ipamd.kube.heartbeat import renewed_at
from ipamd.kube.leases import NODE_LABEL
from ipamd.model.objects import IPAM_CLAIM

#: A node whose Node object is gone is judged after this long without a renewal (three renewals missed),
#: not after the whole --block-ttl, which is for a node that may still come back.
GONE_GRACE_S = 3 * RENEW_S


def silent_nodes(blocks: Iterable[Mapping[str, Any]], now: float,
                 heartbeats: Mapping[str, float] | None = None) -> dict[str, tuple[float, list[str]]]:
    """Per node holding blocks or renewing a heartbeat (node -> its age, ``ipamd.kube.heartbeat``): how long since
    it last renewed any of them, and its blocks' names."""
    nodes: dict[str, tuple[float, list[str]]] = {node: (age, []) for node, age in (heartbeats or {}).items()}
    for item in blocks:
        block, md = parse_block(dict(item)), item.get("metadata") or {}
        renewed = renewed_at(item, (item.get("status") or {}).get("renewTime") or md.get("creationTimestamp"))
        if block is None or renewed is None:
            continue
        age = now - renewed
        silent, names = nodes.get(block.node, (age, []))
        nodes[block.node] = (min(silent, age), [*names, str(md.get("name"))])
    return nodes


def vanished(silent_s: float, ttl_s: float, node_exists: Callable[[], bool]) -> bool:
    """Whether a node silent for ``silent_s`` is gone for good (``node_exists`` is asked only when it matters)."""
    return silent_s > ttl_s or (silent_s > GONE_GRACE_S and not node_exists())


def _held_by(item: Mapping[str, Any], node: str) -> str:
    """The holder of a lease object ``node`` made ("" when it is another node's, or quarantined)."""
    md = item.get("metadata") or {}
    if (md.get("labels") or {}).get(NODE_LABEL) != node:
        return ""
    return str((item.get("spec") or {}).get("holder") or "")


def claim_holders(leases: Iterable[Mapping[str, Any]], node: str) -> set[str]:
    """The IPAMClaims (``IPAMClaim/namespace/name``) holding lease objects ``node`` made: the controller does not
    watch IPAMClaims, so it asks after these few when it reclaims the node."""
    return {h for h in (_held_by(item, node) for item in leases) if h.startswith(f"{IPAM_CLAIM.name}/")}


def stray_leases(leases: Iterable[Mapping[str, Any]], node: str, existing: Collection[str],
                 claims: Collection[str] | None = None) -> list[Mapping[str, Any]]:
    """The held lease objects ``node`` made whose holder is not an object in ``existing`` (keys
    ``Kind/namespace/name``). An IPAMClaim outlives its pods: its lease stays while it is in ``claims`` (those found
    to exist), or always when ``claims`` is None (not looked up)."""
    found = []
    for item in leases:
        holder = _held_by(item, node)
        if not holder or holder in existing:
            continue
        if holder.startswith(f"{IPAM_CLAIM.name}/") and (claims is None or holder in claims):
            continue
        found.append(item)
    return found


def may_hold_addresses(pod: Mapping[str, Any]) -> bool:
    """Whether a pod bound to a silent node may still run there with an address of its blocks: any pod with a network
    namespace of its own that has not finished. A pod being deleted counts (on a node cut off from the cluster its
    sandbox still runs until the kubelet confirms it, which is why it stays Terminating), and so does one that asks
    for no additional network (plexus-ipam may be its cluster network's IPAM). Host-network pods (the DaemonSets' pods,
    which are never evicted from a dead node, Plexus's own among them) have no interface of Plexus's."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    return not spec.get("hostNetwork") and status.get("phase") not in ("Succeeded", "Failed")

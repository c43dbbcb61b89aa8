"""A node daemon's heartbeat: the coordination.k8s.io Lease ``plexus-node-<node>`` in ``plexus-node-lease`` (a
namespace of their own, so that the nodes may write there and nowhere near the controller's election Lease), renewed
with the node's address blocks (every ``RENEW_S``) through the outbox, as the kubelet renews its own in
``kube-node-lease``.

The controller gives back what a vanished node held, and a node is vanished when it has been silent long enough and
no pod is bound to it. Block renewals were its only sign of life, so a node that leased every address by itself (a
pool too small or too fragmented for blocks, ``--address-blocks off``) was never judged: once it was gone, its lease
objects kept their addresses for ever. The heartbeat says the same for every node, blocks or not; the controller
deletes it with the rest of a vanished node's things.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes import client

from ipamd.kube.client import unread
from ipamd.kube.errors import status_of
from ipamd.kube.server_clock import stamped_at
from ipamd.model.timefmt import rfc3339_micro

NAMESPACE = "plexus-node-lease"  # --heartbeat-namespace
LABEL = "network.deckhouse.io/node-heartbeat"  # "true"; the node is spec.holderIdentity (a label value has 63 at most)
TARGET_PREFIX = "Lease/"  # the outbox's target of a heartbeat: Lease/<namespace>/<name>
DURATION_S = 600  # leaseDurationSeconds: told to readers; the controller's --block-ttl decides
#: The field manager of a node's renewals (its heartbeat, its blocks' renewTime): the API server stamps each of its
#: writes with the server's own time (``metadata.managedFields``), which the controller judges silence by, so that a
#: node whose clock is off is neither reclaimed while it renews nor kept alive by its clock being ahead.
RENEWAL_MANAGER = "plexus-renewal"


def renewed_at(obj: Mapping[str, Any], written: Any) -> float | None:
    """When a node last renewed ``obj``: the API server's time of the node's last renewal write, else ``written``
    (the time the node wrote, by its own clock: an object renewed by a version before this, or no managedFields);
    None when neither is known."""
    return stamped_at(obj, RENEWAL_MANAGER, written)


def lease_name(node: str) -> str:
    return f"plexus-node-{node}"[:253]


def heartbeat_body(node: str, namespace: str, now: float) -> dict[str, Any]:
    """The outbox entry's body: the whole Lease, created if it is missing."""
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": lease_name(node), "namespace": namespace, "labels": {LABEL: "true"}},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": DURATION_S, "renewTime": rfc3339_micro(now)}}


def send_heartbeat(coord: client.CoordinationV1Api, body: Any) -> None:
    """Renew the Lease (a merge patch of its spec), or create it the first time (404)."""
    md = body["metadata"]
    try:
        unread(coord.patch_namespaced_lease(md["name"], md["namespace"], {"spec": body["spec"]},
                                            field_manager=RENEWAL_MANAGER, _preload_content=False))
    except Exception as exc:
        if status_of(exc) != 404:
            raise
        unread(coord.create_namespaced_lease(md["namespace"], body, field_manager=RENEWAL_MANAGER,
                                             _preload_content=False))


def heartbeat_ages(items: Iterable[Mapping[str, Any]], now: float) -> dict[str, float]:
    """Node -> seconds since its daemon last renewed its heartbeat (a Lease without a node or time is left out)."""
    ages: dict[str, float] = {}
    for item in items:
        md, spec = item.get("metadata") or {}, item.get("spec") or {}
        node = str(spec.get("holderIdentity") or "")
        renewed = renewed_at(item, spec.get("renewTime") or md.get("creationTimestamp"))
        if not node or renewed is None:
            continue
        age = now - renewed
        ages[node] = min(age, ages.get(node, age))
    return ages

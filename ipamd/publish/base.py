"""Where statuses go besides the store: nowhere in local mode, the Kubernetes API in cluster mode.

The store always holds every status (plexusctl reads it there); a publisher mirrors what users
expect to see on their objects: ``networks-status`` and ``network-status`` on the pod, the Auto IPAddress objects Plexus
makes (owned by the pod), IPAddress statuses and Events.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from ipamd.model.objects import Pod
from ipamd.store.records import IPRecord, PodStatus


class Publisher(Protocol):
    #: The pod's statuses go to an API server (``ipamd.verbs.pod_statuses``); else they live in the store only.
    remote: bool

    def pod_status(self, pod: Pod, status: PodStatus | None) -> None:
        """The pod's statuses (none: removed), written now, or owed when the API server does not answer. Called one
        at a time per pod (``PodStatusWriter``)."""
        ...

    def owe_pod_status(self, pod: Pod, status: PodStatus | None) -> None:
        """The pod's statuses owed, no request (called inside a DEL's commit: a daemon killed right after it still
        removes what the DEL let go of); ``pod_status`` writes them after."""
        ...

    def attached(self, pod: Pod, status: PodStatus, created: Iterable[IPRecord], used: Iterable[IPRecord]) -> None:
        """What an ADD made, but the pod's statuses (``pod_status``), owed: called inside the ADD's commit, so it
        makes no request (a daemon killed right after the commit owes it all)."""
        ...

    def attached_now(self, used: Iterable[IPRecord]) -> None:
        """After that commit: what others wait for, written now (an IPAMClaim's status)."""
        ...

    def detached(self, namespace: str, name: str, uid: str, used: Iterable[IPRecord]) -> None:
        """What a DEL let go of, but the pod's statuses (``pod_status``)."""
        ...

    def failed(self, pod: Pod, message: str) -> None: ...

    def claim_released(self, rec: IPRecord, pod_name: str) -> None:
        """An IPAMClaim let go of by ``pod_name`` (of this node): its status, and no ``ownerPod`` if it named that pod."""
        ...

    def owe_claim_released(self, rec: IPRecord, pod_name: str) -> None:
        """``claim_released`` owed, no request (called inside the commit that lets the claim go)."""
        ...

    def ip_status(self, rec: IPRecord) -> None: ...

    def node_attachment(self, network_key: str, bridge: str, ready: bool, message: str) -> None: ...

    def node_detachment(self, network_key: str) -> None: ...

    def lost_attachments(self, network_keys: Iterable[str]) -> list[str]:
        """Of this node's attachments reported (by Network key), those deleted by someone else since: the controller
        drops those of a node it took for vanished (only cut off), or a hand does. Written again by the reconciler."""
        ...

    def republish(self, ips: Iterable[IPRecord], statuses: Iterable[PodStatus]) -> None: ...  # after a restart


class LocalPublisher:
    """Local mode: the store is the only place statuses live."""

    remote = False

    def pod_status(self, pod: Pod, status: PodStatus | None) -> None:
        pass

    def owe_pod_status(self, pod: Pod, status: PodStatus | None) -> None:
        pass

    def attached(self, pod: Pod, status: PodStatus, created: Iterable[IPRecord], used: Iterable[IPRecord]) -> None:
        pass

    def attached_now(self, used: Iterable[IPRecord]) -> None:
        pass

    def detached(self, namespace: str, name: str, uid: str, used: Iterable[IPRecord]) -> None:
        pass

    def failed(self, pod: Pod, message: str) -> None:
        pass

    def claim_released(self, rec: IPRecord, pod_name: str) -> None:
        pass

    def owe_claim_released(self, rec: IPRecord, pod_name: str) -> None:
        pass

    def ip_status(self, rec: IPRecord) -> None:
        pass

    def node_attachment(self, network_key: str, bridge: str, ready: bool, message: str) -> None:
        pass

    def node_detachment(self, network_key: str) -> None:
        pass

    def lost_attachments(self, network_keys: Iterable[str]) -> list[str]:
        return []  # its reports live in the store

    def republish(self, ips: Iterable[IPRecord], statuses: Iterable[PodStatus]) -> None:
        pass

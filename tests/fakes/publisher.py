"""A publisher that remembers what it was told (the local one forgets, the Kubernetes one writes)."""

from __future__ import annotations

from collections.abc import Iterable

from ipamd.model.objects import Pod
from ipamd.store.records import IPRecord, PodStatus


class RecordingPublisher:
    def __init__(self, remote: bool = True) -> None:
        self.remote = remote  # so the verbs write the statuses ahead, as to an API server
        self.failed_with: list[str] = []
        self.attached_pods: list[str] = []
        self.detached_pods: list[str] = []
        self.node_attachments: dict[str, tuple[str, bool, str]] = {}  # network -> (bridge, ready, message)
        self.node_detachments: list[str] = []
        self.statuses: dict[str, PodStatus] = {}  # pod UID -> what its annotations would say
        self.pod_statuses: list[tuple[str, PodStatus | None]] = []  # every write of them, in order
        self.ip_statuses: list[IPRecord] = []  # IPAddress and IPAMClaim statuses, in order
        self.republished: list[tuple[list[str], list[str]]] = []  # (IPAddress keys, pod UIDs) per restart

    def pod_status(self, pod: Pod, status: PodStatus | None) -> None:
        self.pod_statuses.append((pod.meta.uid, status))
        if status is None:
            self.statuses.pop(pod.meta.uid, None)
        else:
            self.statuses[pod.meta.uid] = status

    def owe_pod_status(self, pod: Pod, status: PodStatus | None) -> None:
        pass

    def attached(self, pod: Pod, status: PodStatus, created: Iterable[IPRecord], used: Iterable[IPRecord]) -> None:
        self.attached_pods.append(pod.meta.name)

    def attached_now(self, used: Iterable[IPRecord]) -> None:
        pass

    def detached(self, namespace: str, name: str, uid: str, used: Iterable[IPRecord]) -> None:
        self.detached_pods.append(name)

    def failed(self, pod: Pod, message: str) -> None:
        self.failed_with.append(message)

    def ip_status(self, rec: IPRecord) -> None:
        self.ip_statuses.append(rec)

    def claim_released(self, rec: IPRecord, pod_name: str) -> None:
        self.ip_statuses.append(rec)

    def owe_claim_released(self, rec: IPRecord, pod_name: str) -> None:
        pass

    def node_attachment(self, network_key: str, bridge: str, ready: bool, message: str) -> None:
        self.node_attachments[network_key] = (bridge, ready, message)

    def node_detachment(self, network_key: str) -> None:
        self.node_detachments.append(network_key)

    def lost_attachments(self, network_keys: Iterable[str]) -> list[str]:
        return []

    def republish(self, ips: Iterable[IPRecord], statuses: Iterable[PodStatus]) -> None:
        self.republished.append(([r.key for r in ips], [s.uid for s in statuses]))

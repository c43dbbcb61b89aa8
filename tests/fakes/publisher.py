"""A publisher that remembers what it was told (the local one forgets, the Kubernetes one writes)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ipamd.model.objects import Pod
from ipamd.store.records import IPRecord


class RecordingPublisher:
    def __init__(self) -> None:
        self.failed_with: list[str] = []
        self.attached_pods: list[str] = []
        self.detached_pods: list[str] = []
        self.node_attachments: dict[str, tuple[str, bool, str]] = {}  # network -> (bridge, ready, message)
        self.node_detachments: list[str] = []

    def attached(self, pod: Pod, networks_status: list[dict[str, Any]], created: Iterable[IPRecord],
                 used: Iterable[IPRecord]) -> None:
        self.attached_pods.append(pod.meta.name)

    def detached(self, namespace: str, name: str, uid: str, networks_status: list[dict[str, Any]] | None,
                 used: Iterable[IPRecord]) -> None:
        self.detached_pods.append(name)

    def failed(self, pod: Pod, message: str) -> None:
        self.failed_with.append(message)

    def ip_status(self, rec: IPRecord) -> None:
        pass

    def node_attachment(self, network_key: str, bridge: str, ready: bool, message: str) -> None:
        self.node_attachments[network_key] = (bridge, ready, message)

    def node_detachment(self, network_key: str) -> None:
        self.node_detachments.append(network_key)

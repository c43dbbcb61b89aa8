"""Device pools (DANM's ``device_pool``, Multus's ``deviceID``): the devices of a device-plugin resource that the
kubelet assigned to a pod, and what their plugin says about each.

A NetworkAttachmentDefinition annotated ``k8s.v1.cni.cncf.io/resourceName: vendor.example/nic`` attaches a pod to a
network through one device of that resource (an SR-IOV virtual function, say). The kubelet picks the devices when it
admits the pod, before its sandbox exists; its pod-resources API (a gRPC service on a unix socket of the node) says
which ones, and the device plugin may describe each in an NPWG device-info file. The N-th network of a resource in a
pod's selection takes the N-th device, as Multus does.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Protocol

from cni.errors import TryAgainLater
from ipamd.config import DEVICE_INFO_DIR, POD_RESOURCES_SOCKET

log = logging.getLogger(__name__)

LIST_TIMEOUT_S = 5.0


class PodDevices(Protocol):
    def devices(self, namespace: str, name: str, resource: str) -> list[str]:
        """The IDs of the ``resource`` devices the kubelet assigned to the pod's containers, in container order."""
        ...

    def info(self, resource: str, device_id: str) -> dict[str, Any] | None:
        """The device plugin's NPWG device-info of one device (None when it wrote none)."""
        ...


def info_path(directory: str, resource: str, device_id: str) -> str:
    return os.path.join(directory, f"{resource.replace('/', '-')}-{device_id.replace('/', '-')}-device.json")


def read_info(directory: str, resource: str, device_id: str) -> dict[str, Any] | None:
    """A device-info file, or None when there is none; one that is not a JSON object is logged and ignored (the
    status says less, the attachment still works)."""
    path = info_path(directory, resource, device_id)
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("device-info %s: %s", path, exc)
        return None
    return doc if isinstance(doc, dict) else None


def devices_in(response: Any, namespace: str, name: str, resource: str) -> list[str]:
    """The device IDs of ``resource`` held by the pod's containers in a ``ListPodResourcesResponse``."""
    return [device_id for pod in response.pod_resources if (pod.namespace, pod.name) == (namespace, name)
            for container in pod.containers for group in container.devices if group.resource_name == resource
            for device_id in group.device_ids]


class KubeletDevices:
    """The kubelet's pod-resources API, over one channel kept open (gRPC reconnects it when the kubelet restarts)."""

    def __init__(self, socket: str = POD_RESOURCES_SOCKET, info_dir: str = DEVICE_INFO_DIR,
                 timeout_s: float = LIST_TIMEOUT_S) -> None:
        self.socket, self.info_dir, self.timeout_s = socket, info_dir, timeout_s
        self._stub: Any = None
        self._channel: Any = None
        self._lock = threading.Lock()

    def _lister(self) -> Any:
        with self._lock:
            if self._stub is None:
                import grpc

                from ipamd.api import podresources_pb2_grpc

                self._channel = grpc.insecure_channel(f"unix:{self.socket}")
                self._stub = podresources_pb2_grpc.PodResourcesListerStub(  # type: ignore[no-untyped-call]
                    self._channel)
            return self._stub

    def close(self) -> None:
        """The channel's threads and socket go with the daemon (a later call opens it again)."""
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._stub = None

    def devices(self, namespace: str, name: str, resource: str) -> list[str]:
        import grpc

        from ipamd.api import podresources_pb2

        try:
            response = self._lister().List(podresources_pb2.ListPodResourcesRequest(), timeout=self.timeout_s)
        except (grpc.RpcError, ValueError) as exc:  # ValueError: the channel closed as the daemon stops
            code = exc.code() if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") else None
            raise TryAgainLater(f"the kubelet's pod-resources API ({self.socket}) did not say which {resource} "
                                f"devices pod {namespace}/{name} has: {code.name if code else exc}",
                                "podResourcesSocket") from None
        return devices_in(response, namespace, name, resource)

    def info(self, resource: str, device_id: str) -> dict[str, Any] | None:
        return read_info(self.info_dir, resource, device_id)


class NoDevices:
    """A node without a kubelet (local mode): no pod holds a device."""

    def devices(self, namespace: str, name: str, resource: str) -> list[str]:
        return []

    def info(self, resource: str, device_id: str) -> dict[str, Any] | None:
        return None

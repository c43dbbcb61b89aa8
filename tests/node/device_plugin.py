"""A device plugin the tests register with the node tier's kubelet (no SR-IOV hardware here): it advertises a few
devices of one resource, records which ones the kubelet allocates, and writes an NPWG device-info file for each, as
an SR-IOV device plugin does, so that Plexus's device pools are tested against a real kubelet's allocation."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from tests.node.api import deviceplugin_pb2 as pb
from tests.node.api import deviceplugin_pb2_grpc as pb_grpc

PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")  # fixed in kubelet 1.20, whatever its --root-dir


class FakeNicPlugin(pb_grpc.DevicePluginServicer):
    def __init__(self, resource: str, devices: list[str], info_dir: Path, endpoint: str = "plexus-test.sock") -> None:
        self.resource, self.devices, self.info_dir, self.endpoint = resource, devices, info_dir, endpoint
        self.allocated: list[list[str]] = []
        self._stop = threading.Event()
        self._server: grpc.Server | None = None

    # -- the DevicePlugin service the kubelet calls -------------------------------------------------
    def GetDevicePluginOptions(self, request: pb.Empty, context: Any) -> pb.DevicePluginOptions:  # noqa: N802
        return pb.DevicePluginOptions()

    def ListAndWatch(self, request: pb.Empty, context: Any) -> Iterator[pb.ListAndWatchResponse]:  # noqa: N802
        yield pb.ListAndWatchResponse(devices=[pb.Device(ID=d, health="Healthy") for d in self.devices])
        while not self._stop.wait(0.5) and context.is_active():
            pass

    def Allocate(self, request: pb.AllocateRequest, context: Any) -> pb.AllocateResponse:  # noqa: N802
        out = []
        for container in request.container_requests:
            ids = list(container.devices_ids)
            self.allocated.append(ids)
            for device_id in ids:  # what an SR-IOV device plugin writes for each device it hands out
                name = f"{self.resource.replace('/', '-')}-{device_id.replace('/', '-')}-device.json"
                (self.info_dir / name).write_text(json.dumps(
                    {"type": "pci", "version": "1.1.0", "pci": {"pci-address": f"0000:00:0{len(self.allocated)}.0"}}))
            out.append(pb.ContainerAllocateResponse(envs={"PLEXUS_TEST_DEVICES": ",".join(ids)}))
        return pb.AllocateResponse(container_responses=out)

    def GetPreferredAllocation(self, request: Any, context: Any) -> pb.PreferredAllocationResponse:  # noqa: N802
        return pb.PreferredAllocationResponse()

    def PreStartContainer(self, request: Any, context: Any) -> pb.PreStartContainerResponse:  # noqa: N802
        return pb.PreStartContainerResponse()

    # -- its life ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Serve on the kubelet's plugin directory, then register there (the kubelet then calls back)."""
        self.info_dir.mkdir(parents=True, exist_ok=True)
        socket = PLUGIN_DIR / self.endpoint
        socket.unlink(missing_ok=True)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_DevicePluginServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        self._server.add_insecure_port(f"unix:{socket}")
        self._server.start()
        with grpc.insecure_channel(f"unix:{PLUGIN_DIR / 'kubelet.sock'}") as channel:
            pb_grpc.RegistrationStub(channel).Register(  # type: ignore[no-untyped-call]
                pb.RegisterRequest(version="v1beta1", endpoint=self.endpoint, resource_name=self.resource),
                timeout=10)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.stop(grace=1).wait(5)
        try:
            os.unlink(PLUGIN_DIR / self.endpoint)
        except OSError:
            pass

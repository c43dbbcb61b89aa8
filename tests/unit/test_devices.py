"""Device pools: the kubelet's pod-resources API read over a real gRPC server on a unix socket (a stand-in for the
kubelet: the seam is the socket), device-info files named as net-attach-def-client names them, and each network of a
resource given its own device in the delegate's configuration and in network-status."""

from __future__ import annotations

import json
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from cni.errors import CniError, InvalidConfig
from ipamd.api import podresources_pb2 as pb
from ipamd.api import podresources_pb2_grpc as pb_grpc
from ipamd.ipam.addresses import Ipam
from ipamd.model.objects import POD, parse_as, parse_object
from ipamd.model.pluginconf import parse_plugin_config
from ipamd.sources.devices import KubeletDevices, devices_in, info_path, read_info
from ipamd.verbs.call import CniCall
from ipamd.verbs.networks import Networks
from tests.fakes.source import FakeSource
from tests.fakes.store import MemoryStore

RESOURCE = "plexus.test/nic"


def listing(*pods: tuple[str, str, dict[str, list[str]]]) -> pb.ListPodResourcesResponse:
    """Pods as (namespace, name, {container: [device IDs of RESOURCE]}), plus a device of another resource each."""
    return pb.ListPodResourcesResponse(pod_resources=[
        pb.PodResources(namespace=ns, name=name, containers=[
            pb.ContainerResources(name=c, devices=[pb.ContainerDevices(resource_name=RESOURCE, device_ids=ids),
                                                   pb.ContainerDevices(resource_name="other/gpu", device_ids=["g0"])])
            for c, ids in containers.items()])
        for ns, name, containers in pods])


class Kubelet(pb_grpc.PodResourcesListerServicer):
    def __init__(self, response: pb.ListPodResourcesResponse) -> None:
        self.response, self.calls = response, 0

    def List(self, request: pb.ListPodResourcesRequest, context: Any) -> pb.ListPodResourcesResponse:  # noqa: N802
        self.calls += 1
        return self.response


@pytest.fixture()
def kubelet(tmp_path: Path) -> Any:
    service = Kubelet(listing(("apps", "db-0", {"main": ["vf-1"], "sidecar": ["vf-7"]}), ("apps", "web", {"c": ["vf-2"]})))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_PodResourcesListerServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    socket = tmp_path / "kubelet.sock"
    server.add_insecure_port(f"unix:{socket}")
    server.start()
    try:
        yield service, str(socket)
    finally:
        server.stop(grace=None)


def test_a_pods_devices_of_one_resource_in_container_order(kubelet: Any, tmp_path: Path) -> None:
    service, socket = kubelet
    devices = KubeletDevices(socket, str(tmp_path))
    assert devices.devices("apps", "db-0", RESOURCE) == ["vf-1", "vf-7"]
    assert devices.devices("apps", "web", RESOURCE) == ["vf-2"]
    assert devices.devices("apps", "web", "other/gpu") == ["g0"]
    assert devices.devices("apps", "nobody", RESOURCE) == [] and devices.devices("other", "web", RESOURCE) == []
    assert service.calls == 5
    devices.close()  # the daemon's stop: its channel closed; a later call opens another
    assert devices.devices("apps", "web", RESOURCE) == ["vf-2"] and service.calls == 6
    devices.close()


def test_a_kubelet_that_does_not_answer_is_try_again_later(tmp_path: Path) -> None:
    devices = KubeletDevices(str(tmp_path / "absent.sock"), str(tmp_path), timeout_s=0.5)
    with pytest.raises(CniError) as err:
        devices.devices("apps", "db-0", RESOURCE)
    assert err.value.code == 11 and err.value.details == "podResourcesSocket" and "absent.sock" in err.value.msg


def test_device_info_files_are_named_as_device_plugins_write_them(tmp_path: Path) -> None:
    path = info_path(str(tmp_path), "intel.com/sriov_net", "0000:03:02.1")
    assert Path(path).name == "intel.com-sriov_net-0000:03:02.1-device.json"
    info = {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:03:02.1"}}
    Path(path).write_text(json.dumps(info))
    assert read_info(str(tmp_path), "intel.com/sriov_net", "0000:03:02.1") == info
    assert read_info(str(tmp_path), "intel.com/sriov_net", "0000:03:02.2") is None
    Path(path).write_text("[not, an, object")
    assert read_info(str(tmp_path), "intel.com/sriov_net", "0000:03:02.1") is None, "a bad file: no device-info"


def test_devices_in_ignores_other_pods_and_resources() -> None:
    response = listing(("a", "p", {"c": ["x", "y"]}), ("b", "p", {"c": ["z"]}))
    assert devices_in(response, "a", "p", RESOURCE) == ["x", "y"] and devices_in(response, "b", "p", "none") == []


class Devices:
    def __init__(self, assigned: list[str]) -> None:
        self.assigned = assigned

    def devices(self, namespace: str, name: str, resource: str) -> list[str]:
        return list(self.assigned) if resource == RESOURCE else []

    def info(self, resource: str, device_id: str) -> dict[str, Any] | None:
        return {"type": "pci", "version": "1.1.0", "pci": {"pci-address": device_id}}


def nad(name: str, config: dict[str, Any], resource: str = RESOURCE) -> Any:
    return parse_object({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                         "metadata": {"name": name, "namespace": "apps",
                                      "annotations": {"k8s.v1.cni.cncf.io/resourceName": resource}},
                         "spec": {"config": json.dumps(config)}})


SRIOV = {"cniVersion": "1.0.0", "type": "host-device"}
WITH_CAP = {"cniVersion": "1.0.0", "plugins": [{"type": "host-device", "capabilities": {"deviceID": True}},
                                                {"type": "tuning"}]}


def wanted(annotation: str, assigned: list[str], annotations: dict[str, str] | None = None,
           config: dict[str, Any] | None = None) -> list[Any]:
    src = FakeSource(nad("vf-a", SRIOV), nad("vf-b", WITH_CAP), nad("cbr0", {"cniVersion": "1.0.0", "type": "bridge"}))
    annotations = annotations if annotations is not None else {"k8s.v1.cni.cncf.io/networks": annotation}
    pod = parse_as(POD, {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "db-0", "namespace": "apps", "uid": "u", "annotations": annotations}})
    call = CniCall("ADD", "c1", "/run/netns/p", "eth0", {}, {}, "K8S_POD_NAMESPACE=apps;K8S_POD_NAME=db-0",
                   "/opt/cni/bin")
    return Networks(src, Ipam(MemoryStore(), src), devices=Devices(assigned)).wanted(call, pod, None,
                                                                                      parse_plugin_config(config or {}))


def test_each_network_of_a_resource_takes_the_next_device() -> None:
    a, b = wanted("vf-a, vf-b", ["0000:03:02.1", "0000:03:02.2"])
    assert (a.device_id, b.device_id) == ("0000:03:02.1", "0000:03:02.2")
    assert a.request.delegate.conflist["plugins"][0]["deviceID"] == "0000:03:02.1"
    assert "deviceID" not in a.request.delegate.runtime_config, "host-device here declares no deviceID capability"
    assert b.request.delegate.conflist["plugins"][0]["deviceID"] == "0000:03:02.2"
    assert "deviceID" not in b.request.delegate.conflist["plugins"][1], "the first plugin only, as Multus does"
    assert b.request.delegate.runtime_config["deviceID"] == "0000:03:02.2"
    assert b.device_info == {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:03:02.2"}}


@pytest.mark.parametrize(("annotations", "cluster"), [({}, "apps/vf-a"),
                                                      ({"v1.multus-cni.io/default-network": "apps/vf-a"}, "apps/cbr0")],
                         ids=["clusterNetwork", "default-network annotation"])
def test_a_cluster_network_nad_with_a_resource_takes_its_device(annotations: dict[str, str], cluster: str) -> None:
    """A pod whose primary interface is a VF: its cluster network (``clusterNetwork``, or the pod's override) is a
    NAD with a resourceName, and gets its device as any NAD does (Multus's ``getKubernetesDelegate``)."""
    (primary,) = wanted("", ["0000:03:02.1"], annotations, {"clusterNetwork": cluster})
    assert primary.device_id == "0000:03:02.1"
    assert primary.request.delegate.conflist["plugins"][0]["deviceID"] == "0000:03:02.1"


def test_more_networks_of_a_resource_than_devices_is_refused_naming_the_element() -> None:
    with pytest.raises(InvalidConfig) as err:
        wanted("vf-a, vf-b", ["0000:03:02.1"])
    assert err.value.details == "k8s.v1.cni.cncf.io/networks[1].name"
    assert "assigned pod apps/db-0 1 of them for 2" in err.value.msg and "resources.limits[plexus.test/nic]" in \
        err.value.msg


def test_the_lookup_is_made_once_per_resource_per_add() -> None:
    calls: list[str] = []

    class Counting(Devices):
        def devices(self, namespace: str, name: str, resource: str) -> list[str]:
            calls.append(resource)
            return super().devices(namespace, name, resource)

    src = FakeSource(nad("vf-a", SRIOV))
    pod = parse_as(POD, {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "db-0", "namespace": "apps", "uid": "u", "annotations": {"k8s.v1.cni.cncf.io/networks": "vf-a,vf-a"}}})
    call = CniCall("ADD", "c1", "/run/netns/p", "eth0", {}, {}, "", "/opt/cni/bin")
    got = Networks(src, Ipam(MemoryStore(), src), devices=Counting(["d1", "d2"])).wanted(
        call, pod, None, parse_plugin_config({}))
    assert [w.device_id for w in got] == ["d1", "d2"] and calls == [RESOURCE]

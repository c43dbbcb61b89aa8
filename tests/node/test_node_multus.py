"""The node tier run as most Multus clusters run: Plexus the node's only CNI configuration, the cluster
network (Debian's bridge) delegated as eth0, and the seeds' NetworkAttachmentDefinitions applied unchanged:
the Multus seed's Deployment (``k8s.v1.cni.cncf.io/networks: example``, host-device ``ens4`` with DHCP) and
the OpenShift seed's pod (macvlan with static IPAM and tuning, its IP and MAC from the annotation).

The node's namespace gets what those NADs name, as a host would have it: ``ens4`` (a veth end, a DHCP server
on its peer, Debian's CNI DHCP daemon) and ``eth0`` (a veth end, macvlan's master). Every address is in
198.18.0.0/15 (the OpenShift seed's 192.0.2.205 placeholder becomes 198.18.97.205)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.node.device_plugin import FakeNicPlugin
from tests.node.test_node_tier import BUSYBOX, NODE, NODE_NETNS, NodeCluster, running_node, wait_for

NETNS = Path(NODE_NETNS).name
DHCP_SOCKET = Path("/run/cni/dhcp.sock")

MULTUS_SEED_NAD = """
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: example
spec:
  config: |-
    {
      "cniVersion": "0.3.1",
      "name": "example",
      "type": "host-device",
      "device": "ens4",
      "ipam": {
        "type": "dhcp"
      }
    }
"""

OPENSHIFT_SEED_CONFIG = """{
  "cniVersion": "0.3.1",
  "name": "static-mac",
  "plugins": [{
      "type": "macvlan",
      "capabilities": { "ips": true },
      "master": "eth0",
      "mode": "bridge",
      "ipam": {
        "type": "static"
      }
    }, {
      "capabilities": { "mac": true },
      "type": "tuning"
    }]
}"""


def write_plexus_only(path: Path, socket: str, log_file: str) -> Path:
    """Plexus alone, its cluster network the node's bridge network (host-local state kept with the test)."""
    cluster = path.parent / "k8s-pod-network.conflist"
    cluster.write_text(json.dumps({"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.18.128.0/20", "gateway": "198.18.128.1"}]],
                  "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(path.parent / "host-local")}}]}))
    path.write_text(json.dumps({"cniVersion": "1.0.0", "name": "plexus", "plugins": [
        {"type": "plexus", "socket": socket, "logFile": log_file, "clusterNetwork": str(cluster),
         "capabilities": {"io.kubernetes.cri.pod-annotations": True, "portMappings": True}}]}))
    return path


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "-n", NETNS, *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def multus_node() -> Iterator[NodeCluster]:
    with running_node(write_plexus_only, crds=("crds.yaml", "npwg-crds.yaml")) as c:
        helpers: list[subprocess.Popen[bytes]] = []
        try:
            for name, peer in (("ens4", "ens4-dhcp"), ("eth0", "eth0-peer")):
                ip("link", "add", name, "type", "veth", "peer", "name", peer)
                ip("link", "set", peer, "up")
                ip("link", "set", name, "up")
            ip("addr", "add", "198.18.96.1/24", "dev", "ens4-dhcp")
            conf = c.daemon_log.parent / "udhcpd.conf"
            conf.write_text(f"start 198.18.96.10\nend 198.18.96.50\ninterface ens4-dhcp\noption subnet 255.255.255.0\n"
                            f"lease_file {c.daemon_log.parent / 'udhcpd.leases'}\npidfile {c.daemon_log.parent / 'u.pid'}\n")
            (c.daemon_log.parent / "udhcpd.leases").touch()
            helpers.append(subprocess.Popen(["nsenter", f"--net={NODE_NETNS}", "busybox", "udhcpd", "-f", str(conf)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            DHCP_SOCKET.unlink(missing_ok=True)
            helpers.append(subprocess.Popen(["nsenter", f"--net={NODE_NETNS}", "/usr/lib/cni/dhcp", "daemon"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            assert wait_for(DHCP_SOCKET.exists, timeout=20, step=0.2), "the CNI DHCP daemon is up"
            yield c
        finally:
            for h in helpers:
                h.send_signal(signal.SIGTERM)
                try:
                    h.wait(10)
                except subprocess.TimeoutExpired:
                    h.kill()
            DHCP_SOCKET.unlink(missing_ok=True)
            for name in ("ens4", "eth0"):
                ip("link", "del", name)


def attachments(c: NodeCluster) -> list[Any]:
    from ipamd.store.sqlite import Store

    store = Store(str(c.daemon_log.parent / "plexus.db"))
    try:
        return store.attachments()
    finally:
        store.close()


def network_status(c: NodeCluster, ns: str, name: str) -> list[dict[str, Any]]:
    out = c.kubectl("get", "pod", "-n", ns, name, "-o",
                    r"jsonpath={.metadata.annotations.k8s\.v1\.cni\.cncf\.io/network-status}")
    return list(json.loads(out.stdout)) if out.stdout.strip() else []


def running(c: NodeCluster, ns: str, selector: str) -> list[dict[str, Any]]:
    pods = c.get("pod", "-n", ns, "-l", selector)["items"]
    return [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]


def container(c: NodeCluster, ns: str, pod: str, *cmd: str) -> str:
    return c.kubectl("exec", "-n", ns, pod, "--", *cmd).stdout


def spec() -> dict[str, Any]:
    return {"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": BUSYBOX, "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]}


@pytest.mark.netns
def test_the_multus_seeds_deployment_with_its_nad_unchanged(multus_node: NodeCluster) -> None:
    c = multus_node
    c.kubectl("create", "namespace", "example", check=False)
    assert c.kubectl("apply", "-n", "example", "-f", "-", stdin=MULTUS_SEED_NAD).returncode == 0
    c.apply([{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "example", "namespace": "example"},
              "spec": {"selector": {"matchLabels": {"app": "example", "name": "example"}},
                       "template": {"metadata": {"annotations": {"k8s.v1.cni.cncf.io/networks": "example"},
                                                 "labels": {"app": "example", "name": "example"}},
                                    "spec": spec()}}}])
    pods = wait_for(lambda: running(c, "example", "app=example"), timeout=180)
    assert pods, c.daemon_log.read_text()[-4000:]
    name = pods[0]["metadata"]["name"]
    status = network_status(c, "example", name)
    assert [(e["name"], e["interface"], e.get("default", False)) for e in status] == [
        ("k8s-pod-network", "eth0", True), ("example/example", "net1", False)], status
    assert status[1]["ips"][0].startswith("198.18.96."), "an address from the DHCP server behind ens4"
    assert f"inet {status[1]['ips'][0]}/24" in container(c, "example", name, "ip", "-4", "addr", "show", "net1")
    assert pods[0]["status"]["podIP"] == status[0]["ips"][0], "the pod's IP is the cluster network's"
    assert ip("link", "show", "ens4").returncode != 0, "host-device moved ens4 into the pod"
    c.kubectl("delete", "deployment", "-n", "example", "example", "--wait=true")
    assert wait_for(lambda: not c.get("pod", "-n", "example")["items"], timeout=120)
    assert wait_for(lambda: ip("link", "show", "ens4").returncode == 0, timeout=60), "ens4 given back to the node"
    assert wait_for(lambda: not attachments(c), timeout=60), attachments(c)
    dels = [line for line in c.daemon_log.read_text().splitlines() if "CNI DEL" in line and f"pod=example/{name}" in line]
    assert dels and all(" ok" in line for line in dels), dels


@pytest.mark.netns
def test_the_openshift_seeds_pod_and_a_del_after_its_nad_is_gone(multus_node: NodeCluster) -> None:
    c = multus_node
    c.kubectl("create", "namespace", "seeds", check=False)
    c.apply([{"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
              "metadata": {"name": "static-mac", "namespace": "seeds"}, "spec": {"config": OPENSHIFT_SEED_CONFIG}},
             {"apiVersion": "v1", "kind": "Pod", "metadata": {
                 "name": "example-pod", "namespace": "seeds", "labels": {"seed": "openshift"},
                 "annotations": {"k8s.v1.cni.cncf.io/networks": json.dumps(
                     [{"name": "static-mac", "ips": ["198.18.97.205/24"], "mac": "CA:FE:C0:FF:EE:00"}])}},
              "spec": spec()}])
    assert wait_for(lambda: running(c, "seeds", "seed=openshift"), timeout=180), c.daemon_log.read_text()[-4000:]
    link = container(c, "seeds", "example-pod", "ip", "addr", "show", "net1")
    assert "link/ether ca:fe:c0:ff:ee:00" in link and "inet 198.18.97.205/24" in link, link
    status = network_status(c, "seeds", "example-pod")
    assert status[1] == {"name": "seeds/static-mac", "interface": "net1", "ips": ["198.18.97.205"],
                         "mac": "ca:fe:c0:ff:ee:00", "dns": {}}, status
    c.kubectl("delete", "network-attachment-definitions", "-n", "seeds", "static-mac")
    started = time.monotonic()
    c.kubectl("delete", "pod", "-n", "seeds", "example-pod", "--wait=true", "--timeout=120s")
    assert time.monotonic() - started < 120
    assert wait_for(lambda: not attachments(c), timeout=60), attachments(c)
    assert os.path.exists(NODE_NETNS)


RESOURCE = "plexus.test/nic"
RECORDER = Path("/opt/cni/bin/plexus-test-devrec")


@pytest.mark.netns
def test_a_device_pool_hands_each_pod_the_device_its_kubelet_assigned(multus_node: NodeCluster) -> None:
    """A NAD of a device-plugin resource (DANM's device pools, Multus's deviceID): the tests' own device plugin
    registers two devices with the real kubelet; a pod that asks for one gets its network through a delegate told
    that device's ID (a recorder in front of Debian's bridge plugin keeps what it was told), and network-status
    carries the device plugin's device-info."""
    c = multus_node
    work = c.daemon_log.parent
    calls = work / "devrec.jsonl"
    RECORDER.write_text(f"#!/bin/sh\nconf=$(cat)\nprintf '%s\\n' \"$conf\" >> {calls}\n"
                        "printf '%s' \"$conf\" | exec /opt/cni/bin/bridge\n")
    RECORDER.chmod(0o755)
    plugin = FakeNicPlugin(RESOURCE, ["nic-a", "nic-b"], work / "devinfo")
    try:
        plugin.start()
        assert wait_for(lambda: c.get("node", NODE)["status"].get("allocatable", {}).get(RESOURCE) == "2",
                        timeout=60), "the kubelet advertises the plugin's two devices"
        c.kubectl("create", "namespace", "devpool", check=False)
        config = {"cniVersion": "0.3.1", "name": "vf-net", "type": RECORDER.name, "bridge": "plxdev0",
                  "ipam": {"type": "host-local", "subnet": "198.18.99.0/24", "dataDir": str(work / "devpool-ipam")}}
        pod_spec = spec()
        pod_spec["containers"][0]["resources"] = {"limits": {RESOURCE: "1"}, "requests": {RESOURCE: "1"}}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "vf-user", "namespace": "devpool", "labels": {"devpool": "yes"},
            "annotations": {"k8s.v1.cni.cncf.io/networks": "vf-net"}}, "spec": pod_spec}
        c.apply([{"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                  "metadata": {"name": "vf-net", "namespace": "devpool",
                               "annotations": {"k8s.v1.cni.cncf.io/resourceName": RESOURCE}},
                  "spec": {"config": json.dumps(config)}}, pod])
        assert wait_for(lambda: running(c, "devpool", "devpool=yes"), timeout=180), c.daemon_log.read_text()[-4000:]
        (assigned,) = plugin.allocated
        assert len(assigned) == 1 and assigned[0] in ("nic-a", "nic-b")
        told = [json.loads(line) for line in calls.read_text().splitlines()]
        assert told and told[0]["deviceID"] == assigned[0], "the delegate is told the device the kubelet assigned"
        status = network_status(c, "devpool", "vf-user")
        assert status[1]["name"] == "devpool/vf-net" and status[1]["ips"][0].startswith("198.18.99.")
        info = json.loads(next((work / "devinfo").glob(f"plexus.test-nic-{assigned[0]}-device.json")).read_text())
        assert status[1]["device-info"] == info, status
        c.kubectl("delete", "namespace", "devpool", "--wait=true", "--timeout=120s")
        assert wait_for(lambda: not attachments(c), timeout=60), attachments(c)
    finally:
        plugin.stop()
        RECORDER.unlink(missing_ok=True)

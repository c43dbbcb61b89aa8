"""The packaged manifests running Plexus on the real node tier, from the image ``make image`` builds:
the DaemonSet's init container installs the frozen plugin and the conflist, its daemon becomes Ready
through the probes, the controller Deployment hands out the VLAN ID, and a pod created with kubectl gets
its network from the daemon in the DaemonSet's pod.

What the test changes in the manifests, and why: every hostPath moves under a private directory (the
node tier shares the host's filesystem, which may hold a real install), the API server is reached on
127.0.0.1 (the node tier has no Service network: no kube-proxy), and the controller runs with the node's
network and one replica (for the same reason). Its webhook configuration is applied as shipped: the node
tier's API server calls webhooks at their Service's endpoints (--enable-aggregator-routing), here the
controller's node address, so reviews go through the packaged Service and the caBundle the controller
writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import FROZEN, REPO
from tests.netns.guest import guest
from tests.node.test_node_tier import (
    BUSYBOX,
    NODE,
    NodeCluster,
    build_node_tier,
    pod_spec,
    seed_objects,
    spec_annotations,
    start_node_tier,
    wait_for,
    write_chained_conflist,
)

K8S = REPO / "packaging" / "k8s"
IMAGE = REPO / "dist" / "plexus-image.tar"
API_PORT = "16443"  # up-node.sh's default


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def api_env() -> list[dict[str, str]]:
    return [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": API_PORT}]


def daemonset(root: Path) -> list[dict[str, Any]]:
    out = docs("daemonset.yaml")
    (ds,) = [d for d in out if d["kind"] == "DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    for vol in spec["volumes"]:
        if "hostPath" in vol and vol["name"] != "netns":  # pods' namespaces are where containerd makes them
            vol["hostPath"]["path"] = f"{root}{vol['hostPath']['path']}"
    (init,) = spec["initContainers"]
    # the bundle's place on the host moves too: the install script mounts it at /host$HOST_PREFIX and
    # points the plugin's symlink at $HOST_PREFIX
    init["env"] = [{"name": "HOST_PREFIX", "value": f"{root}/opt/plexus"}]
    for m in init["volumeMounts"]:
        if m["name"] == "plexus-prefix":
            m["mountPath"] = f"/host{root}/opt/plexus"
    (daemon,) = spec["containers"]
    daemon["env"] = daemon.get("env", []) + api_env()
    return out


def controller() -> list[dict[str, Any]]:
    out = docs("controller.yaml")
    (dep,) = [d for d in out if d["kind"] == "Deployment"]
    dep["spec"]["replicas"] = 1
    spec = dep["spec"]["template"]["spec"]
    spec["hostNetwork"] = True
    (c,) = spec["containers"]
    c["env"] = api_env()
    return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[NodeCluster, Path]]:
    build_node_tier()
    if not IMAGE.exists() or not FROZEN.exists():
        pytest.fail("the image is missing: make image")
    work = Path(tempfile.mkdtemp(prefix="plexus-ds-"))
    root = work / "host"
    data = work / "node"
    for d in ("opt/cni/bin", "etc/cni/net.d", "run/plexus", "var/log/plexus"):
        (root / d).mkdir(parents=True)
    # what an operator adds to the conflist of the cluster's network plugin (daemonset.yaml says so); the
    # plugin itself is the DaemonSet's to install
    conflist = write_chained_conflist(work / "chain.conflist", f"{root}/run/plexus/plexus.sock",
                                      f"{root}/var/log/plexus/plexus.log")
    env = dict(os.environ, K8S_NODE_CNI_CONFLIST=str(conflist), K8S_NODE_CNI_BIN_DIR=f"{root}/opt/cni/bin",
               K8S_NODE_CNI_CONF_DIR=f"{root}/etc/cni/net.d", K8S_NODE_APISERVER_PORT=API_PORT)
    c = NodeCluster(data, work / "no-host-daemon.log")
    try:
        start_node_tier(data, env)
        imported = subprocess.run([str(data / "bin" / "ctr"), "images", "import", "--snapshotter", "overlayfs",
                                   str(IMAGE)], capture_output=True, text=True)
        assert imported.returncode == 0, imported.stderr
        c.kubectl("apply", "-f", str(K8S / "crds.yaml"), "-f", str(K8S / "rbac.yaml"))
        c.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        c.apply(controller() + daemonset(root))
        yield c, root
    finally:
        # the app pods first, while the daemon still runs to answer their DELs
        subprocess.run([str(data / "bin" / "kubectl"), "delete", "namespace", "my-namespace", "--wait=true",
                        "--timeout=120s"], capture_output=True, text=True)
        subprocess.run(["bash", str(REPO / "scripts/k8s/down-node.sh"), str(data), "--purge"], capture_output=True,
                       text=True, env=env)
        shutil.rmtree(work, ignore_errors=True)


def ready(c: NodeCluster, kind: str, name: str) -> bool:
    obj = c.get(kind, "-n", "plexus-system", name)
    st = obj.get("status") or {}
    if kind == "daemonset":
        return bool(st.get("numberReady") == st.get("desiredNumberScheduled") == 1)
    return bool(st.get("readyReplicas") == 1)


def describe(c: NodeCluster) -> str:
    pods = c.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
    events = c.kubectl("get", "events", "-n", "plexus-system", check=False).stdout
    logs = c.kubectl("logs", "-n", "plexus-system", "daemonset/plexus-node", "--all-containers", "--tail=40",
                     check=False)
    return f"{pods}\n{events[-3000:]}\n{logs.stdout[-3000:]}{logs.stderr[-500:]}"


@pytest.mark.netns
def test_the_daemonset_installs_plexus_and_serves_pods(cluster: tuple[NodeCluster, Path]) -> None:
    c, root = cluster
    assert wait_for(lambda: ready(c, "daemonset", "plexus-node"), timeout=180), describe(c)
    assert wait_for(lambda: ready(c, "deployment", "plexus-controller"), timeout=120), describe(c)
    # what the init container put on the node: the bundle, the plugin's link to it, the conflist
    plugin = root / "opt/cni/bin/plexus"
    assert plugin.is_symlink() and os.readlink(plugin) == f"{root}/opt/plexus/plexus/plexus"
    version = subprocess.run([str(plugin)], input=b"{}", env={"CNI_COMMAND": "VERSION"}, capture_output=True)
    assert json.loads(version.stdout)["supportedVersions"][-1] == "1.1.0"
    shipped = json.loads((root / "etc/cni/net.d/10-plexus.conflist").read_text())
    assert shipped == json.loads((REPO / "packaging/10-plexus.conflist").read_text())
    # the daemon's socket on the node, answering the same probe the kubelet runs
    probe = subprocess.run([str(plugin), "--probe", "readyz", f"{root}/run/plexus/plexus.sock"], capture_output=True,
                           text=True)
    assert probe.returncode == 0, probe.stdout

    # the shipped webhook configuration, with the CA the controller wrote into it, reached through its Service:
    # the seed's objects are admitted, what the CRD schema cannot refuse is refused
    assert wait_for(lambda: all(w["clientConfig"].get("caBundle") for w in
                                c.get("validatingwebhookconfiguration", "plexus")["webhooks"]), timeout=60)
    # the caBundle kubectl shows may not be in the API server's webhook client yet: until it is, calling the webhook
    # fails ("failed calling webhook"; the objects' policy is Fail, the pods' Ignore), so the first review waited
    # for is a refusal, before the seed's objects (reviewed too) go in
    c.apply(seed_objects()[:1])  # its namespace (not reviewed)
    outside = {"apiVersion": "network.deckhouse.io/v1alpha1", "kind": "IPAddressPool",
               "metadata": {"name": "outside", "namespace": "my-namespace"},
               "spec": {"pools": [{"network": "198.18.20.0/24", "ranges": ["198.18.21.10-198.18.21.20"]}]}}
    tried: list[subprocess.CompletedProcess[str]] = []

    def reviewed() -> bool:
        tried[:] = [c.kubectl("apply", "-f", "-", stdin=json.dumps(outside), check=False)]
        return tried[0].returncode == 0 or "failed calling webhook" not in tried[0].stderr

    wait_for(reviewed, timeout=60)
    (refused,) = tried
    assert refused.returncode != 0, refused.stdout
    assert 'admission webhook "objects.plexus.network.deckhouse.io" denied the request' in refused.stderr, \
        refused.stderr
    assert "spec.pools[0].ranges[0]" in refused.stderr
    c.apply(seed_objects())
    assert wait_for(lambda: (c.get("network", "-n", "my-namespace", "my-network").get("status") or {}).get("vlanID"),
                    timeout=60), "the controller Deployment assigns the VLAN ID"
    bad_mac = [{"type": "Network", "name": "my-network", "ifName": "net1", "mac": "01:00:5e:00:00:01"}]
    refused = c.kubectl("apply", "-f", "-", check=False, stdin=json.dumps(
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "bad-mac", "namespace": "my-namespace", "annotations": spec_annotations(bad_mac)},
         "spec": {**pod_spec(bad_mac), "nodeName": NODE}}))
    assert refused.returncode != 0, refused.stdout
    assert 'admission webhook "pods.plexus.network.deckhouse.io" denied the request' in refused.stderr
    assert "networks-spec[0].mac" in refused.stderr
    spec = [{"type": "Network", "name": "my-network", "ifName": "net1", "mac": "aa:bb:cc:dd:ee:02"}]
    c.apply([{"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": "app", "namespace": "my-namespace", "annotations": spec_annotations(spec)},
              "spec": {**pod_spec(spec), "nodeName": NODE}}])
    running = wait_for(lambda: c.get("pod", "-n", "my-namespace", "app")["status"].get("phase") == "Running")
    assert running, describe(c)
    status = json.loads(c.get("pod", "-n", "my-namespace", "app")["metadata"]["annotations"]
                        ["network.deckhouse.io/networks-status"])
    assert status[0]["ifName"] == "net1" and status[0]["mac"] == "aa:bb:cc:dd:ee:02"
    address = status[0]["ipAddressConfigs"][0]["address"]
    out = c.kubectl("exec", "-n", "my-namespace", "app", "--", "ip", "-4", "-o", "addr", "show", "net1")
    assert f"{address}/24" in out.stdout
    assert BUSYBOX in json.dumps(c.get("pod", "-n", "my-namespace", "app")["spec"])

    # a VM's pod: its TAP's guest takes its address over DHCP from the frozen daemon of the image (dpkt in the bundle)
    vm_spec = [{"type": "Network", "name": "my-network", "ifName": "tap0", "interfaceType": "tap",
                "mac": "02:00:00:00:00:0a", "ipAssignmentMode": "DHCP"}]
    c.apply([{"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": "vm", "namespace": "my-namespace", "annotations": spec_annotations(vm_spec)},
              "spec": {**pod_spec(vm_spec), "nodeName": NODE}}])
    assert wait_for(lambda: c.get("pod", "-n", "my-namespace", "vm")["status"].get("phase") == "Running"), describe(c)
    vm_status = json.loads(c.get("pod", "-n", "my-namespace", "vm")["metadata"]["annotations"]
                           ["network.deckhouse.io/networks-status"])
    vm_address = vm_status[0]["ipAddressConfigs"][0]["address"]
    with guest(pod_netns(c, "vm"), "tap0", "02:00:00:00:00:0a", root / "guest") as vm:
        code, lease = vm.dhcp()
        assert code == 0 and lease["ip"] == vm_address, (code, lease, describe(c))
    c.kubectl("delete", "pod", "-n", "my-namespace", "vm", "--wait=true", "--timeout=120s")

    c.kubectl("delete", "pod", "-n", "my-namespace", "app", "--wait=true", "--timeout=120s")
    assert wait_for(lambda: not [x for x in c.get("ipaddresslease")["items"] if x["spec"]["ip"] == address],
                    timeout=90), "the address comes back after the pod (and its quarantine) are gone"


def pod_netns(c: NodeCluster, name: str) -> str:
    """The namespace of a running pod's container, as its process sees it (a path ``setns`` opens)."""
    cid = c.get("pod", "-n", "my-namespace", name)["status"]["containerStatuses"][0]["containerID"].split("://")[-1]
    tasks = subprocess.run([str(c.data / "bin" / "ctr"), "tasks", "ls"], capture_output=True, text=True,
                           check=True).stdout
    (pid,) = [line.split()[1] for line in tasks.splitlines()[1:] if line.split() and line.split()[0] == cid]
    return f"/proc/{pid}/ns/net"

"""The node tier: a real single-node cluster (kubelet, kube-scheduler, containerd 1.6 with runc, in a
network namespace of its own; scripts/k8s/) with Plexus chained after Debian's bridge plugin, exactly
as on a production node: pods created with kubectl get their networks through the frozen plugin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FROZEN, REPO
from tests.conftest import wait_for as shared_wait_for

NODE = "k8s-node-1"
NODE_NETNS = "/run/netns/k8s-node"
GROUP = "network.deckhouse.io/v1alpha1"
BUSYBOX = "localhost/k8s-node/busybox:local"


@dataclass
class NodeCluster:
    data: Path
    daemon_log: Path

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.data / "bin" / "kubectl"), *args], input=stdin, capture_output=True,
                              text=True, check=check, timeout=180)

    def apply(self, docs: list[dict[str, Any]]) -> None:
        res = self.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
                           check=False)
        assert res.returncode == 0, res.stderr

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)


def wait_for(predicate: Callable[[], Any], timeout: float = 120.0, step: float = 1.0) -> Any:
    """The shared poll, with the node tier's longer defaults (pods start in seconds, not milliseconds)."""
    return shared_wait_for(predicate, timeout, step)


def start_node_tier(data: Path, env: dict[str, str]) -> None:
    """scripts/k8s/up-node.sh, with one retry of a failed start (infrastructure, not the product)."""
    for _attempt in range(2):
        up = subprocess.run(["bash", str(REPO / "scripts/k8s/up-node.sh"), str(data)], capture_output=True,
                            text=True, env=env)
        if up.returncode == 0:
            return
        logs = "".join(f"\n--- {p.name}\n" + p.read_text()[-1500:] for p in (data / "logs").glob("*.log"))
        subprocess.run(["bash", str(REPO / "scripts/k8s/down-node.sh"), str(data), "--purge"],
                       capture_output=True, text=True, env=env)
    pytest.fail(f"starting the node tier failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}{logs}")


def build_node_tier() -> None:
    """scripts/k8s/build-node.sh (cached after the first build); root only."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    build = subprocess.run(["bash", str(REPO / "scripts/k8s/build-node.sh")], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.fail(f"building the node tier failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}")


def write_chained_conflist(path: Path, socket: str, log_file: str) -> Path:
    """The cluster network (Debian's bridge) with Plexus chained after it, as on a production node."""
    path.write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "k8s-node-pods",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.18.128.0/20", "gateway": "198.18.128.1"}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "plexus", "socket": socket, "logFile": log_file,
             "capabilities": {"io.kubernetes.cri.pod-annotations": True}},
        ]}))
    return path


@contextmanager
def running_node(write_conflist: Callable[[Path, str, str], Path], crds: tuple[str, ...] = ("crds.yaml",),
                 daemon_args: tuple[str, ...] = ()) -> Iterator[NodeCluster]:
    """The node tier with the CNI configuration ``write_conflist(path, socket, log)`` writes, the CRDs of
    ``packaging/k8s`` named, and plexus-ipamd running in the node's namespace from this checkout."""
    build_node_tier()
    if not FROZEN.exists():
        pytest.fail("the frozen plugin is missing: make build")
    work = Path(tempfile.mkdtemp(prefix="plexus-node-"))
    data = work / "node"
    conflist = write_conflist(work / "plexus.conflist", str(work / "run" / "plexus.sock"), str(work / "plexus.log"))
    link = Path("/opt/cni/bin/plexus")
    made_link = False
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(FROZEN)
        made_link = True
    daemon: subprocess.Popen[bytes] | None = None
    env = dict(os.environ, K8S_NODE_CNI_CONFLIST=str(conflist))
    try:
        start_node_tier(data, env)
        c = NodeCluster(data, work / "ipamd.log")
        for crd in crds:
            c.kubectl("apply", "-f", str(REPO / "packaging" / "k8s" / crd))
        c.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        c.kubectl("create", "namespace", "plexus-system", check=False)
        with open(work / "ipamd.stderr", "wb") as err:
            daemon = subprocess.Popen(
                ["nsenter", f"--net={NODE_NETNS}", sys.executable, "-m", "ipamd",
                 "--kubeconfig", str(data / "admin.kubeconfig"), "--node-name", NODE, "--controller",
                 "--db", str(work / "plexus.db"), "--socket", str(work / "run" / "plexus.sock"),
                 "--grpc-socket", str(work / "run" / "ipam.sock"), "--log-file", str(c.daemon_log),
                 "--reconcile-interval", "2",
                 "--pod-resources-socket", str(data / "kubelet" / "root" / "pod-resources" / "kubelet.sock"),
                 "--device-info-dir", str(work / "devinfo"), *daemon_args],
                cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL, stderr=err)
        assert wait_for(lambda: c.daemon_log.exists() and "ready" in c.daemon_log.read_text(), timeout=60)
        yield c
    finally:
        # pods are torn down through the CRI (CNI DEL) while the daemon still runs
        subprocess.run(["bash", str(REPO / "scripts/k8s/down-node.sh"), str(data), "--purge"], capture_output=True,
                       text=True, env=env)
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
        if made_link:
            link.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def node_cluster() -> Iterator[NodeCluster]:
    with running_node(write_chained_conflist) as c:
        yield c


def seed_objects() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "my-namespace"}},
        {"apiVersion": GROUP, "kind": "NetworkClass", "metadata": {"name": "my-network-class"},
         "spec": {"vlan": {"idPool": ["600-800"]}}},
        {"apiVersion": GROUP, "kind": "IPAddressPool", "metadata": {"name": "my-net-pool", "namespace": "my-namespace"},
         "spec": {"leaseTTL": "2s", "pools": [{"network": "198.18.10.0/24", "ranges": ["198.18.10.50-198.18.10.200"]}]}},
        {"apiVersion": GROUP, "kind": "Network", "metadata": {"name": "my-network", "namespace": "my-namespace"},
         "spec": {"networkClass": "my-network-class",
                  "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "my-net-pool"}}}},
        {"apiVersion": GROUP, "kind": "IPAddress", "metadata": {"name": "web-0-net1", "namespace": "my-namespace"},
         "spec": {"networkRef": {"kind": "Network", "name": "my-network"}, "type": "Static",
                  "static": {"ip": "198.18.10.60"}}},
    ]


def pod_spec(spec: list[dict[str, Any]]) -> dict[str, Any]:
    return {"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": BUSYBOX, "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]}


def spec_annotations(spec: list[dict[str, Any]]) -> dict[str, str]:
    return {"network.deckhouse.io/networks-spec": json.dumps(spec)}


def net1_address(c: NodeCluster, name: str) -> str:
    out = c.kubectl("exec", "-n", "my-namespace", name, "--", "ip", "-4", "-o", "addr", "show", "net1", check=False)
    return out.stdout.split()[3] if out.returncode == 0 and out.stdout.split() else ""


@pytest.mark.netns
def test_pod_gets_its_networks_and_gives_them_back(node_cluster: NodeCluster) -> None:
    c = node_cluster
    c.apply(seed_objects())
    spec = [{"type": "Network", "name": "my-network", "ifName": "net1", "mac": "aa:bb:cc:dd:ee:01"}]
    c.apply([{"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": "app", "namespace": "my-namespace", "annotations": spec_annotations(spec)},
              "spec": pod_spec(spec)}])
    running = wait_for(lambda: c.get("pod", "-n", "my-namespace", "app")["status"].get("phase") == "Running")
    assert running, c.daemon_log.read_text()[-3000:]
    pod = c.get("pod", "-n", "my-namespace", "app")
    status = json.loads(pod["metadata"]["annotations"]["network.deckhouse.io/networks-status"])
    assert status[0]["ifName"] == "net1" and status[0]["mac"] == "aa:bb:cc:dd:ee:01"
    address = status[0]["ipAddressConfigs"][0]["address"]
    assert net1_address(c, "app") == f"{address}/24"
    assert pod["status"]["podIP"].startswith("198.18.128."), "eth0 from the chained bridge plugin"

    c.kubectl("delete", "pod", "-n", "my-namespace", "app", "--wait=true", "--timeout=120s")
    log = c.daemon_log.read_text()
    dels = [line for line in log.splitlines() if "CNI DEL" in line and "pod=my-namespace/app" in line]
    assert len(dels) >= 2 and all(" ok" in line for line in dels), dels
    assert wait_for(lambda: not [x for x in c.get("ipaddresslease")["items"] if x["spec"]["ip"] == address],
                    timeout=90), "the address comes back after the pod (and its quarantine) are gone"


@pytest.mark.netns
def test_statefulset_pod_recreated_keeps_its_named_ipaddress(node_cluster: NodeCluster) -> None:
    c = node_cluster
    c.apply(seed_objects())
    spec = [{"type": "Network", "name": "my-network", "ifName": "net1", "ipAddressNames": ["web-0-net1"]}]
    c.apply([{"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web", "namespace": "my-namespace"},
              "spec": {"serviceName": "web", "replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                       "template": {"metadata": {"labels": {"app": "web"}, "annotations": spec_annotations(spec)},
                                    "spec": pod_spec(spec)}}}])

    def running_uid() -> str:
        try:
            p = c.get("pod", "-n", "my-namespace", "web-0")
        except subprocess.CalledProcessError:
            return ""
        ready = p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        return p["metadata"]["uid"] if ready else ""

    first = wait_for(running_uid)
    assert first, c.daemon_log.read_text()[-3000:]
    assert net1_address(c, "web-0") == "198.18.10.60/24"
    c.kubectl("delete", "pod", "-n", "my-namespace", "web-0", "--wait=true", "--timeout=120s")
    second = wait_for(lambda: (uid := running_uid()) and uid != first and uid)
    assert second, c.daemon_log.read_text()[-3000:]
    assert wait_for(lambda: net1_address(c, "web-0") == "198.18.10.60/24", timeout=30)
    c.kubectl("delete", "statefulset", "-n", "my-namespace", "web", "--wait=true")


@pytest.mark.netns
def test_default_network_and_a_service_over_it_on_a_real_node(node_cluster: NodeCluster) -> None:
    """DANM's features through kubelet and containerd: pods without any annotation get their namespace's default
    network; a headless Service over it publishes the selected pod's address there, and another pod reaches it."""
    c = node_cluster
    c.apply(seed_objects())
    c.apply([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "danm-ns"}},
        {"apiVersion": GROUP, "kind": "IPAddressPool", "metadata": {"name": "dflt-pool", "namespace": "danm-ns"},
         "spec": {"leaseTTL": "2s", "pools": [{"network": "198.18.12.0/24"}]}},
        {"apiVersion": GROUP, "kind": "Network",
         "metadata": {"name": "dflt", "namespace": "danm-ns", "labels": {"network.deckhouse.io/default-network": "true"}},
         "spec": {"networkClass": "my-network-class", "interfacePrefix": "ext",
                  "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "dflt-pool"}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "db", "namespace": "danm-ns",
                      "annotations": {"network.deckhouse.io/service-network": "dflt",
                                      "network.deckhouse.io/service-selector": "app=db"}},
         "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}},
    ])
    for name, labels in (("db", {"app": "db"}), ("client", {"app": "client"})):
        c.apply([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "danm-ns", "labels": labels},
                  "spec": pod_spec([])}])
    def running() -> bool:
        return all(c.get("pod", "-n", "danm-ns", n)["status"].get("phase") == "Running" for n in ("db", "client"))

    assert wait_for(running), c.daemon_log.read_text()[-3000:]

    def ext0(name: str) -> str:
        out = c.kubectl("exec", "-n", "danm-ns", name, "--", "ip", "-4", "-o", "addr", "show", "ext0", check=False)
        return out.stdout.split()[3].split("/")[0] if out.returncode == 0 and out.stdout.split() else ""

    server = ext0("db")
    assert server.startswith("198.18.12.") and ext0("client").startswith("198.18.12."), \
        "no annotation: the namespace's default network, named by its prefix"

    def published() -> list[str]:
        found = c.kubectl("get", "endpointslice", "-n", "danm-ns", "db-plexus", "-o", "json", check=False)
        if found.returncode:
            return []
        return [e["addresses"][0] for e in json.loads(found.stdout)["endpoints"] or []
                if e["conditions"].get("ready")]

    assert wait_for(lambda: published() == [server], timeout=60), (published(), c.daemon_log.read_text()[-3000:])
    ping = c.kubectl("exec", "-n", "danm-ns", "client", "--", "ping", "-c", "1", "-W", "3", published()[0],
                     check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    c.kubectl("delete", "namespace", "danm-ns", "--wait=true", "--timeout=120s")

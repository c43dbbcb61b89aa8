"""A test node: its own network namespace with plexus-ipamd running in it, and pods beside it.

Everything a ``Node`` makes lives in namespaces it created (``plxt-*``): the node namespace holds
the daemon's bridges and host-side veths, each pod gets its own. ``close()`` kills the daemon and
deletes every namespace, which takes every link with it, even when the test failed half-way.
Packets only ever travel between these namespaces (addresses in 198.18.0.0/15).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO, shim_command

NS_PREFIX = "plxt-"


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def netns_add(name: str) -> str:
    run("ip", "netns", "add", name)
    return f"/run/netns/{name}"


def netns_del(name: str) -> None:
    run("ip", "netns", "del", name, check=False)


def links_in(netns_path: str | None) -> dict[str, dict[str, Any]]:
    """Every link of a namespace: name → {mac, up, kind, master, addresses}."""
    from ipamd.netlink.netns import netlink_at

    out: dict[str, dict[str, Any]] = {}
    with netlink_at(netns_path) as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            idx = link["index"]
            out[link.get_attr("IFLA_IFNAME")] = {
                "mac": link.get_attr("IFLA_ADDRESS"),
                "up": bool(link["flags"] & 1),
                "kind": info.get_attr("IFLA_INFO_KIND") if info else "",
                "master": names.get(link.get_attr("IFLA_MASTER") or -1, "?"),
                "addresses": [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx, family=2)],
                "routes": sorted(
                    f"{r.get_attr('RTA_DST')}/{r['dst_len']} via {r.get_attr('RTA_GATEWAY')}"
                    for r in ipr.get_routes(family=2, oif=idx) if r.get_attr("RTA_GATEWAY")
                ),
            }
    return out


class CniResult:
    def __init__(self, proc: subprocess.CompletedProcess[bytes], elapsed: float) -> None:
        self.rc = proc.returncode
        self.stdout = proc.stdout.decode()
        self.stderr = proc.stderr.decode()
        self.elapsed = elapsed
        try:
            self.json: Any = json.loads(self.stdout) if self.stdout.strip() else None
        except ValueError:
            self.json = None

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def code(self) -> int | None:
        return self.json.get("code") if isinstance(self.json, dict) and self.rc != 0 else None

    def __repr__(self) -> str:
        return f"CniResult(rc={self.rc}, stdout={self.stdout!r}, stderr={self.stderr[-500:]!r})"


class Node:
    """A node namespace with a running plexus-ipamd, and the pods tests make on it."""

    def __init__(self, name: str | None = None, reconcile_interval: float = 1.0, kubeconfig: str = "",
                 node_name: str = "", extra_args: tuple[str, ...] = ()) -> None:
        self.extra_args = list(extra_args)
        self.kubeconfig = kubeconfig  # Kubernetes mode: the daemon runs beside the API server, links in our netns
        self.node_name = node_name
        self.id = uuid.uuid4().hex[:6]
        self.name = name or f"{NS_PREFIX}node-{self.id}"
        self.dir = Path(tempfile.mkdtemp(prefix="plexus-test-"))
        self.objects = self.dir / "objects"
        self.objects.mkdir()
        self.db = self.dir / "plexus.db"
        self.socket = self.dir / "run" / "plexus.sock"
        self.ipam_socket = self.dir / "run" / "plexus-ipam.sock"  # the daemon's default: beside --socket
        self.grpc_socket = self.dir / "run" / "ipam.sock"
        self.log = self.dir / "ipamd.log"
        self.reconcile_interval = reconcile_interval
        self.netns = netns_add(self.name)
        self.pods: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._set_lo_up(self.netns)

    @staticmethod
    def _set_lo_up(path: str) -> None:
        from ipamd.netlink.netns import netlink_at

        with netlink_at(path) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

    # -- daemon ---------------------------------------------------------------------------------
    def start(self, env: dict[str, str] | None = None) -> None:
        cmd = [
            sys.executable, "-m", "ipamd",
            "--objects-dir", str(self.objects), "--db", str(self.db), "--socket", str(self.socket),
            "--grpc-socket", str(self.grpc_socket), "--log-file", str(self.log),
            "--reconcile-interval", str(self.reconcile_interval), "--log-level", "debug",
        ]
        if self.kubeconfig:
            cmd += ["--kubeconfig", self.kubeconfig, "--node-name", self.node_name, "--node-netns", self.netns]
        else:
            cmd = ["nsenter", f"--net={self.netns}"] + cmd
        cmd += self.extra_args
        full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
        for stale in (self.socket, self.ipam_socket, self.grpc_socket):  # a killed daemon leaves its sockets behind
            stale.unlink(missing_ok=True)
        with open(self.dir / "ipamd.stderr", "ab") as err:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"plexus-ipamd exited: {(self.dir / 'ipamd.stderr').read_text()}\n{self.log_text()}")
            if self.grpc_socket.exists() and self.socket.exists() and self.ipam_socket.exists():
                return
            time.sleep(0.05)
        raise RuntimeError(f"plexus-ipamd did not start:\n{self.log_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def wait_exit(self, timeout: float = 10) -> int | None:
        """Wait for the daemon to die by itself (fault injection); its exit status."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else "(no log)"

    def close(self) -> None:
        self.kill()
        for pod in self.pods:
            netns_del(pod)
        netns_del(self.name)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- objects ----------------------------------------------------------------------------------
    def apply(self, manifests: str | list[dict[str, Any]], sync: bool = True) -> list[Any]:
        from ipamd.sources import objectdir

        docs = list(yaml.safe_load_all(manifests)) if isinstance(manifests, str) else manifests
        done, bad = objectdir.apply(str(self.objects), [("test", d) for d in docs if d])
        assert not bad, bad
        return self.sync() if sync and self.proc else []

    def delete(self, manifests: str | list[dict[str, Any]]) -> None:
        from ipamd.sources import objectdir

        docs = list(yaml.safe_load_all(manifests)) if isinstance(manifests, str) else manifests
        objectdir.delete(str(self.objects), [("test", d) for d in docs if d])
        if self.proc:
            self.sync()

    def grpc(self, method: str, request: Any) -> Any:
        from ipamd.cli.ctl import Client

        return Client(str(self.grpc_socket)).call(method, request)

    def sync(self) -> list[Any]:
        from ipamd.api import ipam_pb2 as pb

        return list(self.grpc("Sync", pb.SyncRequest()).problems)

    def leases(self) -> list[Any]:
        from ipamd.api import ipam_pb2 as pb

        return list(self.grpc("ListLeases", pb.ListLeasesRequest()).leases)

    def pools(self) -> dict[str, Any]:
        from ipamd.api import ipam_pb2 as pb

        return {p.pool: p for p in self.grpc("ListPools", pb.ListPoolsRequest()).pools}

    def ipaddresses(self) -> dict[str, dict[str, Any]]:
        from ipamd.api import ipam_pb2 as pb

        return {f"{a.namespace}/{a.name}": {"type": a.type, **json.loads(a.status_json)}
                for a in self.grpc("ListIPAddresses", pb.ListIPAddressesRequest()).addresses}

    def pod_status(self, namespace: str, name: str) -> list[dict[str, Any]] | None:
        from ipamd.api import ipam_pb2 as pb

        pods = self.grpc("ListPods", pb.ListPodsRequest(namespace=namespace, name=name)).pods
        return json.loads(pods[0].networks_status_json) if pods else None

    # -- pods and CNI -----------------------------------------------------------------------------
    def pod_netns(self, name: str) -> str:
        ns = f"{NS_PREFIX}{self.id}-{name}"[:60]
        self.pods.append(ns)
        path = netns_add(ns)
        self._set_lo_up(path)
        return path

    def remove_pod_netns(self, path: str) -> None:
        netns_del(os.path.basename(path))

    def conf(self, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
        return {"cniVersion": version, "name": "plexus-test", "type": "plexus", "socket": str(self.socket),
                "logFile": str(self.dir / "plexus.log"), **extra}

    def cni(self, verb: str, container_id: str = "", netns: str = "", ifname: str = "eth0",
            pod: tuple[str, str] | None = None, conf: dict[str, Any] | bytes | None = None,
            env: dict[str, str] | None = None, timeout: float = 60) -> CniResult:
        """Exec the plugin exactly as a runtime does and return what it printed."""
        e = {"CNI_COMMAND": verb, "CNI_PATH": "/opt/cni/bin", "PATH": os.environ.get("PATH", "")}
        if container_id:
            e["CNI_CONTAINERID"] = container_id
        if netns:
            e["CNI_NETNS"] = netns
        if ifname:
            e["CNI_IFNAME"] = ifname
        if pod:
            e["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod[0]};K8S_POD_NAME={pod[1]}"
        e.update(env or {})
        stdin = conf if isinstance(conf, bytes) else json.dumps(conf if conf is not None else self.conf()).encode()
        started = time.monotonic()
        proc = subprocess.run(shim_command(), input=stdin, env=e, capture_output=True, timeout=timeout, cwd=REPO)
        return CniResult(proc, time.monotonic() - started)

    def host_links(self) -> dict[str, dict[str, Any]]:
        return links_in(self.netns)

    def plx_links(self) -> set[str]:
        """Host-side links Plexus made for pods (veth ends), bridges excluded."""
        return {n for n in self.host_links() if n.startswith("plx") and not n.startswith("plx-")}


def pod_manifest(name: str, spec: list[dict[str, Any]] | str, namespace: str = "my-namespace",
                 uid: str | None = None) -> dict[str, Any]:
    text = spec if isinstance(spec, str) else json.dumps(spec)
    md: dict[str, Any] = {"name": name, "namespace": namespace,
                          "annotations": {"network.deckhouse.io/networks-spec": text}}
    if uid:
        md["uid"] = uid
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": {"containers": [{"name": "app", "image": "x"}]}}


BASE_OBJECTS = """
apiVersion: network.deckhouse.io/v1alpha1
kind: NetworkClass
metadata: {name: test-class}
spec:
  vlan: {idPool: ["600-610"]}
---
apiVersion: network.deckhouse.io/v1alpha1
kind: IPAddressPool
metadata: {name: pool-a, namespace: my-namespace}
spec:
  leaseTTL: 1h
  pools:
    - network: 198.18.10.0/24
      ranges: ["198.18.10.10-198.18.10.19"]
      routes: [{destination: 198.19.10.0/24, via: 198.18.10.1}]
---
apiVersion: network.deckhouse.io/v1alpha1
kind: Network
metadata: {name: net-a, namespace: my-namespace}
spec:
  networkClass: test-class
  ipam: {ipAddressPoolRef: {kind: IPAddressPool, name: pool-a}}
---
apiVersion: network.deckhouse.io/v1alpha1
kind: IPAddressPool
metadata: {name: pool-b, namespace: my-namespace}
spec:
  leaseTTL: 1h
  pools:
    - network: 198.18.11.0/24
---
apiVersion: network.deckhouse.io/v1alpha1
kind: Network
metadata: {name: net-b, namespace: my-namespace}
spec:
  networkClass: test-class
  ipam: {ipAddressPoolRef: {kind: IPAddressPool, name: pool-b}}
---
apiVersion: network.deckhouse.io/v1alpha1
kind: Network
metadata: {name: net-noipam, namespace: my-namespace}
spec:
  networkClass: test-class
"""


def post_cni(node: Node, verb: str, container_id: str, netns: str, pod: tuple[str, str],
             conf: dict[str, Any] | None = None, ifname: str = "eth0") -> tuple[int, Any]:
    """One CNI call straight to the daemon's socket (what the plugin sends), without the exec:
    for long churn runs where the daemon's behaviour, not the plugin's start-up, is under test."""
    from cni.shim import http_post
    from cni.wirejson import dumps, loads

    env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
           "CNI_ARGS": f"K8S_POD_NAMESPACE={pod[0]};K8S_POD_NAME={pod[1]}"}
    status, payload = http_post(str(node.socket), "/v1/cni", dumps({"env": env, "config": conf or node.conf()}).encode(),
                                60)
    return status, loads(payload)

"""The API tier: a real kube-apiserver, kube-controller-manager and etcd (v1.20.2, built from Debian's
sources by scripts/k8s/build-apiserver.sh and cached) on 127.0.0.1, started once per test session
on ports of its own and stopped (purged) at the end."""

from __future__ import annotations

import base64
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, wait_for

CACHE = Path(os.environ.get("PLEXUS_K8S_CACHE", "/var/cache/plexus-test/k8s-apiserver"))


def free_ports(n: int) -> list[str]:
    """Ports nobody listens on now, below the kernel's ephemeral range (32768+), so that no outgoing
    connection can take one between the choice and the daemons' bind; two test runs never collide."""
    chosen: list[str] = []
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(str(port))
        if len(chosen) == n:
            return chosen
    raise RuntimeError("no free ports between 20000 and 32000")


@dataclass
class Cluster:
    data: Path
    kubeconfig: str
    kubectl_bin: str
    ports: dict[str, str]

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.kubectl_bin, "--kubeconfig", self.kubeconfig, *args], input=stdin,
                              capture_output=True, text=True, check=check, timeout=120)

    def apply(self, docs: list[dict[str, Any]] | str) -> None:
        """``kubectl apply``; into a namespace of the same name a test before deleted (``--wait=false``) once it is
        gone: the API server makes nothing in one being terminated."""
        text = docs if isinstance(docs, str) else yaml.safe_dump_all(docs)
        deadline = time.monotonic() + 120
        while True:
            done = self.kubectl("apply", "-f", "-", stdin=text, check=False)
            if done.returncode == 0:
                return
            if "because it is being terminated" not in done.stderr or time.monotonic() > deadline:
                raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
            time.sleep(0.5)

    def requests_served(self) -> dict[str, int]:
        """``apiserver_request_total`` by verb and resource, from the API server's own metrics."""
        import re

        out: dict[str, int] = {}
        for line in self.kubectl("get", "--raw", "/metrics").stdout.splitlines():
            if line.startswith("apiserver_request_total{"):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
                sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
                key = f"{labels.get('verb')} {labels.get('resource')}{sub}"
                out[key] = out.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
        return out

    def get(self, *args: str) -> Any:
        import json

        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)


def start_failure(up: subprocess.CompletedProcess[str], data: Path, ports: dict[str, str]) -> str:
    """What a failed start printed and the tail of every log it left (there may be none yet)."""
    logs = "".join(f"--- {log.name}:\n{log.read_text(errors='replace')[-2000:]}\n"
                   for log in sorted((data / "logs").glob("*.log")))
    return f"=== exit {up.returncode}, ports {ports}\n{up.stdout[-1000:]}{up.stderr[-3000:]}\n{logs}"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    build = subprocess.run(["bash", str(REPO / "scripts/k8s/build-apiserver.sh"), str(CACHE)],
                           capture_output=True, text=True)
    if build.returncode != 0:
        pytest.fail(f"building the test API server failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}")
    data = Path(tempfile.mkdtemp(prefix="plexus-k8s-"))
    failures: list[str] = []
    for _attempt in range(3):  # infrastructure, not the product: retry a start that failed
        ports = dict(zip(("K8S_TEST_APISERVER_PORT", "K8S_TEST_ETCD_PORT", "K8S_TEST_ETCD_PEER_PORT"),
                         free_ports(3), strict=True))
        env = dict(os.environ, **ports)
        up = subprocess.run(["bash", str(REPO / "scripts/k8s/up-apiserver.sh"), str(data), str(CACHE)],
                            capture_output=True, text=True, env=env)
        if up.returncode == 0:
            break
        failures.append(start_failure(up, data, ports))
        subprocess.run(["bash", str(REPO / "scripts/k8s/down-apiserver.sh"), str(data), "--purge"],
                       capture_output=True, text=True, env=env)
        data = Path(tempfile.mkdtemp(prefix="plexus-k8s-"))
    try:
        if up.returncode != 0:
            pytest.fail("starting the test API server failed three times:\n" + "\n".join(failures))
        c = Cluster(data, str(data / "admin.kubeconfig"), str(CACHE / "bin" / "kubectl"), ports)
        c.kubectl("apply", "-f", str(REPO / "packaging/k8s/crds.yaml"), "-f", str(REPO / "packaging/k8s/npwg-crds.yaml"))
        c.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        yield c
    finally:
        subprocess.run(["bash", str(REPO / "scripts/k8s/down-apiserver.sh"), str(data), "--purge"],
                       capture_output=True, text=True, env=env)
        shutil.rmtree(data, ignore_errors=True)


NS = "plexus-system"


def sa_kubeconfig(cluster: Cluster, sa: str, path: Path) -> Path:
    """A kubeconfig with the ServiceAccount's token (1.20: the token controller's Secret), as in a pod."""
    def secret_name() -> str | None:
        names = [s["name"] for s in cluster.get("serviceaccount", "-n", NS, sa).get("secrets") or []]
        return names[0] if names else None

    name = wait_for(secret_name, timeout=60)
    assert name, f"no token Secret for {sa}"
    token = base64.b64decode(cluster.get("secret", "-n", NS, name)["data"]["token"]).decode()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    kc = {"apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
          "users": [{"name": sa, "user": {"token": token}}],
          "contexts": [{"name": sa, "context": {"cluster": admin["clusters"][0]["name"], "user": sa}}],
          "current-context": sa}
    path.write_text(yaml.safe_dump(kc))
    path.chmod(0o600)
    return path


@dataclass
class ControllerProcess:
    """``plexus-ipamd --mode controller`` as the plexus-controller Deployment runs it, with the
    controller ServiceAccount's token, its webhook on 127.0.0.1 (the API server calls it by URL)."""

    kubeconfig: Path
    dir: Path
    webhook_port: int
    health_port: int
    proc: subprocess.Popen[bytes] | None = field(default=None)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}/validate"

    @property
    def log(self) -> Path:
        return self.dir / "controller.log"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def start(self) -> None:
        cmd = [sys.executable, "-m", "ipamd", "--mode", "controller", "--kubeconfig", str(self.kubeconfig),
               "--controller-namespace", NS, "--webhook-address", "127.0.0.1", "--webhook-port", str(self.webhook_port),
               "--webhook-name", "127.0.0.1", "--health-port", str(self.health_port),
               "--log-file", str(self.log), "--log-level", "debug"]
        with open(self.dir / "controller.stderr", "ab") as err:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                                         stdout=subprocess.DEVNULL, stderr=err)
        if not wait_for(lambda: self.ready() or self.proc is None or self.proc.poll() is not None, timeout=60,
                        step=0.2) or not self.ready():
            raise RuntimeError(f"the controller did not become ready:\n{(self.dir / 'controller.stderr').read_text()}"
                               f"\n{self.log.read_text() if self.log.exists() else ''}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stopped (and its Lease handed back) for the time of the block."""
        self.stop()
        try:
            yield
        finally:
            self.start()


@pytest.fixture(scope="session")
def controller(cluster: Cluster) -> Iterator[ControllerProcess]:
    """The cluster's controller, for every test whose Networks need their VLAN ID from it."""
    cluster.kubectl("apply", "-f", str(REPO / "packaging/k8s/rbac.yaml"))
    work = Path(tempfile.mkdtemp(prefix="plexus-controller-"))
    webhook, health = (int(p) for p in free_ports(2))
    proc = ControllerProcess(sa_kubeconfig(cluster, "plexus-controller", work / "sa.kubeconfig"), work, webhook, health)
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()
        shutil.rmtree(work, ignore_errors=True)


class Relay:
    """127.0.0.1:port → the API server, until told to hang (accept, never answer) or to refuse."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode = "relay"
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _keep(self, sock: socket.socket) -> bool:
        """Track a socket for closing, or close it now if the relay already refuses (an accept racing refuse())."""
        with self.lock:
            if self.mode != "refuse":
                self.sockets.append(sock)
                return True
        sock.close()
        return False

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if not self._keep(conn):
                return
            if self.mode == "hang":
                continue  # kept open, never answered
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                continue
            if not self._keep(upstream):
                return
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.mode == "relay":
                    dst.sendall(data)  # when hung: read and dropped, so nothing ever answers
        except OSError:
            pass

    def hang(self) -> None:
        self.mode = "hang"

    def refuse(self) -> None:
        with self.lock:
            self.mode = "refuse"
            sockets, self.sockets = self.sockets, []
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept(); close() alone leaves it listening
        except OSError:
            pass
        self.listener.close()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def resume(self) -> None:
        """The API server is reachable again (after ``refuse``), on the same port."""
        self.listener = socket.create_server(("127.0.0.1", self.port))
        with self.lock:
            self.mode = "relay"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.refuse()


@pytest.fixture
def relay(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[Relay, Path]]:
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    server = config["clusters"][0]["cluster"]["server"]
    host, port = server.removeprefix("https://").rsplit(":", 1)
    r = Relay((host, int(port)))
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{r.port}"
    kubeconfig = tmp_path / "relayed.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    try:
        yield r, kubeconfig
    finally:
        r.close()

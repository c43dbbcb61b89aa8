"""The API tier: a real kube-apiserver, kube-controller-manager and etcd (v1.20.2, built from Debian's
sources by scripts/k8s/build-apiserver.sh and cached) on 127.0.0.1, started once per test session
on ports of its own and stopped (purged) at the end."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

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
        text = docs if isinstance(docs, str) else yaml.safe_dump_all(docs)
        self.kubectl("apply", "-f", "-", stdin=text)

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


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    build = subprocess.run(["bash", str(REPO / "scripts/k8s/build-apiserver.sh"), str(CACHE)],
                           capture_output=True, text=True)
    if build.returncode != 0:
        pytest.fail(f"building the test API server failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}")
    data = Path(tempfile.mkdtemp(prefix="plexus-k8s-"))
    for _attempt in range(3):  # infrastructure, not the product: retry a start that failed
        ports = dict(zip(("K8S_TEST_APISERVER_PORT", "K8S_TEST_ETCD_PORT", "K8S_TEST_ETCD_PEER_PORT"),
                         free_ports(3), strict=True))
        env = dict(os.environ, **ports)
        up = subprocess.run(["bash", str(REPO / "scripts/k8s/up-apiserver.sh"), str(data), str(CACHE)],
                            capture_output=True, text=True, env=env)
        if up.returncode == 0:
            break
        failed_log = (data / "logs" / "kube-apiserver.log").read_text()[-2000:] if (data / "logs").exists() else ""
        subprocess.run(["bash", str(REPO / "scripts/k8s/down-apiserver.sh"), str(data), "--purge"],
                       capture_output=True, text=True, env=env)
        data = Path(tempfile.mkdtemp(prefix="plexus-k8s-"))
    try:
        if up.returncode != 0:
            pytest.fail(f"starting the test API server failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}\n"
                        f"kube-apiserver.log:\n{failed_log}")
        c = Cluster(data, str(data / "admin.kubeconfig"), str(CACHE / "bin" / "kubectl"), ports)
        c.kubectl("apply", "-f", str(REPO / "packaging/k8s/crds.yaml"))
        c.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        yield c
    finally:
        subprocess.run(["bash", str(REPO / "scripts/k8s/down-apiserver.sh"), str(data), "--purge"],
                       capture_output=True, text=True, env=env)
        shutil.rmtree(data, ignore_errors=True)

"""Every process stops cleanly within its grace period whatever the API server does: unreachable (connections
refused) or hung (connections accepted, never answered). A TCP relay between the process and the real API
server is switched to either mode before SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, wait_for
from tests.harness import Node
from tests.kube.conftest import Cluster, Relay

CONTROLLER_GRACE_S = 20  # packaging/k8s/controller.yaml terminationGracePeriodSeconds
NODE_GRACE_S = 30  # packaging/k8s/daemonset.yaml


def stop_and_time(proc: subprocess.Popen[bytes], grace: float) -> tuple[int | None, float]:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = proc.wait(grace + 10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        code = None
    return code, time.monotonic() - started


@pytest.mark.parametrize("outage", ["hang", "refuse"])
def test_the_controller_stops_within_its_grace_period(cluster: Cluster, relay: tuple[Relay, Path], tmp_path: Path,
                                                      outage: str) -> None:
    r, kubeconfig = relay
    ns = f"shutdown-{outage}"
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])
    log, err = tmp_path / "controller.log", tmp_path / "controller.stderr"
    with open(err, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "ipamd", "--mode", "controller", "--kubeconfig", str(kubeconfig),
                                 "--controller-namespace", ns, "--webhook-port", "0", "--health-port", "0",
                                 "--log-file", str(log)], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                                stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        def holder() -> str:
            return cluster.kubectl("get", "lease", "-n", ns, "plexus-controller", "-o",
                                   "jsonpath={.spec.holderIdentity}", check=False).stdout

        assert wait_for(lambda: str(proc.pid) in holder(), timeout=60), "it became the leader"
        getattr(r, outage)()
        time.sleep(3)  # a round or two against the broken API
        code, took = stop_and_time(proc, CONTROLLER_GRACE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"controller, API {outage}: stopped in {took:.1f} s")
    text = err.read_text() + (log.read_text() if log.exists() else "")
    assert code == 0 and took < CONTROLLER_GRACE_S, (code, took, text[-3000:])
    assert "Traceback" not in text, text[-3000:]


@pytest.mark.netns
@pytest.mark.parametrize("outage", ["hang", "refuse"])
def test_a_node_daemon_stops_within_its_grace_period(cluster: Cluster, relay: tuple[Relay, Path],
                                                     outage: str) -> None:
    r, kubeconfig = relay
    node = Node(kubeconfig=str(kubeconfig), node_name=f"shutdown-{outage}")
    try:
        node.start()
        assert wait_for(lambda: "ready" in node.log_text(), timeout=30)
        getattr(r, outage)()
        time.sleep(3)
        assert node.proc is not None
        code, took = stop_and_time(node.proc, NODE_GRACE_S)
        text = (node.dir / "ipamd.stderr").read_text() + node.log_text()
        assert code == 0 and took < NODE_GRACE_S, (code, took, text[-3000:])
        assert "Traceback" not in text, text[-3000:]
    finally:
        node.close()

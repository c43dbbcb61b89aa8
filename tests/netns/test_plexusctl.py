"""plexusctl end to end: apply from standard input, pod run/status/rm through a conflist, ipam listings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO, shim_command
from tests.harness import Node, links_in, netns_del


def ctl(node: Node, *args: str, stdin: str | None = None, state: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ipamd.cli", "--objects-dir", str(node.objects), "--grpc-socket", str(node.grpc_socket)]
    if state is not None:
        cmd += ["--state-dir", str(state)]
    return subprocess.run(cmd + list(args), input=stdin, capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)


@pytest.fixture
def cni_dirs(node: Node, tmp_path: Path) -> tuple[Path, Path]:
    """A CNI bin dir with `plexus` (the frozen build, or a wrapper) and a conf dir with its conflist."""
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    bin_dir.mkdir()
    conf_dir.mkdir()
    shim = shim_command()
    if len(shim) == 1:
        (bin_dir / "plexus").symlink_to(shim[0])
    else:
        wrapper = bin_dir / "plexus"
        wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {' '.join(shim)}\n")
        wrapper.chmod(0o755)
    conflist = {"cniVersion": "1.1.0", "name": "plexus-ctl-test", "plugins": [
        {"type": "plexus", "socket": str(node.socket), "capabilities": {"io.kubernetes.cri.pod-annotations": True}}]}
    (conf_dir / "10-plexus.conflist").write_text(json.dumps(conflist))
    return bin_dir, conf_dir


@pytest.mark.netns
def test_pod_run_status_rm(node: Node, cni_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    bin_dir, conf_dir = cni_dirs
    name = f"plxt-ctl-{uuid.uuid4().hex[:6]}"
    pod_yaml = tmp_path / "pod.yaml"
    pod_yaml.write_text(f"""
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: my-namespace
  annotations:
    network.deckhouse.io/networks-spec: '[{{"type": "Network", "name": "net-a", "ifName": "net1"}}]'
""")
    state = tmp_path / "state"
    try:
        run = ctl(node, "pod", "run", "-f", str(pod_yaml), "--conf-dir", str(conf_dir), "--cni-path", str(bin_dir),
                  state=state)
        assert run.returncode == 0, run.stderr
        assert "net1" in run.stdout and "198.18.10." in run.stdout
        links = links_in(f"/run/netns/{name}")
        assert links["net1"]["addresses"][0].startswith("198.18.10.")
        assert links["lo"]["up"]

        status = ctl(node, "pod", "status", name, "-n", "my-namespace")
        assert status.returncode == 0, status.stderr
        entries = json.loads(status.stdout)
        assert entries[0]["ifName"] == "net1" and entries[0]["ipAddressConfigs"][0]["address"].startswith("198.18.10.")

        pools = json.loads(ctl(node, "ipam", "pools", "-o", "json").stdout)
        pool_a = next(p for p in pools if p["pool"] == "IPAddressPool/my-namespace/pool-a")
        assert (pool_a["size"], pool_a["used"], pool_a["free"]) == (10, 1, 9)
        leases = json.loads(ctl(node, "ipam", "leases", "-o", "json").stdout)
        assert [lease["pods"] for lease in leases] == [[f"my-namespace/{name}"]]
        table = ctl(node, "ipam", "leases").stdout
        assert table.splitlines()[0].split() == ["ADDRESS", "POOL", "HOLDER", "POD", "STATE", "AGE"]

        rm = ctl(node, "pod", "rm", name, "-n", "my-namespace", "--cni-path", str(bin_dir), state=state)
        assert rm.returncode == 0, rm.stderr
        assert not Path(f"/run/netns/{name}").exists()
        assert not node.plx_links()
        assert ctl(node, "pod", "status", name, "-n", "my-namespace").returncode == 1
    finally:
        netns_del(name)


@pytest.mark.netns
def test_apply_from_stdin_and_invalid_manifest_reported_with_file_and_field(node: Node, tmp_path: Path) -> None:
    good = ctl(node, "apply", "-f", "-", stdin="""
apiVersion: network.deckhouse.io/v1alpha1
kind: IPAddress
metadata: {name: ip-from-stdin, namespace: my-namespace}
spec:
  networkRef: {kind: Network, name: net-b}
  type: Auto
""")
    assert good.returncode == 0, good.stderr
    assert "ipaddress/ip-from-stdin created" in good.stdout
    ips = node.ipaddresses()
    assert ips["my-namespace/ip-from-stdin"]["phase"] == "Allocated", "a user's IPAddress is allocated at once"

    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text("""
apiVersion: network.deckhouse.io/v1alpha1
kind: IPAddressPool
metadata: {name: broken, namespace: my-namespace}
spec:
  pools:
    - network: 198.18.40.0/33
""")
    bad = ctl(node, "apply", "-f", str(bad_file))
    assert bad.returncode == 1
    assert str(bad_file) in bad.stderr and "spec.pools[0].network" in bad.stderr

    # a broken file dropped straight into the objects directory is reported, the rest still served
    (node.objects / "zz-broken.yaml").write_text(bad_file.read_text())
    problems = node.sync()
    assert any("zz-broken.yaml" in p.source and p.field == "spec.pools[0].network" for p in problems)
    assert "my-namespace/ip-from-stdin" in node.ipaddresses()
    warn = ctl(node, "apply", "-f", "-", stdin="""
apiVersion: network.deckhouse.io/v1alpha1
kind: IPAddress
metadata: {name: another, namespace: my-namespace}
spec: {networkRef: {kind: Network, name: net-b}}
""")
    assert warn.returncode == 0 and "zz-broken.yaml" in warn.stderr


@pytest.mark.netns
def test_pod_uid_generated_and_kept_across_restarts(node: Node) -> None:
    (node.objects / "p.yaml").write_text("""
apiVersion: v1
kind: Pod
metadata:
  name: no-uid
  namespace: my-namespace
  annotations:
    network.deckhouse.io/networks-spec: '[{"type": "Network", "name": "net-a"}]'
""")
    node.sync()
    ns = node.pod_netns("no-uid")
    first = node.cni("ADD", "c1", ns, pod=("my-namespace", "no-uid"))
    assert first.ok, first
    node.stop()
    node.start()
    # the same pod after a restart: same UID, so the sandbox DEL and a new ADD keep its Auto address
    assert node.cni("DEL", "c1", ns, pod=("my-namespace", "no-uid")).ok
    second = node.cni("ADD", "c2", ns, pod=("my-namespace", "no-uid"))
    assert second.ok, second
    assert first.json["ips"] == second.json["ips"]


@pytest.mark.netns
def test_pod_run_with_a_nad_through_plexusctls_own_runtime(node: Node, cni_dirs: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    """plexusctl's runtime execs Plexus, which delegates the NAD to Debian's bridge + host-local."""
    bin_dir, conf_dir = cni_dirs
    conflist = json.loads((conf_dir / "10-plexus.conflist").read_text())
    conflist["plugins"][0]["binDir"] = "/usr/lib/cni"
    (conf_dir / "10-plexus.conflist").write_text(json.dumps(conflist))
    data = tmp_path / "host-local"
    config = json.dumps({"cniVersion": "0.3.1", "type": "bridge", "bridge": "ctlbr0",
                         "ipam": {"type": "host-local", "subnet": "198.18.98.0/24", "dataDir": str(data)}})
    applied = ctl(node, "apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "ctl-net", "namespace": "my-namespace"}, "spec": {"config": config}}))
    assert applied.returncode == 0 and "networkattachmentdefinition/ctl-net created" in applied.stdout, applied
    name = f"plxt-ctl-{uuid.uuid4().hex[:6]}"
    pod_yaml = tmp_path / "pod.yaml"
    pod_yaml.write_text(json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "namespace": "my-namespace", "annotations": {"k8s.v1.cni.cncf.io/networks": "ctl-net"}}}))
    state = tmp_path / "state"
    try:
        run = ctl(node, "pod", "run", "-f", str(pod_yaml), "--conf-dir", str(conf_dir), "--cni-path", str(bin_dir),
                  state=state)
        assert run.returncode == 0, (run.stderr, node.log_text()[-2000:])
        assert links_in(f"/run/netns/{name}")["net1"]["addresses"] == ["198.18.98.2/24"]
        status = json.loads(ctl(node, "pod", "status", name, "-n", "my-namespace", "--npwg").stdout)
        assert [(e["name"], e["ips"]) for e in status] == [("my-namespace/ctl-net", ["198.18.98.2"])]
        rm = ctl(node, "pod", "rm", name, "-n", "my-namespace", "--cni-path", str(bin_dir), state=state)
        assert rm.returncode == 0, rm.stderr
        assert not list(data.rglob("198.18.98.*")), "host-local gave the address back"
    finally:
        netns_del(name)

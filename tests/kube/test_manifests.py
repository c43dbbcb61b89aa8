"""The deployment manifests (packaging/k8s/): accepted by a real API server, least privilege for the node
daemon (what it needs is allowed, the rest refused), the DaemonSet giving the daemon what it needs, the
probes and the install script doing what they claim, and the daemon doing a pod's whole life with
nothing but the plexus-node ServiceAccount's token."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import FROZEN, REPO, wait_for
from tests.harness import Node, links_in
from tests.kube.conftest import Cluster, ControllerProcess, sa_kubeconfig

K8S = REPO / "packaging" / "k8s"
CRDS, RBAC, DAEMONSET = K8S / "crds.yaml", K8S / "rbac.yaml", K8S / "daemonset.yaml"
CONTROLLER = K8S / "controller.yaml"
CONFLIST = REPO / "packaging" / "10-plexus.conflist"
NS = "plexus-system"
HEARTBEATS = "plexus-node-lease"  # the nodes' heartbeat Leases
NODE_SA = f"system:serviceaccount:{NS}:plexus-node"
CONTROLLER_SA = f"system:serviceaccount:{NS}:plexus-controller"
GROUP = "network.deckhouse.io"
KINDS = ["networkclasses", "networks", "clusternetworks", "ipaddresspools", "clusteripaddresspools",
         "ipaddresses", "clusteripaddresses", "ipaddressleases"]


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def one(path: Path, kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs(path) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name} in {path.name}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = one(DAEMONSET, "DaemonSet", "plexus-node")["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    spec = pod_spec()
    found: list[dict[str, Any]] = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


def daemon_args() -> Any:
    """The main container's command line, parsed by the daemon's own parser."""
    from ipamd.config import parse_args

    c = container("plexus-ipamd")
    assert c["command"] == ["plexus-ipamd"]
    old = os.environ.get("NODE_NAME")
    os.environ["NODE_NAME"] = "node-from-env"  # what the fieldRef gives it
    try:
        return parse_args(c.get("args", []))
    finally:
        if old is None:
            del os.environ["NODE_NAME"]
        else:
            os.environ["NODE_NAME"] = old


def mounts(c: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """mountPath → (volumeMount, volume) of a container."""
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in c.get("volumeMounts", [])}


def under(path: str, c: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The mount that holds ``path`` in container ``c`` (the longest prefix)."""
    best = max((p for p in mounts(c) if path == p or path.startswith(p.rstrip("/") + "/")), key=len, default=None)
    assert best is not None, f"{path} is on no volume of {c['name']}"
    return mounts(c)[best]


# -- the manifests, read as YAML (no cluster needed) ------------------------------------------------------

def test_daemonset_runs_the_daemon_in_kubernetes_mode_on_the_host_paths() -> None:
    cfg = daemon_args()
    assert cfg.kubeconfig == "in-cluster", "explicit: a missing token fails instead of falling back to local mode"
    assert cfg.node_name == "node-from-env"
    c = container("plexus-ipamd")
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in c["env"]
    conflist = json.loads(CONFLIST.read_text())
    assert cfg.socket == conflist["plugins"][0]["socket"] == "/run/plexus/plexus.sock", "the plugin finds the daemon"
    # every path the daemon writes is a host directory, at the same path as on the host
    for path in (cfg.socket, cfg.grpc_socket, cfg.db):
        m, vol = under(path, c)
        assert "hostPath" in vol, path
        assert vol["hostPath"]["path"] == m["mountPath"], path
        assert not m.get("readOnly"), path
    # pods' network namespaces, which the runtime mounts after the daemon started
    m, vol = mounts(c)["/run/netns"]
    assert vol["hostPath"]["path"] == "/run/netns"
    assert m["mountPropagation"] == "HostToContainer"
    assert c["image"] == "plexus:latest"
    assert c["resources"]["requests"] and c["resources"]["limits"]


def test_daemonset_mounts_what_delegated_plugins_expect() -> None:
    """A NAD's plugins run from the daemon as a runtime would run them: with the node's plugins, configurations,
    host-local's leases and the DHCP daemon's socket at the paths they use on the host."""
    c = container("plexus-ipamd")
    for path, writable in (("/opt/cni/bin", False), ("/etc/cni/net.d", False), ("/etc/cni/multus/net.d", False),
                           ("/var/lib/cni", True), ("/run/cni", True)):
        m, vol = mounts(c)[path]
        assert vol["hostPath"]["path"] == path
        assert bool(m.get("readOnly")) is not writable, path


def test_daemonset_pod_security() -> None:
    spec = pod_spec()
    assert spec["hostNetwork"] is True, "bridges and node-side veths live in the node's namespace"
    assert spec["hostPID"] is False
    assert spec["serviceAccountName"] == "plexus-node"
    assert spec["tolerations"] == [{"operator": "Exists"}], "every taint"
    daemon = container("plexus-ipamd")["securityContext"]
    assert daemon["privileged"] is True
    text = DAEMONSET.read_text()
    assert "NET_ADMIN" in text and "SYS_ADMIN" in text, "the minimum capabilities are documented"
    init = container("install-cni")["securityContext"]
    assert init["privileged"] is False and init["capabilities"]["drop"] == ["ALL"]
    for name in ("plexus-ipamd", "install-cni"):
        for _, vol in mounts(container(name)).values():
            if "hostPath" in vol:
                assert not vol["hostPath"]["path"].startswith("/proc"), "no host /proc: hostPID is off"


def test_probes_use_the_daemon_health_endpoints() -> None:
    c = container("plexus-ipamd")
    cfg = daemon_args()
    for probe, endpoint in (("startupProbe", "healthz"), ("livenessProbe", "healthz"), ("readinessProbe", "readyz")):
        command = c[probe]["exec"]["command"]
        assert command == [BUNDLED_PLUGIN, "--probe", endpoint, cfg.socket], probe
        assert c[probe]["timeoutSeconds"] >= 5, probe


def test_conflist_is_the_packaged_one_with_the_annotations_capability() -> None:
    cm = one(DAEMONSET, "ConfigMap", "plexus-cni-config")
    assert cm["metadata"]["namespace"] == NS
    shipped = json.loads(cm["data"]["10-plexus.conflist"])
    assert shipped == json.loads(CONFLIST.read_text())
    assert shipped["plugins"][-1]["type"] == "plexus"
    assert shipped["plugins"][-1]["capabilities"] == {"io.kubernetes.cri.pod-annotations": True}
    init = container("install-cni")
    m, vol = under("/etc/plexus/cni/10-plexus.conflist", init)
    assert vol["configMap"]["name"] == "plexus-cni-config"
    host = {vol["hostPath"]["path"]: path for path, (_, vol) in mounts(init).items() if "hostPath" in vol}
    assert host["/etc/cni/net.d"] == "/host/etc/cni/net.d"
    assert host["/opt/cni/bin"] == "/host/opt/cni/bin"
    assert host["/opt/plexus"] == "/host/opt/plexus"


# -- the probe command against the real health server ---------------------------------------------------

BUNDLED_PLUGIN = "/usr/lib/plexus/plexus/plexus"  # where the image keeps the frozen plugin (daemonset.yaml)


def probe_script(probe: str, socket_path: str) -> list[str]:
    """The probe's command with the frozen plugin built here and a socket of the test's."""
    command = list(container("plexus-ipamd")[probe]["exec"]["command"])
    assert command[0] == BUNDLED_PLUGIN and command[-1] == "/run/plexus/plexus.sock"
    return [str(FROZEN), *command[1:-1], socket_path]


def test_probe_commands_against_the_real_server(tmp_path: Path) -> None:
    from ipamd.server.cni_http import CniHttpServer

    path = str(tmp_path / "run" / "plexus.sock")
    for probe in ("livenessProbe", "readinessProbe"):
        assert subprocess.run(probe_script(probe, path), capture_output=True, timeout=10).returncode != 0, \
            f"{probe} passes with no daemon"
    ready = threading.Event()
    server = CniHttpServer(path, None, ready.is_set)  # type: ignore[arg-type]  # no CNI call is made
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        def rc(probe: str) -> int:
            return subprocess.run(probe_script(probe, path), capture_output=True, timeout=10).returncode

        assert rc("livenessProbe") == 0 and rc("startupProbe") == 0
        assert rc("readinessProbe") != 0, "not ready before start-up is done"
        ready.set()
        assert rc("readinessProbe") == 0
    finally:
        server.shutdown()
        server.server_close()


# -- the install script (init container) on a fake host root ----------------------------------------------

def test_install_script_installs_the_bundle_and_conflist_atomically(tmp_path: Path) -> None:
    init = container("install-cni")
    assert init["command"][:2] == ["/bin/sh", "-c"]
    script = init["command"][2]
    assert "mv -f" in script and ".10-plexus.conflist.tmp" in script, "conflist written to a temp file, then renamed"
    bundle = FROZEN.parent
    if not FROZEN.exists():  # not built: a stand-in with the onedir layout
        bundle = tmp_path / "bundle"
        (bundle / "_internal").mkdir(parents=True)
        (bundle / "plexus").write_text("#!/bin/sh\necho stand-in\n")
        (bundle / "plexus").chmod(0o755)
        (bundle / "_internal" / "lib.so").write_text("x")
    host = tmp_path / "host"
    env = {"PATH": os.environ["PATH"], "HOST_ROOT": str(host), "BUNDLE": str(bundle), "CONFLIST": str(CONFLIST)}
    for _ in range(2):  # a first install, then an upgrade over it
        res = subprocess.run(init["command"], env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert os.readlink(host / "opt/cni/bin/plexus") == "/opt/plexus/plexus/plexus", "as packaging/install.sh"
        assert os.readlink(host / "opt/cni/bin/plexus-ipam") == "/opt/plexus/plexus/plexus", "the IPAM plugin too"
        installed = host / "opt/plexus/plexus"
        assert sorted(p.name for p in installed.iterdir()) == sorted(p.name for p in bundle.iterdir())
        assert os.access(installed / "plexus", os.X_OK)
        assert json.loads((host / "etc/cni/net.d/10-plexus.conflist").read_text()) == json.loads(CONFLIST.read_text())
        assert oct((host / "etc/cni/net.d/10-plexus.conflist").stat().st_mode & 0o777) == "0o644"
        assert (host / "var/log/plexus").is_dir()
        leftovers = [p.name for d in ("opt/plexus", "opt/cni/bin", "etc/cni/net.d") for p in (host / d).iterdir()
                     if p.name.endswith((".tmp", ".new", ".old"))]
        assert leftovers == []
    if FROZEN.exists():  # the copied bundle works from its new place (_internal came along)
        version = subprocess.run([str(host / "opt/plexus/plexus/plexus")], input=b'{"cniVersion":"1.0.0"}',
                                 env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=30)
        assert version.returncode == 0 and "1.1.0" in json.loads(version.stdout)["supportedVersions"]
    missing = subprocess.run(init["command"], env=env | {"BUNDLE": str(tmp_path / "nope")}, capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode != 0 and "no frozen plexus bundle" in missing.stderr


# -- against the API server ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def applied(cluster: Cluster) -> Cluster:
    for path in (CRDS, RBAC, DAEMONSET):
        res = cluster.kubectl("apply", "-f", str(path), check=False)
        assert res.returncode == 0, f"{path.name}: {res.stderr}"
    # controller.yaml but its webhook configuration: that one calls a Service the test API server cannot
    # reach (test_webhook.py registers it by URL); it is checked by a server-side dry run below
    res = cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(controller_docs(webhook=False)), check=False)
    assert res.returncode == 0, f"controller.yaml: {res.stderr}"
    return cluster


def controller_docs(webhook: bool) -> list[dict[str, Any]]:
    return [d for d in docs(CONTROLLER) if (d["kind"] == "ValidatingWebhookConfiguration") == webhook]


def can_i(cluster: Cluster, who: str, *what: str) -> bool:
    res = cluster.kubectl("auth", "can-i", f"--as={who}", *what, check=False)
    answer = res.stdout.strip()
    assert answer in ("yes", "no"), (what, res.stdout, res.stderr)
    return answer == "yes"


@pytest.mark.netns
def test_manifests_are_accepted_and_the_objects_exist(applied: Cluster) -> None:
    cluster = applied
    for path in (RBAC, DAEMONSET, CONTROLLER):
        for doc in docs(path) if path != CONTROLLER else controller_docs(webhook=False):
            md = doc["metadata"]
            args = [doc["kind"].lower(), md["name"]] + (["-n", md["namespace"]] if md.get("namespace") else [])
            live = cluster.get(*args)
            assert live["metadata"]["name"] == md["name"]
            if doc["kind"] in ("ClusterRole", "Role"):
                assert live["rules"] == doc["rules"], "stored as written"
    for kind in KINDS:
        assert cluster.get("crd", f"{kind}.{GROUP}")["spec"]["names"]["plural"] == kind
    ds = cluster.get("daemonset", "-n", NS, "plexus-node")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["serviceAccountName"] == "plexus-node"
    (c,) = spec["containers"]
    assert c["securityContext"]["privileged"] is True
    assert {m["mountPath"]: m.get("mountPropagation") for m in c["volumeMounts"]}["/run/netns"] == "HostToContainer"
    assert [i["name"] for i in spec["initContainers"]] == ["install-cni"]
    # re-applying changes nothing: no new generation of the DaemonSet (no rollout on every apply). kubectl
    # says "configured" for it because hostPID: false, written out on purpose, is the default the server
    # does not store
    again = cluster.kubectl("apply", "-f", str(RBAC), "-f", str(DAEMONSET))
    assert all(line.endswith("unchanged") for line in again.stdout.splitlines() if "daemonset" not in line), again.stdout
    after = cluster.get("daemonset", "-n", NS, "plexus-node")
    assert after["metadata"]["generation"] == ds["metadata"]["generation"]
    assert after["spec"]["template"] == ds["spec"]["template"]
    # a server-side dry run validates the DaemonSet's pod template against the 1.20 API
    dry = cluster.kubectl("apply", "--dry-run=server", "-f", str(DAEMONSET), check=False)
    assert dry.returncode == 0, dry.stderr
    # the controller: a Deployment whose pods run the controller mode with its ServiceAccount, the
    # webhook's Service, and the webhook configuration (accepted by the API server, dry run)
    deployment = cluster.get("deployment", "-n", NS, "plexus-controller")["spec"]
    dep = deployment["template"]["spec"]
    assert dep["serviceAccountName"] == "plexus-controller"
    (c,) = dep["containers"]
    from ipamd.config import parse_args

    flags = parse_args(c["args"])
    assert flags.mode == "controller" and flags.kubeconfig == "in-cluster" and flags.webhook_port == 9443
    svc = cluster.get("service", "-n", NS, "plexus-webhook")["spec"]
    assert svc["selector"] == deployment["selector"]["matchLabels"] and svc["ports"][0]["targetPort"] == "webhook"
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["webhook"] == flags.webhook_port
    assert flags.webhook_names == ("plexus-webhook.plexus-system.svc",), "the name the API server calls"
    dry = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(controller_docs(webhook=True)),
                          check=False)
    assert dry.returncode == 0, dry.stderr


# What the daemon does (ipamd/kube/): each of these is one call in the code.
NODE_NEEDS = [
    ("list", "pods", "--all-namespaces"),          # the Pod informer: all namespaces, spec.nodeName selector
    ("watch", "pods", "--all-namespaces"),
    ("get", "pods", "-n", "some-app"),              # wait_for_pod
    ("patch", "pods", "-n", "some-app"),            # networks-status annotation
    ("create", "events", "-n", "some-app"),         # InterfaceAttached / AttachFailed
    *[(verb, f"{kind}.{GROUP}", "--all-namespaces") for kind in KINDS for verb in ("list", "watch")],
    ("create", f"ipaddresses.{GROUP}", "-n", "some-app"),             # Auto IPAddress owned by the pod
    ("patch", f"ipaddresses.{GROUP}", "--subresource=status", "-n", "some-app"),
    ("patch", f"clusteripaddresses.{GROUP}", "--subresource=status"),
    ("patch", f"ipaddresses.{GROUP}", "-n", "some-app"),              # the pod that uses it (used-by)
    ("patch", f"clusteripaddresses.{GROUP}"),
    ("create", f"ipaddressleases.{GROUP}"),         # claim
    ("get", f"ipaddressleases.{GROUP}"),            # whose, after AlreadyExists
    ("patch", f"ipaddressleases.{GROUP}"),          # holder: orphan / adopt
    ("patch", f"ipaddressleases.{GROUP}", "--subresource=status"),    # orphaningTimestamp
    ("delete", f"ipaddressleases.{GROUP}"),         # free after the quarantine
    ("list", "network-attachment-definitions.k8s.cni.cncf.io", "--all-namespaces"),  # the NAD informer
    ("watch", "network-attachment-definitions.k8s.cni.cncf.io", "--all-namespaces"),
    ("list", "ipamclaims.k8s.cni.cncf.io", "--all-namespaces"),  # the IPAMClaim informer
    ("watch", "ipamclaims.k8s.cni.cncf.io", "--all-namespaces"),
    ("patch", "ipamclaims.k8s.cni.cncf.io", "--subresource=status", "-n", "some-app"),  # status.ips, ownerPod
    ("create", "leases.coordination.k8s.io", "-n", HEARTBEATS),  # its heartbeat, plexus-node-<node>
    ("patch", "leases.coordination.k8s.io", "-n", HEARTBEATS),
]
NODE_MUST_NOT = [
    ("patch", "ipamclaims.k8s.cni.cncf.io", "-n", "some-app"),  # a claim's status only, never the claim
    ("delete", "ipamclaims.k8s.cni.cncf.io", "-n", "some-app"),
    ("create", "network-attachment-definitions.k8s.cni.cncf.io", "-n", "some-app"),  # it reads NADs, never writes
    ("delete", "pods", "-n", "some-app"),
    ("create", "pods", "-n", "some-app"),
    ("update", "pods", "-n", "some-app"),
    ("create", "pods", "--subresource=exec", "-n", "some-app"),
    ("patch", "pods", "--subresource=status", "-n", "some-app"),
    ("create", "secrets", "-n", "some-app"),
    ("get", "secrets", "-n", "some-app"),
    ("list", "secrets", "--all-namespaces"),
    ("get", "configmaps", "-n", NS),
    ("update", "nodes"),
    ("patch", "nodes"),
    ("get", "nodes"),
    ("create", "serviceaccounts", "--subresource=token", "-n", NS),
    ("patch", "events", "-n", "some-app"),
    ("delete", "events", "-n", "some-app"),
    ("create", f"networks.{GROUP}", "-n", "some-app"),
    ("delete", f"networks.{GROUP}", "-n", "some-app"),
    ("update", f"networks.{GROUP}", "-n", "some-app"),
    ("patch", f"networks.{GROUP}", "--subresource=status", "-n", "some-app"),
    ("delete", f"networkclasses.{GROUP}"),
    ("create", f"clusternetworks.{GROUP}"),
    ("patch", f"ipaddresspools.{GROUP}", "-n", "some-app"),
    ("delete", f"ipaddresses.{GROUP}", "-n", "some-app"),
    ("update", f"ipaddresses.{GROUP}", "-n", "some-app"),  # (patch: its used-by annotation, see NODE_NEEDS)
    ("update", f"clusteripaddresses.{GROUP}"),
    ("update", f"ipaddresses.{GROUP}", "--subresource=status", "-n", "some-app"),
    ("create", f"clusteripaddresses.{GROUP}"),
    ("delete", f"clusteripaddresses.{GROUP}"),
    ("update", f"ipaddressleases.{GROUP}"),
    ("deletecollection", f"ipaddressleases.{GROUP}"),
    ("update", f"ipaddressleases.{GROUP}", "--subresource=status"),
    ("create", "leases.coordination.k8s.io", "-n", NS),  # the controller's election Lease lives there
    ("patch", "leases.coordination.k8s.io", "-n", NS),
    ("update", "leases.coordination.k8s.io", "-n", NS),
    ("update", "leases.coordination.k8s.io", "-n", HEARTBEATS),  # its heartbeat: created, then patched
    ("delete", "leases.coordination.k8s.io", "-n", HEARTBEATS),
    ("get", "leases.coordination.k8s.io", "-n", HEARTBEATS),
    ("create", "leases.coordination.k8s.io", "-n", "kube-node-lease"),
    ("patch", "leases.coordination.k8s.io", "-n", "default"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("bind", "clusterroles.rbac.authorization.k8s.io"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("impersonate", "serviceaccounts"),
    ("*", "*"),
]


@pytest.mark.netns
def test_node_role_allows_what_the_daemon_does_and_nothing_else(applied: Cluster) -> None:
    refused = [w for w in NODE_NEEDS if not can_i(applied, NODE_SA, *w)]
    assert refused == [], "the daemon needs these"
    allowed = [w for w in NODE_MUST_NOT if can_i(applied, NODE_SA, *w)]
    assert allowed == [], "least privilege"
    rules = one(RBAC, "ClusterRole", "plexus-node")["rules"]
    assert not any("*" in r.get("verbs", []) + r.get("resources", []) + r.get("apiGroups", []) for r in rules)


@pytest.mark.netns
def test_controller_role(applied: Cluster) -> None:
    """The controller's identity: the calls of ipamd/kube/controller.py, services.py and certs.py, and no more (the
    session's controller process runs with this very token: see tests/kube/conftest.py)."""
    needs = [
        ("patch", f"networks.{GROUP}", "--subresource=status", "-n", "some-app"),
        ("patch", f"clusternetworks.{GROUP}", "--subresource=status"),
        ("patch", f"ipaddresses.{GROUP}", "--subresource=status", "-n", "some-app"),
        ("patch", f"clusteripaddresses.{GROUP}", "--subresource=status"),
        ("patch", f"ipaddresspools.{GROUP}", "--subresource=status", "-n", "some-app"),
        ("patch", f"clusteripaddresspools.{GROUP}", "--subresource=status"),
        ("create", f"ipaddressleases.{GROUP}"),
        ("delete", f"ipaddressleases.{GROUP}"),
        ("watch", f"networks.{GROUP}", "--all-namespaces"),
        ("get", "leases.coordination.k8s.io", "-n", NS),
        ("create", "secrets", "-n", NS),
        ("get", "secrets/plexus-webhook-tls", "-n", NS),
        ("update", "secrets/plexus-webhook-tls", "-n", NS),
        ("get", "validatingwebhookconfigurations.admissionregistration.k8s.io/plexus"),
        ("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io/plexus"),
        ("create", "leases.coordination.k8s.io", "-n", NS),
        ("update", "leases.coordination.k8s.io", "-n", NS),
        ("list", "leases.coordination.k8s.io", "-n", HEARTBEATS),  # the nodes' heartbeats
        ("delete", "leases.coordination.k8s.io", "-n", HEARTBEATS),  # a vanished node's
        # a vanished node: its blocks deleted, its gone pods' leases quarantined, its Node object looked for
        ("delete", f"ipaddressblocks.{GROUP}"),
        ("patch", f"ipaddressleases.{GROUP}"),
        ("patch", f"ipaddressleases.{GROUP}", "--subresource=status"),
        ("list", "pods", "--all-namespaces"),
        ("get", "nodes/some-node"),
        # Services over additional networks: Services and pods watched, slices written, the Service told
        ("watch", "pods", "--all-namespaces"),
        ("watch", "services", "--all-namespaces"),
        ("watch", "network-attachment-definitions.k8s.cni.cncf.io", "--all-namespaces"),
        ("create", "endpointslices.discovery.k8s.io", "-n", "some-app"),
        ("patch", "endpointslices.discovery.k8s.io", "-n", "some-app"),
        ("delete", "endpointslices.discovery.k8s.io", "-n", "some-app"),
        ("patch", "services", "--subresource=status", "-n", "some-app"),
        ("create", "events", "-n", "some-app"),
    ]
    must_not = [
        ("create", "leases.coordination.k8s.io", "-n", "kube-system"),
        ("update", "leases.coordination.k8s.io", "-n", "default"),
        ("delete", "leases.coordination.k8s.io", "-n", NS),
        ("delete", "leases.coordination.k8s.io", "-n", "kube-node-lease"),
        ("create", "leases.coordination.k8s.io", "-n", HEARTBEATS),
        ("patch", "leases.coordination.k8s.io", "-n", HEARTBEATS),
        ("patch", "pods", "-n", "some-app"),
        ("get", "secrets", "-n", NS),
        ("get", "secrets/plexus-node-token", "-n", NS),
        ("update", "secrets/other", "-n", NS),
        ("create", "secrets", "-n", "kube-system"),
        ("list", "secrets", "-n", NS),
        ("patch", "services", "-n", "some-app"),  # a Service's status only, never the Service
        ("delete", "services", "-n", "some-app"),
        ("patch", "nodes/some-node"),
        ("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io/other"),
        ("delete", "validatingwebhookconfigurations.admissionregistration.k8s.io/plexus"),
        ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io"),
        ("update", "nodes"),
        ("create", f"ipaddresses.{GROUP}", "-n", "some-app"),
        ("delete", f"networks.{GROUP}", "-n", "some-app"),
        ("update", f"networks.{GROUP}", "-n", "some-app"),
        ("update", f"networks.{GROUP}", "--subresource=status", "-n", "some-app"),
        ("patch", f"ipaddresspools.{GROUP}", "-n", "some-app"),  # a pool's status only, never the pool
    ]
    assert [w for w in needs if not can_i(applied, CONTROLLER_SA, *w)] == []
    assert [w for w in must_not if can_i(applied, CONTROLLER_SA, *w)] == []


# -- the daemon itself, with only the ServiceAccount's token ------------------------------------------------

@pytest.fixture
def sa_node(applied: Cluster, controller: ControllerProcess, tmp_path: Path) -> Iterator[Node]:
    node = Node(kubeconfig=str(sa_kubeconfig(applied, "plexus-node", tmp_path / "sa.kubeconfig")),
                node_name="node-sa", reconcile_interval=1.0)
    try:
        node.start()
        yield node
    finally:
        node.close()


@pytest.mark.netns
def test_daemon_runs_a_pod_with_only_the_node_service_account(applied: Cluster, sa_node: Node) -> None:
    cluster, node, ns = applied, sa_node, "kmanifest"
    # who the daemon is: the token really is the ServiceAccount's, and it is refused what the role refuses
    whoami = subprocess.run([cluster.kubectl_bin, "--kubeconfig", str(node.kubeconfig), "get", "secrets", "-n", ns],
                            capture_output=True, text=True)
    assert whoami.returncode != 0 and NODE_SA in whoami.stderr, whoami.stderr
    cluster.apply([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {"apiVersion": f"{GROUP}/v1alpha1", "kind": "NetworkClass", "metadata": {"name": f"{ns}-class"},
         "spec": {"vlan": {"idPool": ["760-769"]}}},
        {"apiVersion": f"{GROUP}/v1alpha1", "kind": "IPAddressPool", "metadata": {"name": "pool", "namespace": ns},
         "spec": {"leaseTTL": "3s", "pools": [{"network": "198.18.67.0/24", "ranges": ["198.18.67.10-198.18.67.20"]}]}},
        {"apiVersion": f"{GROUP}/v1alpha1", "kind": "Network", "metadata": {"name": "net", "namespace": ns},
         "spec": {"networkClass": f"{ns}-class", "vlan": {"id": 760},
                  "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pool"}}}},
        {"apiVersion": f"{GROUP}/v1alpha1", "kind": "ClusterIPAddressPool", "metadata": {"name": f"{ns}-cpool"},
         "spec": {"leaseTTL": "3s", "pools": [{"network": "198.18.68.0/28"}]}},
        {"apiVersion": f"{GROUP}/v1alpha1", "kind": "ClusterNetwork", "metadata": {"name": f"{ns}-cnet"},
         "spec": {"type": "VLAN", "vlan": {"id": 770},
                  "ipam": {"ipAddressPoolRef": {"kind": "ClusterIPAddressPool", "name": f"{ns}-cpool"}}}},
        {"apiVersion": f"{GROUP}/v1alpha1", "kind": "ClusterIPAddress", "metadata": {"name": f"{ns}-cip"},
         "spec": {"networkRef": {"kind": "ClusterNetwork", "name": f"{ns}-cnet"}, "type": "Static",
                  "static": {"ip": "198.18.68.5"}}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "namespace": ns, "annotations": {
            f"{GROUP}/networks-spec": json.dumps([
                {"type": "Network", "name": "net", "ifName": "net1"},
                {"type": "ClusterNetwork", "name": f"{ns}-cnet", "ifName": "net2", "ipAddressNames": [f"{ns}-cip"]},
            ])}}, "spec": {"nodeName": "node-sa", "containers": [{"name": "c", "image": "busybox"}]}},
    ])
    uid = cluster.get("pod", "-n", ns, "app")["metadata"]["uid"]
    netns = node.pod_netns("app")
    add = wait_for(lambda: (r := node.cni("ADD", "c1", netns, pod=(ns, "app"), env={
        "CNI_ARGS": f"K8S_POD_NAMESPACE={ns};K8S_POD_NAME=app;K8S_POD_UID={uid}"})).ok and r, timeout=30, step=1)
    assert add, node.log_text()[-3000:]
    address = add.json["ips"][0]["address"].split("/")[0]
    links = links_in(netns)
    assert links["net1"]["addresses"] == [f"{address}/24"] and links["net2"]["addresses"] == ["198.18.68.5/28"]

    # everything the daemon publishes arrived, each through a permission of the role
    annotations = cluster.get("pod", "-n", ns, "app")["metadata"]["annotations"]        # patch pods
    status = json.loads(annotations[f"{GROUP}/networks-status"])
    assert [s["ifName"] for s in status] == ["net1", "net2"]
    assert wait_for(lambda: len(cluster.get("ipaddress", "-n", ns)["items"]) == 1, timeout=15)  # (from the outbox)
    (ip,) = cluster.get("ipaddress", "-n", ns)["items"]                                   # create ipaddresses
    assert ip["metadata"]["ownerReferences"][0]["uid"] == uid
    assert wait_for(lambda: (cluster.get("ipaddress", "-n", ns, ip["metadata"]["name"]).get("status") or {})
                    .get("address") == address, timeout=15)                               # ipaddresses/status
    assert wait_for(lambda: (cluster.get("clusteripaddress", f"{ns}-cip").get("status") or {})
                    .get("usedByPods") == [f"{ns}/app"], timeout=15)                      # clusteripaddresses/status
    used_by = cluster.get("clusteripaddress", f"{ns}-cip")["metadata"]["annotations"][f"{GROUP}/used-by"]
    assert json.loads(used_by) == {"node": "node-sa", "pod": f"{ns}/app", "uid": uid}  # patch clusteripaddresses
    leases = {x["spec"]["ip"]: x for x in cluster.get("ipaddresslease")["items"]}         # create ipaddressleases
    assert address in leases and "198.18.68.5" in leases
    assert leases[address]["metadata"]["labels"][f"{GROUP}/node"] == "node-sa"
    assert wait_for(lambda: {e["reason"] for e in cluster.get("events", "-n", ns)["items"]}  # create events
                    >= {"InterfaceAttached"}, timeout=15)
    def beats() -> list[dict[str, Any]]:                                                  # create leases (heartbeat)
        return [b for b in cluster.get("lease.coordination.k8s.io", "-n", HEARTBEATS)["items"]
                if b["metadata"]["name"] == "plexus-node-node-sa"]

    assert wait_for(beats, timeout=15)
    assert beats()[0]["metadata"]["labels"] == {f"{GROUP}/node-heartbeat": "true"} and beats()[0]["spec"]["renewTime"]
    assert beats()[0]["spec"]["holderIdentity"] == "node-sa"
    # stamped by the API server's clock as the renewal manager's write: what the controller judges silence by
    assert [e["manager"] for e in beats()[0]["metadata"]["managedFields"] if e.get("time")].count("plexus-renewal") == 1

    # DEL and the pod gone: the lease is orphaned (patch + status patch), then freed (delete)
    assert node.cni("DEL", "c1", netns, pod=(ns, "app")).ok
    cluster.kubectl("delete", "pod", "-n", ns, "app", "--grace-period=0", "--force")

    def lease_state() -> str:
        items = [x for x in cluster.get("ipaddresslease")["items"] if x["spec"]["ip"] == address]
        if not items:
            return "gone"
        return "orphaned" if (items[0].get("status") or {}).get("orphaningTimestamp") else "bound"

    assert wait_for(lambda: lease_state() == "gone", timeout=90), (lease_state(), node.log_text()[-3000:])
    log = node.log_text() + (node.dir / "ipamd.stderr").read_text()
    forbidden = [line for line in log.splitlines() if "pyroute2" not in line  # its netlink dumps hold any number
                 and ("forbidden" in line.lower() or re.search(r"(?<![,.])\b403\b", line))]  # not a log time's ms
    assert forbidden == [], forbidden[:5]
    assert node.proc is not None
    rss = [line for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines() if line.startswith("VmRSS")]
    print(f"plexus-ipamd as plexus-node after one pod: {rss[0] if rss else '?'}")


@pytest.mark.netns
def test_a_users_auto_ipaddress_is_taken_up_by_the_node_before_its_pod_uses_it(applied: Cluster, sa_node: Node) -> None:
    """The controller leases a user's Auto IPAddress (an IPAddressLease with no node label); the node whose pod names
    it makes that lease its own (labelled at the version read) before the ADD answers, with only its ServiceAccount's
    permissions; once the pod and the IPAddress are gone, the node lets the address go."""
    cluster, node, ns = applied, sa_node, "ktakeup"
    cluster.apply([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {"apiVersion": f"{GROUP}/v1alpha1", "kind": "NetworkClass", "metadata": {"name": f"{ns}-class"},
         "spec": {"vlan": {"idPool": ["910-919"]}}},
        {"apiVersion": f"{GROUP}/v1alpha1", "kind": "IPAddressPool", "metadata": {"name": "pool", "namespace": ns},
         "spec": {"leaseTTL": "1s", "pools": [{"network": "198.18.113.0/28"}]}},
        {"apiVersion": f"{GROUP}/v1alpha1", "kind": "Network", "metadata": {"name": "net", "namespace": ns},
         "spec": {"networkClass": f"{ns}-class", "vlan": {"id": 910},
                  "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pool"}}}},
        {"apiVersion": f"{GROUP}/v1alpha1", "kind": "IPAddress", "metadata": {"name": "mine", "namespace": ns},
         "spec": {"networkRef": {"kind": "Network", "name": "net"}, "type": "Auto"}},
    ])
    try:
        assert wait_for(lambda: (cluster.get("ipaddress", "-n", ns, "mine").get("status") or {}).get("address"),
                        timeout=30), "the controller leases it before any pod uses it"
        address = cluster.get("ipaddress", "-n", ns, "mine")["status"]["address"]

        def lease() -> dict[str, Any]:
            (found,) = [x for x in cluster.get("ipaddresslease")["items"] if x["spec"]["ip"] == address]
            return dict(found)

        assert f"{GROUP}/node" not in lease()["metadata"].get("labels", {}), "the controller's: no node label"
        cluster.apply([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "namespace": ns, "annotations": {
            f"{GROUP}/networks-spec": json.dumps([{"type": "Network", "name": "net", "ipAddressNames": ["mine"]}])}},
            "spec": {"nodeName": "node-sa", "containers": [{"name": "c", "image": "busybox"}]}}])
        uid = cluster.get("pod", "-n", ns, "app")["metadata"]["uid"]
        netns = node.pod_netns("app")
        add = wait_for(lambda: (r := node.cni("ADD", "t1", netns, pod=(ns, "app"), env={
            "CNI_ARGS": f"K8S_POD_NAMESPACE={ns};K8S_POD_NAME=app;K8S_POD_UID={uid}"})).ok and r, timeout=30, step=1)
        assert add, node.log_text()[-3000:]
        assert add.json["ips"][0]["address"] == f"{address}/28"
        assert lease()["metadata"]["labels"][f"{GROUP}/node"] == "node-sa", "taken up before the ADD answered"
        assert lease()["spec"]["holder"] == f"IPAddress/{ns}/mine"

        assert node.cni("DEL", "t1", netns, pod=(ns, "app")).ok
        cluster.kubectl("delete", "pod", "-n", ns, "app", "--grace-period=0", "--force")
        cluster.kubectl("delete", "ipaddress", "-n", ns, "mine")
        assert wait_for(lambda: not [x for x in cluster.get("ipaddresslease")["items"] if x["spec"]["ip"] == address],
                        timeout=90), "the node lets it go (quarantine of 1 s, then deleted)"
        log = node.log_text()
        assert not [line for line in log.splitlines() if "pyroute2" not in line
                    and ("forbidden" in line.lower() or re.search(r"(?<![,.])\b403\b", line))]
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        cluster.kubectl("delete", "networkclass", f"{ns}-class", "--ignore-not-found", check=False)

"""The daemon's configuration: one frozen record, read from the command line (``plexus-ipamd --help``).

Pure: parsing the flags imports nothing of the node or Kubernetes side, so both modes start from here.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

from cni.shim import IPAM_SOCKET_NAME

SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
#: Where the kubelet serves its pod-resources API (``<kubelet root dir>/pod-resources/kubelet.sock``).
POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
#: Where device plugins write NPWG device-info files (NPWG device-info spec; net-attach-def-client's
#: ``baseDevInfoPath``/``dp``), one per device: ``<resource>-<device ID>-device.json``, each ``/`` made ``-``.
DEVICE_INFO_DIR = "/var/run/k8s.cni.cncf.io/devinfo/dp"


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    objects_dir: str = "/etc/plexus/objects"
    db: str = "/var/lib/plexus/plexus.db"
    socket: str = "/run/plexus/plexus.sock"
    grpc_socket: str = "/run/plexus/ipam.sock"
    log_file: str = ""
    log_level: str = "info"
    reconcile_interval: float = 30.0
    pidfile: str = ""
    metrics_port: int = 0
    fault: str = ""  # test hook: SIGKILL ourselves at this step (e.g. "add:leased")
    kubeconfig: str = ""  # Kubernetes mode: this kubeconfig, or "in-cluster"
    node_name: str = ""
    node_netns: str = ""  # where node-side links live (default: the daemon's own namespace)
    controller: bool = False  # also run the (leader-elected) cluster controller
    controller_namespace: str = "plexus-system"
    mode: str = "node"  # node | controller (the controller and the webhook alone: no CNI, no store)
    webhook_address: str = "0.0.0.0"
    webhook_port: int = 9443
    webhook_names: tuple[str, ...] = ("plexus-webhook.plexus-system.svc",)
    webhook_secret: str = "plexus-webhook-tls"
    webhook_configuration: str = "plexus"
    health_port: int = 8081
    ipam_socket: str = ""  # plexus-ipam's socket ("" : plexus-ipam.sock next to --socket)
    block_ttl: float = 600.0  # the controller reclaims a silent node's address blocks after this long
    address_blocks: bool = True  # lease in node blocks where a pool is large enough (off: one lease object per address)
    pod_resources_socket: str = ""  # the kubelet's pod-resources API (device pools; "": none, the local mode's default)
    device_info_dir: str = DEVICE_INFO_DIR  # device plugins' NPWG device-info files
    cni_workers: int = 8  # CNI calls worked on at once; the others wait their turn in order
    del_mode: str = "sync"  # background: DEL answers once the interfaces are cut off, removes them after
    del_delay: float = 0.2  # background DELs wait this long for the runtime to delete the pod's namespace
    heartbeat_namespace: str = "plexus-node-lease"  # the nodes' heartbeat Leases (ipamd.kube.heartbeat)
    metrics_address: str = "127.0.0.1"  # where --metrics-port listens (the node's loopback under hostNetwork)
    snapshot_interval: float = 30.0  # Kubernetes mode: the informers' caches written beside --db this often (0: off)

    @property
    def ipam_plugin_socket(self) -> str:
        return self.ipam_socket or os.path.join(os.path.dirname(self.socket) or ".", IPAM_SOCKET_NAME)


#: The longest reconcile interval in Kubernetes mode: block renewals and the heartbeat (every 60 s) ride on the round.
MAX_CLUSTER_RECONCILE_S = 60.0
#: The shortest: the reconcile round takes the store's lock; at 0 (or less) it would take it without a pause.
MIN_RECONCILE_S = 0.1


def parse_args(argv: list[str] | None = None) -> DaemonConfig:
    p = argparse.ArgumentParser(prog="plexus-ipamd", description="Plexus node daemon: CNI service and IPAM.")
    d = DaemonConfig()
    p.add_argument("--objects-dir", default=d.objects_dir, help="directory of manifests (local object source)")
    p.add_argument("--db", default=d.db, help="SQLite store")
    p.add_argument("--socket", default=d.socket, help="unix socket for the plexus CNI shim")
    p.add_argument("--grpc-socket", default=d.grpc_socket, help="unix socket for the gRPC IPAM API")
    p.add_argument("--ipam-socket", default="",
                   help=f"unix socket for the plexus-ipam plugin: an absolute path to a {IPAM_SOCKET_NAME}, the only "
                        f"name the plugin connects to (default: {IPAM_SOCKET_NAME} in --socket's directory)")
    p.add_argument("--log-file", default=d.log_file, help="log here instead of standard error")
    p.add_argument("--log-level", default=d.log_level, choices=("debug", "info", "warning", "error"))
    p.add_argument("--reconcile-interval", type=float, default=d.reconcile_interval, help="seconds between reconciles")
    p.add_argument("--pidfile", default=d.pidfile)
    p.add_argument("--metrics-port", type=int, default=d.metrics_port,
                   help="serve Prometheus metrics on --metrics-address:PORT (0: off)")
    p.add_argument("--snapshot-interval", type=float, default=d.snapshot_interval,
                   help="Kubernetes mode: write the informers' caches beside --db this often, so that a daemon "
                        "restarted while the API server is away serves ADD from its blocks (0: off)")
    p.add_argument("--metrics-address", default=d.metrics_address,
                   help="the address --metrics-port listens on (0.0.0.0: every address of the node, for a scraper)")
    p.add_argument("--kubeconfig", default="",
                   help="Kubernetes mode: read objects from the cluster with this kubeconfig "
                        "(in a pod with a service account, the cluster is used without it)")
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME", ""), help="this node (default: $NODE_NAME)")
    p.add_argument("--node-netns", default="",
                   help="network namespace (path) that holds the node's bridges and veths, instead of the "
                        "daemon's own: several test nodes on one machine, each talking to one API server")
    p.add_argument("--controller", action="store_true",
                   help="Kubernetes mode: also run the cluster controller (one acts at a time: leader election)")
    p.add_argument("--controller-namespace", default="plexus-system",
                   help="namespace of the leader-election Lease (and of the webhook's Secret)")
    p.add_argument("--mode", choices=("node", "controller"), default=d.mode,
                   help="node: the CNI service and IPAM of this node (default); controller: the cluster "
                        "controller and the validating webhook only (the plexus-controller Deployment)")
    w = p.add_argument_group("controller mode")
    w.add_argument("--webhook-address", default=d.webhook_address, help="address the webhook listens on")
    w.add_argument("--webhook-port", type=int, default=d.webhook_port, help="HTTPS port of the webhook (0: none)")
    w.add_argument("--webhook-name", action="append", default=None,
                   help="DNS name or IP the webhook's certificate answers to (repeat; default: "
                        f"{d.webhook_names[0]})")
    w.add_argument("--webhook-secret", default=d.webhook_secret, help="Secret that keeps the webhook's CA and certificate")
    w.add_argument("--webhook-configuration", default=d.webhook_configuration,
                   help="ValidatingWebhookConfiguration whose caBundle the controller keeps")
    w.add_argument("--health-port", type=int, default=d.health_port, help="HTTP /healthz and /readyz (0: none)")
    p.add_argument("--block-ttl", type=float, default=d.block_ttl,
                   help="seconds after which the controller reclaims what a node held (its address blocks, its gone "
                        "pods' leases) once its daemon stopped renewing its blocks and heartbeat and the node runs no "
                        "pod (default %(default)s)")
    p.add_argument("--heartbeat-namespace", default=d.heartbeat_namespace,
                   help="namespace of the nodes' heartbeat Leases, plexus-node-<node>, which a node renews every "
                        "minute and the controller judges a vanished node by (default: %(default)s)")
    p.add_argument("--address-blocks", choices=("on", "off"), default="on" if d.address_blocks else "off",
                   help="Kubernetes mode: on (default): claim blocks of 16 addresses of a large pool and lease in "
                        "them without an API request; off: one IPAddressLease create per address, on the ADD's path "
                        "(other nodes' blocks are still respected)")
    p.add_argument("--pod-resources-socket", default=None,
                   help="the kubelet's pod-resources API, read for NADs with a k8s.v1.cni.cncf.io/resourceName "
                        "(default in Kubernetes mode: /var/lib/kubelet/pod-resources/kubelet.sock; '' for none)")
    p.add_argument("--device-info-dir", default=d.device_info_dir,
                   help="where device plugins write NPWG device-info files (default %(default)s)")
    p.add_argument("--cni-workers", type=int, default=d.cni_workers,
                   help="CNI calls worked on at once (default %(default)s); a burst of pod starts waits its turn, in "
                        "order, instead of piling work and memory onto the node")
    p.add_argument("--del-mode", choices=("sync", "background"), default=d.del_mode,
                   help="sync (default): DEL answers once every interface is removed; background: once the pod's "
                        "interfaces are recorded as going and cut off, the kernel's removal (and only then the "
                        "addresses' release) finishing after the answer")
    p.add_argument("--del-delay", type=float, default=d.del_delay,
                   help="background DELs start removing after this many seconds (default %(default)s): the runtime "
                        "deletes the pod's namespace meanwhile, and the kernel removes its interfaces itself")
    a = p.parse_args(argv)
    if a.cni_workers < 1:
        p.error("--cni-workers must be at least 1")
    if not math.isfinite(a.reconcile_interval) or a.reconcile_interval < MIN_RECONCILE_S:
        p.error(f"--reconcile-interval: at least {MIN_RECONCILE_S:g} s (the reconciler would spin), and finite")
    if a.ipam_socket and not (os.path.isabs(a.ipam_socket) and os.path.basename(a.ipam_socket) == IPAM_SOCKET_NAME):
        p.error(f"--ipam-socket: must be an absolute path to a file named {IPAM_SOCKET_NAME}: the plexus-ipam plugin "
                "refuses to connect to any other (whoever writes a NAD writes its socket, and the plugin runs as root)")
    kubeconfig = a.kubeconfig
    if not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(SA_TOKEN):
        kubeconfig = "in-cluster"
    if a.mode == "controller" and not kubeconfig:
        p.error("controller mode works on a cluster: --kubeconfig (or run in a pod with a service account)")
    if a.mode == "node" and kubeconfig and not a.node_name:
        p.error("Kubernetes mode needs the node's name: --node-name or $NODE_NAME")
    if a.mode == "node" and kubeconfig and a.reconcile_interval > MAX_CLUSTER_RECONCILE_S:
        p.error(f"--reconcile-interval: at most {MAX_CLUSTER_RECONCILE_S:g} s in Kubernetes mode: the reconcile round "
                "renews the node's address blocks and heartbeat every minute, and the node leases in a block only "
                "while it renewed it in the last 150 s (the controller reclaims a silent node's)")
    return DaemonConfig(a.objects_dir, a.db, a.socket, a.grpc_socket, a.log_file, a.log_level,
                        a.reconcile_interval, a.pidfile, a.metrics_port, os.environ.get("PLEXUS_FAULT", ""),
                        kubeconfig, a.node_name, a.node_netns, a.controller, a.controller_namespace,
                        a.mode, a.webhook_address, a.webhook_port, tuple(a.webhook_name or d.webhook_names),
                        a.webhook_secret, a.webhook_configuration, a.health_port, a.ipam_socket, a.block_ttl,
                        a.address_blocks == "on",
                        (POD_RESOURCES_SOCKET if kubeconfig else "") if a.pod_resources_socket is None
                        else a.pod_resources_socket, a.device_info_dir, a.cni_workers, a.del_mode, a.del_delay,
                        heartbeat_namespace=a.heartbeat_namespace, metrics_address=a.metrics_address,
                        snapshot_interval=a.snapshot_interval)

"""``plexus-ipamd``: the node daemon. Wires the object source, store, IPAM, attacher and servers.

Start-up order matters for "nothing lost": open the store, read the object source, finish or roll
back the attachments a crash left half done, reconcile, and only then accept CNI calls.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cni.errors import InternalError
from ipamd.attach import Attacher
from ipamd.cni_server import CniHttpServer
from ipamd.grpc_api import IpamService, serve
from ipamd.ipam import Ipam, LeaseRegistry
from ipamd.publish import Publisher
from ipamd.reconcile import Reconciler
from ipamd.segments import Segments
from ipamd.sources import LocalSource
from ipamd.store import Store

if TYPE_CHECKING:
    from ipamd.kube.controller_process import ControllerProcess
    from ipamd.kube.source import KubernetesSource

log = logging.getLogger("plexus-ipamd")


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


def parse_args(argv: list[str] | None = None) -> DaemonConfig:
    p = argparse.ArgumentParser(prog="plexus-ipamd", description="Plexus node daemon: CNI service and IPAM.")
    d = DaemonConfig()
    p.add_argument("--objects-dir", default=d.objects_dir, help="directory of manifests (local object source)")
    p.add_argument("--db", default=d.db, help="SQLite store")
    p.add_argument("--socket", default=d.socket, help="unix socket for the plexus CNI shim")
    p.add_argument("--grpc-socket", default=d.grpc_socket, help="unix socket for the gRPC IPAM API")
    p.add_argument("--log-file", default=d.log_file, help="log here instead of standard error")
    p.add_argument("--log-level", default=d.log_level, choices=("debug", "info", "warning", "error"))
    p.add_argument("--reconcile-interval", type=float, default=d.reconcile_interval, help="seconds between reconciles")
    p.add_argument("--pidfile", default=d.pidfile)
    p.add_argument("--metrics-port", type=int, default=d.metrics_port, help="serve Prometheus metrics on 127.0.0.1:PORT")
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
    a = p.parse_args(argv)
    kubeconfig = a.kubeconfig
    if not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(SA_TOKEN):
        kubeconfig = "in-cluster"
    if a.mode == "controller" and not kubeconfig:
        p.error("controller mode works on a cluster: --kubeconfig (or run in a pod with a service account)")
    if a.mode == "node" and kubeconfig and not a.node_name:
        p.error("Kubernetes mode needs the node's name: --node-name or $NODE_NAME")
    return DaemonConfig(a.objects_dir, a.db, a.socket, a.grpc_socket, a.log_file, a.log_level,
                        a.reconcile_interval, a.pidfile, a.metrics_port, os.environ.get("PLEXUS_FAULT", ""),
                        kubeconfig, a.node_name, a.node_netns, a.controller, a.controller_namespace,
                        a.mode, a.webhook_address, a.webhook_port, tuple(a.webhook_name or d.webhook_names),
                        a.webhook_secret, a.webhook_configuration, a.health_port)


def _fault_hook(step_wanted: str, failure_rate: float, seed: str) -> Any:
    """Test hooks. ``PLEXUS_FAULT=step``: SIGKILL at that step of ADD or DEL.
    ``PLEXUS_FAULT_RATE=0.1``: fail one step in ten (each ADD/DEL step, seeded by
    ``PLEXUS_FAULT_SEED``), so tests can show every failure unwinds."""
    import random

    rng = random.Random(seed)
    lock = threading.Lock()

    def fault(step: str) -> None:
        if step_wanted and step == step_wanted:
            log.warning("fault injection: killing the daemon at %s", step)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)
        if failure_rate:
            with lock:
                hit = rng.random() < failure_rate
            if hit:
                raise InternalError(f"injected failure at {step}", "PLEXUS_FAULT_RATE")

    return fault


class Daemon:
    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self.store = Store(cfg.db)
        self.controller: Any = None
        registry: LeaseRegistry | None = None
        publisher: Publisher | None = None
        self.source: LocalSource | KubernetesSource
        if cfg.kubeconfig:  # imported only here: the kubernetes client costs ~200 ms to import
            from ipamd.kube.leases import KubeLeaseRegistry
            from ipamd.kube.publisher import KubePublisher
            from ipamd.kube.source import KubernetesSource

            api = kube_api(cfg.kubeconfig)
            self.source = KubernetesSource(api, cfg.node_name)
            if cfg.controller:
                from ipamd.kube.controller import Controller

                self.controller = Controller(api, self.source, cfg.controller_namespace)
            registry = KubeLeaseRegistry(self.source, cfg.node_name)
            publisher = KubePublisher(api, cfg.node_name)
        else:
            self.source = LocalSource(cfg.objects_dir, lambda ns, name: self.store.generated_uid(ns, name, _new_uid()))
        self.ipam = Ipam(self.store, self.source, registry=registry)
        self.segments = Segments(self.store, time.time, cluster=bool(cfg.kubeconfig))
        self._ready = threading.Event()
        self.attacher = Attacher(self.store, self.source, self.ipam, self.segments, self._ready.is_set,
                                 fault=_fault_hook(cfg.fault, float(os.environ.get("PLEXUS_FAULT_RATE") or 0),
                                                   os.environ.get("PLEXUS_FAULT_SEED", "plexus")),
                                 publisher=publisher, host_netlink=_node_netlink(cfg.node_netns))
        self.reconciler = Reconciler(self.store, self.source, self.ipam, self.attacher, cfg.reconcile_interval,
                                     cluster=bool(cfg.kubeconfig))
        self.cni_server: CniHttpServer | None = None

    def sync(self) -> list[Any]:
        problems = self.source.sync()
        self.reconciler.run_once()
        return problems

    def start(self) -> None:
        self.source.start()
        if self.controller is not None:
            self.controller.start()
        recovered = self.reconciler.recover()
        self.reconciler.run_once()
        self.source.subscribe(self.reconciler.wake)
        self.reconciler.start()
        self.cni_server = CniHttpServer(self.cfg.socket, self.attacher, self._ready.is_set)
        threading.Thread(target=self.cni_server.serve_forever, name="cni-server", daemon=True).start()
        self._ready.set()
        self.grpc_server, self.health = serve(self.cfg.grpc_socket, IpamService(self.store, self.source, self.ipam, self.sync),
                                              self._ready.is_set)
        if self.cfg.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(self.cfg.metrics_port, addr="127.0.0.1")
        log.info("plexus-ipamd ready: cni=%s grpc=%s objects=%s db=%s (recovered %d attachments)",
                 self.cfg.socket, self.cfg.grpc_socket, self.cfg.objects_dir, self.cfg.db, recovered)

    def stop(self) -> None:
        self._ready.clear()
        if self.controller is not None:
            self.controller.stop()
        self.reconciler.stop()
        self.source.stop()
        if self.cni_server is not None:
            self.cni_server.shutdown()
            self.cni_server.server_close()
        self.grpc_server.stop(grace=2)
        self.store.close()
        for path in (self.cfg.socket, self.cfg.grpc_socket):  # a stale socket would look like a live daemon
            try:
                os.unlink(path)
            except OSError:
                pass


SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def _node_netlink(path: str) -> Callable[[], Any]:
    """Sockets for node-side links: in the daemon's namespace, or in ``path``'s."""
    from pyroute2 import IPRoute

    if not path:
        return lambda: IPRoute()

    def in_node_netns() -> Any:
        from cni.netns import netlink_in_path

        return netlink_in_path(path)

    return in_node_netns


def kube_api(kubeconfig: str) -> Any:
    """An API client from a kubeconfig, or from the pod's service account ("in-cluster")."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig == "in-cluster":
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(config_file=kubeconfig,  # type: ignore[no-untyped-call]
                                client_configuration=configuration)
    return client.ApiClient(configuration)


def _new_uid() -> str:
    import uuid

    return str(uuid.uuid4())


def _setup_logging(cfg: DaemonConfig) -> None:
    handler: logging.Handler
    if cfg.log_file:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.log_file)), exist_ok=True)
        handler = logging.FileHandler(cfg.log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=cfg.log_level.upper(), handlers=[handler])
    logging.getLogger("pyroute2").setLevel(logging.WARNING)  # its debug output is per netlink message


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    _setup_logging(cfg)
    daemon: Daemon | ControllerProcess
    try:
        if cfg.mode == "controller":
            from ipamd.kube.controller_process import ControllerProcess, WebhookConfig

            daemon = ControllerProcess(kube_api(cfg.kubeconfig), cfg.controller_namespace,
                                       WebhookConfig(cfg.webhook_address, cfg.webhook_port, cfg.webhook_names,
                                                     cfg.webhook_secret, cfg.webhook_configuration), cfg.health_port)
        else:
            daemon = Daemon(cfg)
        daemon.start()
    except Exception as exc:
        log.exception("plexus-ipamd failed to start")
        print(f"plexus-ipamd: failed to start: {exc}", file=sys.stderr)
        return 1
    if cfg.pidfile:
        with open(cfg.pidfile, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    log.info("plexus-ipamd stopping")
    daemon.stop()
    if cfg.pidfile:
        try:
            os.unlink(cfg.pidfile)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``plexus-ipamd``: start the node daemon or, with ``--mode controller``, the cluster controller alone.

Each mode imports only its own side: the controller process never loads netlink (pyroute2) or the
store, the node daemon loads the Kubernetes client only in Kubernetes mode (it costs ~200 ms).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Protocol

from ipamd.config import DaemonConfig, parse_args

log = logging.getLogger("plexus-ipamd")


class Process(Protocol):
    """What ``main`` runs: the node daemon or the controller process."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


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


def build(cfg: DaemonConfig) -> Process:
    """The process of ``cfg.mode``; only that mode's modules are imported."""
    if cfg.mode == "controller":
        from ipamd.kube.client import kube_api
        from ipamd.kube.controller_process import ControllerProcess, WebhookConfig

        return ControllerProcess(kube_api(cfg.kubeconfig), cfg.controller_namespace,
                                 WebhookConfig(cfg.webhook_address, cfg.webhook_port, cfg.webhook_names,
                                               cfg.webhook_secret, cfg.webhook_configuration), cfg.health_port,
                                 cfg.block_ttl, cfg.heartbeat_namespace)
    from ipamd.node.daemon import NodeDaemon

    return NodeDaemon(cfg)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    _setup_logging(cfg)
    try:
        daemon = build(cfg)
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


def run() -> None:
    """The process: ``main``, then out without the interpreter's teardown. A thread still blocked on a hung
    API server when the grace period is spent must not turn a clean stop into an abort (daemon threads that
    touch a lock or stderr while the interpreter finalizes make it abort with SIGABRT)."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()

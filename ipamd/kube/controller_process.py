"""``plexus-ipamd --mode controller``: the cluster controller and the validating webhook, no node work.

Run by the ``plexus-controller`` Deployment (two replicas: one leads, both serve the webhook, which
is stateless). It needs no store, no netlink and no pods: only the informers on the seed's kinds.
Health is plain HTTP for the kubelet's probes: ``/healthz`` (the process answers) and ``/readyz``
(informers synced and the webhook serving).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ipamd.kube.certs import TlsBundle, ensure_secret, publish_ca
from ipamd.kube.controller import Controller
from ipamd.kube.errors import reason_of
from ipamd.kube.heartbeat import NAMESPACE as HEARTBEAT_NAMESPACE
from ipamd.kube.leases import held_for_network, held_in
from ipamd.kube.resources import DECKHOUSE_KINDS
from ipamd.kube.services import ServiceEndpoints
from ipamd.kube.source import KubernetesSource
from ipamd.kube.webhook import WebhookServer
from ipamd.model.objects import NETWORK_ATTACHMENT_DEFINITION, NETWORK_CLASS, NetworkClass

log = logging.getLogger(__name__)
# Every replica reads the Secret and then publishes the CA of what it read, at this pace: a pair renewed by
# another replica is served, and a configuration re-created without our caBundle trusts us again, within
# it. Two GETs per look; publishing a CA older than the Secret's would undo another replica's renewal.
CERT_CHECK_S = 10.0


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    address: str = "0.0.0.0"
    port: int = 9443  # 0: no webhook
    names: tuple[str, ...] = ("plexus-webhook.plexus-system.svc",)  # what the certificate answers to
    secret: str = "plexus-webhook-tls"  # in the controller's namespace
    configuration: str = "plexus"  # the ValidatingWebhookConfiguration whose caBundle we keep


class _Health(BaseHTTPRequestHandler):
    server: _HealthServer

    def log_message(self, fmt: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/metrics":  # the pools' addresses by state (plexus_pool_addresses), and the process's
            body, ok, ctype = generate_latest(), True, CONTENT_TYPE_LATEST
        else:
            ok = self.path == "/healthz" or (self.path == "/readyz" and self.server.is_ready())
            body, ctype = (b"ok\n" if ok else b"not ready\n"), "text/plain"
        self.send_response(200 if ok else 503)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _HealthServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], is_ready: Any) -> None:
        self.is_ready = is_ready
        super().__init__(address, _Health)


class ControllerProcess:
    def __init__(self, api: Any, namespace: str, webhook: WebhookConfig, health_port: int,
                 block_ttl: float = 600.0, heartbeat_namespace: str = HEARTBEAT_NAMESPACE) -> None:
        self.api = api
        self.namespace = namespace
        self.webhook_cfg = webhook
        self.source = KubernetesSource(api, "", kinds=(*DECKHOUSE_KINDS, NETWORK_ATTACHMENT_DEFINITION.name),
                                       services=True)
        self.controller = Controller(api, self.source, namespace, block_ttl_s=block_ttl,
                                     heartbeat_namespace=heartbeat_namespace)
        self.services = ServiceEndpoints(api, self.source, lambda: self.controller.acting)
        self.webhook: WebhookServer | None = None
        self.health = _HealthServer(("0.0.0.0", health_port), self.ready) if health_port else None
        self._bundle: TlsBundle | None = None
        self._stop = threading.Event()

    def ready(self) -> bool:
        return self.source.ready() and (self.webhook is not None or not self.webhook_cfg.port)

    def _refresh_certificate(self) -> None:
        """Serve the Secret's pair, issued when missing or due (by whichever replica gets there first)."""
        cfg = self.webhook_cfg
        bundle = ensure_secret(self.api, self.namespace, cfg.secret, cfg.names)
        if bundle != self._bundle:
            if self.webhook is not None:
                self.webhook.use(bundle)
            self._bundle = bundle

    def _publish_ca(self, found: bool) -> bool:
        """Make the configuration trust the pair's CA; whether it was there. It may be applied after the
        controller starts, and re-created or replaced without the caBundle at any time (a delete and apply,
        ``kubectl replace``): looking every few seconds costs one GET, a broken webhook would cost much more
        (its Plexus objects' policy is Fail). A missing configuration is logged once, not every look."""
        assert self._bundle is not None
        try:
            publish_ca(self.api, self.webhook_cfg.configuration, self._bundle.ca_pem)
        except Exception as exc:
            if found:
                log.warning("ValidatingWebhookConfiguration %s: %s", self.webhook_cfg.configuration,
                            reason_of(exc))
            return False
        return True

    def _certificate_loop(self, found: bool) -> None:
        while not self._stop.wait(CERT_CHECK_S):
            try:
                self._refresh_certificate()
                found = self._publish_ca(found)
            except Exception as exc:
                log.warning("webhook certificate: %s", exc)

    def network_class(self, name: str) -> NetworkClass | None:
        """A NetworkClass as the informer has it (None when not known): what tells a Network's ``vlan.id`` ignored."""
        return self.source.get(NETWORK_CLASS, "", name)

    def webhook_server(self, bundle: TlsBundle) -> WebhookServer:
        """The webhook, bound, answering from the informers' leases and classes."""
        return WebhookServer((self.webhook_cfg.address, self.webhook_cfg.port), bundle,
                             lambda pool: held_in(self.source, pool),
                             lambda pool, network: held_for_network(self.source, pool, network),
                             network_class=self.network_class)

    def start(self) -> None:
        self.source.start()
        self.controller.start()
        self.services.start()
        if self.health is not None:
            threading.Thread(target=self.health.serve_forever, name="health", daemon=True).start()
        if self.webhook_cfg.port:
            self._refresh_certificate()
            found = self._publish_ca(found=True)
            assert self._bundle is not None
            self.webhook = self.webhook_server(self._bundle)
            threading.Thread(target=self.webhook.serve_forever, name="webhook", daemon=True).start()
            threading.Thread(target=self._certificate_loop, args=(found,), name="webhook-certificate",
                             daemon=True).start()
        log.info("plexus controller started: webhook %s, leader election in %s",
                 f"{self.webhook_cfg.address}:{self.webhook_cfg.port}" if self.webhook_cfg.port else "off",
                 self.namespace)

    def stop(self) -> None:
        self._stop.set()
        self.services.stop()
        self.controller.stop()
        self.source.stop()
        for server in (self.webhook, self.health):
            if server is not None:
                server.shutdown()
                server.server_close()

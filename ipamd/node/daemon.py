"""The node daemon: wires the object source, store, IPAM, verbs and servers of one node.

Start-up order matters for "nothing lost": open the store, read the object source, finish or roll
back the attachments a crash left half done, reconcile, and only then accept CNI calls (the plexus-ipam socket is
served during the roll-back, to the DELs of the attachments' own delegates alone).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from cni.errors import InternalError
from ipamd.config import DaemonConfig
from ipamd.dhcp.server import GuestDhcp
from ipamd.drivers.delegate import used_configurations_path
from ipamd.drivers.table import all_drivers
from ipamd.invoke.chain import Chain
from ipamd.invoke.exec import Exec, reap_orphans
from ipamd.ipam.addresses import Ipam
from ipamd.ipam.delegated import DelegatedAddresses
from ipamd.ipam.registry import LeaseRegistry, NodeLocalRegistry
from ipamd.netlink.netns import HostNetlink, pod_namespace
from ipamd.netlink.node import NetlinkNodeLinks
from ipamd.node.activity import CallActivity
from ipamd.node.reconcile import NodeReports, Reconciler
from ipamd.node.segments import Segments
from ipamd.publish.base import LocalPublisher, Publisher
from ipamd.server.cni_http import CniHttpServer
from ipamd.server.grpc_api import IpamService, serve
from ipamd.sources.base import ObjectSource
from ipamd.sources.devices import KubeletDevices
from ipamd.sources.local import LocalSource
from ipamd.store.sqlite import Store
from ipamd.verbs.attacher import Attacher
from ipamd.verbs.ipam_hints import HintingExec, PlexusHints
from ipamd.verbs.ipam_plugin import IpamPlugin
from ipamd.verbs.networks import Networks

log = logging.getLogger("plexus-ipamd")
#: A reconcile round woken by an object's change waits this long (``Reconciler.settle_s``): every ADD in Kubernetes
#: mode changes objects (the pod's status, its IPAddress), and a round at once would compete with the next calls.
RECONCILE_SETTLE_S = 0.5


def _fault_hook(step_wanted: str, failure_rate: float, seed: str, delay_s: float = 0.0) -> Any:
    """Test hooks. ``PLEXUS_FAULT=step``: SIGKILL at that step of ADD or DEL (``PLEXUS_FAULT_DELAY=0.5``: that long
    after reaching it, so that what the call's other threads send meanwhile, its pod's status, lands first).
    ``PLEXUS_FAULT_RATE=0.1``: fail one step in ten (each ADD/DEL step before its commit, seeded by
    ``PLEXUS_FAULT_SEED``), so tests can show every failure unwinds. A step after the commit (``add:committed``) can
    only be killed at: nothing is undone once committed."""
    import random

    rng = random.Random(seed)
    lock = threading.Lock()

    def fault(step: str) -> None:
        if step_wanted and step == step_wanted:
            log.warning("fault injection: killing the daemon at %s", step)
            time.sleep(delay_s)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)
        if failure_rate and not step.endswith(":committed"):
            with lock:
                hit = rng.random() < failure_rate
            if hit:
                raise InternalError(f"injected failure at {step}", "PLEXUS_FAULT_RATE")

    return fault


class NodeDaemon:
    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self.store = Store(cfg.db)
        self.calls = CallActivity()  # the CNI calls being served: background work waits for a lull in them
        self.controller: Any = None
        self.services: Any = None  # Services over additional networks: the controller's, when it runs here
        self.outbox: Any = None  # the cluster's API writes owed (Kubernetes mode)
        registry: LeaseRegistry = NodeLocalRegistry()
        publisher: Publisher = LocalPublisher()
        reports: NodeReports | None = None  # this node's attachment reports in the API (Kubernetes mode)
        self.source: ObjectSource
        self._watch_blocks: Callable[[Callable[[], None]], None] | None = None
        self.snapshots: Any = None  # the informers' caches on disk (Kubernetes mode: ipamd.kube.snapshot)
        if cfg.kubeconfig:  # imported only here: the kubernetes client costs ~200 ms to import
            from ipamd.kube.blocks import KIND as BLOCK_KIND
            from ipamd.kube.blocks import BlockRegistry
            from ipamd.kube.client import kube_api
            from ipamd.kube.outbox import OUTBOX_SETTLE_S, Outbox
            from ipamd.kube.publisher import KubePublisher, api_senders
            from ipamd.kube.source import KubernetesSource

            api = kube_api(cfg.kubeconfig)
            self.source = KubernetesSource(api, cfg.node_name, services=cfg.controller)
            if cfg.controller:
                from ipamd.kube.controller import Controller
                from ipamd.kube.services import ServiceEndpoints

                self.controller = Controller(api, self.source, cfg.controller_namespace, block_ttl_s=cfg.block_ttl,
                                             heartbeat_namespace=cfg.heartbeat_namespace)
                self.services = ServiceEndpoints(api, self.source, lambda: bool(self.controller.acting))
            self.outbox = Outbox(self.store, api_senders(api), settle_s=OUTBOX_SETTLE_S, lull=self.calls.wait_for_lull)
            blocks = BlockRegistry(self.source, cfg.node_name, self.outbox, claim_blocks=cfg.address_blocks,
                                   heartbeat_namespace=cfg.heartbeat_namespace, leases=self.store,
                                   server_now=api.server_clock.now)
            self.outbox.unpark_all("unuse")  # used-by writes a kill cut short (ipamd.kube.users): checked when made
            self.outbox.unpark_all("hand_back")  # take-ups a kill cut short: no call is in flight before the servers
            blocks.drop_unrecorded()  # in-block claims a kill cut short before their transaction: never made
            registry = blocks
            source = self.source

            def watch_blocks(wake: Callable[[], None]) -> None:
                """Another node asks for one of this node's address blocks: a reconcile round gives it back."""
                def changed() -> None:
                    if blocks.asked():
                        wake()

                source.subscribe(changed, kinds=(BLOCK_KIND,))

            self._watch_blocks = watch_blocks
            publisher = reports = KubePublisher(api, cfg.node_name, self.outbox, self.source)
            if cfg.snapshot_interval > 0:
                from ipamd.kube import snapshot

                self.snapshots = snapshot.Keeper(self.source, snapshot.path_for(cfg.db), cfg.node_name,
                                                 cfg.snapshot_interval, given_back=blocks.given_back)
                blocks.on_return = self.snapshots.refresh
        else:
            self.source = LocalSource(cfg.objects_dir, lambda ns, name: self.store.generated_uid(ns, name, _new_uid()))
        self.ipam = Ipam(self.store, self.source, registry=registry)
        self.delegated = DelegatedAddresses(self.ipam, self.source)
        host = HostNetlink(cfg.node_netns)
        self.segments = Segments(self.store, NetlinkNodeLinks(host), time.time, cluster=bool(cfg.kubeconfig))
        self._ready = threading.Event()
        fault = _fault_hook(cfg.fault, float(os.environ.get("PLEXUS_FAULT_RATE") or 0),
                            os.environ.get("PLEXUS_FAULT_SEED", "plexus"),
                            float(os.environ.get("PLEXUS_FAULT_DELAY") or 0))
        # what Plexus tells the plexus-ipam its delegates exec (delegateIPAM: exec), vouched for while they run
        hints = PlexusHints()
        delegation = Chain(HintingExec(Exec(node_netns=cfg.node_netns, owner=os.path.abspath(cfg.db)), hints))
        self.devices = KubeletDevices(cfg.pod_resources_socket, cfg.device_info_dir) if cfg.pod_resources_socket \
            else None
        self.guest_dhcp = GuestDhcp()  # the guests of TAPs with ipAssignmentMode DHCP
        self.attacher = Attacher(self.store, self.source, self.ipam, self.segments,
                                 all_drivers(delegation, used_configurations_path(cfg.db), self.guest_dhcp), host,
                                 pod_namespace, publisher, self._ready.is_set, fault,
                                 networks=Networks(self.source, self.ipam, devices=self.devices), delegation=delegation,
                                 delegated=self.delegated, background_del=cfg.del_mode == "background",
                                 del_delay_s=cfg.del_delay)
        self.ipam_plugin = IpamPlugin(self.delegated, self.source, self._ready.is_set, publisher, hints)
        self.reconciler = Reconciler(self.store, self.source, self.ipam, self.attacher, self.segments, publisher,
                                     cfg.reconcile_interval, cluster=bool(cfg.kubeconfig), settle_s=RECONCILE_SETTLE_S,
                                     lull=self.calls.wait_for_lull, reports=reports)
        self.cni_server: CniHttpServer | None = None
        self.ipam_server: CniHttpServer | None = None

    def _outbox_made(self) -> int:
        return int(self.outbox.sent) if self.outbox is not None else 0

    def sync(self) -> list[Any]:
        problems = self.source.sync()
        self.reconciler.run_once()
        return problems

    def start(self) -> None:
        self.source.start()
        if self.snapshots is not None:
            self.snapshots.start()
        if self.outbox is not None:
            self.outbox.start()
        if self.controller is not None:
            self.controller.start()
            self.services.start()
        reap_orphans(os.path.abspath(self.cfg.db))  # delegates a killed predecessor left running, before undoing them
        # served before the recovery: undoing a killed ADD runs its delegates' DEL, whose plexus-ipam calls here
        # (``IpamPlugin.handle`` serves, until ready, the DELs of the containers being recovered alone)
        undone = {rec.container_id for rec in self.store.attachments() if rec.state != "ready"}
        self.ipam_plugin.recovering = undone.__contains__
        self.ipam_server = CniHttpServer(self.cfg.ipam_plugin_socket, self.calls.served(self.ipam_plugin.handle),
                                         self._ready.is_set, endpoint="/v1/ipam")
        threading.Thread(target=self.ipam_server.serve_forever, name="ipam-server", daemon=True).start()
        recovered = self.reconciler.recover()
        self.guest_dhcp.resume(self.store.attachments())  # before any CNI DEL can come: a DEL then stops it for good
        self.reconciler.run_once()
        self.source.subscribe(self.reconciler.wake)
        if self._watch_blocks is not None:
            self._watch_blocks(self.reconciler.wake_now)
        self.reconciler.start()
        self.cni_server = CniHttpServer(self.cfg.socket, self.calls.served(self.attacher.handle), self._ready.is_set,
                                        workers=self.cfg.cni_workers)
        threading.Thread(target=self.cni_server.serve_forever, name="cni-server", daemon=True).start()
        self._ready.set()
        service = IpamService(self.store, self.source, self.ipam, self.sync, self._outbox_made)
        self.grpc_server, self.health = serve(self.cfg.grpc_socket, service, self._ready.is_set)
        if self.cfg.metrics_port:
            from prometheus_client import start_http_server

            from ipamd.server.metrics import GUEST_DHCP, OUTBOX_DEPTH, OUTBOX_REFUSALS

            OUTBOX_DEPTH.set_function(lambda: float(self.outbox.depth() if self.outbox is not None else 0))
            OUTBOX_REFUSALS.counts = lambda: self.outbox.refusals() if self.outbox is not None else {}
            GUEST_DHCP.replies, GUEST_DHCP.taps = self.guest_dhcp.replies, self.guest_dhcp.taps
            start_http_server(self.cfg.metrics_port, addr=self.cfg.metrics_address)
        log.info("plexus-ipamd ready: cni=%s ipam=%s grpc=%s objects=%s db=%s (recovered %d attachments)",
                 self.cfg.socket, self.cfg.ipam_plugin_socket, self.cfg.grpc_socket, self.cfg.objects_dir, self.cfg.db, recovered)

    def stop(self) -> None:
        self._ready.clear()
        if self.controller is not None:
            self.services.stop()
            self.controller.stop()
        self.reconciler.stop()
        if self.outbox is not None:
            self.outbox.stop()
        if self.snapshots is not None:
            self.snapshots.stop()
        self.source.stop()
        for server in (self.cni_server, self.ipam_server):
            if server is not None:
                server.shutdown()
                server.server_close()
        if self.attacher.reaper is not None:  # what it has not finished, the next start does
            self.attacher.reaper.stop()
        self.guest_dhcp.close()
        self.grpc_server.stop(grace=2)
        if self.devices is not None:
            self.devices.close()
        self.store.close()
        # a stale socket would look like a live daemon
        for path in (self.cfg.socket, self.cfg.ipam_plugin_socket, self.cfg.grpc_socket):
            try:
                os.unlink(path)
            except OSError:
                pass


def _new_uid() -> str:
    import uuid

    return str(uuid.uuid4())



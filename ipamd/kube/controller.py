"""The cluster controller: the work that must be done once for the cluster, not once per node.

Runs inside any ``plexus-ipamd --controller`` and acts only while it holds the
``coordination.k8s.io`` Lease ``plexus-controller`` (leader election: one acting controller, the
others waiting to take over when its lease is not renewed):
- gives each Network (and VLAN ClusterNetwork) its VLAN ID or VNI from its class's pool — the one it
  asks for when free, else a condition says why — and writes its status as seed 000 shows it
  (``bridgeName``, ``vlanID``, conditions ``Ready`` and ``AllNodeAttachementsAreReady``, counters); an ID
  comes back to the pool with its Network;
- allocates the ``Auto`` IPAddresses users create, before any pod uses them (``phase: Allocated``);
- ends the quarantine of orphaned IPAddressLeases whose TTL is over.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cni import links
from ipamd.allocator import pick_free, to_int, to_text
from ipamd.kube.leases import lease_name
from ipamd.kube.source import PLURALS, VERSION, KubernetesSource
from ipamd.objects import GROUP, AddressPool, ClusterNetwork, IPAddressObject, Network, NetworkClass, parse_duration
from ipamd.segments import segment_kind

log = logging.getLogger(__name__)
LEASE_NAME = "plexus-controller"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str) -> float:
    text = text.rstrip("Z").split(".")[0]
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()


class LeaderElector:
    """A coordination.k8s.io/v1 Lease held by renewing it; taken over when not renewed in time."""

    def __init__(self, api: client.ApiClient, namespace: str, identity: str, duration_s: int = 15) -> None:
        self.coord = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.identity = identity
        self.duration_s = duration_s

    def try_acquire(self) -> bool:
        try:
            lease: Any = self.coord.read_namespaced_lease(LEASE_NAME, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {"metadata": {"name": LEASE_NAME, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration_s,
                             "acquireTime": _now(), "renewTime": _now(), "leaseTransitions": 0}}
            try:
                self.coord.create_namespaced_lease(self.namespace, body)  # type: ignore[arg-type]
                return True
            except ApiException as exc2:
                if exc2.status == 409:
                    return False
                raise
        spec = lease.spec
        mine = spec.holder_identity == self.identity
        renewed = spec.renew_time.timestamp() if spec.renew_time else 0.0
        expired = renewed + (spec.lease_duration_seconds or self.duration_s) < time.time()
        if not mine and not expired:
            return False
        spec.holder_identity = self.identity
        spec.renew_time = datetime.now(UTC)
        if not mine:
            spec.acquire_time = datetime.now(UTC)
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        try:
            self.coord.replace_namespaced_lease(LEASE_NAME, self.namespace, lease)  # resourceVersion: optimistic
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise


    def release(self) -> None:
        """Hand the Lease back when stopping (as client-go's ReleaseOnCancel): the standby takes over at
        its next try instead of after the lease duration."""
        try:
            lease: Any = self.coord.read_namespaced_lease(LEASE_NAME, self.namespace)
            if lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = ""
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = datetime.now(UTC)
            self.coord.replace_namespaced_lease(LEASE_NAME, self.namespace, lease)
            log.info("handed the controller Lease back")
        except ApiException as exc:
            log.warning("handing the controller Lease back: %s", exc.reason)


class Controller:
    def __init__(self, api: client.ApiClient, source: KubernetesSource, namespace: str, interval: float = 2.0) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.source = source
        self.identity = f"{socket.gethostname()}-{os.getpid()}-{source.node_name}"
        self.elector = LeaderElector(api, namespace, self.identity)
        self.interval = interval
        self.leading = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._counted: dict[str, tuple[int, int]] = {}
        source.subscribe(self._wake.set)

    # -- networks -------------------------------------------------------------------------------
    def _class_of(self, net: Network | ClusterNetwork) -> NetworkClass | None:
        found = self.source.get("NetworkClass", "", net.network_class) if net.network_class else None
        return found if isinstance(found, NetworkClass) else None

    def assign_segments(self) -> None:
        nets: list[Network | ClusterNetwork] = [n for n in self.source.list("Network") if isinstance(n, Network)]
        nets += [n for n in self.source.list("ClusterNetwork") if isinstance(n, ClusterNetwork)]
        used: dict[tuple[str, int], str] = {}
        for net in nets:  # IDs already handed out (in status), and fixed ones (ClusterNetwork spec)
            kind = self._kind(net)
            ident = net.status_vlan_id or (net.vlan_id if isinstance(net, ClusterNetwork) else None)
            if kind != "none" and ident:
                used.setdefault((kind, ident), net.meta.key)
        self._count_attachments(nets, used)
        for net in nets:
            kind = self._kind(net)
            if kind == "none" or net.status_vlan_id:
                continue  # assigned already (IDs are never moved under live pods)
            cls = self._class_of(net)
            pool = (cls.vxlan.vni_pool if cls and cls.vxlan else cls.vlan_pool if cls else ())
            wanted = net.vlan_id
            ident, problem = self._pick(kind, pool, wanted, used, net.meta.key)
            if ident:
                used[(kind, ident)] = net.meta.key
            self._write_network_status(net, kind, ident, problem)

    def _kind(self, net: Network | ClusterNetwork) -> str:
        return segment_kind(net, self._class_of(net))

    def _pick(self, kind: str, pool: tuple[tuple[int, int], ...], wanted: int | None,
              used: dict[tuple[str, int], str], key: str) -> tuple[int, str]:
        if wanted is not None:
            holder = used.get((kind, wanted))
            if holder not in (None, key):
                return 0, f"VLAN ID {wanted} is already used by {holder}"
            if pool and not any(a <= wanted <= b for a, b in pool):
                return 0, f"VLAN ID {wanted} is not in the class's pool"
            return wanted, ""
        for a, b in pool:
            for ident in range(a, b + 1):
                if (kind, ident) not in used:
                    return ident, ""
        return 0, "no free VLAN ID left in the class's pool"

    def _count_attachments(self, nets: list[Network | ClusterNetwork], used: dict[tuple[str, int], str]) -> None:
        """Nodes report their side of each Network (NodeNetworkInterfaceAttachment); the counters and
        AllNodeAttachementsAreReady (upstream's spelling) follow them."""
        counts: dict[tuple[str, str, str], list[bool]] = {}
        for item in self.source.attachment_items():
            ref = (item.get("spec") or {}).get("networkRef") or {}
            conds = (item.get("status") or {}).get("conditions") or []
            is_ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
            counts.setdefault((ref.get("kind", ""), ref.get("namespace", ""), ref.get("name", "")), []).append(is_ready)
        for net in nets:
            if self._kind(net) != "none" and not net.status_vlan_id:
                continue  # no ID yet: its status is written when it gets one
            seen = counts.get((net.meta.kind, net.meta.namespace, net.meta.name), [])
            total, ready = len(seen), sum(seen)
            if (total, ready) == self._counted.get(net.meta.key):
                continue
            self._counted[net.meta.key] = (total, ready)
            all_ready = total > 0 and ready == total
            cond = {"type": "AllNodeAttachementsAreReady", "status": "True" if all_ready else "False",
                    "reason": "AllNodeInterfaceAttachmentsAreReady" if all_ready else "NodeInterfaceAttachmentsNotReady",
                    "message": "All node interface attachments are ready" if all_ready
                    else f"{ready} of {total} node interface attachments are ready", "lastTransitionTime": _now()}
            status: dict[str, Any] = {"nodeAttachementsCount": total, "readyNodeAttachementsCount": ready}
            kind = self._kind(net)
            ident = net.status_vlan_id or 0
            status["conditions"] = [cond] + ([self._ready_condition(True, "")] if kind == "none" or ident else [])
            if kind == "none":
                status.update({"bridgeName": links.bridge_name(kind, 0, net.meta.key), "vlanID": 0})
            self._patch_network_status(net, status)

    @staticmethod
    def _ready_condition(ready: bool, problem: str) -> dict[str, str]:
        return {"type": "Ready", "status": "True" if ready else "False",
                "reason": "NetworkReady" if ready else "VLANIDNotAssigned",
                "message": "Network is operational" if ready else problem, "lastTransitionTime": _now()}

    def _patch_network_status(self, net: Network | ClusterNetwork, status: dict[str, Any]) -> None:
        plural = PLURALS[net.meta.kind]
        try:
            if net.meta.namespace:
                self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, net.meta.namespace, plural,
                                                                  net.meta.name, {"status": status})
            else:
                self.custom.patch_cluster_custom_object_status(GROUP, VERSION, plural, net.meta.name, {"status": status})
        except ApiException as exc:
            log.warning("status of %s: %s", net.meta.display, exc.reason)

    def _write_network_status(self, net: Network | ClusterNetwork, kind: str, ident: int, problem: str) -> None:
        now = _now()
        ready = bool(ident)
        status = {
            "bridgeName": links.bridge_name(kind, ident, net.meta.key) if ready else "",
            "vlanID": ident if kind == "vlan" else 0,
            **({"vni": ident} if kind == "vxlan" else {}),
            "observedGeneration": 1,
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "False",
                 "reason": "NetworkReady" if ready else "VLANIDNotAssigned",
                 "message": "Network is operational" if ready else problem, "lastTransitionTime": now},
            ],
        }
        plural = PLURALS[net.meta.kind]
        try:
            if net.meta.namespace:
                self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, net.meta.namespace, plural,
                                                                  net.meta.name, {"status": status})
            else:
                self.custom.patch_cluster_custom_object_status(GROUP, VERSION, plural, net.meta.name, {"status": status})
            log.info("%s: VLAN ID %s%s", net.meta.display, ident or "-", f" ({problem})" if problem else "")
            self._counted.pop(net.meta.key, None)  # the next round writes the attachment counters again
        except ApiException as exc:
            log.warning("status of %s: %s", net.meta.display, exc.reason)

    # -- IPAddresses and leases -----------------------------------------------------------------------
    def _pool_of(self, obj: IPAddressObject) -> AddressPool | None:
        ref = obj.network_ref
        net = self.source.get(ref.kind, obj.meta.namespace if ref.kind == "Network" else "", ref.name)
        if not isinstance(net, (Network, ClusterNetwork)) or net.pool_ref is None:
            return None
        ns = net.meta.namespace if net.pool_ref.kind == "IPAddressPool" else ""
        pool = self.source.get(net.pool_ref.kind, ns, net.pool_ref.name)
        return pool if isinstance(pool, AddressPool) else None

    def allocate_user_ipaddresses(self) -> None:
        leases = self.source.lease_items()
        held = {(x.get("spec") or {}).get("holder") for x in leases}
        for kind in ("IPAddress", "ClusterIPAddress"):
            for obj in self.source.list(kind):
                if not isinstance(obj, IPAddressObject) or obj.type != "Auto" or obj.owner_pod_uid:
                    continue  # Static ones are leased by the nodes; a pod's own Auto ones by its node
                if obj.meta.key in held:
                    continue
                pool = self._pool_of(obj)
                if pool is None:
                    continue
                taken = {to_int(str((x.get("spec") or {}).get("ip"))) for x in leases
                         if (x.get("spec") or {}).get("pool") == pool.meta.key}
                self._allocate(obj, pool, taken)

    def _allocate(self, obj: IPAddressObject, pool: AddressPool, taken: set[int]) -> None:
        while True:
            picked = pick_free(pool, taken, None)
            if picked is None:
                self._ip_status(obj, {"phase": "Pending", "conditions": [
                    {"type": "Allocated", "status": "False", "reason": "NoFreeIPAddress",
                     "message": f"pool {pool.meta.display} has no free address", "lastTransitionTime": _now()}]})
                return
            ip, subnet = picked
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "IPAddressLease",
                    "metadata": {"name": lease_name(pool.meta.key, to_text(ip))},
                    "spec": {"pool": pool.meta.key, "ip": to_text(ip), "network": str(subnet.network),
                             "holder": obj.meta.key, "ttl": f"{int(pool.lease_ttl_s)}s"}}
            try:
                self.custom.create_cluster_custom_object(GROUP, VERSION, PLURALS["IPAddressLease"], body)
            except ApiException as exc:
                if exc.status == 409:
                    taken.add(ip)
                    continue
                raise
            self._ip_status(obj, {"phase": "Allocated", "address": to_text(ip), "network": str(subnet.network),
                                  "routes": [r.to_dict() for r in subnet.routes], "usedByPods": [],
                                  "conditions": [{"type": "Allocated", "status": "True", "reason": "IPAddressAllocated",
                                                  "message": "", "lastTransitionTime": _now()}]})
            return

    def _ip_status(self, obj: IPAddressObject, status: dict[str, Any]) -> None:
        try:
            if obj.meta.namespace:
                self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, obj.meta.namespace, PLURALS["IPAddress"],
                                                                  obj.meta.name, {"status": status})
            else:
                self.custom.patch_cluster_custom_object_status(GROUP, VERSION, PLURALS["ClusterIPAddress"],
                                                               obj.meta.name, {"status": status})
        except ApiException as exc:
            log.warning("status of %s: %s", obj.meta.display, exc.reason)

    def expire_leases(self) -> None:
        now = time.time()
        for item in self.source.lease_items():
            orphaned = (item.get("status") or {}).get("orphaningTimestamp")
            if not orphaned:
                continue
            try:
                ttl = parse_duration(str((item.get("spec") or {}).get("ttl") or "0s"))
            except ValueError:
                ttl = 0.0
            if now >= _parse_time(orphaned) + ttl:
                try:
                    self.custom.delete_cluster_custom_object(GROUP, VERSION, PLURALS["IPAddressLease"],
                                                             item["metadata"]["name"])
                except ApiException as exc:
                    if exc.status != 404:
                        log.warning("expiring lease %s: %s", item["metadata"]["name"], exc.reason)

    # -- loop ---------------------------------------------------------------------------------------
    def run_once(self) -> None:
        self.leading = self.elector.try_acquire()
        if not self.leading or not self.source.ready():
            return
        self.assign_segments()
        self.allocate_user_ipaddresses()
        self.expire_leases()

    def loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:
                log.warning("controller: %s", exc)
            self._wake.wait(self.interval)
            self._wake.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.loop, name="controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(10)  # no round may renew the Lease after it is handed back
        if self.leading:
            self.elector.release()

"""The CNI verbs as the daemon carries them out: ADD, DEL, CHECK, GC, STATUS.

ADD records its intent before it touches the kernel and registers an undo step after every side
effect; any failure unwinds them in reverse order, so a failed ADD leaves no link, lease or status.
DEL is idempotent and best-effort: a missing netns, link or record counts as success, every step
runs even after one fails, and it needs neither the pod nor the network objects (the attachment
record holds all it needs). Attachments are keyed as the runtime keys them: (container ID, CNI_IFNAME).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from pyroute2 import IPRoute

from cni import links
from cni.errors import (
    AnnotationInvalid,
    CniError,
    InterfaceFailure,
    InvalidConfig,
    InvalidEnvironment,
    PluginNotAvailable,
    PoolExhausted,
    UnknownContainer,
)
from cni.netns import NetnsGone, pod_netlink
from cni.types import Interface, IPConfig, Result, Route, cidr_of
from ipamd.annotations import (
    AddressConfig,
    InterfaceStatus,
    NetworkSelection,
    build_networks_status,
    check_ifname,
    parse_networks_spec,
)
from ipamd.ipam import Claim, Ipam, ResolvedNetwork, now_rfc3339
from ipamd.objects import POD_ANNOTATIONS_CAPABILITY, SPEC_ANNOTATION, Meta, Pod
from ipamd.publish import LocalPublisher, Publisher
from ipamd.segments import Segments
from ipamd.sources import ObjectSource
from ipamd.store import AttachmentRecord, BuiltInterface, IPRecord, PodStatus, Store

log = logging.getLogger(__name__)
VALID_ATTACHMENTS = "cni.dev/valid-attachments"


@dataclass(frozen=True, slots=True)
class CniCall:
    """One CNI invocation as the shim forwarded it."""

    verb: str
    container_id: str
    netns: str
    ifname: str
    args: dict[str, str]
    config: dict[str, Any]

    @classmethod
    def from_wire(cls, body: Any) -> CniCall:
        if not isinstance(body, dict) or not isinstance(body.get("env"), dict) or not isinstance(body.get("config"), dict):
            raise InvalidConfig("request must be {env: {...}, config: {...}}", "body")
        env = body["env"]
        args: dict[str, str] = {}
        for part in str(env.get("CNI_ARGS", "")).split(";"):
            k, sep, v = part.partition("=")
            if sep and k:
                args[k.strip()] = v.strip()
        return cls(str(env.get("CNI_COMMAND", "")), str(env.get("CNI_CONTAINERID", "")),
                   str(env.get("CNI_NETNS", "")), str(env.get("CNI_IFNAME", "")), args, body["config"])

    @property
    def version(self) -> str:
        return str(self.config.get("cniVersion", "1.1.0"))

    @property
    def network_name(self) -> str:
        return str(self.config.get("name", ""))


class KeyedLocks:
    """One lock per attachment: the runtime may send two DELs for one container at the same time."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)

    @contextlib.contextmanager
    def hold(self, key: tuple[str, str]) -> Iterator[None]:
        with self._guard:
            lock = self._locks[key]
        with lock:
            yield


def _quietly(what: str, fn: Callable[..., Any], *args: Any) -> None:
    """Undo steps never raise: the error that made us unwind is the one reported."""
    try:
        fn(*args)
    except Exception as exc:  # logged, not raised
        log.warning("undo %s failed: %s", what, exc)


class Attacher:
    def __init__(self, store: Store, source: ObjectSource, ipam: Ipam, segments: Segments,
                 ready: Callable[[], bool], host_netlink: Callable[[], IPRoute] = IPRoute,
                 fault: Callable[[str], None] = lambda step: None, publisher: Publisher | None = None) -> None:
        self.store = store
        self.source = source
        self.ipam = ipam
        self.segments = segments
        self.ready = ready
        self._make_host_netlink = host_netlink
        self._local = threading.local()
        self.fault = fault  # test hook: may kill the process at a named step
        self.publisher: Publisher = publisher or LocalPublisher()
        self.locks = KeyedLocks()

    def host_netlink(self) -> IPRoute:
        """This thread's netlink socket in the node's namespace, kept open across calls.

        pyroute2 keeps one socket per thread, and opening one costs about a millisecond; the CNI
        server serves calls from a fixed pool of threads, so each keeps its own.
        """
        ipr: IPRoute | None = getattr(self._local, "host", None)
        if ipr is None:
            ipr = self._local.host = self._make_host_netlink()
        return ipr

    def handle(self, call: CniCall) -> dict[str, Any]:
        verbs: dict[str, Callable[[CniCall], dict[str, Any]]] = {
            "ADD": self.add, "DEL": self.delete, "CHECK": self.check, "GC": self.gc, "STATUS": self.status,
        }
        handler = verbs.get(call.verb)
        if handler is None:
            raise InvalidEnvironment(f"unknown CNI_COMMAND {call.verb!r}", "CNI_COMMAND")
        return handler(call)

    # -- pod ------------------------------------------------------------------------------------
    def find_pod(self, call: CniCall) -> Pod:
        ns, name, uid = (call.args.get(k, "") for k in ("K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_UID"))
        if not ns or not name:
            raise InvalidEnvironment("CNI_ARGS must name the pod (K8S_POD_NAMESPACE and K8S_POD_NAME)", "CNI_ARGS")
        pod = self.source.get("Pod", ns, name)
        runtime_annotations = (call.config.get("runtimeConfig") or {}).get(POD_ANNOTATIONS_CAPABILITY)
        if isinstance(pod, Pod):
            if uid and pod.meta.uid and uid != pod.meta.uid:
                raise UnknownContainer(f"pod {ns}/{name} has UID {pod.meta.uid}, not {uid} (K8S_POD_UID)", "K8S_POD_UID")
            if isinstance(runtime_annotations, dict):
                return replace(pod, annotations=dict(runtime_annotations))
            return pod
        if isinstance(runtime_annotations, dict) and uid:
            return Pod(Meta("Pod", name, ns, uid, "runtime"), dict(runtime_annotations))
        wait = getattr(self.source, "wait_for_pod", None)  # a cluster source: the watch may lag the ADD
        if wait is not None:
            found = wait(ns, name)
            if isinstance(found, Pod):
                if uid and found.meta.uid != uid:
                    raise UnknownContainer(f"pod {ns}/{name} has UID {found.meta.uid}, not {uid} (K8S_POD_UID)",
                                           "K8S_POD_UID")
                return found
        raise UnknownContainer(f"pod {ns}/{name} is not known to the object source", "K8S_POD_NAME")

    # -- ADD ------------------------------------------------------------------------------------
    def add(self, call: CniCall) -> dict[str, Any]:
        prev = Result.from_dict(call.config["prevResult"]) if call.config.get("prevResult") else None
        with self.locks.hold((call.container_id, call.ifname)):
            existing = self.store.get_attachment(call.container_id, call.ifname)
            if existing is not None and existing.state == "ready":
                return Result.from_dict(existing.result).merged_after(prev).to_dict(call.version)
            if existing is not None:  # a crashed ADD or DEL of this attachment: finish it first
                self._teardown(existing)
            pod = self.find_pod(call)
            selections = parse_networks_spec(pod.annotations.get(SPEC_ANNOTATION))
            taken = {i.name for i in prev.interfaces if i.sandbox} if prev else set()
            taken.add(call.ifname)
            for i, sel in enumerate(selections):
                if sel.if_name in taken:
                    raise AnnotationInvalid(f"networks-spec[{i}].ifName {sel.if_name!r} is already used in the pod",
                                        f"networks-spec[{i}].ifName")
            check_ifname(call.ifname, "CNI_IFNAME")
            try:
                resolved = [self.ipam.resolve(s, pod.meta.namespace, f"networks-spec[{i}]")
                            for i, s in enumerate(selections)]
                user_ips = [self.ipam.validate(pod, s, n, f"networks-spec[{i}]")
                            for i, (s, n) in enumerate(zip(selections, resolved, strict=True))]
                result = self._add(call, pod, selections, resolved, user_ips)
            except CniError as err:
                self.publisher.failed(pod, str(err))
                raise
        return result.merged_after(prev).to_dict(call.version)

    def _add(self, call: CniCall, pod: Pod, selections: list[NetworkSelection], resolved: list[ResolvedNetwork],
             user_ips: list[Any]) -> Result:
        record = AttachmentRecord(call.container_id, call.ifname, pod.meta.uid, pod.meta.namespace, pod.meta.name,
                                  call.netns, "adding", updated_at=time.time(), network=call.network_name,
                                  pod_known=pod.meta.source != "runtime")
        host = self.host_netlink()
        with pod_netlink(call.netns) as (pod_nl, pod_fd), contextlib.ExitStack() as undo:
            with self.store.transaction():
                self.store.put_attachment(record)
            undo.callback(_quietly, "attachment record", self._forget_record, call.container_id, call.ifname)
            self.fault("add:recorded")
            built: list[tuple[BuiltInterface, list[Claim], links.PodLink]] = []
            for sel, net, objs in zip(selections, resolved, user_ips, strict=False):
                try:
                    with self.store.transaction():
                        claims = self.ipam.claim(pod, sel, net, objs)
                        iface = self._planned(call, sel, net, claims)
                        record = replace(record, interfaces=record.interfaces + (iface,))
                        self.store.put_attachment(record)
                except PoolExhausted as exc:
                    self.ipam.note_exhausted(objs, exc)
                    raise
                undo.callback(_quietly, "leases", self.ipam.undo_claims, claims, pod)
                self.fault("add:leased")
                link = self._build(host, pod_nl, pod_fd, call, sel, net, iface, claims, undo)
                built.append((iface, claims, link))
                self.fault("add:built")
            result = self._result(call, built)
            statuses = self._statuses(built)
            with self.store.transaction():
                record = replace(record, state="ready", result=result.to_dict(), updated_at=time.time(),
                                 interfaces=tuple(replace(b, mac=link.mac) for b, _, link in built))
                self.store.put_attachment(record)
                entries = self._write_pod_status(pod, call, statuses)
            used_keys = [k for b, _, _ in built for k in b.ip_keys]
            self.ipam.set_attached(used_keys, True)
            created = [k for b, _, _ in built for k in b.created_ip_keys]
            self.publisher.attached(pod, entries, self._records(created), self._records(used_keys))
            undo.pop_all()
        return result

    def _planned(self, call: CniCall, sel: NetworkSelection, net: ResolvedNetwork, claims: list[Claim]) -> BuiltInterface:
        seg = self.segments.plan(net)
        return BuiltInterface(
            if_name=sel.if_name, kind=sel.interface_type, network_key=net.key, network_type=net.type,
            network_name=net.name,
            host_link="" if sel.interface_type == "macvlan"
            else links.host_link_name(call.container_id, call.ifname, sel.if_name),
            bridge=seg.record.bridge, vlan_id=seg.record.id if seg.record.kind == "vlan" else 0,
            ip_keys=tuple(c.ip_key for c in claims), created_ip_keys=tuple(c.ip_key for c in claims if c.created_ip),
            configure_ips=not sel.skip_ip_assignment and sel.interface_type != "tap",
            addresses=tuple(AddressConfig(c.ip_name, c.address, c.network, c.routes).to_dict() for c in claims),
        )

    def _build(self, host: IPRoute, pod_nl: IPRoute, pod_fd: int, call: CniCall, sel: NetworkSelection,
               net: ResolvedNetwork, iface: BuiltInterface, claims: list[Claim], undo: contextlib.ExitStack) -> links.PodLink:
        try:
            link = self._make_link(host, pod_nl, pod_fd, sel, net, iface, undo)
        except InterfaceFailure:
            if not self.segments.is_cached(iface.bridge) or links.bridge_index(host, iface.bridge) is not None:
                raise
            self.segments.forget(iface.bridge)  # the bridge was removed behind our back: make it again
            link = self._make_link(host, pod_nl, pod_fd, sel, net, iface, undo)
        if iface.configure_ips and claims:
            routes = [(r["destination"], r["via"]) for c in claims for r in c.routes]
            links.configure_addresses(pod_nl, link.index, sel.if_name,
                                      [cidr_of(c.address, c.network) for c in claims], dict.fromkeys(routes))
        return link

    def _make_link(self, host: IPRoute, pod_nl: IPRoute, pod_fd: int, sel: NetworkSelection, net: ResolvedNetwork,
                   iface: BuiltInterface, undo: contextlib.ExitStack) -> links.PodLink:
        bridge_index = self.segments.bridge_index(host, net, iface.bridge)
        if sel.interface_type == "macvlan":
            # on the segment's bridge, not its uplink: a NIC enslaved to a bridge cannot also carry
            # macvlans (EBUSY), and this way veth, TAP and macvlan pods share one L2 segment
            link = links.add_macvlan(host, pod_nl, pod_fd, bridge_index, sel.if_name, sel.mac)
            undo.callback(_quietly, f"macvlan {sel.if_name}", links.delete_link, pod_nl, sel.if_name)
        elif sel.interface_type == "tap":
            undo.callback(_quietly, f"tap {sel.if_name}", self._remove_tap, pod_nl, iface)
            undo.callback(_quietly, "temporary tap", links.delete_link, host, f"{iface.host_link}t")
            link = links.add_tap(host, pod_nl, pod_fd, iface.host_link, sel.if_name, sel.mac, bridge_index,
                                 sel.tap_uid, sel.tap_gid)
            undo.callback(_quietly, f"veth {iface.host_link}", links.delete_link, host, iface.host_link)
        else:
            undo.callback(_quietly, f"veth {iface.host_link}", links.delete_link, host, iface.host_link)
            link = links.add_veth(host, pod_nl, pod_fd, iface.host_link, sel.if_name, sel.mac, bridge_index)
        return link

    @staticmethod
    def _remove_tap(pod_nl: IPRoute, iface: BuiltInterface) -> None:
        for name in (iface.if_name, f"{iface.host_link}b", f"{iface.host_link}p"):
            links.delete_link(pod_nl, name)

    def _result(self, call: CniCall, built: list[tuple[BuiltInterface, list[Claim], links.PodLink]]) -> Result:
        interfaces: list[Interface] = []
        ips: list[IPConfig] = []
        routes: list[Route] = []
        for iface, claims, link in built:
            if iface.host_link and iface.kind == "veth":
                interfaces.append(Interface(iface.host_link))
            interfaces.append(Interface(link.name, link.mac, call.netns))
            if iface.configure_ips:
                for c in claims:
                    ips.append(IPConfig(cidr_of(c.address, c.network), len(interfaces) - 1))
                    routes.extend(Route(r["destination"], r["via"]) for r in c.routes)
        return Result(tuple(interfaces), tuple(ips), tuple(dict.fromkeys(routes)))

    def _statuses(self, built: list[tuple[BuiltInterface, list[Claim], links.PodLink]]) -> list[InterfaceStatus]:
        since = now_rfc3339()
        return [
            InterfaceStatus(
                iface.network_type, iface.network_name, iface.if_name, link.mac, iface.vlan_id,
                tuple(AddressConfig(c.ip_name, c.address, c.network, c.routes) for c in claims),
                True, "InterfaceConfiguredSuccessfully", "", True, since,
            )
            for iface, claims, link in built
        ]

    def _records(self, keys: list[str]) -> list[IPRecord]:
        return [r for r in (self.store.get_ip(k) for k in keys) if r is not None]

    def _write_pod_status(self, pod: Pod, call: CniCall, statuses: list[InterfaceStatus]) -> list[dict[str, Any]]:
        others = [a for a in self.store.attachments_of_pod(pod.meta.uid)
                  if (a.container_id, a.ifname) != (call.container_id, call.ifname) and a.state == "ready"]
        entries = [e for a in others for e in a.networks_status]
        mine = build_networks_status(statuses)
        self.store.put_pod_status(PodStatus(pod.meta.uid, pod.meta.namespace, pod.meta.name,
                                            tuple(entries + mine), time.time()))
        rec = self.store.get_attachment(call.container_id, call.ifname)
        if rec is not None:
            self.store.put_attachment(replace(rec, networks_status=tuple(mine)))
        return entries + mine

    def _forget_record(self, container_id: str, ifname: str) -> None:
        with self.store.transaction():
            self.store.delete_attachment(container_id, ifname)

    # -- DEL ------------------------------------------------------------------------------------
    def delete(self, call: CniCall) -> dict[str, Any]:
        with self.locks.hold((call.container_id, call.ifname)):
            record = self.store.get_attachment(call.container_id, call.ifname)
            if record is None:
                return {}  # never ours, or already deleted: DEL is idempotent
            if call.netns and call.netns != record.netns:
                record = replace(record, netns=call.netns)
            self._teardown(record)
        return {}

    def teardown_current(self, container_id: str, ifname: str,
                         still_wanted: Callable[[AttachmentRecord], bool] = lambda rec: True) -> bool:
        """Tear an attachment down as it is once we hold its lock: a list read earlier may be stale
        (an ADD in flight has more interfaces by now, or a DEL has already removed it)."""
        with self.locks.hold((container_id, ifname)):
            record = self.store.get_attachment(container_id, ifname)
            if record is None or not still_wanted(record):
                return False
            self._teardown(record)
            return True

    def _teardown(self, record: AttachmentRecord) -> None:
        """Remove what an attachment built, then release what it held. Raises only if links remain."""
        with self.store.transaction():
            record = replace(record, state="deleting", updated_at=time.time())
            self.store.put_attachment(record)
        self.fault("del:marked")
        errors: list[str] = []
        host = self.host_netlink()
        for iface in record.interfaces:
            names = [iface.host_link, f"{iface.host_link}t"] if iface.kind == "tap" else [iface.host_link]
            for name in filter(None, names):
                try:
                    links.delete_link(host, name)
                except Exception as exc:
                    errors.append(f"{name}: {exc}")
        pod_side = [i for i in record.interfaces if i.kind in ("macvlan", "tap")]
        if pod_side and record.netns:
            try:
                with pod_netlink(record.netns) as (pod_nl, _):
                    for iface in pod_side:
                        if iface.kind == "tap":
                            self._remove_tap(pod_nl, iface)
                        else:
                            links.delete_link(pod_nl, iface.if_name)
            except NetnsGone:
                pass  # the namespace and everything in it are gone
            except CniError as exc:
                if exc.code != 3:
                    errors.append(str(exc))
            except Exception as exc:
                errors.append(f"pod interfaces: {exc}")
        if errors:
            raise InterfaceFailure("DEL could not remove every interface; the runtime will retry", "; ".join(errors))
        self.fault("del:unlinked")
        for iface in record.interfaces:
            self.ipam.release_pod(list(iface.ip_keys), record.pod_uid)
        if self.source.pod_by_uid(record.pod_uid) is None:
            self.ipam.forget_pod(record.pod_uid)
        with self.store.transaction():
            self.store.delete_attachment(record.container_id, record.ifname)
            remaining = self._refresh_pod_status(record)
        used = self._records([k for i in record.interfaces for k in i.ip_keys])
        if record.pod_known:
            self.publisher.detached(record.namespace, record.pod_name, record.pod_uid, remaining, used)
        self.fault("del:released")

    def _refresh_pod_status(self, record: AttachmentRecord) -> list[dict[str, Any]] | None:
        rest = [a for a in self.store.attachments_of_pod(record.pod_uid) if a.state == "ready"]
        if not rest:
            self.store.delete_pod_status(record.pod_uid)
            return None
        entries = tuple(e for a in rest for e in a.networks_status)
        self.store.put_pod_status(PodStatus(record.pod_uid, record.namespace, record.pod_name, entries, time.time()))
        return list(entries)

    # -- CHECK ----------------------------------------------------------------------------------
    def check(self, call: CniCall) -> dict[str, Any]:
        record = self.store.get_attachment(call.container_id, call.ifname)
        if record is None or record.state != "ready":
            raise UnknownContainer(f"no attachment for container {call.container_id[:12]} {call.ifname}", "CNI_CONTAINERID")
        problems: list[str] = []
        with pod_netlink(call.netns) as (pod_nl, _):
            for iface in record.interfaces:
                state = links.link_state(pod_nl, iface.if_name)
                if state is None:
                    problems.append(f"{iface.if_name} is missing")
                    continue
                if iface.mac and state["mac"] != iface.mac:
                    problems.append(f"{iface.if_name} has MAC {state['mac']}, expected {iface.mac}")
                if not state["up"]:
                    problems.append(f"{iface.if_name} is down")
                if iface.configure_ips:
                    for a in iface.addresses:
                        cidr = cidr_of(a["address"], a["network"])
                        if cidr not in state["addresses"]:
                            problems.append(f"{iface.if_name} lacks address {cidr}")
                        for r in a.get("routes", ()):
                            if (r["destination"], r["via"]) not in state["routes"]:
                                problems.append(f"{iface.if_name} lacks route {r['destination']} via {r['via']}")
        host = self.host_netlink()
        for iface in record.interfaces:
            if iface.host_link and links.link_state(host, iface.host_link) is None:
                problems.append(f"host link {iface.host_link} of {iface.if_name} is missing")
        if problems:
            raise InterfaceFailure("CHECK found the attachment changed", "; ".join(problems))
        return {}

    # -- GC and STATUS --------------------------------------------------------------------------
    def gc(self, call: CniCall) -> dict[str, Any]:
        valid = call.config.get(VALID_ATTACHMENTS)
        if not isinstance(valid, list):
            raise InvalidConfig(f"GC needs {VALID_ATTACHMENTS} as a list", VALID_ATTACHMENTS)
        keep = {(str(v.get("containerID")), str(v.get("ifname"))) for v in valid if isinstance(v, dict)}
        errors = []
        for record in self.store.attachments():
            if record.network and record.network != call.network_name:
                continue  # another network configuration's attachment: not ours to judge
            if (record.container_id, record.ifname) in keep:
                continue
            try:
                self.teardown_current(record.container_id, record.ifname)
            except CniError as exc:
                errors.append(f"{record.container_id[:12]}/{record.ifname}: {exc}")
        if errors:
            raise InterfaceFailure("GC could not release every stale attachment", "; ".join(errors))
        return {}

    def status(self, call: CniCall) -> dict[str, Any]:
        if not self.ready():
            raise PluginNotAvailable("plexus-ipamd is not ready", "object source not synced")
        return {}

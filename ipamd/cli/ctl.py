"""``plexusctl``: the operator's CLI. Objects in, pods run, status and leases out.

    plexusctl apply -f FILE|DIR|-         write manifests into the local object source
    plexusctl delete -f FILE|DIR|-        remove them
    plexusctl pod run -f POD.yaml         create a netns named after the pod and ADD it as a runtime would
    plexusctl pod rm NAME                 DEL it, remove the netns and the Pod
    plexusctl pod status NAME [--npwg]    print its networks-status (or network-status)
    plexusctl pod list                    pods with additional networks
    plexusctl ipam pools | leases         used/free/quarantined per pool; every lease (--pool POOL: of one)
    plexusctl ipam release POOL ADDRESS   free a stuck address (asks for confirmation when it is leased)
    plexusctl get ipaddresses | networks  IPAddress and Network statuses
    plexusctl get nad                     NetworkAttachmentDefinitions of the local object source

Tables for people, ``-o json`` for scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import yaml

from cni.errors import CniError
from ipamd.api import ipam_pb2 as pb
from ipamd.api import ipam_pb2_grpc as pb_grpc
from ipamd.invoke.conflist import DEFAULT_CNI_PATH, DEFAULT_CONF_DIR, PodIdentity, Runtime, find_conflist, load_conflist
from ipamd.model.objects import INT64_MAX, POD, AttachmentDefinition, ManifestInvalid, parse_as
from ipamd.sources import objectdir
from ipamd.sources.local import load_directory, manifest_files

NAD_NAMES = ("nad", "nads", "net-attach-def", "network-attachment-definitions")
DEFAULT_OBJECTS = os.environ.get("PLEXUS_OBJECTS_DIR", "/etc/plexus/objects")
DEFAULT_GRPC = os.environ.get("PLEXUS_GRPC_SOCKET", "/run/plexus/ipam.sock")
DEFAULT_STATE = os.environ.get("PLEXUS_CTL_STATE", "/var/lib/plexus/ctl")
#: The trailing metadata the daemon answers a refusal with (``ipamd.server.grpc_api``'s, not imported: it pulls the
#: whole IPAM in).
CNI_CODE_KEY = "plexus-cni-code"


class CtlError(Exception):
    """A failure to report in one line, exit 1."""


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in cells)


def age(since: float) -> str:
    """kubectl-style age: 42s, 5m, 3h, 2d."""
    s = max(0, int(time.time() - since))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


class Client:
    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self.path = socket_path
        self.timeout = timeout
        self._channel = grpc.insecure_channel(f"unix:{socket_path}")
        self.stub = pb_grpc.IpamStub(self._channel)  # type: ignore[no-untyped-call]

    def call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            answered = CNI_CODE_KEY in dict(exc.trailing_metadata() or ())  # e.g. 11: the daemon says why
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and not answered:
                raise CtlError(f"plexus-ipamd is not reachable on {self.path} (is it running?)") from None
            raise CtlError(exc.details() or str(code)) from None


def _print(args: argparse.Namespace, data: Any, render: Callable[[], str]) -> None:
    if getattr(args, "output", "table") == "json":
        print(json.dumps(data, indent=2))
    else:
        print(render())


def _sync(args: argparse.Namespace, quiet_if_down: bool = True) -> None:
    """Ask the daemon to re-read the objects now and show what it could not serve."""
    try:
        resp = Client(args.grpc_socket, timeout=5).call("Sync", pb.SyncRequest())
    except CtlError as exc:
        if not quiet_if_down:
            raise
        print(f"note: {exc}; it will read the objects when it starts", file=sys.stderr)
        return
    for p in resp.problems:
        print(f"warning: not served: {p.message}", file=sys.stderr)


def _input_files(path: str) -> list[str]:
    """The files ``-f path`` names: a directory's manifests, ``-`` (standard input) or the file itself."""
    return manifest_files(path) if path != "-" and os.path.isdir(path) else [path]


def _unreadable(exc: Exception) -> str:
    """Why a file gives no documents, in one line: where the YAML parser stopped and what it found there."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        context = f" ({exc.context})" if exc.context else ""
        return f"cannot be read as YAML: line {mark.line + 1}, column {mark.column + 1}: {exc.problem}{context}"
    if isinstance(exc, UnicodeDecodeError):
        return f"cannot be read as YAML: not UTF-8 text (byte {exc.start})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return "cannot be read as YAML: " + " ".join(str(exc).split())


NOT_MAPPINGS = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}


def _read_manifests(paths: Sequence[str]) -> tuple[list[tuple[str, Any]], list[str]]:
    """Every document of ``paths`` (files, directories' manifests, ``-``), and why each one that is no mapping is
    not a manifest (``path#i`` as the daemon names a document of several). ``CtlError`` naming every file that
    cannot be read or parsed, before anything is written, or when there is no document at all."""
    docs: list[tuple[str, Any]] = []
    not_manifests: list[str] = []
    unreadable: list[str] = []
    for f in [f for path in paths for f in _input_files(path)]:
        name = "<stdin>" if f == "-" else f
        try:
            found = objectdir.read_inputs([f])
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            unreadable.append(f"{name}: {_unreadable(exc)}")
            continue
        for i, (source, doc) in enumerate(found):
            if isinstance(doc, dict):
                docs.append((source, doc))
            else:
                what = NOT_MAPPINGS.get(type(doc), f"a {type(doc).__name__}")
                where = name if len(found) == 1 else f"{name}#{i}"
                not_manifests.append(f"{where}: not a manifest: {what}, where a mapping (apiVersion, kind, metadata) "
                                     "belongs")
    if unreadable:
        raise CtlError("\nerror: ".join(unreadable))
    if not docs and not not_manifests:
        raise CtlError(f"no objects in {', '.join(paths)} (a directory's *.yaml, *.yml and *.json files are read)")
    return docs, not_manifests


def _write_objects(args: argparse.Namespace, change: Callable[..., Any]) -> int:
    """apply or delete: change the object source, report each object, then have the daemon re-read. Nothing is
    written when a file cannot be read; a document that is refused is reported, and the others are written."""
    docs, not_manifests = _read_manifests(args.filename)
    done, bad = change(args.objects_dir, docs)
    for d in done:
        print(d)
    for b in [*not_manifests, *bad]:
        print(f"error: {b}", file=sys.stderr)
    if done:
        _sync(args)
    return 1 if bad or not_manifests else 0


def cmd_apply(args: argparse.Namespace) -> int:
    return _write_objects(args, objectdir.apply)


def cmd_delete(args: argparse.Namespace) -> int:
    return _write_objects(args, objectdir.delete)


def _pod_state_path(args: argparse.Namespace, namespace: str, name: str) -> str:
    return os.path.join(args.state_dir, "pods", f"{namespace}.{name}.json")


@dataclass(slots=True)
class _PodManifest:
    """The Pod manifest ``pod run`` wrote and what its file held before (``None``: no file): put back unless ADD
    ran, which may have reached the daemon (README: the manifest stays when ADD fails)."""

    path: str
    before: bytes | None
    keep: bool = False

    def put_back(self) -> None:
        if self.keep:
            return
        if self.before is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=".tmp-", suffix=".yaml")
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.before)
        os.replace(tmp, self.path)  # whole, as objectdir writes: the daemon never reads half a manifest


def _apply_pod(args: argparse.Namespace, pod: tuple[str, Any], ns: str, name: str) -> _PodManifest:
    path = objectdir.object_file(args.objects_dir, POD.name, ns, name)
    try:
        with open(path, "rb") as fh:
            before: bytes | None = fh.read()
    except FileNotFoundError:
        before = None
    _, bad = objectdir.apply(args.objects_dir, [pod])
    if bad:
        raise CtlError(str(bad[0]))
    return _PodManifest(path, before)


def cmd_pod_run(args: argparse.Namespace) -> int:
    docs, _ = _read_manifests([args.filename])
    pods = [(s, d) for s, d in docs if d.get("kind") == "Pod"]
    if len(pods) != 1:
        raise CtlError(f"{args.filename} must hold exactly one Pod")
    conflist_path = args.conflist or find_conflist(args.conf_dir)  # before anything is made: nothing to undo
    conflist = load_conflist(conflist_path)
    meta = parse_as(POD, pods[0][1], pods[0][0]).meta
    ns, name = meta.namespace, meta.name
    state_path = _pod_state_path(args, ns, name)
    if os.path.exists(state_path):  # before its manifest is written: a running pod's stays as it runs
        raise CtlError(f"pod {ns}/{name} is already running (plexusctl pod rm {name} -n {ns} first)")
    netns_path = f"/run/netns/{name}"
    if os.path.exists(netns_path):
        raise CtlError(f"network namespace {name} already exists")
    from pyroute2 import netns as pr_netns  # only this command needs it

    # a pod run that fails leaves no netns (the next pod run of the pod would be refused), and, failing before its
    # ADD, the manifest as it was
    with contextlib.ExitStack() as undo:
        manifest = _apply_pod(args, pods[0], ns, name)
        undo.callback(manifest.put_back)
        _sync(args, quiet_if_down=False)
        obj = parse_as(POD, _read_object(args.objects_dir, POD.name, ns, name))
        pod = PodIdentity(ns, name, obj.meta.uid, os.urandom(32).hex(), netns_path, args.ifname, dict(obj.annotations))
        pr_netns.create(name)
        undo.callback(pr_netns.remove, name)
        _loopback_up(netns_path)
        manifest.keep = True
        try:
            result = Runtime(args.cni_path, os.path.join(args.state_dir, "results")).add(conflist, pod)
        except CniError as exc:
            raise CtlError(f"ADD failed: {json.dumps(exc.to_dict(conflist.get('cniVersion', '1.0.0')))}") from None
        undo.pop_all()
    os.makedirs(os.path.dirname(state_path), exist_ok=True)
    with open(state_path, "w", encoding="utf-8") as fh:
        json.dump({"namespace": ns, "name": name, "uid": pod.uid, "container_id": pod.container_id,
                   "netns": netns_path, "ifname": pod.ifname, "conflist": conflist_path}, fh)
    if args.output == "json":
        print(json.dumps(result, indent=2))
    else:
        ifaces = [i["name"] for i in result.get("interfaces", []) if i.get("sandbox")]
        ips = [ip["address"] for ip in result.get("ips", [])]
        print(f"pod/{name} running in netns {name}: {', '.join(ifaces) or 'no interfaces'}"
              f"{' ' + ', '.join(ips) if ips else ''}")
    return 0


def _read_object(directory: str, kind: str, ns: str, name: str) -> dict[str, Any]:
    with open(objectdir.object_file(directory, kind, ns, name), encoding="utf-8") as fh:
        doc: dict[str, Any] = yaml.safe_load(fh)
    return doc


def _loopback_up(netns_path: str) -> None:
    from ipamd.netlink.netns import pod_netlink

    with pod_netlink(netns_path) as (ipr, _):
        idx = ipr.link_lookup(ifname="lo")
        if idx:
            ipr.link("set", index=idx[0], state="up")


def cmd_pod_rm(args: argparse.Namespace) -> int:
    state_path = _pod_state_path(args, args.namespace, args.name)
    if not os.path.exists(state_path):
        pods = os.path.join(args.state_dir, "pods")
        suffix = f".{args.name}.json"
        elsewhere = [f.removesuffix(suffix) for f in (os.listdir(pods) if os.path.isdir(pods) else ())
                     if f.endswith(suffix)]
        raise CtlError(_not_running(args.namespace, args.name, elsewhere))
    with open(state_path, encoding="utf-8") as fh:
        st = json.load(fh)
    conflist = load_conflist(st["conflist"])
    pod = PodIdentity(st["namespace"], st["name"], st["uid"], st["container_id"], st["netns"], st["ifname"])
    errors = Runtime(args.cni_path, os.path.join(args.state_dir, "results")).delete(conflist, pod)
    if errors:
        raise CtlError("DEL failed (run pod rm again to retry): " + "; ".join(errors))
    if os.path.exists(st["netns"]):
        from pyroute2 import netns as pr_netns

        pr_netns.remove(os.path.basename(st["netns"]))
    os.unlink(state_path)
    objectdir.delete(args.objects_dir, [("", {"kind": "Pod", "metadata": {"name": st["name"], "namespace": st["namespace"]}})])
    _sync(args)
    print(f"pod/{args.name} deleted")
    return 0


def _not_running(namespace: str, name: str, elsewhere: Sequence[str]) -> str:
    """``pod rm`` and ``pod status`` of a pod this node does not have: the namespace looked in, and the ones a pod of
    that name is in (``-n`` defaults to ``default``)."""
    others = sorted(set(elsewhere) - {namespace})
    hint = (f" (it is in namespace {others[0]}: add -n {others[0]})" if len(others) == 1 else
            f" (pods of that name are in namespaces {', '.join(others)}: add -n NAMESPACE)" if others else "")
    return f"pod {name} is not running here in namespace {namespace}{hint}"


def cmd_pod_status(args: argparse.Namespace) -> int:
    """The pod's ``networks-status`` (Deckhouse), or with ``--npwg`` its ``k8s.v1.cni.cncf.io/network-status``."""
    client = Client(args.grpc_socket)
    resp = client.call("ListPods", pb.ListPodsRequest(namespace=args.namespace, name=args.name))
    if not resp.pods:
        elsewhere = [p.namespace for p in client.call("ListPods", pb.ListPodsRequest(name=args.name)).pods]
        raise CtlError(_not_running(args.namespace, args.name, elsewhere))
    text = resp.pods[0].network_status_json if args.npwg else resp.pods[0].networks_status_json
    print(json.dumps(json.loads(text), indent=2))
    return 0


def _interfaces(pod: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(interface, network, MAC, addresses) of each additional interface of a pod: its Deckhouse networks'
    (``networks-status``), then its NADs' (the ``network-status`` entries of no Deckhouse network, the default
    network's left out)."""
    out = [(s["ifName"], f"{s['type']}/{s['name']}", s["mac"],
            ",".join(a["address"] for a in s["ipAddressConfigs"]) or "-") for s in pod["networksStatus"]]
    listed = {s["ifName"] for s in pod["networksStatus"]}
    out += [(e.get("interface", "-"), f"NetworkAttachmentDefinition/{e['name']}", e.get("mac", "-"),
             ",".join(e.get("ips", [])) or "-")
            for e in pod["networkStatus"] if not e.get("default") and e.get("interface") not in listed]
    return out


def cmd_pod_list(args: argparse.Namespace) -> int:
    resp = Client(args.grpc_socket).call("ListPods", pb.ListPodsRequest(namespace=args.namespace_filter or ""))
    data = [{"namespace": p.namespace, "name": p.name, "uid": p.uid,
             "networksStatus": json.loads(p.networks_status_json),
             "networkStatus": json.loads(p.network_status_json or "[]")} for p in resp.pods]

    def render() -> str:
        rows = [[p["namespace"], p["name"], *iface] for p in data for iface in _interfaces(p)]
        return table(rows, ["NAMESPACE", "POD", "IFNAME", "NETWORK", "MAC", "ADDRESSES"])

    _print(args, data, render)
    return 0


def _count(n: int) -> str:
    """An address count as the API gives it: one it clamped to int64 (a /64 or wider pool's size and free) is only
    known to be at least that."""
    return ">=9.2e18" if n >= INT64_MAX else str(n)  # INT64_MAX is 9.22e18


def cmd_pools(args: argparse.Namespace) -> int:
    resp = Client(args.grpc_socket).call("ListPools", pb.ListPoolsRequest())
    data = [{"pool": p.pool, "networks": list(p.networks), "size": p.size, "used": p.used,
             "quarantined": p.quarantined, "free": p.free, "leaseTTLSeconds": p.lease_ttl_seconds,
             **({"implicitFor": p.implicit_for} if p.implicit_for else {})} for p in resp.pools]
    _print(args, data, lambda: table(
        [[f"{d['pool']} ({d['implicitFor']})" if d.get("implicitFor") else d["pool"], ",".join(d["networks"]),
          _count(d["size"]), d["used"], d["quarantined"], _count(d["free"])] for d in data],
        ["POOL", "NETWORKS", "SIZE", "USED", "QUARANTINED", "FREE"]))
    return 0


def cmd_leases(args: argparse.Namespace) -> int:
    client = Client(args.grpc_socket)
    resp = client.call("ListLeases", pb.ListLeasesRequest(pool=_existing_pool(client, args.pool) if args.pool else ""))
    data = [{"pool": x.pool, "address": x.address, "network": x.network, "holder": x.holder, "state": x.state,
             "pods": list(x.pods), "createdAt": x.created_at, "orphanedAt": x.orphaned_at or None,
             "ttlSeconds": x.ttl_seconds, "outsideRanges": x.outside_ranges, "holderKind": x.holder_kind,
             "networkName": x.network_name, "interface": x.interface} for x in resp.leases]

    def render() -> str:
        rows = []
        for d in data:
            state = d["state"]
            if d["orphanedAt"]:
                left = d["orphanedAt"] + d["ttlSeconds"] - time.time()
                state = f"quarantined ({max(0, int(left))}s left)"
            rows.append([d["address"], d["pool"], _holder(d), ",".join(d["pods"]) or "-", state, age(d["createdAt"])])
        return table(rows, ["ADDRESS", "POOL", "HOLDER", "POD", "STATE", "AGE"])

    _print(args, data, render)
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    resp = Client(args.grpc_socket).call("ListOutbox", pb.ListOutboxRequest(limit=args.limit))
    data = {"depth": resp.depth, "entries": [
        {"seq": e.seq, "target": e.target, "op": e.op, "createdAt": e.created_at, "attempts": e.attempts,
         # parked (an infinite time, which JSON cannot carry): the undo of a call in flight (a take-up, a used-by
         # write), made only if it fails
         "nextAt": e.next_at if e.next_at and math.isfinite(e.next_at) else None,
         "parked": math.isinf(e.next_at), "error": e.error} for e in resp.entries]}

    def render() -> str:
        rows = [[d["seq"], d["op"], d["target"], d["attempts"], age(d["createdAt"]),
                 "parked" if d["parked"] else f"in {max(0, int(d['nextAt'] - time.time()))}s" if d["nextAt"] else "now",
                 d["error"] or "-"] for d in data["entries"]]
        listed = f" (the oldest {len(rows)} below)" if len(rows) < data["depth"] else ""
        return f"{data['depth']} writes to the cluster's API owed{listed}\n" + table(
            rows, ["SEQ", "OP", "OBJECT", "ATTEMPTS", "AGE", "NEXT", "LAST ERROR"])

    _print(args, data, render)
    return 0


def _holder(lease: dict[str, Any]) -> str:
    """A delegate's lease by its interface and network (``net1@my-namespace/macvlan-conf``), others by key."""
    if lease["holderKind"] == "CNI":
        return f"{lease['interface']}@{lease['networkName']}"
    return str(lease["holder"] or "-")


POOL_KIND_NAMES = ("IPAddressPool", "ClusterIPAddressPool")
POOL_FORMS = "namespace/name (an IPAddressPool), name (a ClusterIPAddressPool), or its key (plexusctl ipam pools)"


def _pool_ref(text: str) -> pb.PoolRef:
    """The pool ``text`` names, as every command taking a pool reads it: ``ns/name`` (IPAddressPool) or ``name``
    (ClusterIPAddressPool), or a full pool key (``IPAddressPool/ns/name``, ``ClusterIPAddressPool/name``)."""
    parts = text.split("/")
    if parts[0] in POOL_KIND_NAMES:
        kind, parts = parts[0], parts[1:]
    else:
        kind = "IPAddressPool" if len(parts) == 2 else "ClusterIPAddressPool"
    if len(parts) != (2 if kind == "IPAddressPool" else 1) or not all(parts):
        raise CtlError(f"{text!r} names no pool: give {POOL_FORMS}")
    if len(parts) == 2:
        return pb.PoolRef(kind=kind, namespace=parts[0], name=parts[1])
    return pb.PoolRef(kind=kind, name=parts[0])


def _ref_key(ref: pb.PoolRef) -> str:
    return f"{ref.kind}/{ref.namespace}/{ref.name}" if ref.namespace else f"{ref.kind}/{ref.name}"


def _served_pool(client: Client, text: str) -> pb.PoolUsage:
    """The usage of the pool ``text`` names (``_pool_ref``'s forms, or any key ``ipam pools`` lists, a
    plexus-ipam range's implicit pool too); ``CtlError`` naming it when the daemon serves no such pool."""
    pools: dict[str, pb.PoolUsage] = {p.pool: p for p in client.call("ListPools", pb.ListPoolsRequest()).pools}
    key = text if text in pools else _ref_key(_pool_ref(text))
    if key not in pools:
        raise CtlError(f"pool {text} does not exist (no {key}; plexusctl ipam pools lists the pools)")
    return pools[key]


def _existing_pool(client: Client, text: str) -> str:
    """The key of the pool ``text`` names (``_served_pool``)."""
    return str(_served_pool(client, text).pool)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        raise CtlError(f"{address!r} is not an IP address") from None


def _leased(client: Client, pool: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is leased (held or quarantined) in the pool of key ``pool``."""
    leases = client.call("ListLeases", pb.ListLeasesRequest(pool=pool)).leases
    return any(ipaddress.ip_address(x.address) == ip for x in leases)


def _releasable(client: Client, pool: pb.PoolUsage, address: str) -> bool:
    """Whether ``address`` is leased in ``pool``; ``CtlError`` when it is none ``ipam release`` may free there: an
    implicit pool's (its addresses go with the attachments that hold them), or one neither leased in the pool nor in
    its networks. A lease an edit of the pool left outside its networks is freed: nothing else frees it."""
    if pool.pool.split("/")[0] not in POOL_KIND_NAMES:
        raise CtlError(f"pool {pool.pool} is a plexus-ipam range's: its addresses go with their attachments, not "
                       "ipam release: remove the pod that holds the address (plexusctl pod rm NAME -n NAMESPACE, or "
                       f"delete the pod) and its DEL frees it; plexusctl ipam leases --pool {pool.pool} shows the pod")
    ip = _ip(address)
    leased = _leased(client, pool.pool, ip)
    if not leased and not any(ip in ipaddress.ip_network(n) for n in pool.networks):
        raise CtlError(f"{address} is not in pool {pool.pool} ({', '.join(pool.networks)})")
    return leased


def cmd_release(args: argparse.Namespace) -> int:
    client = Client(args.grpc_socket)
    pool = _served_pool(client, args.pool)
    leased = _releasable(client, pool, args.address)
    if not args.yes:  # what would be answered without a release is said before asking
        if not leased:
            print(f"{args.address} was not leased")
            return 0
        if not sys.stdin.isatty():
            raise CtlError("refusing to release without confirmation: add --yes")
        answer = input(f"Release {args.address} of pool {args.pool}? A pod using it will keep it configured. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not released")
            return 1
    # confirmed as --yes is: released even while a pod uses it, as the question says (force)
    resp = client.call("Release", pb.ReleaseRequest(pool=_pool_ref(pool.pool), address=args.address, force=True))
    print(f"{args.address} {'released' if resp.released else 'was not leased'}")
    return 0


def _nads(args: argparse.Namespace) -> int:
    """NetworkAttachmentDefinitions of the local object source, as the daemon would serve them."""
    objects, problems = load_directory(args.objects_dir) if os.path.isdir(args.objects_dir) else ({}, [])
    data = []
    for obj in objects.values():
        if isinstance(obj, AttachmentDefinition):
            config = obj.config or {}
            data.append({"namespace": obj.meta.namespace, "name": obj.meta.name,
                         "plugins": [p["type"] for p in config.get("plugins", [])],
                         "config": "spec.config" if obj.config is not None else "on the node's disk"})
    for p in problems:
        if "NetworkAttachmentDefinition" in p.message:
            print(f"warning: not served: {p.message}", file=sys.stderr)
    _print(args, data, lambda: table([[d["namespace"], d["name"], ",".join(d["plugins"]) or "-", d["config"]]
                                      for d in data], ["NAMESPACE", "NAME", "PLUGINS", "CONFIG"]))
    return 0


ENDPOINT_NAMES = ("endpoints", "ep", "endpointslices")


def _endpoints(client: Client, args: argparse.Namespace) -> int:
    """Services over additional networks and their endpoints, as the controller writes them in a cluster."""
    resp = client.call("ListServiceEndpoints", pb.ListServiceEndpointsRequest())
    data = [{"namespace": s.namespace, "name": s.name, "network": s.network, "problem": s.problem,
             "endpoints": [{"address": e.address, "pod": e.pod, "ready": e.ready} for e in s.endpoints]}
            for s in resp.services]
    _print(args, data, lambda: table(
        [[d["namespace"], d["name"], d["network"] or "-",
          ", ".join(e["address"] + ("" if e["ready"] else " (not ready)") for e in d["endpoints"]) or "-",
          d["problem"] or "-"] for d in data], ["NAMESPACE", "SERVICE", "NETWORK", "ENDPOINTS", "PROBLEM"]))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    if args.what in NAD_NAMES:
        return _nads(args)
    client = Client(args.grpc_socket)
    if args.what in ENDPOINT_NAMES:
        return _endpoints(client, args)
    if args.what in ("ipaddresses", "ipaddress", "ipa"):
        resp = client.call("ListIPAddresses", pb.ListIPAddressesRequest())
        data = [{"kind": a.kind, "namespace": a.namespace, "name": a.name, "type": a.type,
                 "networkRef": {"kind": a.network_kind, "name": a.network_name}, "status": json.loads(a.status_json)}
                for a in resp.addresses]
        _print(args, data, lambda: table(
            [[d["namespace"] or "-", d["name"], d["type"], d["networkRef"]["kind"], d["networkRef"]["name"],
              d["status"]["address"] or "-", d["status"]["network"] or "-", d["status"]["phase"]] for d in data],
            ["NAMESPACE", "NAME", "TYPE", "KIND", "NAME", "ADDRESS", "NETWORK", "PHASE"]))
    else:
        resp = client.call("ListNetworks", pb.ListNetworksRequest())
        data = [{"network": n.key, "status": json.loads(n.status_json)} for n in resp.networks]
        _print(args, data, lambda: table(
            [[d["network"], d["status"].get("bridgeName") or "-", _segment_id(d["status"], "vlanID"),
              _segment_id(d["status"], "vni"),
              next((c["status"] for c in d["status"].get("conditions", []) if c["type"] == "Ready"), "Unknown")]
             for d in data], ["NETWORK", "BRIDGE", "VLAN", "VNI", "READY"]))
    return 0


def _segment_id(status: dict[str, Any], key: str) -> str:
    """A network's VLAN ID or VNI as its status shows it; ``-`` for none: an untagged bridge's ``vlanID`` 0, a VXLAN
    network's (its ID is the ``vni``), or a status that has none yet (an ID not assigned, a parent NIC missing)."""
    ident = status.get(key)
    return str(ident) if isinstance(ident, int) and not isinstance(ident, bool) and ident > 0 else "-"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plexusctl", description="Operate Plexus: objects, pods, IPAM.")
    p.add_argument("--objects-dir", default=DEFAULT_OBJECTS, help="local object source (default %(default)s)")
    p.add_argument("--grpc-socket", default=DEFAULT_GRPC, help="plexus-ipamd's gRPC socket (default %(default)s)")
    p.add_argument("--state-dir", default=DEFAULT_STATE, help="where pod run keeps its pods (default %(default)s)")
    sub = p.add_subparsers(dest="command", required=True)

    def out(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-o", "--output", choices=("table", "json"), default="table")

    for name, fn in (("apply", cmd_apply), ("delete", cmd_delete)):
        sp = sub.add_parser(name, help=f"{name} manifests in the local object source")
        sp.add_argument("-f", "--filename", action="append", required=True, help="file, directory or - for stdin")
        sp.set_defaults(func=fn)

    pod = sub.add_parser("pod", help="run pods as a runtime would").add_subparsers(dest="pod_command", required=True)
    run = pod.add_parser("run", help="create the pod's netns and ADD it through the installed conflist")
    run.add_argument("-f", "--filename", required=True)
    run.add_argument("--conflist", help=f"CNI configuration (default: the first in {DEFAULT_CONF_DIR})")
    run.add_argument("--conf-dir", default=DEFAULT_CONF_DIR)
    run.add_argument("--cni-path", default=DEFAULT_CNI_PATH)
    run.add_argument("--ifname", default="eth0", help="CNI_IFNAME (default %(default)s)")
    out(run)
    run.set_defaults(func=cmd_pod_run)
    for name, fn, text in (("rm", cmd_pod_rm, "DEL the pod and remove its netns"),
                           ("status", cmd_pod_status, "print the pod's networks-status")):
        sp = pod.add_parser(name, help=text)
        sp.add_argument("name")
        sp.add_argument("-n", "--namespace", default="default")
        if name == "rm":
            sp.add_argument("--cni-path", default=DEFAULT_CNI_PATH)
        else:
            sp.add_argument("--npwg", action="store_true", help="k8s.v1.cni.cncf.io/network-status instead")
        sp.set_defaults(func=fn)
    ls = pod.add_parser("list", help="pods and their additional interfaces")
    ls.add_argument("-n", "--namespace", dest="namespace_filter", default="")
    out(ls)
    ls.set_defaults(func=cmd_pod_list)

    ipam = sub.add_parser("ipam", help="pools and leases").add_subparsers(dest="ipam_command", required=True)
    pools = ipam.add_parser("pools", help="size, used, quarantined and free per pool")
    out(pools)
    pools.set_defaults(func=cmd_pools)
    leases = ipam.add_parser("leases", help="every lease, its holder, pod, state and age")
    leases.add_argument("--pool", help=f"only this pool: {POOL_FORMS}")
    out(leases)
    leases.set_defaults(func=cmd_leases)
    rel = ipam.add_parser("release", help="free a stuck address deliberately")
    rel.add_argument("pool", help="namespace/name of an IPAddressPool, or the name of a ClusterIPAddressPool")
    rel.add_argument("address")
    rel.add_argument("--yes", action="store_true", help="do not ask; release even if a pod uses it")
    rel.set_defaults(func=cmd_release)

    outbox = sub.add_parser("outbox", help="writes to the cluster's API this node owes (Kubernetes mode)")
    outbox.add_argument("--limit", type=int, default=100, help="list at most this many, oldest first")
    out(outbox)
    outbox.set_defaults(func=cmd_outbox)

    get = sub.add_parser("get", help="statuses")
    get.add_argument("what", choices=("ipaddresses", "ipaddress", "ipa", "networks", "network", *NAD_NAMES,
                                      *ENDPOINT_NAMES))
    out(get)
    get.set_defaults(func=cmd_get)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
        return rc
    except (CtlError, CniError, ManifestInvalid, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())


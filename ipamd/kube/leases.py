"""Cluster-wide lease uniqueness through IPAddressLease objects (cluster-scoped, one per IP).

An IPAddressLease's name is derived from its pool and IP, so the API server's name uniqueness
makes the allocation atomic: the node whose create succeeds holds the address; AlreadyExists
means another node does, and the allocator moves to its next candidate (from the informer's
cache, never by listing the pool). Orphaning sets ``status.orphaningTimestamp``; a quarantined
lease is adopted by a Static IPAddress asking for exactly that IP.

Claiming needs the answer now; letting go does not: an orphaning or a release is owed in the outbox (the local store
let go already, and a lease object that lives a little longer only keeps others off the address, the safe way), made
before any later claim of the same address by this node.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Container, Hashable, Iterable
from typing import TYPE_CHECKING, Any

from kubernetes.client.exceptions import ApiException

from cni.errors import TryAgainLater
from ipamd.ipam.allocator import to_int
from ipamd.ipam.registry import NoBlocks
from ipamd.kube.errors import api_unavailable_is_11, status_of
from ipamd.kube.outbox import PARKED, Outbox
from ipamd.kube.publisher import owe_auto_ip_delete
from ipamd.kube.resources import RESOURCES
from ipamd.kube.server_clock import stamped_at
from ipamd.kube.users import IPAddressUsers, still_running
from ipamd.model.objects import GROUP, IP_ADDRESS_KINDS, IPAM_CLAIM, USED_BY_ANNOTATION, Pod
from ipamd.model.timefmt import parse_rfc3339, rfc3339
from ipamd.model.used_by import User, parse_user, parse_user_text
from ipamd.store.protocols import LeaseStore
from ipamd.store.records import IPRecord, LeaseRecord

if TYPE_CHECKING:  # the source builds its informers with LEASE_INDEXERS below
    from ipamd.kube.source import KubernetesSource

log = logging.getLogger(__name__)
KIND = "IPAddressLease"
NODE_LABEL = f"{GROUP}/node"
POOL_LABEL = f"{GROUP}/pool"  # a hash of the pool's key (a label value holds no "/"): lists one pool's leases


#: The field manager of every write that starts a quarantine (``status.orphaningTimestamp``): the API server stamps
#: it with its own time in ``managedFields``, which the quarantine's end is judged by (``quarantined_at``), whatever
#: the clock of the node that wrote the orphaning time said, or how late its outbox sent it.
QUARANTINE_MANAGER = "plexus-quarantine"


def pool_label(pool: str) -> str:
    return hashlib.sha1(pool.encode()).hexdigest()[:10]


def quarantined_at(obj: dict[str, Any]) -> float | None:
    """When a quarantined lease object's quarantine began, by the API server's clock: its orphaning write's stamp,
    else (written by a version before this) the ``orphaningTimestamp`` it carries; None when it is not quarantined."""
    orphaned = (obj.get("status") or {}).get("orphaningTimestamp")
    return stamped_at(obj, QUARANTINE_MANAGER, orphaned) if orphaned else None


#: ``made_at`` of an address quarantined before its object's owed create was sent: there is no object to expire
NO_OBJECT = ("", "")


def _version_of(answer: Any) -> str:
    """The resourceVersion of a write's answer (the object as written), "" when it has none."""
    return str(((answer if isinstance(answer, dict) else {}).get("metadata") or {}).get("resourceVersion") or "")


def holder_of_owed(block_lease: dict[str, Any]) -> str:
    """The holder an owed ``block_lease`` write makes its object for."""
    return str(((block_lease.get("object") or {}).get("spec") or {}).get("holder") or "")


def _spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def _by_address(obj: dict[str, Any]) -> Iterable[Hashable]:
    spec = _spec(obj)
    return [(str(spec["pool"]), to_int(str(spec["ip"])))] if spec.get("pool") and spec.get("ip") else []


def _by_holder(obj: dict[str, Any]) -> Iterable[Hashable]:
    spec = _spec(obj)
    return [(str(spec["holder"]), str(spec.get("pool", "")))] if spec.get("holder") else []


def _by_pool(obj: dict[str, Any]) -> Iterable[Hashable]:
    spec = _spec(obj)
    return [str(spec["pool"])] if spec.get("pool") else []


def _by_kept_for(obj: dict[str, Any]) -> Iterable[Hashable]:
    holder = _spec(obj).get("holder")
    kept = holder and USED_BY_ANNOTATION in ((obj.get("metadata") or {}).get("annotations") or {})
    return [str(holder)] if kept else []


def _by_node(obj: dict[str, Any]) -> Iterable[Hashable]:
    node = ((obj.get("metadata") or {}).get("labels") or {}).get(NODE_LABEL)
    return [node] if node else []


#: The lease informer's indexes: an allocation asks "is (pool, IP) taken?" and "what does this holder have?"
#: in O(1), instead of scanning every lease of the cluster each time.
LEASE_INDEXERS: dict[str, Callable[[dict[str, Any]], Iterable[Hashable]]] = {
    "address": _by_address, "holder": _by_holder, "pool": _by_pool, "node": _by_node, "kept": _by_kept_for}


def held_in(source: KubernetesSource, pool: str) -> list[str]:
    """The addresses of ``pool`` that lease objects hold for somebody (quarantined ones are not held)."""
    return [str(_spec(o)["ip"]) for o in source.by_index(KIND, "pool", pool) if _spec(o).get("holder")]


def held_for_network(source: KubernetesSource, pool: str, network: str) -> list[str]:
    """The addresses of ``pool`` that the pods of ``network`` (its key, ``Network/ns/name``) may be using: held by its
    IPAddresses, or by an IPAddress the cache does not show (gone, or not parsed: its network is unknown). Another
    network's IPAddresses sharing the pool are not its own, nor are the leases taken from the pool directly (a
    delegate's, an IPAMClaim's, a gRPC client's), which no network's pool reference leads to."""
    out = []
    for item in source.by_index(KIND, "pool", pool):
        holder, ip = str(_spec(item).get("holder") or ""), _spec(item).get("ip")
        kind, _, rest = holder.partition("/")
        if not ip or kind not in IP_ADDRESS_KINDS:
            continue
        namespace, _, name = rest.rpartition("/")
        obj = source.get(IP_ADDRESS_KINDS[kind], namespace, name)
        if obj is not None and _network_key(obj.network_ref.kind, obj.network_ref.name, namespace) != network:
            continue
        out.append(str(ip))
    return out


def _network_key(kind: str, name: str, namespace: str) -> str:
    """The key of the network an IPAddress of ``namespace`` names (a ClusterNetwork has none)."""
    return f"{kind}/{namespace}/{name}" if kind == "Network" and namespace else f"{kind}/{name}"


class _TakenIn:
    """The addresses of one pool that lease objects hold, as a container the allocator asks ``ip in``."""

    def __init__(self, source: KubernetesSource, pool: str) -> None:
        self.source, self.pool = source, pool

    def __contains__(self, ip: object) -> bool:
        return self.source.indexed(KIND, "address", (self.pool, ip))


def lease_name(pool: str, address: str) -> str:
    """``ip-198-18-10-5-<hash of the pool>``: readable, a valid name, unique per (pool, IP)."""
    return f"ip-{address.replace('.', '-').replace(':', '-')}-{pool_label(pool)}"


def lease_body(pool: str, address: str, network: str, holder: str, ttl_s: float, node: str = "") -> dict[str, Any]:
    """The IPAddressLease object of ``address`` in ``pool`` held by ``holder`` (labelled with the node
    that made it, so that node alone cleans up after itself). No ``holder`` field for none (a quarantine's): the API
    server takes an empty string for null and refuses it."""
    metadata: dict[str, Any] = {"name": lease_name(pool, address), "labels": {POOL_LABEL: pool_label(pool)}}
    if node:
        metadata["labels"][NODE_LABEL] = node
    return {"apiVersion": RESOURCES[KIND].api_version, "kind": KIND, "metadata": metadata,
            "spec": {"pool": pool, "ip": address, "network": network, **({"holder": holder} if holder else {}),
                     "ttl": f"{int(ttl_s)}s"}}


def existing_holders(source: Any, kinds: Iterable[str]) -> set[str]:
    """The keys (``Kind/namespace/name``, ``Kind/name``) of the objects of ``kinds`` in ``source``'s cache, valid or
    not: a lease held by one that fails to parse is still held."""
    out = set()
    for kind in kinds:
        for item in source.items(kind):
            md = item.get("metadata") or {}
            ns = md.get("namespace")
            out.add(f"{kind}/{ns}/{md.get('name')}" if ns else f"{kind}/{md.get('name')}")
    return out


class KubeLeaseRegistry(NoBlocks):
    def __init__(self, source: KubernetesSource, node_name: str, outbox: Outbox,
                 server_now: Callable[[], float] = time.time) -> None:
        self.objects = source.objects
        self.server_now = server_now  # the API server's present (``ServerClock.now``): its stamps are judged by it
        self.source = source
        self.node_name = node_name
        self.outbox = outbox
        # lease object name -> the version of the object this node's last claim made its own (its create, its
        # adoption), or None when the claim found it someone else's already (the same holder's, made by another node)
        self.made: dict[str, str | None] = {}
        # lease object name -> (holder, version) of the object as this node's own write of it for that holder answered
        # (its create, its adoption): a release deletes it at that version without reading it first; a 409 (changed
        # since) falls back to the checked read, so a stale entry costs a request, never a wrong delete
        self.made_at: dict[str, tuple[str, str]] = {}
        outbox.senders.setdefault("expire_orphan", self._expire_orphan)
        outbox.senders.setdefault("release_lease", self._release_lease)
        outbox.senders.setdefault("orphan_lease", self._orphan_lease)
        outbox.senders.setdefault("hand_back", self._hand_back)
        outbox.senders.setdefault("keep_lease", self._keep_lease)
        outbox.senders.setdefault("unkeep", self._unkeep)
        self.users = IPAddressUsers(self.objects, lambda ns, name: source.read_pod(ns, name), node_name, outbox,
                                    self.kept_for)

    def taken_elsewhere(self, pool: str) -> Container[int]:
        return _TakenIn(self.source, pool)

    def held_by(self, holder: str, pool: str) -> int | None:
        for item in self.source.by_index(KIND, "holder", (holder, pool)):
            if _spec(item).get("ip") and not self.outbox.owes(f"{KIND}/{(item.get('metadata') or {}).get('name')}",
                                                              but=("hand_back",)):
                return to_int(str(_spec(item)["ip"]))  # (one this node owes a write, its let-go, is not to adopt;
        return None  # a take-up's hand-back is no let-go: another call taking it up meanwhile waits its turn)

    def stray(self, store: LeaseStore, grace_s: float,
              in_use: Callable[[str, int], bool] | None = None) -> list[LeaseRecord]:
        """Delete this node's lease objects whose address the store does not hold (see the reconciler). An address
        the store holds is left alone whoever the cache says holds it: its object has the one name, so deleting a
        stale holder's would delete the live lease's (an address let go and leased again in a block, its new object
        owed while the cache still shows the old), and so is one with writes owed, the node's latest word on it. So is
        one whose holder still exists: the address is that IPAddress's or IPAMClaim's, wherever it is used next."""
        out = []
        existing: set[str] | None = None
        older_than = self.server_now() - grace_s  # creationTimestamp is the API server's stamp: by its clock
        for item in self.source.by_index(KIND, "node", self.node_name):
            md, spec = item.get("metadata") or {}, item.get("spec") or {}
            if not spec.get("holder"):
                continue
            created = str(md.get("creationTimestamp") or "")
            if not created or parse_rfc3339(created) > older_than:
                continue
            pool, address = str(spec.get("pool")), str(spec.get("ip"))
            if store.lease_at(pool, to_int(address)) is not None or (in_use is not None and in_use(pool, to_int(address))) \
                    or self.outbox.owes(f"{KIND}/{lease_name(pool, address)}"):
                continue  # (in use: a call of this node is claiming or taking it up right now)
            if existing is None:
                existing = existing_holders(self.source, (*IP_ADDRESS_KINDS, IPAM_CLAIM.name))
            if spec.get("holder") in existing and store.lease_of(str(spec.get("holder"))) is None:
                continue  # maybe the holder's address elsewhere (a take-up, a claim rolled back): goes with the holder
            lease = LeaseRecord(pool=pool, ip=to_int(address), address=address, network=str(spec.get("network", "")),
                                holder=str(spec.get("holder")))
            self.release(lease)
            out.append(lease)
        return out

    def claim(self, lease: LeaseRecord, exact: bool = False) -> bool:
        with api_unavailable_is_11():
            return self._claim(lease, exact)

    def _claim(self, lease: LeaseRecord, exact: bool) -> bool:
        body = lease_body(lease.pool, lease.address, lease.network, lease.holder or "", lease.ttl, self.node_name)
        name = body["metadata"]["name"]
        self.made.pop(name, None)  # what an earlier claim of it made is no guide to this one
        if not self.outbox.flush_target(f"{KIND}/{name}"):  # this node's own letting go of it comes first
            raise TryAgainLater(f"this node's release of {lease.address} in {lease.pool} is not made yet",
                                "the Kubernetes API did not take it; see plexusctl outbox")
        for _ in range(2):  # an object gone between our create's 409 and our read of it: created again, once
            try:
                made = self.objects.create(KIND, body)
                self.made[name] = self._made_at(name, lease.holder, made)
                return True
            except Exception as exc:
                if status_of(exc) != 409:
                    raise
            try:
                current = self.objects.get(KIND, name)
                break
            except Exception as exc:
                if status_of(exc) != 404:
                    raise
        else:
            return False  # let go and taken again meanwhile: another node's race, the next address is tried
        spec = current.get("spec") or {}
        if spec.get("holder") == lease.holder:  # ours already (a retried ADD), or another node's for the same holder
            if self._another_nodes_client(current):
                return False
            finished = self.finish_adoption(current)
            if finished is None:
                return False  # changed since it was read: the next try reads it again
            md = finished.get("metadata") or {}
            self.made[name] = str(md.get("resourceVersion") or "") \
                if (md.get("labels") or {}).get(NODE_LABEL) == self.node_name else None
            return True
        if (current.get("status") or {}).get("orphaningTimestamp") and lease.holder and exact:
            # quarantined: a Static IPAddress, which asks for this exact address, adopts it; a pick (its informer behind
            # the quarantine) moves on
            patch = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                     "spec": {"holder": lease.holder}}
            patch["metadata"]["labels"] = {NODE_LABEL: self.node_name}  # adopted: this node lets it go from now
            try:
                self.objects.patch(KIND, name, patch)
                adopted = self.objects.patch_status(KIND, name, {"orphaningTimestamp": None})
                self.made[name] = self._made_at(name, lease.holder, adopted)
                return True
            except Exception as exc:
                if status_of(exc) == 409:
                    return False
                raise
        return False

    def _another_nodes_client(self, current: dict[str, Any]) -> bool:
        """A lease object of a gRPC client (``api/<owner>``) made on another node: that node's client, which shares
        no more than its name with this node's (the API's owners are each node's own), so never this holder's."""
        holder = str((current.get("spec") or {}).get("holder") or "")
        node = ((current.get("metadata") or {}).get("labels") or {}).get(NODE_LABEL)
        return holder.startswith("api/") and node not in (None, "", self.node_name)

    def finish_adoption(self, current: dict[str, Any]) -> dict[str, Any] | None:
        """A lease object found this node's for the holder asked for, as an adoption's first write left it (holder and
        label ours, the quarantine's mark not yet cleared: the second write failed, or the daemon was killed between
        the two): the adoption finished now, at the version read, or the controller would expire the object under its
        holder once the old quarantine is over. The object as it is now; None when it changed since it was read."""
        md = current.get("metadata") or {}
        if not (current.get("status") or {}).get("orphaningTimestamp") or \
                (md.get("labels") or {}).get(NODE_LABEL) != self.node_name:
            return current
        try:
            made = self.objects.patch_status(KIND, str(md.get("name")), {"orphaningTimestamp": None},
                                             resource_version=str(md.get("resourceVersion") or ""))
        except Exception as exc:
            if status_of(exc) in (404, 409):
                return None
            raise
        return made if isinstance(made, dict) else current

    def _made_at(self, name: str, holder: str | None, answer: Any) -> str | None:
        """The version this node's write of a lease object for ``holder`` answered with, noted in ``made_at``; None
        when the answer shows the object someone else's (another node's write landed between an adoption's two
        patches: a Static's object another node keeps for its pod), which this node must never delete or quarantine
        at that version."""
        version = _version_of(answer)
        if isinstance(answer, dict) and ((_spec(answer).get("holder") or "") != (holder or "") or
                                         ((answer.get("metadata") or {}).get("labels") or {}).get(NODE_LABEL)
                                         != self.node_name):
            self.made_at.pop(name, None)
            return None
        if version and holder:
            self.made_at[name] = (holder, version)
        else:
            self.made_at.pop(name, None)
        return version

    # -- the outbox's checked ops: each reads the object, and writes only at the version it read ---------------
    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.objects.get(KIND, name))
        except Exception as exc:
            if status_of(exc) == 404:
                return None
            raise

    def _delete_at(self, current: dict[str, Any], done: tuple[int, ...]) -> None:
        md = current.get("metadata") or {}
        try:
            self.objects.delete(KIND, str(md.get("name")), resource_version=str(md.get("resourceVersion") or ""))
        except Exception as exc:
            if status_of(exc) not in done:
                raise

    def _deleted_at_known(self, body: dict[str, Any]) -> bool:
        """Delete the object at the version this node's own write of it answered (``body["resourceVersion"]``,
        ``made_at``): unchanged since, it is still what that write made. False when that is not known or the object
        changed since (409): the caller reads it and decides."""
        if not body.get("resourceVersion"):
            return False
        try:
            self.objects.delete(KIND, body["name"], resource_version=body["resourceVersion"])
        except Exception as exc:
            if status_of(exc) == 409:
                return False
            if status_of(exc) != 404:
                raise
        return True

    def _release_lease(self, body: dict[str, Any]) -> None:
        """Letting a lease go: delete the object if it is still this node's for that holder (a change in between
        is looked at again: the outbox retries on the 409). With the version this node's own write of it for that
        holder answered, deleted at that version without a read: unchanged since, it is still that (a 404: gone)."""
        if self._deleted_at_known(body):
            return
        current = self._read(body["name"])
        if current is None or (current.get("spec") or {}).get("holder") != body.get("holder") or \
                ((current.get("metadata") or {}).get("labels") or {}).get(NODE_LABEL) != body.get("node"):
            return  # gone, or leased again since (another node, another holder): not this node's to delete
        self._delete_at(current, done=(404,))

    def _expire_orphan(self, body: dict[str, Any]) -> None:
        """The end of a quarantine: delete the object if it is still the orphan this node made (no holder, the same
        orphaning time): at the version this node's quarantine of it answered, when known, without a read."""
        if self._deleted_at_known(body):
            return
        current = self._read(body["name"])
        shown = ((current or {}).get("status") or {}).get("orphaningTimestamp")
        left_unmarked = shown is None and current is not None and \
            ((current.get("metadata") or {}).get("labels") or {}).get(NODE_LABEL) == self.node_name
        if current is None or (current.get("spec") or {}).get("holder") or \
                (body.get("orphanedAt") and shown != body["orphanedAt"] and not left_unmarked):
            return  # gone, leased again, adopted, or another quarantine: not this node's to end
        self._delete_at(current, done=(404, 409))

    def keep_quarantine(self, lease: LeaseRecord) -> bool:
        """Make the lease object of an address this node keeps in quarantine with none (its pod went before the
        object was made: inside this node's block, its store alone kept the quarantine), with its orphaning time:
        once the block goes, only an object keeps the address from other nodes until the quarantine is over. Made
        without a holder, then marked (an object left unmarked between the two, by a failure or a kill, is taken by
        every node all the same, marked by the next try, and ended by this node's quarantine's end as its own).
        False when another node's object is there."""
        name = lease_name(lease.pool, lease.address)
        current = self._read(name)
        if current is None:
            try:
                current = dict(self.objects.create(KIND, lease_body(lease.pool, lease.address, lease.network, "",
                                                                    lease.ttl, self.node_name)))
            except Exception as exc:
                if status_of(exc) == 409:
                    return False  # made meanwhile: the next round reads it
                raise
        md = current.get("metadata") or {}
        if (current.get("spec") or {}).get("holder") or (md.get("labels") or {}).get(NODE_LABEL) != self.node_name:
            return False
        if not (current.get("status") or {}).get("orphaningTimestamp"):
            current = dict(self.objects.patch_status(KIND, name, {"orphaningTimestamp": rfc3339(lease.orphaned_at)},
                                                     resource_version=str(md.get("resourceVersion") or ""),
                                                     field_manager=QUARANTINE_MANAGER))
        self.made_at[name] = ("", _version_of(current))
        return True

    def keep_in_use(self, lease: LeaseRecord, user: tuple[str, str]) -> None:
        """A pod of this node (``user``: its namespace/name and UID) uses the address of this lease's IPAddress (a
        Static, which every node leases), or the IPAddress was deleted while it does: the lease object is made this
        node's, so that another node letting its own lease of it go does not delete it, and is made again if one did;
        this node lets it go with the pod. The pod is written on the lease object too: an IPAddress of the same name
        made again (or replaced whole) comes without it, and another node's pod naming that is refused all the same
        (``kept_for``) until this node writes its pod on the new object; its DEL takes it off (``unused``)."""
        name = lease_name(lease.pool, lease.address)
        wanted = lease_body(lease.pool, lease.address, lease.network, lease.holder or "", lease.ttl, self.node_name)
        wanted["metadata"]["annotations"] = {USED_BY_ANNOTATION: User(user[1], user[0], self.node_name).text()}
        self.outbox.add(f"{KIND}/{name}", "keep_lease", {"object": wanted}, supersede=True)

    def kept_for(self, holder: str) -> User | None:
        """The pod of another node written on the lease object of ``holder`` (``keep_in_use``), as the cache shows
        it."""
        for item in self.source.by_index(KIND, "kept", holder):
            user = parse_user(item)
            if user is not None and user.node != self.node_name:
                return user
        return None

    def _keep_lease(self, body: dict[str, Any]) -> None:
        wanted = body["object"]
        name, holder = wanted["metadata"]["name"], wanted["spec"].get("holder", "")
        user = (wanted["metadata"].get("annotations") or {}).get(USED_BY_ANNOTATION)
        mine = parse_user_text(user)
        if mine is not None and not self.users.uses_here(holder, mine.uid):
            return  # the pod no longer uses it here (its DEL came before this write): nothing of it to keep
        current = self._read(name)
        if current is None:
            self.objects.create(KIND, wanted)  # a 409: made meanwhile, looked at again by the retry
            return
        md = current.get("metadata") or {}
        held = _spec(current).get("holder")
        if held not in (holder, None, ""):
            log.warning("%s, used by a pod of this node, is leased to %s now", wanted["spec"]["ip"], held)
            return
        version = str(md.get("resourceVersion") or "")
        written = (md.get("annotations") or {}).get(USED_BY_ANNOTATION)
        other = parse_user_text(written)
        if other is not None and mine is not None and other.uid != mine.uid and other.node != self.node_name:
            # another node's pod written there since this write was owed: its keep stays while that pod runs
            ns, _, pod_name = other.pod.partition("/")
            if still_running(other, self.source.read_pod(ns, pod_name)):
                log.warning("%s is kept for pod %s on node %s, and used by pod %s here: one of them must go",
                            wanted["spec"]["ip"], other.pod, other.node, mine.pod)
                return
        try:
            if held != holder or (md.get("labels") or {}).get(NODE_LABEL) != self.node_name or written != user:
                patch: dict[str, Any] = {"metadata": {"resourceVersion": version, "labels": {NODE_LABEL: self.node_name}},
                                         "spec": {"holder": holder}}
                if written != user:
                    patch["metadata"]["annotations"] = {USED_BY_ANNOTATION: user}
                made = self.objects.patch(KIND, name, patch)
                version = str(((made if isinstance(made, dict) else {}).get("metadata") or {}).get("resourceVersion")
                              or "")
            if (current.get("status") or {}).get("orphaningTimestamp"):  # quarantined by the other node: taken back
                self.objects.patch_status(KIND, name, {"orphaningTimestamp": None}, resource_version=version)
        except Exception as exc:
            if status_of(exc) == 404:  # deleted since the read (the other node's release): made again by the retry
                raise ApiException(status=409, reason=f"lease object {name} was deleted under the keep") from None
            raise

    def orphan(self, lease: LeaseRecord, holder: str = "") -> None:
        """Owe the quarantine of the address's lease object: made only on this node's own object (another node may
        still use a Static whose object it made, and would lose it once the quarantine ends)."""
        name = lease_name(lease.pool, lease.address)
        made_at = self.made_at.pop(name, None)
        if self._never_made(name, holder, made_at):  # (``lease`` is the orphan: ``holder`` is whose it was)
            self.made_at[name] = NO_OBJECT  # nothing to quarantine now, nor to expire at the quarantine's end
            return
        known = {"resourceVersion": made_at[1]} if made_at is not None and made_at[0] else {}
        self.outbox.add(f"{KIND}/{name}", "orphan_lease", {"kind": KIND, "name": name, "node": self.node_name,
                                                           "orphanedAt": rfc3339(lease.orphaned_at), **known})

    def _orphan_lease(self, body: dict[str, Any]) -> None:
        """A quarantine: the orphaning time written on this node's own object, then its holder dropped (by the
        version this node's create answered, when known, without a read); the version its last write answered is
        kept in ``made_at``, so that the quarantine's end deletes the object at it."""
        name = body["name"]
        if body.get("resourceVersion"):
            try:
                made = self.objects.patch_status(KIND, name, {"orphaningTimestamp": body["orphanedAt"]},
                                                 resource_version=body["resourceVersion"],
                                                 field_manager=QUARANTINE_MANAGER)
            except Exception as exc:
                if status_of(exc) == 404:
                    return
                if status_of(exc) != 409:
                    raise
            else:
                self._unheld(name, _version_of(made))
                return
        current = self._read(name)
        if current is None:
            return
        md = current.get("metadata") or {}
        held = (current.get("spec") or {}).get("holder")
        orphaned = (current.get("status") or {}).get("orphaningTimestamp")
        if (md.get("labels") or {}).get(NODE_LABEL) not in (body.get("node"), None, "") or (orphaned and not held):
            return  # another node's (it may still use it; an unlabelled one is the controller's), or done already
        version = str(md.get("resourceVersion") or "")
        if not orphaned:  # the time first, as the controller's quarantine does: an object left between the two
            made = self.objects.patch_status(KIND, body["name"], {"orphaningTimestamp": body["orphanedAt"]},
                                             resource_version=version,  # writes still expires
                                             field_manager=QUARANTINE_MANAGER)
            version = _version_of(made)
        if held:
            self._unheld(name, version)

    def _never_made(self, name: str, holder: str, made_at: tuple[str, str] | None) -> bool:
        """Drop ``holder``'s owed create of the object (not worth making once the address goes, nor would it take over
        another's object); whether it was never sent and this node made none for that holder before, so that there is
        no object of it to let go. Only that holder's: another's is a claim of the address made at this very moment
        (a Static may take a quarantined address up, or one a release frees)."""
        unmade = self.outbox.drop_unsent(f"{KIND}/{name}", "block_lease", lambda body: holder_of_owed(body) == holder)
        return bool(unmade) and (made_at is None or made_at[0] != holder)

    def _unheld(self, name: str, version: str) -> None:
        # dropped (a merge patch with null), not emptied: the client sends "" as null
        made = self.objects.patch(KIND, name, {"metadata": {"resourceVersion": version} if version else {},
                                               "spec": {"holder": None}})
        if _version_of(made):
            self.made_at[name] = ("", _version_of(made))

    def keep(self, lease: LeaseRecord) -> None:
        self.made.pop(lease_name(lease.pool, lease.address), None)  # taken by the store: nothing to let go

    def take_up(self, lease: LeaseRecord) -> bool:
        """A lease object another node or the controller made for this holder (``held_by``), made this node's before
        the address is used here (outside the store's lock): read, and labelled with this node at the version read,
        so that this node lets it go from now on, the node that made it no longer does, and the controller no longer
        takes it for one no node uses. False when it is no longer that holder's (quarantined, deleted, leased again).
        A let-go never deletes it: the address stays the holder's (``made`` None)."""
        with api_unavailable_is_11():
            name = lease_name(lease.pool, lease.address)
            if not self.outbox.flush_target(f"{KIND}/{name}"):
                raise TryAgainLater(f"this node's writes of {lease.address} in {lease.pool} are not made yet",
                                    "the Kubernetes API did not take them; see plexusctl outbox")
            current = self._read(name)
            if current is None or _spec(current).get("holder") != lease.holder or \
                    (current.get("status") or {}).get("orphaningTimestamp"):
                return False
            md = current.get("metadata") or {}
            self.made[name] = None  # whatever comes of the patch and the claim, a let-go leaves it to its holder
            before = str((md.get("labels") or {}).get(NODE_LABEL) or "")
            if before == self.node_name:
                return True
            # written ahead, durably and parked: labelled back as it was unless the transaction that records the lease
            # drops it (``recorded``); made once the take-up fails (a let-go, a lost answer) or the daemon restarts
            target = f"{KIND}/{name}"
            self.outbox.add(target, "hand_back", {"kind": KIND, "name": name, "holder": lease.holder,
                                                  "node": self.node_name, "previous": before}, not_before=PARKED)
            try:
                self.objects.patch(KIND, name, {"metadata": {"labels": {NODE_LABEL: self.node_name},
                                                             "resourceVersion": md.get("resourceVersion")}})
            except Exception as exc:
                if status_of(exc) in (404, 409):  # not made: nothing to undo
                    self.outbox.drop(target, "hand_back")
                    return False
                self.outbox.unpark(target, "hand_back")  # maybe made, its answer lost: undone once the API answers
                raise
            return True

    def taken_over(self, lease: LeaseRecord) -> bool:
        """Whether the object of this node's ``lease``, read now, is no longer its holder's (quarantined, gone, another
        holder's): another node took the holder over. Not while this node owes it a write of who holds it: its own
        latest word (a create in its block, a keep, a quarantine), which the object does not show yet (a take-up's
        parked hand-back, and a pod's name taken off it, say nothing of that)."""
        name = lease_name(lease.pool, lease.address)
        if self.outbox.owes(f"{KIND}/{name}", but=("hand_back", "unkeep")):
            return False
        with api_unavailable_is_11():
            current = self._read(name)
        return current is None or _spec(current).get("holder") != lease.holder or \
            bool((current.get("status") or {}).get("orphaningTimestamp"))

    def use(self, rec: IPRecord, pod: Pod, field: str) -> None:
        self.users.use(rec.kind, rec.namespace, rec.name, rec.key, pod, field)

    def use_ended(self, rec: IPRecord, pod_uid: str) -> None:
        self.users.ended(rec.key, pod_uid)

    def use_recorded(self, rec: IPRecord, pod_uid: str) -> None:
        self.users.recorded(rec.key, pod_uid)

    def unused(self, rec: IPRecord, pod_uid: str) -> None:
        self.users.unused(rec.key, pod_uid)
        if (rec.type == "Static" or rec.created_by == "user") and rec.pool and rec.address:  # off its lease object
            name = lease_name(rec.pool, rec.address)  # too (``keep_in_use``): its keep, if still owed, is not made
            self.outbox.drop_where(f"{KIND}/{name}", "keep_lease",
                                   lambda body: getattr(parse_user(body["object"]), "uid", None) == pod_uid)
            self.outbox.add(f"{KIND}/{name}", "unkeep", {"name": name, "uid": pod_uid}, supersede=True)

    def _unkeep(self, body: dict[str, Any]) -> None:
        """The pod written on a kept lease object taken off it, if it is still that pod (read, patched at that
        version): the IPAddress made again is the pod's to be written on from now on, or the object goes."""
        current = self._read(body["name"])
        user = parse_user(current) if current is not None else None
        if current is None or user is None or user.uid != body["uid"]:
            return
        self.objects.patch(KIND, body["name"], {"metadata": {"annotations": {USED_BY_ANNOTATION: None},
                                                             "resourceVersion": (current.get("metadata") or {})
                                                             .get("resourceVersion")}})

    def bind(self, uses_here: Callable[[str, str], bool]) -> None:
        self.users.uses_here = uses_here

    def repair_use(self, rec: IPRecord, written: str, object_uid: str = "") -> None:
        user = parse_user_text(written)
        if rec.used_by_uids and (user is None or user.uid not in rec.used_by_uids):
            self.users.repair(rec.key, rec.used_by_pods[0], rec.used_by_uids[0], object_uid)

    def auto_ip_gone(self, rec: IPRecord) -> None:
        """The object of a pod's Auto IPAddress let go while the pod lives: deleted (owed)."""
        owe_auto_ip_delete(self.outbox, rec)

    def recorded(self, lease: LeaseRecord) -> None:
        """The take-up of ``lease``'s holder is kept: its hand-back goes (only that holder's)."""
        self.outbox.drop_where(f"{KIND}/{lease_name(lease.pool, lease.address)}", "hand_back",
                               lambda body: body.get("holder") == lease.holder)

    def _hand_back(self, body: dict[str, Any]) -> None:
        """A take-up the store did not record: the object labelled as it was (another node's, which still uses it, or
        the controller's), if it is still this node's for that holder (read, then patched at the version read)."""
        current = self._read(body["name"])
        md = (current or {}).get("metadata") or {}
        if current is None or _spec(current).get("holder") != body["holder"] or \
                (md.get("labels") or {}).get(NODE_LABEL) != body["node"]:
            return
        self.objects.patch(KIND, body["name"], {"metadata": {"labels": {NODE_LABEL: body["previous"] or None},
                                                             "resourceVersion": md.get("resourceVersion")}})

    def let_go(self, lease: LeaseRecord) -> None:
        """Undo a claim this node just made that its store did not take: only what the claim made this node's (its
        create, its adoption) goes, at that version; an object it found someone else's for the same holder (a Static
        another node uses) stays."""
        name = lease_name(lease.pool, lease.address)
        made = self.made.pop(name, "")
        if made is not None:
            self.release(lease, made)
        else:  # someone else's, or taken up: left to its holder, and a take-up's hand-back is made now (or retried)
            self.outbox.unpark(f"{KIND}/{name}", "hand_back")
            self.outbox.flush_target(f"{KIND}/{name}")

    def release(self, lease: LeaseRecord, resource_version: str = "") -> None:
        """Owe the delete of the address's lease object (with ``resource_version``: only while it is still the one
        this node made, as when letting go of an address that turned out to lie in another node's block, whose owner
        may have made the object its own meanwhile). Otherwise the object is deleted only while it is still this
        node's for the holder let go of (read first, deleted at the version read): a delete made twice (its answer
        lost, or the daemon killed before it noted it made) must not remove the object the next holder made since
        under the same name. The end of this node's quarantine of an address deletes the object only if it is still
        that quarantine's: the controller may have ended it first, and the address been leased again elsewhere (or
        adopted by a Static). An object this node made is deleted at the version its create answered (``made_at``);
        one whose create was owed and never sent (``Outbox.drop_unsent``) is not deleted at all."""
        name = lease_name(lease.pool, lease.address)
        made_at = self.made_at.pop(name, None)
        if lease.holder is None and not resource_version:
            if made_at == NO_OBJECT:
                return  # quarantined with no object (``orphan``): nothing to expire
            known = {"resourceVersion": made_at[1]} if made_at is not None and made_at[0] == "" else {}
            self.outbox.add(f"{KIND}/{name}", "expire_orphan", {"kind": KIND, "name": name, "orphanedAt": rfc3339(
                lease.orphaned_at) if lease.orphaned_at is not None else "", **known}, supersede=True)
            return
        # not worth making once it goes; an owed block_lease would take over an object of the same holder that another
        # node keeps for its pod (a Static deleted while in use), which this release would then delete
        for op in ("patch", "patch_status", "orphan_lease"):
            self.outbox.drop(f"{KIND}/{name}", op)
        if self._never_made(name, lease.holder or "", made_at) and not resource_version:
            return  # its object was owed and never made (an address let go before the outbox ran): nothing to delete
        if resource_version:
            self.outbox.add(f"{KIND}/{name}", "delete", {"kind": KIND, "name": name,
                                                         "resourceVersion": resource_version}, supersede=True)
        else:
            known = {"resourceVersion": made_at[1]} if made_at is not None and made_at[0] == lease.holder else {}
            self.outbox.add(f"{KIND}/{name}", "release_lease", {"kind": KIND, "name": name, "holder": lease.holder,
                                                                "node": self.node_name, **known}, supersede=True)

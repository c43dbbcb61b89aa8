"""Address management: resolve a pod's networks, lease addresses for its IPAddresses, let them go.

The rules of seed 000 and DESIGN §3. A lease is keyed by (pool, IP) and held by one IPAddress.
An ``Auto`` IPAddress made for a pod interface is owned by the pod and outlives its sandboxes; when
the pod is gone it is deleted and its lease is orphaned: quarantined for the pool's ``leaseTTL``
before the address is handed out again — except to a ``Static`` IPAddress asking for exactly that
address, which adopts the lease at once. Every change is one store transaction.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Container, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import TypeVar

from cni.errors import AddressConflict, CniError, InvalidConfig, ObjectNotFound, PoolExhausted, TryAgainLater
from ipamd.ipam.allocator import family_of, in_ranges, never_leased, pick_free, subnet_for, to_int, to_text
from ipamd.ipam.blocks import pick_in
from ipamd.ipam.registry import LeaseRegistry, NodeLocalRegistry
from ipamd.model.annotations import NetworkSelection
from ipamd.model.conditions import set_condition
from ipamd.model.objects import (
    CLUSTER_IP_ADDRESS,
    CLUSTER_NETWORK,
    IP_ADDRESS,
    IP_ADDRESS_KINDS,
    NETWORK,
    NETWORK_CLASS,
    NETWORK_KINDS,
    AddressPool,
    ClusterNetwork,
    IPAddressObject,
    Network,
    NetworkClass,
    Pod,
    parse_address,
    unserved_entries,
)
from ipamd.model.podopts import unreachable_gateway
from ipamd.model.used_by import User, parse_user_text
from ipamd.sources.base import ObjectSource
from ipamd.sources.lookups import class_of, pool_of
from ipamd.store.protocols import LeaseStore
from ipamd.store.records import IPRecord, LeaseRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ResolvedNetwork:
    key: str
    type: str  # Network | ClusterNetwork
    name: str
    namespace: str
    obj: Network | ClusterNetwork
    network_class: NetworkClass | None
    pool: AddressPool | None


@dataclass(frozen=True, slots=True)
class Claim:
    """An address an interface gets: its IPAddress, the lease, and whether this call created them."""

    ip_key: str
    ip_name: str
    address: str
    network: str
    routes: tuple[dict[str, str], ...]
    created_ip: bool
    created_lease: bool


T = TypeVar("T")
#: Times a claim is secured again when the cache moved between securing and recording (``CacheMoved``).
SECURE_TRIES = 3
#: Blocks an allocation asks other nodes to give back, one after another, while each comes back but other nodes'
#: calls take its free addresses first (each True of ``ask_return`` is a block gone or a cache read again).
RETURN_ASKS = 6
#: Who made the records whose holder outlives the pods that use it (``IPRecord.created_by``): a user's IPAddress and
#: an IPAMClaim. Another node looks an Auto one's address up by holder when the holder's next pod starts there, so
#: it is made known at once (``LeaseRegistry.publish``), not after the call. (A gRPC client's lease, ``api/<owner>``,
#: is asked for on its node: made known after the call, like a pod's own address, and the API's allocations stay
#: free of requests.)
#: (A Static's address is its spec's: other nodes find it taken by address, and its owed object waits, so that a
#: node leasing it in its block never takes over the object of the node whose pod uses it.)
PORTABLE = frozenset({"user", "claim"})


class CacheMoved(Exception):
    """What a claim secured outside the store's lock no longer fits in the transaction that records it: the address
    was taken or freed meanwhile, or the IPAddress lost its lease. Claiming another one would be an API request under
    the lock, so the caller secures again (``Ipam.resecured``)."""


@dataclass(slots=True)
class Secured:
    """An address claimed beyond this node before the store's transaction that records it (``Ipam.securing``):
    ``lease_for`` takes it (``used``), or it is let go when the transaction ends without it."""

    lease: LeaseRecord | None = None
    used: bool = False
    elsewhere: bool = False  # a Static address another node holds: refused inside the transaction, no second ask
    # this node's lease of a portable address whose holder another node took over since (``Ipam._taken_over``): the
    # transaction drops it from the store, and leaves its object to whoever quarantined or holds it now
    stale: LeaseRecord | None = None


def pool_key(pool: AddressPool) -> str:
    return pool.meta.key


def cursor_key(pool: AddressPool) -> str:
    """Where round robin resumes, per family: a dual-stack pool's IPv4 and IPv6 addresses are two sequences."""
    return pool.meta.key if pool.families[:1] != (6,) else f"{pool.meta.key}#IPv6"


def auto_ip_name(pod: Pod, if_name: str, family: int = 0) -> str:
    """The name of the Auto IPAddress of a pod interface: readable, and unique per pod UID. A dual-stack pool gives
    an interface one per family: the pool's first family's has the plain name, the second's ends in ``-v6``; one of
    a family the pool gained while the plain one holds the other's ends in ``-v4`` (``Ipam._auto_records``)."""
    base = re.sub(r"[^a-z0-9-]", "-", f"{pod.meta.name}-{if_name}".lower()).strip("-")[:200]
    return f"{base}-{hashlib.sha1(pod.meta.uid.encode()).hexdigest()[:5]}{f'-v{family}' if family else ''}"


def asked_family(rec: IPRecord, pool: AddressPool) -> int:
    """The family an IPAddress takes its address in from ``pool`` as it is now: its static address's, else its own
    ``spec.ipFamily``, else the one it holds while the pool still has it (as the webhook resolves it: a pool gaining
    a family never flips an address to it), else the pool's first."""
    if rec.static_ip:
        return ipaddress.ip_address(rec.static_ip).version
    held = held_family(rec)
    return held if rec.family or held in pool.families else pool.families[0]


def family_view(rec: IPRecord, pool: AddressPool) -> AddressPool:
    """The part of ``pool`` an IPAddress takes its address from (``asked_family``)."""
    family = asked_family(rec, pool)
    view = pool.family(family)
    if not view.subnets:
        nets = ", ".join(str(s.network) for s in pool.subnets)
        who, field = asker(rec)
        asked = f" ({rec.static_ip})" if rec.static_ip else ""
        raise InvalidConfig(f"{who} asks for an IPv{family} address{asked}, and pool {pool.meta.display} has "
                            f"no IPv{family} network ({nets})", field if rec.static_ip else "spec.ipFamily")
    return view


API_KIND = "api"  # the kind of a gRPC client's record (``api/<owner>``)


def asker(rec: IPRecord) -> tuple[str, str]:
    """Who asks for ``rec``'s exact address, in an error's words, and the field it asked in: a gRPC client's request
    (``address``) is no IPAddress manifest (``spec.static.ip``), and its refusals name what the client sent."""
    if rec.kind == API_KIND:
        return f"API client {rec.name}", "address"
    return f"IPAddress {rec.name}", "spec.static.ip"


def holder_words(holder: str) -> str:
    """A lease's holder in an error's words (``api/<owner>`` is a gRPC client)."""
    kind, _, owner = holder.partition("/")
    return f"API client {owner}" if kind == API_KIND else holder


class _Either:
    """``ip in a or ip in b`` without building the union of two large sets."""

    def __init__(self, a: Container[int], b: Container[int]) -> None:
        self.a, self.b = a, b

    def __contains__(self, ip: object) -> bool:
        return ip in self.a or ip in self.b


class _Securing:
    """The addresses of one pool this node is claiming right now, outside the store's lock."""

    def __init__(self, ipam: Ipam, pool: str) -> None:
        self.ipam, self.pool = ipam, pool

    def __contains__(self, ip: object) -> bool:
        return (self.pool, ip) in self.ipam._securing


class Ipam:
    def __init__(self, store: LeaseStore, source: ObjectSource, clock: Callable[[], float] = time.time,
                 registry: LeaseRegistry | None = None) -> None:
        self.store = store
        self.source = source
        self.clock = clock
        self.registry: LeaseRegistry = registry or NodeLocalRegistry()
        self.registry.bind(self.uses_here)
        self._securing: set[tuple[str, int]] = set()  # (pool, IP) being claimed beyond this node, outside the lock
        self._securing_lock = threading.Lock()

    def uses_here(self, key: str, pod_uid: str) -> bool:
        """Whether the store has the pod among the users of the IPAddress ``key`` (the registry's writes of who
        uses it beyond this node are checked against it when they are made)."""
        rec = self.store.get_ip(key)
        return rec is not None and pod_uid in rec.used_by_uids

    # -- resolution ------------------------------------------------------------------------------
    def resolve(self, sel: NetworkSelection, namespace: str, where: str) -> ResolvedNetwork:
        net: Network | ClusterNetwork | None
        cls: NetworkClass | None = None
        if sel.type == NETWORK.name:
            net = self.source.get(NETWORK, namespace, sel.name)
            if net is None:
                others = [o.meta.namespace for o in self.source.list(NETWORK) if o.meta.name == sel.name]
                hint = f"; one exists in namespace {others[0]}, but a pod may only use Networks of its own" if others else ""
                raise ObjectNotFound(f"Network {namespace}/{sel.name} does not exist{hint}", f"{where}.name")
            cls = self.source.get(NETWORK_CLASS, "", net.network_class)
            if cls is None:
                raise ObjectNotFound(f"NetworkClass {net.network_class} of Network {namespace}/{sel.name} does not exist",
                                     "spec.networkClass")
        else:
            net = self.source.get(CLUSTER_NETWORK, "", sel.name)
            if net is None:
                raise ObjectNotFound(f"ClusterNetwork {sel.name} does not exist", f"{where}.name")
            cls = class_of(self.source, net)
            if net.network_class and cls is None:  # (a ClusterNetwork may name none: its own parents and ID)
                raise ObjectNotFound(f"NetworkClass {net.network_class} of ClusterNetwork {sel.name} does not exist",
                                     "spec.networkClass")
        pool = pool_of(self.source, net, required=True)
        bad = unreachable_gateway(net.pod, [s.network for s in pool.subnets]) if pool and net.pod.routes else None
        if bad is not None:
            raise InvalidConfig(f"{net.meta.display}: {bad[0]} {bad[1]}", bad[0])
        return ResolvedNetwork(net.meta.key, sel.type, sel.name, net.meta.namespace, net, cls,
                               pool.for_network(net) if pool else None)

    def _user_ip(self, pod: Pod, sel: NetworkSelection, net: ResolvedNetwork, name: str,
                 where: str) -> IPAddressObject:
        ns = pod.meta.namespace
        obj = self.source.get(IP_ADDRESS, ns, name)
        if obj is None and net.type == CLUSTER_NETWORK.name:
            obj = self.source.get(CLUSTER_IP_ADDRESS, "", name)
        if obj is None:
            raise ObjectNotFound(f"IPAddress {ns}/{name} does not exist", f"{where}.ipAddressNames")
        if (obj.network_ref.kind, obj.network_ref.name) != (net.type, net.name):
            raise ObjectNotFound(
                f"IPAddress {name} is for {obj.network_ref.kind} {obj.network_ref.name}, not {net.type} {net.name}",
                f"{where}.ipAddressNames",
            )
        _refuse_if_another_pods(self.store.get_ip(obj.meta.key), pod, f"{where}.ipAddressNames")
        return obj

    def validate(self, pod: Pod, sel: NetworkSelection, net: ResolvedNetwork, where: str) -> list[IPAddressObject]:
        """Every check that needs no change: run for all interfaces before anything is leased."""
        if sel.ip_address_names and net.pool is None:
            raise InvalidConfig(f"{net.type} {net.name} has no IPAM (spec.ipam), so it takes no ipAddressNames",
                                f"{where}.ipAddressNames")
        if sel.guest_dhcp and (net.pool is None or 4 not in net.pool.families):
            has = "no IPAM (spec.ipam)" if net.pool is None else f"a pool of IPv6 only ({net.pool.meta.display})"
            raise InvalidConfig(f"{net.type} {net.name} has {has}: ipAssignmentMode DHCP hands the guest an IPv4 "
                                "address leased from its pool", f"{where}.ipAssignmentMode")
        objs = [self._user_ip(pod, sel, net, n, where) for n in sel.ip_address_names]
        if sel.guest_dhcp and objs and net.pool is not None and 4 not in {self._family(o, net.pool) for o in objs}:
            raise InvalidConfig("ipAddressNames give the interface no IPv4 address: ipAssignmentMode DHCP hands the "
                                "guest an IPv4 one", f"{where}.ipAssignmentMode")
        for obj in objs:
            if obj.type == "Static" and net.pool is not None:
                self._check_static(obj, net.pool)
        return objs

    def _family(self, obj: IPAddressObject, pool: AddressPool) -> int:
        """The family of the address a user's IPAddress gets: the one its record holds while the pool still has it
        (a pool gaining a family never moves an address: ``asked_family``), else what the object asks."""
        rec = self.store.get_ip(obj.meta.key)
        if rec is not None and not made_again(rec, obj):
            return asked_family(rec, pool)
        if obj.static_ip:
            return ipaddress.ip_address(obj.static_ip).version
        return obj.family or pool.families[0]

    def _check_static(self, obj: IPAddressObject, pool: AddressPool) -> None:
        ip = to_int(obj.static_ip)
        if subnet_for(pool, ip) is None:
            nets = ", ".join(str(s.network) for s in pool.subnets)
            raise InvalidConfig(f"IPAddress {obj.meta.name}: {obj.static_ip} is outside pool {pool.meta.name} ({nets})",
                                "spec.static.ip")
        refuse_gateway(pool, ip, f"IPAddress {obj.meta.name}", "spec.static.ip")
        lease = self.store.lease_at(pool_key(pool), ip)
        if lease and lease.holder and lease.holder != obj.meta.key:
            raise AddressConflict(f"IPAddress {obj.meta.name}: {obj.static_ip} is already leased to {lease.holder} "
                                  f"in pool {pool.meta.display}", "spec.static.ip")

    # -- leasing -------------------------------------------------------------------------------
    def record_for(self, obj: IPAddressObject, created_by: str = "user") -> IPRecord:
        """``obj``'s record: the stored one, unless that is an earlier object's of its name asking for another address
        (deleted and made again, as the webhook tells a user moving a Static to): once no pod uses it, it is let go as a
        deleted IPAddress is (``delete_ip``) and a fresh one is built; while a pod does, it keeps its address."""
        rec = self.store.get_ip(obj.meta.key)
        if rec is not None and made_again(rec, obj):
            with self.store.transaction():  # read again under the lock: an ADD may have made a pod its user since
                rec = self.store.get_ip(obj.meta.key)
                if rec is not None and made_again(rec, obj) and not rec.used_by_uids:
                    self.delete_ip(rec)
                    rec = None
        if rec is None:
            rec = IPRecord(
                key=obj.meta.key, kind=obj.meta.kind, namespace=obj.meta.namespace, name=obj.meta.name,
                network_kind=obj.network_ref.kind, network_name=obj.network_ref.name, type=obj.type,
                static_ip=obj.static_ip, uid=obj.meta.uid, owner_pod_uid=obj.owner_pod_uid,
                created_by=created_by, created_at=self.clock(), family=obj.family,
            )
        return rec

    def lease_for(self, rec: IPRecord, pool: AddressPool, secured: Secured) -> tuple[IPRecord, LeaseRecord, bool]:
        """Give the IPAddress its address (keeping the one it has, unless that ``starts_over``); inside a transaction,
        with what ``securing`` claimed before it. No API request: an address the registry was not asked for outside
        the lock is ``CacheMoved``."""
        now = self.clock()
        pool = family_view(rec, pool)
        pkey = pool_key(pool)
        lease = self.store.lease_of(rec.key)
        created = False
        if lease is not None and starts_over(lease, pool):  # another pool's, or now a gateway: start over
            self._orphan(lease, now)
            lease = None
        if lease is not None and secured.stale is not None and not rec.used_by_uids and \
                (lease.pool, lease.ip) == (secured.stale.pool, secured.stale.ip):
            self.store.delete_lease(lease.pool, lease.ip)  # its object is no longer this node's word: left alone
            lease = None
        who, field = asker(rec)
        if lease is None and secured.elsewhere:
            raise AddressConflict(f"{who}: {rec.static_ip} is already leased elsewhere (pool {pool.meta.display})",
                                  field)
        if lease is None and secured.lease is not None and secured.lease.pool == pkey and \
                subnet_for(pool, secured.lease.ip) is not None:  # (of the family asked for, in the pool now)
            held = self.store.lease_at(pkey, secured.lease.ip)
            if held is None or (held.holder is None and rec.type == "Static"):  # still free here (or quarantined)
                lease = replace(secured.lease, created_at=now)
                secured.used = True
                self.registry.recorded(lease)  # in this transaction: whatever undoes the claim is owed no more
                self.store.put_lease(lease)
                created = True
        if lease is None:
            if rec.type == "Static":
                ip = to_int(rec.static_ip)
                subnet = subnet_for(pool, ip)
                if subnet is None:
                    nets = ", ".join(str(s.network) for s in pool.subnets)
                    raise InvalidConfig(f"{who}: {rec.static_ip} is outside pool {pool.meta.display} ({nets})", field)
                refuse_gateway(pool, ip, who, field)
                held = self.store.lease_at(pkey, ip)
                if held is not None and held.holder not in (None, rec.key):
                    raise AddressConflict(f"{who}: {rec.static_ip} is already leased to {holder_words(held.holder)} "
                                          f"in pool {pool.meta.display}", field)
                if (pkey, ip) in self._securing:  # another call's pick, its claim out: ours could undo its object
                    raise TryAgainLater(f"{who}: {rec.static_ip} is being claimed on this node for another call right "
                                        "now", field)
                raise CacheMoved(f"{who}: {rec.static_ip} was not claimed beyond this node")
            else:
                if self.registry.held_by(rec.key, pkey) is None:
                    self._none_free(pool, pkey, now)
                raise CacheMoved(f"IPAddress {rec.name}: its address in pool {pool.meta.display} was not claimed "
                                 "beyond this node")
            self.store.put_lease(lease)
            created = True
        subnet = subnet_for(pool, lease.ip)
        routes = tuple(r.to_dict() for r in subnet.routes) if subnet else ()
        conds = set_condition(rec.conditions, "Allocated", True, "IPAddressAllocated", "", now)
        rec = replace(rec, phase="Allocated", address=lease.address, network=lease.network, pool=pkey,
                      routes=routes, conditions=conds)
        if not in_ranges(pool, lease.ip) and rec.type == "Auto":
            lease = replace(lease, outside_ranges=True)
            self.store.put_lease(lease)
        self.store.put_ip(rec)
        return rec, lease, created

    @contextmanager
    def securing(self, rec: IPRecord, pool: AddressPool | None) -> Iterator[Secured]:
        """Claim ``rec``'s address beyond this node (the API server, in Kubernetes mode) before the transaction that
        records it, so that no API call is made under the store's lock: every other CNI call, reconcile round and
        gRPC read of this node would wait on the API server. The address is picked under the lock and kept from this
        node's other calls while the claim is out; the claim is let go if the transaction does not take it."""
        secured = Secured()
        held = self.store.lease_of(rec.key)
        failed = True
        try:  # (a step after a claim won that fails lets it go below: ``_secure`` says it won before those steps)
            view = family_view(rec, pool) if pool is not None else None
            if view is not None and held is not None and not starts_over(held, view) and self._taken_over(rec, held):
                secured.stale, held = held, None  # the holder's address elsewhere taken up instead (``_secure``)
            if view is not None and (held is None or starts_over(held, view)):  # none, or one ``lease_for`` lets go
                secured.lease = self._secure(rec, view, secured)
            yield secured
            failed = False
        finally:
            if secured.lease is not None:  # told before the address is free for this node's other calls
                try:
                    if failed or not secured.used:  # a failed transaction rolled the record back: the claim goes too
                        self.registry.let_go(secured.lease)
                    else:
                        self.registry.keep(secured.lease)
                        if rec.created_by in PORTABLE and rec.type == "Auto":
                            self.registry.publish(secured.lease)
                finally:
                    self._unreserve(secured.lease)

    def _taken_over(self, rec: IPRecord, held: LeaseRecord) -> bool:
        """Whether this node's lease of a portable Auto address (a user's IPAddress, an IPAMClaim, no pod of this node
        on it) is one another node took the holder from since: there the address became a route's gateway, and that
        node quarantined its object and leased the holder another (``_quarantine_elsewhere``), which this node's store
        was never told. The registry shows the holder's address elsewhere (the informer's cache: no request while it
        shows this lease's, or none, as an ADD finds it), and this lease's object, read now, is no longer the holder's
        (the cache lags this node's own writes: it may show an address this node let go of a moment ago)."""
        if rec.created_by not in PORTABLE or rec.type != "Auto" or rec.used_by_uids:
            return False
        elsewhere = self.registry.held_by(rec.key, held.pool)
        return elsewhere is not None and elsewhere != held.ip and self.registry.taken_over(held)

    def _secure(self, rec: IPRecord, pool: AddressPool, secured: Secured) -> LeaseRecord | None:
        pkey = pool_key(pool)
        if rec.type == "Static":
            ip = to_int(rec.static_ip)
            subnet = subnet_for(pool, ip)
            held = self.store.lease_at(pkey, ip)
            if subnet is None or never_leased(pool, ip) is not None or (held is not None and held.holder is not None):
                return None  # refused inside the transaction, with the reason
            lease = self._candidate(rec, pool, pkey, ip, str(subnet.network))
            if not self._reserve(lease):
                return None  # this node is claiming it for another call right now: decided inside the transaction
            if self._claim_outside(lease, exact=True):
                return lease
            secured.elsewhere = True
            return None
        # a gRPC client's holder (``api/<owner>``) names a client of this node's socket: another node's client of the
        # same name is another client, whose address is never taken up here
        adopted = self.registry.held_by(rec.key, pkey) if rec.created_by != "api" else None
        if adopted is not None and subnet_for(pool, adopted) is None:  # of a family the pool dropped since
            self._refuse_outside_elsewhere(rec, pool, adopted)  # (this node's own: ``lease_for`` lets it go)
            adopted = None
        if adopted is not None and never_leased(pool, adopted) is not None:  # a router's address since it was leased
            self._quarantine_elsewhere(rec, pool, pkey, adopted)
            adopted = None
        if adopted is not None:  # leased on another node (or by the controller): made this node's first
            lease = self._candidate(rec, pool, pkey, adopted, network_of(pool, adopted))
            if not self._reserve(lease):  # another call of this node is taking it up right now
                raise TryAgainLater(f"IPAddress {rec.name}: its address {lease.address} is being taken up on this "
                                    "node for another call right now", "ipAddressNames")
            took = False
            try:
                took = self.registry.take_up(lease)
            finally:
                if not took:
                    self._unreserve(lease)
            if took:
                return lease
        lost: set[int] = set()
        if self.registry.in_blocks(pool):
            in_block = self._secure_in_blocks(rec, pool, pkey, lost, secured)
            if in_block is not None:
                return in_block
        cursor = self.store.cursor(cursor_key(pool))
        asked = 0
        while True:
            with self.store.transaction():  # the pick sees this node's leases as one consistent set
                taken = self._taken(pkey, lost)
                picked = pick_free(pool, taken, cursor)
                if picked is None and self.expire(pkey, self.clock()):
                    picked = pick_free(pool, taken, cursor)
                candidate = None
                if picked is not None:
                    candidate = self._candidate(rec, pool, pkey, picked[0], str(picked[1].network))
                    if not self._reserve(candidate):  # a Static's claim of it is out (reserved outside the lock)
                        lost.add(candidate.ip)
                        continue
            if candidate is None:
                # the free addresses left may be in other nodes' blocks: one is asked back (outside the lock), and
                # again while blocks come back but other nodes' calls take their addresses first
                if asked < RETURN_ASKS and self.registry.ask_return(pool):
                    asked += 1
                    continue
                return None  # exhausted: said inside the transaction, with the counts
            if self._claim_outside(candidate):
                secured.lease = candidate  # won: let go if what follows fails
                self.store.set_cursor(cursor_key(pool), candidate.ip)
                return candidate
            lost.add(candidate.ip)  # taken by another node since our cache last saw it: try the next one
            cursor = candidate.ip

    def _refuse_outside_elsewhere(self, rec: IPRecord, pool: AddressPool, ip: int) -> None:
        """Refuse (code 11) a lease held for ``rec`` beyond this node on an address outside every network of ``pool``
        (the part of it ``rec`` asks from: a family the pool dropped since the controller, or another node, leased
        it): never taken up, as the pod would get an address the pool has no network for (and another network's
        prefix length), nor leased anew while it is live, as ``rec`` would hold two. Its holder lets it go (the
        controller's next round; the node that took it up, once no pod there uses it), and a later ADD leases anew
        or takes up the controller's new lease. This node's own passes (``lease_for`` lets it go, and another address
        is picked)."""
        own = self.store.lease_of(rec.key)
        if own is not None and own.ip == ip:
            return
        nets = ", ".join(str(s.network) for s in pool.subnets)
        raise TryAgainLater(f"{rec.kind} {rec.name}: its address {to_text(ip)}, leased beyond this node, is outside "
                            f"every network of pool {pool.meta.display} ({nets}); it is leased anew once that lease "
                            "is let go", "ipAddressNames")

    def _quarantine_elsewhere(self, rec: IPRecord, pool: AddressPool, pkey: str, ip: int) -> None:
        """A lease held for ``rec`` beyond this node (another node's, the controller's) on an address that has become
        a route's gateway since: taken up and quarantined here, as ``lease_for`` does to a lease of this node's, so
        that neither this pod nor the holder's next pods elsewhere get the router's address, and the address is not
        lost. Left alone when this node's store has it held (its own lease: ``lease_for`` lets it go)."""
        held = self.store.lease_at(pkey, ip)
        if held is not None and held.holder is not None:
            return
        lease = self._candidate(rec, pool, pkey, ip, network_of(pool, ip))
        if not self._reserve(lease):  # another call of this node is taking it up (or letting it go) right now
            raise TryAgainLater(f"IPAddress {rec.name}: its address {lease.address}, a gateway now, is being taken up "
                                "on this node for another call right now", "ipAddressNames")
        took = done = False
        try:
            took = self.registry.take_up(lease)
            if took:  # (else no longer the holder's: nothing of it to let go)
                with self.store.transaction():
                    self.registry.recorded(lease)  # taken up for good (its hand-back goes), then quarantined
                    self._orphan(lease, self.clock())
                done = True
        finally:
            try:
                if took and done:  # as ``securing`` ends a take-up: kept, or handed back when not recorded
                    self.registry.keep(lease)
                elif took:
                    self.registry.let_go(lease)
            finally:
                self._unreserve(lease)

    def _secure_in_blocks(self, rec: IPRecord, pool: AddressPool, pkey: str, lost: set[int],
                          secured: Secured) -> LeaseRecord | None:
        """An address of this node's blocks of ``pool`` (claiming one more when they are full); None when the pool has
        no block left to claim, and addresses are leased one by one."""
        for _ in range(4):
            with self.store.transaction():
                taken = self._taken(pkey, lost)
                blocks = self.registry.blocks(pool)
                ip = pick_in(pool, blocks, taken.__contains__, self.store.cursor(cursor_key(pool)))
                if ip is None and blocks and self.expire(pkey, self.clock()):
                    ip = pick_in(pool, blocks, taken.__contains__, self.store.cursor(cursor_key(pool)))
                subnet = subnet_for(pool, ip) if ip is not None else None
                if ip is None or subnet is None:
                    lease = None
                else:
                    lease = self._candidate(rec, pool, pkey, ip, str(subnet.network))
                    if not self._reserve(lease):  # a Static's claim of it is out (reserved outside the lock)
                        lost.add(lease.ip)
                        continue
            if lease is None:
                try:
                    if self.registry.grow(pool) is None:  # outside the lock: an API request
                        return None
                except TryAgainLater as exc:
                    raise TryAgainLater(f"this node's address blocks of pool {pool.meta.display} are full, and claiming "
                                        "the next one needs the Kubernetes API", exc.msg) from None
                continue
            if self._claim_outside(lease):
                secured.lease = lease  # won: let go if what follows fails
                self.store.set_cursor(cursor_key(pool), lease.ip)
                self.registry.grow_soon(pool, taken.__contains__)
                return lease
            lost.add(lease.ip)
        return None

    def _taken(self, pkey: str, lost: set[int]) -> _Either:
        """What a pick must skip: leased here, held elsewhere, lost to another node in this call, being claimed."""
        return _Either(self.store.taken_ips(pkey), _Either(self.registry.taken_elsewhere(pkey),
                                                           _Either(lost, _Securing(self, pkey))))

    def _candidate(self, rec: IPRecord, pool: AddressPool, pkey: str, ip: int, network: str) -> LeaseRecord:
        return LeaseRecord(pool=pkey, ip=ip, address=to_text(ip), network=network, holder=rec.key,
                           holder_uid=rec.uid, ttl=pool.lease_ttl_s, created_at=self.clock())

    def _claim_outside(self, lease: LeaseRecord, exact: bool = False) -> bool:
        """The registry's claim of a reserved address, outside the store's lock; the reservation goes unless won."""
        won = False
        try:
            won = self.registry.claim(lease, exact)
            return won
        finally:
            if not won:
                self._unreserve(lease)

    def in_use(self, pool: str, ip: int) -> bool:
        """Leased here (held or quarantined), or being claimed right now."""
        return (pool, ip) in self._securing or self.store.lease_at(pool, ip) is not None

    def _reserve(self, lease: LeaseRecord) -> bool:
        with self._securing_lock:
            if (lease.pool, lease.ip) in self._securing:
                return False
            self._securing.add((lease.pool, lease.ip))
            return True

    def _unreserve(self, lease: LeaseRecord) -> None:
        with self._securing_lock:
            self._securing.discard((lease.pool, lease.ip))

    def _none_free(self, pool: AddressPool, pkey: str, now: float) -> None:
        """Raise ``PoolExhausted`` with the counts when the pool has no free address left (as securing found)."""
        lost: set[int] = set()
        if pick_free(pool, self._taken(pkey, lost), self.store.cursor(cursor_key(pool))) is not None:
            return
        if self.expire(pkey, now) and pick_free(pool, self._taken(pkey, lost), 0) is not None:  # ended lazily
            return
        # the leases over this pool's own addresses: an inline range's key is its whole space's (every range of the
        # network_name), whose other leases are no part of its size
        used = sum(1 for ip in self.store.taken_ips(pkey) if in_ranges(pool, ip))
        raise PoolExhausted(f"pool {pool.meta.display} has no free address",
                            f"{used} of {pool.size} addresses leased or quarantined")

    def _orphan(self, lease: LeaseRecord, now: float) -> None:
        orphan = self.store.orphan_lease(lease, now)
        self.registry.orphan(orphan, lease.holder or "")

    def drop_lease(self, lease: LeaseRecord) -> None:
        self.store.delete_lease(lease.pool, lease.ip)
        self.registry.release(lease)

    def mark_exhausted(self, rec: IPRecord, exc: CniError) -> None:
        conds = set_condition(rec.conditions, "Allocated", False, "NoFreeIPAddress", exc.msg, self.clock())
        with self.store.transaction():
            self.store.put_ip(replace(rec, phase="Pending", conditions=conds))

    def _refused_pending(self, rec: IPRecord, pool: AddressPool, exc: CniError) -> None:
        """A user's IPAddress the pool refuses is recorded ``Pending`` saying why, as an Auto one on a full pool is,
        holding no lease (the one it held let go, unless a pod uses it): shown, not dropped with a line in the log, and
        leased by a later round once it can be. A Static whose address the pool refuses it (``static_refusal``), or an
        Auto one naming a family (``spec.ipFamily``) the pool no longer has (``OUTSIDE_POOL``: its address, if it
        holds one, is of no network of the pool's). (A gRPC client's refused request is no object: nothing is
        recorded.)"""
        if rec.created_by != "user" or rec.kind not in IP_ADDRESS_KINDS:
            return
        if rec.type == "Static" and rec.static_ip:
            reason = static_refusal(exc, pool, to_int(rec.static_ip))
        elif rec.type == "Auto" and asked_family(rec, pool) not in pool.families:
            reason = OUTSIDE_POOL
        else:
            return
        with self.store.transaction():  # read again under the lock: an ADD may have leased it meanwhile
            held = self.store.lease_of(rec.key)
            now = self.store.get_ip(rec.key) or rec
            if held is not None and (now.used_by_uids or not starts_over(held, pool)):
                return
            if held is not None:  # one ``lease_for`` let go before refusing (rolled back with the refusal), or one
                # of a family the pool no longer has: let go
                self._orphan(held, self.clock())
            conds = set_condition(now.conditions, "Allocated", False, reason, exc.msg, self.clock())
            self.store.put_ip(replace(now, phase="Pending", address="", network="", routes=(), conditions=conds))

    def note_exhausted(self, objs: list[IPAddressObject], exc: CniError) -> None:
        """Record ``Allocated=False/NoFreeIPAddress`` on user IPAddresses that got no address."""
        for obj in objs:
            rec = self.record_for(obj)
            if self.store.lease_of(rec.key) is None:
                self.mark_exhausted(rec, exc)

    def claim(self, pod: Pod, sel: NetworkSelection, net: ResolvedNetwork,
              user_objs: list[IPAddressObject]) -> list[Claim]:
        """Lease the addresses of one pod interface and mark them used by the pod (one transaction)."""
        def attempt() -> list[Claim]:
            with self.claiming(pod, sel, net, user_objs) as record, self.store.transaction():
                return record()

        return self.resecured(attempt)

    def resecured(self, attempt: Callable[[], T]) -> T:
        """``attempt`` (securing, then the transaction that records what it secured) made again while the cache moves
        between the two (``CacheMoved``); after ``SECURE_TRIES`` the caller hears code 11 and tries later."""
        for tries in range(1, SECURE_TRIES + 1):
            try:
                return attempt()
            except CacheMoved as exc:
                log.debug("secured again (%d): %s", tries, exc)
                if tries == SECURE_TRIES:
                    raise TryAgainLater(f"{exc}: the pool's addresses changed {SECURE_TRIES} times while this call "
                                        "claimed one", "ipam") from None
        raise AssertionError("unreachable")

    def _kept_while_used(self, rec: IPRecord | None, pool: AddressPool) -> tuple[IPRecord, LeaseRecord] | None:
        """An IPAddress whose lease ``lease_for`` would let go (``starts_over``: its Network moved to another pool, or
        its address became a route's gateway) keeps it while a pod uses it: its interface carries it, and the pool,
        taking it for free, could hand it to another pod of the segment. Leased anew once its pods let it go."""
        if rec is None or not rec.used_by_uids:
            return None
        lease = self.store.lease_of(rec.key)
        if lease is None or (asked_family(rec, pool) in pool.families and not starts_over(lease, family_view(rec, pool))):
            return None  # (one naming a family its pool dropped starts over: kept, not refused every round)
        return rec, lease

    def lease_alone(self, rec: IPRecord, pool: AddressPool,
                    fit: Callable[[IPRecord], IPRecord] = lambda rec: rec) -> tuple[IPRecord, LeaseRecord]:
        """Lease ``rec`` its address in a transaction of its own (a user's IPAddress, a gRPC client's lease). The
        record is read again under the lock (``rec`` says only whether it is deleted): a CNI call may have made a pod
        its user, or let one go, since the caller read it; ``fit`` checks (or refuses) it as read there."""
        pool = self.as_its_network_sees(rec, pool)

        def attempt() -> tuple[IPRecord, LeaseRecord]:
            kept = self._kept_while_used(self.store.get_ip(rec.key), pool)
            if kept is not None:
                return kept
            with self.securing(rec, pool) as secured, self.store.transaction():
                current = self.store.get_ip(rec.key)
                if (kept := self._kept_while_used(current, pool)) is not None:
                    return kept
                now = fit(replace(current, deleted=rec.deleted)) if current is not None else rec
                leased, lease, _ = self.lease_for(now, pool, secured)
            return leased, lease

        try:
            return self.resecured(attempt)
        except (AddressConflict, InvalidConfig) as exc:
            self._refused_pending(rec, pool, exc)
            raise

    def as_its_network_sees(self, rec: IPRecord, pool: AddressPool) -> AddressPool:
        """``pool`` as the network ``rec`` is for sees it (``AddressPool.for_network``, as ``resolve`` gives a pod's):
        a user's IPAddress leased before any pod uses it never gets that network's policy routes' gateways either."""
        net = self._network_of(rec)
        return pool.for_network(net) if net is not None else pool

    def _network_of(self, rec: IPRecord) -> Network | ClusterNetwork | None:
        kind = NETWORK_KINDS.get(rec.network_kind)
        return self.source.get(kind, rec.namespace if kind.namespaced else "", rec.network_name) if kind else None

    @contextmanager
    def claiming(self, pod: Pod, sel: NetworkSelection, net: ResolvedNetwork, user_objs: list[IPAddressObject],
                 where: str = "networks-spec") -> Iterator[Callable[[], list[Claim]]]:
        """Claim the addresses of one pod interface beyond this node first (the API server, outside the store's
        lock: ``securing``), then hand over what records them and marks them used by the pod, for the caller to call
        inside its own transaction with whatever must be recorded with them (the interface they are for), so that
        no other call sees one without the other. What the transaction does not take is let go on the way out."""
        pool = net.pool
        if pool is None:
            yield list
            return
        pod_ref = f"{pod.meta.namespace}/{pod.meta.name}"
        field = f"{where}.ipAddressNames"
        aside: list[str] = []
        if user_objs:  # IPv4 first (README), in the annotation's order within a family
            todo = sorted((self.record_for(o) for o in user_objs), key=lambda r: asked_family(r, pool))
        else:
            todo, aside = self._auto_records(pod, sel.if_name, net, pool)
        named = bool(user_objs)
        using: list[IPRecord] = []
        try:
            # the pod written on each IPAddress as its one user in the cluster before any address is used (in one
            # order on every node); not again for a pod that uses it here already (a new sandbox: no API needed)
            for rec in sorted(todo, key=lambda r: r.key) if named else ():
                _refuse_if_another_pods(rec, pod, field)  # another pod of this node's: refused with no write
                if pod.meta.uid not in rec.used_by_uids:
                    self.registry.use(rec, pod, field)
                    using.append(rec)
            skipped = {r.key for r in todo if pod.meta.uid in r.used_by_uids} if named else set()
            with self._claims(pod, pod_ref, field, todo, named, pool, skipped, aside) as record:
                yield record
        finally:
            for rec in using:  # not recorded: taken off it again, or another pod would wait on one that never used it
                self.registry.use_ended(rec, pod.meta.uid)

    def _auto_records(self, pod: Pod, if_name: str, net: ResolvedNetwork,
                      pool: AddressPool) -> tuple[list[IPRecord], list[str]]:
        """The Auto IPAddresses of a pod interface, one per family the pool has (IPv4 first), and the keys of its
        others, which no family takes now (the pool lost the family they hold: let go once no pod uses them). A
        record keeps the family of the address it holds, so a pool gaining or losing a family moves no address from
        one record to another (its lease object names its holder): the record of a family the pool gained while the
        plain-named one holds the other's is named after it (``-v4``). The plain-named one takes the pool's first
        family anew once it holds no address the pool has, unless a pod still uses it (its other sandbox, whose
        interface carries that address until its DEL: ``_kept_while_used``, as for a pool move)."""
        def key_of(family: int) -> str:
            return f"IPAddress/{pod.meta.namespace}/{auto_ip_name(pod, if_name, family)}"

        def new(family: int) -> IPRecord:
            key = key_of(family)
            return IPRecord(key=key, kind="IPAddress", namespace=pod.meta.namespace,
                            name=auto_ip_name(pod, if_name, family), network_kind=net.type, network_name=net.name,
                            type="Auto", uid=hashlib.sha1(key.encode()).hexdigest(), owner_pod_uid=pod.meta.uid,
                            created_by="plexus", created_at=self.clock(), family=family)

        stored = [r for r in (self.store.get_ip(key_of(f)) for f in (0, 4, 6)) if r is not None]
        plain = next((r for r in stored if r.key == key_of(0)), None)
        todo: list[IPRecord] = []
        for family in pool.families:
            taken = {r.key for r in todo}
            rec = next((r for r in stored if r.key not in taken and held_family(r) == family), None)
            if rec is None and family == pool.families[0] and (plain is None or (
                    held_family(plain) not in pool.families and not (plain.address and plain.used_by_uids))):
                rec = plain or new(0)
            todo.append(rec or new(family))
        taken = {r.key for r in todo}
        return todo, [r.key for r in stored if r.key not in taken]

    @contextmanager
    def _claims(self, pod: Pod, pod_ref: str, field: str, todo: list[IPRecord], named: bool,
                pool: AddressPool, skipped: Collection[str],
                aside: Collection[str] = ()) -> Iterator[Callable[[], list[Claim]]]:
        """``claiming``'s addresses secured, and what records them (``named``: the pod named its IPAddresses;
        ``skipped``: those it was not written on, as it used them here already; ``aside``: the interface's Auto
        IPAddresses no family of the pool takes now, let go with them once no pod uses them)."""
        with ExitStack() as stack:
            secured = [(rec, stack.enter_context(self.securing(rec, pool))) for rec in todo]

            def record() -> list[Claim]:
                claims = []
                for rec, sec in secured:
                    current = self.store.get_ip(rec.key)  # as it is now, under the lock
                    if rec.key in skipped and (current is None or pod.meta.uid not in current.used_by_uids):
                        # the pod's other sandbox let it go meanwhile (its DEL): written on it again, from the top
                        raise CacheMoved(f"IPAddress {rec.name}: pod {pod_ref} stopped using it meanwhile")
                    created_ip = current is None and not named
                    if named:  # another pod's ADD may have taken it since its check
                        _refuse_if_another_pods(current, pod, field)
                    rec, lease, created_lease = self.lease_for(current or rec, pool, sec)
                    pairs = dict(zip(rec.used_by_uids, rec.used_by_pods, strict=False)) | {pod.meta.uid: pod_ref}
                    rec = replace(rec, used_by_uids=tuple(pairs), used_by_pods=tuple(pairs.values()))
                    self.store.put_ip(rec)
                    if named:  # with the pod's use of it: its undo, written ahead of the write of its user, goes
                        self.registry.use_recorded(rec, pod.meta.uid)
                        if (rec.type == "Static" or rec.created_by == "user") and lease.holder and \
                                rec.key not in skipped:
                            # every node leases a Static, and the node whose pod uses a user's IPAddress holds its
                            # lease object, the pod written there too: should it be deleted while in use, the others'
                            # let-go leaves the object alone, and one made again (or replaced whole, which drops its
                            # used-by) is refused to other nodes' pods
                            self.registry.keep_in_use(lease, (pod_ref, pod.meta.uid))
                    claims.append(Claim(rec.key, rec.name, lease.address, lease.network, rec.routes, created_ip,
                                        created_lease))
                for key in aside:
                    self._let_go_unused(key)
                return claims

            yield record

    def _let_go_unused(self, key: str) -> None:
        """A pod's Auto IPAddress no family of its pool takes now: let go (its address quarantined) unless a pod
        still uses it (read under the lock), whose DEL then lets it go (``_drop_user``)."""
        rec = self.store.get_ip(key)
        if rec is not None and not rec.used_by_uids:
            self._let_go_auto(rec)

    def _let_go_auto(self, rec: IPRecord) -> None:
        """A pod's Auto IPAddress no family of its pool takes now, let go while the pod lives: its address
        quarantined, and its object in the API deleted (owed in this commit: the garbage collector deletes it only
        with the pod, and it stood ``Allocated`` with the quarantined address till then)."""
        with self.store.transaction():
            self.delete_ip(rec)
            self.registry.auto_ip_gone(rec)

    def records(self, keys: list[str]) -> list[IPRecord]:
        """The IPAddress records of ``keys`` that exist."""
        return [r for r in (self.store.get_ip(k) for k in keys) if r is not None]

    def set_attached(self, ip_keys: list[str], attached: bool, message: str = "") -> None:
        now = self.clock()
        with self.store.transaction():
            for key in ip_keys:
                rec = self.store.get_ip(key)
                if rec is not None:
                    reason = "AttachedToPod" if attached else "NotAttached"
                    self.store.put_ip(replace(rec, conditions=set_condition(rec.conditions, "Attached", attached,
                                                                            reason, message, now)))

    def undo_claims(self, claims: list[Claim], pod: Pod, attachment: str = "", shared: Collection[str] = ()) -> None:
        """Roll an ADD's claims back: each loses only this pod (or, for a delegate's lease, this ``attachment``), and
        what the ADD created goes with its lease when nobody else took it up meanwhile (``_undo_created``); an
        IPAddress in ``shared`` (another sandbox of the pod uses it) keeps the pod, and loses the attachment alone."""
        with self.store.transaction():
            for c in claims:
                rec = self.store.get_ip(c.ip_key)
                if c.ip_key in shared:
                    if rec is not None and attachment in rec.used_by_uids:
                        self._drop_user(rec, "", attachment)
                elif c.created_ip:
                    self._undo_created(c.ip_key, rec, pod.meta.uid, attachment)
                elif rec is not None:
                    self._drop_user(rec, pod.meta.uid, attachment)

    def _undo_created(self, key: str, rec: IPRecord | None, pod_uid: str, attachment: str) -> None:
        """A record the failed ADD made: another attachment may use it by now (an IPAMClaim's, taken up by the pod made
        again under the same name, or by the pod's other sandbox still leasing, which ``shared`` does not list), so
        only this pod and attachment go. The record and its lease go (freed, never used) when nobody is left, but an
        IPAMClaim's never: its address stays with the claim (as ``_drop_user`` keeps it)."""
        others = set(rec.used_by_uids) - {pod_uid, attachment} if rec is not None else set()
        if rec is not None and (others or rec.created_by == "claim"):
            self._drop_user(rec, pod_uid, attachment)
            return
        self._free(key)

    def _free(self, key: str) -> None:
        """A record nothing ever used goes, and its lease is freed at once (no quarantine: no pod ran with it)."""
        lease = self.store.lease_of(key)
        if lease is not None:
            self.drop_lease(lease)
        self.store.delete_ip(key)

    def _drop_user(self, rec: IPRecord, pod_uid: str, attachment: str = "", unpublished: bool = False) -> None:
        """``rec`` no longer used by the pod (or the ``attachment``). ``unpublished``: a pod's Auto IPAddress made by an
        ADD that never was ready (``release_pod``), let go once nothing uses it: freed, as that ADD's undo frees it,
        unless a ready sandbox of the pod used it since (``Attached`` shown; its object made by that sandbox's ADD):
        then let go as one of a family its pool dropped is (quarantined, its object deleted)."""
        unpublished = unpublished and rec.created_by == "plexus"
        attached_ever = any(c.get("type") == "Attached" for c in rec.conditions)
        gone = {pod_uid, attachment} - {""}
        keep = [(p, u) for p, u in zip(rec.used_by_pods, rec.used_by_uids, strict=False) if u not in gone]
        rec = replace(rec, used_by_pods=tuple(p for p, _ in keep), used_by_uids=tuple(u for _, u in keep),
                      user_networks=tuple((u, n) for u, n in rec.user_networks if u not in gone))
        if not keep:
            rec = replace(rec, conditions=set_condition(rec.conditions, "Attached", False, "NotAttached", "",
                                                        self.clock()))
        # a delegate's lease goes with its attachment, a pod's Auto one of a family its pool lost with its last user
        if not keep and (rec.deleted or rec.created_by == "cni"):
            self.delete_ip(rec)
        elif not keep and unpublished and not attached_ever:
            self._free(rec.key)
        elif not keep and (unpublished or self._family_dropped(rec)):
            self._let_go_auto(rec)
        else:
            self.store.put_ip(rec)
        if pod_uid and rec.created_by == "user" and rec.kind in IP_ADDRESS_KINDS:
            self.registry.unused(rec, pod_uid)  # taken off the IPAddress for other nodes' pods (owed)

    def _family_dropped(self, rec: IPRecord) -> bool:
        """A pod's Auto IPAddress of a family its network's pool no longer has: none of the pod's sandboxes takes it
        again (``_auto_records``)."""
        family = held_family(rec)
        if rec.created_by != "plexus" or not family:
            return False
        net = self._network_of(rec)
        pool = pool_of(self.source, net) if net is not None else None
        return pool is not None and family not in pool.families

    def let_go_taken_up(self, key: str, pool: AddressPool) -> bool:
        """A user's Auto IPAddress whose lease this node took up for a pod, in a cluster (the controller leases those,
        and never touches a lease a node took up; this node's rounds lease Statics alone): once no pod of this node
        uses it and its pool no longer has its address's family, let go as a pod's own Auto one of a dropped family is
        (``_let_go_auto``, its object the user's): its address quarantined for the pool's leaseTTL, its record
        forgotten. The controller leases it anew, or sets it Pending, once the lease object shows no holder: never
        while this node's let-go is owed. Read again under the lock (an ADD may make a pod its user meanwhile); most
        rounds find nothing to let go without taking it. Whether let go."""
        if self._unused_of_dropped_family(key, pool) is None:
            return False
        with self.store.transaction():
            rec = self._unused_of_dropped_family(key, pool)
            if rec is None:
                return False
            self.delete_ip(rec)
        return True

    def _unused_of_dropped_family(self, key: str, pool: AddressPool) -> IPRecord | None:
        """The record of a user's Auto IPAddress that no pod of this node uses, leased here an address of a family
        ``pool`` no longer has (``let_go_taken_up``)."""
        rec = self.store.get_ip(key)
        if rec is None or rec.used_by_uids or (rec.created_by, rec.type) != ("user", "Auto") or \
                rec.kind not in IP_ADDRESS_KINDS:
            return None
        lease = self.store.lease_of(key)
        return rec if lease is not None and family_of(lease.ip) not in pool.families else None

    def release_pod(self, ip_keys: list[str], pod_uid: str, attachment: str = "", shared: Collection[str] = (),
                    unpublished: Collection[str] = ()) -> None:
        """The pod (or, for a delegate's lease, the ``attachment``) no longer uses these IPAddresses; one in
        ``shared`` (another sandbox of the pod uses it: this is a dead sandbox's late DEL) loses the attachment alone.
        One in ``unpublished`` (a pod's Auto IPAddress made by an ADD that never was ready: kept while an interface
        its undo left carried it, or by a crash) is let go once nothing uses it, as that ADD's undo would have: no
        object of it was made (only a ready ADD has it made), and the pod's next ADD, reusing it as made before, would
        never have it made."""
        with self.store.transaction():
            for key in ip_keys:
                rec = self.store.get_ip(key)
                users = {attachment} - {""} if key in shared else {pod_uid, attachment} - {""}
                if rec is not None and users & set(rec.used_by_uids):
                    self._drop_user(rec, "" if key in shared else pod_uid, attachment,
                                    key in unpublished and key not in shared)

    def delete_ip(self, rec: IPRecord) -> None:
        """The IPAddress is gone: its lease is orphaned and quarantined for the pool's TTL."""
        with self.store.transaction():
            lease = self.store.lease_of(rec.key)
            if lease is not None:
                if lease.ttl > 0:
                    self._orphan(lease, self.clock())
                else:
                    self.drop_lease(lease)
            self.store.delete_ip(rec.key)

    def forget_pod(self, pod_uid: str) -> int:
        """The pod is gone: delete the Auto IPAddresses it owned (their leases go to quarantine)."""
        owned = self.store.ips_owned_by(pod_uid)
        for rec in owned:
            if rec.created_by != "cni" and rec.used_by_uids and set(rec.used_by_uids) != {pod_uid}:
                continue  # a delegate's lease is used by the pod's attachments, gone with it
            self.delete_ip(rec)
        return len(owned)

    def expire(self, pool: str | None, now: float) -> int:
        """Free orphaned leases whose quarantine is over."""
        n = 0
        with self.store.transaction():
            for lease in self.store.orphaned_leases(pool):
                if lease.orphaned_at is not None and now >= lease.orphaned_at + lease.ttl:
                    self.drop_lease(lease)
                    n += 1
        return n

    # -- the gRPC API's own leases ---------------------------------------------------------------
    def allocate_for(self, owner: str, pool: AddressPool, address: str = "") -> tuple[IPRecord, LeaseRecord]:
        """Lease an address of ``pool`` to an API client ``owner`` (``address``: exactly that one);
        the same owner asking again keeps what it has. An owner holds one address: asking for exactly another one,
        or for one of another pool, is refused, never answered with the one it holds nor by letting that one go."""
        if not owner:
            raise InvalidConfig("owner is required", "owner")
        _check_address(address)
        refuse_unserved(pool, f"API client {owner}")
        if address and subnet_for(pool, to_int(address)) is None:  # refused before anything is claimed, naming it
            nets = ", ".join(str(s.network) for s in pool.subnets)
            raise InvalidConfig(f"{address} is outside pool {pool.meta.display} ({nets})", "address")
        if address:
            refuse_gateway(pool, to_int(address), f"API client {owner}", "address")
        key = f"api/{owner}"

        def fit(rec: IPRecord) -> IPRecord:
            """The owner's record as asked: refused when it holds another address (checked again under the lock)."""
            held = self.store.lease_of(key)
            if held is not None and held.pool != pool_key(pool):  # leasing would orphan it behind the owner's back
                raise AddressConflict(f"API client {owner} holds {held.address} of pool {held.pool}, and an owner "
                                      f"holds one address: Release {held.address} first to lease in pool "
                                      f"{pool.meta.display}", "pool")
            if not address:
                return rec
            if held is not None and held.ip != to_int(address):
                raise AddressConflict(f"API client {owner} holds {held.address}, and an owner holds one address: "
                                      f"Release {held.address} first to lease {address}, or ask without an address "
                                      "to keep it", "address")
            if held is None and rec.static_ip != address:  # holds nothing: what it asks for now
                return replace(rec, type="Static", static_ip=address)
            return rec

        stored = self.store.get_ip(key)
        rec = fit(stored) if stored is not None else IPRecord(
            key=key, kind=API_KIND, namespace="", name=owner, network_kind="", network_name="",
            type="Static" if address else "Auto", static_ip=address, created_by="api", created_at=self.clock(),
        )
        return self.lease_alone(rec, pool, fit)

    def release_address(self, pool: AddressPool, address: str, force: bool) -> bool:
        """Free ``address`` of ``pool`` deliberately (an operator's ``plexusctl ipam release``); refused
        while a pod uses it unless ``force``. A user's IPAddress goes back to Pending; False when the
        address was not leased."""
        if not address:
            raise InvalidConfig("the address to release is required", "address")
        _check_address(address)
        with self.store.transaction():  # read under the lock: an ADD may make a pod its user meanwhile
            lease = self.store.lease_at(pool.meta.key, to_int(address))
            if lease is None:
                return False
            rec = self.store.get_ip(lease.holder) if lease.holder else None
            if rec is not None and rec.used_by_uids and not force:
                raise AddressConflict(f"{lease.address} is in use by pod {', '.join(rec.used_by_pods)}", "force")
            elsewhere = self._written_user(rec)
            if elsewhere is not None and not force:
                raise AddressConflict(f"{lease.address} is the address of {lease.holder}, in use by pod {elsewhere.pod} "
                                      f"on node {elsewhere.node or '?'}", "force")
            self.drop_lease(lease)
            if rec is not None and rec.created_by != "user":
                self.store.delete_ip(rec.key)
            elif rec is not None:
                self.store.put_ip(replace(rec, phase="Pending", address="", network=""))
        return True

    def _written_user(self, rec: IPRecord | None) -> User | None:
        """The pod written on a user's IPAddress as its user (``ipamd.kube.users``): maybe on another node, whose
        address this node's lease object would free if let go (every node leases a Static)."""
        if rec is None or rec.kind not in IP_ADDRESS_KINDS:
            return None
        obj = self.source.get(IP_ADDRESS_KINDS[rec.kind], rec.namespace, rec.name)
        return parse_user_text(obj.used_by) if obj is not None else None


def made_again(rec: IPRecord, obj: IPAddressObject) -> bool:
    """Whether a user's IPAddress record is of an earlier object of ``obj``'s name that asked for another address
    (another type, static address, network, or ``obj`` names a family and the record's is another): one made again
    with the same spec (another uid alone, or naming the family it holds) keeps its address, with no needless move."""
    if rec.created_by != "user":
        return False
    if (rec.type, rec.static_ip, rec.network_kind, rec.network_name) != \
            (obj.type, obj.static_ip, obj.network_ref.kind, obj.network_ref.name):
        return True
    return obj.family != 0 and obj.family != held_family(rec)


def held_family(rec: IPRecord) -> int:
    """The family a record asks for, as the webhook resolves it: its ``spec.ipFamily``, else its static address's or
    the one it holds (0: none known, the pool's first, which ``obj`` naming a family may not be)."""
    if rec.family:
        return rec.family
    held = rec.static_ip or rec.address
    return ipaddress.ip_address(held).version if held else 0


#: The reasons of ``Allocated=False`` on a Static the pool refuses its address (an Auto one: ``NoFreeIPAddress``).
ALREADY_LEASED = "IPAddressAlreadyLeased"
OUTSIDE_POOL = "IPAddressOutsidePool"
IS_GATEWAY = "IPAddressIsGateway"


def static_refusal(exc: CniError, pool: AddressPool, ip: int) -> str:
    """Why the pool refuses a Static ``ip`` (``exc``: ``lease_for``'s refusal), as its condition's reason: another
    holds it, it is a route's gateway (never leased), or it lies outside every network of the pool's (its family)."""
    if isinstance(exc, AddressConflict):
        return ALREADY_LEASED
    return IS_GATEWAY if never_leased(pool, ip) is not None else OUTSIDE_POOL


def starts_over(lease: LeaseRecord, pool: AddressPool) -> bool:
    """Whether an IPAddress's ``lease`` is no longer its address in ``pool`` (as its network sees it, the family it
    asks for: ``family_view``), to be let go once no pod uses it and an address leased anew: it is another pool's
    (the Network moved), of a family the pool no longer has, or it has become a route's gateway (the pool, or the
    network's policy routes, edited to route via it: never leased, README)."""
    return lease.pool != pool_key(pool) or family_of(lease.ip) not in pool.families or \
        never_leased(pool, lease.ip) is not None


def network_of(pool: AddressPool, ip: int) -> str:
    """The network of ``pool`` that ``ip`` lies in, as its lease names it (the pod's address gets its prefix length).
    Never guessed: a lease of an address outside every network is not made (``_refuse_outside_elsewhere``)."""
    subnet = subnet_for(pool, ip)
    if subnet is None:
        raise AssertionError(f"{to_text(ip)} is outside every network of pool {pool.meta.display}")
    return str(subnet.network)


def _refuse_if_another_pods(rec: IPRecord | None, pod: Pod, field: str) -> None:
    """An IPAddress this node's store has in use by another pod is refused (other nodes' pods: ``registry.use``)."""
    if rec is not None and rec.used_by_uids and pod.meta.uid not in rec.used_by_uids:
        raise AddressConflict(f"IPAddress {rec.name} is in use by pod {', '.join(rec.used_by_pods)}", field)


def refuse_gateway(pool: AddressPool, ip: int, who: str, field: str) -> None:
    """A route's gateway (the pool's, or its network's policy route's) is never leased, even to who asks for exactly
    it: the pod's route would go via itself (the kernel refuses an IPv6 one), and the router's address would be
    taken twice on the segment."""
    why = never_leased(pool, ip)
    if why is not None:
        raise InvalidConfig(f"{who}: {why}, so it is never leased", field)


def refuse_unserved(pool: AddressPool, who: str) -> None:
    """Refuse, before anything is leased, ``who`` (a network, a NAD, an API client) an address of a pool with an
    entry stored before its network was refused (``unserved_entries``: IPv6 link-local, multicast): code 7 naming
    ``who``, the pool and the entry's field, in the words of ADD of Plexus's own networks
    (``attacher._refuse_unserved``). Releases need no pool's word: what was leased there is still let go."""
    for entry in unserved_entries(pool):
        raise InvalidConfig(f"{who} uses {entry.msg}", entry.field)


def _check_address(address: str) -> None:
    """An address an API client names: refused naming the field unless it is one (IPv4-compatible IPv6 included)."""
    if not address:
        return
    try:
        parse_address(address)
    except ValueError as exc:
        raise InvalidConfig(f"{address!r} is not an address of a pool: {exc}", "address") from None


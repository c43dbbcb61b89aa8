"""Addresses for interfaces other plugins build: what ``plexus-ipam`` leases, however it is reached.

One allocator (``Ipam``) and one lease registry stand behind the Deckhouse networks and every delegate, so
an address is unique across the cluster whichever asked for it. A delegate's lease is held by a record like
an IPAddress's, of one of two kinds:

- ``CNI/<network>/<container ID>/<ifname>``: one attachment's address (the CNI identity of an IPAM call).
  DEL and GC release it, as does the reconciler once the pod it was leased for is gone; released leases are
  quarantined for the pool's ``leaseTTL``.
- ``IPAMClaim/<namespace>/<name>``: an IPAMClaim's sticky address (NPWG v1.3 §8). Pods come and go; the
  address stays with the claim, and is quarantined only when the claim is deleted.

Everything a request may get wrong is checked before anything is leased, and each lease is one store
transaction (the registry's claim included), so a refused request leaves nothing behind.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from cni.errors import AddressConflict, InvalidConfig, ObjectNotFound, PoolExhausted, UnknownContainer
from cni.types import IPConfig, Result, Route, cidr_of
from ipamd.ipam.addresses import Claim, Ipam, Secured, family_view, refuse_gateway, refuse_unserved
from ipamd.ipam.allocator import in_ranges, subnet_for, to_int
from ipamd.model.cniconf import ConfigInvalid
from ipamd.model.ipamconf import (
    IPAM_TYPE,
    InlineRange,
    IpamConfig,
    implicit_pool,
    overlap,
    parse_ipam_config,
    space_key,
)
from ipamd.model.objects import (
    IP_ADDRESS_POOL,
    IPAM_CLAIM,
    NETWORK_ATTACHMENT_DEFINITION,
    POD,
    POOL_KINDS,
    AddressPool,
    AttachmentDefinition,
    IPAddr,
    Pod,
    parse_address,
)
from ipamd.sources.base import ObjectSource
from ipamd.store.protocols import LeaseStore
from ipamd.store.records import ImplicitPoolRecord, IPRecord, LeaseRecord

CNI_HOLDER = "CNI"
CLAIM_HOLDER = IPAM_CLAIM.name


def attachment_id(container_id: str, ifname: str) -> str:
    """A delegate's attachment as a user of a lease (an IPAMClaim's may have several over time)."""
    return f"{container_id}/{ifname}"


def cni_key(network: str, container_id: str, ifname: str) -> str:
    """The holder of one attachment's address: the CNI identity of the call (network, container, interface)."""
    return f"{CNI_HOLDER}/{network}/{container_id}/{ifname}"


@dataclass(frozen=True, slots=True)
class AddressRequest:
    """One interface's address, as a delegate's configuration and the pod ask for it."""

    network: str  # the CNI network configuration's name (a NAD's)
    container_id: str
    ifname: str
    config: IpamConfig
    pod: Pod | None = None  # None: the runtime named no pod (cnitool), or one the source does not know
    namespace: str = ""  # the pod's, for IPAddressPools and claims
    nad: str = ""  # namespace/name of the NAD Plexus delegates ("" when exec'd by another meta-plugin)
    ips: tuple[str, ...] = ()  # the ``ips`` capability: exactly these addresses
    claim: str = ""  # the name of an IPAMClaim of the pod's namespace
    ips_field: str = "runtimeConfig.ips"  # where they were asked for, for errors
    claim_field: str = "ipam-claim-reference"
    config_field: str = "ipam"  # the ipam section's path in the configuration, for errors ("plugins[0].ipam")

    @property
    def user(self) -> tuple[str, str]:
        """Who uses the address: the attachment (``container ID/ifname``: a pod's two sandboxes are two users,
        so the DEL of one never lets go of the other's) and its pod (``namespace/name``, "" when none)."""
        pod = f"{self.pod.meta.namespace}/{self.pod.meta.name}" if self.pod is not None else ""
        return attachment_id(self.container_id, self.ifname), pod


@dataclass(frozen=True, slots=True)
class Leased:
    """An interface's address and what goes with it."""

    claim: Claim
    gateway: str
    routes: tuple[Route, ...]

    @property
    def cidr(self) -> str:
        return cidr_of(self.claim.address, self.claim.network)

    def result(self) -> Result:
        """An IPAM plugin's result: addresses and routes, no interfaces (the calling plugin has those)."""
        return Result(ips=(IPConfig(self.cidr, gateway=self.gateway),), routes=self.routes)

    def static_ipam(self) -> dict[str, Any]:
        """The reference ``static`` plugin's configuration that configures exactly this lease."""
        address: dict[str, str] = {"address": self.cidr}
        if self.gateway:
            address["gateway"] = self.gateway
        ipam: dict[str, Any] = {"type": "static", "addresses": [address]}
        if self.routes:
            ipam["routes"] = [r.to_dict() for r in self.routes]
        return ipam


def ipam_config_of(conf: dict[str, Any]) -> IpamConfig:
    """The plexus-ipam section of a plugin's configuration, or ``InvalidConfig`` naming its field."""
    try:
        return parse_ipam_config(conf.get("ipam"))
    except ConfigInvalid as exc:
        raise InvalidConfig(exc.problem, exc.field) from None


class DelegatedAddresses:
    def __init__(self, ipam: Ipam, source: ObjectSource, clock: Callable[[], float] = time.time) -> None:
        self.ipam = ipam
        self.store: LeaseStore = ipam.store
        self.source = source
        self.clock = clock

    # -- ADD ------------------------------------------------------------------------------------
    def lease(self, req: AddressRequest) -> Leased:
        """Lease the interface's address (the same one again for the same attachment or claim)."""
        pool = self._pool(req)
        refuse_unserved(pool, _requester(req))  # as ADD of Plexus's own networks of the pool is
        claim_obj = self._claim_object(req)
        if claim_obj is not None:
            self._check_owner(claim_obj, req)  # may read the API: never under the store's lock

        def attempt() -> tuple[IPRecord, LeaseRecord, bool, bool]:
            first, _ = self._holder(req, claim_obj)  # read only: the address is claimed beyond this node before the
            self._refuse_before_claiming(req, first, pool)  # transaction that records it
            with self.ipam.securing(first, pool) as secured, self.store.transaction():
                if req.config.range is not None:
                    self._note_range(req.network, req.config.range, f"{req.config_field}.range")
                rec, created = self._holder(req, claim_obj)
                if rec.type == "Static":
                    self._check_static(rec, pool, req)
                try:  # another holder since the read: what was secured is not its, and is let go
                    rec, lease, created_lease = self.ipam.lease_for(rec, pool,
                                                                    secured if rec.key == first.key else Secured())
                except AddressConflict as exc:  # another node holds it
                    raise AddressConflict(f"{rec.static_ip} is already leased on another node",
                                          req.claim_field if claim_obj else req.ips_field) from exc
                except PoolExhausted as exc:  # an implicit pool is named by its space: the range is what is full
                    if req.config.range is None:
                        raise
                    raise PoolExhausted(f"{_range_name(req.config.range)} has no free address", exc.details) from exc
                rec = with_user(rec, req)
                self.store.put_ip(rec)
            return rec, lease, created, created_lease

        rec, lease, created, created_lease = self.ipam.resecured(attempt)
        routes = tuple(Route(r["destination"], r.get("via", "")) for r in rec.routes)
        routes += tuple(Route(dst, gw) for dst, gw in req.config.routes)
        return Leased(Claim(rec.key, rec.name, lease.address, lease.network, rec.routes, created, created_lease),
                      req.config.gateway, routes)

    def validate(self, req: AddressRequest) -> None:
        """CHECK: refuse what ADD refuses of ``req``'s configuration once parsed, with ADD's code and field, leasing
        and writing nothing (the CNI spec has CHECK validate the configuration as ADD does): the pool it names, a
        range over a pool or over another configuration's range, an exact address the pool would never hand out, a
        gateway of the other family or inside the pool's ranges. Checked as a retried ADD of this attachment would
        check them, against the record holding its lease. Not what the pools' state refuses (no free address left,
        an address another holds, a claim in use elsewhere): a full pool does not make a lease that is fine wrong."""
        pool = self._pool(req)
        first = self._attachment_record(req.network, req.container_id, req.ifname) or self._holder(req, None)[0]
        self._refuse_request(req, first, pool, self._refuse_static)

    def _pool(self, req: AddressRequest) -> AddressPool:
        rng = req.config.range
        if rng is not None:
            return implicit_pool(rng)
        ref = req.config.pool
        assert ref is not None  # a config names a pool or a range (parse_ipam_config)
        kind = POOL_KINDS[ref.kind]
        ns = ""
        if kind.namespaced:
            if not req.namespace:
                raise InvalidConfig(f"an {kind.name} belongs to a namespace, and the runtime named no pod (CNI_ARGS "
                                    "K8S_POD_NAMESPACE)", f"{req.config_field}.ipAddressPoolRef.kind")
            if ref.namespace and ref.namespace != req.namespace:
                raise ObjectNotFound(f"{kind.name} {ref.namespace}/{ref.name} is in another namespace than the pod's "
                                     f"({req.namespace}): a pod may only use pools of its own",
                                     f"{req.config_field}.ipAddressPoolRef.namespace")
            ns = req.namespace
        pool = self.source.get(kind, ns, ref.name)
        if pool is None:
            others = [p.meta.namespace for p in self.source.list(IP_ADDRESS_POOL) if p.meta.name == ref.name] \
                if kind.namespaced else []
            hint = f"; one exists in namespace {others[0]}, but a pod may only use pools of its own" if others else ""
            raise ObjectNotFound(f"{kind.name} {ns + '/' if ns else ''}{ref.name} does not exist{hint}",
                                 f"{req.config_field}.ipAddressPoolRef.name")
        return pool

    def _claim_object(self, req: AddressRequest) -> Any:
        if not req.claim:
            return None
        claim = self.source.get(IPAM_CLAIM, req.namespace, req.claim)
        if claim is None:  # one stored that the daemon refuses is not missing: say why it is not served
            where = f"IPAMClaim {req.namespace}/{req.claim}"
            refused = next((p.message for p in self.source.problems() if f"{where}:" in p.message), "")
            raise ObjectNotFound(f"{where} {'is not served: ' + refused if refused else 'does not exist'}",
                                 req.claim_field)
        names = {req.network, req.nad, req.nad.partition("/")[2]} - {""}
        if claim.network and claim.network not in names:
            raise InvalidConfig(f"IPAMClaim {req.namespace}/{req.claim} is for network {claim.network}, not "
                                f"{req.nad or req.network}", req.claim_field)
        if req.ips:
            raise InvalidConfig("ips and ipam-claim-reference exclude each other (NPWG §8)", req.ips_field)
        return claim

    def holder_key(self, req: AddressRequest) -> str:
        """The key of the record that will hold ``req``'s lease (``lease``): known before it is leased."""
        return self._claim_object(req).meta.key if req.claim else cni_key(req.network, req.container_id, req.ifname)

    def _holder(self, req: AddressRequest, claim: Any) -> tuple[IPRecord, bool]:
        """The record that holds the lease (made if new), after checking that nobody else uses it."""
        if claim is not None:
            key = claim.meta.key
            rec = self.store.get_ip(key)
            if rec is not None:
                self._check_claim_free(rec, claim, req)
                return rec, False
            self._check_claim_free(None, claim, req)
            static = claim.ip_requests[0].split("/")[0] if claim.ip_requests else ""
            return IPRecord(key=key, kind=CLAIM_HOLDER, namespace=claim.meta.namespace, name=claim.meta.name,
                            network_kind=NETWORK_ATTACHMENT_DEFINITION.name if req.nad else CNI_HOLDER,
                            network_name=req.nad or req.network, type="Static" if static else "Auto",
                            static_ip=static, uid=claim.meta.uid, created_by="claim", created_at=self.clock(),
                            interface=claim.interface or req.ifname), True
        key = cni_key(req.network, req.container_id, req.ifname)
        rec = self.store.get_ip(key)
        if rec is not None:
            return rec, False  # a retried ADD keeps its address
        static = req.ips[0].split("/")[0] if req.ips else ""
        if static:
            try:
                parse_address(static)
            except ValueError as exc:
                raise InvalidConfig(f"{static!r} is not an address to lease: {exc}", req.ips_field) from None
        known = req.pod is not None and req.pod.meta.source != "runtime"
        return IPRecord(key=key, kind=CNI_HOLDER, namespace=req.namespace, name=f"{req.container_id[:12]}/{req.ifname}",
                        network_kind=NETWORK_ATTACHMENT_DEFINITION.name if req.nad else CNI_HOLDER,
                        network_name=req.nad or req.network, type="Static" if static else "Auto", static_ip=static,
                        owner_pod_uid=req.pod.meta.uid if known and req.pod else "", created_by="cni",
                        created_at=self.clock(), interface=req.ifname), True

    def _check_claim_free(self, rec: IPRecord | None, claim: Any, req: AddressRequest) -> None:
        """A claim serves one pod at a time: refused while another pod of this node that still exists uses it
        (a pod of the same name is the same StatefulSet member or VM again: its old sandbox may not be gone yet),
        and one interface of it: refused while another interface of the same sandbox uses it (one address twice
        on a segment). A pod's two sandboxes share it, and a retried ADD is the same user."""
        for user in rec.used_by_uids if rec else ():
            container_id, _, ifname = user.rpartition("/")
            if container_id == req.container_id and ifname != req.ifname:
                raise AddressConflict(f"IPAMClaim {claim.meta.namespace}/{claim.meta.name} is in use by interface "
                                      f"{ifname} of this pod: a claim's address is for one interface", req.claim_field)
        me = req.pod.meta.name if req.pod is not None else ""
        for other in rec.used_by_pods if rec else ():
            ns, _, name = other.partition("/")
            if name and name != me and self.source.get(POD, ns, name) is not None:
                raise AddressConflict(f"IPAMClaim {claim.meta.namespace}/{claim.meta.name} is in use by pod {other}",
                                      req.claim_field)

    def _check_owner(self, claim: Any, req: AddressRequest) -> None:
        """The pod the claim's status names may run on another node: only a pod that still exists holds it."""
        owner = claim.owner_pod
        if owner and req.pod is not None and owner != req.pod.meta.name \
                and self.source.wait_for_pod(claim.meta.namespace, owner) is not None:
            raise AddressConflict(f"IPAMClaim {claim.meta.namespace}/{claim.meta.name} is in use by pod "
                                  f"{claim.meta.namespace}/{owner}", req.claim_field)

    def _check_static(self, rec: IPRecord, pool: AddressPool, req: AddressRequest) -> None:
        ip = self._refuse_static(rec, pool, req)
        held = self.store.lease_at(pool.meta.key, ip)
        if held is not None and held.holder not in (None, rec.key):
            raise AddressConflict(f"{rec.static_ip} is already leased to {self.describe(held.holder)}",
                                  _static_field(rec, req))

    def _refuse_static(self, rec: IPRecord, pool: AddressPool, req: AddressRequest) -> int:
        """An exact address the pool would never hand out as asked (outside it or its range, a gateway, another
        prefix): the configuration's fault, whoever holds the address now (``_check_static``). The address."""
        field = _static_field(rec, req)
        asked = req.ips[0] if req.ips and rec.kind != CLAIM_HOLDER else rec.static_ip
        try:
            ip = to_int(rec.static_ip)
        except ValueError:
            raise InvalidConfig(f"{rec.static_ip!r} is not an IP address", field) from None
        subnet = subnet_for(pool, ip)
        if subnet is None:
            nets = ", ".join(str(s.network) for s in pool.subnets)
            raise InvalidConfig(f"{rec.static_ip} is outside pool {_pool_name(pool)} ({nets})", field)
        if req.config.range is not None and not in_ranges(pool, ip):  # the gateway, or an excluded address
            raise InvalidConfig(f"{rec.static_ip} is not one of the range's addresses ({req.config.range.text})", field)
        refuse_gateway(pool, ip, f"{req.network} ({req.ifname})", field)
        try:
            network = ipaddress.ip_interface(asked).network if "/" in asked else subnet.network
        except ValueError:
            raise InvalidConfig(f"{asked!r} is not an IP address or CIDR", field) from None
        if network != subnet.network:
            raise InvalidConfig(f"{asked} does not match the pool's network {subnet.network}", field)
        return ip

    def describe(self, holder: str) -> str:
        """Who holds a lease, in words: the pod and interface, the claim, or the IPAddress."""
        rec = self.store.get_ip(holder)
        if rec is None:
            return holder
        pods = ", ".join(rec.used_by_pods)
        if rec.kind == CNI_HOLDER:
            return f"{'pod ' + pods if pods else 'container ' + rec.name.split('/')[0]} ({rec.interface} on " \
                   f"{rec.network_name})"
        return f"{rec.kind} {rec.namespace}/{rec.name}" + (f" (pod {pods})" if pods else "")

    def _refuse_before_claiming(self, req: AddressRequest, first: IPRecord, pool: AddressPool) -> None:
        """Refuse what is wrong in the request before anything is claimed beyond this node (checked again in the
        transaction): the claim of an exact address adopts another node's quarantined lease object, and the let-go of
        a claim refused after it would end that quarantine at once."""
        self._refuse_request(req, first, pool, self._check_static)

    def _refuse_request(self, req: AddressRequest, first: IPRecord, pool: AddressPool,
                        static: Callable[[IPRecord, AddressPool, AddressRequest], object]) -> None:
        """ADD's checks of a request, in ADD's order: its range, its exact address (``static``: the configuration's
        fault alone for CHECK, who holds it too for ADD), the gateways."""
        if req.config.range is not None:
            self._refuse_range(req.network, req.config.range, f"{req.config_field}.range")
        if first.type == "Static":
            static(first, pool, req)
        if req.config.pool is not None:
            self._refuse_gateways(req, family_view(first, pool))

    def _refuse_gateways(self, req: AddressRequest, pool: AddressPool) -> None:
        """A NAD's ``gateway`` of another family than the pool's address (the calling plugin would fail on it, naming
        nothing of the NAD), or a gateway inside the pool's ranges, which the pool would hand to a pod (a range cuts
        its gateways out instead, ``ipamconf._inline``; a pool's own routes' gateways are out of its ranges)."""
        family = pool.families[0]
        gateways = [(req.config.gateway, f"{req.config_field}.gateway")] if req.config.gateway else []
        gateways += [(gw, f"{req.config_field}.routes[{i}].gw") for i, (_, gw) in enumerate(req.config.routes)
                     if gw and gw != req.config.gateway]  # one without ``gw`` has ``gateway``'s: named as such
        for gw, field in gateways:
            ip = ipaddress.ip_address(gw)
            if field.endswith(".gateway") and ip.version != family:
                raise InvalidConfig(f"{gw} is not an IPv{family} address, as those of pool {_pool_name(pool)} are",
                                    field)
            if in_ranges(pool, int(ip)):
                raise InvalidConfig(f"{gw} is an address pool {_pool_name(pool)} hands out, so a pod would get it: "
                                    "make it the gateway of one of the pool's routes (never handed out), or use a "
                                    "router outside its ranges", field)

    def _note_range(self, owner: str, rng: InlineRange, field: str) -> None:
        """Record the implicit pool of a range (one per configuration and range), refused as ``_refuse_range``."""
        self._refuse_range(owner, rng, field)
        key = range_key(owner, rng)
        if self.store.get_implicit_pool(key) is None:
            self._forget_ranges_of(owner)
            self.store.put_implicit_pool(ImplicitPoolRecord(key, owner, space_key(rng.space), str(rng.network),
                                                            rng.ranges, rng.ttl_s, rng.overlapping, self.clock()))

    def _forget_ranges_of(self, owner: str) -> None:
        """A configuration given another range: its earlier ranges that no NAD declares any longer and that hold no
        lease (nor quarantine) are no longer its own, so they no longer refuse another configuration's range
        (``enable_overlapping_ranges``), nor show in ``plexusctl ipam pools``. Two NADs (of two namespaces, say) may
        name their configurations alike, each with its own range: neither forgets the other's."""
        declared = declared_ranges(self.source.list(NETWORK_ATTACHMENT_DEFINITION), owner)
        for old in self.store.implicit_pools():
            if old.owner != owner or old.key in declared:
                continue
            held = self.store.leases_in_pool(old.pool)
            if not any(a <= ip <= b for ip in held for a, b in old.ranges):
                self.store.delete_implicit_pool(old.key)

    def _refuse_range(self, owner: str, rng: InlineRange, field: str) -> None:
        """A range that would overlap another configuration's range when it asks not to share addresses with it, or
        a pool's addresses (another lease space over the same addresses would hand them out twice)."""
        if not rng.overlapping:
            others = [(r.owner, InlineRange(ipaddress.ip_network(r.network), r.ranges, r.pool.partition("/")[2],
                                            r.overlapping)) for r in self.store.implicit_pools()]
            clash = overlap(rng, owner, others)
            if clash:
                raise InvalidConfig(f"range {rng.network} ({rng.text}) overlaps {clash}, and enable_overlapping_ranges "
                                    "is false: Plexus never hands out an address twice; let it be true, or give this "
                                    "network its own network_name", field)
        for kind in POOL_KINDS.values():  # on every ADD: a pool made over a range in use stops it from then on
            for pool in self.source.list(kind):
                hit = next((sub.network for sub in pool.subnets if sub.network.overlaps(rng.network)), None)
                if hit is not None:
                    raise InvalidConfig(f"range {rng.network} overlaps {pool.meta.display} ({hit}): name that pool "
                                        "with ipAddressPoolRef instead, so both share its leases", field)

    # -- DEL, GC, CHECK -------------------------------------------------------------------------
    def release(self, network: str, container_id: str, ifname: str,
                owe: Callable[[list[IPRecord]], None] = lambda claims: None) -> list[IPRecord]:
        """DEL: the attachment's own lease is quarantined; a claim it used loses this attachment only (DEL is
        idempotent: nothing held, nothing done). The claims let go of, as they are now (``owe``: told them inside the
        transaction, to owe what is written of them after)."""
        user = attachment_id(container_id, ifname)
        with self.store.transaction():
            rec = self.store.get_ip(cni_key(network, container_id, ifname))
            if rec is not None:
                self.ipam.delete_ip(rec)
            claims = self.claims_of(user)
            for claim in claims:
                self.ipam.release_pod([claim.key], user)
            left = self.ipam.records([c.key for c in claims])
            owe(left)
        return left

    def claims_of(self, user: str) -> list[IPRecord]:
        """The IPAMClaims an attachment (``attachment_id``) uses."""
        return [c for c in self.store.ips_with_prefix(f"{CLAIM_HOLDER}/") if user in c.used_by_uids]

    def record(self, key: str) -> IPRecord | None:
        return self.store.get_ip(key)

    def gc(self, network: str, valid: set[tuple[str, str]],
           owe: Callable[[list[tuple[IPRecord, str]]], None] = lambda claims: None,
           busy: Callable[[], set[tuple[str, str]]] = set) -> list[tuple[IPRecord, str]]:
        """GC: release this network's attachment leases that are not among ``valid`` (container ID, ifname), and take
        those attachments off the IPAMClaims they use on this network (``IPRecord.user_networks``), as their DEL
        would have. The claims let go of, as they are now, each with the name of the pod that let go (``owe``: told
        them inside the transaction, as ``release``). Nor those a call holds right now (``busy``, asked inside the
        transaction: an ADD that recorded its lease before it and has not answered yet, which no runtime's list of
        valid attachments can name yet)."""
        released: dict[str, str] = {}  # claim key -> the pod that let go
        with self.store.transaction():
            valid = valid | busy()
            for rec in self.store.ips_with_prefix(f"{CNI_HOLDER}/{network}/"):
                container_id, _, ifname = rec.key[len(f"{CNI_HOLDER}/{network}/"):].rpartition("/")
                if (container_id, ifname) not in valid:
                    self.ipam.delete_ip(rec)
            for claim in self.store.ips_with_prefix(f"{CLAIM_HOLDER}/"):
                networks = dict(claim.user_networks)
                for user, pod_ref in zip(claim.used_by_uids, claim.used_by_pods, strict=False):
                    if networks.get(user) != network:
                        continue  # added on another network, whose attachments are not in this list (or on one an
                        # earlier version did not record: left to its DEL, or to the reconciler once its pod is gone)
                    container_id, sep, ifname = user.rpartition("/")
                    if sep and (container_id, ifname) not in valid:
                        self.ipam.release_pod([claim.key], user)
                        released[claim.key] = pod_ref.partition("/")[2]
            left = [(rec, released[rec.key]) for rec in self.ipam.records(list(released))]
            owe(left)
        return left

    def _attachment_record(self, network: str, container_id: str, ifname: str) -> IPRecord | None:
        """The record holding an attachment's lease: its own, else the IPAMClaim it uses."""
        return self.store.get_ip(cni_key(network, container_id, ifname)) or next(
            iter(self.claims_of(attachment_id(container_id, ifname))), None)

    def check(self, network: str, container_id: str, ifname: str, prev: Result | None) -> None:
        """CHECK: the attachment still holds its address, and the result the runtime has says so."""
        rec = self._attachment_record(network, container_id, ifname)
        if rec is None or self.store.lease_of(rec.key) is None:
            raise UnknownContainer(f"no plexus-ipam lease for container {container_id[:12]} {ifname} on {network}",
                                   "CNI_CONTAINERID")
        if prev is not None and not any(_same_address(ip.address, rec.address) for ip in prev.ips):
            raise InvalidConfig(f"prevResult does not carry the leased address {rec.address}", "prevResult.ips")


def with_user(rec: IPRecord, req: AddressRequest) -> IPRecord:
    """``rec`` with ``req``'s attachment and pod among its users, and the CNI network it is added on: a claim's
    record names its NAD, whose configuration may have a name of its own, and GC is told that name."""
    uid, pod_ref = req.user
    users = dict(zip(rec.used_by_uids, rec.used_by_pods, strict=False)) | {uid: pod_ref}
    networks = dict(rec.user_networks) | {uid: req.network}
    return replace(rec, used_by_uids=tuple(users), used_by_pods=tuple(users.values()),
                   user_networks=tuple((u, networks[u]) for u in users if u in networks))


def range_key(owner: str, rng: InlineRange) -> str:
    """The key of an inline range's implicit pool: one per configuration name and range."""
    return f"{owner}|{rng.network}|{rng.text}"


def declared_ranges(nads: Iterable[AttachmentDefinition], name: str) -> set[str]:
    """The ranges (``range_key``) that the NADs whose configuration is named ``name`` give plexus-ipam: a plugin's
    ``ipam`` section that does not parse declares none (its ADD is refused), nor does a configuration on the node's
    disk (not read here)."""
    keys: set[str] = set()
    for nad in nads:
        if nad.config is None or nad.config.get("name") != name:
            continue
        for plugin in nad.config.get("plugins", ()):
            section = plugin.get("ipam") if isinstance(plugin, dict) else None
            if not isinstance(section, dict) or section.get("type") != IPAM_TYPE:
                continue
            try:
                rng = parse_ipam_config(section).range
            except ConfigInvalid:
                continue
            if rng is not None:
                keys.add(range_key(name, rng))
    return keys


def _same_address(cidr: str, address: str) -> bool:
    """Whether a result's ``address`` (CIDR, checked by ``IPConfig.from_dict``) is the leased one however it is
    spelled: IPv6 exploded or compressed, an IPv4-mapped one as Go prints it (dotted) or as Python does (hex)."""
    return _unmapped(ipaddress.ip_interface(cidr).ip) == _unmapped(ipaddress.ip_address(address))


def _unmapped(ip: IPAddr) -> IPAddr:
    """An IPv4-mapped IPv6 address as the IPv4 address it maps (Go's net.IPNet prints it so), others as they are."""
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return mapped or ip


def _static_field(rec: IPRecord, req: AddressRequest) -> str:
    """Where an exact address was asked for: the claim's reference, or the ``ips`` capability."""
    return req.claim_field if rec.kind == CLAIM_HOLDER else req.ips_field


def _requester(req: AddressRequest) -> str:
    """Who asks for a pool's address, in a refusal's words: the NAD, else the CNI network (cnitool, a file on disk)."""
    return f"{NETWORK_ATTACHMENT_DEFINITION.name} {req.nad}" if req.nad else f"network {req.network}"


def _pool_name(pool: AddressPool) -> str:
    return pool.meta.display


def _range_name(rng: InlineRange) -> str:
    """An inline range in an error's words: its network, the addresses it hands out, and its space when named."""
    space = f" of network_name {rng.space}" if rng.space else ""
    return f"range {rng.network} ({rng.text}){space}"

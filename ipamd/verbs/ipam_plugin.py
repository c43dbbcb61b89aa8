"""The CNI verbs of ``plexus-ipam``, the IPAM plugin other plugins exec (bridge, macvlan, host-device, ...),
under any runtime or meta-plugin (Multus, cnitool, Plexus itself when so configured).

An IPAM call carries the calling plugin's whole configuration; its ``ipam`` section says where addresses
come from (``ipamd.model.ipamconf``). ADD answers with addresses and routes only; DEL releases the
attachment's lease (quarantined); GC releases the network's leases that are no longer valid and takes those
attachments off its IPAMClaims, as DEL does; CHECK refuses what ADD would refuse of the configuration, then says
whether the lease is still held; STATUS whether the daemon can serve ADD. The pod, when CNI_ARGS names one the
object source knows, is who uses the address, and only its NPWG selection may name an IPAMClaim: as the source shows
it, or as Plexus resolved it when Plexus itself is running the delegate that calls (``ipam_hints``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from cni.errors import InvalidConfig, ObjectNotFound, PluginNotAvailable, TryAgainLater, UnknownContainer
from cni.types import Result
from ipamd.ipam.delegated import AddressRequest, DelegatedAddresses, ipam_config_of
from ipamd.model.npwg import NETWORKS_ANNOTATION, NetworkElement, parse_networks
from ipamd.model.objects import IPAM_CLAIM, NETWORK_ATTACHMENT_DEFINITION, POD, Meta, Pod
from ipamd.publish.base import LocalPublisher, Publisher
from ipamd.sources.base import ObjectSource, at_uid, require_listed
from ipamd.store.records import IPRecord
from ipamd.verbs.call import CniCall, KeyedLocks, dispatch, valid_attachments
from ipamd.verbs.ipam_hints import PlexusHints, Told
from ipamd.verbs.networks import PLEXUS_IPAM_ARGS
from ipamd.verbs.pods import find_pod

UID_ARG = "K8S_POD_UID"  # the field ``find_pod`` names when the pod of that name is another pod


def requested_ips(config: dict[str, Any]) -> tuple[str, ...]:
    """The ``ips`` capability's addresses (``runtimeConfig.ips``), checked for shape; Plexus pools are IPv4,
    one address per interface."""
    runtime = config.get("runtimeConfig") or {}
    if not isinstance(runtime, dict):
        raise InvalidConfig("must be an object", "runtimeConfig")
    ips = runtime.get("ips")
    if ips is None:
        return ()
    if not isinstance(ips, list) or not all(isinstance(i, str) for i in ips):
        raise InvalidConfig("must be a list of addresses", "runtimeConfig.ips")
    if len(ips) > 1:
        raise InvalidConfig(f"asks for {len(ips)} addresses; an interface gets one IPv4 address", "runtimeConfig.ips")
    return tuple(ips)


#: The name Multus gives an interface the pod did not name: ``net<idx>``, idx its delegate's index among all of them.
_MULTUS_IFNAME = re.compile(r"net([1-9][0-9]*)")


def _could_name(el: NetworkElement, i: int, ifname: str) -> bool:
    """Whether Multus could have named element ``i``'s interface ``ifname``: its own ``interface``, else
    ``net<k+1+i>``; Multus counts the cluster network (0) and its ``defaultNetworks`` (k of them, which an IPAM
    call cannot see) before the annotation's elements, named or not."""
    if el.interface:
        return el.interface == ifname
    number = _MULTUS_IFNAME.fullmatch(ifname)
    return number is not None and int(number.group(1)) >= i + 1


def selection_for(pod: Pod, ifname: str, network: str, network_of: Callable[[NetworkElement], str],
                  claim_interface: Callable[[str], str | None]) -> tuple[NetworkElement | None, str]:
    """The element of the pod's NPWG selection that made interface ``ifname`` of CNI network ``network`` (under
    Multus), and its index's field path: one Multus could have named so (``_could_name``) whose NAD's network
    (``network_of``) is the call's. None when no element fits: a network the pod did not select (a Multus default
    network) has no claim. Several that fit naming different claims (the same NAD twice, unnamed) are told apart
    by their IPAMClaims' ``spec.interface`` (``claim_interface``, by claim name; ``_told_apart``), and refused when
    that does not tell."""
    try:
        elements = parse_networks(pod.annotations.get(NETWORKS_ANNOTATION), pod.meta.namespace)
    except Exception:  # an annotation the meta-plugin accepted is its business; no claim can come from it
        return None, ""
    fits = [el for i, el in enumerate(elements) if _could_name(el, i, ifname) and network_of(el) == network]
    if len({el.ipam_claim for el in fits}) > 1:
        told = _told_apart(fits, ifname, claim_interface)
        if len({el.ipam_claim for el in told}) != 1:
            unnamed = next((el for el in fits if not el.interface), fits[0])
            raise InvalidConfig(f"interface {ifname} of network {network} may be any of "
                                f"{', '.join(el.where for el in fits)} (Multus numbers an unnamed network by its "
                                "place among all its delegates, its defaultNetworks included), and they name "
                                "different IPAMClaims whose spec.interface does not tell which: give each its "
                                "interface", f"{unnamed.where}.interface")
        fits = told
    return (fits[0], fits[0].where) if fits else (None, "")


def _told_apart(fits: list[NetworkElement], ifname: str,
                claim_interface: Callable[[str], str | None]) -> list[NetworkElement]:
    """Of the elements that may be ``ifname``, those its IPAMClaims say it is: the ones whose claim's
    ``spec.interface`` is ``ifname``, else the ones naming no claim (a claim for another interface is not this
    one's). All of them when a claim names no interface (it may be this one's). A claim not known is code 103, as
    for an element alone (the cache not showing it yet must not read as a refusal of the selection)."""
    said: dict[str, str] = {}
    for el in fits:
        if el.ipam_claim:
            told = claim_interface(el.ipam_claim)
            if told is None:
                raise ObjectNotFound(f"IPAMClaim {el.namespace}/{el.ipam_claim} does not exist",
                                     f"{el.where}.ipam-claim-reference")
            said[el.ipam_claim] = told
    if "" in said.values():
        return fits
    return [el for el in fits if el.ipam_claim and said[el.ipam_claim] == ifname] or \
        [el for el in fits if not el.ipam_claim]


TOLD_FIELD = f"args.{PLEXUS_IPAM_ARGS}"


def told_by_plexus(told: Any, pod: Pod | None, ifname: str, network: str,
                   network_of: Callable[[NetworkElement], str]) -> tuple[str, str, str]:
    """The NAD, IPAMClaim and claim field that Plexus, delegating with ``delegateIPAM: exec``, tells plexus-ipam in
    ``args`` (it names interfaces its own way, so ``selection_for`` cannot find the element), once the pod's own
    selection says the same: a hint Plexus does not vouch for (``ipam_hints``) is anyone's. Under Multus ``args``
    is the NAD author's to write: trusted, it would hand any pod selecting the NAD another pod's claim and its
    sticky address. Only an element of the pod's ``k8s.v1.cni.cncf.io/networks`` names a claim
    (``ipam-claim-reference``)."""
    if not isinstance(told, dict):
        raise InvalidConfig("must be an object: the NAD, IPAMClaim and selection element Plexus resolved", TOLD_FIELD)
    nad, claim, where = (str(told.get(key) or "") for key in ("nad", "claim", "where"))
    if not where.startswith(f"{NETWORKS_ANNOTATION}["):
        if claim:
            raise InvalidConfig(f"names IPAMClaim {claim} for {where or 'no selection element'}: only an element of "
                                f"the pod's {NETWORKS_ANNOTATION} names a claim", f"{TOLD_FIELD}.claim")
        return nad, "", ""
    try:
        elements = parse_networks(pod.annotations.get(NETWORKS_ANNOTATION), pod.meta.namespace) if pod else []
    except Exception:  # the meta-plugin's business, as in selection_for: no claim can come from it
        elements = []
    element = next((el for el in elements if el.where == where), None)
    if element is None:
        if pod is None and claim:  # cnitool, or a pod the source does not know: no selection to name a claim
            raise InvalidConfig(f"names IPAMClaim {claim} for {where} of a pod plexus-ipamd does not know: only the "
                                "pod's own selection names a claim", f"{TOLD_FIELD}.claim")
        if pod is not None:
            raise InvalidConfig(f"{where} is no element of {pod.meta.display}'s selection", f"{TOLD_FIELD}.where")
        return nad, "", ""
    if nad != element.key:
        raise InvalidConfig(f"{nad!r} is not the NAD of {where} ({element.key})", f"{TOLD_FIELD}.nad")
    if claim != element.ipam_claim:
        raise InvalidConfig(f"IPAMClaim {claim or '(none)'} is not the one {where} names "
                            f"({element.ipam_claim or 'none'}): only the pod's own selection names a claim",
                            f"{TOLD_FIELD}.claim")
    if (element.interface and element.interface != ifname) or network_of(element) != network:
        raise InvalidConfig(f"{where} (NAD {element.key}, interface {element.interface or 'unnamed'}) is not interface "
                            f"{ifname} of network {network}", f"{TOLD_FIELD}.where")
    return nad, claim, f"{where}.ipam-claim-reference" if claim else ""


class IpamPlugin:
    def __init__(self, addresses: DelegatedAddresses, source: ObjectSource, ready: Callable[[], bool],
                 publisher: Publisher | None = None, hints: PlexusHints | None = None,
                 recovering: Callable[[str], bool] = lambda container_id: False) -> None:
        self.addresses = addresses
        self.source = source
        self.ready = ready
        # before ready: whether the daemon's recovery is undoing this container's attachment (its delegates' DELs)
        self.recovering = recovering
        self.publisher = publisher or LocalPublisher()  # an IPAMClaim's status
        # what Plexus, running the delegate that calls, told it: the registry Plexus's delegation fills
        self.hints = hints if hints is not None else PlexusHints()
        self.locks = KeyedLocks()

    def handle(self, call: CniCall) -> dict[str, Any]:
        handlers = {"ADD": self.add, "DEL": self.delete, "CHECK": self.check, "GC": self.gc, "STATUS": self.status}
        if not self.ready() and call.verb != "STATUS" and not (call.verb == "DEL" and self.recovering(call.container_id)):
            # served before the daemon is ready for the DELs its own recovery makes (the delegates of a killed ADD,
            # undone), which need nothing but the store; any other call waits for what the recovery leaves (another
            # caller's DEL would race the recovery's republish of the statuses it read before)
            raise TryAgainLater("plexus-ipamd is not ready (starting, or stopping)", "ready")
        if call.verb not in ("ADD", "DEL", "CHECK"):
            return dispatch(call, handlers)
        # one call per attachment at a time: a runtime that gave up on a slow ADD sends DEL, which must release
        # what that ADD leases, not answer before it has (and leave its lease to nobody)
        with self.locks.hold(call.key):
            return dispatch(call, handlers)

    def _pod(self, call: CniCall) -> Pod | None:
        """The pod CNI_ARGS names, if the source knows it (cnitool names none; that is fine for an IPAM call).
        A pod of that name the source shows at another UID, even after waiting for it and reading it directly
        (``find_pod``), is one made again whose NPWG selection (an IPAMClaim) is not known: 11 rather than a lease
        as if it had none."""
        if not (call.args.get("K8S_POD_NAMESPACE") and call.args.get("K8S_POD_NAME")):
            return None
        try:
            return find_pod(self.source, call)
        except UnknownContainer as exc:
            if exc.details != UID_ARG:
                return None  # no pod of that name (a runtime without Kubernetes): nothing claims the address
            raise TryAgainLater(f"{exc.msg}, even as read from the API server: the pod of this call is not (or no "
                                "longer) the one of that name, whose network selection may name an IPAMClaim", UID_ARG) \
                from None

    def _vouched(self, call: CniCall) -> Told | None:
        """The hint in ``args`` when Plexus is running this very delegate with it: Plexus's word, taken as is."""
        args = call.config.get("args")
        told = Told.of(args.get(PLEXUS_IPAM_ARGS)) if isinstance(args, dict) else None
        return told if told is not None and self.hints.vouches(call.container_id, call.ifname, told) else None

    def _pod_of_plexus(self, call: CniCall) -> Pod | None:
        """The pod of a call Plexus vouches for: the source's at the call's UID, else the one Plexus had from the
        runtime's annotations (``find_pod``: nothing to wait for), known by its name and UID."""
        ns, name, uid = (call.args.get(k, "") for k in ("K8S_POD_NAMESPACE", "K8S_POD_NAME", UID_ARG))
        if not (ns and name):
            return None
        pod = self.source.get(POD, ns, name)
        return pod if pod is not None and at_uid(pod, uid) else Pod(Meta(POD.name, name, ns, uid, "runtime"), {})

    def _network_of(self, el: NetworkElement, network: str) -> str:
        """The CNI network name of an element's NAD, from the source's cache: its config's ``name``, which is the
        NAD's name when the config has none or is on the node's disk (Multus finds that file by the NAD's name).
        A NAD the source does not (yet) show is taken at its name, a guess: one that is not the call's ``network``,
        for an element naming an IPAMClaim, would leave the claim unused (a fresh address) if the NAD's config
        names the call's network, so 11 until the source shows it."""
        nad = self.source.get(NETWORK_ATTACHMENT_DEFINITION, el.namespace, el.name)
        if nad is None and el.ipam_claim and el.name != network:
            raise TryAgainLater(f"NetworkAttachmentDefinition {el.namespace}/{el.name} of {el.where} (IPAMClaim "
                                f"{el.ipam_claim}) is not known to plexus-ipamd yet: whether it is network {network}, "
                                "hence whether the claim is for this call, cannot be told", f"{el.where}.name")
        return str(nad.config["name"]) if nad is not None and nad.config is not None else el.name

    def _claim_interface(self, namespace: str, name: str) -> str | None:
        """The interface an IPAMClaim says it is for (``spec.interface``; "" when it names none); None when the claim
        is not known."""
        claim = self.source.get(IPAM_CLAIM, namespace, name)
        return claim.interface if claim is not None else None

    def add(self, call: CniCall) -> dict[str, Any]:
        config = ipam_config_of(call.config)
        ips = requested_ips(call.config)
        require_listed(self.source)
        vouched = self._vouched(call)
        pod = self._pod_of_plexus(call) if vouched is not None else self._pod(call)
        claim, claim_field, nad = "", "", ""
        args = call.config.get("args")
        if vouched is not None:  # Plexus is running this delegate: the NAD and claim it resolved, as it resolved them
            nad, claim, claim_field = vouched.nad, vouched.claim, vouched.claim_field
        elif isinstance(args, dict) and PLEXUS_IPAM_ARGS in args:  # a hint nobody vouches for: checked
            nad, claim, claim_field = told_by_plexus(args[PLEXUS_IPAM_ARGS], pod, call.ifname, call.network_name,
                                                     lambda el: self._network_of(el, call.network_name))
        elif pod is not None:  # another meta-plugin (Multus): the pod's selection, by Multus's interface names
            element, where = selection_for(pod, call.ifname, call.network_name,
                                           lambda el: self._network_of(el, call.network_name),
                                           lambda name: self._claim_interface(pod.meta.namespace, name))
            if element is not None:
                nad = f"{element.namespace}/{element.name}"
                if element.ipam_claim:
                    claim, claim_field = element.ipam_claim, f"{where}.ipam-claim-reference"
        request = AddressRequest(call.network_name, call.container_id, call.ifname, config, pod,
                                 call.args.get("K8S_POD_NAMESPACE", ""), nad, ips, claim,
                                 claim_field=claim_field or "ipam-claim-reference")
        leased = self.addresses.lease(request)
        if claim:
            rec = self.addresses.record(leased.claim.ip_key)
            if rec is not None:
                self.publisher.ip_status(rec)
        return leased.result().to_dict(call.version)

    def delete(self, call: CniCall) -> dict[str, Any]:
        pod_name = call.args.get("K8S_POD_NAME", "")

        def owe(claims: list[IPRecord]) -> None:  # in the release's commit: a daemon killed after it still clears
            for claim in claims:
                if not claim.used_by_pods:
                    self.publisher.owe_claim_released(claim, pod_name)

        for claim in self.addresses.release(call.network_name, call.container_id, call.ifname, owe):
            self._published(claim, pod_name)
        return {}

    def check(self, call: CniCall) -> dict[str, Any]:
        """CHECK refuses a configuration ADD would, with ADD's code and field (the CNI spec: a plugin validates its
        configuration on CHECK), before it checks the lease against the runtime's result: its shape, then what it
        names (``DelegatedAddresses.validate``; 11 before the source has read the pools, not "no such pool")."""
        config = ipam_config_of(call.config)
        ips = requested_ips(call.config)
        require_listed(self.source)
        self.addresses.validate(AddressRequest(call.network_name, call.container_id, call.ifname, config,
                                               namespace=call.args.get("K8S_POD_NAMESPACE", ""), ips=ips))
        prev = Result.from_dict(call.config["prevResult"]) if call.config.get("prevResult") else None
        self.addresses.check(call.network_name, call.container_id, call.ifname, prev)
        return {}

    def gc(self, call: CniCall) -> dict[str, Any]:
        """GC lets go of what each stale attachment's DEL would have, and publishes the claims as DEL does."""

        def owe(claims: list[tuple[IPRecord, str]]) -> None:  # in the release's commit, as DEL's
            for claim, pod_name in claims:
                if not claim.used_by_pods:
                    self.publisher.owe_claim_released(claim, pod_name)

        for claim, pod_name in self.addresses.gc(call.network_name, valid_attachments(call), owe, self.locks.busy):
            self._published(claim, pod_name)
        return {}

    def _published(self, claim: IPRecord, pod_name: str) -> None:
        """A claim an attachment let go of: its status, or released (no ``ownerPod``) when no pod uses it now."""
        if claim.used_by_pods:
            self.publisher.ip_status(claim)
        else:
            self.publisher.claim_released(claim, pod_name)

    def status(self, call: CniCall) -> dict[str, Any]:
        if not self.ready():
            raise PluginNotAvailable("plexus-ipamd is not ready", "object source not synced")
        ipam_config_of(call.config)
        return {}

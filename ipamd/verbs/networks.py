"""Which interfaces a pod asks for, in the order ADD makes them, all checked before anything is leased or
built: the cluster network (Plexus as the node's only CNI configuration), the default networks, the
Deckhouse ``networks-spec``, then the NPWG ``k8s.v1.cni.cncf.io/networks``.

Both dialects end as one list of ``Wanted`` interfaces, each naming the driver that builds it; an
interface name claimed twice, by one dialect or across both, fails here (``interface_names``, which the
validating webhook runs too). A NetworkAttachmentDefinition is resolved as NPWG §3 says: its ``spec.config``,
else the node's ``.conflist`` of that name, else its ``.conf``, else an error naming it.

A delegate whose plugin takes its addresses from ``plexus-ipam`` is leased for by the daemon itself
(``Wanted.address``), before it runs, unless the configuration says ``delegateIPAM: exec``: the address is
then handed to it as the reference ``static`` plugin's configuration (``with_lease``), so no plugin
execs back into the daemon.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cni.errors import AnnotationInvalid, InvalidConfig, ObjectNotFound
from cni.types import Result
from ipamd.drivers.base import InterfaceRequest
from ipamd.invoke.chain import Invocation
from ipamd.ipam.addresses import Ipam, ResolvedNetwork
from ipamd.ipam.delegated import AddressRequest, Leased
from ipamd.model.annotations import NetworkSelection, check_ifname, parse_networks_spec
from ipamd.model.cniconf import CAPABILITIES, ConfigInvalid, capabilities
from ipamd.model.ipamconf import IPAM_TYPE, parse_ipam_config
from ipamd.model.npwg import (
    DEFAULT_NETWORK_ANNOTATION,
    NETWORKS_ANNOTATION,
    NetworkElement,
    interface_names,
    parse_default_network,
    parse_networks,
)
from ipamd.model.objects import (
    CLUSTER_NETWORK,
    NETWORK,
    NETWORK_ATTACHMENT_DEFINITION,
    POD_ANNOTATIONS_CAPABILITY,
    RESOURCE_NAME_ANNOTATION,
    SPEC_ANNOTATION,
    IPAddressObject,
    Pod,
)
from ipamd.model.pluginconf import PluginConfig
from ipamd.model.podopts import DEFAULT_NETWORK_LABEL, IFNAMSIZ, interface_name
from ipamd.sources.base import ObjectSource
from ipamd.sources.devices import NoDevices, PodDevices
from ipamd.sources.netconf import find_on_disk, load_file
from ipamd.verbs.call import CniCall

NAD = NETWORK_ATTACHMENT_DEFINITION.name
DELEGATION_ANNOTATION = "network.deckhouse.io/delegation"  # Plexus: "parallel" runs a pod's delegates at once
PLEXUS_IPAM_ARGS = "network.deckhouse.io/plexus-ipam"  # in a delegate's "args": the NAD and claim, for plexus-ipam


@dataclass(frozen=True, slots=True)
class Target:
    """The network an interface belongs to, as records and statuses name it."""

    key: str  # Network/ns/name, NetworkAttachmentDefinition/ns/name, Delegate/<configuration name>
    type: str  # Network | ClusterNetwork | NetworkAttachmentDefinition | Delegate
    name: str  # name (Deckhouse) or ns/name (NPWG)
    default: bool = False  # the cluster network: network-status says "default": true


@dataclass(frozen=True, slots=True)
class Wanted:
    """One interface ADD is to make, checked."""

    kind: str  # the driver that builds it
    request: InterfaceRequest
    target: Target
    sel: NetworkSelection | None = None  # a Deckhouse network: the selection IPAM leases for,
    net: ResolvedNetwork | None = None  # its pool and segment,
    user_ips: list[IPAddressObject] = field(default_factory=list)  # and the IPAddresses named for it
    address: AddressRequest | None = None  # a delegate's address the daemon leases (its IPAM is plexus-ipam)
    resource: str = ""  # the device-plugin resource its NAD takes a device of (k8s.v1.cni.cncf.io/resourceName)
    where: str = ""  # where the pod asked for it (for errors about its device)
    device_id: str = ""  # the device it got
    device_info: dict[str, Any] = field(default_factory=dict)  # and what the device's plugin says of it


@dataclass(frozen=True, slots=True)
class Delegated:
    """A configuration to delegate to, and where it came from."""

    conflist: dict[str, Any]
    target: Target
    resource: str = ""  # the NAD's k8s.v1.cni.cncf.io/resourceName: each pod attached takes one of its devices


def _ns_name(text: str, default_ns: str) -> tuple[str, str]:
    ns, sep, name = text.partition("/")
    return (ns, name) if sep else (default_ns, text)


class Networks:
    def __init__(self, source: ObjectSource, ipam: Ipam,
                 on_disk: Callable[[str, str], dict[str, Any] | None] = find_on_disk,
                 devices: PodDevices | None = None) -> None:
        self.source = source
        self.ipam = ipam
        self.on_disk = on_disk
        self.devices = devices or NoDevices()

    def wanted(self, call: CniCall, pod: Pod, prev: Result | None, conf: PluginConfig) -> list[Wanted]:
        ns = pod.meta.namespace
        out: list[Wanted] = []
        check_ifname(call.ifname, "CNI_IFNAME")
        if conf.cluster_network:
            if prev is not None:
                raise InvalidConfig("clusterNetwork is for Plexus as the node's only CNI configuration, not chained "
                                    "after another plugin's", "clusterNetwork")
            out.append(self._cluster(call, pod, conf))
        spec_text, npwg_text = pod.annotations.get(SPEC_ANNOTATION), pod.annotations.get(NETWORKS_ANNOTATION)
        deckhouse = parse_networks_spec(spec_text)
        npwg = parse_networks(npwg_text, ns)
        system = ns in conf.system_namespaces
        if spec_text is None and npwg_text is None and not system:
            deckhouse = default_networks(self.source, ns)
        defaults = [] if system else list(conf.default_networks)
        taken = {i.name for i in prev.interfaces if i.sandbox} if prev else set()
        resolved = [self.ipam.resolve(sel, ns, f"networks-spec[{i}]") for i, sel in enumerate(deckhouse)]
        deckhouse = _prefixed(deckhouse, resolved, {*taken, call.ifname, *(el.interface for el in npwg)})
        _one_interface_per_table(deckhouse, resolved)
        names = interface_names(call.ifname, taken, deckhouse, len(defaults), npwg)
        for i, text in enumerate(defaults):
            where = f"defaultNetworks[{i}]"
            d = self._nad(*_ns_name(text, conf.multus_namespace), where, conf, isolated=False)
            out.append(self._delegate(call, pod, conf, d, names[where], where=where))
        for i, (sel, net) in enumerate(zip(deckhouse, resolved, strict=True)):
            user_ips = self.ipam.validate(pod, sel, net, f"networks-spec[{i}]")
            request = InterfaceRequest(sel.if_name, sel.mac, sel.skip_ip_assignment, sel.tap_uid, sel.tap_gid,
                                       tap_multi_queue=sel.tap_multi_queue, guest_dhcp=sel.guest_dhcp)
            out.append(Wanted(sel.interface_type, request, Target(net.key, net.type, net.name), sel, net, user_ips,
                              where=f"networks-spec[{i}]"))
        for el in npwg:
            out.append(self._element(call, pod, conf, el, names[el.where]))
        return self._with_devices(pod, out)

    def _with_devices(self, pod: Pod, wanted: list[Wanted]) -> list[Wanted]:
        """Each network of a device pool with its device: the N-th network of a resource in the pod's selection
        takes the N-th device the kubelet assigned the pod (Multus's rule), handed to the delegate as ``deviceID``."""
        assigned: dict[str, list[str]] = {}
        taken: dict[str, int] = {}
        out = []
        for w in wanted:
            if not w.resource:
                out.append(w)
                continue
            if w.resource not in assigned:
                assigned[w.resource] = self.devices.devices(pod.meta.namespace, pod.meta.name, w.resource)
            ids, n = assigned[w.resource], taken.get(w.resource, 0)
            if n >= len(ids):
                raise InvalidConfig(
                    f"{w.target.type} {w.target.name} attaches through a device of {w.resource} (its "
                    f"{RESOURCE_NAME_ANNOTATION}), and the kubelet assigned pod {pod.meta.namespace}/{pod.meta.name} "
                    f"{len(ids)} of them for {n + 1} such networks: its containers must ask for them "
                    f"(resources.limits[{w.resource}])", f"{w.where}.name" if w.where else "resourceName")
            taken[w.resource] = n + 1
            out.append(with_device(w, ids[n], self.devices.info(w.resource, ids[n]) or {}))
        return out

    # -- delegates ----------------------------------------------------------------------------------
    def _nad(self, ns: str, name: str, where: str, conf: PluginConfig, pod_ns: str = "",
             isolated: bool = True) -> Delegated:
        if isolated and conf.namespace_isolation and ns != pod_ns and not conf.is_global(ns):
            raise ObjectNotFound(f"{NAD} {ns}/{name} is in another namespace than the pod's, and namespaceIsolation "
                                 f"allows only the pod's own and {', '.join(('default', *conf.global_namespaces))}",
                                 f"{where}.namespace")
        nad = self.source.get(NETWORK_ATTACHMENT_DEFINITION, ns, name)
        if nad is None:
            refused = next((p.message for p in self.source.problems() if f"{NAD} {ns}/{name}:" in p.message), "")
            raise ObjectNotFound(f"{NAD} {ns}/{name} {'is not served: ' + refused if refused else 'does not exist'}",
                                 f"{where}.name")
        config = nad.config or self.on_disk(conf.conf_dir, name)
        if config is None:
            raise ObjectNotFound(f"{NAD} {ns}/{name} has no spec.config, and {conf.conf_dir} has no configuration "
                                 f"named {name}", f"{where}.name")
        return Delegated(config, Target(f"{NAD}/{ns}/{name}", NAD, f"{ns}/{name}"), nad.resource_name)

    def _cluster(self, call: CniCall, pod: Pod, conf: PluginConfig) -> Wanted:
        """The cluster network: the pod's default-network override, else ``clusterNetwork`` (a file's path, a
        NAD of the Multus namespace, or a configuration of that name on disk)."""
        override = parse_default_network(pod.annotations.get(DEFAULT_NETWORK_ANNOTATION), conf.multus_namespace)
        if override is not None:
            d = self._nad(*override, DEFAULT_NETWORK_ANNOTATION, conf, isolated=False)
            d = Delegated(d.conflist, Target(d.target.key, d.target.type, d.target.name, default=True), d.resource)
        else:
            d = self.cluster_network(conf)
        runtime = {k: v for k, v in (call.config.get("runtimeConfig") or {}).items() if k != POD_ANNOTATIONS_CAPABILITY}
        return self._delegate(call, pod, conf, d, call.ifname, runtime, where="clusterNetwork")

    def cluster_network(self, conf: PluginConfig) -> Delegated:
        """``clusterNetwork``: a file's path, a NAD of the Multus namespace, or a configuration of that name on
        disk (the node's own directory included)."""
        if conf.cluster_network.startswith("/"):
            config = load_file(conf.cluster_network, "clusterNetwork")
            d = Delegated(config, Target(f"Delegate/{config['name']}", "Delegate", config["name"]))
        else:
            d = self._named(conf.cluster_network, conf)
        return Delegated(d.conflist, Target(d.target.key, d.target.type, d.target.name, default=True), d.resource)

    def _named(self, name: str, conf: PluginConfig) -> Delegated:
        ns, nad_name = _ns_name(name, conf.multus_namespace)
        if self.source.get(NETWORK_ATTACHMENT_DEFINITION, ns, nad_name) is not None:
            return self._nad(ns, nad_name, "clusterNetwork", conf, isolated=False)
        for directory in (conf.conf_dir, conf.cni_config_dir):
            config = self.on_disk(directory, name)
            if config is not None:
                return Delegated(config, Target(f"Delegate/{name}", "Delegate", name))
        raise InvalidConfig(f"clusterNetwork {name!r} is neither a {NAD} of {ns} nor a configuration in "
                            f"{conf.conf_dir} or {conf.cni_config_dir}", "clusterNetwork")

    def _element(self, call: CniCall, pod: Pod, conf: PluginConfig, el: NetworkElement, if_name: str) -> Wanted:
        d = self._nad(el.namespace, el.name, el.where, conf, pod.meta.namespace)
        declared = capabilities(d.conflist)
        for key, cap in CAPABILITIES.items():
            if cap in el.runtime and cap not in declared:
                raise AnnotationInvalid(f"{el.where}.{key}: no plugin of {d.target.name} declares the {cap!r} "
                                        "capability, so it cannot be honoured (NPWG §4.1.2)", f"{el.where}.{key}")
        return self._delegate(call, pod, conf, d, if_name, el.runtime, {"cni": el.cni_args} if el.cni_args else {},
                              el.default_route, el.where, el.ipam_claim)

    def _delegate(self, call: CniCall, pod: Pod, conf: PluginConfig, d: Delegated, if_name: str,
                  runtime: dict[str, Any] | None = None, args: dict[str, Any] | None = None,
                  default_route: tuple[str, ...] = (), where: str = "", claim: str = "") -> Wanted:
        _no_plexus_ipam_args(d)
        inv = Invocation(d.conflist, call.container_id, call.netns, if_name, _ignore_unknown(call.raw_args),
                         dict(runtime or {}), dict(args or {}), conf.plugin_dirs(call.cni_path), conf.delegate_timeout_s)
        address = self._address(call, pod, d, if_name, inv.runtime_config, where, claim)
        if address is not None and conf.delegate_ipam == "exec":
            # plexus-ipam exec'd by the delegate: told which NAD and claim this is, as Plexus resolved them
            inv = replace(inv, args={**inv.args, PLEXUS_IPAM_ARGS: {"nad": address.nad, "claim": address.claim,
                                                                     "where": where}})
            address = None
        return Wanted("delegate", InterfaceRequest(if_name, delegate=inv, default_route=default_route), d.target,
                      address=address, resource=d.resource, where=where)

    @staticmethod
    def _address(call: CniCall, pod: Pod, d: Delegated, if_name: str, runtime: dict[str, Any], where: str,
                 claim: str) -> AddressRequest | None:
        """What the daemon leases for a delegate whose IPAM is plexus-ipam (None when none of its plugins'
        is), checked now: a configuration error fails the ADD before anything is leased or built."""
        found = [(i, p["ipam"]) for i, p in enumerate(d.conflist["plugins"])
                 if isinstance(p.get("ipam"), dict) and p["ipam"].get("type") == IPAM_TYPE]
        if not found:
            return None
        i, section = found[0]
        try:
            config = parse_ipam_config(section)
        except ConfigInvalid as exc:
            raise InvalidConfig(f"{d.target.type} {d.target.name}: plugins[{i}].{exc.field} {exc.problem}",
                                f"plugins[{i}].{exc.field}") from None
        ips = runtime.get("ips") or []
        ips_field = "runtimeConfig.ips" if where == "clusterNetwork" else f"{where}.ips"
        if not isinstance(ips, list) or len(ips) > 1:
            raise InvalidConfig("an interface gets one address from plexus-ipam", ips_field)
        nad = d.target.name if d.target.type == NAD else ""
        return AddressRequest(d.conflist["name"], call.container_id, if_name, config, pod, pod.meta.namespace, nad,
                              tuple(str(i) for i in ips), claim, ips_field=ips_field,
                              claim_field=f"{where}.ipam-claim-reference", config_field=f"plugins[{i}].ipam")


def _no_plexus_ipam_args(d: Delegated) -> None:
    """``args[PLEXUS_IPAM_ARGS]`` is Plexus's to write: plexus-ipam takes it, while Plexus runs the delegate, as
    Plexus's word on the pod's NAD and IPAMClaim (``ipam_hints``). A configuration writing it (a NAD author naming
    another pod's claim) is refused, whatever its plugins' IPAM."""
    for i, plugin in enumerate(d.conflist["plugins"]):
        own = plugin.get("args")
        if isinstance(own, dict) and PLEXUS_IPAM_ARGS in own:
            raise InvalidConfig(f"{d.target.type} {d.target.name}: args.{PLEXUS_IPAM_ARGS} is written by Plexus, "
                                "not by a network's configuration", f"plugins[{i}].args.{PLEXUS_IPAM_ARGS}")


def default_networks(source: ObjectSource, namespace: str) -> list[NetworkSelection]:
    """What a pod that asks for no network gets (DANM's rule): the Network of its namespace labelled
    ``default-network``, else the ClusterNetwork so labelled, else nothing; two at one level is an error naming
    both (which one the administrator meant cannot be guessed)."""
    for kind, found in ((NETWORK.name, [n for n in source.list(NETWORK) if n.pod.default
                                        and n.meta.namespace == namespace]),
                        (CLUSTER_NETWORK.name, [n for n in source.list(CLUSTER_NETWORK) if n.pod.default])):
        if len(found) > 1:
            where = f"metadata.labels[{DEFAULT_NETWORK_LABEL}]"
            raise InvalidConfig(f"{' and '.join(sorted(n.meta.display for n in found))} are both labelled "
                                f"{DEFAULT_NETWORK_LABEL}=true: a {'namespace' if kind == NETWORK.name else 'cluster'} "
                                "has one default network at most", where)
        if found:
            return parse_networks_spec(json.dumps([{"type": kind, "name": found[0].meta.name}]))
    return []


def _one_interface_per_table(sels: list[NetworkSelection], nets: list[ResolvedNetwork]) -> None:
    """A routing table (``spec.routingTable``) serves one interface of a pod: its rules send what leaves from the
    interface's addresses to the routes in it, and a table holds one route per destination, so a second interface
    in it (the same network twice, or two networks naming one table) would send its traffic out of the first."""
    first: dict[int, tuple[int, ResolvedNetwork]] = {}
    for i, (sel, net) in enumerate(zip(sels, nets, strict=True)):
        table = net.obj.pod.table
        # no addresses configured on the interface, no rules and no routes (``_policy`` in the attacher): a TAP's
        # addresses are the guest's, and a network without a pool or with skipIPAssignment gives none
        if not table or sel.skip_ip_assignment or sel.interface_type == "tap" or net.pool is None:
            continue
        if table in first:
            j, other = first[table]
            same = "the same network" if other.key == net.key else f"{other.type} {other.name}"
            raise InvalidConfig(f"{net.type} {net.name} routes through table {table} (its spec.routingTable), which "
                                f"networks-spec[{j}] ({same}) already uses in this pod: one interface per table",
                                f"networks-spec[{i}]")
        first[table] = (i, net)


def _prefixed(sels: list[NetworkSelection], nets: list[ResolvedNetwork], taken: set[str]) -> list[NetworkSelection]:
    """The selections the pod did not name, renamed ``<prefix><N>`` where their network has an ``interfacePrefix``
    (N from 0, per prefix, skipping every name otherwise in use)."""
    used = {*taken, *(s.if_name for s, n in zip(sels, nets, strict=True) if s.named or not n.obj.pod.interface_prefix)}
    out = []
    for i, (sel, net) in enumerate(zip(sels, nets, strict=True)):
        prefix = net.obj.pod.interface_prefix
        if sel.named or not prefix:
            out.append(sel)
            continue
        name = interface_name(prefix, used)
        if len(name) > IFNAMSIZ:
            raise InvalidConfig(f"{net.obj.meta.display}: spec.interfacePrefix {prefix!r} makes the name of "
                                f"networks-spec[{i}]'s interface {name!r}, longer than {IFNAMSIZ} characters",
                                "spec.interfacePrefix")
        used.add(name)
        out.append(replace(sel, if_name=name))
    return out


def with_lease(w: Wanted, leased: Leased) -> Wanted:
    """The delegate with its plexus-ipam sections replaced by the ``static`` plugin's configuration of the
    lease (and without the ``ips`` capability's value, which the lease already honours)."""
    inv = w.request.delegate
    if inv is None:
        return w
    static = leased.static_ipam()
    plugins = [{**p, "ipam": static} if isinstance(p.get("ipam"), dict) and p["ipam"].get("type") == IPAM_TYPE else p
               for p in inv.conflist["plugins"]]
    runtime = {k: v for k, v in inv.runtime_config.items() if k != "ips"}
    inv = replace(inv, conflist={**inv.conflist, "plugins": plugins}, runtime_config=runtime)
    return replace(w, request=replace(w.request, delegate=inv))


def with_device(w: Wanted, device_id: str, info: dict[str, Any]) -> Wanted:
    """The delegate told its device as Multus tells it: ``deviceID`` in its first plugin's configuration (where
    SR-IOV CNI reads it), and in ``runtimeConfig`` for a plugin that declares the ``deviceID`` capability."""
    inv = w.request.delegate
    if inv is None:
        return w
    plugins = [{**p, "deviceID": device_id} if i == 0 else p for i, p in enumerate(inv.conflist["plugins"])]
    runtime = {**inv.runtime_config, "deviceID": device_id} if "deviceID" in capabilities(inv.conflist) \
        else inv.runtime_config
    inv = replace(inv, conflist={**inv.conflist, "plugins": plugins}, runtime_config=runtime)
    return replace(w, request=replace(w.request, delegate=inv), device_id=device_id, device_info=info)


def _ignore_unknown(args: str) -> str:
    """CNI_ARGS for a delegate: plugins refuse keys they do not know (the K8S_POD_* ones kubelet adds) unless
    told ``IgnoreUnknown`` (kubelet always is; a runtime that is not, cnitool say, is helped as Multus does)."""
    return args if not args or "IgnoreUnknown=" in args else f"IgnoreUnknown=1;{args}"


def parallel(pod: Pod) -> bool:
    """Whether the pod asks for its delegates to run at once (DANM's option; NPWG §7.3's default is serial)."""
    return pod.annotations.get(DELEGATION_ANNOTATION, "").strip().lower() == "parallel"


def readiness_file_present(path: str) -> bool:
    return not path or os.path.exists(path)

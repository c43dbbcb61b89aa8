#!/usr/bin/env python3
"""Write packaging/k8s/crds.yaml: the CustomResourceDefinitions of network.deckhouse.io/v1alpha1.

Structural schemas that refuse what a schema can refuse on Kubernetes 1.20 (no CEL there): bad
CIDRs and addresses, malformed ranges, VLAN IDs outside 1-4094, unknown enum values, bad interface
names; printer columns as the seed shows them. What needs two fields at once (a range inside its
network) the daemon checks and reports (plexusctl, the object's problems in the log).
Run: python3 scripts/gen-crds.py  (make crds)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

GROUP = "network.deckhouse.io"
OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
IPV4 = rf"{OCTET}\.{OCTET}\.{OCTET}\.{OCTET}"
VLAN = r"([1-9][0-9]{0,2}|[1-3][0-9]{3}|40[0-8][0-9]|409[0-4])"
IFNAME = r"^[^/:\s]{1,15}$"


def s(**kw: Any) -> dict[str, Any]:
    return {"type": "string", **kw}


def obj(props: dict[str, Any], required: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, **kw}
    if required:
        out["required"] = required
    return out


def arr(items: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **kw}


ipv4 = s(pattern=f"^{IPV4}$")
# IPv6 loosely (hex groups and colons; an embedded IPv4 tail): the daemon's parser checks exactly and names the field
IPV6 = r"[0-9a-fA-F]{0,4}(:[0-9a-fA-F]{0,4}){1,7}(:" + IPV4 + r")?"
IP = f"({IPV4}|{IPV6})"
ip = s(pattern=f"^{IP}$")
cidr = s(pattern=rf"^({IPV4}/(3[0-2]|[12]?[0-9])|{IPV6}/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$")
ip_range = s(pattern=rf"^{IP}(-{IP})?$")
vlan_id = {"type": "integer", "minimum": 1, "maximum": 4094}
id_pool = arr({"x-kubernetes-int-or-string": True, "pattern": rf"^{VLAN}(-{VLAN})?$"}, minItems=1)
vni_pool = arr({"x-kubernetes-int-or-string": True, "pattern": r"^[0-9]{1,8}(-[0-9]{1,8})?$"}, minItems=1)
duration = s(pattern=r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$")
parents = obj({
    "labelSelector": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    "names": arr(s(pattern=IFNAME)),
})
status = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


#: Plexus extensions of Network and ClusterNetwork (``ipamd/model/podopts.py``): policy routing (DANM's rt_tables
#: and proutes) and interface names by prefix (DANM's container_prefix). Reserved tables are refused by the daemon.
POD_OPTIONS = {
    "routingTable": {"type": "integer", "minimum": 1, "maximum": 4294967295},
    "policyRoutes": arr(obj({"destination": cidr, "via": ip}, ["destination", "via"])),
    "interfacePrefix": s(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,13}$"),
}


def pool_ref(kinds: list[str]) -> dict[str, Any]:
    return obj({"ipAddressPoolRef": obj({"kind": s(enum=kinds), "name": s(minLength=1)}, ["name"])},
               ["ipAddressPoolRef"])


SPECS: dict[str, dict[str, Any]] = {
    "NetworkClass": {
        "scope": "Cluster", "plural": "networkclasses", "short": ["nc"],
        "spec": obj({
            "vlan": obj({"idPool": id_pool, "parentNodeNetworkInterfaces": parents}, ["idPool"]),
            "parentNodeNetworkInterfaces": parents,
            "vxlan": obj({"vniPool": vni_pool, "underlayInterface": s(pattern=IFNAME), "remotes": arr(ipv4),
                          "group": ipv4, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                          "localIP": ipv4}, ["vniPool"]),
        }),
        "columns": [("VLAN POOL", ".spec.vlan.idPool", "string")],
    },
    "Network": {
        "scope": "Namespaced", "plural": "networks", "short": ["anet"],
        "spec": obj({"networkClass": s(minLength=1), "vlan": obj({"id": vlan_id}),
                     "ipam": pool_ref(["IPAddressPool"]), **POD_OPTIONS}, ["networkClass"]),
        "columns": [("CLASS", ".spec.networkClass", "string"), ("VLAN", ".status.vlanID", "integer"),
                    ("BRIDGE", ".status.bridgeName", "string")],
    },
    "ClusterNetwork": {
        "scope": "Cluster", "plural": "clusternetworks", "short": ["cnet"],
        "spec": obj({"type": s(enum=["VLAN", "Access"]), "vlan": obj({"id": vlan_id}),
                     "parentNodeNetworkInterfaces": parents, "networkClass": s(),
                     "ipam": pool_ref(["ClusterIPAddressPool"]), **POD_OPTIONS}),
        "columns": [("TYPE", ".spec.type", "string"), ("VLAN", ".status.vlanID", "integer"),
                    ("BRIDGE", ".status.bridgeName", "string")],
    },
}
POOL_SPEC = obj({
    "leaseTTL": duration,
    "pools": arr(obj({"network": cidr, "ranges": arr(ip_range),
                      "routes": arr(obj({"destination": cidr, "via": ip}, ["destination", "via"]))},
                     ["network"]), minItems=1),
}, ["pools"])
for kind, plural, scope, short in (("IPAddressPool", "ipaddresspools", "Namespaced", ["ipp"]),
                                   ("ClusterIPAddressPool", "clusteripaddresspools", "Cluster", ["cipp"])):
    SPECS[kind] = {"scope": scope, "plural": plural, "short": short, "spec": POOL_SPEC,
                   "columns": [("TTL", ".spec.leaseTTL", "string"), ("USED", ".status.used", "integer"),
                               ("QUARANTINED", ".status.quarantined", "integer"), ("FREE", ".status.free", "integer")]}
IP_COLUMNS = [("TYPE", ".spec.type", "string"), ("KIND", ".spec.networkRef.kind", "string"),
              ("NAME", ".spec.networkRef.name", "string"), ("ADDRESS", ".status.address", "string"),
              ("NETWORK", ".status.network", "string"), ("PHASE", ".status.phase", "string")]
for kind, plural, scope, short, net_kinds in (
        ("IPAddress", "ipaddresses", "Namespaced", ["ipa"], ["Network", "ClusterNetwork"]),
        ("ClusterIPAddress", "clusteripaddresses", "Cluster", ["cipa"], ["ClusterNetwork"])):
    SPECS[kind] = {
        "scope": scope, "plural": plural, "short": short,
        "spec": obj({"networkRef": obj({"kind": s(enum=net_kinds), "name": s(minLength=1)}, ["name"]),
                     "type": s(enum=["Auto", "Static"]), "static": obj({"ip": ip}, ["ip"]),
                     "ipFamily": s(enum=["IPv4", "IPv6"])}, ["networkRef"]),
        "columns": IP_COLUMNS,
    }
SPECS["NodeNetworkInterfaceAttachment"] = {
    "scope": "Cluster", "plural": "nodenetworkinterfaceattachments", "short": ["nnia"],
    "spec": obj({"networkRef": obj({"kind": s(enum=["Network", "ClusterNetwork"]), "name": s(minLength=1),
                                    "namespace": s()}, ["kind", "name"]),
                 "nodeName": s(minLength=1), "bridgeName": s()}, ["networkRef", "nodeName"]),
    "columns": [("NODE", ".spec.nodeName", "string"), ("KIND", ".spec.networkRef.kind", "string"),
                ("NETWORK", ".spec.networkRef.name", "string"), ("BRIDGE", ".spec.bridgeName", "string")],
}
SPECS["IPAddressLease"] = {
    "scope": "Cluster", "plural": "ipaddressleases", "short": ["ipl"],
    "spec": obj({"pool": s(), "ip": ip, "network": cidr, "holder": s(), "ttl": duration}, ["pool", "ip"]),
    "status": obj({"orphaningTimestamp": s(format="date-time", nullable=True)}),
    "columns": [("IP", ".spec.ip", "string"), ("HOLDER", ".spec.holder", "string"),
                ("ORPHANED", ".status.orphaningTimestamp", "date")],
}

SPECS["IPAddressBlock"] = {
    "scope": "Cluster", "plural": "ipaddressblocks", "short": ["ipb"],
    "spec": obj({"pool": s(minLength=1), "cidr": cidr, "node": s(minLength=1)}, ["pool", "cidr", "node"]),
    # returnRequestedBy/At: another node found no free address outside blocks and asks the owner to return this one
    "status": obj({"renewTime": s(format="date-time"), "returnRequestedBy": s(),
                   "returnRequestedAt": s(format="date-time")}),
    "columns": [("NODE", ".spec.node", "string"), ("CIDR", ".spec.cidr", "string"), ("POOL", ".spec.pool", "string"),
                ("RENEWED", ".status.renewTime", "date"), ("ASKED-BY", ".status.returnRequestedBy", "string")],
}


def crd(kind: str, d: dict[str, Any]) -> dict[str, Any]:
    columns = [{"name": n, "type": t, "jsonPath": p} for n, p, t in d["columns"]]
    columns.append({"name": "AGE", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{d['plural']}.{GROUP}"},
        "spec": {
            "group": GROUP, "scope": d["scope"],
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": d["plural"], "singular": kind.lower(),
                      "shortNames": d["short"], "categories": ["plexus"]},
            "versions": [{
                "name": "v1alpha1", "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": obj({
                    "apiVersion": s(), "kind": s(), "metadata": {"type": "object"},
                    "spec": d["spec"], "status": d.get("status", status),
                }, ["spec"])},
            }],
        },
    }


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent.parent / "packaging" / "k8s" / "crds.yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    header = "# Generated by scripts/gen-crds.py: edit that, then `make crds`.\n"
    out.write_text(header + yaml.safe_dump_all([crd(k, d) for k, d in SPECS.items()], sort_keys=False, width=200))
    print(out)


if __name__ == "__main__":
    main()

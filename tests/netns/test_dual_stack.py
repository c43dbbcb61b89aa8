"""Dual stack in real namespaces: a pod on a Network whose pool has an IPv4 and an IPv6 network gets one address of
each on its interface, the IPv6 one usable at once (no duplicate address detection on the ADD path), the pool's IPv6
routes, both in the CNI result and the pod's status, and reaches another pod over IPv6; DEL leaves nothing."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from typing import Any

import pytest

from ipamd.netlink.netns import netlink_at
from tests.harness import Node, links_in, pod_manifest

NS = "my-namespace"
V4, V6 = "198.18.120.0/24", "2001:2:0:120::/64"
IFA_F_TENTATIVE, IFA_F_NODAD = 0x40, 0x02


def world() -> list[dict[str, Any]]:
    pool = {"apiVersion": "network.deckhouse.io/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": "dual", "namespace": NS},
            "spec": {"leaseTTL": "0s", "pools": [
                {"network": V4},
                {"network": V6, "routes": [{"destination": "2001:2:0:121::/64", "via": "2001:2:0:120::fe"}]}]}}
    net = {"apiVersion": "network.deckhouse.io/v1alpha1", "kind": "Network", "metadata": {"name": "dual", "namespace": NS},
           "spec": {"networkClass": "test-class", "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "dual"}}}}
    return [pool, net, *(pod_manifest(n, [{"type": "Network", "name": "dual"}]) for n in ("a", "b"))]


def ipv6_of(netns: str, if_name: str) -> dict[str, Any]:
    """The interface's global IPv6 addresses with their flags, and its IPv6 routes with a gateway."""
    with netlink_at(netns) as ipr:
        (idx,) = ipr.link_lookup(ifname=if_name)
        addrs = {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}": a.get_attr("IFA_FLAGS") or a["flags"]
                 for a in ipr.get_addr(index=idx, family=socket.AF_INET6) if a["scope"] == 0}
        routes = sorted((f"{r.get_attr('RTA_DST')}/{r['dst_len']}", r.get_attr("RTA_GATEWAY"))
                        for r in ipr.get_routes(family=socket.AF_INET6, oif=idx) if r.get_attr("RTA_GATEWAY"))
    return {"addresses": addrs, "routes": routes}


@pytest.mark.netns
def test_a_dual_stack_network_gives_one_address_of_each_family_usable_at_once(node: Node) -> None:
    node.apply(world())
    paths = {n: node.pod_netns(n) for n in ("a", "b")}
    adds = {n: node.cni("ADD", f"c-{n}", paths[n], pod=(NS, n)) for n in ("a", "b")}
    assert all(r.ok for r in adds.values()), adds
    six = {n: ipv6_of(paths[n], "net1") for n in ("a", "b")}  # read right after ADD: no time for DAD to finish
    for n in ("a", "b"):
        (v4,) = links_in(paths[n])["net1"]["addresses"]
        ((v6, flags),) = six[n]["addresses"].items()
        assert ipaddress.ip_interface(v4).network == ipaddress.ip_network(V4)
        assert ipaddress.ip_interface(v6).network == ipaddress.ip_network(V6)
        assert not flags & IFA_F_TENTATIVE and flags & IFA_F_NODAD, f"{v6} goes through DAD (flags {flags:#x})"
        assert six[n]["routes"] == [("2001:2:0:121::/64", "2001:2:0:120::fe")]
        ips = [ip["address"] for ip in adds[n].json["ips"]]
        assert ips == [v4, v6], "both in the CNI result, IPv4 first"
        status = node.pod_status(NS, n)
        assert status is not None and [a["address"] for a in status[0]["ipAddressConfigs"]] == [ip.split("/")[0] for ip in ips]
    (b6,) = six["b"]["addresses"]
    ping = subprocess.run(["ip", "netns", "exec", paths["a"].rsplit("/", 1)[-1], "ping", "-6", "-c", "2", "-W", "2",
                           "-i", "0.2", b6.split("/")[0]], capture_output=True, text=True, timeout=30)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    names = {n: {a["name"] for a in (node.pod_status(NS, n) or [{}])[0]["ipAddressConfigs"]} for n in ("a", "b")}
    assert all(len(v) == 2 and any(x.endswith("-v6") for x in v) for v in names.values()), names
    for n in ("a", "b"):
        assert node.cni("DEL", f"c-{n}", paths[n], pod=(NS, n)).ok
        assert set(links_in(paths[n])) == {"lo"}
    assert len(node.leases()) == 4, "the pods' Auto IPAddresses keep both addresses while the pods exist"
    node.delete([m for m in world() if m["kind"] == "Pod"])
    node.sync()
    assert not node.leases(), "both families' leases go with the pods (leaseTTL 0s)"

"""What DANM users rely on, in real namespaces: policy routing (a table and rules per interface, checked by CHECK,
removed by DEL while the namespace lives on), interface names from a network's prefix, and the default network
of a pod that asks for none; a policy route whose gateway is unreachable refused with nothing left behind."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Any

import pytest

from ipamd.netlink.netns import netlink_at
from ipamd.netlink.policy import policy_state
from tests.conftest import REPO
from tests.harness import Node, links_in, pod_manifest

NS = "my-namespace"


def pool(name: str, cidr: str, routes: list[dict[str, str]] | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"network": cidr, **({"routes": routes} if routes else {})}
    return {"apiVersion": "network.deckhouse.io/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": name, "namespace": NS}, "spec": {"leaseTTL": "0s", "pools": [item]}}


def network(name: str, pool_name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": NS, **({"labels": labels} if labels else {})}
    return {"apiVersion": "network.deckhouse.io/v1alpha1", "kind": "Network", "metadata": md,
            "spec": {"networkClass": "test-class", "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool",
                                                                                 "name": pool_name}}, **spec}}


def rules_in(netns: str) -> list[tuple[str, int]]:
    with netlink_at(netns) as ipr:
        return sorted((f"{r.get_attr('FRA_SRC')}/{r['src_len']}", r.get_attr("FRA_TABLE") or r["table"])
                      for r in ipr.get_rules(family=socket.AF_INET) if r.get_attr("FRA_SRC"))


def table_in(netns: str, table: int) -> dict[str, list[Any]]:
    with netlink_at(netns) as ipr:
        return policy_state(ipr, table)


@pytest.mark.netns
def test_policy_routing_per_interface_checked_and_removed(node: Node) -> None:
    node.apply([pool("pr-a", "198.18.20.0/24"), pool("pr-b", "198.18.21.0/24"),
                network("pr-a", "pr-a", routingTable=100,
                        policyRoutes=[{"destination": "0.0.0.0/0", "via": "198.18.20.1"}]),
                network("pr-b", "pr-b", routingTable=4000000,
                        policyRoutes=[{"destination": "0.0.0.0/0", "via": "198.18.21.1"},
                                      {"destination": "198.19.21.0/24", "via": "198.18.21.254"}]),
                pod_manifest("two", [{"type": "Network", "name": "pr-a"}, {"type": "Network", "name": "pr-b"}])])
    ns = node.pod_netns("two")
    add = node.cni("ADD", "c1", ns, pod=(NS, "two"))
    assert add.ok, add
    links = links_in(ns)
    a, b = (links[n]["addresses"][0].split("/")[0] for n in ("net1", "net2"))
    assert rules_in(ns) == sorted([(f"{a}/32", 100), (f"{b}/32", 4000000)]), "one rule per address, to its table"
    assert sorted(table_in(ns, 100)["routes"]) == [("0.0.0.0/0", "198.18.20.1"), ("198.18.20.0/24", "")]
    assert sorted(table_in(ns, 4000000)["routes"]) == [
        ("0.0.0.0/0", "198.18.21.1"), ("198.18.21.0/24", ""), ("198.19.21.0/24", "198.18.21.254")]
    with netlink_at(ns) as ipr:
        assert not [r for r in ipr.get_routes(family=socket.AF_INET, table=254) if r["dst_len"] == 0], \
            "the policy routes stay in their tables: the main table gets no default route"

    conf = node.conf(prevResult=add.json)
    assert node.cni("CHECK", "c1", ns, pod=(NS, "two"), conf=conf).ok
    with netlink_at(ns) as ipr:
        ipr.rule("del", family=socket.AF_INET, src=b, src_len=32, table=4000000, priority=30000)
    check = node.cni("CHECK", "c1", ns, pod=(NS, "two"), conf=conf)
    assert not check.ok and f"no rule sends {b} of net2 to table 4000000" in check.stdout, check

    assert node.cni("DEL", "c1", ns, pod=(NS, "two")).ok
    assert set(links_in(ns)) == {"lo"} and rules_in(ns) == [], "DEL takes the rules, the namespace stays"
    assert table_in(ns, 100)["routes"] == [] and table_in(ns, 4000000)["routes"] == []


@pytest.mark.netns
def test_a_policy_gateway_outside_the_pool_is_refused_leaving_nothing(node: Node) -> None:
    node.apply([pool("pr-c", "198.18.22.0/24"),
                network("pr-c", "pr-c", routingTable=100,
                        policyRoutes=[{"destination": "0.0.0.0/0", "via": "198.18.99.1"}]),
                pod_manifest("bad", [{"type": "Network", "name": "pr-c"}])])
    ns = node.pod_netns("bad")
    add = node.cni("ADD", "c1", ns, pod=(NS, "bad"))
    assert add.code == 7 and add.json["details"] == "spec.policyRoutes[0].via", add
    assert "198.18.99.1 is not in 198.18.22.0/24" in add.json["msg"]
    assert set(links_in(ns)) == {"lo"} and rules_in(ns) == [] and not node.leases() and not node.plx_links()


@pytest.mark.netns
def test_prefixed_interface_names_and_the_namespaces_default_network(node: Node) -> None:
    node.apply([pool("pfx", "198.18.23.0/24"), pool("dflt", "198.18.24.0/24"),
                network("ext", "pfx", interfacePrefix="ext"),
                network("dflt", "dflt", labels={"network.deckhouse.io/default-network": "true"}),
                pod_manifest("named", [{"type": "Network", "name": "ext"}, {"type": "Network", "name": "ext"},
                                       {"type": "Network", "name": "ext", "ifName": "ext0"}]),
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain", "namespace": NS},
                 "spec": {"containers": [{"name": "app", "image": "x"}]}},
                pod_manifest("opted-out", "[]")])
    ns = node.pod_netns("named")
    assert node.cni("ADD", "c1", ns, pod=(NS, "named")).ok
    links = links_in(ns)
    assert {n for n in links if n != "lo"} == {"ext0", "ext1", "ext2"}, "the same network thrice: three interfaces"
    assert all(links[n]["addresses"][0].startswith("198.18.23.") for n in ("ext0", "ext1", "ext2"))

    plain = node.pod_netns("plain")
    assert node.cni("ADD", "c2", plain, pod=(NS, "plain")).ok
    assert links_in(plain)["net1"]["addresses"][0].startswith("198.18.24."), "no annotation: the default network"
    status = node.pod_status(NS, "plain")
    assert status is not None and (status[0]["type"], status[0]["name"]) == ("Network", "dflt")

    out = node.pod_netns("opted-out")
    assert node.cni("ADD", "c3", out, pod=(NS, "opted-out")).ok
    assert set(links_in(out)) == {"lo"}, "an explicit empty networks-spec opts out"
    for cid, path, name in (("c1", ns, "named"), ("c2", plain, "plain"), ("c3", out, "opted-out")):
        assert node.cni("DEL", cid, path, pod=(NS, name)).ok


@pytest.mark.netns
def test_plexusctl_lists_a_services_endpoints_in_local_mode(node: Node) -> None:
    def svc(name: str, network: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": NS,
                             "annotations": {"network.deckhouse.io/service-network": network,
                                             "network.deckhouse.io/service-selector": "app=db"}},
                "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}

    server = pod_manifest("db-0", [{"type": "Network", "name": "net-b"}])
    server["metadata"]["labels"] = {"app": "db"}
    other = pod_manifest("web-0", [{"type": "Network", "name": "net-b"}])
    other["metadata"]["labels"] = {"app": "web"}
    pending = pod_manifest("db-1", [{"type": "Network", "name": "net-b"}])
    pending["metadata"]["labels"] = {"app": "db"}
    node.apply([server, other, pending, svc("db", "net-b"), svc("lost", "nowhere")])
    paths = {name: node.pod_netns(name) for name in ("db-0", "web-0")}
    for cid, name in (("c1", "db-0"), ("c2", "web-0")):
        assert node.cni("ADD", cid, paths[name], pod=(NS, name)).ok
    address = links_in(paths["db-0"])["net1"]["addresses"][0].split("/")[0]
    got = subprocess.run([sys.executable, "-m", "ipamd.cli", "--grpc-socket", str(node.grpc_socket), "get",
                          "endpoints", "-o", "json"], capture_output=True, text=True, cwd=REPO, check=True)
    services = {s["name"]: s for s in json.loads(got.stdout)}
    assert services["db"]["network"] == f"Network {NS}/net-b" and services["db"]["problem"] == ""
    assert services["db"]["endpoints"] == [{"address": address, "pod": f"{NS}/db-0", "ready": True}], \
        "the selected, attached pod's address on that network; not web-0 (its labels), nor db-1 (no address yet)"
    assert services["lost"]["endpoints"] == [] and "Network my-namespace/nowhere does not exist" in \
        services["lost"]["problem"]
    for cid, name in (("c1", "db-0"), ("c2", "web-0")):
        assert node.cni("DEL", cid, paths[name], pod=(NS, name)).ok



@pytest.mark.netns
def test_check_reports_a_connected_route_deleted_from_the_policy_table(node: Node) -> None:
    node.apply([pool("prc-a", "198.18.22.0/24"),
                network("prc-a", "prc-a", routingTable=100,
                        policyRoutes=[{"destination": "0.0.0.0/0", "via": "198.18.22.1"}]),
                pod_manifest("conn", [{"type": "Network", "name": "prc-a"}])])
    ns = node.pod_netns("conn")
    add = node.cni("ADD", "c1", ns, pod=(NS, "conn"))
    assert add.ok, add
    assert sorted(table_in(ns, 100)["routes"]) == [("0.0.0.0/0", "198.18.22.1"), ("198.18.22.0/24", "")]
    conf = node.conf(prevResult=add.json)
    assert node.cni("CHECK", "c1", ns, pod=(NS, "conn"), conf=conf).ok

    with netlink_at(ns) as ipr:
        ipr.route("del", family=socket.AF_INET, dst="198.18.22.0/24", table=100, scope=253)
    assert table_in(ns, 100)["routes"] == [("0.0.0.0/0", "198.18.22.1")], "only the connected route is gone"
    check = node.cni("CHECK", "c1", ns, pod=(NS, "conn"), conf=conf)
    assert check.code == 105 and "table 100 lacks connected route 198.18.22.0/24 of net1" in check.stdout, check

    assert node.cni("DEL", "c1", ns, pod=(NS, "conn")).ok
    assert table_in(ns, 100)["routes"] == []


@pytest.mark.netns
def test_with_a_routing_table_the_pools_routes_go_into_it_not_into_main(node: Node) -> None:
    """Two policy-routed networks whose pools route one destination: each interface's route goes into its own
    table (in the main table the second one was dropped, and replies to it left by the first interface)."""
    shared = "198.19.30.0/24"
    node.apply([pool("prr-a", "198.18.25.0/24", [{"destination": shared, "via": "198.18.25.1"}]),
                pool("prr-b", "198.18.26.0/24", [{"destination": shared, "via": "198.18.26.1"},
                                                  {"destination": "0.0.0.0/0", "via": "198.18.26.1"}]),
                network("prr-a", "prr-a", routingTable=100),
                network("prr-b", "prr-b", routingTable=200,
                        policyRoutes=[{"destination": "0.0.0.0/0", "via": "198.18.26.254"}]),
                pod_manifest("routed", [{"type": "Network", "name": "prr-a"}, {"type": "Network", "name": "prr-b"}])])
    ns = node.pod_netns("routed")
    add = node.cni("ADD", "c1", ns, pod=(NS, "routed"))
    assert add.ok, add
    assert sorted(table_in(ns, 100)["routes"]) == [("198.18.25.0/24", ""), (shared, "198.18.25.1")]
    assert sorted(table_in(ns, 200)["routes"]) == [
        ("0.0.0.0/0", "198.18.26.254"), ("198.18.26.0/24", ""), (shared, "198.18.26.1")], \
        "the network's policy route to a destination wins over the pool's"
    with netlink_at(ns) as ipr:
        main = [r.get_attr("RTA_GATEWAY") for r in ipr.get_routes(family=socket.AF_INET, table=254)
                if r.get_attr("RTA_GATEWAY")]
    assert main == [], f"the main table gets none of the pools' routes: {main}"

    conf = node.conf(prevResult=add.json)
    assert node.cni("CHECK", "c1", ns, pod=(NS, "routed"), conf=conf).ok
    with netlink_at(ns) as ipr:
        ipr.route("del", family=socket.AF_INET, dst=shared, gateway="198.18.26.1", table=200)
    check = node.cni("CHECK", "c1", ns, pod=(NS, "routed"), conf=conf)
    assert check.code == 105 and f"table 200 lacks route {shared} via 198.18.26.1 of net2" in check.stdout, check

    assert node.cni("DEL", "c1", ns, pod=(NS, "routed")).ok
    assert table_in(ns, 100)["routes"] == [] and table_in(ns, 200)["routes"] == [] and rules_in(ns) == []

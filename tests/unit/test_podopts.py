"""What a network asks of its pod interfaces (policy routing, interface prefix, default network): parsed with
the field at fault named, and a network without them unchanged; policy routing as it goes into a pod's namespace, at
message level."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from cni.errors import CniError, InterfaceFailure
from ipamd.model.objects import API_VERSION, ManifestInvalid, Network, parse_object
from ipamd.model.podopts import (
    DEFAULT_NETWORK_LABEL,
    PodOptions,
    PolicyRoute,
    interface_name,
    parse_pod_options,
    unreachable_gateway,
)
from ipamd.netlink import policy


def network(spec: dict[str, Any], labels: dict[str, str] | None = None) -> Network:
    md: dict[str, Any] = {"name": "n", "namespace": "ns"}
    if labels is not None:
        md["labels"] = labels
    obj = parse_object({"apiVersion": API_VERSION, "kind": "Network", "metadata": md,
                        "spec": {"networkClass": "c", **spec}})
    assert isinstance(obj, Network)
    return obj


def test_a_network_without_them_asks_nothing() -> None:
    assert network({}).pod == PodOptions()


def test_policy_routing_prefix_and_default_are_parsed() -> None:
    net = network({"routingTable": 100, "interfacePrefix": "ext",
                   "policyRoutes": [{"destination": "0.0.0.0/0", "via": "198.18.5.1"}]},
                  {DEFAULT_NETWORK_LABEL: "true"})
    assert net.pod == PodOptions(100, (PolicyRoute("0.0.0.0/0", "198.18.5.1"),), "ext", True)


@pytest.mark.parametrize(("spec", "labels", "field", "problem"), [
    ({"routingTable": 254}, {}, "spec.routingTable", "main table"),
    ({"routingTable": 255}, {}, "spec.routingTable", "local table"),
    ({"routingTable": 253}, {}, "spec.routingTable", "default table"),
    ({"routingTable": 0}, {}, "spec.routingTable", "unspecified"),
    ({"routingTable": 2**32}, {}, "spec.routingTable", "not a routing table"),
    ({"routingTable": "100"}, {}, "spec.routingTable", "not a routing table"),
    ({"policyRoutes": [{"destination": "0.0.0.0/0", "via": "198.18.5.1"}]}, {}, "spec.policyRoutes",
     "needs spec.routingTable"),
    ({"routingTable": 7, "policyRoutes": [{"destination": "198.18.5.1/24", "via": "198.18.5.1"}]}, {},
     "spec.policyRoutes[0].destination", "not a CIDR"),
    ({"routingTable": 7, "policyRoutes": [{"destination": "0.0.0.0/0", "via": "gw"}]}, {},
     "spec.policyRoutes[0].via", "not an IP address"),
    ({"routingTable": 7, "policyRoutes": [{"destination": "2001:2:7::/48", "via": "198.18.5.1"}]}, {},
     "spec.policyRoutes[0].via", "not of 2001:2:7::/48's family"),
    ({"routingTable": 7, "policyRoutes": "0.0.0.0/0"}, {}, "spec.policyRoutes", "must be a list"),
    ({"routingTable": 7, "policyRoutes": [{"destination": "2001:2::/64", "via": "2001:2::1"},
                                          {"destination": "2001:2:0::/64", "via": "2001:2::2"}]}, {},
     "spec.policyRoutes[1].destination", "spec.policyRoutes[0]'s destination too"),
    ({"interfacePrefix": "abcdefghijklmno"}, {}, "spec.interfacePrefix", "no room for the number"),
    ({"interfacePrefix": "9ext"}, {}, "spec.interfacePrefix", "start with a letter"),
    ({"interfacePrefix": "e/x"}, {}, "spec.interfacePrefix", "start with a letter"),
    ({}, {DEFAULT_NETWORK_LABEL: "yes"}, f"metadata.labels[{DEFAULT_NETWORK_LABEL}]", "must be"),
])
def test_bad_options_name_their_field(spec: dict[str, Any], labels: dict[str, str], field: str, problem: str) -> None:
    with pytest.raises(ManifestInvalid) as err:
        network(spec, labels)
    assert err.value.field == field and problem in err.value.problem


def test_a_prefix_of_fourteen_leaves_room_for_one_digit() -> None:
    assert parse_pod_options({"interfacePrefix": "abcdefghijklmn"}, {}).interface_prefix == "abcdefghijklmn"


def test_a_gateway_outside_every_network_of_the_pool_is_found() -> None:
    import ipaddress

    opts = PodOptions(7, (PolicyRoute("0.0.0.0/0", "198.18.5.1"), PolicyRoute("198.19.0.0/16", "198.18.9.1")))
    nets = [ipaddress.IPv4Network("198.18.5.0/24")]
    assert unreachable_gateway(opts, nets) == (
        "spec.policyRoutes[1].via", "198.18.9.1 is not in 198.18.5.0/24, so it is not reachable from the interface")
    assert unreachable_gateway(opts, [*nets, ipaddress.IPv4Network("198.18.9.0/24")]) is None


def test_interface_names_take_the_lowest_free_number() -> None:
    assert interface_name("ext", set()) == "ext0"
    assert interface_name("ext", {"ext0", "ext2"}) == "ext1"


class PodNetlink:
    """A pod namespace's rules and routes, at message level: route adds keyed by (table, dst) as the kernel keys them
    (EEXIST on a second), rules kept; dumps answered as pyroute2 messages are read."""

    class Msg(dict):  # type: ignore[type-arg]
        def __init__(self, fields: dict[str, Any], attrs: dict[str, Any]) -> None:
            super().__init__(fields)
            self.attrs = attrs

        def get_attr(self, name: str) -> Any:
            return self.attrs.get(name)

    def __init__(self) -> None:
        self.routes: dict[tuple[int, str], dict[str, Any]] = {}
        self.rules: list[dict[str, Any]] = []

    def route(self, cmd: str, **kw: Any) -> None:
        assert cmd == "add"
        key = (kw.get("table", 254), kw["dst"])
        if key in self.routes:
            raise NetlinkError(errno.EEXIST, "File exists")
        self.routes[key] = kw

    def rule(self, cmd: str, **kw: Any) -> None:
        if cmd == "add":
            self.rules.append(kw)
        else:
            self.rules = [r for r in self.rules if r != kw]

    def get_rules(self, family: int) -> list[Any]:
        return [self.Msg({"family": r["family"], "src_len": r["src_len"], "table": r["table"]},
                         {"FRA_SRC": r["src"], "FRA_TABLE": r["table"]}) for r in self.rules if r["family"] == family]

    def get_routes(self, family: int, table: int) -> list[Any]:
        out = []
        for (t, dst), kw in self.routes.items():
            fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
            if t != table or fam != family:
                continue
            net, _, plen = dst.partition("/")
            out.append(self.Msg({"family": fam, "dst_len": int(plen)},
                                {"RTA_DST": None if int(plen) == 0 else net, "RTA_GATEWAY": kw.get("gateway")}))
        return out


def test_policy_routes_with_one_destination_are_refused_or_all_installed() -> None:
    """Two policyRoutes with one destination (two default gateways, say) passed validation; ADD installed the first
    and swallowed the kernel's EEXIST for the second (meant for the connected route), so CHECK failed for ever; now
    they are refused naming the second's destination, and only the connected route's EEXIST is let pass."""
    spec = {"routingTable": 100, "policyRoutes": [{"destination": "0.0.0.0/0", "via": "198.18.5.1"},
                                                  {"destination": "0.0.0.0/0", "via": "198.18.5.2"}]}
    try:
        opts = parse_pod_options(spec, {})
    except ValueError:
        return  # refused, naming the field: fine
    pod = PodNetlink()
    routes = [(r.destination, r.via) for r in opts.routes]
    try:
        policy.add_policy_routing(pod, 7, "net1", ["198.18.5.10/24"], 100, routes)
    except CniError:
        return  # ADD fails with the kernel's word: fine
    installed = {(dst, kw.get("gateway")) for (t, dst), kw in pod.routes.items() if kw.get("gateway")}
    assert installed == set(routes), (
        f"ADD succeeded with only {sorted(installed)} of {routes} in table 100: the second policy route was "
        "silently dropped (EEXIST swallowed), and CHECK then reports it missing for ever")


def test_only_the_connected_route_may_be_there_already() -> None:
    """Two addresses of the interface in one network share their connected route; a policy route the table holds
    already is the kernel's refusal (105), not a route silently left out."""
    pod = PodNetlink()
    policy.add_policy_routing(pod, 7, "net1", ["198.18.5.10/24", "198.18.5.11/24"], 100, [("0.0.0.0/0", "198.18.5.1")])
    assert set(pod.routes) == {(100, "198.18.5.0/24"), (100, "0.0.0.0/0")} and len(pod.rules) == 2
    with pytest.raises(InterfaceFailure) as err:
        policy.add_policy_routing(PodNetlink(), 7, "net1", ["198.18.5.10/24"], 100,
                                  [("0.0.0.0/0", "198.18.5.1"), ("0.0.0.0/0", "198.18.5.2")])
    assert err.value.code == 105 and "table 100" in err.value.msg


def test_adding_a_zoned_policy_route_is_a_cni_error_not_an_unexpected_oserror() -> None:
    """pyroute2 cannot encode ``2001:2::1%eth0`` (OSError from inet_pton, before anything reaches the kernel);
    ``add_policy_routing`` caught NetlinkError only, so it escaped as a plain OSError: the CNI answer was 999
    "plexus-ipamd failed unexpectedly". A network stored with one is served without the zone; a route that still
    has one is refused naming it (the interface's undo runs)."""
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    class Encoding(PodNetlink):
        def route(self, cmd: str, **kw: Any) -> None:
            msg = rtmsg()
            msg["family"] = socket.AF_INET6 if ":" in kw["dst"] else socket.AF_INET
            msg["attrs"] = [("RTA_GATEWAY", kw["gateway"])] if kw.get("gateway") else []
            msg.encode()  # what pyroute2 does before sending: the kernel never sees a zone
            super().route(cmd, **kw)

    net = network({"routingTable": 100, "policyRoutes": [{"destination": "2001:2:0:11::/64",
                                                          "via": "2001:2::1%eth0"}]})
    routes = [(r.destination, r.via) for r in net.pod.routes]
    assert routes == [("2001:2:0:11::/64", "2001:2::1")], "served without the zone"
    pod = Encoding()
    policy.add_policy_routing(pod, 7, "net1", ["2001:2::10/64"], 100, routes)
    assert (100, "2001:2:0:11::/64") in pod.routes
    with pytest.raises(InterfaceFailure) as err:
        policy.add_policy_routing(Encoding(), 7, "net1", ["2001:2::10/64"], 100,
                                  [("2001:2:0:11::/64", "2001:2::1%eth0")])
    assert "2001:2::1%eth0" in err.value.msg and "net1" in err.value.msg and "table 100" in err.value.msg, err.value

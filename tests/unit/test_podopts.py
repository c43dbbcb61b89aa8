"""What a network asks of its pod interfaces (policy routing, interface prefix, default network): parsed with
the field at fault named, and a network without them unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from ipamd.model.objects import API_VERSION, ManifestInvalid, Network, parse_object
from ipamd.model.podopts import (
    DEFAULT_NETWORK_LABEL,
    PodOptions,
    PolicyRoute,
    interface_name,
    parse_pod_options,
    unreachable_gateway,
)


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

"""plexus-ipam's configuration: Whereabouts's keys taken as Whereabouts means them, everything else refused by
name, and the rule for ranges that overlap."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from ipamd.model.cniconf import ConfigInvalid
from ipamd.model.ipamconf import InlineRange, implicit_pool, overlap, parse_ipam_config, space_key


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def span(a: str, b: str) -> tuple[int, int]:
    return ip(a), ip(b)


def parse(**ipam: Any) -> Any:
    return parse_ipam_config({"type": "plexus-ipam", **ipam})


def test_a_cidr_hands_out_its_usable_addresses_but_the_gateway() -> None:
    conf = parse(range="198.18.20.0/24", gateway="198.18.20.1")
    assert conf.range is not None and conf.pool is None
    assert conf.range.network == ipaddress.IPv4Network("198.18.20.0/24")
    assert conf.range.ranges == (span("198.18.20.2", "198.18.20.254"),)
    assert conf.gateway == "198.18.20.1"


@pytest.mark.parametrize(("ipam", "expected"), [
    ({"range": "198.18.20.10-198.18.20.50/24"}, [("198.18.20.10", "198.18.20.50")]),
    ({"range": "198.18.20.100/24"}, [("198.18.20.100", "198.18.20.254")]),  # from that address on
    ({"range": "198.18.20.0/24", "range_start": "198.18.20.20", "range_end": "198.18.20.29"},
     [("198.18.20.20", "198.18.20.29")]),
    ({"range": "198.18.20.0/28", "exclude": ["198.18.20.4/30"]},
     [("198.18.20.1", "198.18.20.3"), ("198.18.20.8", "198.18.20.14")]),
    ({"range": "198.18.20.0/31"}, [("198.18.20.0", "198.18.20.1")]),  # RFC 3021: both
])
def test_whereabouts_range_forms(ipam: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    conf = parse(**ipam)
    assert conf.range is not None
    assert list(conf.range.ranges) == [span(a, b) for a, b in expected]


def test_routes_network_name_overlap_ttl_and_whereabouts_own_keys() -> None:
    conf = parse(range="198.18.20.0/24", gateway="198.18.20.1", network_name="storage",
                 enable_overlapping_ranges=False, leaseTTL="5m",
                 routes=[{"dst": "198.18.30.0/24"}, {"dst": "198.18.31.0/24", "gw": "198.18.20.254"}],
                 kubernetes={"kubeconfig": "/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig"},
                 log_file="/tmp/whereabouts.log", log_level="debug", datastore="kubernetes")
    assert conf.range is not None
    assert conf.routes == (("198.18.30.0/24", "198.18.20.1"), ("198.18.31.0/24", "198.18.20.254"))
    assert (conf.range.space, conf.range.overlapping, conf.range.ttl_s) == ("storage", False, 300.0)
    assert implicit_pool(conf.range).meta.key == space_key("storage") == "ImplicitPool/storage"



def test_an_ipv6_default_route_in_a_whereabouts_range_is_accepted() -> None:
    """``routes: [{"dst": "::/0"}]`` (the IPv6 default route) was refused as "lies in ::/96, the deprecated
    IPv4-compatible space": ``_routes`` checked a route's dst with ``_net``, whose ::/96 refusal is meant for a range's
    addresses, not a destination. A Whereabouts IPv6 NAD with a default route could not switch by changing ``type``."""
    conf = parse_ipam_config({"type": "plexus-ipam", "range": "2001:2:0:53::/64", "gateway": "2001:2:0:53::1",
                              "routes": [{"dst": "::/0"}]})
    assert conf.routes == (("::/0", "2001:2:0:53::1"),)
    assert parse(range="198.18.20.0/24", routes=[{"dst": "0.0.0.0/0", "gw": "198.18.20.1"}]).routes == \
        (("0.0.0.0/0", "198.18.20.1"),)


def test_a_whereabouts_ipv6_range_with_a_link_local_gateway_switches_by_changing_type_alone() -> None:
    """README: "a Whereabouts NAD switches by changing type and nothing else". Whereabouts takes any ``gateway``, and an
    IPv6 router is usually known by its link-local address; plexus-ipam refused it as "outside the range's network",
    failing every ADD with code 7. It is in no range, so nothing is cut out."""
    cfg = parse_ipam_config({"type": "plexus-ipam", "range": "2001:2:0:71::/64", "gateway": "fe80::1",
                             "routes": [{"dst": "::/0"}]})
    assert cfg.gateway == "fe80::1" and cfg.routes == (("::/0", "fe80::1"),)
    net = ipaddress.IPv6Network("2001:2:0:71::/64")
    assert cfg.range is not None and cfg.range.ranges == ((int(net[1]), int(net[-1])),)


def test_a_ranges_routes_gateways_inside_it_are_cut_out_as_its_gateway_is() -> None:
    conf = parse(range="198.18.20.0/28", routes=[{"dst": "198.18.30.0/24", "gw": "198.18.20.5"},
                                                 {"dst": "198.18.31.0/24", "gw": "198.18.21.1"}])  # outside: no cut
    assert conf.range is not None
    assert conf.range.ranges == (span("198.18.20.1", "198.18.20.4"), span("198.18.20.6", "198.18.20.14"))

@pytest.mark.parametrize(("ipam", "field"), [
    ({"range": "198.18.20.0/33"}, "ipam.range"),
    ({"range": "not-a-cidr"}, "ipam.range"),
    ({"range": "::c612:0/120"}, "ipam.range"),  # ::/96 would share its integers with IPv4
    ({"range": "2001:2::/64", "gateway": "198.18.0.1"}, "ipam.gateway"),
    ({"range": "198.18.20.0/24", "gateway": "fe80::1"}, "ipam.gateway"),  # an IPv6 router for an IPv4 range
    ({"range": "198.18.20.0/24", "gateway": "169.254.0.1"}, "ipam.gateway"),  # only IPv6's link-local is on-link
    ({"range": "fe80::/64"}, "ipam.range"),  # link-local: CHECK never sees it (the kernel's own fe80 is left out)
    ({"range": "fe80::10-fe80::20/64"}, "ipam.range"),
    ({"range": "ff05::/64"}, "ipam.range"),  # multicast: no interface's address
    ({"range": "224.0.1.0/24"}, "ipam.range"),
    ({"range": "2001:2::/64", "exclude": ["198.18.0.0/30"]}, "ipam.exclude[0]"),
    ({"range": 42}, "ipam.range"),
    ({"range": "198.18.20.50-198.18.20.10/24"}, "ipam.range"),  # both bounds from range itself
    ({"range": "198.18.20.0/24", "range_end": "198.18.20.0"}, "ipam.range_end"),
    ({"range": "198.18.20.0/24", "socket": "/run/containerd/containerd.sock"}, "ipam.socket"),
    ({"range": "198.18.20.0/24", "socket": "/tmp/evil-plexus-ipam.sock"}, "ipam.socket"),  # the plugin refuses it
    ({"range": "198.18.20.0/24", "timeoutSeconds": "soon"}, "ipam.timeoutSeconds"),
    ({"range": "198.18.20.1/32", "gateway": "198.18.20.1"}, "ipam.gateway"),
    ({"range": "198.18.20.1/32", "routes": [{"dst": "198.18.30.0/24", "gw": "198.18.20.1"}]}, "ipam.routes"),
    ({"range": "198.18.20.0/24", "range_start": "198.18.21.1"}, "ipam.range_start"),
    ({"range": "198.18.20.0/24", "exclude": ["198.18.21.0/28"]}, "ipam.exclude[0]"),
    ({"range": "198.18.20.0/24", "exclude": "198.18.20.0/28"}, "ipam.exclude"),
    ({"range": "198.18.20.0/30", "exclude": ["198.18.20.0/30"]}, "ipam.exclude"),
    ({"range": "198.18.20.0/24", "gateway": "198.18.21.1"}, "ipam.gateway"),
    ({"range": "198.18.20.0/24", "routes": [{"gw": "198.18.20.1"}]}, "ipam.routes[0]"),
    ({"range": "198.18.20.0/24", "routes": [{"dst": "nowhere"}]}, "ipam.routes[0].dst"),
    ({"range": "198.18.20.0/24", "enable_overlapping_ranges": "yes"}, "ipam.enable_overlapping_ranges"),
    ({"range": "198.18.20.0/24", "network_name": "a/b"}, "ipam.network_name"),
    ({"range": "198.18.20.0/24", "leaseTTL": "soon"}, "ipam.leaseTTL"),
    ({"range": "198.18.20.0/24", "ipRanges": [{"range": "198.18.21.0/24"}]}, "ipam.ipRanges"),
    ({"ipRanges": [{"range": "198.18.21.0/24"}]}, "ipam.ipRanges"),  # named before the missing range
    ({"subnet": "198.18.21.0/24"}, "ipam.subnet"),
    ({"range": "198.18.20.0/24", "datastore": "etcd"}, "ipam.datastore"),
    ({"range": "198.18.20.0/24", "ipAddressPoolRef": {"name": "p"}}, "ipam.range"),
    ({}, "ipam.range"),
    ({"ipAddressPoolRef": {"name": "p"}, "range_start": "198.18.20.1"}, "ipam.range_start"),
    ({"ipAddressPoolRef": {"name": "p"}, "leaseTTL": "1m"}, "ipam.leaseTTL"),
    ({"ipAddressPoolRef": {"kind": "Network", "name": "p"}}, "ipam.ipAddressPoolRef.kind"),
    ({"ipAddressPoolRef": {"kind": "ClusterIPAddressPool", "name": "p", "namespace": "x"}},
     "ipam.ipAddressPoolRef.namespace"),
    ({"ipAddressPoolRef": {"name": ""}}, "ipam.ipAddressPoolRef"),
    ({"ipAddressPoolRef": {"name": "p", "colour": "red"}}, "ipam.ipAddressPoolRef.colour"),
])
def test_bad_configuration_names_its_field(ipam: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigInvalid) as exc:
        parse(**ipam)
    assert exc.value.field == field


def test_whereabouts_ip_ranges_alone_is_refused_by_name_with_what_to_do() -> None:
    """Whereabouts's multi-range ``ipRanges`` without a ``range`` was told ``ipam.range is required``: the required
    key was checked before the unknown ones, and the message never named ``ipRanges`` (found in review)."""
    with pytest.raises(ConfigInvalid) as exc:
        parse(ipRanges=[{"range": "198.18.21.0/24"}])
    assert exc.value.field == "ipam.ipRanges"
    assert exc.value.problem.startswith("is not a key of plexus-ipam")
    assert "one range per NAD" in exc.value.problem and "ipAddressPoolRef" in exc.value.problem


def test_the_type_must_be_plexus_ipam() -> None:
    with pytest.raises(ConfigInvalid) as exc:
        parse_ipam_config({"type": "whereabouts", "range": "198.18.20.0/24"})
    assert exc.value.field == "ipam.type"


def test_a_pool_by_reference() -> None:
    conf = parse(ipAddressPoolRef={"kind": "ClusterIPAddressPool", "name": "shared"})
    assert conf.pool is not None and (conf.pool.kind, conf.pool.name) == ("ClusterIPAddressPool", "shared")
    assert parse(ipAddressPoolRef="mine").pool.kind == "IPAddressPool"


def rng(first: str, last: str, space: str = "", overlapping: bool = True) -> InlineRange:
    return InlineRange(ipaddress.IPv4Network("198.18.20.0/24"), (span(first, last),), space, overlapping)


def test_only_a_range_that_refuses_sharing_is_refused_for_overlapping_another_configurations() -> None:
    others = [("nad-a", rng("198.18.20.1", "198.18.20.100"))]
    assert overlap(rng("198.18.20.50", "198.18.20.150"), "nad-b", others) == "", "the default: shared, unique"
    clash = overlap(rng("198.18.20.50", "198.18.20.150", overlapping=False), "nad-b", others)
    assert clash.startswith("nad-a (198.18.20.0/24")
    assert overlap(rng("198.18.20.101", "198.18.20.150", overlapping=False), "nad-b", others) == "", "disjoint"
    assert overlap(rng("198.18.20.1", "198.18.20.9", "other", overlapping=False), "nad-b", others) == "", \
        "another network_name is another space"
    assert overlap(rng("198.18.20.1", "198.18.20.9", overlapping=False), "nad-a", others) == "", "its own range"

"""``cni.types``: results in every spec version, reading them back, and chaining after a prevResult."""

from __future__ import annotations

from typing import Any

import pytest

from cni.errors import DecodingFailure
from cni.types import Interface, IPConfig, Result, Route, cidr_of
from cni.version import SUPPORTED_VERSIONS

RESULT = Result(
    interfaces=(Interface("net1", "02:00:00:00:00:01", "/run/netns/pod"), Interface("plx1a2b", "02:00:00:00:00:02")),
    ips=(IPConfig("198.18.10.50/24", 0, "198.18.10.1"), IPConfig("198.18.20.5/28", 0),
         IPConfig("2001:db8::5/64", None)),
    routes=(Route("198.19.10.0/24", "198.18.10.1"), Route("0.0.0.0/0")),
    dns={"nameservers": ["198.18.0.53"]},
)


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_to_dict_before_1_0_has_ip_versions(version: str) -> None:
    assert RESULT.to_dict(version) == {
        "cniVersion": version,
        "interfaces": [
            {"name": "net1", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/pod"},
            {"name": "plx1a2b", "mac": "02:00:00:00:00:02"},
        ],
        "ips": [
            {"version": "4", "address": "198.18.10.50/24", "gateway": "198.18.10.1", "interface": 0},
            {"version": "4", "address": "198.18.20.5/28", "interface": 0},
            {"version": "6", "address": "2001:db8::5/64"},
        ],
        "routes": [{"dst": "198.19.10.0/24", "gw": "198.18.10.1"}, {"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["198.18.0.53"]},
    }


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_to_dict_from_1_0_has_no_ip_versions(version: str) -> None:
    out = RESULT.to_dict(version)
    assert out["cniVersion"] == version
    assert out["ips"] == [
        {"address": "198.18.10.50/24", "gateway": "198.18.10.1", "interface": 0},
        {"address": "198.18.20.5/28", "interface": 0},
        {"address": "2001:db8::5/64"},
    ]
    assert all("version" not in ip for ip in out["ips"])


def test_default_version_is_current() -> None:
    assert Result().to_dict() == {"cniVersion": "1.1.0", "dns": {}}


def test_empty_parts_are_left_out() -> None:
    out = Result(interfaces=(Interface("net1"),)).to_dict("1.0.0")
    assert out == {"cniVersion": "1.0.0", "interfaces": [{"name": "net1"}], "dns": {}}


def test_interface_mtu() -> None:
    assert Interface("net1", mtu=1450).to_dict() == {"name": "net1", "mtu": 1450}
    assert Interface.from_dict({"name": "net1", "mtu": 1450}) == Interface("net1", mtu=1450)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_from_dict_round_trip(version: str) -> None:
    assert Result.from_dict(RESULT.to_dict(version)) == RESULT


def test_from_dict_of_an_empty_result() -> None:
    assert Result.from_dict({"cniVersion": "1.0.0"}) == Result()
    assert Result.from_dict({"cniVersion": "1.0.0", "interfaces": None, "ips": None}) == Result()


def test_merged_after_renumbers_interface_indexes() -> None:
    prev = Result(
        interfaces=(Interface("eth0", sandbox="/run/netns/pod"), Interface("veth1234")),
        ips=(IPConfig("10.244.0.5/24", 0),),
        routes=(Route("0.0.0.0/0", "10.244.0.1"),),
        dns={"nameservers": ["10.96.0.10"]},
    )
    ours = Result(
        interfaces=(Interface("net1", sandbox="/run/netns/pod"), Interface("net2", sandbox="/run/netns/pod")),
        ips=(IPConfig("198.18.10.50/24", 0), IPConfig("198.18.20.5/28", 1), IPConfig("198.18.30.5/28", None)),
        routes=(Route("198.19.10.0/24", "198.18.10.1"),),
        dns={"nameservers": ["198.18.0.53"]},
    )
    merged = ours.merged_after(prev)
    assert [i.name for i in merged.interfaces] == ["eth0", "veth1234", "net1", "net2"]
    assert [(ip.address, ip.interface) for ip in merged.ips] == [
        ("10.244.0.5/24", 0), ("198.18.10.50/24", 2), ("198.18.20.5/28", 3), ("198.18.30.5/28", None)]
    assert merged.routes == prev.routes + ours.routes
    assert merged.dns == prev.dns  # the primary network's DNS wins
    for ip in merged.ips:
        if ip.interface is not None:
            assert merged.interfaces[ip.interface].sandbox == "/run/netns/pod"


def test_merged_after_nothing_is_unchanged() -> None:
    assert RESULT.merged_after(None) is RESULT
    assert RESULT.merged_after(Result()) == RESULT


def test_merged_after_a_prev_result_without_dns_takes_ours() -> None:
    assert Result(dns={"search": ["x"]}).merged_after(Result(interfaces=(Interface("eth0"),))).dns == {"search": ["x"]}


def test_merged_after_a_prevresult_read_from_json() -> None:
    prev = Result.from_dict({"cniVersion": "0.4.0", "interfaces": [{"name": "eth0"}],
                             "ips": [{"version": "4", "address": "10.244.0.5/24", "interface": 0}]})
    merged = Result(interfaces=(Interface("net1"),), ips=(IPConfig("198.18.10.50/24", 0),)).merged_after(prev)
    assert merged.to_dict("0.4.0")["ips"] == [
        {"version": "4", "address": "10.244.0.5/24", "interface": 0},
        {"version": "4", "address": "198.18.10.50/24", "interface": 1},
    ]


@pytest.mark.parametrize("prev", [
    "not a dict",
    ["a", "list"],
    {"interfaces": [{"mac": "02:00:00:00:00:01"}]},
    {"interfaces": "eth0"},
    {"interfaces": [None]},
    {"ips": [{"gateway": "198.18.10.1"}]},
    {"ips": [{"address": "198.18.10.50/24", "interface": "first"}]},
    {"ips": [42]},
    {"routes": [{"gw": "198.18.10.1"}]},
    {"routes": 5},
    {"dns": ["198.18.0.53"]},
    {"dns": "198.18.0.53"},
    {"interfaces": [{"name": "eth0", "mtu": "big"}]},
])
def test_bad_prev_result_is_a_decoding_failure(prev: Any) -> None:
    with pytest.raises(DecodingFailure) as info:
        Result.from_dict(prev)
    assert info.value.code == 6
    assert info.value.details.startswith("prevResult")


@pytest.mark.parametrize("prev", [
    ["ip4"], "ip4 and ip6", {"ip4": {"ip": "198.18.10.50/24", "routes": 5}}, {"ip6": {"ip": None}},
])
def test_a_prev_result_that_is_no_object_is_a_decoding_failure_not_999(prev: Any) -> None:
    """``Result.from_dict`` tested ``"ip4" in d`` before its try: a ``prevResult`` that is a list holding "ip4" (or a
    string containing it) went to ``_from_020``, whose ``d.get`` raised AttributeError outside the try: the daemon
    answered 999 "failed unexpectedly" instead of 6 naming prevResult. So did a 0.2.0 section that is no result."""
    with pytest.raises(DecodingFailure) as info:
        Result.from_dict(prev)
    assert info.value.code == 6 and info.value.details.startswith("prevResult")


@pytest.mark.parametrize("address", ["not-an-address", "198.18.10.50", "198.18.10.500/24", ""])
def test_prev_result_ip_address_must_be_cidr(address: str) -> None:
    """SPEC: ``ips[].address`` is an IP address in CIDR notation; anything else cannot be decoded."""
    with pytest.raises(DecodingFailure):
        Result.from_dict({"cniVersion": "1.0.0", "ips": [{"address": address}]})


def test_cidr_of() -> None:
    assert cidr_of("198.18.0.5", "198.18.0.0/24") == "198.18.0.5/24"
    assert cidr_of("198.18.0.5", "198.18.0.4/31") == "198.18.0.5/31"

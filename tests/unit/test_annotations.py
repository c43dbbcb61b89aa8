"""``ipamd.model.annotations``: parsing ``networks-spec`` and building ``networks-status``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cni.errors import AnnotationInvalid
from ipamd.model.annotations import (
    AddressConfig,
    InterfaceStatus,
    NetworkSelection,
    build_networks_status,
    parse_networks_spec,
)


def spec(*items: Any) -> str:
    return json.dumps(list(items))


def net(name: str = "my-network", **extra: Any) -> dict[str, Any]:
    return {"type": "Network", "name": name, **extra}


def refused(text: str) -> AnnotationInvalid:
    with pytest.raises(AnnotationInvalid) as info:
        parse_networks_spec(text)
    assert info.value.code == 102
    return info.value


# -- valid specs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [None, "", "   ", "[]"])
def test_no_spec_means_no_networks(text: str | None) -> None:
    assert parse_networks_spec(text) == []


def test_full_element() -> None:
    (sel,) = parse_networks_spec(spec({
        "type": "ClusterNetwork", "name": "my-cluster-network", "ifName": "veth_public", "mac": "02:AA:bb:CC:dd:EE",
        "ipAddressNames": ["a", "b"], "skipIPAssignment": True, "interfaceType": "tap", "uid": 107, "gid": 0,
    }))
    assert sel == NetworkSelection(
        type="ClusterNetwork", name="my-cluster-network", if_name="veth_public", mac="02:aa:bb:cc:dd:ee",
        ip_address_names=("a", "b"), skip_ip_assignment=True, interface_type="tap", tap_uid=107, tap_gid=0,
    )


def test_defaults() -> None:
    (sel,) = parse_networks_spec(spec(net()))
    assert sel == NetworkSelection(type="Network", name="my-network", if_name="net1", named=False)
    assert sel.interface_type == "veth"
    assert sel.mac == ""
    assert sel.skip_ip_assignment is False
    assert sel.tap_uid is None and sel.tap_gid is None


@pytest.mark.parametrize("itype", ["veth", "tap", "macvlan"])
def test_interface_types(itype: str) -> None:
    (sel,) = parse_networks_spec(spec(net(interfaceType=itype)))
    assert sel.interface_type == itype


def test_default_names_count_up_from_net1() -> None:
    sels = parse_networks_spec(spec(net("a"), net("b"), net("c")))
    assert [s.if_name for s in sels] == ["net1", "net2", "net3"]


def test_default_names_skip_explicit_names() -> None:
    sels = parse_networks_spec(spec(net("a"), net("b", ifName="net1"), net("c"), net("d", ifName="net3")))
    names = [s.if_name for s in sels]
    assert names[1] == "net1" and names[3] == "net3"
    assert names[0] not in ("net1", "net3") and names[2] not in ("net1", "net3")
    assert all(n.startswith("net") for n in names)
    assert len(set(names)) == 4


def test_default_name_follows_position_when_free() -> None:
    sels = parse_networks_spec(spec(net("a", ifName="eth9"), net("b")))
    assert [s.if_name for s in sels] == ["eth9", "net2"]


def test_a_15_character_ifname_is_fine() -> None:
    (sel,) = parse_networks_spec(spec(net(ifName="x" * 15)))
    assert sel.if_name == "x" * 15


def test_same_network_twice_on_different_interfaces() -> None:
    sels = parse_networks_spec(spec(net(), net()))
    assert [(s.name, s.if_name) for s in sels] == [("my-network", "net1"), ("my-network", "net2")]


def test_dvp_keys_plexus_does_not_act_on_are_taken() -> None:
    (sel,) = parse_networks_spec(spec(net(id=3)))
    assert sel.name == "my-network" and not sel.guest_dhcp


def test_ip_assignment_mode_dhcp_has_the_guest_of_a_tap_served() -> None:
    (sel,) = parse_networks_spec(spec(net(interfaceType="tap", ipAssignmentMode="DHCP")))
    assert sel.guest_dhcp


@pytest.mark.parametrize(("extra", "words"), [
    ({"interfaceType": "tap", "ipAssignmentMode": "whatever"}, "must be DHCP"),
    ({"interfaceType": "tap", "ipAssignmentMode": "dhcp"}, "must be DHCP"),
    ({"interfaceType": "tap", "ipAssignmentMode": ""}, "must be DHCP"),
    ({"ipAssignmentMode": "DHCP"}, "interfaceType tap, not veth"),
    ({"interfaceType": "macvlan", "ipAssignmentMode": "DHCP"}, "interfaceType tap, not macvlan"),
])
def test_ip_assignment_mode_refused_names_its_field(extra: dict[str, str], words: str) -> None:
    with pytest.raises(AnnotationInvalid) as err:
        parse_networks_spec(spec(net(), net(**extra)))
    assert err.value.details == "networks-spec[1].ipAssignmentMode" and words in err.value.msg


# -- invalid specs --------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["{", "[{'type': 'Network'}]", "not json"])
def test_not_json(text: str) -> None:
    exc = refused(text)
    assert "networks-spec" in exc.msg


@pytest.mark.parametrize("text", ['{"type": "Network", "name": "n"}', '"net"', "42", "null"])
def test_not_a_list(text: str) -> None:
    exc = refused(text)
    assert "list" in exc.msg


@pytest.mark.parametrize(("items", "field"), [
    ([net(), "my-network"], "networks-spec[1]"),
    ([net(), {"type": "Pod", "name": "x"}], "networks-spec[1].type"),
    ([{"name": "x"}], "networks-spec[0].type"),
    ([{"type": "Network"}], "networks-spec[0].name"),
    ([{"type": "Network", "name": "Bad_Name"}], "networks-spec[0].name"),
    ([{"type": "Network", "name": 3}], "networks-spec[0].name"),
    ([net(), net(ifName="x" * 16)], "networks-spec[1].ifName"),
    ([net(ifName="a/b")], "networks-spec[0].ifName"),
    ([net(ifName="has space")], "networks-spec[0].ifName"),
    ([net(ifName="tab\tx")], "networks-spec[0].ifName"),
    ([net(ifName="a:b")], "networks-spec[0].ifName"),
    ([net(ifName=".")], "networks-spec[0].ifName"),
    ([net(ifName="..")], "networks-spec[0].ifName"),
    ([net(ifName="")], "networks-spec[0].ifName"),
    ([net(ifName=None)], "networks-spec[0].ifName"),
    ([net(ifName=5)], "networks-spec[0].ifName"),
    ([net(ifName="net1"), net("other", ifName="net1")], "networks-spec[1].ifName"),
    ([net(mac="02:00:00:00:00")], "networks-spec[0].mac"),
    ([net(mac="02-00-00-00-00-01")], "networks-spec[0].mac"),
    ([net(mac="zz:00:00:00:00:01")], "networks-spec[0].mac"),
    ([net(mac="")], "networks-spec[0].mac"),
    ([net(mac=1234)], "networks-spec[0].mac"),
    ([net(), net(mac="01:00:5e:00:00:01")], "networks-spec[1].mac"),
    ([net(mac="ff:ff:ff:ff:ff:ff")], "networks-spec[0].mac"),
    ([net(mac="03:00:00:00:00:01")], "networks-spec[0].mac"),
    ([net(mac="00:00:00:00:00:00")], "networks-spec[0].mac"),
    ([net(ipAddressNames="a")], "networks-spec[0].ipAddressNames"),
    ([net(ipAddressNames={"a": 1})], "networks-spec[0].ipAddressNames"),
    ([net(ipAddressNames=[1])], "networks-spec[0].ipAddressNames"),
    ([net(ipAddressNames=["Not_A_Name"])], "networks-spec[0].ipAddressNames"),
    ([net(), net(ipAddressNames=["a", "b", "a"])], "networks-spec[1].ipAddressNames"),
    ([net(skipIPAssignment="true")], "networks-spec[0].skipIPAssignment"),
    ([net(skipIPAssignment=1)], "networks-spec[0].skipIPAssignment"),
    ([net(interfaceType="vhost")], "networks-spec[0].interfaceType"),
    ([net(interfaceType="TAP")], "networks-spec[0].interfaceType"),
    ([net(uid=-1)], "networks-spec[0].uid"),
    ([net(gid="0")], "networks-spec[0].gid"),
    ([net(uid=True)], "networks-spec[0].uid"),
])
def test_invalid_element_names_the_field(items: list[Any], field: str) -> None:
    exc = refused(spec(*items))
    assert exc.details == field
    assert field in exc.msg


def test_the_same_ipaddress_on_two_interfaces_names_the_second() -> None:
    """The module promises that a refusal names the element and the field (``networks-spec[1].<field>``)."""
    exc = refused(spec(net(ipAddressNames=["a", "b"]), net("other", ipAddressNames=["c", "a"])))
    assert "'a'" in exc.msg
    assert exc.details == "networks-spec[1].ipAddressNames"


def test_an_invalid_element_refuses_the_whole_spec() -> None:
    with pytest.raises(AnnotationInvalid):
        parse_networks_spec(spec(net("a"), net("b"), net("c", interfaceType="nope")))


def test_mac_is_normalised_to_lower_case() -> None:
    (sel,) = parse_networks_spec(spec(net(mac="0A:1B:2C:3D:4E:5F")))
    assert sel.mac == "0a:1b:2c:3d:4e:5f"


# -- networks-status ------------------------------------------------------------------------------

def test_build_networks_status_shape() -> None:
    statuses = [
        InterfaceStatus(
            type="Network", name="my-network", if_name="net1", mac="02:00:00:00:00:01", vlan_id=600,
            addresses=(
                AddressConfig("pod-a-net1-1a2b3", "198.18.10.50", "198.18.10.0/24",
                              ({"destination": "198.19.10.0/24", "via": "198.18.10.1"},)),
                AddressConfig("extra", "198.18.10.51", "198.18.10.0/24"),
            ),
            configured=True, reason="InterfaceConfiguredSuccessfully", message="", up=True,
            since="2025-01-02T03:04:05Z",
        ),
        InterfaceStatus(
            type="ClusterNetwork", name="flat", if_name="net2", mac="02:00:00:00:00:02", vlan_id=0, addresses=(),
            configured=False, reason="InterfaceFailed", message="the kernel said no", up=False,
            since="2025-01-02T03:04:06Z",
        ),
    ]
    assert build_networks_status(statuses) == [
        {
            "type": "Network", "name": "my-network", "ifName": "net1", "mac": "02:00:00:00:00:01", "vlanID": 600,
            "ipAddressConfigs": [
                {"name": "pod-a-net1-1a2b3", "address": "198.18.10.50", "network": "198.18.10.0/24",
                 "routes": [{"destination": "198.19.10.0/24", "via": "198.18.10.1"}]},
                {"name": "extra", "address": "198.18.10.51", "network": "198.18.10.0/24"},
            ],
            "conditions": [
                {"type": "Configured", "status": "True", "reason": "InterfaceConfiguredSuccessfully", "message": "",
                 "lastTransitionTime": "2025-01-02T03:04:05Z"},
                {"type": "Negotiated", "status": "True", "reason": "Up", "message": "",
                 "lastTransitionTime": "2025-01-02T03:04:05Z"},
            ],
        },
        {
            "type": "ClusterNetwork", "name": "flat", "ifName": "net2", "mac": "02:00:00:00:00:02", "vlanID": 0,
            "ipAddressConfigs": [],
            "conditions": [
                {"type": "Configured", "status": "False", "reason": "InterfaceFailed", "message": "the kernel said no",
                 "lastTransitionTime": "2025-01-02T03:04:06Z"},
                {"type": "Negotiated", "status": "False", "reason": "Down", "message": "",
                 "lastTransitionTime": "2025-01-02T03:04:06Z"},
            ],
        },
    ]


def test_build_networks_status_is_json_and_key_order_is_stable() -> None:
    status = InterfaceStatus("Network", "n", "net1", "02:00:00:00:00:01", 7,
                             (AddressConfig("a", "198.18.0.2", "198.18.0.0/24"),), True, "Ok", "", True,
                             "2025-01-01T00:00:00Z")
    (out,) = build_networks_status([status])
    assert list(out) == ["type", "name", "ifName", "mac", "vlanID", "ipAddressConfigs", "conditions"]
    assert [set(c) for c in out["conditions"]] == [{"type", "status", "reason", "message", "lastTransitionTime"}] * 2
    assert json.loads(json.dumps(out)) == out


def test_address_config_routes_are_copies() -> None:
    route = {"destination": "198.19.0.0/24", "via": "198.18.0.1"}
    out = AddressConfig("a", "198.18.0.2", "198.18.0.0/24", (route,)).to_dict()
    out["routes"][0]["via"] = "changed"
    assert route["via"] == "198.18.0.1"


# -- keys and types a mistake would turn into something else -----------------------------------------

@pytest.mark.parametrize("key", ["ifname", "ipAddressName", "skipIpAssignment", "macAddress"])
def test_an_unknown_key_of_networks_spec_is_refused_naming_it(key: str) -> None:
    """A misspelt key is silently ignored: ``ifname`` gives net1, ``ipAddressName`` an Auto address instead of the
    user's static one. ``KNOWN_KEYS`` lists the keys but nothing reads it."""
    with pytest.raises(AnnotationInvalid) as err:
        parse_networks_spec(json.dumps([{"type": "Network", "name": "n", key: "x"}]))
    assert err.value.details == f"networks-spec[0].{key}"


@pytest.mark.parametrize("value", ["", {}, False, 0])
def test_ip_address_names_of_the_wrong_type_are_refused(value: Any) -> None:
    """``item.get("ipAddressNames") or []`` turns any falsy value into "no names" (an Auto address)."""
    with pytest.raises(AnnotationInvalid) as err:
        parse_networks_spec(json.dumps([{"type": "Network", "name": "n", "ipAddressNames": value}]))
    assert err.value.details == "networks-spec[0].ipAddressNames"

"""The NPWG dialect as pure functions: ``k8s.v1.cni.cncf.io/networks`` in both forms and every rule of the
spec, CNI configurations (``.conf`` or ``.conflist``) brought to one form, the configuration each plugin
of a list gets, Plexus's Multus keys, and network-status entries."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cni.errors import AnnotationInvalid, InvalidConfig
from ipamd.model.annotations import parse_networks_spec
from ipamd.model.cniconf import ConfigInvalid, as_conflist, capabilities, plugin_config
from ipamd.model.npwg import entry_from_result, parse_default_network, parse_networks
from ipamd.model.objects import NETWORK_ATTACHMENT_DEFINITION, ManifestInvalid, parse_as, parse_object
from ipamd.model.pluginconf import parse_plugin_config

ANN = "k8s.v1.cni.cncf.io/networks"


def test_the_comma_form() -> None:
    els = parse_networks(" net-a, other-ns/net-b ,net-c@ext0", "apps")
    assert [(e.namespace, e.name, e.interface) for e in els] == [
        ("apps", "net-a", ""), ("other-ns", "net-b", ""), ("apps", "net-c", "ext0")]
    assert [e.where for e in els] == [f"{ANN}[0]", f"{ANN}[1]", f"{ANN}[2]"]


def test_the_json_form_with_every_key() -> None:
    text = json.dumps([{
        "name": "static-mac", "namespace": "infra", "interface": "ext0", "ips": ["192.0.2.205/24"],
        "mac": "CA:FE:C0:FF:EE:00", "default-route": ["192.0.2.1"], "cni-args": {"foo": "bar"},
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 1000}, "infiniband-guid": "c2:11:22:33:44:55:66:77", "deviceID": "0000:03:00.1",
        "org.example.custom": 1}])
    (el,) = parse_networks(text, "apps")
    assert (el.namespace, el.name, el.interface, el.mac) == ("infra", "static-mac", "ext0", "ca:fe:c0:ff:ee:00")
    assert el.default_route == ("192.0.2.1",) and el.cni_args == {"foo": "bar"}
    assert el.runtime == {"ips": ["192.0.2.205/24"], "mac": "ca:fe:c0:ff:ee:00",
                          "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                          "bandwidth": {"ingressRate": 1000}, "infinibandGUID": "c2:11:22:33:44:55:66:77",
                          "deviceID": "0000:03:00.1"}


def test_empty_is_no_networks() -> None:
    assert parse_networks(None, "apps") == [] and parse_networks("  ", "apps") == []


@pytest.mark.parametrize(("text", "field"), [
    ('[{"name": "a"', ANN),
    ('{"name": "a"}', "got dict"),
    ('[{"name": "A_B"}]', f"{ANN}[0].name"),
    ('[{"namespace": "x"}]', f"{ANN}[0].name"),
    ('[{"name": "a", "interface": "this-is-too-long-a-name"}]', f"{ANN}[0].interface"),
    ('[{"name": "a", "ips": "192.0.2.1"}]', f"{ANN}[0].ips"),
    ('[{"name": "a", "ips": ["not-an-ip"]}]', f"{ANN}[0].ips"),
    ('[{"name": "a", "mac": "01:00:5e:00:00:01"}]', f"{ANN}[0].mac"),
    ('[{"name": "a", "cni-args": ["x"]}]', f"{ANN}[0].cni-args"),
    ('[{"name": "a", "bandwidth": 5}]', f"{ANN}[0].bandwidth"),
    ('[{"name": "a", "interfce": "net1"}]', f"{ANN}[0].interfce"),
    ('[{"name": "a", "ips": ["192.0.2.1/24"], "ipam-claim-reference": "c"}]', f"{ANN}[0].ips"),
    ('[{"name": "a", "default-route": ["192.0.2.1"]}, {"name": "b", "default-route": ["192.0.3.1"]}]',
     f"{ANN}[1].default-route"),
    ("a/b/c", f"{ANN}[0]"),
    ("a,,b", f"{ANN}[1].name"),
    ("a@b@c", f"{ANN}[0].interface"),  # "a@" is a (default-named) interface since Multus's trimming rules
])
def test_bad_annotations_name_the_element_and_key(text: str, field: str) -> None:
    with pytest.raises(AnnotationInvalid) as err:
        parse_networks(text, "apps")
    assert field in err.value.details or field in err.value.msg, err.value


@pytest.mark.parametrize("key, value", [("default-route", "fe80::1%net1"), ("ips", "2001:2:0:7::5%net1/64"),
                                        ("ips", "2001:2:0:7::5%eth0")])
def test_a_default_route_gateway_with_a_zone_id_is_refused_when_the_annotation_is_read(key: str, value: str) -> None:
    """Python's ipaddress takes a zone (``fe80::1%net1``), Multus's ``net.ParseIP`` does not. Accepted, it reached
    default_route.set_default_route, where pyroute2 raised OSError (no CNI error, the routes already replaced for
    an earlier gateway not given back); an ``ips`` one reached the daemon's lease as text with its zone."""
    with pytest.raises(AnnotationInvalid) as err:
        parse_networks(json.dumps([{"name": "nad", key: [value]}]), "ns")
    assert err.value.details == f"{ANN}[0].{key}" and "zone" in err.value.msg, err.value


def test_a_megabyte_annotation_is_refused() -> None:
    with pytest.raises(AnnotationInvalid) as err:
        parse_networks("a," * 500_000, "apps")
    assert "larger than" in err.value.msg


def test_the_default_network_override() -> None:
    assert parse_default_network("cbr0", "kube-system") == ("kube-system", "cbr0")
    assert parse_default_network("infra/cbr0", "kube-system") == ("infra", "cbr0")
    assert parse_default_network("", "kube-system") is None


# -- configurations ---------------------------------------------------------------------------------------

def test_a_conf_becomes_a_conflist_carrying_the_given_name() -> None:
    conf = {"cniVersion": "0.3.1", "type": "macvlan", "master": "eth0", "ipam": {"type": "static"}}
    assert as_conflist(conf, "nad-name") == {"cniVersion": "0.3.1", "name": "nad-name", "plugins": [
        {"type": "macvlan", "master": "eth0", "ipam": {"type": "static"}}]}
    named = as_conflist({**conf, "name": "own"}, "nad-name")
    assert named["name"] == "own", "a name of its own wins"


def test_a_conflist_keeps_its_own_keys() -> None:
    cl = {"cniVersion": "1.0.0", "name": "x", "disableCheck": True, "plugins": [{"type": "bridge"}]}
    assert as_conflist(cl) == cl


@pytest.mark.parametrize(("doc", "field"), [
    ([1], ""), ({"type": "bridge"}, "cniVersion"), ({"cniVersion": "1.0.0", "plugins": []}, "plugins"),
    ({"cniVersion": "1.0.0", "name": "n"}, ""), ({"cniVersion": "1.0.0", "type": "../../bin/sh"}, "type"),
    ({"cniVersion": "1.0.0", "plugins": [{"type": "a"}, {"type": "/usr/bin/id"}]}, "plugins[1].type"),
    ({"cniVersion": "1.0.0", "plugins": [{"type": "a", "capabilities": []}]}, "plugins[0].capabilities"),
])
def test_what_is_not_a_configuration(doc: Any, field: str) -> None:
    with pytest.raises(ConfigInvalid) as err:
        as_conflist(doc, "n")
    assert err.value.field == field


def test_each_plugin_gets_the_capabilities_it_declares_and_the_args() -> None:
    cl = {"cniVersion": "1.0.0", "name": "n", "plugins": [
        {"type": "macvlan", "capabilities": {"ips": True, "mac": False}, "args": {"cni": {"keep": 1}}},
        {"type": "tuning", "capabilities": {"mac": True}}]}
    assert capabilities(cl) == {"ips", "mac"}
    first = plugin_config(cl, 0, {"ips": ["192.0.2.5/24"], "mac": "02:00:00:00:00:01"}, {"cni": {"x": "y"}})
    assert first == {"type": "macvlan", "name": "n", "cniVersion": "1.0.0", "runtimeConfig": {"ips": ["192.0.2.5/24"]},
                     "args": {"cni": {"keep": 1, "x": "y"}}}
    second = plugin_config(cl, 1, {"mac": "02:00:00:00:00:01"}, None, {"cniVersion": "1.0.0"})
    assert second["runtimeConfig"] == {"mac": "02:00:00:00:00:01"} and second["prevResult"] == {"cniVersion": "1.0.0"}


def test_a_nad_that_is_not_a_cni_configuration_is_refused_naming_why() -> None:
    def nad(config: Any) -> dict[str, Any]:
        return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                "metadata": {"name": "n", "namespace": "apps"}, "spec": {"config": config}}

    with pytest.raises(ManifestInvalid) as err:
        parse_object(nad("{not json"))
    assert err.value.field == "spec.config" and "not JSON" in str(err.value)
    with pytest.raises(ManifestInvalid) as err:
        parse_object(nad('{"cniVersion": "1.0.0", "plugins": []}'))
    assert err.value.field == "spec.config.plugins"
    ok = parse_as(NETWORK_ATTACHMENT_DEFINITION, nad('{"cniVersion": "0.3.1", "type": "bridge"}'))
    assert ok.config == {"cniVersion": "0.3.1", "name": "n", "plugins": [{"type": "bridge"}]}
    on_disk = parse_as(NETWORK_ATTACHMENT_DEFINITION, nad(None))
    assert on_disk.config is None, "no spec.config: the node's file of that name"


def test_multus_keys_of_plexus_configuration() -> None:
    conf = parse_plugin_config({"binDir": "/opt/cni/bin:/usr/lib/cni", "clusterNetwork": "cbr0",
                                "defaultNetworks": "a, b", "namespaceIsolation": True, "globalNamespaces": ["shared"],
                                "readinessindicatorfile": "/run/ready", "delegateTimeoutSeconds": 5})
    assert conf.bin_dirs == ("/opt/cni/bin", "/usr/lib/cni"), "a directory, or CNI_PATH's list of them"
    assert conf.default_networks == ("a", "b") and conf.is_global("shared") and conf.is_global("default")
    assert conf.plugin_dirs("/x") == conf.bin_dirs and parse_plugin_config({}).plugin_dirs("/x:/y") == ("/x", "/y")
    for bad in ({"namespaceIsolation": "yes"}, {"delegateTimeoutSeconds": 0}, {"defaultNetworks": 3},
                {"confDir": 1}):
        with pytest.raises(InvalidConfig) as err:
            parse_plugin_config(bad)
        assert err.value.details == next(iter(bad))


def test_network_status_entries_from_a_result() -> None:
    result = {"cniVersion": "1.0.0",
              "interfaces": [{"name": "br0"}, {"name": "veth1"}, {"name": "net1", "mac": "02:00:00:00:00:09",
                                                                   "sandbox": "/run/netns/p", "mtu": 1400}],
              "ips": [{"address": "198.18.5.7/24", "interface": 2, "gateway": "198.18.5.1"},
                      {"address": "198.18.9.9/24", "interface": 0}],
              "routes": [{"dst": "0.0.0.0/0", "gw": "198.18.5.1"}], "dns": {"nameservers": ["198.18.0.53"]}}
    assert entry_from_result("apps/n", result, default=True) == {
        "name": "apps/n", "interface": "net1", "ips": ["198.18.5.7"], "mac": "02:00:00:00:00:09", "mtu": 1400,
        "default": True, "dns": {"nameservers": ["198.18.0.53"]}, "gateway": ["198.18.5.1"]}
    assert entry_from_result("apps/n", {"interfaces": [{"name": "br0"}]}) is None


# -- against Multus (pkg/k8sclient: parsePodNetworkAnnotation, parsePodNetworkObjectText) and the kernel --------

@pytest.mark.parametrize("parse", [
    lambda name: parse_networks_spec(json.dumps([{"type": "Network", "name": "n", "ifName": name}])),
    lambda name: parse_networks(json.dumps([{"name": "n", "interface": name}]), "apps"),
    lambda name: parse_networks(f"n@{name}", "apps"),
])
def test_an_interface_name_of_more_than_fifteen_bytes_is_refused(parse: Any) -> None:
    """The kernel's IFNAMSIZ counts bytes (dev_valid_name: strnlen < 16); valid_ifname counts characters, so a
    non-ASCII name of 8 characters (16 bytes) passes the webhook and fails in netlink at ADD."""
    with pytest.raises(AnnotationInvalid):
        parse("éééééééé")
    with pytest.raises(AnnotationInvalid):
        parse("a\x00b")  # NUL: the kernel would read "a"


@pytest.mark.parametrize("text, expected", [
    ("other / bridge-net", ("other", "bridge-net", "")),  # Multus TrimSpace()s the namespace and the name
    ("bridge-net @ ext0", ("apps", "bridge-net", "ext0")),  # ... and the interface
    ("/bridge-net", ("apps", "bridge-net", "")),  # an empty namespace is the pod's
    ("bridge-net@", ("apps", "bridge-net", "")),  # an empty interface is the default net<N>
])
def test_the_comma_form_reads_as_multus_reads_it(text: str, expected: tuple[str, str, str]) -> None:
    (el,) = parse_networks(text, "apps")
    assert (el.namespace, el.name, el.interface) == expected


@pytest.mark.parametrize("key", ["ips", "default-route", "portMappings", "bandwidth", "ipam-claim-reference", "mac"])
def test_a_json_null_is_an_absent_key_as_in_multus(key: str) -> None:
    """Go's json.Unmarshal leaves a field at its zero value for null; generators that do not omit empty fields
    write null (a Python None, a Go pointer without omitempty)."""
    (el,) = parse_networks(json.dumps([{"name": "n", key: None}]), "apps")
    assert el.runtime == {} and el.ips == () and el.default_route == () and el.ipam_claim == ""


@pytest.mark.parametrize("mac", ["02-00-00-00-00-05", "0200.0000.0005", "02:00:00:00:00:05"])
def test_a_mac_in_the_forms_go_parses_is_accepted_and_normalised(mac: str) -> None:
    """Multus checks ``mac`` with net.ParseMAC (and tuning, which applies it, parses it so): hyphens and Cisco dots
    are MACs there; Plexus refuses them, so a pod that ran under Multus fails here."""
    (el,) = parse_networks(json.dumps([{"name": "n", "mac": mac}]), "apps")
    assert el.mac == "02:00:00:00:00:05" and el.runtime["mac"] == "02:00:00:00:00:05"


# -- cniVersions (SPEC 1.1 §1 "Configuration format"; libcni NetworkConfFromBytes) -----------------------------------

def test_a_conflist_that_gives_only_cni_versions_is_accepted_at_the_highest_version() -> None:
    """SPEC 1.1: ``cniVersions`` (string list) is a configuration key; libcni reads it and picks the highest version
    it implements, and ``cniVersion`` may then be absent. A NAD or node file in that form is refused here."""
    doc = {"cniVersions": ["1.0.0", "1.1.0"], "name": "n", "plugins": [{"type": "bridge"}]}
    assert as_conflist(doc)["cniVersion"] == "1.1.0"


@pytest.mark.parametrize(("doc", "version"), [
    ({"cniVersion": "1.0.0", "cniVersions": ["2.0.0"]}, "1.0.0"),
    ({"cniVersion": "1.1.0", "cniVersions": ["0.4.0"]}, "1.1.0"),
    ({"cniVersions": ["0.3.1", "1.0.0", "9.9.9"]}, "1.0.0"),
])
def test_cni_versions_picks_the_highest_version_plexus_speaks(doc: dict[str, Any], version: str) -> None:
    assert as_conflist({**doc, "name": "n", "plugins": [{"type": "bridge"}]})["cniVersion"] == version


@pytest.mark.parametrize(("doc", "field"), [
    ({"cniVersions": "1.1.0"}, "cniVersions"), ({"cniVersions": ["1.1.0", 1]}, "cniVersions"),
    ({"cniVersions": ["9.9.9"]}, "cniVersions"), ({"cniVersions": []}, "cniVersions"), ({}, "cniVersion"),
    ({"cniVersion": ""}, "cniVersion"),
    ({"cniVersion": "1.0.0", "disableCheck": "maybe"}, "disableCheck"), ({"cniVersion": "1.1.0", "disableGC": 1}, "disableGC"),
])
def test_what_is_not_a_configurations_version_or_switch(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigInvalid) as err:
        as_conflist({**doc, "name": "n", "plugins": [{"type": "bridge"}]})
    assert err.value.field == field

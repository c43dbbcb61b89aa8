"""ADD, CHECK and DEL of real interfaces in real namespaces, asserting kernel state."""

from __future__ import annotations

import pytest

from tests.harness import Node, links_in, pod_manifest

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


@pytest.mark.netns
@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_two_networks(node: Node, version: str) -> None:
    node.apply([pod_manifest("app", [
        {"type": "Network", "name": "net-a", "ifName": "net1", "mac": "aa:bb:cc:dd:ee:01"},
        {"type": "Network", "name": "net-b"},
    ])])
    ns = node.pod_netns("app")
    add = node.cni("ADD", "c1", ns, pod=("my-namespace", "app"), conf=node.conf(version))
    assert add.ok, add
    res = add.json
    assert res["cniVersion"] == version
    pod_ifaces = [i for i in res["interfaces"] if i.get("sandbox") == ns]
    assert [i["name"] for i in pod_ifaces] == ["net1", "net2"]
    if version < "1.0.0":
        assert all(ip["version"] == "4" for ip in res["ips"])
    else:
        assert all("version" not in ip for ip in res["ips"])

    links = links_in(ns)
    assert links["net1"]["mac"] == "aa:bb:cc:dd:ee:01"
    assert links["net1"]["up"] and links["net2"]["up"]
    assert links["net1"]["addresses"] == ["198.18.10.10/24"]
    assert links["net2"]["addresses"][0].startswith("198.18.11.")
    assert links["net1"]["routes"] == ["198.19.10.0/24 via 198.18.10.1"]
    host = node.host_links()
    veths = [n for n, link in host.items() if link["kind"] == "veth"]
    assert len(veths) == 2
    assert {host[v]["master"] for v in veths} <= {"plx-br-600", "plx-br-601"}

    status = node.pod_status("my-namespace", "app")
    assert status is not None and [s["ifName"] for s in status] == ["net1", "net2"]
    assert status[0]["mac"] == "aa:bb:cc:dd:ee:01" and status[0]["vlanID"] in (600, 601)
    assert status[0]["ipAddressConfigs"][0]["address"] == "198.18.10.10"
    assert {c["type"]: c["status"] for c in status[0]["conditions"]} == {"Configured": "True", "Negotiated": "True"}
    assert len(node.leases()) == 2

    if version >= "0.4.0":
        check = node.cni("CHECK", "c1", ns, pod=("my-namespace", "app"), conf=node.conf(version, prevResult=res))
        assert check.ok, check

    dele = node.cni("DEL", "c1", ns, pod=("my-namespace", "app"), conf=node.conf(version))
    assert dele.ok and dele.stdout == "", dele
    assert set(links_in(ns)) == {"lo"}
    assert not node.plx_links()
    assert node.pod_status("my-namespace", "app") is None
    again = node.cni("DEL", "c1", ns, pod=("my-namespace", "app"), conf=node.conf(version))
    assert again.ok, again


@pytest.mark.netns
def test_pod_recreated_sandbox_keeps_its_auto_address(node: Node) -> None:
    node.apply([pod_manifest("app", [{"type": "Network", "name": "net-a"}])])
    ns = node.pod_netns("app")
    first = node.cni("ADD", "sandbox-1", ns, pod=("my-namespace", "app"))
    assert first.ok, first
    assert node.cni("DEL", "sandbox-1", ns, pod=("my-namespace", "app")).ok
    second = node.cni("ADD", "sandbox-2", ns, pod=("my-namespace", "app"))
    assert second.ok, second
    assert first.json["ips"] == second.json["ips"]


@pytest.mark.netns
def test_repeated_add_returns_same_result_without_second_lease(node: Node) -> None:
    node.apply([pod_manifest("app", [{"type": "Network", "name": "net-a"}])])
    ns = node.pod_netns("app")
    a = node.cni("ADD", "c1", ns, pod=("my-namespace", "app"))
    b = node.cni("ADD", "c1", ns, pod=("my-namespace", "app"))
    assert a.ok and b.ok, (a, b)
    assert a.json == b.json
    assert len(node.leases()) == 1


@pytest.mark.netns
def test_del_without_netns_and_with_netns_gone(node: Node) -> None:
    node.apply([pod_manifest("app", [{"type": "Network", "name": "net-a"}])])
    ns = node.pod_netns("app")
    assert node.cni("ADD", "c1", ns, pod=("my-namespace", "app")).ok
    node.remove_pod_netns(ns)
    gone = node.cni("DEL", "c1", ns, pod=("my-namespace", "app"))
    assert gone.ok, gone
    empty = node.cni("DEL", "c1", "", pod=("my-namespace", "app"))
    assert empty.ok, empty
    assert not node.plx_links()
    leases = node.leases()
    assert all(lease.pods == [] for lease in leases)


@pytest.mark.netns
def test_tap_and_skip_ip_assignment(node: Node) -> None:
    node.apply([pod_manifest("vm", [
        {"type": "Network", "name": "net-a", "ifName": "tap0", "interfaceType": "tap", "mac": "02:00:00:00:00:07"},
        {"type": "Network", "name": "net-b", "ifName": "net9", "skipIPAssignment": True},
    ])])
    ns = node.pod_netns("vm")
    add = node.cni("ADD", "c1", ns, pod=("my-namespace", "vm"))
    assert add.ok, add
    links = links_in(ns)
    # the guest keeps the requested MAC (the result reports it); the TAP, the host side, has one of its own, or the
    # pod's inner bridge would keep frames to the guest for itself (as libvirt does: fe:...)
    assert links["tap0"]["kind"] == "tun" and links["tap0"]["mac"] == "fe:00:00:00:00:07"
    assert [i["mac"] for i in add.json["interfaces"] if i["name"] == "tap0"] == ["02:00:00:00:00:07"]
    assert links["tap0"]["addresses"] == [] and links["net9"]["addresses"] == []
    status = node.pod_status("my-namespace", "vm")
    assert status is not None
    assert all(s["ipAddressConfigs"] for s in status), "reserved and tracked even when not configured"
    assert status[0]["mac"] == "02:00:00:00:00:07", "the guest's MAC"
    assert add.json.get("ips", []) == []
    check = node.cni("CHECK", "c1", ns, pod=("my-namespace", "vm"), conf=node.conf(prevResult=add.json))
    assert check.ok, check
    assert node.cni("DEL", "c1", ns, pod=("my-namespace", "vm")).ok
    assert set(links_in(ns)) == {"lo"}
    assert not node.plx_links()

"""ADD, CHECK and DEL of real interfaces in real namespaces, asserting kernel state."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Node, links_in, pod_manifest, run
from tests.netns.guest import guest
from tests.netns.test_crash import restart

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


@pytest.mark.netns
def test_a_vm_guest_takes_its_address_over_dhcp_and_again_after_a_daemon_kill(node: Node, tmp_path: Path) -> None:
    """``ipAssignmentMode: DHCP``: the pod's TAP carries no address; the guest behind it (a real client, as qemu's
    guest would be) is handed the one leased for it, with the pool's routes, by the daemon; a killed daemon's
    successor answers it too, and DEL leaves nothing."""
    node.apply([pod_manifest("vm", [{"type": "Network", "name": "net-a", "ifName": "tap0", "interfaceType": "tap",
                                     "mac": "02:00:00:00:00:07", "ipAssignmentMode": "DHCP"}])])
    ns = node.pod_netns("vm")
    add = node.cni("ADD", "c1", ns, pod=("my-namespace", "vm"))
    assert add.ok, add
    assert links_in(ns)["tap0"]["addresses"] == [] and add.json.get("ips", []) == []
    status = node.pod_status("my-namespace", "vm")
    assert status is not None
    (config,) = status[0]["ipAddressConfigs"]
    with guest(ns, "tap0", "02:00:00:00:00:07", tmp_path / "first") as vm:
        code, lease = vm.dhcp("-O", "staticroutes")
        assert code == 0, "the guest got no lease"
        assert f"{lease['ip']}/{lease['mask']}" == f"{config['address']}/{config['network'].split('/')[1]}"
        assert lease["staticroutes"] == "198.19.10.0/24 198.18.10.1"
        assert links_in(vm.path)["guest0"]["addresses"] == [f"{config['address']}/24"]
    node.kill()
    restart(node)
    with guest(ns, "tap0", "02:00:00:00:00:07", tmp_path / "again") as vm:
        code, lease = vm.dhcp()
        assert code == 0 and lease["ip"] == config["address"], "the restarted daemon does not answer the guest"
    check = node.cni("CHECK", "c1", ns, pod=("my-namespace", "vm"), conf=node.conf(prevResult=add.json))
    assert check.ok, check
    assert node.cni("DEL", "c1", ns, pod=("my-namespace", "vm")).ok
    assert set(links_in(ns)) == {"lo"} and not node.plx_links()


@pytest.mark.netns
def test_dhcp_for_an_interface_with_no_guest_is_refused_leaving_nothing(node: Node) -> None:
    node.apply([pod_manifest("app", [{"type": "Network", "name": "net-a", "ipAssignmentMode": "DHCP"}])])
    ns = node.pod_netns("app")
    add = node.cni("ADD", "c1", ns, pod=("my-namespace", "app"))
    assert not add.ok and add.json["code"] == 102, add
    assert "networks-spec[0].ipAssignmentMode" in add.json["details"]
    assert set(links_in(ns)) == {"lo"} and not node.plx_links() and node.leases() == []


DEFAULT_ROUTE_POOL = """
apiVersion: network.deckhouse.io/v1alpha1
kind: IPAddressPool
metadata: {name: pool-gw, namespace: my-namespace}
spec:
  pools:
    - network: 198.18.12.0/24
      routes: [{destination: 0.0.0.0/0, via: 198.18.12.1}, {destination: 198.19.12.0/24, via: 198.18.12.1}]
---
apiVersion: network.deckhouse.io/v1alpha1
kind: Network
metadata: {name: net-gw, namespace: my-namespace}
spec:
  networkClass: test-class
  ipam: {ipAddressPoolRef: {kind: IPAddressPool, name: pool-gw}}
"""


def _cluster_eth0(ns: str) -> dict[str, Any]:
    """The cluster network's eth0 as the plugin before Plexus left it (the pod's IPv4 default route), and its result."""
    name = os.path.basename(ns)
    for cmd in (["link", "add", "eth0", "type", "veth", "peer", "name", "cnipeer0"], ["link", "set", "cnipeer0", "up"],
                ["addr", "add", "198.18.92.2/24", "dev", "eth0"], ["link", "set", "eth0", "up"],
                ["route", "add", "default", "via", "198.18.92.1", "dev", "eth0"]):
        run("ip", "-n", name, *cmd)
    return {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "mac": links_in(ns)["eth0"]["mac"], "sandbox": ns}],
            "ips": [{"address": "198.18.92.2/24", "gateway": "198.18.92.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "198.18.92.1"}]}


def _npwg_status(node: Node, namespace: str, name: str) -> list[dict[str, Any]]:
    from ipamd.api import ipam_pb2 as pb

    pods = node.grpc("ListPods", pb.ListPodsRequest(namespace=namespace, name=name)).pods
    return json.loads(pods[0].network_status_json) if pods else []


@pytest.mark.netns
def test_a_pool_default_route_left_to_the_pods_own_is_named_nowhere(node: Node) -> None:
    """The pod has its own IPv4 default route (the cluster network's eth0); its network's pool has ``0.0.0.0/0`` via
    the pool's gateway, which the kernel side leaves out (the pod's own default stays). The ADD result, both statuses
    and CHECK say what the pod has: no default route via the pool's gateway, net1 no default-route gateway; the pool's
    other route is there and named."""
    node.apply(DEFAULT_ROUTE_POOL, sync=False)
    node.apply([pod_manifest("app", [{"type": "Network", "name": "net-gw", "ifName": "net1"}])])
    ns = node.pod_netns("app")
    prev = _cluster_eth0(ns)
    add = node.cni("ADD", "c1", ns, pod=("my-namespace", "app"), conf=node.conf(prevResult=prev))
    assert add.ok, add
    assert add.json["routes"] == [{"dst": "0.0.0.0/0", "gw": "198.18.92.1"},
                                  {"dst": "198.19.12.0/24", "gw": "198.18.12.1"}], "the pool's default is named"
    assert links_in(ns)["net1"]["routes"] == ["198.19.12.0/24 via 198.18.12.1"]
    assert links_in(ns)["eth0"]["routes"] == ["None/0 via 198.18.92.1"], "the pod's own default route stays"
    (entry,) = node.pod_status("my-namespace", "app") or []
    assert entry["ipAddressConfigs"][0]["routes"] == [{"destination": "198.19.12.0/24", "via": "198.18.12.1"}]
    npwg = {e["interface"]: e for e in _npwg_status(node, "my-namespace", "app")}
    assert npwg["eth0"].get("gateway") == ["198.18.92.1"] and npwg["eth0"].get("default") is True
    assert "gateway" not in npwg["net1"] and "default" not in npwg["net1"], "net1 claimed as the default gateway"
    check = node.cni("CHECK", "c1", ns, pod=("my-namespace", "app"), conf=node.conf(prevResult=add.json))
    assert check.ok, check
    again = node.cni("ADD", "c1", ns, pod=("my-namespace", "app"), conf=node.conf(prevResult=prev))
    assert again.ok and again.json == add.json, again
    assert node.cni("DEL", "c1", ns, pod=("my-namespace", "app"), conf=node.conf(prevResult=add.json)).ok
    assert links_in(ns)["eth0"]["routes"] == ["None/0 via 198.18.92.1"]

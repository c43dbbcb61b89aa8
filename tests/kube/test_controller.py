"""The cluster controller: one leader at a time, VLAN IDs handed out once for the cluster, user
IPAddresses allocated before any pod uses them, and a standby taking over when the leader dies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.harness import Node
from tests.kube.conftest import Cluster, ControllerProcess
from tests.kube.test_kube_mode import GROUP


@pytest.fixture
def controllers(cluster: Cluster, controller: ControllerProcess) -> Iterator[list[Node]]:
    """Two node daemons that also run the controller (--controller); the cluster's own controller
    process is stopped meanwhile, so the Lease is theirs to share."""
    def held() -> bool:
        found = cluster.kubectl("get", "lease", "-n", "plexus-system", "plexus-controller", "-o", "json", check=False)
        return found.returncode == 0 and bool(json.loads(found.stdout)["spec"].get("holderIdentity"))

    assert wait_for(held, timeout=30), "the cluster's controller leads"
    with controller.paused():
        lease = cluster.get("lease", "-n", "plexus-system", "plexus-controller")["spec"]
        assert not lease.get("holderIdentity") and lease["leaseDurationSeconds"] == 1, \
            "a leader that stops hands its Lease back: the next one takes over at once, not after 15 s"
        made = [Node(kubeconfig=cluster.kubeconfig, node_name=f"ctl-{i}", extra_args=("--controller",))
                for i in range(2)]
        try:
            for n in made:
                n.start()
            yield made
        finally:
            # stopped (SIGTERM) before closed (SIGKILL): the leader hands the Lease back, so the cluster's controller
            # leads again at once, not once the Lease's 15 s have run out (the next test waits on it)
            for n in made:
                n.stop()
                n.close()


def network(name: str, vlan: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"networkClass": "ctl-class",
                            "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pool"}}}
    if vlan is not None:
        spec["vlan"] = {"id": vlan}
    return {"apiVersion": GROUP, "kind": "Network", "metadata": {"name": name, "namespace": "kctl"}, "spec": spec}


@pytest.mark.netns
def test_controller_assigns_vlans_allocates_ipaddresses_and_fails_over(cluster: Cluster,
                                                                      controllers: list[Node]) -> None:
    cluster.apply([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kctl"}},
        {"apiVersion": GROUP, "kind": "NetworkClass", "metadata": {"name": "ctl-class"},
         "spec": {"vlan": {"idPool": ["800-802"]}}},
        {"apiVersion": GROUP, "kind": "IPAddressPool", "metadata": {"name": "pool", "namespace": "kctl"},
         "spec": {"leaseTTL": "1s", "pools": [{"network": "198.18.70.0/24", "ranges": ["198.18.70.10-198.18.70.20"]}]}},
        network("wants-801", 801), network("a"),
    ])

    def status(name: str) -> dict[str, Any]:
        return cluster.get("network", "-n", "kctl", name).get("status") or {}

    assert wait_for(lambda: status("wants-801").get("vlanID") == 801 and status("a").get("vlanID"), timeout=30)
    assert status("a")["vlanID"] == 800 and status("a")["bridgeName"] == "plx-br-800"
    ready = {c["type"]: c for c in status("a")["conditions"]}["Ready"]
    assert ready["status"] == "True" and ready["reason"] == "NetworkReady"
    # both nodes report their side of the Network (bridge up); the controller counts them
    assert wait_for(lambda: status("a").get("readyNodeAttachementsCount") == 2, timeout=30), status("a")
    conds = {c["type"]: c for c in status("a")["conditions"]}
    assert status("a")["nodeAttachementsCount"] == 2
    assert conds["AllNodeAttachementsAreReady"]["status"] == "True"
    assert conds["AllNodeAttachementsAreReady"]["reason"] == "AllNodeInterfaceAttachmentsAreReady"
    assert conds["Ready"]["status"] == "True"
    nnias = [x for x in cluster.get("nodenetworkinterfaceattachments")["items"]
             if x["spec"]["networkRef"]["name"] == "a"]
    assert sorted(x["spec"]["nodeName"] for x in nnias) == ["ctl-0", "ctl-1"]
    cluster.apply([network("also-801", 801), network("b")])
    assert wait_for(lambda: status("also-801").get("conditions") and status("b").get("vlanID"), timeout=30)
    refused = {c["type"]: c for c in status("also-801")["conditions"]}["Ready"]
    assert refused["status"] == "False" and "801" in refused["message"] and "wants-801" in refused["message"]
    assert status("b")["vlanID"] == 802

    lease = cluster.get("lease", "-n", "plexus-system", "plexus-controller")
    holder = lease["spec"]["holderIdentity"]
    assert holder.endswith(("ctl-0", "ctl-1"))

    # an Auto IPAddress made by a user is allocated at once, before any pod uses it
    cluster.apply([{"apiVersion": GROUP, "kind": "IPAddress", "metadata": {"name": "mine", "namespace": "kctl"},
                    "spec": {"networkRef": {"kind": "Network", "name": "a"}, "type": "Auto"}}])
    allocated = wait_for(lambda: (cluster.get("ipaddress", "-n", "kctl", "mine").get("status") or {}).get("phase")
                         == "Allocated", timeout=30)
    assert allocated
    address = cluster.get("ipaddress", "-n", "kctl", "mine")["status"]["address"]
    leases = [x for x in cluster.get("ipaddresslease")["items"] if x["spec"]["ip"] == address]
    assert [x["spec"]["holder"] for x in leases] == ["IPAddress/kctl/mine"]

    # the leader dies: the standby takes over once the lease is not renewed (15 s)
    leader = next(n for n in controllers if holder.endswith(n.node_name))
    standby = next(n for n in controllers if n is not leader)
    leader.kill()
    assert wait_for(lambda: cluster.get("lease", "-n", "plexus-system", "plexus-controller")["spec"]["holderIdentity"]
                    .endswith(standby.node_name), timeout=40), json.dumps(lease)
    cluster.apply([network("c")])
    assert wait_for(lambda: status("c").get("conditions"), timeout=30)
    assert {c["type"]: c for c in status("c")["conditions"]}["Ready"]["status"] == "False", "the pool 800-802 is used up"


def test_pool_usage_in_the_pools_status_and_the_controllers_metrics(cluster: Cluster,
                                                                    controller: ControllerProcess) -> None:
    import urllib.request

    cluster.apply([{"apiVersion": GROUP, "kind": "ClusterIPAddressPool", "metadata": {"name": "usage"},
                    "spec": {"pools": [{"network": "198.18.99.0/29"}]}},
                   {"apiVersion": GROUP, "kind": "IPAddressLease", "metadata": {"name": "usage-1"},
                    "spec": {"pool": "ClusterIPAddressPool/usage", "ip": "198.18.99.1", "network": "198.18.99.0/29",
                             "holder": "IPAddress/ns/someone", "ttl": "60s"}},
                   {"apiVersion": GROUP, "kind": "IPAddressBlock", "metadata": {"name": "usage-block"},
                    "spec": {"pool": "ClusterIPAddressPool/usage", "cidr": "198.18.99.0/28", "node": "node-x"}}])
    try:
        def status() -> dict[str, Any]:
            return cluster.get("clusteripaddresspool", "usage").get("status") or {}

        assert wait_for(lambda: status().get("used") == 1, timeout=30), status()
        assert status() == {"size": 6, "used": 1, "quarantined": 0, "free": 5,
                            "blocks": [{"node": "node-x", "count": 1}]}
        with urllib.request.urlopen(f"http://127.0.0.1:{controller.health_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert 'plexus_pool_addresses{pool="ClusterIPAddressPool/usage",state="free"} 5.0' in text, text[-2000:]
        assert 'plexus_node_blocks{node="node-x",pool="ClusterIPAddressPool/usage"} 1.0' in text, text[-2000:]
        shown = cluster.kubectl("get", "clusteripaddresspool", "usage").stdout
        assert shown.split("\n")[0].split()[:5] == ["NAME", "TTL", "USED", "QUARANTINED", "FREE"], shown
    finally:
        cluster.kubectl("delete", "ipaddresslease", "usage-1", check=False)
        cluster.kubectl("delete", "ipaddressblock", "usage-block", check=False)
        cluster.kubectl("delete", "clusteripaddresspool", "usage", check=False)

"""The packaged controller (its own ServiceAccount and RBAC) gives back what vanished nodes held, on a real API server:
the blocks of a node silent past ``--block-ttl`` with no pod bound to it, and of a deleted Node after a few missed
renewals; the leases of the gone pods are quarantined and then expire, a lease held by an IPAddress that still
exists stays; a node with a pod still bound to it, or whose Node object is there, keeps everything."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from ipamd.ipam.allocator import to_int
from ipamd.ipam.blocks import Block
from ipamd.kube.blocks import KIND as BLOCK_KIND
from ipamd.kube.blocks import block_body
from ipamd.kube.client import kube_api
from ipamd.kube.heartbeat import NAMESPACE as HEARTBEATS
from ipamd.kube.heartbeat import heartbeat_body
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import QUARANTINE_MANAGER, lease_body, quarantined_at
from ipamd.kube.reclaim import GONE_GRACE_S
from ipamd.kube.resources import CustomObjects
from ipamd.model.timefmt import rfc3339
from tests.conftest import wait_for
from tests.kube.conftest import Cluster, ControllerProcess
from tests.kube.test_kube_mode import GROUP

NS = "kreclaim"
TEST_LABEL = "network.deckhouse.io/test"  # what the test made, to delete it
POOL = f"{NS}/pool"
#: node -> (seconds since its last renewal, whether its Node object exists, whether a pod is bound to it)
GHOSTS = {"ghost-silent": (3600, False, False), "ghost-busy": (3600, True, True),
          "ghost-deleted": (GONE_GRACE_S + 60, False, False), "ghost-present": (GONE_GRACE_S + 60, True, False)}


@pytest.fixture
def api(cluster: Cluster) -> Iterator[CustomObjects]:
    def terminating() -> bool:
        phase = cluster.kubectl("get", "namespace", NS, "-o", "jsonpath={.status.phase}", check=False)
        return phase.returncode == 0 and phase.stdout.strip() == "Terminating"

    # every test here uses the namespace, deleted at the end of the one before without waiting: a namespace still
    # being deleted takes no new object
    assert wait_for(lambda: not terminating(), timeout=120), f"namespace {NS} is still being deleted"
    made = kube_api(str(cluster.kubeconfig))
    objects = CustomObjects(made)
    cluster.apply([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": GROUP, "kind": "IPAddressPool", "metadata": {"name": "pool", "namespace": NS},
         "spec": {"leaseTTL": "1s", "pools": [{"network": "198.18.76.0/24"}]}},
        # an IPAddress a user made: what it holds is its own, wherever its pod ran
        {"apiVersion": GROUP, "kind": "IPAddress", "metadata": {"name": "user-ip", "namespace": NS},
         "spec": {"type": "Static", "static": {"ip": "198.18.99.1"}, "networkRef": {"kind": "Network", "name": "x"}}},
    ])
    try:
        yield objects
    finally:
        cluster.kubectl("delete", "pod", "-n", NS, "--all", "--grace-period=0", "--force", check=False)
        for name in list(GHOSTS):
            cluster.kubectl("delete", "node", name, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "ipaddressblocks,ipaddressleases", "-l", f"{TEST_LABEL}={NS}",
                        "--ignore-not-found", check=False)
        cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        made.close()


def make_ghost(cluster: Cluster, objects: CustomObjects, node: str, n: int) -> dict[str, str]:
    """A block of ``node`` last renewed long ago, and two leases in it: one of a gone pod, one of ``user-ip``."""
    silent, has_node, has_pod = GHOSTS[node]
    if has_node:
        cluster.apply([{"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}])
    if has_pod:
        cluster.apply([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"on-{node}", "namespace": NS},
                        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "pause"}]}}])
    names = {}
    for k, holder in ((1, f"IPAddress/{NS}/auto-of-a-gone-pod"), (2, f"IPAddress/{NS}/user-ip")):
        lease = lease_body(POOL, f"198.18.76.{16 * n + k}", "198.18.76.0/24", holder, 1, node)
        lease["metadata"]["labels"][TEST_LABEL] = NS
        objects.create(LEASE_KIND, lease)
        names["gone" if k == 1 else "user"] = lease["metadata"]["name"]
    # the block last, once its leases are there: a controller round between the two found the node silent with
    # nothing to give back but its block, and looks at a reclaimed node again only once a minute
    first = to_int(f"198.18.76.{16 * n}")
    body = block_body(Block(POOL, first, 16, node))
    body["metadata"]["labels"][TEST_LABEL] = NS
    objects.create(BLOCK_KIND, body)
    objects.patch_status(BLOCK_KIND, body["metadata"]["name"], {"renewTime": rfc3339(time.time() - silent)})
    names["block"] = body["metadata"]["name"]
    return names


def exists(objects: CustomObjects, kind: str, name: str) -> dict[str, Any] | None:
    try:
        return objects.get(kind, name)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_the_controller_reclaims_vanished_nodes_only(cluster: Cluster, controller: ControllerProcess,
                                                     api: CustomObjects) -> None:
    made = {node: make_ghost(cluster, api, node, n) for n, node in enumerate(GHOSTS, start=1)}
    gone = ("ghost-silent", "ghost-deleted")

    def reclaimed() -> bool:
        return all(exists(api, BLOCK_KIND, made[n]["block"]) is None and exists(api, LEASE_KIND, made[n]["gone"]) is None
                   for n in gone)

    assert wait_for(reclaimed, timeout=30), \
        f"blocks and gone pods' leases of {gone} given back; controller log:\n{controller.log.read_text()[-3000:]}"
    for node in gone:
        user = exists(api, LEASE_KIND, made[node]["user"])
        assert user is not None and user["spec"]["holder"] == f"IPAddress/{NS}/user-ip", \
            "held by an IPAddress that exists: kept"
    time.sleep(3)  # a few more controller rounds: the rest must stay as it is
    for node in ("ghost-busy", "ghost-present"):
        assert exists(api, BLOCK_KIND, made[node]["block"]) is not None, f"{node}: kept"
        lease = exists(api, LEASE_KIND, made[node]["gone"])
        assert lease is not None and lease["spec"].get("holder"), f"{node}: its leases held"
    assert "reclaimed node ghost-silent" in controller.log.read_text()


def test_a_node_without_blocks_is_reclaimed_by_its_heartbeat(cluster: Cluster, controller: ControllerProcess,
                                                             api: CustomObjects) -> None:
    """A node that leased every address by itself has no block to renew, only its heartbeat (the Lease
    plexus-node-<node> in plexus-node-lease): silent for an hour with no Node object and no pod, its gone pod's lease
    is given back and its heartbeat deleted; a node that renewed its heartbeat just now keeps everything."""
    made: dict[str, str] = {}
    try:
        for n, (node, age) in enumerate((("ghost-solo", 3600), ("ghost-beating", 0)), start=10):
            beat = heartbeat_body(node, HEARTBEATS, time.time() - age)
            beat["metadata"]["labels"][TEST_LABEL] = NS
            cluster.apply([beat])
            lease = lease_body(POOL, f"198.18.76.{16 * n + 1}", "198.18.76.0/24", f"IPAddress/{NS}/gone-{n}", 1, node)
            lease["metadata"]["labels"][TEST_LABEL] = NS
            api.create(LEASE_KIND, lease)
            made[node] = lease["metadata"]["name"]

        def beats() -> set[str]:
            items = cluster.get("lease.coordination.k8s.io", "-n", HEARTBEATS, "-l", f"{TEST_LABEL}={NS}")["items"]
            return {b["spec"]["holderIdentity"] for b in items}

        assert wait_for(lambda: exists(api, LEASE_KIND, made["ghost-solo"]) is None, timeout=60), \
            f"ghost-solo's lease given back; controller log:\n{controller.log.read_text()[-3000:]}"
        assert wait_for(lambda: beats() == {"ghost-beating"}, timeout=10), beats()
        kept = exists(api, LEASE_KIND, made["ghost-beating"])
        assert kept is not None and kept["spec"].get("holder"), "renewed just now: kept"
    finally:
        cluster.kubectl("delete", "lease.coordination.k8s.io", "-n", HEARTBEATS, "-l", f"{TEST_LABEL}={NS}",
                        "--ignore-not-found", check=False)


def test_a_quarantine_is_timed_by_the_api_servers_stamp_whatever_the_writers_clock(
        cluster: Cluster, api: CustomObjects) -> None:
    """What the controller judges quarantines and silences by, on a real API server: its clock as its answers' Date
    headers tell it, and the managedFields time of the write that began a quarantine, stamped anew each time one
    begins again (not the orphaning time a node wrote, by a clock that may be hours behind)."""
    made = kube_api(str(cluster.kubeconfig))
    try:
        writer = CustomObjects(made)
        lease = lease_body(POOL, "198.18.76.250", "198.18.76.0/24", f"IPAddress/{NS}/user-ip", 3600, "clock-test")
        lease["metadata"]["labels"][TEST_LABEL] = NS
        name = lease["metadata"]["name"]
        writer.create(LEASE_KIND, lease)
        assert abs(made.server_clock.offset) < 2, "the API server runs on this machine: its clock is this one"
        hours_behind = rfc3339(time.time() - 7200)
        writer.patch_status(LEASE_KIND, name, {"orphaningTimestamp": hours_behind}, field_manager=QUARANTINE_MANAGER)
        first = quarantined_at(writer.get(LEASE_KIND, name))
        assert first is not None and abs(first - made.server_clock.now()) < 3, "the server's stamp, not the node's time"
        writer.patch_status(LEASE_KIND, name, {"orphaningTimestamp": None})  # adopted (another manager)
        assert quarantined_at(writer.get(LEASE_KIND, name)) is None
        time.sleep(1.1)  # (managedFields times are whole seconds)
        writer.patch_status(LEASE_KIND, name, {"orphaningTimestamp": hours_behind}, field_manager=QUARANTINE_MANAGER)
        again = quarantined_at(writer.get(LEASE_KIND, name))
        assert again is not None and again > first, "a quarantine begun again is timed from its new start"
    finally:
        made.close()

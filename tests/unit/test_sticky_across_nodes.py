"""Addresses that outlive their pods across nodes (a user's IPAddress, an IPAMClaim, their lease objects), in
interleavings found in review, each failing on the code before its fix."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from cni.errors import AddressConflict, CniError
from ipamd.ipam.addresses import Ipam
from ipamd.ipam.delegated import DelegatedAddresses
from ipamd.kube.blocks import BlockRegistry
from ipamd.kube.outbox import Outbox
from ipamd.kube.publisher import KubePublisher
from ipamd.model.objects import (
    CLUSTER_IP_ADDRESS_POOL,
    NPWG_CLAIM_API_VERSION,
    USED_BY_ANNOTATION,
    AddressPool,
    parse_object,
)
from ipamd.node.reconcile import Reconciler
from ipamd.store.records import LeaseRecord
from ipamd.store.sqlite import Store
from ipamd.verbs.call import CniCall
from ipamd.verbs.ipam_plugin import IpamPlugin
from tests.fakes.cluster import FakeApi, FakeCache
from tests.fakes.source import FakeSource
from tests.unit import test_plexus_ipam as tpi
from tests.unit.test_attacher import NS, obj
from tests.unit.test_attacher_kube import KubeNode, a_pod
from tests.unit.test_ipaddress_users import rounds_of, used_by

STICKY = [{"type": "Network", "name": "net-a", "ifName": "net1", "ipAddressNames": ["sticky"]}]


def sticky() -> Any:
    return obj("IPAddress", "sticky", {"networkRef": {"kind": "Network", "name": "net-a"}, "type": "Auto"})


def test_a_users_auto_ipaddress_replaced_while_in_use_is_refused_to_another_nodes_pod() -> None:
    """pa on n1 uses a user's Auto IPAddress ``sticky``; it is replaced whole (``kubectl replace`` drops the used-by
    annotation). pb on n2 names it before n1's reconciler writes pa on it again: README promises it is refused "all the
    same, by what the lease object says" (as for a Static), but an Auto IPAddress's lease object never has its pod
    written on it (keep_in_use is only for Statics): n2 writes pb, takes the lease object up, and pb gets pa's
    address while pa still runs."""
    api = FakeApi()
    a, b = KubeNode(api, "n1"), KubeNode(api, "n2")
    for node in (a, b):
        node.source.add(sticky())
        node.source.add(a_pod("pa", STICKY, "uid-pa"))
        node.source.add(a_pod("pb", STICKY, "uid-pb"))
    first = a.call("ADD", "pa", "uid-pa", "ca")["ips"][0]["address"]
    a.outbox.flush()
    rounds_of(a).run_once()
    a.outbox.flush()
    assert used_by(api, "sticky")["uid"] == "uid-pa"
    api.patch("IPAddress", "sticky", {"metadata": {"annotations": {USED_BY_ANNOTATION: None}}}, NS)  # replaced whole
    got = None
    with pytest.raises(AddressConflict):
        got = b.call("ADD", "pb", "uid-pb", "cb")["ips"][0]["address"]
    assert got != first, "pb got the address pa still uses"


# -- IPAMClaims across nodes -----------------------------------------------------------------------------------------

SMALL = {"ipAddressPoolRef": {"kind": "ClusterIPAddressPool", "name": "tiny"}}


class _Objects:
    """The publisher's CustomObjects over the fake API (it passes a timeout the fake does not take)."""

    def __init__(self, api: FakeApi) -> None:
        self.api = api

    def patch_status(self, kind: str, name: str, status: dict[str, Any], namespace: str = "", **_: Any) -> Any:
        return self.api.patch_status(kind, name, status, namespace)

    def get(self, kind: str, name: str, namespace: str = "", **_: Any) -> Any:
        return self.api.get(kind, name, namespace)


def _claim_from_api(api: FakeApi) -> Any:
    doc = api.get("IPAMClaim", "vm", tpi.NS)
    return parse_object({"apiVersion": NPWG_CLAIM_API_VERSION, "kind": "IPAMClaim", **doc})


def _launcher(name: str, uid: str) -> Any:
    return tpi.pod(name, uid, [{"name": "nad-a", "interface": "net1", "ipam-claim-reference": "vm"}])


class ClaimNode:
    def __init__(self, api: FakeApi, name: str, store: Store | None = None) -> None:
        self.name = name
        self.api = api
        self.store = store or Store(":memory:")
        senders = api.senders()
        senders["patch_status"] = lambda b: api.patch_status(b["kind"], b["name"], b["status"], b.get("namespace", ""))
        self.outbox = Outbox(self.store, senders)
        self.registry = BlockRegistry(FakeCache(api), name, self.outbox, spawn=lambda run: run())  # type: ignore[arg-type]
        self.source = FakeSource(tpi.obj("ClusterIPAddressPool", "tiny", {"pools": [{"network": "198.18.54.0/28"}],
                                                                          "leaseTTL": "1h"}, ns=""),
                                 _claim_from_api(api))
        self.ipam = Ipam(self.store, self.source, registry=self.registry)
        from kubernetes import client
        self.publisher = KubePublisher(client.ApiClient(), name, self.outbox)
        self.publisher.objects = _Objects(api)  # type: ignore[assignment]
        self.plugin = IpamPlugin(DelegatedAddresses(self.ipam, self.source), self.source, lambda: True,
                                 self.publisher)

    def call(self, verb: str, pod_name: str, uid: str, container: str) -> dict[str, Any]:
        args = {"K8S_POD_NAMESPACE": tpi.NS, "K8S_POD_NAME": pod_name, "K8S_POD_UID": uid}
        conf = {"cniVersion": "1.0.0", "name": "nad-a", "type": "macvlan", "ipam": {"type": "plexus-ipam", **SMALL}}
        return self.plugin.handle(CniCall(verb, container, "/run/netns/x", "net1", args, conf))


def _with_a_vm_claim() -> FakeApi:
    """A fake API server holding the IPAMClaim ``vm`` of the VM's interface on nad-a."""
    api = FakeApi()
    api.create("IPAMClaim", {"metadata": {"name": "vm", "namespace": tpi.NS, "uid": "uid-claim"},
                             "spec": {"network": "nad-a", "interface": "net1"}}, tpi.NS)
    return api


def test_a_restart_of_the_node_a_vm_left_does_not_erase_the_claims_owner_written_by_its_new_node() -> None:
    """The VM's launcher pod ran on n1 (the claim's record and lease stay in n1's store after its DEL), and the VM was
    restarted on n2: n2 took the lease up and wrote ``ownerPod: virt-launcher-vm-b``, which is what refuses another
    node's pod the claim (``DelegatedAddresses._check_owner``). n1's daemon then restarts (a DaemonSet rollout):
    ``recover`` -> ``KubePublisher.republish`` owes the status of every record of n1's store, the stale claim's
    ``ownerPod: None`` included, an unconditional status patch that erases n2's owner. A live migration's target pod
    on n3 is then not refused while virt-launcher-vm-b runs, and gets the same address."""
    api = _with_a_vm_claim()
    n1 = ClaimNode(api, "n1")
    n1.source.add(_launcher("virt-launcher-vm-a", "uid-a"))
    first = n1.call("ADD", "virt-launcher-vm-a", "uid-a", "ca")["ips"][0]["address"]
    n1.outbox.flush()
    n1.call("DEL", "virt-launcher-vm-a", "uid-a", "ca")  # the VM stopped: ownerPod cleared
    n1.outbox.flush()
    assert not api.get("IPAMClaim", "vm", tpi.NS)["status"].get("ownerPod")

    n2 = ClaimNode(api, "n2")  # the VM started again on n2
    n2.source.add(_launcher("virt-launcher-vm-b", "uid-b"))
    assert n2.call("ADD", "virt-launcher-vm-b", "uid-b", "cb")["ips"][0]["address"] == first, "the same address"
    n2.outbox.flush()
    assert api.get("IPAMClaim", "vm", tpi.NS)["status"]["ownerPod"] == "virt-launcher-vm-b"

    _restarted(n1)  # n1's daemon restarts over its store
    assert api.get("IPAMClaim", "vm", tpi.NS)["status"].get("ownerPod") == "virt-launcher-vm-b", \
        "n1's restart erased the owner n2 wrote"


def test_a_claims_owner_erased_by_another_nodes_restart_lets_a_second_pod_take_its_address() -> None:
    """The consequence of the above, end to end: n3's launcher pod (a live migration's target, or any other pod naming
    the claim) while virt-launcher-vm-b still runs on n2 is refused by README's promise (code 104); it is not."""
    api = _with_a_vm_claim()
    n1 = ClaimNode(api, "n1")
    n1.source.add(_launcher("virt-launcher-vm-a", "uid-a"))
    first = n1.call("ADD", "virt-launcher-vm-a", "uid-a", "ca")["ips"][0]["address"]
    n1.call("DEL", "virt-launcher-vm-a", "uid-a", "ca")
    n1.outbox.flush()
    n2 = ClaimNode(api, "n2")
    n2.source.add(_launcher("virt-launcher-vm-b", "uid-b"))
    n2.call("ADD", "virt-launcher-vm-b", "uid-b", "cb")
    n2.outbox.flush()
    _restarted(n1)

    n3 = ClaimNode(api, "n3")  # its cache shows the claim as the API has it now
    n3.source.add(_launcher("virt-launcher-vm-c", "uid-c"))
    n3.source.late[(tpi.NS, "virt-launcher-vm-b")] = _launcher("virt-launcher-vm-b", "uid-b")  # still exists
    got = None
    with pytest.raises(CniError):
        got = n3.call("ADD", "virt-launcher-vm-c", "uid-c", "cc")["ips"][0]["address"]
    assert got != first


def test_a_claims_release_owed_in_an_outage_does_not_clear_the_owner_written_after_it() -> None:
    """The VM's pod lets go of the claim while the API server does not answer: the release (clear ownerPod while it
    names that pod) is owed. The pod is made again under the same name (a StatefulSet member, a VM restarted on this
    node) and its ADD writes ownerPod: the owed release, older, must not land after it and clear the new owner."""
    api = _with_a_vm_claim()
    n1 = ClaimNode(api, "n1")
    n1.source.add(_launcher("virt-launcher-vm-a", "uid-a"))
    n1.call("ADD", "virt-launcher-vm-a", "uid-a", "ca")
    n1.outbox.flush()
    reads = n1.publisher.objects.get

    def away(*a: Any, **k: Any) -> Any:
        raise ConnectionRefusedError("the API server is away")

    n1.publisher.objects.get = away  # type: ignore[method-assign]
    n1.call("DEL", "virt-launcher-vm-a", "uid-a", "ca")
    assert n1.outbox.owes(f"IPAMClaim/{tpi.NS}/vm"), "the release is owed"
    n1.publisher.objects.get = reads  # type: ignore[method-assign]
    n1.outbox.answered()  # the API server is back
    n1.source.add(_launcher("virt-launcher-vm-a", "uid-a2"))  # made again under the same name
    n1.call("ADD", "virt-launcher-vm-a", "uid-a2", "ca2")
    n1.outbox.flush()
    assert api.get("IPAMClaim", "vm", tpi.NS)["status"].get("ownerPod") == "virt-launcher-vm-a", \
        "the older owed release cleared the owner the newer ADD wrote"


def _claim(api: FakeApi) -> None:
    api.create("IPAMClaim", {"metadata": {"name": "vm", "namespace": tpi.NS, "uid": "uid-claim"},
                             "spec": {"network": "nad-a", "interface": "net1"}}, tpi.NS)


def _owner(api: FakeApi) -> Any:
    return (api.get("IPAMClaim", "vm", tpi.NS).get("status") or {}).get("ownerPod")

def _vm_a_running(api: FakeApi) -> ClaimNode:
    """The claim, and the VM's pod using it on n1: its owner written."""
    _claim(api)
    n1 = ClaimNode(api, "n1")
    n1.source.add(_launcher("virt-launcher-vm-a", "uid-a"))
    n1.call("ADD", "virt-launcher-vm-a", "uid-a", "ca")
    n1.outbox.flush()
    assert _owner(api) == "virt-launcher-vm-a"
    return n1


def _restarted(node: ClaimNode) -> None:
    """``node``'s daemon started again over its store (``Reconciler.recover``), its owed writes then made."""
    restarted = ClaimNode(node.api, node.name, store=node.store)
    Reconciler(restarted.store, restarted.source, restarted.ipam, None, None, restarted.publisher,  # type: ignore[arg-type]
               cluster=True).recover()
    restarted.outbox.flush()


class _Killed(Exception):
    pass


def _killed(*a: Any, **k: Any) -> None:
    raise _Killed("after the release's commit")



def test_a_restart_keeps_the_release_owed_during_an_outage() -> None:
    """The VM's pod lets go of the claim while the API server does not answer: the release (``was``) is owed, durably.
    The daemon restarts before the API is back (a DaemonSet rollout, a node reboot): ``republish`` owes a plain
    ``claim_status`` of the unused claim (no ownerPod, no ``was``) with ``supersede=True``, on the same op since 0132ceb,
    and drops the owed release. ownerPod names the pod let go of for ever (until another pod takes the claim): a
    pod of that name that still exists refuses every other node's pod the claim, and each such ADD waits out
    ``wait_for_pod``."""
    api = FakeApi()
    n1 = _vm_a_running(api)

    def away(*a: Any, **k: Any) -> Any:
        raise ConnectionRefusedError("the API server is away")

    n1.publisher.objects.get = away  # type: ignore[method-assign]
    n1.call("DEL", "virt-launcher-vm-a", "uid-a", "ca")
    assert [e.body.get("was") for e in n1.outbox.owed(f"IPAMClaim/{tpi.NS}/vm")] == ["virt-launcher-vm-a"]

    _restarted(n1)  # the daemon restarts over its store; the API is back
    assert not _owner(api), "the release owed before the restart was superseded by republish: ownerPod never cleared"


def test_a_direct_write_answered_does_not_drop_a_newer_write_owed_meanwhile() -> None:
    """ee035d1 drops the target's owed writes of the op *after* the direct write answers: also those owed while it
    was in flight. A claim's writers hold no lock (unlike a pod's statuses): n1 lets go of the claim for
    virt-launcher-vm-a (its DEL, or the reconciler's ``_release_gone_claim_users``), and while that write is in flight
    another write of n1 goes unanswered (``api_away``) and virt-launcher-vm-b's ADD on n1 owes
    ``ownerPod: virt-launcher-vm-b``. The release answers and drops it: the claim shows no owner while vm-b holds it,
    and another node's pod naming it is not refused."""
    api = FakeApi()
    _claim(api)
    n1 = ClaimNode(api, "n1")
    n1.source.add(_launcher("virt-launcher-vm-a", "uid-a"))
    n1.source.add(_launcher("virt-launcher-vm-b", "uid-b"))
    n1.call("ADD", "virt-launcher-vm-a", "uid-a", "ca")
    n1.outbox.flush()
    assert _owner(api) == "virt-launcher-vm-a"
    real = n1.publisher.objects.patch_status
    once: list[bool] = []

    def in_flight(*a: Any, **k: Any) -> Any:
        if not once:
            once.append(True)
            n1.outbox.unanswered()  # another call's write just timed out: calls owe theirs for a while
            n1.call("ADD", "virt-launcher-vm-b", "uid-b", "cb")  # its claim status owed, not written
            assert any(e.body.get("status", {}).get("ownerPod") == "virt-launcher-vm-b"
                       for e in n1.outbox.owed(f"IPAMClaim/{tpi.NS}/vm"))
        return real(*a, **k)

    n1.publisher.objects.patch_status = in_flight  # type: ignore[method-assign]
    n1.call("DEL", "virt-launcher-vm-a", "uid-a", "ca")
    n1.publisher.objects.patch_status = real  # type: ignore[method-assign]
    n1.outbox.flush()
    assert _owner(api) == "virt-launcher-vm-b", "the newer owed ownerPod was dropped by the older write's answer"


def test_a_daemon_killed_right_after_a_claims_release_still_clears_its_owner() -> None:
    """The VM's pod lets go of the claim (its DEL commits) and the daemon is SIGKILLed before the claim's status is
    written: the release is owed in that commit, so the restart still clears ``ownerPod`` (it named the pod gone)."""
    api = FakeApi()
    n1 = _vm_a_running(api)

    n1.publisher.claim_released = _killed  # type: ignore[method-assign]
    with pytest.raises(_Killed):
        n1.call("DEL", "virt-launcher-vm-a", "uid-a", "ca")
    _restarted(n1)
    assert not _owner(api), "the pod let go of the claim; its owner stayed written"


def test_a_daemon_killed_right_after_releasing_a_gone_pods_claim_still_clears_its_owner() -> None:
    """The VM's pod is gone and its DEL never came (plexus-ipam exec'd by another meta-plugin, the node crashed): the
    reconciler lets the claim go, and the daemon is SIGKILLed before the claim's status is written. The release is
    owed in that commit: the restart still clears ``ownerPod``."""
    api = FakeApi()
    n1 = _vm_a_running(api)
    n1.source.remove("Pod", tpi.NS, "virt-launcher-vm-a")  # gone, no DEL

    n1.publisher.claim_released = _killed  # type: ignore[method-assign]
    rounds = Reconciler(n1.store, n1.source, n1.ipam, None, None, n1.publisher,  # type: ignore[arg-type]
                        cluster=True)
    rounds._release_gone_claim_users()  # (the kill is logged by the round, as any failure there)
    assert not n1.store.get_ip(f"IPAMClaim/{tpi.NS}/vm").used_by_pods  # type: ignore[union-attr]
    _restarted(n1)
    assert not _owner(api), "the pod gone let go of the claim; its owner stayed written"


def _a_client_on_n1() -> tuple[ClaimNode, ClaimNode, AddressPool, LeaseRecord]:
    """Nodes n1 and n2 of one cluster, n1's gRPC client ``client`` holding an address of ClusterIPAddressPool tiny:
    n2's view of that pool, and n1's lease."""
    api = _with_a_vm_claim()
    n1, n2 = ClaimNode(api, "n1"), ClaimNode(api, "n2")
    tiny1, tiny2 = n1.source.get(CLUSTER_IP_ADDRESS_POOL, "", "tiny"), n2.source.get(CLUSTER_IP_ADDRESS_POOL, "", "tiny")
    assert tiny1 is not None and tiny2 is not None
    _, on_n1 = n1.ipam.allocate_for("client", tiny1)
    n1.outbox.flush()
    return n1, n2, tiny2, on_n1


def test_two_nodes_grpc_clients_of_one_owner_name_never_hold_one_address() -> None:
    """A gRPC client's lease (``api/<owner>``) is asked for on its node (ipamd/ipam/addresses.py, PORTABLE's comment),
    and each node's store holds it. A client on n2 that happens to use the owner name of a client on n1 (a DaemonSet's
    clients all named alike, say) finds n1's lease object by holder (``registry.held_by`` in ``Ipam._secure``), takes
    it up, and was answered n1's address while n1's store and client still held it: one address on two nodes."""
    n1, n2, tiny2, on_n1 = _a_client_on_n1()
    _, on_n2 = n2.ipam.allocate_for("client", tiny2)
    n2.outbox.flush()
    assert n1.store.lease_at(on_n1.pool, on_n1.ip) is not None, "n1 still holds it"
    assert on_n2.address != on_n1.address, f"{on_n1.address} held by n1's and n2's stores at once"



def test_grpc_exact_address_of_another_nodes_client_of_the_same_owner_is_not_taken_up() -> None:
    """The same with an exact address: the lease object of n1's client was taken for this holder's own (the
    "ours already" of a claim's 409), and answered to n2's client while n1's store and client held it."""
    n1, n2, tiny2, on_n1 = _a_client_on_n1()
    got = None
    with contextlib.suppress(CniError):
        _, lease = n2.ipam.allocate_for("client", tiny2, on_n1.address)  # exactly the address n1's client holds
        got = lease.address
    assert n1.store.lease_at(on_n1.pool, on_n1.ip) is not None, "n1 still holds it"
    assert got != on_n1.address, f"{on_n1.address} answered to n2's client while n1's store and client hold it"


# -- 2. _return: no version in the cache (it shows the window another node's, or nothing) = a delete with no
#       precondition -----------------------------------------------------------------------------------------------

"""IPAMClaims, mended after a review (each failing on the code before its fix): GC judges a claim's users by the CNI
network each was added on; a failed ADD's undo keeps a claim another attachment took up meanwhile."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import pytest

from cni.errors import CniError, IOFailure
from ipamd.ipam.delegated import AddressRequest, ipam_config_of
from ipamd.model.objects import NPWG_CLAIM_API_VERSION
from ipamd.store.records import dump
from ipamd.store.sqlite import Store
from tests.fakes.exec import Expected, FakeExec
from tests.unit import test_plexus_ipam as tpi
from tests.unit.delegation_node import add, attacher_node, npwg_pod


def _static_address(call: tuple[str, str, dict[str, str], dict[str, Any]]) -> str:
    return str(call[3]["ipam"]["addresses"][0]["address"])


# -- A. plexus-ipam GC judges an IPAMClaim's users by the NAD's name, not by the CNI network GC is about ---------------

def _claimed(node: tpi.Node, pod_name: str, uid: str, nad: str = "nad-a") -> None:
    node.source.add(tpi.pod(pod_name, uid, [{"name": nad, "interface": "net1", "ipam-claim-reference": "db-0"}]))


def _db0_claimed() -> tpi.Node:
    """A node with IPAMClaim db-0, and pod db-0 (uid-1) naming it."""
    node = tpi.Node()
    node.source.add(tpi.claim("db-0"))
    _claimed(node, "db-0", "uid-1")
    return node


def _nad_a_named(node: tpi.Node, conf_name: str) -> None:
    """NAD nad-a whose CNI configuration is named ``conf_name`` (plexus-ipam under Multus: the call's network)."""
    node.source.add(tpi.obj("NetworkAttachmentDefinition", "nad-a", {"config": json.dumps(
        {"cniVersion": "1.0.0", "name": conf_name, "type": "macvlan"})}, api="k8s.cni.cncf.io/v1"))


def test_gc_of_another_configuration_named_like_the_claims_nad_does_not_release_its_live_user() -> None:
    node = _db0_claimed()
    _nad_a_named(node, "macvlan-conf")
    _claimed(node, "thief", "uid-t")
    first = node.call("ADD", tpi.SHARED, container="live", network="macvlan-conf", pod_name="db-0", uid="uid-1")
    none: dict[str, Any] = {"cni.dev/valid-attachments": []}
    node.call("GC", tpi.SHARED, network="nad-a", **none)  # another configuration, that happens to be named nad-a
    try:
        got = node.call("ADD", tpi.SHARED, container="c2", network="macvlan-conf", pod_name="thief", uid="uid-t")
    except CniError:
        return
    assert got["ips"] != first["ips"], "the claim's address given to a second pod while db-0 uses it"


def test_gc_of_the_claims_own_configuration_releases_its_stale_user() -> None:
    node = _db0_claimed()
    _nad_a_named(node, "macvlan-conf")
    node.call("ADD", tpi.SHARED, container="stale", network="macvlan-conf", pod_name="db-0", uid="uid-1")
    none: dict[str, Any] = {"cni.dev/valid-attachments": []}
    node.call("GC", tpi.SHARED, network="macvlan-conf", **none)
    (rec,) = node.store.all_ips()
    assert rec.used_by_uids == (), "GC of the claim's own network left its stale attachment on it"
    assert rec.user_networks == (), "the let-go user's network goes with it"


def test_a_claims_users_each_keep_the_network_they_were_added_on_and_del_drops_it() -> None:
    node = _db0_claimed()
    _nad_a_named(node, "macvlan-conf")
    node.call("ADD", tpi.SHARED, container="old", network="macvlan-conf", pod_name="db-0", uid="uid-1")
    _nad_a_named(node, "other-conf")  # the NAD's configuration renamed before the pod's new sandbox
    node.call("ADD", tpi.SHARED, container="new", network="other-conf", pod_name="db-0", uid="uid-1")
    (rec,) = node.store.all_ips()
    assert rec.network_name == f"{tpi.NS}/nad-a", "the claim's record still names its NAD"
    assert rec.user_networks == (("old/net1", "macvlan-conf"), ("new/net1", "other-conf"))
    keep_new: dict[str, Any] = {"cni.dev/valid-attachments": [{"containerID": "new", "ifname": "net1"}]}
    none: dict[str, Any] = {"cni.dev/valid-attachments": []}
    node.call("GC", tpi.SHARED, network="other-conf", **keep_new)
    node.call("GC", tpi.SHARED, network="macvlan-conf", **none)
    (rec,) = node.store.all_ips()
    assert rec.used_by_uids == ("new/net1",) and rec.user_networks == (("new/net1", "other-conf"),)
    node.call("DEL", tpi.SHARED, container="new", network="other-conf", pod_name="db-0", uid="uid-1")
    (rec,) = node.store.all_ips()
    assert (rec.used_by_uids, rec.user_networks) == ((), ())


def test_gc_leaves_a_claim_user_of_a_record_from_the_previous_version_whose_network_is_unknown() -> None:
    """A record written before users' networks were kept names none: no GC can tell its user is its own, so none lets
    go of it (its DEL, or the reconciler once its pod is gone, still does)."""
    node = _db0_claimed()
    node.call("ADD", tpi.SHARED, container="live", network="nad-a", pod_name="db-0", uid="uid-1")
    key = f"IPAMClaim/{tpi.NS}/db-0"
    old = json.loads(node.store.ips[key])
    del old["user_networks"]  # as the previous version wrote it
    node.store.ips[key] = json.dumps(old)
    none: dict[str, Any] = {"cni.dev/valid-attachments": []}
    for network in ("nad-a", f"{tpi.NS}/nad-a", "macvlan-conf"):
        node.call("GC", tpi.SHARED, network=network, **none)
    (rec,) = node.store.all_ips()
    assert rec.used_by_uids == ("live/net1",) and rec.user_networks == ()
    node.call("DEL", tpi.SHARED, container="live", network="nad-a", pod_name="db-0", uid="uid-1")
    (rec,) = node.store.all_ips()
    assert rec.used_by_uids == (), "its DEL still lets go"


def test_the_sqlite_store_reads_an_ip_record_written_without_user_networks() -> None:
    node = _db0_claimed()
    _nad_a_named(node, "macvlan-conf")
    node.call("ADD", tpi.SHARED, container="live", network="macvlan-conf", pod_name="db-0", uid="uid-1")
    (rec,) = node.store.all_ips()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(os.path.join(tmp, "state.db"))
        try:
            store.put_ip(rec)
            assert store.get_ip(rec.key) == rec, "written and read back whole"
            old = json.loads(dump(rec))
            del old["user_networks"]
            store._x("UPDATE ipaddresses SET data=? WHERE key=?", (json.dumps(old), rec.key))
            got = store.get_ip(rec.key)
            assert got is not None and got.used_by_uids == ("live/net1",) and got.user_networks == ()
        finally:
            store.close()


# -- B. A failed ADD's undo deletes an IPAMClaim's record that another attachment took up meanwhile --------------------

class _HookExec(FakeExec):
    """FakeExec that runs ``hook`` once, just before the n-th call it answers."""

    def __init__(self, *expected: Expected, at: int = 0, hook: Any = None) -> None:
        super().__init__(*expected)
        self.at, self.hook = at, hook

    def run(self, plugin: str, env: Any, config: Any, timeout: float) -> Any:
        if len(self.calls) == self.at and self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return super().run(plugin, env, config, timeout)


def test_a_failed_adds_undo_keeps_a_claim_another_pod_took_up_meanwhile() -> None:
    from tests.unit.test_attacher import NS

    ipam = {"type": "plexus-ipam", "range": "198.18.71.1-198.18.71.2/24"}
    res = {"cniVersion": "1.0.0", "interfaces": [{"name": "net1", "sandbox": "/run/netns/app"}],
           "ips": [{"address": "198.18.71.1/24", "interface": 0}]}
    networks = json.dumps([{"name": "first", "interface": "net1", "ipam-claim-reference": "db-0"}])
    node: Any = None

    def recreated() -> None:  # while uid-1's macvlan ADD runs
        node.source.remove("Pod", NS, "db-0")
        node.source.add(npwg_pod("db-0", "uid-2", networks))
        add(node, "db-0", "uid-2", "c2")

    fake = _HookExec(Expected("macvlan", "ADD", res),  # uid-2's (run first, from the hook)
                     Expected("macvlan", "ADD", error=IOFailure("master eth1 went away", "")),  # uid-1's
                     Expected("macvlan", "DEL"),  # uid-1's rollback
                     Expected("macvlan", "ADD", res),  # the next pod's
                     at=0, hook=recreated)
    node = attacher_node(fake, ipam)
    node.source.add(tpi.obj("IPAMClaim", "db-0", {"network": "first", "interface": "net1"},
                            api=NPWG_CLAIM_API_VERSION, uid="uid-claim"))
    node.source.add(npwg_pod("db-0", "uid-1", networks))
    node.source.add(npwg_pod("next", "uid-next", "first"))
    with pytest.raises(CniError):
        add(node, "db-0", "uid-1", "c1")
    claimed = _static_address(fake.calls[0])
    rec = node.store.get_ip(f"IPAMClaim/{NS}/db-0")
    live = [(a.container_id, a.pod_uid, a.state, [i.ip_keys for i in a.interfaces]) for a in node.store.attachments()]
    assert live == [("c2", "uid-2", "ready", [(f"IPAMClaim/{NS}/db-0",)])], live
    assert rec is not None and rec.used_by_uids == ("c2/net1",), \
        f"uid-2's ready attachment uses the claim, whose record uid-1's undo deleted: {rec}, leases {node.store.all_leases()}"
    add(node, "next", "uid-next", "c3")
    assert _static_address(fake.calls[-1]) != claimed, f"{claimed} given to the next pod while db-0 (uid-2) uses it"


def _claim_request(node: tpi.Node, container: str) -> AddressRequest:
    config = ipam_config_of({"ipam": {"type": "plexus-ipam", **tpi.SHARED}})
    pod = tpi.pod("db-0", "uid-1", [{"name": "nad-a", "interface": "net1", "ipam-claim-reference": "db-0"}])
    return AddressRequest("nad-a", container, "net1", config, pod, tpi.NS, f"{tpi.NS}/nad-a", claim="db-0")


def test_an_undo_keeps_a_claim_the_pods_other_sandbox_took_up_while_only_leasing() -> None:
    """The same pod's other sandbox leased the claim but has not recorded its interface yet (``leasing``): the
    attacher's ``_shared`` does not list the claim, and the undo of the ADD that made the claim's record takes this
    attachment alone off it."""
    node = tpi.Node()
    node.source.add(tpi.claim("db-0"))
    addresses = node.plugin.addresses
    first = addresses.lease(_claim_request(node, "c1"))
    addresses.lease(_claim_request(node, "c2"))
    assert first.claim.created_ip
    node.ipam.undo_claims([first.claim], tpi.pod("db-0", "uid-1"), "c1/net1", shared=())
    rec = node.store.get_ip(first.claim.ip_key)
    assert rec is not None and rec.used_by_uids == ("c2/net1",) and rec.user_networks == (("c2/net1", "nad-a"),)
    lease = node.store.lease_of(first.claim.ip_key)
    assert lease is not None and lease.address == first.claim.address


def test_an_undo_of_the_claims_only_user_keeps_the_claims_record_and_address() -> None:
    """A claim's address is the claim's, not the attachment's: the undo of the ADD that made its record takes the
    attachment off and keeps the record and its lease (as ``_drop_user`` does for a DEL)."""
    node = tpi.Node()
    node.source.add(tpi.claim("db-0"))
    first = node.plugin.addresses.lease(_claim_request(node, "c1"))
    node.ipam.undo_claims([first.claim], tpi.pod("db-0", "uid-1"), "c1/net1")
    rec = node.store.get_ip(first.claim.ip_key)
    assert rec is not None and (rec.used_by_uids, rec.used_by_pods) == ((), ())
    again = node.plugin.addresses.lease(_claim_request(node, "c3"))
    assert again.claim.address == first.claim.address and not again.claim.created_ip


def test_an_undo_still_frees_a_delegates_own_lease_it_made() -> None:
    node = tpi.Node()
    config = ipam_config_of({"ipam": {"type": "plexus-ipam", **tpi.POOL}})  # leaseTTL 1h: freed, not quarantined
    req = AddressRequest("nad-a", "c1", "net1", config, tpi.pod(), tpi.NS, f"{tpi.NS}/nad-a")
    leased = node.plugin.addresses.lease(req)
    node.ipam.undo_claims([leased.claim], tpi.pod(), "c1/net1")
    assert node.store.all_ips() == [] and node.store.all_leases() == []

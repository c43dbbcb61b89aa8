"""plexus-ipam and NAD configurations, mended after a review (each failing on the code before its fix): a pod recreated
but seen stale by the cache is not given a random address instead of its claim's; a NAD's ``args`` of another shape is
a CNI error naming it."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from cni.errors import CniError, InvalidConfig
from tests.fakes.exec import FakeExec
from tests.unit import test_plexus_ipam as tpi
from tests.unit.delegation_node import add, attacher_node, npwg_pod


def _claimed(node: tpi.Node, pod_name: str, uid: str, nad: str = "nad-a") -> None:
    node.source.add(tpi.pod(pod_name, uid, [{"name": nad, "interface": "net1", "ipam-claim-reference": "db-0"}]))


# -- A. plexus-ipam under Multus: a claimed interface whose pod the cache shows at another UID ----------------------

def test_a_recreated_claimed_pod_seen_stale_by_the_cache_is_not_given_a_random_address() -> None:
    """StatefulSet member db-0 is made again (uid-2) and its sandbox ADDed before this node's informer has seen the
    new pod: the cache still shows db-0 at uid-1. ``IpamPlugin._pod`` turns ``find_pod``'s UID mismatch (code 3) into
    "no pod", so no NPWG selection is read, the ``ipam-claim-reference`` is silently dropped, and the ADD succeeds with
    an attachment lease of some free address: the member's sticky address is not given back (nor is the claim's
    status written), and nothing tells anyone. The Attacher fails such an ADD (code 3) and the runtime retries it."""
    node = tpi.Node()
    node.source.add(tpi.claim("db-0"))
    _claimed(node, "db-0", "uid-1")
    first = node.call("ADD", tpi.SHARED, container="c1", pod_name="db-0", uid="uid-1")
    node.call("DEL", tpi.SHARED, container="c1", pod_name="db-0", uid="uid-1")
    try:  # the cache still has db-0 at uid-1
        again = node.call("ADD", tpi.SHARED, container="c2", pod_name="db-0", uid="uid-2")
    except CniError as exc:  # refused for now (the runtime retries): fine
        assert exc.code in (3, 11), exc
        return
    assert again["ips"] == first["ips"], f"db-0's claim gave {first['ips']}, its new pod got {again['ips']}"


# -- B. A NAD whose plugin has an ``args`` key of another shape fails the ADD with an unexpected error, not code 7 ----

def test_a_nads_args_that_cannot_take_the_pods_cni_args_is_a_cni_error_naming_it() -> None:
    """``plugin_config`` merges the pod's ``cni-args`` (NPWG: under ``args.cni``) into the plugin's own ``args``
    with ``{**(merged.get(key) or {}), **value}``: a NAD whose plugin says ``"args": {"cni": "x"}`` (or a list) makes
    that a TypeError, which is no CniError: the ADD fails with code 999 (an unexpected failure), naming nothing.
    README: bad input gets a CNI error naming the field."""
    from tests.unit.test_networks import nad

    fake = FakeExec()
    node = attacher_node(fake, {"type": "plexus-ipam", "range": "198.18.71.0/24"})
    node.source.add(nad("odd", {"cniVersion": "1.0.0", "type": "macvlan", "master": "eth1", "args": {"cni": "x"}},
                        "apps"))
    node.source.add(npwg_pod("app2", "uid-2", json.dumps([{"name": "odd", "cni-args": {"foo": "bar"}}])))
    got: BaseException | None = None
    try:
        add(node, "app2", "uid-2", "c9")
    except Exception as exc:  # noqa: BLE001  # a non-CniError is what the server answers as 999
        got = exc
    assert node.store.attachments() == [] and node.store.all_leases() == [], "left behind"
    assert isinstance(got, CniError) and got.code != 999, f"not a CNI error naming the field: {got!r}"


class _CatchingUp:
    """The informer catching up: the source shows ``pod`` instead of what it has from the ``after``-th lookup on."""

    def __init__(self, node: tpi.Node, pod: Any, after: int) -> None:
        self.node, self.pod, self.after, self.looked = node, pod, after, 0
        self.real = node.source.get

    def __call__(self, kind: Any, namespace: str, name: str) -> Any:
        if kind.name == "Pod" and name == self.pod.meta.name:
            self.looked += 1
            if self.looked == self.after:
                self.node.source.add(self.pod)
        return self.real(kind, namespace, name)


def _recreated(node: tpi.Node) -> str:
    """db-0 at uid-1 ADDed and DELeted (its claim bound), its address; the cache still shows it at uid-1."""
    node.source.add(tpi.claim("db-0"))
    _claimed(node, "db-0", "uid-1")
    first = node.call("ADD", tpi.SHARED, container="c1", pod_name="db-0", uid="uid-1")
    node.call("DEL", tpi.SHARED, container="c1", pod_name="db-0", uid="uid-1")
    return str(first["ips"][0]["address"])


def test_a_recreated_claimed_pod_gets_its_claims_address_once_the_cache_shows_it() -> None:
    node = tpi.Node()
    first = _recreated(node)
    catching_up = _CatchingUp(node, tpi.pod("db-0", "uid-2", [{"name": "nad-a", "interface": "net1",
                                                               "ipam-claim-reference": "db-0"}]), after=3)
    node.source.get = catching_up  # type: ignore[method-assign]
    published = len(node.publisher.ip_statuses)
    again = node.call("ADD", tpi.SHARED, container="c2", pod_name="db-0", uid="uid-2")
    assert catching_up.looked >= 3, "answered before the cache showed the pod"
    assert again["ips"][0]["address"] == first, "the claim's address, once the pod is known"
    (written,) = node.publisher.ip_statuses[published:]
    assert (written.kind, written.used_by_pods) == ("IPAMClaim", (f"{tpi.NS}/db-0",)), "the claim's status written"


def test_a_recreated_pod_the_cache_never_shows_is_told_to_try_again_naming_its_uid() -> None:
    node = tpi.Node()
    _recreated(node)
    err = node.error("ADD", tpi.SHARED, container="c2", pod_name="db-0", uid="uid-2")
    assert (err.code, err.details) == (11, "K8S_POD_UID"), err
    assert "uid-1" in err.msg and "uid-2" in err.msg, err.msg
    (lease,) = node.store.all_leases()
    assert lease.holder == "IPAMClaim/apps/db-0", "the claim keeps its address for the pod's retry"


def test_a_pod_of_no_name_the_source_knows_is_still_no_pod() -> None:
    """cnitool, a runtime without Kubernetes, or a pod the source never shows: an address with no pod, at once."""
    node = tpi.Node()
    started = time.monotonic()
    got = node.call("ADD", tpi.SHARED, container="c1", pod_name="nobody", uid="uid-n")
    assert got["ips"] and node.source.waited == [(tpi.NS, "nobody")]
    assert node.call("ADD", tpi.SHARED, container="c2", pod_name="")["ips"]
    assert time.monotonic() - started < 5.0, "waited for a pod no cache will show"
    assert len(node.store.all_ips()) == 2


@pytest.mark.parametrize(("plugin", "field"), [
    ({"args": {"cni": ["x"]}}, "plugins[0].args.cni"),
    ({"args": "x"}, "plugins[0].args"),
    ({"runtimeConfig": "x", "capabilities": {"mac": True}}, "plugins[0].runtimeConfig"),
])
def test_a_plugins_own_object_of_another_shape_is_invalid_config_naming_it(plugin: dict[str, Any],
                                                                           field: str) -> None:
    from ipamd.model.cniconf import as_conflist, plugin_config

    cl = as_conflist({"cniVersion": "1.0.0", "name": "odd", "type": "macvlan", **plugin})
    with pytest.raises(InvalidConfig) as exc:
        plugin_config(cl, 0, {"mac": "02:00:00:00:00:01"}, {"cni": {"foo": "bar"}})
    assert (exc.value.code, exc.value.details) == (7, field) and field in exc.value.msg


def test_a_plugins_empty_or_absent_objects_still_take_the_runtimes_values() -> None:
    from ipamd.model.cniconf import as_conflist, plugin_config

    owns: list[dict[str, Any]] = [{}, {"args": None, "runtimeConfig": {}}, {"args": {"cni": {"a": 1}, "other": "kept"}}]
    for own in owns:
        cl = as_conflist({"cniVersion": "1.0.0", "name": "n", "type": "macvlan", "capabilities": {"mac": True}, **own})
        conf = plugin_config(cl, 0, {"mac": "m"}, {"cni": {"foo": "bar"}, "plain": "v"})
        assert conf["runtimeConfig"] == {"mac": "m"}
        assert conf["args"]["cni"]["foo"] == "bar" and conf["args"]["plain"] == "v"
    assert conf["args"] == {"cni": {"a": 1, "foo": "bar"}, "other": "kept", "plain": "v"}

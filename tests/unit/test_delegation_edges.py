"""Delegation at its edges: plugins that fail oddly, rollbacks that fail, GC and results of every CNI version,
NPWG fields at their limits. Each test failed before its fix (found in review)."""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cni.errors import AnnotationInvalid, CniError, InterfaceFailure, IOFailure
from ipamd.drivers.base import BuildContext
from ipamd.drivers.delegate import DelegateDriver, UsedConfigurations
from ipamd.invoke.chain import Chain, Invocation
from ipamd.invoke.conflist import PodIdentity, Runtime
from ipamd.invoke.exec import Exec, PluginRun
from ipamd.model.cniconf import as_conflist
from ipamd.model.npwg import parse_networks
from ipamd.netlink.default_route import SavedRoute, Taken
from ipamd.publish.render import network_status
from ipamd.store.records import BuiltInterface
from tests.fakes.drivers import FakePod
from tests.fakes.exec import Expected, FakeExec
from tests.unit.test_exec import ENV
from tests.unit.test_exec import plugin as _plugin


def _inv(conflist: dict[str, Any], bin_dir: str = "", container: str = "c1", ifname: str = "net1",
         timeout: float = 10.0) -> Invocation:
    return Invocation(conflist, container, "/run/netns/x", ifname, "IgnoreUnknown=1",
                      bin_dirs=(bin_dir,) if bin_dir else (), timeout_s=timeout)


def test_a_del_whose_plugin_prints_a_malformed_error_code_still_dels_the_rest_of_the_list(tmp_path: Path) -> None:
    """``_failure`` trusted ``code``: ``CniError.from_dict`` does ``int(data['code'])``, so a plugin printing
    ``{"code": "oops"}`` (or null, or a list) raised ValueError/TypeError, not a CniError. ``Chain.delete`` catches
    only CniError, so the loop aborted: the plugins before it in the list were never DEL'd (a leak), and the caller
    saw a 999 instead of code 5."""
    marker = tmp_path / "a-deleted"
    _plugin(tmp_path, "a", f"if os.environ['CNI_COMMAND'] == 'DEL':\n    open({str(marker)!r}, 'w').write('x')")
    _plugin(tmp_path, "b", "print(json.dumps({'code': 'oops', 'msg': 'broken'})); sys.exit(1)")
    chain = Chain(Exec(str(tmp_path)))
    inv = _inv({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "a"}, {"type": "b"}]}, str(tmp_path))
    errors = chain.delete(inv)
    assert len(errors) == 1 and errors[0].startswith("b:")
    assert marker.exists(), "plugin a must be DEL'd although b failed"


@pytest.mark.parametrize("code", ["oops", None, [7]], ids=["string", "null", "list"])
def test_a_malformed_error_code_is_an_io_failure(tmp_path: Path, code: Any) -> None:
    """Same root cause on ADD: a plugin that writes garbage as its error must give code 5 (README's table), not an
    unexpected Python exception (code 999)."""
    _plugin(tmp_path, "p", f"print(json.dumps({{'code': {code!r}, 'msg': 'x'}})); sys.exit(1)")
    with pytest.raises(CniError) as err:
        Exec(str(tmp_path)).run("p", ENV, {}, 10)
    assert err.value.code == 5


def test_an_add_that_prints_no_result_fails_with_code_5(tmp_path: Path) -> None:
    """README: code 5 when 'a delegated plugin ... printed no result'. ``Exec.run`` returns ``{}`` for an empty
    stdout whatever the verb, and ``Chain.add`` took it as the result: the ADD succeeded with an interface nobody
    described (no IPs, no network-status entry). libcni fails such an ADD too."""
    _plugin(tmp_path, "quiet", "json.load(sys.stdin)")
    chain = Chain(Exec(str(tmp_path)))
    with pytest.raises(IOFailure):
        chain.add(_inv({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "quiet"}]}, str(tmp_path)))


def test_a_plugin_that_hangs_before_reading_a_large_config_is_killed_at_its_deadline(tmp_path: Path) -> None:
    """``_communicate`` wrote the whole stdin with a blocking ``proc.stdin.write`` before the deadline loop
    started. A configuration larger than a pipe's buffer (64 KiB: a pod's ``cni-args`` alone may be 256 KiB) to a
    plugin that hangs before reading stdin blocked the daemon's thread until the plugin exited by itself: the 1 s
    deadline was not kept (here the plugin sleeps 12 s)."""
    _plugin(tmp_path, "hang", "time.sleep(12)")
    ex = Exec(str(tmp_path))
    config = {"cniVersion": "1.0.0", "args": {"cni": {"blob": "x" * 300_000}}}
    done: list[float] = []

    def run() -> None:
        started = time.monotonic()
        with contextlib.suppress(CniError):
            ex.run("hang", ENV, config, 1.0)
        done.append(time.monotonic() - started)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(20)
    assert done and done[0] < 6, f"the 1 s deadline took {done[0] if done else 'forever'} s"


def test_a_large_configuration_reaches_a_plugin_that_reads_it_slowly_whole(tmp_path: Path) -> None:
    """The same large configuration, written as the plugin reads it (in small pieces, with pauses), arrives whole."""
    _plugin(tmp_path, "slow", "data = b''\nwhile chunk := sys.stdin.buffer.read(4096):\n    data += chunk\n"
                              "    time.sleep(0.0005)\n"
                              "print(json.dumps({'cniVersion': '1.0.0', 'got': len(data), 'blob': len(json.loads(data)"
                              "['args']['cni']['blob'])}))")
    config = {"cniVersion": "1.0.0", "args": {"cni": {"blob": "x" * 300_000}}}
    run = Exec(str(tmp_path)).run("slow", ENV, config, 20.0)
    assert run.result["got"] == len(json.dumps(config)) and run.result["blob"] == 300_000


def _kept(conflist: dict[str, Any], container: str, ifname: str = "net1") -> BuiltInterface:
    inv = _inv(conflist, container=container, ifname=ifname)
    return BuiltInterface(if_name=ifname, kind="delegate", network_key="NetworkAttachmentDefinition/x/y",
                          network_type="NetworkAttachmentDefinition", network_name="x/y",
                          driver={"invocation": inv.to_dict(), "defaultRoute": []})


def _ctx() -> BuildContext:
    """A build's context over fakes: the pod's socket an ``object()`` (the kernel's parts are patched where used)."""
    return BuildContext(object(), FakePod(SANDBOX), lambda: 0)


def _takes_no_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod without default routes, whose default route is taken without a kernel."""
    monkeypatch.setattr("ipamd.netlink.default_route.defaults", lambda pod, family: [])
    monkeypatch.setattr("ipamd.netlink.default_route.set_default_route", lambda pod, ifn, gws: [])


def test_the_rollback_del_of_an_added_delegate_gets_its_result_as_prev_result() -> None:
    """A NAD added, then a later step of the ADD fails (the next NAD, a lease...): the undo step registered in
    ``DelegateDriver.build`` was ``chain.delete(inv)`` with no ``prevResult``, though the driver holds the
    delegate's result. Multus passes it here (libcni's cached result of that delegate), and plugins rely on it on
    DEL: the reference ``firewall`` removes its iptables rules for ``prevResult.ips`` and does nothing without it,
    so a rolled-back ADD leaked host rules."""
    res = {"cniVersion": "1.0.0", "interfaces": [{"name": "net1", "sandbox": "/run/netns/x"}],
           "ips": [{"address": "198.18.0.5/24", "interface": 0}]}
    conflist = {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}, {"type": "firewall"}]}
    fake = FakeExec(Expected("bridge", "ADD", res), Expected("firewall", "ADD", res),
                    Expected("firewall", "DEL"), Expected("bridge", "DEL"))
    with contextlib.suppress(RuntimeError), contextlib.ExitStack() as undo:
        DelegateDriver(Chain(fake)).build(_ctx(), _kept(conflist, "c1"), undo)
        raise RuntimeError("the next interface failed")
    dels = [c for p, v, _, c in fake.calls if v == "DEL"]
    assert len(dels) == 2 and all(c.get("prevResult") == res for c in dels), "DEL without prevResult"


def test_a_chain_failing_after_firewall_answered_is_rolled_back_with_the_result_so_far() -> None:
    """bridge, firewall, then a plugin that fails: the rollback DEL was given a ``prevResult`` only once every
    plugin had answered, so firewall's DEL got none and its iptables rules for the pod's address stayed."""
    res = {"cniVersion": "1.0.0", "interfaces": [{"name": "net1", "sandbox": SANDBOX}],
           "ips": [{"address": "198.18.71.5/24", "interface": 0}]}
    conflist = {"cniVersion": "1.0.0", "name": "n",
                "plugins": [{"type": "bridge"}, {"type": "firewall"}, {"type": "fails"}]}
    fake = FakeExec(Expected("bridge", "ADD", res), Expected("firewall", "ADD", res),
                    Expected("fails", "ADD", error=IOFailure("boom", "")),
                    Expected("fails", "DEL"), Expected("firewall", "DEL"), Expected("bridge", "DEL"))
    with contextlib.suppress(CniError), contextlib.ExitStack() as undo:
        DelegateDriver(Chain(fake)).build(_ctx(), _kept(conflist, "c1"), undo)
    dels = {p: c.get("prevResult") for p, v, _, c in fake.calls if v == "DEL"}
    assert dels == {"fails": res, "firewall": res, "bridge": res}, dels


def _npwg_node(fake: FakeExec, npwg: str) -> Any:
    from tests.unit.test_attacher import Node, obj
    from tests.unit.test_networks import nad

    node = Node()
    node.ipam._names = collections.defaultdict(str)  # the spy names Deckhouse leases only
    node.drivers["delegate"] = DelegateDriver(Chain(fake))  # type: ignore[assignment]
    node.source.add(obj("Pod", "app", {}, uid="uid-app", annotations={"k8s.v1.cni.cncf.io/networks": npwg}))
    ipam = {"type": "plexus-ipam", "range": "198.18.71.0/24"}
    node.source.add(nad("first", {"cniVersion": "1.0.0", "type": "macvlan", "master": "eth1", "ipam": ipam}, "apps"))
    node.source.add(nad("second", {"cniVersion": "1.0.0", "plugins": [
        {"type": "ipvlan", "master": "eth2", "ipam": {**ipam, "range": "198.18.72.0/24"}}, {"type": "tuning"}]}, "apps"))
    return node


def test_a_delegate_whose_rollback_del_failed_is_deled_again_by_the_runtimes_del() -> None:
    """NAD 'first' (host-local-style state of its own) added, NAD 'second' fails, and first's rollback DEL fails
    too (a transient error). ``quietly`` swallowed it and the undo then forgot the attachment record: the runtime's
    DEL that follows a failed ADD (kubelet's StopPodSandbox) found no record and answered {} without exec'ing
    anything, so first's plugins never got a DEL that succeeds: whatever they hold (a host-local address, a host
    link) leaked for good. Multus's DEL re-reads the pod's delegates and DELs them."""
    res1 = {"cniVersion": "1.0.0", "interfaces": [{"name": "net1", "sandbox": "/run/netns/app"}],
            "ips": [{"address": "198.18.71.1/24", "interface": 0}]}
    fake = FakeExec(Expected("macvlan", "ADD", res1), Expected("ipvlan", "ADD", error=IOFailure("boom", "")),
                    Expected("tuning", "DEL"), Expected("ipvlan", "DEL"),
                    Expected("macvlan", "DEL", error=IOFailure("transient", "")),
                    Expected("macvlan", "DEL"))  # the runtime's DEL: first's plugins tried again
    node = _npwg_node(fake, "first, second")
    with pytest.raises(CniError):
        node.call("ADD")
    node.call("DEL")
    assert [(p, v) for p, v, _, _ in fake.calls][-1] == ("macvlan", "DEL") and fake.expected == [], \
        "the runtime's DEL never reached the delegate whose rollback DEL failed"


def test_delegates_whose_rollback_dels_failed_are_deled_later_in_reverse_order_too() -> None:
    """Two delegates added, then the ADD fails and both rollback DELs fail: the record keeps both for the runtime's
    DEL, in the order they were built (the undo met them last first), so that DEL too goes the last one first."""
    from tests.unit.test_attacher import Faults

    res = {"cniVersion": "1.0.0", "interfaces": [{"name": "net1", "sandbox": SANDBOX}],
           "ips": [{"address": "198.18.71.1/24", "interface": 0}]}
    fake = FakeExec(Expected("macvlan", "ADD", res), Expected("ipvlan", "ADD", res), Expected("tuning", "ADD", res),
                    Expected("tuning", "DEL", error=IOFailure("transient", "")), Expected("ipvlan", "DEL"),
                    Expected("macvlan", "DEL", error=IOFailure("transient", "")),
                    Expected("tuning", "DEL"), Expected("ipvlan", "DEL"), Expected("macvlan", "DEL"))
    node = _npwg_node(fake, "first, second")
    node.attacher.fault = Faults("add:built", 2)
    with pytest.raises(CniError):
        node.call("ADD")
    (kept,) = node.store.attachments()
    assert kept.state == "deleting" and [i.if_name for i in kept.interfaces] == ["net1", "net2"]
    assert node.call("DEL") == {} and fake.expected == [] and node.store.attachments() == []


SANDBOX = "/run/netns/app"


class AnswerAll:
    """A plugin exec that answers every call: ADD with an interface named CNI_IFNAME in the pod; records the calls."""

    def __init__(self, routes: Mapping[str, list[dict[str, str]]] | None = None) -> None:
        self.calls: list[tuple[str, str, dict[str, str], dict[str, Any]]] = []
        self.routes = dict(routes or {})
        self.n = 0

    def run(self, plugin: str, env: Mapping[str, str], config: Mapping[str, Any], timeout: float) -> PluginRun:
        verb = env.get("CNI_COMMAND", "")
        self.calls.append((plugin, verb, dict(env), dict(config)))
        if verb != "ADD":
            return PluginRun({}, "", 0.0)
        if "prevResult" in config:
            return PluginRun(dict(config["prevResult"]), "", 0.0)
        self.n += 1
        ifname = env["CNI_IFNAME"]
        result = {"cniVersion": config["cniVersion"], "interfaces": [{"name": ifname, "sandbox": SANDBOX}],
                  "ips": [{"address": f"198.18.{self.n}.5/24", "interface": 0}], "dns": {}}
        if plugin in self.routes:
            result["routes"] = self.routes[plugin]
        return PluginRun(result, "", 0.0)


def _answering_node(fake: AnswerAll, npwg: str) -> Any:
    """Pod app asking ``npwg`` of NADs ``first`` (macvlan) and ``second`` (ipvlan, tuning), host-local IPAM."""
    from tests.unit.test_attacher import Node, obj
    from tests.unit.test_networks import nad

    node = Node()
    node.ipam._names = collections.defaultdict(str)
    node.drivers["delegate"] = DelegateDriver(Chain(fake))  # type: ignore[assignment]
    node.source.add(obj("Pod", "app", {}, uid="uid-app", annotations={"k8s.v1.cni.cncf.io/networks": npwg}))
    node.source.add(nad("first", {"cniVersion": "1.0.0", "type": "macvlan", "master": "eth1",
                                  "ipam": {"type": "host-local", "subnet": "198.18.71.0/24"}}, "apps"))
    node.source.add(nad("second", {"cniVersion": "1.0.0", "plugins": [
        {"type": "ipvlan", "master": "eth2", "ipam": {"type": "host-local", "subnet": "198.18.72.0/24"}},
        {"type": "tuning"}]}, "apps"))
    return node


class FailingCheck(AnswerAll):
    """AnswerAll whose CHECK fails as Debian's macvlan does when its master is gone."""

    def run(self, plugin: str, env: Mapping[str, str], config: Mapping[str, Any], timeout: float) -> PluginRun:
        if env.get("CNI_COMMAND") == "CHECK":
            raise CniError("Link not found", "eth9", code=999)
        return super().run(plugin, env, config, timeout)


def test_a_delegates_failed_check_names_the_nad_once_with_the_plugins_details() -> None:
    """``DelegateDriver.check`` prefixed ``_failed``'s message, already prefixed, with the NAD and interface again,
    and dropped the plugin's details: ``apps/first (net1): apps/first (net1): Link not found``."""
    node = _answering_node(FailingCheck(), "first")
    result = node.call("ADD")
    with pytest.raises(InterfaceFailure) as err:
        node.call("CHECK", config={"prevResult": result})
    assert err.value.details == "apps/first (net1): Link not found: eth9", err.value.to_dict()


def test_del_removes_a_pods_delegates_in_reverse_order_as_multus_does() -> None:
    """Multus's ``delPlugins`` DELs a pod's delegates in reverse order (last network first, the cluster network
    last), the undo of the ADD's order; stacks rely on it (bond-cni over net1/net2 must be DEL'd before the VFs it
    enslaves; a vlan/macvlan ``linkInContainer`` on net1). ``Attacher._remove_interfaces`` tears the record's
    interfaces down in ADD order: net1's plugins first, then net2's."""
    fake = AnswerAll()
    node = _answering_node(fake, "first, second")
    node.call("ADD")
    fake.calls.clear()
    assert node.call("DEL") == {}
    order = [(p, env["CNI_IFNAME"]) for p, v, env, _ in fake.calls if v == "DEL"]
    assert order == [("tuning", "net2"), ("ipvlan", "net2"), ("macvlan", "net1")], order


def test_gc_goes_on_to_the_next_plugin_when_one_fails() -> None:
    """CNI 1.1 GC: 'continue past errors' (libcni GCNetworkList joins the errors and GCs every plugin).
    ``Chain.gc`` stopped at the first plugin that failed: the IPAM plugin after it kept its stale leases."""
    fake = FakeExec(Expected("macvlan", "GC", error=IOFailure("boom", "")), Expected("host-local", "GC"))
    inv = _inv({"cniVersion": "1.1.0", "name": "n", "plugins": [{"type": "macvlan"}, {"type": "host-local"}]})
    with contextlib.suppress(CniError):
        Chain(fake).gc(inv, [])
    assert [(p, v) for p, v, _, _ in fake.calls] == [("macvlan", "GC"), ("host-local", "GC")]


def test_gc_reaches_every_configuration_even_when_two_nads_share_a_configuration_name() -> None:
    """NPWG §3: a NAD's config without ``name`` takes the NAD's, so NAD ``a/storage`` and NAD ``b/storage`` both
    give conflists named ``storage`` (with different plugins). ``DelegateDriver.collect`` grouped by that name alone
    and GC'd only the first one's plugins: b's ipvlan never got GC. Both are told both NADs' attachments: the plugins
    keep their state by the configuration's name (host-local's directory), so a GC told only its own would let the
    other's addresses go."""
    a = {"cniVersion": "1.1.0", "name": "storage", "plugins": [{"type": "macvlan", "master": "eth1"}]}
    b = {"cniVersion": "1.1.0", "name": "storage", "plugins": [{"type": "ipvlan", "master": "eth2"}]}
    fake = FakeExec(Expected("macvlan", "GC"), Expected("ipvlan", "GC"))
    DelegateDriver(Chain(fake)).collect([_kept(a, "c1"), _kept(b, "c2")])
    assert sorted(p for p, _, _, _ in fake.calls) == ["ipvlan", "macvlan"]
    by_plugin = {p: c["cni.dev/valid-attachments"] for p, _, _, c in fake.calls}
    assert by_plugin["macvlan"] == by_plugin["ipvlan"] == [{"containerID": "c1", "ifname": "net1"},
                                                           {"containerID": "c2", "ifname": "net1"}], \
        "each told every valid attachment of the name (the plugins' state is kept by it)"


def test_a_delegates_0_2_0_result_keeps_its_address() -> None:
    """A NAD of ``cniVersion: 0.2.0`` is accepted (``as_conflist`` checks no version) and its plugin answers in
    0.2.0's shape (``ip4``/``ip6``, no ``interfaces``/``ips``). ``Result.from_dict`` (cni/types.py) read only the
    0.3+ keys, so the delegate's share was empty: Plexus answered the runtime without the address, and the pod's
    network-status had no entry for the interface at all. Now converted as libcni does, and the entry is the
    interface the delegate was asked for."""
    conflist = {"cniVersion": "0.2.0", "name": "old", "plugins": [{"type": "macvlan", "master": "eth1"}]}
    result_020 = {"cniVersion": "0.2.0", "ip4": {"ip": "198.18.0.5/24", "gateway": "198.18.0.1"}, "dns": {}}
    driver = DelegateDriver(Chain(FakeExec(Expected("macvlan", "ADD", result_020))))
    iface = _kept(conflist, "c1")
    try:
        built = driver.build(_ctx(), iface, contextlib.ExitStack())  # no default route asked
    except CniError:
        return  # refused: acceptable
    assert [ip.address for ip in built.result.ips] == ["198.18.0.5/24"], "the delegate's address was dropped"
    status = network_status([BuiltInterface(**{**{f: getattr(iface, f) for f in BuiltInterface.__slots__},
                                               "result": built.result.to_dict()})])
    assert status and status[0]["ips"] == ["198.18.0.5"]


@pytest.mark.parametrize("version,given", [("0.3.1", False), ("0.4.0", True), ("1.0.0", True)])
def test_a_del_gets_the_cached_result_as_prev_result_from_0_4_0_on(version: str, given: bool) -> None:
    """libcni passes a DEL the cached result only from 0.4.0 on; a plugin of an older version was given one too."""
    res = {"cniVersion": version, "interfaces": [{"name": "net1", "sandbox": "/run/netns/x"}],
           "ips": [{"address": "198.18.0.5/24", "interface": 0}]}
    fake = FakeExec(Expected("bridge", "DEL"))
    Chain(fake).delete(_inv({"cniVersion": version, "name": "n", "plugins": [{"type": "bridge"}]}), res)
    assert ("prevResult" in fake.calls[0][3]) is given


def test_default_route_must_hold_gateway_addresses_not_cidrs() -> None:
    """NPWG §4: ``default-route`` is a list of IPs (gateways). ``_element`` validated it with ``_ips``, which also
    accepts ``198.18.97.1/24``: the annotation passed, and the ADD failed later in the kernel (``set_default_route``
    with a gateway ``x/24``, code 105) instead of code 102 naming the field."""
    with pytest.raises(AnnotationInvalid) as err:
        parse_networks(json.dumps([{"name": "a", "default-route": ["198.18.97.1/24"]}]), "ns")
    assert err.value.details == "k8s.v1.cni.cncf.io/networks[0].default-route"


def test_plexusctl_del_goes_on_when_the_cached_result_is_unreadable(tmp_path: Path) -> None:
    """``Runtime.delete`` ``json.load``ed the cached result unguarded: a truncated cache file (a crash while it was
    written) made ``plexusctl pod rm`` die with a ValueError, and no plugin was DEL'd. libcni drops a cache it cannot
    read and DELs without ``prevResult``."""
    netns = tmp_path / "netns"
    netns.write_text("")
    fake = FakeExec(Expected("a", "DEL"))
    rt = Runtime(str(tmp_path), str(tmp_path / "cache"), plugins=fake)
    pod = PodIdentity("ns", "p", "uid", "c1", str(netns))
    conflist = {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "a"}]}
    (tmp_path / "cache").mkdir()
    Path(rt._cache_path(conflist, pod)).write_text('{"cniVersion": "1.0.0", "interf')
    assert rt.delete(conflist, pod) == []
    assert [(p, v) for p, v, _, _ in fake.calls] == [("a", "DEL")]


@pytest.mark.parametrize("key,value", [("ips", []), ("mac", "")])
def test_an_empty_capability_key_asks_for_nothing_and_is_not_refused(key: str, value: Any) -> None:
    """``_element`` copied every capability key into ``runtime`` raw before it looked at the value, so ``"ips": []``
    or ``"mac": ""`` (what templating tools emit for 'none') on a NAD without that capability failed the ADD with
    code 102, though nothing is asked for. Multus sets a capability only for a non-empty request."""
    from tests.unit.test_networks import ANN, wanted

    (w,) = wanted({ANN: json.dumps([{"name": "bridge-net", key: value}])})
    assert w.request.delegate is not None and key not in w.request.delegate.runtime_config



def test_default_route_on_a_nad_takes_the_gateway_off_the_cluster_networks_status_and_result(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Plexus as the node's only CNI configuration (``clusterNetwork``), a pod asking ``default-route`` on net1.
    ``set_default_route`` deletes eth0's default route in the pod, but eth0's share of the result was left as the
    cluster plugin returned it (the delegate driver only adds net1's route): the answer to the runtime held two
    0.0.0.0/0 routes, and network-status still said eth0 (``default: true``) has gateway 10.244.0.1 while the pod's
    default route goes through net1. Multus filters the cluster network's gateway out of its result and status
    (``IsFilterGateway`` → ``DeleteDefaultGW``)."""
    from tests.unit.test_networks import nad

    _takes_no_route(monkeypatch)
    eth0 = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/app"}],
            "ips": [{"address": "10.244.0.5/24", "interface": 0, "gateway": "10.244.0.1"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}]}
    net1 = {"cniVersion": "1.0.0", "interfaces": [{"name": "net1", "sandbox": "/run/netns/app"}],
            "ips": [{"address": "198.18.97.5/24", "interface": 0}]}
    fake = FakeExec(Expected("flannel", "ADD", eth0), Expected("macvlan", "ADD", net1))
    node = _npwg_node(fake, json.dumps([{"name": "plain", "default-route": ["198.18.97.1"]}]))
    node.source.add(nad("cbr0", {"cniVersion": "1.0.0", "type": "flannel"}, "kube-system"))
    node.source.add(nad("plain", {"cniVersion": "1.0.0", "type": "macvlan", "master": "eth1"}, "apps"))
    result = node.call("ADD", config={"clusterNetwork": "kube-system/cbr0"})
    defaults = [r for r in result.get("routes", []) if r["dst"] == "0.0.0.0/0"]
    assert defaults == [{"dst": "0.0.0.0/0", "gw": "198.18.97.1"}], f"the answer's default routes: {defaults}"
    status = {e["interface"]: e for e in node.store.pod_status("uid-app").network_status}
    assert "gateway" not in status["eth0"], status["eth0"]
    assert status["net1"]["gateway"] == ["198.18.97.1"]


def test_default_route_on_a_nad_takes_the_gateway_off_the_network_plexus_is_chained_after(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same with Plexus chained after the cluster network's plugin: its ``prevResult``'s default route is the
    one the pod no longer has, in the answer (and on an ADD retried) and in network-status."""
    from tests.unit.test_networks import nad

    _takes_no_route(monkeypatch)
    eth0 = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/app"}],
            "ips": [{"address": "10.244.0.5/24", "interface": 0, "gateway": "10.244.0.1"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}, {"dst": "10.96.0.0/12", "gw": "10.244.0.1"}]}
    net1 = {"cniVersion": "1.0.0", "interfaces": [{"name": "net1", "sandbox": "/run/netns/app"}],
            "ips": [{"address": "198.18.97.5/24", "interface": 0}]}
    fake = FakeExec(Expected("macvlan", "ADD", net1))
    node = _npwg_node(fake, json.dumps([{"name": "plain", "default-route": ["198.18.97.1"]}]))
    node.source.add(nad("plain", {"cniVersion": "1.0.0", "type": "macvlan", "master": "eth1"}, "apps"))
    for _ in range(2):  # the ADD, then the runtime's retry of it
        result = node.call("ADD", config={"prevResult": eth0})
        assert [r["gw"] for r in result["routes"] if r["dst"] == "0.0.0.0/0"] == ["198.18.97.1"]
        assert {"dst": "10.96.0.0/12", "gw": "10.244.0.1"} in result["routes"], "other routes stay"
    status = {e["interface"]: e for e in node.store.pod_status("uid-app").network_status}
    assert "gateway" not in status["eth0"] and status["net1"]["gateway"] == ["198.18.97.1"], status


def test_check_gives_the_cluster_network_a_prev_result_without_the_default_route_it_lost(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod asks ``default-route`` on net1 with Plexus as the node's only CNI configuration (``clusterNetwork``):
    ADD deletes eth0's default route in the pod and takes it off eth0's share of the answer and of network-status,
    but the delegate's recorded raw result (``driver['result']``, what CHECK and DEL get as ``prevResult``) keeps
    it. The reference bridge/ptp CHECK validates every ``prevResult`` route in the pod (``ValidateExpectedRoute``),
    so the cluster network's CHECK fails on a healthy pod. Multus rewrites libcni's cached result
    (``DeleteDefaultGWCache`` / ``AddDefaultGWCache``) so that CHECK sees what the pod has."""
    from tests.unit.test_networks import nad

    _takes_no_route(monkeypatch)
    fake = AnswerAll({"bridge": [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}]})
    node = _answering_node(fake, json.dumps([{"name": "plain", "default-route": ["198.18.97.1"]}]))
    node.source.add(nad("cbr0", {"cniVersion": "1.0.0", "type": "bridge"}, "kube-system"))
    node.source.add(nad("plain", {"cniVersion": "1.0.0", "type": "macvlan", "master": "eth1"}, "apps"))
    conf = {"clusterNetwork": "kube-system/cbr0"}
    result = node.call("ADD", config=conf)
    assert [r for r in result.get("routes", []) if r["dst"] == "0.0.0.0/0"] == \
        [{"dst": "0.0.0.0/0", "gw": "198.18.97.1"}]
    fake.calls.clear()
    node.call("CHECK", config={**conf, "prevResult": result})
    checked = {p: c.get("prevResult", {}) for p, v, _, c in fake.calls if v == "CHECK"}
    assert {r["dst"] for r in checked["bridge"].get("routes", [])} == set(), \
        f"eth0's CHECK is told the pod has a default route through it: {checked['bridge'].get('routes')}"


V4_DEFAULT, V6_DEFAULT = {"dst": "0.0.0.0/0", "gw": "10.244.0.1"}, {"dst": "::/0", "gw": "fd00::1"}
SERVICES = {"dst": "10.96.0.0/12", "gw": "10.244.0.1"}


def _cluster_result(version: str) -> dict[str, Any]:
    """The cluster network's answer in ``version``'s shape: a default route of each family and one other route."""
    if version == "0.2.0":
        return {"cniVersion": version, "ip4": {"ip": "10.244.0.5/24", "gateway": "10.244.0.1",
                                               "routes": [V4_DEFAULT, SERVICES]},
                "ip6": {"ip": "fd00::5/64", "routes": [V6_DEFAULT]}, "dns": {}}
    ips = [{"address": "10.244.0.5/24", "gateway": "10.244.0.1"}, {"address": "fd00::5/64"}]
    if version != "0.3.1" and version != "0.4.0":
        return {"cniVersion": version, "interfaces": [{"name": "eth0", "sandbox": SANDBOX}],
                "ips": [{**ip, "interface": 0} for ip in ips], "routes": [V4_DEFAULT, SERVICES, V6_DEFAULT]}
    return {"cniVersion": version, "interfaces": [{"name": "eth0", "sandbox": SANDBOX}],
            "ips": [{**ip, "version": "6" if ":" in ip["address"] else "4", "interface": 0} for ip in ips],
            "routes": [V4_DEFAULT, SERVICES, V6_DEFAULT], "dns": {}}


@pytest.mark.parametrize("version", ["0.2.0", "0.3.1", "0.4.0", "1.0.0"])
def test_a_delegate_records_its_result_without_the_default_route_another_interface_took(version: str) -> None:
    """The delegate's recorded result (CHECK's and DEL's ``prevResult``) loses the default route of the family
    another interface took (IPv4 here), in its own version and shape; the rest (IPv6's, other routes) stays."""
    raw = _cluster_result(version)
    conflist = {"cniVersion": version, "name": "cbr0", "plugins": [{"type": "bridge"}]}
    iface = _kept(conflist, "c1", "eth0")
    iface = replace(iface, driver={**iface.driver, "defaultsMoved": ["0.0.0.0/0"]})
    built = DelegateDriver(Chain(FakeExec(Expected("bridge", "ADD", raw)))).build(
        _ctx(), iface, contextlib.ExitStack())
    recorded = built.state["result"] if built.state else {}
    if version == "0.2.0":
        assert recorded == {**raw, "ip4": {**raw["ip4"], "routes": [SERVICES]}}, recorded
    else:
        assert recorded == {**raw, "routes": [SERVICES, V6_DEFAULT]}, recorded
    assert {r.dst for r in built.result.routes} == {"10.96.0.0/12", "::/0"}, "its share says the same"


@pytest.mark.parametrize("version", ["0.2.0", "1.0.0"])
def test_the_delegate_that_took_the_default_route_records_it(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The interface that took the pod's default route records it in its result (Multus's ``AddDefaultGWCache``),
    in place of one its own plugin gave (the kernel's went when the route was taken): its CHECK looks for the
    route the pod has."""
    _takes_no_route(monkeypatch)
    raw = _cluster_result(version)
    iface = _kept({"cniVersion": version, "name": "plain", "plugins": [{"type": "macvlan"}]}, "c1")
    iface = replace(iface, driver={**iface.driver, "defaultRoute": ["198.18.97.1"], "defaultsMoved": ["0.0.0.0/0"]})
    built = DelegateDriver(Chain(FakeExec(Expected("macvlan", "ADD", raw)))).build(
        _ctx(), iface, contextlib.ExitStack())
    recorded = built.state["result"] if built.state else {}
    taken = {"dst": "0.0.0.0/0", "gw": "198.18.97.1"}
    if version == "0.2.0":
        assert recorded["ip4"]["routes"] == [SERVICES, taken] and recorded["ip6"] == raw["ip6"], recorded
    else:
        assert recorded["routes"] == [SERVICES, V6_DEFAULT, taken], recorded
    assert [r.gw for r in built.result.routes if r.dst == "0.0.0.0/0"] == ["198.18.97.1"]


def test_del_and_check_tell_each_delegate_the_default_routes_it_has(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the verbs: eth0 (the cluster network) lost its default route to net1's NPWG ``default-route``; its
    CHECK and DEL get a ``prevResult`` without it, net1's with the one it took; DEL goes net1 first, so the default
    route it took is given back (``_default_route_back``) while eth0 is still there to carry it."""
    from tests.unit.test_networks import nad

    _takes_no_route(monkeypatch)
    fake = AnswerAll({"bridge": [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}, SERVICES]})
    node = _answering_node(fake, json.dumps([{"name": "plain", "default-route": ["198.18.97.1"]}]))
    node.source.add(nad("cbr0", {"cniVersion": "1.0.0", "type": "bridge"}, "kube-system"))
    node.source.add(nad("plain", {"cniVersion": "1.0.0", "type": "macvlan", "master": "eth1"}, "apps"))
    conf = {"clusterNetwork": "kube-system/cbr0"}
    result = node.call("ADD", config=conf)
    fake.calls.clear()
    node.call("CHECK", config={**conf, "prevResult": result})
    node.call("DEL", config=conf)
    told = [(p, v, c.get("prevResult", {}).get("routes")) for p, v, _, c in fake.calls]
    assert told == [("bridge", "CHECK", [SERVICES]),
                    ("macvlan", "CHECK", [{"dst": "0.0.0.0/0", "gw": "198.18.97.1"}]),
                    ("macvlan", "DEL", [{"dst": "0.0.0.0/0", "gw": "198.18.97.1"}]),
                    ("bridge", "DEL", [SERVICES])], told


def test_a_delegate_whose_add_and_rollback_del_both_failed_holds_up_nothing() -> None:
    """A delegate that fails every call (its binary missing, a plugin broken): its ADD answered nothing, so it holds
    nothing it answered for, and its failed rollback DEL is only logged (as Multus does): the attachment is gone,
    and the runtime's DEL answers at once instead of failing for as long as the plugin is broken."""
    fake = FakeExec(Expected("macvlan", "ADD", error=IOFailure("broken", "")),
                    Expected("macvlan", "DEL", error=IOFailure("broken", "")))
    node = _npwg_node(fake, "first")
    with pytest.raises(CniError):
        node.call("ADD")
    assert node.store.attachments() == []
    assert node.call("DEL") == {} and fake.expected == []



def test_gc_reaches_the_ipam_of_both_nads_sharing_a_name_and_a_plugin_type() -> None:
    """NAD a/storage and b/storage, both ``macvlan``, a with host-local, b with whereabouts (or host-local with
    another dataDir). ``collect`` keyed its lists by (name, top-level types) only: b's list was never GC'd, so its
    IPAM plugin was never told which attachments are gone. Now by the plugins as configured."""
    a = {"cniVersion": "1.1.0", "name": "storage",
         "plugins": [{"type": "macvlan", "master": "eth1", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}}]}
    b = {"cniVersion": "1.1.0", "name": "storage",
         "plugins": [{"type": "macvlan", "master": "eth2", "ipam": {"type": "whereabouts", "range": "10.2.0.0/24"}}]}
    fake = FakeExec(Expected("macvlan", "GC"), Expected("macvlan", "GC"))
    with contextlib.suppress(AssertionError):
        DelegateDriver(Chain(fake)).collect([_kept(a, "c1"), _kept(b, "c2")])
    told = sorted(c.get("ipam", {}).get("type", "") for _, v, _, c in fake.calls if v == "GC")
    assert told == ["host-local", "whereabouts"], f"GC reached only {told}"


# -- GC forwarded to the delegates: the attachments still on the node, not the runtime's list ------------------------

class _IpamExec:
    """A macvlan that execs plexus-ipam for its addresses (ADD, DEL, GC), as the real one does, over the node's
    daemon; ``during_add``: run once, after plexus-ipam answered a given container's ADD, before macvlan answers."""

    def __init__(self) -> None:
        self.plugin: Any = None
        self.during_add: dict[str, Any] = {}
        self.calls: list[tuple[str, str]] = []

    def run(self, plugin: str, env: Any, config: Any, timeout: float) -> Any:
        from ipamd.invoke.exec import PluginRun
        from ipamd.verbs.call import CniCall

        verb = env.get("CNI_COMMAND", "")
        self.calls.append((plugin, verb))
        assert plugin == "macvlan", plugin
        args = dict(p.split("=", 1) for p in env.get("CNI_ARGS", "").split(";") if "=" in p)
        call = CniCall(verb, env.get("CNI_CONTAINERID", ""), env.get("CNI_NETNS", ""), env.get("CNI_IFNAME", ""),
                       args, dict(config))
        answer = self.plugin.handle(call)
        if verb == "ADD":
            hook = self.during_add.pop(call.container_id, None)
            if hook is not None:
                hook()
            return PluginRun({"cniVersion": config["cniVersion"],
                              "interfaces": [{"name": call.ifname, "sandbox": call.netns}],
                              "ips": [{**answer["ips"][0], "interface": 0}]}, "", 0.0)
        return PluginRun({}, "", 0.0)


def _plexus_ipam_exec_node(*pods: str) -> tuple[Any, _IpamExec, Any]:
    """A node whose NAD ``first`` (CNI 1.1.0: it gets GC) is a macvlan exec'ing plexus-ipam, ``pods`` selecting it,
    and ``cni(verb, pod, container, network="plexus", **conf)``: a call of Plexus with ``delegateIPAM: exec``."""
    from ipamd.ipam.delegated import DelegatedAddresses
    from ipamd.verbs.call import CniCall
    from ipamd.verbs.ipam_plugin import IpamPlugin
    from tests.unit.delegation_node import attacher_node, npwg_pod
    from tests.unit.test_attacher import NETNS, NS
    from tests.unit.test_networks import nad

    fake = _IpamExec()
    ipam = {"type": "plexus-ipam", "range": "198.18.71.0/24"}
    node = attacher_node(fake, ipam)  # type: ignore[arg-type]
    node.source.add(nad("first", {"cniVersion": "1.1.0", "type": "macvlan", "master": "eth1", "ipam": ipam}, "apps"))
    fake.plugin = IpamPlugin(DelegatedAddresses(node.ipam, node.source), node.source, lambda: True)
    for name in pods:
        node.source.add(npwg_pod(name, f"uid-{name}", "first"))

    def cni(verb: str, pod: str, container: str, network: str = "plexus", **extra: Any) -> Any:
        args = {"K8S_POD_NAMESPACE": NS, "K8S_POD_NAME": pod, "K8S_POD_UID": f"uid-{pod}" if pod else ""}
        conf = {"cniVersion": "1.1.0", "name": network, "type": "plexus", "delegateIPAM": "exec", **extra}
        return node.attacher.handle(CniCall(verb, container, NETNS, "eth0", args, conf))

    return node, fake, cni


def _valid(*containers: str) -> dict[str, Any]:
    return {"cni.dev/valid-attachments": [{"containerID": c, "ifname": "eth0"} for c in containers]}


def test_plexus_gc_beside_an_exec_delegates_add_leaves_its_plexus_ipam_lease() -> None:
    """README: "GC leaves what an ADD still being answered holds". With ``delegateIPAM: exec``, the runtime's GC (its
    list made before pod p's ADD) reaches Plexus while p's macvlan has its plexus-ipam address and has not answered.
    ``Attacher.gc`` waits for p's lock and keeps p's attachment (its ADD finished since: ``still_wanted``), but the
    list it forwarded to the delegates (``DelegateDriver.collect(kept)``) was built from the runtime's list alone, so
    macvlan's GC exec'd plexus-ipam GC with only q valid, and p's address was released (quarantined, then handed out
    again) while p's interface carries it (found in review)."""
    node, fake, cni = _plexus_ipam_exec_node("q", "p")
    cni("ADD", "q", "cq")
    leased, go = threading.Event(), threading.Event()

    def hold() -> None:
        leased.set()
        assert go.wait(5)

    fake.during_add["cp"] = hold
    errors: list[BaseException] = []

    def run(*a: Any, **kw: Any) -> None:
        try:
            cni(*a, **kw)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t_add = threading.Thread(target=run, args=("ADD", "p", "cp"))
    t_add.start()
    assert leased.wait(5)
    t_gc = threading.Thread(target=run, args=("GC", "", ""), kwargs=_valid("cq"))  # made before p's ADD
    t_gc.start()
    t_gc.join(0.3)
    go.set()
    t_add.join(5)
    t_gc.join(5)
    assert not errors, errors
    assert {a.container_id for a in node.store.attachments()} == {"cq", "cp"}, "Plexus kept p's attachment"
    held = {lease.holder: lease.state for lease in node.store.all_leases()}
    assert held.get("CNI/first/cp/net1") == "bound", f"p's address let go while p uses it: {node.store.all_leases()}"


def test_gc_forwards_a_stale_list_to_the_delegates_and_an_add_made_meanwhile_loses_its_address() -> None:
    """59004b8 tells the delegates every attachment still recorded, but read them once, before it exec'd their GCs
    (``Attacher.gc``: ``kept`` read, then ``driver.collect(kept)``). A pod ADDed in between (recorded, its macvlan
    exec'ing plexus-ipam, answered: no call of it busy any more) was missing from the list the macvlan's GC got, and
    plexus-ipam's GC released its lease while its interface carried it (the address then handed out again). Here p's
    ADD is started after ``kept`` was read and before the delegate GC runs; GC holds the gate (exclusive) across
    both, so p's ADD waits for it and records its attachment once the delegates' GCs are done (found in review)."""
    node, _, cni = _plexus_ipam_exec_node("q", "p")
    cni("ADD", "q", "cq")
    driver = node.drivers["delegate"]
    real = driver.collect
    errors: list[BaseException] = []

    def add_p() -> None:
        try:
            cni("ADD", "p", "cp")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t_add = threading.Thread(target=add_p)

    def collect(kept: list[Any]) -> None:
        t_add.start()  # p's ADD, between GC's read of the store and its exec of the delegate's GC
        deadline = time.monotonic() + 5
        while t_add.is_alive() and not node.attacher.gc_gate.waiting() and time.monotonic() < deadline:
            time.sleep(0.001)  # until p's ADD is answered, or waits for the gate
        real(kept)

    driver.collect = collect
    cni("GC", "", "", **_valid("cq"))  # the runtime's list: p's ADD had not begun
    t_add.join(5)
    assert not t_add.is_alive() and not errors, errors
    assert {a.container_id for a in node.store.attachments()} == {"cq", "cp"}, "p is attached"
    held = {lease.holder: lease.state for lease in node.store.all_leases()}
    assert held.get("CNI/first/cp/net1") == "bound", f"p's address let go while p uses it: {node.store.all_leases()}"


def test_gc_of_one_plexus_configuration_leaves_the_delegates_lease_of_anothers_attachment() -> None:
    """Two Plexus configurations (``plexus``, ``plexus-b``) attach pods to one NAD whose macvlan execs plexus-ipam:
    the delegate's configuration (named after the NAD) is the same for both. GC of ``plexus`` (only q valid) tells
    macvlan every attachment still on the node, r's of ``plexus-b`` among them: r's lease stays (as Multus builds the
    list it forwards from its own cache). ``plexus-b``'s own GC then lets r go."""
    node, _, cni = _plexus_ipam_exec_node("q", "r")
    cni("ADD", "q", "cq")
    cni("ADD", "r", "cr", network="plexus-b")
    cni("GC", "", "", **_valid("cq"))
    assert {a.container_id for a in node.store.attachments()} == {"cq", "cr"}, "plexus-b's attachment is not plexus's"
    held = {lease.holder: lease.state for lease in node.store.all_leases()}
    assert held == {"CNI/first/cq/net1": "bound", "CNI/first/cr/net1": "bound"}, node.store.all_leases()
    cni("GC", "", "", network="plexus-b", **_valid("cq"))
    assert {a.container_id for a in node.store.attachments()} == {"cq"}
    held = {lease.holder: lease.state for lease in node.store.all_leases() if lease.holder}
    assert held == {"CNI/first/cq/net1": "bound"}, "r's own configuration's GC lets it go"


# -- GC of a configuration whose last attachment is gone --------------------------------------------------------------

class _Holding:
    """``ipvlan`` with a host-local-style IPAM, as a plugin holds state: its ADD takes an address for (configuration
    name, container, ifname) before it may fail (``fail_add``: killed at its deadline), its DEL lets it go unless it
    fails (``fail_del``), its GC lets go of every one of its name not listed (CNI 1.1). ``tuning`` holds nothing."""

    def __init__(self) -> None:
        self.held: set[tuple[str, str, str]] = set()
        self.fail_add: set[str] = set()
        self.fail_del: set[str] = set()
        self.fail_gc = False
        self.gcs: list[tuple[str, str, list[dict[str, str]]]] = []

    def run(self, plugin: str, env: Mapping[str, str], config: Mapping[str, Any], timeout: float) -> PluginRun:
        verb, name = env["CNI_COMMAND"], str(config["name"])
        if verb == "GC":
            valid = list(config["cni.dev/valid-attachments"])
            self.gcs.append((plugin, name, valid))
            if self.fail_gc:
                raise IOFailure("GC failed", "")
            if plugin == "ipvlan":
                listed = {(a["containerID"], a["ifname"]) for a in valid}
                self.held = {h for h in self.held if h[0] != name or h[1:] in listed}
            return PluginRun({}, "", 0.0)
        key = (name, env["CNI_CONTAINERID"], env["CNI_IFNAME"])
        if plugin == "tuning":
            return PluginRun(dict(config.get("prevResult") or {}) if verb == "ADD" else {}, "", 0.0)
        if verb == "ADD":
            self.held.add(key)
            if key[1] in self.fail_add:
                raise IOFailure("ipvlan timed out", "")
            return PluginRun({"cniVersion": config["cniVersion"], "interfaces": [{"name": key[2], "sandbox": SANDBOX}],
                              "ips": [{"address": "198.18.72.5/24", "interface": 0}]}, "", 0.0)
        if verb == "DEL":
            if key[1] in self.fail_del:
                raise IOFailure("ipvlan DEL failed", "")
            self.held.discard(key)
        return PluginRun({}, "", 0.0)


def _holding_node(fake: _Holding, used: UsedConfigurations | None = None) -> Any:
    """NAD ``second`` (CNI 1.1.0: it gets GC; ipvlan + tuning, host-local-style IPAM) and NAD ``first`` (1.1.0,
    never used here); pods ``a`` and ``b`` select ``second``."""
    from tests.unit.delegation_node import attacher_node, npwg_pod
    from tests.unit.test_networks import nad

    node = attacher_node(fake, {"type": "host-local", "subnet": "198.18.71.0/24"})  # type: ignore[arg-type]
    if used is not None:
        node.drivers["delegate"] = DelegateDriver(Chain(fake), used)
        node.attacher.drivers = node.drivers
    node.source.add(nad("first", {"cniVersion": "1.1.0", "type": "macvlan", "master": "eth1",
                                  "ipam": {"type": "host-local", "subnet": "198.18.71.0/24"}}, "apps"))
    node.source.add(nad("second", {"cniVersion": "1.1.0", "plugins": [
        {"type": "ipvlan", "master": "eth2", "ipam": {"type": "host-local", "subnet": "198.18.72.0/24"}},
        {"type": "tuning"}]}, "apps"))
    for pod in ("a", "b"):
        node.source.add(npwg_pod(pod, f"uid-{pod}", "second"))
    return node


def _holding_cni(node: Any, verb: str, pod: str, container: str, **extra: Any) -> Any:
    from tests.unit.delegation_node import call

    if verb != "GC":
        return call(node, verb, pod, f"uid-{pod}", container)
    from ipamd.verbs.call import CniCall
    from tests.unit.test_attacher import NETNS

    conf = {"cniVersion": "1.1.0", "name": "plexus", "type": "plexus", **extra}
    return node.attacher.handle(CniCall("GC", "", NETNS, "", {}, conf))


def _holding_gc(node: Any, *containers: str) -> Any:
    return _holding_cni(node, "GC", "", "", **_valid(*containers))


def _holding_leak(node: Any, fake: _Holding, container: str = "ca") -> None:
    """Pod a's ADD: ipvlan takes its address, then is killed at its deadline, and its rollback DEL fails too. It
    never answered, so the attachment is forgotten (``test_a_delegate_whose_add_and_rollback_del_both_failed_holds_up
    _nothing`` above): what it took stays held, and Plexus has no record of it."""
    fake.fail_add.add(container)
    fake.fail_del.add(container)
    with pytest.raises(CniError):
        _holding_cni(node, "ADD", "a", container)
    assert node.store.attachments() == []
    assert fake.held == {("second", container, "net1")}


def test_gc_reaches_a_configuration_whose_last_attachment_is_gone_and_its_ipam_lets_go() -> None:
    """``DelegateDriver.collect`` GC'd only the configurations of attachments still recorded: once a configuration's
    last attachment was gone, its plugins never got GC, and what its IPAM held for attachments that vanished without
    a DEL that succeeded (a failed ADD whose rollback DEL failed too, a plugin whose DEL left something) leaked for
    good. The NAD deleted meanwhile makes no difference: the configuration is the one run."""
    fake = _Holding()
    node = _holding_node(fake)
    _holding_leak(node, fake)
    node.source.remove("NetworkAttachmentDefinition", "apps", "second")
    _holding_gc(node)
    assert fake.held == set(), "host-local's address of the vanished attachment is let go"
    assert [(p, n, v) for p, n, v in fake.gcs] == [("ipvlan", "second", []), ("tuning", "second", [])]


def test_gc_never_reaches_a_configuration_unused_here_and_forgets_one_told_nothing_is_left() -> None:
    """NAD ``first`` was never run on this node: it gets no GC. ``second``'s, once a GC told it no attachment is
    left, is not GC'd again until it is used again."""
    fake = _Holding()
    node = _holding_node(fake)
    _holding_leak(node, fake)
    _holding_gc(node)
    _holding_gc(node)
    assert [p for p, _, _ in fake.gcs] == ["ipvlan", "tuning"], fake.gcs
    fake.fail_add.clear()
    fake.fail_del.clear()
    _holding_cni(node, "ADD", "b", "cb")
    _holding_cni(node, "DEL", "b", "cb")
    fake.gcs.clear()
    _holding_gc(node)
    assert [(p, v) for p, _, v in fake.gcs] == [("ipvlan", []), ("tuning", [])], "used again: GC'd again"


def test_a_configuration_with_attachments_left_is_told_them_and_gcd_again_after_its_last_goes() -> None:
    """b still attached: GC lists b, a's leaked address goes, b's stays; b DEL'd, the next GC still reaches the
    configuration (with nothing valid)."""
    fake = _Holding()
    node = _holding_node(fake)
    _holding_leak(node, fake)
    _holding_cni(node, "ADD", "b", "cb")
    _holding_gc(node, "cb")
    assert fake.held == {("second", "cb", "net1")}
    assert fake.gcs[0][2] == [{"containerID": "cb", "ifname": "net1"}]
    _holding_cni(node, "DEL", "b", "cb")
    fake.gcs.clear()
    _holding_gc(node)
    assert [(p, v) for p, _, v in fake.gcs] == [("ipvlan", []), ("tuning", [])]


def test_a_gc_that_failed_is_tried_again_at_the_next_holding_gc() -> None:
    fake = _Holding()
    node = _holding_node(fake)
    _holding_leak(node, fake)
    fake.fail_gc = True
    _holding_gc(node)  # the delegate's failure is logged: the runtime's GC of Plexus's own attachments succeeded
    assert fake.held == {("second", "ca", "net1")}
    fake.fail_gc = False
    _holding_gc(node)
    assert fake.held == set()


def test_the_configurations_used_outlive_a_restart(tmp_path: Path) -> None:
    """A daemon restarted (a node crash) after the attachment vanished, before any GC: the configurations it ran are
    kept beside its store, so the first GC after the restart still reaches them."""
    path = str(tmp_path / "delegates-used.json")
    fake = _Holding()
    node = _holding_node(fake, UsedConfigurations(path))
    _holding_leak(node, fake)
    restarted = _holding_node(fake, UsedConfigurations(path))
    _holding_gc(restarted)
    assert fake.held == set()
    assert UsedConfigurations(path).configurations() == {}, "dropped once told nothing is left"


def test_a_damaged_file_of_configurations_used_is_started_afresh(tmp_path: Path) -> None:
    path = tmp_path / "delegates-used.json"
    path.write_text("{not json")
    assert UsedConfigurations(str(path)).configurations() == {}


# -- cniVersions, disableCheck and disableGC as libcni reads them ("true"/"false" strings too) -------------------------

def test_cni_versions_raises_the_version_a_delegate_is_run_at() -> None:
    """``{"cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0"]}``: libcni runs the list at 1.1.0 (so it gets GC and
    STATUS); Plexus runs it at 1.0.0 and never forwards GC to it."""
    doc = {"cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0"], "name": "n", "plugins": [{"type": "bridge"}]}
    conflist = as_conflist(doc)
    plugins = FakeExec(Expected("bridge", "GC"))
    Chain(plugins).gc(_inv(conflist), [])
    assert [c[1] for c in plugins.calls] == ["GC"]


def test_disable_check_given_as_the_string_false_does_not_disable_check() -> None:
    conflist = {"cniVersion": "1.0.0", "name": "n", "disableCheck": "false", "plugins": [{"type": "bridge"}]}
    plugins = FakeExec(Expected("bridge", "CHECK"))
    Chain(plugins).check(_inv(conflist), {"cniVersion": "1.0.0"})
    assert [c[1] for c in plugins.calls] == ["CHECK"]


def test_disable_gc_given_as_the_string_false_does_not_disable_gc() -> None:
    conflist = {"cniVersion": "1.1.0", "name": "n", "disableGC": "false", "plugins": [{"type": "bridge"}]}
    plugins = FakeExec(Expected("bridge", "GC"))
    Chain(plugins).gc(_inv(conflist), [])
    assert [c[1] for c in plugins.calls] == ["GC"]


def test_a_lists_switches_are_read_as_libcni_reads_them() -> None:
    doc = {"cniVersion": "1.1.0", "name": "n", "disableCheck": "TRUE", "disableGC": "False", "plugins": [{"type": "b"}]}
    conflist = as_conflist(doc)
    assert (conflist["disableCheck"], conflist["disableGC"]) == (True, False)
    plugins = FakeExec()
    Chain(plugins).check(_inv(conflist), {"cniVersion": "1.1.0"})
    assert plugins.calls == [], "disabled"


def test_the_daemons_delegate_driver_keeps_its_used_configurations_beside_the_store(tmp_path: Path) -> None:
    """The record of configurations used lives beside the node's store (a hostPath that outlives the container), so
    a configuration whose last attachment went before a restart is still told to GC; a store in memory keeps none."""
    from ipamd.drivers.delegate import used_configurations_path
    from ipamd.drivers.table import all_drivers

    db = str(tmp_path / "state" / "plexus.db")
    assert used_configurations_path(db) == str(tmp_path / "state" / "delegate-configurations.json")
    assert used_configurations_path(":memory:") == ""
    driver = all_drivers(Chain(Exec()), used_configurations_path(db))[DelegateDriver.kind]
    assert isinstance(driver, DelegateDriver) and driver.used.path == used_configurations_path(db)


# -- what a daemon killed before the ADD's commit, or a namespace unmounted, leaves for the DEL --------------------
class Killed(BaseException):
    """A SIGKILL at a step: what the store has committed is what the next daemon finds."""


def test_the_del_of_an_add_killed_after_its_delegate_answered_gets_its_result_and_gives_the_route_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A delegate's result and the default route it took were stored only at the commit: a daemon killed between
    its ADD and the commit left the DEL (the runtime's, or the restarted daemon's recovery) no ``prevResult``
    (firewall's rules stay) and no route to give back (the pod keeps none). Both are stored as soon as the chain
    has answered, the routes before they are touched."""
    from tests.unit.test_attacher import Node, obj
    from tests.unit.test_networks import nad

    cluster = SavedRoute(socket.AF_INET, "198.18.90.1", 2)
    given: list[Any] = []
    stored_when_taken: list[Any] = []

    def take(pod: Any, ifn: str, gws: list[str]) -> list[Taken]:
        stored_when_taken.extend(i.driver.get("defaultRouteTaken") for a in node.store.attachments()
                                 for i in a.interfaces)
        return [Taken("0.0.0.0/0", gws[0], (cluster,))]

    monkeypatch.setattr("ipamd.netlink.default_route.set_default_route", take)
    monkeypatch.setattr("ipamd.netlink.default_route.defaults",  # the pod's routes, read before one is taken
                        lambda pod, family: [cluster] if family == socket.AF_INET else [])
    monkeypatch.setattr("ipamd.netlink.default_route.give_back_after_del",
                        lambda pod, ifn, taken: given.append(list(taken)))
    at_kill: list[Any] = []

    def fault(step: str) -> None:
        if step == "add:built":
            at_kill.extend(node.store.attachments())
            raise Killed(step)

    res = {"cniVersion": "1.0.0", "interfaces": [{"name": "net1", "sandbox": SANDBOX}],
           "ips": [{"address": "198.18.71.5/24", "interface": 0}]}
    fake = FakeExec(Expected("bridge", "ADD", res), Expected("firewall", "ADD", res),
                    Expected("firewall", "DEL"), Expected("bridge", "DEL"),  # the in-process undo (no kill really)
                    Expected("firewall", "DEL"), Expected("bridge", "DEL"))  # the DEL after the restart
    node = Node(fault)
    node.ipam._names = collections.defaultdict(str)
    node.drivers["delegate"] = DelegateDriver(Chain(fake))  # type: ignore[assignment]
    node.source.add(obj("Pod", "app", {}, uid="uid-app", annotations={
        "k8s.v1.cni.cncf.io/networks": '[{"name": "routed", "default-route": ["198.18.71.1"]}]'}))
    node.source.add(nad("routed", {"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}, {"type": "firewall"}]},
                        "apps"))
    with pytest.raises(Killed):
        node.call("ADD")
    assert [a.state for a in at_kill] == ["adding"]
    assert [[Taken.from_dict(t) for t in ts or ()] for ts in stored_when_taken] == \
        [[Taken("0.0.0.0/0", "198.18.71.1", (cluster,))]], \
        "the routes to give back are stored before they are taken"
    given.clear()
    undone = len(fake.calls)
    node.store.put_attachment(at_kill[0])  # the store as the killed daemon left it
    node.attacher.fault = lambda step: None
    node.call("DEL")
    assert node.store.attachments() == []
    dels = {p: c.get("prevResult") for p, v, _, c in fake.calls[undone:] if v == "DEL"}
    assert dels["firewall"] is not None and dels["firewall"]["ips"] == res["ips"], "the DEL gets no prevResult"
    assert given == [[Taken("0.0.0.0/0", "198.18.71.1", (cluster,))]], "the default route is not given back"


def test_a_namespace_path_that_is_no_namespace_is_gone_for_the_delegates_too(tmp_path: Path) -> None:
    """The runtime unmounted the namespace and left its file: the kernel drivers took it for gone, but a delegate
    was told the path, and its plugins' DEL refuses a path that is no namespace ("unknown FS magic"), for ever."""
    from ipamd.netlink.netns import pod_namespace
    from ipamd.verbs.attacher import _PodOnDemand

    left = tmp_path / "cni-1234"
    left.write_text("")
    with contextlib.ExitStack() as opened:
        pod = _PodOnDemand(pod_namespace, str(left), opened)
        assert pod.netlink() is None, "the kernel drivers take it for gone"
        assert pod.path() == "", "a delegate is told the path"
    with contextlib.ExitStack() as opened:
        assert _PodOnDemand(pod_namespace, "/proc/self/ns/net", opened).path() == "/proc/self/ns/net"

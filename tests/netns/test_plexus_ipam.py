"""plexus-ipam under Debian's reference plugins, in real network namespaces: a NAD's bridge or macvlan gets
its address from a Plexus pool (or a Whereabouts-style range) when Plexus delegates it, leased by the daemon
and handed over as ``static`` (no extra exec), or exec'd as an ordinary IPAM plugin (``delegateIPAM: exec``);
the addresses in the pods, the leases in the store, quarantine after DEL, and refusals leaving nothing."""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, shim_command
from tests.harness import Node, links_in, run
from tests.netns.test_crash import restart
from tests.netns.test_delegation import attachments, nad, pod
from tests.netns.test_plexusctl import ctl

REFERENCE = Path("/usr/lib/cni")
NS = "my-namespace"
NPWG = "k8s.v1.cni.cncf.io/networks"
POOL = """
apiVersion: network.deckhouse.io/v1alpha1
kind: ClusterIPAddressPool
metadata: {name: delegates}
spec:
  leaseTTL: 1h
  pools:
    - network: 198.18.70.0/24
      ranges: ["198.18.70.10-198.18.70.12"]
      routes: [{destination: 198.19.70.0/24, via: 198.18.70.1}]
"""

pytestmark = pytest.mark.netns


def link_plexus_ipam(bindir: Path) -> None:
    """``plexus-ipam`` as installed: a link to the plugin (the frozen one, else a wrapper of the module)."""
    cmd = shim_command()
    if len(cmd) == 1:
        (bindir / "plexus-ipam").symlink_to(cmd[0])
        return
    wrapper = bindir / "plexus-ipam"
    code = "import sys; sys.argv[0] = 'plexus-ipam'; from cni.shim import run; run()"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} exec {shlex.quote(sys.executable)} -c "
                       f"{shlex.quote(code)}\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def bindir(tmp_path: Path) -> Iterator[Path]:
    if not (REFERENCE / "bridge").exists():
        pytest.skip("Debian's containernetworking-plugins are not installed")
    d = tmp_path / "bin"
    d.mkdir()
    for plugin in ("bridge", "macvlan", "static", "host-local", "tuning", "loopback"):
        (d / plugin).symlink_to(REFERENCE / plugin)
    link_plexus_ipam(d)
    yield d


def ipam(node: Node, **keys: Any) -> dict[str, Any]:
    return {"type": "plexus-ipam", "socket": str(node.ipam_socket), **keys}


def bridge_nad(node: Node, name: str, bridge: str, **keys: Any) -> dict[str, Any]:
    return nad(name, {"cniVersion": "0.3.1", "type": "bridge", "bridge": bridge, "isGateway": False,
                      "ipam": ipam(node, **keys)})


def conf(node: Node, bindir: Path, **extra: Any) -> dict[str, Any]:
    return node.conf(binDir=str(bindir), **extra)


def ipam_calls(node: Node) -> list[str]:
    """The daemon's log lines of plexus-ipam's calls (its own socket)."""
    return [line for line in node.log_text().splitlines() if " IPAM " in line]


@pytest.mark.parametrize("delegate_ipam", ["lease", "exec"])
def test_a_nads_bridge_gets_its_address_from_a_plexus_pool(node: Node, bindir: Path, delegate_ipam: str) -> None:
    node.apply([*yaml.safe_load_all(POOL),
                bridge_nad(node, "pooled", "pxbr0", ipAddressPoolRef={"kind": "ClusterIPAddressPool",
                                                                     "name": "delegates"}),
                pod("app", {NPWG: "pooled"})])
    ns = node.pod_netns("app")
    c = conf(node, bindir, delegateIPAM=delegate_ipam)
    res = node.cni("ADD", "c1", ns, pod=(NS, "app"), conf=c)
    assert res.ok, (res, node.log_text()[-3000:])
    net1 = links_in(ns)["net1"]
    assert net1["addresses"] == ["198.18.70.10/24"], net1
    assert net1["routes"] == ["198.19.70.0/24 via 198.18.70.1"], "the pool's routes reach the pod"
    (lease,) = node.leases()
    assert (lease.address, lease.pool, lease.holder, list(lease.pods)) == (
        "198.18.70.10", "ClusterIPAddressPool/delegates", "CNI/pooled/c1/net1", [f"{NS}/app"])
    (record,) = attachments(node)
    plugin = record.interfaces[0].driver["invocation"]["conflist"]["plugins"][0]
    if delegate_ipam == "lease":
        assert plugin["ipam"] == {"type": "static", "addresses": [{"address": "198.18.70.10/24"}],
                                  "routes": [{"dst": "198.19.70.0/24", "gw": "198.18.70.1"}]}
        assert ipam_calls(node) == [], "no extra exec: the daemon leased before the delegate ran"
    else:
        assert plugin["ipam"]["type"] == "plexus-ipam"
        assert [line.split(" IPAM ")[1].split()[0] for line in ipam_calls(node)] == ["ADD"]
    assert node.cni("CHECK", "c1", ns, pod=(NS, "app"), conf={**c, "prevResult": res.json}).ok
    table = ctl(node, "ipam", "leases").stdout
    assert any(line.split()[:4] == ["198.18.70.10", "ClusterIPAddressPool/delegates", f"net1@{NS}/pooled",
                                    f"{NS}/app"] for line in table.splitlines()), table
    second = node.pod_netns("two")
    node.apply([pod("two", {NPWG: "pooled"})])
    assert node.cni("ADD", "c2", second, pod=(NS, "two"), conf=c).ok
    assert links_in(second)["net1"]["addresses"] == ["198.18.70.11/24"]
    for _ in range(2):
        assert node.cni("DEL", "c1", ns, pod=(NS, "app"), conf=c).ok
    assert set(links_in(ns)) == {"lo"}
    states = {lease.address: (lease.state, list(lease.pods)) for lease in node.leases()}
    assert states == {"198.18.70.10": ("orphaned", []), "198.18.70.11": ("bound", [f"{NS}/two"])}, \
        "released to quarantine for the pool's leaseTTL"
    assert node.cni("DEL", "c2", second, pod=(NS, "two"), conf=c).ok
    assert {lease.state for lease in node.leases()} == {"orphaned"}


WHEREABOUTS_MACVLAN = {  # Whereabouts's README example, as its users have it, but for "type"
    "cniVersion": "0.3.0", "name": "whereaboutsexample", "type": "macvlan", "master": "uplink0", "mode": "bridge",
    "ipam": {"type": "whereabouts", "range": "198.18.71.225/28", "exclude": ["198.18.71.229/30", "198.18.71.236/32"],
             "gateway": "198.18.71.238", "routes": [{"dst": "198.19.71.0/24"}],
             "kubernetes": {"kubeconfig": "/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig"},
             "log_file": "/tmp/whereabouts.log", "log_level": "debug"},
}


def test_a_whereabouts_nad_switches_by_its_type_alone(node: Node, bindir: Path) -> None:
    node_ns = os.path.basename(node.netns)
    run("ip", "-n", node_ns, "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    run("ip", "-n", node_ns, "link", "set", "uplink0", "up")
    config = json.loads(json.dumps(WHEREABOUTS_MACVLAN))
    config["ipam"].update(type="plexus-ipam", socket=str(node.ipam_socket))
    node.apply([nad("whereaboutsexample", config)]
               + [pod(p, {NPWG: "whereaboutsexample"}) for p in ("a", "b", "c", "d")])
    got, netns = {}, {}
    for p in ("a", "b", "c", "d"):
        ns = netns[p] = node.pod_netns(p)
        res = node.cni("ADD", f"c-{p}", ns, pod=(NS, p), conf=conf(node, bindir))
        assert res.ok, (res, node.log_text()[-3000:])
        link = links_in(ns)["net1"]
        assert link["kind"] == "macvlan" and link["routes"] == ["198.19.71.0/24 via 198.18.71.238"]
        got[p] = link["addresses"][0]
    # .225-.238 from .225 on, .228-.231 and .236 excluded, the gateway .238 never a pod's
    assert got == {"a": "198.18.71.225/28", "b": "198.18.71.226/28", "c": "198.18.71.227/28",
                   "d": "198.18.71.232/28"}
    assert {lease.pool for lease in node.leases()} == {"ImplicitPool/unnamed"}
    (implicit,) = json.loads(ctl(node, "ipam", "pools", "-o", "json").stdout)[-1:]
    assert implicit == {"pool": "ImplicitPool/unnamed", "networks": ["198.18.71.224/28"], "size": 8, "used": 4,
                        "quarantined": 0, "free": 4, "leaseTTLSeconds": 60.0,
                        "implicitFor": "whereaboutsexample"}, implicit
    shown = ctl(node, "ipam", "pools").stdout
    assert "ImplicitPool/unnamed (whereaboutsexample)" in shown, shown
    for p in ("a", "b", "c", "d"):
        assert node.cni("DEL", f"c-{p}", netns[p], pod=(NS, p), conf=conf(node, bindir)).ok
        assert set(links_in(netns[p])) == {"lo"}
    assert {lease.state for lease in node.leases()} == {"orphaned"}


@pytest.mark.parametrize(("keys", "extra", "code", "field"), [
    ({"ipAddressPoolRef": {"kind": "ClusterIPAddressPool", "name": "nope"}}, {}, 103,
     "plugins[0].ipam.ipAddressPoolRef.name"),
    ({"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pool-a", "namespace": "other"}}, {}, 103,
     "plugins[0].ipam.ipAddressPoolRef.namespace"),
    ({"range": "198.18.72.0/33"}, {}, 7, "plugins[0].ipam.range"),
    ({"range": "198.18.72.0/24", "exclude": ["198.18.73.0/28"]}, {}, 7, "plugins[0].ipam.exclude[0]"),
    ({"range": "198.18.72.0/24", "etcd_host": "x"}, {}, 7, "plugins[0].ipam.etcd_host"),
    ({"range": "198.18.72.0/24"}, {"ips": ["198.18.99.1/24"]}, 7, f"{NPWG}[0].ips"),
])
def test_bad_input_fails_the_add_naming_the_field_and_leaves_nothing(
        node: Node, bindir: Path, keys: dict[str, Any], extra: dict[str, Any], code: int, field: str) -> None:
    config = {"cniVersion": "0.3.1", "name": "bad", "type": "bridge", "bridge": "pxbr9", "isGateway": False,
              "capabilities": {"ips": True}, "ipam": ipam(node, **keys)}
    node.apply([nad("bad", config), pod("app", {NPWG: json.dumps([{"name": "bad", **extra}])})])
    ns = node.pod_netns("app")
    res = node.cni("ADD", "c1", ns, pod=(NS, "app"), conf=conf(node, bindir))
    assert not res.ok and (res.code, res.json["details"]) == (code, field), res
    assert set(links_in(ns)) == {"lo"} and "pxbr9" not in node.host_links()
    assert node.leases() == [] and attachments(node) == []


def test_an_address_asked_for_that_another_pod_holds_names_the_holder(node: Node, bindir: Path) -> None:
    config = {"cniVersion": "0.3.1", "name": "fixed", "type": "bridge", "bridge": "pxbr1", "isGateway": False,
              "capabilities": {"ips": True}, "ipam": ipam(node, range="198.18.73.0/24")}
    element = json.dumps([{"name": "fixed", "ips": ["198.18.73.50/24"]}])
    node.apply([nad("fixed", config), pod("first", {NPWG: element}), pod("second", {NPWG: element})])
    first, second = node.pod_netns("first"), node.pod_netns("second")
    assert node.cni("ADD", "c1", first, pod=(NS, "first"), conf=conf(node, bindir)).ok
    assert links_in(first)["net1"]["addresses"] == ["198.18.73.50/24"]
    res = node.cni("ADD", "c2", second, pod=(NS, "second"), conf=conf(node, bindir))
    assert res.code == 104 and res.json["details"] == f"{NPWG}[0].ips", res
    assert f"pod {NS}/first (net1 on {NS}/fixed)" in res.json["msg"], res.json
    assert set(links_in(second)) == {"lo"} and len(node.leases()) == 1
    assert node.cni("DEL", "c1", first, pod=(NS, "first"), conf=conf(node, bindir)).ok
    run("ip", "-n", os.path.basename(node.netns), "link", "del", "pxbr1", check=False)


def test_an_ipv6_range_reaches_the_pod_and_the_npwg_status(node: Node, bindir: Path) -> None:
    """A NAD's IPv6 range: the bridge delegate puts the leased IPv6 address on the pod's interface, and the pod's
    NPWG network-status lists it."""
    from ipamd.api import ipam_pb2 as pb
    from tests.netns.test_dual_stack import ipv6_of

    node.apply([bridge_nad(node, "six", "pxbr6", range="2001:2:0:76::/64", routes=[{"dst": "2001:2:0:77::/64"}],
                           gateway="2001:2:0:76::1"),
                pod("app", {NPWG: "six"})])
    ns = node.pod_netns("app")
    res = node.cni("ADD", "c1", ns, pod=(NS, "app"), conf=conf(node, bindir))
    assert res.ok, (res, node.log_text()[-3000:])
    assert list(ipv6_of(ns, "net1")["addresses"]) == ["2001:2:0:76::2/64"], "the gateway ::1 is never a pod's"
    assert ipv6_of(ns, "net1")["routes"] == [("2001:2:0:77::/64", "2001:2:0:76::1")]
    pods = node.grpc("ListPods", pb.ListPodsRequest(namespace=NS, name="app")).pods
    (entry,) = json.loads(pods[0].network_status_json)
    assert (entry["name"], entry["interface"], entry["ips"]) == (f"{NS}/six", "net1", ["2001:2:0:76::2"])
    assert node.cni("DEL", "c1", ns, pod=(NS, "app"), conf=conf(node, bindir)).ok
    assert set(links_in(ns)) == {"lo"}


STORED_POOL = """
apiVersion: network.deckhouse.io/v1alpha1
kind: ClusterIPAddressPool
metadata: {name: stored}
spec:
  leaseTTL: 1h
  pools:
    - network: 198.18.77.0/24
"""


@pytest.mark.parametrize("delegate_ipam", ["lease", "exec"])
def test_a_pool_entry_stored_before_its_network_was_refused_is_not_served_to_a_nad(
        node: Node, bindir: Path, delegate_ipam: str) -> None:
    """A pool stored (a file in the objects directory) with an fe80::/64 entry before writes of one were refused: ADD
    of Plexus's own networks of it is refused (``attacher._refuse_unserved``), but a NAD's plexus-ipam, leased by the
    daemon or exec'd by the bridge, handed its addresses out. Now refused the same way, code 7 naming the NAD, the pool
    and ``spec.pools[1].network``, leaving no lease; a pod that got its address before is still deleted."""
    (node.objects / "stored-pool.yaml").write_text(STORED_POOL)
    node.apply([bridge_nad(node, "pooled", "pxbr7", ipAddressPoolRef={"kind": "ClusterIPAddressPool",
                                                                     "name": "stored"}),
                pod("old", {NPWG: "pooled"}), pod("app", {NPWG: "pooled"})])
    c = conf(node, bindir, delegateIPAM=delegate_ipam)
    old = node.pod_netns("old")
    assert node.cni("ADD", "c-old", old, pod=(NS, "old"), conf=c).ok
    (node.objects / "stored-pool.yaml").write_text(STORED_POOL + "    - network: fe80::/64\n")
    assert not [p for p in node.sync() if "stored" in str(p)]
    held = [(x.address, x.state) for x in node.leases()]
    assert held == [("198.18.77.1", "bound")], held
    ns = node.pod_netns("app")
    res = node.cni("ADD", "c1", ns, pod=(NS, "app"), conf=c)
    assert not res.ok and (res.code, res.json["details"]) == (7, "spec.pools[1].network"), res
    for words in (f"NetworkAttachmentDefinition {NS}/pooled uses ClusterIPAddressPool stored",
                  "spec.pools[1].network", "fe80::/64", "link-local"):
        assert words in res.json["msg"], res.json
    assert set(links_in(ns)) == {"lo"}
    assert [(x.address, x.state) for x in node.leases()] == held and len(attachments(node)) == 1
    assert node.cni("DEL", "c1", ns, pod=(NS, "app"), conf=c).ok
    assert node.cni("DEL", "c-old", old, pod=(NS, "old"), conf=c).ok
    assert set(links_in(old)) == {"lo"} and attachments(node) == []
    assert [(x.address, x.state) for x in node.leases()] == [("198.18.77.1", "orphaned")]
    run("ip", "-n", os.path.basename(node.netns), "link", "del", "pxbr7", check=False)


def test_an_add_killed_while_its_bridge_held_a_plexus_ipam_lease_is_undone_at_the_restart(
        node: Node, bindir: Path) -> None:
    """``delegateIPAM: exec``: the bridge's plexus-ipam leased, the daemon is killed before the commit. The restarted
    daemon's recovery runs the bridge's DEL, whose plexus-ipam DEL needs the daemon's IPAM socket: served (to the
    recovered containers' DELs alone) before the recovery, so the ADD is undone then, not left ``adding`` for a
    reconcile round."""
    node.apply([*yaml.safe_load_all(POOL),
                bridge_nad(node, "pooled", "pxbr8", ipAddressPoolRef={"kind": "ClusterIPAddressPool",
                                                                     "name": "delegates"}),
                pod("app", {NPWG: "pooled"})])
    ns = node.pod_netns("app")
    c = conf(node, bindir, delegateIPAM="exec")
    restart(node, env={"PLEXUS_FAULT": "add:built"})
    res = node.cni("ADD", "c1", ns, pod=(NS, "app"), conf=c)
    assert not res.ok and node.wait_exit(15) == -signal.SIGKILL, res
    node.proc = None
    assert [line.split(" IPAM ")[1].split()[0] for line in ipam_calls(node)] == ["ADD"], "the bridge's lease"
    node.reconcile_interval = 3600  # nothing but the recovery at start may undo it
    restart(node)
    told = [line for line in node.log_text().splitlines() if "pyroute2" not in line]
    assert any("recovered adding attachment" in line for line in told), "\n".join(line for line in told if "DEBUG" not in line)
    assert not any("could not recover attachment" in line for line in told), told
    assert attachments(node) == [] and set(links_in(ns)) == {"lo"}
    assert [(x.address, x.state) for x in node.leases()] == [("198.18.70.10", "orphaned")]
    assert [line.split(" IPAM ")[1].split()[0] for line in ipam_calls(node)] == ["ADD", "DEL"]
    assert node.cni("DEL", "c1", ns, pod=(NS, "app"), conf=c).ok
    run("ip", "-n", os.path.basename(node.netns), "link", "del", "pxbr8", check=False)

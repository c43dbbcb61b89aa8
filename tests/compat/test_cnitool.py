"""Plexus chained after Debian's reference ``bridge`` plugin, driven by the CNI project's own client.

``cnitool`` (libcni 1.1.2, built from Debian's sources by scripts/install-cni-client.sh) runs a conflist
``bridge`` → ``plexus`` exactly as a runtime does: each plugin in order with the previous result as
``prevResult``, the final result cached and handed back on CHECK and DEL, plugins run in reverse on DEL.
It runs inside the node namespace, because the bridge plugin makes its bridge in the caller's netns.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, shim_command
from tests.harness import BASE_OBJECTS, Node, links_in, pod_manifest, run

pytestmark = pytest.mark.compat

CACHE = Path(os.environ.get("PLEXUS_TEST_CACHE", "/var/cache/plexus-test"))
CNITOOL = CACHE / "bin" / "cnitool"
REFERENCE = Path("/usr/lib/cni")
NET_NAME = "plexus-chain"
BRIDGE = "cni-plx0"
BRIDGE_SUBNET = "198.18.200.0/24"
NS = "my-namespace"
LIBCNI_CACHE = Path("/var/lib/cni/results")  # libcni's default CacheDir (cnitool sets none)


@pytest.fixture(scope="session")
def cnitool() -> Path:
    """The cnitool binary and the reference plugins, built/installed on first use."""
    if not (CNITOOL.is_file() and os.access(CNITOOL, os.X_OK) and (REFERENCE / "bridge").exists()):
        proc = subprocess.run(["bash", str(REPO / "scripts" / "install-cni-client.sh")], capture_output=True,
                              text=True, timeout=1800, env=dict(os.environ, PLEXUS_TEST_CACHE=str(CACHE)))
        if proc.returncode != 0 or not CNITOOL.is_file():
            pytest.skip(f"cnitool is absent ({CNITOOL}) and scripts/install-cni-client.sh could not build it "
                        f"(exit {proc.returncode}): {proc.stderr[-800:]}")
    for plugin in ("bridge", "host-local", "loopback"):
        if not (REFERENCE / plugin).exists():
            pytest.skip(f"reference plugin {REFERENCE / plugin} is missing (containernetworking-plugins)")
    return CNITOOL


@pytest.fixture
def node() -> Iterator[Node]:
    n = Node()
    try:
        n.apply(BASE_OBJECTS, sync=False)
        n.start()
        yield n
    finally:
        print(f"--- plexus-ipamd log ---\n{n.log_text()[-6000:]}")  # shown only when the test failed
        run("ip", "-n", n.name, "link", "del", BRIDGE, check=False)
        n.close()


def _plugin_dir(root: Path) -> Path:
    """A CNI_PATH with the reference plugins and plexus (the frozen binary, else a wrapper of the module)."""
    bindir = root / "bin"
    bindir.mkdir()
    for plugin in ("bridge", "host-local", "loopback"):
        (bindir / plugin).symlink_to(REFERENCE / plugin)
    cmd = shim_command()
    if len(cmd) == 1:
        (bindir / "plexus").symlink_to(cmd[0])
    else:
        wrapper = bindir / "plexus"
        wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} exec {shlex.join(cmd)} \"$@\"\n")
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bindir


def _conflist(root: Path, node: Node, dirname: str = "net.d", bridge: bool = True) -> tuple[Path, Path]:
    """``bridge`` → ``plexus`` (or, with ``bridge=False``, the same network name with Plexus alone)."""
    confdir = root / dirname
    confdir.mkdir()
    data_dir = root / "host-local"
    plugins: list[dict[str, Any]] = [
        {"type": "plexus", "socket": str(node.socket), "logFile": str(node.dir / "plexus.log")},
    ]
    if bridge:
        plugins.insert(0, {
            "type": "bridge", "bridge": BRIDGE, "isGateway": False, "ipMasq": False,
            "ipam": {"type": "host-local", "subnet": BRIDGE_SUBNET, "dataDir": str(data_dir)},
        })
    conflist = {"cniVersion": "1.0.0", "name": NET_NAME, "plugins": plugins}
    (confdir / f"10-{NET_NAME}.conflist").write_text(json.dumps(conflist, indent=2))
    return confdir, data_dir


class Cnitool:
    def __init__(self, binary: Path, node: Node, confdir: Path, bindir: Path, pod: str) -> None:
        self.binary = binary
        self.node = node
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "NETCONFPATH": str(confdir),
            "CNI_PATH": str(bindir),
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={pod}",
            "CNI_IFNAME": "eth0",
        }

    def __call__(self, verb: str, netns: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net={self.node.netns}", str(self.binary), verb, NET_NAME, netns],
                              env=self.env, capture_output=True, text=True, timeout=120)


def _cached_results(netns: str) -> list[Path]:
    """libcni's cache entries of this attachment (cnitool derives the container ID from the netns path)."""
    import hashlib

    cid = "cnitool-" + hashlib.sha512(os.path.abspath(netns).encode()).hexdigest()[:20]
    return list(LIBCNI_CACHE.glob(f"{NET_NAME}-{cid}-*")) if LIBCNI_CACHE.is_dir() else []


def _iface_of(result: dict[str, Any], address_prefix: str) -> dict[str, Any]:
    """The result's interface an IP whose address starts with ``address_prefix`` points at."""
    ips = [ip for ip in result.get("ips", []) if ip["address"].startswith(address_prefix)]
    assert len(ips) == 1, (address_prefix, result)
    assert "interface" in ips[0], ips[0]
    return dict(result["interfaces"][ips[0]["interface"]], address=ips[0]["address"])


def test_cnitool_bridge_then_plexus_add_check_del(cnitool: Path, node: Node) -> None:
    node.apply([pod_manifest("app", [
        {"type": "Network", "name": "net-a", "ifName": "net1"},
        {"type": "Network", "name": "net-b"},
    ])])
    pod_ns = node.pod_netns("app")
    root = Path(tempfile.mkdtemp(prefix="cnitool-", dir=node.dir))
    bindir = _plugin_dir(root)
    confdir, data_dir = _conflist(root, node)
    tool = Cnitool(cnitool, node, confdir, bindir, "app")
    try:
        # -- ADD: bridge's eth0 first, then Plexus appends net1 and net2 to its prevResult ----------------
        add = tool("add", pod_ns)
        assert add.returncode == 0, (add.stdout, add.stderr, node.log_text()[-3000:])
        result = json.loads(add.stdout)
        assert result["cniVersion"] == "1.0.0"
        names = [i["name"] for i in result["interfaces"]]
        assert names[0] == BRIDGE, names
        in_pod = [i["name"] for i in result["interfaces"] if i.get("sandbox") == pod_ns]
        assert in_pod == ["eth0", "net1", "net2"], result
        eth0 = _iface_of(result, "198.18.200.")
        net1 = _iface_of(result, "198.18.10.")
        net2 = _iface_of(result, "198.18.11.")
        assert (eth0["name"], net1["name"], net2["name"]) == ("eth0", "net1", "net2"), result
        assert net1["address"] == "198.18.10.10/24"
        assert all("version" not in ip for ip in result["ips"])
        assert {"dst": "198.19.10.0/24", "gw": "198.18.10.1"} in result.get("routes", [])

        # kernel: all three interfaces in the pod, with the addresses the result claims
        links = links_in(pod_ns)
        assert set(links) == {"lo", "eth0", "net1", "net2"}, links
        assert links["eth0"]["addresses"] == [eth0["address"]]
        assert links["net1"]["addresses"] == [net1["address"]]
        assert links["net2"]["addresses"] == [net2["address"]]
        assert links["eth0"]["mac"] == eth0["mac"] and links["net1"]["mac"] == net1["mac"]
        assert all(links[n]["up"] for n in ("eth0", "net1", "net2"))
        assert links["net1"]["routes"] == ["198.19.10.0/24 via 198.18.10.1"]
        host = node.host_links()
        assert host[BRIDGE]["kind"] == "bridge"
        assert len(node.plx_links()) == 2
        assert {host[p]["master"] for p in node.plx_links()} <= {"plx-br-600", "plx-br-601"}
        bridge_veths = [n for n, link in host.items() if link["master"] == BRIDGE]
        assert len(bridge_veths) == 1, host
        status = node.pod_status(NS, "app")
        assert status is not None and [s["ifName"] for s in status] == ["net1", "net2"]
        leases = node.leases()
        assert sorted(lease.address for lease in leases) == sorted(
            a["address"].split("/")[0] for a in (net1, net2))
        assert all(list(lease.pods) == [f"{NS}/app"] for lease in leases)
        assert _cached_results(pod_ns), "libcni cached the chain's result"
        assert [p.name for p in (data_dir / NET_NAME).glob("198.18.200.*")] == [eth0["address"].split("/")[0]]

        # -- CHECK: libcni hands every plugin the cached (merged) result -----------------------------------
        check = tool("check", pod_ns)
        if check.returncode != 0:
            # The reference bridge plugin (containernetworking-plugins 1.1.1) checks *every* IP of the
            # chain's final result on its own CNI_IFNAME (ip.ValidateExpectedInterfaceIPs(args.IfName,
            # result.IPs)), so no plugin chained after it may add addresses on other interfaces and pass
            # its CHECK. That and only that may fail here: Plexus's own CHECK must pass (below).
            assert re.fullmatch(r"Failed to match addr 198\.18\.1[01]\.\d+/24 on interface eth0\n", check.stderr), \
                (check.stdout, check.stderr, node.log_text()[-3000:])
        plexus_only = Cnitool(cnitool, node, _conflist(root, node, "net.d-plexus", bridge=False)[0], bindir, "app")
        check = plexus_only("check", pod_ns)
        assert check.returncode == 0, (check.stdout, check.stderr, node.log_text()[-3000:])
        run("ip", "-n", os.path.basename(pod_ns), "link", "set", "net2", "down")
        broken = plexus_only("check", pod_ns)
        assert broken.returncode == 1 and "net2 is down" in broken.stderr, (broken.stdout, broken.stderr)
        run("ip", "-n", os.path.basename(pod_ns), "link", "set", "net2", "up")
        assert plexus_only("check", pod_ns).returncode == 0

        # -- DEL: plexus first, then bridge; nothing of the pod left ---------------------------------------
        dele = tool("del", pod_ns)
        assert dele.returncode == 0, (dele.stdout, dele.stderr, node.log_text()[-3000:])
        assert set(links_in(pod_ns)) == {"lo"}
        assert not node.plx_links()
        host = node.host_links()
        assert not [n for n, link in host.items() if link["kind"] == "veth"], host
        assert node.pod_status(NS, "app") is None
        assert all(list(lease.pods) == [] for lease in node.leases()), node.leases()
        assert not list((data_dir / NET_NAME).glob("198.18.200.*")), "host-local released eth0's address"
        assert not _cached_results(pod_ns)

        again = tool("del", pod_ns)
        assert again.returncode == 0, (again.stdout, again.stderr)
        assert set(links_in(pod_ns)) == {"lo"}
        assert not node.plx_links()
    finally:
        for leftover in _cached_results(pod_ns):
            leftover.unlink(missing_ok=True)


def test_cnitool_second_pod_gets_its_own_addresses(cnitool: Path, node: Node) -> None:
    """Two pods through the chain: distinct bridge and pool addresses; deleting one leaves the other intact."""
    node.apply([pod_manifest(p, [{"type": "Network", "name": "net-a"}]) for p in ("one", "two")])
    root = Path(tempfile.mkdtemp(prefix="cnitool-", dir=node.dir))
    bindir = _plugin_dir(root)
    confdir, _ = _conflist(root, node)
    netns = {p: node.pod_netns(p) for p in ("one", "two")}
    tools = {p: Cnitool(cnitool, node, confdir, bindir, p) for p in ("one", "two")}
    try:
        results = {}
        for p in ("one", "two"):
            add = tools[p]("add", netns[p])
            assert add.returncode == 0, (p, add.stdout, add.stderr, node.log_text()[-3000:])
            results[p] = json.loads(add.stdout)
        addrs = {p: sorted(ip["address"] for ip in r["ips"]) for p, r in results.items()}
        assert len(set(addrs["one"]) | set(addrs["two"])) == 4, addrs
        for p in ("one", "two"):
            links = links_in(netns[p])
            assert sorted(a for n in ("eth0", "net1") for a in links[n]["addresses"]) == addrs[p]
        assert tools["one"]("del", netns["one"]).returncode == 0
        assert set(links_in(netns["one"])) == {"lo"}
        assert set(links_in(netns["two"])) == {"lo", "eth0", "net1"}
        check = Cnitool(cnitool, node, _conflist(root, node, "net.d-plexus", bridge=False)[0], bindir, "two")(
            "check", netns["two"])
        assert check.returncode == 0, (check.stdout, check.stderr)
        assert len(node.plx_links()) == 1
        dele = tools["two"]("del", netns["two"])
        assert dele.returncode == 0, (dele.stdout, dele.stderr)
        assert not node.plx_links()
    finally:
        for p in ("one", "two"):
            for leftover in _cached_results(netns[p]):
                leftover.unlink(missing_ok=True)



def test_cnitool_plexus_delegating_the_cluster_network_and_a_nad(cnitool: Path, node: Node) -> None:
    """Plexus as the only plugin of the list, as a Multus node runs it: libcni execs Plexus, Plexus execs the
    cluster network's bridge (eth0, from a file) and four NADs from libcni's CNI_PATH: bridge + host-local,
    macvlan (on a veth end) + static + tuning (IP and MAC from the annotation), host-device, a tuning chain."""
    root = Path(tempfile.mkdtemp(prefix="cnitool-", dir=node.dir))
    bindir = _plugin_dir(root)
    data_dir = root / "host-local"
    cluster = root / "cluster.conflist"
    cluster.write_text(json.dumps({"cniVersion": "1.0.0", "name": "cbr", "plugins": [
        {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "isDefaultGateway": True,
         "ipam": {"type": "host-local", "subnet": BRIDGE_SUBNET, "dataDir": str(data_dir)}}]}))
    nads = {
        "side": {"cniVersion": "0.3.1", "type": "bridge", "bridge": "cni-plx1",
                 "ipam": {"type": "host-local", "subnet": "198.18.201.0/24", "dataDir": str(data_dir)}},
        "static-mac": {"cniVersion": "0.3.1", "name": "static-mac", "plugins": [
            {"type": "macvlan", "capabilities": {"ips": True}, "master": "cni-up0", "mode": "bridge",
             "ipam": {"type": "static"}},
            {"type": "tuning", "capabilities": {"mac": True}}]},
        "hostdev": {"cniVersion": "0.3.1", "type": "host-device", "device": "cni-dev0"},
        "tuned": {"cniVersion": "1.0.0", "name": "tuned", "plugins": [
            {"type": "bridge", "bridge": "cni-plx2",
             "ipam": {"type": "host-local", "subnet": "198.18.202.0/24", "dataDir": str(data_dir)}},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.net4.arp_notify": "1"}}]},
    }
    for name, ends in (("cni-up0", "cni-up1"), ("cni-dev0", "cni-dev1")):
        run("ip", "-n", node.name, "link", "add", name, "type", "veth", "peer", "name", ends)
        run("ip", "-n", node.name, "link", "set", name, "up")
    for plugin in ("macvlan", "static", "tuning", "host-device"):
        (bindir / plugin).symlink_to(REFERENCE / plugin)
    networks = [{"name": "side"}, {"name": "static-mac", "ips": ["198.18.203.5/24"], "mac": "02:aa:bb:cc:dd:05"},
                {"name": "hostdev"}, {"name": "tuned"}]
    node.apply([*({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                   "metadata": {"name": name, "namespace": NS}, "spec": {"config": json.dumps(conf)}}
                  for name, conf in nads.items()),
                {**pod_manifest("app", []), "metadata": {"name": "app", "namespace": NS, "annotations": {
                    "k8s.v1.cni.cncf.io/networks": json.dumps(networks)}}}])
    confdir = root / "net.d"
    confdir.mkdir()
    (confdir / "00-plexus.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": NET_NAME, "plugins": [
        {"type": "plexus", "socket": str(node.socket), "clusterNetwork": str(cluster)}]}))
    pod_ns = node.pod_netns("app")
    tool = Cnitool(cnitool, node, confdir, bindir, "app")
    try:
        add = tool("add", pod_ns)
        assert add.returncode == 0, (add.stdout, add.stderr, node.log_text()[-3000:])
        result = json.loads(add.stdout)
        eth0, net1 = _iface_of(result, "198.18.200."), _iface_of(result, "198.18.201.")
        net2, net4 = _iface_of(result, "198.18.203."), _iface_of(result, "198.18.202.")
        assert (eth0["name"], net1["name"], net2["name"], net4["name"]) == ("eth0", "net1", "net2", "net4")
        links = links_in(pod_ns)
        assert links["eth0"]["addresses"] == [eth0["address"]] and links["net1"]["addresses"] == [net1["address"]]
        assert links["net2"]["kind"] == "macvlan" and links["net2"]["mac"] == "02:aa:bb:cc:dd:05"
        assert links["net2"]["addresses"] == ["198.18.203.5/24"], "static IPAM from the annotation's ips"
        assert "net3" in links and "cni-dev0" not in node.host_links(), "host-device moved the device in"
        arp_notify = subprocess.run(["ip", "netns", "exec", os.path.basename(pod_ns), "cat",
                                     "/proc/sys/net/ipv4/conf/net4/arp_notify"], capture_output=True, text=True)
        assert arp_notify.stdout.strip() == "1", "the chain's tuning ran after its bridge"
        check = tool("check", pod_ns)
        assert check.returncode == 0, (check.stdout, check.stderr, node.log_text()[-3000:])
        for _ in range(2):
            dele = tool("del", pod_ns)
            assert dele.returncode == 0, (dele.stdout, dele.stderr, node.log_text()[-3000:])
        assert set(links_in(pod_ns)) == {"lo"}
        assert not [p for p in data_dir.rglob("198.18.20*")], "every host-local address given back"
        assert "cni-dev0" in node.host_links(), "host-device gave the device back"
    finally:
        for leftover in _cached_results(pod_ns):
            leftover.unlink(missing_ok=True)
        for link in ("cni-plx1", "cni-plx2", "cni-up0", "cni-dev0"):
            run("ip", "-n", node.name, "link", "del", link, check=False)


def test_cnitool_runs_reference_plugins_with_plexus_ipam(cnitool: Path, node: Node) -> None:
    """No Plexus plugin in the list: libcni execs the reference bridge and macvlan, and they exec plexus-ipam as
    their IPAM plugin, as under Multus or any runtime. One pool (a ClusterIPAddressPool) behind both networks:
    every address distinct, each lease held by its attachment, all quarantined after DEL."""
    from tests.netns.test_plexus_ipam import link_plexus_ipam

    node.apply([{"apiVersion": "network.deckhouse.io/v1alpha1", "kind": "ClusterIPAddressPool",
                 "metadata": {"name": "shared"},
                 "spec": {"leaseTTL": "1h", "pools": [{"network": "198.18.75.0/24",
                                                       "ranges": ["198.18.75.20-198.18.75.29"]}]}}])
    root = Path(tempfile.mkdtemp(prefix="cnitool-", dir=node.dir))
    bindir = _plugin_dir(root)
    (bindir / "macvlan").symlink_to(REFERENCE / "macvlan")
    link_plexus_ipam(bindir)
    run("ip", "-n", node.name, "link", "add", "cni-up0", "type", "veth", "peer", "name", "cni-up1")
    run("ip", "-n", node.name, "link", "set", "cni-up0", "up")
    pool = {"type": "plexus-ipam", "socket": str(node.ipam_socket),
            "ipAddressPoolRef": {"kind": "ClusterIPAddressPool", "name": "shared"}}
    confdir = root / "net.d"
    confdir.mkdir()
    lists = {
        NET_NAME: {"cniVersion": "1.0.0", "name": NET_NAME, "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": False, "ipam": pool}]},
        "plexus-mac": {"cniVersion": "0.4.0", "name": "plexus-mac", "plugins": [
            {"type": "macvlan", "master": "cni-up0", "mode": "bridge", "ipam": pool}]},
    }
    for name, conflist in lists.items():
        (confdir / f"10-{name}.conflist").write_text(json.dumps(conflist))
    pods = {p: node.pod_netns(p) for p in ("one", "two")}
    tools = {p: Cnitool(cnitool, node, confdir, bindir, p) for p in pods}

    def cnitool_on(p: str, verb: str, network: str) -> subprocess.CompletedProcess[str]:
        env = dict(tools[p].env, CNI_IFNAME="eth0" if network == NET_NAME else "net1")
        return subprocess.run(["nsenter", f"--net={node.netns}", str(cnitool), verb, network, pods[p]], env=env,
                              capture_output=True, text=True, timeout=120)

    try:
        got = set()
        for p in pods:
            for network, ifname in ((NET_NAME, "eth0"), ("plexus-mac", "net1")):
                add = cnitool_on(p, "add", network)
                assert add.returncode == 0, (add.stdout, add.stderr, node.log_text()[-3000:])
                address = json.loads(add.stdout)["ips"][0]["address"]
                assert links_in(pods[p])[ifname]["addresses"] == [address]
                got.add(address)
        assert len(got) == 4 and all(a.startswith("198.18.75.2") for a in got), got
        assert links_in(pods["one"])["net1"]["kind"] == "macvlan"
        holders = sorted(lease.holder.rsplit("/", 1)[1] for lease in node.leases())
        assert holders == ["eth0", "eth0", "net1", "net1"], node.leases()
        for p in pods:
            check = cnitool_on(p, "check", "plexus-mac")  # macvlan, then plexus-ipam's CHECK of the lease
            assert check.returncode == 0, (check.stdout, check.stderr)
            check = cnitool_on(p, "check", NET_NAME)
            # bridge 1.1.1's CHECK compares the bridge's MAC with the one it reported at ADD; the kernel gives a
            # bridge the lowest MAC of its ports, so another pod's veth may change it: that and only that may fail
            assert check.returncode == 0 or re.fullmatch(r"Bridge interface cni-plx0 Mac doesn't match: \S+\n",
                                                         check.stderr), (check.stdout, check.stderr)
        for p in pods:
            for network in (NET_NAME, "plexus-mac"):
                for _ in range(2):
                    dele = cnitool_on(p, "del", network)
                    assert dele.returncode == 0, (dele.stdout, dele.stderr)
            assert set(links_in(pods[p])) == {"lo"}
        assert {lease.state for lease in node.leases()} == {"orphaned"} and len(node.leases()) == 4
    finally:
        for p in pods:
            for leftover in _cached_results(pods[p]):
                leftover.unlink(missing_ok=True)
            for leftover in LIBCNI_CACHE.glob("plexus-mac-*") if LIBCNI_CACHE.is_dir() else []:
                leftover.unlink(missing_ok=True)
        run("ip", "-n", node.name, "link", "del", "cni-up0", check=False)

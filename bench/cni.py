"""Exec'ing CNI plugins exactly as a runtime does, timed, and the configurations the bench feeds them.

Every exec is timed with ``time.perf_counter()`` around ``subprocess.run`` and checked: a non-zero
exit, an error object on stdout or an ADD result that lacks the addresses it should have fails the
run with the plugin's output (a failed ADD must never be timed as a fast one).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.node import BenchError, BenchNode

POD_ANNOTATIONS = "io.kubernetes.cri.pod-annotations"
SPEC_ANNOTATION = "network.deckhouse.io/networks-spec"
POD_NAMESPACE = "bench"
MAX_NETS = 4

# Address plan, all inside 198.18.0.0/15 (RFC 2544, benchmarking).
PLEXUS_SUBNETS = {i: f"198.18.{32 * (i - 1)}.0/19" for i in range(1, MAX_NETS + 1)}  # 198.18.0.0-127.255
REF_SUBNETS = {i: f"198.18.{128 + 4 * (i - 1)}.0/22" for i in range(1, MAX_NETS + 1)}  # 198.18.128.0-143.255
CLUSTER_SUBNET = "198.18.144.0/22"
DELEGATE_SUBNETS = {i: f"198.18.{192 + 4 * (i - 1)}.0/22" for i in range(1, MAX_NETS + 1)}  # 198.18.192.0-207.255
DELEGATE_CLUSTER_SUBNET = "198.18.208.0/22"
IPAM_DELEGATE_SUBNETS = {1: "198.18.212.0/22", 2: "198.18.216.0/22"}  # NADs whose IPAM is plexus-ipam
IPAM_EXEC_SUBNET = "198.18.220.0/22"  # bridge exec'd by the runtime with plexus-ipam
NPWG_NETWORKS = "k8s.v1.cni.cncf.io/networks"
API_POOL_SUBNET = "198.18.160.0/20"
RSS_POOL_SUBNET = "198.18.176.0/20"
FILL_POOL_BASE = "198.19.0.0"


@dataclass
class Pod:
    name: str
    uid: str
    cid: str
    netns_name: str
    netns: str
    results: dict[str, Any] = field(default_factory=dict)  # what each ADD returned, by CNI_IFNAME/network

    @property
    def cni_args(self) -> str:
        return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={POD_NAMESPACE};K8S_POD_NAME={self.name};"
                f"K8S_POD_INFRA_CONTAINER_ID={self.cid};K8S_POD_UID={self.uid}")


def bridge_plugin(bridge: str, subnet: str, data_dir: str) -> dict[str, Any]:
    return {"type": "bridge", "bridge": bridge, "isGateway": False, "ipMasq": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir}}


def plexus_ipam(socket: str, pool: str) -> dict[str, Any]:
    return {"type": "plexus-ipam", "socket": socket, "ipAddressPoolRef": {"kind": "IPAddressPool", "name": pool}}


def objects(fill_prefix: int, data_dir: str, ipam_socket: str) -> list[dict[str, Any]]:
    """The manifests the bench's daemon serves: a VLAN class, Networks net-1..4 each with its pool,
    pools for the gRPC scenarios, NetworkAttachmentDefinitions nad-1..4 (bridge + host-local), and nadip-1..2
    (bridge + plexus-ipam) with their pools."""
    api = "network.deckhouse.io/v1alpha1"

    def pool(name: str, cidr: str, ttl: str = "1m") -> dict[str, Any]:
        return {"apiVersion": api, "kind": "IPAddressPool", "metadata": {"name": name, "namespace": POD_NAMESPACE},
                "spec": {"leaseTTL": ttl, "pools": [{"network": cidr}]}}

    docs: list[dict[str, Any]] = [
        {"apiVersion": api, "kind": "NetworkClass", "metadata": {"name": "bench-class"},
         "spec": {"vlan": {"idPool": ["3000-3099"]}}},
    ]
    for i, cidr in PLEXUS_SUBNETS.items():
        docs.append(pool(f"pool-{i}", cidr))
        docs.append({"apiVersion": api, "kind": "Network", "metadata": {"name": f"net-{i}", "namespace": POD_NAMESPACE},
                     "spec": {"networkClass": "bench-class",
                              "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": f"pool-{i}"}}}})
    for i, cidr in DELEGATE_SUBNETS.items():
        config = {"cniVersion": "1.0.0", "name": f"nad-{i}", "plugins": [bridge_plugin(f"plxb-d{i}", cidr, data_dir)]}
        docs.append({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                     "metadata": {"name": f"nad-{i}", "namespace": POD_NAMESPACE}, "spec": {"config": json.dumps(config)}})
    for i, cidr in IPAM_DELEGATE_SUBNETS.items():
        docs.append(pool(f"pool-dip-{i}", cidr))
        plugin = {"type": "bridge", "bridge": f"plxb-i{i}", "isGateway": False, "ipMasq": False,
                  "ipam": plexus_ipam(ipam_socket, f"pool-dip-{i}")}
        config = {"cniVersion": "1.0.0", "name": f"nadip-{i}", "plugins": [plugin]}
        docs.append({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                     "metadata": {"name": f"nadip-{i}", "namespace": POD_NAMESPACE},
                     "spec": {"config": json.dumps(config)}})
    docs.append(pool("pool-ipam", IPAM_EXEC_SUBNET))
    docs.append(pool("pool-api", API_POOL_SUBNET))
    docs.append(pool("pool-rss", RSS_POOL_SUBNET))
    docs.append(pool("pool-fill", f"{FILL_POOL_BASE}/{fill_prefix}"))
    return docs


class Cni:
    def __init__(self, node: BenchNode, plexus: str, ref_dir: str) -> None:
        self.node = node
        self.plexus = plexus
        self.ref_dir = ref_dir
        self.bridge = os.path.join(ref_dir, "bridge")

    # -- pods -----------------------------------------------------------------------------------
    def new_pod(self) -> Pod:
        netns_name, path = self.node.new_pod_netns()
        return Pod(f"pod-{netns_name.rsplit('-', 1)[1]}", str(uuid.uuid4()), uuid.uuid4().hex + uuid.uuid4().hex,
                   netns_name, path)

    def remove_pod(self, pod: Pod) -> None:
        self.node.del_pod_netns(pod.netns_name)

    # -- configurations -------------------------------------------------------------------------
    def plexus_conf(self, nets: list[int], version: str = "1.0.0", name: str = "plexus-bench",
                    prev: Any = None) -> dict[str, Any]:
        spec = [{"type": "Network", "name": f"net-{n}", "ifName": f"net{k + 1}"} for k, n in enumerate(nets)]
        conf: dict[str, Any] = {
            "cniVersion": version, "name": name, "type": "plexus", "socket": str(self.node.socket),
            "logFile": str(self.node.shim_log), "timeoutSeconds": 60, "capabilities": {POD_ANNOTATIONS: True},
            "runtimeConfig": {POD_ANNOTATIONS: {SPEC_ANNOTATION: json.dumps(spec)}},
        }
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    @property
    def ipam_bin(self) -> str:
        """A CNI_PATH with the reference plugins and plexus-ipam (a link to the plugin under test)."""
        d = self.node.dir / "cni-bin"
        if not d.exists():
            d.mkdir()
            for name in os.listdir(self.ref_dir):
                (d / name).symlink_to(os.path.join(self.ref_dir, name))
            (d / "plexus-ipam").symlink_to(os.path.realpath(self.plexus))
        return str(d)

    def ipam_conf(self, prev: Any = None) -> dict[str, Any]:
        conf: dict[str, Any] = {"cniVersion": "1.0.0", "name": "ipam-net", "type": "bridge", "bridge": "plxb-ie",
                                "isGateway": False, "ipMasq": False,
                                "ipam": plexus_ipam(str(self.node.ipam_socket), "pool-ipam")}
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def ipam_add(self, pod: Pod) -> float:
        t, out = self.exec("bridge", "ADD", self.ipam_conf(), pod, ifname="net1", expect_ips=1, cni_path=self.ipam_bin)
        pod.results["ipam"] = out
        return t

    def ipam_del(self, pod: Pod) -> float:
        return self.exec("bridge", "DEL", self.ipam_conf(pod.results.get("ipam")), pod, ifname="net1",
                         cni_path=self.ipam_bin)[0]

    def delegating_conf(self, nads: int, ipam: str = "") -> dict[str, Any]:
        """Plexus as a Multus node runs it: the only plugin, the cluster network (bridge + host-local, eth0)
        delegated from a file, and ``nads`` NetworkAttachmentDefinitions from the pod's annotation (those whose
        IPAM is plexus-ipam when ``ipam`` says how the daemon is to get it to them: lease or exec)."""
        cluster = self.node.dir / "cluster.conflist"
        if not cluster.exists():
            cluster.write_text(json.dumps({"cniVersion": "1.0.0", "name": "cluster", "plugins": [
                bridge_plugin("plxb-dc", DELEGATE_CLUSTER_SUBNET, str(self.node.hostlocal_dir))]}))
        networks = ", ".join(f"{'nadip' if ipam else 'nad'}-{i}" for i in range(1, nads + 1))
        return {"cniVersion": "1.0.0", "name": "plexus-multus", "type": "plexus", "socket": str(self.node.socket),
                "logFile": str(self.node.shim_log), "clusterNetwork": str(cluster),
                "binDir": self.ipam_bin if ipam else self.ref_dir, "delegateIPAM": ipam or "lease",
                "capabilities": {POD_ANNOTATIONS: True},
                "runtimeConfig": {POD_ANNOTATIONS: {NPWG_NETWORKS: networks}}}

    def delegating_add(self, pod: Pod, nads: int, ipam: str = "") -> float:
        t, out = self.exec("plexus", "ADD", self.delegating_conf(nads, ipam), pod, expect_ips=1 + nads)
        pod.results["plexus"] = out
        return t

    def delegating_del(self, pod: Pod, nads: int, ipam: str = "") -> float:
        return self.exec("plexus", "DEL", {**self.delegating_conf(nads, ipam), "prevResult": pod.results.get("plexus")},
                         pod)[0]

    def bridge_conf(self, net: int | str, version: str = "1.0.0", prev: Any = None) -> dict[str, Any]:
        """``bridge`` + ``host-local``: net 1..4 (one bridge and subnet each) or "cluster" (eth0)."""
        if net == "cluster":
            name, bridge, subnet = "cluster", "plxb-cl", CLUSTER_SUBNET
        else:
            name, bridge, subnet = f"ref-net{net}", f"plxb-r{net}", REF_SUBNETS[int(net)]
        conf: dict[str, Any] = {
            "cniVersion": version, "name": name, "type": "bridge", "bridge": bridge, "isGateway": False,
            "ipMasq": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": str(self.node.hostlocal_dir)},
        }
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    # -- exec -----------------------------------------------------------------------------------
    def exec(self, plugin: str, verb: str, conf: dict[str, Any], pod: Pod | None = None, ifname: str = "eth0",
             expect_ips: int | None = None, cni_path: str = "") -> tuple[float, Any]:
        """Run one plugin call; (seconds, parsed stdout). Raises ``BenchError`` on any failure."""
        argv = [self.plexus if plugin == "plexus" else os.path.join(self.ref_dir, plugin)]
        env = {"CNI_COMMAND": verb, "CNI_PATH": cni_path or self.ref_dir,
               "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin")}
        if pod is not None and verb in ("ADD", "DEL", "CHECK"):
            env.update(CNI_CONTAINERID=pod.cid, CNI_NETNS=pod.netns, CNI_IFNAME=ifname, CNI_ARGS=pod.cni_args)
        data = json.dumps(conf).encode()
        started = time.perf_counter()
        proc = subprocess.run(argv, input=data, env=env, capture_output=True, timeout=120)
        elapsed = time.perf_counter() - started
        out: Any = None
        problem = ""
        if proc.stdout.strip():
            try:
                out = json.loads(proc.stdout)
            except ValueError:
                problem = "stdout is not JSON"
        if proc.returncode != 0:
            problem = f"exit code {proc.returncode}"
        elif isinstance(out, dict) and "code" in out:
            problem = f"error object on stdout (code {out['code']})"
        elif verb == "ADD":
            ips = out.get("ips") if isinstance(out, dict) else None
            if not isinstance(ips, list) or (expect_ips is not None and len(ips) != expect_ips):
                problem = f"ADD result has {len(ips) if isinstance(ips, list) else 'no'} ips, expected {expect_ips}"
        elif verb == "VERSION" and not (isinstance(out, dict) and out.get("supportedVersions")):
            problem = "VERSION printed no supportedVersions"
        if problem:
            where = f" container={pod.cid[:12]} netns={pod.netns} ifname={ifname}" if pod else ""
            extra = f"\n{self.node.daemon_output(15)}" if plugin == "plexus" and self.node.proc is not None else ""
            raise BenchError(
                f"{argv[0]} {verb}{where} failed after {elapsed * 1000:.1f} ms: {problem}\n"
                f"stdout: {proc.stdout.decode(errors='replace').strip()[:2000]}\n"
                f"stderr: {proc.stderr.decode(errors='replace').strip()[-2000:]}\n"
                f"config: {json.dumps(conf)[:2000]}{extra}"
            )
        return elapsed, out

    # -- what one pod costs, per side -------------------------------------------------------------
    def plexus_add(self, pod: Pod, nets: list[int]) -> float:
        t, out = self.exec("plexus", "ADD", self.plexus_conf(nets), pod, expect_ips=len(nets))
        pod.results["plexus"] = out
        return t

    def plexus_del(self, pod: Pod, nets: list[int]) -> float:
        t, _ = self.exec("plexus", "DEL", self.plexus_conf(nets, prev=pod.results.get("plexus")), pod)
        return t

    def bridges_add(self, pod: Pod, nets: list[int]) -> float:
        total = 0.0
        for k, n in enumerate(nets):
            t, out = self.exec("bridge", "ADD", self.bridge_conf(n), pod, ifname=f"net{k + 1}", expect_ips=1)
            pod.results[f"net{k + 1}"] = out
            total += t
        return total

    def bridges_del(self, pod: Pod, nets: list[int]) -> float:
        total = 0.0
        for k in reversed(range(len(nets))):  # a runtime deletes in reverse order
            t, _ = self.exec("bridge", "DEL", self.bridge_conf(nets[k], prev=pod.results.get(f"net{k + 1}")), pod,
                             ifname=f"net{k + 1}")
            total += t
        return total

    def chained_add(self, pod: Pod) -> tuple[float, float]:
        """Cluster network (bridge, eth0) then plexus with prevResult: (total, plexus part)."""
        t1, first = self.exec("bridge", "ADD", self.bridge_conf("cluster"), pod, expect_ips=1)
        conf = self.plexus_conf([1, 2], name="cluster", prev=first)
        t2, out = self.exec("plexus", "ADD", conf, pod, expect_ips=3)
        pod.results["eth0"], pod.results["plexus"] = first, out
        return t1 + t2, t2

    def chained_del(self, pod: Pod) -> tuple[float, float]:
        conf = self.plexus_conf([1, 2], name="cluster", prev=pod.results.get("plexus"))
        t1, _ = self.exec("plexus", "DEL", conf, pod)
        t2, _ = self.exec("bridge", "DEL", self.bridge_conf("cluster", prev=pod.results.get("plexus")), pod)
        return t1 + t2, t1

    def ref_chained_add(self, pod: Pod, nets: int = 2) -> float:
        """The cluster network and ``nets`` networks, each exec'd by the runtime itself (no meta-plugin)."""
        t, out = self.exec("bridge", "ADD", self.bridge_conf("cluster"), pod, expect_ips=1)
        pod.results["eth0"] = out
        return t + self.bridges_add(pod, list(range(1, nets + 1)))

    def ref_chained_del(self, pod: Pod, nets: int = 2) -> float:
        t = self.bridges_del(pod, list(range(1, nets + 1)))
        t2, _ = self.exec("bridge", "DEL", self.bridge_conf("cluster", prev=pod.results.get("eth0")), pod)
        return t + t2


def hostlocal_reservations(node: BenchNode) -> list[str]:
    """Addresses host-local still holds (its dataDir keeps one file per reserved address)."""
    out: list[str] = []
    if node.hostlocal_dir.exists():
        for net in node.hostlocal_dir.iterdir():
            if net.is_dir():
                out.extend(f"{net.name}/{f.name}" for f in net.iterdir()
                           if not f.name.startswith("last_reserved_ip") and f.name != "lock")
    return out


def check_version_support(cni: Cni) -> dict[str, Any]:
    _, plexus = cni.exec("plexus", "VERSION", {"cniVersion": "1.0.0"})
    _, ref = cni.exec("bridge", "VERSION", {"cniVersion": "1.0.0"})
    for needed in ("1.0.0", "1.1.0"):
        if needed not in plexus["supportedVersions"]:
            raise BenchError(f"{cni.plexus} does not support cniVersion {needed}: {plexus}")
    if "1.0.0" not in ref["supportedVersions"]:
        raise BenchError(f"{cni.bridge} does not support cniVersion 1.0.0: {ref}")
    return {"plexus": plexus["supportedVersions"], "bridge": ref["supportedVersions"]}


def describe_plugin(path: str) -> dict[str, Any]:
    st = os.stat(path)
    info: dict[str, Any] = {"path": path, "realpath": os.path.realpath(path),
                            "mtime": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(st.st_mtime))}
    return info

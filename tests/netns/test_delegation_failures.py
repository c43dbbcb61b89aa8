"""Delegation that goes wrong, in real namespaces: every bad input is a CNI error naming the NAD or the
field, and leaves nothing behind (no link, no host-local lease, no record, no status); a delegate that
hangs is killed and the ADD rolled back; one failing after another succeeded DELs the first; a daemon
killed while a delegate runs restarts to all or nothing (the delegate it left running is killed first);
parallel delegation keeps the same guarantees."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import wait_for
from tests.harness import CniResult, Node, links_in, run
from tests.netns.test_crash import restart
from tests.netns.test_delegation import (
    NPWG,
    NS,
    REFERENCE,
    attachments,
    bridge_conf,
    leased_files,
    nad,
    npwg_status,
    pod,
)

pytestmark = pytest.mark.netns

FAKES = {
    "fail-quiet": "exit 1",
    "fail-add": '[ "$CNI_COMMAND" = ADD ] && exit 1\nexit 0',  # its DEL succeeds
    "garbage": "echo 'this is not json'",
    "hang": "sleep 60",
    "err-json": "echo 'a secret stack trace' >&2\n"
                "echo '{\"cniVersion\": \"0.3.1\", \"code\": 7, \"msg\": \"bad master\", \"details\": \"eth9\"}'\nexit 1",
    # its ADD runs the bridge plugin only once the test creates slow.go: no timing of the test's can let it run early
    # (its DEL, the restarted daemon's undoing, at once); without it for 2 minutes (the test failed), it fails
    "slow-bridge": 'echo "$$" > "$(dirname "$0")/slow.pid"\nif [ "$CNI_COMMAND" = ADD ]; then\n  i=0\n'
                   '  while [ ! -e "$(dirname "$0")/slow.go" ]; do\n'
                   '    i=$((i + 1)); [ "$i" -gt 1200 ] && exit 1; sleep 0.1\n  done\nfi\nexec /usr/lib/cni/bridge',
}


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    for name, body in FAKES.items():
        (d / name).write_text(f"#!/bin/sh\n{body}\n")
        (d / name).chmod(0o755)
    return d


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "host-local"
    d.mkdir()
    return d


def conf(node: Node, bin_dir: Path, **extra: Any) -> dict[str, Any]:
    return node.conf(**{"binDir": f"{bin_dir}:{REFERENCE}", "delegateTimeoutSeconds": 2, **extra})


def add(node: Node, bin_dir: Path, name: str, annotations: dict[str, str], objects: list[dict[str, Any]] | None = None,
        **extra: Any) -> tuple[CniResult, str]:
    for doc in objects or []:  # written as a user would edit the directory, invalid ones too (plexusctl refuses them)
        (node.objects / f"{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc))
    node.apply([pod(name, annotations)])
    ns = node.pod_netns(name)
    return node.cni("ADD", f"c-{name}", ns, pod=(NS, name), conf=conf(node, bin_dir, **extra)), ns


def running(pid: int) -> bool:
    """Whether the process runs: a zombie is dead (killed, not yet reaped by whoever inherited it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def assert_nothing_left(node: Node, ns: str, name: str, data_dir: Path) -> None:
    assert set(links_in(ns)) == {"lo"}, links_in(ns)
    assert leased_files(data_dir) == []
    assert attachments(node) == []
    assert npwg_status(node, NS, name) is None and node.pod_status(NS, name) is None
    assert not [n for n in node.host_links() if n.startswith("veth")], "the bridge plugin's host end is gone"


def fake_nad(name: str, plugin: str) -> dict[str, Any]:
    return nad(name, {"cniVersion": "0.3.1", "type": plugin})


@pytest.mark.parametrize(("annotations", "objects", "code", "named"), [
    pytest.param({NPWG: "ghost"}, [], 103, "NetworkAttachmentDefinition my-namespace/ghost", id="unknown-nad"),
    pytest.param({NPWG: "other/bridge-net"}, [], 103, "namespaceIsolation", id="isolation"),
    pytest.param({NPWG: "not-json"}, [{**nad("not-json", None), "spec": {"config": "{oops"}}], 103, "spec.config",
                 id="config-not-json"),
    pytest.param({NPWG: "no-plugins"}, [{**nad("no-plugins", None), "spec": {"config": json.dumps(
        {"cniVersion": "1.0.0", "plugins": []})}}], 103, "plugins", id="conflist-without-plugins"),
    pytest.param({NPWG: "escape"}, [{**nad("escape", None), "spec": {"config": json.dumps(
        {"cniVersion": "1.0.0", "type": "../../../bin/sh"})}}], 103, "not a plugin name", id="type-is-a-path"),
    pytest.param({NPWG: "missing"}, [fake_nad("missing", "no-such-plugin")], 5, "no-such-plugin", id="binary-missing"),
    pytest.param({NPWG: "quiet"}, [fake_nad("quiet", "fail-quiet")], 5, "my-namespace/quiet", id="exit-1-silently"),
    pytest.param({NPWG: "garbage"}, [fake_nad("garbage", "garbage")], 5, "not JSON", id="prints-garbage"),
    pytest.param({NPWG: "err"}, [fake_nad("err", "err-json")], 7, "bad master", id="its-own-cni-error"),
    pytest.param({NPWG: "bridge-net, quiet"}, [fake_nad("quiet", "fail-quiet")], 5, "quiet", id="second-fails"),
    pytest.param({NPWG: "[{\"name\": \"bridge-net\""}, [], 102, NPWG, id="json-form-broken"),
    pytest.param({NPWG: "a/b/c"}, [], 102, f"{NPWG}[0]", id="comma-form-broken"),
    pytest.param({NPWG: json.dumps([{"name": "bridge-net", "ips": ["198.18.60.5/24"]}])}, [], 102, "capability",
                 id="ips-without-capability"),
    pytest.param({NPWG: json.dumps([{"name": "bridge-net", "default-route": ["198.18.60.1"]},
                                    {"name": "bridge-two", "default-route": ["198.18.61.1"]}])}, [], 102,
                 "default-route", id="two-default-routes"),
    pytest.param({NPWG: "bridge-net@net5, bridge-two@net5"}, [], 102, "net5", id="one-name-twice"),
    pytest.param({NPWG: json.dumps([{"name": "bridge-net", "ips": ["198.18.60.5/24"], "ipam-claim-reference": "c"}])},
                 [], 102, "ipam-claim-reference", id="ips-and-claim"),
    pytest.param({NPWG: json.dumps([{"name": "bridge-net", "cni-args": "x=y"}])}, [], 102, "cni-args",
                 id="cni-args-not-a-map"),
    pytest.param({NPWG: "x," * 400_000 + "x"}, [], 102, "larger than", id="megabyte-annotation"),
])
def test_bad_delegation_is_refused_and_leaves_nothing(node: Node, bin_dir: Path, data_dir: Path,
                                                     annotations: dict[str, str], objects: list[dict[str, Any]],
                                                     code: int, named: str) -> None:
    node.apply([nad("bridge-net", bridge_conf("badbr0", "198.18.60.0/24", data_dir)),
                nad("bridge-two", bridge_conf("badbr1", "198.18.61.0/24", data_dir)),
                nad("bridge-net", bridge_conf("otherbr", "198.18.62.0/24", data_dir), namespace="other")])
    res, ns = add(node, bin_dir, "app", annotations, objects, namespaceIsolation=True)
    assert res.code == code, res
    assert named in res.json["msg"] or named in res.json["details"], res
    assert "secret stack trace" not in res.stdout, "a plugin's stderr never goes raw into the CNI answer"
    assert_nothing_left(node, ns, "app", data_dir)
    assert node.cni("DEL", "c-app", ns, pod=(NS, "app"), conf=conf(node, bin_dir)).ok


def test_a_delegates_own_error_keeps_its_code_msg_and_details(node: Node, bin_dir: Path, data_dir: Path) -> None:
    res, ns = add(node, bin_dir, "app", {NPWG: "err"}, [fake_nad("err", "err-json")])
    assert (res.code, res.json["msg"], res.json["details"]) == (7, "my-namespace/err (net1): bad master", "eth9"), res
    assert_nothing_left(node, ns, "app", data_dir)


def test_debians_macvlan_on_a_master_that_does_not_exist(node: Node, bin_dir: Path, data_dir: Path) -> None:
    """What Debian's macvlan (containernetworking-plugins 1.1.1) prints, ``{"code": 999, "msg": "Link not found"}``,
    comes back with its code and message, the NAD and interface named."""
    config = {"cniVersion": "0.3.1", "type": "macvlan", "master": "eth9",
              "ipam": {"type": "static", "addresses": [{"address": "198.18.70.5/24"}]}}
    res, ns = add(node, bin_dir, "app", {NPWG: "macvlan-conf"}, [nad("macvlan-conf", config)])
    assert res.code == 999 and res.json["msg"].startswith("my-namespace/macvlan-conf (net1): "), res
    assert "not found" in res.json["msg"] or "eth9" in res.json["msg"], res
    assert_nothing_left(node, ns, "app", data_dir)
    assert node.cni("DEL", "c-app", ns, pod=(NS, "app"), conf=conf(node, bin_dir)).ok


def test_a_delegate_that_hangs_is_killed_and_the_add_rolled_back(node: Node, bin_dir: Path, data_dir: Path) -> None:
    started = time.monotonic()
    res, ns = add(node, bin_dir, "app", {NPWG: "bridge-net, hung"},
                  [nad("bridge-net", bridge_conf("hangbr0", "198.18.63.0/24", data_dir)), fake_nad("hung", "hang")])
    assert res.code == 5 and "timed out" in res.json["msg"], res
    assert time.monotonic() - started < 30
    assert not [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p).endswith(f"{bin_dir}/hang")]
    assert_nothing_left(node, ns, "app", data_dir)


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def test_parallel_delegation_keeps_the_same_guarantees(node: Node, bin_dir: Path, data_dir: Path) -> None:
    nads = [nad(f"p{i}", bridge_conf(f"parbr{i}", f"198.18.{64 + i}.0/24", data_dir)) for i in range(3)]
    ok, ns = add(node, bin_dir, "fast", {NPWG: "p0, p1, p2", "network.deckhouse.io/delegation": "parallel"}, nads)
    assert ok.ok, ok
    assert [e["interface"] for e in npwg_status(node, NS, "fast") or []] == ["net1", "net2", "net3"]
    assert {"net1", "net2", "net3"} <= set(links_in(ns))
    assert node.cni("DEL", "c-fast", ns, pod=(NS, "fast"), conf=conf(node, bin_dir)).ok
    assert set(links_in(ns)) == {"lo"} and leased_files(data_dir) == []
    bad, ns2 = add(node, bin_dir, "slow", {NPWG: "p0, quiet, p2", "network.deckhouse.io/delegation": "parallel"},
                   [fake_nad("quiet", "fail-quiet")])
    assert bad.code == 5, bad
    assert_nothing_left(node, ns2, "slow", data_dir)


def test_a_daemon_killed_while_a_delegate_runs_restarts_to_all_or_nothing(node: Node, bin_dir: Path,
                                                                          data_dir: Path) -> None:
    """The daemon is killed while a delegate's ADD runs (it waits for the test's go-ahead, then does it); the
    delegate outlives it. The restarted daemon kills it before it undoes the recorded half of the ADD, so it can
    never finish its ADD afterwards: all or nothing, and here nothing, until the runtime's next ADD makes all of it."""
    node.apply([nad("slow", {**bridge_conf("slowbr0", "198.18.70.0/24", data_dir), "type": "slow-bridge"}),
                pod("app", {NPWG: "slow"})])
    ns = node.pod_netns("app")
    out: list[CniResult] = []
    caller = threading.Thread(target=lambda: out.append(
        node.cni("ADD", "c-app", ns, pod=(NS, "app"), conf=conf(node, bin_dir, delegateTimeoutSeconds=30))))
    caller.start()
    pidfile = bin_dir / "slow.pid"
    assert wait_for(pidfile.exists, timeout=20, step=0.05), "the delegate started"
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(5)
    caller.join(30)
    assert out and not out[0].ok, "the runtime saw the ADD fail"
    plugin = int(pidfile.read_text())
    assert running(plugin), "the delegate outlived the daemon (as it may, on a bare host)"
    node.start()
    assert not running(plugin), "the restarted daemon killed it before anything else"
    assert wait_for(lambda: attachments(node) == [], timeout=20)
    assert_nothing_left(node, ns, "app", data_dir)
    (bin_dir / "slow.go").touch()  # the go-ahead: a delegate still running would make net1 now
    time.sleep(3)
    assert_nothing_left(node, ns, "app", data_dir)
    res = node.cni("ADD", "c-app", ns, pod=(NS, "app"), conf=conf(node, bin_dir, delegateTimeoutSeconds=30))
    assert res.ok, res
    assert links_in(ns)["net1"]["addresses"] == ["198.18.70.2/24"]
    assert [a.state for a in attachments(node)] == ["ready"]


# -- killed or failed after a delegate answered, and a namespace unmounted: what the DEL is left ------------------
def default_routes(ns: str) -> list[str]:
    out = run("ip", "-n", Path(ns).name, "-4", "route", "show", "default").stdout
    return [line.split(" proto ")[0].strip() for line in out.splitlines() if line.strip()]


def cluster_eth0(ns: str) -> dict[str, Any]:
    """The cluster network's interface as a plugin before Plexus in the list left it (a veth eth0 with the pod's
    default route), and its result: Plexus is chained after it."""
    name = Path(ns).name
    run("ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "cnipeer0")
    run("ip", "-n", name, "link", "set", "cnipeer0", "up")
    run("ip", "-n", name, "addr", "add", "198.18.90.2/24", "dev", "eth0")
    run("ip", "-n", name, "link", "set", "eth0", "up")
    run("ip", "-n", name, "route", "add", "default", "via", "198.18.90.1", "dev", "eth0")
    mac = links_in(ns)["eth0"]["mac"]
    return {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "mac": mac, "sandbox": ns}],
            "ips": [{"address": "198.18.90.2/24", "gateway": "198.18.90.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "198.18.90.1"}]}


def routed_nad(data: Path) -> dict[str, Any]:
    return nad("routed", {"cniVersion": "1.0.0", "name": "routed", "plugins": [
        {"type": "bridge", "bridge": "routedbr0", "isGateway": False,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.18.82.0/24"}]], "dataDir": str(data)}}]})


def fw_nad(data: Path, *more: dict[str, Any]) -> dict[str, Any]:
    return nad("fw", {"cniVersion": "1.0.0", "name": "fw", "plugins": [
        {"type": "bridge", "bridge": "fwbr0", "isGateway": False,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.18.84.0/24"}]], "dataDir": str(data)}},
        {"type": "firewall", "backend": "iptables"}, *more]})


def node_iptables(node: Node) -> str:
    return run("ip", "netns", "exec", node.name, "iptables-save").stdout


def killed_at_built(node: Node, ns: str, conf: dict[str, Any]) -> None:
    """An ADD whose daemon is killed after its build, before its commit; the daemon started again (it recovers)."""
    restart(node, env={"PLEXUS_FAULT": "add:built"})
    res = node.cni("ADD", "c1", ns, pod=(NS, "app"), conf=conf)
    assert not res.ok, res
    assert node.wait_exit(15) == -signal.SIGKILL
    node.proc = None


def test_a_default_route_taken_then_a_daemon_killed_before_the_commit_is_given_back(node: Node,
                                                                                    data_dir: Path) -> None:
    """ADD takes the pod's default route for net1 (NPWG default-route), and the daemon is killed before its commit.
    The restarted daemon undoes the half-done ADD, and the runtime DELs: the pod has its cluster network's default
    route back, as a failed ADD that is not killed gives it (the routes it took were stored before it took them)."""
    node.apply([routed_nad(data_dir), pod("app", {NPWG: json.dumps([{"name": "routed",
                                                                      "default-route": ["198.18.82.1"]}])})])
    ns = node.pod_netns("app")
    conf = node.conf(binDir=str(REFERENCE), prevResult=cluster_eth0(ns))
    assert default_routes(ns) == ["default via 198.18.90.1 dev eth0"]
    killed_at_built(node, ns, conf)
    assert default_routes(ns) == ["default via 198.18.82.1 dev net1"], "the killed ADD had taken it"
    restart(node)
    assert node.cni("DEL", "c1", ns, pod=(NS, "app"), conf=conf).ok
    assert attachments(node) == [] and leased_files(data_dir) == []
    assert "net1" not in links_in(ns)
    assert default_routes(ns) == ["default via 198.18.90.1 dev eth0"], "the pod is left without a default route"


def test_an_add_killed_after_a_delegate_answered_leaves_no_firewall_rules(node: Node, data_dir: Path) -> None:
    """The chain (bridge, firewall) answered, the daemon is killed before the commit: the DEL from the ``adding``
    record gets the chain's result as ``prevResult``, and firewall removes its rules for the pod's address."""
    node.apply([fw_nad(data_dir), pod("app", {NPWG: "fw"})])
    ns = node.pod_netns("app")
    conf = node.conf(binDir=str(REFERENCE))
    killed_at_built(node, ns, conf)
    assert "198.18.84.2" in node_iptables(node), "the chain's ADD had answered"
    restart(node)
    assert node.cni("DEL", "c1", ns, pod=(NS, "app"), conf=conf).ok
    assert attachments(node) == [] and leased_files(data_dir) == [] and set(links_in(ns)) == {"lo"}
    assert "198.18.84.2" not in node_iptables(node), "the firewall plugin's rules for the pod's address stay"


def test_a_chain_failing_after_its_firewall_answered_is_undone_without_its_rules(node: Node, bin_dir: Path,
                                                                                 data_dir: Path) -> None:
    """bridge, firewall, then a plugin that fails: the rollback DEL gets the result so far (it got none unless
    every plugin had answered), and firewall removes its rules."""
    node.apply([fw_nad(data_dir, {"type": "fail-add"}), pod("app", {NPWG: "fw"})])
    ns = node.pod_netns("app")
    res = node.cni("ADD", "c1", ns, pod=(NS, "app"), conf=conf(node, bin_dir))
    assert not res.ok, res
    assert attachments(node) == [] and leased_files(data_dir) == [] and set(links_in(ns)) == {"lo"}
    assert "198.18.84.2" not in node_iptables(node), "the firewall plugin's rules for the pod's address stay"


def test_del_with_the_netns_unmounted_but_its_file_left(node: Node, data_dir: Path) -> None:
    """The runtime unmounted the namespace (it is gone) but its file is still there: a delegate is told the
    namespace is gone ("" as CNI_NETNS), as the kernel drivers take it, not handed a path its plugins' DEL refuses
    ("unknown FS magic", code 105 on every retry)."""
    node.apply([routed_nad(data_dir), pod("app", {NPWG: "routed"})])
    ns = node.pod_netns("app")
    conf = node.conf(binDir=str(REFERENCE))
    assert node.cni("ADD", "c1", ns, pod=(NS, "app"), conf=conf).ok
    run("umount", ns)
    assert os.path.exists(ns)
    dele = node.cni("DEL", "c1", ns, pod=(NS, "app"), conf=conf)
    assert dele.ok, dele
    assert attachments(node) == [] and leased_files(data_dir) == []

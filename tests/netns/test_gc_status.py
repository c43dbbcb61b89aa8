"""CNI 1.1's STATUS and GC, exec'ing the plugin directly (cnitool and libcni 1.1.2 stop at spec 1.0.0)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.harness import CniResult, Node, links_in, pod_manifest, run

NS = "my-namespace"
SPEC = [{"type": "Network", "name": "net-a"}, {"type": "Network", "name": "net-b"}]


def _gc(node: Node, valid: list[tuple[str, str]], version: str = "1.1.0", name: str = "plexus-test") -> CniResult:
    conf = node.conf(version, name=name, **{"cni.dev/valid-attachments": [
        {"containerID": cid, "ifname": ifname} for cid, ifname in valid]})
    return node.cni("GC", conf=conf, ifname="")


def _attach(node: Node, pod: str, cid: str, name: str = "plexus-test", netns: str = "") -> tuple[str, dict[str, Any]]:
    netns = netns or node.pod_netns(pod)
    add = node.cni("ADD", cid, netns, pod=(NS, pod), conf=node.conf("1.1.0", name=name))
    assert add.ok, add
    return netns, add.json


def _host_links(result: dict[str, Any]) -> set[str]:
    return {i["name"] for i in result["interfaces"] if not i.get("sandbox")}


def _addresses(result: dict[str, Any]) -> set[str]:
    return {ip["address"].split("/")[0] for ip in result["ips"]}


def _users(node: Node) -> dict[str, list[str]]:
    """Leased address → the pods using its IPAddress."""
    return {lease.address: list(lease.pods) for lease in node.leases()}


def _check(node: Node, pod: str, cid: str, netns: str, result: dict[str, Any], name: str = "plexus-test") -> CniResult:
    return node.cni("CHECK", cid, netns, pod=(NS, pod), conf=node.conf("1.1.0", name=name, prevResult=result))


# -- STATUS -----------------------------------------------------------------------------------------
@pytest.mark.netns
def test_status_ready_is_silent_success(node: Node) -> None:
    status = node.cni("STATUS", conf=node.conf("1.1.0"), ifname="")
    assert status.ok and status.stdout == "", status


@pytest.mark.netns
def test_status_with_daemon_stopped_is_50(node: Node) -> None:
    node.stop()
    status = node.cni("STATUS", conf=node.conf("1.1.0"), ifname="")
    assert status.rc == 1 and status.code == 50, status
    assert status.json["cniVersion"] == "1.1.0" and status.json["msg"], status
    assert status.elapsed < 5, "an absent daemon is reported at once"


@pytest.mark.netns
@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_status_needs_1_1_0(node: Node, version: str) -> None:
    status = node.cni("STATUS", conf=node.conf(version), ifname="")
    assert status.rc == 1 and status.code == 1, status


# -- GC ---------------------------------------------------------------------------------------------
@pytest.mark.netns
def test_gc_releases_everything_not_listed(node: Node) -> None:
    pods = ("keep", "stale1", "stale2")
    node.apply([pod_manifest(p, SPEC) for p in pods])
    attached = {p: _attach(node, p, f"c-{p}") for p in pods}
    assert node.plx_links() == set().union(*(_host_links(r) for _, r in attached.values()))
    assert len(node.leases()) == 6
    keep_ns, keep_result = attached["keep"]
    keep_links = links_in(keep_ns)

    gc = _gc(node, [("c-keep", "eth0")])
    assert gc.ok and gc.stdout == "", gc

    # the stale two are gone from the node, from their pods and from the leases' users
    for p in ("stale1", "stale2"):
        netns, result = attached[p]
        assert set(links_in(netns)) == {"lo"}, p
        assert not _host_links(result) & node.plx_links(), p
        assert node.pod_status(NS, p) is None, p
        users = _users(node)
        assert all(users[a] == [] for a in _addresses(result)), (p, users)
        assert not any(f"{NS}/{p}" in u for u in users.values()), (p, users)
    # the listed one untouched: links, addresses, lease users, status, and CHECK still passes
    assert node.plx_links() == _host_links(keep_result)
    assert links_in(keep_ns) == keep_links
    users = _users(node)
    assert all(users[a] == [f"{NS}/keep"] for a in _addresses(keep_result)), users
    status = node.pod_status(NS, "keep")
    assert status is not None and [s["ifName"] for s in status] == ["net1", "net2"]
    check = _check(node, "keep", "c-keep", keep_ns, keep_result)
    assert check.ok, check

    # GC again: nothing more to do; the stale ones' DEL (the runtime's) still succeeds
    again = _gc(node, [("c-keep", "eth0")])
    assert again.ok, again
    for p in ("stale1", "stale2"):
        dele = node.cni("DEL", f"c-{p}", attached[p][0], pod=(NS, p), conf=node.conf("1.1.0"))
        assert dele.ok, dele
    assert _check(node, "keep", "c-keep", keep_ns, keep_result).ok

    # an empty list releases the last one too
    assert _gc(node, []).ok
    assert set(links_in(keep_ns)) == {"lo"}
    assert not node.plx_links()
    assert all(users == [] for users in _users(node).values())


@pytest.mark.netns
def test_gc_matches_container_and_ifname(node: Node) -> None:
    """An entry names one attachment: the same container with another CNI_IFNAME is not kept by it."""
    node.apply([pod_manifest("app", [{"type": "Network", "name": "net-b"}])])
    netns = node.pod_netns("app")
    add = node.cni("ADD", "c1", netns, pod=(NS, "app"), conf=node.conf("1.1.0"))
    assert add.ok, add
    gc = _gc(node, [("c1", "eth1"), ("c2", "eth0")])
    assert gc.ok, gc
    assert set(links_in(netns)) == {"lo"}
    assert not node.plx_links()


@pytest.mark.netns
@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_gc_needs_1_1_0(node: Node, version: str) -> None:
    node.apply([pod_manifest("app", SPEC)])
    netns, result = _attach(node, "app", "c1")
    gc = _gc(node, [], version=version)
    assert gc.rc == 1 and gc.code == 1, gc
    assert node.plx_links() == _host_links(result)
    assert set(links_in(netns)) == {"lo", "net1", "net2"}
    assert _check(node, "app", "c1", netns, result).ok


@pytest.mark.netns
def test_gc_without_valid_attachments_is_refused(node: Node) -> None:
    node.apply([pod_manifest("app", SPEC)])
    netns, result = _attach(node, "app", "c1")
    gc = node.cni("GC", conf=node.conf("1.1.0"), ifname="")
    assert gc.rc == 1 and gc.code == 7, gc
    assert node.plx_links() == _host_links(result)
    assert _check(node, "app", "c1", netns, result).ok


@pytest.mark.netns
def test_gc_leaves_other_networks_alone(node: Node) -> None:
    """Attachments made under another network configuration ("name") are not this GC's to judge."""
    node.apply([pod_manifest(p, SPEC) for p in ("mine", "theirs")])
    mine_ns, mine = _attach(node, "mine", "c-mine", name="plexus-test")
    theirs_ns, theirs = _attach(node, "theirs", "c-theirs", name="other-net")

    gc = _gc(node, [], name="plexus-test")
    assert gc.ok, gc
    assert set(links_in(mine_ns)) == {"lo"}
    assert node.plx_links() == _host_links(theirs)
    assert set(links_in(theirs_ns)) == {"lo", "net1", "net2"}
    assert all(_users(node)[a] == [f"{NS}/theirs"] for a in _addresses(theirs))
    assert _check(node, "theirs", "c-theirs", theirs_ns, theirs, name="other-net").ok

    # and the other network's GC, listing nothing, releases only its own
    mine_ns2, mine2 = _attach(node, "mine", "c-mine-2", name="plexus-test", netns=mine_ns)
    gc = _gc(node, [], name="other-net")
    assert gc.ok, gc
    assert set(links_in(theirs_ns)) == {"lo"}
    assert node.plx_links() == _host_links(mine2)
    assert _check(node, "mine", "c-mine-2", mine_ns2, mine2).ok
    assert mine_ns2 == mine_ns and _addresses(mine2) == _addresses(mine), "the pod keeps its Auto addresses"


def _plx_links_now(node: Node) -> set[str]:
    """The node's Plexus veths, read in one netlink dump (safe while links come and go)."""
    out = run("ip", "-n", node.name, "-o", "link", "show").stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}
    return {n for n in names if n.startswith("plx") and not n.startswith("plx-")}


@pytest.mark.netns
def test_gc_during_add_is_all_or_nothing(node: Node) -> None:
    """A GC that arrives while an ADD (not in its list) is building interfaces waits for it, then releases
    either all of the attachment or none of it; a DEL afterwards always leaves nothing behind."""
    spec = [{"type": "Network", "name": "net-b", "ifName": f"n{i}"} for i in range(8)]
    node.apply([pod_manifest("big", spec)])
    netns = node.pod_netns("big")
    done: dict[str, CniResult] = {}
    adder = threading.Thread(target=lambda: done.setdefault(
        "add", node.cni("ADD", "c1", netns, pod=(NS, "big"), conf=node.conf("1.1.0"))))
    adder.start()
    deadline = time.monotonic() + 20
    while not _plx_links_now(node) and adder.is_alive() and time.monotonic() < deadline:
        time.sleep(0.002)  # the ADD has recorded its attachment and built its first interface
    gc = _gc(node, [])
    adder.join(60)
    assert gc.ok, gc
    assert done["add"].ok, done["add"]
    result = done["add"].json

    links, pod_links = _plx_links_now(node), set(links_in(netns)) - {"lo"}
    used = [lease.address for lease in node.leases() if lease.pods]
    if links or pod_links or used:  # GC left the attachment: then all of it, working
        assert links == _host_links(result), f"GC released part of the attachment: {len(links)} of 8 veths left"
        assert pod_links == {f"n{i}" for i in range(8)}, pod_links
        assert sorted(used) == sorted(_addresses(result)), used
        assert _check(node, "big", "c1", netns, result).ok
    dele = node.cni("DEL", "c1", netns, pod=(NS, "big"), conf=node.conf("1.1.0"))
    assert dele.ok, dele
    assert _plx_links_now(node) == set(), "veths leaked: no record is left to DEL them by"
    assert set(links_in(netns)) == {"lo"}
    assert all(not lease.pods for lease in node.leases()), [(lease.address, list(lease.pods)) for lease in node.leases()]

"""``--del-mode background``: DEL answers once the pod's interfaces are recorded as going and cut off (the node end of
each veth down), and the daemon removes them after; the addresses are released only once the interfaces are gone, so
none is handed to another pod while the old interface still exists; a daemon killed between the answer and the
kernel's work finishes it at its next start. Kernel state asserted in real namespaces."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.harness import BASE_OBJECTS, Node, links_in, pod_manifest

pytestmark = pytest.mark.netns
NS = "my-namespace"
ONE_ADDRESS = [
    {"apiVersion": "network.deckhouse.io/v1alpha1", "kind": "IPAddressPool", "metadata": {"name": "one", "namespace": NS},
     "spec": {"leaseTTL": "0s", "pools": [{"network": "198.18.124.0/24", "ranges": ["198.18.124.10"]}]}},
    {"apiVersion": "network.deckhouse.io/v1alpha1", "kind": "Network", "metadata": {"name": "one", "namespace": NS},
     "spec": {"networkClass": "test-class", "ipam": {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "one"}}}},
]


@pytest.fixture
def slow_reaper() -> Iterator[Node]:
    """Background DELs that start removing 10 s after they answer: the window is there to be looked at, even by a
    test process the loaded machine stalls for seconds between the DEL's answer and its checks."""
    n = Node(extra_args=("--del-mode", "background", "--del-delay", "10"))
    try:
        n.apply(BASE_OBJECTS, sync=False)
        n.apply(ONE_ADDRESS, sync=False)
        n.start()
        yield n
    finally:
        n.close()


def veth_of(node: Node) -> dict[str, Any]:
    (name,) = node.plx_links()
    return dict(node.host_links()[name], name=name)


def test_del_answers_with_the_interface_cut_off_and_removes_it_after(slow_reaper: Node) -> None:
    node = slow_reaper
    node.apply([pod_manifest("a", [{"type": "Network", "name": "net-b"}])])
    ns = node.pod_netns("a")
    assert node.cni("ADD", "c-a", ns, pod=(NS, "a")).ok
    assert veth_of(node)["up"]
    dele = node.cni("DEL", "c-a", ns, pod=(NS, "a"))
    assert dele.ok and dele.stdout == "", dele
    assert not veth_of(node)["up"], "cut off when DEL answers: the node end is down"
    assert node.pod_status(NS, "a") is not None and [x.pods for x in node.leases()] == [[f"{NS}/a"]], \
        "the address stays the pod's until its interface is gone"
    assert node.cni("DEL", "c-a", ns, pod=(NS, "a")).ok, "a DEL again while it is being finished"
    assert wait_for(lambda: not node.plx_links(), timeout=30), node.host_links()
    assert set(links_in(ns)) == {"lo"}
    assert wait_for(lambda: all(x.pods == [] for x in node.leases()), timeout=10), node.leases()
    assert node.pod_status(NS, "a") is None


def test_no_address_goes_to_another_pod_while_the_old_interface_exists(slow_reaper: Node) -> None:
    node = slow_reaper
    node.apply([pod_manifest(p, [{"type": "Network", "name": "one"}]) for p in ("old", "new")])
    old, new = node.pod_netns("old"), node.pod_netns("new")
    first = node.cni("ADD", "c-old", old, pod=(NS, "old"))
    assert first.ok and first.json["ips"][0]["address"] == "198.18.124.10/24"
    assert node.cni("DEL", "c-old", old, pod=(NS, "old")).ok
    node.delete([pod_manifest("old", [{"type": "Network", "name": "one"}])])
    refused = node.cni("ADD", "c-new", new, pod=(NS, "new"))
    assert refused.code == 100, refused
    assert links_in(old)["net1"]["addresses"] == ["198.18.124.10/24"], "refused: the old interface still has it"
    assert wait_for(lambda: set(links_in(old)) == {"lo"}, timeout=30)
    again = node.cni("ADD", "c-new", new, pod=(NS, "new"))
    assert again.ok and again.json["ips"][0]["address"] == "198.18.124.10/24", again
    assert node.cni("DEL", "c-new", new, pod=(NS, "new")).ok


def test_a_daemon_killed_after_the_answer_finishes_the_del_at_its_next_start() -> None:
    node = Node(extra_args=("--del-mode", "background", "--del-delay", "0.2"))
    try:
        node.apply(BASE_OBJECTS, sync=False)
        node.start(env={"PLEXUS_FAULT": "del:reaping"})
        node.apply([pod_manifest("a", [{"type": "Network", "name": "net-b"}])])
        ns = node.pod_netns("a")
        add = node.cni("ADD", "c-a", ns, pod=(NS, "a"))
        assert add.ok
        assert node.cni("DEL", "c-a", ns, pod=(NS, "a")).ok, "answered before the kill"
        assert node.wait_exit(10) is not None, "killed when the removal began"
        assert node.plx_links() and "net1" in links_in(ns), "the kill left the interfaces in place"
        node.start()
        assert wait_for(lambda: not node.plx_links() and set(links_in(ns)) == {"lo"}, timeout=15)
        assert all(x.pods == [] for x in node.leases()), "and the address released after them"
        assert node.pod_status(NS, "a") is None
    finally:
        node.close()

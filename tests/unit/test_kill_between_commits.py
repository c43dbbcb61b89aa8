"""A daemon killed between two commits of one step (a delegate's lease and its interface; a segment's removal and its
object's delete): the restart lets nothing stay held or stale (each found in review, failing on the code before)."""

from __future__ import annotations

import json
from typing import Any

from ipamd.ipam.addresses import Ipam
from ipamd.model.objects import parse_object
from ipamd.node.reconcile import Reconciler
from ipamd.verbs.attacher import Attacher
from ipamd.verbs.call import CniCall
from tests.fakes.drivers import FakeDriver
from tests.unit.test_attacher import NS, Node, obj
from tests.unit.test_ipaddress_users import Kill

# -- 1. a delegate's address leased in its own commit, before the interface is recorded -----------------------------

MACVLAN_IPAM = {"cniVersion": "1.0.0", "name": "macvlan-net", "type": "macvlan", "master": "eth0",
                "ipam": {"type": "plexus-ipam", "ipAddressPoolRef": {"kind": "IPAddressPool", "name": "pool-a"}}}


def _nad_node() -> Node:
    node = Node()
    node.drivers["delegate"] = FakeDriver("delegate", node.events)
    node.source.add(parse_object({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                                  "metadata": {"name": "macvlan-net", "namespace": NS},
                                  "spec": {"config": json.dumps(MACVLAN_IPAM)}}))
    node.source.add(obj("Pod", "app", {}, uid="uid-app",
                        annotations={"k8s.v1.cni.cncf.io/networks": "macvlan-net"}))
    return node


def _restarted_attacher(node: Node) -> tuple[Attacher, Reconciler]:
    """A new daemon over the killed one's store: its Ipam and Attacher made anew, ``recover`` and a round run."""
    ipam = Ipam(node.store, node.source, lambda: 1_700_000_000.0)
    attacher = Attacher(node.store, node.source, ipam, node.segments, node.drivers, lambda: object(), node.netns.open,
                        node.publisher, lambda: True)
    rounds = Reconciler(node.store, node.source, ipam, attacher, node.segments, node.publisher)
    rounds.recover()
    rounds.run_once()
    return attacher, rounds


def test_a_delegates_address_leased_by_a_daemon_killed_before_the_interface_was_recorded_is_let_go() -> None:
    """A NAD whose plugin takes its address from plexus-ipam: the daemon leases it itself (``Wanted.address``) in
    ``DelegatedAddresses.lease``, a commit of its own, and only then records the interface (with the lease's key) in
    the attachment in a second commit (``Attacher._lease``). Killed between the two commits, the restart's
    ``recover`` tears the ``adding`` attachment down from its record, which names no interface: the lease (holder
    ``CNI/macvlan-net/c1/net1``, the pod its user) is never let go. The runtime's DEL of the sandbox then finds no
    record and answers {}; the pod, alive, retries in a new sandbox and gets another address. The first is held by
    a sandbox that no longer exists for as long as the pod lives (for ever, for a pod known only from the runtime's
    annotations: no owner UID)."""
    node = _nad_node()
    kill = Kill()
    real = node.attacher.delegated.lease

    def leased_then_killed(req: Any) -> Any:
        done = real(req)
        kill.here()  # SIGKILL between the delegate lease's commit and the interface's
        return done

    node.attacher.delegated.lease = leased_then_killed  # type: ignore[method-assign]
    kill.run(lambda: node.call("ADD", container="c1"))
    assert [lease.holder for lease in node.store.all_leases()] == ["CNI/macvlan-net/c1/net1"], "leased, committed"
    assert [a.state for a in node.store.attachments()] == ["adding"]

    attacher, rounds = _restarted_attacher(node)
    assert node.store.attachments() == [], "the crashed ADD was rolled back by recover"
    args = {"K8S_POD_NAMESPACE": NS, "K8S_POD_NAME": "app", "K8S_POD_UID": "uid-app"}
    conf = {"cniVersion": "1.1.0", "name": "plexus", "type": "plexus"}
    assert attacher.handle(CniCall("DEL", "c1", "/run/netns/app", "eth0", args, conf)) == {}, "the runtime's DEL"
    rounds.run_once()
    held = [(lease.address, lease.holder) for lease in node.store.all_leases() if lease.holder]
    assert held == [], f"held by sandbox c1, which no longer exists (its pod runs on, in another sandbox): {held}"


# -- 2. a deleted Network's segment removed, its NodeNetworkInterfaceAttachment's delete owed after -------------------


class Killed(BaseException):
    """SIGKILL: nothing after this point runs (a BaseException, which no ``except Exception`` catches)."""


def test_a_daemon_killed_between_removing_a_segment_and_owing_its_detachment_leaves_no_stale_attachment() -> None:
    """A Network is deleted: the round removes its segment (``Segments.remove``: links, then the store's record in a
    commit of its own) and only then owes the delete of this node's NodeNetworkInterfaceAttachment
    (``publisher.node_detachment``, a separate outbox write). Killed between the two, the restarted daemon has no
    segment record for it and reports nothing (``_reported`` is in memory): nothing owes the delete. The object,
    Ready=True for a Network that no longer exists, stays for ever (it has no owner, and nothing else deletes one);
    a Network made again under that name is counted ready on this node before its bridge exists."""
    from kubernetes import client

    from ipamd.kube.outbox import Outbox
    from ipamd.kube.publisher import ATTACHMENT, KubePublisher
    from tests.fakes.cluster import FakeApi
    from tests.unit.test_reconcile import Registry

    api = FakeApi()
    node = Node()
    node.source.add(obj("NetworkClass", "plain", {}, namespaced=False))
    node.source.add(obj("Network", "net-z", {"networkClass": "plain"}))

    def kube_rounds() -> tuple[Reconciler, Outbox]:
        outbox = Outbox(node.store, api.senders())
        publisher = KubePublisher(client.ApiClient(), "n1", outbox)
        node.ipam.registry = Registry()
        return Reconciler(node.store, node.source, node.ipam, node.attacher, node.segments, publisher,
                          cluster=True), outbox

    rounds, outbox = kube_rounds()
    rounds.run_once()
    outbox.flush()
    key = f"Network/{NS}/net-z"
    assert [o["spec"]["networkRef"]["name"] for o in api.objs[ATTACHMENT].values()] == ["net-z"], "reported"

    node.source.remove("Network", NS, "net-z")

    remove = node.segments.remove

    def killed(rec: Any) -> None:
        remove(rec)
        raise Killed("SIGKILL right after the segment's record was deleted")

    node.segments.remove = killed  # type: ignore[method-assign]
    try:
        rounds.run_once()
    except Killed:
        pass
    assert key not in {s.network for s in node.store.segments()}, "the segment's removal committed"

    restarted, outbox = kube_rounds()  # the daemon started again over its store
    restarted.recover()
    restarted.run_once()
    outbox.flush()
    left = [o["spec"]["networkRef"]["name"] for o in api.objs[ATTACHMENT].values()]
    assert left == [], f"this node's NodeNetworkInterfaceAttachment of deleted Network net-z stays for ever: {left}"

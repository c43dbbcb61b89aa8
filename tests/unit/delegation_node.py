"""A node of ``test_attacher`` whose NADs Plexus delegates to plugins of a fake exec, and the CNI calls of a pod
selecting them by the NPWG annotation: what the review-mend tests of delegation, IPAMClaims and plexus-ipam share."""

from __future__ import annotations

import collections
from typing import Any

from ipamd.drivers.delegate import DelegateDriver
from ipamd.invoke.chain import Chain
from ipamd.verbs.call import CniCall
from tests.fakes.exec import FakeExec


def attacher_node(fake: FakeExec, ipam: dict[str, Any]) -> Any:
    """test_attacher's Node with the delegate driver over ``fake`` and two NADs: ``first`` (macvlan, plexus-ipam
    as ``ipam``) and ``second`` (ipvlan + tuning, a host-local-style IPAM of its own)."""
    from tests.unit.test_attacher import Node
    from tests.unit.test_networks import nad

    node = Node()
    node.ipam._names = collections.defaultdict(str)  # the spy names Deckhouse leases only
    node.drivers["delegate"] = DelegateDriver(Chain(fake))  # type: ignore[assignment]
    node.source.add(nad("first", {"cniVersion": "1.0.0", "type": "macvlan", "master": "eth1", "ipam": ipam}, "apps"))
    node.source.add(nad("second", {"cniVersion": "1.0.0", "plugins": [
        {"type": "ipvlan", "master": "eth2", "ipam": {"type": "host-local", "subnet": "198.18.72.0/24"}},
        {"type": "tuning"}]}, "apps"))
    return node


def npwg_pod(name: str, uid: str, networks: str) -> Any:
    from tests.unit.test_attacher import obj

    return obj("Pod", name, {}, uid=uid, annotations={"k8s.v1.cni.cncf.io/networks": networks})


def call(node: Any, verb: str, pod: str, uid: str, container: str) -> dict[str, Any]:
    from tests.unit.test_attacher import NETNS, NS

    args = {"K8S_POD_NAMESPACE": NS, "K8S_POD_NAME": pod, "K8S_POD_UID": uid}
    conf = {"cniVersion": "1.1.0", "name": "plexus", "type": "plexus"}
    return node.attacher.handle(CniCall(verb, container, NETNS, "eth0", args, conf))  # type: ignore[no-any-return]


def add(node: Any, pod: str, uid: str, container: str) -> dict[str, Any]:
    return call(node, "ADD", pod, uid, container)

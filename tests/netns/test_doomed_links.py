"""A DEL removes its node links in one request (``links.doom_link`` then ``links.delete_doomed``): the kernel's RCU
waits are paid once per request, not once per veth. In a namespace of the test's own: what is doomed goes in one
request, its peers with it, what is not doomed stays, and an empty group or a link already gone is no error."""

from __future__ import annotations

import uuid

import pytest

from ipamd.netlink import links
from ipamd.netlink.netns import netlink_at
from tests.harness import NS_PREFIX, netns_add, netns_del

pytestmark = pytest.mark.netns


def test_doomed_links_go_in_one_request_and_the_others_stay() -> None:
    tag = uuid.uuid4().hex[:6]
    names = [f"{NS_PREFIX}doom-{tag}", f"{NS_PREFIX}doompod-{tag}"]
    try:
        node_path, pod_path = (netns_add(n) for n in names)
        with netlink_at(node_path) as node, netlink_at(pod_path) as pod:
            for i in range(4):
                node.link("add", ifname=f"dh{i}", kind="veth", peer={"ifname": f"dp{i}", "net_ns_fd": pod_path})
            assert [links.doom_link(node, f"dh{i}") for i in range(3)] == [True, True, True]
            assert not links.doom_link(node, "absent0"), "a link already gone is not an error"
            links.delete_doomed(node)
            left = {link.get_attr("IFLA_IFNAME") for link in node.get_links()} - {"lo"}
            assert left == {"dh3"}, "the doomed ones went together; the other stays"
            assert {link.get_attr("IFLA_IFNAME") for link in pod.get_links()} - {"lo"} == {"dp3"}, \
                "each veth's peer went with it"
            links.delete_doomed(node)  # nothing doomed any more: no error
    finally:
        for n in names:
            netns_del(n)

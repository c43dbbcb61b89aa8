"""Requests for an exact address refused before anything is claimed beyond the node (plexus-ipam delegates' ``ips``,
the gRPC API's ``address``), naming the field: found in review, each failing on the code before its fix (a refused
request's claim adopted another node's quarantined lease object, and its let-go ended the quarantine)."""

from __future__ import annotations

from typing import Any

import pytest

from cni.errors import CniError
from ipamd.ipam.delegated import AddressRequest, DelegatedAddresses, ipam_config_of
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import lease_name
from tests.fakes.cluster import FakeApi
from tests.unit.test_blocks import Node
from tests.unit.test_ipam import pool
from tests.unit.test_plexus_ipam import SHARED
from tests.unit.test_plexus_ipam import Node as IpamNode

QPOOL = {"ipAddressPoolRef": {"kind": "IPAddressPool", "name": "q"}}
QKEY = "IPAddressPool/ns/q"


def _delegated(node: Node) -> DelegatedAddresses:
    return DelegatedAddresses(node.ipam, node.source, node.clock)


def _req(container: str, ips: tuple[str, ...] = ()) -> AddressRequest:
    return AddressRequest("nad-q", container, "net1", ipam_config_of({"ipam": {"type": "plexus-ipam", **QPOOL}}),
                          None, "ns", "", ips)


def test_a_refused_ips_request_does_not_end_another_nodes_quarantine() -> None:
    """Node a's delegate lets 198.18.44.1 go (pool leaseTTL 1h: its lease object quarantined). On node b a delegate
    asks for it by ``ips`` with a wrong prefix: code 7, as it should be. But ``securing`` claimed the exact address
    (adopting the quarantined object) before ``_check_static`` refused the request, and the let-go of that claim
    deleted the object: the quarantine is gone cluster-wide and node b hands the address out at once."""
    api = FakeApi()
    a, b = Node(api, "a"), Node(api, "b")
    for n in (a, b):
        n.source.add(pool("q", "198.18.44.0/28", ttl="1h"))  # 14 addresses: leased per address
    addr = _delegated(a).lease(_req("c1")).claim.address
    a.outbox.flush()
    _delegated(a).release("nad-q", "c1", "net1")  # DEL: quarantined for 1h
    a.outbox.flush()
    name = lease_name(QKEY, addr)
    assert api.objs[LEASE_KIND][name]["status"].get("orphaningTimestamp"), "quarantined cluster-wide"

    with pytest.raises(CniError) as exc:
        _delegated(b).lease(_req("c2", (f"{addr}/25",)))  # bad input
    assert (exc.value.code, exc.value.details) == (7, "runtimeConfig.ips")
    b.outbox.flush()
    assert name in api.objs[LEASE_KIND], "a refused request must leave the other node's quarantine alone"
    assert _delegated(b).lease(_req("c3")).claim.address != addr, "quarantined for the pool's leaseTTL"


@pytest.mark.parametrize("ipam", [SHARED, {"range": "198.18.53.0/24"}], ids=["pool", "range"])
def test_an_ipv6_ips_address_for_an_ipv4_pool_is_refused_naming_runtime_config_ips(ipam: dict[str, Any]) -> None:
    err = IpamNode().error("ADD", ipam, runtimeConfig={"ips": ["2001:db8::5"]})
    assert (err.code, err.details) == (7, "runtimeConfig.ips"), err.msg


def test_an_api_address_outside_the_pool_is_refused_naming_address_with_nothing_claimed() -> None:
    api = FakeApi()
    node = Node(api, "n1")
    node.source.add(pool("q", "198.18.44.0/28", ttl="1h"))
    q = node.source.get(pool_kind(), "ns", "q")
    before = api.requests()
    with pytest.raises(CniError) as exc:
        node.ipam.allocate_for("client", q, "198.18.45.1")  # type: ignore[arg-type]
    assert exc.value.details == "address" and "outside pool" in exc.value.msg
    assert api.requests() == before and not node.store.all_leases()


def pool_kind() -> Any:
    from ipamd.model.objects import IP_ADDRESS_POOL

    return IP_ADDRESS_POOL

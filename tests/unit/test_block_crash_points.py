"""Node blocks and lease objects at the edges of a write: an answer lost, a daemon killed between two writes, a
cache behind the API server. Each test failed before its fix (found in review): the invariant is that no address is
ever held by two pods, nor kept from every pod for longer than its quarantine."""

from __future__ import annotations

from typing import Any

import pytest

from cni.errors import TryAgainLater
from ipamd.ipam.allocator import to_int
from ipamd.kube.blocks import KIND as BLOCK_KIND
from ipamd.kube.leases import KIND as LEASE_KIND
from tests.fakes.cluster import FakeApi
from tests.unit.test_blocks import Node


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()



def test_a_block_whose_create_answer_was_lost_is_not_leased_in_before_the_checks_after_a_claim(api: FakeApi) -> None:
    """Node b leased one address of every window per address (its objects made before any block). Node a claims a
    block: the API server makes it, but the answer is lost (a read timeout). The ADD answers 11, and ``_checked``
    (the cap, and the quorum list of the leases inside) never ran. a's block informer then shows the block as a's,
    while its lease informer lags (a relist, a slow watch): a's next ADDs leased in that block with no request, and
    handed out b's address inside it -- the one interleaving the quorum read after a claim is there for. (A daemon
    killed between a block's create and its checks, the same after its restart.)"""
    import urllib3

    from ipamd.ipam.allocator import to_text
    from ipamd.kube.leases import lease_body

    big = "IPAddressPool/ns/big"
    theirs = set()
    for k in range(16):  # one address of each window, b's per-address leases
        address = to_text(to_int("198.18.40.0") + 16 * k + 5)
        api.create(LEASE_KIND, lease_body(big, address, "198.18.40.0/24", f"IPAddress/ns/b-{k}", 0, "b"))
        theirs.add(address)
    a = Node(api, "a", live=False)
    a.cache._snapshot[LEASE_KIND] = []  # a's lease informer has not shown them yet
    create = api.create
    lost: list[str] = []

    def made_but_unanswered(kind: str, body: dict[str, Any], namespace: str = "") -> dict[str, Any]:
        made = create(kind, body, namespace)
        if kind == BLOCK_KIND and not lost:
            lost.append(made["metadata"]["name"])
            raise urllib3.exceptions.ReadTimeoutError(None, "/apis", "Read timed out.")  # type: ignore[arg-type]
        return made

    api.create = made_but_unanswered  # type: ignore[method-assign]
    with pytest.raises(TryAgainLater):
        a.add()
    assert lost and lost[0] in api.objs[BLOCK_KIND], "made by the API server, its answer lost"
    a.cache.sync()
    a.cache._snapshot[LEASE_KIND] = []  # the block informer caught up; the lease informer still lags
    a.registry.grow_soon = lambda pool, taken: None  # type: ignore[method-assign]  # that one block only
    got = set()
    for _ in range(10):
        got.add(a.add())
    assert not got & theirs, f"addresses b holds handed out in a's unchecked block: {sorted(got & theirs)}"


# -- 5. an address excluded from a block returned idle stays excluded for the process's life -------------------------

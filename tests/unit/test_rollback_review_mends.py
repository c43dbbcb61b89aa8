"""A delegate whose rollback DEL failed keeps its plexus-ipam lease until a later DEL succeeds (found in review,
failing on the code before its fix)."""

from __future__ import annotations

from typing import Any

import pytest

from cni.errors import CniError, IOFailure
from tests.fakes.exec import Expected, FakeExec
from tests.unit.delegation_node import add, attacher_node, call, npwg_pod

RESULT = {"cniVersion": "1.0.0", "interfaces": [{"name": "net1", "sandbox": "/run/netns/app"}],
          "ips": [{"address": "198.18.71.1/24", "interface": 0}]}


def _rollback_del_failed(*after: Expected) -> tuple[FakeExec, Any]:
    """Pod app's ADD: NAD ``first`` (macvlan, plexus-ipam over a range of one address, ``delegateIPAM: lease``) is
    added with 198.18.71.1; NAD ``second`` fails, and first's rollback DEL fails too. Then the calls ``after``."""
    ipam = {"type": "plexus-ipam", "range": "198.18.71.1-198.18.71.1/24", "leaseTTL": "0s"}  # one address
    fake = FakeExec(Expected("macvlan", "ADD", RESULT), Expected("ipvlan", "ADD", error=IOFailure("boom", "")),
                    Expected("tuning", "DEL"), Expected("ipvlan", "DEL"),
                    Expected("macvlan", "DEL", error=IOFailure("transient", "")), *after)
    node = attacher_node(fake, ipam)
    node.source.add(npwg_pod("app", "uid-app", "first, second"))
    node.source.add(npwg_pod("next", "uid-next", "first"))
    with pytest.raises(CniError):
        add(node, "app", "uid-app", "c1")
    return fake, node


def _static_address(call: tuple[str, str, dict[str, str], dict[str, Any]]) -> str:
    return str(call[3]["ipam"]["addresses"][0]["address"])


def test_a_delegate_whose_rollback_del_failed_keeps_its_plexus_ipam_lease() -> None:
    """(The reviewer's, verbatim.) NAD ``first`` (macvlan, plexus-ipam, ``delegateIPAM: lease``) is added with
    198.18.71.1; NAD ``second`` fails, and first's rollback DEL fails too: the delegate is kept as ``deleting``, its
    interface may still carry the address, so its lease must not be let go and the next pod not given it."""
    fake, node = _rollback_del_failed(Expected("macvlan", "ADD", RESULT))  # (then the next pod's ADD)
    (kept,) = node.store.attachments()
    assert kept.state == "deleting" and [i.if_name for i in kept.interfaces] == ["net1"], "first's DEL is owed"
    first_address = _static_address(fake.calls[0])
    try:
        add(node, "next", "uid-next", "c2")
    except CniError as exc:  # code 100: the range's one address is still taken
        assert exc.code == 100, exc
        return
    assert _static_address(fake.calls[-1]) != first_address, \
        f"{first_address} handed to the next pod while app's macvlan, whose DEL never succeeded, still carries it"


@pytest.mark.parametrize("finisher", ["runtime DEL", "reconciler"])
def test_the_kept_lease_is_let_go_by_the_later_successful_del(finisher: str) -> None:
    """The other half: the lease kept for the delegate whose rollback DEL failed goes with the DEL that succeeds
    later (the runtime's DEL of the sandbox, or the reconciler finishing ``deleting`` records), and only then: the
    next pod is refused the range's one address before, and given it after."""
    fake, node = _rollback_del_failed()
    (kept,) = node.store.attachments()
    (net1,) = kept.interfaces
    assert kept.state == "deleting" and net1.ip_keys and net1.addresses, "the kept delegate keeps its lease"
    (held,) = node.store.all_ips()
    assert held.key in net1.ip_keys and held.used_by_uids, "the lease is still the delegate's"
    with pytest.raises(CniError) as refused:
        add(node, "next", "uid-next", "c2")
    assert refused.value.code == 100, refused.value
    assert node.store.get_attachment("c2", "eth0") is None
    fake.expected += [Expected("macvlan", "DEL")]  # the DEL owed, succeeding now
    if finisher == "runtime DEL":
        call(node, "DEL", "app", "uid-app", "c1")
    else:
        assert node.attacher.finish_deletions(older_than_s=0) == 1
    assert node.store.attachments() == [] and node.store.all_ips() == [], "the DEL let the kept lease go"
    fake.expected += [Expected("macvlan", "ADD", RESULT)]
    add(node, "next", "uid-next", "c3")
    assert _static_address(fake.calls[-1]) == "198.18.71.1/24", "the address is free once the DEL succeeded"

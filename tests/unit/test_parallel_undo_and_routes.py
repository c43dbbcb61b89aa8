"""The undo of a parallel ADD runs in the thread that built (its sockets are that thread's), and the default route a
delegate takes is remembered whole, in the record, for the undo and for DEL."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from cni.errors import CniError, InterfaceFailure
from ipamd.drivers.base import BuildContext, Built, InterfaceKey, InterfaceRequest, LinksContext
from ipamd.drivers.delegate import DelegateDriver
from ipamd.invoke.chain import Invocation
from ipamd.netlink.default_route import SavedRoute, Taken
from ipamd.store.records import BuiltInterface
from tests.fakes.drivers import FakePod
from tests.unit.test_attacher import Node


class _ThreadBound:
    """A driver whose every build and undo step says which thread ran it; ``fail`` names builds that fail."""

    kind = "veth"

    def __init__(self, fail: set[str]) -> None:
        self.fail = fail
        self.built: dict[str, int] = {}
        self.undone: dict[str, int] = {}
        self.lock = threading.Lock()

    def build(self, ctx: BuildContext, iface: BuiltInterface, undo: contextlib.ExitStack) -> Built:
        time.sleep(0.01)  # the builds overlap
        with self.lock:
            self.built[iface.if_name] = threading.get_ident()
        undo.callback(self._undo, iface.if_name)
        if iface.if_name in self.fail:
            raise InterfaceFailure(f"creating {iface.if_name} failed", iface.if_name)
        return Built("", SimpleNamespace())  # type: ignore[arg-type]

    def _undo(self, if_name: str) -> None:
        with self.lock:
            self.undone[if_name] = threading.get_ident()


@pytest.mark.parametrize("count", [2, 12])  # 12: more interfaces than lanes
def test_each_parallel_build_is_undone_in_the_thread_that_built_it(count: int) -> None:
    node = Node()
    driver = _ThreadBound({"net1"})
    node.attacher.drivers["veth"] = driver  # type: ignore[index]
    names = [f"net{i}" for i in range(count)]
    planned = [(SimpleNamespace(net=None), BuiltInterface(n, "veth", "ns/n", "Network", "n"), None) for n in names]
    try:
        with pytest.raises(InterfaceFailure), contextlib.ExitStack() as undo:
            node.attacher._build_at_once(FakePod("/x"), planned, undo, [])  # type: ignore[arg-type]
        assert driver.undone.keys() == set(names)
        assert driver.undone == driver.built, "an undo step ran in another thread than its build's"
        assert threading.get_ident() not in driver.built.values()
    finally:
        node.attacher.pool.shutdown()


def test_a_saved_route_comes_back_from_the_record_as_it_was() -> None:
    routes = [SavedRoute(socket.AF_INET, "198.18.42.1", 3, 100, 4, 0, 1, 0, 4, "198.18.43.3", None, None,
                         (("RTAX_MTU", 1400),)),
              SavedRoute(socket.AF_INET6, priority=300, multipath=(("2001:2:0:43::1", 3, 0, 0),
                                                                   ("2001:2:0:40::9", 5, 1, 4)))]
    taken = Taken("0.0.0.0/0", "198.18.40.1", tuple(routes))
    again = Taken.from_dict(json.loads(json.dumps(taken.to_dict())))
    assert again == taken


def test_a_route_by_nexthop_object_is_asked_for_by_it_alone() -> None:
    """The kernel refuses a nexthop id with a gateway or a link beside it (it dumps both)."""
    req = SavedRoute(socket.AF_INET, "198.18.42.1", 3, nh_id=7).request()
    assert req["nh_id"] == 7 and "gateway" not in req and "oif" not in req


def _delegated(sandbox: str) -> tuple[DelegateDriver, BuiltInterface, list[str]]:
    calls: list[str] = []

    class Chain:
        def add_each(self, inv: Invocation) -> Any:
            yield {"cniVersion": "1.0.0", "interfaces": [{"name": "net1", "sandbox": sandbox}]}

        def delete_each(self, inv: Invocation, prev: Any = None) -> list[Any]:
            calls.append("DEL each")
            return []

        def delete(self, inv: Invocation, prev: Any = None, netns: Any = None) -> list[str]:
            calls.append("DEL")
            return []

    driver = DelegateDriver(Chain())  # type: ignore[arg-type]
    inv = Invocation({"cniVersion": "1.0.0", "name": "d", "plugins": [{"type": "bridge"}]}, "c1", sandbox, "net1")
    plan = driver.plan(InterfaceKey("c1", "eth0", sandbox), InterfaceRequest("net1", delegate=inv,
                                                                             default_route=("198.18.40.1",)))
    return driver, BuiltInterface("net1", "delegate", "ns/d", "NetworkAttachmentDefinition", "d",
                                  driver=plan.state or {}), calls


def test_the_route_a_delegate_took_is_in_its_record_and_del_gives_it_back(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = SavedRoute(socket.AF_INET, "198.18.43.1", 3)
    given: list[Any] = []
    monkeypatch.setattr("ipamd.netlink.default_route.set_default_route",
                        lambda pod, ifn, gws: [Taken("0.0.0.0/0", gws[0], (cluster,))])
    monkeypatch.setattr("ipamd.netlink.default_route.defaults", lambda pod, family: [cluster])  # read before it
    monkeypatch.setattr("ipamd.netlink.default_route.give_back_after_del",
                        lambda pod, ifn, taken: given.append((ifn, taken, taken[0].replaced)))
    driver, iface, calls = _delegated("/x")
    with contextlib.ExitStack() as undo:
        done = driver.build(BuildContext(object(), FakePod("/x"), lambda: 0), iface, undo)
        undo.pop_all()
    stored = BuiltInterface(iface.if_name, iface.kind, iface.network_key, iface.network_type, iface.network_name,
                            driver=json.loads(json.dumps(done.state)))
    driver.teardown(LinksContext(object(), lambda: object(), "/x"), stored)
    assert given == [("net1", [Taken("0.0.0.0/0", "198.18.40.1", (cluster,))], (cluster,))]
    given.clear()
    driver.teardown(LinksContext(object(), lambda: None, ""), stored)  # the namespace is gone: nothing to give back
    assert given == [] and calls == ["DEL", "DEL"]


def test_a_del_that_cannot_give_the_route_back_still_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(pod: Any, ifn: str, taken: Any) -> None:
        raise CniError.from_dict({"code": 11, "msg": "refused"})

    monkeypatch.setattr("ipamd.netlink.default_route.give_back_after_del", refuse)
    driver, iface, _ = _delegated("/x")
    stored = BuiltInterface(iface.if_name, iface.kind, iface.network_key, iface.network_type, iface.network_name,
                            driver={**iface.driver, "defaultRouteTaken": [Taken("0.0.0.0/0", "198.18.40.1").to_dict()]})
    driver.teardown(LinksContext(object(), lambda: object(), "/x"), stored)

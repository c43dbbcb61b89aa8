"""A scripted interface driver and a pod namespace that is only a path: the verbs without a kernel.

Every side effect and every undo step goes into one shared event log, so a test can assert the order
in which ADD unwinds; what a driver has "built" and not yet removed is in ``live``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from cni.errors import InterfaceFailure
from cni.types import Interface, IPConfig, Result, cidr_of
from ipamd.drivers.base import BuildContext, Built, InterfaceKey, InterfaceRequest, LinksContext, Plan
from ipamd.netlink.netns import NetnsGone
from ipamd.store.records import BuiltInterface


class FakeDriver:
    def __init__(self, kind: str, events: list[str]) -> None:
        self.kind = kind
        self.events = events
        self.live: set[str] = set()
        self.fail_build: dict[str, int] = {}  # if_name -> how many more builds of it fail (after their side effect)
        self.problems: list[str] = []  # what CHECK reports
        self.unforeseen = False  # True: like a delegate, only the build tells what it made
        self.foreseen_mac = ""  # a MAC foreseen wrongly: the build turns out otherwise

    def plan(self, key: InterfaceKey, request: InterfaceRequest) -> Plan:
        return Plan(f"h-{request.if_name}", not request.skip_ip_assignment, request.mac or "02:00:00:00:00:01",
                    {"made-by": self.kind, "container": key.container_id})

    def build(self, ctx: BuildContext, iface: BuiltInterface, undo: contextlib.ExitStack) -> Built:
        ctx.bridge_index()
        self.events.append(f"build {iface.if_name}")
        self.live.add(iface.if_name)
        undo.callback(self._undo, iface.if_name)
        if self.fail_build.get(iface.if_name):
            self.fail_build[iface.if_name] -= 1
            raise InterfaceFailure(f"creating {iface.if_name} failed", "injected")
        return self._result(iface, ctx.pod.path)

    def foresee(self, iface: BuiltInterface, sandbox: str) -> Built | None:
        return None if self.unforeseen else self._result(iface, sandbox, self.foreseen_mac)

    @staticmethod
    def _result(iface: BuiltInterface, sandbox: str, mac: str = "") -> Built:
        ips = tuple(IPConfig(cidr_of(a["address"], a["network"]), 0) for a in iface.addresses) if iface.configure_ips else ()
        return Built(mac or iface.mac, Result((Interface(iface.if_name, mac or iface.mac, sandbox),), ips))

    def _undo(self, if_name: str) -> None:
        self.events.append(f"undo build {if_name}")
        self.live.discard(if_name)

    def teardown(self, ctx: LinksContext, iface: BuiltInterface) -> None:
        pod = ctx.pod_netlink()
        self.events.append(f"teardown {iface.if_name}{'' if pod is not None else ' (netns gone)'}")
        assert iface.driver["made-by"] == self.kind, "the record keeps the driver's own state"
        self.live.discard(iface.if_name)

    def cut_off(self, ctx: LinksContext, iface: BuiltInterface) -> bool:
        self.events.append(f"cut off {iface.if_name}")
        return self.kind == "veth"

    def check(self, ctx: LinksContext, iface: BuiltInterface) -> list[str]:
        return [p for p in self.problems if p.startswith(iface.if_name)]

    def collect(self, kept: list[BuiltInterface]) -> None:
        self.events.append(f"collect {','.join(i.if_name for i in kept)}")


class FakePod:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def netlink(self) -> Any:
        return object()


class FakeNetns:
    """Pod namespaces by path: every path exists unless it is in ``gone``."""

    def __init__(self) -> None:
        self.gone: set[str] = set()
        self.opened: list[str] = []

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[FakePod]:
        if path in self.gone:
            raise NetnsGone(f"network namespace {path} does not exist", "CNI_NETNS")
        self.opened.append(path)
        yield FakePod(path)

"""``DoomedLinks``: concurrent DELs' node links removed together (a group commit), over a fake netlink socket whose
removal request takes a while, as the kernel's does (its RCU waits)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from ipamd.drivers.base import LinksContext
from ipamd.drivers.kernel import DoomedLinks
from ipamd.netlink.links import DOOMED_GROUP


class Kernel:
    """Links by name with their group; a group removal takes ``slow`` seconds and removes the group's links."""

    def __init__(self, slow: float = 0.1) -> None:
        self.groups: dict[str, int] = {}
        self.removals = 0
        self.slow = slow
        self.lock = threading.Lock()
        self.fail_next = False

    def link(self, op: str, **kw: Any) -> None:
        if op == "set":
            with self.lock:
                self.groups[kw["ifname"]] = kw["group"]
            return
        assert op == "del" and kw == {"group": DOOMED_GROUP}
        with self.lock:
            doomed = [n for n, g in self.groups.items() if g == DOOMED_GROUP]
            self.removals += 1
            if self.fail_next:
                self.fail_next = False
                raise OSError("netlink trouble")
        time.sleep(self.slow)
        with self.lock:
            for name in doomed:
                del self.groups[name]


def dele(kernel: Kernel, doomed: DoomedLinks, names: list[str], gone: dict[str, bool]) -> None:
    for name in names:
        kernel.link("set", ifname=name, group=DOOMED_GROUP)
    doomed.remove(LinksContext(kernel, lambda: None, doomed=list(names)))
    gone.update({name: name not in kernel.groups for name in names})


def test_concurrent_dels_share_removal_requests_and_each_sees_its_links_gone() -> None:
    kernel, doomed = Kernel(), DoomedLinks()
    gone: dict[str, bool] = {}
    first = threading.Thread(target=dele, args=(kernel, doomed, ["a0"], gone))
    first.start()
    time.sleep(0.03)  # the first DEL's request is running: the next ones wait and go together
    rest = [threading.Thread(target=dele, args=(kernel, doomed, [f"b{i}", f"c{i}"], gone)) for i in range(6)]
    for t in rest:
        t.start()
    for t in (first, *rest):
        t.join(5)
    assert all(gone.values()) and len(gone) == 13, gone
    assert kernel.removals == 2, "seven DELs, two removal requests"


def test_a_failed_request_fails_its_del_and_the_next_one_retries() -> None:
    kernel, doomed = Kernel(slow=0), DoomedLinks()
    kernel.link("set", ifname="x", group=DOOMED_GROUP)
    kernel.fail_next = True
    with pytest.raises(OSError):
        doomed.remove(LinksContext(kernel, lambda: None, doomed=["x"]))
    assert "x" in kernel.groups
    gone: dict[str, bool] = {}
    dele(kernel, doomed, ["y"], gone)
    assert gone == {"y": True} and "x" not in kernel.groups, "the next request takes what the failed one left"

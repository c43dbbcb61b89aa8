"""Fixtures of the netns tier: a node namespace with plexus-ipamd running, cleaned up whatever happens."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import BASE_OBJECTS, Node
from tests.netns.kernel_world import World, kernel_world


@pytest.fixture
def node(request: pytest.FixtureRequest) -> Iterator[Node]:
    n = Node()
    try:
        n.apply(BASE_OBJECTS, sync=False)
        n.start()
        yield n
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f"--- plexus-ipamd log ---\n{n.log_text()[-6000:]}")
        n.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def world() -> Iterator[World]:
    """Node, pod and peer namespaces of the test's own, for drivers and links called directly (``kernel_world``)."""
    with kernel_world() as w:
        yield w

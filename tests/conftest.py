"""Shared test helpers: where the project and the frozen plugin are."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
FROZEN = REPO / "dist" / "plexus" / "plexus"


def shim_command() -> list[str]:
    """The exec'd plugin: the frozen binary when built (as installed), else the module."""
    if FROZEN.exists() and os.environ.get("PLEXUS_TEST_UNFROZEN") != "1":
        return [str(FROZEN)]
    return [sys.executable, "-m", "cni"]


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, step: float = 0.5) -> Any:
    """Poll ``predicate`` until it returns something true or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: real network namespaces")
    for item in items:
        if "netns" in item.keywords or "compat" in item.keywords:
            item.add_marker(skip)

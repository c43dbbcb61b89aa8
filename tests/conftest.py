"""Shared test helpers: where the project and the frozen plugin are."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FROZEN = REPO / "dist" / "plexus" / "plexus"


def shim_command() -> list[str]:
    """The exec'd plugin: the frozen binary when built (as installed), else the module."""
    if FROZEN.exists() and os.environ.get("PLEXUS_TEST_UNFROZEN") != "1":
        return [str(FROZEN)]
    return [sys.executable, "-m", "cni"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: real network namespaces")
    for item in items:
        if "netns" in item.keywords or "compat" in item.keywords:
            item.add_marker(skip)

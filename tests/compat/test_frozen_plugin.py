"""The frozen ``plexus`` as the runtime execs it: one execve() per call. PyInstaller's stock onedir bootloader on
Linux execs itself a second time to set LD_LIBRARY_PATH; the project's bootloader (scripts/build-bootloader.sh)
does not, and the plugin still answers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import FROZEN


@pytest.mark.skipif(not FROZEN.exists(), reason="no frozen plugin: make build")
def test_the_frozen_plugin_starts_with_one_execve(tmp_path: os.PathLike[str]) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is missing: scripts/install-deps.sh installs it")
    trace = os.path.join(tmp_path, "trace")
    out = subprocess.run([strace, "-f", "-qq", "-e", "trace=execve", "-o", trace, str(FROZEN)], input=b"",
                         capture_output=True, env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"}, timeout=30)
    assert out.returncode == 0, out
    assert json.loads(out.stdout)["cniVersion"], out.stdout
    with open(trace) as fh:
        execs = [line for line in fh if "execve(" in line and "= 0" in line]
    assert len(execs) == 1, execs

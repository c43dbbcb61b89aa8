"""The frozen ``plexus`` as the runtime execs it: one execve() per call. PyInstaller's stock onedir bootloader on
Linux execs itself a second time to set LD_LIBRARY_PATH; the project's bootloader (scripts/build-bootloader.sh)
does not, and the plugin still answers."""

from __future__ import annotations

import json
import marshal
import os
import shutil
import struct
import subprocess
import sys

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


def glibc_files() -> list[str]:
    """The C library's own files this process runs on (libc, libm, the dynamic loader): all a node is sure to have."""
    with open("/proc/self/maps") as fh:
        paths = {line.split()[-1] for line in fh if line.rstrip().endswith(".so.6") or ".so.2" in line}
    wanted = [p for p in paths if os.path.basename(p).split(".so")[0] in ("libc", "libm", "ld-linux-x86-64",
                                                                             "ld-linux-aarch64", "ld-linux")]
    assert any("libc.so" in p for p in wanted) and any("ld-linux" in p for p in wanted), paths
    return wanted


def elf_interpreter(path: os.PathLike[str] | str) -> str:
    """The program interpreter (PT_INTERP) a 64-bit little-endian ELF executable asks for."""
    with open(path, "rb") as fh:
        elf = fh.read()
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        kind, _, offset, _, _, size = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if kind == 3:  # PT_INTERP
            return elf[offset:offset + size].rstrip(b"\0").decode()
    raise AssertionError(f"{path}: no PT_INTERP")


@pytest.mark.skipif(not FROZEN.exists(), reason="no frozen plugin: make build")
@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_the_frozen_plugin_runs_on_a_node_with_libc_alone(tmp_path: os.PathLike[str]) -> None:
    """What the plugin loads comes from its own folder: no libexpat, no libz, no Python on the node. Without the
    stock bootloader's restart nothing sets LD_LIBRARY_PATH, so this holds by the bundled libpython's RUNPATH and a
    bootloader with zlib compiled in (scripts/build-bootloader.sh); a root with glibc alone proves it."""
    root = os.path.join(tmp_path, "root")
    for lib in glibc_files():
        dest = root + lib
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(os.path.realpath(lib), dest)
    for link in ("lib", "lib64"):  # a merged /usr, as Debian's
        if os.path.isdir(os.path.join(root, "usr", link)):
            os.symlink(f"usr/{link}", os.path.join(root, link))
    loader = root + elf_interpreter(FROZEN)
    if not os.path.exists(loader):
        os.makedirs(os.path.dirname(loader), exist_ok=True)
        shutil.copy2(next(os.path.realpath(p) for p in glibc_files() if "ld-linux" in p), loader)
    shutil.copytree(FROZEN.parent, os.path.join(root, "opt", "cni", "bin"), symlinks=True)
    plugin = "/opt/cni/bin/plexus"
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    assert not [p for p in os.listdir(os.path.join(root, "opt", "cni", "bin", "_internal")) if p.startswith("libc.")]

    version = subprocess.run([chroot, root, plugin], input=b"", capture_output=True, timeout=30,
                             env={"CNI_COMMAND": "VERSION"})
    assert version.returncode == 0, version
    assert "1.1.0" in json.loads(version.stdout)["supportedVersions"]

    conf = {"cniVersion": "1.1.0", "name": "n", "type": "plexus", "socket": "/run/plexus/none.sock"}
    add = subprocess.run([chroot, root, plugin], input=json.dumps(conf).encode(), capture_output=True, timeout=30,
                         env={"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/run/netns/x",
                              "CNI_IFNAME": "eth1", "CNI_PATH": "/opt/cni/bin"})
    assert add.returncode == 1, add
    assert json.loads(add.stdout)["code"] == 11, add.stdout  # the daemon is not there: try again later


@pytest.mark.skipif(not FROZEN.exists(), reason="no frozen plugin: make build")
def test_the_frozen_plugin_carries_its_own_bootstrap_and_no_pyinstaller_importer() -> None:
    """PyInstaller's bootstrap and its PYZ importer cost ~2 ms of every exec for modules the plugin does not keep in
    a PYZ archive (packaging/frozen_boot.py): the executable's archive holds only the plugin's bootstrap and entry."""
    from PyInstaller.archive.readers import CArchiveReader  # type: ignore[import-untyped]

    toc = CArchiveReader(str(FROZEN)).toc
    assert not [name for name in toc if name.startswith("pyimod") or name == "struct"], toc
    boot = marshal.loads(CArchiveReader(str(FROZEN)).extract("pyiboot01_bootstrap"))
    assert set(boot.co_names) == {"__doc__", "sys", "frozen", "__dict__", "pop"}, boot.co_names  # frozen_boot.py


def test_the_shim_starts_without_os() -> None:
    """``os`` (with ``_collections_abc``) is a tenth of the frozen plugin's start; the bare interpreter loads neither,
    and neither does the shim (cni/shim.py reads the environment through ``posix``)."""
    code = "import sys; sys.path.insert(0, '.'); import cni.__main__, cni.shim; print(sorted(sys.modules))"
    proc = subprocess.run([os.path.realpath(sys.executable), "-S", "-I", "-c", code],
                          capture_output=True, text=True, timeout=60, cwd=str(FROZEN.parents[2]), check=False)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.replace("'", '"')))
    assert "cni.shim" in loaded
    assert not loaded & {"os", "_collections_abc", "typing", "socket", "selectors", "enum", "re"}, sorted(loaded)

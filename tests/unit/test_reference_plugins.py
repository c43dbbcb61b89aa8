"""make install links every reference plugin (keeping the user's files), and a delegate handed a lease fails naming
the `static` IPAM plugin when it is missing, instead of the delegate's own error."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cni.errors import IOFailure
from ipamd.invoke.chain import Chain, Invocation
from ipamd.invoke.exec import Exec

REPO = Path(__file__).resolve().parents[2]


REFERENCE = ("bandwidth", "bridge", "dhcp", "firewall", "host-device", "host-local", "ipvlan", "loopback", "macvlan",
             "portmap", "ptp", "sbr", "static", "tuning", "vlan", "vrf")


def _executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_install_links_every_reference_plugin_and_keeps_the_users_files(tmp_path: Path) -> None:
    script = (REPO / "packaging/install.sh").read_text()
    assert 'ROOT=${ROOT:-}' in script, "install.sh must take ROOT, or this test would install onto this machine"
    repo, root = tmp_path / "repo", tmp_path / "root"
    (repo / "packaging").mkdir(parents=True)
    shutil.copy(REPO / "packaging/install.sh", repo / "packaging/install.sh")
    shutil.copy(REPO / "packaging/10-plexus.conflist", repo / "packaging/10-plexus.conflist")
    _executable(repo / "dist/plexus/plexus")
    for p in REFERENCE:
        _executable(root / "usr/lib/cni" / p)
    cni_bin = root / "opt/cni/bin"
    _executable(cni_bin / "bridge", "#!/bin/sh\n# the user's own bridge\n")
    (cni_bin / "tuning").symlink_to("/nonexistent/tuning")  # the user's, dangling
    env = {**os.environ, "ROOT": str(root), "VENV": str(tmp_path / "venv")}
    done = subprocess.run(["bash", str(repo / "packaging/install.sh")], env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    ref = root / "usr/lib/cni"
    linked = {p for p in REFERENCE if (cni_bin / p).is_symlink() and os.readlink(cni_bin / p) == str(ref / p)}
    assert linked == set(REFERENCE) - {"bridge", "tuning"}
    assert (cni_bin / "bridge").read_text() == "#!/bin/sh\n# the user's own bridge\n"
    assert os.readlink(cni_bin / "tuning") == "/nonexistent/tuning"
    listed = (root / "opt/plexus/installed-links").read_text().split()
    assert sorted(listed) == sorted(str(cni_bin / p) for p in linked)
    assert os.readlink(cni_bin / "plexus") == str(root / "opt/plexus/plexus/plexus")


def _inv(conflist: dict[str, Any], bin_dir: str) -> Invocation:
    return Invocation(conflist, "c1", "/run/netns/x", "net1", "IgnoreUnknown=1", bin_dirs=(bin_dir,))


def test_a_delegate_given_a_lease_fails_naming_static_when_the_static_plugin_is_missing(tmp_path: Path) -> None:
    marker = tmp_path / "bridge-ran"
    _executable(tmp_path / "bridge", f"#!{sys.executable}\nopen({str(marker)!r}, 'w').write('x')\n"
                                     "print('{\"code\": 999, \"msg\": \"failed to find plugin static\"}')\n"
                                     "raise SystemExit(1)\n")
    static_ipam = {"type": "static", "addresses": [{"address": "198.18.13.2/24"}]}
    inv = _inv({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge", "ipam": static_ipam}]},
               str(tmp_path))
    with pytest.raises(IOFailure) as info:
        Chain(Exec(str(tmp_path))).add(inv)
    assert info.value.code == 5
    assert "static" in info.value.msg and str(tmp_path) in info.value.msg
    assert not marker.exists(), "refused before the delegate ran"


def test_a_delegate_given_a_lease_runs_when_the_static_plugin_is_there(tmp_path: Path) -> None:
    _executable(tmp_path / "static")
    _executable(tmp_path / "bridge", f"#!{sys.executable}\nimport json, sys\nconf = json.load(sys.stdin)\n"
                                     "print(json.dumps({'cniVersion': conf['cniVersion'], 'ips': []}))\n")
    inv = _inv({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge", "ipam": {"type": "static"}}]},
               str(tmp_path))
    chain = Chain(Exec(str(tmp_path)))
    assert chain.add(inv) == {"cniVersion": "1.0.0", "ips": []}
    (tmp_path / "static").unlink()
    assert chain.delete(inv) == [], "only ADD is checked: a DEL still reaches the plugin, as a runtime's would"


def test_uninstall_removes_what_install_made_and_keeps_the_users_files_and_the_store(tmp_path: Path) -> None:
    """make uninstall undoes make install in a scratch root: the plugin, its links, the reference plugins' links
    install.sh made and the tools go; the user's own plugin stays, and so do the store, objects and logs (the leases
    of pods still attached) unless PURGE=1; a conflist the user changed is kept and said so."""
    script = (REPO / "scripts/uninstall.sh").read_text()
    assert 'ROOT=${ROOT:-}' in script, "uninstall.sh must take ROOT, or this test would uninstall this machine"
    repo, root = tmp_path / "repo", tmp_path / "root"
    for name in ("packaging/install.sh", "packaging/10-plexus.conflist", "scripts/uninstall.sh", "scripts/daemon.sh"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, repo / name)
    _executable(repo / "dist/plexus/plexus")
    for p in REFERENCE:
        _executable(root / "usr/lib/cni" / p)
    cni_bin, conf = root / "opt/cni/bin", root / "etc/cni/net.d/10-plexus.conflist"
    _executable(cni_bin / "bridge", "#!/bin/sh\n# the user's own bridge\n")
    env = {**os.environ, "ROOT": str(root), "VENV": str(tmp_path / "venv")}

    def run(name: str, **extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["bash", str(repo / name)], env=env | extra, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        return done

    run("packaging/install.sh")
    (root / "var/lib/plexus/plexus.db").write_text("leases")
    assert conf.exists() and (root / "usr/local/bin/plexusctl").is_symlink()
    run("scripts/uninstall.sh")
    assert sorted(p.name for p in cni_bin.iterdir()) == ["bridge"], "only the user's own plugin is left"
    assert (cni_bin / "bridge").read_text() == "#!/bin/sh\n# the user's own bridge\n"
    assert not (root / "opt/plexus").exists() and not conf.exists()
    assert not (root / "usr/local/bin/plexusctl").exists() and not (root / "usr/local/bin/plexus-ipamd").exists()
    assert (root / "var/lib/plexus/plexus.db").read_text() == "leases", "the store is kept"
    assert (root / "etc/plexus/objects").is_dir()

    run("packaging/install.sh")
    conf.write_text(conf.read_text().replace('"plexus"', '"plexus-edited"', 1))
    purged = run("scripts/uninstall.sh", PURGE="1")
    assert conf.exists() and "kept" in purged.stdout, "a conflist the user changed is theirs"
    assert not (root / "var/lib/plexus").exists() and not (root / "etc/plexus").exists()

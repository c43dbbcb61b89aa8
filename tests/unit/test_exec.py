"""The exec seam (``ipamd.invoke.exec``) against real processes: a clean environment, the plugin directory
only, a deadline that kills the whole process group, an output limit, results and CNI errors."""

from __future__ import annotations

import stat
import sys
import time
from pathlib import Path

import pytest

from cni.errors import AddressConflict, CniError, InvalidConfig, IOFailure
from ipamd.invoke.conflist import PodIdentity, Runtime
from ipamd.invoke.exec import Exec, check_plugin_type
from tests.fakes.exec import Expected, FakeExec

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "net1",
       "CNI_ARGS": "K8S_POD_NAME=a"}


def plugin(tmp_path: Path, name: str, body: str) -> Exec:
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\nimport json, os, sys, time\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return Exec(str(tmp_path))


def test_result_and_a_clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLEXUS_SECRET", "the daemon's own")
    ex = plugin(tmp_path, "p", "conf = json.load(sys.stdin)\n"
                              "print(json.dumps({'cniVersion': conf['cniVersion'], 'env': dict(os.environ)}))")
    run = ex.run("p", ENV, {"cniVersion": "1.0.0"}, 10)
    env = run.result["env"]
    assert "PLEXUS_SECRET" not in env
    assert {k: env[k] for k in ENV} == ENV
    assert env["CNI_PATH"] == str(tmp_path) and env["PATH"].startswith("/usr/local/sbin")
    assert set(env) <= set(ENV) | {"CNI_PATH", "PATH", "LC_CTYPE"}


def test_a_cni_error_is_raised_with_its_code_and_stderr_is_kept_out_of_it(tmp_path: Path) -> None:
    ex = plugin(tmp_path, "p", "sys.stderr.write('goroutine 1 [running]...')\n"
                              "print(json.dumps({'code': 104, 'msg': 'address in use', 'details': 'x'})); sys.exit(1)")
    with pytest.raises(AddressConflict) as err:
        ex.run("p", ENV, {}, 10)
    assert err.value.msg == "address in use" and "goroutine" not in str(err.value)


def test_a_plugins_own_code_999_keeps_its_msg_and_details(tmp_path: Path) -> None:
    """As Debian's macvlan answers a ``master`` that does not exist: ``{"code": 999, "msg": "Link not found"}``."""
    ex = plugin(tmp_path, "p", "print(json.dumps({'code': 999, 'msg': 'Link not found', 'details': 'eth9'})); "
                              "sys.exit(1)")
    with pytest.raises(CniError) as err:
        ex.run("p", ENV, {}, 10)
    assert (err.value.code, err.value.msg, err.value.details) == (999, "Link not found", "eth9")


def test_exit_1_with_no_output(tmp_path: Path) -> None:
    ex = plugin(tmp_path, "p", "sys.exit(1)")
    with pytest.raises(IOFailure) as err:
        ex.run("p", ENV, {}, 10)
    assert "exit 1" in err.value.msg


def test_garbage_on_stdout(tmp_path: Path) -> None:
    ex = plugin(tmp_path, "p", "print('{not json')")
    with pytest.raises(IOFailure) as err:
        ex.run("p", ENV, {}, 10)
    assert "not JSON" in err.value.msg


def test_a_plugin_that_hangs_is_killed_with_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    ex = plugin(tmp_path, "p", f"pid = os.fork()\nif pid == 0:\n    time.sleep(60)\n    os._exit(0)\n"
                              f"open({str(pidfile)!r}, 'w').write(str(pid))\ntime.sleep(60)")
    started = time.monotonic()
    with pytest.raises(IOFailure) as err:
        ex.run("p", ENV, {}, 1.0)
    assert "timed out" in err.value.msg and time.monotonic() - started < 10
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child), "the plugin's child outlived the deadline"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_output_beyond_the_limit_is_refused(tmp_path: Path) -> None:
    ex = plugin(tmp_path, "p", "sys.stdout.write('x' * 5000000); sys.stdout.flush(); time.sleep(30)")
    with pytest.raises(IOFailure) as err:
        Exec(ex.dirs, max_output=100_000).run("p", ENV, {}, 20)
    assert "more than 100000 bytes" in err.value.msg


@pytest.mark.parametrize("name", ["../bin/sh", "/bin/sh", "a/b", "..", ".", ""])
def test_only_plugins_of_the_plugin_directory(name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig):
        Exec(str(tmp_path)).run(name, ENV, {}, 10)
    with pytest.raises(InvalidConfig):
        check_plugin_type(name)


def test_a_missing_plugin(tmp_path: Path) -> None:
    with pytest.raises(IOFailure) as err:
        Exec([str(tmp_path), "/nonexistent"]).run("nope", ENV, {}, 10)
    assert err.value.code == 5 and "nope" in err.value.msg


def test_the_conflist_runtime_runs_through_the_seam(tmp_path: Path) -> None:
    """``plexusctl pod run`` and the delegation share the seam: scripted here, without a process."""
    netns = tmp_path / "netns"
    netns.write_text("")
    fake = FakeExec(Expected("a", "ADD", {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}]}),
                    Expected("b", "ADD", error=AddressConflict("taken", "x")),
                    Expected("b", "DEL"), Expected("a", "DEL"))
    rt = Runtime(str(tmp_path), str(tmp_path / "cache"), plugins=fake)
    pod = PodIdentity("ns", "p", "uid", "c1", str(netns))
    with pytest.raises(AddressConflict):
        rt.add({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "a"}, {"type": "b"}]}, pod)
    assert [(p, v) for p, v, _, _ in fake.calls] == [("a", "ADD"), ("b", "ADD"), ("b", "DEL"), ("a", "DEL")]
    assert fake.calls[1][3]["prevResult"]["interfaces"] == [{"name": "eth0"}], "chained with the result before"
    assert fake.expected == []

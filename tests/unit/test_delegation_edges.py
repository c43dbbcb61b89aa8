"""Delegation at its edges: plugins that fail oddly, rollbacks that fail, GC and results of every CNI version,
NPWG fields at their limits. Each test failed before its fix (found in review)."""

from __future__ import annotations

import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from cni.errors import CniError, IOFailure
from ipamd.invoke.chain import Chain, Invocation
from ipamd.invoke.exec import Exec

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "net1",
       "CNI_ARGS": "K8S_POD_NAME=a"}


def _plugin(tmp_path: Path, name: str, body: str) -> None:
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\nimport json, os, sys, time\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _inv(conflist: dict[str, Any], bin_dir: str = "", container: str = "c1", ifname: str = "net1",
         timeout: float = 10.0) -> Invocation:
    return Invocation(conflist, container, "/run/netns/x", ifname, "IgnoreUnknown=1",
                      bin_dirs=(bin_dir,) if bin_dir else (), timeout_s=timeout)


def test_a_del_whose_plugin_prints_a_malformed_error_code_still_dels_the_rest_of_the_list(tmp_path: Path) -> None:
    """``_failure`` trusted ``code``: ``CniError.from_dict`` does ``int(data['code'])``, so a plugin printing
    ``{"code": "oops"}`` (or null, or a list) raised ValueError/TypeError, not a CniError. ``Chain.delete`` catches
    only CniError, so the loop aborted: the plugins before it in the list were never DEL'd (a leak), and the caller
    saw a 999 instead of code 5."""
    marker = tmp_path / "a-deleted"
    _plugin(tmp_path, "a", f"if os.environ['CNI_COMMAND'] == 'DEL':\n    open({str(marker)!r}, 'w').write('x')")
    _plugin(tmp_path, "b", "print(json.dumps({'code': 'oops', 'msg': 'broken'})); sys.exit(1)")
    chain = Chain(Exec(str(tmp_path)))
    inv = _inv({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "a"}, {"type": "b"}]}, str(tmp_path))
    errors = chain.delete(inv)
    assert len(errors) == 1 and errors[0].startswith("b:")
    assert marker.exists(), "plugin a must be DEL'd although b failed"


@pytest.mark.parametrize("code", ["oops", None, [7]], ids=["string", "null", "list"])
def test_a_malformed_error_code_is_an_io_failure(tmp_path: Path, code: Any) -> None:
    """Same root cause on ADD: a plugin that writes garbage as its error must give code 5 (README's table), not an
    unexpected Python exception (code 999)."""
    _plugin(tmp_path, "p", f"print(json.dumps({{'code': {code!r}, 'msg': 'x'}})); sys.exit(1)")
    with pytest.raises(CniError) as err:
        Exec(str(tmp_path)).run("p", ENV, {}, 10)
    assert err.value.code == 5


def test_an_add_that_prints_no_result_fails_with_code_5(tmp_path: Path) -> None:
    """README: code 5 when 'a delegated plugin ... printed no result'. ``Exec.run`` returns ``{}`` for an empty
    stdout whatever the verb, and ``Chain.add`` took it as the result: the ADD succeeded with an interface nobody
    described (no IPs, no network-status entry). libcni fails such an ADD too."""
    _plugin(tmp_path, "quiet", "json.load(sys.stdin)")
    chain = Chain(Exec(str(tmp_path)))
    with pytest.raises(IOFailure):
        chain.add(_inv({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "quiet"}]}, str(tmp_path)))



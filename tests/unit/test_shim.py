"""``cni.shim.main``: what the exec'd plugin checks alone, and how it relays the daemon's answers."""

from __future__ import annotations

import io
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni import shim
from cni.errors import InvalidConfig
from cni.shim import main
from cni.version import SUPPORTED_VERSIONS

REPO = Path(__file__).resolve().parents[2]

ADD_ENV = {
    "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/run/netns/pod", "CNI_IFNAME": "eth0",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod-a", "CNI_PATH": "/opt/cni/bin",
}


def env_for(verb: str, **extra: str) -> dict[str, str]:
    env = dict(ADD_ENV, CNI_COMMAND=verb)
    if verb in ("GC", "STATUS", "VERSION"):
        env = {"CNI_COMMAND": verb, "CNI_PATH": "/opt/cni/bin"}
    env.update(extra)
    return env


def conf(socket_path: str | Path = "/nonexistent/plexus.sock", version: str = "1.1.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "plexus", "type": "plexus", "socket": str(socket_path), **extra}


def run_shim(env: dict[str, str], stdin: bytes | dict[str, Any]) -> tuple[int, str]:
    raw = json.dumps(stdin).encode() if isinstance(stdin, dict) else stdin
    out = io.StringIO()
    rc = main(env, io.BytesIO(raw), out)
    return rc, out.getvalue()


def one_json_object(text: str) -> dict[str, Any]:
    """The shim's output is exactly one line with one JSON object, never a traceback."""
    assert "Traceback" not in text
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)
    obj = json.loads(text)
    assert isinstance(obj, dict)
    return obj


def error_of(env: dict[str, str], stdin: bytes | dict[str, Any]) -> dict[str, Any]:
    rc, out = run_shim(env, stdin)
    assert rc == 1
    err = one_json_object(out)
    assert set(err) == {"cniVersion", "code", "msg", "details"}
    assert isinstance(err["code"], int) and isinstance(err["msg"], str) and err["msg"]
    return err


# -- VERSION --------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_version_answers_supported_versions(version: str) -> None:
    rc, out = run_shim({"CNI_COMMAND": "VERSION"}, {"cniVersion": version})
    assert rc == 0
    answer = one_json_object(out)
    assert answer == {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def test_version_with_empty_stdin() -> None:
    rc, out = run_shim({"CNI_COMMAND": "VERSION"}, b"")
    assert rc == 0
    assert one_json_object(out) == {"cniVersion": "1.1.0", "supportedVersions": list(SUPPORTED_VERSIONS)}


def test_version_needs_no_daemon_nor_other_env() -> None:
    rc, out = run_shim({"CNI_COMMAND": "VERSION"}, {"cniVersion": "1.0.0", "socket": "/nonexistent"})
    assert rc == 0
    assert one_json_object(out)["supportedVersions"] == list(SUPPORTED_VERSIONS)


# -- environment ----------------------------------------------------------------------------------

def test_missing_command() -> None:
    err = error_of({}, conf())
    assert err["code"] == 4
    assert err["details"] == "CNI_COMMAND"


def test_unknown_command() -> None:
    err = error_of(env_for("REBOOT"), conf())
    assert err["code"] == 4
    assert "REBOOT" in err["msg"]


@pytest.mark.parametrize(("verb", "missing"), [
    ("ADD", "CNI_NETNS"), ("ADD", "CNI_CONTAINERID"), ("ADD", "CNI_IFNAME"),
    ("CHECK", "CNI_NETNS"), ("DEL", "CNI_CONTAINERID"), ("DEL", "CNI_IFNAME"),
])
def test_missing_required_env(verb: str, missing: str) -> None:
    env = env_for(verb)
    del env[missing]
    err = error_of(env, conf())
    assert err["code"] == 4
    assert err["details"] == missing
    assert missing in err["msg"]


def test_empty_required_env_is_missing() -> None:
    err = error_of(env_for("ADD", CNI_NETNS=""), conf())
    assert (err["code"], err["details"]) == (4, "CNI_NETNS")


def test_del_without_netns_reaches_the_daemon() -> None:
    env = env_for("DEL")
    del env["CNI_NETNS"]
    err = error_of(env, conf())
    assert err["code"] == 11  # past the checks: only the (missing) daemon stopped it


# -- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize("stdin", [b"{not json", b"\xff\xfe\x00garbage", b"[1, 2]", b'"plexus"', b"   "])
def test_stdin_not_a_json_object(stdin: bytes) -> None:
    err = error_of(env_for("ADD"), stdin)
    assert err["code"] == 6


@pytest.mark.parametrize("key", ["cniVersion", "name", "type"])
def test_missing_required_key(key: str) -> None:
    c = conf()
    del c[key]
    err = error_of(env_for("ADD"), c)
    assert err["code"] == 7
    assert err["details"] == key
    assert key in err["msg"]


@pytest.mark.parametrize("key", ["cniVersion", "name", "type"])
def test_required_key_must_be_a_non_empty_string(key: str) -> None:
    for bad in ("", 1, None, ["x"]):
        err = error_of(env_for("ADD"), {**conf(), key: bad})
        assert (err["code"], err["details"]) == (7, key)


@pytest.mark.parametrize("name", ["a/b", "net/../x", "-net", ".net", "my net", "netä", "net:1"])
def test_a_network_name_the_cni_spec_does_not_allow_is_refused_naming_it(name: str) -> None:
    """The daemon keys an attachment's records by ``CNI/<network>/<container>/<ifname>``: a network named ``a/b`` read
    as network ``a``'s, and GC of ``a`` released ``a/b``'s leases (found in review). libcni refuses such names; so does
    the plugin, for any other runtime, on every verb that carries a configuration."""
    for verb in ("ADD", "DEL", "CHECK", "GC"):
        extra: dict[str, Any] = {"prevResult": {"cniVersion": "1.1.0"}} if verb == "CHECK" else {}
        err = error_of(env_for(verb), {**conf(), **extra, "name": name})
        assert (err["code"], err["details"]) == (7, "name"), verb
        assert repr(name) in err["msg"]


@pytest.mark.parametrize(("key", "value"), [("CNI_CONTAINERID", "a/b"), ("CNI_CONTAINERID", "-c0ffee"),
                                            ("CNI_CONTAINERID", "c0 ffee"), ("CNI_IFNAME", "net1/x"),
                                            ("CNI_IFNAME", "x" * 16), ("CNI_IFNAME", ".."), ("CNI_IFNAME", "net:1"),
                                            ("CNI_IFNAME", "net 1")])
def test_a_container_id_or_ifname_the_cni_spec_does_not_allow_is_refused_naming_it(key: str, value: str) -> None:
    for verb in ("ADD", "DEL"):
        err = error_of(env_for(verb, **{key: value}), conf())
        assert (err["code"], err["details"]) == (4, key), verb


def test_names_the_cni_spec_allows_reach_the_daemon() -> None:
    """(A missing daemon's code, 11: the names passed.)"""
    env = env_for("ADD", CNI_CONTAINERID="0123abcdef_x.y-z", CNI_IFNAME="x" * 15)
    assert error_of(env, {**conf(), "name": "Net_1.a-b"})["code"] == 11


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "2.0.0", "1.1", "latest"])
def test_unsupported_version(version: str) -> None:
    err = error_of(env_for("ADD"), conf(version=version))
    assert err["code"] == 1
    assert err["cniVersion"] == "1.1.0"  # answered in a version the shim speaks


@pytest.mark.parametrize(("verb", "version"), [
    ("GC", "1.0.0"), ("GC", "0.4.0"), ("STATUS", "1.0.0"), ("CHECK", "0.3.1"), ("CHECK", "0.3.0"),
])
def test_verb_too_new_for_the_version(verb: str, version: str) -> None:
    err = error_of(env_for(verb), conf(version=version))
    assert err["code"] == 1
    assert verb in err["msg"]


def test_errors_are_written_in_the_callers_version() -> None:
    err = error_of(env_for("ADD"), conf(version="0.4.0"))
    assert err["cniVersion"] == "0.4.0"


def test_shim_config_error_is_answered_in_the_configurations_version() -> None:
    """An error ``parse_config`` finds (a missing ``type``, a bad ``name``) was answered in 1.1.0 whatever the
    configuration said: a 0.3.1 runtime got a 1.1.0 error object. Now ``main`` answers it in ``stated_version``."""
    err = error_of(env_for("ADD"), {"cniVersion": "0.3.1", "name": "x"})
    assert (err["code"], err["details"], err["cniVersion"]) == (7, "type", "0.3.1"), err
    err = error_of(env_for("ADD"), {"cniVersion": "0.4.0", "name": "a/b", "type": "plexus"})
    assert (err["code"], err["details"], err["cniVersion"]) == (7, "name", "0.4.0"), err


def strict_json(text: str) -> Any:
    """``json.loads`` refusing what RFC 8259 has not (``NaN``, ``Infinity``), as a runtime's reader does."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON on stdout: {text!r}"))


@pytest.mark.parametrize("verb", ["VERSION", "ADD", "DEL"])
@pytest.mark.parametrize("stdin", [b'{"cniVersion": NaN}', b'{"cniVersion": "1.1.0", "name": "x", "type": "plexus",'
                                   b' "mtu": -Infinity}', b'{"cniVersion": 1e400}'])
def test_shim_never_prints_what_is_not_json(verb: str, stdin: bytes) -> None:
    """The shim's JSON reader took ``NaN``/``Infinity`` and VERSION echoed the cniVersion it was given;
    ``wirejson.dumps`` wrote a float with ``repr``: ``nan``/``inf`` on stdout, which no runtime can read. Now such a
    configuration (or a number too large for a double, read as infinity) is code 6 naming stdin."""
    rc, out = run_shim(env_for(verb), stdin)
    err = strict_json(out)
    assert rc == 1 and err["code"] == 6 and err["details"].startswith("stdin"), err


def test_version_echoes_only_a_cni_version_that_is_a_string() -> None:
    rc, out = run_shim({"CNI_COMMAND": "VERSION"}, {"cniVersion": 1.5})
    assert rc == 0 and strict_json(out)["cniVersion"] == "1.1.0"


def test_shim_deeply_nested_configuration_is_a_decoding_failure_not_code_999() -> None:
    """``parse_config`` caught ValueError but not the RecursionError ``_json`` raises on a deeply nested document:
    code 999 "plexus failed unexpectedly" instead of 6."""
    raw = b'{"cniVersion": "1.1.0", "name": "x", "type": "plexus", "a": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    err = error_of(env_for("ADD"), raw)
    assert (err["code"], err["details"]) == (6, "stdin: nested too deeply"), err


def test_shim_configuration_read_but_too_deep_to_write_again_is_a_decoding_failure_not_code_999() -> None:
    """600 levels: the C scanner reads them (~1000), but ``wirejson.dumps`` (pure Python, two frames a level), writing
    the configuration on to the daemon, hit the recursion limit: 999."""
    depth = 600
    raw = json.dumps(conf()).encode()[:-1] + b', "x": ' + b"[" * depth + b"]" * depth + b"}"
    err = error_of(dict(ADD_ENV), raw)
    assert (err["code"], err["details"]) == (6, "stdin: nested too deeply"), err


# -- the daemon is not there ----------------------------------------------------------------------

@pytest.mark.parametrize(("verb", "code"), [("ADD", 11), ("DEL", 11), ("CHECK", 11), ("GC", 11), ("STATUS", 50)])
def test_missing_socket(tmp_path: Path, verb: str, code: int) -> None:
    started = time.monotonic()
    err = error_of(env_for(verb), conf(tmp_path / "plexus.sock"))
    assert time.monotonic() - started < 2.0
    assert err["code"] == code
    assert "plexus.sock" in err["details"]


@pytest.mark.parametrize(("verb", "code"), [("ADD", 11), ("DEL", 11), ("STATUS", 50)])
def test_stale_socket_file(tmp_path: Path, verb: str, code: int) -> None:
    path = tmp_path / "plexus.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # bound, never listening: connections are refused
    try:
        started = time.monotonic()
        err = error_of(env_for(verb), conf(path))
        assert time.monotonic() - started < 2.0
        assert err["code"] == code
    finally:
        stale.close()


def test_default_socket_is_used_without_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import cni.shim

    monkeypatch.setattr(cni.shim, "DEFAULT_SOCKET", str(tmp_path / "default.sock"))
    c = conf()
    del c["socket"]
    err = error_of(env_for("ADD"), c)
    assert err["code"] == 11
    assert "default.sock" in err["details"]


# -- a fake daemon --------------------------------------------------------------------------------

Responder = Callable[[bytes], bytes]


def http(status: int, body: Any, reason: str = "X") -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            f"Connection: close\r\n\r\n").encode() + data


class FakeDaemon:
    """plexus-ipamd's socket, answering every request with what ``respond`` makes of it."""

    def __init__(self, path: Path, respond: Responder) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.respond = respond
        self.requests: list[tuple[bytes, dict[str, str], bytes]] = []
        self.release = threading.Event()
        daemon = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                request_line = self.rfile.readline().rstrip(b"\r\n")
                headers: dict[str, str] = {}
                while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = self.rfile.read(int(headers.get("content-length", "0")))
                daemon.requests.append((request_line, headers, body))
                answer = daemon.respond(body)
                if answer:
                    self.wfile.write(answer)

        self.server = socketserver.UnixStreamServer(str(path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    @property
    def last_call(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.requests[-1][2])
        return parsed


@pytest.fixture()
def fake_daemon(tmp_path: Path) -> Iterator[Callable[..., FakeDaemon]]:
    started: list[FakeDaemon] = []

    def start(respond: Responder, name: str = "") -> FakeDaemon:
        d = FakeDaemon(tmp_path / f"d{len(started)}" / name if name else tmp_path / f"d{len(started)}.sock", respond)
        started.append(d)
        return d

    yield start
    for d in started:
        d.close()


RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "net1", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/pod"}],
    "ips": [{"address": "198.18.10.50/24", "interface": 0}],
    "dns": {},
}


def test_result_is_printed_verbatim(fake_daemon: Callable[[Responder], FakeDaemon]) -> None:
    d = fake_daemon(lambda body: http(200, RESULT, "OK"))
    env = dict(env_for("ADD"), HOME="/root", SECRET_TOKEN="x")
    c = conf(d.path, version="1.0.0", logFile="")
    rc, out = run_shim(env, c)
    assert rc == 0
    assert one_json_object(out) == RESULT
    request_line, headers, _ = d.requests[0]
    assert request_line == b"POST /v1/cni HTTP/1.1"
    assert headers["content-type"] == "application/json"
    call = d.last_call
    assert call["config"] == c
    assert call["env"] == {k: v for k, v in env.items() if k.startswith("CNI_")}  # nothing else of the env leaves


def test_daemon_error_is_printed_verbatim(fake_daemon: Callable[[Responder], FakeDaemon]) -> None:
    error = {"cniVersion": "0.4.0", "code": 104, "msg": "IPAddress a is in use by pod ns/b",
             "details": "networks-spec[0].ipAddressNames"}
    d = fake_daemon(lambda body: http(400, error, "Bad Request"))
    rc, out = run_shim(env_for("ADD"), conf(d.path, version="0.4.0"))
    assert rc == 1
    assert one_json_object(out) == error


@pytest.mark.parametrize("code", [7, 11, 100, 102, 999, 4242])
def test_daemon_error_codes_survive(fake_daemon: Callable[[Responder], FakeDaemon], code: int) -> None:
    error = {"cniVersion": "1.1.0", "code": code, "msg": "no", "details": "why"}
    d = fake_daemon(lambda body: http(500 if code == 999 else 400, error))
    rc, out = run_shim(env_for("ADD"), conf(d.path))
    assert rc == 1
    assert one_json_object(out) == error


@pytest.mark.parametrize("verb", ["DEL", "STATUS", "GC"])
def test_empty_success_prints_nothing(fake_daemon: Callable[[Responder], FakeDaemon], verb: str) -> None:
    d = fake_daemon(lambda body: http(200, {}, "OK"))
    rc, out = run_shim(env_for(verb), conf(d.path))
    assert (rc, out) == (0, "")
    assert d.last_call["env"]["CNI_COMMAND"] == verb


def test_check_is_forwarded(fake_daemon: Callable[[Responder], FakeDaemon]) -> None:
    d = fake_daemon(lambda body: http(200, {}, "OK"))
    c = conf(d.path, prevResult=RESULT)
    rc, out = run_shim(env_for("CHECK"), c)
    assert (rc, out) == (0, "")
    assert d.last_call["config"]["prevResult"] == RESULT


@pytest.mark.parametrize(("answer", "codes"), [
    (b"garbage, not HTTP", {11, 101}),
    (b"", {11, 101}),  # closed without a word
    (b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nnot json", {101}),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n[1,2,3]", {101}),
    (b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 17\r\n\r\n{\"error\": \"boom\"}", {101}),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnull", {101}),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{\"a\"", {101}),  # cut short
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n{}", {11, 101, 999}),
])
def test_garbage_answer(fake_daemon: Callable[[Responder], FakeDaemon], answer: bytes, codes: set[int]) -> None:
    d = fake_daemon(lambda body: answer)
    err = error_of(env_for("ADD"), conf(d.path))
    assert err["code"] in codes


def test_content_length_is_honoured(fake_daemon: Callable[[Responder], FakeDaemon]) -> None:
    d = fake_daemon(lambda body: http(200, RESULT) + b"trailing rubbish")
    rc, out = run_shim(env_for("ADD"), conf(d.path))
    assert rc == 0
    assert one_json_object(out) == RESULT


def test_hung_daemon_times_out_with_try_again(fake_daemon: Callable[[Responder], FakeDaemon]) -> None:
    holder: list[FakeDaemon] = []

    def hang(body: bytes) -> bytes:
        holder[0].release.wait(10)
        return b""

    holder.append(fake_daemon(hang))
    started = time.monotonic()
    err = error_of(env_for("ADD"), conf(holder[0].path, timeoutSeconds=0.3))
    assert time.monotonic() - started < 2.0
    assert err["code"] == 11


def test_log_file_gets_one_line_per_call(fake_daemon: Callable[[Responder], FakeDaemon], tmp_path: Path) -> None:
    d = fake_daemon(lambda body: http(200, RESULT))
    log = tmp_path / "plexus.log"
    run_shim(env_for("ADD"), conf(d.path, logFile=str(log)))
    run_shim(env_for("ADD"), conf(tmp_path / "gone.sock", logFile=str(log)))
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    assert "ADD" in lines[0] and "container=c0ffee" in lines[0] and lines[0].endswith("ok")
    assert "error 11" in lines[1]


def test_unwritable_log_file_does_not_fail_the_call(fake_daemon: Callable[[Responder], FakeDaemon],
                                                    tmp_path: Path) -> None:
    d = fake_daemon(lambda body: http(200, RESULT))
    rc, out = run_shim(env_for("ADD"), conf(d.path, logFile=str(tmp_path / "no" / "such" / "dir" / "x.log")))
    assert rc == 0
    assert one_json_object(out) == RESULT


# -- never a traceback ----------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [
    {"timeoutSeconds": "soon"}, {"timeoutSeconds": -1}, {"socket": 5}, {"socket": "/tmp/\x00nul"},
    {"socket": "x" * 200}, {"logFile": 7},
])
def test_odd_config_still_gives_a_cni_error(extra: dict[str, Any], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a logFile of 7 is the relative path "7"
    c = {**conf(tmp_path / "gone.sock"), **extra}
    err = error_of(env_for("ADD"), c)
    assert err["code"] in {7, 11, 999}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(verb=st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "", "add", "BOGUS"]),
       stdin=st.one_of(
           st.binary(max_size=64),
           st.dictionaries(st.sampled_from(["cniVersion", "name", "type", "socket", "prevResult", "timeoutSeconds"]),
                           st.one_of(st.none(), st.integers(), st.text(max_size=8), st.sampled_from(SUPPORTED_VERSIONS)))
           .map(lambda d: json.dumps(d).encode()),
       ))
def test_output_is_always_one_json_object(verb: str, stdin: bytes) -> None:
    env = env_for(verb) if verb else {}
    cfg = stdin
    try:  # keep a configured socket off the real daemon's path
        parsed = json.loads(stdin)
        if isinstance(parsed, dict):
            parsed["socket"] = "/nonexistent/plexus-test.sock"
            cfg = json.dumps(parsed).encode()
    except ValueError:
        pass
    rc, out = run_shim(env, cfg)
    assert rc in (0, 1)
    answer = one_json_object(out)
    if rc == 1:
        assert set(answer) == {"cniVersion", "code", "msg", "details"}
        assert answer["cniVersion"] in SUPPORTED_VERSIONS
    else:
        assert verb == "VERSION"


def test_the_real_entry_point(tmp_path: Path) -> None:
    """``python -m cni``: exit code and output as the runtime sees them."""
    env = {**env_for("ADD"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.run([sys.executable, "-m", "cni"], input=json.dumps(conf(tmp_path / "gone.sock")).encode(),
                          env=env, capture_output=True, timeout=30, cwd=REPO, check=False)
    assert proc.returncode == 1
    assert one_json_object(proc.stdout.decode())["code"] == 11
    proc = subprocess.run([sys.executable, "-m", "cni"], input=b'{"cniVersion": "1.0.0"}',
                          env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=30, cwd=REPO, check=False)
    assert proc.returncode == 0
    assert one_json_object(proc.stdout.decode())["supportedVersions"] == list(SUPPORTED_VERSIONS)


def test_probe_usage_and_an_absent_daemon(tmp_path: Path) -> None:
    from cni.shim import probe

    out = io.StringIO()
    assert probe([], out) == 2 and "usage: plexus --probe healthz|readyz" in out.getvalue()
    assert probe(["livez"], io.StringIO()) == 2
    out = io.StringIO()
    assert probe(["readyz", str(tmp_path / "none.sock")], out) == 1
    assert "not reachable" in out.getvalue() and "none.sock" in out.getvalue()


# -- plexus-ipam: the same binary under the IPAM plugin's name ----------------------------------

def test_as_plexus_ipam_it_posts_to_the_ipam_socket_its_ipam_section_names(
        fake_daemon: Callable[..., FakeDaemon]) -> None:
    ipam_result = {"cniVersion": "1.0.0", "ips": [{"address": "198.18.10.51/24"}], "dns": {}}
    d = fake_daemon(lambda body: http(200, ipam_result, "OK"), "plexus-ipam.sock")
    c = {"cniVersion": "1.0.0", "name": "nad-a", "type": "macvlan", "master": "eth0",
         "ipam": {"type": "plexus-ipam", "range": "198.18.10.0/24", "socket": str(d.path)}}
    out = io.StringIO()
    rc = main(env_for("ADD"), io.BytesIO(json.dumps(c).encode()), out, ipam=True)
    assert rc == 0 and one_json_object(out.getvalue()) == ipam_result
    assert d.requests[0][0] == b"POST /v1/ipam HTTP/1.1"
    assert d.last_call["config"] == c, "the calling plugin's whole configuration goes to the daemon"


def test_as_plexus_ipam_without_a_daemon_it_is_try_again_later_and_without_ipam_section_invalid() -> None:
    c = {"cniVersion": "1.0.0", "name": "nad-a", "type": "macvlan",
         "ipam": {"type": "plexus-ipam", "socket": "/nonexistent/plexus-ipam.sock"}}
    out = io.StringIO()
    assert main(env_for("ADD"), io.BytesIO(json.dumps(c).encode()), out, ipam=True) == 1
    assert one_json_object(out.getvalue())["code"] == 11
    out = io.StringIO()
    del c["ipam"]
    assert main(env_for("ADD"), io.BytesIO(json.dumps(c).encode()), out, ipam=True) == 1
    err = one_json_object(out.getvalue())
    assert (err["code"], err["details"]) == (7, "ipam")


def test_the_name_it_runs_under_picks_the_role(tmp_path: Path) -> None:
    """``plexus-ipam`` is a link to the plugin: argv[0] decides (the frozen build is checked by the netns tier)."""
    link = tmp_path / "plexus-ipam"
    none = tmp_path / "nowhere" / "plexus-ipam.sock"
    link.write_text(f"#!{sys.executable}\nimport sys; sys.path.insert(0, {str(REPO)!r})\n"
                    "from cni.shim import run\nrun()\n")
    link.chmod(0o755)
    c = {"cniVersion": "1.0.0", "name": "nad-a", "type": "bridge",
         "ipam": {"type": "plexus-ipam", "socket": str(none)}}
    proc = subprocess.run([str(link)], input=json.dumps(c).encode(), capture_output=True,
                          env={"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "net1"}, timeout=30)
    err = json.loads(proc.stdout)
    assert err["code"] == 11 and str(none) in err["details"], "it asked plexus-ipam's socket, from the ipam section"


@pytest.mark.parametrize(("ipam", "field"), [
    ({"socket": "/run/containerd/containerd.sock"}, "ipam.socket"),  # a NAD's author may name no other socket
    ({"socket": "relative/plexus-ipam.sock"}, "ipam.socket"),
    ({"socket": "/nonexistent/evil-plexus-ipam.sock"}, "ipam.socket"),  # the name merely ends so
    ({"socket": "/nonexistent/plexus-ipam.sock.d"}, "ipam.socket"),
    ({"timeoutSeconds": "soon"}, "ipam.timeoutSeconds"),
    ({"timeoutSeconds": 0}, "ipam.timeoutSeconds"),  # refused, as the daemon does: not the default
    ({"timeoutSeconds": 3601}, "ipam.timeoutSeconds"),
])
def test_as_plexus_ipam_its_client_keys_are_checked(ipam: dict[str, Any], field: str) -> None:
    c = {"cniVersion": "1.0.0", "name": "nad-a", "type": "macvlan", "ipam": {"type": "plexus-ipam", **ipam}}
    out = io.StringIO()
    assert main(env_for("ADD"), io.BytesIO(json.dumps(c).encode()), out, ipam=True) == 1
    err = one_json_object(out.getvalue())
    assert (err["code"], err["details"]) == (7, field)


def test_plexus_ipam_refuses_a_socket_that_is_not_a_plexus_ipam_sock() -> None:
    """README: plexus-ipam's ``socket`` "must be a ``plexus-ipam.sock``: whoever writes a NAD writes this, and the
    plugin runs as root". ``forward`` checked ``path.endswith("plexus-ipam.sock")``: ``/tmp/evil-plexus-ipam.sock`` was
    connected to, with the pod's environment and configuration. Now the file's name must be exactly that."""
    c = {"cniVersion": "1.1.0", "name": "n", "type": "macvlan",
         "ipam": {"type": "plexus-ipam", "socket": "/nonexistent/evil-plexus-ipam.sock"}}
    with pytest.raises(InvalidConfig) as info:
        shim.forward("ADD", ADD_ENV, c, ipam=True)
    assert info.value.details == "ipam.socket"
    assert shim.is_ipam_socket_path("/run/plexus/plexus-ipam.sock")
    assert not shim.is_ipam_socket_path("/tmp/evil-plexus-ipam.sock")


def test_an_ifname_longer_than_15_bytes_is_refused_as_libcni_and_the_kernel_do() -> None:
    """cni.names claims libcni's ValidateInterfaceName, whose limit is 15 *bytes* (Go's len; the kernel's IFNAMSIZ is
    bytes too). ifname_problem counts characters: "netäääääää" (10 characters, 17 bytes) passes the plugin, reaches the
    daemon, is recorded and leased for, and fails only when the kernel refuses the link."""
    name = "net" + "\u00e4" * 7
    assert len(name) <= 15 < len(name.encode())
    err = error_of(env_for("ADD", CNI_IFNAME=name), conf())
    assert (err["code"], err["details"]) == (4, "CNI_IFNAME"), err


@pytest.mark.parametrize(("timeout", "code", "field"), [
    ("NaN", 6, "stdin"), ("Infinity", 6, "stdin"), ("1e400", 6, "stdin"),  # not JSON: refused as it is read
    ("1e300", 7, "ipam.timeoutSeconds"),
])
def test_the_shim_refuses_a_timeout_the_daemon_refuses_naming_it(tmp_path: Any, timeout: str, code: int,
                                                                 field: str) -> None:
    """``ipam.timeoutSeconds`` is read by the plugin binary "with the same rules" as the daemon's (0 < t <= 3600,
    code 7 naming ``ipam.timeoutSeconds``). The shim checked only ``> 0``: NaN reached ``socket.settimeout`` and was
    answered code 11 "plexus-ipamd is not reachable" (the runtime retried for ever), Infinity and 1e300 overflowed it
    and answered code 999 (cni/shim.py forward). Now both apply ``timeout_problem``; NaN and Infinity (and a number
    read as infinity) are not JSON, so the shim's reader refuses them first (code 6 naming stdin), as libcni would."""
    path = str(tmp_path / "plexus-ipam.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(4)

    def serve() -> None:  # a daemon that answers every call with an empty result
        try:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                body = b'{"cniVersion": "1.0.0", "ips": []}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "net1"}
    conf = ('{"cniVersion": "1.0.0", "name": "n", "type": "macvlan", "ipam": {"type": "plexus-ipam", '
            f'"socket": "{path}", "timeoutSeconds": {timeout}}}}}')
    out = io.StringIO()
    try:
        assert shim.main(env, io.BytesIO(conf.encode()), out, ipam=True) == 1
    finally:
        server.close()
    err = json.loads(out.getvalue())
    assert (err["code"], err["details"].partition(":")[0]) == (code, field), err


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -float("inf"), 1e300, 0, True])
def test_timeout_problem_refuses_what_is_no_number_of_seconds_in_range(timeout: Any) -> None:
    assert shim.timeout_problem(timeout)


def test_an_environment_error_is_written_in_the_configurations_version() -> None:
    """SPEC 1.x "Error": "cniVersion: The same value as provided by the configuration". check_env ran before the
    configuration was read, so an invalid CNI_IFNAME under a 0.4.0 configuration was answered as 1.1.0."""
    err = error_of(env_for("ADD", CNI_IFNAME="net/1"), conf(version="0.4.0"))
    assert (err["code"], err["cniVersion"]) == (4, "0.4.0")

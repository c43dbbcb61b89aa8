"""The exec'd ``plexus`` CNI plugin: check the call, forward it to the node daemon, print the answer.

The same binary, run under the name ``plexus-ipam`` (a link), is Plexus's IPAM plugin for other plugins
(``"ipam": {"type": "plexus-ipam"}``): it forwards to the daemon's IPAM socket instead.

The runtime execs this for every ADD, DEL, CHECK, GC and STATUS, so it does as little as it can:
it validates what it can see without the daemon (verb, environment, config JSON, cniVersion),
answers VERSION itself, and posts everything else to ``plexus-ipamd`` over its unix socket
(HTTP/1.1, JSON; DESIGN §1). Standard library only — a test proves that importing it loads
none of pyroute2, grpc, protobuf, kubernetes or yaml — because every heavy import would be paid
on every pod start.
"""

from __future__ import annotations

import _socket  # the C module: `socket` would add selectors and enum to every start
import posix  # not `os`: its import (with `_collections_abc`) is a tenth of the frozen plugin's start
import sys
import time

from cni import wirejson
from cni.errors import (
    CniError,
    DaemonUnavailable,
    DecodingFailure,
    IncompatibleVersion,
    InternalError,
    InvalidConfig,
    InvalidEnvironment,
    PluginNotAvailable,
    TryAgainLater,
)
from cni.names import ALLOWED, ifname_problem, is_cni_name
from cni.version import CURRENT_VERSION, SUPPORTED_VERSIONS, VERB_MIN_VERSION, check_version, version_tuple

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs the shim ~5 ms
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import IO, Any

DEFAULT_SOCKET = "/run/plexus/plexus.sock"
IPAM_SOCKET_NAME = "plexus-ipam.sock"
DEFAULT_IPAM_SOCKET = f"/run/plexus/{IPAM_SOCKET_NAME}"
IPAM_NAME = "plexus-ipam"  # the name the binary answers to as an IPAM plugin
DEFAULT_TIMEOUT_S = 60.0
#: The longest ``timeoutSeconds`` allowed. The daemon checks plexus-ipam's section with ``timeout_problem`` too
#: (``ipamd.model.ipamconf``), so that what it accepts the plugin waits for, and what it refuses the plugin refuses.
MAX_TIMEOUT_S = 3600
#: How long to wait for the daemon to accept the connection: a stopped daemon must give
#: code 11 quickly, so the runtime retries instead of hanging the pod (issue: "within 2 s").
CONNECT_TIMEOUT_S = 2.0

#: The environment each verb needs (SPEC.md "Parameters"); CNI_NETNS is optional on DEL.
REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "GC": (),
    "STATUS": (),
    "VERSION": (),
}
FORWARDED_ENV = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")


def timeout_problem(timeout: object) -> str:
    """What is wrong with a ``timeoutSeconds`` ("" when nothing): a number of seconds, more than 0 and at most
    ``MAX_TIMEOUT_S`` (NaN and infinity are neither; a bool is no number here, though Python says it is)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT_S:
        return f"must be a number of seconds more than 0 and at most {MAX_TIMEOUT_S}"
    return ""


class _BadAnswer(Exception):
    pass


def http_post(path: str, target: str, body: bytes, timeout: float, method: str = "POST") -> tuple[int, bytes]:
    """One HTTP/1.1 request (a POST, or ``method``) over a unix socket (``Connection: close``);
    returns (status, body).

    Written out rather than taken from ``http.client``: that module pulls in ``email`` and ``ssl``,
    about a third of the shim's start-up, paid on every pod start. The daemon side is the
    standard library's ``http.server``, so ``curl --unix-socket`` works against it too.
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect(path)
        sock.settimeout(timeout)
        head = (f"{method} {target} HTTP/1.1\r\nHost: plexus\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        sock.sendall(head + body)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.close()
    raw = b"".join(chunks)
    header, sep, payload = raw.partition(b"\r\n\r\n")
    status_line = header.split(b"\r\n", 1)[0].split(b" ", 2)
    if not sep or len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        raise _BadAnswer(raw[:200].decode(errors="replace"))
    for line in header.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            payload = payload[: int(value)]
    return int(status_line[1]), payload


def parse_config(raw: bytes, verb: str) -> dict[str, Any]:
    """Decode the network configuration from stdin and check what the shim can check alone."""
    if not raw.strip():
        if verb == "VERSION":
            return {}
        raise DecodingFailure("no network configuration on stdin", "stdin is empty")
    try:
        conf = wirejson.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError, NaN and Infinity included
        raise DecodingFailure("network configuration on stdin is not JSON", f"stdin: {exc}") from None
    except RecursionError:  # nested deeper than the interpreter's recursion limit
        raise DecodingFailure("network configuration on stdin is not JSON", "stdin: nested too deeply") from None
    if not isinstance(conf, dict):
        raise DecodingFailure("network configuration must be a JSON object", f"got {type(conf).__name__}")
    if verb == "VERSION":
        return conf
    for key in ("cniVersion", "name", "type"):
        if not isinstance(conf.get(key), str) or not conf[key]:
            raise InvalidConfig(f"network configuration lacks required key {key!r}", key)
    if not is_cni_name(conf["name"]):
        raise InvalidConfig(f"network name {conf['name']!r} has characters the CNI spec does not allow ({ALLOWED})",
                            "name")
    check_version(conf["cniVersion"])
    need = VERB_MIN_VERSION.get(verb)
    if need and version_tuple(conf["cniVersion"]) < version_tuple(need):
        raise IncompatibleVersion(
            f"{verb} needs cniVersion {need} or later", f"cniVersion is {conf['cniVersion']}"
        )
    return conf


def check_env(env: Mapping[str, str]) -> str:
    verb = env.get("CNI_COMMAND", "")
    if not verb:
        raise InvalidEnvironment("CNI_COMMAND is not set", "CNI_COMMAND")
    if verb not in REQUIRED_ENV:
        raise InvalidEnvironment(f"unknown CNI_COMMAND {verb!r}", "CNI_COMMAND")
    for key in REQUIRED_ENV[verb]:
        if not env.get(key):
            raise InvalidEnvironment(f"{key} is required for {verb}", key)
    check_names(env)
    return verb


def check_names(env: Mapping[str, str]) -> None:
    """The container ID and interface name, where given, are what the CNI spec allows (``cni.names``)."""
    container_id, ifname = env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", "")
    if container_id and not is_cni_name(container_id):
        raise InvalidEnvironment(f"container ID {container_id!r} has characters the CNI spec does not allow ({ALLOWED})",
                                 "CNI_CONTAINERID")
    if ifname and (problem := ifname_problem(ifname)):
        raise InvalidEnvironment(f"interface name {ifname!r} {problem}", "CNI_IFNAME")


def stated_version(raw: bytes) -> str:
    """The ``cniVersion`` of a configuration not checked yet, when it is one Plexus speaks; else the current one.
    Best effort, for an error found before the configuration is read (SPEC "Error": the configuration's version)."""
    try:
        conf = wirejson.loads(raw)
    except (ValueError, RecursionError):
        return CURRENT_VERSION
    version = conf.get("cniVersion") if isinstance(conf, dict) else None
    return version if isinstance(version, str) and version in SUPPORTED_VERSIONS else CURRENT_VERSION


def version_answer(conf: Mapping[str, Any]) -> dict[str, Any]:
    """VERSION's answer: the cniVersion asked, echoed only when it is a string (whatever else is there is not a
    version), else the current one."""
    asked = conf.get("cniVersion")
    return {"cniVersion": asked if isinstance(asked, str) and asked else CURRENT_VERSION,
            "supportedVersions": list(SUPPORTED_VERSIONS)}


def is_ipam_socket_path(path: str) -> bool:
    """An absolute path to a file named exactly ``plexus-ipam.sock``: ``/tmp/evil-plexus-ipam.sock`` merely ends so."""
    return path.startswith("/") and path.rpartition("/")[2] == IPAM_SOCKET_NAME


def forward(verb: str, env: Mapping[str, str], conf: dict[str, Any], ipam: bool = False) -> dict[str, Any]:
    """POST the call to the daemon (its IPAM socket for ``plexus-ipam``, whose settings are in the ``ipam``
    section); return its result or raise the ``CniError`` it sent."""
    own = conf.get("ipam") if ipam else conf
    if not isinstance(own, dict):
        raise InvalidConfig("an IPAM plugin's configuration needs its ipam section", "ipam")
    where = "ipam." if ipam else ""
    path = own.get("socket") or (DEFAULT_IPAM_SOCKET if ipam else DEFAULT_SOCKET)
    # plexus-ipam's section is written by whoever writes a NAD: it may name the daemon's socket and nothing else
    if not isinstance(path, str) or (ipam and not is_ipam_socket_path(path)):
        raise InvalidConfig(f"socket must be the path of the daemon's {IPAM_SOCKET_NAME if ipam else 'socket'}",
                            f"{where}socket")
    timeout = own.get("timeoutSeconds")
    if timeout is None:
        timeout = DEFAULT_TIMEOUT_S
    problem = timeout_problem(timeout)
    if problem:  # NaN or infinity would reach the socket: a wait for ever, or an overflow (code 999)
        raise InvalidConfig(f"timeoutSeconds {problem}", f"{where}timeoutSeconds")
    try:
        body = wirejson.dumps({"env": {k: env[k] for k in FORWARDED_ENV if k in env}, "config": conf})
    except RecursionError:  # read (the C scanner goes ~1000 levels deep), but too deep to write again
        raise DecodingFailure("network configuration on stdin is not JSON", "stdin: nested too deeply") from None
    try:
        status, payload = http_post(path, "/v1/ipam" if ipam else "/v1/cni", body.encode(), float(timeout))
    except (OSError, ValueError, _BadAnswer) as exc:  # OSError covers refused, missing and timed out
        unavailable = PluginNotAvailable if verb == "STATUS" else TryAgainLater
        raise unavailable("plexus-ipamd is not reachable", f"{path}: {exc}") from None
    try:
        answer = wirejson.loads(payload)
    except (ValueError, RecursionError):
        raise DaemonUnavailable("plexus-ipamd sent a non-JSON answer", payload[:200].decode(errors="replace")) from None
    if status == 200 and isinstance(answer, dict):
        return answer
    if isinstance(answer, dict) and "code" in answer:
        raise CniError.from_dict(answer)
    raise DaemonUnavailable(f"plexus-ipamd answered HTTP {status}", str(answer)[:200])


def _log(conf: Mapping[str, Any], env: Mapping[str, str], started: float, outcome: str) -> None:
    path = conf.get("logFile")
    if not path:
        return
    line = (f"{time.strftime('%Y-%m-%dT%H:%M:%S')} plexus {env.get('CNI_COMMAND', '?')} "
            f"container={env.get('CNI_CONTAINERID', '')[:12]} ifname={env.get('CNI_IFNAME', '')} "
            f"{(time.monotonic() - started) * 1000:.1f}ms {outcome}\n")
    try:
        with open(str(path), "a", encoding="utf-8") as fh:
            fh.write(line)
    except OSError:
        pass  # a log that cannot be written must not fail the pod


def main(env: Mapping[str, str], stdin: IO[bytes], stdout: IO[str], ipam: bool = False) -> int:
    """One CNI call: ``ipam`` when run as ``plexus-ipam``."""
    started = time.monotonic()
    conf: dict[str, Any] = {}
    version = CURRENT_VERSION
    try:
        raw = stdin.read()  # before the environment: an error about either is answered in the configuration's version
        try:
            verb = check_env(env)
            conf = parse_config(raw, verb)
        except CniError:
            version = stated_version(raw)
            raise
        version = str(conf.get("cniVersion") or CURRENT_VERSION)
        if verb == "VERSION":
            answer = version_answer(conf)
        else:
            answer = forward(verb, env, conf, ipam)
        text = wirejson.dumps(answer) + "\n" if answer else ""  # here: what cannot be written is a CNI error
    except CniError as err:
        if err.code == 1 or version not in SUPPORTED_VERSIONS:
            version = CURRENT_VERSION
        stdout.write(err.to_json(version) + "\n")
        _log(conf, env, started, f"error {err.code}: {err}")
        return 1
    except Exception as exc:  # never a traceback on stdout: the runtime must get a CNI error
        internal = InternalError("plexus failed unexpectedly", f"{type(exc).__name__}: {exc}")
        stdout.write(internal.to_json(version if version in SUPPORTED_VERSIONS else CURRENT_VERSION) + "\n")
        _log(conf, env, started, f"error 999: {exc}")
        return 1
    if text:  # STATUS and DEL print nothing on success
        stdout.write(text)
    _log(conf, env, started, "ok")
    return 0


PROBES = ("healthz", "readyz")


def probe(args: list[str], stdout: IO[str]) -> int:
    """``plexus --probe healthz|readyz [SOCKET]``: ask the daemon, over the very socket the plugin uses,
    whether it answers (healthz) or is ready for CNI calls (readyz); exit 0 when it says 200. For the
    DaemonSet's exec probes (the image then needs no Python and no curl) and for operators on a node.
    The runtime never passes arguments to a CNI plugin, so this cannot be mistaken for a CNI call."""
    if not args or args[0] not in PROBES or len(args) > 2:
        stdout.write(f"usage: plexus --probe {'|'.join(PROBES)} [SOCKET (default {DEFAULT_SOCKET})]\n")
        return 2
    path = args[1] if len(args) > 1 else DEFAULT_SOCKET
    try:
        status, payload = http_post(path, f"/{args[0]}", b"", 4.0, method="GET")
    except (OSError, ValueError, _BadAnswer) as exc:
        stdout.write(f"plexus-ipamd is not reachable at {path}: {exc}\n")
        return 1
    stdout.write(f"{args[0]}: HTTP {status} {payload.decode(errors='replace').strip()}\n")
    return 0 if status == 200 else 1


def environment() -> dict[str, str]:
    """The process environment, decoded as UTF-8 with surrogateescape (``os.environ`` under a UTF-8 locale; CNI's
    variables are ASCII), read without importing ``os``."""
    return {key.decode("utf-8", "surrogateescape"): value.decode("utf-8", "surrogateescape")
            for key, value in posix.environ.items()}


def run() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        rc = probe(sys.argv[2:], sys.stdout)
        sys.stdout.flush()
        posix._exit(rc)
    rc = main(environment(), sys.stdin.buffer, sys.stdout, ipam=sys.argv[0].rpartition("/")[2] == IPAM_NAME)
    sys.stdout.flush()
    # Skip the interpreter's teardown (module cleanup, GC): a fifth of a short-lived process's life,
    # with nothing left to release that the kernel does not release anyway.
    posix._exit(rc)

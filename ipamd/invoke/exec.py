"""Exec'ing one CNI plugin, as a runtime does (libcni's ``invoke``): the one way Plexus runs a plugin.

The plugin is looked up by its ``type`` in the plugin directories, and only there: a ``type`` with a
path in it is refused, so a NetworkAttachmentDefinition can never make the daemon exec anything else.
It gets a clean environment (the ``CNI_*`` variables, a fixed ``PATH`` and its owner's mark, never the
daemon's own),
its configuration on stdin, and a deadline; a plugin that outlives it is killed with its whole process
group (its children too). Its stdout is parsed as a result (exit 0) or as a CNI error (otherwise),
both within a size limit; its stderr is logged and kept for the caller's log, never put into a CNI
answer raw. ``PluginExec`` is the seam: ``tests/fakes/exec.py`` scripts it for unit tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import select
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, Protocol

from cni.errors import CniError, InvalidConfig, IOFailure

log = logging.getLogger(__name__)
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_OUTPUT = 1 << 20  # a CNI result is a few KiB; more is a plugin gone wrong
OWNER_ENV = "PLEXUS_DELEGATE_OF"
#: What a plugin may be given of the caller's environment, and nothing else.
CNI_ENV = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")
#: The reference IPAM plugin that configures an address the daemon leased for a delegate.
STATIC_IPAM = "static"


@dataclass(frozen=True, slots=True)
class PluginRun:
    """One successful exec: the parsed result (``{}`` when the plugin printed nothing, as DEL does)."""

    result: dict[str, Any]
    stderr: str
    seconds: float


class PluginExec(Protocol):
    def run(self, plugin: str, env: Mapping[str, str], config: Mapping[str, Any], timeout: float) -> PluginRun:
        """Exec ``plugin`` with the ``CNI_*`` variables of ``env`` and ``config`` on stdin; its result, or
        the ``CniError`` it printed, or ``IOFailure`` (not found, timed out, crashed, printed garbage)."""
        ...


class PluginFailed(IOFailure):
    """The plugin did not answer as a plugin must (it crashed, hung, printed garbage or too much); what it
    wrote is in ``details`` and ``note``, for an operator, not for a CNI answer."""


def check_plugin_type(plugin: str, field: str = "type") -> str:
    """A plugin type is a file name in the plugin directories, never a path (``/``, ``..``)."""
    if not plugin or "/" in plugin or plugin in (".", "..") or "\0" in plugin:
        raise InvalidConfig(f"plugin type {plugin!r} is not a plugin name", field)
    return plugin


def _dirs(cni_path: str | Sequence[str]) -> list[str]:
    return [d for d in (cni_path.split(":") if isinstance(cni_path, str) else cni_path) if d]


class Exec:
    """Plugins from the directories of the call's ``CNI_PATH`` (``:``-separated), else of ``cni_path``; run in
    ``node_netns`` (a path) when the node's links live in a namespace other than the daemon's. ``owner``
    marks every plugin exec'd (``PLEXUS_DELEGATE_OF``), so that a daemon restarted after a crash kills the
    ones its predecessor left running (``reap_orphans``) before it undoes what they were doing."""

    def __init__(self, cni_path: str | Sequence[str] = "/opt/cni/bin", max_output: int = MAX_OUTPUT,
                 node_netns: str = "", owner: str = "") -> None:
        self.dirs = _dirs(cni_path)
        self.max_output = max_output
        self.node_netns = node_netns
        self.owner = owner

    def find(self, plugin: str, dirs: Sequence[str] = ()) -> str:
        check_plugin_type(plugin)
        for d in dirs or self.dirs:
            path = os.path.join(d, plugin)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        raise IOFailure(f"CNI plugin {plugin} not found in {':'.join(dirs or self.dirs)}", plugin)

    def run(self, plugin: str, env: Mapping[str, str], config: Mapping[str, Any], timeout: float) -> PluginRun:
        dirs = _dirs(env.get("CNI_PATH", "")) or self.dirs
        binary = self.find(plugin, dirs)
        verb = env.get("CNI_COMMAND", "")
        if verb == "ADD":
            self._find_ipam(plugin, config, dirs)
        clean = {k: env[k] for k in CNI_ENV if k in env}
        clean["CNI_PATH"] = ":".join(dirs)
        clean["PATH"] = SAFE_PATH
        if self.owner:
            clean[OWNER_ENV] = self.owner
        started = time.monotonic()
        rc, out, err = self._communicate(binary, clean, json.dumps(config).encode(), timeout, f"{plugin} {verb}")
        seconds = time.monotonic() - started
        stderr = err.decode(errors="replace").strip()
        if stderr:
            log.info("%s %s (exit %d) said on stderr: %s", plugin, verb, rc, stderr[-2000:])
        text = out.decode(errors="replace").strip()
        if rc != 0:
            raise _failure(plugin, verb, rc, text, stderr)
        if not text:
            return PluginRun({}, stderr, seconds)
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise PluginFailed(f"{plugin} {verb} printed something that is not JSON", text[:500], note=stderr[-500:])
        return PluginRun(parsed, stderr, seconds)

    def _find_ipam(self, plugin: str, config: Mapping[str, Any], dirs: Sequence[str]) -> None:
        """An ADD whose ``ipam`` is the reference ``static`` plugin (what the daemon writes for a delegate given its
        address, ``delegateIPAM: lease``) is refused before the plugin runs when ``static`` is not in the directories
        it would exec it from: the plugin itself would fail with an opaque 999 (``failed to find plugin``), after
        it made its interface. Other IPAM types are left to the plugin, which may serve its own."""
        ipam = config.get("ipam")
        if not isinstance(ipam, Mapping) or ipam.get("type") != STATIC_IPAM:
            return
        try:
            self.find(STATIC_IPAM, dirs)
        except IOFailure:
            raise IOFailure(f"IPAM plugin {STATIC_IPAM} (the ipam of {plugin}) not found in {':'.join(dirs)}",
                            STATIC_IPAM) from None

    def _communicate(self, binary: str, env: dict[str, str], stdin: bytes, timeout: float,
                     what: str) -> tuple[int, bytes, bytes]:
        """Run to the end or the deadline, reading at most ``max_output`` bytes of each stream."""
        # no preexec_fn: CPython then spawns with vfork, not a fork of the whole daemon (3 ms an exec measured)
        with _thread_in_netns(self.node_netns):
            proc = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=env, start_new_session=True, close_fds=True)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        deadline = time.monotonic() + timeout
        fd_out, fd_err = proc.stdout.fileno(), proc.stderr.fileno()
        out: dict[int, bytearray] = {fd_out: bytearray(), fd_err: bytearray()}
        problem = ""
        pending = memoryview(stdin)
        try:
            if len(pending) <= select.PIPE_BUF:  # what a new pipe takes whole, whatever its size: no wait
                _write_all(proc.stdin, pending)
                pending = pending[len(pending):]
            with selectors.DefaultSelector() as sel:
                for stream in (proc.stdout, proc.stderr):
                    sel.register(stream, selectors.EVENT_READ)
                if pending:  # a large configuration is written as the plugin reads it, within its deadline too
                    os.set_blocking(proc.stdin.fileno(), False)
                    sel.register(proc.stdin, selectors.EVENT_WRITE)
                while sel.get_map() and not problem:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        problem = f"{what} timed out after {timeout:g}s (killed)"
                        break
                    for key, _ in sel.select(left):
                        if key.fileobj is proc.stdin:
                            pending = _write_some(proc.stdin, pending)
                            if not pending:
                                sel.unregister(proc.stdin)
                            continue
                        chunk = os.read(key.fd, 65536)
                        if not chunk:
                            sel.unregister(key.fileobj)
                            continue
                        out[key.fd] += chunk
                        if len(out[key.fd]) > self.max_output:
                            problem = f"{what} printed more than {self.max_output} bytes (killed)"
            if not problem:
                rc = proc.wait(max(0.0, deadline - time.monotonic()))
                return rc, bytes(out[fd_out]), bytes(out[fd_err])
        except subprocess.TimeoutExpired:
            problem = f"{what} timed out after {timeout:g}s (killed)"
        finally:
            if problem or proc.returncode is None:
                _kill_group(proc)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                with contextlib.suppress(OSError):
                    stream.close()
        tail = bytes(out[fd_err])[-500:].decode(errors="replace")
        raise PluginFailed(problem, tail, note=tail)


def _write_all(stdin: IO[bytes], data: memoryview) -> None:
    """Write ``data`` and close: the plugin reads its configuration to the end."""
    try:
        stdin.write(data)
        stdin.close()
    except BrokenPipeError:
        pass  # it exited without reading: its output says why


def _write_some(stdin: IO[bytes], data: memoryview) -> memoryview:
    """Write what the pipe takes now of ``data`` (non-blocking); what is left, closed once nothing is."""
    try:
        data = data[os.write(stdin.fileno(), data[:65536]):]
    except BlockingIOError:
        return data
    except BrokenPipeError:
        data = data[len(data):]  # it exited without reading: its output says why
    if not data:
        with contextlib.suppress(OSError):
            stdin.close()
    return data


@contextmanager
def _thread_in_netns(path: str) -> Iterator[None]:
    """This thread (and what it spawns) in the namespace at ``path`` for the block, when one is given: a
    child is born in its parent thread's namespace; the daemon's other threads stay where they are."""
    if not path:
        yield
        return
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def reap_orphans(owner: str, wait_s: float = 5.0) -> int:
    """Kill the plugins a previous daemon of ``owner`` exec'd and left running (it was killed mid-ADD):
    one still running could finish its ADD after the recovery undid it. Their process groups are killed,
    and waited for; returns how many there were."""
    mark = f"{OWNER_ENV}={owner}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if mark in fh.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    for pid in found:
        for kill, target in ((os.killpg, pid), (os.kill, pid)):
            try:
                kill(target, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in found):
        time.sleep(0.02)
    if found:
        log.warning("killed %d plugin(s) a previous plexus-ipamd left running", len(found))
    return len(found)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the plugin and every process it started (they share its session and process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _failure(plugin: str, verb: str, rc: int, text: str, stderr: str) -> CniError:
    """A failed exec as the CNI error it printed, or as an I/O failure when it printed none; what it wrote
    on stderr goes with it as a note (for the log and the events, not for the CNI answer)."""
    try:
        err = json.loads(text) if text else None
    except ValueError:
        err = None
    # an error as the spec has it (an integer code); anything else a plugin printed is its I/O failure (5)
    if isinstance(err, dict) and isinstance(err.get("code"), int) and not isinstance(err.get("code"), bool):
        found = CniError.from_dict(err)
        found.note = stderr[-500:]
        return found
    return PluginFailed(f"{plugin} {verb} failed (exit {rc})", (text or stderr)[:500], note=stderr[-500:])

"""The bench node: a network namespace of its own with a private plexus-ipamd in it.

``BenchNode.enter()`` creates ``plxb-node-XXXXXX`` and ``setns()``-es the bench process (its main
thread, before any other thread exists) into it, so every thread, plugin exec and the daemon that
the bench starts afterwards live in that namespace: the bridges and host-side veths that Plexus and
the reference ``bridge`` plugin make never appear on the real host, and no ``nsenter`` is timed.
Pods get namespaces of their own (``plxb-XXXXXX-N``). ``close()`` undoes everything, whatever
state the run was left in: it stops the daemon, deletes every namespace (which takes every link
with it) and removes the temporary directory (objects, SQLite store, sockets, logs, host-local's
dataDir).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NS_PREFIX = "plxb-"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

#: ``CNI ADD container=0123456789ab ifname=eth0 pod=bench/pod-1 45.3ms ok`` (ipamd/cni_server.py)
_CALL_LINE = re.compile(r"(CNI|IPAM) (\w+) container=(\S*) ifname=(\S*) pod=(\S*) ([\d.]+)ms (.*)$")


class BenchError(RuntimeError):
    """A failure that ends the run, with everything needed to understand it in the message."""


def setns_net(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def netns_names() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


class BenchNode:
    def __init__(self, reconcile_interval: float = 30.0) -> None:
        self.id = uuid.uuid4().hex[:6]
        self.name = f"{NS_PREFIX}node-{self.id}"
        self.dir = Path(tempfile.mkdtemp(prefix="plexus-bench-"))
        self.objects = self.dir / "objects"
        self.objects.mkdir()
        self.db = self.dir / "plexus.db"
        self.socket = self.dir / "run" / "plexus.sock"
        self.grpc_socket = self.dir / "run" / "ipam.sock"
        self.ipam_socket = self.dir / "run" / "plexus-ipam.sock"  # the daemon's default, beside --socket
        self.log = self.dir / "ipamd.log"
        self.stderr_path = self.dir / "ipamd.stderr"
        self.shim_log = self.dir / "plexus.log"
        self.hostlocal_dir = self.dir / "host-local"
        self.reconcile_interval = reconcile_interval
        self.proc: subprocess.Popen[bytes] | None = None
        self.pods: set[str] = set()
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._home_fd: int | None = None
        self._node_created = False
        self._closed = False

    # -- namespaces -----------------------------------------------------------------------------
    def enter(self) -> None:
        """Create the node namespace and move the bench process (main thread) into it."""
        if threading.active_count() != 1:
            raise BenchError("enter() must run before any thread is started (threads keep their namespace)")
        run("ip", "netns", "add", self.name)
        self._node_created = True
        self._home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns_net(fd)
        finally:
            os.close(fd)
        run("ip", "link", "set", "lo", "up")

    def new_pod_netns(self) -> tuple[str, str]:
        """A fresh pod namespace (name, path); made with ``ip netns add`` like a runtime's sandbox."""
        name = f"{NS_PREFIX}{self.id}-{next(self._seq)}"
        with self._lock:
            self.pods.add(name)
        run("ip", "netns", "add", name)
        return name, f"/run/netns/{name}"

    def del_pod_netns(self, name: str) -> None:
        run("ip", "netns", "del", name, check=False)
        with self._lock:
            self.pods.discard(name)

    def links(self) -> list[str]:
        """Names of the links in the node namespace (the bench process lives there)."""
        out = run("ip", "-o", "link", "show").stdout
        return [line.split(":", 2)[1].strip().split("@")[0] for line in out.splitlines() if line.strip()]

    # -- objects and daemon ---------------------------------------------------------------------
    def write_objects(self, docs: list[dict[str, Any]]) -> None:
        """One manifest per file (JSON is YAML), as ``plexusctl apply`` would leave them."""
        for i, doc in enumerate(docs):
            md = doc["metadata"]
            path = self.objects / f"{i:03d}-{doc['kind'].lower()}.{md.get('namespace', '_')}.{md['name']}.yaml"
            path.write_text(json.dumps(doc, indent=1) + "\n")

    def start_daemon(self, python: str = sys.executable, timeout: float = 60, extra_args: tuple[str, ...] = ()) -> None:
        cmd = [
            python, "-m", "ipamd",
            "--objects-dir", str(self.objects), "--db", str(self.db), "--socket", str(self.socket),
            "--grpc-socket", str(self.grpc_socket), "--log-file", str(self.log), "--log-level", "info",
            "--reconcile-interval", str(self.reconcile_interval), *extra_args,
        ]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])))
        env.pop("PLEXUS_FAULT", None)
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err, start_new_session=True)  # Ctrl-C is ours to forward
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"plexus-ipamd exited ({self.proc.returncode}) at start:\n{self.daemon_output()}")
            if self.grpc_socket.exists() and self.socket.exists() and "plexus-ipamd ready" in self.log_text():
                return
            time.sleep(0.05)
        raise BenchError(f"plexus-ipamd was not ready after {timeout:.0f} s:\n{self.daemon_output()}")

    def check_daemon(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"plexus-ipamd is not running any more:\n{self.daemon_output()}")

    def stop_daemon(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def rss_kb(self) -> int:
        self.check_daemon()
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise BenchError("no VmRSS in /proc/PID/status")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def daemon_output(self, tail: int = 40) -> str:
        err = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        lines = self.log_text().splitlines()[-tail:]
        return f"--- ipamd stderr ---\n{err[-3000:]}\n--- ipamd log (last {tail} lines) ---\n" + "\n".join(lines)

    def log_offset(self) -> int:
        try:
            return self.log.stat().st_size
        except FileNotFoundError:
            return 0

    def daemon_calls(self, since: int) -> list[dict[str, Any]]:
        """The per-call lines the daemon logged after byte ``since``: verb, container, ms, outcome."""
        with open(self.log, "rb") as fh:
            fh.seek(since)
            text = fh.read().decode(errors="replace")
        out = []
        for line in text.splitlines():
            m = _CALL_LINE.search(line)
            if m:
                out.append({"server": m[1], "verb": m[2], "container": m[3], "ifname": m[4], "pod": m[5],
                            "ms": float(m[6]), "outcome": m[7]})
        return out

    # -- gRPC -----------------------------------------------------------------------------------
    def channel(self) -> Any:
        """A gRPC channel of its own (its own connection: no subchannel shared with other channels)."""
        import grpc

        return grpc.insecure_channel(f"unix:{self.grpc_socket}", options=[("grpc.use_local_subchannel_pool", 1)])

    def stub(self, channel: Any = None) -> Any:
        from ipamd.api import ipam_pb2_grpc as pb_grpc

        return pb_grpc.IpamStub(channel or self.channel())  # type: ignore[no-untyped-call]

    # -- the end --------------------------------------------------------------------------------
    def close(self) -> list[str]:
        """Undo everything; returns what could not be undone (never raises)."""
        if self._closed:
            return []
        self._closed = True
        problems = []
        try:
            self.stop_daemon()
        except Exception as exc:
            problems.append(f"stopping plexus-ipamd: {exc}")
        if self._home_fd is not None:
            try:
                setns_net(self._home_fd)
            except OSError as exc:
                problems.append(f"back to the host namespace: {exc}")
            os.close(self._home_fd)
            self._home_fd = None
        with self._lock:
            pods = sorted(self.pods)
        for name in pods:
            self.del_pod_netns(name)
        # namespaces of ours that were being created when we were interrupted
        for name in netns_names():
            if name.startswith(f"{NS_PREFIX}{self.id}-"):
                run("ip", "netns", "del", name, check=False)
        if self._node_created:
            proc = run("ip", "netns", "del", self.name, check=False)
            if proc.returncode != 0:
                problems.append(f"ip netns del {self.name}: {proc.stderr.strip()}")
        left = [n for n in netns_names() if n == self.name or n.startswith(f"{NS_PREFIX}{self.id}-")]
        if left:
            problems.append(f"namespaces left: {', '.join(left)}")
        shutil.rmtree(self.dir, ignore_errors=True)
        return problems

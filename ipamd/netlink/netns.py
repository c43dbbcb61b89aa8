"""Netlink sockets inside a pod's network namespace, opened by path and never created by accident.

``pod_netlink(path)`` opens the namespace file read-only (a missing file is ``NetnsGone``, never a
new namespace: pyroute2's own ``netns=`` would create one) and builds an ``IPRoute`` whose socket
lives in that namespace. The socket is made in a short-lived thread that ``setns()``-es itself
into the pod's namespace and back; the daemon's other threads stay where they are (``setns``
changes only the calling thread), and a netlink socket keeps the namespace it was created in.
This is much cheaper than pyroute2's own ``netns=``, which forks a helper process per socket.
The ``IPRoute`` must be used from the thread that opened it (pyroute2 keeps a socket per thread).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pyroute2 import IPRoute

from cni.errors import TryAgainLater, UnknownContainer

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_NSFS_DEV = os.stat("/proc/self/ns/net").st_dev


class NetnsGone(UnknownContainer):
    """The network namespace path is no network namespace (any more): missing, or a file an unmounted namespace
    left. An error on ADD/CHECK, fine on DEL (its links went with it)."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_netns(path: str) -> int:
    """A read-only fd of the namespace at ``path``; ``NetnsGone`` when it is missing. One there that cannot be opened
    now (EMFILE, EACCES) is 11, as in ``is_netns``: never taken for gone, and worth the runtime's retry."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise NetnsGone(f"network namespace {path} does not exist", "CNI_NETNS") from None
    except OSError as exc:
        raise TryAgainLater(f"network namespace {path} cannot be opened", str(exc)) from None


def is_netns(path: str) -> bool:
    """Whether ``path`` is a namespace still: a file on nsfs (the runtime's bind mount). One unmounted may leave its
    file behind, which a plugin refuses ("unknown FS magic") where it takes a missing one for gone. A path that
    cannot be looked at is no answer: 11, never taken for gone (a DEL would let go of what the pod may still use)."""
    try:
        return os.stat(path).st_dev == _NSFS_DEV
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise TryAgainLater(f"network namespace {path} cannot be looked at", str(exc)) from None


def in_namespace(fd: int, fn: Callable[[], T]) -> T:
    """``fn()`` run on a throwaway thread that enters the namespace ``fd`` and leaves it again, its value or its
    exception: for what the kernel binds to the calling thread's namespace (a netlink socket, a TUNSETIFF, a
    ``/proc/sys/net`` file), while the caller's thread never moves. An fd that is no namespace is refused first: the
    thread's own namespace file, opened first, could take its number, and ``fn`` would run where the caller is."""
    if os.fstat(fd).st_dev != _NSFS_DEV:
        raise UnknownContainer("not a network namespace", f"fd {fd}")
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
                try:
                    box["value"] = fn()
                finally:
                    _setns(home)  # leave the thread where it started
            finally:
                os.close(home)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=work, name="in-netns")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _netlink_in(fd: int, path: str = "") -> IPRoute:
    """A netlink socket in the namespace ``fd`` (at ``path``, for the error): one that cannot be made now (EMFILE,
    ENOBUFS) is 11, as a namespace that cannot be opened now is."""
    try:
        sock = in_namespace(fd, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE).detach())
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise NetnsGone("CNI_NETNS is not a network namespace", str(exc)) from None
        raise TryAgainLater(f"network namespace {path or f'fd {fd}'} cannot be entered", str(exc)) from None
    # pyroute2 keeps one socket per thread; built from this fd, the caller's thread uses the pod's socket
    return IPRoute(fileno=sock)


def netlink_in_path(path: str) -> IPRoute:
    """A long-lived ``IPRoute`` in the namespace at ``path`` (the caller closes it)."""
    fd = open_netns(path)
    try:
        return _netlink_in(fd, path)
    finally:
        os.close(fd)


@contextmanager
def pod_netlink(path: str) -> Iterator[tuple[IPRoute, int]]:
    """``(IPRoute in the pod netns, fd of the netns)`` for the duration of the block."""
    fd = open_netns(path)
    try:
        ipr = _netlink_in(fd, path)
        try:
            yield ipr, fd
        finally:
            ipr.close()
    finally:
        os.close(fd)


@contextmanager
def netlink_at(path: str | None) -> Iterator[IPRoute]:
    """An ``IPRoute`` in the namespace at ``path``, or in the daemon's own when ``path`` is None."""
    if not path:
        ipr = IPRoute()
        try:
            yield ipr
        finally:
            ipr.close()
        return
    with pod_netlink(path) as (ipr, _):
        yield ipr


class PodNamespace:
    """A pod's network namespace for the length of one CNI call: its fd is opened at once (a missing
    namespace is ``NetnsGone`` before anything else happens), a netlink socket in it only when a driver
    first asks (a delegated plugin works on the path and needs none), one per thread that asks (pyroute2
    wants a socket used by the thread that made it), all closed with the namespace."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = open_netns(path)
        self._local = threading.local()
        self._opened: list[IPRoute] = []
        self._lock = threading.Lock()
        if os.fstat(self.fd).st_dev != _NSFS_DEV:  # every namespace file lives on nsfs
            os.close(self.fd)
            raise NetnsGone("CNI_NETNS is not a network namespace", path)

    def netlink(self) -> IPRoute:
        ipr: IPRoute | None = getattr(self._local, "ipr", None)
        if ipr is None:
            ipr = self._local.ipr = _netlink_in(self.fd, self.path)
            with self._lock:
                self._opened.append(ipr)
        return ipr

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for ipr in opened:
            ipr.close()
        os.close(self.fd)


@contextmanager
def pod_namespace(path: str) -> Iterator[PodNamespace]:
    """Open the pod's namespace for the block (``NetnsGone`` when it does not exist)."""
    ns = PodNamespace(path)
    try:
        yield ns
    finally:
        ns.close()


class HostNetlink:
    """This thread's netlink socket in the node's namespace (or in the one at ``path``), kept open.

    pyroute2 keeps one socket per thread, and opening one costs about a millisecond; the CNI server
    serves calls from a fixed pool of threads, so each keeps its own.
    """

    def __init__(self, path: str = "") -> None:
        self.path = path
        self._local = threading.local()

    def __call__(self) -> IPRoute:
        ipr: IPRoute | None = getattr(self._local, "ipr", None)
        if ipr is None:
            ipr = self._local.ipr = netlink_in_path(self.path) if self.path else IPRoute()
        return ipr

"""``sysctl.set_conf`` and ``netns.in_namespace``, in namespaces of the test's own: a write lands in the namespace
asked for and nowhere else, the caller's thread never moves, and a link that is not there is no error."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from ipamd.netlink.netns import in_namespace, open_netns
from ipamd.netlink.sysctl import conf_path, set_conf
from tests.harness import NS_PREFIX, netns_add, netns_del

pytestmark = pytest.mark.netns


@pytest.fixture
def two() -> Iterator[tuple[int, int]]:
    """Two fresh namespaces, as fds: a write to one must not show in the other."""
    names = [f"{NS_PREFIX}sysctl{i}-{uuid.uuid4().hex[:6]}" for i in (1, 2)]
    fds: list[int] = []
    try:
        fds = [open_netns(netns_add(n)) for n in names]
        yield fds[0], fds[1]
    finally:
        for fd in fds:
            os.close(fd)
        for n in names:
            netns_del(n)


def _read(fd: int, path: str) -> str:
    def read() -> str:
        with open(path) as f:
            return f.read().strip()
    return in_namespace(fd, read)


def test_a_write_lands_in_the_namespace_asked_for_only(two: tuple[int, int]) -> None:
    first, second = two
    path = conf_path(socket.AF_INET6, "lo", "disable_ipv6")
    before = _read(second, path)
    home = os.readlink("/proc/thread-self/ns/net")

    assert set_conf(first, socket.AF_INET6, "lo", "disable_ipv6", "1")
    assert _read(first, path) == "1"
    assert _read(second, path) == before == "0", "the other namespace's lo was changed"
    assert os.readlink("/proc/thread-self/ns/net") == home, "the caller's thread moved"


def test_a_link_that_is_not_there_is_no_error(two: tuple[int, int]) -> None:
    assert set_conf(two[0], socket.AF_INET6, "plx-nothere", "accept_ra", "0") is False


def test_an_error_inside_comes_back_to_the_caller(two: tuple[int, int]) -> None:
    def fail() -> None:
        raise PermissionError("refused inside")

    with pytest.raises(PermissionError, match="refused inside"):
        in_namespace(two[0], fail)


def test_conf_path_keeps_a_dotted_name() -> None:
    assert conf_path(socket.AF_INET, "eth0.100", "rp_filter") == "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"

"""What the CNI spec allows in a network's name, a container ID and an interface name, checked as libcni does
(``ValidateNetworkName``, ``ValidateContainerID``, ``ValidateInterfaceName``): the daemon keys an attachment's records
by them (``CNI/<network>/<container>/<ifname>``), so a ``/`` in one would read as part of another network's key, and
GC of one network would release another's leases. No imports: the exec'd plugin checks these on every call."""

from __future__ import annotations

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
ALLOWED = "letters, digits, '_', '.' and '-', starting with a letter or digit"
IFNAME_MAX = 15  # IFNAMSIZ less its terminating NUL


def is_cni_name(value: str) -> bool:
    """A network name or container ID: an ASCII letter or digit, then letters, digits, ``_``, ``.`` or ``-``."""
    return bool(value) and value[0] not in "_.-" and all(c in _NAME_CHARS for c in value)


def ifname_problem(value: str) -> str:
    """Why ``value`` cannot name an interface ("" when it can)."""
    if len(value.encode("utf-8", "surrogateescape")) > IFNAME_MAX:
        return f"longer than {IFNAME_MAX} bytes"
    if value in (".", ".."):
        return "is . or .."
    if any(c in "/:" or c.isspace() for c in value):
        return "has a '/', ':' or white space"
    return ""

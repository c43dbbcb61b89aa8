"""Netlink requests as the kernel would read them: pyroute2 encodes a request into a batch, decoded back here, so a
test checks the message itself (this kernel has no 802.1q to make a VLAN with)."""

from __future__ import annotations

from typing import Any

from pyroute2 import IPBatch
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg


def encode(spec: dict[str, Any]) -> ifinfmsg:
    """The RTM_NEWLINK that ``IPRoute.link("add", **spec)`` sends, decoded."""
    batch = IPBatch()
    try:
        batch.link("add", **spec)
        msg = ifinfmsg(batch.batch)
        msg.decode()
        return msg
    finally:
        batch.close()

"""Where a lease is made unique beyond this node's store.

Local mode: nowhere else (``NodeLocalRegistry``). Kubernetes mode: one IPAddressLease object per IP,
created only if absent, so two nodes can never hold the same address (``ipamd.kube.leases``); where a pool is
large enough, a node claims blocks of it and leases inside them with no API request (``ipamd.kube.blocks``).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ipamd.ipam.blocks import Block
from ipamd.model.objects import AddressPool, Pod
from ipamd.store.protocols import LeaseStore
from ipamd.store.records import IPRecord, LeaseRecord


class LeaseRegistry(Protocol):
    """The leases beyond this node: what others hold, and claiming, orphaning and releasing ours."""

    def taken_elsewhere(self, pool: str) -> Container[int]: ...  # asked ``ip in``, never listed

    def held_by(self, holder: str, pool: str) -> int | None: ...  # the IP another node leased to it

    # False: somebody else holds this IP. ``exact``: asked for by that address (a Static), which alone may take up a
    # quarantined one; a pick moves on
    def claim(self, lease: LeaseRecord, exact: bool = False) -> bool: ...

    def orphan(self, lease: LeaseRecord, holder: str = "") -> None: ...  # ``holder``: whose it was

    # its object made this node's, and ``user`` (namespace/name, UID), a pod here, written there: it uses a Static's
    # address, or one whose IPAddress was deleted meanwhile
    def keep_in_use(self, lease: LeaseRecord, user: tuple[str, str]) -> None: ...

    def release(self, lease: LeaseRecord) -> None: ...

    def let_go(self, lease: LeaseRecord) -> None: ...  # a claim just made that the store did not take

    def keep(self, lease: LeaseRecord) -> None: ...  # a claim just made that the store took

    # a claim the store took whose holder outlives its pods: made known to other nodes now, not after the call
    def publish(self, lease: LeaseRecord) -> None: ...

    def take_up(self, lease: LeaseRecord) -> bool: ...  # a lease made elsewhere (held_by) made this node's, now

    # this node's lease no longer its holder's beyond this node (quarantined, let go or leased again by another
    # node), read now, while this node owes it no write
    def taken_over(self, lease: LeaseRecord) -> bool: ...

    def recorded(self, lease: LeaseRecord) -> None: ...  # a claim recorded by the store (inside its transaction)

    # a pod's own Auto IPAddress let go while the pod lives (its pool lost the family it holds): what stands for it
    # beyond this node goes too, owed in the caller's commit (the garbage collector deletes it only with the pod)
    def auto_ip_gone(self, rec: IPRecord) -> None: ...

    def use(self, rec: IPRecord, pod: Pod, field: str) -> None:
        """Make ``pod`` the one pod of the cluster that uses a user's IPAddress (before its address is used, outside
        the store's lock); AddressConflict while a pod on another node that still runs does. Once it returns, the
        caller tells ``use_ended``."""
        ...

    def use_ended(self, rec: IPRecord, pod_uid: str) -> None: ...  # the call is over (the pod recorded, or not)

    def use_recorded(self, rec: IPRecord, pod_uid: str) -> None: ...  # the pod recorded as its user (in the transaction)

    def unused(self, rec: IPRecord, pod_uid: str) -> None: ...  # the pod no longer uses it on this node

    def repair_use(self, rec: IPRecord, written: str, object_uid: str = "") -> None: ...  # users here, not ``written``

    def bind(self, uses_here: Callable[[str, str], bool]) -> None: ...  # (IPAddress key, pod UID) in the store

    def stray(self, store: LeaseStore, grace_s: float,
              in_use: Callable[[str, int], bool] | None = None) -> list[LeaseRecord]:
        """Release this node's registry leases, made more than ``grace_s`` ago (by the clock of whoever stamped their
        making), that ``store`` does not hold and that are not ``in_use`` (being claimed by a call right now) (an ADD
        rolled back while the registry was unreachable could not release its own); the released."""
        ...

    def in_blocks(self, pool: AddressPool) -> bool: ...  # whether this pool is leased in node blocks

    def blocks(self, pool: AddressPool) -> list[Block]: ...  # this node's blocks of the pool

    def grow(self, pool: AddressPool) -> Block | None: ...  # claim one more block; None: the pool has none left

    def grow_soon(self, pool: AddressPool, taken: Callable[[int], bool]) -> None: ...  # ahead of need, in the background

    def ask_return(self, pool: AddressPool) -> bool: ...  # no free address here: get one of another node's blocks back

    def housekeep(self, pools: Iterable[AddressPool], in_use: Callable[[str, int], bool],
                  transaction: Callable[[], AbstractContextManager[Any]]) -> None: ...  # renew, return idle blocks

    def owe_missing(self, held: Iterable[LeaseRecord], older_than: float) -> list[LeaseRecord]: ...

    def asked(self) -> bool: ...  # another node asked for one of this node's blocks


class NoBlocks:
    """A registry that leases every address by itself (no node blocks)."""

    def in_blocks(self, pool: AddressPool) -> bool:
        return False

    def blocks(self, pool: AddressPool) -> list[Block]:
        return []

    def grow(self, pool: AddressPool) -> Block | None:
        return None

    def grow_soon(self, pool: AddressPool, taken: Callable[[int], bool]) -> None:
        pass

    def ask_return(self, pool: AddressPool) -> bool:
        return False

    def publish(self, lease: LeaseRecord) -> None:
        pass  # every claim makes its lease known at once

    def housekeep(self, pools: Iterable[AddressPool], in_use: Callable[[str, int], bool],
                  transaction: Callable[[], AbstractContextManager[Any]]) -> None:
        pass

    def owe_missing(self, held: Iterable[LeaseRecord], older_than: float) -> list[LeaseRecord]:
        return []  # every claim made its lease object before the store took it

    def asked(self) -> bool:
        return False


class NodeLocalRegistry(NoBlocks):
    def taken_elsewhere(self, pool: str) -> Container[int]:
        return ()

    def held_by(self, holder: str, pool: str) -> int | None:
        return None

    def claim(self, lease: LeaseRecord, exact: bool = False) -> bool:
        return True

    def orphan(self, lease: LeaseRecord, holder: str = "") -> None:
        pass

    def keep_in_use(self, lease: LeaseRecord, user: tuple[str, str]) -> None:
        pass

    def release(self, lease: LeaseRecord) -> None:
        pass

    def let_go(self, lease: LeaseRecord) -> None:
        self.release(lease)

    def keep(self, lease: LeaseRecord) -> None:
        pass

    def take_up(self, lease: LeaseRecord) -> bool:
        return True

    def taken_over(self, lease: LeaseRecord) -> bool:
        return False

    def recorded(self, lease: LeaseRecord) -> None:
        pass

    def auto_ip_gone(self, rec: IPRecord) -> None:
        pass

    def use(self, rec: IPRecord, pod: Pod, field: str) -> None:
        pass  # one node: its store's record of the pods that use it says it all

    def use_ended(self, rec: IPRecord, pod_uid: str) -> None:
        pass

    def use_recorded(self, rec: IPRecord, pod_uid: str) -> None:
        pass

    def unused(self, rec: IPRecord, pod_uid: str) -> None:
        pass

    def repair_use(self, rec: IPRecord, written: str, object_uid: str = "") -> None:
        pass

    def bind(self, uses_here: Callable[[str, str], bool]) -> None:
        pass

    def stray(self, store: LeaseStore, grace_s: float,
              in_use: Callable[[str, int], bool] | None = None) -> list[LeaseRecord]:
        return []

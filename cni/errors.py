"""The one error hierarchy of Plexus, mapped 1:1 to CNI error codes.

Every failure that reaches a CNI caller is a ``CniError``; its ``code`` is the spec's
(SPEC.md "Error") or one of ours (100+). The shim prints ``to_json()`` verbatim, so a
code chosen deep inside the daemon survives the hop over the socket unchanged.

    CniError
    ├── IncompatibleVersion      1
    ├── UnsupportedField         2
    ├── UnknownContainer         3
    ├── InvalidEnvironment       4
    ├── IOFailure                5
    ├── DecodingFailure          6
    ├── InvalidConfig            7
    ├── TryAgainLater           11
    ├── PluginNotAvailable      50
    ├── LimitedConnectivity     51
    ├── PoolExhausted          100
    ├── DaemonUnavailable      101
    ├── AnnotationInvalid      102
    ├── ObjectNotFound         103
    ├── AddressConflict        104
    ├── InterfaceFailure       105
    └── InternalError          999

Standard library only: the exec'd shim imports this module.
"""

from __future__ import annotations

from cni import wirejson

TYPE_CHECKING = False  # typing is not imported at run time: the exec'd shim imports this module
if TYPE_CHECKING:
    from typing import Any, ClassVar


class CniError(Exception):
    """A failure reported to the CNI caller as ``{cniVersion, code, msg, details}``."""

    code: ClassVar[int] = 999

    def __init__(self, msg: str, details: str = "", *, code: int | None = None, note: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details
        self.note = note  # for the daemon's log and the pod's events only, never in the CNI answer
        if code is not None:
            self.code = code  # type: ignore[misc]  # instance override for codes read off the wire

    def to_dict(self, cni_version: str = "1.1.0") -> dict[str, Any]:
        return {"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details}

    def to_json(self, cni_version: str = "1.1.0") -> str:
        return wirejson.dumps(self.to_dict(cni_version))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CniError:
        """Rebuild the error the daemon raised, keeping its class when the code is known."""
        code = int(data.get("code", 999))
        klass = BY_CODE.get(code, CniError)
        return klass(str(data.get("msg", "")), str(data.get("details", "")), code=code)

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg


class IncompatibleVersion(CniError):
    code = 1


class UnsupportedField(CniError):
    code = 2


class UnknownContainer(CniError):
    code = 3


class InvalidEnvironment(CniError):
    code = 4


class IOFailure(CniError):
    code = 5


class DecodingFailure(CniError):
    code = 6


class InvalidConfig(CniError):
    code = 7


class TryAgainLater(CniError):
    code = 11


class PluginNotAvailable(CniError):
    code = 50


class LimitedConnectivity(CniError):
    code = 51


class PoolExhausted(CniError):
    """No free address in the pool (the IPAddress gets ``Allocated=False/NoFreeIPAddress``)."""

    code = 100


class DaemonUnavailable(CniError):
    """The node daemon answered with something that is not a CNI answer."""

    code = 101


class AnnotationInvalid(CniError):
    """``network.deckhouse.io/networks-spec`` is malformed."""

    code = 102


class ObjectNotFound(CniError):
    """A Network, pool or IPAddress named by the pod does not exist, or not for this pod or network
    (a Network of another namespace, an IPAddress of another network)."""

    code = 103


class AddressConflict(CniError):
    """An address or IPAddress is already held by somebody else."""

    code = 104


class InterfaceFailure(CniError):
    """The kernel refused to build an interface."""

    code = 105


class InternalError(CniError):
    code = 999


BY_CODE: dict[int, type[CniError]] = {
    k.code: k
    for k in (
        IncompatibleVersion, UnsupportedField, UnknownContainer, InvalidEnvironment, IOFailure,
        DecodingFailure, InvalidConfig, TryAgainLater, PluginNotAvailable, LimitedConnectivity,
        PoolExhausted, DaemonUnavailable, AnnotationInvalid, ObjectNotFound, AddressConflict,
        InterfaceFailure, InternalError,
    )
}

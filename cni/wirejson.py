"""JSON for the exec'd shim, from CPython's C accelerator ``_json`` alone.

The ``json`` package imports ``re`` (and through it ``enum``, ``functools`` and ``collections``):
about a third of the shim's start-up, paid on every pod start. ``_json`` is the scanner and string
encoder that ``json`` itself uses, so parsing is the same code; only the few small objects the shim
writes itself (errors, the VERSION answer) are serialised here. The daemon's results pass through
as the bytes it sent.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_INF = float("inf")


def _refuse_constant(name: str) -> Any:
    """``NaN``, ``Infinity`` and ``-Infinity`` are Python's, not JSON's (RFC 8259): taken in, they would be written
    back as ``nan``/``inf``, which no runtime can read."""
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    """A JSON number as a float; one too large for a double (``1e400``) would be read as infinity, so it is refused."""
    value = float(text)
    if not -_INF < value < _INF:
        raise ValueError(f"number {text} is out of range")
    return value


class _Context:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = staticmethod(_finite)
    parse_int = int
    parse_constant = staticmethod(_refuse_constant)
    memo: dict[str, str] = {}


_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]  # any object with these attributes
_WS = " \t\n\r"


def loads(data: str | bytes) -> Any:
    """Parse one JSON document; ``ValueError`` when it is not one."""
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    end = len(text)
    i = 0
    while i < end and text[i] in _WS:
        i += 1
    try:
        obj, i = _scan(text, i)
    except StopIteration as stop:
        raise ValueError(f"Expecting value at character {stop.value}") from None
    except SystemError:
        # _json describes a syntax error with json.decoder.JSONDecodeError, which it looks up in
        # sys.modules without importing it; on this (rare) path, let json say what is wrong.
        import json

        json.loads(text)  # raises JSONDecodeError, a ValueError
        raise
    while i < end and text[i] in _WS:
        i += 1
    if i != end:
        raise ValueError(f"Extra data at character {i}")
    return obj


def dumps(obj: Any) -> str:
    """Serialise str, int, finite float, bool, None, lists and dicts with string keys (what the shim writes);
    ``ValueError`` for NaN or an infinity, never a text that is not JSON."""
    if isinstance(obj, str):
        return str(_json.encode_basestring_ascii(obj))
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, int):
        return repr(obj)
    if isinstance(obj, float):
        if not -_INF < obj < _INF:  # NaN and infinities have no JSON spelling
            raise ValueError(f"cannot serialise {obj!r}: not a JSON number")
        return repr(obj)
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in obj) + "]"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{dumps(str(k))}: {dumps(v)}" for k, v in obj.items()) + "}"
    raise TypeError(f"cannot serialise {type(obj).__name__}")

"""``cni.errors``: one class per CNI error code, and the round trip the shim relies on."""

from __future__ import annotations

import json

import pytest

import cni.errors as errors
from cni.errors import BY_CODE, CniError

SPEC_CODES = {1, 2, 3, 4, 5, 6, 7, 11, 50, 51}


@pytest.mark.parametrize("klass", list(BY_CODE.values()), ids=lambda k: k.__name__)
def test_round_trip_keeps_class_and_code(klass: type[CniError]) -> None:
    err = klass("something failed", "the details")
    data = err.to_dict("0.4.0")
    assert data == {"cniVersion": "0.4.0", "code": klass.code, "msg": "something failed", "details": "the details"}
    back = CniError.from_dict(data)
    assert type(back) is klass
    assert back.code == klass.code
    assert (back.msg, back.details) == ("something failed", "the details")
    assert CniError.from_dict(json.loads(err.to_json())).code == klass.code


def test_codes_are_the_specs_and_ours() -> None:
    codes = set(BY_CODE)
    assert SPEC_CODES <= codes, "every error code of the CNI spec has its class"
    assert all(code in SPEC_CODES or code >= 100 for code in codes), "our own codes start at 100"


def test_by_code_is_complete_and_one_to_one() -> None:
    subclasses = {obj for obj in vars(errors).values()
                  if isinstance(obj, type) and issubclass(obj, CniError) and obj is not CniError}
    assert set(BY_CODE.values()) == subclasses
    assert all(BY_CODE[k.code] is k for k in subclasses)


@pytest.mark.parametrize(("name", "code"), [
    ("IncompatibleVersion", 1), ("UnsupportedField", 2), ("UnknownContainer", 3), ("InvalidEnvironment", 4),
    ("IOFailure", 5), ("DecodingFailure", 6), ("InvalidConfig", 7), ("TryAgainLater", 11),
    ("PluginNotAvailable", 50), ("LimitedConnectivity", 51), ("PoolExhausted", 100), ("DaemonUnavailable", 101),
    ("AnnotationInvalid", 102), ("ObjectNotFound", 103), ("AddressConflict", 104), ("InterfaceFailure", 105),
    ("InternalError", 999),
])
def test_named_codes(name: str, code: int) -> None:
    assert getattr(errors, name).code == code


def test_unknown_code_keeps_its_number() -> None:
    err = CniError.from_dict({"cniVersion": "1.0.0", "code": 1234, "msg": "m", "details": "d"})
    assert type(err) is CniError
    assert err.code == 1234
    assert err.to_dict()["code"] == 1234
    assert CniError.code == 999  # the instance override did not leak into the class


def test_from_dict_with_missing_fields() -> None:
    err = CniError.from_dict({})
    assert err.code == 999
    assert (err.msg, err.details) == ("", "")
    assert CniError.from_dict({"code": "7", "msg": 5}).__class__ is errors.InvalidConfig


def test_to_json_is_one_json_object() -> None:
    text = errors.PoolExhausted("pool full", "10 of 10").to_json("1.0.0")
    assert "\n" not in text
    assert json.loads(text) == {"cniVersion": "1.0.0", "code": 100, "msg": "pool full", "details": "10 of 10"}


def test_default_version_is_current() -> None:
    assert errors.IOFailure("x").to_dict()["cniVersion"] == "1.1.0"


def test_str() -> None:
    assert str(errors.IOFailure("cannot read", "/x")) == "cannot read: /x"
    assert str(errors.IOFailure("cannot read")) == "cannot read"


def test_errors_are_exceptions() -> None:
    with pytest.raises(CniError):
        raise errors.AddressConflict("taken")

"""A multi-queue TAP (``multiQueue`` in ``networks-spec``): parsed, refused where it does not apply, admitted by the
webhook, and kept in the TAP's record for DEL and CHECK."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cni.errors import AnnotationInvalid
from ipamd.drivers.base import InterfaceKey, InterfaceRequest
from ipamd.drivers.tap import TapDriver
from ipamd.kube.admission import review
from ipamd.model.annotations import parse_networks_spec
from tests.unit.test_admission import SPEC, pod_review
from tests.unit.test_networks import wanted


def tap(**extra: Any) -> dict[str, Any]:
    return {"type": "Network", "name": "vm-net", "ifName": "tap0", "interfaceType": "tap", **extra}


def refused(*items: dict[str, Any]) -> AnnotationInvalid:
    with pytest.raises(AnnotationInvalid) as info:
        parse_networks_spec(json.dumps(list(items)))
    assert info.value.code == 102
    return info.value


def test_multi_queue_is_asked_for_on_a_tap() -> None:
    (sel,) = parse_networks_spec(json.dumps([tap(multiQueue=True, uid=107, gid=107)]))
    assert sel.tap_multi_queue is True and (sel.tap_uid, sel.tap_gid) == (107, 107)
    (sel,) = parse_networks_spec(json.dumps([tap(multiQueue=False)]))
    assert sel.tap_multi_queue is False


@pytest.mark.parametrize("item", [tap(), {"type": "Network", "name": "n"}, {"type": "Network", "name": "n",
                                                                             "interfaceType": "macvlan"}])
def test_single_queue_by_default(item: dict[str, Any]) -> None:
    (sel,) = parse_networks_spec(json.dumps([item]))
    assert sel.tap_multi_queue is False


@pytest.mark.parametrize("value", ["true", "yes", 1, 0, None, [], {}])
def test_anything_but_a_bool_is_refused_naming_the_field(value: Any) -> None:
    err = refused({"type": "Network", "name": "other"}, tap(multiQueue=value))
    assert err.details == "networks-spec[1].multiQueue"
    assert "networks-spec[1].multiQueue must be true or false" in err.msg


@pytest.mark.parametrize("item", [{"type": "Network", "name": "n", "multiQueue": True},
                                  {"type": "Network", "name": "n", "interfaceType": "veth", "multiQueue": True},
                                  {"type": "Network", "name": "n", "interfaceType": "macvlan", "multiQueue": True}])
def test_multi_queue_on_an_interface_that_is_no_tap_is_refused_naming_the_field(item: dict[str, Any]) -> None:
    err = refused(item)
    assert err.details == "networks-spec[0].multiQueue"
    assert "networks-spec[0].multiQueue" in err.msg and "tap" in err.msg, err.msg


def test_multi_queue_false_asks_nothing_of_any_interface() -> None:
    (sel,) = parse_networks_spec(json.dumps([{"type": "Network", "name": "n", "multiQueue": False}]))
    assert sel.tap_multi_queue is False and sel.interface_type == "veth"


def test_the_webhook_admits_it_and_refuses_what_add_would() -> None:
    ok = review(pod_review({SPEC: json.dumps([tap(multiQueue=True)])}))["response"]
    assert ok["allowed"] is True, ok
    bad = review(pod_review({SPEC: json.dumps([tap(multiQueue="yes")])}))["response"]
    assert bad["allowed"] is False and "networks-spec[0].multiQueue must be true or false" in bad["status"]["message"]
    veth = review(pod_review({SPEC: json.dumps([{"type": "Network", "name": "n", "multiQueue": True}])}))["response"]
    assert veth["allowed"] is False and "networks-spec[0].multiQueue" in veth["status"]["message"]


def test_a_tap_planned_without_it_is_recorded_single_queue() -> None:
    plan = TapDriver().plan(InterfaceKey("c1", "eth0", "/run/netns/app"), InterfaceRequest("tap0", tap_uid=107))
    assert plan.state is not None and plan.state["multiQueue"] is False and plan.state["uid"] == 107


def test_the_choice_is_kept_in_the_taps_record() -> None:
    request = InterfaceRequest("tap0", tap_uid=107, tap_gid=107, tap_multi_queue=True)  # type: ignore[call-arg,unused-ignore]
    plan = TapDriver().plan(InterfaceKey("c1", "eth0", "/run/netns/app"), request)
    assert plan.state is not None and plan.state["multiQueue"] is True and plan.state["gid"] == 107


def test_add_hands_the_choice_to_the_driver() -> None:
    (w,) = wanted({SPEC: json.dumps([{"type": "Network", "name": "net-a", "ifName": "tap0", "interfaceType": "tap",
                                      "multiQueue": True}])})
    assert w.kind == "tap" and getattr(w.request, "tap_multi_queue") is True  # noqa: B009


@pytest.mark.parametrize("uid", [2**31, 4294967294, 2**40])
def test_a_tap_uid_past_a_c_int_is_refused_naming_the_field_not_a_traceback(uid: int,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``uid`` is any non-negative integer at parse time; ``_make_tap`` passes it to ``fcntl.ioctl`` as an int
    argument, which Python parses as a C int: OverflowError, which ``add_tap`` (catching OSError) lets through as a
    999. A uid_t is 32 bits (4294967294 is a valid uid), so either it is refused at parse naming ``uid``, or the ioctl
    gets it packed unsigned; never an OverflowError."""
    import fcntl
    import json
    import os

    from pyroute2.netlink.rtnl.ifinfmsg.tuntap import TUNSETIFF

    from cni.errors import CniError
    from ipamd.model.annotations import parse_networks_spec
    from ipamd.netlink import sysctl, tap_links

    try:
        (sel,) = parse_networks_spec(json.dumps([{"type": "Network", "name": "vm", "ifName": "tap0",
                                                  "interfaceType": "tap", "uid": uid}]))
    except CniError as exc:
        assert "uid" in str(exc.details)
        return
    real = fcntl.ioctl
    null = os.open("/dev/null", os.O_RDWR)
    monkeypatch.setattr(os, "open", lambda *a, **k: os.dup(null))  # (tap_links's: the module's own)
    monkeypatch.setattr(sysctl, "set_conf", lambda *a, **k: None)
    monkeypatch.setattr(fcntl, "ioctl", lambda fd, req, arg=0: None if req == TUNSETIFF else real(fd, req, arg))
    monkeypatch.setattr(tap_links, "in_namespace", lambda fd, fn: fn())
    try:
        with pytest.raises(CniError):  # an InterfaceFailure (105) at worst: never 999
            tap_links.add_tap(0, "tap0", sel.tap_uid, None)
    finally:
        os.close(null)

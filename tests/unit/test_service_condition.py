"""The Endpoints condition of a Service that stopped asking Plexus: removed, its slices deleted; a Service asking badly
is told once."""


from __future__ import annotations

from typing import Any

from ipamd.kube.services import CONDITION
from ipamd.model.services import NETWORK_ANNOTATION, SELECTOR_ANNOTATION
from tests.unit.test_services import SliceApi, _endpoints, on, pod, service

PENDING = "VLANIDChangePending"


class StatusApi:
    """The core API's Service status, patched as the API server does (a strategic merge: conditions by type, and
    ``$patch: delete`` removes one)."""

    def __init__(self, services: list[dict[str, Any]]) -> None:
        self.services = services
        self.patches: list[dict[str, Any]] = []

    def patch_namespaced_service_status(self, name: str, ns: str, body: Any) -> None:
        self.patches.append(body)
        svc = next(s for s in self.services if (s["metadata"]["namespace"], s["metadata"]["name"]) == (ns, name))
        conds = svc.setdefault("status", {}).setdefault("conditions", [])
        for change in body["status"]["conditions"]:
            conds[:] = [c for c in conds if c["type"] != change["type"]]
            if change.get("$patch") != "delete":
                conds.append(change)

    def create_namespaced_event(self, ns: str, body: Any) -> None:
        pass


def test_a_service_that_stops_asking_loses_its_endpoints_condition_and_its_slices() -> None:
    api = SliceApi()
    se, src = _endpoints(api)
    asking = service({NETWORK_ANNOTATION: "backend", SELECTOR_ANNOTATION: "app=db"})
    src.raw["Service"] = [asking]
    src.raw["Pod/all-namespaces"] = [pod("a", {"app": "db"}, [on("backend", "198.18.30.5", "2001:2:0:10::5")])]
    core = StatusApi(src.raw["Service"])
    se.core = core  # type: ignore[assignment]
    se.sync()
    assert [c["status"] for c in asking["status"]["conditions"] if c["type"] == CONDITION] == ["True"]
    assert set(api.slices) == {("apps", "db-plexus"), ("apps", "db-plexus-v6")}

    # its annotations removed (Kubernetes's own selector now, say): Plexus no longer serves it
    md = asking["metadata"]
    md["annotations"] = {}
    asking["spec"]["selector"] = {"app": "db"}
    se.sync()
    assert api.slices == {}, "the slices of a Service Plexus no longer serves are deleted"
    assert [c for c in asking["status"]["conditions"] if c["type"] == CONDITION] == [], (
        f"conditions {asking['status']['conditions']}: Endpoints True stays for ever once Plexus stopped serving it")
    told = len(core.patches)
    for _ in range(3):
        se.sync()
    assert len(core.patches) == told, "removed once, not again on every pass"


def test_the_condition_of_a_service_that_stopped_asking_while_another_replica_led_is_removed() -> None:
    """No slice left and no Service asking (the pass returns early): a condition left by an earlier leader (or whose
    removal failed) still goes."""
    api = SliceApi()
    se, src = _endpoints(api)
    stale = service({})
    stale["status"] = {"conditions": [{"type": CONDITION, "status": "True", "reason": "EndpointsWritten",
                                       "message": "1 address(es)", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    src.raw["Service"] = [stale]
    se.core = StatusApi(src.raw["Service"])  # type: ignore[assignment]
    se._managed = False
    se.sync()
    assert stale["status"]["conditions"] == []


def test_a_service_that_asks_badly_is_told_once_not_on_every_pass() -> None:
    """What an invalid Service was told was forgotten at the end of every pass (it was not counted among the Services
    that ask), so each pass (every 5 s, and on any pod change) sent it another Warning Event and status patch."""
    api = SliceApi()
    se, src = _endpoints(api)
    src.raw["Service"] = [service({NETWORK_ANNOTATION: "backend", SELECTOR_ANNOTATION: "app=db"}, clusterIP="10.0.0.5")]
    core = StatusApi(src.raw["Service"])
    events: list[Any] = []
    core.create_namespaced_event = lambda ns, body: events.append(body)  # type: ignore[method-assign]
    se.core = core  # type: ignore[assignment]
    for _ in range(3):
        se.sync()
    assert len(events) == 1 and len(core.patches) == 1, f"{len(events)} Events, {len(core.patches)} status patches"

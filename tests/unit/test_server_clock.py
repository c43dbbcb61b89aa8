"""Times the API server stamped are judged by the API server's clock, as its answers' Date headers tell it: a
controller whose clock runs ahead does not reclaim a node that renews, and a node whose clock runs behind does not have
its quarantines ended early."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from types import SimpleNamespace

import pytest
from kubernetes import client

from ipamd.kube.blocks import KIND as BLOCK_KIND
from ipamd.kube.client import TimedApiClient
from ipamd.kube.leases import KIND as LEASE_KIND
from ipamd.kube.leases import QUARANTINE_MANAGER, lease_name, quarantined_at
from ipamd.kube.server_clock import ServerClock, anchor_of, server_time, stamped_at
from ipamd.model.timefmt import rfc3339
from tests.fakes.cluster import FakeApi
from tests.unit.test_blocks import Node
from tests.unit.test_ipam import attach, gone, pod
from tests.unit.test_reclaim import Cluster, controller

SKEW_S = 7200.0  # two hours: more than --block-ttl and the test pool's leaseTTL (1h)


def test_a_date_header_is_read_to_the_second() -> None:
    assert server_time("Thu, 03 Dec 2026 12:04:34 GMT") == 1796299474.0
    assert server_time("yesterday") is None and server_time("") is None


def test_an_answer_reads_the_server_clock_at_the_middle_of_its_round_trip() -> None:
    date = formatdate(1000.0, usegmt=True)
    assert anchor_of(date, 400.0, 400.2) == pytest.approx((1000.5, 400.1)), "the server wrote its Date in [1000, 1001)"
    assert anchor_of(date, 400.0, 400.0 + 5) is None, "a long round trip says too little"
    assert anchor_of("not a date", 400.0, 400.1) is None


def test_the_clock_follows_the_server_on_the_monotonic_clock_whatever_the_wall_clock_does() -> None:
    wall, mono = [5000.0], [10.0]
    clock = ServerClock(wall=lambda: wall[0], monotonic=lambda: mono[0])
    assert clock.now() == 5000.0, "nothing heard yet: this machine's clock"
    clock.observe(formatdate(4000.0, usegmt=True), 9.9, 10.1)  # the server an hour behind
    assert clock.now() == pytest.approx(4000.5) and clock.offset == pytest.approx(-999.5)
    mono[0] += 10
    wall[0] += 10
    assert clock.now() == pytest.approx(4010.5)
    wall[0] -= 3600  # this machine's wall clock stepped (NTP, a VM restored): the server's present does not move
    assert clock.now() == pytest.approx(4010.5)
    clock.observe(formatdate(4000.0, usegmt=True), 100.0, 100.0)  # the same second again: nothing new
    assert clock.now() == pytest.approx(4010.5)
    clock.observe(None, 1.0, 1.0)
    clock.observe("garbage", 1.0, 1.0)
    assert clock.now() == pytest.approx(4010.5)
    clock.observe(formatdate(4011.0, usegmt=True), 20.0, 20.0)
    assert clock.now() == pytest.approx(4011.5), "a new Date reads the server's clock again"


def test_stamps_are_the_managers_newest() -> None:
    obj = {"metadata": {"managedFields": [
        {"manager": "a", "time": "2026-12-03T10:00:00Z"}, {"manager": "a", "time": "2026-12-03T11:00:00Z"},
        {"manager": "a", "time": "bad"}, {"manager": "b", "time": "2026-12-03T12:00:00Z"}, "junk"]}}
    assert stamped_at(obj, "a") == server_time("Thu, 03 Dec 2026 11:00:00 GMT")
    assert stamped_at(obj, "c") is None and stamped_at({}, "a") is None


class _SkewedServer(http.server.BaseHTTPRequestHandler):
    """An API server whose clock runs ``SKEW_S`` ahead of this machine's: every answer's Date says so."""

    def date_time_string(self, timestamp: float | None = None) -> str:
        return formatdate(time.time() + SKEW_S, usegmt=True)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b'{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def skewed_server() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SkewedServer)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_the_api_client_keeps_the_servers_clock_from_its_answers(skewed_server: str) -> None:
    conf = client.Configuration()
    conf.host = skewed_server
    api = TimedApiClient(conf)
    assert abs(api.server_clock.now() - time.time()) < 1, "no answer yet"
    client.CoreV1Api(api).read_namespaced_pod("p", "ns")
    assert abs(api.server_clock.now() - (time.time() + SKEW_S)) < 1.5


def _machine_clock_ahead(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """This machine's wall clock runs ``seconds`` ahead of the API server's (the fake stamps real time)."""
    ahead = SimpleNamespace(time=lambda: time.time() + seconds, monotonic=time.monotonic, sleep=time.sleep)
    monkeypatch.setattr("ipamd.kube.controller.time", ahead)


def test_a_controller_whose_clock_runs_ahead_does_not_reclaim_a_node_that_renews(
        monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi()
    node = Node(api, "live")
    node.add(), node.add()
    node.outbox.flush()  # its block made and renewed now, by the API server's stamp
    _machine_clock_ahead(monkeypatch, SKEW_S)
    cluster = Cluster(api)
    cluster.nodes = ["live"]
    ctl = controller(cluster)
    ctl.clock = ServerClock(wall=lambda: time.time() + SKEW_S)
    sent = time.monotonic()
    ctl.clock.observe(formatdate(time.time(), usegmt=True), sent, sent)  # what the API server's answers say
    ctl.reclaim_blocks()
    assert len(api.objs[BLOCK_KIND]) == 1, "renewed a moment ago by the API server's clock: not silent"
    assert all(o["spec"].get("holder") for o in api.objs[LEASE_KIND].values())


def test_a_quarantine_written_by_a_node_whose_clock_runs_behind_lasts_its_whole_ttl() -> None:
    api = FakeApi()
    node = Node(api, "late")
    node.clock.now = time.time() - SKEW_S  # this node's clock is two hours behind the API server's
    app = pod("app")
    address = attach(node.ipam, app, net="ttl-net")[0].address  # leaseTTL 1h
    node.outbox.flush()
    gone(node.ipam, app)
    node.outbox.flush()
    name = lease_name("IPAddressPool/ns/quarantined", address)
    quarantined = api.objs[LEASE_KIND][name]
    assert quarantined["status"]["orphaningTimestamp"] == rfc3339(node.clock.now), "the node's clock wrote the time"
    began = quarantined_at(quarantined)
    assert began is not None and abs(began - time.time()) < 2, "the API server's stamp of that write"
    cluster = Cluster(api)
    ctl = controller(cluster)
    ctl.expire_leases()
    assert name in api.objs[LEASE_KIND], "quarantined a moment ago by the API server's clock: its hour is not over"
    ctl.clock = ServerClock(wall=lambda: time.time() + 3601)
    ctl.expire_leases()
    assert name not in api.objs[LEASE_KIND], "an hour on, by the same clock: over"


def test_a_quarantine_of_an_earlier_version_is_judged_by_its_orphaning_time() -> None:
    old = {"status": {"orphaningTimestamp": "2026-12-03T11:00:00Z"}}
    assert quarantined_at(old) == server_time("Thu, 03 Dec 2026 11:00:00 GMT")
    assert quarantined_at({"status": {}}) is None, "not quarantined"
    stamped = {"status": {"orphaningTimestamp": "2026-12-03T11:00:00Z"}, "metadata": {"managedFields": [
        {"manager": QUARANTINE_MANAGER, "time": "2026-12-03T11:05:00Z"}]}}
    assert quarantined_at(stamped) == server_time("Thu, 03 Dec 2026 11:05:00 GMT"), "sent late: from when it was"


def test_a_step_of_the_controllers_clock_does_not_end_a_quarantine_early() -> None:
    """A quarantine of 1 h begun a moment ago (by the API server's stamp), judged by a controller whose clock, an hour
    behind, is stepped right by NTP in between two rounds that hear no new Date (their reads come from the informers'
    caches): kept."""
    from ipamd.kube.leases import lease_body

    api = FakeApi()
    body = lease_body("IPAddressPool/ns/pool", "198.18.10.50", "198.18.10.0/24", "", 3600, "n1")
    name = body["metadata"]["name"]
    api.create(LEASE_KIND, body)
    api.patch_status(LEASE_KIND, name, {"orphaningTimestamp": rfc3339()}, field_manager=QUARANTINE_MANAGER)
    ctl = controller(Cluster(api))
    skew = [-3600.0]  # the controller's machine an hour behind the API server
    ctl.clock = ServerClock(wall=lambda: time.time() + skew[0])
    sent = time.monotonic()
    ctl.clock.observe(formatdate(time.time(), usegmt=True), sent, sent)
    ctl.expire_leases()
    assert name in api.objs[LEASE_KIND], "judged right before the step"
    skew[0] = 0.0  # NTP steps it to the true time
    ctl.expire_leases()
    assert name in api.objs[LEASE_KIND], "a 1 h quarantine begun a moment ago was ended by the controller's clock step"

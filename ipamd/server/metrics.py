"""Prometheus metrics of the daemon (served on ``--metrics-port`` when one is given)."""

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CNI_REQUESTS = Counter("plexus_cni_requests_total", "CNI calls served, by verb and outcome", ["verb", "outcome"])
CNI_SECONDS = Histogram(
    "plexus_cni_request_seconds", "Time the daemon spent on a CNI call", ["verb"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OUTBOX_DEPTH = Gauge("plexus_outbox_depth", "Writes to the cluster's API this node owes (its outbox), made in the background")


class OutboxRefusals:
    """``plexus_outbox_refused_total{op,kind}``: the writes the API server refused for good (``REFUSED_FOR_GOOD``:
    400, 403, 405, 413, 415, 422), which the outbox drops so as not to block their object for ever; read from the
    outbox's own count at each scrape."""

    def __init__(self, counts: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("plexus_outbox_refused", "API writes refused for good and dropped, by op and kind",
                                     labels=["op", "kind"])
        for (op, kind), n in sorted(self.counts().items()):
            family.add_metric([op, kind], float(n))
        yield family


OUTBOX_REFUSALS = OutboxRefusals(dict)  # its ``counts`` set by the daemon, as OUTBOX_DEPTH's function is
REGISTRY.register(OUTBOX_REFUSALS)


class GuestDhcpMetrics:
    """``plexus_guest_dhcp_replies_total{reply}`` and ``plexus_guest_dhcp_taps``: what the guests of TAPs with
    ``ipAssignmentMode: DHCP`` were answered, and how many TAPs are served; read from the server at each scrape."""

    def __init__(self, replies: Callable[[], Mapping[str, int]], taps: Callable[[], int]) -> None:
        self.replies = replies
        self.taps = taps

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        family = CounterMetricFamily("plexus_guest_dhcp_replies", "DHCP answers sent to VM guests, by kind",
                                     labels=["reply"])
        for reply, n in sorted(self.replies().items()):
            family.add_metric([reply], float(n))
        yield family
        yield GaugeMetricFamily("plexus_guest_dhcp_taps", "TAPs whose guest the node answers over DHCP",
                                value=float(self.taps()))


GUEST_DHCP = GuestDhcpMetrics(dict, int)  # its sources set by the daemon
REGISTRY.register(GUEST_DHCP)

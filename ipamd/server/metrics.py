"""Prometheus metrics of the daemon (served on ``--metrics-port`` when one is given)."""

from prometheus_client import Counter, Gauge, Histogram

CNI_REQUESTS = Counter("plexus_cni_requests_total", "CNI calls served, by verb and outcome", ["verb", "outcome"])
CNI_SECONDS = Histogram(
    "plexus_cni_request_seconds", "Time the daemon spent on a CNI call", ["verb"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OUTBOX_DEPTH = Gauge("plexus_outbox_depth", "Writes to the cluster's API this node owes (its outbox), made in the background")

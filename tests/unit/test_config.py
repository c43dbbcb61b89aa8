"""The daemon's command line (``ipamd.config.parse_args``): what it refuses, naming the flag."""

from __future__ import annotations

import pytest

from ipamd.config import parse_args


def test_a_reconcile_interval_past_a_minute_is_refused_in_kubernetes_mode(capsys: pytest.CaptureFixture[str]) -> None:
    """Block renewals and the heartbeat ride on the reconcile round (found in review): at 300 s a node leasing in its
    blocks would ask the API server on every ADD after 150 s (and answer 11 through an outage), and a node with no pod
    would be reclaimed while alive once the interval nears --block-ttl."""
    cluster = ["--kubeconfig", "/nonexistent/kubeconfig", "--node-name", "n1"]
    with pytest.raises(SystemExit):
        parse_args([*cluster, "--reconcile-interval", "300"])
    assert "--reconcile-interval: at most 60 s in Kubernetes mode" in capsys.readouterr().err
    assert parse_args([*cluster, "--reconcile-interval", "60"]).reconcile_interval == 60
    assert parse_args(["--reconcile-interval", "300"]).reconcile_interval == 300, "local mode: any interval"

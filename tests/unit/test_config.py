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


@pytest.mark.parametrize("path", ["/run/plexus/ipam-plugin.sock", "/tmp/evil-plexus-ipam.sock",
                                  "run/plexus/plexus-ipam.sock"])
def test_a_daemon_ipam_socket_the_plugin_refuses_to_use_is_refused_naming_the_flag(
        path: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Found in review: ``--ipam-socket`` took any path, but plexus-ipam connects only to an absolute path of a
    ``plexus-ipam.sock`` (code 7 otherwise): a daemon started so ran fine and could never be reached by the plugin."""
    with pytest.raises(SystemExit):
        parse_args(["--ipam-socket", path])
    assert "--ipam-socket" in capsys.readouterr().err
    good = parse_args(["--ipam-socket", "/run/plexus-b/plexus-ipam.sock"]).ipam_plugin_socket
    assert good == "/run/plexus-b/plexus-ipam.sock"
    assert parse_args(["--socket", "/run/p/plexus.sock"]).ipam_plugin_socket == "/run/p/plexus-ipam.sock"


@pytest.mark.parametrize("seconds", ["0", "-1", "0.01", "nan", "inf"])
def test_a_reconcile_interval_that_would_spin_the_reconciler_is_refused_naming_the_flag(
        seconds: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Found in review: ``--reconcile-interval 0`` (or less) made the reconciler go round without a pause."""
    with pytest.raises(SystemExit):
        parse_args(["--reconcile-interval", seconds])
    assert "--reconcile-interval: at least 0.1 s" in capsys.readouterr().err
    assert parse_args(["--reconcile-interval", "0.5"]).reconcile_interval == 0.5, "the tests' nodes use it"

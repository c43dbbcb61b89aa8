"""An API client for Kubernetes mode: from a kubeconfig, or from the pod's service account."""

from __future__ import annotations

from typing import Any

from kubernetes import client, config


def kube_api(kubeconfig: str) -> Any:
    """An API client from a kubeconfig, or from the pod's service account ("in-cluster")."""
    configuration = client.Configuration()
    if kubeconfig == "in-cluster":
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(config_file=kubeconfig,  # type: ignore[no-untyped-call]
                                client_configuration=configuration)
    return client.ApiClient(configuration)

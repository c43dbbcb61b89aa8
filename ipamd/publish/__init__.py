"""Where statuses go besides the store: nowhere in local mode, the Kubernetes API in cluster mode."""

"""The daemon's servers: the plugin's HTTP endpoint on a unix socket, the gRPC IPAM API, Prometheus
metrics.
"""

"""Kubernetes mode: informers, IPAddressLease objects, statuses written to the API."""

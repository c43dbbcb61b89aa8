"""Fakes at the daemon's I/O seams, for unit tests that need no root: the store, the object source,
node links, pod namespaces, interface drivers, plugin execs."""

"""The node daemon: its wiring, the L2 segments it keeps on the node, and the reconcile loop that brings
the store in line with the objects.
"""

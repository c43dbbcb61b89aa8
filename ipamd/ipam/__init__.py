"""Addresses: the pure allocator, leasing for IPAddresses (quarantine, Static adoption), and the registry
that makes a lease unique beyond this node.
"""

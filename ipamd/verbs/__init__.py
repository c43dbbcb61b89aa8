"""The CNI verbs as the daemon carries them out (ADD, DEL, CHECK, GC, STATUS), as transactions over the
store, the drivers and IPAM.
"""

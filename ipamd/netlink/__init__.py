"""The kernel side: netlink builders for node and pod links (pyroute2), and sockets inside a pod's network
namespace.
"""

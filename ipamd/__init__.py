"""plexus-ipamd: the node daemon (CNI service, IPAM, object sources, store) and plexusctl."""

"""plexusctl, the operator's command line over the daemon's gRPC API and the local object source."""

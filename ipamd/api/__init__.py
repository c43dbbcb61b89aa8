"""Generated gRPC code for proto/plexus/ipam/v1/ipam.proto (scripts/gen-proto.sh)."""

#!/usr/bin/env bash
# Regenerate ipamd/api/ from proto/ (grpcio-tools). The generated code is committed so that
# installing Plexus needs no code generator; `make proto` reruns this after a .proto change.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
out=ipamd/api
"$PY" -m grpc_tools.protoc -Iproto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    proto/plexus/ipam/v1/ipam.proto
mv "$out"/plexus/ipam/v1/ipam_pb2.py "$out"/plexus/ipam/v1/ipam_pb2.pyi "$out"/plexus/ipam/v1/ipam_pb2_grpc.py "$out"/
rm -rf "$out"/plexus
sed -i 's/^from plexus.ipam.v1 import ipam_pb2 as/from ipamd.api import ipam_pb2 as/' "$out"/ipam_pb2_grpc.py

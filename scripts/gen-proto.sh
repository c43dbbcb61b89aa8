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

# the kubelet's APIs: pod-resources (the daemon reads it) and device plugins (the tests' own plugin registers one)
"$PY" -m grpc_tools.protoc -Iproto/k8s --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    proto/k8s/podresources/v1/api.proto
mv "$out"/podresources/v1/api_pb2.py "$out"/podresources_pb2.py
mv "$out"/podresources/v1/api_pb2.pyi "$out"/podresources_pb2.pyi
mv "$out"/podresources/v1/api_pb2_grpc.py "$out"/podresources_pb2_grpc.py
rm -rf "$out"/podresources
sed -i 's/^from podresources.v1 import api_pb2 as/from ipamd.api import podresources_pb2 as/' "$out"/podresources_pb2_grpc.py
tests=tests/node/api
mkdir -p "$tests"
"$PY" -m grpc_tools.protoc -Iproto/k8s --python_out="$tests" --pyi_out="$tests" --grpc_python_out="$tests" \
    proto/k8s/deviceplugin/v1beta1/api.proto
mv "$tests"/deviceplugin/v1beta1/api_pb2.py "$tests"/deviceplugin_pb2.py
mv "$tests"/deviceplugin/v1beta1/api_pb2.pyi "$tests"/deviceplugin_pb2.pyi
mv "$tests"/deviceplugin/v1beta1/api_pb2_grpc.py "$tests"/deviceplugin_pb2_grpc.py
rm -rf "$tests"/deviceplugin
sed -i 's/^from deviceplugin.v1beta1 import api_pb2 as/from tests.node.api import deviceplugin_pb2 as/' "$tests"/deviceplugin_pb2_grpc.py
touch "$tests"/__init__.py

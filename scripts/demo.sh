#!/usr/bin/env bash
# make demo: apply the examples, run two pods on them, show their status and the leases, and ping.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
for pod in pod-a pod-b; do   # a rerun starts from scratch
    plexusctl pod rm "$pod" -n my-namespace >/dev/null 2>&1 || true
done
step plexusctl apply -f conf/examples/
step plexusctl pod run -f conf/pods/pod-a.yaml
step plexusctl pod run -f conf/pods/pod-b.yaml
step plexusctl pod status pod-a -n my-namespace
step plexusctl pod status pod-b -n my-namespace
step plexusctl pod list
step plexusctl get ipaddresses
step plexusctl get networks
step plexusctl ipam pools
step plexusctl ipam leases
b_net1=$(plexusctl pod status pod-b -n my-namespace | python3 -c 'import json,sys; print([s for s in json.load(sys.stdin) if s["ifName"]=="net1"][0]["ipAddressConfigs"][0]["address"])')
b_pub=$(plexusctl pod status pod-b -n my-namespace | python3 -c 'import json,sys; print([s for s in json.load(sys.stdin) if s["ifName"]=="veth_public"][0]["ipAddressConfigs"][0]["address"])')
step ip netns exec pod-a ip -br addr
step ip netns exec pod-a ping -c 3 -W 2 "$b_net1"
step ip netns exec pod-a ping -c 3 -W 2 "$b_pub"
printf '\nPlexus works: pod-a reached pod-b on my-network (%s) and on my-cluster-network (%s).\n' "$b_net1" "$b_pub"
printf 'Try: plexusctl --help   |   make demo-clean removes everything the demo made.\n'

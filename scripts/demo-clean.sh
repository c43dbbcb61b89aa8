#!/usr/bin/env bash
# make demo-clean: remove everything make demo made: pods and their netns, the objects, the
# daemon, its state, the installed files and the node bridges.
set -uo pipefail
cd "$(dirname "$0")/.."
for pod in pod-a pod-b; do
    plexusctl pod rm "$pod" -n my-namespace 2>/dev/null || true
    ip netns del "$pod" 2>/dev/null || true
done
plexusctl delete -f conf/examples/ >/dev/null 2>&1 || true
bash scripts/daemon.sh stop
for link in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^plx'); do
    ip link del "$link" 2>/dev/null || true
done
if [ -f /opt/plexus/installed-links ]; then   # the reference plugins' links install.sh made
    while read -r link; do [ -L "$link" ] && rm -f "$link"; done </opt/plexus/installed-links
fi
rm -rf /var/lib/plexus /etc/plexus /run/plexus /var/log/plexus /opt/plexus
cmp -s packaging/10-plexus.conflist /etc/cni/net.d/10-plexus.conflist && rm -f /etc/cni/net.d/10-plexus.conflist  # only the one install.sh wrote
rm -f /opt/cni/bin/plexus /opt/cni/bin/plexus-ipam /usr/local/bin/plexus-ipamd /usr/local/bin/plexusctl
echo "demo removed"

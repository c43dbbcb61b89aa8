#!/usr/bin/env bash
# make uninstall: stop the daemon and remove what `make install` put on this node: the plugin and its links in
# the CNI bin directory, the reference plugins' links install.sh made, /usr/local/bin/plexus-ipamd and plexusctl,
# and the conflist if it is still the one install.sh wrote. Kept: the daemon's store (/var/lib/plexus: the leases
# of pods still attached), its objects (/etc/plexus) and its logs, so that a reinstall picks up where it left;
# PURGE=1 removes those too. Pods' interfaces are never touched: delete the pods first (plexusctl pod rm).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-}  # where / is, as for packaging/install.sh: empty on a node; a scratch tree in tests
PREFIX=${PREFIX:-$ROOT/opt/plexus}
CNI_BIN=${CNI_BIN:-$ROOT/opt/cni/bin}
CNI_CONF=${CNI_CONF:-$ROOT/etc/cni/net.d}
RUN_DIR=${RUN_DIR:-$ROOT/run/plexus} bash scripts/daemon.sh stop
for name in plexus plexus-ipam; do
    [ "$(readlink "$CNI_BIN/$name" 2>/dev/null)" = "$PREFIX/plexus/plexus" ] && rm -f "$CNI_BIN/$name"
done
if [ -f "$PREFIX/installed-links" ]; then
    while read -r link; do [ -L "$link" ] && rm -f "$link"; done <"$PREFIX/installed-links"
fi
for tool in plexus-ipamd plexusctl; do
    [ -L "$ROOT/usr/local/bin/$tool" ] && rm -f "$ROOT/usr/local/bin/$tool"
done
if cmp -s packaging/10-plexus.conflist "$CNI_CONF/10-plexus.conflist"; then
    rm -f "$CNI_CONF/10-plexus.conflist"
elif [ -e "$CNI_CONF/10-plexus.conflist" ]; then
    echo "kept $CNI_CONF/10-plexus.conflist: it is not the one make install wrote (remove it yourself)"
fi
rm -rf "$PREFIX"
if [ "${PURGE:-0}" = 1 ]; then
    rm -rf "$ROOT/var/lib/plexus" "$ROOT/etc/plexus" "$ROOT/var/log/plexus" "$ROOT/run/plexus"
    echo "Plexus uninstalled, its store, objects and logs removed"
else
    echo "Plexus uninstalled; kept /var/lib/plexus (its store), /etc/plexus (its objects) and /var/log/plexus (PURGE=1 removes them)"
fi

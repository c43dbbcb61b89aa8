#!/usr/bin/env bash
# Install a built Plexus on this node (make install): the frozen `plexus` CNI plugin into
# /opt/plexus/plexus with /opt/cni/bin/plexus and /opt/cni/bin/plexus-ipam (the IPAM plugin) linked to
# it, the reference plugins of /usr/lib/cni linked into /opt/cni/bin where the user has none of that name,
# the daemon and CLI (from the project's virtualenv) as /usr/local/bin/plexus-ipamd and
# /usr/local/bin/plexusctl, and the conflist into /etc/cni/net.d unless one named 10-plexus.conflist
# is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-}  # where / is: empty on a node; a scratch tree in tests
PREFIX=${PREFIX:-$ROOT/opt/plexus}
CNI_BIN=${CNI_BIN:-$ROOT/opt/cni/bin}
CNI_CONF=${CNI_CONF:-$ROOT/etc/cni/net.d}
CNI_REF=${CNI_REF:-$ROOT/usr/lib/cni}  # Debian's containernetworking-plugins
VENV=${VENV:-$PWD/.venv}

[ -x dist/plexus/plexus ] || { echo "dist/plexus/plexus is missing: run make build first" >&2; exit 1; }
install -d -m 0755 "$PREFIX" "$CNI_BIN" "$CNI_CONF" "$ROOT/etc/plexus/objects" "$ROOT/var/log/plexus" \
    "$ROOT/var/lib/plexus"
mkdir -p "$ROOT/usr/local/bin"
rm -rf "$PREFIX/plexus.new"
cp -a dist/plexus "$PREFIX/plexus.new"
rm -rf "$PREFIX/plexus.old"
[ -d "$PREFIX/plexus" ] && mv "$PREFIX/plexus" "$PREFIX/plexus.old"
mv "$PREFIX/plexus.new" "$PREFIX/plexus"
rm -rf "$PREFIX/plexus.old"
for name in plexus plexus-ipam; do  # plexus-ipam: the IPAM plugin for other plugins, the same binary
    ln -sfn "$PREFIX/plexus/plexus" "$CNI_BIN/$name.tmp" && mv -T "$CNI_BIN/$name.tmp" "$CNI_BIN/$name"
done
# Every reference plugin Debian ships (containernetworking-plugins, in $CNI_REF) is linked in: containerd
# and plexusctl run loopback from the CNI bin dir, chained configurations use bridge, NetworkAttachmentDefinitions
# name macvlan, ipvlan, host-device, tuning, firewall, portmap..., and a delegate given its address by Plexus
# (delegateIPAM: lease) execs the static IPAM plugin. A file (or link, even a dangling one) already there is
# the user's and is kept. Links made here are listed in $PREFIX/installed-links, so that `make demo-clean` and
# `make uninstall` remove exactly those.
for src in "$CNI_REF"/*; do
    p=$(basename "$src")
    if [ -f "$src" ] && [ -x "$src" ] && [ ! -e "$CNI_BIN/$p" ] && [ ! -L "$CNI_BIN/$p" ]; then
        ln -s "$src" "$CNI_BIN/$p" && echo "$CNI_BIN/$p" >>"$PREFIX/installed-links"
    fi
done
for tool in plexus-ipamd plexusctl; do
    ln -sfn "$VENV/bin/$tool" "$ROOT/usr/local/bin/$tool"
done
if [ ! -e "$CNI_CONF/10-plexus.conflist" ]; then
    install -m 0644 packaging/10-plexus.conflist "$CNI_CONF/.10-plexus.conflist.tmp"
    mv "$CNI_CONF/.10-plexus.conflist.tmp" "$CNI_CONF/10-plexus.conflist"   # atomic: runtimes watch this dir
fi
echo "installed: $CNI_BIN/plexus and $CNI_BIN/plexus-ipam -> $PREFIX/plexus/plexus, the reference plugins of $CNI_REF in $CNI_BIN, $ROOT/usr/local/bin/plexus-ipamd, $ROOT/usr/local/bin/plexusctl, $CNI_CONF/10-plexus.conflist"

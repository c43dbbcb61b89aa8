#!/usr/bin/env bash
# Install a built Plexus on this node (make install): the frozen `plexus` CNI plugin into
# /opt/plexus/plexus with /opt/cni/bin/plexus and /opt/cni/bin/plexus-ipam (the IPAM plugin) linked to
# it, the daemon and CLI (from the project's virtualenv) as /usr/local/bin/plexus-ipamd and
# /usr/local/bin/plexusctl, and the conflist into /etc/cni/net.d unless one named 10-plexus.conflist
# is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/opt/plexus}
CNI_BIN=${CNI_BIN:-/opt/cni/bin}
CNI_CONF=${CNI_CONF:-/etc/cni/net.d}
VENV=${VENV:-$PWD/.venv}

[ -x dist/plexus/plexus ] || { echo "dist/plexus/plexus is missing: run make build first" >&2; exit 1; }
install -d -m 0755 "$PREFIX" "$CNI_BIN" "$CNI_CONF" /etc/plexus/objects /var/log/plexus /var/lib/plexus
rm -rf "$PREFIX/plexus.new"
cp -a dist/plexus "$PREFIX/plexus.new"
rm -rf "$PREFIX/plexus.old"
[ -d "$PREFIX/plexus" ] && mv "$PREFIX/plexus" "$PREFIX/plexus.old"
mv "$PREFIX/plexus.new" "$PREFIX/plexus"
rm -rf "$PREFIX/plexus.old"
for name in plexus plexus-ipam; do  # plexus-ipam: the IPAM plugin for other plugins, the same binary
    ln -sfn "$PREFIX/plexus/plexus" "$CNI_BIN/$name.tmp" && mv -T "$CNI_BIN/$name.tmp" "$CNI_BIN/$name"
done
# containerd and plexusctl run loopback from the CNI bin dir; Debian's reference plugins are used
# by chained configurations (bridge + plexus).
# Links made here are listed in $PREFIX/installed-links, so that `make demo-clean` removes exactly those.
for p in loopback bridge host-local; do
    if [ ! -e "$CNI_BIN/$p" ] && [ -x "/usr/lib/cni/$p" ]; then
        ln -s "/usr/lib/cni/$p" "$CNI_BIN/$p" && echo "$CNI_BIN/$p" >>"$PREFIX/installed-links"
    fi
done
for tool in plexus-ipamd plexusctl; do
    ln -sfn "$VENV/bin/$tool" "/usr/local/bin/$tool"
done
if [ ! -e "$CNI_CONF/10-plexus.conflist" ]; then
    install -m 0644 packaging/10-plexus.conflist "$CNI_CONF/.10-plexus.conflist.tmp"
    mv "$CNI_CONF/.10-plexus.conflist.tmp" "$CNI_CONF/10-plexus.conflist"   # atomic: runtimes watch this dir
fi
echo "installed: $CNI_BIN/plexus and $CNI_BIN/plexus-ipam -> $PREFIX/plexus/plexus, /usr/local/bin/plexus-ipamd, /usr/local/bin/plexusctl, $CNI_CONF/10-plexus.conflist"

#!/usr/bin/env bash
# install-cni-client.sh — install the real CNI clients and plugins Plexus is tested against on a fresh Debian 12 (bookworm) host
# using only Debian's apt repositories (no Go module downloads, no GitHub).
#
# Installs:
#   * containernetworking-plugins 1.1.1 (Debian)  -> reference plugins in /usr/lib/cni
#     (bridge, host-local, static, macvlan, ipvlan, vlan, ptp, tuning, portmap, bandwidth,
#      firewall, sbr, vrf, host-device, loopback, dhcp)
#   * cnitool (the CNI project's reference client, libcni 1.1.2, spec <= 1.0.0) built from
#     Debian's Go sources: cnitool/cnitool.go comes from the Debian *source* package
#     golang-github-appc-cni (the -dev binary package omits cnitool/), libcni comes from
#     golang-github-appc-cni-dev under /usr/share/gocode, compiled in GOPATH mode.
#
# Idempotent: re-running skips what is already present (apt is a no-op, the deb-src entry is
# added once, the source is downloaded once, cnitool is rebuilt only when missing or
# FORCE_REBUILD=1).
#
# Env knobs:
#   CNITOOL_DEST  where to put the cnitool binary (default: $PLEXUS_TEST_CACHE/bin/cnitool, cache /var/cache/plexus-test)
#   SRC_DIR       where to unpack the Debian source package (default: $PLEXUS_TEST_CACHE/src)
#   FORCE_REBUILD=1  rebuild cnitool even if present
#   SKIP_APT_UPDATE=1  do not run apt-get update (only if lists are known fresh)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${PLEXUS_TEST_CACHE:-/var/cache/plexus-test}"
CNITOOL_DEST="${CNITOOL_DEST:-$CACHE/bin/cnitool}"
SRC_DIR="${SRC_DIR:-$CACHE/src}"
CNI_SRC_PKG=golang-github-appc-cni
DEB_SRC_FILE=/etc/apt/sources.list.d/debian-src.sources

log() { printf '[install-cni-client] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "must run as root (apt-get install)" >&2
  exit 1
fi
. /etc/os-release
if [ "${VERSION_CODENAME:-}" != bookworm ]; then
  log "WARNING: written for Debian 12 bookworm, this is ${PRETTY_NAME:-unknown}"
fi

export DEBIAN_FRONTEND=noninteractive

# 1. binary packages ---------------------------------------------------------------
PKGS=(containernetworking-plugins golang-go golang-github-appc-cni-dev iproute2 iptables ca-certificates xz-utils)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "${SKIP_APT_UPDATE:-0}" = 1 ] || apt-get update -qq
  log "apt-get install ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "apt packages already installed: ${PKGS[*]}"
fi

# 2. deb-src entry (needed only for `apt-get source`), derived from the machine's own Debian sources -----
if ! apt-cache showsrc "$CNI_SRC_PKG" 2>/dev/null | grep -q "^Package: $CNI_SRC_PKG"; then
  if [ ! -e "$DEB_SRC_FILE" ]; then
    src=/etc/apt/sources.list.d/debian.sources
    [ -f "$src" ] || { log "no $src to derive a deb-src entry from"; exit 1; }
    log "adding deb-src entry $DEB_SRC_FILE (copied from $src)"
    sed -e 's/^Types: deb$/Types: deb-src/' "$src" >"$DEB_SRC_FILE"
  fi
  apt-get update -qq
fi

# 3. Debian source package (for cnitool/cnitool.go) ----------------------------------
mkdir -p "$SRC_DIR"
orig="$(ls "$SRC_DIR"/${CNI_SRC_PKG}_*.orig.tar.* 2>/dev/null | head -n1 || true)"
if [ -z "$orig" ]; then
  log "apt-get source --download-only $CNI_SRC_PKG"
  # the _apt sandbox user cannot write into root-owned dirs; download as root quietly
  (cd "$SRC_DIR" && apt-get source -qq --download-only -o APT::Sandbox::User=root "$CNI_SRC_PKG")
  orig="$(ls "$SRC_DIR"/${CNI_SRC_PKG}_*.orig.tar.* | head -n1)"
fi
CNITOOL_GO="$SRC_DIR/cnitool-src/cnitool/cnitool.go"
if [ ! -f "$CNITOOL_GO" ]; then
  # unpack only upstream cnitool/ from the orig tarball (no dpkg-dev needed; Debian's
  # patches only touch test deps)
  rm -rf "$SRC_DIR/cnitool-src"; mkdir -p "$SRC_DIR/cnitool-src"
  tar -xf "$orig" -C "$SRC_DIR/cnitool-src" --strip-components=1 --wildcards '*/cnitool/*'
fi

# 4. build cnitool in GOPATH mode against /usr/share/gocode (offline) ----------------
if [ ! -x "$CNITOOL_DEST" ] || [ "${FORCE_REBUILD:-0}" = 1 ]; then
  log "building cnitool -> $CNITOOL_DEST"
  mkdir -p "$(dirname "$CNITOOL_DEST")"
  gocache="$(mktemp -d)"
  (cd "$SRC_DIR/cnitool-src/cnitool" && \
    env GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS= GOPROXY=off CGO_ENABLED=0 \
        GOCACHE="$gocache" \
        go build -trimpath -o "$CNITOOL_DEST.tmp" ./cnitool.go)
  rm -rf "$gocache"
  mv -f "$CNITOOL_DEST.tmp" "$CNITOOL_DEST"
else
  log "cnitool already built: $CNITOOL_DEST"
fi

# 5. report ----------------------------------------------------------------------------
log "plugins: $(ls /usr/lib/cni | tr '\n' ' ')"
log "bridge VERSION: $(CNI_COMMAND=VERSION /usr/lib/cni/bridge </dev/null)"
log "libcni (golang-github-appc-cni-dev): $(dpkg-query -W -f='${Version}' golang-github-appc-cni-dev)"
log "cnitool: $CNITOOL_DEST ($(stat -c %s "$CNITOOL_DEST") bytes)"
echo "$CNITOOL_DEST"

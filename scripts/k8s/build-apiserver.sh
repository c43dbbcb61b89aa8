#!/usr/bin/env bash
# scripts/k8s/build-apiserver.sh [CACHE_DIR]
#
# Builds kube-apiserver + kube-controller-manager + kubectl v1.20.2 from Debian 12
# (bookworm)'s `kubernetes` SOURCE package with Debian's own Go 1.19 in GOPATH mode
# (GO111MODULE=off, as upstream's 1.20 build and Debian's dh-golang do), and puts etcd
# from Debian's `etcd-server` .deb (extracted, not installed) next to them.
# Bookworm's is the only Debian `kubernetes` source that still contains the apiserver;
# the newer ones (trixie/sid, +ds) ship kubectl only.
#
# CACHE_DIR: $1, else $PLEXUS_K8S_CACHE, else /var/cache/plexus-test/k8s-apiserver.
# Result (CACHE_DIR/bin, ~167 MB):
#   kube-apiserver  kube-controller-manager  etcd  [kubectl]  BUILD-INFO
#
# Everything comes from Debian's archive through apt, with a private apt config
# under CACHE_DIR/work/apt (the system's /etc/apt is never modified).
#
# Idempotent: if BUILD-INFO names this RECIPE_ID and the binaries exist, it exits at
# once. Otherwise it builds from scratch in CACHE_DIR/work (~1.7 GB at peak) and deletes
# that afterwards. Cache CACHE_DIR/bin in CI keyed on RECIPE_ID.
#
# Environment knobs:
#   K8S_BUILD_KUBECTL=0   don't build kubectl from the same tree (default 1)
#   K8S_KEEP_WORK=1       keep CACHE_DIR/work (sources, go build cache) afterwards
#   K8S_SKIP_APT_INSTALL=1 don't apt-get install build deps (they must be present)
#   K8S_DEBIAN_MIRROR / K8S_DEBIAN_SECURITY_MIRROR  [default: the URIs of this machine's
#                         own Debian apt sources], e.g. Debian's archive once bookworm is archived
#
# Needs root only for `apt-get install` of the build deps (golang-1.19-go dpkg-dev
# openssl curl ca-certificates), and only if they are missing.
set -euo pipefail

CACHE_DIR=${1:-${PLEXUS_K8S_CACHE:-/var/cache/plexus-test/k8s-apiserver}}
BUILD_KUBECTL=${K8S_BUILD_KUBECTL:-1}
KEEP_WORK=${K8S_KEEP_WORK:-0}

# Bump when the recipe changes; a mismatch forces a rebuild. build-node.sh reuses
# a cache only if its CP_RECIPE_ID equals this.
RECIPE_ID="k8s-v1.20.2+debian-bookworm/go1.19-gopath/reflect2-debian/providerless/r1"
K8S_VERSION=v1.20.2
K8S_GIT_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56   # upstream v1.20.2 (from component-base/version/base.go in the tarball)
GOROOT_DEB=/usr/lib/go-1.19

BIN_DIR="$CACHE_DIR/bin"
WORK="$CACHE_DIR/work"

log() { printf '[build-apiserver %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

wanted_bins() {
  echo kube-apiserver kube-controller-manager etcd
  [[ "$BUILD_KUBECTL" == 1 ]] && echo kubectl
  return 0
}

already_built() {
  [[ -f "$BIN_DIR/BUILD-INFO" ]] || return 1
  grep -qxF "recipe: $RECIPE_ID" "$BIN_DIR/BUILD-INFO" || return 1
  local b
  for b in $(wanted_bins); do [[ -x "$BIN_DIR/$b" ]] || return 1; done
  return 0
}

# ---- fast path (no lock, no apt, nothing) -----------------------------------
if already_built; then
  log "already built in $BIN_DIR ($(sed -n 's/^kubernetes: //p' "$BIN_DIR/BUILD-INFO")); nothing to do"
  exit 0
fi

mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/.build.lock"
flock 9   # serialize concurrent builds into the same cache
if already_built; then log "built by a concurrent run; nothing to do"; exit 0; fi

T0=$(date +%s)
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

# ---- 1. build dependencies from the system's apt sources --------------------
BUILD_DEPS=(golang-1.19-go dpkg-dev openssl curl ca-certificates)
missing=()
for p in "${BUILD_DEPS[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if ((${#missing[@]})); then
  [[ "${K8S_SKIP_APT_INSTALL:-0}" == 1 ]] && die "missing packages: ${missing[*]}"
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[[ -x "$GOROOT_DEB/bin/go" ]] || die "$GOROOT_DEB/bin/go not found (package golang-1.19-go)"

avail_kb=$(df -Pk "$CACHE_DIR" | awk 'NR==2{print $4}')
((avail_kb > 3*1024*1024)) || die "need ~3 GiB free under $CACHE_DIR (have $((avail_kb/1024)) MiB)"

# ---- 2. private apt config: deb + deb-src for bookworm (system /etc/apt untouched)
rm -rf "$WORK"
APT_DIR="$WORK/apt"
mkdir -p "$APT_DIR"/{lists/partial,archives/partial,parts,cache} "$WORK/dl"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -f "$KEYRING" ]] || die "$KEYRING missing (package debian-archive-keyring)"
# The archive URIs come from the machine's own apt configuration (deb822 or one-line format).
apt_uri() {  # $1: a suite to look for, e.g. "bookworm" or "bookworm-security"
  local want=$1
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    awk -v want="$want" 'BEGIN{RS=""} /Types:[^\n]*deb/ { u=""; ok=0
        n=split($0, L, "\n"); for (i=1;i<=n;i++) { if (L[i] ~ /^URIs:/) { split(L[i], a, " "); u=a[2] }
        if (L[i] ~ /^Suites:/) { m=split(L[i], s, " "); for (j=2;j<=m;j++) if (s[j]==want) ok=1 } }
        if (ok && u!="") { print u; exit } }' /etc/apt/sources.list.d/*.sources
  fi
  if [[ -f /etc/apt/sources.list ]]; then
    awk -v want="$want" '$1=="deb" && $0 !~ /^#/ { for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) { if ($(i+1)==want) { print $i; exit } } }' /etc/apt/sources.list
  fi
  return 0
}
MIRROR=${K8S_DEBIAN_MIRROR:-$(apt_uri bookworm | head -n1)}
SEC_MIRROR=${K8S_DEBIAN_SECURITY_MIRROR:-$(apt_uri bookworm-security | head -n1)}
[[ -n "$MIRROR" && -n "$SEC_MIRROR" ]] || die "cannot find this machine's Debian bookworm apt URIs; set K8S_DEBIAN_MIRROR and K8S_DEBIAN_SECURITY_MIRROR"
cat >"$APT_DIR/sources.list" <<EOF
deb     [signed-by=$KEYRING] $MIRROR bookworm main
deb-src [signed-by=$KEYRING] $MIRROR bookworm main
deb     [signed-by=$KEYRING] $MIRROR bookworm-updates main
deb-src [signed-by=$KEYRING] $MIRROR bookworm-updates main
deb     [signed-by=$KEYRING] $SEC_MIRROR bookworm-security main
deb-src [signed-by=$KEYRING] $SEC_MIRROR bookworm-security main
EOF
APT_OPTS=(
  -o "Dir::Etc::sourcelist=$APT_DIR/sources.list"
  -o "Dir::Etc::sourceparts=$APT_DIR/parts"
  -o "Dir::State::Lists=$APT_DIR/lists"
  -o "Dir::Cache=$APT_DIR/cache"
  -o "Dir::Cache::Archives=$APT_DIR/archives"
  -o "APT::Sandbox::User=root"
  -o "Acquire::Languages=none"
  -o "APT::Architecture=amd64"
)
[[ "$(dpkg --print-architecture)" == amd64 ]] || die "only amd64 is supported by this recipe"
log "apt-get update (private config in $APT_DIR)"
apt-get "${APT_OPTS[@]}" -qq update

src_version() { apt-cache "${APT_OPTS[@]}" showsrc "$1" | sed -n 's/^Version: //p' | sort -V | tail -1; }

# ---- 3. fetch sources / debs -------------------------------------------------
K8S_DEB_VER=$(src_version kubernetes)
R2_DEB_VER=$(src_version golang-github-modern-go-reflect2)
log "Debian source versions: kubernetes=$K8S_DEB_VER golang-github-modern-go-reflect2=$R2_DEB_VER"
[[ "$K8S_DEB_VER" == *1.20.2-* ]] || die "unexpected kubernetes source version $K8S_DEB_VER (recipe is for upstream 1.20.2)"
dpkg --compare-versions "${R2_DEB_VER%-*}" ge 1.0.2 || die "reflect2 $R2_DEB_VER < 1.0.2 (crashes with Go >= 1.18)"
(
  cd "$WORK/dl"
  apt-get "${APT_OPTS[@]}" -qq source --download-only "kubernetes=$K8S_DEB_VER" "golang-github-modern-go-reflect2=$R2_DEB_VER" >/dev/null
  apt-get "${APT_OPTS[@]}" -qq download etcd-server >/dev/null
)

# ---- 4. unpack into a GOPATH (dpkg-source verifies checksums and applies Debian's patches)
export GOPATH="$WORK/gopath"
SRC="$GOPATH/src/k8s.io/kubernetes"
mkdir -p "$(dirname "$SRC")"
log "unpacking kubernetes $K8S_DEB_VER -> $SRC"
# (gpgv can't check the uploader signatures without debian-keyring; that is fine:
#  apt already verified the files' checksums against the signed Release/Sources.)
dpkg-source -x "$WORK/dl/kubernetes_${K8S_DEB_VER#*:}.dsc" "$SRC" >"$WORK/dpkg-source.log" 2>&1 \
  || { cat "$WORK/dpkg-source.log" >&2; die "dpkg-source -x kubernetes failed"; }
dpkg-source -x "$WORK/dl/golang-github-modern-go-reflect2_${R2_DEB_VER#*:}.dsc" "$WORK/reflect2" >>"$WORK/dpkg-source.log" 2>&1 \
  || { cat "$WORK/dpkg-source.log" >&2; die "dpkg-source -x reflect2 failed"; }
grep 'applying' "$WORK/dpkg-source.log" | sed 's/^/    /' >&2 || true
# buildDate = date of the Debian changelog entry, so rebuilds are reproducible
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l "$SRC/debian/changelog" -STimestamp)

# ---- 5. FIX: vendored github.com/modern-go/reflect2 v1.0.1 -> Debian's >= 1.0.2
# v1.0.1 hard-codes the runtime's map-iterator layout; Go >= 1.18 changed it and
# jsoniter-based (de)serialisation then corrupts memory / crashes.
R2V="$SRC/vendor/github.com/modern-go/reflect2"
grep -q 'modern-go/reflect2 v1.0.1' "$SRC/vendor/modules.txt" || log "note: vendored reflect2 is not v1.0.1"
rm -rf "$R2V"; mkdir -p "$R2V"
find "$WORK/reflect2" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' -o -name LICENSE \) ! -name '*_test.go' -exec cp {} "$R2V/" \;
[[ -f "$R2V/go_above_118.go" ]] || die "Debian reflect2 source lacks go_above_118.go"
# (vendor/modules.txt and go.mod are ignored in GOPATH mode, so they are left alone.)

# ---- 6. hermetic Go environment: Debian go1.19, GOPATH mode, no network -----
GO="$GOROOT_DEB/bin/go"
export PATH="$GOROOT_DEB/bin:$GOPATH/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export GO111MODULE=off GOFLAGS= GOPROXY=off GOSUMDB=off GOENV=off GOTOOLCHAIN=local
export GOCACHE="$WORK/gocache" CGO_ENABLED=0 GOOS=linux GOARCH=amd64
unset GOROOT GOBIN GOWORK GOEXPERIMENT 2>/dev/null || true
log "$("$GO" version)"
cd "$SRC"

# ---- 7. FIX: generate pkg/generated/openapi/zz_generated.openapi.go ----------
# Not shipped in the tarball (upstream generates it at build time in
# build/root/Makefile.generated_files). Same tool, inputs and flags as that
# Makefile's KUBE target; the API-rule violation report must equal the
# checked-in api/api-rules/violation_exceptions.list, exactly as the Makefile
# enforces.
log "building openapi-gen (vendored k8s.io/kube-openapi)"
"$GO" build -o "$WORK/tools/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
# ALL_K8S_TAG_FILES: *.go outside ./vendor ./_* ./.* with a '// +k8s:' tag in column 0,
# staging/src/X named as vendor/X; minus code-generator and sample-apiserver.
mapfile -t OPENAPI_DIRS < <(
  find -H . -not \( \( -path './_*' -o -path './.*' -o -path ./vendor -o -path ./debian \) -prune \) \
       -type f -name '*.go' -print0 \
    | xargs -0 -r grep -l --color=never '^// *+k8s:' \
    | grep -v -e '^\./staging/src/k8s\.io/code-generator/' -e '^\./staging/src/k8s\.io/sample-apiserver/' \
    | xargs -r grep -l --color=never '+k8s:openapi-gen=' \
    | sed 's|^\./staging/src/|vendor/|; s|^\./||; s|/[^/]*$||' \
    | LC_ALL=C sort -u)
((${#OPENAPI_DIRS[@]} > 50)) || die "found only ${#OPENAPI_DIRS[@]} openapi input dirs"
log "generating openapi for ${#OPENAPI_DIRS[@]} packages"
INPUTS=$(printf 'k8s.io/kubernetes/%s,' "${OPENAPI_DIRS[@]}"); INPUTS=${INPUTS%,}
"$WORK/tools/openapi-gen" --logtostderr --v 0 \
  -i "$INPUTS" \
  -p k8s.io/kubernetes/pkg/generated/openapi \
  -O zz_generated.openapi \
  -o "$GOPATH/src" \
  -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
  -r "$WORK/KUBE_violations.report"
[[ -s pkg/generated/openapi/zz_generated.openapi.go ]] || die "openapi generation produced nothing"
diff -u api/api-rules/violation_exceptions.list "$WORK/KUBE_violations.report" >&2 \
  || die "API rule violation report differs from api/api-rules/violation_exceptions.list (wrong openapi inputs?)"

# ---- 8. build -----------------------------------------------------------------
LDFLAGS="-s -w"
for pkg in k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version k8s.io/kubernetes/vendor/k8s.io/component-base/version; do
  LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=20"
  LDFLAGS+=" -X $pkg.gitCommit=$K8S_GIT_COMMIT -X $pkg.gitTreeState=dirty"
  LDFLAGS+=" -X $pkg.buildDate=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
done
TARGETS=(./cmd/kube-apiserver ./cmd/kube-controller-manager)
[[ "$BUILD_KUBECTL" == 1 ]] && TARGETS+=(./cmd/kubectl)
mkdir -p "$WORK/out"
log "go build ${TARGETS[*]} (tags: providerless; this is the long part)"
TB=$(date +%s)
# providerless: upstream-supported tag that drops the in-tree cloud providers
# (AWS/Azure/GCE/OpenStack/vSphere SDKs): irrelevant here, and a large share of the compile.
"$GO" build -trimpath -tags providerless -ldflags "$LDFLAGS" -o "$WORK/out/" "${TARGETS[@]}"
log "go build took $(( $(date +%s) - TB ))s"

# ---- 9. etcd from Debian's etcd-server .deb (extracted, not installed: no system service)
dpkg-deb -x "$WORK"/dl/etcd-server_*.deb "$WORK/etcd-root"
cp "$WORK/etcd-root/usr/bin/etcd" "$WORK/out/etcd"
ETCD_DEB_VER=$(dpkg-deb -f "$WORK"/dl/etcd-server_*.deb Version)

# ---- 10. install atomically, stamp last --------------------------------------
mkdir -p "$BIN_DIR"
rm -f "$BIN_DIR/BUILD-INFO"
for b in $(wanted_bins); do
  if [[ $b == kubectl ]]; then vflag=(version --client); else vflag=(--version); fi
  "$WORK/out/$b" "${vflag[@]}" >/dev/null 2>&1 || die "$b ${vflag[*]} failed"
  install -m 0755 "$WORK/out/$b" "$BIN_DIR/.$b.tmp" && mv -f "$BIN_DIR/.$b.tmp" "$BIN_DIR/$b"
done
{
  echo "recipe: $RECIPE_ID"
  echo "kubernetes: $K8S_VERSION (Debian source kubernetes $K8S_DEB_VER, Debian patches applied)"
  echo "reflect2: Debian source golang-github-modern-go-reflect2 $R2_DEB_VER (replaces vendored v1.0.1)"
  echo "etcd: Debian etcd-server $ETCD_DEB_VER"
  echo "go: $("$GO" version) GO111MODULE=off CGO_ENABLED=0 -tags providerless -trimpath"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(( $(date +%s) - T0 ))s"
  echo "apiserver --version: $("$BIN_DIR/kube-apiserver" --version)"
  if [[ "$BUILD_KUBECTL" == 1 ]]; then echo "kubectl: $("$BIN_DIR/kubectl" version --client --short 2>/dev/null)"; fi
} >"$BIN_DIR/.BUILD-INFO.tmp"
mv -f "$BIN_DIR/.BUILD-INFO.tmp" "$BIN_DIR/BUILD-INFO"

cd /
if [[ "$KEEP_WORK" != 1 ]]; then
  log "removing work dir $WORK ($(du -sh "$WORK" 2>/dev/null | cut -f1))"
  rm -rf "$WORK"
fi
log "done in $(( $(date +%s) - T0 ))s:"
cat "$BIN_DIR/BUILD-INFO" >&2

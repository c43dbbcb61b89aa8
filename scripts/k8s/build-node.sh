#!/usr/bin/env bash
# scripts/k8s/build-node.sh [BIN_DIR]
#
# Builds everything a real single-node Kubernetes v1.20.2 test cluster (up-node.sh) needs,
# from Debian 12 (bookworm) packages and source packages only:
#
#   apt-get install   containerd (1.6) runc containernetworking-plugins busybox-static
#                     gcc libc6-dev golang-1.19-go dpkg-dev ... (only what is missing)
#   go build          kube-scheduler + kubelet + node-cri (and, unless a valid control-plane
#                     cache from build-apiserver.sh is found, kube-apiserver +
#                     kube-controller-manager + kubectl) from Debian's `kubernetes` SOURCE
#                     package (1.20.2), Go 1.19, GOPATH mode, -tags providerless (same
#                     recipe as build-apiserver.sh)
#   etcd              from Debian's etcd-server .deb (extracted, not installed)
#   images            pause (node-src/pause.c, gcc -static) and busybox (Debian
#                     busybox-static) as OCI image tarballs for `ctr images import`
#
# Output: BIN_DIR ($1, else $PLEXUS_K8S_NODE_CACHE/bin, else /var/cache/plexus-test/k8s-node/bin):
#   kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl etcd pause
#   node-cri (a small CRI client standing in for crictl, which Debian 12 lacks)
#   images/pause.tar images/busybox.tar   BUILD-INFO
# The work dir is BIN_DIR/../work (~1.4 GB at peak, deleted afterwards).
#
# Idempotent: if BUILD-INFO names this recipe and all outputs exist, exits at once.
#
# Environment knobs:
#   K8S_NODE_CP_CACHE [$PLEXUS_K8S_CACHE, else /var/cache/plexus-test/k8s-apiserver]
#        a build-apiserver.sh cache; if its bin/ holds the same recipe's kube-apiserver,
#        kube-controller-manager, kubectl and etcd they are copied instead of rebuilt
#        (set to "" to always build all five binaries here)
#   K8S_NODE_KUBELET_TUNABLES_PATCH [1]  patch kubelet to only WARN about kernel.panic,
#        kernel.panic_on_oops, vm.overcommit_memory, ... instead of rewriting these global
#        sysctls of the machine (see FIX 2 below). 0 = build upstream behaviour.
#   K8S_KEEP_WORK=1            keep BIN_DIR/../work (sources, go cache) afterwards
#   K8S_SKIP_APT_INSTALL=1     do not apt-get install anything (everything must be present)
#   K8S_DEBIAN_MIRROR / K8S_DEBIAN_SECURITY_MIRROR  as in build-apiserver.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
BIN_DIR=${1:-${PLEXUS_K8S_NODE_CACHE:-/var/cache/plexus-test/k8s-node}/bin}
mkdir -p "$BIN_DIR"
BIN_DIR=$(cd "$BIN_DIR" && pwd -P)
WORK="$(dirname "$BIN_DIR")/work"
CP_CACHE=${K8S_NODE_CP_CACHE-${PLEXUS_K8S_CACHE:-/var/cache/plexus-test/k8s-apiserver}}
TUNABLES_PATCH=${K8S_NODE_KUBELET_TUNABLES_PATCH:-1}
KEEP_WORK=${K8S_KEEP_WORK:-0}

# The control-plane recipe whose binaries may be reused from CP_CACHE: must equal
# build-apiserver.sh's RECIPE_ID.
CP_RECIPE_ID="k8s-v1.20.2+debian-bookworm/go1.19-gopath/reflect2-debian/providerless/r1"
RECIPE_ID="k8s-node-v1.20.2+debian-bookworm/go1.19-gopath/reflect2-debian/providerless/tunables-patch=$TUNABLES_PATCH/images-r2"
K8S_VERSION=v1.20.2
K8S_GIT_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56
GOROOT_DEB=/usr/lib/go-1.19
PAUSE_IMAGE=localhost/k8s-node/pause:local
BUSYBOX_IMAGE=localhost/k8s-node/busybox:local

ALL_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl etcd node-cri pause)
OUTPUTS=("${ALL_BINS[@]}" images/pause.tar images/busybox.tar)

log() { printf '[build-node %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

already_built() {
  [[ -f "$BIN_DIR/BUILD-INFO" ]] && grep -qxF "recipe: $RECIPE_ID" "$BIN_DIR/BUILD-INFO" || return 1
  local b
  for b in "${OUTPUTS[@]}"; do [[ -s "$BIN_DIR/$b" ]] || return 1; done
  return 0
}
if already_built; then
  log "already built in $BIN_DIR; nothing to do"
  exit 0
fi
exec 9>"$BIN_DIR/.build.lock"
flock 9
if already_built; then log "built by a concurrent run; nothing to do"; exit 0; fi

[[ $(id -u) == 0 ]] || die "run as root (apt-get install)"
[[ "$(dpkg --print-architecture)" == amd64 ]] || die "only amd64 is supported by this recipe"
T0=$(date +%s.%N)
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
el() { printf '%.1f' "$(echo "$(date +%s.%N) - $1" | bc)"; }
command -v bc >/dev/null || el() { echo $(( $(date +%s) - ${1%.*} )); }

# ---- 1. Debian packages ----------------------------------------------------------
# build: Go 1.19, dpkg-source, static libc for pause; runtime: containerd/runc/CNI plugins,
# busybox-static (image content), iproute2/util-linux (ip, nsenter), openssl/curl (PKI, probes).
PKGS=(golang-1.19-go dpkg-dev openssl curl ca-certificates gcc libc6-dev busybox-static
      containerd runc containernetworking-plugins iproute2 util-linux procps)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if ((${#missing[@]})); then
  [[ "${K8S_SKIP_APT_INSTALL:-0}" == 1 ]] && die "missing packages: ${missing[*]}"
  log "apt-get install ${missing[*]}"
  TA=$(date +%s.%N)
  apt-get update -qq
  # containerd's Debian package ships only a systemd unit, so nothing is started here.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  log "apt-get install took $(el "$TA")s"
fi
[[ -x "$GOROOT_DEB/bin/go" ]] || die "$GOROOT_DEB/bin/go not found (package golang-1.19-go)"

# ---- 2. which Go binaries must be compiled here? ------------------------------------
TARGETS=(./cmd/kube-scheduler ./cmd/kubelet ./cmd/node-cri)
REUSE_CP=0
if [[ -n "$CP_CACHE" && -f "$CP_CACHE/bin/BUILD-INFO" ]] && grep -qxF "recipe: $CP_RECIPE_ID" "$CP_CACHE/bin/BUILD-INFO" \
   && [[ -x "$CP_CACHE/bin/kube-apiserver" && -x "$CP_CACHE/bin/kube-controller-manager" && -x "$CP_CACHE/bin/kubectl" && -x "$CP_CACHE/bin/etcd" ]]; then
  REUSE_CP=1
  log "reusing kube-apiserver, kube-controller-manager, kubectl, etcd from $CP_CACHE/bin (recipe $CP_RECIPE_ID)"
else
  TARGETS+=(./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kubectl)
  log "no reusable control-plane cache${CP_CACHE:+ at $CP_CACHE}; building all five binaries"
fi

avail_kb=$(df -Pk "$(dirname "$BIN_DIR")" | awk 'NR==2{print $4}')
((avail_kb > 3*1024*1024)) || die "need ~3 GiB free under $(dirname "$BIN_DIR")"

# ---- 3. private apt config: deb + deb-src for bookworm (system /etc/apt untouched) ----
rm -rf "$WORK"
APT_DIR="$WORK/apt"
mkdir -p "$APT_DIR"/{lists/partial,archives/partial,parts,cache} "$WORK/dl" "$WORK/out"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -f "$KEYRING" ]] || die "$KEYRING missing (package debian-archive-keyring)"
apt_uri() {  # the URI of this machine's own apt source for suite $1 (deb822 or one-line format)
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
  -o "Dir::Etc::sourcelist=$APT_DIR/sources.list" -o "Dir::Etc::sourceparts=$APT_DIR/parts"
  -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache"
  -o "Dir::Cache::Archives=$APT_DIR/archives" -o "APT::Sandbox::User=root"
  -o "Acquire::Languages=none" -o "APT::Architecture=amd64"
)
log "apt-get update (private config in $APT_DIR)"
apt-get "${APT_OPTS[@]}" -qq update
src_version() { apt-cache "${APT_OPTS[@]}" showsrc "$1" | sed -n 's/^Version: //p' | sort -V | tail -1; }

# ---- 4. sources ------------------------------------------------------------------
K8S_DEB_VER=$(src_version kubernetes)
R2_DEB_VER=$(src_version golang-github-modern-go-reflect2)
log "Debian source versions: kubernetes=$K8S_DEB_VER golang-github-modern-go-reflect2=$R2_DEB_VER"
[[ "$K8S_DEB_VER" == *1.20.2-* ]] || die "unexpected kubernetes source version $K8S_DEB_VER (recipe is for upstream 1.20.2)"
dpkg --compare-versions "${R2_DEB_VER%-*}" ge 1.0.2 || die "reflect2 $R2_DEB_VER < 1.0.2 (crashes with Go >= 1.18)"
(
  cd "$WORK/dl"
  apt-get "${APT_OPTS[@]}" -qq source --download-only "kubernetes=$K8S_DEB_VER" "golang-github-modern-go-reflect2=$R2_DEB_VER" >/dev/null
  ((REUSE_CP)) || apt-get "${APT_OPTS[@]}" -qq download etcd-server >/dev/null
)
export GOPATH="$WORK/gopath"
SRC="$GOPATH/src/k8s.io/kubernetes"
mkdir -p "$(dirname "$SRC")"
log "unpacking kubernetes $K8S_DEB_VER -> $SRC"
dpkg-source -x "$WORK/dl/kubernetes_${K8S_DEB_VER#*:}.dsc" "$SRC" >"$WORK/dpkg-source.log" 2>&1 \
  || { cat "$WORK/dpkg-source.log" >&2; die "dpkg-source -x kubernetes failed"; }
dpkg-source -x "$WORK/dl/golang-github-modern-go-reflect2_${R2_DEB_VER#*:}.dsc" "$WORK/reflect2" >>"$WORK/dpkg-source.log" 2>&1 \
  || { cat "$WORK/dpkg-source.log" >&2; die "dpkg-source -x reflect2 failed"; }
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l "$SRC/debian/changelog" -STimestamp)

# FIX 1 (as build-apiserver.sh): vendored reflect2 v1.0.1 -> Debian's >= 1.0.2 (Go >= 1.18 map iterator layout)
R2V="$SRC/vendor/github.com/modern-go/reflect2"
rm -rf "$R2V"; mkdir -p "$R2V"
find "$WORK/reflect2" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' -o -name LICENSE \) ! -name '*_test.go' -exec cp {} "$R2V/" \;
[[ -f "$R2V/go_above_118.go" ]] || die "Debian reflect2 source lacks go_above_118.go"

# FIX 2 (node only, optional): kubelet must not rewrite global kernel sysctls of this machine.
# Upstream 1.20 kubelet (ProtectKernelDefaults=false) writes vm.overcommit_memory=1, kernel.panic=10,
# kernel.panic_on_oops=1, vm.panic_on_oom=0, kernel.keys.root_max{keys,bytes}; with
# ProtectKernelDefaults=true it refuses to start instead. Patched: only log (KernelTunableWarn).
if [[ "$TUNABLES_PATCH" == 1 ]]; then
  CMF="$SRC/pkg/kubelet/cm/container_manager_linux.go"
  [[ $(grep -c '^	b := KernelTunableModify$' "$CMF") == 1 ]] || die "kubelet tunables patch: anchor not found in $CMF"
  sed -i 's/^	b := KernelTunableModify$/	b := KernelTunableWarn \/\/ k8s-node: do not modify global sysctls (was KernelTunableModify)/' "$CMF"
  grep -q 'b := KernelTunableWarn // k8s-node' "$CMF" || die "kubelet tunables patch failed"
  log "patched kubelet: kernel tunables are checked (warn), not modified"
fi

# node-cri: our minimal CRI client (Debian 12 has no cri-tools), built against the same vendor/ tree
mkdir -p "$SRC/cmd/node-cri"
cp "$HERE/node-src/node-cri/main.go" "$SRC/cmd/node-cri/main.go"

# ---- 5. hermetic Go environment: Debian go1.19, GOPATH mode, no network --------------
GO="$GOROOT_DEB/bin/go"
export PATH="$GOROOT_DEB/bin:$GOPATH/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export GO111MODULE=off GOFLAGS= GOPROXY=off GOSUMDB=off GOENV=off GOTOOLCHAIN=local
export GOCACHE="$WORK/gocache" CGO_ENABLED=0 GOOS=linux GOARCH=amd64
unset GOROOT GOBIN GOWORK GOEXPERIMENT 2>/dev/null || true
log "$("$GO" version)"
cd "$SRC"

# FIX 3 (as build-apiserver.sh): generate pkg/generated/openapi/zz_generated.openapi.go.
# Only kube-apiserver imports it (kubelet / kube-scheduler do not), so skip it when the
# control plane comes from the cache.
if ! ((REUSE_CP)); then
  TG=$(date +%s.%N)
  log "building openapi-gen (vendored k8s.io/kube-openapi)"
  "$GO" build -o "$WORK/tools/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
  mapfile -t OPENAPI_DIRS < <(
    find -H . -not \( \( -path './_*' -o -path './.*' -o -path ./vendor -o -path ./debian \) -prune \) \
         -type f -name '*.go' -print0 \
      | xargs -0 -r grep -l --color=never '^// *+k8s:' \
      | grep -v -e '^\./staging/src/k8s\.io/code-generator/' -e '^\./staging/src/k8s\.io/sample-apiserver/' \
      | xargs -r grep -l --color=never '+k8s:openapi-gen=' \
      | sed 's|^\./staging/src/|vendor/|; s|^\./||; s|/[^/]*$||' \
      | LC_ALL=C sort -u)
  ((${#OPENAPI_DIRS[@]} > 50)) || die "found only ${#OPENAPI_DIRS[@]} openapi input dirs"
  INPUTS=$(printf 'k8s.io/kubernetes/%s,' "${OPENAPI_DIRS[@]}"); INPUTS=${INPUTS%,}
  "$WORK/tools/openapi-gen" --logtostderr --v 0 -i "$INPUTS" \
    -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi -o "$GOPATH/src" \
    -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$WORK/KUBE_violations.report"
  [[ -s pkg/generated/openapi/zz_generated.openapi.go ]] || die "openapi generation produced nothing"
  diff -u api/api-rules/violation_exceptions.list "$WORK/KUBE_violations.report" >&2 \
    || die "API rule violation report differs from api/api-rules/violation_exceptions.list"
  log "openapi generation took $(el "$TG")s"
fi

# ---- 6. go build -----------------------------------------------------------------
LDFLAGS="-s -w"
for pkg in k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version k8s.io/kubernetes/vendor/k8s.io/component-base/version; do
  LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=20"
  LDFLAGS+=" -X $pkg.gitCommit=$K8S_GIT_COMMIT -X $pkg.gitTreeState=dirty"
  LDFLAGS+=" -X $pkg.buildDate=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
done
log "go build ${TARGETS[*]} (tags: providerless; CGO_ENABLED=0; this is the long part)"
TB=$(date +%s.%N)
"$GO" build -trimpath -tags providerless -ldflags "$LDFLAGS" -o "$WORK/out/" "${TARGETS[@]}"
GO_BUILD_S=$(el "$TB")
log "go build took ${GO_BUILD_S}s"

if ((REUSE_CP)); then
  for b in kube-apiserver kube-controller-manager kubectl etcd; do cp "$CP_CACHE/bin/$b" "$WORK/out/$b"; done
  ETCD_DEB_VER=$(sed -n 's/^etcd: Debian etcd-server //p' "$CP_CACHE/bin/BUILD-INFO")
  CP_FROM="copied from $CP_CACHE/bin (recipe $CP_RECIPE_ID)"
else
  dpkg-deb -x "$WORK"/dl/etcd-server_*.deb "$WORK/etcd-root"
  cp "$WORK/etcd-root/usr/bin/etcd" "$WORK/out/etcd"
  ETCD_DEB_VER=$(dpkg-deb -f "$WORK"/dl/etcd-server_*.deb Version)
  CP_FROM="built here"
fi

# ---- 7. pause binary and the two images ---------------------------------------------
TI=$(date +%s.%N)
gcc -Os -static -Wall -Werror -o "$WORK/out/pause" "$HERE/node-src/pause.c"
strip "$WORK/out/pause"
"$WORK/out/pause" --version >/dev/null || die "pause --version failed"
file_is_static() { ! LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'; }
file_is_static "$WORK/out/pause" || die "pause is not static"
file_is_static /bin/busybox || die "/bin/busybox is not static (package busybox-static)"

# mk_image NAME:TAG ROOTFS OUT.tar CONFIG_JSON_FRAGMENT
# Writes an OCI image layout (oci-layout, index.json, blobs/sha256/*) plus a docker-archive
# manifest.json into one tar. One uncompressed, reproducible layer (sorted, mtime=SOURCE_DATE_EPOCH, uid/gid 0).
# containerd (`ctr images import`) takes the name from the io.containerd.image.name annotation.
mk_image() {
  local ref=$1 rootfs=$2 out=$3 cfgfrag=$4 d
  d=$(mktemp -d "$WORK/img.XXXXXX")
  mkdir -p "$d/blobs/sha256"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" --format=gnu \
      -C "$rootfs" -cf "$d/layer.tar" .
  local ldig lsize cdig csize mdig msize created
  ldig=$(sha256sum "$d/layer.tar" | cut -d' ' -f1); lsize=$(stat -c %s "$d/layer.tar")
  mv "$d/layer.tar" "$d/blobs/sha256/$ldig"
  created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
  printf '{"architecture":"amd64","os":"linux","created":"%s","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"%s","created_by":"k8s-node build-node.sh"}]}' \
    "$created" "$cfgfrag" "$ldig" "$created" >"$d/config.json"
  cdig=$(sha256sum "$d/config.json" | cut -d' ' -f1); csize=$(stat -c %s "$d/config.json")
  mv "$d/config.json" "$d/blobs/sha256/$cdig"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$cdig" "$csize" "$ldig" "$lsize" >"$d/manifest"
  mdig=$(sha256sum "$d/manifest" | cut -d' ' -f1); msize=$(stat -c %s "$d/manifest")
  mv "$d/manifest" "$d/blobs/sha256/$mdig"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$d/oci-layout"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$mdig" "$msize" "$ref" "${ref##*:}" >"$d/index.json"
  printf '[{"Config":"blobs/sha256/%s","RepoTags":["%s"],"Layers":["blobs/sha256/%s"]}]' "$cdig" "$ref" "$ldig" >"$d/manifest.json"
  mkdir -p "$(dirname "$out")"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" --format=gnu \
      -C "$d" -cf "$out" oci-layout index.json manifest.json blobs
  rm -rf "$d"
  log "image $ref -> $out (manifest sha256:${mdig:0:12}, layer $((lsize/1024)) KiB)"
}
# pause rootfs: just /pause; runs as 65535:65535 like upstream's pause image
R="$WORK/rootfs-pause"; mkdir -p "$R"; install -m 0755 "$WORK/out/pause" "$R/pause"
mk_image "$PAUSE_IMAGE" "$R" "$WORK/out/images/pause.tar" '{"User":"65535:65535","Entrypoint":["/pause"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}'
# busybox rootfs: Debian's static busybox plus one symlink per applet
R="$WORK/rootfs-busybox"; mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,proc,sys,dev,var/run}
chmod 1777 "$R/tmp"; chmod 0700 "$R/root"
install -m 0755 /bin/busybox "$R/bin/busybox"
/bin/busybox --list-full | while read -r a; do [[ "$a" == bin/busybox ]] || [[ -e "$R/$a" ]] || ln -s /bin/busybox "$R/$a"; done
[[ -L "$R/bin/sh" && -L "$R/bin/sleep" && -L "$R/bin/ping" && -L "$R/sbin/ip" ]] || die "busybox rootfs lacks sh/sleep/ping/ip"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$R/etc/group"
BB_VER=$(dpkg-query -W -f='${Version}' busybox-static)
mk_image "$BUSYBOX_IMAGE" "$R" "$WORK/out/images/busybox.tar" '{"Cmd":["sh"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Labels":{"org.debian.busybox-static.version":"'"$BB_VER"'"}}'
log "pause + images took $(el "$TI")s"

# ---- 8. install atomically, stamp last ------------------------------------------------
rm -f "$BIN_DIR/BUILD-INFO"
mkdir -p "$BIN_DIR/images"
for b in "${ALL_BINS[@]}"; do
  case $b in
    kubectl) "$WORK/out/$b" version --client >/dev/null 2>&1 || die "$b version --client failed" ;;
    node-cri) { "$WORK/out/$b" 2>&1 || true; } | grep -q '^node-cri: usage' || die "$b does not run" ;;
    *) "$WORK/out/$b" --version >/dev/null 2>&1 || die "$b --version failed" ;;
  esac
  install -m 0755 "$WORK/out/$b" "$BIN_DIR/.$b.tmp" && mv -f "$BIN_DIR/.$b.tmp" "$BIN_DIR/$b"
done
for i in pause busybox; do
  install -m 0644 "$WORK/out/images/$i.tar" "$BIN_DIR/images/.$i.tmp" && mv -f "$BIN_DIR/images/.$i.tmp" "$BIN_DIR/images/$i.tar"
done
{
  echo "recipe: $RECIPE_ID"
  echo "kubernetes: $K8S_VERSION (Debian source kubernetes $K8S_DEB_VER, Debian patches applied)"
  echo "compiled here: ${TARGETS[*]} (go build ${GO_BUILD_S}s)"
  echo "kube-apiserver/kube-controller-manager/kubectl/etcd: $CP_FROM"
  echo "reflect2: Debian source golang-github-modern-go-reflect2 $R2_DEB_VER (replaces vendored v1.0.1)"
  echo "kubelet kernel-tunables patch: $TUNABLES_PATCH"
  echo "etcd: Debian etcd-server $ETCD_DEB_VER"
  echo "go: $("$GO" version) GO111MODULE=off CGO_ENABLED=0 -tags providerless -trimpath"
  echo "containerd: $(dpkg-query -W -f='${Version}' containerd)  runc: $(dpkg-query -W -f='${Version}' runc)  containernetworking-plugins: $(dpkg-query -W -f='${Version}' containernetworking-plugins)"
  echo "images: $PAUSE_IMAGE (pause.c, gcc $(gcc -dumpfullversion) -static, libc6-dev $(dpkg-query -W -f='${Version}' libc6-dev)); $BUSYBOX_IMAGE (busybox-static $BB_VER)"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(el "$T0")s"
} >"$BIN_DIR/.BUILD-INFO.tmp"
mv -f "$BIN_DIR/.BUILD-INFO.tmp" "$BIN_DIR/BUILD-INFO"

cd /
if [[ "$KEEP_WORK" != 1 ]]; then
  log "removing work dir $WORK ($(du -sh "$WORK" 2>/dev/null | cut -f1))"
  rm -rf "$WORK"
fi
log "done in $(el "$T0")s:"
cat "$BIN_DIR/BUILD-INFO" >&2

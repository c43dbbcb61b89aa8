#!/usr/bin/env bash
# scripts/k8s/up-node.sh [DATA_DIR] [BIN_DIR]
#
# Starts a real single-node Kubernetes v1.20.2 (binaries from build-node.sh) inside a
# private network namespace, so that no traffic and no listener ever touches the
# host's own network:
#
#   netns K8S_NODE_NETNS (default "k8s-node", /run/netns/k8s-node):
#     lo 127.0.0.1        etcd :12379/:12380, kube-apiserver :16443 (TLS),
#                         kubelet healthz :10248, containerd CRI streaming :random
#     k8snode0 198.18.0.2/24 (veth, peer k8snode1 also in the netns): the node IP
#                         (kubelet rejects a loopback node IP); kubelet :10250 listens here
#     cni0 198.18.128.1/20  created by the CNI bridge plugin (default conflist) for the pods
#   etcd -> kube-apiserver -> kube-controller-manager (all default controllers) +
#   kube-scheduler -> containerd (CRI, runc) -> kubelet
#
# Only the network namespace differs from the host: every daemon runs in the host's
# mount/pid namespaces (started with `nsenter --net=...`, not `ip netns exec`, which
# would also give each of them a private mount namespace and break kubelet<->containerd
# volume sharing). containerd runs the CNI plugins, so they run in the node netns too and
# reach the apiserver at https://127.0.0.1:16443.
#
# DATA_DIR: $1, else /var/tmp/plexus-k8s-node. It gets pki/, *.kubeconfig, etcd/, containerd/,
# kubelet/, logs/, run/*.pid, cni-log/, env, and bin/{kubectl,node-exec,node-cri,ctr}
# wrappers that enter the netns:  DATA_DIR/bin/kubectl get nodes
# BIN_DIR: $2, else $PLEXUS_K8S_NODE_CACHE/bin, else /var/cache/plexus-test/k8s-node/bin.
# Re-running up-node.sh while up is a no-op (re-checks readiness). Stop: down-node.sh.
#
# Host-level things it installs or causes (kept by down-node.sh, removed by down-node.sh --purge;
# all listed in DATA_DIR/installed-files, and only if absent before the first up):
#   CNI_BIN_DIR  (/opt/cni/bin):   Debian's CNI plugins (from /usr/lib/cni) that are missing
#                                  there, plus k8s-node-logwrap and logwrap-{bridge,host-local}
#   CNI_CONF_DIR (/etc/cni/net.d): 10-k8s-node.conflist (containerd uses only the FIRST file
#                                  there, in lexical order)
#   /var/lib/cni/{results,networks/<conflist name>}  libcni's cache, host-local's state
#
# Environment knobs [defaults]:
#   K8S_NODE_CNI_CONFLIST [generated]  a conflist file of yours (e.g. Plexus's) to install as
#        10-k8s-node.conflist instead of the generated bridge + host-local one. Its plugins
#        must be in CNI_BIN_DIR. To change it while the node runs, write a temp file and mv it
#        over CNI_CONF_DIR/10-k8s-node.conflist (containerd reloads it; DEL uses the new one).
#   K8S_NODE_CNI_LOGWRAP [1]           generated conflist uses logwrap-bridge (logs every call
#                                      to DATA_DIR/cni-log/)
#   K8S_NODE_NETNS [k8s-node]         K8S_NODE_NAME [k8s-node-1]
#   K8S_NODE_IP [198.18.0.2]          (a /24 on veth k8snode0 inside the netns)
#   K8S_NODE_POD_CIDR [198.18.128.0/20]   K8S_NODE_SERVICE_CIDR [198.19.0.0/24]
#   K8S_NODE_CNI_BIN_DIR [/opt/cni/bin]   K8S_NODE_CNI_CONF_DIR [/etc/cni/net.d]
#   K8S_NODE_SNAPSHOTTER [overlayfs]   K8S_NODE_CGROUPS_PER_QOS [1] (0: no /kubepods hierarchy)
#   K8S_NODE_DISABLE_ADMISSION []      e.g. ServiceAccount
#   K8S_NODE_READY_TIMEOUT [120]
#   K8S_NODE_APISERVER_PORT [16443]  K8S_NODE_ETCD_PORT [12379]  K8S_NODE_ETCD_PEER_PORT [12380]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
mkdir -p "${1:-/var/tmp/plexus-k8s-node}"; DATA=$(cd "${1:-/var/tmp/plexus-k8s-node}" && pwd -P)
BIN_ARG=${2:-${PLEXUS_K8S_NODE_CACHE:-/var/cache/plexus-test/k8s-node}/bin}
[[ -d "$BIN_ARG" ]] || { echo "[up-node] $BIN_ARG missing: run scripts/k8s/build-node.sh first" >&2; exit 1; }
BIN=$(cd "$BIN_ARG" && pwd -P)

NETNS=${K8S_NODE_NETNS:-k8s-node}
NODE_NAME=${K8S_NODE_NAME:-k8s-node-1}
NODE_IP=${K8S_NODE_IP:-198.18.0.2}
POD_CIDR=${K8S_NODE_POD_CIDR:-198.18.128.0/20}
SVC_CIDR=${K8S_NODE_SERVICE_CIDR:-198.19.0.0/24}
CNI_BIN_DIR=${K8S_NODE_CNI_BIN_DIR:-/opt/cni/bin}
CNI_CONF_DIR=${K8S_NODE_CNI_CONF_DIR:-/etc/cni/net.d}
CNI_CONFLIST_SRC=${K8S_NODE_CNI_CONFLIST:-}
CNI_LOGWRAP=${K8S_NODE_CNI_LOGWRAP:-1}
SNAPSHOTTER=${K8S_NODE_SNAPSHOTTER:-overlayfs}
CGROUPS_PER_QOS=${K8S_NODE_CGROUPS_PER_QOS:-1}
DISABLE_ADMISSION=${K8S_NODE_DISABLE_ADMISSION:-}
TIMEOUT=${K8S_NODE_READY_TIMEOUT:-120}
AP=${K8S_NODE_APISERVER_PORT:-16443}
EP=${K8S_NODE_ETCD_PORT:-12379}
PP=${K8S_NODE_ETCD_PEER_PORT:-12380}
HOST=127.0.0.1
NETNS_PATH=/run/netns/$NETNS
NODE_LINK=k8snode0
NODE_PEER=k8snode1
CONFLIST_NAME=10-k8s-node.conflist
CNI_NET_NAME=k8s-node-pods
PAUSE_IMAGE=localhost/k8s-node/pause:local
BUSYBOX_IMAGE=localhost/k8s-node/busybox:local
SYS_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

T0=$(date +%s.%N)
el() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
log() { printf '[up-node %(%H:%M:%S)T +%ss] %s\n' -1 "$(el "$T0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root"
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl etcd node-cri; do
  [[ -x "$BIN/$b" ]] || die "$BIN/$b missing: run scripts/k8s/build-node.sh first"
done
for f in images/pause.tar images/busybox.tar; do [[ -s "$BIN/$f" ]] || die "$BIN/$f missing: run scripts/k8s/build-node.sh first"; done
for t in openssl curl nsenter ip containerd ctr runc; do command -v "$t" >/dev/null || die "$t not found (run build-node.sh: it installs the Debian packages)"; done
[[ -d /usr/lib/cni ]] || die "/usr/lib/cni missing (apt-get install containernetworking-plugins)"

PKI="$DATA/pki"; LOGS="$DATA/logs"; RUN="$DATA/run"
mkdir -p "$PKI" "$LOGS" "$RUN" "$DATA/etcd" "$DATA/bin" "$DATA/cni-log"
chmod 700 "$PKI" "$DATA/etcd"
touch "$DATA/.k8s-node-data"   # marker checked by down-node.sh --purge
exec 9>"$RUN/.lock"; flock 9

# ---- helpers ------------------------------------------------------------------------
# A pid is ours if it is alive (not a zombie) and this run started it (before its exec its command
# line is still this script's) or its command line names DATA_DIR (one an earlier run started).
ours() { # name -> prints pid if running
  local f="$RUN/$1.pid" pid n
  [[ -f "$f" ]] || return 1
  pid=$(<"$f")
  [[ "$pid" =~ ^[0-9]+$ ]] && [[ -r "/proc/$pid/cmdline" ]] || return 1
  [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" =~ ^[^Z]$ ]] || return 1
  for n in "${STARTED[@]}"; do [[ "$n" == "$1" ]] && { echo "$pid"; return 0; }; done
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DATA/" || return 1
  echo "$pid"
}
inns() { nsenter --net="$NETNS_PATH" -- "$@"; }
port_free() { ! inns bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null; }
STARTED=()
on_exit() {
  local rc=$? i pid
  ((rc != 0 && ${#STARTED[@]} > 0)) || return 0
  log "startup failed; stopping what this run started: ${STARTED[*]} (logs: $LOGS)"
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
    pid=$(<"$RUN/${STARTED[i]}.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$RUN/${STARTED[i]}.pid"
  done
  log "run down-node.sh $DATA to clean up containerd leftovers, if any"
}
trap on_exit EXIT
start() { # name cmd...   (in the node netns, host mount ns, clean environment, fd 9 closed)
  local name=$1; shift
  log "starting $name"
  (cd / && exec nsenter --net="$NETNS_PATH" -- env -i PATH="$SYS_PATH" HOME="$DATA" "$@" </dev/null >>"$LOGS/$name.log" 2>&1 9>&-) &
  echo $! >"$RUN/$name.pid"
  STARTED+=("$name")
}
wait_for() { # desc timeout pidname cmd...
  local desc=$1 to=$2 name=$3; shift 3
  local end=$((SECONDS + to))
  until "$@" >/dev/null 2>&1; do
    ours "$name" >/dev/null || { tail -n 30 "$LOGS/$name.log" >&2; die "$name exited while waiting for $desc (log: $LOGS/$name.log)"; }
    ((SECONDS < end)) || { tail -n 30 "$LOGS/$name.log" >&2; die "timeout waiting for $desc"; }
    sleep 0.3
  done
}

# ---- 1. the node's network namespace ----------------------------------------------------
if [[ ! -e "$NETNS_PATH" ]]; then
  log "creating netns $NETNS"
  ip netns add "$NETNS"
fi
mountpoint -q "$NETNS_PATH" 2>/dev/null || grep -q " $NETNS_PATH " /proc/self/mountinfo || die "$NETNS_PATH exists but is not a netns mount"
ip -n "$NETNS" link set lo up
if ! ip -n "$NETNS" link show "$NODE_LINK" >/dev/null 2>&1; then
  ip -n "$NETNS" link add "$NODE_LINK" type veth peer name "$NODE_PEER"
fi
ip -n "$NETNS" addr replace "$NODE_IP/24" dev "$NODE_LINK"
ip -n "$NETNS" link set "$NODE_PEER" up
ip -n "$NETNS" link set "$NODE_LINK" up
echo "$NETNS" >"$RUN/netns"
echo "$BIN" >"$RUN/bin-dir"   # for down-node.sh (node-cri)

# ---- 2. PKI (generated once per DATA_DIR) ----------------------------------------------
SVC_IP1=$(awk -F'[./]' '{printf "%d.%d.%d.%d", $1, $2, $3, $4+1}' <<<"$SVC_CIDR")
gen_pki() {
  log "generating PKI in $PKI"
  local o=(-days 3650 -sha256)
  ( cd "$PKI"
    umask 077
    openssl genrsa -out ca.key 2048 2>/dev/null
    openssl req -x509 -new -key ca.key -subj "/CN=k8s-node-ca" "${o[@]}" -out ca.crt \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
    cert() { # name subject ext
      openssl genrsa -out "$1.key" 2048 2>/dev/null
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial "${o[@]}" -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:$SVC_IP1"
    cert kubelet-serving "/CN=$NODE_NAME" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME"
    cert admin "/O=system:masters/CN=kubernetes-admin" "$client"
    cert kcm "/CN=system:kube-controller-manager" "$client"
    cert scheduler "/CN=system:kube-scheduler" "$client"
    cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
    cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    tok=$(openssl rand -hex 16)
    echo "$tok" >admin.token
    echo "$tok,kubernetes-admin-token,admin-token-uid,system:masters" >tokens.csv
    echo "$NODE_NAME $NODE_IP $SVC_CIDR" >.params
    touch .complete )
}
if [[ -f "$PKI/.complete" && "$(cat "$PKI/.params" 2>/dev/null)" != "$NODE_NAME $NODE_IP $SVC_CIDR" ]]; then
  die "$PKI was generated for '$(cat "$PKI/.params" 2>/dev/null)', not '$NODE_NAME $NODE_IP $SVC_CIDR': use another DATA_DIR or down-node.sh --purge"
fi
[[ -f "$PKI/.complete" ]] || gen_pki

b64() { base64 -w0 <"$1"; }
write_kubeconfig() { # file name
  local f=$1 n=$2 user
  if [[ $n == token ]]; then user="    token: $(<"$PKI/admin.token")"
  else user="    client-certificate-data: $(b64 "$PKI/$n.crt")
    client-key-data: $(b64 "$PKI/$n.key")"; fi
  cat >"$f.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: k8s-node
  cluster:
    server: https://$HOST:$AP
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: u
  user:
$user
contexts:
- name: k8s-node
  context: {cluster: k8s-node, user: u, namespace: default}
current-context: k8s-node
EOF
  chmod 600 "$f.tmp"; mv -f "$f.tmp" "$f"
}
write_kubeconfig "$DATA/admin.kubeconfig" admin
write_kubeconfig "$DATA/admin-token.kubeconfig" token
write_kubeconfig "$DATA/kcm.kubeconfig" kcm
write_kubeconfig "$DATA/scheduler.kubeconfig" scheduler
write_kubeconfig "$DATA/kubelet.kubeconfig" kubelet

# wrappers: host-side entry points into the node netns
cat >"$DATA/bin/node-exec" <<EOF
#!/bin/sh
# run a command in the k8s-node network namespace ($NETNS), host mount namespace
exec nsenter --net=$NETNS_PATH -- "\$@"
EOF
cat >"$DATA/bin/kubectl" <<EOF
#!/bin/sh
# kubectl (v1.20.2) as cluster-admin, run inside the node netns where the apiserver listens
exec nsenter --net=$NETNS_PATH -- $BIN/kubectl --kubeconfig $DATA/admin.kubeconfig "\$@"
EOF
cat >"$DATA/bin/node-cri" <<EOF
#!/bin/sh
# minimal crictl stand-in against the node's containerd (CRI v1alpha2)
exec $BIN/node-cri $RUN/containerd.sock "\$@"
EOF
cat >"$DATA/bin/ctr" <<EOF
#!/bin/sh
# containerd's ctr against the node's containerd, namespace k8s.io
exec ctr --address $RUN/containerd.sock --namespace k8s.io "\$@"
EOF
chmod 755 "$DATA/bin/node-exec" "$DATA/bin/kubectl" "$DATA/bin/node-cri" "$DATA/bin/ctr"
cat >"$DATA/env" <<EOF
# source me: host-side helpers for the k8s-node cluster in netns $NETNS
export K8S_NODE_DATA=$DATA
export K8S_NODE_NETNS=$NETNS
export K8S_NODE_NETNS_PATH=$NETNS_PATH
export K8S_NODE_KUBECONFIG=$DATA/admin.kubeconfig   # valid inside the netns only (https://$HOST:$AP)
export K8S_NODE_KUBECTL=$BIN/kubectl                # the real binary; needs nsenter --net=$NETNS_PATH
export PATH=$DATA/bin:\$PATH                        # kubectl, node-exec, node-cri, ctr wrappers
EOF

# ---- 3. CNI: plugins into CNI_BIN_DIR, our conflist into CNI_CONF_DIR -------------------
# everything installed outside DATA_DIR is listed in DATA_DIR/installed-files (for down-node.sh --purge)
record() { grep -qxF "$*" "$DATA/installed-files" 2>/dev/null || echo "$*" >>"$DATA/installed-files"; }
mkdirs() { local d=$1; [[ -d "$d" ]] && return 0; mkdirs "$(dirname "$d")"; mkdir "$d"; record dir "$d"; }
mkdirs "$CNI_BIN_DIR"; mkdirs "$CNI_CONF_DIR"
installed=0
for p in /usr/lib/cni/*; do
  n=${p##*/}
  if [[ ! -e "$CNI_BIN_DIR/$n" ]]; then install -m 0755 "$p" "$CNI_BIN_DIR/$n"; record copy "$CNI_BIN_DIR/$n" "$p"; installed=$((installed+1))
  elif ! cmp -s "$p" "$CNI_BIN_DIR/$n"; then log "WARNING: $CNI_BIN_DIR/$n differs from Debian's $p; leaving it"; fi
done
((installed == 0)) || log "installed $installed Debian CNI plugins (containernetworking-plugins $(dpkg-query -W -f='${Version}' containernetworking-plugins)) into $CNI_BIN_DIR"
sed "s|@LOGDIR@|$DATA/cni-log|" "$HERE/node-src/cni-logwrap.sh" >"$CNI_BIN_DIR/.k8s-node-logwrap.tmp"
chmod 0755 "$CNI_BIN_DIR/.k8s-node-logwrap.tmp"; mv -f "$CNI_BIN_DIR/.k8s-node-logwrap.tmp" "$CNI_BIN_DIR/k8s-node-logwrap"
ln -sfn k8s-node-logwrap "$CNI_BIN_DIR/logwrap-bridge"
ln -sfn k8s-node-logwrap "$CNI_BIN_DIR/logwrap-host-local"
record ours "$CNI_BIN_DIR/k8s-node-logwrap"; record ours "$CNI_BIN_DIR/logwrap-bridge"; record ours "$CNI_BIN_DIR/logwrap-host-local"
record ours "$CNI_CONF_DIR/$CONFLIST_NAME"
if [[ -n "$CNI_CONFLIST_SRC" ]]; then
  [[ -f "$CNI_CONFLIST_SRC" ]] || die "K8S_NODE_CNI_CONFLIST=$CNI_CONFLIST_SRC not found"
  cp "$CNI_CONFLIST_SRC" "$CNI_CONF_DIR/.$CONFLIST_NAME.tmp"
else
  btype=bridge; caps=
  if ((CNI_LOGWRAP)); then
    # logwrap-bridge also declares the capabilities containerd 1.6 can fill in, so that the log
    # shows the runtimeConfig a meta-plugin declaring them would get (bridge ignores them)
    btype=logwrap-bridge
    caps='
      "capabilities": { "io.kubernetes.cri.pod-annotations": true, "portMappings": true, "bandwidth": true, "dns": true },'
  fi
  GW=$(awk -F'[./]' '{printf "%d.%d.%d.%d", $1, $2, $3, $4+1}' <<<"$POD_CIDR")
  cat >"$CNI_CONF_DIR/.$CONFLIST_NAME.tmp" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NET_NAME",
  "plugins": [
    {
      "type": "$btype",$caps
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$POD_CIDR", "gateway": "$GW" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    }
  ]
}
EOF
fi
if cmp -s "$CNI_CONF_DIR/.$CONFLIST_NAME.tmp" "$CNI_CONF_DIR/$CONFLIST_NAME"; then rm -f "$CNI_CONF_DIR/.$CONFLIST_NAME.tmp"
else mv -f "$CNI_CONF_DIR/.$CONFLIST_NAME.tmp" "$CNI_CONF_DIR/$CONFLIST_NAME"; log "wrote $CNI_CONF_DIR/$CONFLIST_NAME"; fi
# libcni's result cache (/var/lib/cni/results) and host-local's per-network state
# (/var/lib/cni/networks/<conflist name>) live at fixed host paths: record the ones that do not
# exist yet, so that --purge removes them (for whatever conflist was installed, ours or yours)
CNI_NET=$(grep -o '"name"[[:space:]]*:[[:space:]]*"[^"/]*"' "$CNI_CONF_DIR/$CONFLIST_NAME" | head -n1 | sed 's/.*"\([^"]*\)"$/\1/')
for d in /var/lib/cni /var/lib/cni/networks /var/lib/cni/results; do [[ -e "$d" ]] || record dir "$d"; done
[[ -z "$CNI_NET" || -e "/var/lib/cni/networks/$CNI_NET" ]] || record tree "/var/lib/cni/networks/$CNI_NET"
first=$(find "$CNI_CONF_DIR" -maxdepth 1 -type f \( -name '*.conf' -o -name '*.conflist' -o -name '*.json' \) -printf '%f\n' | LC_ALL=C sort | head -n1)
[[ "$first" == "$CONFLIST_NAME" ]] || log "WARNING: containerd uses the first config in $CNI_CONF_DIR, which is $first, not $CONFLIST_NAME"

# ---- 4. etcd -----------------------------------------------------------------------------
if ! ours etcd >/dev/null; then
  port_free "$EP" && port_free "$PP" || die "port $EP or $PP is already in use in netns $NETNS"
  start etcd "$BIN/etcd" --name k8s-node --data-dir "$DATA/etcd/" \
    --listen-client-urls "http://$HOST:$EP" --advertise-client-urls "http://$HOST:$EP" \
    --listen-peer-urls "http://$HOST:$PP" --initial-advertise-peer-urls "http://$HOST:$PP" \
    --initial-cluster "k8s-node=http://$HOST:$PP" --initial-cluster-state new \
    --logger zap --log-outputs stderr --quota-backend-bytes 2147483648
fi
wait_for "etcd health" "$TIMEOUT" etcd inns curl -fsS "http://$HOST:$EP/health"

# ---- 5. kube-apiserver ----------------------------------------------------------------------
CURL_ADMIN=(inns curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key")
if ! ours kube-apiserver >/dev/null; then
  port_free "$AP" || die "port $AP is already in use in netns $NETNS"
  admission=(--enable-admission-plugins NodeRestriction)
  [[ -n "$DISABLE_ADMISSION" ]] && admission+=(--disable-admission-plugins "$DISABLE_ADMISSION")
  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://$HOST:$EP" \
    --bind-address "$HOST" --advertise-address "$HOST" --secure-port "$AP" --insecure-port 0 \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
    --authorization-mode Node,RBAC \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SVC_CIDR" --endpoint-reconciler-type none \
    --enable-aggregator-routing=true \
    --allow-privileged=true --profiling=false \
    "${admission[@]}"
fi
wait_for "kube-apiserver /readyz" "$TIMEOUT" kube-apiserver "${CURL_ADMIN[@]}" "https://$HOST:$AP/readyz"
log "kube-apiserver ready"

# ---- 6. kube-controller-manager + kube-scheduler (no listeners at all) ------------------------
if ! ours kube-controller-manager >/dev/null; then
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$DATA/kcm.kubeconfig" \
    --secure-port 0 --port 0 --bind-address "$HOST" \
    --leader-elect=false --use-service-account-credentials=true \
    --controllers '*' \
    --allocate-node-cidrs --cluster-cidr "$POD_CIDR" --node-cidr-mask-size "${POD_CIDR#*/}" \
    --service-cluster-ip-range "$SVC_CIDR" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt"
fi
if ! ours kube-scheduler >/dev/null; then
  start kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$DATA/scheduler.kubeconfig" \
    --leader-elect=false --bind-address "$HOST" --port 0 --secure-port 0
fi

# ---- 7. containerd ----------------------------------------------------------------------------
CD="$DATA/containerd"
mkdir -p "$CD/root" "$CD/state" "$DATA/runc"
cat >"$CD/config.toml" <<EOF
# generated by up-node.sh: containerd $(dpkg-query -W -f='${Version}' containerd) for the k8s-node rig
version = 2
root = "$CD/root"
state = "$CD/state"
oom_score = 0
# opt: would create /opt/containerd; the others cannot work here and only log errors
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$RUN/containerd.sock"
[ttrpc]
  address = ""
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_tcp_service = true
  enable_selinux = false
  disable_apparmor = true
  # this VM grants no CAP_SYS_RESOURCE, so runc cannot set a negative oom_score_adj (pause wants
  # -998, Guaranteed containers -997): clamp to containerd's own value (0) instead of failing
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "$SNAPSHOTTER"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$DATA/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$CNI_CONF_DIR"
    max_conf_num = 1
EOF
# cgroups: kubelet (cgroupsPerQOS=true) creates /kubepods/{burstable,besteffort}/pod<uid> in every
# hierarchy and never removes /kubepods; with cgroupsPerQOS=false kubelet gives no cgroup parent and
# containerd uses /k8s.io/<id>. down-node.sh removes those parents if they did not exist before.
for cg in k8s.io kubepods; do
  compgen -G "/sys/fs/cgroup/*/$cg" >/dev/null || { grep -qxF "cgroup:$cg" "$RUN/host-created" 2>/dev/null || echo "cgroup:$cg" >>"$RUN/host-created"; }
done
if ! ours containerd >/dev/null; then
  rm -f "$RUN/containerd.sock" "$RUN/containerd.sock.ttrpc"
  start containerd containerd --config "$CD/config.toml"
fi
CTR=(ctr --address "$RUN/containerd.sock" --namespace k8s.io)
wait_for "containerd" "$TIMEOUT" containerd "${CTR[@]}" version
wait_for "containerd CRI" "$TIMEOUT" containerd "$BIN/node-cri" "$RUN/containerd.sock" version
for i in pause busybox; do
  ref=$PAUSE_IMAGE; [[ $i == busybox ]] && ref=$BUSYBOX_IMAGE
  if ! "${CTR[@]}" images ls -q | grep -qxF "$ref"; then
    log "importing $ref"
    "${CTR[@]}" images import --snapshotter "$SNAPSHOTTER" "$BIN/images/$i.tar" >/dev/null
  fi
done

# ---- 8. kubelet ---------------------------------------------------------------------------------
KL="$DATA/kubelet"
mkdir -p "$KL/root" "$KL/volume-plugins"
HARD_NOFILE=$(ulimit -Hn); [[ "$HARD_NOFILE" == unlimited ]] && HARD_NOFILE=1000000
((HARD_NOFILE > 1000000)) && HARD_NOFILE=1000000
if ((CGROUPS_PER_QOS)); then qos="cgroupsPerQOS: true
enforceNodeAllocatable: [pods]"; else qos="cgroupsPerQOS: false
enforceNodeAllocatable: []"; fi
# pods get a resolver address inside 198.18.0.0/15, not the host's: no pod query may leave the node netns
printf 'nameserver 198.19.255.53\n' >"$DATA/pod-resolv.conf"
cat >"$KL/config.yaml" <<EOF
# generated by up-node.sh
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
cgroupDriver: cgroupfs
$qos
failSwapOn: false
makeIPTablesUtilChains: false
protectKernelDefaults: false
maxOpenFiles: $HARD_NOFILE
volumePluginDir: $KL/volume-plugins
clusterDomain: cluster.local
resolvConf: $DATA/pod-resolv.conf
serializeImagePulls: false
# NotReady->Ready is reported at the next status tick (default 10s); 2s makes the node Ready ~8s
# sooner. Status is still only PATCHed on change (or every 5 min); liveness is the 10s node Lease.
nodeStatusUpdateFrequency: 2s
# the images are local only (cannot be pulled again): never garbage-collect them,
# and do not evict on a busy dev disk
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
EOF
# kubelet 1.20 creates these at fixed paths whatever --root-dir says; down-node.sh removes
# the ones that did not exist before
for p in /var/lib/kubelet /var/log/pods /var/log/containers; do
  [[ -e "$p" ]] || { grep -qxF "$p" "$RUN/host-created" 2>/dev/null || echo "$p" >>"$RUN/host-created"; }
done
KUBELET_START=0
if ! ours kubelet >/dev/null; then
  KUBELET_START=$(date +%s)
  start kubelet "$BIN/kubelet" \
    --config "$KL/config.yaml" \
    --kubeconfig "$DATA/kubelet.kubeconfig" \
    --root-dir "$KL/root" --cert-dir "$KL/pki" \
    --container-runtime remote \
    --container-runtime-endpoint "unix://$RUN/containerd.sock" \
    --image-service-endpoint "unix://$RUN/containerd.sock" \
    --pod-infra-container-image "$PAUSE_IMAGE" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --v 2
fi
KC=(inns "$BIN/kubectl" --kubeconfig "$DATA/admin.kubeconfig")
node_ready() { # Ready=True, posted by this kubelet (after a restart etcd still holds the old Ready status)
  local out st hb
  out=$("${KC[@]}" get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}' 2>/dev/null) || return 1
  st=${out%% *}; hb=${out#* }
  [[ "$st" == True ]] && (( $(date -d "$hb" +%s 2>/dev/null || echo 0) >= KUBELET_START - 1 ))
}
wait_for "node $NODE_NAME Ready" "$TIMEOUT" kubelet node_ready
log "node $NODE_NAME Ready"
# kube-scheduler and kube-controller-manager must still be alive
for d in kube-controller-manager kube-scheduler; do
  ours "$d" >/dev/null || { tail -n 30 "$LOGS/$d.log" >&2; die "$d exited (log: $LOGS/$d.log)"; }
done
# the default ServiceAccount (and its token) exist once the controllers are up
sa_ready() { [[ -n "$("${KC[@]}" get sa default -o 'jsonpath={.secrets[0].name}' 2>/dev/null)" ]]; }
wait_for "default ServiceAccount token" "$TIMEOUT" kube-controller-manager sa_ready

log "ready in $(el "$T0")s: node $NODE_NAME Ready (netns $NETNS, node IP $NODE_IP, pods $POD_CIDR, services $SVC_CIDR)"
log "pids: $(for d in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet; do printf '%s=%s ' "$d" "$(ours "$d")"; done)"
log "use: source $DATA/env; kubectl get nodes     (kubectl/node-exec/node-cri/ctr wrappers in $DATA/bin)"
echo "$DATA/env"

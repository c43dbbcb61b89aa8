#!/usr/bin/env bash
# scripts/k8s/up-apiserver.sh DATA_DIR [CACHE_DIR]
#
# Starts a throw-away control plane bound to 127.0.0.1 only:
#   etcd (plain http, loopback) -> kube-apiserver (TLS, RBAC) -> kube-controller-manager
# with the binaries build-apiserver.sh put in CACHE_DIR/bin (CACHE_DIR: $2, else
# $PLEXUS_K8S_CACHE, else /var/cache/plexus-test/k8s-apiserver).
# No scheduler, no kubelet: pods stay Pending. That is the point for API-level tests.
#
# DATA_DIR gets: pki/ (CA, serving + client certs, SA keys, static token), etcd/, logs/,
# run/*.pid, admin.kubeconfig (cert, system:masters), admin-token.kubeconfig,
# bin/kubectl (the built kubectl with --kubeconfig preset) and env (KUBECONFIG=...).
# Prints the admin kubeconfig path on stdout.
# Re-running it on a DATA_DIR that is up is a no-op (it re-checks /readyz); certs and
# etcd data are reused across down/up. Stop with: down-apiserver.sh DATA_DIR [--purge]
#
# Environment knobs (defaults in brackets):
#   K8S_TEST_APISERVER_PORT [16443]  K8S_TEST_ETCD_PORT [12379]  K8S_TEST_ETCD_PEER_PORT [12380]
#   K8S_TEST_CONTROLLER_MANAGER [1]  start kube-controller-manager (0 = apiserver + etcd only)
#   K8S_TEST_KCM_CONTROLLERS [garbagecollector,namespace,serviceaccount,serviceaccount-token,clusterrole-aggregation]
#       podgc and nodelifecycle are deliberately off: with no kubelet, podgc would delete pods
#       bound to a non-existent node after ~40 s and nodelifecycle would taint/evict.
#   K8S_TEST_DISABLE_ADMISSION [ServiceAccount]  admission plugins to disable (comma list, may be
#       empty). With ServiceAccount admission on, the first pod in a brand-new namespace races
#       the creation of the default SA's token.
#   K8S_TEST_READY_TIMEOUT [120]     seconds to wait for etcd / readyz
#   K8S_TEST_APISERVER_EXTRA_ARGS / K8S_TEST_KCM_EXTRA_ARGS  extra args (word-split)
#   K8S_TEST_ETCD_BIN                etcd binary to use [CACHE_DIR/bin/etcd, else etcd on PATH]
set -euo pipefail

usage() { echo "usage: $0 DATA_DIR [CACHE_DIR]" >&2; exit 2; }
[[ $# -ge 1 && -n "$1" ]] || usage
mkdir -p "$1"
DATA=$(cd "$1" && pwd -P)
CACHE_DIR=${2:-${PLEXUS_K8S_CACHE:-/var/cache/plexus-test/k8s-apiserver}}
BIN="$CACHE_DIR/bin"

AP=${K8S_TEST_APISERVER_PORT:-16443}
EP=${K8S_TEST_ETCD_PORT:-12379}
PP=${K8S_TEST_ETCD_PEER_PORT:-12380}
RUN_KCM=${K8S_TEST_CONTROLLER_MANAGER:-1}
KCM_CONTROLLERS=${K8S_TEST_KCM_CONTROLLERS:-garbagecollector,namespace,serviceaccount,serviceaccount-token,clusterrole-aggregation}
DISABLE_ADMISSION=${K8S_TEST_DISABLE_ADMISSION-ServiceAccount}
TIMEOUT=${K8S_TEST_READY_TIMEOUT:-120}
HOST=127.0.0.1

log() { printf '[up-apiserver %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for t in openssl curl; do command -v "$t" >/dev/null || die "$t not found (apt-get install $t)"; done
[[ -x "$BIN/kube-apiserver" ]] || die "$BIN/kube-apiserver missing: run scripts/k8s/build-apiserver.sh $CACHE_DIR first"
ETCD=${K8S_TEST_ETCD_BIN:-$BIN/etcd}
[[ -x "$ETCD" ]] || ETCD=$(command -v etcd || true)
[[ -x "$ETCD" ]] || die "no etcd binary (run build-apiserver.sh, or apt-get install etcd-server)"
if [[ "$RUN_KCM" == 1 && ! -x "$BIN/kube-controller-manager" ]]; then
  log "no kube-controller-manager in $BIN; running without it"; RUN_KCM=0
fi

PKI="$DATA/pki"; LOGS="$DATA/logs"; RUN="$DATA/run"
mkdir -p "$PKI" "$LOGS" "$RUN" "$DATA/etcd" "$DATA/bin"
chmod 700 "$PKI" "$DATA/etcd"
touch "$DATA/.k8s-test-data"   # marker checked by down-apiserver.sh --purge

exec 9>"$RUN/.lock"; flock 9    # one up/down at a time per DATA_DIR (fd 9 is closed for the daemons)

# A pid counts as ours only if it is alive (not a zombie) AND either this run started it or its
# command line names our DATA_DIR. A child this run started is known by its pid alone: between the
# fork and the exec its command line is still this script's (no "$DATA/" in it), and its pid cannot
# be reused before we reap it. Checking the command line then made a start fail at random.
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
port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
STARTED=()   # daemons started by this invocation; stopped again if this script fails
on_exit() {
  local rc=$? i pid
  ((rc != 0 && ${#STARTED[@]} > 0)) || return 0
  log "startup failed; stopping what this run started: ${STARTED[*]}"
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
    pid=$(<"$RUN/${STARTED[i]}.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$RUN/${STARTED[i]}.pid"
  done
}
trap on_exit EXIT
start() { # name cmd...
  local name=$1; shift
  log "starting $name"
  # clean environment (no inherited ETCD_*, KUBECONFIG, GODEBUG, proxies...), fd 9 (lock) closed
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$DATA" "$@" </dev/null >>"$LOGS/$name.log" 2>&1 9>&- &
  echo $! >"$RUN/$name.pid"
  STARTED+=("$name")
}
wait_for() { # desc timeout pidname cmd...
  local desc=$1 to=$2 name=$3; shift 3
  local end=$((SECONDS + to))
  until "$@" >/dev/null 2>&1; do
    ours "$name" >/dev/null || { tail -n 30 "$LOGS/$name.log" >&2; die "$name exited while waiting for $desc (log: $LOGS/$name.log)"; }
    ((SECONDS < end)) || { tail -n 30 "$LOGS/$name.log" >&2; die "timeout waiting for $desc"; }
    sleep 0.5
  done
}

# ---- PKI (generated once per DATA_DIR) ----------------------------------------
gen_pki() {
  log "generating PKI in $PKI"
  local o=(-days 3650 -sha256)
  ( cd "$PKI"
    umask 077
    openssl genrsa -out ca.key 2048 2>/dev/null
    openssl req -x509 -new -key ca.key -subj "/CN=k8s-test-ca" "${o[@]}" -out ca.crt \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
    cert() { # name subject ext
      openssl genrsa -out "$1.key" 2048 2>/dev/null
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial "${o[@]}" -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.0.0.1"
    cert admin "/O=system:masters/CN=kubernetes-admin" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    cert kcm "/O=system:masters/CN=system:kube-controller-manager" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    tok=$(openssl rand -hex 16)
    echo "$tok" >admin.token
    echo "$tok,kubernetes-admin-token,admin-token-uid,system:masters" >tokens.csv
    touch .complete )
}
[[ -f "$PKI/.complete" ]] || gen_pki

b64() { base64 -w0 <"$1"; }
write_kubeconfig() { # file user-stanza-lines...
  local f=$1 user=$2
  cat >"$f.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: k8s-test
  cluster:
    server: https://$HOST:$AP
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: u
  user:
$user
contexts:
- name: k8s-test
  context: {cluster: k8s-test, user: u, namespace: default}
current-context: k8s-test
EOF
  chmod 600 "$f.tmp"; mv -f "$f.tmp" "$f"
}
write_kubeconfig "$DATA/admin.kubeconfig" "    client-certificate-data: $(b64 "$PKI/admin.crt")
    client-key-data: $(b64 "$PKI/admin.key")"
write_kubeconfig "$DATA/admin-token.kubeconfig" "    token: $(<"$PKI/admin.token")"
write_kubeconfig "$DATA/kcm.kubeconfig" "    client-certificate-data: $(b64 "$PKI/kcm.crt")
    client-key-data: $(b64 "$PKI/kcm.key")"
cat >"$DATA/bin/kubectl" <<EOF
#!/bin/sh
# kubectl v1.20.2 (from $BIN) as cluster-admin on this DATA_DIR's apiserver
exec $BIN/kubectl --kubeconfig $DATA/admin.kubeconfig "\$@"
EOF
chmod 755 "$DATA/bin/kubectl"
cat >"$DATA/env" <<EOF
export KUBECONFIG=$DATA/admin.kubeconfig
export K8S_TEST_APISERVER=https://$HOST:$AP
export K8S_TEST_CA=$PKI/ca.crt
export K8S_TEST_TOKEN_FILE=$PKI/admin.token
export K8S_TEST_KUBECTL=$BIN/kubectl
EOF

# ---- etcd -----------------------------------------------------------------------
if ! ours etcd >/dev/null; then
  port_free "$EP" && port_free "$PP" || die "port $EP or $PP on $HOST is already in use (set K8S_TEST_ETCD_PORT/K8S_TEST_ETCD_PEER_PORT)"
  start etcd "$ETCD" --name k8s-test --data-dir "$DATA/etcd/" \
    --listen-client-urls "http://$HOST:$EP" --advertise-client-urls "http://$HOST:$EP" \
    --listen-peer-urls "http://$HOST:$PP" --initial-advertise-peer-urls "http://$HOST:$PP" \
    --initial-cluster "k8s-test=http://$HOST:$PP" --initial-cluster-state new \
    --logger zap --log-outputs stderr --quota-backend-bytes 2147483648
fi
wait_for "etcd health" "$TIMEOUT" etcd curl -fsS "http://$HOST:$EP/health"

# ---- kube-apiserver -------------------------------------------------------------
CURL_ADMIN=(curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key")
if ! ours kube-apiserver >/dev/null; then
  port_free "$AP" || die "port $AP on $HOST is already in use (set K8S_TEST_APISERVER_PORT)"
  admission=()
  [[ -n "$DISABLE_ADMISSION" ]] && admission=(--disable-admission-plugins "$DISABLE_ADMISSION")
  # shellcheck disable=SC2206
  extra=(${K8S_TEST_APISERVER_EXTRA_ARGS:-})
  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://$HOST:$EP" \
    --bind-address "$HOST" --advertise-address "$HOST" --secure-port "$AP" --insecure-port 0 \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 --endpoint-reconciler-type none \
    --allow-privileged=true --profiling=false \
    "${admission[@]}" "${extra[@]}"
fi
wait_for "kube-apiserver /readyz" "$TIMEOUT" kube-apiserver "${CURL_ADMIN[@]}" "https://$HOST:$AP/readyz"

# ---- kube-controller-manager (no serving ports at all) -------------------------
if [[ "$RUN_KCM" == 1 ]] && ! ours kube-controller-manager >/dev/null; then
  # shellcheck disable=SC2206
  kcm_extra=(${K8S_TEST_KCM_EXTRA_ARGS:-})
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$DATA/kcm.kubeconfig" \
    --secure-port 0 --port 0 --bind-address "$HOST" \
    --leader-elect=false --use-service-account-credentials=false \
    --controllers "$KCM_CONTROLLERS" \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    "${kcm_extra[@]}"
fi
if [[ "$RUN_KCM" == 1 && ",$KCM_CONTROLLERS," == *,serviceaccount,* ]]; then
  # serviceaccount controller is up once 'default' has its 'default' SA.
  wait_for "kube-controller-manager (default ServiceAccount)" "$TIMEOUT" kube-controller-manager \
    "${CURL_ADMIN[@]}" "https://$HOST:$AP/api/v1/namespaces/default/serviceaccounts/default"
fi

log "ready: https://$HOST:$AP  (pids: etcd=$(ours etcd) apiserver=$(ours kube-apiserver)$([[ "$RUN_KCM" == 1 ]] && echo " kcm=$(ours kube-controller-manager)"))"
log "KUBECONFIG=$DATA/admin.kubeconfig   (token variant: $DATA/admin-token.kubeconfig; 'source $DATA/env')"
echo "$DATA/admin.kubeconfig"

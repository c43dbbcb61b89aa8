#!/usr/bin/env bash
# scripts/k8s/down-node.sh [DATA_DIR] [--purge] [BIN_DIR]
#
# Stops what up-node.sh DATA_DIR started and leaves no process, mount, netns or link behind:
#   1. kube-scheduler, kube-controller-manager (no new pods), then kubelet
#   2. every pod sandbox through the CRI (node-cri stopp-all = StopPodSandbox + RemovePodSandbox),
#      so containerd runs CNI DEL and removes the pod netns the normal way; shims then exit.
#      If containerd is gone (crash, kill -9) but its state exists, it is started briefly:
#      it reattaches to live shims, so the DELs still happen.
#   3. containerd
#   4. leftovers, only ever ours: shims whose -address is our socket, runc containers in our
#      runc root, mounts under DATA_DIR, pod netns that our containerd created, shim sockets in
#      /run/containerd/s named after our sandboxes
#   5. kube-apiserver, etcd
#   6. the node netns (which takes the veth pair, cni0 and any pod veth ends with it)
#   7. the host paths kubelet 1.20 creates whatever --root-dir says (/var/lib/kubelet/device-plugins,
#      /var/log/pods, /var/log/containers) and the cgroup parents /kubepods, /k8s.io, if
#      up-node.sh found them absent
# DATA_DIR defaults to /var/tmp/plexus-k8s-node; BIN_DIR (for node-cri) to the one up-node.sh used.
# Processes are ours only if their command line names DATA_DIR (or, for shims, our socket);
# nothing is killed by name. SIGTERM, then SIGKILL after K8S_NODE_STOP_TIMEOUT [20] s.
#
# Kept across down/up (like a rebooted node): PKI, etcd data (API objects), images, CNI plugins in
# CNI_BIN_DIR, the conflist in CNI_CONF_DIR, host-local's /var/lib/cni/networks/<network name>.
# --purge also removes those host-level files that up-node.sh installed (only plugins still
# identical to Debian's), and DATA_DIR itself (only if it carries up-node.sh's marker).
set -euo pipefail

PURGE=0; ARGS=()
for a in "$@"; do case $a in --purge) PURGE=1 ;; *) ARGS+=("$a") ;; esac; done
D=${ARGS[0]:-/var/tmp/plexus-k8s-node}
[[ -d "$D" ]] || { echo "[down-node] $D does not exist; nothing to do" >&2; exit 0; }
DATA=$(cd "$D" && pwd -P)
RUN="$DATA/run"; LOGS="$DATA/logs"
STOP_TIMEOUT=${K8S_NODE_STOP_TIMEOUT:-20}
SOCK="$RUN/containerd.sock"
CD="$DATA/containerd"
NODE_CRI=${ARGS[1]:-$(cat "$RUN/bin-dir" 2>/dev/null || echo "${PLEXUS_K8S_NODE_CACHE:-/var/cache/plexus-test/k8s-node}/bin")}/node-cri
[[ -x "$NODE_CRI" ]] || NODE_CRI=

T0=$(date +%s.%N)
el() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
log() { printf '[down-node %(%H:%M:%S)T +%ss] %s\n' -1 "$(el "$T0")" "$*" >&2; }
[[ $(id -u) == 0 ]] || { log "run as root"; exit 1; }

NETNS=$(cat "$RUN/netns" 2>/dev/null || echo "${K8S_NODE_NETNS:-k8s-node}")
NETNS_PATH=/run/netns/$NETNS

ours() {
  local f="$RUN/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid=$(<"$f")
  [[ "$pid" =~ ^[0-9]+$ ]] && [[ -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DATA/" || return 1
  echo "$pid"
}
alive() { [[ -e "/proc/$1" ]] && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }
STOPPED=()
stop_pids() { # desc pid... : SIGTERM all, wait until all have exited (zombies count as exited), SIGKILL stragglers
  local desc=$1; shift
  local end=$((SECONDS + STOP_TIMEOUT)) killed=0 p left
  (($#)) || return 0
  log "stopping $desc (pid $*)"
  kill -TERM "$@" 2>/dev/null || true
  while :; do
    left=(); for p in "$@"; do alive "$p" && left+=("$p"); done
    ((${#left[@]})) || break
    if ((SECONDS >= end && !killed)); then log "still running after ${STOP_TIMEOUT}s: ${left[*]}; SIGKILL"; kill -KILL "${left[@]}" 2>/dev/null || true; killed=1; fi
    sleep 0.1
  done
  STOPPED+=("$@")   # exited; their parent (init, as up-node.sh is gone) reaps them shortly
}
stop() { # name...
  local n pid pids=() names=()
  for n; do if pid=$(ours "$n"); then pids+=("$pid"); names+=("$n"); fi; rm -f "$RUN/$n.pid"; done
  ((${#pids[@]})) && stop_pids "${names[*]}" "${pids[@]}"
  return 0
}
our_shims() { # pids of containerd shims serving our containerd socket
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qE "^/usr/bin/containerd-shim[^ ]* .*-address $SOCK( |$)" && echo "${p#/proc/}"
  done
  return 0
}

[[ -d "$RUN" ]] || { log "no $RUN; nothing was started here"; RUN_MISSING=1; }
if [[ -z "${RUN_MISSING:-}" ]]; then
exec 9>"$RUN/.lock"; flock 9

# ---- 1. control loops and kubelet ---------------------------------------------------------
stop kube-scheduler kube-controller-manager kubelet

# ---- 2. pods, through the CRI (CNI DEL happens here) -----------------------------------------
# after a crash (containerd gone, shims/containers/netns/IPs left): start containerd once more, in
# the same netns with the same config; it reattaches to live shims and knows every sandbox, so the
# teardown below still goes through CNI DEL (with an empty CNI_NETNS where the netns is already gone)
if ! ours containerd >/dev/null && [[ -f "$CD/config.toml" && -e "$NETNS_PATH" && -n "$NODE_CRI" ]] && command -v containerd >/dev/null; then
  log "containerd is not running: starting it briefly to tear down what it knows about"
  rm -f "$SOCK" "$SOCK.ttrpc"
  (cd / && exec nsenter --net="$NETNS_PATH" -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME="$DATA" \
     containerd --config "$CD/config.toml" </dev/null >>"$LOGS/containerd.log" 2>&1 9>&-) &
  echo $! >"$RUN/containerd.pid"
  for _ in $(seq 100); do "$NODE_CRI" "$SOCK" version >/dev/null 2>&1 && break; ours containerd >/dev/null || break; sleep 0.2; done
fi
if ours containerd >/dev/null && [[ -n "$NODE_CRI" ]]; then
  # remember the pod netns paths first, in case a teardown fails
  "$NODE_CRI" "$SOCK" pods 2>/dev/null | awk '$NF ~ /^\// {print $NF}' >>"$RUN/pod-netns" || true
  n=$("$NODE_CRI" "$SOCK" pods 2>/dev/null | wc -l || true)
  if ((n > 0)); then
    log "stopping and removing $n pod sandbox(es) through the CRI"
    "$NODE_CRI" "$SOCK" stopp-all 120 2>&1 | sed 's/^/    /' >&2 || log "WARNING: some sandboxes could not be stopped; cleaning up below"
  fi
  end=$((SECONDS + 15))
  while [[ -n "$(our_shims)" ]] && ((SECONDS < end)); do sleep 0.2; done
fi

# ---- 3. containerd ---------------------------------------------------------------------------
stop containerd

# ---- 4. leftovers (only after a failure above, normally nothing) ----------------------------------
# containers first (a shim's exit does not stop its containers): runc root is <Root>/<namespace>
if [[ -d "$DATA/runc" ]] && command -v runc >/dev/null; then
  for r in "$DATA"/runc/*/; do
    [[ -d "$r" ]] || continue
    for id in $(runc --root "$r" list -q 2>/dev/null); do
      log "leftover container $id (runc root $r): kill + delete"
      runc --root "$r" kill "$id" KILL 2>/dev/null || true
      runc --root "$r" delete -f "$id" 2>/dev/null || true
    done
  done
fi
shims=($(our_shims)); ((${#shims[@]} == 0)) || stop_pids "leftover containerd shims" "${shims[@]}"
# pod netns created by our containerd: those it reported, plus any named in its metadata db
{
  cat "$RUN/pod-netns" 2>/dev/null || true
  [[ -f "$CD/root/io.containerd.metadata.v1.bolt/meta.db" ]] && grep -aoE '/var/run/netns/cni-[0-9a-f-]{36}' "$CD/root/io.containerd.metadata.v1.bolt/meta.db" || true
} | sort -u | while read -r ns; do
  real=${ns/#\/var\/run\//\/run\/}
  if [[ -e "$real" ]]; then
    log "leftover pod netns $ns"
    umount "$real" 2>/dev/null || umount -l "$real" 2>/dev/null || true
    rm -f "$real"
  fi
done
rm -f "$RUN/pod-netns"
# shim sockets: /run/containerd/s/sha256("<our socket>/k8s.io/<id>") (containerd 1.6, fixed dir)
if [[ -d "$CD/state/io.containerd.runtime.v2.task" ]]; then
  for t in "$CD"/state/io.containerd.runtime.v2.task/*/*; do
    [[ -d "$t" ]] || continue
    id=${t##*/}; ns=${t%/*}; ns=${ns##*/}
    h=$(printf '%s' "$SOCK/$ns/$id" | sha256sum | cut -d' ' -f1)
    [[ -e "/run/containerd/s/$h" ]] && { log "leftover shim socket /run/containerd/s/$h ($id)"; rm -f "/run/containerd/s/$h"; }
  done
fi
rmdir /run/containerd/s /run/containerd 2>/dev/null || true   # only if empty, i.e. no other containerd
# mounts under DATA_DIR (container rootfs, sandbox shm, secret tmpfs, kubelet's rshared root), deepest first
mapfile -t mnts < <(awk -v d="$DATA/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
for m in "${mnts[@]}"; do
  m=$(printf '%b' "$m")   # mountinfo escapes spaces etc. as \040
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "WARNING: cannot unmount $m"
done
((${#mnts[@]} == 0)) || log "unmounted ${#mnts[@]} mount(s) under $DATA"

# ---- 5. control plane ------------------------------------------------------------------------
stop kube-apiserver
stop etcd

# ---- 6. the node netns -------------------------------------------------------------------------
if [[ -e "$NETNS_PATH" ]]; then
  ino=$(stat -L -c %i "$NETNS_PATH" 2>/dev/null || true)
  users=()
  if [[ -n "$ino" ]]; then
    for p in /proc/[0-9]*; do
      [[ "$(stat -L -c %i "$p/ns/net" 2>/dev/null)" == "$ino" ]] && users+=("${p#/proc/}")
    done
  fi
  if ((${#users[@]})); then
    log "WARNING: processes still in netns $NETNS: ${users[*]} ($(for u in "${users[@]}"; do tr '\0' ' ' <"/proc/$u/cmdline" | cut -c1-60; echo -n '; '; done)); not stopping them"
  fi
  log "deleting netns $NETNS (with its veth pair, cni0 and pod veth ends)"
  ip netns del "$NETNS" 2>/dev/null || { umount "$NETNS_PATH" 2>/dev/null || umount -l "$NETNS_PATH" 2>/dev/null || true; rm -f "$NETNS_PATH"; }
fi
rm -f "$RUN/netns" "$RUN/bin-dir"

# ---- 7. fixed host paths kubelet 1.20 creates regardless of --root-dir --------------------------
if [[ -f "$RUN/host-created" ]]; then
  while read -r p; do
    case $p in
      /var/lib/kubelet) [[ -e /var/lib/kubelet ]] || continue
                        rm -f /var/lib/kubelet/device-plugins/{kubelet.sock,DEPRECATION,kubelet_internal_checkpoint}
                        rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet 2>/dev/null || log "note: /var/lib/kubelet not empty; left" ;;
      cgroup:*) for d in /sys/fs/cgroup/*/"${p#cgroup:}"; do
                       [[ -d "$d" ]] || continue
                       find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || log "note: cgroup $d not empty; left"
                     done ;;
      # only our kubelet writes there (up-node.sh found the dirs absent): pod log dirs of the stopped pods
      /var/log/containers) [[ -e "$p" ]] || continue
                           find /var/log/containers -mindepth 1 -maxdepth 1 -type l -lname '/var/log/pods/*' -delete 2>/dev/null || true
                           rmdir "$p" 2>/dev/null || log "note: $p not empty; left" ;;
      /var/log/pods) [[ -e "$p" ]] || continue
                     find /var/log/pods -mindepth 1 -maxdepth 1 -type d -regextype posix-extended \
                       -regex '/var/log/pods/[a-z0-9.-]+_[^/_]+_[0-9a-f-]{36}' -exec rm -rf {} + 2>/dev/null || true
                     rmdir "$p" 2>/dev/null || log "note: $p not empty; left" ;;
    esac
  done <"$RUN/host-created"
fi
fi  # RUN exists
# let init reap what we stopped, so that nothing (not even a zombie) is left when we return
for _ in $(seq 50); do
  left=0; for p in "${STOPPED[@]}"; do [[ -e "/proc/$p" ]] && left=1; done
  ((left)) || break; sleep 0.1
done

# ---- --purge: host-level files that up-node.sh installed, then DATA_DIR ---------------------------
if ((PURGE)); then
  if [[ ! -f "$DATA/.k8s-node-data" ]]; then log "not purging $DATA: no .k8s-node-data marker (not created by up-node.sh?)"; exit 1; fi
  if [[ -f "$DATA/installed-files" ]]; then
    while read -r kind path src; do
      case $kind in
        copy) [[ -f "$path" ]] && cmp -s "$path" "$src" && rm -f "$path" ;;
        ours) rm -f "$path" ;;
        dir) rmdir "$path" 2>/dev/null || true ;;
        tree) rm -rf -- "$path" ;;
      esac
    done < <(tac "$DATA/installed-files")
    log "removed the CNI plugins/conflist/state dirs up-node.sh had installed"
  fi
  log "removing $DATA"
  rm -rf -- "$DATA"
fi
log "stopped"

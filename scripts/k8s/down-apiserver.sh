#!/usr/bin/env bash
# scripts/k8s/down-apiserver.sh DATA_DIR [--purge]
#
# Stops what up-apiserver.sh DATA_DIR started: kube-controller-manager, kube-apiserver,
# etcd (in that order), by the PIDs recorded in DATA_DIR/run, and only if the process's
# command line still names DATA_DIR (guards against PID reuse; nothing is killed by name).
# SIGTERM, then SIGKILL after K8S_TEST_STOP_TIMEOUT [20] seconds; waits until they are gone.
# --purge also deletes DATA_DIR (only if it carries up-apiserver.sh's marker file).
set -euo pipefail

usage() { echo "usage: $0 DATA_DIR [--purge]" >&2; exit 2; }
[[ $# -ge 1 && -n "$1" ]] || usage
PURGE=0; [[ "${2:-}" == --purge ]] && PURGE=1
[[ -d "$1" ]] || { echo "[down-apiserver] $1 does not exist; nothing to do" >&2; exit 0; }
DATA=$(cd "$1" && pwd -P)
RUN="$DATA/run"
STOP_TIMEOUT=${K8S_TEST_STOP_TIMEOUT:-20}

log() { printf '[down-apiserver %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

ours() {
  local f="$RUN/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid=$(<"$f")
  [[ "$pid" =~ ^[0-9]+$ ]] && [[ -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DATA/" || return 1
  echo "$pid"
}

if [[ -d "$RUN" ]]; then
  exec 9>"$RUN/.lock"; flock 9
  for name in kube-controller-manager kube-apiserver etcd; do
    if pid=$(ours "$name"); then
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      end=$((SECONDS + STOP_TIMEOUT))
      while [[ -e "/proc/$pid" ]] && ours "$name" >/dev/null; do
        if ((SECONDS >= end)); then log "$name did not exit in ${STOP_TIMEOUT}s; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
        sleep 0.2
      done
      # it has exited; give its parent (normally init, since up-apiserver.sh is gone) a moment to reap it
      for _ in $(seq 25); do [[ -e "/proc/$pid" ]] || break; sleep 0.2; done
    fi
    rm -f "$RUN/$name.pid"
  done
fi

if ((PURGE)); then
  if [[ -f "$DATA/.k8s-test-data" ]]; then
    log "removing $DATA"
    rm -rf -- "$DATA"
  else
    log "not purging $DATA: no .k8s-test-data marker (not created by up-apiserver.sh?)"; exit 1
  fi
fi
log "stopped"

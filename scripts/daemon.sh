#!/usr/bin/env bash
# Start or stop plexus-ipamd in the background with a pidfile and a log (make start / make stop).
set -euo pipefail
RUN_DIR=${RUN_DIR:-/run/plexus}
LOG_DIR=${LOG_DIR:-/var/log/plexus}
PIDFILE=${PIDFILE:-$RUN_DIR/plexus-ipamd.pid}
running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
case "${1:-}" in
start)
    if running; then echo "plexus-ipamd already running (pid $(cat "$PIDFILE"))"; exit 0; fi
    install -d -m 0700 "$RUN_DIR"; install -d -m 0755 "$LOG_DIR"
    nohup plexus-ipamd --pidfile "$PIDFILE" --log-file "$LOG_DIR/ipamd.log" </dev/null >>"$LOG_DIR/ipamd.out" 2>&1 &
    for _ in $(seq 1 100); do
        if [ -S "$RUN_DIR/ipam.sock" ] && running; then
            echo "plexus-ipamd started (pid $(cat "$PIDFILE"), log $LOG_DIR/ipamd.log)"; exit 0
        fi
        sleep 0.1
    done
    echo "plexus-ipamd did not start; see $LOG_DIR/ipamd.log and $LOG_DIR/ipamd.out" >&2; exit 1 ;;
stop)
    if running; then
        pid=$(cat "$PIDFILE"); kill "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        echo "plexus-ipamd stopped"
    fi
    rm -f "$PIDFILE" ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

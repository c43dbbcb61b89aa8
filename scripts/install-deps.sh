#!/usr/bin/env bash
# The Debian packages Plexus needs to build, run and test (idempotent; apt only when one is missing):
# Python 3 with venv and its shared library (PyInstaller), iproute2 for the demo and tests, and
# Debian's reference CNI plugins (loopback, bridge, host-local) that Plexus is chained with and
# measured against; busybox-static for the container image (make image); strace for the test that counts the
# frozen plugin's execve()s; patchelf to give the frozen plugin's bundled libpython a $ORIGIN RUNPATH (make build).
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root (apt-get install, network namespaces)" >&2; exit 1; }
PKGS=(python3 python3-venv python3-dev libpython3.11 iproute2 iputils-ping containernetworking-plugins ca-certificates busybox-static strace patchelf)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

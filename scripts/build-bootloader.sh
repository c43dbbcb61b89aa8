#!/usr/bin/env bash
# The bootloader of the exec'd `plexus` plugin, built from PyInstaller's own sources (the version the venv has) with
# one change: a onedir program on Linux starts Python in its first process instead of execve()ing itself again.
#
# Why: PyInstaller's onedir bootloader on Linux sets LD_LIBRARY_PATH to its _internal/ folder and re-executes itself
# so that the dynamic loader sees it (pyi_main.c, PYI_PROCESS_LEVEL_PARENT_NEEDS_RESTART). The plugin needs no such
# search path: the bootloader loads libpython by its full path, and the only extension modules the shim loads
# (_json, _socket; packaging/plexus.spec excludes everything else) depend on libc alone. The second execve()
# costs a whole process start on every CNI call (~4 ms of a ~20 ms exec on the README's machine).
#
# zlib is compiled in (--static-zlib, PyInstaller's own copy): the stock bootloader's restart also served to find the
# bundled libz.so.1, and a node need not have one (`make build` gives the bundled libpython a $ORIGIN RUNPATH for the
# same reason: tests/compat/test_frozen_plugin.py runs the plugin in a root with libc alone).
#
# Output: build/bootloader/run (cached per PyInstaller version and patch). Needs gcc and root to install it when
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$PWD/.venv/bin/python}
VERSION=$("$PY" -c 'import PyInstaller; print(PyInstaller.__version__)')
OUT=build/bootloader
STAMP="$OUT/run-$VERSION-static-zlib"
if [[ -x "$STAMP" && -x "$OUT/run" ]] && cmp -s "$STAMP" "$OUT/run"; then
    exit 0
fi
missing=()
for p in gcc libc6-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if ((${#missing[@]})); then
    if ((EUID != 0)); then
        echo "the bootloader's build needs: ${missing[*]} (apt-get install them as root)" >&2
        exit 1
    fi
    echo "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
rm -rf "$OUT/src" && mkdir -p "$OUT/src"
"$PY" -m pip download -q --no-binary pyinstaller --no-deps "pyinstaller==$VERSION" -d "$OUT/src"
tar -xzf "$OUT/src/pyinstaller-$VERSION.tar.gz" -C "$OUT/src"
SRC="$OUT/src/pyinstaller-$VERSION/bootloader"
MAIN="$SRC/src/pyi_main.c"
# the onedir branch of the entry-point process, on POSIX systems other than macOS and Cygwin
"$PY" - "$MAIN" <<'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
old = ("                /* Other POSIX systems - mark as the parent/launcher\n"
       "                 * that needs to restart itself. */\n"
       "                pyi_ctx->process_level = PYI_PROCESS_LEVEL_PARENT_NEEDS_RESTART;\n")
new = ("                /* Plexus: no restart; libpython is loaded by its full path and the bundled\n"
       "                 * extension modules need no library search path (scripts/build-bootloader.sh). */\n"
       "                pyi_ctx->process_level = PYI_PROCESS_LEVEL_MAIN;\n")
if text.count(old) != 1:
    sys.exit(f"{path}: the onedir restart is not where scripts/build-bootloader.sh expects it: update the patch")
open(path, "w").write(text.replace(old, new))
EOF
(cd "$SRC" && "$PY" ./waf --static-zlib configure all >"../../waf.log" 2>&1) || { tail -30 "$OUT/src/waf.log" >&2; exit 1; }
PLATFORM=$("$PY" -c 'from PyInstaller import PLATFORM; print(PLATFORM)')
cp "$OUT/src/pyinstaller-$VERSION/PyInstaller/bootloader/$PLATFORM/run" "$OUT/run"
cp "$OUT/run" "$STAMP"
echo "bootloader: $OUT/run (PyInstaller $VERSION, no onedir restart, zlib compiled in)"

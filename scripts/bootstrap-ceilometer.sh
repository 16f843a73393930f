#!/usr/bin/env bash
# .venv-ceilometer: OpenStack Ceilometer 27 and oslo.messaging's Kafka driver, in a virtualenv of their own
# (their pins would fight the project's). tests/integration/test_ceilometer_bridge.py publishes through
# Ceilometer's own publisher with it. Idempotent: reinstalls only when this script is newer than the stamp.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${CEILOMETER_VENV:-.venv-ceilometer}"
STAMP="$VENV/.installed-stamp"
PYTHON=${PYTHON:-python3}
PACKAGES=("ceilometer==27.0.0" "oslo.messaging[kafka]")

if [ -f "$STAMP" ] && [ "$STAMP" -nt "${BASH_SOURCE[0]}" ]; then
    exit 0
fi
LOG=$(mktemp "${TMPDIR:-/tmp}/streams-ceilometer-venv.XXXXXX.log")
trap 'rm -f "$LOG"' EXIT
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
printf 'bootstrap: pip install %s into %s (a few minutes, once)\n' "${PACKAGES[*]}" "$VENV"
if ! "$VENV/bin/pip" install --disable-pip-version-check -q "${PACKAGES[@]}" >"$LOG" 2>&1; then
    printf 'bootstrap: error: pip install into %s failed\n' "$VENV" >&2
    grep -v "^WARNING: Location" "$LOG" | tail -n 40 >&2
    exit 1
fi
"$VENV/bin/python" -W ignore -c 'import ceilometer.publisher.messaging, oslo_messaging._drivers.impl_kafka' \
    || { printf 'bootstrap: error: ceilometer or the Kafka driver does not import in %s\n' "$VENV" >&2; exit 1; }
touch "$STAMP"
printf 'bootstrap: ok (%s/bin/python has ceilometer 27 and oslo.messaging[kafka])\n' "$VENV"

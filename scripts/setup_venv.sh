#!/usr/bin/env bash
# Creates .venv in the repo root (if missing) and installs ssdflow with the given extras.
# Usage: scripts/setup_venv.sh [extras]   e.g. scripts/setup_venv.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
# pip's and the build backend's chatter (setuptools' editable-install banner among it) goes to a log,
# shown only if the install fails.
log=.venv/pip-install.log
echo "setup_venv: installing ssdflow${extras:+[$extras]} into .venv (pip log: $log)"
if ! { .venv/bin/python -m pip install --quiet --upgrade pip && .venv/bin/python -m pip install --quiet -e "$spec"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup_venv: pip install failed (log: $log)" >&2
  exit 1
fi

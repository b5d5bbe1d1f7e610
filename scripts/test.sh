#!/usr/bin/env bash
# Installs ssdflow with its test extras into .venv and runs the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh test
# The browser test drives Debian's chromium (Playwright's own browser download is not used).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for the browser test (apt-get)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
# One formatter and linter (ruff, configured in pyproject.toml): a tree it would change fails here.
if ! { .venv/bin/ruff check --quiet . && .venv/bin/ruff format --check --quiet .; }; then
  echo "ruff: fix the lines above (.venv/bin/ruff check --fix . && .venv/bin/ruff format .)" >&2
  exit 1
fi
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONDONTWRITEBYTECODE=1
set +e
# Three xdist workers on 2 cores: many tests wait (servers, heartbeats, killed processes), so a third
# worker fills the gaps (2 workers: 10.5 min, 3: 8.4, 4: 9.0; docs/benchmarks.md). Servers use free
# ports, outputs go to tmp_path; a file's tests stay on one worker so its module fixtures (a trained
# model, a Prefect stack) are built once; files go out longest first (tests/conftest.py SLOW_FIRST,
# kept by --no-loadscope-reorder). The 15 slowest tests are listed.
.venv/bin/python -m pytest -ra -n "${SSDFLOW_TEST_WORKERS:-3}" --dist loadfile --no-loadscope-reorder --durations=15 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "no tests collected" >&2; exit 1; fi
exit "$rc"

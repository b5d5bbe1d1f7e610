#!/usr/bin/env bash
# Installs ssdflow into .venv and runs the main job on its embedded default (`ssdflow demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
exec .venv/bin/ssdflow demo "$@"

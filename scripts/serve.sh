#!/usr/bin/env bash
# Starts everything locally: a Prefect server on 127.0.0.1:4200 and `ssdflow serve` against it.
# Extra arguments go to `ssdflow serve` (e.g. --timezone Europe/Berlin --config params.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/ssdflow ] || bash scripts/setup_venv.sh
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}" PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export PREFECT_API_URL=http://127.0.0.1:4200/api PREFECT_UI_API_URL=http://127.0.0.1:4200/api
export PREFECT_FLOWS_HEARTBEAT_FREQUENCY="${PREFECT_FLOWS_HEARTBEAT_FREQUENCY:-30}"
# Authentication (README, "Who may run what"): with PREFECT_SERVER_API_AUTH_STRING=user:secret set (from
# a secret store), the server refuses requests without it and serve's client sends it.
if [ -n "${PREFECT_SERVER_API_AUTH_STRING:-}" ]; then export PREFECT_API_AUTH_STRING="$PREFECT_SERVER_API_AUTH_STRING"; fi
.venv/bin/prefect server start --host 127.0.0.1 --port 4200 > "$PREFECT_HOME.server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 1 120); do
  curl -fs "$PREFECT_API_URL/health" >/dev/null 2>&1 && break
  sleep 1
done
echo "Prefect UI: http://127.0.0.1:4200  (server log: $PREFECT_HOME.server.log)"
.venv/bin/ssdflow serve "$@"

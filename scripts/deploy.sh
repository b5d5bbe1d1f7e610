#!/usr/bin/env bash
# Registers ssdflow's six deployments on the ssdflow-process work pool of the Prefect server at
# PREFECT_API_URL (deploy/prefect.yaml), with the automations.
# Required: SSDFLOW_REPO (this repository, as the workers see it), SSDFLOW_DATA (root of the default
# paths), SSDFLOW_TIMEZONE (of the nightly 02:00 schedule). Then: prefect worker start --pool ssdflow-process
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for var in PREFECT_API_URL SSDFLOW_REPO SSDFLOW_DATA SSDFLOW_TIMEZONE; do
  [ -n "${!var:-}" ] || missing+=("$var")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "error: set ${missing[*]} (see deploy/prefect.yaml)" >&2
  exit 2
fi
bin=${SSDFLOW_BIN:-.venv/bin}
"$bin/prefect" work-pool inspect ssdflow-process >/dev/null 2>&1 || "$bin/prefect" work-pool create ssdflow-process --type process
"$bin/prefect" --no-prompt deploy --all --prefect-file deploy/prefect.yaml
"$bin/ssdflow" automations

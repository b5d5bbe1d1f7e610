"""What a process pays for at import: a flow run that trains nothing never imports TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_flows_and_the_cli_import_without_tensorflow():
    """Every Prefect flow run's process imports the flows' modules (flows.serve loads them all):
    ingest, score's driver and the models deployment must not pay TensorFlow's seconds of import
    for a training they do not run (flows/epoch_log.py holds the one Keras callback)."""
    script = (
        "import json, sys; import flows.serve, flows.nightly, ssdflow.cli; "
        "print(json.dumps(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []

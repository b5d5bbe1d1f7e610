"""The crash-recovery automations compare equal across processes, so a restarted serve leaves them alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flows.recovery import _definition, automations

REPO = Path(__file__).resolve().parents[2]
SCRIPT = "import json; from flows.recovery import _definition, automations; print(json.dumps([_definition(a) for a in automations(45)]))"


def test_definition_is_the_same_in_every_process():
    """A set's order follows string hashing, which differs per process (seeds 1 and 2 list the
    trigger's events in different orders): an unchanged automation must still compare equal, or a
    restarted serve replaces it and loses the heartbeat that starts a dead run's clock."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        for seed in ("1", "2")
    ]
    outputs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outputs[0] == outputs[1]


def test_definition_sees_a_real_change():
    assert _definition(automations(90)[0]) != _definition(automations(45)[0])
    assert _definition(automations(45)[1]) == _definition(automations(45)[1])

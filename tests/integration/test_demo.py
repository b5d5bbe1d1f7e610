"""`ssdflow demo`, the README's main job, end to end on a small synthetic dataset (no ../shared needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.integration


def test_demo_runs_every_job_and_says_where_outputs_are(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ssdflow.cli", "demo", "--workdir", str(tmp_path), "--images", "30", "--epochs", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "demo: ingest wrote 30 images" in out
    assert f"records : {tmp_path}/ingest" in out and f"registry: {tmp_path}/models/champion.json" in out
    assert json.loads((tmp_path / "ingest" / "_SUCCESS").read_text())["images_in"] == 30
    decisions = (tmp_path / "models" / "decisions.jsonl").read_text().splitlines()
    assert len(decisions) == 1
    decision = json.loads(decisions[0])  # one epoch may stay below the --min-map floor: promoted or not, it is recorded
    assert (tmp_path / "models" / "champion.json").exists() == decision["promoted"]
    assert (tmp_path / "models" / decision["challenger"] / "saved_model.pb").exists()
    assert f"model   : {tmp_path}/models/{decision['challenger']}" in out
    scored = json.loads((tmp_path / "scored" / "_SUCCESS").read_text())
    assert scored["images_in"] == 30 and scored["images_in"] == scored["images_scored"] + scored["images_failed"]
    assert f"scored  : {tmp_path}/scored" in out
    # The previews: the first 5 images with detections (a 1-epoch model may find few), named after their sources.
    found = [
        r
        for f in sorted((tmp_path / "scored").glob("detections-*.jsonl"))
        for r in map(json.loads, f.read_text().splitlines())
        if r["detections"]
    ]
    previews = sorted(p.name for p in (tmp_path / "scored" / "preview").glob("*.jpg"))
    assert previews == sorted(os.path.splitext(os.path.basename(r["source"]))[0] + ".jpg" for r in found[:5])

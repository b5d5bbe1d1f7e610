"""Progress for the person waiting, through the real console script with its output in a log (a
pipe): ingest and score print plain progress lines (done / total, rate, ETA), no ANSI codes, the
last one at 100 % (ssdflow/progress.py; training's lines: test_train_resume.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO, raccoon_subset

pytestmark = pytest.mark.integration
LINE = re.compile(
    r"^(ingest|score): (\d+)/(\d+) (images|files) \((\d+)%\), [\d.]+ \4/s(, ETA \d+:\d\d:\d\d)?, \d+:\d\d:\d\d so far"
)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SSDFLOW_PROGRESS_SECONDS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "ssdflow.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_ingest_and_score_say_how_far_they_are_in_a_log(raccoon_model, tmp_path):
    images, labels = raccoon_subset(tmp_path, 30)
    ingest = _run(
        "ingest", "--images", str(images), "--labels", str(labels), "--format", "voc", "--out", str(tmp_path / "rec")
    )
    score = _run(
        "score", "--model", raccoon_model, "--images", str(images), "--out", str(tmp_path / "out"), "--chunk-size", "10"
    )
    for job, proc in (("ingest", ingest), ("score", score)):
        assert "\x1b[" not in proc.stdout + proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith(f"{job}: ")]
        # One a second while it runs (scoring loads its model for seconds first), and the last.
        assert len(lines) >= (2 if job == "score" else 1), proc.stderr[-3000:]
        *_, last = lines
        assert LINE.match(last), last
        assert last.startswith(f"{job}: 30/30 ") and "(100%)" in last and last.endswith("(finished)"), last
        counts = [int(LINE.match(line).group(2)) for line in lines if LINE.match(line)]
        assert counts == sorted(counts)  # never backwards

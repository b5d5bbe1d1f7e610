"""Fault injection: the ingest job is SIGKILLed at a random point, then rerun.

(Training and scoring have their own SIGKILL tests beside their other tests:
test_train.py::test_killed_training_resumes_from_its_checkpoint and
test_score.py::test_resume_after_sigkill_scores_only_what_is_left.)

The kill point is random (seeded; the seed is printed and can be replayed with
SSDFLOW_FAULT_SEED). Whatever it hits, a reader must never see a partial output as complete, and
a rerun must give exactly the records and stats of an uninterrupted run, with no duplicates and no
temporary files left behind.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from beam_jobs.ingest import run_ingest
from ssdflow import storage
from ssdflow.config import IngestConfig
from tests.helpers import REPO, raccoon_or_skip, read_ingest_output, read_json

pytestmark = pytest.mark.integration


def _ingest_cmd(images: str, labels: str, out: str) -> list[str]:
    return [sys.executable, "-m", "ssdflow.cli", "ingest", "--images", images, "--labels", labels, "--format", "voc",
            "--out", out, "--num-shards", "3"]


def _complete_or_absent(out) -> None:
    """What a reader may see after the kill: no _SUCCESS, or a _SUCCESS whose listed files all exist whole."""
    manifest = storage.read_success(str(out))
    if manifest is None:
        return
    for name in manifest["files"]:
        assert (out / name).is_file(), f"_SUCCESS lists {name}, which is missing"
    read_ingest_output(out)  # every shard parses to its end (a torn file fails its CRC)


def test_ingest_killed_at_a_random_point_then_rerun_equals_uninterrupted(tmp_path):
    root = raccoon_or_skip()
    images, labels = str(root / "images"), str(root / "annotations")
    ref = tmp_path / "ref"
    run_ingest(IngestConfig(images=images, labels=labels, format="voc", out=str(ref), num_shards=3))

    seed = int(os.environ.get("SSDFLOW_FAULT_SEED", random.randrange(1_000_000)))
    delay = random.Random(seed).uniform(0.0, 3.0)
    print(f"fault seed {seed}: SIGKILL {delay:.2f}s after the job starts writing")  # shown on failure; replay with SSDFLOW_FAULT_SEED

    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(_ingest_cmd(images, labels, str(out)), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 120
    while not os.listdir(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # the job's temp directory appears once the pipeline starts
    time.sleep(delay)
    finished_first = proc.poll() is not None
    if not finished_first:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    _complete_or_absent(out)

    done = subprocess.run(_ingest_cmd(images, labels, str(out)), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert read_ingest_output(out) == read_ingest_output(ref)  # same records, none twice
    for split in ("train", "val"):
        assert read_ingest_output(out, split).keys() == read_ingest_output(ref, split).keys()
    stats, ref_stats = read_json(out / "stats.json"), read_json(ref / "stats.json")
    assert {k: v for k, v in stats.items() if k != "out"} == {k: v for k, v in ref_stats.items() if k != "out"}
    assert (out / "rejected.jsonl").read_text() == (ref / "rejected.jsonl").read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())  # no temp dirs, no strays

"""Fault injection: the ingest job is SIGKILLed mid-encode and mid-commit, then rerun.

(Training and scoring have their own SIGKILL tests beside their other tests:
test_train_resume.py::test_killed_training_resumes_from_its_checkpoint and
test_score.py::test_resume_after_sigkill_scores_only_what_is_left.)

Each kill lands where it is meant to: the job runs as ``ssdflow ingest`` in its own process group,
started through a small wrapper that stops it at the chosen point (the k-th image encoded, or the
k-th file moved into ``--out`` by the commit; k seeded at random, the seed printed and replayable
with SSDFLOW_FAULT_SEED) and says so in a flag file; the test kills the group only once the flag
is there, and asserts the job had not finished. A reader must then never see a partial output as
complete, and a rerun must give exactly the records and stats of an uninterrupted run, with no
duplicates and no temporary files left behind.
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

# Runs `ssdflow ingest ARGS` with one function wrapped: the call numbered KILL_AFTER writes KILL_FLAG
# and then waits to be killed. Nothing in the product knows about it.
WRAPPER = r"""
import os, pathlib, runpy, sys, time

import beam_jobs.ingest.encoding as encoding
import ssdflow.storage as storage

flag, after, point = pathlib.Path(os.environ["KILL_FLAG"]), int(os.environ["KILL_AFTER"]), os.environ["KILL_POINT"]
calls, committing = [], []

def stopping(real, counts=lambda: True):
    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        if counts():
            calls.append(1)
            if len(calls) == after:  # the flag appears whole (the test reads it as soon as it exists)
                storage.atomic_write_local(flag, f"{point} {len(calls)}")
                time.sleep(600)
        return out
    return wrapped

if point == "encode":  # the k-th image encoded (its record written to a part file)
    encoding.encode_image = stopping(encoding.encode_image)
else:  # the k-th file the commit has moved into --out (the pipeline may move files too: not counted)
    real_commit = storage.commit
    def commit(*args, **kwargs):
        committing.append(1)
        return real_commit(*args, **kwargs)
    storage.commit = commit
    storage.move = stopping(storage.move, counts=lambda: bool(committing))
sys.argv = ["ssdflow", "ingest", *sys.argv[1:]]
runpy.run_module("ssdflow.cli", run_name="__main__")
"""


def _ingest_args(images: str, labels: str, out: str) -> list[str]:
    return ["--images", images, "--labels", labels, "--format", "voc", "--out", out, "--num-shards", "3"]


def _complete_or_absent(out) -> None:
    """What a reader may see after the kill: no _SUCCESS, or a _SUCCESS whose listed files all exist whole."""
    manifest = storage.read_success(str(out))
    if manifest is None:
        return
    for name in manifest["files"]:
        assert (out / name).is_file(), f"_SUCCESS lists {name}, which is missing"
    read_ingest_output(out)  # every shard parses to its end (a torn file fails its CRC)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = raccoon_or_skip()
    images, labels = str(root / "images"), str(root / "annotations")
    ref = tmp_path_factory.mktemp("fault") / "ref"
    run_ingest(IngestConfig(images=images, labels=labels, format="voc", out=str(ref), num_shards=3))
    return images, labels, ref


@pytest.mark.parametrize("point", ["encode", "commit"])
def test_ingest_killed_mid_encode_or_mid_commit_then_rerun_equals_uninterrupted(reference, tmp_path, point):
    images, labels, ref = reference
    seed = int(os.environ.get("SSDFLOW_FAULT_SEED", random.randrange(1_000_000)))
    # encode: 200 images are encoded, 150 at most before the kill; commit: one move per file _SUCCESS lists.
    last = 150 if point == "encode" else len(storage.read_success(str(ref))["files"]) - 1
    after = random.Random(seed).randint(1, last)
    print(f"fault seed {seed}: SIGKILL at {point} call {after}")  # shown on failure; replay with SSDFLOW_FAULT_SEED

    out, flag = tmp_path / "out", tmp_path / "flag"
    out.mkdir()
    env = dict(os.environ, KILL_FLAG=str(flag), KILL_AFTER=str(after), KILL_POINT=point)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, *_ingest_args(images, labels, str(out))],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not flag.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert flag.exists() and proc.poll() is None, (
        f"the job ended before {point} call {after}: {proc.stdout.read()[-3000:]!r}"
    )
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL  # killed, not finished
    assert flag.read_text() == f"{point} {after}"

    assert storage.read_success(str(out)) is None  # the kill came before _SUCCESS, the commit's last write
    moved = sorted(p.name for p in out.iterdir() if not p.name.startswith(storage.TMP_PREFIX))
    if point == "commit":  # part of the output is in place, and without _SUCCESS it does not look complete
        assert len(moved) == after, moved
    else:
        assert moved == [], moved
    _complete_or_absent(out)

    done = subprocess.run(
        [sys.executable, "-m", "ssdflow.cli", "ingest", *_ingest_args(images, labels, str(out))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert read_ingest_output(out) == read_ingest_output(ref)  # same records, none twice
    for split in ("train", "val"):
        assert read_ingest_output(out, split).keys() == read_ingest_output(ref, split).keys()
    stats, ref_stats = read_json(out / "stats.json"), read_json(ref / "stats.json")
    assert {k: v for k, v in stats.items() if k != "out"} == {k: v for k, v in ref_stats.items() if k != "out"}
    assert (out / "rejected.jsonl").read_text() == (ref / "rejected.jsonl").read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())  # no temp dirs, no strays

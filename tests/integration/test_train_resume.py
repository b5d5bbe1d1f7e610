"""Training killed by SIGKILL resumes from its epoch checkpoint; --resume refuses other settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ssdflow.config import TrainConfig
from tests.helpers import REPO, TINY_TRAIN as TINY

pytestmark = pytest.mark.integration
tf = pytest.importorskip("tensorflow")


def test_killed_training_resumes_from_its_checkpoint(shapes, tmp_path):
    models = tmp_path / "models"
    cmd = [sys.executable, "-m", "ssdflow.cli", "train", "--data", shapes["records"], "--models", str(models),
           "--alpha", "0.35", "--image-size", "128", "--batch-size", "4", "--backbone-weights", "none",
           "--epochs", "2", "--steps-per-epoch", "6", "--min-map", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = models / ".train-run" / "phase1" / "checkpoint"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), "no checkpoint after the first epoch"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (models / "champion.json").exists()

    done = subprocess.run(cmd + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from the checkpoint after epoch" in done.stderr
    assert "promoted to champion" in done.stdout
    assert not (models / ".train-run").exists()


def test_resume_refuses_a_run_with_other_settings(shapes, tmp_path):
    from model.train import RUN_DIR, TrainError, _prepare_run_dir

    cfg = TrainConfig(data=shapes["records"], models=str(tmp_path), **TINY, epochs=2)
    _prepare_run_dir(cfg, {"a": 1})
    assert (tmp_path / RUN_DIR / "run.json").exists()
    with pytest.raises(TrainError, match="other settings"):
        _prepare_run_dir(cfg.model_copy(update={"resume": True}), {"a": 2})

"""Training killed by SIGKILL resumes from its epoch checkpoint; an interrupted run is kept unless --fresh;
one training per models directory at a time."""

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

    # Run again without --resume: refused, and the interrupted run's checkpoints are kept.
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2, again.stderr[-3000:]
    assert "holds an interrupted run of these settings and data: pass --resume to continue it, or --fresh" in again.stderr
    assert ckpt.exists()

    done = subprocess.run(cmd + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from the checkpoint after epoch" in done.stderr
    assert "promoted to champion" in done.stdout
    assert not (models / ".train-run").exists()
    # Its output is a log (a pipe): a header saying what is trained, then one plain line per epoch
    # run now (the second; the first was done before the kill), no Keras bar, no ANSI codes.
    lines = done.stdout.splitlines()
    assert lines[0].startswith("train: ") and "SSD MobileNetV2 alpha 0.35, 128 px" in lines[0] and "at most 2 epochs" in lines[0]
    assert [line.split(",")[0] for line in lines if " epoch " in line] == ["train: epoch 2 of at most 2 (phase1)"]
    assert "\x1b[" not in done.stdout + done.stderr


def test_an_interrupted_run_is_kept_unless_fresh_and_resume_needs_the_same_settings(shapes, tmp_path):
    from model.run_record import RUN_DIR, TrainError, prepare_run_dir

    cfg = TrainConfig(data=shapes["records"], models=str(tmp_path), **TINY, epochs=2)
    run_dir = tmp_path / RUN_DIR
    prepare_run_dir(cfg, {"a": 1})
    (run_dir / "phase1").mkdir()  # stands for its checkpoints
    with pytest.raises(TrainError, match="--resume: the interrupted run .* used other settings or data; pass --fresh"):
        prepare_run_dir(cfg.model_copy(update={"resume": True}), {"a": 2})
    with pytest.raises(TrainError, match="interrupted run of other settings or data, or --fresh"):
        prepare_run_dir(cfg, {"a": 2})
    with pytest.raises(TrainError, match="interrupted run of these settings and data: pass --resume"):
        prepare_run_dir(cfg, {"a": 1})
    assert (run_dir / "phase1").exists()
    assert prepare_run_dir(cfg.model_copy(update={"resume": True}), {"a": 1}) == str(run_dir) and (run_dir / "phase1").exists()
    prepare_run_dir(cfg.model_copy(update={"fresh": True}), {"a": 2})
    assert not (run_dir / "phase1").exists()
    with pytest.raises(ValueError, match="resume and fresh exclude each other"):
        TrainConfig(**{**cfg.model_dump(), "resume": True, "fresh": True})


def test_a_second_training_on_the_same_models_directory_is_refused(shapes, tmp_path):
    from model.run_record import LOCK, RUN_DIR, TrainError, training_lock
    from model.train import train

    cfg = TrainConfig(data=shapes["records"], models=str(tmp_path), **TINY, epochs=1)
    with training_lock(str(tmp_path)):  # as a training in progress holds it
        holder = (tmp_path / LOCK).read_text()
        with pytest.raises(TrainError, match=f"another training is running on {tmp_path} \\(pid {os.getpid()} "):
            train(cfg)
        assert not (tmp_path / RUN_DIR).exists()
    assert str(os.getpid()) in holder
    with training_lock(str(tmp_path)):  # released at the end: the next one gets it
        pass

"""Training killed by SIGKILL resumes from its epoch checkpoint; an interrupted run is kept unless --fresh;
one training per models directory at a time."""

from __future__ import annotations

import json
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


# Runs `ssdflow train ARGS`, stopping for the kill once the checkpoint after epoch KILL_AFTER is saved.
STOP_AFTER_CHECKPOINT = r"""
import os, pathlib, runpy, sys, time

from model.callbacks import EpochCheckpoint

flag, after, real = pathlib.Path(os.environ["KILL_FLAG"]), int(os.environ["KILL_AFTER"]), EpochCheckpoint.on_epoch_end

def on_epoch_end(self, epoch, logs=None):
    real(self, epoch, logs)
    if epoch + 1 == after:
        flag.write_text(f"checkpoint after epoch {epoch + 1}")
        time.sleep(600)

EpochCheckpoint.on_epoch_end = on_epoch_end
sys.argv = ["ssdflow", "train", *sys.argv[1:]]
runpy.run_module("ssdflow.cli", run_name="__main__")
"""


def _weights(path) -> dict:
    import h5py
    import numpy as np

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, np.array(obj)) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_killed_training_resumes_from_its_checkpoint(shapes, tmp_path, capfd):
    """Killed after epoch 1's checkpoint (the test stops it there and asserts it had not finished),
    resumed: the same optimizer step count, every epoch once in its histories, and, with
    --deterministic (the same batches in the same order, the stream resumed where the checkpoint
    left it) and no time budget (whose LR schedule follows the clock), bit for bit the weights of an
    uninterrupted run."""
    import numpy as np

    from model.export import KERAS_WEIGHTS

    args = [
        "--data",
        shapes["records"],
        "--alpha",
        "0.35",
        "--image-size",
        "128",
        "--batch-size",
        "4",
        "--backbone-weights",
        "none",
        "--epochs",
        "3",
        "--steps-per-epoch",
        "4",
        "--min-map",
        "0",
        "--deterministic",
        "--time-budget",
        "0",
        "--eval-every",
        "1",
    ]
    train = [sys.executable, "-m", "ssdflow.cli", "train", *args]
    ref_models, models = tmp_path / "ref", tmp_path / "models"
    ref = subprocess.run(train + ["--models", str(ref_models)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    flag = tmp_path / "flag"
    env = dict(os.environ, KILL_FLAG=str(flag), KILL_AFTER="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", STOP_AFTER_CHECKPOINT, *args, "--models", str(models)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not flag.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert flag.exists() and proc.poll() is None, "the training ended before its first checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL  # killed, not finished
    ckpt = models / ".train-run" / "phase1" / "checkpoint"
    assert ckpt.exists() and not (models / "champion.json").exists()

    # Run again without --resume (the real command, in this process: no second TensorFlow start-up):
    # refused, and the interrupted run's checkpoints are kept.
    from ssdflow.cli_errors import run_cli

    capfd.readouterr()
    assert run_cli(["train", *args, "--models", str(models)]) == 2
    assert (
        "holds an interrupted run of these settings and data: pass --resume to continue it, or --fresh"
        in capfd.readouterr().err
    )
    assert ckpt.exists()
    cmd = train + ["--models", str(models)]

    done = subprocess.run(cmd + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from the checkpoint after epoch 1 of 3" in done.stderr
    assert "promoted to champion" in done.stdout
    assert not (models / ".train-run").exists()
    # Its output is a log (a pipe): a header saying what is trained, then one plain line per epoch
    # run now (the first was done before the kill), no Keras bar, no ANSI codes.
    lines = done.stdout.splitlines()
    assert (
        lines[0].startswith("train: ")
        and "SSD MobileNetV2 alpha 0.35, 128 px" in lines[0]
        and "at most 3 epochs" in lines[0]
    )
    assert [line.split(",")[0] for line in lines if " epoch " in line] == [
        f"train: epoch {e} of at most 3 (phase1)" for e in (2, 3)
    ]
    assert "\x1b[" not in done.stdout + done.stderr

    # The state, against the uninterrupted run.
    from model import registry

    (ref_version,), (version,) = registry.list_versions(str(ref_models)), registry.list_versions(str(models))
    ref_dir, dir_ = ref_models / ref_version, models / version
    ref_metrics, metrics = (json.loads((d / "metrics.json").read_text()) for d in (ref_dir, dir_))
    assert metrics["optimizer_steps"] == ref_metrics["optimizer_steps"] == {"phase1": 12}
    assert [(e["phase"], e["epoch"], e["steps"]) for e in metrics["history"]] == [
        ("phase1", e, 4 * e) for e in (1, 2, 3)
    ]
    assert metrics["epochs"] == ref_metrics["epochs"] == 3
    assert [e["loss"] for e in metrics["history"]] == [e["loss"] for e in ref_metrics["history"]]
    assert [(e["phase"], e["epoch"]) for e in metrics["validation_history"]] == [("phase1", e) for e in (1, 2, 3)]
    assert (
        metrics["validation_history"][0]["mAP"] == ref_metrics["validation_history"][0]["mAP"]
    )  # made before the kill
    assert metrics["best_epoch"] == ref_metrics["best_epoch"]
    ref_weights, weights = _weights(ref_dir / KERAS_WEIGHTS), _weights(dir_ / KERAS_WEIGHTS)
    assert ref_weights.keys() == weights.keys() and len(weights) > 100
    different = [k for k in weights if not np.array_equal(weights[k], ref_weights[k])]
    assert different == [], different[:5]


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
    assert (
        prepare_run_dir(cfg.model_copy(update={"resume": True}), {"a": 1}) == str(run_dir)
        and (run_dir / "phase1").exists()
    )
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

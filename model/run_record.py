"""The record of a training run: its identity (settings + data), its directory of checkpoints and
its lock, and the model card it leaves with the version.

``model/train.py`` fits and registers; this module decides whether a run may start, continue or
is already done, and writes down what happened.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import socket

from model import registry, report
from model.anchors import feature_map_sizes
from ssdflow import storage
from ssdflow.config import FALLBACK_SCORE_THRESHOLD, ModelConfig, TrainConfig

log = logging.getLogger(__name__)

RUN_DIR = ".train-run"  # MODELS/.train-run: the checkpoints of the run in progress or interrupted
LOCK = ".train.lock"  # MODELS/.train.lock: held by the training in progress


class TrainError(RuntimeError):
    """A training that cannot start or go on; the message says what to change."""


def data_fingerprint(data_dir: str) -> str:
    """A short hash of the ingest output's manifest: which data a model was trained on."""
    manifest = storage.read_success(data_dir)
    stats = storage.read_text(storage.join(data_dir, "stats.json"))
    return hashlib.sha256((json.dumps(manifest, sort_keys=True) + stats).encode()).hexdigest()[:16]


def run_config(cfg: TrainConfig) -> dict:
    """What an interrupted run must share with its resumption: the settings and the data."""
    return {"train": cfg.model_dump(exclude={"resume", "fresh"}), "data_fingerprint": data_fingerprint(cfg.data)}


def champion_trained_alike(cfg: TrainConfig) -> tuple[str, dict] | None:
    """(the champion's version, its metrics) if it was trained with exactly these settings on
    exactly this data: a nightly run then has nothing to learn (training again would only add a
    near-copy); None otherwise."""
    champion = registry.read_champion(cfg.models) if os.path.isdir(cfg.models) else None
    if champion is None:
        return None
    path = registry.version_dir(cfg.models, champion["version"]) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    return (champion["version"], metrics) if metrics.get("run_key") == run_key(run_config(cfg)) else None


def run_key(config: dict) -> str:
    """A short hash of a ``run_config``: recorded in metrics.json, so a rerun finds the version it already made."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def completed_version(cfg: TrainConfig) -> str | None:
    """The newest committed version trained with exactly these settings on exactly this data."""
    key = run_key(run_config(cfg))
    for version in reversed(registry.list_versions(cfg.models)):
        path = registry.version_dir(cfg.models, version) / "metrics.json"
        if path.exists() and json.loads(path.read_text()).get("run_key") == key:
            return version
    return None


def can_resume(cfg: TrainConfig) -> bool:
    """Whether ``MODELS/.train-run`` holds an interrupted run of exactly these settings and data."""
    saved = os.path.join(cfg.models, RUN_DIR, "run.json")
    if not os.path.exists(saved):
        return False
    with open(saved) as f:
        return json.load(f) == run_config(cfg)


def prepare_run_dir(cfg: TrainConfig, config: dict) -> str:
    """``MODELS/.train-run`` for this run: the interrupted run's, with ``resume``; a new one otherwise.

    A run directory that is still there holds an interrupted run (a finished run removes its own):
    its checkpoints are kept unless ``fresh`` says to discard them, so a second ``ssdflow train`` on
    the same models directory never deletes a crashed run's progress by accident.
    """
    run_dir = os.path.join(cfg.models, RUN_DIR)
    saved = os.path.join(run_dir, "run.json")
    if os.path.exists(saved) and not cfg.fresh:
        with open(saved) as f:
            same = json.load(f) == config
        if cfg.resume and same:
            return run_dir
        if cfg.resume:
            raise TrainError(f"--resume: the interrupted run in {run_dir} used other settings or data; "
                             "pass --fresh to discard its checkpoints and start over")
        what = "these settings and data: pass --resume to continue it" if same else "other settings or data"
        raise TrainError(f"{run_dir} holds an interrupted run of {what}, or --fresh to discard its checkpoints and start over")
    if cfg.resume:
        log.warning("train: --resume, but %s holds no interrupted run: starting a new one", run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    with open(saved, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    return run_dir


@contextlib.contextmanager
def training_lock(models: str):
    """Holds ``MODELS/.train.lock`` (an exclusive flock) for a whole training: a second training on
    the same models directory fails at once, naming the first, instead of sharing its run directory.

    flock works between processes of one machine (and on most network file systems); the lock goes
    with the process, so a killed training never leaves a stale lock behind.
    """
    import fcntl

    os.makedirs(models, exist_ok=True)
    f = open(os.path.join(models, LOCK), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "holder unknown"
        f.close()
        raise TrainError(f"another training is running on {models} ({holder}); wait for it to end, or use another --models") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}\n")
        f.flush()
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def write_model_card(path: str, version: str, cfg: TrainConfig, model_cfg: ModelConfig, metrics: dict, label_map,
                     fingerprint: str) -> None:
    per_class = "\n".join(
        f"| {name} | {_fmt(m.get('AP'))} | {_fmt(m.get('AP@.5'))} |" for name, m in metrics.get("per_class", {}).items())
    text = f"""# Model card: {version}

- Created: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}
- Architecture: {_architecture_text(model_cfg)}
- Backbone weights: {cfg.backbone_weights}
- Started from: {metrics.get('initialized_from', 'backbone')}
- Training data: `{cfg.data}` (fingerprint {fingerprint}; {metrics['train_images']} train / {metrics['val_images']} val images)
- Training: {metrics['epochs']} epochs of at most {metrics['max_epochs']} in {metrics['fit_seconds']:.0f} s (time budget {_budget_text(cfg)}; phases ended by {', '.join(metrics['phases_ended_by']) or 'nothing'}; fine-tune share {cfg.fine_tune_fraction:g}), batch {cfg.batch_size}, peak LR {cfg.peak_learning_rate():g}, {cfg.classification_loss} loss
- Exported weights: {_best_epoch_text(metrics)}

## Metrics on the val split (COCO, pycocotools)

| metric | value |
| --- | --- |
| mAP@[.5:.95] | {_fmt(metrics['mAP'])} |
| mAP@.5 | {_fmt(metrics['mAP@.5'])} |
| mAP@.75 | {_fmt(metrics.get('mAP@.75'))} |
| mAP small / medium / large (COCO areas, pixels of the original image) | {_fmt(metrics.get('mAP_small'))} / {_fmt(metrics.get('mAP_medium'))} / {_fmt(metrics.get('mAP_large'))} |

| class | AP | AP@.5 |
| --- | --- | --- |
{per_class}

{_thresholds_text(metrics.get("score_thresholds"))}
{report.markdown(os.path.dirname(path))}
## Configuration

```json
{json.dumps(cfg.model_dump(), indent=2)}
```
"""
    with open(path, "w") as f:
        f.write(text)


def _thresholds_text(calibration: dict | None) -> str:
    """The per-class score thresholds that ``ssdflow score`` applies by default, with what they give on val."""
    if not calibration:
        return ""
    target = "the best F1" if calibration["target"] == "max_f1" else calibration["target"].replace(">=", " ≥ ")
    rows = "\n".join(
        f"| {name} | {_fmt(p['threshold'])} | {_fmt(p['precision'])} | {_fmt(p['recall'])} | {_fmt(p['f1'])} | "
        f"{_fmt(calibration['global']['per_class_f1'].get(name))} | {p['val_objects']} |"
        for name, p in calibration["per_class"].items())
    return f"""## Score thresholds (calibrated on the val split, IoU 0.5)

Each class's threshold is chosen for {target}; `ssdflow score` applies them (`--score-threshold auto`, the
default), {FALLBACK_SCORE_THRESHOLD} for a class without one. The best single threshold for all classes would be
{_fmt(calibration['global']['threshold'])}.

| class | threshold | precision | recall | F1 | F1 at the best single threshold | val objects |
| --- | --- | --- | --- | --- | --- | --- |
{rows}
"""


def _architecture_text(cfg: ModelConfig) -> str:
    levels = feature_map_sizes(cfg.image_size, cfg.extra_levels, cfg.finest_stride)
    head = "SSD FPN-lite (stride-8 to 32 maps fused top-down)" if cfg.finest_stride == 8 else "SSDLite"
    return (f"{head}, MobileNetV2 backbone (alpha {cfg.alpha:g}), {cfg.image_size}x{cfg.image_size} input, "
            f"{cfg.num_classes} classes; {len(levels)} feature levels ({'/'.join(map(str, levels))} cells a side), "
            f"anchor scales {cfg.first_scale:.3g}-{cfg.max_scale:g} of the image side")


def _budget_text(cfg: TrainConfig) -> str:
    return f"{cfg.time_budget:g} min" if cfg.time_budget else "none"


def _best_epoch_text(metrics: dict) -> str:
    best = metrics.get("best_epoch")
    if best is None:
        return "the last epoch's (no val evaluation during training)"
    if best == 0:
        return (f"the starting weights' (no epoch of this run beat them on val mAP@.5; "
                f"{len(metrics.get('validation_history', []))} evaluated)")
    return (f"{metrics.get('best_phase')} epoch {best}, the best val mAP@.5 of the "
            f"{len(metrics.get('validation_history', []))} evaluated")


def decision_markdown(decision: dict) -> str:
    return (f"\n## Promotion decision\n\n- Promoted: **{'yes' if decision['promoted'] else 'no'}**\n"
            f"- Challenger {decision['metric']}: {_fmt(decision.get('challenger_score'))}; champion "
            f"({decision.get('champion') or 'none'}): {_fmt(decision.get('champion_score'))}\n- Reason: {decision['reason']}\n")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"

"""Training: ingest output → fitted SSD → exported, evaluated challenger → promoted if it beats the champion.

Transfer learning in two phases (as the TF OD API fine-tunes its zoo models):

1. the pretrained backbone frozen (BatchNorm in inference mode), heads and extra levels trained
   with a cosine schedule after a linear warm-up;
2. the backbone's top blocks unfrozen at a lower learning rate.

With ``--backbone-weights none`` there is nothing to protect: one phase trains everything.

A checkpoint (model, optimizer, epoch; tf.train.CheckpointManager, written atomically) is taken
after every epoch under ``MODELS/.train-run/``; ``--resume`` continues from it after a crash.
On GPUs the same code runs with mixed precision and MirroredStrategy.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass

import keras
import tensorflow as tf

from model import registry
from model.anchors import generate_anchors
from model.dataset import count_records, make_dataset, read_label_map, shard_files
from model.evaluate import write_metrics
from model.callbacks import AverageWeights, EpochCheckpoint, KeepBest, ValidationMAP
from model.export import KERAS_WEIGHTS, export_saved_model
from model.losses import SSDLoss
from model.schedule import Clock, TimeBudget, WarmupCosine
from model.ssd import build_ssd, freeze_backbone, unfreeze_top
from model.validation import make_detect_fn, score_saved_model
from ssdflow import storage
from ssdflow.config import ModelConfig, TrainConfig

log = logging.getLogger(__name__)

RUN_DIR = ".train-run"


class TrainError(RuntimeError):
    pass


@dataclass
class TrainResult:
    version: str
    model_dir: str
    metrics: dict
    decision: dict
    epochs_run: int


# --- devices -------------------------------------------------------------------------------------
def distribution_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over all GPUs when there are several; the default strategy otherwise."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def configure_precision() -> str:
    """mixed_float16 on GPUs (the heads' final concat stays float32), float32 on CPU."""
    policy = "mixed_float16" if tf.config.list_logical_devices("GPU") else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


# --- the run -------------------------------------------------------------------------------------
def data_fingerprint(data_dir: str) -> str:
    """A short hash of the ingest output's manifest: which data a model was trained on."""
    manifest = storage.read_success(data_dir)
    stats = storage.read_text(storage.join(data_dir, "stats.json"))
    return hashlib.sha256((json.dumps(manifest, sort_keys=True) + stats).encode()).hexdigest()[:16]


def _run_config(cfg: TrainConfig) -> dict:
    """What an interrupted run must share with its resumption: the settings and the data."""
    return {"train": cfg.model_dump(exclude={"resume"}), "data_fingerprint": data_fingerprint(cfg.data)}


def _run_key(run_config: dict) -> str:
    return hashlib.sha256(json.dumps(run_config, sort_keys=True).encode()).hexdigest()[:16]


def completed_version(cfg: TrainConfig) -> str | None:
    """The newest committed version trained with exactly these settings on exactly this data."""
    key = _run_key(_run_config(cfg))
    for version in reversed(registry.list_versions(cfg.models)):
        path = registry.version_dir(cfg.models, version) / "metrics.json"
        if path.exists() and json.loads(path.read_text()).get("run_key") == key:
            return version
    return None


def _finish_completed(cfg: TrainConfig, version: str) -> "TrainResult":
    """A rerun after a crash that happened once ``version`` was committed: no second training, no
    second version; the promotion decision is made now only if the crash came before it."""
    model_dir = registry.version_dir(cfg.models, version)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    decision_path = model_dir / "decision.json"
    if decision_path.exists():
        decision = json.loads(decision_path.read_text())
    else:
        policy = promotion_policy(cfg)
        decision = registry.promote_if_better(cfg.models, version, lambda d: score_saved_model(str(d), cfg.data, "val"), policy)
        with open(model_dir / "model_card.md", "a") as f:
            f.write(_decision_markdown(decision))
    shutil.rmtree(os.path.join(cfg.models, RUN_DIR), ignore_errors=True)
    log.warning("train: %s was already trained with these settings and data; reusing it", version)
    return TrainResult(version, str(model_dir), metrics, decision, 0)


def promotion_policy(cfg: TrainConfig) -> registry.PromotionPolicy:
    return registry.PromotionPolicy(tolerance=cfg.promotion_tolerance, min_score=cfg.min_map,
                                    on_label_map_change=cfg.on_label_map_change)


def can_resume(cfg: TrainConfig) -> bool:
    """Whether ``MODELS/.train-run`` holds an interrupted run of exactly these settings and data."""
    saved = os.path.join(cfg.models, RUN_DIR, "run.json")
    if not os.path.exists(saved):
        return False
    with open(saved) as f:
        return json.load(f) == _run_config(cfg)


def _prepare_run_dir(cfg: TrainConfig, run_config: dict) -> str:
    run_dir = os.path.join(cfg.models, RUN_DIR)
    saved = os.path.join(run_dir, "run.json")
    if cfg.resume and os.path.exists(saved):
        with open(saved) as f:
            previous = json.load(f)
        if previous != run_config:
            raise TrainError(f"--resume: the interrupted run in {run_dir} used other settings or data; "
                             "rerun without --resume to start over")
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    with open(saved, "w") as f:
        json.dump(run_config, f, indent=2, sort_keys=True)
    return run_dir


def _fit_phase(model, name: str, run_dir: str, train_ds, epochs: int, steps: int, lr: float, warmup_steps: int,
               loss, callbacks: list, verbose, clock: Clock, deadline: float, ema_momentum: float = 0.0) -> tuple[int, str]:
    """Compiles and fits one phase, resuming from its checkpoint, until its epochs, early stopping or
    the clock's ``deadline`` (seconds of the run); returns the epochs run now and what ended the phase."""
    done_marker = os.path.join(run_dir, f"{name}.done")
    ckpt_dir = os.path.join(run_dir, name)
    for callback in callbacks:
        if hasattr(callback, "phase"):
            callback.phase = name
    time_progress = tf.Variable(0.0, trainable=False, dtype=tf.float32)
    schedule = WarmupCosine(lr, epochs * steps, warmup_steps, time_progress if math.isfinite(deadline) else None)
    optimizer = keras.optimizers.Adam(schedule, use_ema=ema_momentum > 0, ema_momentum=ema_momentum or 0.99)
    model.compile(optimizer=optimizer, loss=loss, jit_compile=False)
    # Optimizer slots made before fit() rather than inside its first traced step: a tf.function that
    # creates variables is traced twice, which doubled the first step's cost (30 s → 14 s, alpha 0.35).
    model.optimizer.build(model.trainable_variables)
    checkpoint = EpochCheckpoint(ckpt_dir)
    initial = checkpoint.restore(model)
    if os.path.exists(done_marker) or initial >= epochs:
        log.info("%s: already complete (epoch %d of %d)", name, initial, epochs)
        return 0, "already complete"
    if clock.elapsed() >= deadline:
        log.info("%s: no time left in the budget", name)
        return 0, "time budget"
    if initial:
        log.warning("%s: resuming from the checkpoint after epoch %d of %d", name, initial, epochs)
    budget = TimeBudget(clock, deadline, time_progress)
    clock.start()
    try:
        history = model.fit(train_ds, epochs=epochs, initial_epoch=initial, steps_per_epoch=steps,
                            callbacks=[budget, *callbacks, checkpoint], verbose=verbose)
    finally:
        clock.stop()
    open(done_marker, "w").close()
    run = len(history.epoch)
    ended = "time budget" if budget.stopped_by_budget else "early stopping" if initial + run < epochs else "epochs"
    log.info("%s: %d epochs, ended by %s (%.0f s of the run so far)", name, run, ended, clock.elapsed())
    return run, ended


def train(cfg: TrainConfig, extra_callbacks: tuple = (), verbose="auto", reuse_completed: bool = False) -> TrainResult:
    """The whole job: fit, export, evaluate, register, promote. Returns what happened.

    ``reuse_completed`` (set by orchestration when it reruns crashed work): if a committed version
    was trained with exactly these settings and data, return it instead of training a duplicate.
    """
    label_map = read_label_map(cfg.data)
    model_cfg = cfg.model(num_classes=len(label_map))
    train_files = shard_files(cfg.data, "train")
    shard_files(cfg.data, "val")  # fails early, with a clear message, when the val split has no shards
    n_train, n_val = count_records(cfg.data, "train"), count_records(cfg.data, "val")
    if n_val == 0:
        raise TrainError(f"{cfg.data}: the val split is empty; ingest with --val-fraction > 0")
    if n_train == 0:
        raise TrainError(f"{cfg.data}: the train split is empty")
    batch_size = min(cfg.batch_size, n_train)
    steps = cfg.steps_per_epoch or max(1, n_train // batch_size)
    pretrained = cfg.backbone_weights != "none"
    epochs = cfg.max_epochs()
    fine_tune_epochs = int(round(epochs * cfg.fine_tune_fraction)) if pretrained else 0
    frozen_epochs = epochs - fine_tune_epochs

    os.makedirs(cfg.models, exist_ok=True)
    run_config = _run_config(cfg)
    fingerprint = run_config["data_fingerprint"]
    if reuse_completed and (done := completed_version(cfg)) is not None:
        return _finish_completed(cfg, done)
    run_dir = _prepare_run_dir(cfg, run_config)
    keras.utils.set_random_seed(cfg.seed)
    precision = configure_precision()

    strategy = distribution_strategy()
    with strategy.scope():
        model = build_ssd(model_cfg, None if cfg.backbone_weights == "none" else cfg.backbone_weights)
        loss = SSDLoss(num_classes=model_cfg.num_classes, classification=cfg.classification_loss)
    anchors = generate_anchors(model_cfg)
    train_ds = make_dataset(train_files, anchors, model_cfg.image_size, model_cfg.variances, batch_size, training=True,
                            deterministic=cfg.deterministic, seed=cfg.seed, augmentation=cfg.augment, repeat=True)
    detect = make_detect_fn(model, model_cfg, cfg.score_threshold, cfg.iou_threshold, cfg.max_detections)
    val_map = ValidationMAP(detect, cfg.data, label_map, cfg.eval_every)
    best = KeepBest(os.path.join(run_dir, "best.weights.h5"))
    average = AverageWeights()  # val mAP and the kept best epoch see the averaged weights, checkpoints the raw ones
    callbacks = [average.swap_in, val_map, best, average.swap_out,
                 keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), write_graph=False), *extra_callbacks]
    # Off by default: on raccoon, patience 5 ended both phases at 0.46 val mAP@.5 where running on to the
    # budget reached 0.83; between new bests, fine-tuning went 16 evaluations (docs/benchmarks.md).
    if cfg.early_stopping_patience and cfg.eval_every <= epochs:  # early stopping needs val mAP in the logs
        callbacks.insert(3, keras.callbacks.EarlyStopping(monitor=KeepBest.MONITOR, mode="max",
                                                          patience=cfg.early_stopping_patience))
    warmup = int(cfg.warmup_epochs * steps)
    # The budget is shared as the epochs are: the frozen phase may use its share, fine-tuning what is left.
    clock = Clock(run_dir, cfg.time_budget * 60 if cfg.time_budget else None)
    budget = clock.budget if clock.budget is not None else math.inf
    epochs_run, ended = 0, []
    if frozen_epochs:
        if pretrained:
            freeze_backbone(model)
        run, why = _fit_phase(model, "phase1", run_dir, train_ds, frozen_epochs, steps, cfg.learning_rate, warmup,
                              loss, callbacks, verbose, clock, budget * frozen_epochs / epochs, cfg.ema_momentum)
        epochs_run += run
        ended.append(why)
    if fine_tune_epochs:
        unfreeze_top(model, cfg.unfreeze_from_block)
        run, why = _fit_phase(model, "phase2", run_dir, train_ds, fine_tune_epochs, steps,
                              cfg.learning_rate * cfg.fine_tune_lr_factor, 0, loss, callbacks, verbose, clock, budget,
                              cfg.ema_momentum)
        epochs_run += run
        ended.append(why)
    fit_seconds = clock.elapsed()
    best_epoch = best.restore(model)
    if best_epoch is not None:
        log.info("train: exporting the weights of %s epoch %d (val mAP@.5 %.4f)", best.best_phase, best_epoch, best.best)

    # Export into a staging dir, score the exported artifact itself, then commit the version.
    version = registry.new_version(cfg.models)
    staging = registry.staging_dir(cfg.models, version)
    export_saved_model(model, model_cfg, label_map, str(staging), score_threshold=cfg.score_threshold,
                       iou_threshold=cfg.iou_threshold, max_detections=cfg.max_detections)
    model.save_weights(os.path.join(staging, KERAS_WEIGHTS))  # lets `ssdflow export` rebuild and re-export
    metrics = score_saved_model(str(staging), cfg.data, "val")
    metrics.update(data_fingerprint=fingerprint, run_key=_run_key(run_config), val_images=n_val, train_images=n_train, epochs=epochs_run,
                   max_epochs=epochs, time_budget_minutes=cfg.time_budget or None, fit_seconds=round(fit_seconds, 1),
                   phases_ended_by=ended,
                   validation_history=val_map.history, best_epoch=best_epoch, best_phase=best.best_phase if best_epoch else None,
                   precision=precision)
    write_metrics(os.path.join(staging, "metrics.json"), metrics)
    write_model_card(os.path.join(staging, "model_card.md"), version, cfg, model_cfg, metrics, label_map, fingerprint)
    if os.path.isdir(os.path.join(run_dir, "logs")):  # TensorBoard logs stay with the version they describe
        shutil.copytree(os.path.join(run_dir, "logs"), os.path.join(staging, "logs"))
    model_dir = registry.commit_version(cfg.models, version)

    policy = promotion_policy(cfg)
    decision = registry.promote_if_better(cfg.models, version, lambda d: score_saved_model(str(d), cfg.data, "val"), policy)
    with open(os.path.join(model_dir, "model_card.md"), "a") as f:
        f.write(_decision_markdown(decision))
    shutil.rmtree(run_dir, ignore_errors=True)
    return TrainResult(version, str(model_dir), metrics, decision, epochs_run)


def write_model_card(path: str, version: str, cfg: TrainConfig, model_cfg: ModelConfig, metrics: dict, label_map,
                     fingerprint: str) -> None:
    per_class = "\n".join(
        f"| {name} | {_fmt(m.get('AP'))} | {_fmt(m.get('AP@.5'))} |" for name, m in metrics.get("per_class", {}).items())
    text = f"""# Model card: {version}

- Created: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}
- Architecture: SSDLite, MobileNetV2 backbone (alpha {model_cfg.alpha:g}), {model_cfg.image_size}x{model_cfg.image_size} input, {model_cfg.num_classes} classes
- Backbone weights: {cfg.backbone_weights}
- Training data: `{cfg.data}` (fingerprint {fingerprint}; {metrics['train_images']} train / {metrics['val_images']} val images)
- Training: {metrics['epochs']} epochs of at most {metrics['max_epochs']} in {metrics['fit_seconds']:.0f} s (time budget {_budget_text(cfg)}; phases ended by {', '.join(metrics['phases_ended_by']) or 'nothing'}; fine-tune share {cfg.fine_tune_fraction:g}), batch {cfg.batch_size}, peak LR {cfg.learning_rate:g}, {cfg.classification_loss} loss
- Exported weights: {_best_epoch_text(metrics)}

## Metrics on the val split (COCO, pycocotools)

| metric | value |
| --- | --- |
| mAP@[.5:.95] | {_fmt(metrics['mAP'])} |
| mAP@.5 | {_fmt(metrics['mAP@.5'])} |
| mAP@.75 | {_fmt(metrics.get('mAP@.75'))} |

| class | AP | AP@.5 |
| --- | --- | --- |
{per_class}

## Configuration

```json
{json.dumps(cfg.model_dump(), indent=2)}
```
"""
    with open(path, "w") as f:
        f.write(text)


def _budget_text(cfg: TrainConfig) -> str:
    return f"{cfg.time_budget:g} min" if cfg.time_budget else "none"


def _best_epoch_text(metrics: dict) -> str:
    best = metrics.get("best_epoch")
    if best is None:
        return "the last epoch's (no val evaluation during training)"
    return (f"{metrics.get('best_phase')} epoch {best}, the best val mAP@.5 of the "
            f"{len(metrics.get('validation_history', []))} evaluated")


def _decision_markdown(decision: dict) -> str:
    return (f"\n## Promotion decision\n\n- Promoted: **{'yes' if decision['promoted'] else 'no'}**\n"
            f"- Challenger {decision['metric']}: {_fmt(decision.get('challenger_score'))}; champion "
            f"({decision.get('champion') or 'none'}): {_fmt(decision.get('champion_score'))}\n- Reason: {decision['reason']}\n")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"

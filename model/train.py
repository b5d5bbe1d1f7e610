"""Training: ingest output → fitted SSD → exported, evaluated challenger → promoted if it beats the champion.

Transfer learning in two phases (as the TF OD API fine-tunes its zoo models):

1. the pretrained backbone frozen (BatchNorm in inference mode), heads and extra levels trained
   with a cosine schedule after a linear warm-up;
2. the backbone's top blocks unfrozen at a lower learning rate.

With ``--backbone-weights none`` there is nothing to protect: one phase trains everything.

A checkpoint (model, optimizer, epoch; tf.train.CheckpointManager, written atomically) is taken
after every epoch under ``MODELS/.train-run/``; ``--resume`` continues from it after a crash, and a
new run refuses to replace it unless ``--fresh`` (model/run_record.py, which also holds the lock
that keeps a second training off the same models directory, and the model card).
On GPUs the same code runs with mixed precision (``precision_policy``) and MirroredStrategy.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from model import registry, report, warm_start
from model.thresholds import thresholds_by_id
from model.anchor_fit import POOR_SHAPE_COVERAGE, fit_anchors, shape_coverage
from model.anchors import anchor_levels, generate_anchors
from model.callbacks import AverageWeights, EpochCheckpoint, EpochLines, ValidationMAP, keep_best, load_history
from model.dataset import box_shapes, count_records, local_records, make_dataset, read_label_map, shard_files
from model.evaluate import write_metrics
from model.export import KERAS_WEIGHTS, Detector, save_detector
from model.losses import SSDLoss, balanced_class_weights
from model.run_record import (
    RunMirror,
    TrainError,
    completed_version,
    decision_markdown,
    discard_run,
    prepare_run_dir,
    run_config,
    run_key,
    training_lock,
    write_model_card,
)
from model.schedule import Clock, TimeBudget, WarmupCosine
from model.devices import distribution_strategy, float32_twin, precision_policy
from model.ssd import build_ssd, freeze_backbone, unfreeze_top
from model.validation import make_detect_fn, score_detector, score_saved_model
from ssdflow import storage
from ssdflow.config import BOX_WEIGHT, ModelConfig, TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    version: str
    model_dir: str
    metrics: dict
    decision: dict
    epochs_run: int


# --- the run -------------------------------------------------------------------------------------
def _finish_completed(cfg: TrainConfig, version: str, records: str) -> "TrainResult":
    """A rerun after a crash that happened once ``version`` was committed: no second training, no
    second version; the promotion decision is made now only if the crash came before it."""
    model_dir = registry.version_dir(cfg.models, version)
    metrics = json.loads(storage.read_text(storage.join(model_dir, registry.METRICS)))
    decision_uri = storage.join(model_dir, registry.DECISION)
    if storage.exists(decision_uri):
        decision = json.loads(storage.read_text(decision_uri))
    else:
        decision = _promote(cfg, version, records)
    discard_run(cfg.models)
    log.warning("train: %s was already trained with these settings and data; reusing it", version)
    return TrainResult(version, model_dir, metrics, decision, 0)


def _promote(cfg: TrainConfig, version: str, records: str) -> dict:
    """Promotes a committed version if it beats the champion (re-scored on ``records``' val split),
    and adds the decision to its model card."""
    decision = registry.promote_if_better(
        cfg.models, version, lambda d: score_saved_model(registry.local_copy(d), records, "val"), promotion_policy(cfg)
    )
    card = storage.join(registry.version_dir(cfg.models, version), "model_card.md")
    storage.write_text(card, storage.read_text(card) + decision_markdown(decision))
    return decision


def promotion_policy(cfg: TrainConfig) -> registry.PromotionPolicy:
    return registry.PromotionPolicy(
        tolerance=cfg.promotion_tolerance, min_score=cfg.min_map, on_label_map_change=cfg.on_label_map_change
    )


def _fit_phase(
    model,
    name: str,
    run_dir: str,
    train_data,
    epochs: int,
    steps: int,
    lr: float,
    warmup_steps: int,
    loss,
    callbacks: list,
    verbose,
    clock: Clock,
    deadline: float,
    ema_momentum: float = 0.0,
    after_checkpoint: list = (),
) -> tuple[int, str]:
    """Compiles and fits one phase, resuming from its checkpoint, until its epochs, early stopping or
    the clock's ``deadline`` (seconds of the run); returns the epochs run now and what ended the phase.
    ``train_data(skip_batches)``: the training stream, started that many batches in (a resumed phase
    continues where the checkpoint left it)."""
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
    # creates variables is traced twice, which doubled the first step's cost (docs/benchmarks.md,
    # "First training step (graph tracing)").
    model.optimizer.build(model.trainable_variables)
    checkpoint = EpochCheckpoint(ckpt_dir)
    initial = checkpoint.restore(model)
    for callback in callbacks:
        if hasattr(callback, "rewind"):  # evaluations made after the checkpoint, before a kill: made again
            callback.rewind(name, initial)
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
        # shuffle=False: the stream is shuffled already (model/dataset.py); Keras would warn that it ignores True.
        history = model.fit(
            train_data(initial * steps),
            epochs=epochs,
            initial_epoch=initial,
            steps_per_epoch=steps,
            shuffle=False,
            callbacks=[budget, *callbacks, checkpoint, *after_checkpoint],
            verbose=verbose,
        )
    finally:
        clock.stop()
    open(done_marker, "w").close()
    run = len(history.epoch)
    ended = "time budget" if budget.stopped_by_budget else "early stopping" if initial + run < epochs else "epochs"
    log.info("%s: %d epochs, ended by %s (%.0f s of the run so far)", name, run, ended, clock.elapsed())
    return run, ended


@dataclass
class TrainingPlan:
    """What a run will train, decided from the settings and the data before anything is built."""

    model_cfg: ModelConfig
    n_train: int
    n_val: int
    batch_size: int
    steps: int  # optimizer steps per epoch
    epochs: int  # at most, over both phases
    frozen_epochs: int  # phase 1: the backbone frozen (0 for a warm start or a backbone trained from scratch)
    fine_tune_epochs: int  # phase 2 (or the one phase)
    budget_minutes: float | None  # of this run (a warm start gets its share)
    anchor_fit: dict | None  # the fitted anchors' figures (fit_anchors), None when the settings or the start fix them
    class_weights: list[float] | None  # per class id - 1 (--class-balance), None when off


def plan_training(cfg: TrainConfig, records: str, label_map, train_files: list[str], start) -> TrainingPlan:
    """The architecture (a warm start's own, the settings', or anchors fitted to the smallest class),
    the class weights, the batch and the epochs of each phase. Raises TrainError for an empty split."""
    anchor_fit, class_weights = None, None
    fitting = start is None and (cfg.finest_stride is None or cfg.min_scale is None or cfg.aspect_ratios is None)
    if fitting or cfg.class_balance:  # a pass over the records' headers, no decode; only when something needs it
        heights, widths, classes = box_shapes(train_files)
        class_weights = balanced_class_weights(
            np.bincount(classes, minlength=len(label_map) + 1)[1 : len(label_map) + 1], cfg.class_balance
        )
    if start is not None:  # a warm start keeps the starting model's architecture and anchors
        model_cfg = start.model_cfg
    elif fitting:  # left open by the settings: fitted to the smallest class
        anchor_fit = fit_anchors(heights, widths, classes, label_map, cfg)
        model_cfg = cfg.model(
            num_classes=len(label_map),
            fitted_stride=anchor_fit["finest_stride"],
            fitted_min_scale=anchor_fit["min_scale"],
            fitted_aspect_ratios=anchor_fit["aspect_ratios"],
        )
        anchor_fit["shape_coverage"] = shape_coverage(heights, widths, classes, label_map, model_cfg)
    else:
        model_cfg = cfg.model(num_classes=len(label_map))
    shard_files(records, "val")  # fails early, with a clear message, when the val split has no shards
    n_train, n_val = count_records(records, "train"), count_records(records, "val")
    if n_val == 0:
        raise TrainError(f"{cfg.data}: the val split is empty; ingest with --val-fraction > 0")
    if n_train == 0:
        raise TrainError(f"{cfg.data}: the train split is empty")
    batch_size = min(cfg.batch_size, n_train)
    epochs, budget_minutes = cfg.max_epochs(), cfg.time_budget
    if start is not None:  # warm: one fine-tuning phase, a share of the budget (or of the set epochs)
        if cfg.time_budget:
            budget_minutes = cfg.time_budget * cfg.warm_start_fraction
        if cfg.epochs:
            epochs = max(1, int(round(cfg.epochs * cfg.warm_start_fraction)))
        frozen_epochs, fine_tune_epochs = 0, epochs
    else:
        fine_tune_epochs = int(round(epochs * cfg.fine_tune_fraction)) if _pretrained(cfg) else 0
        frozen_epochs = epochs - fine_tune_epochs
    return TrainingPlan(
        model_cfg,
        n_train,
        n_val,
        batch_size,
        cfg.steps_per_epoch or max(1, n_train // batch_size),
        epochs,
        frozen_epochs,
        fine_tune_epochs,
        budget_minutes,
        anchor_fit,
        class_weights,
    )


def _pretrained(cfg: TrainConfig) -> bool:
    return cfg.backbone_weights != "none"


def training_header(cfg: TrainConfig, plan: TrainingPlan, label_map, warm: bool, start_text: str) -> str:
    """The line that says what is trained: data, architecture (and why its anchors), start, epochs, budget."""
    model_cfg, fit = plan.model_cfg, plan.anchor_fit or {}
    if warm:
        phases = "(one fine-tuning phase)"
    elif not _pretrained(cfg):
        phases = "(one phase, every layer trained)"
    else:
        phases = f"({plan.frozen_epochs} with the backbone frozen + {plan.fine_tune_epochs} fine-tuning)"
    fitted = (
        f", fitted to {fit['class']}'s boxes, 10th percentile side {fit['side_p10']:.3f}" if fit.get("class") else ""
    )
    header = (
        f"train: {cfg.data}: {plan.n_train} train / {plan.n_val} val images, {len(label_map)} classes; "
        f"SSD MobileNetV2 alpha {model_cfg.alpha:g}, {model_cfg.image_size} px, finest stride "
        f"{model_cfg.finest_stride} (anchors from {model_cfg.first_scale:.3f} of the side{fitted}); "
        f"starting from {start_text}; at most {plan.epochs} epochs {phases} of {plan.steps} steps x "
        f"{plan.batch_size} images"
        + (f", budget {plan.budget_minutes:g} min" if plan.budget_minutes else ", no time budget")
    )
    if fit.get("aspect_ratios"):
        header += "; anchor aspect ratios refitted to the boxes: " + ", ".join(f"{r:g}" for r in fit["aspect_ratios"])
    # Such a class's boxes are learnt through forced matches only: worth knowing before the budget is spent.
    poorly_fitted = {n: c for n, c in (fit.get("shape_coverage") or {}).items() if c < POOR_SHAPE_COVERAGE}
    if poorly_fitted:
        header += "; anchor shapes fit few boxes of " + ", ".join(
            f"{n} ({c:.0%} at IoU >= 0.5)" for n, c in poorly_fitted.items()
        )
    return header


def train(
    cfg: TrainConfig,
    extra_callbacks: tuple = (),
    verbose="auto",
    reuse_completed: bool = False,
    say=None,
    epoch_lines: bool = False,
) -> TrainResult:
    """The whole job: fit, export, evaluate, register, promote. Returns what happened.

    ``say`` (a function of one line of text) gets a header saying what is trained (data,
    architecture, start, epochs and budget) and, with ``epoch_lines``, one plain line per epoch.

    ``reuse_completed`` (set by orchestration when it reruns crashed work): if a committed version
    was trained with exactly these settings and data, return it instead of training a duplicate.
    """
    storage.configure(cfg.storage_args)
    records = local_records(cfg.data)  # the ingest output on local disk (fetched once from object storage)
    label_map = read_label_map(records)
    train_files = shard_files(records, "train")
    try:
        start, start_text = warm_start.resolve(cfg, label_map)
    except warm_start.WarmStartError as e:
        raise TrainError(str(e)) from None
    log.info("train: starting from %s", start_text)
    plan = plan_training(cfg, records, label_map, train_files, start)
    header = training_header(cfg, plan, label_map, start is not None, start_text)
    log.info("%s", header)
    if say is not None:
        say(header)
        if epoch_lines:
            phase_starts = {"phase1": 0, "phase2": plan.frozen_epochs}
            extra_callbacks = (*extra_callbacks, EpochLines(say, plan.epochs, phase_starts))

    # One training per models directory at a time: it owns MODELS/.train-run until it ends.
    with training_lock(cfg.models) as still_held, precision_policy(cfg.precision) as precision:
        config = run_config(cfg)
        if reuse_completed and (done := completed_version(cfg)) is not None:
            return _finish_completed(cfg, done, records)
        run_dir = prepare_run_dir(cfg, config)
        keras.utils.set_random_seed(cfg.seed)
        model, loss = _build(cfg, plan, start)
        fitted = _fit(cfg, plan, model, loss, start, records, label_map, train_files, run_dir, extra_callbacks, verbose)
        version, metrics = _export(cfg, plan, model, precision, records, label_map, config, fitted, start_text, run_dir)
        still_held()  # a training whose lease was taken over must not commit beside the one that took it
        model_dir = registry.commit_version(cfg.models, version)
        decision = _promote(cfg, version, records)
        discard_run(cfg.models)
        return TrainResult(version, model_dir, metrics, decision, fitted.epochs_run)


def _build(cfg: TrainConfig, plan: TrainingPlan, start) -> tuple[keras.Model, SSDLoss]:
    """The network (the start's weights, or the pretrained backbone's) and its loss, in the strategy's scope."""
    model_cfg = plan.model_cfg
    with distribution_strategy().scope():
        if start is not None:
            model = build_ssd(model_cfg, None)
            model.load_weights(start.weights)
        else:
            model = build_ssd(model_cfg, cfg.backbone_weights if _pretrained(cfg) else None)
        loss = SSDLoss(
            num_classes=model_cfg.num_classes,
            classification=cfg.classification_loss,
            class_weights=plan.class_weights,
            box_loss=cfg.box_loss,
            box_weight=BOX_WEIGHT[cfg.box_loss],
            variances=model_cfg.variances,
        )
    return model, loss


@dataclass
class Fitted:
    """What the fit did: the epochs run now, what ended each phase, every epoch's history, the evaluations."""

    epochs_run: int
    ended: list[str]
    fit_seconds: float
    history: list[dict]
    best_epoch: int | None
    best: object  # the KeepBest that chose the exported epoch
    val_map: ValidationMAP


def _train_stream(cfg: TrainConfig, plan: TrainingPlan, train_files: list[str]):
    """``train_data(skip_batches)``: the training stream of batches (images, anchor targets)."""
    model_cfg = plan.model_cfg
    anchors = generate_anchors(model_cfg)

    def train_data(skip_batches: int):
        # A deterministic run resumed mid-phase continues its stream where the checkpoint left it;
        # other runs' order is random anyway, so they start a fresh stream.
        return make_dataset(
            train_files,
            anchors,
            model_cfg.image_size,
            model_cfg.variances,
            plan.batch_size,
            training=True,
            deterministic=cfg.deterministic,
            seed=cfg.seed,
            augmentation=cfg.augment,
            repeat=True,
            atss_levels=anchor_levels(model_cfg) if cfg.matching == "atss" else None,
            skip_batches=skip_batches if cfg.deterministic else 0,
        )

    return train_data


def _epoch_callbacks(cfg, plan: TrainingPlan, model, records, label_map, run_dir, extra_callbacks):
    """The callbacks every epoch goes through, in order: weight averaging swapped in, val mAP, the kept
    best epoch (early stopping when set), averaging swapped out, TensorBoard, the caller's. Returns
    (callbacks, val_map, best)."""
    model_cfg = plan.model_cfg
    detect = make_detect_fn(
        model, model_cfg, cfg.score_threshold, cfg.iou_threshold, cfg.max_detections, cfg.box_merge_iou
    )
    val_map = ValidationMAP(
        detect, records, label_map, cfg.eval_every, path=os.path.join(run_dir, "validation_history.json")
    )
    best = keep_best(os.path.join(run_dir, "best.weights.h5"), cfg.best_epoch_metric, cfg.map50_tolerance)
    average = AverageWeights()  # val mAP and the kept best epoch see the averaged weights, checkpoints the raw ones
    callbacks = [
        average.swap_in,
        val_map,
        best,
        average.swap_out,
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), write_graph=False),
        *extra_callbacks,
    ]
    # Off by default: on raccoon it ended both phases far below what running on to the budget
    # reached (docs/benchmarks.md, "Early stopping against the val noise").
    if cfg.early_stopping_patience and cfg.eval_every <= plan.epochs:  # early stopping needs val mAP in the logs
        callbacks.insert(
            3, keras.callbacks.EarlyStopping(monitor=best.monitor, mode="max", patience=cfg.early_stopping_patience)
        )
    return callbacks, val_map, best


def _fit(
    cfg, plan: TrainingPlan, model, loss, start, records, label_map, train_files, run_dir, extra_callbacks, verbose
):
    """Both phases, each resumed from its checkpoint, sharing the time budget; the kept best epoch's
    weights restored into ``model`` at the end. Returns :class:`Fitted`."""
    mirror = RunMirror(cfg.models, run_dir)  # object-store models: checkpoints there too, after every epoch
    after_checkpoint = [keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: mirror())]
    callbacks, val_map, best = _epoch_callbacks(cfg, plan, model, records, label_map, run_dir, extra_callbacks)
    if start is not None and best.best_epoch is None and cfg.eval_every <= plan.epochs:
        # A warm start is kept only where it improves: its starting weights compete as epoch 0,
        # so a run whose every epoch scores below the champion it began from exports that champion's weights.
        start_metrics = val_map.evaluate(0, phase="start")
        best.consider(model, start_metrics, 0, "start")
        log.info(
            "train: the starting weights score val mAP@.5 %s, mAP@[.5:.95] %s",
            start_metrics["mAP@.5"],
            start_metrics["mAP"],
        )
    # The budget is shared as the epochs are: the frozen phase may use its share, fine-tuning what is left.
    clock = Clock(run_dir, plan.budget_minutes * 60 if plan.budget_minutes else None)
    budget = clock.budget if clock.budget is not None else math.inf
    peak_lr = cfg.peak_learning_rate()
    phases = [
        (
            "phase1",
            plan.frozen_epochs,
            peak_lr,
            int(cfg.warmup_epochs * plan.steps),
            budget * plan.frozen_epochs / max(plan.epochs, 1),
        ),
        ("phase2", plan.fine_tune_epochs, peak_lr * cfg.fine_tune_lr_factor, 0, budget),
    ]
    train_stream, epochs_run, ended = _train_stream(cfg, plan, train_files), 0, []
    for name, epochs, lr, warmup, deadline in phases:
        if not epochs:
            continue
        if name == "phase1" and _pretrained(cfg):
            freeze_backbone(model)
        elif name == "phase2":
            unfreeze_top(model, cfg.unfreeze_from_block)
        run, why = _fit_phase(
            model, name, run_dir, train_stream, epochs, plan.steps, lr, warmup, loss, callbacks, verbose, clock,
            deadline, cfg.ema_momentum, after_checkpoint,
        )  # fmt: skip
        mirror()
        epochs_run += run
        ended.append(why)
    # Every epoch the run trained, once, also those before a kill it was resumed from.
    history = [
        dict(entry, phase=phase)
        for phase in ("phase1", "phase2")
        for entry in load_history(os.path.join(run_dir, phase))
    ]
    best_epoch = best.restore(model)
    if best_epoch is not None:
        log.info(
            "train: exporting the weights of %s epoch %d (%s %.4f)",
            best.best_phase,
            best_epoch,
            best.metric_name,
            best.best,
        )
    return Fitted(epochs_run, ended, clock.elapsed(), history, best_epoch, best, val_map)


def _export(cfg, plan: TrainingPlan, model, precision, records, label_map, config, fitted: Fitted, start_text, run_dir):
    """Exports into a staging directory, scores the exported artifact itself, writes its metrics,
    model card and TensorBoard logs; returns (the version to commit, its metrics)."""
    model_cfg, fingerprint = plan.model_cfg, config["data_fingerprint"]
    version = registry.new_version(cfg.models)
    staging = registry.staging_dir(cfg.models, version)
    exportable = model if precision == "float32" else float32_twin(model, model_cfg)
    # The export's own signature function is scored and drawn, then saved once with the thresholds
    # calibrated on that score (a threshold changes no detection, only the lookup the model carries).
    detector = Detector(
        exportable,
        model_cfg,
        cfg.score_threshold,
        cfg.iou_threshold,
        cfg.max_detections,
        box_merge_iou=cfg.box_merge_iou,
    )
    exported = lambda images: detector.serve(images)  # noqa: E731
    metrics = score_detector(exported, records, "val", label_map, cfg.target_precision)
    report.draw_pr_curves(metrics["pr_curves"], os.path.join(staging, report.PR_CURVES))
    report.draw_val_examples(exported, records, os.path.join(staging, report.VAL_EXAMPLES))
    detector.set_class_thresholds(thresholds_by_id(metrics["score_thresholds"], label_map))
    save_detector(detector, label_map, str(staging))
    model.save_weights(os.path.join(staging, KERAS_WEIGHTS))  # lets `ssdflow export` rebuild and re-export
    history, best_epoch = fitted.history, fitted.best_epoch
    metrics.update(
        data_fingerprint=fingerprint,
        run_key=run_key(config),
        val_images=plan.n_val,
        train_images=plan.n_train,
        epochs=len(history),
        history=history,
        optimizer_steps={e["phase"]: e["steps"] for e in history},  # each phase's count after its last epoch
        max_epochs=plan.epochs,
        time_budget_minutes=cfg.time_budget or None,
        fit_seconds=round(fitted.fit_seconds, 1),
        phases_ended_by=fitted.ended,
        validation_history=fitted.val_map.history,
        best_epoch=best_epoch,
        best_phase=fitted.best.best_phase if best_epoch is not None else None,
        best_epoch_metric=fitted.best.metric_name,
        precision=precision,
        initialized_from=start_text,
        anchor_fit=plan.anchor_fit,
        class_weights=None
        if plan.class_weights is None
        else {name: plan.class_weights[i - 1] for name, i in label_map.by_id()},
    )
    write_metrics(os.path.join(staging, "metrics.json"), metrics)
    write_model_card(os.path.join(staging, "model_card.md"), version, cfg, model_cfg, metrics, label_map, fingerprint)
    if os.path.isdir(os.path.join(run_dir, "logs")):  # TensorBoard logs stay with the version they describe
        shutil.copytree(os.path.join(run_dir, "logs"), os.path.join(staging, "logs"))
    return version, metrics

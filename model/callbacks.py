"""Keras callbacks of a training run: checkpoints, val mAP, the best epoch, averaged weights.

Order matters (model/train.py sets it): ``AverageWeights.swap_in`` first, so ``ValidationMAP``
scores and ``KeepBest`` saves the averaged weights; ``AverageWeights.swap_out`` before
``EpochCheckpoint``, so a checkpoint holds the raw weights that training continues from.
"""

from __future__ import annotations

import glob
import json
import os
import time

import keras
import tensorflow as tf

from model.validation import score_detector
from ssdflow import storage

# What KeepBest may keep the best epoch by (TrainSettings.best_epoch_metric): the figure's key in an
# evaluation's metrics (in the epoch's logs with "val_" before it) and its name in the log and the model card.
BEST_EPOCH_METRICS = {
    "map50": ("mAP@.5", "val mAP@.5"),
    "map": ("mAP", "val mAP@[.5:.95]"),
    "fitness": ("fitness", "val fitness (0.1 mAP@.5 + 0.9 mAP@[.5:.95])"),
    # KeepNearBest (its name then states the tolerance); early stopping watches mAP@.5, which sets the window.
    "map_near_map50": ("mAP@.5", "val mAP@[.5:.95] near the best val mAP@.5"),
}


def fitness(metrics: dict) -> float | None:
    """Ultralytics' model fitness, what its training keeps as best.pt: 0.1 x mAP@.5 + 0.9 x
    mAP@[.5:.95], so the epoch kept is the one with the tightest boxes among those that detect."""
    if metrics.get("mAP") is None or metrics.get("mAP@.5") is None:
        return None
    return 0.1 * metrics["mAP@.5"] + 0.9 * metrics["mAP"]


def best_epoch_score(metrics: dict, metric: str) -> float | None:
    """One evaluation's score by ``metric`` (a BEST_EPOCH_METRICS key) from its COCO metrics
    (``score_detector``'s, or a validation history entry); None where it is undefined."""
    key = BEST_EPOCH_METRICS[metric][0]
    return fitness(metrics) if key == "fitness" else metrics[key]


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves model, optimizer (moments, step count: the LR schedule resumes too) and epoch after every
    epoch, and the phase's history: one entry per epoch trained (its logs, and the optimizer's step
    count after it) in ``history.json`` beside the checkpoints.

    The history is written before the checkpoint, so a kill between the two leaves an entry that the
    checkpoint does not have; ``restore`` drops entries after the restored epoch, so however often a
    run is killed and resumed, its history holds every epoch once."""

    HISTORY = "history.json"

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.manager = None
        self.history: list[dict] = []

    def _manager(self):
        if self.manager is None:
            ckpt = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer, epoch=self.epoch)
            self.manager = tf.train.CheckpointManager(ckpt, self.directory, max_to_keep=2)
        return self.manager

    def restore(self, model) -> int:
        """Loads the latest checkpoint into ``model`` (compiled); returns the epoch to continue from."""
        self.set_model(model)
        latest = tf.train.latest_checkpoint(self.directory)
        if not latest:
            self.history = []
            return 0
        self._manager().checkpoint.restore(latest).assert_existing_objects_matched()
        epoch = int(self.epoch.numpy())
        self.history = [e for e in load_history(self.directory) if e["epoch"] <= epoch]
        return epoch

    def on_epoch_end(self, epoch, logs=None):
        entry = {"epoch": epoch + 1, "steps": int(self.model.optimizer.iterations.numpy())}
        entry.update(
            {
                k: round(float(v), 6)
                for k, v in (logs or {}).items()
                if isinstance(v, (int, float)) or getattr(v, "shape", None) == ()
            }
        )
        self.history = [e for e in self.history if e["epoch"] <= epoch] + [entry]
        _write_list(os.path.join(self.directory, self.HISTORY), self.history)
        self.epoch.assign(epoch + 1)
        self._manager().save()


def load_history(directory: str) -> list[dict]:
    """A phase's per-epoch history (EpochCheckpoint's ``history.json``); [] when it has none."""
    return _read_json(os.path.join(directory, EpochCheckpoint.HISTORY), [])


def _read_json(path: str | None, default=None):
    """A run's own JSON file (a history written by _write_list, KeepBest's record); ``default``
    when there is none."""
    if not path or not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def _write_list(path: str, entries: list[dict]) -> None:
    """Whole or not at all: a kill mid-write leaves the previous file (NaN losses stay writable)."""
    storage.atomic_write_local(path, json.dumps(entries))


class ValidationMAP(keras.callbacks.Callback):
    """COCO mAP of the model being trained on the val split, every ``every`` epochs, into the logs.

    Runs first among the callbacks so EarlyStopping and TensorBoard see ``val_mAP``. With ``path``
    the evaluations are kept in that file too, so a resumed run's history starts with those made
    before it was killed (``rewind`` drops any made after the checkpoint it resumes from).
    """

    def __init__(self, detect_fn, data_dir: str, label_map, every: int = 1, path: str | None = None):
        super().__init__()
        self.detect_fn, self.data_dir, self.label_map, self.every, self.path = (
            detect_fn,
            data_dir,
            label_map,
            every,
            path,
        )
        self.phase = None  # set before each phase: Keras counts epochs per fit() call
        # per evaluation: phase, epoch, mAP, mAP@.5, seconds since the run began (a resumed run's clock goes on)
        self.history: list[dict] = _read_json(path, [])
        self._started = time.monotonic() - max((e["seconds"] for e in self.history), default=0.0)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every:
            return
        metrics = self.evaluate(epoch + 1)
        logs["val_mAP"] = metrics["mAP"]
        logs["val_mAP@.5"] = metrics["mAP@.5"]
        value = fitness(metrics)
        if value is not None:
            logs["val_fitness"] = value

    def evaluate(self, epoch: int, phase: str | None = None) -> dict:
        """COCO metrics of the current weights on val, recorded in ``history`` as ``epoch`` of the phase."""
        metrics = score_detector(self.detect_fn, self.data_dir, "val", self.label_map)
        phase = phase or self.phase
        self._forget_after(phase, epoch - 1)  # an epoch evaluated again (after a resume) appears once
        self.history.append(
            {
                "phase": phase,
                "epoch": epoch,
                "mAP": metrics["mAP"],
                "mAP@.5": metrics["mAP@.5"],
                "seconds": round(time.monotonic() - self._started, 1),
            }
        )
        self._save()
        return metrics

    def rewind(self, phase: str, epoch: int) -> None:
        """Forgets the evaluations of ``phase`` after ``epoch`` (made after the checkpoint a run resumes from)."""
        if self._forget_after(phase, epoch):
            self._save()

    def _forget_after(self, phase: str, epoch: int) -> bool:
        kept = [e for e in self.history if e["phase"] != phase or e["epoch"] <= epoch]
        changed = len(kept) != len(self.history)
        self.history = kept
        return changed

    def _save(self):
        if self.path:
            _write_list(self.path, self.history)


class KeepBest(keras.callbacks.Callback):
    """Keeps the weights of the evaluated epoch with the best val ``metric`` (a BEST_EPOCH_METRICS key;
    mAP@.5 by default), across both phases.

    Val splits are small and fine-tuning swings from epoch to epoch, so the last epoch is often not
    the best; the exported model is the best one. The weights are written to ``path`` (atomically)
    together with the score, so a resumed run still knows its best epoch. Keras counts epochs per
    fit() call, so an epoch is named with its phase (``phase``, set before each phase).
    """

    def __init__(self, path: str, metric: str = "map50"):
        super().__init__()
        self.path, self.metric = path, metric
        key, self.metric_name = BEST_EPOCH_METRICS[metric]
        self.monitor = "val_" + key  # as ValidationMAP writes it into the logs
        # best_epoch None: nothing evaluated yet; 0: the weights the run started from (a warm start's).
        self.best, self.best_epoch, self.phase, self.best_phase = -1.0, None, None, None
        saved = _read_json(path + ".json")
        if saved is not None and saved.get("metric", "map50") == metric:  # a score of another rule is no bar to clear
            self._resume(saved)

    def _resume(self, saved: dict) -> None:
        if os.path.exists(self.path):
            self.best, self.best_epoch, self.best_phase = saved["score"], saved["epoch"], saved.get("phase")

    def score(self, metrics: dict) -> float | None:
        """This callback's metric of one evaluation's COCO metrics (``score_detector``'s)."""
        return best_epoch_score(metrics, self.metric)

    def on_epoch_end(self, epoch, logs=None):
        if (logs or {}).get("val_mAP@.5") is not None:  # an evaluated epoch (ValidationMAP wrote its figures)
            self.consider(
                self.model,
                {"mAP@.5": float(logs["val_mAP@.5"]), "mAP": _float_or_none(logs.get("val_mAP"))},
                epoch + 1,
                self.phase,
            )

    def consider(self, model, metrics: dict, epoch: int, phase: str | None) -> bool:
        """Keeps ``model``'s weights if their evaluation (COCO ``metrics``) beats the best so far
        (epoch 0: the starting weights); returns whether it did."""
        score = self.score(metrics)
        if score is None or score <= self.best:
            return False
        self.best, self.best_epoch, self.best_phase = score, epoch, phase
        _save_weights(model, self.path)
        storage.write_json_local(
            self.path + ".json", {"score": self.best, "epoch": self.best_epoch, "phase": phase, "metric": self.metric}
        )
        return True

    def restore(self, model) -> int | None:
        """Loads the best weights into ``model``; returns their epoch (None when nothing was evaluated)."""
        if self.best_epoch is None:
            return None
        model.load_weights(self.path)
        return self.best_epoch


def within_map50_tolerance(history: list[dict], tolerance: float) -> dict | None:
    """The evaluation that best_epoch_metric ``map_near_map50`` keeps, over a run's whole validation
    history: the best mAP@[.5:.95] among the evaluations within ``tolerance`` of the best mAP@.5
    (the first on ties). ``KeepNearBest`` reaches the same one online."""
    scored = [h for h in history if h.get("mAP@.5") is not None and h.get("mAP") is not None]
    if not scored:
        return None
    floor = max(h["mAP@.5"] for h in scored) - tolerance - 1e-9
    return max((h for h in scored if h["mAP@.5"] >= floor), key=lambda h: h["mAP"])


class KeepNearBest(KeepBest):
    """best_epoch_metric ``map_near_map50``: keeps the epoch with the best val mAP@[.5:.95] among the
    evaluations within ``tolerance`` of the best val mAP@.5 (``within_map50_tolerance``).

    Why: on a small val split the best mAP@.5 is decided by an object or two, and it often falls
    on an early fine-tuning epoch whose boxes are still loose; among the epochs that detect as well
    within that noise, the one with the tightest boxes is worth more.

    Online it reaches exactly what the rule picks over the finished history: the floor (best
    mAP@.5 so far minus ``tolerance``) only rises, so an evaluation below it never returns; and an
    evaluation that another one matches on mAP@.5 and beats on mAP@[.5:.95] (or ties, being earlier)
    can never be picked while that one is there. Only the rest, the few on the front between the two
    figures, keep their weights, each in a file of its own that the JSON at ``path.json`` lists,
    so a resumed run goes on choosing among the same ones.
    """

    def __init__(self, path: str, tolerance: float):
        self.tolerance = tolerance
        # {"phase", "epoch", "mAP@.5", "mAP", "file"}, in evaluation order. The best mAP@.5 seen so far
        # is always among them: nothing beats it on mAP@.5, so only an equal one can replace it.
        self.candidates: list[dict] = []
        self.directory = os.path.dirname(path)
        super().__init__(path, "map_near_map50")
        self.metric_name = f"val mAP@[.5:.95] within {tolerance:g} of the best val mAP@.5"
        listed = {c["file"] for c in self.candidates}
        # Files no record names: written, then killed before the JSON named them.
        for stale in glob.glob(glob.escape(self._base()) + ".*.weights.h5"):
            if os.path.basename(stale) not in listed:
                os.remove(stale)

    def _base(self) -> str:
        return self.path.removesuffix(".weights.h5")

    def _resume(self, saved: dict) -> None:
        if saved.get("tolerance") == self.tolerance and all(
            os.path.exists(os.path.join(self.directory, c["file"])) for c in saved["candidates"]
        ):
            self.candidates = saved["candidates"]
            self._choose()

    def _choose(self) -> None:
        chosen = max(self.candidates, key=lambda c: c["mAP"], default=None)  # the first on ties
        if chosen is not None:
            self.best, self.best_epoch, self.best_phase = chosen["mAP"], chosen["epoch"], chosen["phase"]

    def consider(self, model, metrics: dict, epoch: int, phase: str | None) -> bool:
        if metrics.get("mAP@.5") is None or metrics.get("mAP") is None:
            return False
        new = {
            "phase": phase,
            "epoch": epoch,
            "mAP@.5": float(metrics["mAP@.5"]),
            "mAP": float(metrics["mAP"]),
            "file": f"{os.path.basename(self._base())}.{phase}.{epoch}.weights.h5",
        }
        floor = max([c["mAP@.5"] for c in self.candidates] + [new["mAP@.5"]]) - self.tolerance - 1e-9
        kept = [c for c in self.candidates if c["mAP@.5"] >= floor]
        if new["mAP@.5"] >= floor and not any(c["mAP@.5"] >= new["mAP@.5"] and c["mAP"] >= new["mAP"] for c in kept):
            # An earlier one at least as good on both is preferred on ties; the new one drops those it matches on both.
            kept = [c for c in kept if not (new["mAP@.5"] >= c["mAP@.5"] and new["mAP"] > c["mAP"])] + [new]
            _save_weights(model, os.path.join(self.directory, new["file"]))
        dropped = [c for c in self.candidates if c not in kept]
        previous = self.best_epoch, self.best_phase
        self.candidates = kept
        self._choose()
        storage.write_json_local(
            self.path + ".json",
            {"metric": self.metric, "tolerance": self.tolerance, "candidates": kept},
        )
        for c in dropped:  # after the JSON stops naming them: a kill in between leaves files the next start removes
            os.remove(os.path.join(self.directory, c["file"]))
        return (self.best_epoch, self.best_phase) != previous

    def restore(self, model) -> int | None:
        """Loads the chosen evaluation's weights into ``model``; returns their epoch (None: nothing evaluated)."""
        if self.best_epoch is None:
            return None
        chosen = next(c for c in self.candidates if (c["epoch"], c["phase"]) == (self.best_epoch, self.best_phase))
        model.load_weights(os.path.join(self.directory, chosen["file"]))
        return self.best_epoch


def keep_best(path: str, metric: str, tolerance: float) -> KeepBest:
    """The callback that keeps the exported epoch by ``metric`` (TrainSettings.best_epoch_metric)."""
    return KeepNearBest(path, tolerance) if metric == "map_near_map50" else KeepBest(path, metric)


def _save_weights(model, path: str) -> None:
    tmp = path + ".tmp.weights.h5"
    model.save_weights(tmp)
    os.replace(tmp, path)


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


class AverageWeights:
    """Evaluates and keeps the optimizer's exponential moving average of the weights (EMA).

    With ``use_ema`` the optimizer keeps an average of every trainable weight, updated each step;
    Keras puts it into the model when fit() ends. The average is smoother than the raw weights,
    which swing from step to step with batches this small, so it is also what each epoch's val mAP
    should see. ``swap_in`` (a callback placed before ValidationMAP) puts the average into the
    model at the end of an epoch; ``swap_out`` (placed after KeepBest) puts the raw weights back.
    Without EMA both do nothing.
    """

    def __init__(self):
        self._raw: list | None = None
        self.swap_in = _Hook(self._swap_in)
        self.swap_out = _Hook(self._swap_out)

    def _swap_in(self, model) -> None:
        if not getattr(model.optimizer, "use_ema", False):
            return
        self._raw = [v.numpy() for v in model.trainable_weights]
        model.optimizer.finalize_variable_values(model.trainable_weights)

    def _swap_out(self, model) -> None:
        if self._raw is None:
            return
        for variable, value in zip(model.trainable_weights, self._raw):
            variable.assign(value)
        self._raw = None


class _Hook(keras.callbacks.Callback):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def on_epoch_end(self, epoch, logs=None):
        self.fn(self.model)


class EpochLines(keras.callbacks.Callback):
    """One plain line per epoch, for a log (Keras' bar redraws itself with ANSI codes, one 2 KB line
    an epoch in a file): the epoch of at most how many, the phase, loss, val mAP@.5 and mAP@[.5:.95]
    when evaluated, the epoch's seconds and the share of the time budget used."""

    def __init__(self, report, total_epochs: int, offsets: dict[str, int]):
        super().__init__()
        self.report, self.total, self.offsets, self.phase, self.t0 = (
            report,
            total_epochs,
            offsets,
            None,
            time.monotonic(),
        )

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        # Keras counts epochs per phase, from the checkpoint's on a resumed run: the run's count is the phase's offset on.
        n = self.offsets.get(self.phase, 0) + epoch + 1
        parts = [f"train: epoch {n} of at most {self.total}" + (f" ({self.phase})" if self.phase else "")]
        if "loss" in logs:
            parts.append(f"loss {float(logs['loss']):.4f}")
        if logs.get("val_mAP@.5") is not None:
            parts.append(f"val mAP@.5 {float(logs['val_mAP@.5']):.4f}")
        if logs.get("val_mAP") is not None:
            parts.append(f"mAP@[.5:.95] {float(logs['val_mAP']):.4f}")
        parts.append(f"{time.monotonic() - self.t0:.1f} s")
        if "time_budget_used" in logs:
            parts.append(f"{100 * float(logs['time_budget_used']):.0f}% of the time budget used")
        self.report(", ".join(parts))

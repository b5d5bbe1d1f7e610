"""Learning-rate schedule and time budget: training that fits its wall-clock budget.

A phase (frozen backbone, or fine-tuning) runs until the first of: its epochs, early stopping (if enabled), or
its share of the budget. The learning rate warms up linearly, then follows a cosine from the peak
down to ``alpha * peak`` over the phase's *progress*, the larger of

    step progress  (optimizer steps taken / steps the phase's epochs allow), and
    time progress  (seconds spent in the phase / seconds the phase may take),

so whichever runs out first also ends the decay: a budgeted run is never cut off at its peak
learning rate, and a run bounded by its epochs decays exactly as a plain cosine schedule.

The clock counts the whole fit (validation included) and is saved after every epoch, so a run
resumed after a crash continues with the time that is left, not with a fresh budget.
"""

from __future__ import annotations

import json
import math
import os
import time

import keras
import tensorflow as tf

from ssdflow import storage


@keras.saving.register_keras_serializable(package="ssdflow")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step): linear warm-up from ``peak / 100`` over ``warmup_steps``, then cosine to ``alpha * peak``.

    ``time_progress`` (a float variable in 0..1, set by TimeBudget) can move the cosine ahead of the
    step count; see the module docstring.
    """

    def __init__(
        self,
        peak: float,
        total_steps: int,
        warmup_steps: int,
        time_progress: tf.Variable | None = None,
        alpha: float = 0.01,
    ):
        self.peak, self.alpha = float(peak), float(alpha)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = min(int(warmup_steps), self.total_steps - 1)
        self.time_progress = time_progress

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (0.01 + 0.99 * step / max(self.warmup_steps, 1))
        progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        if self.time_progress is not None:
            progress = tf.maximum(progress, tf.cast(self.time_progress, tf.float32))
        progress = tf.clip_by_value(progress, 0.0, 1.0)
        cosine = self.peak * (self.alpha + (1.0 - self.alpha) * 0.5 * (1.0 + tf.cos(math.pi * progress)))
        return tf.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "alpha": self.alpha,
        }


class Clock:
    """Seconds spent fitting in a run (between start() and stop(): model building and export do not
    count), surviving a resume (``clock.json`` in the run dir)."""

    def __init__(self, run_dir: str, budget_seconds: float | None):
        self.path = os.path.join(run_dir, "clock.json")
        self.budget = budget_seconds
        self.spent_before = 0.0
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.spent_before = float(json.load(f)["seconds"])
        self.started: float | None = None

    def start(self) -> None:
        self.started = time.monotonic()

    def stop(self) -> None:
        self.spent_before, self.started = self.elapsed(), None

    def elapsed(self) -> float:
        running = time.monotonic() - self.started if self.started is not None else 0.0
        return self.spent_before + running

    def save(self) -> None:
        storage.write_json_local(self.path, {"seconds": self.elapsed(), "budget_seconds": self.budget})

    def left(self) -> float:
        return math.inf if self.budget is None else self.budget - self.elapsed()


class TimeBudget(keras.callbacks.Callback):
    """Ends a phase when the clock reaches ``deadline`` (seconds of the run), and feeds its time
    progress to the schedule. The epoch cut short still ends normally: it is validated and
    checkpointed, so the best-epoch bookkeeping sees it. With a budget, each epoch's logs carry
    ``time_budget_used`` (share of the whole run's budget spent) for the callbacks after it."""

    def __init__(self, clock: Clock, deadline: float, progress: tf.Variable):
        super().__init__()
        self.clock, self.deadline, self.progress = clock, deadline, progress
        self.phase_start = clock.elapsed()
        self.stopped_by_budget = False

    def _update(self) -> float:
        now = self.clock.elapsed()
        window = max(self.deadline - self.phase_start, 1e-6)
        self.progress.assign(min(max((now - self.phase_start) / window, 0.0), 1.0))
        return now

    def on_train_batch_begin(self, batch, logs=None):
        self._update()

    def on_train_batch_end(self, batch, logs=None):
        if self._update() >= self.deadline:
            self.stopped_by_budget = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.clock.save()
        if logs is not None and self.clock.budget:
            logs["time_budget_used"] = min(1.0, self.clock.elapsed() / self.clock.budget)

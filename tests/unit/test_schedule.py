"""The learning-rate schedule and the time budget (model/schedule.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from model.schedule import Clock, TimeBudget, WarmupCosine  # noqa: E402


def _lr(schedule, step) -> float:
    return float(schedule(tf.constant(step)))


def test_warmup_then_cosine_bounded_by_steps():
    s = WarmupCosine(1e-2, total_steps=110, warmup_steps=10, alpha=0.01)
    assert _lr(s, 0) == pytest.approx(1e-4)
    assert _lr(s, 5) < _lr(s, 9) < 1e-2
    assert _lr(s, 10) == pytest.approx(1e-2)
    assert _lr(s, 60) == pytest.approx(1e-2 * (0.01 + 0.99 * 0.5), rel=1e-5)  # half way: the cosine's midpoint
    assert _lr(s, 110) == pytest.approx(1e-4) and _lr(s, 500) == pytest.approx(1e-4)
    lrs = [_lr(s, k) for k in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # never rises after the warm-up


def test_time_progress_moves_the_cosine_ahead_of_the_steps():
    progress = tf.Variable(0.0)
    s = WarmupCosine(1.0, total_steps=10_000, warmup_steps=0, time_progress=progress, alpha=0.0)
    assert _lr(s, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.01)), rel=1e-5)  # steps lead
    progress.assign(0.5)
    assert _lr(s, 100) == pytest.approx(0.5, abs=1e-6)  # time leads: half the budget spent
    progress.assign(1.0)
    assert _lr(s, 100) == pytest.approx(0.0, abs=1e-6)


class _FakeClock(Clock):
    """A clock that advances one second per training step."""

    def __init__(self, run_dir, budget):
        super().__init__(run_dir, budget)
        self.ticks = 0.0

    def elapsed(self) -> float:
        return self.spent_before + self.ticks


class _Tick(keras.callbacks.Callback):
    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def on_train_batch_end(self, batch, logs=None):
        self.clock.ticks += 1.0


def test_time_budget_ends_the_fit_mid_epoch_and_the_clock_survives_a_resume(tmp_path):
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    progress = tf.Variable(0.0)
    model.compile(optimizer=keras.optimizers.SGD(WarmupCosine(0.1, 1000, 0, progress)), loss="mse")
    data = tf.data.Dataset.from_tensors((np.ones((4, 2), np.float32), np.ones((4, 1), np.float32))).repeat()

    clock = _FakeClock(str(tmp_path), 7.0)
    budget = TimeBudget(clock, deadline=7.0, progress=progress)
    history = model.fit(data, epochs=100, steps_per_epoch=3, callbacks=[_Tick(clock), budget], verbose=0)
    # Tick runs before TimeBudget, so the 7th step's end reads 7 s: epochs 1 and 2 whole, then one step of 3.
    assert budget.stopped_by_budget and len(history.epoch) == 3
    assert history.history["time_budget_used"] == pytest.approx([3 / 7, 6 / 7, 1.0])  # what later callbacks read
    assert float(progress.numpy()) == pytest.approx(1.0)
    assert model.optimizer.iterations.numpy() == 7

    resumed = Clock(str(tmp_path), 7.0)  # epoch ends saved the time spent
    assert resumed.spent_before == pytest.approx(7.0)
    assert resumed.left() <= 0.0
    assert Clock(str(tmp_path / "elsewhere"), None).left() == math.inf


def test_clock_counts_only_fitting(tmp_path):
    import time

    clock = Clock(str(tmp_path), 60.0)
    time.sleep(0.02)
    assert clock.elapsed() == 0.0  # building the model, tracing, export: not fitting
    clock.start()
    time.sleep(0.02)
    clock.stop()
    spent = clock.elapsed()
    time.sleep(0.02)
    assert 0.015 < spent == clock.elapsed() and clock.left() == pytest.approx(60.0 - spent)

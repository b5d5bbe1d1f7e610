"""Training's epochs in a Prefect flow run's log and progress artifact.

Apart from flows/jobs.py so that importing the flows (every flow run's process does: ingest,
score and models runs too) does not import Keras and TensorFlow; only a training needs them.
"""

from __future__ import annotations

import keras
from prefect import get_run_logger

from flows import artifacts


class PrefectEpochLogger(keras.callbacks.Callback):
    """Per-epoch lines in the flow run's log (not Keras's progress bar) and a progress artifact."""

    def __init__(self, total_epochs: int, progress: artifacts.ProgressArtifact):
        super().__init__()
        self.total, self.progress, self.done = total_epochs, progress, 0

    def on_epoch_end(self, epoch, logs=None):
        self.done += 1
        shown = ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if isinstance(v, (int, float)))
        get_run_logger().info("train: epoch %d (at most %d): %s", self.done, self.total, shown)
        # Whichever ends the run first, its epochs or its time budget (the training clock's share,
        # model/schedule.py's TimeBudget), sets the progress shown.
        used = (logs or {}).get("time_budget_used", 0.0)
        self.progress.update(100.0 * min(1.0, max(self.done / self.total, used)))

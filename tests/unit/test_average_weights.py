"""AverageWeights: val mAP and the kept epoch see the optimizer's weight average; training goes on from the raw weights."""

from __future__ import annotations

import keras
import numpy as np

from model.callbacks import AverageWeights


def _fitted(use_ema: bool):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, use_ema=use_ema, ema_momentum=0.9), loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    seen = {}

    class Probe(keras.callbacks.Callback):
        def __init__(self, key):
            super().__init__()
            self.key = key

        def on_epoch_end(self, epoch, logs=None):
            seen.setdefault(self.key, []).append([w.numpy().copy() for w in self.model.trainable_weights])

    average = AverageWeights()
    model.fit(
        x,
        x @ np.array([[1.0], [-2.0], [3.0]], "float32"),
        batch_size=8,
        epochs=2,
        verbose=0,
        callbacks=[Probe("raw"), average.swap_in, Probe("evaluated"), average.swap_out, Probe("after")],
    )
    return model, seen


def test_epoch_end_sees_the_average_then_the_raw_weights_return():
    model, seen = _fitted(use_ema=True)
    averages = model.optimizer._model_variables_moving_average  # what finalize_variable_values copies in
    for raw, evaluated, after in zip(seen["raw"], seen["evaluated"], seen["after"]):
        assert not all(np.allclose(r, e) for r, e in zip(raw, evaluated)), "the average was not swapped in"
        assert all(np.array_equal(r, a) for r, a in zip(raw, after)), "the raw weights did not come back"
    # fit() ends with the average in the model (Keras's finalize), which is what gets exported.
    assert all(np.allclose(w.numpy(), a.numpy()) for w, a in zip(model.trainable_weights, averages))


def test_without_ema_nothing_changes():
    _, seen = _fitted(use_ema=False)
    for raw, evaluated, after in zip(seen["raw"], seen["evaluated"], seen["after"]):
        assert all(np.array_equal(r, e) and np.array_equal(r, a) for r, e, a in zip(raw, evaluated, after))

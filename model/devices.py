"""Where and in what precision a training runs: the distribution strategy and Keras's dtype policy."""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from model.ssd import build_ssd


def distribution_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over all GPUs when there are several; the default strategy otherwise."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@contextlib.contextmanager
def precision_policy(setting: str):
    """Keras's global dtype policy for the run, restored afterwards (a served process trains many times).

    ``auto``: mixed_float16 on GPUs, float32 on CPUs: XLA and mixed_bfloat16 were measured slower
    on CPU (``python -m bench.train precision``). Variables, the heads' final concat and the loss
    stay float32 under every policy. Yields the policy's name.
    """
    if setting == "auto":
        setting = "mixed_float16" if tf.config.list_logical_devices("GPU") else "float32"
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(setting)
    try:
        yield setting
    finally:
        keras.mixed_precision.set_global_policy(previous)


def float32_twin(model: keras.Model, model_cfg) -> keras.Model:
    """The same network with float32 compute, for export: a mixed-precision SavedModel would run
    bfloat16/float16 kernels in every consumer, and CPUs run those slower (or, float16, not at all)."""
    with precision_policy("float32"):
        twin = build_ssd(model_cfg, None)
    twin.set_weights(model.get_weights())  # mixed-precision variables are float32 already
    return twin

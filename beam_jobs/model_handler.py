"""A RunInference ModelHandler for ssdflow's exported SavedModel.

Beam's built-in TensorFlow handler needs ``tensorflow_hub`` and loads with
``tf.keras.models.load_model``, which Keras 3 refuses for SavedModel directories; ssdflow's export
is a plain ``tf.Module`` whose ``serving_default`` takes encoded image bytes, so this handler
loads it with ``tf.saved_model.load`` and needs nothing from model/.

RunInference loads the model once per worker process (``shared.Shared``) and shares it across
the process's threads; batches come from RunInference's own batching.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

log = logging.getLogger(__name__)

OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


class SavedModelDetector(ModelHandler[bytes, PredictionResult, Any]):
    """Encoded image bytes → PredictionResult whose ``inference`` is a dict of numpy arrays per image.

    A batch that fails as a whole (one image TensorFlow cannot decode) is retried image by image,
    so one corrupt file costs its own result, not its neighbours'; the failing image's inference
    is ``{"error": message}``.
    """

    def __init__(self, model_dir: str, min_batch_size: int = 8, max_batch_size: int = 32):
        self._model_dir = model_dir
        self._batch = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

    def load_model(self):
        import tensorflow as tf

        return tf.saved_model.load(self._model_dir)  # Beam's Shared needs a weak-referenceable object

    def run_inference(self, batch: Sequence[bytes], model, inference_args=None) -> Iterable[PredictionResult]:
        import tensorflow as tf

        serve = model.signatures["serving_default"]
        try:
            outputs = self._call(serve, batch)
        except tf.errors.InvalidArgumentError:
            return [self._one(serve, data) for data in batch]
        return [PredictionResult(None, {k: v[i] for k, v in outputs.items()}) for i in range(len(batch))]

    def _one(self, serve, data: bytes) -> PredictionResult:
        import tensorflow as tf

        try:
            out = self._call(serve, [data])
        except tf.errors.InvalidArgumentError as e:
            return PredictionResult(None, {"error": _reason(e.message)})
        return PredictionResult(None, {k: v[0] for k, v in out.items()})

    @staticmethod
    def _call(serve, batch: Sequence[bytes]) -> dict:
        import tensorflow as tf

        out = serve(images=tf.constant(list(batch), dtype=tf.string))
        return {k: out[k].numpy() for k in OUTPUT_KEYS}

    def batch_elements_kwargs(self):
        return dict(self._batch)

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(b) for b in batch)

    def get_metrics_namespace(self) -> str:
        return "ssdflow.score"


_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")


def _reason(message: str) -> str:
    """The line of a TensorFlow error that names the problem (e.g. "jpeg::Uncompress failed. Invalid
    JPEG data or crop window."), not the "Graph execution error:" banner or the node trace."""
    lines = [line.strip() for line in message.splitlines()]
    useful = [line for line in lines if line and not line.startswith(_NOISE)]
    return (useful[-1] if useful else message.strip())[:500]

"""RunInference ModelHandlers for ssdflow's exported models: the SavedModel, and its .tflite files.

Beam's built-in TensorFlow handler needs ``tensorflow_hub`` and loads with
``tf.keras.models.load_model``, which Keras 3 refuses for SavedModel directories; ssdflow's export
is a plain ``tf.Module`` whose ``serving_default`` takes encoded image bytes, so this handler
loads it with ``tf.saved_model.load`` and needs nothing from model/.

The scoring job (beam_jobs/score/pipeline.py) calls it as RunInference would: the model loaded once per
worker process through Beam's ``shared.Shared`` and shared by the process's threads, batches cut
from a chunk's images. A model on s3:// or gs:// is copied to the worker's local disk once per
machine (only the SavedModel's files), checked against its fingerprint, and loaded from there.

``TFLiteDetectorHandler`` runs a .tflite export (``ssdflow export --format tflite``; int8 pays on
CPUs with VNNI) through TFLite's interpreter with the same per-image outputs, so scoring, chunks and
resume do not know which one ran.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Sequence

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

log = logging.getLogger(__name__)

OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
FINGERPRINTED = (
    "saved_model.pb",
    "variables/variables.index",
)  # the graph, and the variables' index with their checksums


def saved_model_fingerprint(model_dir: str) -> str:
    """16 hex digits identifying an exported model's content (local path, s3:// or gs://)."""
    from ssdflow import storage

    h = hashlib.sha256()
    for name in FINGERPRINTED:
        h.update(storage.read_bytes(storage.join(model_dir, *name.split("/"))))
    return h.hexdigest()[:16]


def file_fingerprint(uri: str) -> str:
    """16 hex digits of a single model file's sha256 (a .tflite; local path, s3:// or gs://)."""
    from ssdflow import storage

    return content_fingerprint(storage.read_bytes(uri))


def content_fingerprint(content: bytes) -> str:
    """:func:`file_fingerprint` of bytes already read."""
    return hashlib.sha256(content).hexdigest()[:16]


def _saved_model_file(rel: str) -> bool:
    """What tf.saved_model.load reads (not keras.weights.h5, model card, logs: they stay remote)."""
    return rel in ("saved_model.pb", "fingerprint.pb") or rel.startswith(("variables/", "assets/"))


class _EncodedImagesHandler(ModelHandler[bytes, PredictionResult, Any]):
    """What ssdflow's handlers share: encoded image bytes in, batches of ``self._batch``'s sizes."""

    _batch: dict

    def batch_elements_kwargs(self):
        return dict(self._batch)

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(b) for b in batch)

    def get_metrics_namespace(self) -> str:
        return "ssdflow.score"


class SavedModelDetector(_EncodedImagesHandler):
    """Encoded image bytes → PredictionResult whose ``inference`` is a dict of numpy arrays per image.

    A batch that fails as a whole (one image TensorFlow cannot decode) is retried image by image,
    so one corrupt file costs its own result, not its neighbours'; the failing image's inference
    is ``{"error": message}``.
    """

    def __init__(
        self, model_dir: str, min_batch_size: int = 8, max_batch_size: int = 32, fingerprint: str | None = None
    ):
        self._model_dir = model_dir
        self._fingerprint = fingerprint  # of the model meant; a remote copy must match it
        self._batch = {"min_batch_size": min(min_batch_size, max_batch_size), "max_batch_size": max_batch_size}

    def load_model(self):
        import tensorflow as tf

        from ssdflow import storage

        local = self._model_dir
        if not storage.is_local(local):
            want = self._fingerprint or saved_model_fingerprint(self._model_dir)
            local = storage.local_dir(
                self._model_dir,
                f"model-{want}",
                include=_saved_model_file,
                is_valid=lambda path: saved_model_fingerprint(path) == want,
            )
            log.info("model %s loaded from its local copy %s", self._model_dir, local)
        return tf.saved_model.load(local)  # Beam's Shared needs a weak-referenceable object

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


class _InterpreterPool:
    """A .tflite file's bytes and ``workers`` threads, each with its own single-threaded interpreter (an
    interpreter is not thread-safe): the images of a batch are decoded and run in parallel, one per
    thread. On 2 cores that measured faster than one interpreter using both cores with decoding in
    between (docs/benchmarks.md, "Scoring with TFLite"). Beam's ``Shared`` keeps one pool per worker process."""

    def __init__(self, content: bytes, workers: int):
        self.content = content
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ssdflow-tflite")

    def run(self, batch: Sequence[bytes]) -> list[dict]:
        return list(self._pool.map(self._one, batch))

    def _one(self, data: bytes) -> dict:
        import tensorflow as tf

        from model.tflite import TFLiteDetector, resize

        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = self._local.detector = TFLiteDetector(content=self.content, num_threads=1)
        try:
            pixels = resize(data, detector.size)  # decoded and resized as the SavedModel's serving_default does
        except tf.errors.InvalidArgumentError as e:
            return {"error": _reason(e.message)}
        return detector.detect_pixels(pixels)


class TFLiteDetectorHandler(_EncodedImagesHandler):
    """Encoded image bytes → the PredictionResults ``SavedModelDetector`` gives, from a .tflite file.

    Each image is decoded and resized as the SavedModel's ``serving_default`` does, then run alone
    (the file's input is [1, S, S, 3]); one that cannot be decoded gets ``{"error": message}``. The
    file (local, s3:// or gs://) is read once per worker process and must match ``fingerprint``.
    ``workers``: images run at once, each on its own single-threaded interpreter (default: the usable cores).
    """

    def __init__(
        self, model_uri: str, max_batch_size: int = 32, fingerprint: str | None = None, workers: int | None = None
    ):
        self._model_uri, self._fingerprint, self._workers = model_uri, fingerprint, workers
        self._batch = {"min_batch_size": 1, "max_batch_size": max_batch_size}

    def load_model(self) -> _InterpreterPool:
        from ssdflow import storage
        from ssdflow.beam_runner import usable_cores

        content = storage.read_bytes(self._model_uri)
        found = content_fingerprint(content)
        if self._fingerprint and found != self._fingerprint:
            raise RuntimeError(
                f"{self._model_uri} changed while the job ran (fingerprint {found}, expected {self._fingerprint})"
            )
        return _InterpreterPool(content, self._workers or usable_cores())

    def run_inference(
        self, batch: Sequence[bytes], model: _InterpreterPool, inference_args=None
    ) -> Iterable[PredictionResult]:
        return [PredictionResult(None, inference) for inference in model.run(batch)]


_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")


def _reason(message: str) -> str:
    """The line of a TensorFlow error that names the problem (e.g. "jpeg::Uncompress failed. Invalid
    JPEG data or crop window."), not the "Graph execution error:" banner or the node trace."""
    lines = [line.strip() for line in message.splitlines()]
    useful = [line for line in lines if line and not line.startswith(_NOISE)]
    return (useful[-1] if useful else message.strip())[:500]

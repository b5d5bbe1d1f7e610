"""The model a scoring run uses: resolved from ``--model`` and fingerprinted, with its labels and thresholds."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass

from beam_jobs.model_handler import SavedModelDetector, TFLiteDetectorHandler, file_fingerprint, saved_model_fingerprint
from ssdflow import storage
from ssdflow.config import is_tflite
from ssdflow.schema import MODEL_INFO, LabelMap


@dataclass(frozen=True)
class ModelRef:
    model_dir: str
    version: str  # the registered version; "<version>.<file stem>" for a .tflite file (outputs name it)
    fingerprint: str  # of the SavedModel's graph and variables index (or the .tflite file): chunks are keyed on it
    label_names: dict  # id → name
    class_thresholds: dict  # id → score threshold calibrated on val at training time ({} for older models)
    tflite_file: str | None = None  # a .tflite export of model_dir, run instead of the SavedModel

    @property
    def runtime(self) -> str:
        return "tflite" if self.tflite_file else "saved_model"

    def handler(self, max_batch_size: int):
        """The ModelHandler that runs this model: TFLite's interpreter for a .tflite file, else TensorFlow."""
        if self.tflite_file:
            return TFLiteDetectorHandler(self.tflite_file, max_batch_size=max_batch_size, fingerprint=self.fingerprint)
        return SavedModelDetector(self.model_dir, max_batch_size=max_batch_size, fingerprint=self.fingerprint)

    def score_thresholds(self, setting: float | None) -> dict[int, float]:
        """Each class id's score threshold for ``--score-threshold`` (None, "auto": the calibrated
        ones, ``FALLBACK_SCORE_THRESHOLD`` where there is none; a number: that for every class)."""
        from ssdflow.config import FALLBACK_SCORE_THRESHOLD

        if setting is None:
            return {i: float(self.class_thresholds.get(i, FALLBACK_SCORE_THRESHOLD)) for i in sorted(self.label_names)}
        return {i: float(setting) for i in sorted(self.label_names)}


def resolve_model(model: str) -> ModelRef:
    """The model ``--model`` names (a SavedModel directory, a models directory's champion, or a .tflite
    file exported beside a SavedModel; local, s3:// or gs://), fingerprinted by its graph and variables
    index (a .tflite: by its bytes)."""
    from model.registry import resolve_model_uri  # only the path rule; no TensorFlow import

    tflite_file = None
    if is_tflite(model):
        tflite_file = str(model)
        if not storage.exists(tflite_file):
            raise FileNotFoundError(
                f"{tflite_file}: no such .tflite file (`ssdflow export --format tflite` writes one)"
            )
        model_dir = posixpath.dirname(tflite_file)
        if not storage.exists(storage.join(model_dir, "label_map.json")):
            raise FileNotFoundError(f"{tflite_file}: not beside its exported model (no label_map.json in {model_dir})")
    else:
        model_dir = resolve_model_uri(model)
    label_map = LabelMap.parse(storage.read_text(storage.join(model_dir, "label_map.json")), "label_map.json")
    info_uri = storage.join(model_dir, MODEL_INFO)
    info = json.loads(storage.read_text(info_uri)) if storage.exists(info_uri) else {}
    thresholds = {int(i): float(t) for i, t in (info.get("class_score_thresholds") or {}).items()}
    version = posixpath.basename(model_dir.rstrip("/"))
    if tflite_file:
        version = f"{version}.{posixpath.basename(tflite_file)[: -len('.tflite')]}"
        fingerprint = file_fingerprint(tflite_file)
    else:
        fingerprint = saved_model_fingerprint(model_dir)
    return ModelRef(model_dir, version, fingerprint, dict(label_map.names_by_id()), thresholds, tflite_file)

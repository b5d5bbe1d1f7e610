"""Export: a SavedModel whose serving signature takes encoded images and returns detections.

Contract (what the scoring job and users rely on; nothing else of model/ is needed to serve):

* ``serving_default(images: tf.string [B])`` — JPEG/PNG bytes, any size; returns the TF OD API
  exporter's keys: ``detection_boxes`` [B, D, 4] normalized (ymin, xmin, ymax, xmax),
  ``detection_scores`` [B, D], ``detection_classes`` [B, D] (label ids from 1, as floats),
  ``num_detections`` [B]. ``serve_pixels(pixels: float32 [B, S, S, 3])``: decoded and resized.
* As the TF OD API's exports are (a drop-in for their clients): the loaded object is callable,
  ``detect_fn(uint8 [B, H, W, 3])`` → the same dict, any H and W; and the signatures
  ``image_tensor(input_tensor: uint8 [B, H, W, 3])`` and ``encoded_image_string_tensor(input_tensor:
  tf.string [B])`` have the TF OD API's input name for TF Serving clients (``signature_name``).
* ``class_score_thresholds``: a variable [num_classes + 1], indexed by label id, with each class's
  score threshold calibrated on val (model/thresholds.py; ``FALLBACK_SCORE_THRESHOLD`` where
  there was none), for consumers to apply; the signatures' own outputs are not filtered by it.
* Beside it: ``label_map.json`` (ids ↔ names), ``ssdflow_model.json`` (architecture, thresholds,
  ``class_score_thresholds`` by id), ``metrics.json`` and ``model_card.md`` (written by training).
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from model.anchors import generate_anchors
from model.postprocess import postprocess
from ssdflow.config import FALLBACK_SCORE_THRESHOLD, ModelConfig
from ssdflow.schema import KERAS_WEIGHTS, MODEL_INFO, LabelMap


class Detector(tf.Module):
    """The inference model: decode → resize → SSD → box decoding → per-class NMS."""

    def __init__(
        self,
        keras_model,
        cfg: ModelConfig,
        score_threshold: float = 0.01,
        iou_threshold: float = 0.5,
        max_detections: int = 100,
        class_thresholds: dict[int, float] | None = None,
        box_merge_iou: float | None = None,
    ):
        super().__init__(name="ssdflow_detector")
        # Only the network's variables are tracked, not the Keras object graph: the SavedModel then
        # skips hundreds of layer objects that no consumer uses: it saves and loads in about half
        # the time, in every scoring worker and champion evaluation, with the same outputs
        # (docs/benchmarks.md, "SavedModel export and load").
        object.__setattr__(self, "network", keras_model)  # bypasses tf.Module's attribute tracking
        self.network_variables = [v.value for v in keras_model.weights]
        self.size = cfg.image_size
        self.anchors = tf.constant(generate_anchors(cfg), tf.float32)
        self.variances = tf.constant(cfg.variances, tf.float32)
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections
        self.box_merge_iou = box_merge_iou
        object.__setattr__(
            self, "cfg", cfg
        )  # plain Python state, not tracked (nothing of it belongs in the SavedModel)
        self.class_score_thresholds = tf.Variable(
            tf.zeros([cfg.num_classes + 1]), trainable=False, name="class_score_thresholds"
        )
        self.set_class_thresholds(class_thresholds or {})

    def set_class_thresholds(self, thresholds: dict[int, float]) -> None:
        """Each class id's calibrated score threshold (``FALLBACK_SCORE_THRESHOLD`` where none), into
        the ``class_score_thresholds`` lookup that the SavedModel carries; the detections do not change."""
        object.__setattr__(self, "class_thresholds", {int(i): float(t) for i, t in thresholds.items()})
        lookup = [1.0] + [
            self.class_thresholds.get(i, FALLBACK_SCORE_THRESHOLD) for i in range(1, self.cfg.num_classes + 1)
        ]
        self.class_score_thresholds.assign(lookup)

    def _decode(self, data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return tf.image.resize(tf.cast(image, tf.float32), [self.size, self.size])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve(self, images):
        pixels = tf.map_fn(
            self._decode, images, fn_output_signature=tf.TensorSpec([self.size, self.size, 3], tf.float32)
        )
        # Calling the other signature's function, not inlining the network again, keeps one copy of
        # the graph in the SavedModel: a smaller file that loads faster in every scoring worker.
        return self.serve_pixels(pixels)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="input_tensor")])
    def __call__(self, input_tensor):
        """The TF OD API's ``detect_fn(input_tensor)``: uint8 images [B, H, W, 3] of any size, resized as
        decoded bytes are (bilinear, in float), so the same image gives the same detections."""
        return self.serve_pixels(tf.image.resize(tf.cast(input_tensor, tf.float32), [self.size, self.size]))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="input_tensor")])
    def serve_encoded(self, input_tensor):
        """``serving_default`` under the TF OD API's ``encoded_image_string_tensor`` input name."""
        return self.serve(input_tensor)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="pixels")])
    def serve_pixels(self, pixels):
        """Pre-decoded batches [B, S, S, 3] in 0..255 (for callers that decode themselves)."""
        return self.detect_pixels(pixels)

    def detect_pixels(self, pixels):
        predictions = self.network(pixels, training=False)
        return postprocess(
            predictions,
            self.anchors,
            self.variances,
            self.score_threshold,
            self.iou_threshold,
            self.max_detections,
            self.box_merge_iou,
        )


def export_saved_model(
    keras_model,
    cfg: ModelConfig,
    label_map: LabelMap,
    out_dir: str,
    *,
    score_threshold: float = 0.01,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
    class_thresholds: dict[int, float] | None = None,
    box_merge_iou: float | None = None,
) -> str:
    """Writes the SavedModel and its contract files into ``out_dir`` (which should be a staging dir).
    ``class_thresholds``: {label id: calibrated score threshold}, stored in the SavedModel and beside it."""
    detector = Detector(
        keras_model, cfg, score_threshold, iou_threshold, max_detections, class_thresholds, box_merge_iou
    )
    return save_detector(detector, label_map, out_dir)


def save_detector(detector: Detector, label_map: LabelMap, out_dir: str) -> str:
    """``detector`` as a SavedModel with its contract files (label map, ``ssdflow_model.json``) in
    ``out_dir``. Training scores the same ``Detector``'s signature functions before it saves them
    once, with the thresholds calibrated on that score (what is saved is what was scored)."""
    tf.saved_model.save(
        detector,
        out_dir,
        signatures={
            "serving_default": detector.serve,
            "serve_pixels": detector.serve_pixels,
            "image_tensor": detector.__call__,
            "encoded_image_string_tensor": detector.serve_encoded,
        },
    )
    with open(os.path.join(out_dir, "label_map.json"), "w") as f:
        f.write(label_map.to_json())
    info = {
        "model": detector.cfg.model_dump(),
        "score_threshold": detector.score_threshold,
        "iou_threshold": detector.iou_threshold,
        "max_detections": detector.max_detections,
        "box_merge_iou": detector.box_merge_iou,
        "input": "images: tf.string [B] (JPEG/PNG bytes)",
        "class_score_thresholds": {str(i): t for i, t in sorted(detector.class_thresholds.items())},
    }
    with open(os.path.join(out_dir, MODEL_INFO), "w") as f:
        json.dump(info, f, indent=2)
    return out_dir


def load_detector(model_dir: str):
    """The serving function of an exported model (``tf.saved_model.load``; no Keras needed)."""
    loaded = tf.saved_model.load(model_dir)
    return loaded.signatures["serving_default"], loaded


def reexport(
    model_dir: str,
    out_dir: str,
    *,
    score_threshold: float | None = None,
    iou_threshold: float | None = None,
    max_detections: int | None = None,
    box_merge_iou: float | None = None,
) -> str:
    """Rebuilds a registered model from its Keras weights and exports it again, e.g. with new thresholds
    (``box_merge_iou``: None keeps the model's; 0 turns merging off)."""
    from model.ssd import build_ssd

    with open(os.path.join(model_dir, MODEL_INFO)) as f:
        info = json.load(f)
    cfg = ModelConfig(**info["model"])
    with open(os.path.join(model_dir, "label_map.json")) as f:
        label_map = LabelMap.parse(f.read(), "label_map.json")
    model = build_ssd(cfg, None)
    model.load_weights(os.path.join(model_dir, KERAS_WEIGHTS))
    export_saved_model(
        model,
        cfg,
        label_map,
        out_dir,
        score_threshold=info["score_threshold"] if score_threshold is None else score_threshold,
        iou_threshold=info["iou_threshold"] if iou_threshold is None else iou_threshold,
        max_detections=info["max_detections"] if max_detections is None else max_detections,
        class_thresholds={int(i): t for i, t in info.get("class_score_thresholds", {}).items()},
        box_merge_iou=info.get("box_merge_iou") if box_merge_iou is None else (box_merge_iou or None),
    )
    for name in ("metrics.json", "model_card.md"):
        if os.path.exists(os.path.join(model_dir, name)):
            import shutil

            shutil.copy(os.path.join(model_dir, name), os.path.join(out_dir, name))
    return out_dir

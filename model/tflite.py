"""TFLite export: the detector for phones, boards and Edge TPUs, and a runner to measure it.

As the TF OD API's TFLite path (``export_tflite_graph_tf2.py`` + the converter): a fixed input
[1, S, S, 3], the network and the softmax in the graph, then a composite function that the
converter replaces with TFLite's built-in custom op ``TFLite_Detection_PostProcess`` (box decoding
and per-class NMS, as ``Detector`` does). Its outputs, in the subgraph's order as the TF OD API's
TF2 exports have them: scores [1, D], boxes [1, D, 4] (ymin, xmin, ymax, xmax, normalized), count
[1], classes [1, D] (class *index* from 0: label id - 1, TFLite's convention). The signature
``serving_default`` names them ``output_0`` (count), ``output_1`` (scores), ``output_2`` (classes),
``output_3`` (boxes); ``image`` is its input.

``quantize``: ``none`` (float32), ``float16`` (weights in float16, computed in float32: half the
size), ``int8`` (full integer: weights and activations, calibrated on images of the ingest output's
train split; the input is then uint8 pixels, scale 1, zero point 0). The network scales pixels
itself, so every variant takes raw 0..255 pixels; the metadata (model/tflite_metadata.py) says so,
and carries the label file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import typing
import uuid
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import tensorflow as tf

from model import tflite_metadata
from ssdflow import storage
from model.anchors import generate_anchors
from model.box_coder import corners_to_center
from ssdflow.config import ModelConfig, TFLiteQuantize
from ssdflow.schema import KERAS_WEIGHTS, MODEL_INFO, LabelMap

log = logging.getLogger(__name__)

QUANTIZE = typing.get_args(TFLiteQuantize)  # ("none", "float16", "int8")
CALIBRATION_IMAGES = 100  # representative images for int8 (the TFLite docs suggest ~100-500)
MANIFEST = "tflite.json"  # the TFLite files of a model directory, with sizes and checksums


class TFLiteExportError(ValueError):
    """Bad input to the TFLite export; the message names the flag."""


def tflite_name(quantize: str) -> str:
    """The file written beside the SavedModel: model.tflite, model_float16.tflite, model_int8.tflite."""
    return "model.tflite" if quantize == "none" else f"model_{quantize}.tflite"


def _postprocess_signature(cfg: ModelConfig, score_threshold: float, iou_threshold: float, max_detections: int) -> str:
    """The ``experimental_implements`` text from which the converter builds TFLite_Detection_PostProcess."""
    v = cfg.variances  # the op scales the encodings by 1 / variance, as model/box_coder.py's decode does
    attrs = {
        "max_detections": ("i", max_detections),
        "max_classes_per_detection": ("i", 1),
        "detections_per_class": ("i", max_detections),
        "use_regular_nms": ("b", "true"),
        "nms_score_threshold": ("f", score_threshold),
        "nms_iou_threshold": ("f", iou_threshold),
        "y_scale": ("f", 1.0 / v[0]),
        "x_scale": ("f", 1.0 / v[1]),
        "h_scale": ("f", 1.0 / v[2]),
        "w_scale": ("f", 1.0 / v[3]),
        "num_classes": ("i", cfg.num_classes),
    }
    parts = ['name: "TFLite_Detection_PostProcess"']
    parts += [f'attr {{ key: "{k}" value {{ {t}: {val} }} }}' for k, (t, val) in attrs.items()]
    return " ".join(parts)


class TFLiteSSD(tf.Module):
    """The graph the converter sees: pixels [1, S, S, 3] float32 0..255 → the post-processing op's outputs."""

    def __init__(
        self, keras_model, cfg: ModelConfig, score_threshold: float, iou_threshold: float, max_detections: int
    ):
        super().__init__(name="ssdflow_tflite")
        import keras

        # The network up to its two concatenations, before they are joined into one tensor: int8 gives
        # each tensor one scale, and box encodings (a few units) and class logits (tens) sharing one
        # would cost the encodings most of their resolution.
        heads = keras.Model(
            keras_model.input, [keras_model.get_layer("boxes").output, keras_model.get_layer("class_logits").output]
        )
        object.__setattr__(self, "network", heads)  # as Detector: track the variables, not the Keras graph
        self.network_variables = [v.value for v in keras_model.weights]  # (tracked, the converter freezes them)
        self.anchors = tf.constant(corners_to_center(generate_anchors(cfg)).numpy(), tf.float32)  # (cy, cx, h, w)
        implements = _postprocess_signature(cfg, score_threshold, iou_threshold, max_detections)

        @tf.function(experimental_implements=implements)
        def postprocess(box_encodings, class_predictions, anchors):
            # Never run: the converter puts TFLite's op in its place (TensorFlow has no such kernel).
            zero = tf.constant(0.0)
            return zero, zero, zero, zero

        object.__setattr__(self, "postprocess", postprocess)
        size = cfg.image_size
        self.detect = tf.function(
            self._detect, input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32, name="image")]
        )

    def _detect(self, image):
        encodings, logits = self.network(image, training=False)  # [1, A, 4], [1, A, C + 1]
        scores = tf.nn.softmax(logits, axis=-1)  # with background at 0, as the op expects
        # Reversed as the TF OD API's export reverses them: the subgraph's outputs then come in the
        # order TF2 detection .tflite files have (scores, boxes, count, classes).
        return self.postprocess(encodings, scores, self.anchors)[::-1]


def load_keras(model_dir: str):
    """(Keras model with the trained weights, ModelConfig, model info) of a registered model directory."""
    from model.ssd import build_ssd

    cfg, info = load_info(model_dir)
    model = build_ssd(cfg, None)
    model.load_weights(os.path.join(model_dir, KERAS_WEIGHTS))
    return model, cfg, info


def load_info(model_dir: str) -> tuple[ModelConfig, dict]:
    """(ModelConfig, ssdflow_model.json) of an exported model directory."""
    info = json.loads(Path(model_dir, MODEL_INFO).read_text())
    return ModelConfig(**info["model"]), info


def representative_images(data_dir: str, size: int, count: int = CALIBRATION_IMAGES) -> Iterator[list[np.ndarray]]:
    """Up to ``count`` train-split images of an ingest output, decoded and resized as ``Detector`` does."""
    from model.dataset import eval_dataset, shard_files

    seen = 0
    for batch in eval_dataset(shard_files(data_dir, "train"), 16):
        for data in batch["encoded"].numpy():
            yield [resize(data, size)[None]]
            seen += 1
            if seen >= count:
                return


def resize(data: bytes, size: int) -> np.ndarray:
    """Encoded image → [S, S, 3] float32 0..255, exactly as the SavedModel's ``serving_default`` prepares it."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.image.resize(tf.cast(image, tf.float32), [size, size]).numpy()


def convert(model, cfg: ModelConfig, info: dict, quantize: str = "none", data: str | None = None) -> bytes:
    """The .tflite bytes (without metadata) of a trained Keras SSD (``load_keras``'s; inputs checked by ``export_tflite``)."""
    if info.get("box_merge_iou"):
        log.warning(
            "export: TFLite's detection op has no box merging: the .tflite keeps NMS's own boxes "
            "(the SavedModel merges above IoU %s; the .tflite's val mAP is measured on its own)",
            info["box_merge_iou"],
        )
    module = TFLiteSSD(model, cfg, info["score_threshold"], info["iou_threshold"], info["max_detections"])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.detect.get_concrete_function()], module)
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: representative_images(data, cfg.image_size)
        converter.inference_input_type = tf.uint8  # pixels as they are: scale 1, zero point 0 (the range is 0..255)
    from ssdflow.patches.quiet import TFLITE_NOISE, filtered_stderr

    with filtered_stderr(TFLITE_NOISE):  # the quantizer prints its settings to fd 2
        return converter.convert()


def export_tflite(model_dir: str, quantize: str = "none", data: str | None = None) -> dict:
    """Writes ``model_dir/model[_QUANTIZE].tflite`` (with metadata and the label file) atomically;
    with ``data``, also scores it on that ingest output's val split (TFLite's interpreter). Records it,
    with its metrics, in ``tflite.json`` and the model card; returns its manifest entry."""
    if quantize not in QUANTIZE:
        raise TFLiteExportError(f"--quantize {quantize!r}: one of {', '.join(QUANTIZE)}")
    if quantize == "int8" and not data:
        raise TFLiteExportError(
            "--quantize int8 needs --data: an ingest output whose train split calibrates the int8 ranges"
        )
    if not Path(model_dir, "saved_model.pb").is_file() or not Path(model_dir, KERAS_WEIGHTS).is_file():
        raise TFLiteExportError(
            f"--model {model_dir}: no exported model there (saved_model.pb and {KERAS_WEIGHTS} are needed)"
        )
    if data and not Path(data, "_SUCCESS").is_file():
        raise TFLiteExportError(f"--data {data}: not a complete ingest output (no _SUCCESS)")
    t0 = time.perf_counter()
    keras_model, cfg, info = load_keras(model_dir)
    model = convert(keras_model, cfg, info, quantize, data)
    label_map = LabelMap.parse(Path(model_dir, "label_map.json").read_text(), "label_map.json")
    version = Path(model_dir).name
    meta = tflite_metadata.build_metadata(
        name=f"ssdflow SSD MobileNetV2 {cfg.alpha} {cfg.image_size}",
        version=version,
        image_size=cfg.image_size,
        num_labels=len(label_map),
        description=(
            f"ssdflow detector {version}, TFLite ({quantize}): input RGB "
            f"{cfg.image_size}x{cfg.image_size}, outputs as the TF OD API's TFLite SSD exports."
        ),
    )
    model = tflite_metadata.populate(model, meta, tflite_metadata.label_file(dict(label_map), cfg.num_classes))
    name = tflite_name(quantize)
    staging = Path(model_dir, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    staging.write_bytes(model)
    os.replace(staging, Path(model_dir, name))  # never a half-written .tflite under its real name
    entry = {
        "file": name,
        "quantize": quantize,
        "bytes": len(model),
        "sha256": hashlib.sha256(model).hexdigest(),
        "input": "uint8 [1, S, S, 3]" if quantize == "int8" else "float32 [1, S, S, 3], 0..255",
        "calibration": data if quantize == "int8" else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if data:
        metrics = score_tflite(str(Path(model_dir, name)), data, "val")
        entry["metrics"] = {k: metrics[k] for k in ("mAP", "mAP@.5", "mAP@.75")}
    record(model_dir, entry)
    return entry


def export_tflite_beside(model_uri: str, quantize: str = "none", data: str | None = None) -> dict:
    """:func:`export_tflite` for a model directory on any storage (local, s3://, gs://), ``data`` too.

    A model in a bucket is exported in this machine's copy of it (its tflite.json and model card
    fetched fresh first: they change after the version's commit), and the .tflite, tflite.json and
    model card go back beside its SavedModel, the .tflite first."""
    from model.dataset import local_records
    from model.registry import local_copy

    data = local_records(data) if data else None
    if storage.is_local(model_uri):
        return export_tflite(storage.local_path(model_uri), quantize, data)
    local = local_copy(model_uri)
    for name in (MANIFEST, "model_card.md"):
        uri, path = storage.join(model_uri, name), Path(local, name)
        if storage.exists(uri):
            storage.atomic_write_local(path, storage.read_bytes(uri))
        else:
            path.unlink(missing_ok=True)
    entry = export_tflite(local, quantize, data)
    storage.upload_tree(local, model_uri, [entry["file"], MANIFEST, "model_card.md"])
    return entry


def manifest(model_dir: str) -> dict:
    """``tflite.json`` of a model directory (local or in a bucket): file name → its entry ({} before any export)."""
    uri = storage.join(model_dir, MANIFEST)
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else {}


def record(model_dir: str, entry: dict) -> None:
    """``entry`` (with its ``metrics`` where measured) into tflite.json and the model card's TFLite section;
    it replaces the file's earlier entry whole, so a new file never shows the old one's metrics."""
    path = Path(model_dir, MANIFEST)
    files = manifest(model_dir)
    files[entry["file"]] = entry
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(files, indent=2, sort_keys=True))
    os.replace(tmp, path)
    card = Path(model_dir, "model_card.md")
    if card.is_file():
        text = card.read_text()
        text = text.split(_CARD_START)[0].rstrip("\n") + "\n\n" + _card_section(files)
        tmp = card.with_suffix(".md.tmp")
        tmp.write_text(text)
        os.replace(tmp, card)


_CARD_START = "<!-- ssdflow: tflite -->"


def _card_section(files: dict) -> str:
    rows = []
    for name, e in sorted(files.items()):
        m = e.get("metrics") or {}
        shown = f"{m['mAP@.5']:.3f}" if "mAP@.5" in m else "not measured (`ssdflow evaluate --model …/" + name + "`)"
        rows.append(f"| `{name}` | {e['quantize']} | {e['bytes'] / 1e6:.2f} MB | {e['input']} | {shown} |")
    return "\n".join(
        [
            _CARD_START,
            "## TFLite",
            "",
            "For phones and boards: TFLite's SSD post-processing op built in, metadata and label file packed "
            "(`ssdflow export --format tflite`).",
            "",
            "| file | quantization | size | input | val mAP@.5 |",
            "| --- | --- | ---: | --- | ---: |",
            *rows,
            "",
        ]
    )


class TFLiteDetector:
    """A .tflite detector run by TFLite's interpreter (XNNPACK on CPU), with the SavedModel's outputs:
    encoded images [B] → ``detection_boxes`` [B, D, 4], ``detection_scores``, ``detection_classes``
    (label ids from 1, float), ``num_detections`` [B]; one interpreter call per image (the input is [1, S, S, 3]).

    ``path`` (a local file) or ``content`` (the file's bytes, e.g. read from object storage). An
    interpreter is not thread-safe: one detector per thread (beam_jobs/model_handler.py keeps one per thread).
    """

    def __init__(self, path: str | None = None, num_threads: int | None = None, content: bytes | None = None):
        if (path is None) == (content is None):
            raise ValueError("TFLiteDetector: give path or content")
        with warnings.catch_warnings():  # TensorFlow's interpreter warns that LiteRT's package will replace it
            warnings.filterwarnings(
                "ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated", category=UserWarning
            )
            self.interpreter = (
                tf.lite.Interpreter(model_path=str(path), num_threads=num_threads)
                if content is None
                else tf.lite.Interpreter(model_content=content, num_threads=num_threads)
            )
        self.runner = self.interpreter.get_signature_runner()
        inp = self.interpreter.get_input_details()[0]
        self.size, self.dtype = int(inp["shape"][1]), inp["dtype"]
        _first_call_quietly(self)

    def detect_pixels(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """[S, S, 3] float 0..255 → one image's outputs (boxes [D, 4] clipped to the image, scores [D],
        classes [D] as label ids, count)."""
        x = pixels[None]
        x = np.clip(np.round(x), 0, 255).astype(np.uint8) if self.dtype == np.uint8 else x.astype(np.float32)
        out = self.runner(image=x)
        return {
            "num_detections": out["output_0"][0],
            "detection_scores": out["output_1"][0],
            # TFLite's op does not clip (its apps do); the SavedModel's boxes are clipped to the image.
            "detection_classes": out["output_2"][0] + 1.0,
            "detection_boxes": np.clip(out["output_3"][0], 0.0, 1.0),
        }

    def __call__(self, images) -> dict[str, tf.Tensor]:
        per_image = [self.detect_pixels(resize(data, self.size)) for data in np.asarray(images).ravel()]
        return {k: tf.constant(np.stack([o[k] for o in per_image])) for k in per_image[0]}


_announced = threading.Lock()
_quiet_done = False


def score_tflite(path: str, data_dir: str, split: str = "val") -> dict:
    """COCO metrics of a .tflite export, run by TFLite's interpreter on the records that
    :func:`model.validation.score_saved_model` scores the SavedModel on."""
    from model.validation import score_detector  # here: scoring workers load this module for TFLiteDetector alone

    return score_detector(TFLiteDetector(path), data_dir, split)


def _first_call_quietly(detector: TFLiteDetector) -> None:
    """Runs the process's first interpreter call on a blank image with TFLite's one-time "Created
    TensorFlow Lite XNNPACK delegate" line filtered out of the console (it allocates the tensors too)."""
    global _quiet_done
    from ssdflow.patches.quiet import TFLITE_NOISE, filtered_stderr

    with _announced:
        if _quiet_done:
            return
        with filtered_stderr(TFLITE_NOISE):
            detector.detect_pixels(np.zeros((detector.size, detector.size, 3), np.float32))
        _quiet_done = True

"""Scoring a detector on the val split: run it over ingest's records, then COCO metrics.

The same path scores the model being trained (each epoch, for early stopping), the exported
challenger (metrics.json) and the current champion (re-scored on today's val split before any
promotion), so every number that is compared was produced the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import tensorflow as tf

from model.dataset import eval_dataset, read_label_map, shard_files
from model.evaluate import ImageDetections, ImageGroundTruth, coco_metrics
from model.export import Detector, load_detector

if TYPE_CHECKING:
    from ssdflow.config import ModelConfig


def detections_and_groundtruth(detect: Callable[[tf.Tensor], dict], files: list[str], batch_size: int = 16):
    """Runs ``detect`` (encoded bytes [B] → TF OD API outputs) over the records in ``files``."""
    groundtruth, detections = [], []
    for batch in eval_dataset(files, batch_size):
        out = detect(batch["encoded"])
        out = {k: v.numpy() for k, v in out.items()}
        for i, key in enumerate(batch["key"].numpy()):
            image_id = key.decode()
            gt_boxes = batch["boxes"][i].numpy().reshape(-1, 4)
            groundtruth.append(
                ImageGroundTruth(
                    image_id=image_id,
                    height=int(batch["height"][i]),
                    width=int(batch["width"][i]),
                    boxes=gt_boxes,
                    classes=batch["classes"][i].numpy(),
                    difficult=batch["difficult"][i].numpy().astype(bool),
                )
            )
            n = int(out["num_detections"][i])
            detections.append(
                ImageDetections(
                    image_id=image_id,
                    boxes=out["detection_boxes"][i][:n],
                    scores=out["detection_scores"][i][:n],
                    classes=out["detection_classes"][i][:n].astype(np.int64),
                )
            )
    return groundtruth, detections


def score_detector(
    detect: Callable[[tf.Tensor], dict],
    data_dir: str,
    split: str = "val",
    label_map=None,
    target_precision: float | None = None,
) -> dict:
    """COCO metrics of ``detect`` on ``split`` of an ingest output (with per-class score thresholds
    calibrated on it, :mod:`model.thresholds`)."""
    label_map = label_map or read_label_map(data_dir)
    gt, dt = detections_and_groundtruth(detect, shard_files(data_dir, split))
    return coco_metrics(gt, dt, label_map, target_precision)


def score_saved_model(model_dir: str, data_dir: str, split: str = "val") -> dict:
    """COCO metrics of an exported SavedModel (what `ssdflow evaluate` and promotion use)."""
    serve, _loaded = load_detector(model_dir)  # _loaded keeps the SavedModel's variables alive
    return score_detector(lambda images: serve(images=images), data_dir, split)


def make_detect_fn(
    model,
    cfg: ModelConfig,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
    box_merge_iou: float | None = None,
):
    """Encoded bytes [B] → detections of a Keras model in training: the exported signature itself
    (model/export.py ``Detector.serve``: decoding, resizing, box decoding, NMS), over the live weights."""
    detector = Detector(model, cfg, score_threshold, iou_threshold, max_detections, box_merge_iou=box_merge_iou)
    # A tf.function bound method holds its object weakly: the closure keeps the detector alive.
    return lambda images: detector.serve(images)

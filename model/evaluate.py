"""COCO detection metrics (through pycocotools) for ground truth and detections in our box convention.

Boxes everywhere in ssdflow are normalized corners ``[ymin, xmin, ymax, xmax]``; COCO wants absolute
``[x, y, width, height]`` pixels, and its small/medium/large areas are in pixels of the original
image, so each image carries its own height and width. Both sides are built as in-memory COCO
objects (no JSON files), and AP/AR come from ``COCOeval`` unchanged: nothing here re-implements AP.

No TensorFlow in this module: it is imported by the registry and by tests.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from ssdflow import storage
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from model.thresholds import calibrate


@dataclass
class ImageGroundTruth:
    image_id: str
    height: int
    width: int
    boxes: np.ndarray  # [M, 4] normalized ymin, xmin, ymax, xmax
    classes: np.ndarray  # [M] int ids from 1
    difficult: np.ndarray | None = None  # [M] bool; None means none are difficult


@dataclass
class ImageDetections:
    image_id: str
    boxes: np.ndarray  # [K, 4] normalized ymin, xmin, ymax, xmax
    scores: np.ndarray  # [K]
    classes: np.ndarray  # [K] int ids from 1


def _boxes(a, n_expected: int | None, what: str) -> np.ndarray:
    b = np.asarray(a, dtype=np.float64)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{what}: boxes must have shape [N, 4], got {b.shape}")
    if n_expected is not None and b.shape[0] != n_expected:
        raise ValueError(f"{what}: {b.shape[0]} boxes but {n_expected} classes/scores")
    if not np.all(np.isfinite(b)):
        raise ValueError(f"{what}: boxes contain NaN or inf")
    return b


def _vector(a, dtype) -> np.ndarray:
    return np.asarray(a, dtype=dtype).reshape(-1)


def _to_xywh(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalized [ymin, xmin, ymax, xmax] → absolute [x, y, w, h]. Clipped to the image, as a
    detector's output would be; a degenerate box gets zero width/height rather than a negative one."""
    b = np.clip(boxes, 0.0, 1.0)
    x = b[:, 1] * width
    y = b[:, 0] * height
    w = np.maximum(b[:, 3] - b[:, 1], 0.0) * width
    h = np.maximum(b[:, 2] - b[:, 0], 0.0) * height
    return np.stack([x, y, w, h], axis=1)


def _none_if_missing(value: float) -> float | None:
    """pycocotools reports -1 where there is no ground truth (for the category/area): that's None."""
    v = float(value)
    if v < 0 or math.isnan(v):
        return None
    return v


def _mean_valid(p: np.ndarray) -> float | None:
    valid = p[p > -1]
    return float(np.mean(valid)) if valid.size else None


def coco_metrics(
    groundtruth: Iterable[ImageGroundTruth],
    detections: Iterable[ImageDetections],
    label_map: Mapping[str, int],
    target_precision: float | None = None,
) -> dict:
    """COCO bbox metrics (AP@[.5:.95], AP@.5, AP@.75, AP by area, AR@100, per-class AP), and per-class
    score thresholds calibrated on these images (``score_thresholds``, model/thresholds.py: max F1,
    or the most recall at ``target_precision``).

    Every image in ``groundtruth`` is evaluated, including images with no boxes (detections on them
    are false positives). Detections for an image not in ``groundtruth`` are a ValueError, as are
    class ids that are not in ``label_map``. COCOeval keeps at most 100 detections per image (by
    score), as in the COCO benchmark. Values are plain floats/ints/None, ready for ``json.dumps``.
    """
    names_by_id = _names_by_id(label_map)
    images, gt_anns, coco_id_of, size_of = _groundtruth_annotations(groundtruth, names_by_id)
    dt_anns = _detection_annotations(detections, names_by_id, coco_id_of, size_of)
    ev = _cocoeval(images, gt_anns, dt_anns, names_by_id)
    stats = ev.stats
    precision = ev.eval["precision"]  # [T iou thresholds, R recall points, K categories, A areas, M maxDets]
    per_class, pr_curves = {}, {}
    for k, cid in enumerate(ev.params.catIds):
        name = names_by_id[int(cid)]
        per_class[name] = {
            "AP": _mean_valid(precision[:, :, k, 0, -1]),  # area "all", maxDets 100
            "AP@.5": _mean_valid(precision[0, :, k, 0, -1]),  # iouThrs[0] == 0.5
        }
        # Precision at recall 0, 0.01, ..., 1 (COCO's interpolated curve), None where undefined.
        pr_curves[name] = [None if p < 0 else round(float(p), 4) for p in precision[0, :, k, 0, -1]]
    return {
        "mAP": _none_if_missing(stats[0]),
        "mAP@.5": _none_if_missing(stats[1]),
        "mAP@.75": _none_if_missing(stats[2]),
        "mAP_small": _none_if_missing(stats[3]),
        "mAP_medium": _none_if_missing(stats[4]),
        "mAP_large": _none_if_missing(stats[5]),
        "AR@100": _none_if_missing(stats[8]),
        "per_class": per_class,
        "pr_curves": pr_curves,
        "score_thresholds": calibrate(ev, names_by_id, target_precision),
        "num_images": len(images),
        "num_groundtruth": len(gt_anns),
        "num_detections": len(dt_anns),
    }


def _names_by_id(label_map: Mapping[str, int]) -> dict[int, str]:
    names_by_id: dict[int, str] = {}
    for name, cid in label_map.items():
        if isinstance(cid, bool) or not isinstance(cid, (int, np.integer)) or cid < 1:
            raise ValueError(f"label map ids must be integers >= 1: {name!r} → {cid!r}")
        if int(cid) in names_by_id:
            raise ValueError(f"label map has repeated id {cid}")
        names_by_id[int(cid)] = str(name)
    return names_by_id


def _groundtruth_annotations(groundtruth: Iterable[ImageGroundTruth], names_by_id: dict[int, str]):
    """COCO's images and ground-truth annotations; (images, annotations, COCO id of each image id,
    (height, width) of each image id)."""
    images, gt_anns = [], []
    coco_id_of: dict[str, int] = {}
    size_of: dict[str, tuple[int, int]] = {}
    for gt in groundtruth:
        if gt.image_id in coco_id_of:
            raise ValueError(f"image {gt.image_id!r} appears twice in the ground truth")
        if int(gt.height) <= 0 or int(gt.width) <= 0:
            raise ValueError(f"image {gt.image_id!r}: height and width must be positive")
        img_id = len(coco_id_of) + 1  # COCO image ids are ints; ours are strings
        coco_id_of[gt.image_id] = img_id
        size_of[gt.image_id] = (int(gt.height), int(gt.width))
        images.append({"id": img_id, "height": int(gt.height), "width": int(gt.width), "file_name": str(gt.image_id)})
        classes = _vector(gt.classes, np.int64)
        boxes = _boxes(gt.boxes, len(classes), f"ground truth {gt.image_id!r}")
        difficult = np.zeros(len(classes), dtype=bool) if gt.difficult is None else _vector(gt.difficult, bool)
        if len(difficult) != len(classes):
            raise ValueError(f"ground truth {gt.image_id!r}: {len(difficult)} difficult flags for {len(classes)} boxes")
        for box, cid, diff in zip(_to_xywh(boxes, *size_of[gt.image_id]), classes, difficult):
            if int(cid) not in names_by_id:
                raise ValueError(f"ground truth {gt.image_id!r}: class id {int(cid)} is not in the label map")
            gt_anns.append(
                {
                    "id": len(gt_anns) + 1,
                    "image_id": img_id,
                    "category_id": int(cid),
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    # "difficult" (PASCAL VOC) objects are ignored, not scored: COCO's mechanism for that is
                    # iscrowd=1. A crowd ground truth is never counted as a miss (it's excluded from the
                    # recall denominator), and a detection that matches it is marked ignored instead of
                    # being a false positive. (Crowd IoU is intersection / detection area, so a detection
                    # inside the difficult box matches it.)
                    "iscrowd": int(bool(diff)),
                }
            )
    return images, gt_anns, coco_id_of, size_of


def _detection_annotations(detections: Iterable[ImageDetections], names_by_id, coco_id_of, size_of) -> list[dict]:
    """COCO's result annotations for the detections of images in the ground truth."""
    dt_anns = []
    seen_dt: set[str] = set()
    for det in detections:
        if det.image_id not in coco_id_of:
            raise ValueError(f"detections for image {det.image_id!r}, which is not in the ground truth")
        if det.image_id in seen_dt:
            raise ValueError(f"detections for image {det.image_id!r} given twice")
        seen_dt.add(det.image_id)
        classes = _vector(det.classes, np.int64)
        scores = _vector(det.scores, np.float64)
        if len(scores) != len(classes):
            raise ValueError(f"detections {det.image_id!r}: {len(scores)} scores for {len(classes)} classes")
        boxes = _boxes(det.boxes, len(classes), f"detections {det.image_id!r}")
        for box, cid, score in zip(_to_xywh(boxes, *size_of[det.image_id]), classes, scores):
            if int(cid) not in names_by_id:
                raise ValueError(f"detections {det.image_id!r}: class id {int(cid)} is not in the label map")
            dt_anns.append(
                {
                    "id": len(dt_anns) + 1,
                    "image_id": coco_id_of[det.image_id],
                    "category_id": int(cid),
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "score": float(score),
                    "iscrowd": 0,
                }
            )
    return dt_anns


def _cocoeval(images: list[dict], gt_anns: list[dict], dt_anns: list[dict], names_by_id: dict[int, str]) -> COCOeval:
    """pycocotools' bbox evaluation, evaluated, accumulated and summarized (its printout kept off stdout)."""
    # Every label-map category is registered, so a class with no ground truth shows up (as None)
    # rather than silently disappearing from per_class.
    categories = [{"id": cid, "name": name} for cid, name in sorted(names_by_id.items())]
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_anns, "categories": categories}
        coco_gt.createIndex()
        # Built directly rather than with COCO.loadRes, which rejects an empty result list; this is
        # what loadRes builds for bbox results.
        coco_dt = COCO()
        coco_dt.dataset = {"images": list(images), "annotations": dt_anns, "categories": list(categories)}
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def write_metrics(path: str | os.PathLike, metrics: dict) -> None:
    """Writes metrics as JSON (indent 2, sorted keys), atomically."""
    storage.write_json_local(path, metrics)


def read_metrics(path: str | os.PathLike) -> dict:
    return storage.read_json_object(path)

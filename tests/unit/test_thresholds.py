"""Per-class score thresholds calibrated on val (model/thresholds.py), through the same COCO
evaluation as mAP: worked by hand on a small case."""

from __future__ import annotations

import numpy as np
import pytest

from model.evaluate import ImageDetections, ImageGroundTruth, coco_metrics

LM = {"cat": 1, "dog": 2}
A, B = [0.1, 0.1, 0.4, 0.4], [0.6, 0.6, 0.9, 0.9]  # two far-apart boxes (normalized ymin, xmin, ymax, xmax)


def _case():
    """cat: 4 objects; detections 0.9 hit, 0.8 hit, 0.7 miss, 0.6 hit, 0.5 miss, 0.2 miss (one object never found).
    dog: 2 objects; detections 0.9 miss, 0.35 hit, 0.3 hit."""
    gt, dt = [], []

    def image(name, gt_boxes, dets):
        gt.append(
            ImageGroundTruth(
                name, 100, 100, np.array([b for b, _ in gt_boxes]).reshape(-1, 4), np.array([c for _, c in gt_boxes])
            )
        )
        dt.append(
            ImageDetections(
                name,
                np.array([b for b, _, _ in dets]).reshape(-1, 4),
                np.array([s for _, _, s in dets]),
                np.array([c for _, c, _ in dets]),
            )
        )

    image("c1", [(A, 1)], [(A, 1, 0.9), (B, 1, 0.7)])
    image("c2", [(A, 1)], [(A, 1, 0.8), (B, 1, 0.5)])
    image("c3", [(A, 1)], [(A, 1, 0.6), (B, 1, 0.2)])
    image("c4", [(A, 1)], [])
    image("d1", [(A, 2)], [(A, 2, 0.35), (B, 2, 0.9)])
    image("d2", [(A, 2)], [(A, 2, 0.3)])
    return gt, dt


def test_each_class_gets_the_threshold_of_its_best_f1():
    t = coco_metrics(*_case(), LM)["score_thresholds"]
    assert t["target"] == "max_f1"
    assert t["per_class"]["cat"] == {"threshold": 0.6, "precision": 0.75, "recall": 0.75, "f1": 0.75, "val_objects": 4}
    assert t["per_class"]["dog"] == {"threshold": 0.3, "precision": 0.6667, "recall": 1.0, "f1": 0.8, "val_objects": 2}
    # The best single threshold (mean F1 over classes) is 0.3: cat then keeps its 0.5 miss too.
    assert t["global"] == {"threshold": 0.3, "per_class_f1": {"cat": 0.6667, "dog": 0.8}}
    for name, point in t["per_class"].items():
        assert point["f1"] >= t["global"]["per_class_f1"][name]


def test_a_target_precision_takes_the_most_recall_that_reaches_it():
    t = coco_metrics(*_case(), LM, target_precision=0.7)["score_thresholds"]
    assert t["target"] == "precision>=0.7"
    assert (t["per_class"]["cat"]["threshold"], t["per_class"]["cat"]["recall"]) == (0.6, 0.75)
    assert (
        t["per_class"]["dog"]["threshold"] == 0.9 and t["per_class"]["dog"]["precision"] == 0.0
    )  # unreachable: strictest, reported


def test_a_class_without_val_objects_or_detections_gets_none():
    gt, dt = _case()
    t = coco_metrics(gt, dt, {**LM, "emu": 3})["score_thresholds"]
    assert t["per_class"]["emu"]["threshold"] is None and t["per_class"]["emu"]["val_objects"] == 0
    t = coco_metrics(
        gt, [ImageDetections(d.image_id, np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)) for d in dt], LM
    )["score_thresholds"]
    assert t["per_class"]["cat"]["threshold"] is None and t["global"]["threshold"] is None


def test_a_threshold_is_rounded_down_so_its_detection_stays_kept():
    gt, dt = _case()
    dt[0] = ImageDetections("c1", np.array([A]), np.array([0.91237]), np.array([1]))
    dt[1] = ImageDetections("c2", np.array([A]), np.array([0.81237]), np.array([1]))
    dt[2] = ImageDetections("c3", np.array([A]), np.array([0.61237]), np.array([1]))
    assert coco_metrics(gt, dt, LM)["score_thresholds"]["per_class"]["cat"]["threshold"] == pytest.approx(0.6123)

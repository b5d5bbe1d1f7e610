"""model.evaluate: COCO metrics through pycocotools for our normalized-corner boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.evaluate import ImageDetections, ImageGroundTruth, coco_metrics, read_metrics, write_metrics

LABELS = {"cat": 1, "dog": 2}
# 100x200 image (h x w): 40x80 px boxes, area 3200 → "medium"
CAT_BOX = [0.2, 0.2, 0.6, 0.6]
DOG_BOX = [0.5, 0.1, 0.9, 0.5]


def gt(image_id, boxes, classes, difficult=None, h=100, w=200):
    return ImageGroundTruth(
        image_id,
        h,
        w,
        np.array(boxes, dtype=float).reshape(-1, 4),
        np.array(classes),
        None if difficult is None else np.array(difficult, dtype=bool),
    )


def det(image_id, boxes, scores, classes):
    return ImageDetections(
        image_id, np.array(boxes, dtype=float).reshape(-1, 4), np.array(scores, dtype=float), np.array(classes)
    )


def test_perfect_detections_score_one():
    gts = [gt("a", [CAT_BOX, DOG_BOX], [1, 2]), gt("b", [DOG_BOX], [2])]
    dets = [det("a", [CAT_BOX, DOG_BOX], [0.9, 0.8], [1, 2]), det("b", [DOG_BOX], [0.7], [2])]
    m = coco_metrics(gts, dets, LABELS)
    assert m["mAP"] == pytest.approx(1.0)
    assert m["mAP@.5"] == pytest.approx(1.0)
    assert m["mAP@.75"] == pytest.approx(1.0)
    assert m["AR@100"] == pytest.approx(1.0)
    assert m["mAP_medium"] == pytest.approx(1.0)
    assert m["mAP_small"] is None and m["mAP_large"] is None  # no ground truth of those sizes
    assert (m["num_images"], m["num_groundtruth"], m["num_detections"]) == (2, 3, 3)


def test_no_detections_score_zero():
    m = coco_metrics([gt("a", [CAT_BOX], [1])], [], LABELS)
    assert m["mAP"] == 0.0 and m["mAP@.5"] == 0.0 and m["AR@100"] == 0.0
    assert m["num_detections"] == 0
    # an image with an empty detection array is the same thing
    m2 = coco_metrics([gt("a", [CAT_BOX], [1])], [det("a", [], [], [])], LABELS)
    assert m2["mAP"] == 0.0


def test_shifted_box_passes_iou_half_but_not_strict_thresholds():
    # Shifted right by 0.08 of width: overlap 64 of 80 px → IoU = 64/96 = 0.667, so it matches at
    # IoU thresholds .50, .55, .60, .65 (4 of 10) and misses the rest.
    shifted = [0.2, 0.28, 0.6, 0.68]
    m = coco_metrics([gt("a", [CAT_BOX], [1])], [det("a", [shifted], [0.9], [1])], LABELS)
    assert m["mAP@.5"] == pytest.approx(1.0)
    assert m["mAP@.75"] == pytest.approx(0.0)
    assert m["mAP"] == pytest.approx(0.4)
    assert m["per_class"]["cat"] == {"AP": pytest.approx(0.4), "AP@.5": pytest.approx(1.0)}


def test_uses_each_images_size_for_pixels():
    # The same normalized shift is IoU 0.667 in any image, but area buckets depend on pixel size:
    # in a 1000x1000 image the box is 400x400 px → "large".
    m = coco_metrics([gt("a", [CAT_BOX], [1], h=1000, w=1000)], [det("a", [CAT_BOX], [0.9], [1])], LABELS)
    assert m["mAP_large"] == pytest.approx(1.0) and m["mAP_medium"] is None


def test_per_class_ap_one_perfect_one_missed():
    gts = [gt("a", [CAT_BOX, DOG_BOX], [1, 2])]
    dets = [det("a", [CAT_BOX], [0.9], [1])]
    m = coco_metrics(gts, dets, LABELS)
    assert m["per_class"]["cat"] == {"AP": pytest.approx(1.0), "AP@.5": pytest.approx(1.0)}
    assert m["per_class"]["dog"] == {"AP": 0.0, "AP@.5": 0.0}
    assert m["mAP"] == pytest.approx(0.5)


def test_wrong_class_is_not_a_match():
    m = coco_metrics([gt("a", [CAT_BOX], [1])], [det("a", [CAT_BOX], [0.9], [2])], LABELS)
    assert m["per_class"]["cat"]["AP"] == 0.0


def test_difficult_ground_truth_is_ignored():
    gts_plain = [gt("a", [CAT_BOX, DOG_BOX], [1, 1])]
    gts_difficult = [gt("a", [CAT_BOX, DOG_BOX], [1, 1], difficult=[False, True])]
    found_one = [det("a", [CAT_BOX], [0.9], [1])]
    # missing a difficult object isn't a miss...
    assert coco_metrics(gts_plain, found_one, LABELS)["mAP@.5"] < 0.9
    assert coco_metrics(gts_difficult, found_one, LABELS)["mAP@.5"] == pytest.approx(1.0)
    # ...and detecting it (even with the highest score) isn't a false positive
    found_both = [det("a", [DOG_BOX, CAT_BOX], [0.95, 0.9], [1, 1])]
    m = coco_metrics(gts_difficult, found_both, LABELS)
    assert m["mAP"] == pytest.approx(1.0)
    assert m["num_groundtruth"] == 2


def test_false_positive_on_background_image_lowers_ap():
    gts = [gt("a", [CAT_BOX], [1]), gt("empty", [], [])]
    dets = [det("a", [CAT_BOX], [0.5], [1]), det("empty", [CAT_BOX], [0.9], [1])]
    m = coco_metrics(gts, dets, LABELS)
    assert m["num_images"] == 2
    assert 0.0 < m["mAP@.5"] < 1.0


def test_class_without_ground_truth_is_none():
    m = coco_metrics([gt("a", [CAT_BOX], [1])], [det("a", [CAT_BOX], [0.9], [1])], {"cat": 1, "dog": 2, "emu": 3})
    assert set(m["per_class"]) == {"cat", "dog", "emu"}
    assert m["per_class"]["dog"] == {"AP": None, "AP@.5": None}
    assert m["per_class"]["emu"] == {"AP": None, "AP@.5": None}
    assert m["mAP"] == pytest.approx(1.0)  # absent classes don't drag the mean down


def test_detections_for_unknown_image_raise():
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_metrics([gt("a", [CAT_BOX], [1])], [det("zzz", [CAT_BOX], [0.9], [1])], LABELS)


def test_unknown_class_ids_raise():
    with pytest.raises(ValueError, match="not in the label map"):
        coco_metrics([gt("a", [CAT_BOX], [7])], [], LABELS)
    with pytest.raises(ValueError, match="not in the label map"):
        coco_metrics([gt("a", [CAT_BOX], [1])], [det("a", [CAT_BOX], [0.9], [0])], LABELS)


def test_results_are_json_serializable_and_quiet(tmp_path, capsys):
    m = coco_metrics([gt("a", [CAT_BOX], [1])], [det("a", [CAT_BOX], [0.9], [1])], LABELS)
    assert capsys.readouterr().out == ""  # pycocotools' prints are swallowed
    assert json.loads(json.dumps(m, allow_nan=False)) == m
    assert all(type(v) in (float, type(None)) for k, v in m.items() if k.startswith(("mAP", "AR")))
    path = tmp_path / "sub" / "metrics.json"
    write_metrics(path, m)
    assert read_metrics(path) == m
    text = path.read_text()
    assert text.startswith('{\n  "AR@100"')  # indent 2, sorted keys
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp files left behind


def test_pr_curves_per_class_at_iou_half():
    """A false positive scored above the only true cat: precision 0.5 at every recall for cat; the dog is found first."""
    far = [0.0, 0.8, 0.1, 0.95]
    gts = [gt("a", [CAT_BOX, DOG_BOX], [1, 2])]
    dets = [det("a", [far, CAT_BOX, DOG_BOX], [0.9, 0.8, 0.7], [1, 1, 2])]
    curves = coco_metrics(gts, dets, LABELS)["pr_curves"]
    assert set(curves) == {"cat", "dog"} and all(len(c) == 101 for c in curves.values())
    assert curves["cat"] == [0.5] * 101 and curves["dog"] == [1.0] * 101
    only_cat = coco_metrics([gt("a", [CAT_BOX], [1])], [det("a", [CAT_BOX], [0.9], [1])], LABELS)["pr_curves"]
    assert only_cat["dog"] == [None] * 101  # no dog in the val split: undefined, not 0

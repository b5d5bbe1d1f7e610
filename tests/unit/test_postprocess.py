"""Post-processing: NMS, and box merging (each kept box the IoU x score weighted mean of its class's overlapping boxes)."""

import numpy as np
import pytest
import tensorflow as tf

from model.postprocess import merge_boxes, postprocess

VARIANCES = [0.1, 0.1, 0.2, 0.2]


def _predictions(boxes, probabilities):
    """Raw predictions whose decoded boxes are ``boxes`` (zero offsets against anchors = the boxes)
    and whose softmax is ``probabilities`` [N, C + 1] (background first)."""
    n = len(boxes)
    logits = np.log(np.asarray(probabilities, np.float32))
    return np.concatenate([np.zeros((n, 4), np.float32), logits], axis=1)[None], np.asarray(boxes, np.float32)


def _iou(a, b):
    h = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    w = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = h * w
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_merge_weighs_same_class_overlapping_boxes_by_iou_times_score():
    kept = np.array([[0.2, 0.2, 0.6, 0.6]], np.float32)
    candidates = np.array(
        [
            [0.2, 0.2, 0.6, 0.6],  # the kept box itself
            [0.22, 0.24, 0.62, 0.64],  # same class, IoU ~0.75: merged in
            [0.25, 0.25, 0.65, 0.65],  # overlapping, but its score for this class is under the threshold: not merged
            [0.45, 0.45, 0.85, 0.85],  # same class, IoU ~0.14: not merged
        ],
        np.float32,
    )
    scores = np.array([[0.9, 0.0], [0.6, 0.1], [0.005, 0.95], [0.8, 0.0]], np.float32)
    merged = merge_boxes(kept[None], np.array([[0]], np.float32), candidates[None], scores[None], 0.5, 0.01).numpy()[
        0, 0
    ]

    w0, w1 = 0.9, _iou(kept[0], candidates[1]) * 0.6
    expected = (w0 * candidates[0] + w1 * candidates[1]) / (w0 + w1)
    np.testing.assert_allclose(merged, expected, rtol=1e-5)


def test_merged_box_sits_tighter_than_the_one_nms_kept():
    """Anchors scattered around an object: NMS keeps the best-scored, off-centre box; its merge with
    the neighbours it suppressed is closer to the object."""
    rng = np.random.default_rng(0)
    truth = np.array([0.3, 0.3, 0.7, 0.7], np.float32)
    boxes = truth + rng.normal(0, 0.015, (40, 4)).astype(np.float32)
    boxes[0] = truth + np.array([0.04, -0.04, 0.04, -0.04], np.float32)  # the highest score, off centre
    object_p = np.concatenate([[0.95], rng.uniform(0.5, 0.9, 39)]).astype(np.float32)
    predictions, anchors = _predictions(boxes, np.stack([1 - object_p, object_p], axis=1))

    plain = postprocess(predictions, anchors, VARIANCES, 0.05, 0.5, 10)
    merged = postprocess(predictions, anchors, VARIANCES, 0.05, 0.5, 10, box_merge_iou=0.5)

    np.testing.assert_allclose(plain["detection_boxes"][0, 0], np.clip(boxes[0], 0, 1), atol=1e-5)
    assert (
        _iou(merged["detection_boxes"][0, 0].numpy(), truth)
        > _iou(plain["detection_boxes"][0, 0].numpy(), truth) + 0.05
    )
    # Merging moves boxes only: which detections there are, and their scores and classes, stay.
    for key in ("detection_scores", "detection_classes", "num_detections"):
        np.testing.assert_array_equal(plain[key].numpy(), merged[key].numpy())


def test_merge_leaves_padding_rows_zero_and_separate_objects_apart():
    boxes = [[0.1, 0.1, 0.3, 0.3], [0.11, 0.1, 0.31, 0.3], [0.6, 0.6, 0.9, 0.9]]
    probabilities = [[0.1, 0.9], [0.3, 0.7], [0.2, 0.8]]
    predictions, anchors = _predictions(boxes, probabilities)
    out = postprocess(predictions, anchors, VARIANCES, 0.05, 0.5, 5, box_merge_iou=0.5)

    assert int(out["num_detections"][0]) == 2
    np.testing.assert_array_equal(out["detection_boxes"][0, 2:].numpy(), 0.0)
    # The far box has no neighbour: unchanged. The first is pulled toward its suppressed neighbour only.
    np.testing.assert_allclose(out["detection_boxes"][0, 1], boxes[2], atol=1e-6)
    first = out["detection_boxes"][0, 0].numpy()
    assert boxes[0][0] < first[0] < boxes[1][0] and first[2] < boxes[1][2]


@pytest.mark.parametrize("batch", [1, 3])
def test_merge_runs_in_a_traced_graph_with_a_batch(batch):
    predictions, anchors = _predictions([[0.1, 0.1, 0.3, 0.3], [0.12, 0.1, 0.32, 0.3]], [[0.1, 0.9], [0.3, 0.7]])
    fn = tf.function(lambda p: postprocess(p, anchors, VARIANCES, 0.05, 0.5, 4, box_merge_iou=0.6))
    out = fn(np.repeat(predictions, batch, axis=0))
    assert out["detection_boxes"].shape == (batch, 4, 4)
    np.testing.assert_array_equal(out["num_detections"].numpy(), [1.0] * batch)

"""model.matcher: IoU, argmax matching with forced matches and ignore band, per-image targets."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from model.anchors import generate_anchors
from model.box_coder import decode
from model.matcher import IGNORE, NEGATIVE, encode_targets, iou, match
from ssdflow.config import ModelConfig

VARIANCES = [0.1, 0.1, 0.2, 0.2]


def test_iou_known_values():
    a = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]], np.float32)
    b = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.25, 0.5, 0.75], [0.0, 0.0, 0.0, 0.0]], np.float32)
    got = iou(a, b).numpy()
    assert got.shape == (2, 4)
    # identical, disjoint (touching corner), half overlap: 0.125 / (0.25 + 0.25 - 0.125) = 1/3; zero union → 0
    np.testing.assert_allclose(got[0], [1.0, 0.0, 1.0 / 3.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(got[1], [0.0, 0.0, 0.0, 0.0])


def test_match_without_boxes_eager_and_in_tf_function():
    anchors = generate_anchors(ModelConfig(image_size=96))
    empty = tf.zeros([0, 4], tf.float32)
    np.testing.assert_array_equal(match(empty, anchors).numpy(), NEGATIVE)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int64)])
    def targets(boxes, classes):
        return match(boxes, anchors), encode_targets(boxes, classes, anchors, VARIANCES)

    matched, y_true = targets(empty, tf.zeros([0], tf.int64))
    np.testing.assert_array_equal(matched.numpy(), NEGATIVE)
    np.testing.assert_array_equal(y_true.numpy(), np.zeros([anchors.shape[0], 5], np.float32))
    matched, _ = targets(tf.constant([[0.2, 0.2, 0.6, 0.6]]), tf.constant([1], tf.int64))
    assert (matched.numpy() == 0).sum() >= 1


def test_match_in_tf_data_map():
    anchors = generate_anchors(ModelConfig(image_size=96))
    boxes = tf.ragged.constant([[], [[0.1, 0.1, 0.5, 0.5]]], ragged_rank=1, inner_shape=(4,), dtype=tf.float32)
    ds = tf.data.Dataset.from_tensor_slices(boxes).map(lambda b: match(b, anchors))
    counts = [int((m >= 0).sum()) for m in ds.as_numpy_iterator()]
    assert counts[0] == 0 and counts[1] >= 1


def test_tiny_box_gets_exactly_its_best_anchor():
    anchors = generate_anchors(ModelConfig(image_size=96))
    tiny = tf.constant([[0.30, 0.30, 0.31, 0.31]])
    matched = match(tiny, anchors).numpy()
    best = int(np.argmax(iou(tiny, anchors).numpy()[0]))
    assert np.flatnonzero(matched >= 0).tolist() == [best]
    assert matched[best] == 0
    assert set(np.unique(matched)) == {NEGATIVE, 0}


def test_forced_matches_and_ignore_band():
    # Full-height boxes, so IoU is the IoU of the x intervals.
    def spans(*xs):
        return tf.constant([[0.0, x0, 1.0, x1] for x0, x1 in xs])

    boxes = spans((0.0, 0.3), (0.25, 0.55))  # two overlapping boxes
    anchors = spans(
        (0.0, 0.3),  # IoU 1.0 with box 0 → positive
        (0.0, 0.7),  # IoU 0.43 with both → ignore band
        (0.36, 0.66),  # IoU 0.46 with box 1, its best → forced positive (would be ignore)
        (0.8, 1.0),  # disjoint → negative
        (0.2, 0.3),  # IoU 0.33 with box 0 → negative
    )
    overlaps = iou(boxes, anchors).numpy()
    assert 0.4 <= overlaps[:, 1].max() < overlaps[1, 2] < 0.5  # the setup is what the comments claim
    np.testing.assert_array_equal(match(boxes, anchors).numpy(), [0, IGNORE, 1, NEGATIVE, NEGATIVE])
    np.testing.assert_array_equal(match(boxes[1:], anchors).numpy(), [NEGATIVE, IGNORE, 0, NEGATIVE, NEGATIVE])
    # Raising neg_iou turns the band into background; a lower pos_iou makes anchor 1 a regular positive.
    np.testing.assert_array_equal(match(boxes, anchors, neg_iou=0.45).numpy(), [0, NEGATIVE, 1, NEGATIVE, NEGATIVE])
    assert match(boxes, anchors, pos_iou=0.42).numpy()[1] >= 0


def test_shared_best_anchor_goes_to_earliest_box_and_zero_boxes_force_nothing():
    anchors = tf.constant([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.01, 0.01]])
    boxes = tf.constant([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    # Both real boxes' best anchor is anchor 0 (IoU 0.25 each): box 0 wins. The zero box forces nothing.
    np.testing.assert_array_equal(match(boxes, anchors).numpy(), [0, NEGATIVE])


def test_encode_targets_columns():
    anchors = generate_anchors(ModelConfig(image_size=96))
    boxes = tf.constant([[0.1, 0.1, 0.5, 0.45], [0.55, 0.5, 0.95, 0.9]])
    classes = tf.constant([2, 1], tf.int32)
    y_true = encode_targets(boxes, classes, anchors, VARIANCES, pos_iou=0.5, neg_iou=0.4).numpy()
    matched = match(boxes, anchors).numpy()
    assert y_true.shape == (anchors.shape[0], 5) and y_true.dtype == np.float32

    positive = matched >= 0
    assert (matched == 0).any() and (matched == 1).any() and (matched == IGNORE).any()
    np.testing.assert_array_equal(
        y_true[:, 4], np.select([matched == 0, matched == 1, matched == IGNORE], [2.0, 1.0, -1.0], 0.0)
    )
    np.testing.assert_array_equal(y_true[~positive, :4], 0.0)
    decoded = decode(y_true[positive, :4], tf.boolean_mask(anchors, positive), VARIANCES).numpy()
    np.testing.assert_allclose(decoded, boxes.numpy()[matched[positive]], atol=1e-5)


def _atss_reference(gt, anchors, counts, k):
    """The ATSS rule in numpy, written from the paper: per box and level the k nearest anchors,
    threshold mean + std of their IoUs, centre inside; the highest IoU wins; best anchor forced."""
    ious = iou(gt, anchors).numpy()
    gc, ac = (gt[:, :2] + gt[:, 2:]) / 2, (anchors[:, :2] + anchors[:, 2:]) / 2
    claim = np.full(ious.shape, -1.0)
    for g in range(len(gt)):
        d = ((ac - gc[g]) ** 2).sum(-1)
        cand = np.concatenate(
            [
                s + np.argsort(d[s : s + c], kind="stable")[: min(k, c)]
                for s, c in zip(np.cumsum([0] + counts[:-1]), counts)
            ]
        )
        thr = ious[g, cand].mean() + ious[g, cand].std()
        inside = np.all((ac[cand] > gt[g, :2]) & (ac[cand] < gt[g, 2:]), axis=-1)
        ok = cand[(ious[g, cand] >= thr) & inside & (ious[g, cand] > 0)]
        claim[g, ok] = ious[g, ok]
    matched = np.where(claim.max(0) > 0, claim.argmax(0), NEGATIVE)
    for g in reversed(range(len(gt))):  # the earliest box wins a shared best anchor
        if ious[g].max() > 0:
            matched[ious[g].argmax()] = g
    return matched


def test_atss_matches_the_papers_rule_and_gives_every_box_positives_of_its_own_scale():
    from model.anchors import anchor_levels
    from model.matcher import ATSS_TOP_K, atss_match

    cfg = ModelConfig(image_size=128, finest_stride=8, min_scale=0.1)
    anchors = generate_anchors(cfg).numpy()
    levels = anchor_levels(cfg)
    counts = list(levels.counts)
    assert sum(counts) == len(anchors) and levels.per_cell == 6
    gt = np.array(
        [
            [0.13, 0.13, 0.19, 0.19],  # small: every anchor's IoU is under 0.5
            [0.3, 0.2, 0.9, 0.7],  # large
            [0.5, 0.55, 0.62, 0.95],
        ],  # wide
        np.float32,
    )
    got = atss_match(gt, anchors, levels).numpy()
    # The 9 nearest cells per level, 6 anchors each (these box centres have no two cells equally near).
    np.testing.assert_array_equal(got, _atss_reference(gt, anchors, counts, ATSS_TOP_K * 6))
    assert IGNORE not in got
    argmax = match(gt, anchors).numpy()
    assert (got == 0).sum() > (argmax == 0).sum() == 1  # the small box: only its forced anchor by argmax
    for g in range(3):
        assert (got == g).sum() >= 1
        centres = (anchors[got == g, :2] + anchors[got == g, 2:]) / 2
        assert np.mean(np.all((centres > gt[g, :2]) & (centres < gt[g, 2:]), axis=-1)) > 0.5
    np.testing.assert_array_equal(atss_match(tf.zeros([0, 4]), anchors, levels).numpy(), NEGATIVE)
    # In a tf.data map, through encode_targets, as training runs it.
    ds = tf.data.Dataset.from_tensors((gt, tf.constant([1, 2, 3]))).map(
        lambda b, c: encode_targets(b, c, anchors, VARIANCES, atss_levels=levels)
    )
    y_true = next(iter(ds)).numpy()
    np.testing.assert_array_equal(y_true[:, 4], np.where(got >= 0, got + 1, 0))

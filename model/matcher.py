"""Anchor matching: which ground-truth box (if any) each anchor must predict, and the per-image targets.

Boxes are normalized corners [ymin, xmin, ymax, xmax], float32. Everything is tf ops, shape-safe for an
image with no boxes, so it runs inside tf.data maps as well as eagerly.
"""

from __future__ import annotations

import tensorflow as tf

from model.box_coder import encode

NEGATIVE = -1  # matched index of a background anchor
IGNORE = -2  # matched index of an anchor that is neither positive nor negative


def iou(boxes_a: tf.Tensor, boxes_b: tf.Tensor) -> tf.Tensor:
    """Pairwise intersection over union: boxes_a [M, 4], boxes_b [N, 4] corners → [M, N]; 0 where the union is 0."""
    a = tf.convert_to_tensor(boxes_a, tf.float32)[:, tf.newaxis, :]  # [M, 1, 4]
    b = tf.convert_to_tensor(boxes_b, tf.float32)[tf.newaxis, :, :]  # [1, N, 4]
    inter_h = tf.maximum(0.0, tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]))
    inter_w = tf.maximum(0.0, tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]))
    intersection = inter_h * inter_w
    area_a = tf.maximum(0.0, a[..., 2] - a[..., 0]) * tf.maximum(0.0, a[..., 3] - a[..., 1])
    area_b = tf.maximum(0.0, b[..., 2] - b[..., 0]) * tf.maximum(0.0, b[..., 3] - b[..., 1])
    return tf.math.divide_no_nan(intersection, area_a + area_b - intersection)


def match(gt_boxes: tf.Tensor, anchors: tf.Tensor, pos_iou: float = 0.5, neg_iou: float = 0.4) -> tf.Tensor:
    """Argmax matching with forced matches: [N] int32, per anchor the index of its ground truth.

    gt_boxes [M, 4], anchors [N, 4] corners. An anchor whose best IoU is >= pos_iou gets that box's
    index; below neg_iou it is NEGATIVE (-1); in between IGNORE (-2). Then each ground truth's best
    anchor is forced to it whatever the IoU (TF OD API force_match_for_each_row), so small boxes
    still get trained. If several boxes share a best anchor, the earliest box wins that anchor (as in
    the TF OD API) and the others get no forced anchor. Boxes overlapping no anchor at all (zero area,
    e.g. zero padding) force nothing, so they never match. M == 0 gives all NEGATIVE.
    """
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    n = tf.shape(anchors)[0]

    def _no_boxes():
        return tf.fill([n], tf.constant(NEGATIVE, tf.int32))

    def _match():
        overlaps = iou(gt_boxes, anchors)  # [M, N]
        m = tf.shape(overlaps)[0]
        best_iou = tf.reduce_max(overlaps, axis=0)
        best_gt = tf.argmax(overlaps, axis=0, output_type=tf.int32)
        below = tf.where(best_iou >= neg_iou, tf.constant(IGNORE, tf.int32), tf.constant(NEGATIVE, tf.int32))
        matched = tf.where(best_iou >= pos_iou, best_gt, below)

        best_anchor = tf.argmax(overlaps, axis=1, output_type=tf.int32)  # [M]
        # Boxes with no overlap get id m, which never beats a real id and reads as "no force" below.
        gt_ids = tf.where(tf.reduce_max(overlaps, axis=1) > 0.0, tf.range(m), m)
        # Per anchor, the smallest box id forcing it; anchors nobody forces get the int32 maximum.
        forced = tf.math.unsorted_segment_min(gt_ids, best_anchor, num_segments=n)
        return tf.where(forced < m, forced, matched)

    return tf.cond(tf.shape(gt_boxes)[0] > 0, _match, _no_boxes)


def encode_targets(
    gt_boxes: tf.Tensor,
    gt_classes: tf.Tensor,
    anchors: tf.Tensor,
    variances,
    pos_iou: float = 0.5,
    neg_iou: float = 0.4,
) -> tf.Tensor:
    """One image's training targets y_true: [N, 5] float32.

    gt_boxes [M, 4] corners, gt_classes [M] ints in 1..C, anchors [N, 4] corners.
    Columns 0-3: encode() of the matched box (zeros unless positive); column 4: the class id of the
    matched box, 0 for background, -1 for ignore.
    """
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_classes = tf.cast(gt_classes, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    matched = match(gt_boxes, anchors, pos_iou, neg_iou)
    positive = matched >= 0

    # A dummy last row lets non-positive anchors gather something even when M == 0.
    m = tf.shape(gt_boxes)[0]
    index = tf.where(positive, matched, m)
    boxes = tf.gather(tf.concat([gt_boxes, tf.zeros([1, 4], tf.float32)], axis=0), index)
    classes = tf.gather(tf.concat([gt_classes, tf.zeros([1], tf.float32)], axis=0), index)

    box_targets = tf.where(positive[:, tf.newaxis], encode(boxes, anchors, variances), 0.0)
    class_targets = tf.where(positive, classes, tf.where(matched == IGNORE, -1.0, 0.0))
    return tf.concat([box_targets, class_targets[:, tf.newaxis]], axis=-1)

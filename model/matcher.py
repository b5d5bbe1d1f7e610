"""Anchor matching: which ground-truth box (if any) each anchor must predict, and the per-image targets.

Boxes are normalized corners [ymin, xmin, ymax, xmax], float32. Everything is tf ops, shape-safe for an
image with no boxes, so it runs inside tf.data maps as well as eagerly.
"""

from __future__ import annotations

import tensorflow as tf

from model.box_coder import corners_to_center, encode

NEGATIVE = -1  # matched index of a background anchor
IGNORE = -2  # matched index of an anchor that is neither positive nor negative


def iou(boxes_a: tf.Tensor, boxes_b: tf.Tensor) -> tf.Tensor:
    """Pairwise intersection over union: boxes_a [..., M, 4], boxes_b [..., N, 4] corners (leading
    dimensions broadcast, e.g. a batch) → [..., M, N]; 0 where the union is 0."""
    a = tf.convert_to_tensor(boxes_a, tf.float32)[..., :, tf.newaxis, :]  # [..., M, 1, 4]
    b = tf.convert_to_tensor(boxes_b, tf.float32)[..., tf.newaxis, :, :]  # [..., 1, N, 4]
    inter_h = tf.maximum(0.0, tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]))
    inter_w = tf.maximum(0.0, tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]))
    intersection = inter_h * inter_w
    area_a = tf.maximum(0.0, a[..., 2] - a[..., 0]) * tf.maximum(0.0, a[..., 3] - a[..., 1])
    area_b = tf.maximum(0.0, b[..., 2] - b[..., 0]) * tf.maximum(0.0, b[..., 3] - b[..., 1])
    return tf.math.divide_no_nan(intersection, area_a + area_b - intersection)


def _with_forced_matches(gt_boxes: tf.Tensor, anchors: tf.Tensor, assign) -> tf.Tensor:
    """[N] int32 per anchor its ground truth's index, NEGATIVE or IGNORE: ``assign(overlaps [M, N])``
    decides, then each ground truth's best anchor is forced to it whatever the IoU (TF OD API
    force_match_for_each_row), so small boxes still get trained. If several boxes share a best
    anchor, the earliest box wins that anchor (as in the TF OD API) and the others get no forced
    anchor. Boxes overlapping no anchor at all (zero area, e.g. zero padding) force nothing, so they
    never match. M == 0 gives all NEGATIVE, shape-safe inside tf.data maps.
    """
    n = tf.shape(anchors)[0]

    def _no_boxes():
        return tf.fill([n], tf.constant(NEGATIVE, tf.int32))

    def _match():
        overlaps = iou(gt_boxes, anchors)  # [M, N]
        m = tf.shape(overlaps)[0]
        matched = assign(overlaps)
        best_anchor = tf.argmax(overlaps, axis=1, output_type=tf.int32)  # [M]
        # Boxes with no overlap get id m, which never beats a real id and reads as "no force" below.
        gt_ids = tf.where(tf.reduce_max(overlaps, axis=1) > 0.0, tf.range(m), m)
        # Per anchor, the smallest box id forcing it; anchors nobody forces get the int32 maximum.
        forced = tf.math.unsorted_segment_min(gt_ids, best_anchor, num_segments=n)
        return tf.where(forced < m, forced, matched)

    return tf.cond(tf.shape(gt_boxes)[0] > 0, _match, _no_boxes)


def match(gt_boxes: tf.Tensor, anchors: tf.Tensor, pos_iou: float = 0.5, neg_iou: float = 0.4) -> tf.Tensor:
    """Argmax matching with forced matches: [N] int32, per anchor the index of its ground truth.

    gt_boxes [M, 4], anchors [N, 4] corners. An anchor whose best IoU is >= pos_iou gets that box's
    index; below neg_iou it is NEGATIVE (-1); in between IGNORE (-2). Then each ground truth's best
    anchor is forced to it (``_with_forced_matches``: the earliest box wins a shared one).
    """

    def assign(overlaps):
        best_iou = tf.reduce_max(overlaps, axis=0)
        best_gt = tf.argmax(overlaps, axis=0, output_type=tf.int32)
        below = tf.where(best_iou >= neg_iou, tf.constant(IGNORE, tf.int32), tf.constant(NEGATIVE, tf.int32))
        return tf.where(best_iou >= pos_iou, best_gt, below)

    return _with_forced_matches(
        tf.convert_to_tensor(gt_boxes, tf.float32), tf.convert_to_tensor(anchors, tf.float32), assign
    )


ATSS_TOP_K = 9  # candidate cells per level and ground truth (the ATSS paper's k, robust from 7 to 17 there)


def atss_match(gt_boxes: tf.Tensor, anchors: tf.Tensor, levels, top_k: int = ATSS_TOP_K) -> tf.Tensor:
    """Adaptive training sample selection (Zhang et al. 2020): [N] int32 per anchor its ground truth's
    index, or NEGATIVE; no anchor is ignored.

    gt_boxes [M, 4], anchors [N, 4] corners, level by level as anchors.generate_anchors orders them
    (``levels``: anchors.AnchorLevels, the anchors per level and per cell). Per ground truth: on each
    level the anchors of the ``top_k`` cells nearest its centre are candidates (top_k x anchors per
    cell, as the ATSS authors' code takes them); their IoUs' mean + standard
    deviation is its own positive threshold; a candidate reaching it with its centre inside the box
    is positive. A small box's threshold is thus low and a large one's high, where argmax matching
    applies one 0.5 to all. An anchor claimed by several boxes goes to the one it overlaps most. As in
    ``match``, each box's best anchor is then forced to it (``_with_forced_matches``), so no box is
    left without a positive.
    """
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)

    def assign(overlaps):
        m, n = tf.shape(overlaps)[0], tf.shape(overlaps)[1]
        gt_centre = corners_to_center(gt_boxes)[:, :2]  # [M, 2] (cy, cx)
        anchor_centre = corners_to_center(anchors)[:, :2]  # [N, 2]
        distance = tf.reduce_sum(tf.square(gt_centre[:, None, :] - anchor_centre[None, :, :]), axis=-1)  # [M, N]
        candidates, start = [], 0
        for count in levels.counts:  # python ints: the levels are fixed by the model
            k = min(top_k * levels.per_cell, count)
            _, nearest = tf.math.top_k(-distance[:, start : start + count], k=k, sorted=False)
            candidates.append(nearest + start)
            start += count
        candidates = tf.concat(candidates, axis=1)  # [M, K]
        cand_iou = tf.gather(overlaps, candidates, batch_dims=1)  # [M, K]
        threshold = tf.reduce_mean(cand_iou, axis=1) + tf.math.reduce_std(cand_iou, axis=1)  # [M]
        centre = tf.gather(anchor_centre, candidates)  # [M, K, 2]
        inside = tf.reduce_all((centre > gt_boxes[:, None, :2]) & (centre < gt_boxes[:, None, 2:]), axis=-1)
        chosen = (cand_iou >= threshold[:, None]) & inside & (cand_iou > 0.0)  # [M, K]
        rows = tf.broadcast_to(tf.range(m)[:, None], tf.shape(candidates))
        # Per (box, anchor) the IoU where the anchor is the box's positive, else -1.
        claim = tf.tensor_scatter_nd_max(
            tf.fill([m, n], -1.0), tf.stack([rows, candidates], axis=-1), tf.where(chosen, cand_iou, -1.0)
        )
        return tf.where(tf.reduce_max(claim, axis=0) > 0.0, tf.argmax(claim, axis=0, output_type=tf.int32), NEGATIVE)

    return _with_forced_matches(gt_boxes, anchors, assign)


def encode_targets(
    gt_boxes: tf.Tensor,
    gt_classes: tf.Tensor,
    anchors: tf.Tensor,
    variances,
    pos_iou: float = 0.5,
    neg_iou: float = 0.4,
    atss_levels=None,
) -> tf.Tensor:
    """One image's training targets y_true: [N, 5] float32.

    gt_boxes [M, 4] corners, gt_classes [M] ints in 1..C, anchors [N, 4] corners.
    Columns 0-3: encode() of the matched box (zeros unless positive); column 4: the class id of the
    matched box, 0 for background, -1 for ignore.
    Matching: argmax IoU (``match``: positive >= pos_iou, ignored between neg_iou and pos_iou), or
    ATSS (``atss_match``) when ``atss_levels`` (anchors.AnchorLevels) is given.
    """
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_classes = tf.cast(gt_classes, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    if atss_levels is None:
        matched = match(gt_boxes, anchors, pos_iou, neg_iou)
    else:  # ATSS: thresholds per box, from the anchors near it on each level
        matched = atss_match(gt_boxes, anchors, atss_levels)
    positive = matched >= 0

    # A dummy last row lets non-positive anchors gather something even when M == 0.
    m = tf.shape(gt_boxes)[0]
    index = tf.where(positive, matched, m)
    boxes = tf.gather(tf.concat([gt_boxes, tf.zeros([1, 4], tf.float32)], axis=0), index)
    classes = tf.gather(tf.concat([gt_classes, tf.zeros([1], tf.float32)], axis=0), index)

    box_targets = tf.where(positive[:, tf.newaxis], encode(boxes, anchors, variances), 0.0)
    class_targets = tf.where(positive, classes, tf.where(matched == IGNORE, -1.0, 0.0))
    return tf.concat([box_targets, class_targets[:, tf.newaxis]], axis=-1)

"""Box coder: ground-truth boxes ↔ regression targets relative to anchors (the Faster R-CNN / SSD encoding).

Corners are normalized [ymin, xmin, ymax, xmax]; centers are (cy, cx, h, w); all float32. Targets are
((cy - acy) / ah / v0, (cx - acx) / aw / v1, log(h / ah) / v2, log(w / aw) / v3).
"""

from __future__ import annotations

import math

import tensorflow as tf

EPSILON = 1e-8  # floor on box h/w before the log: a degenerate box still encodes to finite targets
MAX_LOG_SCALE = math.log(1000.0 / 16)  # cap on decoded log(h/ah), log(w/aw): exp() can't overflow


def corners_to_center(boxes: tf.Tensor) -> tf.Tensor:
    """[..., 4] corners [ymin, xmin, ymax, xmax] → [..., 4] (cy, cx, h, w)."""
    ymin, xmin, ymax, xmax = tf.unstack(tf.convert_to_tensor(boxes, tf.float32), num=4, axis=-1)
    return tf.stack([(ymin + ymax) / 2.0, (xmin + xmax) / 2.0, ymax - ymin, xmax - xmin], axis=-1)


def center_to_corners(boxes: tf.Tensor) -> tf.Tensor:
    """[..., 4] (cy, cx, h, w) → [..., 4] corners [ymin, xmin, ymax, xmax]."""
    cy, cx, h, w = tf.unstack(tf.convert_to_tensor(boxes, tf.float32), num=4, axis=-1)
    return tf.stack([cy - h / 2.0, cx - w / 2.0, cy + h / 2.0, cx + w / 2.0], axis=-1)


def encode(boxes: tf.Tensor, anchors: tf.Tensor, variances) -> tf.Tensor:
    """Regression targets of `boxes` relative to `anchors`.

    boxes, anchors: [..., N, 4] corners (broadcastable, e.g. boxes [B, N, 4] with anchors [N, 4]);
    variances: 4 floats (y, x, h, w). Returns [..., N, 4] float32 targets.
    """
    cy, cx, h, w = tf.unstack(corners_to_center(boxes), num=4, axis=-1)
    acy, acx, ah, aw = tf.unstack(corners_to_center(anchors), num=4, axis=-1)
    h = tf.maximum(h, EPSILON)
    w = tf.maximum(w, EPSILON)
    targets = tf.stack([(cy - acy) / ah, (cx - acx) / aw, tf.math.log(h / ah), tf.math.log(w / aw)], axis=-1)
    return targets / tf.constant(variances, tf.float32)


def decode(targets: tf.Tensor, anchors: tf.Tensor, variances) -> tf.Tensor:
    """Boxes from regression targets, the inverse of encode().

    targets: [..., N, 4], anchors: [..., N, 4] corners (broadcastable); returns [..., N, 4] corners.
    The log-size terms are capped at MAX_LOG_SCALE so an untrained head can't produce inf boxes.
    """
    ty, tx, th, tw = tf.unstack(
        tf.convert_to_tensor(targets, tf.float32) * tf.constant(variances, tf.float32), num=4, axis=-1
    )
    acy, acx, ah, aw = tf.unstack(corners_to_center(anchors), num=4, axis=-1)
    cy = ty * ah + acy
    cx = tx * aw + acx
    h = tf.exp(tf.minimum(th, MAX_LOG_SCALE)) * ah
    w = tf.exp(tf.minimum(tw, MAX_LOG_SCALE)) * aw
    return center_to_corners(tf.stack([cy, cx, h, w], axis=-1))

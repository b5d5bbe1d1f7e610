"""From raw predictions to detections: decode boxes against the anchors, then per-class NMS.

Used by the exported SavedModel and by evaluation during training, so both score identically.
"""

from __future__ import annotations

import tensorflow as tf

from model import box_coder


def postprocess(predictions, anchors, variances, score_threshold: float = 0.05, iou_threshold: float = 0.5,
                max_detections: int = 100) -> dict:
    """predictions [B, N, 4 + C + 1], anchors [N, 4] corners → the TF OD API exporter's outputs.

    Returns detection_boxes [B, D, 4] (normalized ymin, xmin, ymax, xmax), detection_scores [B, D],
    detection_classes [B, D] (label ids from 1, float32 as the TF OD API), num_detections [B]
    (float32), with D = max_detections; rows past num_detections are zero.
    """
    predictions = tf.cast(predictions, tf.float32)
    boxes = box_coder.decode(predictions[..., :4], anchors, variances)
    boxes = tf.clip_by_value(boxes, 0.0, 1.0)
    scores = tf.nn.softmax(predictions[..., 4:], axis=-1)[..., 1:]  # drop background
    nmsed = tf.image.combined_non_max_suppression(
        boxes[:, :, tf.newaxis, :],  # one box per anchor, shared by all classes
        scores,
        max_output_size_per_class=max_detections,
        max_total_size=max_detections,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        clip_boxes=True,
    )
    return {
        "detection_boxes": nmsed.nmsed_boxes,
        "detection_scores": nmsed.nmsed_scores,
        "detection_classes": nmsed.nmsed_classes + 1.0,
        "num_detections": tf.cast(nmsed.valid_detections, tf.float32),
    }

"""From raw predictions to detections: decode boxes against the anchors, per-class NMS, and
optionally box merging (each kept box the score-weighted mean of the boxes it suppressed).

Used by the exported SavedModel and by evaluation during training, so both score identically.
"""

from __future__ import annotations

import tensorflow as tf

from model import box_coder
from model.matcher import iou

# Box merging weighs at most this many candidates per image (the highest-scoring anchors): the
# others' scores are too low to move a box, and the IoU table stays [B, D, 1000] at any input size.
MERGE_CANDIDATES = 1000


def merge_boxes(kept_boxes, kept_classes, boxes, scores, iou_threshold: float, score_threshold: float):
    """Box voting (YOLOv5's merge-NMS): each kept box becomes the mean of its class's candidate boxes
    that overlap it at IoU > ``iou_threshold``, weighted by IoU × score, itself included.

    NMS keeps one anchor's box and drops its neighbours, though several of them localize the object;
    their weighted mean sits tighter on it (mAP@[.5:.95]) without changing which objects are found
    or their scores. kept_boxes [B, D, 4] corners, kept_classes [B, D] class indexes from 0, boxes
    [B, N, 4] corners (every anchor's decoded box), scores [B, N, C] → merged boxes [B, D, 4]; a
    padding row (no candidate overlaps a zero box) stays as it is.
    """
    k = min(int(boxes.shape[1]), MERGE_CANDIDATES)
    top = tf.math.top_k(tf.reduce_max(scores, axis=-1), k=k, sorted=False).indices  # [B, K]
    candidates = tf.gather(boxes, top, batch_dims=1)  # [B, K, 4]
    class_scores = tf.gather(
        tf.transpose(tf.gather(scores, top, batch_dims=1), [0, 2, 1]),  # [B, C, K]
        tf.cast(kept_classes, tf.int32),
        batch_dims=1,
    )  # [B, D, K]: each kept box's class
    overlap = iou(kept_boxes, candidates)  # [B, D, K]
    weights = tf.where((overlap > iou_threshold) & (class_scores >= score_threshold), overlap * class_scores, 0.0)
    total = tf.reduce_sum(weights, axis=-1, keepdims=True)
    merged = tf.matmul(weights, candidates) / tf.maximum(total, 1e-12)
    return tf.where(total > 0.0, merged, kept_boxes)


def postprocess(
    predictions,
    anchors,
    variances,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
    box_merge_iou: float | None = None,
) -> dict:
    """predictions [B, N, 4 + C + 1], anchors [N, 4] corners → the TF OD API exporter's outputs.

    Returns detection_boxes [B, D, 4] (normalized ymin, xmin, ymax, xmax), detection_scores [B, D],
    detection_classes [B, D] (label ids from 1, float32 as the TF OD API), num_detections [B]
    (float32), with D = max_detections; rows past num_detections are zero. ``box_merge_iou``: merge
    each kept box with its class's boxes above this IoU (merge_boxes); None: NMS's boxes as they are.
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
    kept = nmsed.nmsed_boxes
    if box_merge_iou is not None:  # NMS's padding rows are zero boxes, which overlap nothing: they stay zero
        kept = merge_boxes(kept, nmsed.nmsed_classes, boxes, scores, box_merge_iou, score_threshold)
    return {
        "detection_boxes": kept,
        "detection_scores": nmsed.nmsed_scores,
        "detection_classes": nmsed.nmsed_classes + 1.0,
        "num_detections": tf.cast(nmsed.valid_detections, tf.float32),
    }

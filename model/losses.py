"""SSD training loss: softmax classification (focal, quality focal, or cross-entropy with hard negative
mining) plus a box term on positive anchors (Huber on the encoded offsets, or GIoU), normalized by the batch's
positive anchors.

Layouts (N anchors, C object classes):
    y_true [B, N, 5]: columns 0-3 encoded box targets (box_coder.encode), column 4 the class id
        (0 background, -1 ignore, k >= 1 object class), as matcher.encode_targets produces.
    y_pred [B, N, 4 + C + 1]: columns 0-3 box regression in the same encoding, then logits over
        C + 1 classes with index 0 the background (softmax).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from model.box_coder import decode

CLASSIFICATIONS = ("focal", "quality_focal", "softmax_hnm")
BOX_LOSSES = ("huber", "giou")


def huber(x: tf.Tensor, delta: float) -> tf.Tensor:
    """Elementwise Huber (smooth L1 scaled by delta): 0.5 x² for |x| <= delta, else delta (|x| - delta / 2)."""
    abs_x = tf.abs(x)
    quadratic = tf.minimum(abs_x, delta)
    return 0.5 * quadratic**2 + delta * (abs_x - quadratic)


def softmax_focal(labels: tf.Tensor, logits: tf.Tensor, alpha: float, gamma: float) -> tf.Tensor:
    """Softmax focal loss per anchor: labels [...] int class ids, logits [..., C+1] → [...].

    alpha_t (1 - p_t)^gamma CE, with p_t the softmax probability of the true class. RetinaNet's
    sigmoid loss weights positive targets by alpha and negative ones by 1 - alpha; with one softmax per
    anchor the natural counterpart weights foreground anchors by alpha and background anchors by 1 - alpha.
    """
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    one_minus_pt = -tf.math.expm1(-ce)  # 1 - exp(-ce), accurate when p_t is near 1
    alpha_t = tf.where(labels > 0, alpha, 1.0 - alpha)
    return alpha_t * tf.pow(one_minus_pt, gamma) * ce


# The anchor frame: an anchor centred at 0 with height and width 1, as corners.
UNIT_ANCHOR = (-0.5, -0.5, 0.5, 0.5)


def anchor_frame_boxes(offsets: tf.Tensor, variances) -> tf.Tensor:
    """Encoded offsets [..., 4] (box_coder.encode's layout) → the boxes they stand for, [..., 4]
    corners [ymin, xmin, ymax, xmax] in their anchor's frame (box_coder.decode against UNIT_ANCHOR).
    IoU and GIoU are ratios of areas, unchanged by shifting and by scaling each axis, so two boxes
    encoded against one anchor have the same GIoU here as in the image: the loss needs no anchors.
    """
    return decode(offsets, tf.constant(UNIT_ANCHOR, tf.float32), variances)


def iou_and_giou(box_pred: tf.Tensor, box_true: tf.Tensor, variances) -> tuple[tf.Tensor, tf.Tensor]:
    """IoU and GIoU (Rezatofighi et al. 2019) of two boxes encoded against one anchor: offsets [..., 4]
    each → two [...] tensors, IoU in [0, 1], GIoU in [-1, 1].

    GIoU = IoU - (enclosing area - union) / enclosing area.
    """
    pred = anchor_frame_boxes(box_pred, variances)
    true = anchor_frame_boxes(box_true, variances)
    area_p = (pred[..., 2] - pred[..., 0]) * (pred[..., 3] - pred[..., 1])
    area_t = (true[..., 2] - true[..., 0]) * (true[..., 3] - true[..., 1])
    inter_h = tf.maximum(0.0, tf.minimum(pred[..., 2], true[..., 2]) - tf.maximum(pred[..., 0], true[..., 0]))
    inter_w = tf.maximum(0.0, tf.minimum(pred[..., 3], true[..., 3]) - tf.maximum(pred[..., 1], true[..., 1]))
    intersection = inter_h * inter_w
    union = area_p + area_t - intersection
    enclosing = (tf.maximum(pred[..., 2], true[..., 2]) - tf.minimum(pred[..., 0], true[..., 0])) * (
        tf.maximum(pred[..., 3], true[..., 3]) - tf.minimum(pred[..., 1], true[..., 1])
    )
    iou = intersection / tf.maximum(union, 1e-9)
    return iou, iou - (enclosing - union) / tf.maximum(enclosing, 1e-9)


def giou_loss(box_pred: tf.Tensor, box_true: tf.Tensor, variances) -> tf.Tensor:
    """1 - GIoU per anchor: encoded offsets [..., 4] each → [...] in [0, 2].

    Unlike IoU it still has a gradient when the boxes do not overlap, and unlike an offset loss it
    weighs an error by how much it moves the box's overlap, the quantity mAP@[.5:.95] judges.
    """
    return 1.0 - iou_and_giou(box_pred, box_true, variances)[1]


def softmax_quality_focal(
    labels: tf.Tensor, logits: tf.Tensor, quality: tf.Tensor, alpha: float, beta: float
) -> tf.Tensor:
    """Softmax quality focal loss per anchor: labels [...] int class ids, logits [..., C+1], quality
    [...] in [0, 1] (read for positive anchors only) → [...].

    GFL's quality focal loss (Li et al. 2020) over one softmax: a positive anchor's target puts its
    box's quality q (the IoU of its predicted box with its object, no gradient) on the true class and
    1 - q on background, a negative's puts 1 on background; the loss is
    alpha_t |q - p_class|^beta CE(target, softmax). The class probability so learns how well the box
    sits, and NMS and AP's ranking, which read that probability, prefer the tightest of a cluster of
    boxes over merely the most confident one. A negative's term is softmax_focal's with gamma = beta.
    """
    positive = labels > 0
    q = tf.where(positive, tf.clip_by_value(quality, 0.0, 1.0), 1.0)
    log_p = tf.nn.log_softmax(logits, axis=-1)
    true_class = tf.one_hot(labels, tf.shape(logits)[-1], dtype=log_p.dtype)
    background = tf.one_hot(tf.zeros_like(labels), tf.shape(logits)[-1], dtype=log_p.dtype)
    # Negatives (label 0): q = 1 on background, so both one-hots add to a target of exactly 1 there.
    target = true_class * q[..., tf.newaxis] + background * (1.0 - q)[..., tf.newaxis]
    ce = -tf.reduce_sum(target * log_p, axis=-1)
    p_class = tf.exp(tf.reduce_sum(true_class * log_p, axis=-1))
    alpha_t = tf.where(positive, alpha, 1.0 - alpha)
    return alpha_t * tf.pow(tf.abs(q - p_class), beta) * ce


def balanced_class_weights(counts, power: float) -> list[float] | None:
    """Per-class loss weights from the training boxes per class (``counts`` [C], class ids 1..C in
    order): (most frequent class's count / the class's count) ** ``power``, scaled so that the
    average weight over the training boxes is 1 (the loss keeps its scale; a minority class's anchors
    count more, a majority's slightly less). ``power`` 0 → None (no weighting); 0.5 is the square root
    of the inverse frequency; a class without boxes gets weight 1 (it has no positive anchor to weigh).
    """
    if not power:
        return None
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    weights = np.ones_like(counts)
    if not present.any():
        return [1.0] * len(counts)
    weights[present] = (counts[present].max() / counts[present]) ** power
    weights[present] /= (weights[present] * counts[present]).sum() / counts[present].sum()
    return [round(float(w), 4) for w in weights]


def hard_negatives(neg_loss: tf.Tensor, negative: tf.Tensor, num_hard: tf.Tensor) -> tf.Tensor:
    """Per image, the `num_hard` negatives with the highest loss: neg_loss, negative [B, N], num_hard [B] → [B, N] bool."""
    scores = tf.where(negative, neg_loss, -1.0)  # losses are >= 0, so non-negatives sort last
    order = tf.argsort(scores, axis=-1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=-1, stable=True)  # rank[b, i]: position of anchor i in the sorted order
    return negative & (rank < num_hard[:, tf.newaxis])


@keras.saving.register_keras_serializable(package="ssdflow")
class SSDLoss(keras.losses.Loss):
    """(classification + box_weight * box loss) / max(1, positive anchors in the batch).

    classification:
        "focal": softmax focal loss over every non-ignored anchor (see softmax_focal).
        "quality_focal": the same anchors, the true class's target being the IoU its anchor's
            predicted box reaches (see softmax_quality_focal; focal_gamma is its beta).
        "softmax_hnm": softmax cross-entropy over the positives and, per image, the hardest
            negatives: k = floor(neg_pos_ratio * positives of the image), at least min_negatives
            (so an image with no objects still teaches background), at most its negatives.
    box_loss:
        "huber": Huber on the encoded offsets, summed over the 4 coordinates.
        "giou": 1 - GIoU of the decoded box with its ground truth (giou_loss; needs the box
            coder's ``variances``).
    Ignored anchors (class -1) contribute to neither term. The box term covers positives only.
    call() returns the batch's loss as a scalar, so any reduction except "none" reports exactly that value.
    """

    def __init__(
        self,
        num_classes: int,
        classification: str = "focal",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        neg_pos_ratio: float = 3.0,
        min_negatives: int = 3,
        box_weight: float = 1.0,
        delta: float = 1.0,
        class_weights: tuple[float, ...] | list[float] | None = None,
        box_loss: str = "huber",
        variances: tuple[float, ...] | list[float] = (0.1, 0.1, 0.2, 0.2),
        name: str = "ssd_loss",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        if classification not in CLASSIFICATIONS:
            raise ValueError(f"classification must be one of {CLASSIFICATIONS}, got {classification!r}")
        # The loss always computes in float32, also under a mixed-precision policy.
        super().__init__(name=name, reduction=reduction, dtype=dtype or "float32")
        self.num_classes = int(num_classes)
        self.classification = classification
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.min_negatives = int(min_negatives)
        self.box_weight = float(box_weight)
        self.delta = float(delta)
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
        if class_weights is not None and len(class_weights) != self.num_classes:
            raise ValueError(f"class_weights needs one weight per class ({self.num_classes}), got {len(class_weights)}")
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.box_loss = box_loss
        self.variances = [float(v) for v in variances]

    def components(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> dict[str, tf.Tensor]:
        """The loss's parts, each a float32 scalar.

        cls, box: the classification and (unweighted) box terms, each already divided by the
        normalizer; the loss is cls + box_weight * box. num_pos: positive anchors in the batch.
        num_neg: negative anchors that contributed to cls (all non-ignored ones for focal, the mined
        ones for softmax_hnm).
        """
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.cast(y_pred, tf.float32)
        box_true, class_true = y_true[..., :4], y_true[..., 4]
        box_pred, logits = y_pred[..., :4], y_pred[..., 4 : 4 + self.num_classes + 1]

        positive = class_true > 0
        negative = tf.equal(class_true, 0.0)
        labels = tf.cast(tf.maximum(class_true, 0.0), tf.int32)
        num_pos_per_image = tf.reduce_sum(tf.cast(positive, tf.float32), axis=-1)  # [B]
        num_pos = tf.reduce_sum(num_pos_per_image)
        normalizer = tf.maximum(num_pos, 1.0)

        if self.classification == "quality_focal" or self.box_loss == "giou":
            # The decoded boxes' overlap, once for whichever of the two terms reads it.
            iou, giou = iou_and_giou(box_pred, box_true, self.variances)
        if self.classification == "focal":
            per_anchor = softmax_focal(labels, logits, self.focal_alpha, self.focal_gamma)
            counted_negatives = negative
        elif self.classification == "quality_focal":
            per_anchor = softmax_quality_focal(
                labels, logits, tf.stop_gradient(iou), self.focal_alpha, self.focal_gamma
            )
            counted_negatives = negative
        else:
            per_anchor = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            num_neg = tf.reduce_sum(tf.cast(negative, tf.float32), axis=-1)
            num_hard = tf.maximum(tf.floor(self.neg_pos_ratio * num_pos_per_image), float(self.min_negatives))
            num_hard = tf.cast(tf.minimum(num_hard, num_neg), tf.int32)
            counted_negatives = hard_negatives(tf.stop_gradient(per_anchor), negative, num_hard)
        counted = positive | counted_negatives
        if self.box_loss == "giou":
            # Only positives count; a negative's zero target and arbitrary prediction stay finite here.
            box_per_anchor = 1.0 - giou  # giou_loss
        else:
            box_per_anchor = tf.reduce_sum(huber(box_pred - box_true, self.delta), axis=-1)
        if self.class_weights is not None:  # a positive anchor counts as much as its class's weight
            weight = tf.gather(tf.constant([1.0, *self.class_weights], tf.float32), labels)
            per_anchor, box_per_anchor = per_anchor * weight, box_per_anchor * weight
        cls_sum = tf.reduce_sum(tf.where(counted, per_anchor, 0.0))
        box_sum = tf.reduce_sum(tf.where(positive, box_per_anchor, 0.0))

        return {
            "cls": cls_sum / normalizer,
            "box": box_sum / normalizer,
            "num_pos": num_pos,
            "num_neg": tf.reduce_sum(tf.cast(counted_negatives, tf.float32)),
        }

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        parts = self.components(y_true, y_pred)
        return parts["cls"] + self.box_weight * parts["box"]

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            classification=self.classification,
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
            class_weights=self.class_weights,
            neg_pos_ratio=self.neg_pos_ratio,
            min_negatives=self.min_negatives,
            box_weight=self.box_weight,
            delta=self.delta,
            box_loss=self.box_loss,
            variances=self.variances,
        )
        return config

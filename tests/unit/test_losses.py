"""model.losses.SSDLoss: focal / quality focal / hard-negative-mined softmax classification plus a Huber or GIoU box loss,
normalized by the batch's positive anchors."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from model.losses import SSDLoss

C = 3  # object classes; logits have C + 1 columns, background first


def _batch(seed=0, batch=2, n=40):
    """y_true [B, N, 5] with positives, negatives and ignores in each image; y_pred [B, N, 4 + C + 1] random."""
    rng = np.random.default_rng(seed)
    classes = rng.choice([-1.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0], size=(batch, n)).astype(np.float32)
    classes[:, :3] = [1.0, 0.0, -1.0]
    boxes = rng.normal(size=(batch, n, 4)).astype(np.float32) * (classes[..., None] > 0)
    y_true = np.concatenate([boxes, classes[..., None]], axis=-1)
    y_pred = rng.normal(size=(batch, n, 4 + C + 1)).astype(np.float32) * 2.0
    return y_true, y_pred


def _ce(y_pred):
    logits = y_pred[..., 4:].astype(np.float64)
    logits = logits - logits.max(-1, keepdims=True)
    return -(logits - np.log(np.exp(logits).sum(-1, keepdims=True)))  # [B, N, C+1] CE per class


def _huber(x, delta=1.0):
    a = np.abs(x)
    return np.where(a <= delta, 0.5 * x * x, delta * (a - 0.5 * delta)).sum(-1)


def _reference_focal(y_true, y_pred, alpha=0.25, gamma=2.0):
    cls = y_true[..., 4]
    labels = np.maximum(cls, 0).astype(int)
    ce = np.take_along_axis(_ce(y_pred), labels[..., None], -1)[..., 0]
    pt = np.exp(-ce)
    focal = np.where(labels > 0, alpha, 1 - alpha) * (1 - pt) ** gamma * ce
    box = _huber(y_pred[..., :4] - y_true[..., :4])
    num_pos = max(1.0, (cls > 0).sum())
    return (focal[cls >= 0].sum() + box[cls > 0].sum()) / num_pos


@pytest.mark.parametrize("classification", ["focal", "quality_focal", "softmax_hnm"])
def test_perfect_predictions(classification):
    y_true, _ = _batch()
    labels = np.maximum(y_true[..., 4], 0).astype(int)
    y_pred = np.concatenate([y_true[..., :4], 20.0 * np.eye(C + 1, dtype=np.float32)[labels]], axis=-1)
    parts = SSDLoss(C, classification=classification).components(y_true, y_pred)
    assert float(parts["box"]) < 1e-6
    assert 0.0 <= float(parts["cls"]) < 1e-4


def test_focal_loss_matches_reference_and_normalizes_by_batch_positives():
    y_true, y_pred = _batch()
    loss = SSDLoss(C)
    value = float(loss(y_true, y_pred))
    np.testing.assert_allclose(value, _reference_focal(y_true, y_pred), rtol=1e-5)
    parts = loss.components(y_true, y_pred)
    assert float(parts["num_pos"]) == (y_true[..., 4] > 0).sum()
    np.testing.assert_allclose(value, float(parts["cls"] + parts["box"]), rtol=1e-6)
    # Per batch, not per image: duplicating the batch doubles sums and positives alike.
    doubled = float(loss(np.concatenate([y_true, y_true]), np.concatenate([y_pred, y_pred])))
    np.testing.assert_allclose(doubled, value, rtol=1e-5)
    # box_weight scales the box term only.
    weighted = float(SSDLoss(C, box_weight=2.0)(y_true, y_pred))
    np.testing.assert_allclose(weighted, float(parts["cls"] + 2.0 * parts["box"]), rtol=1e-5)


@pytest.mark.parametrize("classification", ["focal", "softmax_hnm"])
def test_loss_decreases_as_true_class_logit_rises(classification):
    y_true, y_pred = _batch()
    loss = SSDLoss(C, classification=classification)
    b, i = 0, 0  # a positive anchor of class 1
    values = []
    for logit in (-2.0, 0.0, 2.0, 4.0):
        pred = y_pred.copy()
        pred[b, i, 4 + 1] = logit
        values.append(float(loss(y_true, pred)))
    assert all(later < earlier for earlier, later in zip(values, values[1:]))


@pytest.mark.parametrize("classification", ["focal", "quality_focal", "softmax_hnm"])
def test_ignored_anchors_contribute_nothing(classification):
    y_true, y_pred = _batch()
    ignored = y_true[..., 4] < 0
    assert ignored.any()
    noisy = y_pred.copy()
    noisy[ignored] = np.random.default_rng(1).normal(size=noisy[ignored].shape) * 50.0
    loss = SSDLoss(C, classification=classification)
    np.testing.assert_allclose(float(loss(y_true, noisy)), float(loss(y_true, y_pred)), rtol=1e-6)


def test_hard_negative_mining_picks_the_hardest_ratio_times_positives():
    y_true, y_pred = _batch(n=30)
    cls = y_true[..., 4]
    cls[0] = 0.0
    cls[0, :4] = [1.0, 3.0, 2.0, -1.0]  # image 0: 3 positives, 1 ignored, 26 negatives
    cls[1] = np.where(cls[1] > 0, 0.0, cls[1])  # image 1: no positives
    y_true[..., :4] *= (cls > 0)[..., None]
    ce = np.take_along_axis(_ce(y_pred), np.maximum(cls, 0).astype(int)[..., None], -1)[..., 0]

    loss = SSDLoss(C, classification="softmax_hnm", neg_pos_ratio=2.0, min_negatives=3)
    parts = loss.components(y_true, y_pred)
    pos0 = int((cls[0] > 0).sum())
    assert pos0 == 3 and (cls[1] == 0).sum() > 3
    assert float(parts["num_neg"]) == 2 * pos0 + 3  # image 0: ratio * positives; image 1: the minimum

    expected_cls = ce[cls > 0].sum()
    for b, k in ((0, 2 * pos0), (1, 3)):
        expected_cls += np.sort(ce[b][cls[b] == 0])[::-1][:k].sum()
    box = _huber(y_pred[..., :4] - y_true[..., :4])[cls > 0].sum()
    num_pos = (cls > 0).sum()
    np.testing.assert_allclose(float(parts["cls"]), expected_cls / num_pos, rtol=1e-5)
    np.testing.assert_allclose(float(loss(y_true, y_pred)), (expected_cls + box) / num_pos, rtol=1e-5)


def test_no_positives_anywhere_is_finite():
    y_true = np.zeros([2, 10, 5], np.float32)
    y_pred = np.random.default_rng(0).normal(size=(2, 10, 4 + C + 1)).astype(np.float32)
    for classification in ("focal", "softmax_hnm"):
        parts = SSDLoss(C, classification=classification).components(y_true, y_pred)
        assert float(parts["num_pos"]) == 0.0 and float(parts["box"]) == 0.0
        assert np.isfinite(float(parts["cls"])) and float(parts["cls"]) > 0.0


def test_mixed_precision_predictions_and_config_round_trip():
    y_true, y_pred = _batch()
    loss = SSDLoss(C, classification="softmax_hnm", neg_pos_ratio=2.0)
    value = loss(y_true, tf.cast(y_pred, tf.float16))
    assert value.dtype == tf.float32 and np.isfinite(float(value))
    clone = SSDLoss.from_config(loss.get_config())
    assert (clone.classification, clone.neg_pos_ratio, clone.num_classes) == ("softmax_hnm", 2.0, C)
    with pytest.raises(ValueError, match="classification"):
        SSDLoss(C, classification="sigmoid")


@pytest.mark.parametrize("classification", ["focal", "softmax_hnm"])
def test_keras_model_fits(classification):
    n = 12
    inputs = keras.Input(shape=(8,))
    outputs = keras.layers.Reshape((n, 4 + C + 1))(keras.layers.Dense(n * (4 + C + 1))(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=SSDLoss(C, classification=classification))
    y_true, _ = _batch(batch=4, n=n)
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    history = model.fit(x, y_true, batch_size=2, epochs=1, steps_per_epoch=2, verbose=0)
    assert len(history.history["loss"]) == 1 and np.isfinite(history.history["loss"][0])
    # What Keras reports for one batch is exactly the loss of that batch (no extra reduction).
    reported = model.evaluate(x[:2], y_true[:2], batch_size=2, verbose=0)
    np.testing.assert_allclose(reported, float(model.loss(y_true[:2], model(x[:2]))), rtol=1e-5)


def test_balanced_class_weights_favour_the_minority_and_keep_the_loss_scale():
    from model.losses import balanced_class_weights

    counts = np.array([899, 895, 144])
    w = np.array(balanced_class_weights(counts, 0.5))
    assert w[2] > 2 * w[0] and w[0] == pytest.approx(w[1], abs=0.01)  # sqrt(899/144) = 2.5 apart
    assert (w * counts).sum() / counts.sum() == pytest.approx(1.0, abs=1e-3)  # average over the boxes
    assert balanced_class_weights(counts, 0.0) is None
    assert balanced_class_weights([10, 0, 10], 1.0) == [1.0, 1.0, 1.0]  # a class without boxes: 1


def test_class_weights_scale_each_positive_anchors_terms_by_its_class():
    """With weights (1, 1, 3): the reference loss with class 3's positive anchors counted three times
    (classification and box), negatives and the normalizer unchanged; weights survive get_config."""
    y_true, y_pred = _batch()
    weights = (1.0, 1.0, 3.0)
    cls = y_true[..., 4]
    labels = np.maximum(cls, 0).astype(int)
    ce = np.take_along_axis(_ce(y_pred), labels[..., None], -1)[..., 0]
    focal = np.where(labels > 0, 0.25, 0.75) * (1 - np.exp(-ce)) ** 2.0 * ce
    box = _huber(y_pred[..., :4] - y_true[..., :4])
    w = np.array([1.0, *weights])[labels]
    expected = ((focal * w)[cls >= 0].sum() + (box * w)[cls > 0].sum()) / max(1.0, (cls > 0).sum())
    loss = SSDLoss(C, class_weights=weights)
    assert float(loss(y_true, y_pred)) == pytest.approx(expected, rel=1e-4)
    assert float(loss(y_true, y_pred)) > float(SSDLoss(C)(y_true, y_pred))
    assert SSDLoss.from_config(loss.get_config()).class_weights == list(weights)
    with pytest.raises(ValueError, match="one weight per class"):
        SSDLoss(C, class_weights=(1.0, 2.0))


def _giou_numpy(a, b):
    """Reference GIoU of corner boxes [..., 4] in image coordinates."""
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    inter = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None) * np.clip(
        np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None
    )
    union = area(a) + area(b) - inter
    hull = (np.maximum(a[..., 2], b[..., 2]) - np.minimum(a[..., 0], b[..., 0])) * (
        np.maximum(a[..., 3], b[..., 3]) - np.minimum(a[..., 1], b[..., 1])
    )
    return inter / union - (hull - union) / hull


def _random_boxes(rng, n):
    centre = rng.uniform(0.2, 0.8, size=(n, 2))
    size = rng.uniform(0.02, 0.5, size=(n, 2))
    return np.concatenate([centre - size / 2, centre + size / 2], axis=-1).astype(np.float32)


def test_giou_from_offsets_equals_giou_of_the_decoded_boxes_in_the_image():
    """The loss reads only encoded offsets: for boxes encoded against anchors of any shape and place,
    1 - its value is the GIoU of the boxes themselves (overlapping pairs and disjoint ones, GIoU < 0)."""
    from model.box_coder import encode
    from model.losses import giou_loss

    rng = np.random.default_rng(3)
    variances = (0.1, 0.1, 0.2, 0.2)
    anchors, truth, pred = (_random_boxes(rng, 500) for _ in range(3))
    pred[:50] = truth[:50]  # some perfect predictions
    expected = _giou_numpy(pred, truth)
    assert (expected < 0).any() and (expected > 0.5).any()  # both regimes are exercised
    got = giou_loss(encode(pred, anchors, variances), encode(truth, anchors, variances), variances)
    np.testing.assert_allclose(got.numpy(), 1.0 - expected, atol=2e-5)
    assert np.abs(got.numpy()[:50]).max() < 1e-5


def test_giou_box_loss_averages_over_positives_and_moves_disjoint_boxes_closer():
    from model.box_coder import decode, encode
    from model.losses import giou_loss

    rng = np.random.default_rng(4)
    variances = (0.1, 0.1, 0.2, 0.2)
    y_true, y_pred = _batch()
    anchors = _random_boxes(rng, y_true.shape[1])
    positive = y_true[..., 4] > 0
    truth = np.stack([encode(_random_boxes(rng, y_true.shape[1]), anchors, variances).numpy() for _ in range(2)])
    y_true[..., :4] = np.where(positive[..., None], truth, 0.0)
    loss = SSDLoss(C, box_loss="giou", variances=variances)
    parts = loss.components(y_true, y_pred)
    decoded = lambda t: decode(t, anchors, variances).numpy()  # noqa: E731
    per_anchor = 1.0 - _giou_numpy(
        np.stack([decoded(y_pred[i, :, :4]) for i in range(2)]), np.stack([decoded(y_true[i, :, :4]) for i in range(2)])
    )
    assert float(parts["box"]) == pytest.approx(per_anchor[positive].sum() / positive.sum(), rel=1e-4)
    # Boxes that do not overlap still get a gradient (IoU alone would give none).
    far = tf.Variable([[0.0, 30.0, 0.0, 0.0]])  # 30 * 0.1 = 3 anchor widths to the right
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(giou_loss(far, tf.zeros([1, 4]), variances))
    assert float(value) > 1.0 and float(tape.gradient(value, far)[0, 1]) > 0.0
    clone = SSDLoss.from_config(loss.get_config())
    assert (clone.box_loss, clone.variances) == ("giou", list(variances))
    with pytest.raises(ValueError, match="box_loss"):
        SSDLoss(C, box_loss="l1")


def _quality_batch(seed=5):
    """_batch with box targets and predictions encoded from real boxes against real anchors, so each
    positive's predicted box has an IoU with its object anywhere in [0, 1]; returns the IoUs [B, N] too."""
    from model.box_coder import encode

    rng = np.random.default_rng(seed)
    variances = (0.1, 0.1, 0.2, 0.2)
    y_true, y_pred = _batch(seed)
    n = y_true.shape[1]
    anchors = _random_boxes(rng, n)
    truth = np.stack([_random_boxes(rng, n) for _ in range(2)])
    pred = truth + rng.normal(scale=0.05, size=truth.shape).astype(np.float32)  # near their objects
    pred[..., 2:] = np.maximum(pred[..., 2:], pred[..., :2] + 0.01)
    positive = y_true[..., 4] > 0
    y_true[..., :4] = np.where(positive[..., None], [encode(t, anchors, variances).numpy() for t in truth], 0.0)
    y_pred[..., :4] = [encode(p, anchors, variances).numpy() for p in pred]
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    inter = np.clip(
        np.minimum(pred[..., 2], truth[..., 2]) - np.maximum(pred[..., 0], truth[..., 0]), 0, None
    ) * np.clip(np.minimum(pred[..., 3], truth[..., 3]) - np.maximum(pred[..., 1], truth[..., 1]), 0, None)
    iou = inter / (area(pred) + area(truth) - inter)
    return y_true, y_pred, iou, variances


def test_quality_focal_matches_reference_with_the_predicted_boxes_iou_as_target():
    y_true, y_pred, iou, variances = _quality_batch()
    cls = y_true[..., 4]
    positive = cls > 0
    assert iou[positive].min() < 0.5 < iou[positive].max()  # qualities across the range
    labels = np.maximum(cls, 0).astype(int)
    log_p = -_ce(y_pred)
    q = np.where(positive, iou, 1.0)
    target = np.eye(C + 1)[labels] * q[..., None]
    target[..., 0] += np.where(positive, 1.0 - q, 0.0)
    ce = -(target * log_p).sum(-1)
    p_class = np.exp(np.take_along_axis(log_p, labels[..., None], -1)[..., 0])
    per_anchor = np.where(positive, 0.25, 0.75) * np.abs(q - p_class) ** 2 * ce
    loss = SSDLoss(C, classification="quality_focal", variances=variances)
    parts = loss.components(y_true, y_pred)
    assert float(parts["cls"]) == pytest.approx(per_anchor[cls >= 0].sum() / positive.sum(), rel=1e-4)
    # A negative anchor's term is the focal loss's: on a batch without positives the two agree.
    no_objects = y_true.copy()
    no_objects[..., 4] = np.minimum(no_objects[..., 4], 0.0)
    focal = SSDLoss(C).components(no_objects, y_pred)["cls"]
    assert float(loss.components(no_objects, y_pred)["cls"]) == pytest.approx(float(focal), rel=1e-5)
    clone = SSDLoss.from_config(loss.get_config())
    assert clone.classification == "quality_focal"


def test_quality_focal_teaches_a_score_equal_to_the_boxes_iou_and_leaves_the_box_to_the_box_term():
    """For a positive anchor the loss is lowest where its class probability equals its box's IoU (not
    at certainty, as focal's), and the IoU target passes no gradient to the box regression."""
    y_true, y_pred, iou, variances = _quality_batch()
    positive = y_true[..., 4] > 0
    b, i = [int(v[0]) for v in np.nonzero(positive & (iou > 0.3) & (iou < 0.8))]
    label = int(y_true[b, i, 4])
    loss = SSDLoss(C, classification="quality_focal", variances=variances)
    probabilities, values = [], []
    for logit in np.linspace(-6.0, 12.0, 181):
        pred = y_pred.copy()
        pred[b, i, 4:] = 0.0
        pred[b, i, 4 + label] = logit  # the other classes share the rest; background among them
        logits = pred[b, i, 4:].astype(np.float64)
        probabilities.append(np.exp(logit) / np.exp(logits).sum())
        values.append(float(loss.components(y_true, pred)["cls"]))
    best = probabilities[int(np.argmin(values))]
    assert abs(best - iou[b, i]) < 0.05 and values[-1] > min(values) + 1e-4
    box = tf.Variable(y_pred[..., :4])
    with tf.GradientTape() as tape:
        cls_part = loss.components(y_true, tf.concat([box, y_pred[..., 4:]], axis=-1))["cls"]
    gradient = tape.gradient(cls_part, box)
    assert gradient is None or float(tf.reduce_max(tf.abs(gradient))) == 0.0

"""model.augment: box-aware, stateless augmentation. Boxes must move with the pixels.

The scene is a black, non-square image with two white rectangles of different sizes and classes.
Two independent checks are made after each op:

* pixels: the white regions found in the output image match the returned boxes (within 2 pixels);
  a white region with no returned box is the visible part of a dropped box, so it touches the border;
* oracle: the same op with the same seed on a "coordinate image" (channel 0 = source row, channel 1 =
  source column) reveals which source pixels were kept (the ops' geometry depends only on the seed,
  the image size and the boxes), from which the expected boxes and classes are computed here.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import tensorflow as tf

import model.augment as aug
from model.augment import augment, photometric, random_crop, random_flip_horizontal

H, W = 120, 160
BIG = (20, 30, 60, 90)  # pixel rows [20, 60), cols [30, 90): class 1
SMALL = (80, 120, 100, 140)  # rows [80, 100), cols [120, 140): class 2; 20+ px away from BIG in both axes
CLASSES = np.array([1, 2], np.int32)
SEEDS = range(20)
TOL_PX = 2.0


def _scene(rects=(BIG, SMALL)):
    img = np.zeros((H, W, 3), np.float32)
    for y0, x0, y1, x1 in rects:
        img[y0:y1, x0:x1] = 255.0
    boxes = np.array([[y0 / H, x0 / W, y1 / H, x1 / W] for y0, x0, y1, x1 in rects], np.float32).reshape(-1, 4)
    return img, boxes


def _coord_image():
    rows, cols = np.meshgrid(np.arange(H, dtype=np.float32), np.arange(W, dtype=np.float32), indexing="ij")
    return np.stack([rows, cols, np.zeros_like(rows)], axis=-1)


def _seed(s):
    return tf.constant([s, 1234], tf.int32)


def _components(mask):
    """Bounding boxes (y0, x0, y1, x1), end exclusive, of the 4-connected components of a bool mask."""
    seen = np.zeros_like(mask, bool)
    h, w = mask.shape
    out = []
    for sy, sx in zip(*np.nonzero(mask)):
        if seen[sy, sx]:
            continue
        seen[sy, sx] = True
        q = deque([(sy, sx)])
        y0, x0, y1, x1 = sy, sx, sy, sx
        while q:
            y, x = q.popleft()
            y0, x0, y1, x1 = min(y0, y), min(x0, x), max(y1, y), max(x1, x)
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    q.append((ny, nx))
        out.append((int(y0), int(x0), int(y1) + 1, int(x1) + 1))
    return out


def _assert_pixels_match_boxes(image, boxes, threshold=127.5):
    """Every returned box covers one white region (within TOL_PX); unmatched regions touch the border."""
    image, boxes = np.asarray(image), np.asarray(boxes)
    assert boxes.ndim == 2 and boxes.shape[1] == 4
    assert np.all(boxes >= 0.0) and np.all(boxes <= 1.0), boxes
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1]), boxes
    h, w = image.shape[:2]
    comps = _components(image.mean(axis=-1) > threshold)
    scale = np.array([h, w, h, w], np.float64)
    matched = set()
    for box in boxes:
        px = box.astype(np.float64) * scale
        hits = [i for i, c in enumerate(comps) if np.all(np.abs(np.array(c) - px) <= TOL_PX)]
        assert len(hits) == 1, (
            f"box {px.round(1)} (pixels) matches no single white region of {comps} in a {h}x{w} image"
        )
        assert hits[0] not in matched, "two boxes on one white region"
        matched.add(hits[0])
    for i, (y0, x0, y1, x1) in enumerate(comps):
        if i not in matched:
            assert y0 == 0 or x0 == 0 or y1 == h or x1 == w, (
                f"white region {(y0, x0, y1, x1)} inside a {h}x{w} image has no box (and is not a cut-off dropped box)"
            )


def _oracle(coord_out, boxes, classes):
    """Expected (boxes, classes) from the source window a coordinate image reveals (crop + optional mirror)."""
    c = np.asarray(coord_out)
    h, w = c.shape[:2]
    rows, cols = c[..., 0], c[..., 1]
    y0, x0 = rows.min(), cols.min()
    flipped = w > 1 and cols[0, 0] > cols[0, -1]
    np.testing.assert_array_equal(rows, y0 + np.arange(h, dtype=np.float32)[:, None] + 0 * cols)
    expected_cols = x0 + np.arange(w, dtype=np.float32)
    np.testing.assert_array_equal(cols, np.broadcast_to(expected_cols[::-1] if flipped else expected_cols, (h, w)))
    px = np.asarray(boxes, np.float64) * [H, W, H, W]
    moved = (px - [y0, x0, y0, x0]) / [h, w, h, w]
    cy, cx = (moved[:, 0] + moved[:, 2]) / 2, (moved[:, 1] + moved[:, 3]) / 2
    keep = (cy > 0) & (cy < 1) & (cx > 0) & (cx < 1)
    kept = np.clip(moved[keep], 0.0, 1.0)
    if flipped:
        kept = np.stack([kept[:, 0], 1 - kept[:, 3], kept[:, 2], 1 - kept[:, 1]], axis=-1)
    return kept.reshape(-1, 4), np.asarray(classes)[keep], (h, w), flipped


# --- random_flip_horizontal ----------------------------------------------------------------------
def test_flip_moves_boxes_with_pixels_and_sizes_identify_classes():
    img, boxes = _scene()
    flips = set()
    for s in SEEDS:
        out, out_boxes = random_flip_horizontal(tf.constant(img), tf.constant(boxes), _seed(s))
        out, out_boxes = out.numpy(), out_boxes.numpy()
        assert out.shape == img.shape and out_boxes.shape == boxes.shape
        _assert_pixels_match_boxes(out, out_boxes)
        # No clipping in a flip: the box sizes (and so which class is which) are unchanged, row for row.
        np.testing.assert_allclose(out_boxes[:, 2:] - out_boxes[:, :2], boxes[:, 2:] - boxes[:, :2], atol=1e-6)
        coord, _ = random_flip_horizontal(tf.constant(_coord_image()), tf.constant(boxes), _seed(s))
        exp_boxes, _, _, flipped = _oracle(coord, boxes, CLASSES)
        np.testing.assert_allclose(out_boxes, exp_boxes, atol=1e-5)
        if flipped:
            np.testing.assert_array_equal(out, img[:, ::-1])
        else:
            np.testing.assert_array_equal(out, img)
        flips.add(flipped)
    assert flips == {True, False}, "20 seeds should give both flipped and unflipped images"


# --- random_crop ---------------------------------------------------------------------------------
def test_crop_moves_clips_and_drops_boxes_with_their_classes():
    img, boxes = _scene()
    cropped = dropped = 0
    for s in SEEDS:
        out, out_boxes, out_classes = (
            t.numpy() for t in random_crop(tf.constant(img), tf.constant(boxes), tf.constant(CLASSES), _seed(s), p=1.0)
        )
        assert out_boxes.shape == (len(out_classes), 4) and out_classes.dtype == np.int32
        _assert_pixels_match_boxes(out, out_boxes)
        coord, _, _ = random_crop(
            tf.constant(_coord_image()), tf.constant(boxes), tf.constant(CLASSES), _seed(s), p=1.0
        )
        exp_boxes, exp_classes, shape, flipped = _oracle(coord, boxes, CLASSES)
        assert not flipped and out.shape[:2] == shape
        np.testing.assert_allclose(out_boxes, exp_boxes, atol=1e-5)
        np.testing.assert_array_equal(out_classes, exp_classes)
        # The pixels themselves are the source window, untouched.
        y0, x0 = int(coord[0, 0, 0]), int(coord[0, 0, 1])
        np.testing.assert_array_equal(out, img[y0 : y0 + shape[0], x0 : x0 + shape[1]])
        cropped += shape != (H, W)
        dropped += len(out_classes) < len(CLASSES)
    assert cropped >= len(SEEDS) // 2, f"p=1.0 cropped only {cropped} of {len(SEEDS)} images"
    assert dropped >= 1, "no seed dropped a box: the drop path went untested"


def test_crop_keeps_class_of_each_box_when_identified_by_size():
    """Independent of the oracle: a kept box whose crop did not clip it keeps its size, hence its class."""
    img, boxes = _scene()
    sizes = {1: (40, 60), 2: (20, 20)}  # class → (h, w) in source pixels
    checked = 0
    for s in SEEDS:
        out, out_boxes, out_classes = (
            t.numpy() for t in random_crop(tf.constant(img), tf.constant(boxes), tf.constant(CLASSES), _seed(s), p=1.0)
        )
        h, w = out.shape[:2]
        for box, cls in zip(out_boxes, out_classes):
            bh, bw = (box[2] - box[0]) * h, (box[3] - box[1]) * w
            if 0 < box[0] and 0 < box[1] and box[2] < 1 and box[3] < 1:  # not clipped
                assert (bh, bw) == pytest.approx(sizes[int(cls)], abs=0.01), (s, box, cls)
                checked += 1
    assert checked >= 5


def test_crop_probability_zero_is_identity():
    img, boxes = _scene()
    for s in range(5):
        out, out_boxes, out_classes = random_crop(
            tf.constant(img), tf.constant(boxes), tf.constant(CLASSES), _seed(s), p=0.0
        )
        np.testing.assert_array_equal(out.numpy(), img)
        np.testing.assert_array_equal(out_boxes.numpy(), boxes)
        np.testing.assert_array_equal(out_classes.numpy(), CLASSES)


# --- augment -------------------------------------------------------------------------------------
@pytest.fixture
def no_photometric(monkeypatch):
    monkeypatch.setattr(aug, "photometric", lambda image, seed: image)


def test_augment_geometry_moves_boxes_with_pixels(no_photometric):
    img, boxes = _scene()
    flips, cropped = set(), 0
    for s in SEEDS:
        out, out_boxes, out_classes = (
            t.numpy() for t in augment(tf.constant(img), tf.constant(boxes), tf.constant(CLASSES), _seed(s))
        )
        _assert_pixels_match_boxes(out, out_boxes)
        coord, _, _ = augment(tf.constant(_coord_image()), tf.constant(boxes), tf.constant(CLASSES), _seed(s))
        exp_boxes, exp_classes, shape, flipped = _oracle(coord, boxes, CLASSES)
        assert out.shape[:2] == shape
        np.testing.assert_allclose(out_boxes, exp_boxes, atol=1e-5)
        np.testing.assert_array_equal(out_classes, exp_classes)
        flips.add(flipped)
        cropped += shape != (H, W)
    assert flips == {True, False}
    assert 0 < cropped < len(SEEDS), "augment crops with p=0.5: some but not all of 20 seeds"


def test_augment_photometric_changes_intensities_only(monkeypatch):
    """With the real jitter: same geometry as without it, values in 0..255, white still brighter than black."""
    img, boxes = _scene()
    real = [
        tuple(t.numpy() for t in augment(tf.constant(img), tf.constant(boxes), tf.constant(CLASSES), _seed(s)))
        for s in SEEDS
    ]
    monkeypatch.setattr(aug, "photometric", lambda image, seed: image)
    changed = 0
    for s, (out, out_boxes, out_classes) in zip(SEEDS, real):
        ref, ref_boxes, ref_classes = (
            t.numpy() for t in augment(tf.constant(img), tf.constant(boxes), tf.constant(CLASSES), _seed(s))
        )
        assert out.shape == ref.shape and out.dtype == np.float32
        np.testing.assert_array_equal(out_boxes, ref_boxes)
        np.testing.assert_array_equal(out_classes, ref_classes)
        assert out.min() >= 0.0 and out.max() <= 255.0
        white, black = out[ref > 127.5], out[ref <= 127.5]
        if white.size and black.size:
            assert white.min() > black.max() + 20, (s, white.min(), black.max())
            # so a threshold between the two levels finds the same regions as in the unjittered image
            _assert_pixels_match_boxes(out, out_boxes, threshold=(white.min() + black.max()) / 2)
        changed += not np.allclose(out, ref)
    assert changed >= len(SEEDS) // 2


# --- determinism ---------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["flip", "crop", "augment", "photometric"])
def test_stateless_same_seed_same_output_different_seeds_differ(op):
    img, boxes = _scene()

    def run(s):
        seed = _seed(s)
        if op == "flip":
            res = random_flip_horizontal(tf.constant(img), tf.constant(boxes), seed)
        elif op == "crop":
            res = random_crop(tf.constant(img), tf.constant(boxes), tf.constant(CLASSES), seed, p=1.0)
        elif op == "augment":
            res = augment(tf.constant(img), tf.constant(boxes), tf.constant(CLASSES), seed)
        else:
            res = (photometric(tf.constant(img), seed),)
        return [t.numpy() for t in res]

    def same(a, b):
        return all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))

    outputs = [run(s) for s in range(8)]
    for s in range(8):
        assert same(run(s), outputs[s]), f"seed {s} gave a different result on a second call"
    distinct = sum(not same(outputs[0], o) for o in outputs[1:])
    assert distinct >= 1, f"{op}: 8 different seeds all gave the same output"


@pytest.mark.parametrize("dtype", [tf.int32, tf.int64])
def test_traced_graph_matches_eager(dtype):
    """The dataset calls augment inside a traced graph with int64 seeds: same result as eager, same dtype.

    (int32 and int64 seeds of equal value give different streams: stateless_split depends on the dtype.)
    """
    img, boxes = _scene()
    f = tf.function(augment)
    for s in range(3):
        seed = tf.constant([s, 1234], dtype)
        a = [t.numpy() for t in augment(tf.constant(img), tf.constant(boxes), tf.constant(CLASSES), seed)]
        b = [t.numpy() for t in f(tf.constant(img), tf.constant(boxes), tf.constant(CLASSES), seed)]
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


# --- no boxes ------------------------------------------------------------------------------------
def test_zero_boxes():
    img, _ = _scene(rects=())
    boxes, classes = tf.zeros([0, 4], tf.float32), tf.zeros([0], tf.int32)
    for s in range(5):
        _, fb = random_flip_horizontal(tf.constant(img), boxes, _seed(s))
        assert fb.shape == (0, 4)
        for ci, cb, cc in (
            random_crop(tf.constant(img), boxes, classes, _seed(s), p=1.0),
            augment(tf.constant(img), boxes, classes, _seed(s)),
        ):
            assert ci.shape[-1] == 3 and ci.shape[0] >= 1 and ci.shape[1] >= 1
            assert cb.shape == (0, 4) and cb.dtype == tf.float32
            assert cc.shape == (0,) and cc.dtype == tf.int32


# --- photometric ---------------------------------------------------------------------------------
def test_photometric_range_shape_dtype():
    rng = np.random.default_rng(0)
    extremes = np.zeros((H, W, 3), np.float32)
    extremes[:, W // 2 :] = 255.0
    for img in (rng.uniform(0, 255, (H, W, 3)).astype(np.float32), extremes):
        for s in SEEDS:
            out = photometric(tf.constant(img), _seed(s)).numpy()
            assert out.shape == img.shape and out.dtype == np.float32
            assert out.min() >= 0.0 and out.max() <= 255.0
            assert np.isfinite(out).all()

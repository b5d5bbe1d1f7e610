"""model.box_coder: corner/center conversion and the encode/decode pair."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from model.box_coder import MAX_LOG_SCALE, center_to_corners, corners_to_center, decode, encode

VARIANCES = [0.1, 0.1, 0.2, 0.2]


def test_center_corner_round_trip_and_values():
    corners = np.array([[0.1, 0.2, 0.5, 0.8], [0.0, 0.0, 1.0, 1.0]], np.float32)
    centers = corners_to_center(corners).numpy()
    np.testing.assert_allclose(centers, [[0.3, 0.5, 0.4, 0.6], [0.5, 0.5, 1.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(center_to_corners(centers).numpy(), corners, atol=1e-6)


def test_encode_known_value():
    anchor = np.array([[0.4, 0.4, 0.6, 0.6]], np.float32)  # center (0.5, 0.5), h = w = 0.2
    box = np.array([[0.42, 0.38, 0.82, 0.58]], np.float32)  # center (0.62, 0.48), h 0.4, w 0.2
    expected = [(0.62 - 0.5) / 0.2 / 0.1, (0.48 - 0.5) / 0.2 / 0.1, math.log(2.0) / 0.2, 0.0]
    np.testing.assert_allclose(encode(box, anchor, VARIANCES).numpy(), [expected], atol=1e-5)


def test_encode_broadcasts_over_batch_and_degenerate_box_is_finite():
    anchors = np.array([[0.4, 0.4, 0.6, 0.6], [0.0, 0.0, 0.5, 0.5]], np.float32)
    boxes = np.zeros([3, 2, 4], np.float32)
    targets = encode(boxes, anchors, VARIANCES).numpy()
    assert targets.shape == (3, 2, 4) and np.isfinite(targets).all()


def test_decode_caps_huge_sizes():
    anchor = np.array([[0.4, 0.4, 0.6, 0.6]], np.float32)
    boxes = decode(np.array([[0.0, 0.0, 1e4, 1e4]], np.float32), anchor, VARIANCES).numpy()
    assert np.isfinite(boxes).all()
    np.testing.assert_allclose(boxes[0, 2] - boxes[0, 0], 0.2 * math.exp(MAX_LOG_SCALE), rtol=1e-5)


def _boxes(n):
    coord = st.floats(0.0, 1.0)
    size = st.floats(0.02, 1.0)
    return st.lists(st.tuples(coord, coord, size, size), min_size=n, max_size=n)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8).flatmap(lambda n: st.tuples(_boxes(n), _boxes(n))))
def test_encode_decode_identity(pair):
    boxes_c, anchors_c = (np.array(x, np.float32) for x in pair)  # (cy, cx, h, w)
    boxes, anchors = center_to_corners(boxes_c), center_to_corners(anchors_c)
    decoded = decode(encode(boxes, anchors, VARIANCES), anchors, VARIANCES)
    np.testing.assert_allclose(decoded.numpy(), boxes.numpy(), atol=1e-4)

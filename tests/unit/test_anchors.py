"""model.anchors: feature level sizes, scales, and the anchor order the detection head relies on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.anchors import anchors_per_cell, feature_map_sizes, generate_anchors, level_scales, num_anchors
from ssdflow.config import ModelConfig


@pytest.mark.parametrize(
    "size, extra, expected",
    [
        (320, 4, [20, 10, 5, 3, 2, 1]),
        (128, 4, [8, 4, 2, 1]),
        (96, 4, [6, 3, 2, 1]),
        (320, 2, [20, 10, 5, 3]),
        (352, 6, [22, 11, 6, 3, 2, 1]),
    ],
)
def test_feature_map_sizes(size, extra, expected):
    assert feature_map_sizes(size, extra) == expected


def test_level_scales_linear():
    assert level_scales(1, 0.2, 0.95) == [0.2]
    np.testing.assert_allclose(level_scales(4, 0.2, 0.8), [0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(level_scales(4, 0.1, 0.8, "geometric"), [0.1, 0.2, 0.4, 0.8])


def test_num_anchors_default_320():
    cfg = ModelConfig()
    assert anchors_per_cell(cfg.aspect_ratios) == 6
    assert num_anchors(cfg) == (400 + 100 + 25 + 9 + 4 + 1) * 6 == 3234
    anchors = generate_anchors(cfg).numpy()
    assert anchors.shape == (3234, 4) and anchors.dtype == np.float32


def _centers_hw(anchors):
    a = np.asarray(anchors, dtype=np.float64)
    return (a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2, a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]


def test_first_cell_centers_ratios_and_extra_square():
    cfg = ModelConfig()
    cy, cx, h, w = _centers_hw(generate_anchors(cfg).numpy()[:6])
    np.testing.assert_allclose(cy, 0.5 / 20, atol=1e-6)
    np.testing.assert_allclose(cx, 0.5 / 20, atol=1e-6)
    np.testing.assert_allclose(w[:5] / h[:5], cfg.aspect_ratios, rtol=1e-5)
    np.testing.assert_allclose(np.sqrt(w[:5] * h[:5]), cfg.first_scale, rtol=1e-5)  # each ratio at the level's scale
    scales = level_scales(6, cfg.first_scale, cfg.max_scale)
    np.testing.assert_allclose([h[5], w[5]], math.sqrt(scales[0] * scales[1]), rtol=1e-5)


def test_scales_increase_per_level_and_last_extra_uses_one():
    cfg = ModelConfig()
    anchors = generate_anchors(cfg).numpy()
    sizes = feature_map_sizes(cfg.image_size, cfg.extra_levels)
    offsets = np.cumsum([0] + [s * s * 6 for s in sizes])
    level_scale = []
    for k in range(len(sizes)):
        _, _, h, w = _centers_hw(anchors[offsets[k] : offsets[k + 1]])
        level_scale.append(np.sqrt(h[0] * w[0]))  # anchor 0: aspect ratio 1.0
    assert all(b > a for a, b in zip(level_scale, level_scale[1:]))
    np.testing.assert_allclose(level_scale, level_scales(len(sizes), cfg.first_scale, cfg.max_scale), rtol=1e-5)
    _, _, h, _ = _centers_hw(anchors[-1:])  # the very last anchor: extra square of the 1x1 level
    np.testing.assert_allclose(h, math.sqrt(cfg.max_scale * 1.0), rtol=1e-5)
    np.testing.assert_allclose(_centers_hw(anchors[-1:])[:2], [[0.5], [0.5]], atol=1e-6)


def test_order_matches_head_reshape():
    """Anchor (level 1, row i, col j, anchor a) sits at offset + (i*W + j)*A + a, like a reshaped [B,H,W,A*k] output."""
    cfg = ModelConfig(aspect_ratios=[1.0, 2.0, 0.5])
    anchors = generate_anchors(cfg).numpy()
    sizes = feature_map_sizes(cfg.image_size, cfg.extra_levels)
    A = anchors_per_cell(cfg.aspect_ratios)
    offset, W = sizes[0] ** 2 * A, sizes[1]
    scale = level_scales(len(sizes), cfg.first_scale, cfg.max_scale)[1]
    # Same layout as a head output: [H, W, A, 4] reshaped to [H*W*A, 4].
    grid = anchors[offset : offset + W * W * A].reshape(W, W, A, 4)
    for i, j, a in [(0, 0, 0), (0, 1, 0), (1, 0, 0), (3, 7, 1), (9, 2, 2), (9, 9, 3)]:
        index = offset + (i * W + j) * A + a
        np.testing.assert_array_equal(anchors[index], grid[i, j, a])
        cy, cx, h, w = _centers_hw(anchors[index : index + 1])
        np.testing.assert_allclose([cy[0], cx[0]], [(i + 0.5) / W, (j + 0.5) / W], atol=1e-6)
        if a < 3:
            np.testing.assert_allclose(w[0] / h[0], cfg.aspect_ratios[a], rtol=1e-5)
            np.testing.assert_allclose(math.sqrt(w[0] * h[0]), scale, rtol=1e-5)


def test_anchors_not_clipped():
    anchors = generate_anchors(ModelConfig()).numpy()
    assert anchors.min() < 0.0 and anchors.max() > 1.0


def test_stride_8_adds_the_finest_level_with_smaller_anchors():
    assert feature_map_sizes(320, 4, finest_stride=8) == [40, 20, 10, 5, 3, 2, 1]
    assert feature_map_sizes(128, 4, finest_stride=8) == [16, 8, 4, 2, 1]
    cfg = ModelConfig(finest_stride=8)
    assert (
        cfg.first_scale == 0.1
        and ModelConfig().first_scale == 0.2
        and ModelConfig(min_scale=0.3, finest_stride=8).first_scale == 0.3
    )
    anchors = generate_anchors(cfg).numpy()
    assert anchors.shape[0] == num_anchors(cfg) == (1600 + 400 + 100 + 25 + 9 + 4 + 1) * 6
    cy, cx, h, w = _centers_hw(anchors[:6])
    np.testing.assert_allclose([cy[0], cx[0]], [0.5 / 40, 0.5 / 40], atol=1e-6)
    np.testing.assert_allclose(
        np.sqrt(w[:5] * h[:5]), 0.1, rtol=1e-5
    )  # a 32 px object at 320 has an anchor of its size


def test_stride_8_anchors_match_small_boxes_by_iou():
    """A 24 px box at 320 px overlaps no stride-16 anchor at IoU 0.5, but does a stride-8 one."""
    import tensorflow as tf

    from model.matcher import iou

    box = tf.constant([[0.40, 0.40, 0.475, 0.475]])
    coarse = iou(box, generate_anchors(ModelConfig())).numpy().max()
    fine = iou(box, generate_anchors(ModelConfig(finest_stride=8))).numpy().max()
    assert coarse < 0.4 and fine >= 0.5, (coarse, fine)


def test_fitted_min_scale_follows_small_boxes_within_bounds():
    from model.anchors import fitted_min_scale

    large = np.linspace(0.3, 0.9, 50)
    assert fitted_min_scale(large, 320, 16) == 0.2 and fitted_min_scale(large, 320, 8) == 0.1  # the defaults
    small = np.linspace(0.03, 0.08, 100)  # 10th percentile 0.035
    assert fitted_min_scale(small, 320, 16) == pytest.approx(0.1)  # two stride-16 cells at 320 px
    assert fitted_min_scale(small, 320, 8) == pytest.approx(0.05)  # two stride-8 cells
    assert fitted_min_scale(small, 640, 8) == pytest.approx(0.035)  # the data's own size once the grid is fine enough
    assert fitted_min_scale(np.linspace(0.12, 0.5, 100), 320, 16) == pytest.approx(
        0.158, abs=1e-3
    )  # its 10th percentile
    assert fitted_min_scale([], 320, 16) == 0.2


def test_fitted_finest_stride_follows_the_small_boxes():
    from model.anchors import fitted_finest_stride

    assert fitted_finest_stride(np.linspace(0.3, 0.9, 50)) == 16  # raccoon-like: large objects
    assert fitted_finest_stride(np.linspace(0.02, 0.08, 50)) == 8  # the stress set: 2-8 % of the side
    assert fitted_finest_stride(np.r_[np.full(20, 0.05), np.full(80, 0.5)]) == 8  # a fifth small: they need stride 8
    assert fitted_finest_stride(np.r_[np.full(5, 0.05), np.full(95, 0.5)]) == 16  # a few small ones do not decide
    assert fitted_finest_stride([]) == 16


def test_a_minority_class_of_small_objects_decides_the_finest_level():
    """Issue 28: 7 % of the boxes small (one class), the rest large. The population's 10th percentile
    sits among the large boxes (stride 16, anchors of a tenth of the side); the smallest class's
    decides: stride 8 and anchors down to two stride-8 cells. A class with too few boxes to have a
    percentile does not decide; without enough boxes in any class, all boxes do."""
    from model.anchors import MIN_CLASS_BOXES, fitted_finest_stride, fitted_min_scale, smallest_class

    rng = np.random.default_rng(0)
    large = rng.uniform(0.10, 0.30, 186)
    small = rng.uniform(0.02, 0.08, 14)
    sides = np.r_[large, small]
    classes = np.r_[np.where(np.arange(186) % 2, 1, 2), np.full(14, 3)]
    assert fitted_finest_stride(sides) == 16  # the old rule: the population
    cls, of_class = smallest_class(sides, classes)
    assert cls == 3 and len(of_class) == 14
    assert fitted_finest_stride(of_class) == 8 and fitted_min_scale(of_class, 320, 8) == pytest.approx(0.05)
    few = np.r_[large, small[: MIN_CLASS_BOXES - 1]], np.r_[classes[:186], np.full(MIN_CLASS_BOXES - 1, 3)]
    assert smallest_class(*few)[0] in (1, 2)  # nine boxes are no percentile
    assert smallest_class(sides[:9], classes[:9]) == (None, pytest.approx(sides[:9]))  # no class has enough: all boxes


def test_training_fits_the_architecture_to_the_smallest_class_and_says_so():
    """anchor_fit.fit_anchors: the figures the model card prints; settings that fix the level win."""
    from model.run_record import _anchor_fit_text
    from model.anchor_fit import fit_anchors
    from ssdflow.config import TrainSettings
    from ssdflow.schema import LabelMap

    rng = np.random.default_rng(1)
    sides = np.r_[rng.uniform(0.10, 0.30, 186), rng.uniform(0.02, 0.08, 14)]
    classes = np.r_[np.where(np.arange(186) % 2, 1, 2), np.full(14, 3)]
    label_map = LabelMap({"circle": 1, "square": 2, "triangle": 3})
    fit = fit_anchors(sides, sides, classes, label_map, TrainSettings(image_size=320))  # square boxes
    assert (fit["finest_stride"], fit["min_scale"], fit["class"], fit["boxes"]) == (
        8,
        pytest.approx(0.05),
        "triangle",
        14,
    )
    # The smallest triangles are under the grid's finest anchors (79 % fitted): a refit of the ratios is
    # tried, and square boxes cluster at 1:1, which fits no more of them: the defaults stay.
    assert fit["aspect_ratios"] is None and fit["ratio_fit"]["same"] and not fit["ratio_fit"]["adopted"]
    assert 0.02 < fit["side_p10"] < fit["side_p50"] < 0.08
    text = _anchor_fit_text(fit)
    assert "class triangle's 14 training boxes" in text and "finest stride 8" in text
    assert "no other ratio fits more of them: their sizes" in text
    fixed = fit_anchors(
        sides, sides, classes, label_map, TrainSettings(image_size=320, finest_stride=16, min_scale=0.2)
    )
    assert fixed["finest_stride"] == 16 and fixed["min_scale"] is None  # the settings' own values apply


def test_shape_coverage_is_the_share_of_a_classs_boxes_an_anchor_shape_fits():
    """anchors.best_shape_iou / anchor_fit.shape_coverage: a box of an anchor's own shape fits it exactly;
    long thin boxes (10:1, beyond the 3:1 ratios) fit no anchor at IoU 0.5, and the class made of
    them says so in the model card."""
    from model.anchors import anchor_shapes, best_shape_iou
    from model.run_record import _anchor_fit_text
    from model.anchor_fit import shape_coverage
    from ssdflow.config import ModelConfig
    from ssdflow.schema import LabelMap

    cfg = ModelConfig(alpha=0.35, image_size=320, num_classes=2)
    shapes = anchor_shapes(cfg)
    assert len(shapes) == len(feature_map_sizes(320, cfg.extra_levels, cfg.finest_stride)) * anchors_per_cell(
        cfg.aspect_ratios
    )
    h, w = shapes[3]
    assert best_shape_iou([h], [w], shapes)[0] == pytest.approx(1.0)
    assert best_shape_iou([0.5 * h], [w], shapes)[0] < 1.0
    # 1:1 boxes of many sizes, and 10:1 ones (IoU 0.38 with a 3:1 anchor of the same area)
    sizes = np.linspace(0.2, 0.9, 20)  # within the anchor scales
    heights, widths = np.r_[sizes, sizes / np.sqrt(10)], np.r_[sizes, sizes * np.sqrt(10)]
    classes = np.r_[np.ones(20, int), np.full(20, 2)]
    coverage = shape_coverage(heights, widths, classes, LabelMap({"ball": 1, "pole": 2}), cfg)
    assert coverage["ball"] == 1.0 and coverage["pole"] < 0.5
    text = _anchor_fit_text(
        {
            "boxes": 20,
            "class": "ball",
            "side_p10": 0.1,
            "side_p50": 0.3,
            "finest_stride": 16,
            "min_scale": 0.2,
            "shape_coverage": coverage,
        }
    )
    assert "ball 100%" in text and f"pole {coverage['pole']:.0%}" in text


def test_aspect_ratios_are_refitted_only_for_boxes_the_defaults_miss():
    """anchors.fitted_aspect_ratios / anchor_fit.fit_aspect_ratios (YOLO's autoanchor for SSD's ratios):
    a class of long boxes (w/h 6-10, both ways) that no default ratio fits gets ratios of its own,
    weighted as much as the square majority's; the card says before and after. Square boxes keep the defaults,
    and ratios set in the settings are never refitted."""
    from model.anchors import fitted_aspect_ratios
    from model.run_record import _anchor_fit_text
    from model.anchor_fit import fit_anchors, shape_coverage
    from ssdflow.config import DEFAULT_ASPECT_RATIOS, ModelConfig, TrainSettings
    from ssdflow.schema import LabelMap

    rng = np.random.default_rng(3)
    square = rng.uniform(0.15, 0.5, 300)
    ratio = np.exp(rng.uniform(np.log(6), np.log(10), 30)) ** np.where(
        np.arange(30) % 2, 1, -1
    )  # horizontal and vertical
    side = rng.uniform(0.15, 0.4, 30)
    heights, widths = np.r_[square, side / np.sqrt(ratio)], np.r_[square, side * np.sqrt(ratio)]
    classes = np.r_[np.ones(300, int), np.full(30, 2)]
    label_map = LabelMap({"box": 1, "bar": 2})

    fit = fit_anchors(heights, widths, classes, label_map, TrainSettings(image_size=320))
    cfg = TrainSettings(image_size=320).model(
        2, fit["finest_stride"], fit["min_scale"]
    )  # the scales the ratios are chosen at
    ratios = fitted_aspect_ratios(heights, widths, classes, cfg)
    assert len(ratios) == 5 and ratios == sorted(ratios)
    assert (
        ratios[0] < 1 / 5 and ratios[-1] > 5 and any(0.7 < r < 1.4 for r in ratios)
    )  # both bars' ways, and the squares
    # Deterministic: the same boxes, the same ratios
    assert fitted_aspect_ratios(heights, widths, classes, cfg) == ratios

    assert fit["aspect_ratios"] == ratios and fit["ratio_fit"]["adopted"] and not fit["ratio_fit"]["same"]
    assert fit["ratio_fit"]["worst_share_before"] < 0.5 <= 0.9 <= fit["ratio_fit"]["worst_share_after"]
    refitted = TrainSettings(image_size=320).model(2, fit["finest_stride"], fit["min_scale"], fit["aspect_ratios"])
    assert refitted.aspect_ratios == ratios
    assert min(shape_coverage(heights, widths, classes, label_map, refitted).values()) >= 0.9
    text = _anchor_fit_text(fit)
    assert "- Anchor aspect ratios: the defaults fitted" in text and ": adopted" in text and f"{ratios[-1]:g}" in text

    # Settings win: ratios given are used as given, without a refit
    mine = TrainSettings(image_size=320, aspect_ratios=[1.0, 2.0, 0.5])
    assert fit_anchors(heights, widths, classes, label_map, mine)["aspect_ratios"] is None
    assert mine.model(2).aspect_ratios == [1.0, 2.0, 0.5]
    assert TrainSettings().model(2).aspect_ratios == list(DEFAULT_ASPECT_RATIOS) == ModelConfig().aspect_ratios


def test_several_scales_per_level_put_every_ratio_between_two_levels_scales():
    """scales_per_level n (RetinaNet's octave scales, spread from one level's scale to the next's): each
    cell has every ratio at n scales, ratios innermost, and no extra square; a long box whose size sits
    between two levels' scales, which no anchor of the SSD layout fits, then has one of its shape."""
    from model.anchors import anchor_shapes, best_shape_iou

    one, two = ModelConfig(), ModelConfig(scales_per_level=2)
    assert anchors_per_cell(two.aspect_ratios, 2) == 10
    anchors = generate_anchors(two).numpy()
    assert anchors.shape == (num_anchors(two), 4) == ((400 + 100 + 25 + 9 + 4 + 1) * 10, 4)
    _, _, h, w = _centers_hw(anchors[:10])
    s0, s1 = level_scales(6, two.first_scale, two.max_scale)[:2]
    np.testing.assert_allclose(w / h, list(two.aspect_ratios) * 2, rtol=1e-5)
    np.testing.assert_allclose(np.sqrt(w * h), [s0] * 5 + [math.sqrt(s0 * s1)] * 5, rtol=1e-5)
    # a 3:1 box of side sqrt(s0 * s1) (0.32 of the image): SSD's layout has it only at 0.2 or 0.44
    side = math.sqrt(s0 * s1)
    box_h, box_w = [side / math.sqrt(3)], [side * math.sqrt(3)]
    assert best_shape_iou(box_h, box_w, anchor_shapes(one))[0] < 0.7
    assert best_shape_iou(box_h, box_w, anchor_shapes(two))[0] == pytest.approx(1.0)


def test_best_shape_iou_in_chunks_equals_all_at_once():
    """best_shape_iou walks the boxes in chunks (millions of boxes in a few MB): the same figures."""
    from model.anchors import anchor_shapes, best_shape_iou

    rng = np.random.default_rng(1)
    h, w = rng.uniform(0.01, 1, 1000), rng.uniform(0.01, 1, 1000)
    shapes = anchor_shapes(ModelConfig())
    np.testing.assert_array_equal(best_shape_iou(h, w, shapes, chunk=7), best_shape_iou(h, w, shapes))
    assert best_shape_iou([], [], shapes).shape == (0,)

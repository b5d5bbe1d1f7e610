"""SSD anchor boxes: one grid of anchors per feature level, in the order the detection head emits them.

Boxes are normalized corners [ymin, xmin, ymax, xmax], float32. Anchors are not clipped to the image:
a clipped anchor would no longer have the aspect ratio and scale that the head's outputs are relative to.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from ssdflow.config import DEFAULT_FIRST_SCALE, ModelConfig

BACKBONE_STRIDES = (8, 16, 32)  # MobileNetV2's block_6_expand_relu, block_13_expand_relu and out_relu


def feature_map_sizes(image_size: int, extra_levels: int, finest_stride: int = 16) -> list[int]:
    """Side length of each square feature level, finest first.

    The backbone gives ceil(S/stride) for its strides from ``finest_stride`` to 32 ('same' padding
    rounds up); each extra level halves the previous one (rounding up) and the levels stop after the
    first 1x1 map, so there are at most `extra_levels` extra levels and never two 1x1 levels.
    """
    sizes = [math.ceil(image_size / stride) for stride in BACKBONE_STRIDES if stride >= finest_stride]
    for _ in range(extra_levels):
        if sizes[-1] == 1:
            break
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


def level_scales(num_levels: int, min_scale: float, max_scale: float, spacing: str = "linear") -> list[float]:
    """Anchor scale (fraction of the image side) of each level from min_scale to max_scale: "linear"
    (the SSD paper's, the TF OD API's SSD) or "geometric" (a constant factor between levels, as
    FPN's and RetinaNet's anchors, which double with the stride). Linear steps are widest at the
    fine levels: from 0.09 to 0.95 over 7 levels the first step is 2.5x, the last 1.2x, and a box
    between two levels' scales overlaps neither at IoU 0.5 unless it is square (the extra anchor)."""
    if num_levels == 1:
        return [float(min_scale)]
    if spacing == "geometric":
        return [float(min_scale * (max_scale / min_scale) ** (k / (num_levels - 1))) for k in range(num_levels)]
    step = (max_scale - min_scale) / (num_levels - 1)
    return [float(min_scale + step * k) for k in range(num_levels)]


SMALL_OBJECT_SIDE = 0.1  # below this 10th-percentile box side, FPN-lite's stride-8 level pays (docs/benchmarks.md)


def fitted_finest_stride(sides, quantile: float = 0.1) -> int:
    """The finest feature level for a dataset: 8 (FPN-lite) when a tenth of its boxes are smaller
    than ``SMALL_OBJECT_SIDE`` of the image side, else 16 (SSDLite).

    Measured: on small-object sets FPN-lite lifted mAP@.5 0.58 → 0.84 and 0.63 → 0.77; on raccoon
    (10th-percentile side 0.41) it cost epochs and scored 0.76 against SSDLite's 0.83.
    """
    if len(sides) == 0:
        return 16
    return 8 if float(np.quantile(np.asarray(sides, np.float64), quantile)) < SMALL_OBJECT_SIDE else 16


def fitted_min_scale(sides, image_size: int, finest_stride: int, quantile: float = 0.1) -> float:
    """The finest level's anchor scale for a dataset: its boxes' ``quantile`` side, within bounds.

    ``sides``: box sides as fractions of the image (sqrt(h * w) of ``dataset.box_shapes``). The upper bound is the
    architecture's default (0.2 at stride 16, 0.1 at stride 8: SSD's and FPNLite's 4x the stride at
    320 px), so datasets of mid-sized and large objects keep the usual anchors; the lower bound is
    two cells of the finest level, below which anchors would be sparser than the objects they must
    overlap. Small objects thus get anchors of their own size as far as the grid allows, instead of
    being reachable only by a forced match to an anchor many times larger.
    """
    default = DEFAULT_FIRST_SCALE[finest_stride]
    lowest = 2.0 * finest_stride / image_size
    if len(sides) == 0:
        return default
    return float(np.clip(np.quantile(np.asarray(sides, np.float64), quantile), min(lowest, default), default))


MIN_CLASS_BOXES = 10  # a class with fewer training boxes does not decide the architecture (its percentiles are noise)


def smallest_class(
    sides, classes, quantile: float = 0.1, min_boxes: int = MIN_CLASS_BOXES
) -> tuple[int | None, np.ndarray]:
    """The class whose boxes are smallest and the sides of its boxes: (class id, [K] sides).

    ``sides`` [M] and ``classes`` [M] (sqrt(h * w) of ``dataset.box_shapes``). The class with the lowest
    ``quantile`` side among those with at least ``min_boxes`` boxes decides, so that a minority class
    of small objects among large ones gets a level and anchors of its size (the percentile of all
    boxes would sit among the large ones). (None, all sides) when no class has enough boxes.
    """
    sides, classes = np.asarray(sides, np.float64), np.asarray(classes)
    best: tuple[float, int] | None = None
    for c in np.unique(classes):
        of_class = sides[classes == c]
        if len(of_class) >= min_boxes:
            q = float(np.quantile(of_class, quantile))
            best = min(best, (q, int(c))) if best else (q, int(c))
    if best is None:
        return None, sides
    return best[1], sides[classes == best[1]]


# The aspect ratios (w/h) fitted_aspect_ratios chooses from: log-spaced from 1:12 to 12:1, 1:1 among them.
RATIO_CANDIDATES = tuple(float(r) for r in np.exp(np.linspace(-math.log(12.0), math.log(12.0), 61)))
# Boxes per class that choosing the ratios looks at (a seeded sample above it; each class's share is
# then within about 2 %): the table of candidate fits stays under 50 MB for a hundred classes.
MAX_FIT_BOXES_PER_CLASS = 1_000


def rounded_ratio(ratio: float) -> float:
    """An aspect ratio to 3 significant digits: how chosen ratios are written and compared."""
    return float(f"{ratio:.3g}")


def fitted_aspect_ratios(heights, widths, classes, cfg: ModelConfig, pos_iou: float = 0.5) -> list[float]:
    """As many anchor aspect ratios (w/h) as ``cfg`` has, chosen for the training boxes: one at a
    time from ``RATIO_CANDIDATES``, the one that most raises the share of boxes some anchor shape
    fits at IoU >= ``pos_iou`` (``best_shape_iou`` over ``cfg``'s scales), averaged over the classes
    so that a minority class's shapes count as much as the majority's; ties (once every box a ratio
    can reach is fitted) go to the highest mean best IoU. When no candidate raises either, the
    remaining places keep ``cfg``'s own ratios (those not chosen yet, in order). Returned sorted, 3
    significant digits.

    YOLOv5's autoanchor seeds anchors by k-means and then evolves them for this same figure (its
    "best possible recall"); with the scales fixed by the levels, the ratios are one dimension and a
    greedy pass over a fine grid optimizes the figure directly, deterministically.
    """
    heights, widths = np.asarray(heights, np.float64), np.asarray(widths, np.float64)
    classes = np.asarray(classes)
    rng = np.random.default_rng(0)
    keep = np.concatenate(
        [rng.permutation(np.flatnonzero(classes == c))[:MAX_FIT_BOXES_PER_CLASS] for c in np.unique(classes)]
    )
    heights, widths, classes = heights[keep], widths[keep], classes[keep]
    _, index, counts = np.unique(classes, return_inverse=True, return_counts=True)
    weights = 1.0 / (counts[index] * len(counts))  # each class sums to 1 / classes
    # best[i, m]: box m's best IoU with the shapes of candidate i (over every level's scale; the
    # extra square anchor of each level, which every ratio set has, included)
    best = np.stack(
        [
            best_shape_iou(heights, widths, anchor_shapes(cfg.model_copy(update={"aspect_ratios": [r]})))
            for r in RATIO_CANDIDATES
        ]
    )
    chosen: list[float] = []
    current = np.zeros(len(heights))
    for _ in range(len(cfg.aspect_ratios)):
        merged = np.maximum(current[None, :], best)
        gain = merged @ weights - current @ weights  # the mean best IoU's rise; the share fitted rises only with it
        fitted = (merged >= pos_iou) @ weights
        pick = int(np.lexsort((gain, fitted))[-1])  # the most fitted; among equals, the tightest
        if gain[pick] <= 1e-9:  # nothing left to gain: the candidates chosen already hold every box's best
            break
        chosen.append(rounded_ratio(RATIO_CANDIDATES[pick]))
        current = merged[pick]
    rest = [r for r in map(rounded_ratio, cfg.aspect_ratios) if r not in chosen]
    return sorted(chosen + rest[: len(cfg.aspect_ratios) - len(chosen)])


def anchors_per_cell(aspect_ratios: list[float], scales_per_level: int = 1) -> int:
    """Anchors at each cell: one per aspect ratio plus one extra square anchor between this and the next
    scale (SSD's); with several scales per level, one per aspect ratio and scale (no extra square)."""
    if scales_per_level == 1:
        return len(aspect_ratios) + 1
    return len(aspect_ratios) * scales_per_level


def _cell_anchor_sizes(
    scale: float, next_scale: float, aspect_ratios: list[float], scales_per_level: int = 1
) -> list[tuple[float, float]]:
    """(h, w) of a cell's anchors, in head order.

    One scale per level (SSD's): [ratios..., extra square at sqrt(s_k * s_{k+1})]. With n scales per
    level (RetinaNet's octave scales, spread between this level's scale and the next's instead of over
    an octave): every ratio at s_k * (s_{k+1} / s_k) ** (j / n) for j = 0 … n-1, scale by scale; the
    extra square is then the ratio-1 anchor of j = n/2 or close to it, so it is left out.
    """
    if scales_per_level == 1:
        sizes = [(scale / math.sqrt(r), scale * math.sqrt(r)) for r in aspect_ratios]
        extra = math.sqrt(scale * next_scale)
        sizes.append((extra, extra))
        return sizes
    scales = [scale * (next_scale / scale) ** (j / scales_per_level) for j in range(scales_per_level)]
    return [(s / math.sqrt(r), s * math.sqrt(r)) for s in scales for r in aspect_ratios]


def _level_anchors(size: int, cell_sizes: list[tuple[float, float]]) -> tf.Tensor:
    """Anchors of one size x size level: [size * size * A, 4] corners, cells row-major, a cell's A anchors consecutive."""
    centers_1d = (tf.range(size, dtype=tf.float32) + 0.5) / size
    cy, cx = tf.meshgrid(centers_1d, centers_1d, indexing="ij")  # [H, W] each
    centers = tf.stack([cy, cx], axis=-1)[:, :, tf.newaxis, :]  # [H, W, 1, 2]
    half = tf.constant(cell_sizes, dtype=tf.float32) / 2.0  # [A, 2] (h/2, w/2)
    boxes = tf.concat([centers - half, centers + half], axis=-1)  # [H, W, A, 4]
    return tf.reshape(boxes, [-1, 4])


def generate_anchors(cfg: ModelConfig) -> tf.Tensor:
    """All anchors of the model: [N, 4] normalized corners [ymin, xmin, ymax, xmax], float32.

    Order: level by level (finest first), cells row-major (y then x), a cell's anchors consecutive as
    [aspect_ratios..., extra square] (several scales per level: the ratios at each scale in turn).
    This is the order a head gets by reshaping each level's
    [B, H, W, A*k] conv output to [B, H*W*A, k] and concatenating the levels.
    Anchor of aspect ratio r = w/h at scale s: w = s*sqrt(r), h = s/sqrt(r).
    """
    return tf.concat([_level_anchors(size, cell_sizes) for size, cell_sizes in _levels(cfg)], axis=0)


def _levels(cfg: ModelConfig) -> list[tuple[int, list[tuple[float, float]]]]:
    """Per feature level, finest first: (its side in cells, (h, w) of a cell's anchors in head order)."""
    sizes = feature_map_sizes(cfg.image_size, cfg.extra_levels, cfg.finest_stride)
    scales = level_scales(len(sizes), cfg.first_scale, cfg.max_scale, cfg.scale_spacing)
    next_scales = scales[1:] + [1.0]
    return [
        (size, _cell_anchor_sizes(s, s_next, list(cfg.aspect_ratios), cfg.scales_per_level))
        for size, s, s_next in zip(sizes, scales, next_scales)
    ]


class AnchorLevels(NamedTuple):
    """How generate_anchors' [N] anchors split into levels: ``counts`` per level, finest first, and
    ``per_cell`` anchors at each cell (consecutive)."""

    counts: tuple[int, ...]
    per_cell: int


def anchor_levels(cfg: ModelConfig) -> AnchorLevels:
    """The model's AnchorLevels."""
    per_cell = anchors_per_cell(list(cfg.aspect_ratios), cfg.scales_per_level)
    sizes = feature_map_sizes(cfg.image_size, cfg.extra_levels, cfg.finest_stride)
    return AnchorLevels(tuple(size * size * per_cell for size in sizes), per_cell)


def anchor_shapes(cfg: ModelConfig) -> np.ndarray:
    """Every anchor shape of the model, whatever its cell: [K, 2] (h, w) as fractions of the image side,
    level by level as generate_anchors makes them."""
    return np.asarray([hw for _, cell_sizes in _levels(cfg) for hw in cell_sizes], np.float64)


def best_shape_iou(heights, widths, shapes: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Per box, the IoU with the anchor shape that fits it best when both share a centre: [M].

    heights, widths [M] (fractions of the image side); shapes [K, 2] (anchor_shapes). It bounds what
    the matcher can give a box from shape alone (a grid cell's centre seldom sits on the box's), as
    YOLO's autoanchor bounds its best possible recall: a box below the matcher's positive IoU here is
    reachable only by its forced match, whatever the grid. ``chunk`` boxes at a time, so a dataset of
    millions of boxes needs a few MB, not an [M, K] table.
    """
    h_all, w_all = np.asarray(heights, np.float64), np.asarray(widths, np.float64)
    ah, aw = shapes[None, :, 0], shapes[None, :, 1]
    out = np.zeros(len(h_all))
    for start in range(0, len(h_all), chunk):
        h, w = h_all[start : start + chunk, None], w_all[start : start + chunk, None]
        inter = np.minimum(h, ah) * np.minimum(w, aw)
        out[start : start + chunk] = (inter / np.maximum(h * w + ah * aw - inter, 1e-12)).max(axis=1, initial=0.0)
    return out


def num_anchors(cfg: ModelConfig) -> int:
    """N, the number of anchors generate_anchors(cfg) returns (and the head predicts)."""
    return sum(anchor_levels(cfg).counts)

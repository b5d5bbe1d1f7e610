"""Anchors fitted to the training boxes when the settings leave them open: the finest level and its
scale from the smallest class, aspect ratios from the boxes' shapes (YOLO's autoanchor, for SSD)."""

from __future__ import annotations

import numpy as np

from model.anchors import (
    anchor_shapes,
    best_shape_iou,
    fitted_aspect_ratios,
    fitted_finest_stride,
    fitted_min_scale,
    rounded_ratio,
    smallest_class,
)


def fit_anchors(heights, widths, classes, label_map, cfg) -> dict:
    """The finest feature level and its anchor scale, fitted to the class of smallest boxes (at least
    ``anchors.MIN_CLASS_BOXES`` of them): a minority class of small objects among large ones decides,
    where the population's percentile would sit among the large ones; then the aspect ratios
    (fit_aspect_ratios). The figures behind the choices are returned for the model card:
    ``{"finest_stride", "min_scale", "class", "boxes", "side_p10", "side_p50", "aspect_ratios", ...}``
    (``class`` None: no class had enough boxes, all boxes decided; ``aspect_ratios`` None: the
    settings' or the defaults). heights, widths, classes: the training boxes' (``dataset.box_shapes``)."""
    sides = np.sqrt(np.asarray(heights, np.float64) * np.asarray(widths, np.float64))
    class_id, of_class = smallest_class(sides, classes)
    stride = cfg.finest_stride or fitted_finest_stride(of_class)
    names = {v: k for k, v in label_map.items()}
    fit = {
        "finest_stride": stride,
        "min_scale": None if cfg.min_scale else fitted_min_scale(of_class, cfg.image_size, stride),
        "class": None if class_id is None else names.get(class_id, str(class_id)),
        "boxes": int(len(of_class)),
        "side_p10": round(float(np.quantile(of_class, 0.1)), 4) if len(of_class) else None,
        "side_p50": round(float(np.quantile(of_class, 0.5)), 4) if len(of_class) else None,
        "aspect_ratios": None,
    }
    if cfg.aspect_ratios is None:
        fit.update(
            fit_aspect_ratios(
                heights,
                widths,
                classes,
                label_map,
                cfg.model(len(label_map), fitted_stride=stride, fitted_min_scale=fit["min_scale"]),
            )
        )
    return fit


POOR_SHAPE_COVERAGE = 0.9  # below this share, the train header names the class (YOLO's autoanchor refits below 0.98)


def shape_coverage(heights, widths, classes, label_map, model_cfg, pos_iou: float = 0.5) -> dict[str, float]:
    """Per class, the share of its training boxes that some anchor shape of ``model_cfg`` overlaps
    with IoU >= ``pos_iou`` (the matcher's positive threshold) when centred on the box
    (``anchors.best_shape_iou``): near 1 when the aspect ratios and scales suit the class's boxes; a
    low share says the class's boxes get their anchors mostly by forced matches."""
    best = best_shape_iou(heights, widths, anchor_shapes(model_cfg))
    classes = np.asarray(classes)
    return {
        name: round(float(np.mean(best[classes == i] >= pos_iou)), 3)
        for name, i in label_map.by_id()
        if np.any(classes == i)
    }


def fit_aspect_ratios(heights, widths, classes, label_map, model_cfg) -> dict:
    """YOLO's autoanchor for SSD's aspect ratios: when some class has under ``POOR_SHAPE_COVERAGE`` of
    its boxes fitted by an anchor shape of ``model_cfg`` (shape_coverage), as many ratios as it has,
    chosen for the boxes (``anchors.fitted_aspect_ratios``), replace them if that raises the worst
    class's share; else they stay. Returns ``{"aspect_ratios": the new ratios or None}`` and, when a
    refit was tried, the worst class's share before and after (``ratio_fit``) for the model card."""
    before = shape_coverage(heights, widths, classes, label_map, model_cfg)
    worst = min(before.values(), default=1.0)
    if worst >= POOR_SHAPE_COVERAGE:
        return {"aspect_ratios": None}
    ratios = fitted_aspect_ratios(heights, widths, classes, model_cfg)
    after = shape_coverage(heights, widths, classes, label_map, model_cfg.model_copy(update={"aspect_ratios": ratios}))
    refit = min(after.values()) > worst
    return {
        "aspect_ratios": ratios if refit else None,
        "ratio_fit": {
            "chosen": ratios,
            "adopted": refit,
            "worst_share_before": worst,
            "worst_share_after": min(after.values()),
            # no other ratio fits a box better: the boxes' sizes, not their shapes, limit the share
            "same": ratios == sorted(map(rounded_ratio, model_cfg.aspect_ratios)),
        },
    }

"""Per-class score thresholds calibrated on the val split.

One global score threshold serves no class well: a class the model scores low but precisely loses
most of its boxes, a noisy class floods the output. After COCO evaluation, each class gets the
threshold that maximizes its F1 at IoU 0.5 on the val split (or, with a target precision, the
lowest threshold whose precision reaches it: the most recall at that precision). Scoring applies
them (``--score-threshold auto``); the model card shows them with their precision and recall.

Counts come from ``COCOeval.evalImgs`` (IoU 0.5, area "all", at most 100 detections per image),
so a detection matched to an ignored ("difficult") ground truth is neither right nor wrong, as in
the mAP beside it. No TensorFlow here.
"""

from __future__ import annotations

import numpy as np


def _operating_points(ev, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """For category index ``k``: unique score thresholds (descending) and, for each, the true and
    false positives among the detections scoring at least that; and the number of positives."""
    n_areas, n_images = len(ev.params.areaRng), len(ev.params.imgIds)
    entries = [
        e for e in ev.evalImgs[k * n_areas * n_images : (k * n_areas + 1) * n_images] if e is not None
    ]  # area "all"
    max_det = ev.params.maxDets[-1]
    scores = np.concatenate([np.asarray(e["dtScores"][:max_det], dtype=np.float64) for e in entries] or [np.zeros(0)])
    matched = np.concatenate([np.asarray(e["dtMatches"][0, :max_det]) > 0 for e in entries] or [np.zeros(0, bool)])
    ignored = np.concatenate(
        [np.asarray(e["dtIgnore"][0, :max_det]).astype(bool) for e in entries] or [np.zeros(0, bool)]
    )
    positives = int(sum(int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)) for e in entries))
    order = np.argsort(-scores, kind="mergesort")
    scores, matched, ignored = scores[order], matched[order], ignored[order]
    tp = np.cumsum(matched & ~ignored)
    fp = np.cumsum(~matched & ~ignored)
    last_of_each_score = np.r_[scores[1:] != scores[:-1], True] if len(scores) else np.zeros(0, bool)
    return scores[last_of_each_score], tp[last_of_each_score], fp[last_of_each_score], positives


def _prf(tp, fp, positives):
    precision = np.divide(tp, tp + fp, out=np.zeros(len(tp)), where=(tp + fp) > 0)
    recall = tp / positives if positives else np.zeros(len(tp))
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(tp)), where=(precision + recall) > 0)
    return precision, recall, f1


def _floor4(threshold: float) -> float:
    """Rounded down to 4 decimals (as scores are written), so the detection at the threshold stays kept."""
    return float(np.floor(float(threshold) * 1e4 + 1e-9) / 1e4)


def _point(threshold, precision, recall, f1, positives) -> dict:
    return {
        "threshold": None if threshold is None else _floor4(threshold),
        "precision": round(float(precision), 4),
        "recall": round(float(recall), 4),
        "f1": round(float(f1), 4),
        "val_objects": positives,
    }


def calibrate(ev, names_by_id: dict[int, str], target_precision: float | None = None) -> dict:
    """Per-class thresholds from an evaluated and accumulated ``COCOeval``.

    Returns ``{"target": "max_f1" | "precision>=P", "per_class": {name: {threshold, precision,
    recall, f1, val_objects}}, "global": {...}}``. A class without val objects or detections gets
    threshold None (scoring then falls back to a global one). ``global`` is the best single
    threshold for comparison: the one maximizing the mean F1 over the classes, with each class's
    F1 at it (calibrated F1 is never below it, class by class, on the split it was picked on).
    """
    per_class, curves = {}, {}
    for k, cid in enumerate(ev.params.catIds):
        name = names_by_id[int(cid)]
        thresholds, tp, fp, positives = _operating_points(ev, k)
        precision, recall, f1 = _prf(tp, fp, positives)
        curves[name] = (thresholds, tp, fp, positives)
        if not positives or not len(thresholds):
            per_class[name] = _point(None, 0, 0, 0, positives)
            continue
        if target_precision is None:
            i = int(np.argmax(f1))  # the first maximum: the highest threshold among equals
        else:
            reaching = np.flatnonzero(precision >= target_precision)
            i = int(reaching[-1]) if len(reaching) else 0  # else the strictest threshold, reported as missing it
        per_class[name] = _point(thresholds[i], precision[i], recall[i], f1[i], positives)
    return {
        "target": "max_f1" if target_precision is None else f"precision>={target_precision:g}",
        "per_class": per_class,
        "global": _best_global(curves),
    }


def _f1_at(candidates: np.ndarray, curve) -> np.ndarray:
    """A class's F1 when it keeps the detections scoring at least each candidate threshold."""
    thresholds, tp, fp, positives = curve
    i = np.searchsorted(-thresholds, -candidates, side="right") - 1  # last operating point >= candidate
    if not positives or not len(thresholds):
        return np.zeros(len(candidates))
    kept = i >= 0
    f1 = np.zeros(len(candidates))
    f1[kept] = _prf(tp[i[kept]], fp[i[kept]], positives)[2]
    return f1


def _best_global(curves: dict) -> dict:
    scored = {n: c for n, c in curves.items() if c[3] and len(c[0])}
    if not scored:
        return {"threshold": None, "per_class_f1": {n: 0.0 for n in curves}}
    candidates = np.unique(np.concatenate([c[0] for c in scored.values()]))[::-1]  # highest first
    mean = np.mean([_f1_at(candidates, c) for c in scored.values()], axis=0)
    best = candidates[int(np.argmax(mean))]  # the first maximum: ties keep the stricter threshold
    return {
        "threshold": _floor4(best),
        "per_class_f1": {n: round(float(_f1_at(np.array([best]), c)[0]), 4) for n, c in curves.items()},
    }


def thresholds_by_id(calibration: dict | None, label_map: dict[str, int]) -> dict[int, float]:
    """``{class id: threshold}`` for the classes that got one (what the exported model stores)."""
    if not calibration:
        return {}
    return {
        int(label_map[name]): float(p["threshold"])
        for name, p in calibration["per_class"].items()
        if p["threshold"] is not None and name in label_map
    }

"""One labelled image → one tf.Example: the per-image work of ingest, free of Beam.

The Beam job and the benchmark's plain loop both call :func:`encode_image`, so the benchmark
compares orchestration, not two different implementations.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping

from beam_jobs import records as R
from beam_jobs.images import ImageRejected, normalize_image, orient_box
from ssdflow import schema
from ssdflow.config import DEFAULT_CLIP_TOLERANCE, DEFAULT_MAX_PIXELS


@dataclass
class Encoded:
    """The outcome for one image: a serialized Example (or None when the image is rejected)."""

    key: str
    source: str
    sha256: str  # of the input bytes: what duplicate detection compares
    example: bytes | None
    rejections: list[R.Rejection] = field(default_factory=list)  # the image's own and its boxes'
    class_counts: Counter = field(default_factory=Counter)  # boxes written per class name
    stats: Counter = field(default_factory=Counter)  # boxes_clipped, images_converted, ...

    @property
    def boxes_written(self) -> int:
        return sum(self.class_counts.values())


def encode_image(
    record: R.LabelRecord,
    source: str,
    data: bytes,
    label_map: Mapping[str, int],
    *,
    label_map_fixed: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    clip_tolerance: float = DEFAULT_CLIP_TOLERANCE,
) -> Encoded:
    """Validates the image and its boxes and serializes the result.

    Args:
      record: what the label file says (boxes in pixels, or normalized for YOLO).
      source: the image URI, used in rejection lines.
      data: the image file's bytes.
      label_map: class name → id. Names missing from it are rejected when ``label_map_fixed``
        (the user gave --label-map); otherwise the map was built from all labels and has them.
    """
    sha = hashlib.sha256(data).hexdigest()
    out = Encoded(key=record.key, source=source, sha256=sha, example=None, rejections=list(record.rejections))
    try:
        img = normalize_image(data, max_pixels=max_pixels)
    except ImageRejected as e:
        out.rejections.insert(0, R.Rejection(source, e.reason, e.detail, R.IMAGE))
        return out
    if img.converted:
        out.stats["images_converted"] += 1
    if img.orientation != 1:
        out.stats["images_exif_rotated"] += 1

    ref_w, ref_h, orientation = _label_frame(record, img)
    if record.width is not None and record.height is not None and (record.width, record.height) != (ref_w, ref_h):
        out.stats["label_size_corrected"] += 1

    cols: dict[str, list] = {k: [] for k in ("xmin", "ymin", "xmax", "ymax", "text", "label", "difficult")}
    for box in record.boxes:
        where = box.source or record.source
        if box.label not in label_map:
            why = "not in --label-map" if label_map_fixed else "not in the label map"
            out.rejections.append(R.Rejection(where, R.UNKNOWN_CLASS, f"class {box.label!r} {why}", R.BOX))
            continue
        coords = (box.xmin, box.ymin, box.xmax, box.ymax)
        if not box.normalized:
            coords = (box.xmin / ref_w, box.ymin / ref_h, box.xmax / ref_w, box.ymax / ref_h)
        checked = _check_box(coords, clip_tolerance)
        if isinstance(checked, R.Rejection):
            out.rejections.append(R.Rejection(where, checked.reason, f"{checked.detail}; box {_fmt(box)}", R.BOX))
            continue
        clipped, was_clipped = checked
        out.stats["boxes_clipped"] += was_clipped
        # YOLO's normalized boxes refer to the displayed image, as Ultralytics reads them.
        x0, y0, x1, y1 = orient_box(clipped, 1 if box.normalized else orientation)
        cols["xmin"].append(x0)
        cols["ymin"].append(y0)
        cols["xmax"].append(x1)
        cols["ymax"].append(y1)
        cols["text"].append(box.label)
        cols["label"].append(label_map[box.label])
        cols["difficult"].append(int(box.difficult))
        out.class_counts[box.label] += 1

    name = source.rsplit("/", 1)[-1]
    out.example = schema.serialize_example(
        schema.ExampleFields(
            encoded=img.jpeg,
            image_format="jpeg",
            height=img.height,
            width=img.width,
            filename=name,
            source_id=record.key,
            sha256=hashlib.sha256(img.jpeg).hexdigest() if img.converted else sha,
            xmin=cols["xmin"],
            ymin=cols["ymin"],
            xmax=cols["xmax"],
            ymax=cols["ymax"],
            class_text=cols["text"],
            class_label=cols["label"],
            difficult=cols["difficult"],
        )
    )
    return out


def _label_frame(record: R.LabelRecord, img) -> tuple[int, int, int]:
    """(width, height, EXIF orientation) of the image the labeler drew pixel boxes on.

    If the label's size matches the displayed (rotated) size but not the stored one, the boxes were
    drawn on the displayed image (orientation 1: nothing to turn); otherwise they are on the stored
    pixels and move with the EXIF rotation."""
    labelled_on_displayed = (
        img.orientation in (5, 6, 7, 8)
        and (record.width, record.height) == (img.width, img.height)
        and (img.width, img.height) != (img.stored_width, img.stored_height)
    )
    if labelled_on_displayed:
        return img.width, img.height, 1
    return img.stored_width, img.stored_height, img.orientation


def _check_box(coords, tol: float):
    """Returns (clipped normalized box, was_clipped) or a Rejection naming what is wrong."""
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in coords):
        return R.Rejection("", R.INVALID_COORDINATES, "coordinates are not finite numbers")
    x0, y0, x1, y1 = coords
    if x0 > x1 or y0 > y1:
        return R.Rejection("", R.INVERTED, "xmin > xmax or ymin > ymax")
    if x0 == x1 or y0 == y1:
        return R.Rejection("", R.ZERO_AREA, "box has zero width or height")
    if min(coords) < -tol or max(coords) > 1 + tol:
        return R.Rejection("", R.OUT_OF_BOUNDS, f"more than {tol:.0%} of the image outside it")
    clipped = tuple(min(max(v, 0.0), 1.0) for v in coords)
    if clipped[0] >= clipped[2] or clipped[1] >= clipped[3]:
        return R.Rejection("", R.ZERO_AREA, "box lies outside the image; nothing left after clipping")
    return clipped, int(clipped != tuple(coords))


def _fmt(box: R.BoxLabel) -> str:
    unit = "normalized" if box.normalized else "px"
    return f"{box.label} ({box.xmin:g}, {box.ymin:g}, {box.xmax:g}, {box.ymax:g}) {unit}"

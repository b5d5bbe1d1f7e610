"""YOLO (Darknet / Ultralytics) reader: one .txt file per image, one box per line.

    0 0.5 0.5 0.25 0.4

Each line is ``class_index cx cy w h`` with the centre and size as fractions of the image, so boxes
come out with ``normalized=True``; the class index is looked up in a names list loaded from a
``classes.txt`` / ``*.names`` file (one name a line) or a ``data.yaml`` (``names:``). Values
outside [0, 1] and empty boxes pass through: the image stage, which knows the real size, judges them.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Sequence

import yaml

from beam_jobs.records import (
    BOX,
    INVALID_COORDINATES,
    LABEL_FILE,
    MALFORMED_LABEL_FILE,
    UNKNOWN_CLASS,
    BoxLabel,
    LabelRecord,
    ParseResult,
    Rejection,
)


def parse(
    source: str, data: bytes, class_names: Sequence[str], image_name: str | None = None, join_key: str | None = None
) -> ParseResult:
    """Parse one YOLO label file into a single :class:`LabelRecord`; bad lines become rejections."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return ParseResult(rejections=(Rejection(source, MALFORMED_LABEL_FILE, f"not UTF-8: {exc}", kind=LABEL_FILE),))
    boxes: list[BoxLabel] = []
    rejections: list[Rejection] = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        box_or_rejection = _parse_line(line, class_names, f"{source}#line{n}")
        (boxes if isinstance(box_or_rejection, BoxLabel) else rejections).append(box_or_rejection)
    record = LabelRecord(
        image_name=image_name if image_name is not None else _stem(source),
        source=source,
        boxes=tuple(boxes),
        rejections=tuple(rejections),
        join_key=join_key,
    )
    return ParseResult(records=(record,))


def _parse_line(line: str, class_names: Sequence[str], line_source: str) -> BoxLabel | Rejection:
    fields = line.split()
    if len(fields) != 5:
        if len(fields) == 6:
            detail = "6 fields: a confidence column is not supported, expected 'cls cx cy w h'"
        elif len(fields) > 6:
            detail = f"{len(fields)} fields: segmentation lines are not supported, expected 'cls cx cy w h'"
        else:
            detail = f"{len(fields)} fields, expected 5: 'cls cx cy w h'"
        return Rejection(line_source, INVALID_COORDINATES, detail, kind=BOX)
    try:
        cls = int(fields[0])
    except ValueError:
        return Rejection(line_source, UNKNOWN_CLASS, f"class index {fields[0]!r} is not an integer", kind=BOX)
    if not 0 <= cls < len(class_names):
        detail = f"class index {cls} is outside the {len(class_names)} class names"
        return Rejection(line_source, UNKNOWN_CLASS, detail, kind=BOX)
    values = []
    for name, text in zip(("cx", "cy", "w", "h"), fields[1:]):
        try:
            value = float(text)
        except ValueError:
            return Rejection(line_source, INVALID_COORDINATES, f"{name} is not a number: {text!r}", kind=BOX)
        if not math.isfinite(value):
            return Rejection(line_source, INVALID_COORDINATES, f"{name} is not finite: {text!r}", kind=BOX)
        values.append(value)
    cx, cy, w, h = values
    return BoxLabel(
        xmin=cx - w / 2,
        ymin=cy - h / 2,
        xmax=cx + w / 2,
        ymax=cy + h / 2,
        label=class_names[cls],
        normalized=True,
        source=line_source,
    )


def load_class_names(source: str, data: bytes) -> list[str]:
    """Class names by index, from a YAML file's ``names`` (list or {index: name}) or one name a line.

    Raises ValueError when the file yields no names or its names cannot be ordered by index.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source}: not UTF-8: {exc}") from exc
    if not source.lower().endswith((".yaml", ".yml")):
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if not names:
            raise ValueError(f"{source}: no class names found (expected one name per line)")
        return names

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not valid YAML: {exc}") from exc
    raw = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(raw, dict):
        try:
            by_index = {int(k): v for k, v in raw.items()}
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: names keys must be class indices: {exc}") from exc
        if sorted(by_index) != list(range(len(by_index))):
            raise ValueError(f"{source}: names indices {sorted(by_index)} are not 0..{len(by_index) - 1} without gaps")
        raw = [by_index[i] for i in range(len(by_index))]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{source}: no class names found (expected a 'names' list or {{index: name}} mapping)")
    names = ["" if name is None else str(name).strip() for name in raw]
    if not all(names):
        raise ValueError(f"{source}: class name at index {names.index('')} is empty")
    return names


def _stem(source: str) -> str:
    return posixpath.splitext(posixpath.basename(source.replace("\\", "/")))[0]

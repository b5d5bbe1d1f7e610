"""CSV reader: one row per box, many images per file (the layout of raccoon_labels.csv).

    filename,width,height,class,xmin,ymin,xmax,ymax
    a.jpg,640,480,cat,10,20,110,220

Corners are in pixels. Rows are grouped by filename, one record per image in first-appearance order.
A row with an empty class and empty coordinates marks a negative example (an image with no boxes).
Header names are matched case-insensitively; ``label`` may stand for ``class`` and ``image`` or
``path`` for ``filename``.
"""

from __future__ import annotations

import csv  # the standard library: absolute imports never pick this module itself
import io
import math

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

_REQUIRED = {
    "filename": ("filename", "image", "path"),
    "class": ("class", "label"),
    "xmin": ("xmin",),
    "ymin": ("ymin",),
    "xmax": ("xmax",),
    "ymax": ("ymax",),
}
_OPTIONAL = {"width": ("width",), "height": ("height",)}
_CORNERS = ("xmin", "ymin", "xmax", "ymax")


def parse(source: str, data: bytes) -> ParseResult:
    """Parse one CSV label file into one :class:`LabelRecord` per filename; bad content becomes rejections."""
    try:
        text = data.decode("utf-8-sig")  # strips a BOM if there is one
    except UnicodeDecodeError as exc:
        return _file_rejection(source, f"not UTF-8: {exc}")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    try:
        header = next(reader, None)
        for row in reader:
            rows.append((reader.line_num, row))  # line_num: the file line the row ends on
    except csv.Error as exc:
        return _file_rejection(source, f"not valid CSV (line {reader.line_num}): {exc}")
    if not header or not any(name.strip() for name in header):
        return _file_rejection(source, "no header row")

    names = [name.strip().lower() for name in header]
    columns = {
        column: next((names.index(alias) for alias in aliases if alias in names), None)
        for column, aliases in {**_REQUIRED, **_OPTIONAL}.items()
    }
    missing = [column for column in _REQUIRED if columns[column] is None]
    if missing:
        return _file_rejection(source, f"missing required column(s): {', '.join(missing)}")

    # filename -> {"width", "height", "boxes", "rejections"}, in first-appearance order.
    images: dict[str, dict] = {}
    top: list[Rejection] = []
    for line, row in rows:
        if not any(field.strip() for field in row):
            continue  # blank line
        row_source = f"{source}#row{line}"
        filename = row[columns["filename"]].strip() if columns["filename"] < len(row) else ""
        if len(row) != len(header):
            detail = f"row has {len(row)} fields, header has {len(header)}"
            if filename:
                rejection = Rejection(row_source, INVALID_COORDINATES, detail, kind=BOX)
                _image(images, filename)["rejections"].append(rejection)
            else:
                top.append(Rejection(row_source, MALFORMED_LABEL_FILE, detail, kind=LABEL_FILE))
            continue
        if not filename:
            top.append(Rejection(row_source, MALFORMED_LABEL_FILE, "row has no filename", kind=LABEL_FILE))
            continue

        image = _image(images, filename)
        if image["width"] is None and image["height"] is None:
            width, height = (
                _positive_int(row[columns[c]]) if columns[c] is not None else None for c in ("width", "height")
            )
            if width is not None and height is not None:
                image["width"], image["height"] = width, height

        box_or_rejection = _parse_box(row, columns, row_source)
        if isinstance(box_or_rejection, BoxLabel):
            image["boxes"].append(box_or_rejection)
        elif box_or_rejection is not None:
            image["rejections"].append(box_or_rejection)

    records = tuple(
        LabelRecord(
            image_name=name,
            source=source,
            boxes=tuple(image["boxes"]),
            width=image["width"],
            height=image["height"],
            rejections=tuple(image["rejections"]),
        )
        for name, image in images.items()
    )
    return ParseResult(records=records, rejections=tuple(top))


def _parse_box(row: list[str], columns: dict, row_source: str) -> BoxLabel | Rejection | None:
    """A box, a rejection, or None for a negative-example row."""
    label = row[columns["class"]].strip()
    raw = {c: row[columns[c]].strip() for c in _CORNERS}
    if not label:
        if not any(raw.values()):
            return None
        return Rejection(row_source, UNKNOWN_CLASS, "row has coordinates but no class", kind=BOX)
    corners = []
    for c in _CORNERS:
        try:
            value = float(raw[c])
        except ValueError:
            detail = f"{c} is empty" if not raw[c] else f"{c} is not a number: {raw[c]!r}"
            return Rejection(row_source, INVALID_COORDINATES, detail, kind=BOX)
        if not math.isfinite(value):
            return Rejection(row_source, INVALID_COORDINATES, f"{c} is not finite: {raw[c]!r}", kind=BOX)
        corners.append(value)
    xmin, ymin, xmax, ymax = corners
    return BoxLabel(xmin=xmin, ymin=ymin, xmax=xmax, ymax=ymax, label=label, normalized=False, source=row_source)


def _image(images: dict[str, dict], filename: str) -> dict:
    return images.setdefault(filename, {"width": None, "height": None, "boxes": [], "rejections": []})


def _file_rejection(source: str, detail: str) -> ParseResult:
    return ParseResult(rejections=(Rejection(source, MALFORMED_LABEL_FILE, detail, kind=LABEL_FILE),))


def _positive_int(text: str) -> int | None:
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if value > 0 else None

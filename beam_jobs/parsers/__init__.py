"""Label-file parsers: each turns the bytes of one label file into a :class:`ParseResult`.

Formats:

- ``voc``: Pascal VOC XML, one file per image (parsed with defusedxml only).
- ``coco``: COCO detection JSON, one file for many images.
- ``csv``: one row per box (filename, class, xmin, ymin, xmax, ymax[, width, height]).
- ``yolo``: one .txt per image, normalized ``cls cx cy w h`` lines plus a class-names file.

Parsers never raise on bad content: it comes back as :class:`~beam_jobs.records.Rejection` objects.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from beam_jobs.parsers import coco, csv, voc, yolo
from beam_jobs.records import ParseResult

FORMATS = ("voc", "coco", "csv", "yolo")

# Which files inside a labels directory are label files, by format.
LABEL_EXTENSIONS = {"voc": (".xml",), "coco": (".json",), "csv": (".csv",), "yolo": (".txt",)}

YOLO_CLASSES_FILE = "classes.txt"  # lives beside YOLO labels but is not one


def is_label_file(fmt: str, path: str) -> bool:
    """Whether ``path`` is a label file of format ``fmt`` (YOLO's classes.txt is not)."""
    if fmt not in LABEL_EXTENSIONS:
        raise ValueError(f"unknown label format {fmt!r}; expected one of {', '.join(FORMATS)}")
    name = posixpath.basename(path.replace("\\", "/")).lower()
    if fmt == "yolo" and name == YOLO_CLASSES_FILE:
        return False
    return name.endswith(LABEL_EXTENSIONS[fmt])


def parse_label_file(
    fmt: str, source: str, data: bytes, class_names: Sequence[str] | None = None, join_key: str | None = None
) -> ParseResult:
    """Parse one label file of format ``fmt``; YOLO needs ``class_names``, and takes the ``join_key``
    its path gives (it pairs by path, beam_jobs/splits.py)."""
    if fmt == "voc":
        return voc.parse(source, data)
    if fmt == "coco":
        return coco.parse(source, data)
    if fmt == "csv":
        return csv.parse(source, data)
    if fmt == "yolo":
        if class_names is None:
            raise ValueError("the yolo format needs class_names (from classes.txt or data.yaml)")
        return yolo.parse(source, data, class_names, join_key=join_key)
    raise ValueError(f"unknown label format {fmt!r}; expected one of {', '.join(FORMATS)}")

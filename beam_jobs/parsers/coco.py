"""COCO detection JSON reader: one file describes many images.

    {"images": [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 480}],
     "categories": [{"id": 3, "name": "cat"}],
     "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [10, 20, 100, 200], "iscrowd": 0}]}

``bbox`` is [x, y, width, height] in pixels; it becomes corners. Every entry of ``images`` yields a
record (in file order), so an image with no annotations is a negative example, not a lost one.
"""

from __future__ import annotations

import json
import math

from beam_jobs.records import (
    BOX,
    IMAGE,
    INVALID_COORDINATES,
    LABEL_FILE,
    MALFORMED_LABEL_FILE,
    MULTIPLE_LABELS,
    UNKNOWN_CLASS,
    UNKNOWN_IMAGE_ID,
    BoxLabel,
    LabelRecord,
    ParseResult,
    Rejection,
)


def parse(source: str, data: bytes) -> ParseResult:
    """Parse one COCO JSON file into one :class:`LabelRecord` per image; bad content becomes rejections."""
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        return _file_rejection(source, f"not UTF-8: {exc}")
    except ValueError as exc:  # json.JSONDecodeError
        return _file_rejection(source, f"not valid JSON: {exc}")
    except RecursionError:
        return _file_rejection(source, "not valid JSON: nested too deeply")
    if not isinstance(doc, dict):
        return _file_rejection(source, f"top level is a JSON {type(doc).__name__}, expected an object")
    if "images" not in doc:
        return _file_rejection(source, 'no "images" key')
    images, annotations, categories = doc["images"], doc.get("annotations", []), doc.get("categories", [])
    for key, value in (("images", images), ("annotations", annotations), ("categories", categories)):
        if not isinstance(value, list):
            return _file_rejection(source, f'"{key}" is a JSON {type(value).__name__}, expected a list')

    top: list[Rejection] = []  # problems that belong to no record

    names: dict = {}
    for i, cat in enumerate(categories):
        if not (isinstance(cat, dict) and _is_id(cat.get("id")) and isinstance(cat.get("name"), str)):
            top.append(_entry_rejection(source, f"categories[{i}]", "needs an id and a string name"))
            continue
        names.setdefault(cat["id"], cat["name"].strip())

    # image id -> [file_name, width, height, boxes, rejections], in `images` order.
    by_id: dict = {}
    dropped_ids: set = set()  # duplicates of an earlier file_name: their annotations go with them
    first_id_by_name: dict[str, object] = {}
    for i, img in enumerate(images):
        if not (
            isinstance(img, dict)
            and _is_id(img.get("id"))
            and isinstance(img.get("file_name"), str)
            and img["file_name"].strip()
        ):
            top.append(_entry_rejection(source, f"images[{i}]", "needs an id and a non-empty file_name"))
            continue
        image_id, file_name = img["id"], img["file_name"].strip()
        if image_id in by_id or image_id in dropped_ids:
            top.append(_entry_rejection(source, f"images[{i}]", f"image id {image_id!r} appears twice"))
            continue
        if file_name in first_id_by_name:
            first = first_id_by_name[file_name]
            dropped_ids.add(image_id)
            top.append(
                Rejection(
                    f"{source}#image{image_id}",
                    MULTIPLE_LABELS,
                    f"images {first!r} and {image_id!r} both have file_name {file_name!r}; kept {first!r}",
                    kind=IMAGE,
                )
            )
            continue
        first_id_by_name[file_name] = image_id
        by_id[image_id] = [file_name, _positive_int(img.get("width")), _positive_int(img.get("height")), [], []]

    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            top.append(_entry_rejection(source, f"annotations[{i}]", "is not a JSON object"))
            continue
        ann_id = ann.get("id")
        box_source = f"{source}#annotation{ann_id}" if _is_id(ann_id) else f"{source}#annotations[{i}]"
        image_id = ann.get("image_id")
        if _is_id(image_id) and image_id in dropped_ids:
            continue
        if not _is_id(image_id) or image_id not in by_id:
            top.append(Rejection(box_source, UNKNOWN_IMAGE_ID, f"image_id {image_id!r} is not in images", kind=BOX))
            continue
        entry = by_id[image_id]
        box_or_rejection = _parse_annotation(ann, box_source, names)
        entry[3 if isinstance(box_or_rejection, BoxLabel) else 4].append(box_or_rejection)

    records = tuple(
        LabelRecord(
            image_name=name, source=source, boxes=tuple(boxes), width=width, height=height, rejections=tuple(rejections)
        )
        for name, width, height, boxes, rejections in by_id.values()
    )
    return ParseResult(records=records, rejections=tuple(top))


def _parse_annotation(ann: dict, box_source: str, names: dict) -> BoxLabel | Rejection:
    category_id = ann.get("category_id")
    if not _is_id(category_id) or category_id not in names:
        return Rejection(box_source, UNKNOWN_CLASS, f"category_id {category_id!r} is not in categories", kind=BOX)
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite_number(v) for v in bbox)):
        return Rejection(box_source, INVALID_COORDINATES, f"bbox {bbox!r} is not 4 finite numbers", kind=BOX)
    x, y, w, h = (float(v) for v in bbox)
    return BoxLabel(
        xmin=x,
        ymin=y,
        xmax=x + w,
        ymax=y + h,
        label=names[category_id],
        difficult=bool(ann.get("iscrowd")),
        normalized=False,
        source=box_source,
    )


def _file_rejection(source: str, detail: str) -> ParseResult:
    return ParseResult(rejections=(Rejection(source, MALFORMED_LABEL_FILE, detail, kind=LABEL_FILE),))


def _entry_rejection(source: str, where: str, problem: str) -> Rejection:
    return Rejection(f"{source}#{where}", MALFORMED_LABEL_FILE, f"{where} {problem}", kind=LABEL_FILE)


def _is_id(value: object) -> bool:
    # Ids are ints in COCO, but strings turn up in exports; lists/dicts/null cannot be ids.
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int too big for a float
        return False


def _positive_int(value: object) -> int | None:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None

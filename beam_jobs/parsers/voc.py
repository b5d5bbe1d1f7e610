"""Pascal VOC reader: one XML file describes one image.

    <annotation><filename>a.jpg</filename><size><width>640</width><height>480</height></size>
      <object><name>cat</name><difficult>0</difficult>
        <bndbox><xmin>10</xmin><ymin>20</ymin><xmax>110</xmax><ymax>220</ymax></bndbox></object>
    </annotation>

Label files come from users and may come from anywhere, so the XML is parsed only with defusedxml:
entity declarations and external references (XXE, billion laughs) are refused, not expanded.
"""

from __future__ import annotations

import math
import posixpath
from xml.etree.ElementTree import Element, ParseError

import defusedxml
from defusedxml.ElementTree import fromstring

from beam_jobs.records import (
    BOX,
    INVALID_COORDINATES,
    LABEL_FILE,
    MALFORMED_LABEL_FILE,
    UNKNOWN_CLASS,
    UNSAFE_XML,
    BoxLabel,
    LabelRecord,
    ParseResult,
    Rejection,
)

_CORNERS = ("xmin", "ymin", "xmax", "ymax")


def parse(source: str, data: bytes) -> ParseResult:
    """Parse one VOC XML file into a single :class:`LabelRecord`; bad content becomes rejections."""
    try:
        # Bytes, not str: the XML declaration picks the encoding (UTF-8 by default), and bytes
        # that do not decode surface as a ParseError.
        root = fromstring(data)
    except defusedxml.DefusedXmlException as exc:
        return _file_rejection(source, UNSAFE_XML, f"refused by defusedxml: {exc!r}")
    except ParseError as exc:
        return _file_rejection(source, MALFORMED_LABEL_FILE, f"not well-formed XML: {exc}")
    except (LookupError, ValueError) as exc:  # e.g. <?xml encoding="u-tf-8"?>: an encoding Python does not know
        return _file_rejection(source, MALFORMED_LABEL_FILE, f"unreadable XML declaration: {exc}")
    if root.tag != "annotation":
        return _file_rejection(source, MALFORMED_LABEL_FILE, f"root element is <{root.tag}>, expected <annotation>")

    image_name = (root.findtext("filename") or "").strip() or _stem(source)
    size = root.find("size")
    width = _positive_int(size.findtext("width")) if size is not None else None
    height = _positive_int(size.findtext("height")) if size is not None else None

    boxes: list[BoxLabel] = []
    rejections: list[Rejection] = []
    for i, obj in enumerate(root.findall("object")):
        box_source = f"{source}#object{i}"
        box_or_rejection = _parse_object(obj, box_source)
        if isinstance(box_or_rejection, Rejection):
            rejections.append(box_or_rejection)
        else:
            boxes.append(box_or_rejection)

    record = LabelRecord(
        image_name=image_name,
        source=source,
        boxes=tuple(boxes),
        width=width,
        height=height,
        rejections=tuple(rejections),
    )
    return ParseResult(records=(record,))


def _parse_object(obj: Element, box_source: str) -> BoxLabel | Rejection:
    name = (obj.findtext("name") or "").strip()
    if not name:
        return Rejection(box_source, UNKNOWN_CLASS, "object has no <name>", kind=BOX)
    bndbox = obj.find("bndbox")
    if bndbox is None:
        return Rejection(box_source, INVALID_COORDINATES, "object has no <bndbox>", kind=BOX)
    corners = []
    for tag in _CORNERS:
        text = (bndbox.findtext(tag) or "").strip()
        try:
            value = float(text)
        except ValueError:
            detail = f"<{tag}> is missing" if not text else f"<{tag}> is not a number: {text!r}"
            return Rejection(box_source, INVALID_COORDINATES, detail, kind=BOX)
        if not math.isfinite(value):
            return Rejection(box_source, INVALID_COORDINATES, f"<{tag}> is not finite: {text!r}", kind=BOX)
        corners.append(value)
    xmin, ymin, xmax, ymax = corners
    return BoxLabel(
        xmin=xmin,
        ymin=ymin,
        xmax=xmax,
        ymax=ymax,
        label=name,
        difficult=bool(_int_or_zero(obj.findtext("difficult"))),
        normalized=False,
        source=box_source,
    )


def _file_rejection(source: str, reason: str, detail: str) -> ParseResult:
    return ParseResult(rejections=(Rejection(source, reason, detail, kind=LABEL_FILE),))


def _positive_int(text: str | None) -> int | None:
    try:
        value = int((text or "").strip())
    except ValueError:
        return None
    return value if value > 0 else None


def _int_or_zero(text: str | None) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        return 0


def _stem(source: str) -> str:
    return posixpath.splitext(posixpath.basename(source.replace("\\", "/")))[0]

"""The plain data that flows through the ingest job, and the vocabulary of rejection reasons.

Parsers turn label files into :class:`LabelRecord` objects; listing turns image files into
:class:`ImageFile` rows; the image stage turns a record plus the image bytes into a tf.Example or a
:class:`Rejection`, and an :class:`ImageOutcome` for the books. Everything here is a frozen
dataclass (or NamedTuple) of builtins, so Beam's coders carry it cheaply and
:mod:`beam_jobs.spill` writes it as plain JSON between stages.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import NamedTuple

# The namespace of the ingest job's Beam metrics (counters such as images_encoded, files_skipped).
INGEST_METRICS = "ssdflow.ingest"

# Rejection kinds: what the rejected line refers to.
IMAGE = "image"
BOX = "box"
LABEL_FILE = "label_file"

# Image-level reasons.
MISSING_IMAGE = "missing_image"  # a label names an image that is not among --images
NO_LABEL = "no_label"  # an image under --images that no label file mentions
AMBIGUOUS_NAME = "ambiguous_name"  # two image files share a file stem, so labels cannot be matched
MULTIPLE_LABELS = "multiple_labels"  # two label records claim the same image
EMPTY_FILE = "empty_file"
UNREADABLE = "unreadable"  # the storage layer could not read the bytes
READ_RETRYABLE = "read_error_retryable"  # ... for now: throttled, timed out or a server error; a rerun tries again
DECODE_ERROR = "decode_error"  # not an image, truncated, or corrupt body
TOO_MANY_PIXELS = "too_many_pixels"  # decompression-bomb guard (--max-pixels)
DUPLICATE = "duplicate"  # byte-identical to another image that is kept
UNDECODABLE_NAME = "undecodable_name"  # a file name that is not valid UTF-8 (also for label files)

# Box-level reasons.
OUT_OF_BOUNDS = "out_of_bounds"  # further outside the image than the clipping tolerance
INVERTED = "inverted"  # xmin > xmax or ymin > ymax
ZERO_AREA = "zero_area"
INVALID_COORDINATES = "invalid_coordinates"  # NaN, inf or not a number
UNKNOWN_CLASS = "unknown_class"  # not in the --label-map given, or a bad YOLO class index
UNKNOWN_IMAGE_ID = "unknown_image_id"  # COCO annotation pointing at an image id not in `images`

# Label-file-level reasons.
UNSAFE_XML = "unsafe_xml"  # entities / DTDs refused by defusedxml (XXE, billion laughs)
MALFORMED_LABEL_FILE = "malformed_label_file"  # unparseable, wrong schema, missing columns


def describe(error: BaseException, limit: int = 500) -> str:
    """``Type: message`` for a rejected or error line, without object addresses (``<... at 0x7f...>``),
    so that rerunning a job over the same input writes the same bytes."""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(error).__name__}: {error}")
    return text[:limit]


def is_text_name(path: str) -> bool:
    """Whether ``path`` is valid UTF-8. Listing decodes other bytes to lone surrogates, which Beam's
    string coders (and JSON outputs) cannot carry, so such files are rejected at listing."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_name(path: str) -> str:
    """``path`` with its undecodable bytes written as ``\\xNN``: how rejected and error lines name it."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def undecodable_name(path: str, kind: str = IMAGE) -> "Rejection":
    return Rejection(printable_name(path), UNDECODABLE_NAME, "file name is not valid UTF-8; rename the file", kind)


@dataclass(frozen=True)
class Rejection:
    """One line of rejected.jsonl: what was refused, why, and a human-readable detail."""

    source: str  # URI of the image or label file (with a #row / #line / #object suffix where useful)
    reason: str
    detail: str = ""
    kind: str = IMAGE

    def to_json(self) -> dict:
        return {"source": self.source, "kind": self.kind, "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class BoxLabel:
    """One labelled box as the label file states it.

    Coordinates are corners (xmin, ymin, xmax, ymax): in pixels of the image the label was drawn on,
    or, when ``normalized`` is true (YOLO), as fractions of its width and height.
    """

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    label: str
    difficult: bool = False
    normalized: bool = False
    source: str = ""  # where in the label file the box came from, for rejection lines


@dataclass(frozen=True)
class LabelRecord:
    """Everything one label file says about one image."""

    image_name: str  # the image's file name (or relative path) as the label file gives it
    source: str  # URI of the label file the record came from
    boxes: tuple[BoxLabel, ...] = ()
    width: int | None = None  # image size the label file claims; the real image wins
    height: int | None = None
    rejections: tuple[Rejection, ...] = field(default=())  # boxes the parser already refused
    # The join key when the label file's path decides it (YOLO pairs by path: beam_jobs/splits.py);
    # None: the image name's stem.
    join_key: str | None = None

    @property
    def key(self) -> str:
        return self.join_key if self.join_key is not None else image_key(self.image_name)


def image_key(name: str) -> str:
    """The join key between label records and image files: the file stem.

    ``images/raccoon-1.jpg``, ``raccoon-1.png`` and ``raccoon-1`` all map to ``raccoon-1``, so a
    label whose recorded extension is stale still finds its image, and YOLO's ``a.txt`` finds
    ``a.jpg``. Two image files with one stem are reported as ``ambiguous_name``.
    """
    base = posixpath.basename(name.replace("\\", "/"))
    stem, ext = posixpath.splitext(base)
    return stem if ext and stem else base


@dataclass(frozen=True)
class ParseResult:
    """What a parser returns for one label file."""

    records: tuple[LabelRecord, ...] = ()
    rejections: tuple[Rejection, ...] = ()  # label-file-level problems (box-level ones live on records)


class ImageFile(NamedTuple):
    """A listed image file: its path, and its size in bytes (which spreads the encoders' work evenly)."""

    path: str
    size: int


@dataclass(frozen=True)
class ImageOutcome:
    """What happened to one candidate image, without its bytes."""

    key: str
    source: str
    sha256: str
    split: str | None  # None when the image was rejected
    part: str | None = None  # part file holding the framed record
    offset: int = 0
    length: int = 0  # framed length in bytes
    boxes_in: int = 0
    class_counts: tuple[tuple[str, int], ...] = ()
    rejections: tuple[Rejection, ...] = ()
    stats: tuple[tuple[str, int], ...] = ()

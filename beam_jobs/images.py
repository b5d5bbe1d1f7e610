"""Decode, validate and normalize one image; move its boxes with it.

The contract: what ingest writes is always an RGB JPEG that decodes fully. Valid RGB JPEGs pass
through byte for byte (re-encoding would cost quality and time); everything else (PNG, grayscale,
CMYK, palette, 16-bit, alpha, EXIF-rotated) is converted once, here.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from beam_jobs import records as R
from ssdflow.config import DEFAULT_MAX_PIXELS

_EXIF_ORIENTATION = 0x0112


class ImageRejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class NormalizedImage:
    """An image ready to be written: RGB JPEG bytes and the geometry boxes need."""

    jpeg: bytes
    width: int  # of the image as written (after EXIF rotation)
    height: int
    stored_width: int  # of the pixels as stored in the file (before EXIF rotation)
    stored_height: int
    orientation: int  # EXIF orientation 1..8 that was applied (1: none)
    converted: bool  # False when the input bytes pass through untouched


def normalize_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, jpeg_quality: int = 95) -> NormalizedImage:
    """Fully decodes ``data`` and returns it as an RGB JPEG, or raises :class:`ImageRejected`."""
    if not data:
        raise ImageRejected(R.EMPTY_FILE, "zero-byte file")
    try:
        img = open_header(data, max_pixels)
        w, h = img.size
        img.load()  # full decode: truncated files and corrupt bodies fail here, not in training
    except ImageRejected:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad bytes
        raise ImageRejected(R.DECODE_ERROR, R.describe(e)) from None
    if w == 0 or h == 0:
        raise ImageRejected(R.DECODE_ERROR, f"image has zero size {w}x{h}")

    orientation = exif_orientation(img)
    if img.format == "JPEG" and img.mode == "RGB" and orientation == 1:
        return NormalizedImage(data, w, h, w, h, 1, converted=False)

    if orientation != 1:
        img = ImageOps.exif_transpose(img)
    rgb = to_rgb(img)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=jpeg_quality)
    return NormalizedImage(buf.getvalue(), rgb.width, rgb.height, w, h, orientation, converted=True)


def open_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Opens ``data`` reading only its header; refuses it if it claims more than ``max_pixels``.

    The decompression-bomb guard shared by ingest (before its full decode) and the scoring job
    (before TensorFlow decodes): a tiny file claiming 30,000 x 30,000 pixels is refused as
    ``too_many_pixels`` from its header, whichever limit (ours or Pillow's) it hits first, and is
    never decoded. Bytes Pillow cannot open raise what Pillow raises.
    """
    _allow_pixels(max_pixels)
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # Pillow's own guard: at twice its limit, above ours
        raise ImageRejected(R.TOO_MANY_PIXELS, f"more than max_pixels {max_pixels}: {e}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageRejected(R.TOO_MANY_PIXELS, f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}")
    return img


def _allow_pixels(max_pixels: int) -> None:
    """Lets Pillow open headers up to ``max_pixels`` so our own limit (checked before decoding) rules.

    Pillow warns above MAX_IMAGE_PIXELS and refuses at twice that inside ``Image.open``; a user who
    raises --max-pixels beyond Pillow's default must not be overruled. The limit only ever grows.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and max_pixels > current:
        Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def exif_orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # unreadable EXIF is not a reason to lose the image
        return 1
    return value if 1 <= value <= 8 else 1


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB. Transparency is composited on white; 16/32-bit depth is rescaled."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(arr * (255.0 / hi), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:  # palette or colour-key (tRNS)
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK (PIL inverts Adobe CMYK correctly), YCbCr, LAB


def orient_box(box: tuple[float, float, float, float], orientation: int) -> tuple[float, float, float, float]:
    """Maps a normalized box (xmin, ymin, xmax, ymax) on the stored pixels to the displayed image.

    ``orientation`` is the EXIF value; the mapping matches ``PIL.ImageOps.exif_transpose``.
    """
    x0, y0, x1, y1 = box
    if orientation == 2:  # mirrored horizontally
        return 1 - x1, y0, 1 - x0, y1
    if orientation == 3:  # rotated 180
        return 1 - x1, 1 - y1, 1 - x0, 1 - y0
    if orientation == 4:  # mirrored vertically
        return x0, 1 - y1, x1, 1 - y0
    if orientation == 5:  # transposed (mirror about the main diagonal)
        return y0, x0, y1, x1
    if orientation == 6:  # displayed = stored rotated 90 degrees clockwise
        return 1 - y1, x0, 1 - y0, x1
    if orientation == 7:  # transverse (mirror about the anti-diagonal)
        return 1 - y1, 1 - x1, 1 - y0, 1 - x0
    if orientation == 8:  # displayed = stored rotated 90 degrees counter-clockwise
        return y0, 1 - x1, y1, 1 - x0
    return box

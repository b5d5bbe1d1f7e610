"""Small in-memory image builders for the image / encode unit tests (a plain module, not a conftest)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


def encode(img: Image.Image, fmt: str = "JPEG", orientation: int | None = None, **save_kw) -> bytes:
    """``img`` saved as ``fmt``; with an EXIF orientation tag when ``orientation`` is given."""
    if orientation is not None:
        exif = img.getexif()
        exif[EXIF_ORIENTATION] = orientation
        save_kw["exif"] = exif.tobytes()
    if fmt == "JPEG":
        save_kw.setdefault("quality", 95)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_kw)
    return buf.getvalue()


def solid(size=(64, 48), color=(200, 30, 60), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def noise(size=(96, 64), seed=0) -> Image.Image:
    """Random RGB pixels: a JPEG of it is mostly entropy-coded body, so cutting it in half hits the body."""
    arr = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, mode="RGB")


def jpeg(size=(64, 48), color=(200, 30, 60)) -> bytes:
    return encode(solid(size, color), "JPEG")


def rect_image(size, rect) -> Image.Image:
    """Black RGB image with a white rectangle covering pixels [x0, x1) x [y0, y1)."""
    w, h = size
    x0, y0, x1, y1 = rect
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[y0:y1, x0:x1] = 255
    return Image.fromarray(arr, mode="RGB")


def white_box(data: bytes, threshold: int = 128) -> tuple[float, float, float, float]:
    """Normalized (xmin, ymin, xmax, ymax) of the bright pixels of an encoded image."""
    img = Image.open(io.BytesIO(data)).convert("L")
    arr = np.asarray(img)
    ys, xs = np.nonzero(arr > threshold)
    assert xs.size, "no white pixels found"
    h, w = arr.shape
    return xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload) & 0xFFFFFFFF)
    )


def png_header_only(width: int, height: int, color_type: int = 2, bit_depth: int = 8) -> bytes:
    """A well-formed PNG whose IHDR claims ``width`` x ``height`` but whose IDAT holds only one row.

    Checksums are correct, so only the pixel count (or a full decode) can tell it is a bomb.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")

"""beam_jobs.images: every accepted image comes out as a fully decodable RGB JPEG, EXIF rotation is
applied to the pixels and (via orient_box) to boxes, and bad or hostile files are refused by reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFile

from beam_jobs import records as R
from beam_jobs.images import ImageRejected, normalize_image, orient_box, to_rgb
from tests.unit.imaging import (
    EXIF_ORIENTATION,
    decode,
    encode,
    jpeg,
    noise,
    png_header_only,
    rect_image,
    solid,
    white_box,
)


def _assert_rgb_jpeg(out, size):
    img = decode(out.jpeg)
    assert img.format == "JPEG"
    assert img.mode == "RGB"
    assert img.size == size
    assert (out.width, out.height) == size
    return np.asarray(img).astype(int)


def _close(pixel, expected, tol=6):
    assert np.all(np.abs(np.asarray(pixel, dtype=int) - np.asarray(expected, dtype=int)) <= tol), (pixel, expected)


# --- pass-through and conversion -------------------------------------------------------------------
def test_rgb_jpeg_passes_through_byte_for_byte():
    data = encode(noise((40, 30)), "JPEG")
    out = normalize_image(data)
    assert out.converted is False
    assert out.jpeg is data or out.jpeg == data
    assert (out.width, out.height, out.stored_width, out.stored_height) == (40, 30, 40, 30)
    assert out.orientation == 1


def test_rgb_jpeg_with_orientation_1_tag_passes_through():
    data = encode(noise((40, 30)), "JPEG", orientation=1)
    out = normalize_image(data)
    assert out.converted is False
    assert out.jpeg == data


def test_png_rgb_is_converted_to_jpeg():
    out = normalize_image(encode(solid((32, 24), (200, 30, 60)), "PNG"))
    assert out.converted is True
    arr = _assert_rgb_jpeg(out, (32, 24))
    _close(arr[12, 16], (200, 30, 60))


def test_grayscale_jpeg_is_converted_to_rgb():
    data = encode(Image.new("L", (32, 24), 100), "JPEG")
    assert decode(data).mode == "L"
    out = normalize_image(data)
    assert out.converted is True
    arr = _assert_rgb_jpeg(out, (32, 24))
    _close(arr[12, 16], (100, 100, 100), tol=2)


def test_cmyk_jpeg_is_converted_to_rgb_with_right_colours():
    data = encode(Image.new("CMYK", (32, 24), (0, 255, 255, 0)), "JPEG")  # pure red
    assert decode(data).mode == "CMYK"
    out = normalize_image(data)
    assert out.converted is True
    arr = _assert_rgb_jpeg(out, (32, 24))
    _close(arr[12, 16], (255, 0, 0), tol=12)


def _palette_image():
    """Left half palette index 1 (blue), right half index 0 (black)."""
    img = Image.new("P", (32, 16), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    img.paste(1, (0, 0, 16, 16))
    return img


def test_palette_png_without_transparency_is_converted():
    data = encode(_palette_image(), "PNG")
    assert decode(data).mode == "P"
    out = normalize_image(data)
    assert out.converted is True
    arr = _assert_rgb_jpeg(out, (32, 16))
    _close(arr[8, 4], (0, 0, 255), tol=12)
    _close(arr[8, 28], (0, 0, 0), tol=12)  # index 0 is opaque black here


def test_palette_png_with_transparency_is_composited_on_white():
    data = encode(_palette_image(), "PNG", transparency=0)
    img = decode(data)
    assert img.mode == "P" and "transparency" in img.info
    out = normalize_image(data)
    assert out.converted is True
    arr = _assert_rgb_jpeg(out, (32, 16))
    _close(arr[8, 4], (0, 0, 255), tol=12)
    _close(arr[8, 28], (255, 255, 255), tol=12)  # transparent index → white, not black


def test_rgba_png_transparent_pixels_become_white():
    arr = np.zeros((16, 32, 4), dtype=np.uint8)
    arr[:, :16] = (255, 0, 0, 255)  # opaque red
    arr[:, 16:] = (0, 0, 0, 0)  # fully transparent (black underneath)
    data = encode(Image.fromarray(arr, mode="RGBA"), "PNG")
    out = normalize_image(data)
    assert out.converted is True
    rgb = _assert_rgb_jpeg(out, (32, 16))
    _close(rgb[8, 4], (255, 0, 0), tol=12)
    _close(rgb[8, 28], (255, 255, 255), tol=6)


def test_16bit_grayscale_png_is_rescaled_to_8bit():
    arr = np.empty((16, 32), dtype=np.uint16)
    arr[:, :16] = 65535
    arr[:, 16:] = 32768
    data = encode(Image.fromarray(arr), "PNG")
    assert decode(data).mode == "I;16"
    out = normalize_image(data)
    assert out.converted is True
    rgb = _assert_rgb_jpeg(out, (32, 16))
    _close(rgb[8, 4], (255, 255, 255), tol=2)
    _close(rgb[8, 28], (128, 128, 128), tol=2)


@pytest.mark.parametrize("mode, key", [("L", 0), ("RGB", (0, 0, 0))])
def test_colour_key_transparent_png_becomes_white(mode, key):
    # A PNG tRNS chunk on an L or RGB image makes every pixel of that value transparent.
    data = encode(Image.new(mode, (16, 16), key), "PNG", transparency=key)
    assert "transparency" in decode(data).info
    rgb = _assert_rgb_jpeg(normalize_image(data), (16, 16))
    _close(rgb[8, 8], (255, 255, 255))


def test_to_rgb_modes():
    assert to_rgb(solid((4, 4))).mode == "RGB"
    la = Image.new("LA", (4, 4), (0, 0))  # black, fully transparent
    assert to_rgb(la).getpixel((1, 1)) == (255, 255, 255)
    i16 = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert to_rgb(i16).getpixel((0, 0)) == (255, 255, 255)


# --- EXIF orientation ------------------------------------------------------------------------------
STORED = (120, 80)
RECT = (10, 5, 40, 30)  # off-centre, not square: every orientation moves it somewhere different


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_moves_pixels_as_orient_box_moves_boxes(fmt, orientation):
    data = encode(rect_image(STORED, RECT), fmt, orientation=orientation)
    out = normalize_image(data)

    w, h = STORED
    expected_size = (h, w) if orientation >= 5 else (w, h)
    assert (out.width, out.height) == expected_size
    assert (out.stored_width, out.stored_height) == STORED
    assert out.orientation == orientation
    assert out.converted is (fmt != "JPEG" or orientation != 1)
    written = decode(out.jpeg)
    assert written.size == expected_size
    assert written.getexif().get(EXIF_ORIENTATION, 1) == 1  # no viewer may rotate it a second time

    x0, y0, x1, y1 = RECT
    expected = orient_box((x0 / w, y0 / h, x1 / w, y1 / h), orientation)
    found = white_box(out.jpeg)
    assert np.allclose(found, expected, atol=0.04), (found, expected)


def test_orient_box_hand_computed():
    box = (0.0, 0.0, 0.25, 0.5)  # stored top-left
    assert orient_box(box, 1) == box
    assert orient_box(box, 2) == (0.75, 0.0, 1.0, 0.5)  # top-right
    assert orient_box(box, 3) == (0.75, 0.5, 1.0, 1.0)  # bottom-right
    assert orient_box(box, 6) == (0.5, 0.0, 1.0, 0.25)  # rotated clockwise: top-left → top-right
    assert orient_box(box, 8) == (0.0, 0.75, 0.5, 1.0)  # counter-clockwise: top-left → bottom-left


def test_out_of_range_orientation_is_ignored():
    data = encode(noise((40, 30)), "JPEG", orientation=9)
    out = normalize_image(data)
    assert out.orientation == 1
    assert (out.width, out.height) == (40, 30)


# --- rejections ------------------------------------------------------------------------------------
def _reason(data: bytes, **kw) -> str:
    with pytest.raises(ImageRejected) as e:
        normalize_image(data, **kw)
    return e.value.reason


def test_zero_bytes_is_empty_file():
    assert _reason(b"") == R.EMPTY_FILE


def test_text_file_is_decode_error():
    assert _reason(b"hello") == R.DECODE_ERROR


def test_truncated_jpeg_is_decode_error():
    data = encode(noise((96, 64)), "JPEG")
    assert normalize_image(data).converted is False  # the full file is fine
    assert _reason(data[: len(data) // 2]) == R.DECODE_ERROR


@pytest.fixture
def load_calls(monkeypatch):
    """Records every pixel decode (ImageFile.load) so a test can assert none happened."""
    calls = []
    real = ImageFile.ImageFile.load

    def spy(self):
        calls.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


def test_png_bomb_is_refused_from_header(load_calls):
    bomb = png_header_only(30_000, 30_000)
    assert len(bomb) < 200
    assert _reason(bomb) == R.TOO_MANY_PIXELS
    assert load_calls == []  # never decoded (2.7 GB of RGB)


def test_header_over_max_pixels_below_pil_guard_is_refused_by_our_check(load_calls):
    # 48 M pixels: over the 40 M default, under PIL's own DecompressionBomb threshold (~89 M).
    assert _reason(png_header_only(8000, 6000)) == R.TOO_MANY_PIXELS
    assert load_calls == []


def test_small_image_over_small_max_pixels():
    data = jpeg((100, 100))
    assert _reason(data, max_pixels=5000) == R.TOO_MANY_PIXELS
    assert normalize_image(data, max_pixels=10_000).width == 100  # exactly at the limit is fine


def test_max_pixels_above_pillows_default_is_honoured():
    # 90 M pixels: over Pillow's own 89.5 M warning limit, under the user's --max-pixels.
    data = png_header_only(10_000, 9_000)
    with pytest.raises(ImageRejected) as e:
        normalize_image(data, max_pixels=100_000_000)
    assert e.value.reason == R.DECODE_ERROR  # decoding was attempted (the body is 16 bytes)
    with pytest.raises(ImageRejected) as e:
        normalize_image(data, max_pixels=80_000_000)
    assert e.value.reason == R.TOO_MANY_PIXELS

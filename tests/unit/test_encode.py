"""beam_jobs.encode: one labelled image → one tf.Example with TF OD API keys, boxes normalized to the
written image, bad boxes rejected by reason, and a stable train/val split."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from beam_jobs import records as R
from beam_jobs.encode import encode_image
from beam_jobs.splits import hash_split as split_for
from beam_jobs.images import orient_box
from ssdflow import schema
from tests.unit.imaging import encode, jpeg, noise, solid

LABELS = schema.LabelMap.from_names(["cat", "dog"])  # cat 1, dog 2
W, H = 200, 100
SRC = "s3://bucket/images/pic-1.jpg"
REPO = Path(__file__).resolve().parents[2]
COORDS = (schema.XMIN, schema.YMIN, schema.XMAX, schema.YMAX)


def _record(*boxes, name="images/pic-1.jpg", width=W, height=H, rejections=()):
    return R.LabelRecord(name, "s3://bucket/labels/pic-1.xml", tuple(boxes), width, height, tuple(rejections))


def _box(x0, y0, x1, y1, label="cat", **kw):
    return R.BoxLabel(x0, y0, x1, y1, label, **kw)


def _boxes(ex: dict) -> list[tuple[float, ...]]:
    return list(zip(*(ex[k] for k in COORDS)))


def _run(record, data=None, **kw):
    out = encode_image(record, SRC, jpeg((W, H)) if data is None else data, LABELS, **kw)
    ex = schema.parse_example(out.example) if out.example is not None else None
    return out, ex


def _assert_boxes(actual, expected, tol=1e-6):
    assert len(actual) == len(expected), (actual, expected)
    for a, e in zip(actual, expected):
        assert np.allclose(a, e, atol=tol), (a, e)


# --- the written example ---------------------------------------------------------------------------
def test_fields_and_normalized_coordinates():
    rec = _record(_box(20, 10, 100, 60, "cat"), _box(0, 0, 200, 100, "dog", difficult=True))
    out, ex = _run(rec)

    _assert_boxes(_boxes(ex), [(20 / W, 10 / H, 100 / W, 60 / H), (0.0, 0.0, 1.0, 1.0)])
    assert ex[schema.CLASS_LABEL] == [1, 2]
    assert ex[schema.CLASS_TEXT] == [b"cat", b"dog"]
    assert ex[schema.DIFFICULT] == [0, 1]
    assert ex[schema.FILENAME] == [b"pic-1.jpg"]
    assert ex[schema.SOURCE_ID] == [b"pic-1"] == [rec.key.encode()]
    assert ex[schema.FORMAT] == [b"jpeg"]
    assert ex[schema.WIDTH] == [W] and ex[schema.HEIGHT] == [H]
    assert out.key == "pic-1" and out.source == SRC
    assert out.rejections == []
    assert out.class_counts == {"cat": 1, "dog": 1} and out.boxes_written == 2
    assert out.stats["boxes_clipped"] == 0
    assert out.stats["label_size_corrected"] == 0


def test_image_without_boxes_is_kept():
    out, ex = _run(_record())
    assert ex is not None
    assert all(ex[k] == [] for k in COORDS)
    assert ex[schema.CLASS_LABEL] == [] and ex[schema.CLASS_TEXT] == []
    assert out.boxes_written == 0 and out.rejections == []


# --- box validation --------------------------------------------------------------------------------
def test_slightly_out_of_bounds_box_is_clipped():
    out, ex = _run(_record(_box(20, 10, W * 1.02, 60)))
    _assert_boxes(_boxes(ex), [(20 / W, 10 / H, 1.0, 60 / H)])
    assert out.stats["boxes_clipped"] == 1
    assert out.rejections == []


@pytest.mark.parametrize(
    "box, reason",
    [
        (_box(-0.5 * W, 10, 100, 60), R.OUT_OF_BOUNDS),
        (_box(20, 10, 100, H * 1.5), R.OUT_OF_BOUNDS),
        (_box(100, 10, 20, 60), R.INVERTED),
        (_box(20, 60, 100, 10), R.INVERTED),
        (_box(20, 10, 20, 60), R.ZERO_AREA),
        (_box(20, 10, 100, 10), R.ZERO_AREA),
        (_box(float("nan"), 10, 100, 60), R.INVALID_COORDINATES),
        (_box(20, 10, float("inf"), 60), R.INVALID_COORDINATES),
        (_box(20, 10, 100, 60, "zebra"), R.UNKNOWN_CLASS),
    ],
)
def test_bad_box_is_rejected_and_good_box_kept(box, reason):
    good = _box(30, 20, 90, 80, "dog", source="labels/pic-1.xml#object=0")
    bad = R.BoxLabel(box.xmin, box.ymin, box.xmax, box.ymax, box.label, source="labels/pic-1.xml#object=1")
    out, ex = _run(_record(good, bad), label_map_fixed=True)

    assert [(r.kind, r.reason, r.source) for r in out.rejections] == [(R.BOX, reason, "labels/pic-1.xml#object=1")]
    _assert_boxes(_boxes(ex), [(30 / W, 20 / H, 90 / W, 80 / H)])
    assert ex[schema.CLASS_TEXT] == [b"dog"]
    assert out.class_counts == {"dog": 1}


def test_box_rejection_source_defaults_to_label_file():
    rec = _record(_box(100, 10, 20, 60))
    out, _ = _run(rec)
    assert out.rejections[0].source == rec.source


# --- geometry --------------------------------------------------------------------------------------
def test_label_size_disagreeing_with_image_is_corrected():
    # The label file claims 400 x 300, the real image is 200 x 100: the real size wins.
    out, ex = _run(_record(_box(20, 10, 100, 50), width=400, height=300))
    assert out.stats["label_size_corrected"] == 1
    _assert_boxes(_boxes(ex), [(0.1, 0.1, 0.5, 0.5)])
    assert ex[schema.WIDTH] == [W] and ex[schema.HEIGHT] == [H]


def test_label_without_size_is_not_counted_as_corrected():
    out, ex = _run(_record(_box(20, 10, 100, 50), width=None, height=None))
    assert out.stats["label_size_corrected"] == 0
    _assert_boxes(_boxes(ex), [(0.1, 0.1, 0.5, 0.5)])


SW, SH = 120, 80  # stored pixels of the EXIF-6 image; displayed as 80 x 120


def _exif6():
    return encode(noise((SW, SH)), "JPEG", orientation=6)


def test_exif_rotated_image_boxes_on_stored_pixels_are_rotated():
    out, ex = _run(_record(_box(12, 8, 60, 40), width=SW, height=SH), data=_exif6())
    assert (ex[schema.WIDTH], ex[schema.HEIGHT]) == ([SH], [SW])
    expected = orient_box((12 / SW, 8 / SH, 60 / SW, 40 / SH), 6)
    assert np.allclose(expected, (0.5, 0.1, 0.9, 0.5))
    _assert_boxes(_boxes(ex), [expected])
    assert out.stats["images_exif_rotated"] == 1
    assert out.stats["label_size_corrected"] == 0


def test_exif_rotated_image_boxes_on_displayed_image_are_not_rotated():
    # The label's size is the displayed (rotated) size: the boxes were drawn on what the user saw.
    out, ex = _run(_record(_box(8, 12, 40, 60), width=SH, height=SW), data=_exif6())
    assert (ex[schema.WIDTH], ex[schema.HEIGHT]) == ([SH], [SW])
    _assert_boxes(_boxes(ex), [(8 / SH, 12 / SW, 40 / SH, 60 / SW)])
    assert out.stats["label_size_corrected"] == 0


def test_normalized_boxes_pass_through_as_given():
    box = _box(0.1, 0.2, 0.6, 0.9, normalized=True)
    _, ex = _run(_record(box, width=None, height=None))
    _assert_boxes(_boxes(ex), [(0.1, 0.2, 0.6, 0.9)])
    # YOLO boxes refer to the displayed image: no EXIF rotation for them either.
    _, ex = _run(_record(box, width=None, height=None), data=_exif6())
    _assert_boxes(_boxes(ex), [(0.1, 0.2, 0.6, 0.9)])


# --- hashes ----------------------------------------------------------------------------------------
def test_sha256_of_passthrough_jpeg_is_of_input_bytes():
    data = jpeg((W, H))
    out, ex = _run(_record(), data=data)
    sha = hashlib.sha256(data).hexdigest()
    assert ex[schema.ENCODED] == [data]
    assert out.sha256 == sha
    assert ex[schema.SHA256] == [sha.encode()]
    assert out.stats["images_converted"] == 0


def test_sha256_of_converted_png():
    data = encode(solid((W, H)), "PNG")
    out, ex = _run(_record(), data=data)
    written = ex[schema.ENCODED][0]
    assert written[:2] == b"\xff\xd8" and written != data
    assert out.sha256 == hashlib.sha256(data).hexdigest()
    assert ex[schema.SHA256] == [hashlib.sha256(written).hexdigest().encode()]
    assert out.stats["images_converted"] == 1


# --- rejected images -------------------------------------------------------------------------------
def test_undecodable_image_keeps_parser_rejections():
    parser_rej = R.Rejection("labels/pic-1.xml#object=3", R.INVALID_COORDINATES, "xmin='abc'", R.BOX)
    rec = _record(_box(20, 10, 100, 60), rejections=[parser_rej])
    out, ex = _run(rec, data=b"this is not an image")
    assert out.example is None and ex is None
    assert out.rejections[0].kind == R.IMAGE
    assert out.rejections[0].reason == R.DECODE_ERROR
    assert out.rejections[0].source == SRC
    assert out.rejections[1:] == [parser_rej]
    assert out.boxes_written == 0


def test_parser_rejections_are_carried_for_kept_images():
    parser_rej = R.Rejection("labels/pic-1.xml#object=3", R.INVALID_COORDINATES, "", R.BOX)
    out, ex = _run(_record(_box(20, 10, 100, 60), rejections=[parser_rej]))
    assert ex is not None
    assert out.rejections == [parser_rej]


def test_too_many_pixels_rejects_image():
    out, _ = _run(_record(), max_pixels=W * H - 1)
    assert out.example is None
    assert [(r.kind, r.reason) for r in out.rejections] == [(R.IMAGE, R.TOO_MANY_PIXELS)]


# --- split -----------------------------------------------------------------------------------------
def test_split_is_deterministic():
    keys = [f"img-{i}" for i in range(200)]
    first = [split_for(k, 0.3) for k in keys]
    assert first == [split_for(k, 0.3) for k in keys]
    assert set(first) == {"train", "val"}


def test_split_is_the_same_in_another_process():
    # str hash() is salted per process; the split must not depend on it.
    keys = [f"img-{i}" for i in range(50)]
    code = "from beam_jobs.splits import hash_split as split_for; print(''.join('v' if split_for(f'img-{i}', 0.5) == 'val' else 't' for i in range(50)))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    here = "".join("v" if split_for(k, 0.5) == "val" else "t" for k in keys)
    assert other.stdout.strip() == here


def test_split_val_fraction_zero_is_all_train():
    assert {split_for(f"img-{i}", 0.0) for i in range(500)} == {"train"}


def test_split_val_share():
    val = sum(split_for(f"img-{i}", 0.1) == "val" for i in range(2000))
    assert 0.07 <= val / 2000 <= 0.13

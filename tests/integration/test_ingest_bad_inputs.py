"""Messy inputs through the real ingest job: every image and box ends up written or rejected with a reason."""

from __future__ import annotations

import io
import os
import struct
import zlib

import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
import apache_beam as beam
from PIL import Image

from beam_jobs import records as R
from beam_jobs.ingest import IngestError, run_ingest
from beam_jobs.ingest.join import MatchLabelsToImages
from beam_jobs.ingest.listing import ListFiles, ListImages
from beam_jobs.records import ImageFile
from beam_jobs.spill import Spill
from ssdflow.config import IngestConfig
from tests.helpers import read_ingest_output, read_jsonl

pytestmark = pytest.mark.integration


def _jpeg(w=64, h=48, color=(200, 30, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), color if mode == "RGB" else 128).save(buf, format="JPEG")
    return buf.getvalue()


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (a decompression bomb) with a tiny body."""

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def _voc(filename: str, w: int, h: int, objects) -> str:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects
    )
    return f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height></size>{objs}</annotation>"


@pytest.fixture()
def messy(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    good = _jpeg()
    (images / "good.jpg").write_bytes(good)
    (labels / "good.xml").write_text(
        _voc(
            "good.jpg",
            64,
            48,
            [
                ("cat", 10, 10, 30, 30),
                ("dog", 5, 5, 66, 40),  # clipped
                ("cat", -40, 0, 10, 10),  # far out
                ("cat", 30, 30, 10, 10),  # inverted
                ("cat", 10, 10, 10, 20),
            ],
        )
    )  # zero area
    (images / "twin-a.jpg").write_bytes(_jpeg(color=(1, 2, 3)))
    (images / "twin-b.jpg").write_bytes(_jpeg(color=(1, 2, 3)))
    (labels / "twin-a.xml").write_text(_voc("twin-a.jpg", 64, 48, [("cat", 1, 1, 20, 20)]))
    (labels / "twin-b.xml").write_text(_voc("twin-b.jpg", 64, 48, [("cat", 2, 2, 20, 20), ("dog", 3, 3, 30, 30)]))
    (images / "negative.jpg").write_bytes(_jpeg(color=(9, 9, 9)))
    (labels / "negative.xml").write_text(_voc("negative.jpg", 64, 48, []))
    (images / "wrongsize.jpg").write_bytes(_jpeg(color=(50, 50, 50)))
    (labels / "wrongsize.xml").write_text(_voc("wrongsize.jpg", 640, 480, [("dog", 10, 10, 20, 20)]))
    (images / "gray.png").write_bytes(_png(mode="L"))
    (labels / "gray.xml").write_text(_voc("gray.png", 64, 48, [("dog", 1, 1, 9, 9)]))
    (images / "truncated.jpg").write_bytes(_jpeg(color=(7, 70, 170))[:300])
    (labels / "truncated.xml").write_text(_voc("truncated.jpg", 64, 48, [("cat", 1, 1, 9, 9)]))
    (images / "text.jpg").write_bytes(b"this is not an image\n")
    (labels / "text.xml").write_text(_voc("text.jpg", 64, 48, []))
    (images / "empty.jpg").write_bytes(b"")
    (labels / "empty.xml").write_text(_voc("empty.jpg", 64, 48, []))
    (images / "bomb.png").write_bytes(_png_header_only(30_000, 30_000))
    (labels / "bomb.xml").write_text(_voc("bomb.png", 30000, 30000, []))
    (labels / "ghost.xml").write_text(_voc("ghost.jpg", 64, 48, [("cat", 1, 1, 9, 9)]))  # image missing
    (images / "unlabeled.jpg").write_bytes(_jpeg(color=(0, 99, 0)))
    (images / "same.jpg").write_bytes(_jpeg(color=(3, 3, 3)))
    (images / "same.png").write_bytes(_png(color=(4, 4, 4)))
    (labels / "same.xml").write_text(_voc("same.jpg", 64, 48, []))
    (labels / "xxe.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        "<annotation><filename>&x;</filename></annotation>"
    )
    (images / "notes.txt").write_text("not an image, skipped")
    return images, labels


def _png(mode="RGB", color=(10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (64, 48), color if mode == "RGB" else 77).save(buf, format="PNG")
    return buf.getvalue()


def test_every_case_is_written_or_rejected_with_its_reason(messy, tmp_path):
    images, labels = messy
    out = tmp_path / "out"
    stats = run_ingest(
        IngestConfig(images=str(images), labels=str(labels), format="voc", out=str(out), val_fraction=0.0)
    )
    lines = read_jsonl(out / "rejected.jsonl")
    by_source = {}
    for line in lines:
        by_source.setdefault(os.path.basename(line["source"].split("#")[0]), []).append(line["reason"])

    assert stats["images_in"] == 14  # 13 image files (notes.txt is skipped) + ghost's label
    assert stats["images_in"] == stats["images_written"]["total"] + stats["images_rejected"]["total"]
    assert stats["images_written"]["total"] == 5  # good, twin-a, negative, wrongsize, gray
    assert stats["images_rejected"] == {
        "total": 9,
        R.AMBIGUOUS_NAME: 2,
        R.DECODE_ERROR: 2,
        R.DUPLICATE: 1,
        R.EMPTY_FILE: 1,
        R.MISSING_IMAGE: 1,
        R.NO_LABEL: 1,
        R.TOO_MANY_PIXELS: 1,
    }
    assert by_source["twin-b.jpg"] == [R.DUPLICATE]
    assert by_source["truncated.jpg"] == [R.DECODE_ERROR] and by_source["text.jpg"] == [R.DECODE_ERROR]
    assert by_source["bomb.png"] == [R.TOO_MANY_PIXELS] and by_source["empty.jpg"] == [R.EMPTY_FILE]
    assert by_source["ghost.xml"] == [R.MISSING_IMAGE] and by_source["unlabeled.jpg"] == [R.NO_LABEL]
    assert sorted(by_source["same.jpg"] + by_source["same.png"]) == [R.AMBIGUOUS_NAME] * 2
    assert by_source["xxe.xml"] == [R.UNSAFE_XML]
    assert sorted(by_source["good.xml"]) == sorted([R.OUT_OF_BOUNDS, R.INVERTED, R.ZERO_AREA])
    assert stats["boxes_rejected"] == {"total": 3, R.INVERTED: 1, R.OUT_OF_BOUNDS: 1, R.ZERO_AREA: 1}
    assert stats["boxes_clipped"] == 1 and stats["label_size_corrected"] == 1 and stats["images_converted"] == 1
    assert stats["label_files_rejected"] == 1
    assert stats["boxes_written"] == 2 + 1 + 1 + 1  # good (2), twin-a, wrongsize, gray

    recs = read_ingest_output(out, "train")
    assert set(recs) == {"good", "twin-a", "negative", "wrongsize", "gray"}
    assert recs["negative"]["image/object/bbox/xmin"] == []
    assert recs["good"]["image/object/bbox/xmax"][1] == 1.0  # clipped, not rejected
    assert abs(recs["wrongsize"]["image/object/bbox/xmax"][0] - 20 / 64) < 1e-6  # the real size wins
    assert stats["boxes_per_class"] == {"cat": 2, "dog": 3}


def test_fixed_label_map_rejects_unknown_classes(messy, tmp_path):
    images, labels = messy
    (tmp_path / "map.pbtxt").write_text("item {\n  id: 1\n  name: 'cat'\n}\n")
    out = tmp_path / "out"
    stats = run_ingest(
        IngestConfig(
            images=str(images), labels=str(labels), format="voc", out=str(out), label_map=str(tmp_path / "map.pbtxt")
        )
    )
    assert stats["boxes_rejected"][R.UNKNOWN_CLASS] == 3  # the dog boxes of good, wrongsize, gray
    assert stats["boxes_per_class"] == {"cat": 2}
    assert '"name": "cat"' in (out / "label_map.json").read_text() and "dog" not in (out / "label_map.json").read_text()


def test_missing_inputs_fail_with_a_clear_error(tmp_path):
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (tmp_path / "images").mkdir()
    with pytest.raises(IngestError, match="--images .*no files found"):
        run_ingest(
            IngestConfig(
                images=str(tmp_path / "images"), labels=str(tmp_path / "labels"), format="voc", out=str(tmp_path / "o")
            )
        )
    (tmp_path / "images" / "a.jpg").write_bytes(_jpeg())
    with pytest.raises(IngestError, match="--classes"):
        run_ingest(
            IngestConfig(
                images=str(tmp_path / "images"), labels=str(tmp_path / "labels"), format="yolo", out=str(tmp_path / "o")
            )
        )


def test_match_labels_to_images_transform(tmp_path):
    """The join as a composite PTransform, on TestPipeline with assert_that."""
    rec_a = R.LabelRecord(image_name="a.jpg", source="l/a.xml")
    rec_b = R.LabelRecord(image_name="b.jpg", source="l/b.xml")
    rec_b2 = R.LabelRecord(image_name="b.png", source="l/b2.xml")
    rec_g = R.LabelRecord(image_name="ghost.jpg", source="l/ghost.xml")
    with BeamTestPipeline() as p:
        images = p | "I" >> beam.Create(
            [(p[2], ImageFile(p, 100)) for p in ("i/a.jpg", "i/b.jpg", "i/c.jpg", "i/d.jpg", "i/d.png")]
        )
        labels = p | "L" >> beam.Create([("a", rec_a), ("b", rec_b), ("b", rec_b2), ("ghost", rec_g)])
        spill = Spill(str(tmp_path / "spill"))
        out = {"images": images, "labels": labels} | MatchLabelsToImages(unlabeled_is_negative=False, spill=spill)
        assert_that(out.candidates, equal_to([("i/a.jpg", rec_a)]), label="candidates")
        assert_that(
            out.rejected | beam.Map(lambda r: (r.source, r.reason)),
            equal_to(
                [
                    ("i/b.jpg", R.MULTIPLE_LABELS),
                    ("i/c.jpg", R.NO_LABEL),
                    ("i/d.jpg", R.AMBIGUOUS_NAME),
                    ("i/d.png", R.AMBIGUOUS_NAME),
                    ("l/ghost.xml", R.MISSING_IMAGE),
                ]
            ),
            label="rejected",
        )


def test_list_files_matches_every_pattern_with_sizes_and_list_images_keys_them(tmp_path):
    """ListFiles as a composite PTransform (both patterns in one reshuffled stage), on TestPipeline:
    each name gets its own pattern's files, at any depth, with their sizes; an empty match is no error."""
    (tmp_path / "i" / "train").mkdir(parents=True)
    (tmp_path / "l").mkdir()
    (tmp_path / "i" / "a.jpg").write_bytes(b"x" * 3)
    (tmp_path / "i" / "train" / "b.png").write_bytes(b"x" * 5)
    (tmp_path / "i" / "notes.txt").write_text("not an image")
    (tmp_path / "l" / "a.xml").write_text("<annotation/>")
    with BeamTestPipeline() as p:
        files = p | ListFiles(
            {
                "images": str(tmp_path / "i" / "**"),
                "labels": str(tmp_path / "l" / "*"),
                "nothing": str(tmp_path / "none" / "*"),
            }
        )
        assert_that(
            files["labels"] | "L" >> beam.Map(lambda m: m.path),
            equal_to([str(tmp_path / "l" / "a.xml")]),
            label="labels",
        )
        assert_that(files["nothing"], equal_to([]), label="nothing")
        images = files["images"] | ListImages()
        assert_that(
            images.images | beam.MapTuple(lambda key, f: (key, os.path.relpath(f.path, tmp_path), f.size)),
            equal_to([("a", "i/a.jpg", 3), ("b", "i/train/b.png", 5)]),
            label="images",
        )
        assert_that(images.skipped | "S" >> beam.Map(os.path.basename), equal_to(["notes.txt"]), label="skipped")

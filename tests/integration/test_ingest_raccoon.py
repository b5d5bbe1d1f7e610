"""The raccoon dataset through the real Beam ingest job (DirectRunner), read back with tf.data."""

from __future__ import annotations

import io
import json
import os
import xml.etree.ElementTree as ET  # trusted fixture files; the job itself uses defusedxml

import numpy as np
import pytest
from PIL import Image

from beam_jobs.splits import hash_split as split_for
from beam_jobs.ingest import run_ingest
from ssdflow import schema, storage
from ssdflow.config import IngestConfig
from tests.helpers import DUPLICATE_PAIRS, raccoon_or_skip, read_ingest_output, read_json, read_jsonl

pytestmark = pytest.mark.integration


def _ingest(tmp_path_factory, name: str, fmt: str, labels: str, **kw) -> tuple[str, dict]:
    root = raccoon_or_skip()
    out = str(tmp_path_factory.mktemp(name))
    stats = run_ingest(IngestConfig(images=str(root / "images"), labels=labels, format=fmt, out=out, **kw))
    return out, stats


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = raccoon_or_skip()
    return _ingest(tmp_path_factory, "voc", "voc", str(root / "annotations"))


@pytest.fixture(scope="module")
def voc_records(voc):
    return read_ingest_output(voc[0])


def _box_tuples(rec) -> list[tuple]:
    return sorted(
        zip(
            rec[schema.CLASS_TEXT],
            *(np.round(rec[k], 6).tolist() for k in (schema.XMIN, schema.YMIN, schema.XMAX, schema.YMAX)),
        )
    )


def test_counts_reconcile_and_files_are_complete(voc):
    out, stats = voc
    assert stats["images_in"] == 200
    assert stats["images_written"]["total"] == 196
    assert stats["images_written"]["train"] + stats["images_written"]["val"] == 196
    assert stats["images_written"]["val"] > 0
    assert stats["images_rejected"] == {"total": 4, "duplicate": 4}
    assert stats["boxes_written"] == 213
    assert stats["boxes_per_class"] == {"raccoon": 213}
    assert stats["boxes_rejected"]["total"] == 0
    files = sorted(os.listdir(out))
    assert files == sorted(
        ["_SUCCESS", "label_map.json", "label_map.pbtxt", "stats.json", "rejected.jsonl", *stats["shards"]]
    )
    assert all(name.endswith("-of-00001.tfrecord") for name in stats["shards"])
    manifest = read_json(os.path.join(out, "_SUCCESS"))
    assert manifest["images_in"] == 200 and manifest["images_written"] == 196
    assert set(manifest["files"]) == set(files) - {"_SUCCESS"}
    assert read_json(os.path.join(out, "stats.json")) == stats
    assert schema.LabelMap.parse(open(os.path.join(out, "label_map.json")).read()) == {"raccoon": 1}
    assert schema.LabelMap.parse(open(os.path.join(out, "label_map.pbtxt")).read(), "label_map.pbtxt") == {"raccoon": 1}


def test_duplicates_written_once_naming_the_kept_twin(voc, voc_records):
    out, _ = voc
    lines = read_jsonl(os.path.join(out, "rejected.jsonl"))
    assert {line["reason"] for line in lines} == {"duplicate"}
    dropped = {os.path.basename(line["source"]): line["detail"] for line in lines}
    for a, b in DUPLICATE_PAIRS:
        kept, gone = sorted([a, b])  # the smallest key is kept, on every run and runner
        assert kept in voc_records and gone not in voc_records
        assert f"{kept}.jpg" in dropped[f"{gone}.jpg"]
    assert len(voc_records) == 196
    assert sum(len(r[schema.XMIN]) for r in voc_records.values()) == 213


def test_boxes_equal_the_xml_after_normalization(voc_records):
    root = raccoon_or_skip()
    checked = 0
    for sid, rec in voc_records.items():
        tree = ET.parse(root / "annotations" / f"{sid}.xml").getroot()
        w, h = int(tree.findtext("size/width")), int(tree.findtext("size/height"))
        assert (rec[schema.WIDTH], rec[schema.HEIGHT]) == (w, h)
        expected = sorted(
            (
                o.findtext("name").encode(),
                *(
                    float(o.findtext(f"bndbox/{k}")) / d
                    for k, d in (("xmin", w), ("ymin", h), ("xmax", w), ("ymax", h))
                ),
            )
            for o in tree.findall("object")
        )
        got = sorted(
            zip(rec[schema.CLASS_TEXT], rec[schema.XMIN], rec[schema.YMIN], rec[schema.XMAX], rec[schema.YMAX])
        )
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g[0] == e[0]
            np.testing.assert_allclose(g[1:], e[1:], atol=1e-6)
        assert rec[schema.CLASS_LABEL] == [1] * len(got)
        checked += 1
    assert checked == 196


def test_images_are_rgb_jpeg_and_rgb_jpegs_pass_through_untouched(voc_records):
    root = raccoon_or_skip()
    gray = 0
    for sid, rec in voc_records.items():
        src = (root / "images" / f"{sid}.jpg").read_bytes()
        written = Image.open(io.BytesIO(rec[schema.ENCODED]))
        written.load()
        assert written.format == "JPEG" and written.mode == "RGB"
        assert rec[schema.FORMAT] == b"jpeg"
        if Image.open(io.BytesIO(src)).mode == "L":
            gray += 1
        else:
            assert rec[schema.ENCODED] == src
    assert gray == 3


def test_split_is_a_stable_hash_of_the_key(voc):
    out, _ = voc
    for split in ("train", "val"):
        for sid in read_ingest_output(out, split):
            assert split_for(sid, 0.1) == split


def test_csv_gives_the_same_records(tmp_path_factory, voc_records):
    root = raccoon_or_skip()
    out, stats = _ingest(tmp_path_factory, "csv", "csv", str(root / "data" / "raccoon_labels.csv"))
    assert stats["images_in"] == 200 and stats["images_written"]["total"] == 196 and stats["boxes_written"] == 213
    csv_records = read_ingest_output(out)
    assert csv_records.keys() == voc_records.keys()
    for sid, rec in csv_records.items():
        assert rec[schema.SHA256] == voc_records[sid][schema.SHA256]
        assert _box_tuples(rec) == _box_tuples(voc_records[sid])


def _raccoon_rows():
    import csv

    root = raccoon_or_skip()
    with open(root / "data" / "raccoon_labels.csv") as f:
        return list(csv.DictReader(f))


def test_coco_and_yolo_give_the_same_records(tmp_path_factory, voc_records):
    rows = _raccoon_rows()
    labels = tmp_path_factory.mktemp("labels")
    # COCO
    names = sorted({r["filename"] for r in rows})
    images = [{"id": i, "file_name": n} for i, n in enumerate(names, start=1)]
    ids = {n: i for i, n in enumerate(names, start=1)}
    for img in images:
        r = next(r for r in rows if r["filename"] == img["file_name"])
        img.update(width=int(r["width"]), height=int(r["height"]))
    anns = [
        {
            "id": j,
            "image_id": ids[r["filename"]],
            "category_id": 1,
            "iscrowd": 0,
            "bbox": [
                float(r["xmin"]),
                float(r["ymin"]),
                float(r["xmax"]) - float(r["xmin"]),
                float(r["ymax"]) - float(r["ymin"]),
            ],
        }
        for j, r in enumerate(rows, start=1)
    ]
    coco = labels / "instances.json"
    coco.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "raccoon"}]}))
    # YOLO
    yolo = labels / "yolo"
    yolo.mkdir()
    (yolo / "classes.txt").write_text("raccoon\n")
    for name in names:
        lines = []
        for r in (r for r in rows if r["filename"] == name):
            w, h = float(r["width"]), float(r["height"])
            x0, y0, x1, y1 = (float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            lines.append(
                f"0 {(x0 + x1) / 2 / w:.10f} {(y0 + y1) / 2 / h:.10f} {(x1 - x0) / w:.10f} {(y1 - y0) / h:.10f}"
            )
        (yolo / f"{name[:-4]}.txt").write_text("\n".join(lines) + "\n")

    for fmt, path in (("coco", coco), ("yolo", yolo)):
        out, stats = _ingest(tmp_path_factory, fmt, fmt, str(path))
        assert stats["images_in"] == 200 and stats["images_written"]["total"] == 196, fmt
        assert stats["boxes_written"] == 213, fmt
        recs = read_ingest_output(out)
        assert recs.keys() == voc_records.keys(), fmt
        for sid, rec in recs.items():
            assert _box_tuples(rec) == _box_tuples(voc_records[sid]), (fmt, sid)


def test_rerun_replaces_previous_output_wholly(tmp_path):
    root = raccoon_or_skip()
    out = tmp_path / "out"
    out.mkdir()
    stale = ["train-00003-of-00007.tfrecord", "val-00001-of-00003.tfrecord", "stats.json", "_SUCCESS"]
    for name in stale:
        (out / name).write_text("stale")
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in ("raccoon-1", "raccoon-2", "raccoon-3"):
        (labels / f"{name}.xml").write_bytes((root / "annotations" / f"{name}.xml").read_bytes())
    stats = run_ingest(
        IngestConfig(
            images=str(root / "images" / "raccoon-[123].jpg"),
            labels=str(labels),
            format="voc",
            out=str(out),
            num_shards=2,
        )
    )
    assert stats["images_in"] == 3
    files = set(os.listdir(out))
    assert "train-00003-of-00007.tfrecord" not in files and "val-00001-of-00003.tfrecord" not in files
    assert {f for f in files if f.endswith(".tfrecord")} == {
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
        "val-00000-of-00002.tfrecord",
        "val-00001-of-00002.tfrecord",
    }
    assert read_json(out / "stats.json")["images_in"] == 3
    assert not [f for f in files if f.startswith(storage.TMP_PREFIX)]
    assert len(read_ingest_output(out)) == 3


def test_a_failed_rerun_leaves_the_previous_output_complete(tmp_path, monkeypatch):
    """A run that fails before its commit (here while planning shards) changes nothing of the previous
    complete output: its _SUCCESS and every file it lists stay byte for byte, and `train` can still
    read it; the failed run's temp directory is gone."""
    root = raccoon_or_skip()
    out = tmp_path / "out"
    cfg = IngestConfig(
        images=str(root / "images" / "raccoon-1*.jpg"), labels=str(root / "annotations"), format="voc", out=str(out)
    )
    run_ingest(cfg)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert "_SUCCESS" in before

    import beam_jobs.ingest.shards as shards

    def boom(*args, **kwargs):
        raise RuntimeError("injected failure while planning shards")

    monkeypatch.setattr(shards, "plan_layout", boom)
    with pytest.raises(Exception, match="injected failure"):
        run_ingest(cfg)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert storage.read_success(str(out))["files"] == sorted(set(before) - {"_SUCCESS"})
    assert not [f for f in os.listdir(out) if f.startswith(storage.TMP_PREFIX)]


def test_directories_are_read_at_any_depth_and_skipped_files_are_named(tmp_path):
    """YOLO/COCO-style layouts (images/train/…, images/val/…) and date partitions: every image below
    --images is ingested; files that are not images are counted and named in stats.json."""
    import shutil

    root = raccoon_or_skip()
    images, labels = tmp_path / "images", tmp_path / "labels"
    layout = {"train/2026-01-01": range(1, 5), "train/2026-01-02": range(5, 8), "val": range(8, 10), "": range(10, 11)}
    for sub, ids in layout.items():
        (images / sub).mkdir(parents=True, exist_ok=True)
        (labels / sub).mkdir(parents=True, exist_ok=True)
        for i in ids:
            shutil.copy(root / "images" / f"raccoon-{i}.jpg", images / sub)
            shutil.copy(root / "annotations" / f"raccoon-{i}.xml", labels / sub)
    (images / "train" / "README.txt").write_text("not an image")
    stats = run_ingest(IngestConfig(images=str(images), labels=str(labels), format="voc", out=str(tmp_path / "out")))
    assert stats["images_in"] == stats["images_written"]["total"] == 10
    assert stats["files_skipped"] == {
        "total": 1,
        "by_extension": {".txt": 1},
        "examples": [str(images / "train" / "README.txt")],
    }
    assert read_json(tmp_path / "out" / "stats.json")["files_skipped"]["total"] == 1


def test_no_step_holds_every_image_outcome(tmp_path, monkeypatch):
    """Dedup runs per hash bucket and the shard layout per part file: no DoFn call sees all 200
    outcomes (a single-process gather would not scale to 10^7 images), and the books still reconcile."""
    from beam_jobs.ingest.dedup import Dedup

    root = raccoon_or_skip()
    seen: list[int] = []
    original = Dedup.process

    def counting(self, element):
        seen.append(sum(len(self.spill.read(path)) for path in element[1]))
        yield from original(self, element)

    monkeypatch.setattr(Dedup, "process", counting)
    stats = run_ingest(
        IngestConfig(
            images=str(root / "images"), labels=str(root / "annotations"), format="voc", out=str(tmp_path / "out")
        )
    )
    assert sum(seen) == stats["images_in"] == 200 and stats["images_rejected"]["duplicate"] == 4
    assert len(seen) > 8 and max(seen) < 200 // 4, seen

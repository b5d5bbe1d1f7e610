"""Splits as users bring them, through the real ingest job (beam_jobs/splits.py): an Ultralytics
YOLO tree with data.yaml, and COCO files per split."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from beam_jobs.ingest import run_ingest
from ssdflow.cli_errors import run_cli
from ssdflow.config import IngestConfig
from tests.helpers import read_ingest_output

pytestmark = pytest.mark.integration


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (seed * 37 % 256, seed * 91 % 256, seed * 13 % 256)).save(buf, format="JPEG")
    return buf.getvalue()


def test_an_ultralytics_tree_keeps_its_own_split_and_pairs_by_path(tmp_path, capfd):
    """images/{train,val,test}/ + labels/{train,val,test}/ + data.yaml at the root, the same file
    names in every split (as Ultralytics allows): every image written, in its own split, with its
    own label; `evaluate --split test` finds the test split."""
    root = tmp_path / "ds"
    counts = {"train": 6, "val": 3, "test": 2}
    seed = 0
    for split, n in counts.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            seed += 1
            (root / "images" / split / f"im{i}.jpg").write_bytes(_jpeg(seed))
            # class 1 (dog) in val and test, class 0 (cat) in train: a label that went to the wrong
            # image would show up as the wrong class
            cls = 0 if split == "train" else 1
            (root / "labels" / split / f"im{i}.txt").write_text(f"{cls} 0.5 0.5 0.4 0.3\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\ntest: images/test\nnames: [cat, dog]\n")
    out = tmp_path / "out"
    assert run_cli(["ingest", "--images", str(root / "images"), "--labels", str(root / "labels"), "--format", "yolo",
                    "--out", str(out), "--val-fraction", "0.5"]) == 0
    assert "(train 6, val 3, test 2)" in capfd.readouterr().out
    stats = json.loads((out / "stats.json").read_text())
    assert stats["images_written"] == {"total": 11, **counts} and stats["images_rejected"]["total"] == 0
    assert stats["boxes_per_split"] == counts
    for split, n in counts.items():
        records = read_ingest_output(out, split)
        assert sorted(records) == [f"{split}/im{i}" for i in range(n)]
        names = {name for r in records.values() for name in r["image/object/class/text"]}
        assert names == ({b"cat"} if split == "train" else {b"dog"})
    assert sorted(p.name for p in out.glob("test-*.tfrecord")) == ["test-00000-of-00001.tfrecord"]
    from model.dataset import count_records, shard_files  # what `ssdflow evaluate --split test` reads

    assert shard_files(str(out), "test") == [str(out / "test-00000-of-00001.tfrecord")] and count_records(str(out), "test") == 2

    # Without data.yaml the folders still decide.
    (root / "data.yaml").rename(root / "classes.yaml")
    again = run_ingest(IngestConfig(images=str(root / "images"), labels=str(root / "labels"), format="yolo",
                                    out=str(tmp_path / "out2"), classes=str(root / "classes.yaml"), val_fraction=0.5))
    assert again["images_written"] == {"total": 11, **counts}


def test_coco_files_per_split_and_the_hash_for_the_rest(tmp_path):
    """instances_train.json / instances_val.json over one flat image folder: each image in its file's
    split; a CSV without split words falls back to --val-fraction."""
    images, labels = tmp_path / "images", tmp_path / "annotations"
    images.mkdir()
    labels.mkdir()
    for split, ids in (("train", range(1, 6)), ("val", range(6, 9))):
        doc = {"images": [{"id": i, "file_name": f"im{i}.jpg", "width": 64, "height": 48} for i in ids],
               "categories": [{"id": 1, "name": "cat"}],
               "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [5, 5, 20, 20], "iscrowd": 0} for i in ids]}
        (labels / f"instances_{split}.json").write_text(json.dumps(doc))
        for i in ids:
            (images / f"im{i}.jpg").write_bytes(_jpeg(i))
    stats = run_ingest(IngestConfig(images=str(images), labels=str(labels), format="coco", out=str(tmp_path / "out"),
                                    val_fraction=0.0))
    assert stats["images_written"] == {"total": 8, "train": 5, "val": 3, "test": 0}
    assert sorted(read_ingest_output(tmp_path / "out", "val")) == ["im6", "im7", "im8"]

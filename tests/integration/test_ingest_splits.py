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
    (root / "data.yaml").write_text(
        "path: .\ntrain: images/train\nval: images/val\ntest: images/test\nnames: [cat, dog]\n"
    )
    out = tmp_path / "out"
    assert (
        run_cli(
            [
                "ingest",
                "--images",
                str(root / "images"),
                "--labels",
                str(root / "labels"),
                "--format",
                "yolo",
                "--out",
                str(out),
                "--val-fraction",
                "0.5",
            ]
        )
        == 0
    )
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

    assert (
        shard_files(str(out), "test") == [str(out / "test-00000-of-00001.tfrecord")]
        and count_records(str(out), "test") == 2
    )

    # Without data.yaml the folders still decide.
    (root / "data.yaml").rename(root / "classes.yaml")
    again = run_ingest(
        IngestConfig(
            images=str(root / "images"),
            labels=str(root / "labels"),
            format="yolo",
            out=str(tmp_path / "out2"),
            classes=str(root / "classes.yaml"),
            val_fraction=0.5,
        )
    )
    assert again["images_written"] == {"total": 11, **counts}


def test_coco_files_per_split_and_the_hash_for_the_rest(tmp_path):
    """instances_train.json / instances_val.json over one flat image folder: each image in its file's
    split; a CSV without split words falls back to --val-fraction."""
    images, labels = tmp_path / "images", tmp_path / "annotations"
    images.mkdir()
    labels.mkdir()
    for split, ids in (("train", range(1, 6)), ("val", range(6, 9))):
        doc = {
            "images": [{"id": i, "file_name": f"im{i}.jpg", "width": 64, "height": 48} for i in ids],
            "categories": [{"id": 1, "name": "cat"}],
            "annotations": [
                {"id": i, "image_id": i, "category_id": 1, "bbox": [5, 5, 20, 20], "iscrowd": 0} for i in ids
            ],
        }
        (labels / f"instances_{split}.json").write_text(json.dumps(doc))
        for i in ids:
            (images / f"im{i}.jpg").write_bytes(_jpeg(i))
    stats = run_ingest(
        IngestConfig(images=str(images), labels=str(labels), format="coco", out=str(tmp_path / "out"), val_fraction=0.0)
    )
    assert stats["images_written"] == {"total": 8, "train": 5, "val": 3, "test": 0}
    assert sorted(read_ingest_output(tmp_path / "out", "val")) == ["im6", "im7", "im8"]


def _voc(name: str, cls: str) -> str:
    return (
        f"<annotation><filename>{name}</filename><size><width>64</width><height>48</height><depth>3</depth></size>"
        f"<object><name>{cls}</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>30</xmax><ymax>30</ymax></bndbox></object>"
        "</annotation>"
    )


def test_split_lists_pascal_voc_image_sets_and_ultralytics_txt_files(tmp_path):
    """Pascal VOC's ImageSets/Main/{train,val,test}.txt beside Annotations/ decide each image's split
    (the devkit's other ImageSets files are neither label files nor 'ignored'); a data.yaml whose
    train/val entries are .txt lists of images does the same for YOLO, over one flat folder."""
    voc = tmp_path / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Layout").mkdir()
    lists = {
        "train": ["2008_000001", "2008_000002", "2008_000003", "2008_000004"],
        "val": ["2008_000005", "2008_000006"],
        "test": ["2008_000007"],
    }
    for split, ids in lists.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for i in ids:
            (voc / "JPEGImages" / f"{i}.jpg").write_bytes(_jpeg(int(i[-1])))
            (voc / "Annotations" / f"{i}.xml").write_text(_voc(f"{i}.jpg", "cat" if split == "train" else "dog"))
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i in lists["train"] + lists["val"]))
    (voc / "ImageSets" / "Main" / "cat_train.txt").write_text("2008_000001  1\n")
    (voc / "ImageSets" / "Layout" / "train.txt").write_text("2008_000001\n")
    stats = run_ingest(
        IngestConfig(
            images=str(voc / "JPEGImages"), labels=str(voc), format="voc", out=str(tmp_path / "voc"), val_fraction=0.0
        )
    )
    assert stats["images_written"] == {"total": 7, "train": 4, "val": 2, "test": 1}
    assert (
        stats["label_files_ignored"]["total"] == 0 and stats["label_files_rejected"] == 0 and "format_hint" not in stats
    )
    for split, ids in lists.items():
        records = read_ingest_output(tmp_path / "voc", split)
        assert sorted(records) == ids
        assert {n for r in records.values() for n in r["image/object/class/text"]} == (
            {b"cat"} if split == "train" else {b"dog"}
        )

    # Ultralytics: train: train.txt and val: [val.txt], paths relative to the lists ("./" or plain).
    ds = tmp_path / "yolo"
    (ds / "images").mkdir(parents=True)
    (ds / "labels").mkdir()
    for i in range(6):
        (ds / "images" / f"im{i}.jpg").write_bytes(_jpeg(i))
        (ds / "labels" / f"im{i}.txt").write_text(f"{int(i >= 4)} 0.5 0.5 0.4 0.3\n")
    (ds / "train.txt").write_text("".join(f"./images/im{i}.jpg\n" for i in range(4)))
    (ds / "val.txt").write_text("images/im4.jpg\nimages/im5.jpg\n")
    (ds / "data.yaml").write_text("path: .\ntrain: train.txt\nval: [val.txt]\nnames: [cat, dog]\n")
    stats = run_ingest(
        IngestConfig(
            images=str(ds / "images"),
            labels=str(ds / "labels"),
            format="yolo",
            out=str(tmp_path / "y"),
            val_fraction=0.9,
        )
    )
    assert stats["images_written"] == {"total": 6, "train": 4, "val": 2, "test": 0}
    assert sorted(read_ingest_output(tmp_path / "y", "val")) == ["im4", "im5"]
    (ds / "data.yaml").write_text("path: .\ntrain: train.txt\nval: missing.txt\nnames: [cat, dog]\n")
    with pytest.raises(Exception, match="missing.txt as the val list, which is not there"):
        run_ingest(
            IngestConfig(images=str(ds / "images"), labels=str(ds / "labels"), format="yolo", out=str(tmp_path / "y2"))
        )

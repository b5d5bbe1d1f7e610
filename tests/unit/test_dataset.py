"""model.dataset: a tiny ingest-like output (framed tf.Examples, label map, stats, _SUCCESS) read back
through shard_files / parse_example / make_dataset / eval_dataset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from model.anchors import generate_anchors
from model.box_coder import decode
from model.dataset import (
    DatasetError,
    box_shapes,
    count_records,
    eval_dataset,
    make_dataset,
    parse_example,
    read_label_map,
    shard_files,
)
from model.matcher import iou
from ssdflow import schema
from ssdflow.config import ModelConfig
from ssdflow.tfrecord import frame
from tests.unit.imaging import encode

LABELS = schema.LabelMap.from_names(["cat", "dog"])  # cat 1, dog 2
NAMES = LABELS.names_by_id()
CFG = ModelConfig(alpha=0.35, image_size=96, num_classes=2)
S = CFG.image_size

# (key, width, height, [(x0, y0, x1, y1, class_id), ...] in pixels); rectangles are white on black
TRAIN = [
    ("t0", 160, 120, [(20, 10, 100, 70, 1)]),
    ("t1", 100, 140, [(5, 10, 45, 60, 1), (55, 80, 95, 130, 2)]),
    ("t2", 128, 96, [(64, 32, 120, 90, 2)]),
    ("t3", 120, 120, [(10, 10, 110, 110, 1)]),
]
VAL = [
    ("v0", 150, 100, [(30, 20, 120, 80, 2)]),
    ("v1", 90, 130, [(0, 0, 40, 50, 1), (50, 70, 90, 130, 2)]),
]


def _norm_boxes(w, h, rects):
    """[M, 4] float32 (ymin, xmin, ymax, xmax), as stored in the Example."""
    return np.array([[y0 / h, x0 / w, y1 / h, x1 / w] for x0, y0, x1, y1, _ in rects], np.float32).reshape(-1, 4)


def _jpeg(w, h, rects) -> bytes:
    arr = np.zeros((h, w, 3), np.uint8)
    for x0, y0, x1, y1, _ in rects:
        arr[y0:y1, x0:x1] = 255
    from PIL import Image

    return encode(Image.fromarray(arr, mode="RGB"), "JPEG")


def _example(key, w, h, rects) -> bytes:
    data = _jpeg(w, h, rects)
    b = _norm_boxes(w, h, rects)
    return schema.serialize_example(
        schema.ExampleFields(
            encoded=data,
            image_format="jpeg",
            height=h,
            width=w,
            filename=f"{key}.jpg",
            source_id=key,
            sha256=hashlib.sha256(data).hexdigest(),
            xmin=b[:, 1].tolist(),
            ymin=b[:, 0].tolist(),
            xmax=b[:, 3].tolist(),
            ymax=b[:, 2].tolist(),
            class_text=[NAMES[r[4]] for r in rects],
            class_label=[r[4] for r in rects],
            difficult=[0] * len(rects),
        )
    )


def _write_ingest(out: Path, success: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for split, rows in (("train", TRAIN), ("val", VAL)):
        name = f"{split}-00000-of-00001.tfrecord"
        (out / name).write_bytes(b"".join(frame(_example(*row)) for row in rows))
        names.append(name)
    (out / "label_map.json").write_text(LABELS.to_json())
    (out / "stats.json").write_text(
        json.dumps({"images_written": {"train": len(TRAIN), "val": len(VAL), "total": len(TRAIN) + len(VAL)}})
    )
    if success:
        (out / "_SUCCESS").write_text(json.dumps({"files": sorted(names + ["label_map.json", "stats.json"])}))
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(_write_ingest(tmp_path_factory.mktemp("ingest")))


@pytest.fixture(scope="module")
def anchors():
    return generate_anchors(CFG).numpy()


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


# --- the ingest output contract --------------------------------------------------------------------
def test_shard_files_requires_success(tmp_path):
    out = _write_ingest(tmp_path / "partial", success=False)
    with pytest.raises(DatasetError, match="_SUCCESS"):
        shard_files(str(out), "train")
    (out / "_SUCCESS").write_text("{}")
    assert shard_files(str(out), "train") == [str(out / "train-00000-of-00001.tfrecord")]


def test_shard_files_missing_split(data_dir):
    assert [Path(f).name for f in shard_files(data_dir, "val")] == ["val-00000-of-00001.tfrecord"]
    with pytest.raises(DatasetError, match="no test shards"):
        shard_files(data_dir, "test")


def test_label_map_and_counts(data_dir):
    assert read_label_map(data_dir) == {"cat": 1, "dog": 2}
    assert count_records(data_dir, "train") == len(TRAIN)
    assert count_records(data_dir, "val") == len(VAL)


# --- parse_example ---------------------------------------------------------------------------------
def test_parse_example_exact(data_dir):
    records = list(tf.data.TFRecordDataset(shard_files(data_dir, "train")))
    assert len(records) == len(TRAIN)
    for raw, (key, w, h, rects) in zip(records, TRAIN):
        ex = parse_example(raw)
        assert ex["key"].numpy() == key.encode()
        assert ex["image"].dtype == tf.uint8 and tuple(ex["image"].shape) == (h, w, 3)
        assert ex["boxes"].dtype == tf.float32
        np.testing.assert_array_equal(ex["boxes"].numpy(), _norm_boxes(w, h, rects))
        assert ex["classes"].dtype == tf.int32
        np.testing.assert_array_equal(ex["classes"].numpy(), [r[4] for r in rects])
        assert ex["encoded"].numpy() == _jpeg(w, h, rects)


# --- make_dataset ----------------------------------------------------------------------------------
def _check_targets(y, gt_boxes, gt_classes, anchors):
    """y [N, 5]: every positive decodes to a ground-truth box with its class; every box has a positive."""
    cls = y[:, 4]
    assert set(np.unique(cls)) <= {-1.0, 0.0, 1.0, 2.0}
    pos = np.nonzero(cls > 0)[0]
    assert pos.size >= len(gt_boxes) >= 1
    np.testing.assert_array_equal(y[cls <= 0, :4], 0.0)
    decoded = decode(y[pos, :4], anchors[pos], CFG.variances).numpy()
    overlaps = iou(decoded, gt_boxes).numpy()  # [P, M]
    best = overlaps.argmax(axis=1)
    assert np.all(overlaps.max(axis=1) > 0.9), overlaps.max(axis=1)
    np.testing.assert_allclose(decoded, gt_boxes[best], atol=1e-4)
    np.testing.assert_array_equal(cls[pos], np.asarray(gt_classes)[best])
    assert set(best) == set(range(len(gt_boxes))), "a ground-truth box got no positive anchor"


def test_make_dataset_eval_mode(data_dir, anchors):
    files = shard_files(data_dir, "train")
    ds = make_dataset(files, anchors, S, CFG.variances, batch_size=3, training=False, deterministic=True)
    batches = _batches(ds)
    assert [x.shape[0] for x, _ in batches] == [3, 1]  # no drop_remainder outside training
    images = np.concatenate([x for x, _ in batches])
    targets = np.concatenate([y for _, y in batches])
    assert images.dtype == np.float32 and images.shape == (len(TRAIN), S, S, 3)
    assert images.min() >= 0.0 and images.max() <= 255.0 and images.max() > 200.0
    assert targets.dtype == np.float32 and targets.shape == (len(TRAIN), len(anchors), 5)
    for img, y, (key, w, h, rects) in zip(images, targets, TRAIN):
        gt = _norm_boxes(w, h, rects)
        _check_targets(y, gt, [r[4] for r in rects], anchors)
        # Resizing to S x S keeps normalized coordinates: the white pixels still lie on the boxes.
        white = img.mean(axis=-1) > 127.5
        for y0, x0, y1, x1 in gt * S:
            inner = white[int(np.ceil(y0)) + 2 : int(y1) - 2, int(np.ceil(x0)) + 2 : int(x1) - 2]
            assert inner.size and inner.all(), key
        union = np.zeros_like(white)
        for y0, x0, y1, x1 in gt * S:
            union[max(0, int(y0) - 2) : int(np.ceil(y1)) + 2, max(0, int(x0) - 2) : int(np.ceil(x1)) + 2] = True
        assert not (white & ~union).any(), f"{key}: white pixels away from every box"


def test_make_dataset_nondeterministic_same_content(data_dir, anchors):
    files = shard_files(data_dir, "train")
    a = _batches(make_dataset(files, anchors, S, CFG.variances, 4, training=False, deterministic=True))
    b = _batches(make_dataset(files, anchors, S, CFG.variances, 4, training=False, deterministic=False))
    key = lambda x: x.sum()  # noqa: E731
    assert sorted(map(key, a[0][0])) == pytest.approx(sorted(map(key, b[0][0])))


def _train(data_dir, anchors, seed=3, augmentation=True, repeat=False):
    return make_dataset(
        shard_files(data_dir, "train"),
        anchors,
        S,
        CFG.variances,
        2,
        training=True,
        deterministic=True,
        seed=seed,
        shuffle_buffer=8,
        augmentation=augmentation,
        repeat=repeat,
    )


def _same(a, b):
    return len(a) == len(b) and all(
        np.array_equal(x1, x2) and np.array_equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b)
    )


def test_deterministic_training_is_reproducible(data_dir, anchors):
    ds = _train(data_dir, anchors)
    first = _batches(ds)
    assert len(first) == len(TRAIN) // 2  # drop_remainder in training
    assert all(x.shape == (2, S, S, 3) and y.shape == (2, len(anchors), 5) for x, y in first)
    assert _same(first, _batches(ds)), "second iteration of the same dataset differs"
    assert _same(first, _batches(_train(data_dir, anchors))), "a second dataset built the same way differs"
    others = [_batches(_train(data_dir, anchors, seed=s)) for s in (4, 5)]
    assert not all(_same(first, o) for o in others), "different seeds gave the same batches"
    # augmentation is on: the same order without it gives other pixels for at least one image
    assert not _same(first, _batches(_train(data_dir, anchors, augmentation=False)))


def test_training_targets_stay_valid_under_augmentation(data_dir, anchors):
    gt = {c: [] for c in (1, 2)}
    for seed in range(3):
        for x, y in _batches(_train(data_dir, anchors, seed=seed)):
            assert x.min() >= 0.0 and x.max() <= 255.0
            for yi in y:
                pos = yi[:, 4] > 0
                boxes = decode(yi[pos, :4], anchors[pos], CFG.variances).numpy()
                assert np.all(boxes >= -1e-4) and np.all(boxes <= 1 + 1e-4), boxes
                assert np.all(boxes[:, 2:] > boxes[:, :2])
                for c in np.unique(yi[pos, 4]):
                    gt[int(c)].append(c)
    assert gt[1] and gt[2]


def test_deterministic_epochs_get_fresh_augmentation(data_dir, anchors):
    ds = _train(data_dir, anchors, repeat=True).take(len(TRAIN) // 2 * 2)  # as model/train.py builds it
    batches = _batches(ds)
    n = len(TRAIN) // 2
    assert not _same(batches[:n], batches[n:]), "epoch 2 is a byte-for-byte copy of epoch 1"


# --- eval_dataset ----------------------------------------------------------------------------------
def test_eval_dataset_ragged(data_dir):
    batches = list(eval_dataset(shard_files(data_dir, "val"), batch_size=8))
    assert len(batches) == 1
    b = batches[0]
    assert {"encoded", "key", "height", "width", "boxes", "classes", "difficult"} <= set(b)
    assert [k.decode() for k in b["key"].numpy()] == [v[0] for v in VAL]
    assert b["height"].numpy().tolist() == [v[2] for v in VAL]
    assert b["width"].numpy().tolist() == [v[1] for v in VAL]
    assert isinstance(b["boxes"], tf.RaggedTensor) and isinstance(b["classes"], tf.RaggedTensor)
    assert b["boxes"].row_lengths().numpy().tolist() == [len(v[3]) for v in VAL]
    for i, (key, w, h, rects) in enumerate(VAL):
        np.testing.assert_array_equal(b["boxes"][i].numpy(), _norm_boxes(w, h, rects))
        np.testing.assert_array_equal(b["classes"][i].numpy(), [r[4] for r in rects])
        np.testing.assert_array_equal(b["difficult"][i].numpy(), [0] * len(rects))
        assert b["encoded"][i].numpy() == _jpeg(w, h, rects)


def test_box_shapes_are_every_train_box_in_record_order(data_dir):
    heights = [(y1 - y0) / h for _, w, h, rects in TRAIN for x0, y0, x1, y1, _ in rects]
    widths = [(x1 - x0) / w for _, w, h, rects in TRAIN for x0, y0, x1, y1, _ in rects]
    got_h, got_w, classes = box_shapes(shard_files(data_dir, "train"))
    np.testing.assert_allclose(got_h, heights, rtol=1e-5)
    np.testing.assert_allclose(got_w, widths, rtol=1e-5)
    np.testing.assert_allclose(box_shapes(shard_files(data_dir, "train"), max_images=2)[1], widths[:3], rtol=1e-5)
    assert classes.tolist() == [r[4] for _, _, _, rects in TRAIN for r in rects]

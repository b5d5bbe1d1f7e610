"""The tf.data input pipeline: ingest's TFRecord shards → (images, targets) batches.

    shards ─ interleave(TFRecordDataset) ─ parse (ssdflow.schema) ─ decode JPEG/PNG ─ augment
           ─ resize to S x S ─ encode targets against the anchors ─ batch ─ prefetch

Everything runs in the tf.data graph, in parallel, so the accelerator never waits for input.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil

import numpy as np
import tensorflow as tf

from model.augment import augment
from model.matcher import encode_targets
from ssdflow import schema, storage


class DatasetError(RuntimeError):
    pass


def local_records(data_dir: str) -> str:
    """The complete ingest output ``data_dir`` on local disk, where tf.data reads it at disk speed.

    A local output is read where it is. One in object storage (s3://, gs://: TensorFlow 2.21 reads no
    s3:// itself) is copied once into this machine's cache (``$SSDFLOW_CACHE_DIR``), file by file in
    1 MiB pieces (memory does not grow with the data), the files its ``_SUCCESS`` manifest names and
    nothing else; the copy is keyed by the location and the manifest, so a new ingest output is
    fetched anew and a rerun (or the resumption of a killed training) on the same machine is not.
    Older copies of the same location are removed, so the cache holds one copy per data location.
    """
    manifest = storage.read_success(data_dir)
    if manifest is None or manifest.get("job", "ingest") != "ingest":
        what = "no _SUCCESS" if manifest is None else f"its _SUCCESS is a {manifest['job']} output's"
        raise DatasetError(f"{data_dir}: {what}: not a complete ingest output (run `ssdflow ingest` first)")
    if storage.is_local(data_dir):
        return storage.local_path(data_dir)
    wanted = {storage.SUCCESS, *manifest.get("files", [])}
    where = hashlib.sha256(data_dir.rstrip("/").encode()).hexdigest()[:12]
    key = f"records-{where}-{hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]}"
    local = storage.local_dir(
        data_dir, key, include=lambda rel: rel in wanted, is_valid=lambda path: storage.read_success(path) == manifest
    )
    for old in glob.glob(os.path.join(os.path.dirname(local), f"records-{where}-*")):
        if old != local:
            shutil.rmtree(old, ignore_errors=True)
    return local


def shard_files(data_dir: str, split: str) -> list[str]:
    """The shards of a complete ingest output (its _SUCCESS must exist)."""
    if storage.read_success(data_dir) is None:
        raise DatasetError(f"{data_dir}: no _SUCCESS: not a complete ingest output (run `ssdflow ingest` first)")
    files = sorted(tf.io.gfile.glob(os.path.join(data_dir, f"{split}-*-of-*.tfrecord")))
    if not files:
        raise DatasetError(f"{data_dir}: no {split} shards")
    return files


def read_label_map(data_dir: str) -> schema.LabelMap:
    return schema.LabelMap.parse(storage.read_text(storage.join(data_dir, "label_map.json")), "label_map.json")


def count_records(data_dir: str, split: str) -> int:
    stats = json.loads(storage.read_text(storage.join(data_dir, "stats.json")))
    return int(stats["images_written"][split])


def box_shapes(files: list[str], max_images: int = 5000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Height, width and class id of every box in the first ``max_images`` records, in record order:
    ([M] float32, [M] float32, [M] int64). Heights and widths are fractions of the image's (boxes are
    normalized, and training resizes to a square); a box's side is sqrt(h * w).

    Reads only the box and class features, so it costs a pass over the records' headers, not a decode.
    """
    spec = {k: tf.io.VarLenFeature(tf.float32) for k in (schema.YMIN, schema.XMIN, schema.YMAX, schema.XMAX)}
    spec[schema.CLASS_LABEL] = tf.io.VarLenFeature(tf.int64)

    def shapes(serialized):
        ex = tf.io.parse_example(serialized, spec)
        h = ex[schema.YMAX].values - ex[schema.YMIN].values
        w = ex[schema.XMAX].values - ex[schema.XMIN].values
        return tf.maximum(h, 0.0), tf.maximum(w, 0.0), ex[schema.CLASS_LABEL].values

    out = [
        tuple(t.numpy() for t in batch)
        for batch in tf.data.TFRecordDataset(files).take(max_images).batch(256).map(shapes)
    ]
    if not out:
        return np.zeros([0], np.float32), np.zeros([0], np.float32), np.zeros([0], np.int64)
    return tuple(
        np.concatenate([b[i] for b in out]).astype(dtype) for i, dtype in enumerate((np.float32, np.float32, np.int64))
    )


def parse_example(serialized):
    """One serialized Example → dict(image uint8 [H, W, 3], boxes [M, 4], classes [M] int32, encoded, key)."""
    ex = tf.io.parse_single_example(serialized, schema.tf_feature_spec())
    dense = lambda k: tf.sparse.to_dense(ex[k])  # noqa: E731
    boxes = tf.stack([dense(schema.YMIN), dense(schema.XMIN), dense(schema.YMAX), dense(schema.XMAX)], axis=-1)
    image = tf.io.decode_image(ex[schema.ENCODED], channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return {
        "image": image,
        "boxes": tf.reshape(boxes, [-1, 4]),
        "classes": tf.cast(dense(schema.CLASS_LABEL), tf.int32),
        "encoded": ex[schema.ENCODED],
        "key": ex[schema.SOURCE_ID],
    }


def make_dataset(
    files: list[str],
    anchors,
    image_size: int,
    variances,
    batch_size: int,
    *,
    training: bool,
    deterministic: bool = False,
    seed: int = 0,
    shuffle_buffer: int = 512,
    augmentation: bool = True,
    repeat: bool = False,
    atss_levels=None,
    skip_batches: int = 0,
) -> tf.data.Dataset:
    """Batches of (images float32 [B, S, S, 3] in 0..255, y_true float32 [B, N, 5]).

    ``atss_levels`` (``anchors.anchor_levels``): match anchors by ATSS instead of argmax IoU
    (matcher.encode_targets).

    ``deterministic``: the same batches in the same order on every run (tests, debugging); else
    shards are read in parallel and out of order, which is faster. ``repeat``: an endless stream
    whose every pass gets fresh augmentation (the element index, which seeds it, keeps counting).
    ``skip_batches``: start the (repeated, training) stream that many batches in, as if they had been
    read: a deterministic run resumed after k epochs of n steps sees the batches the uninterrupted run
    saw from step k·n on, with the same augmentation (the skip comes before decoding, so it costs
    only reading the records).
    """
    anchors = tf.constant(anchors, tf.float32)
    options = tf.data.Options()
    options.deterministic = deterministic
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=not deterministic)
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 8),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=not deterministic)
    if repeat:
        ds = ds.repeat()
    ds = ds.enumerate()
    if skip_batches:
        ds = ds.skip(skip_batches * batch_size)  # after enumerate: the skipped elements keep their indices

    def load(index, serialized):
        ex = parse_example(serialized)
        image, boxes, classes = tf.cast(ex["image"], tf.float32), ex["boxes"], ex["classes"]
        if training and augmentation:
            if deterministic:
                aug_seed = tf.stack([tf.cast(seed, tf.int64), index])
            else:
                aug_seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
            image, boxes, classes = augment(image, boxes, classes, aug_seed)
        image = tf.image.resize(image, [image_size, image_size])
        y_true = encode_targets(boxes, classes, anchors, variances, atss_levels=atss_levels)
        return image, y_true

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def eval_dataset(files: list[str], batch_size: int = 16) -> tf.data.Dataset:
    """Batches of dict(encoded [B] string, key [B], boxes ragged, classes ragged, height, width) for evaluation."""

    def load(serialized):
        ex = tf.io.parse_single_example(serialized, schema.tf_feature_spec())
        dense = lambda k: tf.sparse.to_dense(ex[k])  # noqa: E731
        return {
            "encoded": ex[schema.ENCODED],
            "key": ex[schema.SOURCE_ID],
            "height": ex[schema.HEIGHT],
            "width": ex[schema.WIDTH],
            "boxes": tf.stack(
                [dense(schema.YMIN), dense(schema.XMIN), dense(schema.YMAX), dense(schema.XMAX)], axis=-1
            ),
            "classes": tf.cast(dense(schema.CLASS_LABEL), tf.int32),
            "difficult": tf.cast(dense(schema.DIFFICULT), tf.int32),
        }

    ds = tf.data.TFRecordDataset(files).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.ragged_batch(batch_size).prefetch(tf.data.AUTOTUNE)

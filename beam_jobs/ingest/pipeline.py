"""The ingest job: images + labels (VOC, COCO, CSV, YOLO) → sharded TFRecords, with every image accounted for.

Pipeline shape (each box a composite PTransform)::

    ListFiles ─┬─ ListImages ──┐
               └─ ParseLabels ─┴─ MatchLabelsToImages ─ EncodeExamples ─ PlanAndWriteShards ──── WriteMetadata
      (both patterns            (join on stem, per     (batched)      (dedup per hash bucket,   (books, stats,
       at once)                  hash bucket, packed)                  layout per part file,     rejected.jsonl)
                                                                       shards copied in parallel)

Design notes:

* Per-element overhead dominates naive Beam jobs here, so the heavy stage works on batches of
  images, and each batch writes its records straight into a part file. Per-image records (label
  records, outcomes: key, sha256, offset, length) go from stage to stage in files of a few hundred
  (:mod:`beam_jobs.spill`: plain JSON with a checksum) whose names alone go through the shuffle,
  never image bytes: a local runner's shuffle is its driver's memory, which stays flat however
  large the archive.
* Duplicates (same sha256 of the file bytes) can only be known once every image is hashed, so
  the part files hold every valid image. Dedup then runs per hash bucket (twins share a sha256,
  hence a bucket; the smallest key is kept, the same on every run and runner), the shard layout
  is planned from one row per part file, and each shard is written by concatenating part-file
  byte ranges, skipping the dropped twins. TFRecord frames are self-contained, so this copy never
  re-parses a record. No process ever holds every image's outcome: the books (stats.json) are
  merged counters, and rejected.jsonl is streamed from per-bucket fragments.
* Everything is written under a run-private temp directory; the driver moves the files into
  ``--out`` and writes ``_SUCCESS`` last (see :mod:`ssdflow.storage`).
"""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_jobs import records as R
from beam_jobs.buckets import hash_bucket
from beam_jobs.ingest.books import MergeBooks, SkippedFiles, WriteMetadata, unusable
from beam_jobs.ingest.dedup import DEDUP_BUCKETS, early_books
from beam_jobs.ingest.encoding import EncodeExamples
from beam_jobs.ingest.errors import IngestError
from beam_jobs.ingest.join import MatchLabelsToImages
from beam_jobs.ingest.labels import (
    ParseLabels,
    ignored_under_labels,
    load_class_names_for,
    load_fixed_label_map,
    pairing_for,
)
from beam_jobs.ingest.listing import ListFiles, ListImages
from beam_jobs.ingest.shards import PlanAndWriteShards
from beam_jobs.patterns import file_pattern
from beam_jobs.spill import Spill
from beam_jobs.splits import Pairing
from beam_jobs.storage_dofn import StorageCall
from ssdflow import out_dir, progress, storage
from ssdflow.beam_runner import MULTI_PROCESS_MIN_FILES, local_parallelism, make_pipeline, pipeline_options
from ssdflow.config import IngestConfig
from ssdflow.schema import LabelMap

OUTPUT_PATTERNS = (
    "train-*.tfrecord",
    "val-*.tfrecord",
    "test-*.tfrecord",
    "label_map.json",
    "label_map.pbtxt",
    "stats.json",
    "rejected.jsonl",
)
PROGRESS_DIR, PROGRESS_TOTAL_DIR = "progress", "progress-total"  # marks under the run's temp directory


def build_pipeline(
    p: beam.Pipeline,
    cfg: IngestConfig,
    tmp_dir: str,
    class_names,
    fixed_map: LabelMap | None,
    pairing: Pairing | None = None,
):
    """Adds the ingest transforms to ``p``; outputs land in ``tmp_dir/final``."""
    parts_dir, final_dir = storage.join(tmp_dir, "parts"), storage.join(tmp_dir, "final")
    fragments_dir = storage.join(tmp_dir, "rejected")
    spill = Spill(storage.join(tmp_dir, "spill"))
    fmt, flags = cfg.format.value, cfg.pipeline_flags()
    progress_dir, totals_dir = storage.join(tmp_dir, PROGRESS_DIR), storage.join(tmp_dir, PROGRESS_TOTAL_DIR)
    files = p | "ListFiles" >> ListFiles(
        {"images": file_pattern(cfg.images), "labels": file_pattern(cfg.labels)}, flags, totals_dir
    )
    pairing = pairing or pairing_for(cfg)
    images = files["images"] | "ListImages" >> ListImages(pairing)
    labels = files["labels"] | "ParseLabels" >> ParseLabels(fmt, class_names, flags, pairing)

    if fixed_map is not None:
        label_map = p | "FixedLabelMap" >> beam.Create([fixed_map])
    else:
        label_map = (
            labels["records"]
            | "ClassNames" >> beam.Map(lambda kv: frozenset(b.label for b in kv[1].boxes))
            | "Union" >> beam.CombineGlobally(lambda sets: frozenset().union(*sets))
            | "BuildLabelMap" >> beam.Map(LabelMap.from_names)
        )

    matched = {"images": images.images, "labels": labels["records"]} | "MatchLabelsToImages" >> MatchLabelsToImages(
        fmt == "yolo", spill, flags, progress_dir
    )
    early = (
        (images.rejected, labels["rejected"], matched.rejected)
        | "EarlyRejections" >> beam.Flatten()
        | "EarlyByBucket" >> beam.Map(lambda r: (hash_bucket(r.source, DEDUP_BUCKETS), r))
        | "GroupEarly" >> beam.GroupByKey()
        | "EarlyBooks" >> beam.ParDo(StorageCall(flags, early_books, fragments_dir))
    )
    skipped = images.skipped | "CountSkipped" >> beam.CombineGlobally(SkippedFiles())
    ignored = (
        files["labels"]
        | "NotLabelFiles"
        >> beam.FlatMap(lambda meta: [meta.path] if ignored_under_labels(meta.path, fmt, pairing) else [])
        | "CountIgnored" >> beam.CombineGlobally(SkippedFiles())
    )

    outcomes = matched.candidates | "EncodeExamples" >> EncodeExamples(
        parts_dir, cfg, label_map, fixed_map is not None, pairing, progress_dir
    )
    books, layout, written = outcomes | "PlanAndWriteShards" >> PlanAndWriteShards(
        final_dir, fragments_dir, cfg.num_shards, cfg.target_shard_mb * 2**20, spill, flags
    )
    return (
        (books, early)
        | "AllBooks" >> beam.Flatten()
        | "MergeBooks" >> beam.CombineGlobally(MergeBooks())
        | "WriteMetadata"
        >> beam.ParDo(
            WriteMetadata(final_dir, fragments_dir, fmt, flags),
            beam.pvalue.AsSingleton(layout),
            beam.pvalue.AsSingleton(written),
            beam.pvalue.AsSingleton(label_map),
            beam.pvalue.AsSingleton(skipped),
            beam.pvalue.AsSingleton(ignored),
        )
    )


def _first_rejection(final_dir: str) -> str:
    """ "; e.g. SOURCE: DETAIL" from the run's first rejected line (the run's rejected.jsonl is not kept)."""
    try:
        with FileSystems.open(storage.join(final_dir, "rejected.jsonl")) as f:
            first = json.loads(f.readline() or "null")
    except (OSError, ValueError):
        return ""
    return f"; e.g. {first['source']}: {first['detail'] or first['reason']}" if first else ""


def run_ingest(cfg: IngestConfig, on_progress=None) -> dict:
    """Runs the ingest job to completion and commits its output; returns stats.json's content.

    Progress (images done of those listed, rate, ETA) goes to stderr while it runs: a bar on a
    terminal, a plain line every 10 s in a log; ``on_progress(done, total)`` too (a Prefect artifact)."""
    cfg = cfg.model_copy(
        update={k: storage.absolute(getattr(cfg, k)) for k in ("images", "labels", "out", "classes", "label_map")}
    )
    pipeline_options(cfg.pipeline_flags())  # first: the listing below needs the S3/GCS options
    inputs = storage.count_files(file_pattern(cfg.images), limit=MULTI_PROCESS_MIN_FILES)
    if not inputs:
        raise IngestError(f"--images {cfg.images}: no files found")
    options = pipeline_options(local_parallelism(cfg.pipeline_flags(), inputs))
    if not storage.any_file(file_pattern(cfg.labels)):
        raise IngestError(f"--labels {cfg.labels}: no files found")
    class_names = load_class_names_for(cfg)
    fixed_map = load_fixed_label_map(cfg)
    pairing = pairing_for(cfg)
    try:
        remove = out_dir.check(cfg.out, "ingest", OUTPUT_PATTERNS, cfg.overwrite)
    except out_dir.OutDirError as e:
        raise IngestError(str(e)) from None

    storage.cleanup_stale_tmp(cfg.out)
    # The previous output stays complete and usable until this run commits (storage.commit removes
    # its _SUCCESS first): everything before that is written under the run's temp directory.
    tmp_dir = storage.new_tmp_dir(cfg.out)
    try:
        reporter = progress.Reporter(
            "ingest",
            lambda: progress.counted(storage.join(tmp_dir, PROGRESS_DIR)),
            total=lambda: progress.counted(storage.join(tmp_dir, PROGRESS_TOTAL_DIR)),
            on_update=on_progress,
        )
        with reporter, make_pipeline(options, preload=("beam_jobs.ingest",)) as p:
            build_pipeline(p, cfg, tmp_dir, class_names, fixed_map, pairing)
        final_dir = storage.join(tmp_dir, "final")
        stats = json.loads(storage.read_text(storage.join(final_dir, "stats.json")))
        problem = unusable(stats)
        if problem:  # not committed: the previous output, if any, stays as it was
            raise IngestError(problem + _first_rejection(final_dir))
        names = stats["shards"] + ["label_map.json", "label_map.pbtxt", "stats.json", "rejected.jsonl"]
        manifest = {
            "job": "ingest",
            "images_in": stats["images_in"],
            "images_written": stats["images_written"]["total"],
            "images_rejected": stats["images_rejected"]["total"],
            "boxes_written": stats["boxes_written"],
            "images_retryable": stats["images_rejected"].get(R.READ_RETRYABLE, 0),
        }
        storage.commit(final_dir, cfg.out, names, manifest, OUTPUT_PATTERNS, remove)
    finally:
        storage.delete_tree(tmp_dir)
    return stats

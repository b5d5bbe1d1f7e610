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
import logging
import os
import posixpath
import uuid
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs import records as R
from beam_jobs.encode import encode_image
from beam_jobs.records import ImageFile, ImageOutcome
from beam_jobs.spill import Spill
from beam_jobs.splits import (
    SPLITS,
    Pairing,
    listed_ids,
    listed_images,
    root_of,
    voc_image_set_files,
    yaml_split_dirs,
    yaml_split_lists,
)
from beam_jobs.parsers import YOLO_CLASSES_FILE, is_label_file, parse_label_file
from beam_jobs.parsers.yolo import load_class_names
from ssdflow import out_dir, progress, storage, tfrecord
from ssdflow.beam_runner import (
    MULTI_PROCESS_MIN_FILES,
    local_parallelism,
    make_pipeline,
    pipeline_options,
    worker_filesystems,
)
from ssdflow.config import IngestConfig, LabelFormat
from ssdflow.schema import LabelMap

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# YOLO's class names (and data.yaml's splits), looked for beside the labels: not label files themselves.
COMPANION_FILES = ("data.yaml", "data.yml", YOLO_CLASSES_FILE)
OUTPUT_PATTERNS = (
    "train-*.tfrecord",
    "val-*.tfrecord",
    "test-*.tfrecord",
    "label_map.json",
    "label_map.pbtxt",
    "stats.json",
    "rejected.jsonl",
)
_NS = "ssdflow.ingest"


class IngestError(RuntimeError):
    """The job cannot start or its result does not reconcile; the message says what to fix."""


class _StorageDoFn(beam.DoFn):
    """A DoFn of this job that reads or writes storage. ``setup`` gives the worker process's Beam
    FileSystems the job's options (S3 endpoint, region …): a harness that an external worker pool
    runs in-process (PortableRunner with ``--environment_type=EXTERNAL``, as Flink and Spark run
    Python) is never given them (:func:`ssdflow.beam_runner.worker_filesystems`)."""

    def __init__(self, flags=()):
        self.flags = list(flags)

    def setup(self):
        if self.flags:
            worker_filesystems(self.flags)


class _StorageCall(_StorageDoFn):
    """``fn(element, *args)``'s outputs (an iterable), as a :class:`_StorageDoFn`."""

    def __init__(self, flags, fn, *args):
        super().__init__(flags)
        self.fn, self.args = fn, args

    def process(self, element):
        yield from self.fn(element, *self.args)


# --- small records passed between stages ---------------------------------------------------------
@dataclass(frozen=True)
class PartSummary:
    """One part file after dedup: the byte ranges of its records that are kept, in file order."""

    part: str
    split: str
    kept: tuple[tuple[int, int], ...]  # (offset, framed length)
    dropped: bool  # some record of this part was a twin dropped in dedup

    @property
    def kept_bytes(self) -> int:
        return sum(length for _, length in self.kept)


@dataclass(frozen=True)
class Layout:
    """The shard layout, planned from one small row per part file (never per image)."""

    names: tuple[str, ...]  # every shard, empty ones included, sorted
    # part → (split, where the part's kept bytes start in its split, its shard index or None when
    # records are cut by bytes into --num-shards, whether the shard is this one part: a rename)
    placement: dict
    shards_per_split: dict
    bytes_per_split: dict


# --- helpers -------------------------------------------------------------------------------------
def _has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _is_dir(uri: str) -> bool:
    if storage.is_local(uri):
        return os.path.isdir(uri)
    return uri.endswith("/") or not FileSystems.exists(uri)


def image_pattern(images: str) -> str:
    """A directory means every file below it, at any depth (``DIR/**``: images/train/…, date-partitioned
    archives); a glob or a file is taken as given. Files that are not images are skipped and counted."""
    return images if _has_glob(images) or not _is_dir(images) else storage.join(images, "**")


def label_pattern(labels: str) -> str:
    """As ``image_pattern``: a directory of label files means all of them, at any depth."""
    return labels if _has_glob(labels) or not _is_dir(labels) else storage.join(labels, "**")


def _ext(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _yolo_companions(cfg: IngestConfig) -> list[str]:
    """Where YOLO's class names may be, in order: --classes; else beside the labels, then one level
    up (Ultralytics keeps data.yaml at the dataset's root, above images/ and labels/)."""
    if cfg.classes:
        return [cfg.classes]
    base = cfg.labels.rstrip("/") if _is_dir(cfg.labels) else posixpath.dirname(cfg.labels)
    return [storage.join(d, n) for d in (base, posixpath.dirname(base)) for n in COMPANION_FILES]


def load_class_names_for(cfg: IngestConfig) -> list[str] | None:
    """YOLO class names from --classes, else a data.yaml / classes.txt beside the labels or one level up."""
    if cfg.format != LabelFormat.yolo:
        return None
    candidates = _yolo_companions(cfg)
    for uri in candidates:
        if storage.exists(uri):
            try:
                return load_class_names(uri, storage.read_bytes(uri))
            except ValueError as e:
                raise IngestError(f"--classes {uri}: {e}") from None
    raise IngestError(
        "YOLO labels carry class indexes only: pass --classes FILE (one name per line, or a data.yaml "
        f"with `names`); none found at {', '.join(candidates)}"
    )


def pairing_for(cfg: IngestConfig) -> Pairing:
    """How this run keys and splits: the roots of --images and --labels, YOLO's path pairing, and the
    train/val/test directories of a data.yaml (the one the class names come from)."""

    def root(location: str) -> str:
        return location.rstrip("/") if not _has_glob(location) and _is_dir(location) else root_of(location)

    yaml_dirs: dict[str, str] = {}
    lists: dict[str, str] = {}  # split list file → split
    if cfg.format == LabelFormat.yolo:
        import yaml

        found = next((u for u in _yolo_companions(cfg) if u.endswith((".yaml", ".yml")) and storage.exists(u)), None)
        if found:
            try:
                doc = yaml.safe_load(storage.read_text(found))
            except (yaml.YAMLError, UnicodeDecodeError) as e:
                raise IngestError(f"{found}: not valid YAML: {e}") from None
            if isinstance(doc, dict):
                yaml_dirs = yaml_split_dirs(doc, posixpath.dirname(found))
                lists = yaml_split_lists(doc, posixpath.dirname(found))
                for list_file in lists:
                    if not storage.exists(list_file):
                        raise IngestError(
                            f"{found} names {list_file} as the {lists[list_file]} list, which is not there"
                        )
    elif cfg.format == LabelFormat.voc:
        labels_root = root(cfg.labels)
        for base in (labels_root, posixpath.dirname(labels_root)):  # --labels VOC2012/ or VOC2012/Annotations
            sets = {f: split for split, f in voc_image_set_files(base).items() if storage.exists(f)}
            if sets:
                lists = sets
                break
    listed: dict[str, str] = {}
    for list_file, split in lists.items():
        text = storage.read_text(list_file)
        names = listed_images(text, list_file) if cfg.format == LabelFormat.yolo else listed_ids(text)
        for name in names:
            if listed.setdefault(name, split) != split:
                raise IngestError(
                    f"{name} is in two split lists ({listed[name]} and {split}: {', '.join(sorted(lists))}); "
                    "an image belongs to one split"
                )
    if lists:
        log.info("ingest: splits from %s (%d images listed)", ", ".join(sorted(lists)), len(listed))
    return Pairing(
        root(cfg.images),
        root(cfg.labels),
        cfg.val_fraction,
        by_path=cfg.format == LabelFormat.yolo,
        yaml_dirs=tuple(yaml_dirs.items()),
        listed=listed,
        list_files=tuple(sorted(lists)),
    )


def load_fixed_label_map(cfg: IngestConfig) -> LabelMap | None:
    if not cfg.label_map:
        return None
    try:
        return LabelMap.parse(storage.read_text(cfg.label_map), cfg.label_map)
    except Exception as e:
        raise IngestError(f"--label-map {cfg.label_map}: {e}") from None


# --- transforms ----------------------------------------------------------------------------------
class _MatchPattern(_StorageDoFn):
    """(name, file pattern) → the matched files' FileMetadata, tagged with the name. With
    ``totals_dir``, the image files listed for 'images' are marked there (the progress's total)."""

    def __init__(self, flags=(), totals_dir: str | None = None):
        super().__init__(flags)
        self.totals_dir = totals_dir

    def process(self, named_pattern):
        name, pattern = named_pattern
        images = 0
        for meta in FileSystems.match([pattern])[0].metadata_list:
            images += name == "images" and _ext(meta.path) in IMAGE_EXTENSIONS
            yield beam.pvalue.TaggedOutput(name, meta)
        if self.totals_dir and images:
            marks = progress.Marks(self.totals_dir)
            marks.add(images)
            marks.flush()


class ListFiles(beam.PTransform):
    """{name: file pattern} → {name: PCollection of FileMetadata}, an empty match allowed.

    One element per pattern, reshuffled: a runner with several workers lists the patterns (the
    images and the label files) at the same time, where one ``MatchFiles`` per pattern would run
    one listing after the other on a local runner."""

    def __init__(self, patterns: dict[str, str], flags=(), totals_dir: str | None = None):
        super().__init__()
        self.patterns, self.flags, self.totals_dir = patterns, flags, totals_dir

    def expand(self, pbegin):
        names = sorted(self.patterns)
        listed = (
            pbegin
            | "Patterns" >> beam.Create([(name, self.patterns[name]) for name in names])  # reshuffles 2+ elements
            | "Match" >> beam.ParDo(_MatchPattern(self.flags, self.totals_dir)).with_outputs(*names)
        )
        return {name: listed[name] for name in names}


class ListImages(beam.PTransform):
    """FileMetadata of the files under --images → (key, ImageFile). Other files are skipped and
    counted; names that are not valid UTF-8 are rejected (tag 'rejected'). The key is the file
    stem, or for YOLO the path below --images (``pairing``, beam_jobs/splits.py)."""

    def __init__(self, pairing: Pairing | None = None):
        super().__init__()
        self.pairing = pairing or Pairing("", "", 0.0)

    def expand(self, files):
        skipped = Metrics.counter(_NS, "files_skipped")
        key_of = self.pairing.image_key

        def keyed(meta):
            if not R.is_text_name(meta.path):
                yield beam.pvalue.TaggedOutput("rejected", R.undecodable_name(meta.path))
            elif _ext(meta.path) in IMAGE_EXTENSIONS:
                yield key_of(meta.path), ImageFile(meta.path, meta.size_in_bytes)
            else:
                skipped.inc()
                yield beam.pvalue.TaggedOutput("skipped", meta.path)

        return files | "Key" >> beam.FlatMap(keyed).with_outputs("skipped", "rejected", main="images")


class _ParseLabelFiles(_StorageDoFn):
    """Parses a batch of label files (batched so thousands of small XML files spread over workers)."""

    def __init__(self, fmt: str, class_names: list[str] | None, flags=(), pairing: Pairing | None = None):
        super().__init__(flags)
        self.fmt = fmt
        self.class_names = class_names
        self.pairing = pairing or Pairing("", "", 0.0)

    def process(self, paths):
        for path in paths:
            try:
                data = storage.read_bytes(path)
            except Exception as e:  # storage errors become dead letters, not job failures
                yield beam.pvalue.TaggedOutput(
                    "rejected", R.Rejection(path, R.MALFORMED_LABEL_FILE, f"cannot read: {e}", R.LABEL_FILE)
                )
                continue
            result = parse_label_file(
                self.fmt, path, data, class_names=self.class_names, join_key=self.pairing.label_key(path)
            )
            for rej in result.rejections:
                yield beam.pvalue.TaggedOutput("rejected", rej)
            for rec in result.records:
                yield rec.key, rec


class ParseLabels(beam.PTransform):
    """FileMetadata of the files under --labels → {"records": (key, LabelRecord), "rejected":
    Rejection} (file-level problems); files that are not label files of the format are ignored."""

    FILES_PER_TASK = 128

    def __init__(self, fmt: str, class_names: list[str] | None, flags=(), pairing: Pairing | None = None):
        super().__init__()
        self.fmt, self.class_names, self.flags, self.pairing = fmt, class_names, flags, pairing or Pairing("", "", 0.0)

    def expand(self, files):
        fmt, n, pairing = self.fmt, self.FILES_PER_TASK, self.pairing

        def path_of(meta):
            if R.is_text_name(meta.path):
                yield meta.path
            else:
                yield beam.pvalue.TaggedOutput("rejected", R.undecodable_name(meta.path, R.LABEL_FILE))

        paths = (
            files
            | "LabelFilesOnly"
            >> beam.Filter(lambda meta: is_label_file(fmt, meta.path) and not pairing.is_split_list(meta.path))
            | "Paths" >> beam.FlatMap(path_of).with_outputs("rejected", main="paths")
        )
        parsed = (
            paths.paths
            | "Batch" >> beam.BatchElements(min_batch_size=n, max_batch_size=n)
            | "Spread" >> beam.Reshuffle()  # matching happens in one place; parsing should not
            | "Parse"
            >> beam.ParDo(_ParseLabelFiles(self.fmt, self.class_names, self.flags, self.pairing)).with_outputs(
                "rejected", main="records"
            )
        )
        rejected = (paths.rejected, parsed.rejected) | "AllRejected" >> beam.Flatten()
        return {"records": parsed.records, "rejected": rejected}


class Matched(NamedTuple):
    """MatchLabelsToImages' outputs: (image path, LabelRecord) pairs and Rejections."""

    candidates: beam.PCollection
    rejected: beam.PCollection


JOIN_BUCKETS = 64  # the join groups by hash bucket of the key, not by key (see MatchLabelsToImages)
CANDIDATES_PER_CHUNK = 256  # matched pairs handed to the encoders as one element


def _join_bucket(key: str) -> int:
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % JOIN_BUCKETS


class _PackByBucket(_StorageDoFn):
    """(key, value) → (join bucket, spill file of (key, value) pairs): one element per bucket and
    bundle (or per PACK_LIMIT pairs, which bounds a worker's memory on a large bundle)."""

    PACK_LIMIT = 1024

    def __init__(self, spill: Spill, flags=()):
        super().__init__(flags)
        self.spill = spill

    def start_bundle(self):
        self.buckets: dict[int, list] = defaultdict(list)

    def process(self, kv):
        bucket = _join_bucket(kv[0])
        pairs = self.buckets[bucket]
        pairs.append(kv)
        if len(pairs) >= self.PACK_LIMIT:
            yield bucket, self.spill.write(pairs)
            self.buckets[bucket] = []

    def finish_bundle(self):
        for bucket, pairs in self.buckets.items():
            if pairs:
                yield WindowedValue((bucket, self.spill.write(pairs)), MIN_TIMESTAMP, [GlobalWindow()])
        self.buckets = defaultdict(list)


class _MatchDoFn(_StorageDoFn):
    """One join bucket → candidate chunks (spill files of (image path, LabelRecord) pairs), and a
    rejection for every image or label record that cannot be paired one to one."""

    def __init__(self, unlabeled_is_negative: bool, spill: Spill, flags=(), progress_dir: str | None = None):
        super().__init__(flags)
        self.unlabeled_is_negative = unlabeled_is_negative
        self.spill = spill
        self.progress_dir = progress_dir

    def process(self, element):
        _, grouped = element
        images, labels = defaultdict(list), defaultdict(list)
        for path in grouped["images"]:
            for key, image in self.spill.read(path):
                images[key].append(image)
        for path in grouped["labels"]:
            for key, rec in self.spill.read(path):
                labels[key].append(rec)
        candidates, rejected_images = [], 0
        for key in sorted(images.keys() | labels.keys()):
            for out in self.match(key, sorted(images.get(key, ())), labels.get(key, [])):
                if isinstance(out, R.Rejection):
                    rejected_images += out.kind == R.IMAGE and out.reason != R.MISSING_IMAGE
                    yield beam.pvalue.TaggedOutput("rejected", out)
                else:
                    candidates.append(out)
        if self.progress_dir and rejected_images:  # done: they never reach the encoders
            marks = progress.Marks(self.progress_dir)
            marks.add(rejected_images)
            marks.flush()
        for chunk in deal_by_size(candidates, -(-len(candidates) // CANDIDATES_PER_CHUNK)):
            yield self.spill.write([(image.path, record) for image, record in chunk])

    def match(self, key: str, images: list[ImageFile], labels: list[R.LabelRecord]):
        """One key's image files and label records → (ImageFile, LabelRecord) or Rejections."""
        if not images:
            for rec in labels:
                yield R.Rejection(
                    rec.source, R.MISSING_IMAGE, f"label names image {rec.image_name!r}, not found among --images"
                )
            return
        if len(images) > 1:
            paths = ", ".join(image.path for image in images)
            for image in images:
                yield R.Rejection(image.path, R.AMBIGUOUS_NAME, f"{len(images)} images share the name {key!r}: {paths}")
            return
        path = images[0].path
        if len(labels) > 1:
            sources = ", ".join(sorted(r.source for r in labels))
            yield R.Rejection(path, R.MULTIPLE_LABELS, f"{len(labels)} label records name this image: {sources}")
            return
        if not labels:
            if self.unlabeled_is_negative:  # YOLO convention: no .txt means no objects
                yield images[0], R.LabelRecord(image_name=posixpath.basename(path), source=path, join_key=key)
            else:
                yield R.Rejection(path, R.NO_LABEL, "no label file mentions this image")
            return
        yield images[0], labels[0]


def deal_by_size(candidates: list[tuple[ImageFile, R.LabelRecord]], n: int) -> list[list]:
    """Candidates → ``n`` chunks of equal count (±1) and nearly equal bytes, each in the input's order.

    The largest image goes to the first chunk, the next to the second, …, then back from the last
    (snake order). A local runner hands each worker a fixed share of the chunks before it starts, so
    chunks of equal count but unequal bytes left one worker encoding longer than the other
    (docs/benchmarks.md, "Chunks of equal bytes")."""
    seats: list[list[int]] = [[] for _ in range(n)]
    for rank, i in enumerate(sorted(range(len(candidates)), key=lambda i: (-candidates[i][0].size, i))):
        lap, seat = divmod(rank, n)
        seats[seat if lap % 2 == 0 else n - 1 - seat].append(i)
    return [[candidates[i] for i in sorted(seat)] for seat in seats]


class MatchLabelsToImages(beam.PTransform):
    """Joins label records and image files on the file stem: {"images": (key, ImageFile), "labels":
    (key, LabelRecord)} → (image path, LabelRecord).

    The join groups by a hash bucket of the key (JOIN_BUCKETS groups), with each bundle's pairs
    spilled to one file per bucket, and hands the matched pairs on in chunks of about
    CANDIDATES_PER_CHUNK (equal bytes within a bucket, see :func:`deal_by_size`), also spilled,
    reshuffled so the encoders get them spread over workers. A per-key CoGroupByKey moves two
    elements per image through the shuffle, and a local runner groups in the driver's process,
    holding each one decoded: seconds of per-element coding and the driver's largest memory cost.
    Here the shuffle carries a few file names per bucket and bundle; a bucket's pairs (1/64 of
    the archive) meet in one worker.
    """

    def __init__(self, unlabeled_is_negative: bool, spill: Spill, flags=(), progress_dir: str | None = None):
        super().__init__()
        self.unlabeled_is_negative, self.spill, self.flags, self.progress_dir = (
            unlabeled_is_negative,
            spill,
            flags,
            progress_dir,
        )

    def expand(self, pcolls):
        spill, flags = self.spill, self.flags
        packed = {
            name: pcolls[name] | f"Pack{name.title()}" >> beam.ParDo(_PackByBucket(spill, flags))
            for name in ("images", "labels")
        }
        matched = (
            packed
            | "Join" >> beam.CoGroupByKey()
            | "Match"
            >> beam.ParDo(_MatchDoFn(self.unlabeled_is_negative, spill, flags, self.progress_dir)).with_outputs(
                "rejected", main="chunks"
            )
        )
        candidates = (
            matched.chunks | "Spread" >> beam.Reshuffle() | "Unspill" >> beam.ParDo(_StorageCall(flags, spill.read))
        )
        return Matched(candidates, matched.rejected)


class _EncodeFn(_StorageDoFn):
    """Encodes images and appends the valid ones to one part file per split and bundle.

    Outcomes are emitted as lists (one per bundle, or per OUTCOMES_PER_LIST images), so the rest of
    the pipeline handles a few elements per worker instead of one per image. A retried bundle
    leaves orphan part files that no outcome names; they go away with the run's temp directory.
    """

    OUTCOMES_PER_LIST = 2000

    def __init__(
        self,
        parts_dir: str,
        cfg: IngestConfig,
        label_map_fixed: bool,
        pairing: Pairing | None = None,
        progress_dir: str | None = None,
    ):
        super().__init__(cfg.pipeline_flags())
        self.parts_dir = parts_dir
        self.progress_dir = progress_dir
        self.pairing = pairing or Pairing("", "", cfg.val_fraction)
        self.max_pixels = cfg.max_pixels
        self.clip_tolerance = cfg.clip_tolerance
        self.label_map_fixed = label_map_fixed

    def setup(self):
        super().setup()
        self.encoded = Metrics.counter(_NS, "images_encoded")
        self.rejected = Metrics.counter(_NS, "images_rejected_before_dedup")
        self.boxes = Metrics.counter(_NS, "boxes_encoded")

    def start_bundle(self):
        self.marks = progress.Marks(self.progress_dir) if self.progress_dir else None
        self.files: dict[str, tuple[str, object]] = {}
        self.offsets: Counter = Counter()
        self.outcomes: list[ImageOutcome] = []

    def process(self, candidate, label_map):
        path, record = candidate
        boxes_in = len(record.boxes) + len(record.rejections)
        try:
            data = storage.read_bytes(path)
        except Exception as e:  # a storage error is this image's problem, not the job's
            # A throttled or timed-out read is kept apart from a missing file: the nightly flow
            # ingests again (instead of reusing this output) while such rejections stand.
            rej = R.Rejection(path, R.READ_RETRYABLE if storage.is_transient(e) else R.UNREADABLE, R.describe(e))
            self.outcomes.append(ImageOutcome(record.key, path, "", None, boxes_in=boxes_in, rejections=(rej,)))
            self.rejected.inc()
        else:
            self.encode(path, record, data, boxes_in, label_map)
        if self.marks is not None:
            self.marks.add(1)
        if len(self.outcomes) >= self.OUTCOMES_PER_LIST:  # bounds a worker's memory on a large bundle
            yield self.take_outcomes()

    def encode(self, path: str, record: R.LabelRecord, data: bytes, boxes_in: int, label_map) -> None:
        """Encodes one image, appends its framed record to this bundle's part file for its split
        (when valid) and its outcome to ``self.outcomes``."""
        enc = encode_image(
            record,
            path,
            data,
            label_map,
            label_map_fixed=self.label_map_fixed,
            max_pixels=self.max_pixels,
            clip_tolerance=self.clip_tolerance,
        )
        if enc.example is None:
            self.rejected.inc()
            self.outcomes.append(
                ImageOutcome(
                    enc.key,
                    path,
                    enc.sha256,
                    None,
                    boxes_in=boxes_in,
                    rejections=tuple(enc.rejections),
                    stats=tuple(enc.stats.items()),
                )
            )
            return
        split = self.pairing.split(path, record.source, enc.key)  # the user's own split, else the hash
        if split not in self.files:
            part = storage.join(self.parts_dir, f"{split}-{uuid.uuid4().hex}.part")
            self.files[split] = (part, FileSystems.create(part))
        part, handle = self.files[split]
        framed = tfrecord.frame(enc.example)
        handle.write(framed)
        self.outcomes.append(
            ImageOutcome(
                enc.key,
                path,
                enc.sha256,
                split,
                part,
                self.offsets[split],
                len(framed),
                boxes_in,
                tuple(sorted(enc.class_counts.items())),
                tuple(enc.rejections),
                tuple(enc.stats.items()),
            )
        )
        self.offsets[split] += len(framed)
        self.encoded.inc()
        self.boxes.inc(enc.boxes_written)

    def finish_bundle(self):
        for _, handle in self.files.values():
            handle.close()
        if self.marks is not None:
            self.marks.flush()
        if self.outcomes:
            yield WindowedValue(self.take_outcomes(), MIN_TIMESTAMP, [GlobalWindow()])
        self.files = {}

    def take_outcomes(self) -> list[ImageOutcome]:
        """The outcomes so far, as one element, and a fresh list."""
        outcomes, self.outcomes = self.outcomes, []
        return outcomes


class EncodeExamples(beam.PTransform):
    """(path, LabelRecord) → lists of ImageOutcome (per bundle or OUTCOMES_PER_LIST); records land in part files."""

    def __init__(
        self,
        parts_dir: str,
        cfg: IngestConfig,
        label_map,
        label_map_fixed: bool,
        pairing: Pairing | None = None,
        progress_dir: str | None = None,
    ):
        super().__init__()
        self.parts_dir, self.cfg, self.label_map, self.fixed, self.pairing = (
            parts_dir,
            cfg,
            label_map,
            label_map_fixed,
            pairing,
        )
        self.progress_dir = progress_dir

    def expand(self, candidates):
        return candidates | "Encode" >> beam.ParDo(
            _EncodeFn(self.parts_dir, self.cfg, self.fixed, self.pairing, self.progress_dir),
            beam.pvalue.AsSingleton(self.label_map),
        )


# --- dedup, shard layout and the books: no worker holds every image's outcome ------------------------
DEDUP_BUCKETS = 32  # byte-identical twins share a sha256, so a bucket: dedup needs one bucket at a time


def _bucket(o: ImageOutcome) -> int:
    """Twins (same sha256) land in the same bucket; images rejected before hashing spread by name."""
    if o.sha256:
        return int(o.sha256[:8], 16) % DEDUP_BUCKETS
    return zlib.crc32(o.source.encode("utf-8", "surrogateescape")) % DEDUP_BUCKETS


def by_hash_bucket(outcomes: list[ImageOutcome], spill: Spill):
    """A list of outcomes → (bucket, spill file of that bucket's outcomes), at most DEDUP_BUCKETS."""
    buckets: dict[int, list[ImageOutcome]] = defaultdict(list)
    for o in outcomes:
        buckets[_bucket(o)].append(o)
    for bucket, some in buckets.items():
        yield bucket, spill.write(some)


def _rejection_line(r: R.Rejection) -> str:
    return json.dumps(r.to_json(), ensure_ascii=False) + "\n"


def _write_fragment(fragments_dir: str, name: str, lines: list[str]) -> None:
    """Part of rejected.jsonl, lines sorted (the same bytes on every run and runner)."""
    if lines:
        storage.write_text(storage.join(fragments_dir, name), "".join(sorted(lines)))


class _Dedup(_StorageDoFn):
    """One bucket's outcomes → the twins dropped (the smallest key kept, the same on every run and
    runner), each part file's (offset, length, kept) entries, and the bucket's books; its rejected
    lines go to a fragment of rejected.jsonl."""

    def __init__(self, fragments_dir: str, spill: Spill, flags=()):
        super().__init__(flags)
        self.fragments_dir, self.spill = fragments_dir, spill

    def process(self, element):
        bucket, paths = element
        outcomes = sorted((o for path in paths for o in self.spill.read(path)), key=lambda o: (o.key, o.source))
        books: Counter = Counter(images_in=len(outcomes))
        lines: list[str] = []
        by_sha: dict[str, list[ImageOutcome]] = defaultdict(list)
        for o in outcomes:
            if o.split is None:  # one line per rejected image; its boxes go with it
                books[f"images_rejected/{o.rejections[0].reason}"] += 1
                books["boxes_in_rejected_images"] += o.boxes_in
                lines.append(_rejection_line(o.rejections[0]))
            else:
                by_sha[o.sha256].append(o)
        entries: dict[str, list[tuple[int, int, bool]]] = defaultdict(list)
        for twins in by_sha.values():  # sorted by (key, source) above: the first is kept
            kept = twins[0]
            for dup in twins[1:]:
                books[f"images_rejected/{R.DUPLICATE}"] += 1
                books["boxes_in_rejected_images"] += dup.boxes_in
                lines.append(
                    _rejection_line(
                        R.Rejection(
                            dup.source,
                            R.DUPLICATE,
                            f"byte-identical to {kept.source} (sha256 {dup.sha256[:16]}...), which is kept",
                        )
                    )
                )
                entries[dup.part].append((dup.offset, dup.length, False))
            entries[kept.part].append((kept.offset, kept.length, True))
            books[f"written/{kept.split}"] += 1
            books.update({f"class/{name}": n for name, n in kept.class_counts})
            books[f"boxes_split/{kept.split}"] += sum(n for _, n in kept.class_counts)
            books.update({f"stats/{name}": n for name, n in kept.stats})
            books["boxes_in_written"] += kept.boxes_in
            books["boxes_rejected_written"] += len(kept.rejections)
            for rej in kept.rejections:
                books[f"boxes_rejected/{rej.reason}"] += 1
                lines.append(_rejection_line(rej))
        _write_fragment(self.fragments_dir, f"images-{bucket:05d}.jsonl", lines)
        for part, items in entries.items():
            yield part, tuple(items)
        yield beam.pvalue.TaggedOutput("books", books)


def _early_books(element, fragments_dir: str):
    """Rejections made before encoding (listing, label files, matching), one bucket of them → its books."""
    bucket, rejections = element
    books: Counter = Counter()
    for rej in rejections:
        if rej.kind == R.IMAGE:
            books["images_in"] += 1
            books[f"images_rejected/{rej.reason}"] += 1
        elif rej.kind == R.BOX:
            books[f"boxes_rejected/{rej.reason}"] += 1
        elif rej.kind == R.LABEL_FILE:
            books["label_files_rejected"] += 1
    _write_fragment(fragments_dir, f"early-{bucket:05d}.jsonl", [_rejection_line(r) for r in rejections])
    yield books


def summarize_part(element) -> PartSummary:
    """(part file, its records' (offset, length, kept) entries from every bucket) → PartSummary."""
    part, groups = element
    items = sorted(item for group in groups for item in group)
    split = posixpath.basename(part).split("-", 1)[0]
    return PartSummary(
        part,
        split,
        tuple((offset, length) for offset, length, kept in items if kept),
        dropped=any(not kept for _, _, kept in items),
    )


def plan_layout(rows: list[tuple[str, str, int, bool]], num_shards: int | None, target_bytes: int) -> Layout:
    """Shards from (part, split, kept bytes, dropped) rows, one per part file.

    With ``num_shards`` the kept records of a split are cut into that many shards of about equal
    bytes (records in part-file order). Without it, a part file of at least half ``target_bytes``
    is a shard by itself, and smaller ones are packed in name order into shards of at most
    ``target_bytes``; a shard that is one part file with nothing dropped is a rename, not a copy
    (the common case: no bytes move twice; copying a 130 MB val split cost 1.5 s of a 20 s job).
    train and val get at least one shard each; test only when it has records.
    """
    placement, shards_per_split, bytes_per_split, names = {}, {}, {}, []
    for split in SPLITS:
        parts = sorted((r for r in rows if r[1] == split and r[2] > 0), key=lambda r: r[0])
        if split == "test" and not parts:  # train and val always have shards (training reads both); test when given
            continue
        if num_shards:
            start = 0
            for part, _, kept_bytes, _ in parts:
                placement[part] = (split, start, None, False)
                start += kept_bytes
            n, bytes_per_split[split] = num_shards, start
        else:
            groups: list[list[tuple]] = []
            small, size = None, 0
            for row in parts:
                if 2 * row[2] >= target_bytes:  # big enough to be a shard on its own: no copy
                    groups.append([row])
                    continue
                if small is None or size + row[2] > target_bytes:
                    small, size = [], 0
                    groups.append(small)
                small.append(row)
                size += row[2]
            for i, group in enumerate(groups):
                for part, _, _, dropped in group:
                    placement[part] = (split, 0, i, len(group) == 1 and not dropped)
            n, bytes_per_split[split] = max(1, len(groups)), sum(r[2] for r in parts)
        shards_per_split[split] = n
        names += [shard_name(split, i, n) for i in range(n)]
    return Layout(tuple(sorted(names)), placement, shards_per_split, bytes_per_split)


def shard_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


def _merge_ranges(ranges) -> tuple[tuple[int, int], ...]:
    """Adjacent byte ranges of one part file become one range (a part minus its dropped twins)."""
    merged: list[list[int]] = []
    for offset, length in ranges:
        if merged and merged[-1][0] + merged[-1][1] == offset:
            merged[-1][1] += length
        else:
            merged.append([offset, length])
    return tuple(tuple(m) for m in merged)


def shard_pieces(summary: PartSummary, layout: Layout):
    """A part's kept records → (shard name, (part, byte ranges, is the whole shard a rename of the part))."""
    if summary.part not in layout.placement:  # nothing of this part is kept
        return
    split, start, index, move = layout.placement[summary.part]
    n = layout.shards_per_split[split]
    if index is not None:
        yield shard_name(split, index, n), (summary.part, _merge_ranges(summary.kept), move)
        return
    total, position = max(layout.bytes_per_split[split], 1), start
    by_shard: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for offset, length in summary.kept:  # a record goes to the shard holding its middle byte
        by_shard[min(n - 1, int((position + length / 2) * n / total))].append((offset, length))
        position += length
    for i, ranges in sorted(by_shard.items()):
        yield shard_name(split, i, n), (summary.part, _merge_ranges(ranges), False)


class _WriteShard(_StorageDoFn):
    """(shard name, its pieces) → the shard: the part file renamed, or the pieces' byte ranges copied
    in part-file order (TFRecord frames are self-contained: no record is parsed again)."""

    def __init__(self, final_dir: str, flags=()):
        super().__init__(flags)
        self.final_dir = final_dir

    def process(self, element):
        name, items = element
        pieces = sorted(item for item in items if item is not None)
        target = storage.join(self.final_dir, name)
        if len(pieces) == 1 and pieces[0][2]:  # the part file is the shard, byte for byte
            storage.move(pieces[0][0], target)
        elif not pieces:  # an empty split: object stores refuse an upload with no parts
            storage.write_bytes(target, b"")
        else:
            with FileSystems.create(target) as out:
                for part, ranges, _ in pieces:
                    data = storage.read_bytes(part)
                    for offset, length in ranges:
                        out.write(data[offset : offset + length])
        yield name


def build_stats(
    books: Counter, label_map: LabelMap, shards: list[str], skipped: tuple, ignored: tuple = (0, {}, []), fmt: str = ""
) -> dict:
    """stats.json from the merged books; raises IngestError if the counts do not reconcile."""

    def group(prefix: str) -> dict[str, int]:
        return {k[len(prefix) :]: v for k, v in sorted(books.items()) if k.startswith(prefix) and v}

    written, images_rejected, boxes_rejected, per_class = (
        group("written/"),
        group("images_rejected/"),
        group("boxes_rejected/"),
        group("class/"),
    )
    images_in, images_written, n_rejected = books["images_in"], sum(written.values()), sum(images_rejected.values())
    boxes_written = sum(per_class.values())
    stats = {
        "images_in": images_in,
        "images_written": {"total": images_written, **{s: written.get(s, 0) for s in SPLITS}},
        "images_rejected": {"total": n_rejected, **images_rejected},
        "images_converted": books["stats/images_converted"],
        "images_exif_rotated": books["stats/images_exif_rotated"],
        "label_size_corrected": books["stats/label_size_corrected"],
        "boxes_written": boxes_written,
        "boxes_clipped": books["stats/boxes_clipped"],
        "boxes_rejected": {"total": sum(boxes_rejected.values()), **boxes_rejected},
        "boxes_in_rejected_images": books["boxes_in_rejected_images"],
        "boxes_per_class": {name: per_class.get(name, 0) for name in sorted(label_map, key=label_map.get)},
        "boxes_per_split": {s: books[f"boxes_split/{s}"] for s in SPLITS},
        "label_files_rejected": books["label_files_rejected"],
        # Files under --labels that are not label files of --format (nor images, nor YOLO's class files).
        "label_files_ignored": _file_sample(ignored),
        "format": fmt,
        "shards": sorted(shards),
        "files_skipped": _file_sample(skipped),  # _SkippedFiles sorts and cuts
    }
    hint = format_hint(fmt, stats["label_files_ignored"])
    if hint:
        stats["format_hint"] = hint
    # The job checks its own books: every image and every box of a written image is accounted for.
    if images_in != images_written + n_rejected:
        raise IngestError(
            f"counts do not reconcile: images_in {images_in} != written {images_written} + rejected {n_rejected}"
        )
    if books["boxes_in_written"] != boxes_written + books["boxes_rejected_written"]:
        raise IngestError(
            f"box counts do not reconcile: {books['boxes_in_written']} in written images != "
            f"{boxes_written} written + {books['boxes_rejected_written']} rejected"
        )
    return stats


SKIPPED_EXAMPLES = 10  # skipped files named in stats.json (all are counted)


class _SkippedFiles(beam.CombineFn):
    """Paths → (count, count per extension, the alphabetically first few): all of them counted, a few named."""

    def create_accumulator(self):
        return 0, {}, []

    def add_input(self, acc, path):
        ext = _ext(path)
        return acc[0] + 1, {**acc[1], ext: acc[1].get(ext, 0) + 1}, sorted(acc[2] + [path])[:SKIPPED_EXAMPLES]

    def merge_accumulators(self, accs):
        accs, by_ext = list(accs), Counter()
        for a in accs:
            by_ext.update(a[1])
        return sum(a[0] for a in accs), dict(by_ext), sorted(p for a in accs for p in a[2])[:SKIPPED_EXAMPLES]

    def extract_output(self, acc):
        return acc


def _file_sample(sample) -> dict:
    total, by_ext, examples = sample
    return {
        "total": total,
        "by_extension": dict(sorted(by_ext.items(), key=lambda kv: (-kv[1], kv[0]))),
        "examples": list(examples),
    }


# Which format a label file's extension suggests, for the hint when --format names another.
FORMAT_OF_EXTENSION = {".xml": "voc", ".json": "coco", ".csv": "csv", ".txt": "yolo"}


def format_hint(fmt: str, ignored: dict) -> str | None:
    """A line naming the format the ignored files under --labels look like, when it is not ``fmt``."""
    for ext, n in ignored.get("by_extension", {}).items():
        guess = FORMAT_OF_EXTENSION.get(ext)
        if guess and guess != fmt:
            return (
                f"{n} {ext} files under --labels were not read as {fmt} labels: they look like {guess} labels "
                f"(--format {guess})"
            )
    return None


def unusable(stats: dict) -> str | None:
    """Why an output with these stats must not be committed as a success (nothing to train or score
    on), or None. The reasons come with it: the biggest causes and the format hint."""
    written, boxes = stats["images_written"], stats["boxes_written"]
    if written["total"] and boxes and (stats["boxes_per_split"].get("train", 0) or not written.get("train")):
        return None
    reasons = {k: v for k, v in stats["images_rejected"].items() if k != "total"}
    top = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
    if not written["total"]:
        why = f"nothing written: {stats['images_in']} images in, every one rejected" + (f" ({top})" if top else "")
    elif not boxes:
        box_reasons = {k: v for k, v in stats["boxes_rejected"].items() if k != "total"}
        why = f"no boxes written: {written['total']} images written, none with a box" + (
            f" ({stats['boxes_rejected']['total']} boxes rejected: {json.dumps(box_reasons)})" if box_reasons else ""
        )
    else:
        where = ", ".join(f"{s} {n}" for s, n in stats["boxes_per_split"].items() if n)
        why = (
            f"no boxes in the train split: all {boxes} boxes are in other splits ({where}; {written['train']} train "
            f"images, none with a box): label train images, or lower --val-fraction where the split is hashed"
        )
    hint = stats.get("format_hint")
    return why + (f"; {hint}" if hint else "")


class _MergeBooks(beam.CombineFn):
    """Counters summed: the books of every bucket, a few hundred keys whatever the image count."""

    def create_accumulator(self):
        return Counter()

    def add_input(self, acc, books):
        acc.update(books)
        return acc

    def merge_accumulators(self, accs):
        total = Counter()
        for acc in accs:
            total.update(acc)
        return total

    def extract_output(self, acc):
        return acc


class _WriteMetadata(_StorageDoFn):
    """stats.json (the books checked), label maps, and rejected.jsonl streamed from its fragments."""

    def __init__(self, final_dir: str, fragments_dir: str, fmt: str, flags=()):
        super().__init__(flags)
        self.final_dir, self.fragments_dir, self.fmt = final_dir, fragments_dir, fmt

    def process(self, books, layout: Layout, shard_names, label_map, skipped, ignored):
        if sorted(shard_names) != list(layout.names):
            raise IngestError(f"shards written {sorted(shard_names)} differ from the plan {list(layout.names)}")
        stats = build_stats(books, label_map, list(layout.names), skipped, ignored, self.fmt)
        storage.write_text(storage.join(self.final_dir, "stats.json"), json.dumps(stats, indent=2) + "\n")
        # early-* before images-*, buckets in order: the same bytes on every run and runner
        with storage.StreamWriter(storage.join(self.final_dir, "rejected.jsonl")) as out:
            for fragment in storage.list_files(storage.join(self.fragments_dir, "*.jsonl")):
                out.write(storage.read_bytes(fragment))
        storage.write_text(storage.join(self.final_dir, "label_map.json"), label_map.to_json())
        storage.write_text(storage.join(self.final_dir, "label_map.pbtxt"), label_map.to_pbtxt())
        Metrics.counter(_NS, "images_written").inc(stats["images_written"]["total"])
        Metrics.counter(_NS, "images_rejected").inc(stats["images_rejected"]["total"])
        yield stats


class PlanAndWriteShards(beam.PTransform):
    """Lists of ImageOutcome → dedup by content hash per bucket, the shard layout from one row per
    part file, shards written in parallel; outputs (books, layout, shard names written)."""

    def __init__(
        self, final_dir: str, fragments_dir: str, num_shards: int | None, target_bytes: int, spill: Spill, flags=()
    ):
        super().__init__()
        self.final_dir, self.fragments_dir, self.num_shards, self.target_bytes = (
            final_dir,
            fragments_dir,
            num_shards,
            target_bytes,
        )
        self.spill, self.flags = spill, flags

    def expand(self, outcome_lists):
        dedup = (
            outcome_lists
            | "ByHashBucket" >> beam.ParDo(_StorageCall(self.flags, by_hash_bucket, self.spill))
            | "GroupByBucket" >> beam.GroupByKey()
            | "Dedup"
            >> beam.ParDo(_Dedup(self.fragments_dir, self.spill, self.flags)).with_outputs("books", main="entries")
        )
        parts = dedup.entries | "GroupByPart" >> beam.GroupByKey() | "SummarizeParts" >> beam.Map(summarize_part)
        layout = (
            parts
            | "PartRows" >> beam.Map(lambda s: (s.part, s.split, s.kept_bytes, s.dropped))
            | "CollectPartRows" >> beam.combiners.ToList()
            | "PlanLayout" >> beam.Map(plan_layout, self.num_shards, self.target_bytes)
        )
        pieces = parts | "ShardPieces" >> beam.FlatMap(shard_pieces, beam.pvalue.AsSingleton(layout))
        every_shard = layout | "EveryShard" >> beam.FlatMap(lambda plan: [(name, None) for name in plan.names])
        written = (
            (pieces, every_shard)
            | "AllPieces" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(_WriteShard(self.final_dir, self.flags))
            | "CollectShards" >> beam.combiners.ToList()
        )
        return dedup.books, layout, written


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
        {"images": image_pattern(cfg.images), "labels": label_pattern(cfg.labels)}, flags, totals_dir
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
    early_books = (
        (images.rejected, labels["rejected"], matched.rejected)
        | "EarlyRejections" >> beam.Flatten()
        | "EarlyByBucket"
        >> beam.Map(lambda r: (zlib.crc32(r.source.encode("utf-8", "surrogateescape")) % DEDUP_BUCKETS, r))
        | "GroupEarly" >> beam.GroupByKey()
        | "EarlyBooks" >> beam.ParDo(_StorageCall(flags, _early_books, fragments_dir))
    )
    skipped = images.skipped | "CountSkipped" >> beam.CombineGlobally(_SkippedFiles())
    ignored = (
        files["labels"]
        | "NotLabelFiles"
        >> beam.FlatMap(
            lambda meta: (
                []
                if (
                    is_label_file(fmt, meta.path)
                    or _ext(meta.path) in IMAGE_EXTENSIONS
                    or posixpath.basename(meta.path).lower() in COMPANION_FILES
                    or pairing.is_split_list(meta.path)
                )
                else [meta.path]
            )
        )
        | "CountIgnored" >> beam.CombineGlobally(_SkippedFiles())
    )

    outcomes = matched.candidates | "EncodeExamples" >> EncodeExamples(
        parts_dir, cfg, label_map, fixed_map is not None, pairing, progress_dir
    )
    books, layout, written = outcomes | "PlanAndWriteShards" >> PlanAndWriteShards(
        final_dir, fragments_dir, cfg.num_shards, cfg.target_shard_mb * 2**20, spill, flags
    )
    return (
        (books, early_books)
        | "AllBooks" >> beam.Flatten()
        | "MergeBooks" >> beam.CombineGlobally(_MergeBooks())
        | "WriteMetadata"
        >> beam.ParDo(
            _WriteMetadata(final_dir, fragments_dir, fmt, flags),
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


PROGRESS_DIR, PROGRESS_TOTAL_DIR = "progress", "progress-total"  # marks under the run's temp directory


def run_ingest(cfg: IngestConfig, on_progress=None) -> dict:
    """Runs the ingest job to completion and commits its output; returns stats.json's content.

    Progress (images done of those listed, rate, ETA) goes to stderr while it runs: a bar on a
    terminal, a plain line every 10 s in a log; ``on_progress(done, total)`` too (a Prefect artifact)."""
    cfg = cfg.model_copy(
        update={k: storage.absolute(getattr(cfg, k)) for k in ("images", "labels", "out", "classes", "label_map")}
    )
    pipeline_options(cfg.pipeline_flags())  # first: the listing below needs the S3/GCS options
    inputs = storage.count_files(image_pattern(cfg.images), limit=MULTI_PROCESS_MIN_FILES)
    if not inputs:
        raise IngestError(f"--images {cfg.images}: no files found")
    options = pipeline_options(local_parallelism(cfg.pipeline_flags(), inputs))
    if not storage.any_file(label_pattern(cfg.labels)):
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

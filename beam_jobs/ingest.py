"""The ingest job: images + labels (VOC, COCO, CSV, YOLO) → sharded TFRecords, with every image accounted for.

Pipeline shape (each box a composite PTransform)::

    ListImages ─┐
                ├─ MatchLabelsToImages ─ EncodeExamples ─ PlanShards ─ WriteShards ─ WriteMetadata
    ParseLabels ┘        (join on stem)     (batched)      (dedup)     (byte copy)   (stats, maps)

Design notes:

* Per-element overhead dominates naive Beam jobs here, so the heavy stage works on batches of
  images, and each batch writes its records straight into a part file. Only small metadata
  (key, sha256, offset, length) travels through the pipeline, never image bytes.
* Duplicates (same sha256 of the file bytes) can only be known once every image is hashed, so
  the part files hold every valid image and ``PlanShards`` picks one twin (the smallest key, the
  same on every run and runner); ``WriteShards`` then concatenates part-file byte ranges into the
  final shards, skipping the dropped twins. TFRecord frames are self-contained, so this copy
  never re-parses a record.
* Everything is written under a run-private temp directory; the driver moves the files into
  ``--out`` and writes ``_SUCCESS`` last (see :mod:`ssdflow.storage`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import posixpath
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs import records as R
from beam_jobs.encode import encode_image, split_for
from beam_jobs.parsers import is_label_file, parse_label_file
from beam_jobs.parsers.yolo import load_class_names
from ssdflow import storage, tfrecord
from ssdflow.beam_runner import MULTI_PROCESS_MIN_FILES, local_parallelism, make_pipeline, pipeline_options
from ssdflow.config import IngestConfig, LabelFormat
from ssdflow.schema import LabelMap

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val")
OUTPUT_PATTERNS = ("train-*.tfrecord", "val-*.tfrecord", "label_map.json", "label_map.pbtxt", "stats.json", "rejected.jsonl")
_NS = "ssdflow.ingest"


class IngestError(RuntimeError):
    """The job cannot start or its result does not reconcile; the message says what to fix."""


# --- small records passed between stages ---------------------------------------------------------
@dataclass(frozen=True)
class ImageOutcome:
    """What happened to one candidate image, without its bytes."""

    key: str
    source: str
    sha256: str
    split: str | None  # None when the image was rejected
    part: str | None = None  # part file holding the framed record
    offset: int = 0
    length: int = 0  # framed length in bytes
    boxes_in: int = 0
    class_counts: tuple[tuple[str, int], ...] = ()
    rejections: tuple[R.Rejection, ...] = ()
    stats: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class ShardPlan:
    name: str
    ranges: tuple[tuple[str, int, int], ...]  # (part file, offset, length), in write order
    move_from: str | None = None  # set when the shard is one whole part file: rename it


@dataclass
class Plan:
    """The dedup decision and the shard layout, made once all images are encoded."""

    shards: list[ShardPlan]
    kept: list[ImageOutcome]
    duplicates: list[tuple[ImageOutcome, ImageOutcome]]  # (dropped, kept twin)
    rejected_images: list[ImageOutcome]


@dataclass(frozen=True)
class Decision:
    """What the run will write: the shard layout, stats.json and rejected.jsonl. Small by design."""

    shards: tuple[ShardPlan, ...]
    stats: dict
    rejected_jsonl: str


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


def load_class_names_for(cfg: IngestConfig) -> list[str] | None:
    """YOLO class names from --classes, else a data.yaml / classes.txt beside the labels."""
    if cfg.format != LabelFormat.yolo:
        return None
    candidates = [cfg.classes] if cfg.classes else []
    if not cfg.classes:
        base = cfg.labels if _is_dir(cfg.labels) else posixpath.dirname(cfg.labels)
        candidates = [storage.join(base, n) for n in ("data.yaml", "data.yml", "classes.txt")]
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


def load_fixed_label_map(cfg: IngestConfig) -> LabelMap | None:
    if not cfg.label_map:
        return None
    try:
        return LabelMap.parse(storage.read_text(cfg.label_map), cfg.label_map)
    except Exception as e:
        raise IngestError(f"--label-map {cfg.label_map}: {e}") from None


# --- transforms ----------------------------------------------------------------------------------
class ListImages(beam.PTransform):
    """Image files under a directory or glob → (key, path). Other files are skipped and counted;
    names that are not valid UTF-8 are rejected (tag 'rejected')."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = pattern

    def expand(self, pbegin):
        skipped = Metrics.counter(_NS, "files_skipped")

        def keyed(meta):
            if not R.is_text_name(meta.path):
                yield beam.pvalue.TaggedOutput("rejected", R.undecodable_name(meta.path))
            elif _ext(meta.path) in IMAGE_EXTENSIONS:
                yield R.image_key(meta.path), meta.path
            else:
                skipped.inc()
                yield beam.pvalue.TaggedOutput("skipped", meta.path)

        return (
            pbegin
            | "Match" >> fileio.MatchFiles(self.pattern, empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
            | "Key" >> beam.FlatMap(keyed).with_outputs("skipped", "rejected", main="images")
        )


class _ParseLabelFiles(beam.DoFn):
    """Parses a batch of label files (batched so thousands of small XML files spread over workers)."""

    def __init__(self, fmt: str, class_names: list[str] | None):
        self.fmt = fmt
        self.class_names = class_names

    def process(self, paths):
        for path in paths:
            try:
                data = storage.read_bytes(path)
            except Exception as e:  # storage errors become dead letters, not job failures
                yield beam.pvalue.TaggedOutput("rejected", R.Rejection(path, R.MALFORMED_LABEL_FILE, f"cannot read: {e}", R.LABEL_FILE))
                continue
            result = parse_label_file(self.fmt, path, data, class_names=self.class_names)
            for rej in result.rejections:
                yield beam.pvalue.TaggedOutput("rejected", rej)
            for rec in result.records:
                yield rec.key, rec


class ParseLabels(beam.PTransform):
    """Label files → {"records": (key, LabelRecord), "rejected": Rejection} (file-level problems)."""

    FILES_PER_TASK = 128

    def __init__(self, pattern: str, fmt: str, class_names: list[str] | None):
        super().__init__()
        self.pattern, self.fmt, self.class_names = pattern, fmt, class_names

    def expand(self, pbegin):
        fmt, n = self.fmt, self.FILES_PER_TASK

        def path_of(meta):
            if R.is_text_name(meta.path):
                yield meta.path
            else:
                yield beam.pvalue.TaggedOutput("rejected", R.undecodable_name(meta.path, R.LABEL_FILE))

        paths = (
            pbegin
            | "Match" >> fileio.MatchFiles(self.pattern, empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
            | "LabelFilesOnly" >> beam.Filter(lambda meta: is_label_file(fmt, meta.path))
            | "Paths" >> beam.FlatMap(path_of).with_outputs("rejected", main="paths")
        )
        parsed = (
            paths.paths
            | "Batch" >> beam.BatchElements(min_batch_size=n, max_batch_size=n)
            | "Spread" >> beam.Reshuffle()  # matching happens in one place; parsing should not
            | "Parse" >> beam.ParDo(_ParseLabelFiles(self.fmt, self.class_names)).with_outputs("rejected", main="records")
        )
        rejected = (paths.rejected, parsed.rejected) | "AllRejected" >> beam.Flatten()
        return {"records": parsed.records, "rejected": rejected}


class _MatchDoFn(beam.DoFn):
    def __init__(self, unlabeled_is_negative: bool):
        self.unlabeled_is_negative = unlabeled_is_negative

    def process(self, element):
        key, grouped = element
        images, labels = sorted(grouped["images"]), list(grouped["labels"])
        rejected = lambda rej: beam.pvalue.TaggedOutput("rejected", rej)  # noqa: E731
        if not images:
            for rec in labels:
                yield rejected(R.Rejection(rec.source, R.MISSING_IMAGE, f"label names image {rec.image_name!r}, not found among --images"))
            return
        if len(images) > 1:
            for path in images:
                yield rejected(R.Rejection(path, R.AMBIGUOUS_NAME, f"{len(images)} images share the name {key!r}: {', '.join(images)}"))
            return
        if len(labels) > 1:
            sources = ", ".join(sorted(r.source for r in labels))
            yield rejected(R.Rejection(images[0], R.MULTIPLE_LABELS, f"{len(labels)} label records name this image: {sources}"))
            return
        if not labels:
            if self.unlabeled_is_negative:  # YOLO convention: no .txt means no objects
                yield images[0], R.LabelRecord(image_name=posixpath.basename(images[0]), source=images[0])
            else:
                yield rejected(R.Rejection(images[0], R.NO_LABEL, "no label file mentions this image"))
            return
        yield images[0], labels[0]


class MatchLabelsToImages(beam.PTransform):
    """Joins label records and image files on the file stem → (image path, LabelRecord)."""

    def __init__(self, unlabeled_is_negative: bool):
        super().__init__()
        self.unlabeled_is_negative = unlabeled_is_negative

    def expand(self, pcolls):
        return (
            pcolls
            | "Join" >> beam.CoGroupByKey()
            | "Match" >> beam.ParDo(_MatchDoFn(self.unlabeled_is_negative)).with_outputs("rejected", main="candidates")
        )


class _EncodeFn(beam.DoFn):
    """Encodes images and appends the valid ones to one part file per split and bundle.

    Outcomes are emitted once per bundle, as one list, so the rest of the pipeline handles a few
    elements per worker instead of one per image. A retried bundle leaves orphan part files that
    no outcome names; they go away with the run's temp directory.
    """

    def __init__(self, parts_dir: str, cfg: IngestConfig, label_map_fixed: bool):
        self.parts_dir = parts_dir
        self.val_fraction = cfg.val_fraction
        self.max_pixels = cfg.max_pixels
        self.clip_tolerance = cfg.clip_tolerance
        self.label_map_fixed = label_map_fixed

    def setup(self):
        self.encoded = Metrics.counter(_NS, "images_encoded")
        self.rejected = Metrics.counter(_NS, "images_rejected_before_dedup")
        self.boxes = Metrics.counter(_NS, "boxes_encoded")

    def start_bundle(self):
        self.files: dict[str, tuple[str, object]] = {}
        self.offsets: Counter = Counter()
        self.outcomes: list[ImageOutcome] = []

    def process(self, candidate, label_map):
        path, record = candidate
        boxes_in = len(record.boxes) + len(record.rejections)
        try:
            data = storage.read_bytes(path)
        except Exception as e:  # a storage error is this image's problem, not the job's
            rej = R.Rejection(path, R.UNREADABLE, R.describe(e))
            self.outcomes.append(ImageOutcome(record.key, path, "", None, boxes_in=boxes_in, rejections=(rej,)))
            self.rejected.inc()
            return
        enc = encode_image(record, path, data, label_map, label_map_fixed=self.label_map_fixed,
                           max_pixels=self.max_pixels, clip_tolerance=self.clip_tolerance)
        if enc.example is None:
            self.rejected.inc()
            self.outcomes.append(ImageOutcome(enc.key, path, enc.sha256, None, boxes_in=boxes_in,
                                              rejections=tuple(enc.rejections), stats=tuple(enc.stats.items())))
            return
        split = split_for(enc.key, self.val_fraction)
        if split not in self.files:
            part = storage.join(self.parts_dir, f"{split}-{uuid.uuid4().hex}.part")
            self.files[split] = (part, FileSystems.create(part))
        part, handle = self.files[split]
        framed = tfrecord.frame(enc.example)
        handle.write(framed)
        self.outcomes.append(ImageOutcome(
            enc.key, path, enc.sha256, split, part, self.offsets[split], len(framed), boxes_in,
            tuple(sorted(enc.class_counts.items())), tuple(enc.rejections), tuple(enc.stats.items())))
        self.offsets[split] += len(framed)
        self.encoded.inc()
        self.boxes.inc(enc.boxes_written)

    def finish_bundle(self):
        for _, handle in self.files.values():
            handle.close()
        if self.outcomes:
            # One opaque blob per bundle: 20k small objects through Beam's coder at every stage
            # boundary cost seconds; our own pickled bytes (made and read by this job) cost ms.
            yield WindowedValue(pickle.dumps(self.outcomes, protocol=pickle.HIGHEST_PROTOCOL), MIN_TIMESTAMP, [GlobalWindow()])
        self.files, self.outcomes = {}, []


class EncodeExamples(beam.PTransform):
    """(path, LabelRecord) → pickled lists of ImageOutcome (one per bundle); records land in part files."""

    def __init__(self, parts_dir: str, cfg: IngestConfig, label_map, label_map_fixed: bool):
        super().__init__()
        self.parts_dir, self.cfg, self.label_map, self.fixed = parts_dir, cfg, label_map, label_map_fixed

    def expand(self, candidates):
        return candidates | "Encode" >> beam.ParDo(
            _EncodeFn(self.parts_dir, self.cfg, self.fixed), beam.pvalue.AsSingleton(self.label_map))


def plan_shards(blobs: list[bytes], num_shards: int | None, target_bytes: int) -> Plan:
    """Drops byte-identical twins (keeping the smallest key) and lays out the shards of each split.

    With ``num_shards`` the kept records are cut into that many shards of about equal bytes. Without
    it, part files are packed into shards of about ``target_bytes``; a shard that is exactly one part
    file with nothing dropped is a rename, not a copy (the common case: no bytes move twice).
    """
    outcomes = [o for blob in blobs for o in pickle.loads(blob)]
    valid = [o for o in outcomes if o.split is not None]
    rejected = [o for o in outcomes if o.split is None]
    by_sha: dict[str, list[ImageOutcome]] = defaultdict(list)
    for o in valid:
        by_sha[o.sha256].append(o)
    kept, duplicates = [], []
    for twins in by_sha.values():
        twins.sort(key=lambda o: (o.key, o.source))
        kept.append(twins[0])
        duplicates.extend((dup, twins[0]) for dup in twins[1:])
    dropped_parts = {dup.part for dup, _ in duplicates}

    shards: list[ShardPlan] = []
    for split in SPLITS:
        entries = sorted((o for o in kept if o.split == split), key=lambda o: (o.part, o.offset))
        if num_shards:
            groups = _cut_by_bytes(entries, num_shards)
        else:
            groups = _pack_parts(entries, target_bytes)
        n = len(groups)
        for i, group in enumerate(groups):
            parts = {o.part for o in group}
            move = len(parts) == 1 and not (parts & dropped_parts) and not num_shards
            ranges = _merge_ranges((o.part, o.offset, o.length) for o in group)
            shards.append(ShardPlan(f"{split}-{i:05d}-of-{n:05d}.tfrecord", ranges, move_from=parts.pop() if move else None))
    return Plan(shards=shards, kept=kept, duplicates=duplicates, rejected_images=rejected)


def _merge_ranges(ranges) -> tuple[tuple[str, int, int], ...]:
    """Adjacent byte ranges of one part file become one range (a part minus its dropped twins)."""
    merged: list[list] = []
    for part, offset, length in ranges:
        if merged and merged[-1][0] == part and merged[-1][1] + merged[-1][2] == offset:
            merged[-1][2] += length
        else:
            merged.append([part, offset, length])
    return tuple(tuple(m) for m in merged)


def _cut_by_bytes(entries: list[ImageOutcome], n: int) -> list[list[ImageOutcome]]:
    """n contiguous groups of about equal bytes (some may be empty when records are few)."""
    total = sum(o.length for o in entries)
    groups: list[list[ImageOutcome]] = [[] for _ in range(n)]
    cumulative = 0
    for o in entries:
        groups[min(n - 1, int((cumulative + o.length / 2) * n / max(total, 1)))].append(o)
        cumulative += o.length
    return groups


def _pack_parts(entries: list[ImageOutcome], target_bytes: int) -> list[list[ImageOutcome]]:
    """Whole part files packed in order into groups of up to ~target_bytes; at least one group."""
    by_part: dict[str, list[ImageOutcome]] = defaultdict(list)
    for o in entries:
        by_part[o.part].append(o)
    groups: list[list[ImageOutcome]] = []
    size = target_bytes
    for part in sorted(by_part):
        part_bytes = sum(o.length for o in by_part[part])
        if size + part_bytes > target_bytes and (groups == [] or groups[-1]):
            groups.append([])
            size = 0
        groups[-1].extend(by_part[part])
        size += part_bytes
    return groups or [[]]


class _WriteShard(beam.DoFn):
    def __init__(self, final_dir: str):
        self.final_dir = final_dir

    def process(self, shard: ShardPlan):
        target = storage.join(self.final_dir, shard.name)
        if shard.move_from:  # the part file is the shard, byte for byte
            storage.move(shard.move_from, target)
            yield shard.name
            return
        by_part: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for part, offset, length in shard.ranges:
            by_part[part].append((offset, length))
        if not by_part:  # an empty split: object stores refuse an upload with no parts
            storage.write_bytes(target, b"")
            yield shard.name
            return
        with FileSystems.create(target) as out:
            for part, ranges in by_part.items():  # insertion order = the plan's order
                data = storage.read_bytes(part)
                for offset, length in ranges:
                    out.write(data[offset:offset + length])
        yield shard.name


def build_stats(plan: Plan, early_rejections: list[R.Rejection], label_map: LabelMap) -> tuple[dict, list[R.Rejection]]:
    """stats.json and the rejected lines; raises IngestError if the counts do not reconcile."""
    rejections: list[R.Rejection] = list(early_rejections)
    images_rejected: Counter = Counter()
    boxes_rejected: Counter = Counter()
    stats: Counter = Counter()
    for rej in early_rejections:
        if rej.kind == R.IMAGE:
            images_rejected[rej.reason] += 1
        elif rej.kind == R.BOX:
            boxes_rejected[rej.reason] += 1
    boxes_with_rejected_images = 0
    for o in plan.rejected_images:  # one line per rejected image; its boxes go with it
        images_rejected[o.rejections[0].reason] += 1
        rejections.append(o.rejections[0])
        boxes_with_rejected_images += o.boxes_in
    for dup, twin in plan.duplicates:
        images_rejected[R.DUPLICATE] += 1
        rejections.append(R.Rejection(dup.source, R.DUPLICATE, f"byte-identical to {twin.source} (sha256 {dup.sha256[:16]}...), which is kept"))
        boxes_with_rejected_images += dup.boxes_in
    per_class: Counter = Counter()
    written: Counter = Counter()
    boxes_in_written = boxes_rejected_written = 0
    for o in plan.kept:
        written[o.split] += 1
        per_class.update(dict(o.class_counts))
        stats.update(dict(o.stats))
        boxes_in_written += o.boxes_in
        boxes_rejected_written += len(o.rejections)
        for rej in o.rejections:
            boxes_rejected[rej.reason] += 1
            rejections.append(rej)
    images_in = len(plan.kept) + len(plan.duplicates) + len(plan.rejected_images) + sum(1 for r in early_rejections if r.kind == R.IMAGE)
    images_written = sum(written.values())
    n_rejected = sum(images_rejected.values())
    boxes_written = sum(per_class.values())
    out = {
        "images_in": images_in,
        "images_written": {"total": images_written, **{s: written.get(s, 0) for s in SPLITS}},
        "images_rejected": {"total": n_rejected, **dict(sorted(images_rejected.items()))},
        "images_converted": stats.get("images_converted", 0),
        "images_exif_rotated": stats.get("images_exif_rotated", 0),
        "label_size_corrected": stats.get("label_size_corrected", 0),
        "boxes_written": boxes_written,
        "boxes_clipped": stats.get("boxes_clipped", 0),
        "boxes_rejected": {"total": sum(boxes_rejected.values()), **dict(sorted(boxes_rejected.items()))},
        "boxes_in_rejected_images": boxes_with_rejected_images,
        "boxes_per_class": {name: per_class.get(name, 0) for name in sorted(label_map, key=label_map.get)},
        "label_files_rejected": sum(1 for r in early_rejections if r.kind == R.LABEL_FILE),
        "shards": sorted(sh.name for sh in plan.shards),
    }
    # The job checks its own books: every image and every box of a written image is accounted for.
    if images_in != images_written + n_rejected:
        raise IngestError(f"counts do not reconcile: images_in {images_in} != written {images_written} + rejected {n_rejected}")
    if boxes_in_written != boxes_written + boxes_rejected_written:
        raise IngestError(f"box counts do not reconcile: {boxes_in_written} in written images != {boxes_written} written + {boxes_rejected_written} rejected")
    return out, rejections


SKIPPED_EXAMPLES = 10  # skipped files named in stats.json (all are counted)


class _SkippedFiles(beam.CombineFn):
    """Skipped paths → (count, the alphabetically first few): all of them counted, a few named."""

    def create_accumulator(self):
        return 0, []

    def add_input(self, acc, path):
        return acc[0] + 1, sorted(acc[1] + [path])[:SKIPPED_EXAMPLES]

    def merge_accumulators(self, accs):
        accs = list(accs)
        return sum(a[0] for a in accs), sorted(p for a in accs for p in a[1])[:SKIPPED_EXAMPLES]

    def extract_output(self, acc):
        return acc


def decide(blobs: list[bytes], early_rejections: list[R.Rejection], label_map: LabelMap,
           num_shards: int | None, target_bytes: int, skipped: tuple[int, list[str]] = (0, [])) -> Decision:
    """Dedup, shard layout and the books, in one place once every image is encoded.

    ``skipped``: how many listed files were not images (by extension), and the first few of them.
    """
    plan = plan_shards(blobs, num_shards, target_bytes)
    stats, rejections = build_stats(plan, early_rejections, label_map)
    stats["files_skipped"] = {"total": skipped[0], "examples": list(skipped[1])}  # _SkippedFiles sorts and cuts
    lines = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rejections)
    return Decision(tuple(plan.shards), stats, lines)


class _WriteMetadata(beam.DoFn):
    def __init__(self, final_dir: str):
        self.final_dir = final_dir

    def process(self, decision: Decision, shard_names, label_map):
        if sorted(shard_names) != decision.stats["shards"]:
            raise IngestError(f"shards written {sorted(shard_names)} differ from the plan {decision.stats['shards']}")
        stats = decision.stats
        storage.write_text(storage.join(self.final_dir, "stats.json"), json.dumps(stats, indent=2) + "\n")
        storage.write_text(storage.join(self.final_dir, "rejected.jsonl"), decision.rejected_jsonl)
        storage.write_text(storage.join(self.final_dir, "label_map.json"), label_map.to_json())
        storage.write_text(storage.join(self.final_dir, "label_map.pbtxt"), label_map.to_pbtxt())
        Metrics.counter(_NS, "images_written").inc(stats["images_written"]["total"])
        Metrics.counter(_NS, "images_rejected").inc(stats["images_rejected"]["total"])
        yield stats


def build_pipeline(p: beam.Pipeline, cfg: IngestConfig, tmp_dir: str, class_names, fixed_map: LabelMap | None):
    """Adds the ingest transforms to ``p``; outputs land in ``tmp_dir/final``."""
    parts_dir, final_dir = storage.join(tmp_dir, "parts"), storage.join(tmp_dir, "final")
    fmt = cfg.format.value
    images = p | "ListImages" >> ListImages(image_pattern(cfg.images))
    labels = p | "ParseLabels" >> ParseLabels(label_pattern(cfg.labels), fmt, class_names)

    if fixed_map is not None:
        label_map = p | "FixedLabelMap" >> beam.Create([fixed_map])
    else:
        label_map = (
            labels["records"]
            | "ClassNames" >> beam.Map(lambda kv: frozenset(b.label for b in kv[1].boxes))
            | "Union" >> beam.CombineGlobally(lambda sets: frozenset().union(*sets))
            | "BuildLabelMap" >> beam.Map(LabelMap.from_names)
        )

    matched = {"images": images.images, "labels": labels["records"]} | "MatchLabelsToImages" >> MatchLabelsToImages(unlabeled_is_negative=fmt == "yolo")
    early = (images.rejected, labels["rejected"], matched.rejected) | "EarlyRejections" >> beam.Flatten()
    early_list = early | "CollectRejections" >> beam.combiners.ToList()
    skipped = (
        images.skipped
        | "CountSkipped" >> beam.CombineGlobally(_SkippedFiles())
    )

    blobs = matched.candidates | "EncodeExamples" >> EncodeExamples(parts_dir, cfg, label_map, fixed_map is not None)
    decision = (
        blobs
        | "CollectOutcomes" >> beam.combiners.ToList()
        | "Decide" >> beam.Map(decide, beam.pvalue.AsSingleton(early_list), beam.pvalue.AsSingleton(label_map),
                               cfg.num_shards, cfg.target_shard_mb * 2**20, beam.pvalue.AsSingleton(skipped))
    )
    shard_names = (
        decision
        | "ShardPlans" >> beam.FlatMap(lambda d: d.shards)
        | "Distribute" >> beam.Reshuffle()
        | "WriteShards" >> beam.ParDo(_WriteShard(final_dir))
        | "CollectShards" >> beam.combiners.ToList()
    )
    return decision | "WriteMetadata" >> beam.ParDo(
        _WriteMetadata(final_dir), beam.pvalue.AsSingleton(shard_names), beam.pvalue.AsSingleton(label_map))


def _absolute(uri: str | None) -> str | None:
    """Local paths become absolute, so rejected.jsonl names files unambiguously (and workers agree)."""
    return os.path.abspath(uri) if uri and storage.is_local(uri) and not uri.startswith("file://") else uri


def run_ingest(cfg: IngestConfig) -> dict:
    """Runs the ingest job to completion and commits its output; returns stats.json's content."""
    cfg = cfg.model_copy(update={k: _absolute(getattr(cfg, k)) for k in ("images", "labels", "out", "classes", "label_map")})
    pipeline_options(cfg.pipeline_flags())  # first: the listing below needs the S3/GCS options
    inputs = storage.count_files(image_pattern(cfg.images), limit=MULTI_PROCESS_MIN_FILES)
    if not inputs:
        raise IngestError(f"--images {cfg.images}: no files found")
    options = pipeline_options(local_parallelism(cfg.pipeline_flags(), inputs))
    if not storage.any_file(label_pattern(cfg.labels)):
        raise IngestError(f"--labels {cfg.labels}: no files found")
    class_names = load_class_names_for(cfg)
    fixed_map = load_fixed_label_map(cfg)

    storage.cleanup_stale_tmp(cfg.out)
    storage.invalidate(cfg.out)
    tmp_dir = storage.new_tmp_dir(cfg.out)
    try:
        with make_pipeline(options) as p:
            build_pipeline(p, cfg, tmp_dir, class_names, fixed_map)
        final_dir = storage.join(tmp_dir, "final")
        stats = json.loads(storage.read_text(storage.join(final_dir, "stats.json")))
        names = stats["shards"] + ["label_map.json", "label_map.pbtxt", "stats.json", "rejected.jsonl"]
        manifest = {"job": "ingest", "images_in": stats["images_in"], "images_written": stats["images_written"]["total"],
                    "images_rejected": stats["images_rejected"]["total"], "boxes_written": stats["boxes_written"]}
        storage.commit(final_dir, cfg.out, names, manifest, OUTPUT_PATTERNS)
    finally:
        storage.delete_tree(tmp_dir)
    return stats

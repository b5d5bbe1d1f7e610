"""The join: label records meet their image files on the key, in hash buckets through spill files,
and leave as chunks of (image path, LabelRecord) pairs of about equal bytes."""

from __future__ import annotations

import posixpath
from collections import defaultdict
from typing import NamedTuple

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs import records as R
from beam_jobs.buckets import hash_bucket
from beam_jobs.records import ImageFile
from beam_jobs.spill import Spill
from beam_jobs.storage_dofn import StorageCall, StorageDoFn
from ssdflow import progress


class Matched(NamedTuple):
    """MatchLabelsToImages' outputs: (image path, LabelRecord) pairs and Rejections."""

    candidates: beam.PCollection
    rejected: beam.PCollection


JOIN_BUCKETS = 64  # the join groups by hash bucket of the key, not by key (see MatchLabelsToImages)
CANDIDATES_PER_CHUNK = 256  # matched pairs handed to the encoders as one element


class _PackByBucket(StorageDoFn):
    """(key, value) → (join bucket, spill file of (key, value) pairs): one element per bucket and
    bundle (or per PACK_LIMIT pairs, which bounds a worker's memory on a large bundle)."""

    PACK_LIMIT = 1024

    def __init__(self, spill: Spill, flags=()):
        super().__init__(flags)
        self.spill = spill

    def start_bundle(self):
        self.buckets: dict[int, list] = defaultdict(list)

    def process(self, kv):
        bucket = hash_bucket(kv[0], JOIN_BUCKETS)
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


class _MatchDoFn(StorageDoFn):
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
            matched.chunks | "Spread" >> beam.Reshuffle() | "Unspill" >> beam.ParDo(StorageCall(flags, spill.read))
        )
        return Matched(candidates, matched.rejected)

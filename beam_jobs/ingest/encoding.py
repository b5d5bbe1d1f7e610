"""Encoding: each matched image read, checked and encoded into a tf.Example (:mod:`beam_jobs.encode`),
its framed record appended to a part file, its ImageOutcome kept for the books."""

from __future__ import annotations

import uuid
from collections import Counter

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs import records as R
from beam_jobs.encode import encode_image
from beam_jobs.records import INGEST_METRICS as METRICS
from beam_jobs.records import ImageOutcome
from beam_jobs.splits import Pairing
from beam_jobs.storage_dofn import StorageDoFn
from ssdflow import progress, storage, tfrecord
from ssdflow.config import IngestConfig


class _EncodeFn(StorageDoFn):
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
        self.encoded = Metrics.counter(METRICS, "images_encoded")
        self.rejected = Metrics.counter(METRICS, "images_rejected_before_dedup")
        self.boxes = Metrics.counter(METRICS, "boxes_encoded")

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

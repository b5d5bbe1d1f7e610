"""The scoring job: image archives → detections in storage, with every image accounted for.

    plan chunks, write their listings (driver) ─ Create(chunk ids) ─ ScoreChunks: read ─ infer ─ commit
    assemble (driver, chunk by chunk): detections-*.jsonl / *.parquet, errors.jsonl, coco_results.json,
                                       summary.json, previews, _SUCCESS last

Resumable at archive scale: the input is cut into chunks (each tar archive; otherwise fixed
groups of ``--chunk-size`` files in sorted order). A chunk's id is a hash of the model's
fingerprint and the chunk's listing (paths, sizes, modification times), and its results are
committed atomically under ``OUT/chunks/<model version>/<chunk id>/`` (``_SUCCESS`` last, naming the
attempt whose files count). A rerun scores only the chunks without a commit for that model; a
different model never reuses them.

One pipeline run scores every pending chunk, spread over the workers (``Create`` reshuffles), and each
chunk is committed by its worker the moment it is done: a crash or a cancelled job loses only the
chunks in flight. The chunk is the unit of work on purpose. Beam's RunInference yields one result
per image, and gathering them back per chunk takes a GroupByKey, which in a batch pipeline waits
for every input: with RunInference a job killed at 99% would have committed nothing. So one DoFn
reads a chunk, runs the model on it through the same ModelHandler RunInference would use
(``beam_jobs/model_handler.py``, loaded once per worker process through Beam's ``Shared``, as
RunInference does) and commits it.

The driver then assembles the final outputs from the chunk commits, one chunk at a time (copies,
concatenations and per-chunk summaries), so its memory does not grow with the archive, and the
outputs equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from beam_jobs.records import printable_name
from beam_jobs.score import labelling
from beam_jobs.score.assemble import OUTPUT_PATTERNS, assemble
from beam_jobs.score.chunks import (
    CHUNKS_DIR,
    Chunk,
    committed,
    for_each_chunk,
    plan_chunks,
    prune_attempts,
    prune_other_versions,
    read_listing,
    write_listings,
)
from beam_jobs.score.errors import ScoreError
from beam_jobs.score.model_ref import ModelRef, resolve_model
from beam_jobs.score.reading import ChunkReader, Unscorable
from beam_jobs.score.results import ImageKey, commit_chunk, to_record
from beam_jobs.storage_dofn import StorageDoFn
from ssdflow import out_dir, progress, storage
from ssdflow.beam_runner import make_pipeline, pipeline_options
from ssdflow.config import ScoreConfig
from ssdflow.results import ScoreManifest

log = logging.getLogger(__name__)


METRICS = "ssdflow.score"
RESULTS_LAYOUT = 3  # in every chunk id: commits of an older layout (no summary part, no candidates) are never reused


class ScoreChunks(StorageDoFn):
    """A chunk id → its listing read, its images read and inferred in batches of ``max_batch_size``,
    its results committed; yields the chunk id.

    Counters (namespace ``ssdflow.score``): chunks_committed, images_scored, images_failed.
    """

    def __init__(self, cfg: ScoreConfig, model: ModelRef, progress_dir: str | None = None):
        super().__init__(cfg.pipeline_flags())
        self.out, self.model = cfg.out, model
        self.progress_dir = progress_dir
        self.thresholds, self.max_det, self.batch_size = (
            model.score_thresholds(cfg.score_threshold),
            cfg.max_detections,
            cfg.max_batch_size,
        )
        # Uncertainty is measured against the model's own decision thresholds (calibrated per class),
        # whatever --score-threshold filters the outputs with: a 0.0 filter would make every weak box "uncertain".
        self.decision_thresholds = model.score_thresholds(None)
        self.reader = ChunkReader(cfg.read_threads, cfg.max_pixels)
        self.handler = model.handler(cfg.max_batch_size)
        self._shared = shared.Shared()  # one loaded model per worker process, shared by its threads
        self._model = None

    def setup(self):
        super().setup()
        self.reader.open()
        self._model = self._shared.acquire(self.handler.load_model, tag=f"ssdflow-model-{self.model.fingerprint}")

    def teardown(self):
        self.reader.close()

    def process(self, chunk_id: str):
        if committed(self.out, self.model.version, chunk_id):  # a retried or speculative bundle: done already
            return
        chunk = read_listing(self.out, self.model.version, chunk_id)
        counts: Counter = Counter({"images_in": 0, "files_skipped": 0})
        records, errors, keys, batch = [], [], [], []
        pool = labelling.ChunkPool()
        marks = progress.Marks(self.progress_dir) if self.progress_dir else None
        for source, outcome in self.reader.members(chunk):
            if marks is not None:
                marks.add(1)
            if outcome is None:
                counts["files_skipped"] += 1
                continue
            counts["images_in"] += 1
            if isinstance(outcome, Unscorable):
                errors.append({"source": printable_name(source), "reason": outcome.reason, "detail": outcome.detail})
                continue
            keys.append(ImageKey(source, outcome.width, outcome.height))
            batch.append(outcome.data)
            if len(batch) >= self.batch_size:
                self._infer(keys, batch, records, errors, pool)
                keys, batch = [], []
        if batch:
            self._infer(keys, batch, records, errors, pool)
        manifest = commit_chunk(
            self.out, self.model.version, chunk.chunk_id, counts, records, errors, pool.candidates()
        )
        if marks is not None:
            marks.flush()
        Metrics.counter(METRICS, "chunks_committed").inc()
        Metrics.counter(METRICS, "images_scored").inc(manifest["images_scored"])
        Metrics.counter(METRICS, "images_failed").inc(manifest["images_failed"])
        yield chunk.chunk_id

    def _infer(
        self, keys: list, batch: list[bytes], records: list[dict], errors: list[dict], pool: labelling.ChunkPool
    ) -> None:
        for key, prediction in zip(keys, self.handler.run_inference(batch, self._model)):
            record, error = to_record(key, prediction.inference, self.model, self.thresholds, self.max_det)
            if record is None:
                errors.append(error)
            else:
                records.append(record)
                pool.add(
                    record,
                    labelling.image_uncertainty(prediction.inference, self.decision_thresholds, self.model.label_names),
                )


def build_pipeline(p, cfg: ScoreConfig, model: ModelRef, chunks: list[Chunk], progress_dir: str | None = None):
    """One run over ``chunks`` (their listings written), spread over the workers (``Create``
    reshuffles what it creates); each chunk committed as soon as it is scored."""
    return (
        p
        | "ChunkIds" >> beam.Create([c.chunk_id for c in chunks])
        | "ScoreChunks" >> beam.ParDo(ScoreChunks(cfg, model, progress_dir))
    )


def run_score(cfg: ScoreConfig, on_progress=None) -> ScoreManifest:
    """Scores what is not yet committed, assembles the outputs, writes ``_SUCCESS``; returns its manifest.

    Progress (files done of those listed, already committed chunks included, rate, ETA) goes to
    stderr while it runs: a bar on a terminal, a plain line every 10 s in a log; and to
    ``on_progress(done, total)`` (a Prefect artifact)."""
    cfg = cfg.model_copy(
        update={
            "out": storage.absolute(cfg.out),
            "model": storage.absolute(cfg.model),
            "images": [storage.absolute(i) for i in cfg.images],
        }
    )
    options = pipeline_options(cfg.pipeline_flags())
    try:
        remove = out_dir.check(cfg.out, "score", (*OUTPUT_PATTERNS, f"{CHUNKS_DIR}/*"), cfg.overwrite)
    except out_dir.OutDirError as e:
        raise ScoreError(str(e)) from None
    storage.cleanup_stale_tmp(cfg.out)  # what a killed run left (its progress marks, a half-assembled output)
    model = resolve_model(cfg.model)
    # Everything that can change a chunk's results. The batch size too: batch shapes change oneDNN's
    # float rounding, and with it near-tied scores, so a commit made with another batch size is not reused.
    thresholds = model.score_thresholds(cfg.score_threshold)
    results_key = (
        f"{RESULTS_LAYOUT}:{model.fingerprint}:{json.dumps(thresholds)}:{cfg.max_detections}:{cfg.max_pixels}:"
        f"{cfg.max_batch_size}"
    )
    chunks = plan_chunks(cfg.images, cfg.chunk_size, results_key)
    final = for_each_chunk(lambda c: committed(cfg.out, model.version, c.chunk_id), chunks)
    todo = [c for c, done in zip(chunks, final) if not done]
    log.info("score: %d chunks, %d already committed for model %s", len(chunks), len(chunks) - len(todo), model.version)
    # The previous outputs stay complete and usable until assemble() commits the new ones: chunk
    # results go under OUT/chunks/, the outputs under a temp directory.
    if todo:
        write_listings(cfg.out, model.version, todo)
        marks = storage.new_tmp_dir(cfg.out)  # the workers' progress marks; gone with the run
        try:
            reporter = progress.Reporter(
                "score",
                lambda: progress.counted(marks),
                unit="files",
                on_update=on_progress,
                total=sum(len(c.uris) for c in chunks) if all(c.kind == "files" for c in chunks) else None,
                start=sum(len(c.uris) for c, done in zip(chunks, final) if done and c.kind == "files"),
            )
            with reporter, make_pipeline(options, preload=("beam_jobs.score",)) as p:
                build_pipeline(p, cfg, model, todo, marks)
        finally:
            storage.delete_tree(marks)
        prune_attempts(cfg.out, model.version, todo)
    manifest = assemble(cfg, model, chunks, scored_now=len(todo), remove=remove)
    if not cfg.keep_chunks:
        for version in prune_other_versions(cfg.out, model.version):
            log.info("score: deleted the chunk results of model %s (--keep-chunks keeps them)", version)
    return manifest

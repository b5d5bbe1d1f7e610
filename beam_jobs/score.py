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

import contextlib
import hashlib
import heapq
import io
import json
import logging
import posixpath
import tarfile
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable, TypeVar

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from beam_jobs import labelling
from beam_jobs.patterns import file_pattern, is_image_name
from beam_jobs.model_handler import SavedModelDetector, TFLiteDetectorHandler, file_fingerprint, saved_model_fingerprint
from beam_jobs.records import READ_RETRYABLE, UNDECODABLE_NAME, UNREADABLE, describe, is_text_name, printable_name
from ssdflow import out_dir, progress, storage
from ssdflow.beam_runner import make_pipeline, pipeline_options, worker_filesystems
from ssdflow.config import OutputFormat, ScoreConfig, is_tflite
from ssdflow.schema import MODEL_INFO, LabelMap

log = logging.getLogger(__name__)
T = TypeVar("T")

_NS = "ssdflow.score"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
OUTPUT_PATTERNS = (
    "detections-*.jsonl",
    "detections-*.parquet",
    "errors.jsonl",
    "coco.json",
    "coco_results.json",
    "summary.json",
    "preview/*.jpg",
    *labelling.OUTPUT_PATTERNS,
)
CHUNKS_DIR = "chunks"  # OUT/chunks/<model version>/<chunk id>/: each chunk's committed results
ROUND = 4  # decimals kept in outputs: batch composition must not change a single written byte


class ScoreError(RuntimeError):
    pass


@dataclass(frozen=True)
class ModelRef:
    model_dir: str
    version: str  # the registered version; "<version>.<file stem>" for a .tflite file (outputs name it)
    fingerprint: str  # of the SavedModel's graph and variables index (or the .tflite file): chunks are keyed on it
    label_names: dict  # id → name
    class_thresholds: dict  # id → score threshold calibrated on val at training time ({} for older models)
    tflite_file: str | None = None  # a .tflite export of model_dir, run instead of the SavedModel

    @property
    def runtime(self) -> str:
        return "tflite" if self.tflite_file else "saved_model"

    def handler(self, max_batch_size: int):
        """The ModelHandler that runs this model: TFLite's interpreter for a .tflite file, else TensorFlow."""
        if self.tflite_file:
            return TFLiteDetectorHandler(self.tflite_file, max_batch_size=max_batch_size, fingerprint=self.fingerprint)
        return SavedModelDetector(self.model_dir, max_batch_size=max_batch_size, fingerprint=self.fingerprint)

    def score_thresholds(self, setting: float | None) -> dict[int, float]:
        """Each class id's score threshold for ``--score-threshold`` (None, "auto": the calibrated
        ones, ``FALLBACK_SCORE_THRESHOLD`` where there is none; a number: that for every class)."""
        from ssdflow.config import FALLBACK_SCORE_THRESHOLD

        if setting is None:
            return {i: float(self.class_thresholds.get(i, FALLBACK_SCORE_THRESHOLD)) for i in sorted(self.label_names)}
        return {i: float(setting) for i in sorted(self.label_names)}


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    index: int
    kind: str  # "files" or "tar"
    uris: tuple[str, ...]


def resolve_model(model: str) -> ModelRef:
    """The model ``--model`` names (a SavedModel directory, a models directory's champion, or a .tflite
    file exported beside a SavedModel; local, s3:// or gs://), fingerprinted by its graph and variables
    index (a .tflite: by its bytes)."""
    from model.registry import resolve_model_uri  # only the path rule; no TensorFlow import

    tflite_file = None
    if is_tflite(model):
        tflite_file = str(model)
        if not storage.exists(tflite_file):
            raise FileNotFoundError(
                f"{tflite_file}: no such .tflite file (`ssdflow export --format tflite` writes one)"
            )
        model_dir = posixpath.dirname(tflite_file)
        if not storage.exists(storage.join(model_dir, "label_map.json")):
            raise FileNotFoundError(f"{tflite_file}: not beside its exported model (no label_map.json in {model_dir})")
    else:
        model_dir = resolve_model_uri(model)
    label_map = LabelMap.parse(storage.read_text(storage.join(model_dir, "label_map.json")), "label_map.json")
    info_uri = storage.join(model_dir, MODEL_INFO)
    info = json.loads(storage.read_text(info_uri)) if storage.exists(info_uri) else {}
    thresholds = {int(i): float(t) for i, t in (info.get("class_score_thresholds") or {}).items()}
    version = posixpath.basename(model_dir.rstrip("/"))
    if tflite_file:
        version = f"{version}.{posixpath.basename(tflite_file)[: -len('.tflite')]}"
        fingerprint = file_fingerprint(tflite_file)
    else:
        fingerprint = saved_model_fingerprint(model_dir)
    return ModelRef(model_dir, version, fingerprint, dict(label_map.names_by_id()), thresholds, tflite_file)


def _is_tar(path: str) -> bool:
    return path.lower().endswith(TAR_SUFFIXES)


def plan_chunks(inputs: list[str], chunk_size: int, model_fingerprint: str) -> list[Chunk]:
    """Lists the inputs (driver side) and cuts them into chunks in a stable order.

    ``model_fingerprint`` should cover everything that changes a chunk's results (the model and
    the filtering settings), so a chunk id names one exact result.
    """
    files: dict[str, tuple[int, float]] = {}
    for spec in inputs:
        pattern = spec if _is_tar(spec) else file_pattern(spec)  # a directory means its files, as in ingest
        result = FileSystems.match([pattern])[0]
        if not result.metadata_list:
            raise ScoreError(f"--images {spec}: no files found")
        for m in result.metadata_list:
            files[m.path] = (m.size_in_bytes, m.last_updated_in_seconds)
    tars = sorted(p for p in files if _is_tar(p))
    plain = sorted(p for p in files if not _is_tar(p))
    groups = [("tar", (t,)) for t in tars] + [
        ("files", tuple(plain[i : i + chunk_size])) for i in range(0, len(plain), chunk_size)
    ]

    def chunk_id(kind, uris):
        listing = json.dumps([model_fingerprint, kind, [(u, *files[u]) for u in uris]])
        return hashlib.sha256(listing.encode()).hexdigest()[:20]

    return [Chunk(chunk_id(kind, uris), i, kind, uris) for i, (kind, uris) in enumerate(groups)]


def chunk_dir(out: str, version: str, chunk_id: str) -> str:
    return storage.join(out, CHUNKS_DIR, version, chunk_id)


LISTING = "listing.json"  # a pending chunk's files, written by the driver, read by the worker that scores it


def for_each_chunk(fn: Callable[[Chunk], T], chunks: list[Chunk], threads: int = 16) -> list[T]:
    """``fn`` of each chunk, in order, run from a thread pool: per-chunk storage calls are
    latency-bound (an object store's round trip), and a run can have thousands of chunks."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, chunks))  # list(): re-raises the first failure


def write_listings(out: str, version: str, chunks: list[Chunk]) -> None:
    """Each pending chunk's listing beside its future commit: the pipeline then carries only chunk
    ids (a runner's job graph holds what ``Create`` gets, and an archive's listing can be gigabytes)."""

    def write(c: Chunk) -> None:
        storage.write_text(
            storage.join(chunk_dir(out, version, c.chunk_id), LISTING),
            json.dumps({"index": c.index, "kind": c.kind, "uris": list(c.uris)}),
        )

    for_each_chunk(write, chunks)


def prune_attempts(out: str, version: str, chunks: list[Chunk]) -> None:
    """Deletes the attempts that a chunk's ``_SUCCESS`` does not name: what a killed run's chunk in
    flight left, or the loser of a retried bundle. Only for chunks committed by this run: the
    others were pruned by the run that committed them. (``assemble`` reads the same small
    manifests again, one chunk at a time; pruning stays here, in parallel, because listing and
    deleting are the slow part on an object store.)"""

    def prune(c: Chunk) -> None:
        d = chunk_dir(out, version, c.chunk_id)
        keep = json.loads(storage.read_text(storage.join(d, storage.SUCCESS)))["attempt"]
        attempts = {u[len(d) + 1 :].split("/", 1)[0] for u in storage.list_files(storage.join(d, "*", "*"))}
        for attempt in sorted(attempts - {keep}):
            storage.delete_tree(storage.join(d, attempt))

    for_each_chunk(prune, chunks)


def committed(out: str, version: str, chunk_id: str) -> bool:
    """Whether a chunk's results are final: its ``_SUCCESS`` exists and no image in it failed for a
    reason that may pass (``read_error_retryable``); such a chunk is scored again by the next run."""
    try:
        manifest = json.loads(storage.read_text(storage.join(chunk_dir(out, version, chunk_id), storage.SUCCESS)))
    except FileNotFoundError:
        return False
    return not manifest.get("images_retryable")


def prune_other_versions(out: str, keep_version: str) -> list[str]:
    """Deletes ``OUT/chunks/<v>/`` of every model version but ``keep_version`` (a rerun reuses only
    the chunks of the model it scores with; another champion's are a full copy of every detection);
    returns the versions deleted."""
    root = storage.join(out, CHUNKS_DIR)
    found = {u[len(root) + 1 :].split("/", 1)[0] for u in storage.list_files(storage.join(root, "*", "*", "*"))}
    gone = sorted(v for v in found if v and v != keep_version)
    for version in gone:
        storage.delete_tree(storage.join(root, version))
    return gone


def read_listing(out: str, version: str, chunk_id: str) -> Chunk:
    listing = json.loads(storage.read_text(storage.join(chunk_dir(out, version, chunk_id), LISTING)))
    return Chunk(chunk_id, listing["index"], listing["kind"], tuple(listing["uris"]))


# --- reading ------------------------------------------------------------------------------------
def _inspect(data: bytes, max_pixels: int | None = None) -> tuple[bytes, tuple[int, int]]:
    """(bytes for the model, (width, height) as displayed), from the header alone for most images.

    Ingest's decompression-bomb guard, shared: a header claiming more than ``max_pixels``
    (default: ingest's default limit) raises ImageRejected (too_many_pixels) here, so a tiny file
    claiming 30,000 x 30,000 pixels never reaches TensorFlow's decoder. An image with an EXIF
    orientation (phone photos) is turned upright as ingest does, because TensorFlow's decoder
    ignores EXIF and the model was trained on upright pixels; boxes then refer to the upright image.
    """
    from beam_jobs.images import exif_orientation, normalize_image, open_header
    from ssdflow.config import DEFAULT_MAX_PIXELS

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    with open_header(data, limit) as img:
        size, orientation = img.size, exif_orientation(img)
    if orientation == 1:
        return data, size
    upright = normalize_image(data, limit)
    return upright.jpeg, (upright.width, upright.height)


class ChunkReader:
    """A chunk's files, read by a small thread pool ``read_threads`` ahead of the consumer and yielded
    in listing order: on object storage each read is a round trip, and even locally reading the next
    batch overlaps the inference of this one (TensorFlow releases the GIL)."""

    def __init__(self, read_threads: int = 8, max_pixels: int | None = None):
        self.read_threads, self.max_pixels = read_threads, max_pixels
        self._pool = None

    def open(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(self.read_threads, thread_name_prefix="ssdflow-read")

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def members(self, chunk: Chunk):
        """(source, outcome) for every file of the chunk, in order (outcome as :func:`_check`); tar
        members are streamed, never extracted."""
        if chunk.kind == "files":
            window = deque()
            for uri in chunk.uris:
                window.append((uri, self._pool.submit(read_image, uri, self.max_pixels)))
                if len(window) >= 4 * self.read_threads:  # bounded look-ahead: memory stays flat on big chunks
                    uri, future = window.popleft()
                    yield uri, future.result()
            while window:
                uri, future = window.popleft()
                yield uri, future.result()
            return
        (uri,) = chunk.uris
        try:
            with FileSystems.open(uri) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
                for member in tar:
                    source = f"{uri}#{member.name}"
                    if member.issym() or member.islnk():
                        yield source, ("error", "link_member", "symbolic and hard links in archives are refused")
                    elif member.isfile():
                        yield source, _check(source, tar.extractfile(member).read(), self.max_pixels)
                    elif not member.isdir():  # FIFOs, devices: never opened, but accounted for
                        yield (
                            source,
                            ("error", "special_member", f"tar member of type {member.type!r} is not a regular file"),
                        )
        except Exception as e:  # a storage or format error is this archive's problem, not the job's
            yield uri, ("error", READ_RETRYABLE if storage.is_transient(e) else "unreadable_archive", describe(e))


def _is_image_name(source: str) -> bool:
    return is_image_name(source.split("#", 1)[-1])


def _check(source: str, data: bytes, max_pixels: int | None = None):
    """None for a file that is not an image (skipped); ("error", reason, detail); or ("ok", bytes, (w, h))
    with the bytes the model should see.

    Reasons are ingest's where the problem is the same: empty_file, too_many_pixels, decode_error.
    """
    from beam_jobs.images import ImageRejected

    if not _is_image_name(source):
        return None
    if not is_text_name(source):  # Beam's coders and the JSON outputs need text names
        return "error", UNDECODABLE_NAME, "file name is not valid UTF-8; rename the file"
    if not data:
        return "error", "empty_file", "zero-byte file"
    try:
        return ("ok", *_inspect(data, max_pixels))
    except ImageRejected as e:
        return "error", e.reason, e.detail[:500]
    except Exception as e:
        return "error", "decode_error", describe(e)


def read_image(uri: str, max_pixels: int | None = None):
    """Reads and header-checks one file (score's reader pool, predict): None for a file that is not an
    image by name, ``("error", reason, detail)``, or ``("ok", bytes, (width, height))``."""
    if not _is_image_name(uri):
        return None  # never read what is skipped
    if not is_text_name(uri):
        return _check(uri, b"", max_pixels)
    try:
        data = storage.read_bytes(uri)
    except Exception as e:  # transient errors are kept apart: a rerun scores their chunk again
        return "error", READ_RETRYABLE if storage.is_transient(e) else UNREADABLE, describe(e)
    return _check(uri, data, max_pixels)


# --- results ------------------------------------------------------------------------------------
def to_record(key, inference: dict, model: ModelRef, thresholds: dict[int, float], max_detections: int):
    """One image's JSONL record (pixels and normalized boxes), or an error dict. ``thresholds``: each
    class id's minimum score (:meth:`ModelRef.score_thresholds`)."""
    chunk_id, source, width, height = key
    if "error" in inference:
        return chunk_id, None, {"source": source, "reason": "decode_error", "detail": inference["error"]}
    n = int(inference["num_detections"])
    detections = []
    for box, score, cls in zip(
        inference["detection_boxes"][:n], inference["detection_scores"][:n], inference["detection_classes"][:n]
    ):
        label_id = int(round(float(cls)))
        # Compared as written (rounded), so the outputs keep exactly the scores at or above the threshold;
        # a class id outside the label map (none of ssdflow's models emits one) would need a score of 1.
        if round(float(score), ROUND) < thresholds.get(label_id, 1.0) or len(detections) >= max_detections:
            continue
        ymin, xmin, ymax, xmax = (float(v) for v in box)
        detections.append(
            {
                "label": model.label_names.get(label_id, str(label_id)),
                "label_id": label_id,
                "score": round(float(score), ROUND),
                "box": {
                    "xmin": round(xmin * width, ROUND - 2),
                    "ymin": round(ymin * height, ROUND - 2),
                    "xmax": round(xmax * width, ROUND - 2),
                    "ymax": round(ymax * height, ROUND - 2),
                },
                "box_normalized": {
                    "xmin": round(xmin, ROUND),
                    "ymin": round(ymin, ROUND),
                    "xmax": round(xmax, ROUND),
                    "ymax": round(ymax, ROUND),
                },
            }
        )
    record = {
        "source": source,
        "width": width,
        "height": height,
        "model_version": model.version,
        "detections": detections,
    }
    return chunk_id, record, None


PARQUET_FIELDS = (
    ("source", "string"),
    ("model_version", "string"),
    ("width", "int32"),
    ("height", "int32"),
    ("label", "string"),
    ("label_id", "int32"),
    ("score", "float32"),
    ("xmin", "float32"),
    ("ymin", "float32"),
    ("xmax", "float32"),
    ("ymax", "float32"),
    ("xmin_norm", "float32"),
    ("ymin_norm", "float32"),
    ("xmax_norm", "float32"),
    ("ymax_norm", "float32"),
)


def parquet_bytes(records: list[dict]) -> bytes:
    """One row per detection, with a typed schema (PARQUET_FIELDS)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, getattr(pa, t)()) for name, t in PARQUET_FIELDS])
    cols: dict[str, list] = {name: [] for name, _ in PARQUET_FIELDS}
    for r in records:
        for d in r["detections"]:
            for name, value in (
                ("source", r["source"]),
                ("model_version", r["model_version"]),
                ("width", r["width"]),
                ("height", r["height"]),
                ("label", d["label"]),
                ("label_id", d["label_id"]),
                ("score", d["score"]),
            ):
                cols[name].append(value)
            for k in ("xmin", "ymin", "xmax", "ymax"):
                cols[k].append(d["box"][k])
                cols[f"{k}_norm"].append(d["box_normalized"][k])
    buf = io.BytesIO()
    pq.write_table(pa.table(cols, schema=schema), buf)
    return buf.getvalue()


def commit_chunk(
    out: str,
    version: str,
    chunk_id: str,
    counts: Counter,
    records: list[dict],
    errors: list[dict],
    candidates: list[dict] = (),
) -> dict:
    """Writes one chunk's results under ``chunks/<version>/<id>/<attempt>/``, then ``_SUCCESS`` in
    ``chunks/<version>/<id>/`` naming that attempt; returns the manifest (counts, the chunk's share of
    the summary, the attempt). A runner may run a bundle twice at once (a retry beside a straggler);
    each attempt writes only its own files, and ``_SUCCESS``, one whole object, names a complete one.
    ``candidates``: the chunk's most uncertain images (``labelling.ChunkPool``), for ``--select``."""
    from beam_jobs import score_outputs as so

    records = sorted(records, key=lambda r: r["source"])
    errors = sorted(errors, key=lambda e: e["source"])
    counts = Counter(counts)
    counts["images_scored"], counts["images_failed"] = len(records), len(errors)
    counts["detections"] = sum(len(r["detections"]) for r in records)
    counts["images_retryable"] = sum(e["reason"] == READ_RETRYABLE for e in errors)
    if counts["images_in"] != counts["images_scored"] + counts["images_failed"]:
        raise ScoreError(
            f"chunk {chunk_id}: images_in {counts['images_in']} != scored {counts['images_scored']} + failed {counts['images_failed']}"
        )
    d = chunk_dir(out, version, chunk_id)
    attempt = uuid.uuid4().hex[:12]
    a = storage.join(d, attempt)
    # Every format is written, whatever --formats says: a rerun with other formats reuses the commit.
    storage.write_text(
        storage.join(a, "detections.jsonl"), "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    )
    storage.write_text(storage.join(a, "errors.jsonl"), "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors))
    storage.write_bytes(storage.join(a, "detections.parquet"), parquet_bytes(records))
    storage.write_text(
        storage.join(a, "candidates.jsonl"), "".join(json.dumps(c, sort_keys=True) + "\n" for c in candidates)
    )
    manifest = {**dict(counts), "summary": so.summary_part(records), "attempt": attempt}
    storage.write_text(storage.join(d, storage.SUCCESS), json.dumps(manifest, sort_keys=True) + "\n")
    return manifest


class ScoreChunks(beam.DoFn):
    """A chunk id → its listing read, its images read and inferred in batches of ``max_batch_size``,
    its results committed; yields the chunk id.

    Counters (namespace ``ssdflow.score``): chunks_committed, images_scored, images_failed.
    """

    def __init__(self, cfg: ScoreConfig, model: ModelRef, progress_dir: str | None = None):
        self.out, self.model, self.flags = cfg.out, model, cfg.pipeline_flags()
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
        worker_filesystems(self.flags)
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
            if outcome[0] == "error":
                _, reason, detail = outcome
                errors.append({"source": printable_name(source), "reason": reason, "detail": detail})
                continue
            _, data, (width, height) = outcome
            keys.append((chunk.chunk_id, source, width, height))
            batch.append(data)
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
        Metrics.counter(_NS, "chunks_committed").inc()
        Metrics.counter(_NS, "images_scored").inc(manifest["images_scored"])
        Metrics.counter(_NS, "images_failed").inc(manifest["images_failed"])
        yield chunk.chunk_id

    def _infer(
        self, keys: list, batch: list[bytes], records: list[dict], errors: list[dict], pool: labelling.ChunkPool
    ) -> None:
        for key, prediction in zip(keys, self.handler.run_inference(batch, self._model)):
            _, record, error = to_record(key, prediction.inference, self.model, self.thresholds, self.max_det)
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


# --- driver ---------------------------------------------------------------------------------------
RESULTS_LAYOUT = 3  # in every chunk id: commits of an older layout (no summary part, no candidates) are never reused


def run_score(cfg: ScoreConfig, on_progress=None) -> dict:
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


def used_thresholds(cfg: ScoreConfig, model: ModelRef) -> dict:
    """``{"setting": "auto" | number, "per_class": {name: threshold}}``: what the outputs were filtered
    with; with ``auto``, ``fallback`` names the classes that had no calibrated threshold (they got
    FALLBACK_SCORE_THRESHOLD)."""
    used = {
        "setting": "auto" if cfg.score_threshold is None else cfg.score_threshold,
        "per_class": {model.label_names[i]: t for i, t in model.score_thresholds(cfg.score_threshold).items()},
    }
    if cfg.score_threshold is None:
        used["fallback"] = [model.label_names[i] for i in sorted(model.label_names) if i not in model.class_thresholds]
    return used


def assemble(cfg: ScoreConfig, model: ModelRef, chunks: list[Chunk], scored_now: int, remove: list[str] = ()) -> dict:
    """The final outputs from the chunk commits, in chunk order, under a temp dir, then committed
    with ``_SUCCESS`` last. One chunk's records at a time are in memory (shards are copied, errors
    and COCO results concatenated, the summary merged from the chunks' parts)."""
    from beam_jobs import score_outputs as so

    summary_path = storage.join(cfg.out, "summary.json")
    previous = json.loads(storage.read_text(summary_path)) if storage.exists(summary_path) else None
    tmp = storage.new_tmp_dir(cfg.out)
    try:
        n = len(chunks)
        counts: Counter = Counter()
        parts, names, previews = [], [], []
        errors_out = storage.StreamWriter(storage.join(tmp, "errors.jsonl"))
        coco_out = (
            so.CocoWriter(storage.join(tmp, "coco.json"), storage.join(tmp, "coco_results.json"), model.label_names)
            if OutputFormat.coco in cfg.formats
            else None
        )
        candidates: list[dict] = []  # the best SCAN_FACTOR * select so far, over every chunk's pool
        with errors_out, coco_out or contextlib.nullcontext():
            for c in chunks:
                d = chunk_dir(cfg.out, model.version, c.chunk_id)
                manifest = json.loads(storage.read_text(storage.join(d, storage.SUCCESS)))
                parts.append(manifest.pop("summary"))
                d = storage.join(d, manifest.pop("attempt"))  # the attempt _SUCCESS names: complete by construction
                counts.update(manifest)
                errors_out.write(storage.read_bytes(storage.join(d, "errors.jsonl")))
                wanted = cfg.preview - len(previews) if manifest["images_scored"] else 0
                if coco_out is not None or wanted > 0:  # one chunk's records in memory at a time
                    records = so.read_jsonl(storage.join(d, "detections.jsonl"))
                    if coco_out is not None:
                        coco_out.add(records)
                    previews.extend(
                        [r for r in records if r["detections"]][: max(wanted, 0)]
                    )  # images with something to see
                if cfg.select:
                    candidates = heapq.nsmallest(
                        labelling.SCAN_FACTOR * cfg.select,
                        candidates + so.read_jsonl(storage.join(d, "candidates.jsonl")),
                        key=labelling.rank_key,
                    )
                shard = f"detections-{c.index:05d}-of-{n:05d}"
                for fmt, suffix in ((OutputFormat.jsonl, "jsonl"), (OutputFormat.parquet, "parquet")):
                    if fmt in cfg.formats:
                        FileSystems.copy(
                            [storage.join(d, f"detections.{suffix}")], [storage.join(tmp, f"{shard}.{suffix}")]
                        )
                        names.append(f"{shard}.{suffix}")
        names.append("errors.jsonl")
        if coco_out is not None:
            names += ["coco.json", "coco_results.json"]
        if counts["images_in"] != counts["images_scored"] + counts["images_failed"]:
            raise ScoreError(f"counts do not reconcile: {dict(counts)}")
        summary = so.summarize(parts, counts, model.version)
        inputs_key = hashlib.sha256(json.dumps([c.uris for c in chunks]).encode()).hexdigest()[:16]
        summary["inputs_fingerprint"] = inputs_key
        used = used_thresholds(cfg, model)
        summary["score_thresholds"] = used
        summary["change_since_previous"] = so.change_since(
            previous, summary, previous is not None and previous.get("inputs_fingerprint") == inputs_key
        )
        storage.write_text(storage.join(tmp, "summary.json"), json.dumps(summary, indent=2) + "\n")
        names.append("summary.json")
        selected = {}
        if cfg.select:
            picked, selected = labelling.select(candidates, cfg.select, so.read_source, threads=cfg.read_threads)
            root = storage.join(cfg.out, labelling.LABELLING_DIR)
            image_root = labelling.task_image_root(root, cfg.label_studio_root)
            for name, data in labelling.batch_files(
                picked, model.version, [model.label_names[i] for i in sorted(model.label_names)], image_root
            ).items():
                storage.write_bytes(storage.join(tmp, name), data)
                names.append(name)
            selected["selected"] = len(picked)
            log.info(
                "score: %d images selected for labelling under %s (%d candidates, %d near-duplicates skipped)",
                len(picked),
                root,
                selected["candidates"],
                selected["near_duplicates_skipped"],
            )
        taken: set = set()
        for record in previews:
            name = f"preview/{so.preview_name(record['source'], taken)}"  # named after its source
            storage.write_bytes(storage.join(tmp, name), so.draw_preview(so.read_source(record["source"]), record))
            names.append(name)
        manifest = {
            "job": "score",
            "model_version": model.version,
            "model_dir": model.model_dir,
            "runtime": model.runtime,
            **({"model_file": model.tflite_file} if model.tflite_file else {}),
            "chunks": n,
            "score_thresholds": used,
            "chunks_scored_now": scored_now,
            **{
                k: counts.get(k, 0)
                for k in (
                    "images_in",
                    "images_scored",
                    "images_failed",
                    "images_retryable",
                    "detections",
                    "files_skipped",
                )
            },
        }
        if cfg.select:
            manifest["labelling"] = selected
        storage.commit(tmp, cfg.out, names, manifest, OUTPUT_PATTERNS, remove)
    finally:
        storage.delete_tree(tmp)
    return manifest

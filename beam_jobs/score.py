"""The scoring job: image archives → detections in storage, with every image accounted for.

    plan chunks (driver) ─ ReadChunks ─ RunInference(SavedModelDetector) ─ ToRecords ─┐
                              │  manifest, errors ──────────────────── GroupByChunk ─┴ CommitChunks
    assemble (driver): committed chunks → detections-*.jsonl / *.parquet, errors.jsonl, summary.json, _SUCCESS

Resumable at archive scale: the input is cut into chunks (each tar archive; otherwise fixed
groups of ``--chunk-size`` files in sorted order). A chunk's id is a hash of the model's
fingerprint and the chunk's listing (paths, sizes, modification times), and its results are
committed atomically under ``OUT/chunks/<model version>/<chunk id>/`` (``_SUCCESS`` last). A rerun
scores only the chunks without a commit for that model; a different model never reuses them.

In a batch pipeline nothing after a GroupByKey happens before every input is read, so a job
killed at 99% would have committed nothing. The driver therefore runs the chunks in waves of
``--chunks-per-run``, one pipeline each: a crash costs at most the wave in flight.
The final outputs are assembled from the chunk commits in chunk order, so they equal those of an
uninterrupted run.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import tarfile
from collections import Counter, deque
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from beam_jobs.ingest import IMAGE_EXTENSIONS, image_pattern
from beam_jobs.model_handler import SavedModelDetector
from beam_jobs.records import UNDECODABLE_NAME, describe, is_text_name, printable_name
from ssdflow import storage
from ssdflow.beam_runner import make_pipeline, pipeline_options
from ssdflow.config import OutputFormat, ScoreConfig
from ssdflow.schema import LabelMap

log = logging.getLogger(__name__)

_NS = "ssdflow.score"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
OUTPUT_PATTERNS = ("detections-*.jsonl", "detections-*.parquet", "errors.jsonl", "coco_results.json", "summary.json",
                   "preview/*.jpg")
ROUND = 4  # decimals kept in outputs: batch composition must not change a single written byte


class ScoreError(RuntimeError):
    pass


@dataclass(frozen=True)
class ModelRef:
    model_dir: str
    version: str
    fingerprint: str  # of the SavedModel's graph and variables index: chunks are keyed on it
    label_names: dict  # id → name


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    index: int
    kind: str  # "files" or "tar"
    uris: tuple[str, ...]


def resolve_model(model: str) -> ModelRef:
    from model.registry import resolve_model_dir  # only the path rule; no TensorFlow import

    model_dir = str(resolve_model_dir(model))
    h = hashlib.sha256()
    for name in ("saved_model.pb", os.path.join("variables", "variables.index")):
        with open(os.path.join(model_dir, name), "rb") as f:
            h.update(f.read())
    with open(os.path.join(model_dir, "label_map.json")) as f:
        label_map = LabelMap.parse(f.read(), "label_map.json")
    return ModelRef(model_dir, os.path.basename(model_dir.rstrip("/")), h.hexdigest()[:16], dict(label_map.names_by_id()))


def _is_tar(path: str) -> bool:
    return path.lower().endswith(TAR_SUFFIXES)


def plan_chunks(inputs: list[str], chunk_size: int, model_fingerprint: str) -> list[Chunk]:
    """Lists the inputs (driver side) and cuts them into chunks in a stable order.

    ``model_fingerprint`` should cover everything that changes a chunk's results (the model and
    the filtering settings), so a chunk id names one exact result.
    """
    files: dict[str, tuple[int, float]] = {}
    for spec in inputs:
        pattern = spec if _is_tar(spec) else image_pattern(spec)  # a directory means its files, as in ingest
        result = FileSystems.match([pattern])[0]
        if not result.metadata_list:
            raise ScoreError(f"--images {spec}: no files found")
        for m in result.metadata_list:
            files[m.path] = (m.size_in_bytes, m.last_updated_in_seconds)
    tars = sorted(p for p in files if _is_tar(p))
    plain = sorted(p for p in files if not _is_tar(p))
    groups = [("tar", (t,)) for t in tars] + [("files", tuple(plain[i:i + chunk_size])) for i in range(0, len(plain), chunk_size)]

    def chunk_id(kind, uris):
        listing = json.dumps([model_fingerprint, kind, [(u, *files[u]) for u in uris]])
        return hashlib.sha256(listing.encode()).hexdigest()[:20]

    return [Chunk(chunk_id(kind, uris), i, kind, uris) for i, (kind, uris) in enumerate(groups)]


def chunk_dir(out: str, version: str, chunk_id: str) -> str:
    return storage.join(out, "chunks", version, chunk_id)


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


class _ReadChunk(beam.DoFn):
    """A chunk → ((chunk id, source, width, height), bytes) per image; counts and errors on tags.

    Files are read by a small thread pool, ``read_threads`` ahead of the consumer and yielded in
    listing order: on object storage each read is a round trip, and even locally reading the next
    batch overlaps the inference of this one (TensorFlow releases the GIL).
    """

    def __init__(self, read_threads: int = 8, max_pixels: int | None = None):
        self.read_threads, self.max_pixels = read_threads, max_pixels
        self._pool = None

    def setup(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(self.read_threads, thread_name_prefix="ssdflow-read")

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def process(self, chunk: Chunk):
        counts = Counter()
        for source, outcome in self._members(chunk):
            if outcome is None:
                counts["files_skipped"] += 1
                continue
            counts["images_in"] += 1
            if outcome[0] == "error":
                _, reason, detail = outcome
                yield beam.pvalue.TaggedOutput("errors", (chunk.chunk_id, {"source": printable_name(source), "reason": reason, "detail": detail}))
                continue
            _, data, (width, height) = outcome
            yield (chunk.chunk_id, source, width, height), data
        yield beam.pvalue.TaggedOutput("manifest", (chunk.chunk_id, dict(counts)))

    def _members(self, chunk: Chunk):
        """(source, outcome) for every file of the chunk, in order; tar members are streamed, never extracted."""
        if chunk.kind == "files":
            window = deque()
            for uri in chunk.uris:
                window.append((uri, self._pool.submit(_load, uri, self.max_pixels)))
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
                        yield source, ("error", "special_member", f"tar member of type {member.type!r} is not a regular file")
        except (tarfile.TarError, OSError, EOFError) as e:
            yield uri, ("error", "unreadable_archive", describe(e))


def _is_image_name(source: str) -> bool:
    return posixpath.splitext(source.split("#", 1)[-1])[1].lower() in IMAGE_EXTENSIONS


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


def _load(uri: str, max_pixels: int | None = None):
    """Reads and header-checks one file (runs on the reader pool)."""
    if not _is_image_name(uri):
        return None  # never read what is skipped
    if not is_text_name(uri):
        return _check(uri, b"", max_pixels)
    try:
        data = storage.read_bytes(uri)
    except Exception as e:
        return "error", "unreadable", describe(e)
    return _check(uri, data, max_pixels)


# --- results ------------------------------------------------------------------------------------
def to_record(key, inference: dict, model: ModelRef, score_threshold: float, max_detections: int):
    """One image's JSONL record (pixels and normalized boxes), or an error dict."""
    chunk_id, source, width, height = key
    if "error" in inference:
        return chunk_id, None, {"source": source, "reason": "decode_error", "detail": inference["error"]}
    n = int(inference["num_detections"])
    detections = []
    for box, score, cls in zip(inference["detection_boxes"][:n], inference["detection_scores"][:n], inference["detection_classes"][:n]):
        if score < score_threshold or len(detections) >= max_detections:
            continue
        ymin, xmin, ymax, xmax = (float(v) for v in box)
        label_id = int(round(float(cls)))
        detections.append({
            "label": model.label_names.get(label_id, str(label_id)),
            "label_id": label_id,
            "score": round(float(score), ROUND),
            "box": {"xmin": round(xmin * width, ROUND - 2), "ymin": round(ymin * height, ROUND - 2),
                    "xmax": round(xmax * width, ROUND - 2), "ymax": round(ymax * height, ROUND - 2)},
            "box_normalized": {"xmin": round(xmin, ROUND), "ymin": round(ymin, ROUND), "xmax": round(xmax, ROUND), "ymax": round(ymax, ROUND)},
        })
    record = {"source": source, "width": width, "height": height, "model_version": model.version, "detections": detections}
    return chunk_id, record, None


class _ToRecords(beam.DoFn):
    def __init__(self, model: ModelRef, score_threshold: float, max_detections: int):
        self.model, self.threshold, self.max_det = model, score_threshold, max_detections

    def process(self, element):
        key, prediction = element
        chunk_id, record, error = to_record(key, prediction.inference, self.model, self.threshold, self.max_det)
        if error is not None:
            yield beam.pvalue.TaggedOutput("errors", (chunk_id, error))
        else:
            yield chunk_id, record


PARQUET_FIELDS = (
    ("source", "string"), ("model_version", "string"), ("width", "int32"), ("height", "int32"),
    ("label", "string"), ("label_id", "int32"), ("score", "float32"),
    ("xmin", "float32"), ("ymin", "float32"), ("xmax", "float32"), ("ymax", "float32"),
    ("xmin_norm", "float32"), ("ymin_norm", "float32"), ("xmax_norm", "float32"), ("ymax_norm", "float32"),
)


def parquet_bytes(records: list[dict]) -> bytes:
    """One row per detection, with a typed schema (PARQUET_FIELDS)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, getattr(pa, t)()) for name, t in PARQUET_FIELDS])
    cols: dict[str, list] = {name: [] for name, _ in PARQUET_FIELDS}
    for r in records:
        for d in r["detections"]:
            for name, value in (("source", r["source"]), ("model_version", r["model_version"]), ("width", r["width"]),
                                ("height", r["height"]), ("label", d["label"]), ("label_id", d["label_id"]), ("score", d["score"])):
                cols[name].append(value)
            for k in ("xmin", "ymin", "xmax", "ymax"):
                cols[k].append(d["box"][k])
                cols[f"{k}_norm"].append(d["box_normalized"][k])
    buf = io.BytesIO()
    pq.write_table(pa.table(cols, schema=schema), buf)
    return buf.getvalue()


class _CommitChunk(beam.DoFn):
    """Writes one chunk's results under ``chunks/<version>/<id>/``, ``_SUCCESS`` last."""

    def __init__(self, out: str, version: str):
        self.out, self.version = out, version

    def process(self, element):
        chunk_id, grouped = element
        counts = Counter()
        for manifest in grouped["manifest"]:
            counts.update(manifest)
        records = sorted(grouped["records"], key=lambda r: r["source"])
        errors = sorted(grouped["errors"], key=lambda e: e["source"])
        counts["images_scored"], counts["images_failed"] = len(records), len(errors)
        counts["detections"] = sum(len(r["detections"]) for r in records)
        if counts["images_in"] != counts["images_scored"] + counts["images_failed"]:
            raise ScoreError(f"chunk {chunk_id}: images_in {counts['images_in']} != scored {counts['images_scored']} + failed {counts['images_failed']}")
        d = chunk_dir(self.out, self.version, chunk_id)
        storage.write_text(storage.join(d, "detections.jsonl"), "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        storage.write_text(storage.join(d, "errors.jsonl"), "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors))
        storage.write_bytes(storage.join(d, "detections.parquet"), parquet_bytes(records))  # always: formats may change on rerun
        storage.write_text(storage.join(d, storage.SUCCESS), json.dumps(dict(counts), sort_keys=True) + "\n")
        Metrics.counter(_NS, "chunks_committed").inc()
        Metrics.counter(_NS, "images_scored").inc(counts["images_scored"])
        Metrics.counter(_NS, "images_failed").inc(counts["images_failed"])
        yield chunk_id


def build_pipeline(p, cfg: ScoreConfig, model: ModelRef, chunks: list[Chunk]):
    """One run over ``chunks``: read → RunInference → records → grouped by chunk → committed."""
    read = (
        p
        | "Chunks" >> beam.Create(chunks)
        | "Spread" >> beam.Reshuffle()
        | "ReadChunks" >> beam.ParDo(_ReadChunk(cfg.read_threads, cfg.max_pixels)).with_outputs("manifest", "errors", main="images")
    )
    handler = KeyedModelHandler(SavedModelDetector(model.model_dir, cfg.min_batch_size, cfg.max_batch_size))
    results = (
        read.images
        | "RunInference" >> RunInference(handler)
        | "ToRecords" >> beam.ParDo(_ToRecords(model, cfg.score_threshold, cfg.max_detections)).with_outputs("errors", main="records")
    )
    errors = (read.errors, results.errors) | "AllErrors" >> beam.Flatten()
    return (
        {"manifest": read.manifest, "records": results.records, "errors": errors}
        | "GroupByChunk" >> beam.CoGroupByKey()
        | "CommitChunks" >> beam.ParDo(_CommitChunk(cfg.out, model.version))
    )


# --- driver ---------------------------------------------------------------------------------------
def run_score(cfg: ScoreConfig) -> dict:
    """Scores what is not yet committed, assembles the outputs, writes ``_SUCCESS``; returns its manifest."""
    from beam_jobs import score_outputs as so

    cfg = cfg.model_copy(update={"out": os.path.abspath(cfg.out) if storage.is_local(cfg.out) else cfg.out,
                                 "images": [os.path.abspath(i) if storage.is_local(i) else i for i in cfg.images]})
    options = pipeline_options(cfg.pipeline_flags())
    model = resolve_model(cfg.model)
    results_key = f"{model.fingerprint}:{cfg.score_threshold}:{cfg.max_detections}:{cfg.max_pixels}"
    chunks = plan_chunks(cfg.images, cfg.chunk_size, results_key)
    todo = [c for c in chunks if not storage.exists(storage.join(chunk_dir(cfg.out, model.version, c.chunk_id), storage.SUCCESS))]
    log.info("score: %d chunks, %d already committed for model %s", len(chunks), len(chunks) - len(todo), model.version)
    storage.invalidate(cfg.out)
    for start in range(0, len(todo), cfg.chunks_per_run):
        wave = todo[start:start + cfg.chunks_per_run]
        log.info("score: run %d: %d chunks", start // cfg.chunks_per_run + 1, len(wave))
        with make_pipeline(options) as p:
            build_pipeline(p, cfg, model, wave)

    # Assemble from the chunk commits, in chunk order, under a temp dir; commit with _SUCCESS last.
    previous = json.loads(storage.read_text(storage.join(cfg.out, "summary.json"))) if storage.exists(storage.join(cfg.out, "summary.json")) else None
    tmp = storage.new_tmp_dir(cfg.out)
    try:
        n = len(chunks)
        counts: Counter = Counter()
        records_all, errors_all, names = [], [], []
        for c in chunks:
            d = chunk_dir(cfg.out, model.version, c.chunk_id)
            manifest = json.loads(storage.read_text(storage.join(d, storage.SUCCESS)))
            counts.update(manifest)
            records_all.extend(so.read_jsonl(storage.join(d, "detections.jsonl")))
            errors_all.extend(so.read_jsonl(storage.join(d, "errors.jsonl")))
            shard = f"detections-{c.index:05d}-of-{n:05d}"
            if OutputFormat.jsonl in cfg.formats:
                FileSystems.copy([storage.join(d, "detections.jsonl")], [storage.join(tmp, f"{shard}.jsonl")])
                names.append(f"{shard}.jsonl")
            if OutputFormat.parquet in cfg.formats:
                FileSystems.copy([storage.join(d, "detections.parquet")], [storage.join(tmp, f"{shard}.parquet")])
                names.append(f"{shard}.parquet")
        if counts["images_in"] != counts["images_scored"] + counts["images_failed"]:
            raise ScoreError(f"counts do not reconcile: {dict(counts)}")
        storage.write_text(storage.join(tmp, "errors.jsonl"), "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors_all))
        names.append("errors.jsonl")
        if OutputFormat.coco in cfg.formats:
            storage.write_text(storage.join(tmp, "coco_results.json"), json.dumps(so.coco_results(records_all)))
            names.append("coco_results.json")
        summary = so.summarize(records_all, counts, model.version)
        inputs_key = hashlib.sha256(json.dumps([c.uris for c in chunks]).encode()).hexdigest()[:16]
        summary["inputs_fingerprint"] = inputs_key
        summary["change_since_previous"] = so.change_since(previous, summary, previous is not None and previous.get("inputs_fingerprint") == inputs_key)
        storage.write_text(storage.join(tmp, "summary.json"), json.dumps(summary, indent=2) + "\n")
        names.append("summary.json")
        for i, record in enumerate(records_all[: cfg.preview]):
            name = f"preview/{i:04d}.jpg"
            storage.write_bytes(storage.join(tmp, name), so.draw_preview(so.read_source(record["source"]), record))
            names.append(name)
        manifest = {"job": "score", "model_version": model.version, "model_dir": model.model_dir, "chunks": n,
                    "chunks_scored_now": len(todo), **{k: counts.get(k, 0) for k in ("images_in", "images_scored", "images_failed", "detections", "files_skipped")}}
        storage.commit(tmp, cfg.out, names, manifest, OUTPUT_PATTERNS)
    finally:
        storage.delete_tree(tmp)
    return manifest

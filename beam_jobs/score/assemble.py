"""The final outputs, assembled by the driver from the chunk commits one chunk at a time: detection
shards, errors, COCO results, summary.json, previews, the labelling batch; ``_SUCCESS`` last."""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import logging
from collections import Counter
from dataclasses import dataclass, field

from apache_beam.io.filesystems import FileSystems

from beam_jobs.score import labelling
from beam_jobs.score import outputs as so
from beam_jobs.score.chunks import Chunk, chunk_dir
from beam_jobs.score.errors import ScoreError
from beam_jobs.score.model_ref import ModelRef
from ssdflow import storage
from ssdflow.config import OutputFormat, ScoreConfig
from ssdflow.results import LabellingSelection, ScoreManifest, ScoreThresholds

log = logging.getLogger(__name__)


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


def used_thresholds(cfg: ScoreConfig, model: ModelRef) -> ScoreThresholds:
    """What the outputs were filtered with; with ``auto``, ``fallback`` names the classes that had no
    calibrated threshold (they got FALLBACK_SCORE_THRESHOLD)."""
    auto = cfg.score_threshold is None
    return ScoreThresholds(
        setting="auto" if auto else cfg.score_threshold,
        per_class={model.label_names[i]: t for i, t in model.score_thresholds(cfg.score_threshold).items()},
        fallback=[model.label_names[i] for i in sorted(model.label_names) if i not in model.class_thresholds]
        if auto
        else None,
    )


@dataclass
class Gathered:
    """What the chunk commits add up to, read one chunk at a time."""

    counts: Counter = field(default_factory=Counter)
    summary_parts: list[dict] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # output files written so far, relative to the output
    previews: list[dict] = field(default_factory=list)  # records of images with something to see
    candidates: list[dict] = field(default_factory=list)  # the best SCAN_FACTOR * --select so far


def assemble(
    cfg: ScoreConfig, model: ModelRef, chunks: list[Chunk], scored_now: int, remove: list[str] = ()
) -> ScoreManifest:
    """The final outputs from the chunk commits, in chunk order, under a temp dir, then committed
    with ``_SUCCESS`` last; returns the manifest. One chunk's records at a time are in memory (shards
    are copied, errors and COCO results concatenated, the summary merged from the chunks' parts)."""
    summary_path = storage.join(cfg.out, "summary.json")
    previous = json.loads(storage.read_text(summary_path)) if storage.exists(summary_path) else None
    tmp = storage.new_tmp_dir(cfg.out)
    try:
        got = gather_chunks(cfg, model, chunks, tmp)
        if got.counts["images_in"] != got.counts["images_scored"] + got.counts["images_failed"]:
            raise ScoreError(f"counts do not reconcile: {dict(got.counts)}")
        used = used_thresholds(cfg, model)
        summary = so.summarize(got.summary_parts, got.counts, model.version)
        summary["inputs_fingerprint"] = hashlib.sha256(json.dumps([c.uris for c in chunks]).encode()).hexdigest()[:16]
        summary["score_thresholds"] = used.to_json()
        same_inputs = previous is not None and previous.get("inputs_fingerprint") == summary["inputs_fingerprint"]
        summary["change_since_previous"] = so.change_since(previous, summary, same_inputs)
        storage.write_text(storage.join(tmp, "summary.json"), json.dumps(summary, indent=2) + "\n")
        names = [*got.names, "summary.json"]
        selected = write_labelling_batch(cfg, model, got.candidates, tmp, names) if cfg.select else None
        write_previews(got.previews, tmp, names)
        manifest = ScoreManifest(
            model_version=model.version,
            model_dir=model.model_dir,
            runtime=model.runtime,
            model_file=model.tflite_file,
            chunks=len(chunks),
            score_thresholds=used,
            chunks_scored_now=scored_now,
            labelling=selected,
            **{k: got.counts[k] for k in ScoreManifest.COUNTS},
        )
        storage.commit(tmp, cfg.out, names, manifest.to_json(), OUTPUT_PATTERNS, remove)
    finally:
        storage.delete_tree(tmp)
    return manifest


def gather_chunks(cfg: ScoreConfig, model: ModelRef, chunks: list[Chunk], tmp: str) -> Gathered:
    """Copies each chunk's detection shards into ``tmp`` and concatenates its errors (and COCO
    results), in chunk order; adds up its counts and summary part, keeps the previews and the
    labelling candidates so far."""
    got, n = Gathered(), len(chunks)
    errors_out = storage.StreamWriter(storage.join(tmp, "errors.jsonl"))
    coco_out = (
        so.CocoWriter(storage.join(tmp, "coco.json"), storage.join(tmp, "coco_results.json"), model.label_names)
        if OutputFormat.coco in cfg.formats
        else None
    )
    with errors_out, coco_out or contextlib.nullcontext():
        for c in chunks:
            d = chunk_dir(cfg.out, model.version, c.chunk_id)
            manifest = json.loads(storage.read_text(storage.join(d, storage.SUCCESS)))
            got.summary_parts.append(manifest.pop("summary"))
            d = storage.join(d, manifest.pop("attempt"))  # the attempt _SUCCESS names: complete by construction
            got.counts.update(manifest)
            errors_out.write(storage.read_bytes(storage.join(d, "errors.jsonl")))
            wanted = cfg.preview - len(got.previews) if manifest["images_scored"] else 0
            if coco_out is not None or wanted > 0:  # one chunk's records in memory at a time
                records = so.read_jsonl(storage.join(d, "detections.jsonl"))
                if coco_out is not None:
                    coco_out.add(records)
                got.previews.extend([r for r in records if r["detections"]][: max(wanted, 0)])
            if cfg.select:
                got.candidates = heapq.nsmallest(
                    labelling.SCAN_FACTOR * cfg.select,
                    got.candidates + so.read_jsonl(storage.join(d, "candidates.jsonl")),
                    key=labelling.rank_key,
                )
            shard = f"detections-{c.index:05d}-of-{n:05d}"
            for fmt, suffix in ((OutputFormat.jsonl, "jsonl"), (OutputFormat.parquet, "parquet")):
                if fmt in cfg.formats:
                    FileSystems.copy(
                        [storage.join(d, f"detections.{suffix}")], [storage.join(tmp, f"{shard}.{suffix}")]
                    )
                    got.names.append(f"{shard}.{suffix}")
    got.names.append("errors.jsonl")
    if coco_out is not None:
        got.names += ["coco.json", "coco_results.json"]
    return got


def write_labelling_batch(
    cfg: ScoreConfig, model: ModelRef, candidates: list[dict], tmp: str, names: list
) -> LabellingSelection:
    """The ``--select`` most uncertain images as a labelling batch (:mod:`beam_jobs.score.labelling`)
    under ``tmp``, their names added to ``names``; returns the selection's counts."""
    picked, selected = labelling.select(candidates, cfg.select, so.read_source, threads=cfg.read_threads)
    root = storage.join(cfg.out, labelling.LABELLING_DIR)
    image_root = labelling.task_image_root(root, cfg.label_studio_root)
    label_names = [model.label_names[i] for i in sorted(model.label_names)]
    for name, data in labelling.batch_files(picked, model.version, label_names, image_root).items():
        storage.write_bytes(storage.join(tmp, name), data)
        names.append(name)
    log.info(
        "score: %d images selected for labelling under %s (%d candidates, %d near-duplicates skipped)",
        len(picked),
        root,
        selected["candidates"],
        selected["near_duplicates_skipped"],
    )
    return LabellingSelection(selected=len(picked), **selected)


def write_previews(records: list[dict], tmp: str, names: list) -> None:
    """Each record's image with its boxes drawn, as ``preview/<source's name>.jpg``."""
    taken: set = set()
    for record in records:
        name = f"preview/{so.preview_name(record['source'], taken)}"  # named after its source
        storage.write_bytes(storage.join(tmp, name), so.draw_preview(so.read_source(record["source"]), record))
        names.append(name)

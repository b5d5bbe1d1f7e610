"""One chunk's results: the model's outputs as JSONL records, a Parquet table, and the chunk's commit."""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter
from typing import NamedTuple

from beam_jobs.records import DECODE_ERROR, READ_RETRYABLE
from beam_jobs.score import outputs as so
from beam_jobs.score.chunks import chunk_dir
from beam_jobs.score.errors import ScoreError
from beam_jobs.score.model_ref import ModelRef
from ssdflow import storage


ROUND = 4  # decimals kept in outputs: batch composition must not change a single written byte


class ImageKey(NamedTuple):
    """What the results need of an image besides the model's outputs."""

    source: str
    width: int  # as displayed (EXIF orientation applied)
    height: int


def to_record(
    key: ImageKey, inference: dict, model: ModelRef, thresholds: dict[int, float], max_detections: int
) -> tuple[dict | None, dict | None]:
    """(one image's JSONL record (pixels and normalized boxes), None), or (None, its errors.jsonl line).
    ``thresholds``: each class id's minimum score (:meth:`ModelRef.score_thresholds`)."""
    source, width, height = key
    if "error" in inference:
        return None, {"source": source, "reason": DECODE_ERROR, "detail": inference["error"]}
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
    return record, None


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

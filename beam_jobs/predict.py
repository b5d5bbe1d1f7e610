"""``ssdflow predict``: a handful of images through a model on this machine, drawn and printed.

For looking at what a model sees, as ``yolo predict source=… save=True`` does: no pipeline, no
chunks, no ``_SUCCESS``; the score job's own parts (model resolution, image checks, per-class
thresholds, records, drawing), so predict and score agree on every detection.
"""

from __future__ import annotations

import os
import posixpath

from beam_jobs.patterns import file_pattern, has_glob, is_image_name
from beam_jobs.score.model_ref import resolve_model
from beam_jobs.score.outputs import draw_preview, preview_name
from beam_jobs.score.reading import Unscorable, read_image
from beam_jobs.score.results import ImageKey, to_record
from ssdflow import storage

BATCH = 16


class PredictError(ValueError):
    """A source or model the user named cannot be used; the message says which."""


def expand_sources(sources: list[str]) -> list[str]:
    """Image files named by files, directories (every image below, at any depth) or globs, in the
    order given (each directory's and glob's files sorted); the same file once."""
    found: list[str] = []
    for source in sources:
        uri = storage.absolute(source)
        if is_image_name(uri) and not has_glob(uri):
            if not storage.exists(uri):
                raise PredictError(f"{source}: no such file")
            found.append(uri)
            continue
        matched = [p for p in storage.list_files(file_pattern(uri)) if is_image_name(p)]
        if not matched:
            raise PredictError(f"{source}: no images found (a file, a directory or a quoted glob: 'photos/*.jpg')")
        found += matched
    return list(dict.fromkeys(found))


def predict(
    sources: list[str],
    model: str,
    save: str | None = None,
    score_threshold: float | None = None,
    max_detections: int = 100,
) -> list[dict]:
    """Each image's record (as score writes it: source, width, height, detections in pixels) or
    error (``{"source", "reason", "detail"}``); with ``save``, the image with its boxes drawn is
    written there under its source's name (``"saved"`` in the record)."""
    paths = expand_sources(sources)
    try:
        ref = resolve_model(storage.absolute(model))
    except (FileNotFoundError, ValueError) as e:
        raise PredictError(f"--model {model}: {e}") from None
    handler = ref.handler(BATCH)
    loaded = handler.load_model()
    thresholds = ref.score_thresholds(score_threshold)
    if save:
        save = storage.absolute(save)
        if storage.is_local(save):
            os.makedirs(save, exist_ok=True)
    results, taken = [], set()
    for start in range(0, len(paths), BATCH):
        keys, batch = [], []
        for path in paths[start : start + BATCH]:
            outcome = read_image(path)
            if outcome is None:  # not an image after all
                continue
            if isinstance(outcome, Unscorable):
                results.append({"source": path, "reason": outcome.reason, "detail": outcome.detail})
                continue
            keys.append(ImageKey(path, outcome.width, outcome.height))
            batch.append(outcome.data)
        if not batch:
            continue
        for key, data, prediction in zip(keys, batch, handler.run_inference(batch, loaded)):
            record, error = to_record(key, prediction.inference, ref, thresholds, max_detections)
            if record is None:
                results.append(error)
                continue
            if save:
                name = preview_name(record["source"], taken)
                storage.write_bytes(storage.join(save, name), draw_preview(data, record))
                record["saved"] = storage.join(save, name)
            results.append(record)
    return results


def table(results: list[dict], per_image: int = 3) -> list[str]:
    """Lines of a short table: each image, its number of detections and the best few."""
    width = min(48, max([len(posixpath.basename(r["source"])) for r in results] + [5]))
    lines = [f"{'image':{width}}  {'found':>5}  best"]
    for r in results:
        name = posixpath.basename(r["source"])[:width]
        if "detections" not in r:
            lines.append(f"{name:{width}}  {'-':>5}  error {r['reason']}: {r['detail'][:80]}")
            continue
        best = ", ".join(f"{d['label']} {d['score']:.2f}" for d in r["detections"][:per_image])
        lines.append(f"{name:{width}}  {len(r['detections']):>5}  {best}")
    return lines

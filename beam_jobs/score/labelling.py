"""Images worth labelling next: uncertainty per image, candidates per chunk, a diverse batch, and
pre-annotations that labelling tools import (Pascal VOC XML, Label Studio tasks) with the reason
each image was chosen.

How an image is ranked (uncertainty sampling against the model's calibrated class thresholds, its
decision boundary, whatever threshold filters the outputs): every raw detection of the model
(score ≥ the export floor, before any threshold) gets a *closeness* to its class threshold t, 1.0 at t and falling linearly to 0.0 at score 0 and at
score 1. An image's uncertainty is its most uncertain decision (the highest closeness), ties
broken by how many of its boxes are ambiguous (closeness ≥ 0.5). A box scored 0.44 against a
threshold of 0.45 is a coin toss that a label settles; a box at 0.98 or 0.02 is not.

Where it runs, so that it scales with scoring: each scored chunk keeps its ``POOL_PER_CHUNK`` most
uncertain images (``candidates.jsonl`` beside its detections); the final assembly merges those
pools, re-reads only the best few times N images, and picks N greedily, skipping an image whose
difference hash is within ``NEAR_DUPLICATE_BITS`` of one already picked (50 frames of one scene
are one label's worth). Exact when N ≤ ``POOL_PER_CHUNK``; beyond that, each chunk contributes at
most its pool.
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import os
import posixpath
import re
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from xml.sax.saxutils import escape

from ssdflow import storage

POOL_PER_CHUNK = 100  # candidates each chunk keeps (chunks hold 1,000 images by default)
SCAN_FACTOR = 4  # candidates read and hashed per image selected (near-duplicates are skipped)
NEAR_DUPLICATE_BITS = 10  # dHash Hamming distance (of 64) at or under which two images count as one scene
AMBIGUOUS = 0.5  # closeness at or above which a box counts as ambiguous
LABELLING_DIR = "labelling"
OUTPUT_PATTERNS = (f"{LABELLING_DIR}/*", f"{LABELLING_DIR}/images/*", f"{LABELLING_DIR}/annotations/*")


def closeness(score: float, threshold: float) -> float:
    """1.0 at the class threshold, falling linearly to 0.0 at score 0 and at score 1."""
    if score < threshold:
        return score / threshold
    return 1.0 if threshold >= 1.0 else max(0.0, (1.0 - score) / (1.0 - threshold))


def image_uncertainty(inference: dict, thresholds: dict[int, float], label_names: dict[int, str]) -> dict:
    """One image's raw model outputs (``num_detections``, ``detection_scores`` [N], ``detection_classes``
    [N] float ids from 1) → ``{"uncertainty", "ambiguous", "reason"}`` against each class's threshold."""
    n = int(inference["num_detections"])
    best, ambiguous = (0.0, None), 0
    for score, cls in zip(inference["detection_scores"][:n], inference["detection_classes"][:n]):
        label_id, score = int(round(float(cls))), float(score)
        t = thresholds.get(label_id, 1.0)
        c = closeness(score, t)
        ambiguous += c >= AMBIGUOUS
        if c > best[0]:
            best = (c, (label_names.get(label_id, str(label_id)), score, t))
    if best[1] is None:
        return {"uncertainty": 0.0, "ambiguous": 0, "reason": "no detection at all"}
    name, score, t = best[1]
    return {
        "uncertainty": round(best[0], 4),
        "ambiguous": ambiguous,
        "reason": f"{ambiguous} ambiguous box(es); most uncertain: {name} scored {score:.3f} against its threshold {t:.3f}",
    }


def rank_key(candidate: dict) -> tuple:
    """Most uncertain first; then more ambiguous boxes; then by source (deterministic)."""
    return (-candidate["uncertainty"], -candidate["ambiguous"], candidate["source"])


class ChunkPool:
    """The ``size`` most uncertain images of one chunk: ``add`` per scored image, ``candidates()``
    in rank order, as written to the chunk's ``candidates.jsonl`` (the chunk's records are in
    memory anyway until it is committed, so its candidates are kept whole and cut at the end)."""

    def __init__(self, size: int = POOL_PER_CHUNK):
        self.size, self._all = size, []

    def add(self, record: dict, uncertainty: dict) -> None:
        self._all.append(
            {
                **uncertainty,
                "source": record["source"],
                "width": record["width"],
                "height": record["height"],
                "detections": record["detections"],
            }
        )

    def candidates(self) -> list[dict]:
        return heapq.nsmallest(self.size, self._all, key=rank_key)


def dhash(data: bytes, size: int = 8) -> int:
    """64-bit difference hash of an image (grayscale, (size+1)×size, left/right gradient signs):
    near-identical frames differ in a few bits; JPEGs decode at a reduced scale (``draft``)."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.draft("L", (size * 4, size * 4))
    px = list(img.convert("L").resize((size + 1, size), Image.Resampling.BILINEAR).getdata())
    bits = 0
    for row in range(size):
        for col in range(size):
            bits = (bits << 1) | (px[row * (size + 1) + col] > px[row * (size + 1) + col + 1])
    return bits


def select(
    candidates: Iterable[dict], n: int, read: Callable[[str], bytes], threads: int = 8
) -> tuple[list[dict], dict]:
    """The ``n`` most uncertain candidates that are not near-duplicates of a better one.

    Reads (``read(source)``) and hashes the best ``SCAN_FACTOR * n`` candidates; returns the picked
    ones (each with ``rank``, ``dhash`` and the image ``data``) and counts: ``candidates``,
    ``considered``, ``near_duplicates_skipped``, ``unreadable``.
    """
    ranked = sorted(candidates, key=rank_key)
    scan = ranked[: SCAN_FACTOR * n]
    counts = {"candidates": len(ranked), "considered": len(scan), "near_duplicates_skipped": 0, "unreadable": 0}

    def load(c: dict):
        try:
            data = read(c["source"])
            return data, dhash(data)
        except Exception:  # gone since scoring, or unreadable now: counted, never fatal for the batch
            return None, None

    picked: list[dict] = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for c, (data, h) in zip(scan, pool.map(load, scan)):
            if len(picked) == n:
                break
            if data is None:
                counts["unreadable"] += 1
                continue
            if any(bin(p["dhash"] ^ h).count("1") <= NEAR_DUPLICATE_BITS for p in picked):
                counts["near_duplicates_skipped"] += 1
                continue
            picked.append({**c, "rank": len(picked) + 1, "dhash": h, "data": data})
    return picked, counts


def file_stem(candidate: dict) -> str:
    """``0001-raccoon-12``: the rank, then the source's base name made safe for every file system
    (a tar member's name after ``#``); unique because of the rank."""
    base = posixpath.basename(candidate["source"].split("#", 1)[-1].rstrip("/")) or "image"
    stem, _ = posixpath.splitext(base)
    return f"{candidate['rank']:04d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', stem)[:80]}"


def image_extension(data: bytes) -> str:
    """The file extension the image's bytes call for (the batch keeps the original bytes)."""
    from PIL import Image

    fmt = (Image.open(io.BytesIO(data)).format or "JPEG").lower()
    return {"jpeg": ".jpg", "mpo": ".jpg"}.get(fmt, f".{fmt}")


def voc_xml(filename: str, candidate: dict) -> str:
    """The model's boxes at or above their class thresholds as a Pascal VOC annotation to correct
    (integer pixel corners inside the image, as ``beam_jobs/parsers/voc.py`` reads them back; a box
    that rounds to no area is left out, since ingest would reject it)."""
    objects = ""
    for d in candidate["detections"]:
        corners = {
            k: _pixel(d["box"][k], candidate["width" if k[0] == "x" else "height"])
            for k in ("xmin", "ymin", "xmax", "ymax")
        }
        if corners["xmax"] <= corners["xmin"] or corners["ymax"] <= corners["ymin"]:
            continue
        objects += (
            f"  <object>\n    <name>{escape(d['label'])}</name>\n    <pose>Unspecified</pose>\n    <truncated>0</truncated>\n"
            f"    <difficult>0</difficult>\n    <bndbox>\n"
            + "".join(f"      <{k}>{v}</{k}>\n" for k, v in corners.items())
            + "    </bndbox>\n  </object>\n"
        )
    return (
        f"<annotation>\n  <folder>images</folder>\n  <filename>{escape(filename)}</filename>\n"
        f"  <source><database>ssdflow pre-annotation</database></source>\n"
        f"  <size>\n    <width>{candidate['width']}</width>\n    <height>{candidate['height']}</height>\n    <depth>3</depth>\n  </size>\n"
        f"  <segmented>0</segmented>\n{objects}</annotation>\n"
    )


def _pixel(v: float, limit: int) -> int:
    return int(min(max(round(v), 0), limit))


def label_studio_task(image_ref: str, candidate: dict, model_version: str) -> dict:
    """One Label Studio import task: ``data.image`` and the model's boxes as ``predictions`` of
    ``rectanglelabels`` in percent of the image (Label Studio's import format)."""
    w, h = candidate["width"], candidate["height"]
    result = []
    for i, d in enumerate(candidate["detections"]):
        b = d["box"]
        result.append(
            {
                "id": f"r{i}",
                "from_name": "label",
                "to_name": "image",
                "type": "rectanglelabels",
                "original_width": w,
                "original_height": h,
                "image_rotation": 0,
                "score": d["score"],
                "value": {
                    "x": round(100.0 * b["xmin"] / w, 4),
                    "y": round(100.0 * b["ymin"] / h, 4),
                    "width": round(100.0 * (b["xmax"] - b["xmin"]) / w, 4),
                    "height": round(100.0 * (b["ymax"] - b["ymin"]) / h, 4),
                    "rotation": 0,
                    "rectanglelabels": [d["label"]],
                },
            }
        )
    return {
        "data": {"image": image_ref, "source": candidate["source"], "reason": candidate["reason"]},
        "predictions": [{"model_version": model_version, "score": candidate["uncertainty"], "result": result}],
    }


def label_studio_config(label_names: Iterable[str]) -> str:
    """A labelling interface for the tasks: one image, a rectangle per object, the model's classes."""
    labels = "".join(f'    <Label value="{escape(n, {chr(34): "&quot;"})}"/>\n' for n in label_names)
    return f'<View>\n  <Image name="image" value="$image"/>\n  <RectangleLabels name="label" toName="image">\n{labels}  </RectangleLabels>\n</View>\n'


LOCAL_FILES_URL = "/data/local-files/?d="  # Label Studio's route for files below LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT


def task_image_root(batch_dir: str, document_root: str | None) -> str:
    """Where ``label_studio.json`` says the batch's images are, so that Label Studio can show them.

    Without a document root, the batch's own URI: an ``s3://``/``gs://`` URI, which Label Studio
    resolves through a cloud storage connection of the project (pre-signed URLs). With
    ``document_root`` (Label Studio's ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``, a local directory
    above ``batch_dir``): Label Studio's local-files URL, ``/data/local-files/?d=`` and the path below
    the root, percent-encoded, which it serves once the project has a Local Files storage there.
    """
    if document_root is None:
        return batch_dir
    relative = os.path.relpath(os.path.realpath(storage.local_path(batch_dir)), os.path.realpath(document_root))
    if relative == ".." or relative.startswith("../"):
        raise ValueError(f"the labelling batch {batch_dir} is not below the Label Studio document root {document_root}")
    return LOCAL_FILES_URL + urllib.parse.quote(relative, safe="/")


REASON_FIELDS = ("rank", "image", "annotation", "source", "uncertainty", "ambiguous_boxes", "detections", "reason")


def batch_files(
    picked: list[dict], model_version: str, label_names: Iterable[str], image_root: str
) -> dict[str, bytes]:
    """The labelling batch as ``{relative path: bytes}`` under ``labelling/``: ``images/`` (the
    original bytes), ``annotations/`` (VOC XML), ``label_studio.json`` (tasks whose ``data.image``
    is ``image_root``/images/NAME), ``label_studio_config.xml`` and ``reasons.csv``."""
    files: dict[str, bytes] = {}
    tasks, rows = [], []
    for c in picked:
        stem = file_stem(c)
        image = f"{stem}{image_extension(c['data'])}"
        files[f"images/{image}"] = c["data"]
        files[f"annotations/{stem}.xml"] = voc_xml(image, c).encode()
        tasks.append(label_studio_task(f"{image_root.rstrip('/')}/images/{image}", c, model_version))
        rows.append(
            {
                "rank": c["rank"],
                "image": f"images/{image}",
                "annotation": f"annotations/{stem}.xml",
                "source": c["source"],
                "uncertainty": c["uncertainty"],
                "ambiguous_boxes": c["ambiguous"],
                "detections": len(c["detections"]),
                "reason": c["reason"],
            }
        )
    files["label_studio.json"] = (json.dumps(tasks, indent=1) + "\n").encode()
    files["label_studio_config.xml"] = label_studio_config(label_names).encode()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=REASON_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files["reasons.csv"] = buf.getvalue().encode()
    return {f"{LABELLING_DIR}/{k}": v for k, v in files.items()}

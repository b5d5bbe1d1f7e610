"""The scoring job's final outputs, assembled from committed chunks: shards, errors, COCO results,
summary (with the change since the previous run), previews."""

from __future__ import annotations

import io
import json
from collections import Counter

from apache_beam.io.filesystems import FileSystems

from ssdflow import storage

HIST_BINS = 10


def summary_part(records: list[dict]) -> dict:
    """One chunk's share of the summary (merged by :func:`summarize`): small whatever the chunk size."""
    per_class: Counter = Counter()
    hist = [0] * HIST_BINS
    for r in records:
        for d in r["detections"]:
            per_class[d["label"]] += 1
            hist[min(int(d["score"] * HIST_BINS), HIST_BINS - 1)] += 1
    return {"detections_per_class": dict(sorted(per_class.items())), "score_histogram": hist,
            "images_without_detections": sum(1 for r in records if not r["detections"])}


def summarize(parts: list[dict], counts: dict, model_version: str) -> dict:
    """Detections per class, a score histogram, images with no detection, mean boxes per image,
    from the chunks' :func:`summary_part` and the overall counts."""
    per_class: Counter = Counter()
    hist = [0] * HIST_BINS
    empty = 0
    for part in parts:
        per_class.update(part["detections_per_class"])
        hist = [a + b for a, b in zip(hist, part["score_histogram"])]
        empty += part["images_without_detections"]
    scored = counts["images_scored"]
    return {
        "model_version": model_version,
        "images_in": counts["images_in"],
        "images_scored": counts["images_scored"],
        "images_failed": counts["images_failed"],
        "detections": counts["detections"],
        "detections_per_class": dict(sorted(per_class.items())),
        "score_histogram": {f"{i / HIST_BINS:.1f}-{(i + 1) / HIST_BINS:.1f}": n for i, n in enumerate(hist)},
        "images_without_detections": empty,
        "mean_boxes_per_image": round(counts["detections"] / scored, 4) if scored else 0.0,
    }


def change_since(previous: dict | None, current: dict, same_inputs: bool) -> dict | None:
    """What moved since the last run into this --out over the same inputs: a first look at drift."""
    if not previous or not same_inputs:
        return None
    classes = sorted(set(previous.get("detections_per_class", {})) | set(current["detections_per_class"]))
    return {
        "previous_model_version": previous.get("model_version"),
        "detections": current["detections"] - previous.get("detections", 0),
        "detections_per_class": {c: current["detections_per_class"].get(c, 0) - previous.get("detections_per_class", {}).get(c, 0) for c in classes},
        "images_without_detections": current["images_without_detections"] - previous.get("images_without_detections", 0),
        "mean_boxes_per_image": round(current["mean_boxes_per_image"] - previous.get("mean_boxes_per_image", 0.0), 4),
        "images_failed": current["images_failed"] - previous.get("images_failed", 0),
    }


def coco_results(records: list[dict]) -> list[dict]:
    """COCO detection results: image_id is the source URI, bbox [x, y, w, h] in pixels."""
    return [
        {"image_id": r["source"], "category_id": d["label_id"], "score": d["score"],
         "bbox": [d["box"]["xmin"], d["box"]["ymin"], round(d["box"]["xmax"] - d["box"]["xmin"], 2),
                  round(d["box"]["ymax"] - d["box"]["ymin"], 2)]}
        for r in records for d in r["detections"]
    ]


def coco_fragment(records: list[dict]) -> str:
    """One chunk's COCO results as the inside of a JSON array (``json.dumps``'s own separators), so
    that chunks' fragments joined by ``", "`` inside ``[ ]`` are the JSON of the whole list."""
    return ", ".join(json.dumps(r) for r in coco_results(records))


class CocoWriter:
    """coco_results.json streamed from the chunks' fragments: one JSON array, never whole in memory."""

    def __init__(self, uri: str):
        self._out = storage.StreamWriter(uri)
        self._first = True

    def __enter__(self):
        self._out.__enter__()
        self._out.write(b"[")
        return self

    def add(self, fragment: str) -> None:
        if fragment:
            self._out.write((fragment if self._first else ", " + fragment).encode())
            self._first = False

    def __exit__(self, *exc):
        if exc[0] is None:
            self._out.write(b"]")
        return self._out.__exit__(*exc)


def draw_preview(data: bytes, record: dict) -> bytes:
    """The image with its boxes and labels drawn, as JPEG."""
    from PIL import Image, ImageDraw

    img = Image.open(io.BytesIO(data)).convert("RGB")
    draw = ImageDraw.Draw(img)
    for d in record["detections"]:
        b = d["box"]
        draw.rectangle([b["xmin"], b["ymin"], b["xmax"], b["ymax"]], outline=(255, 40, 40), width=max(2, img.width // 200))
        draw.text((b["xmin"] + 3, b["ymin"] + 2), f"{d['label']} {d['score']:.2f}", fill=(255, 255, 0))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def read_source(source: str) -> bytes:
    """Bytes of a scored image: a file URI, or ``archive.tar#member`` (streamed to the member)."""
    if "#" not in source:
        return storage.read_bytes(source)
    import tarfile

    uri, member = source.split("#", 1)
    with FileSystems.open(uri) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for m in tar:
            if m.name == member and m.isfile():
                return tar.extractfile(m).read()
    raise FileNotFoundError(source)


def read_jsonl(uri: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]

"""The scoring job's final outputs, assembled from committed chunks: shards, errors, COCO results,
summary (with the change since the previous run), previews."""

from __future__ import annotations

import io
import json
import posixpath
import re
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
    return {
        "detections_per_class": dict(sorted(per_class.items())),
        "score_histogram": hist,
        "images_without_detections": sum(1 for r in records if not r["detections"]),
    }


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
        "detections_per_class": {
            c: current["detections_per_class"].get(c, 0) - previous.get("detections_per_class", {}).get(c, 0)
            for c in classes
        },
        "images_without_detections": current["images_without_detections"]
        - previous.get("images_without_detections", 0),
        "mean_boxes_per_image": round(current["mean_boxes_per_image"] - previous.get("mean_boxes_per_image", 0.0), 4),
        "images_failed": current["images_failed"] - previous.get("images_failed", 0),
    }


def _coco_bbox(box: dict) -> list[float]:
    """COCO's [x, y, width, height] in pixels from our pixel box."""
    return [box["xmin"], box["ymin"], round(box["xmax"] - box["xmin"], 2), round(box["ymax"] - box["ymin"], 2)]


class CocoWriter:
    """``coco.json``, a whole COCO dataset (``images`` with integer ids, file_name, width, height;
    ``categories``; ``annotations`` with a ``score``), which labelling and dataset tools import
    (CVAT, FiftyOne, Label Studio's COCO import), and ``coco_results.json``, COCO's detection-results
    list keyed by the same image ids (what pycocotools' ``loadRes`` takes). Both are streamed chunk
    by chunk, never whole in memory; the annotations wait in a local temp file until the images
    array is closed. Ids count from 1 in output order (chunks in order, sources sorted within a
    chunk), so a rerun gives the same ids."""

    def __init__(self, dataset_uri: str, results_uri: str, label_names: dict[int, str]):
        self._dataset, self._results = storage.StreamWriter(dataset_uri), storage.StreamWriter(results_uri)
        self._categories = [{"id": int(i), "name": n, "supercategory": ""} for i, n in sorted(label_names.items())]
        self._images = self._annotations = 0
        self._spool = None

    def __enter__(self):
        import tempfile

        self._dataset.__enter__()
        self._results.__enter__()
        self._spool = tempfile.TemporaryFile()
        self._dataset.write(b'{"categories": ' + json.dumps(self._categories).encode() + b', "images": [')
        self._results.write(b"[")
        return self

    def add(self, records: list[dict]) -> None:
        """One chunk's records (as in its detections.jsonl, in order)."""
        for r in records:
            self._images += 1
            image = {"id": self._images, "file_name": r["source"], "width": r["width"], "height": r["height"]}
            self._dataset.write(((", " if self._images > 1 else "") + json.dumps(image)).encode())
            for d in r["detections"]:
                self._annotations += 1
                bbox = _coco_bbox(d["box"])
                result = {"image_id": self._images, "category_id": d["label_id"], "bbox": bbox, "score": d["score"]}
                annotation = {"id": self._annotations, **result, "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0}
                sep = ", " if self._annotations > 1 else ""
                self._spool.write((sep + json.dumps(annotation)).encode())
                self._results.write((sep + json.dumps(result)).encode())

    def __exit__(self, *exc):
        try:
            if exc[0] is None:
                self._dataset.write(b'], "annotations": [')
                self._spool.seek(0)
                while block := self._spool.read(1 << 20):
                    self._dataset.write(block)
                self._dataset.write(b"]}")
                self._results.write(b"]")
        finally:
            self._spool.close()
            self._results.__exit__(*exc)
            self._dataset.__exit__(*exc)
        return False


def draw_preview(data: bytes, record: dict) -> bytes:
    """The image with its boxes and labels drawn, as JPEG."""
    from PIL import Image, ImageDraw

    img = Image.open(io.BytesIO(data)).convert("RGB")
    draw = ImageDraw.Draw(img)
    for d in record["detections"]:
        b = d["box"]
        draw.rectangle(
            [b["xmin"], b["ymin"], b["xmax"], b["ymax"]], outline=(255, 40, 40), width=max(2, img.width // 200)
        )
        draw.text((b["xmin"] + 3, b["ymin"] + 2), f"{d['label']} {d['score']:.2f}", fill=(255, 255, 0))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def preview_name(source: str, taken: set) -> str:
    """A drawn image's file name after its source (``archive.tar#a/b.png`` → ``b.jpg``), made unique
    among ``taken`` (which it joins) by a counter: a name that leads back to the source."""
    # The base name only (an archive member's name may hold ../ or an absolute path), no leading dot,
    # and nothing but letters, digits, - and _ : the file lands in preview/ (or --save) and nowhere else.
    stem = (
        re.sub(r"[^\w-]", "_", posixpath.splitext(posixpath.basename(source.split("#", 1)[-1]))[0]).lstrip("_.")
        or "image"
    )
    name, n = f"{stem}.jpg", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.jpg"
    taken.add(name)
    return name


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

"""The books: stats.json from the merged counters (checked to reconcile), the label maps,
rejected.jsonl from its fragments, and why an output must not be committed."""

from __future__ import annotations

import json
from collections import Counter

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_jobs.ingest.errors import IngestError
from beam_jobs.ingest.shards import Layout
from beam_jobs.patterns import extension
from beam_jobs.records import INGEST_METRICS as METRICS
from beam_jobs.splits import SPLITS
from beam_jobs.storage_dofn import StorageDoFn
from ssdflow import storage
from ssdflow.schema import LabelMap


def build_stats(
    books: Counter, label_map: LabelMap, shards: list[str], skipped: tuple, ignored: tuple = (0, {}, []), fmt: str = ""
) -> dict:
    """stats.json from the merged books; raises IngestError if the counts do not reconcile."""

    def group(prefix: str) -> dict[str, int]:
        return {k[len(prefix) :]: v for k, v in sorted(books.items()) if k.startswith(prefix) and v}

    written, images_rejected, boxes_rejected, per_class = (
        group("written/"),
        group("images_rejected/"),
        group("boxes_rejected/"),
        group("class/"),
    )
    images_in, images_written, n_rejected = books["images_in"], sum(written.values()), sum(images_rejected.values())
    boxes_written = sum(per_class.values())
    stats = {
        "images_in": images_in,
        "images_written": {"total": images_written, **{s: written.get(s, 0) for s in SPLITS}},
        "images_rejected": {"total": n_rejected, **images_rejected},
        "images_converted": books["stats/images_converted"],
        "images_exif_rotated": books["stats/images_exif_rotated"],
        "label_size_corrected": books["stats/label_size_corrected"],
        "boxes_written": boxes_written,
        "boxes_clipped": books["stats/boxes_clipped"],
        "boxes_rejected": {"total": sum(boxes_rejected.values()), **boxes_rejected},
        "boxes_in_rejected_images": books["boxes_in_rejected_images"],
        "boxes_per_class": {name: per_class.get(name, 0) for name in sorted(label_map, key=label_map.get)},
        "boxes_per_split": {s: books[f"boxes_split/{s}"] for s in SPLITS},
        "label_files_rejected": books["label_files_rejected"],
        # Files under --labels that are not label files of --format (nor images, nor YOLO's class files).
        "label_files_ignored": _file_sample(ignored),
        "format": fmt,
        "shards": sorted(shards),
        "files_skipped": _file_sample(skipped),  # SkippedFiles sorts and cuts
    }
    hint = format_hint(fmt, stats["label_files_ignored"])
    if hint:
        stats["format_hint"] = hint
    # The job checks its own books: every image and every box of a written image is accounted for.
    if images_in != images_written + n_rejected:
        raise IngestError(
            f"counts do not reconcile: images_in {images_in} != written {images_written} + rejected {n_rejected}"
        )
    if books["boxes_in_written"] != boxes_written + books["boxes_rejected_written"]:
        raise IngestError(
            f"box counts do not reconcile: {books['boxes_in_written']} in written images != "
            f"{boxes_written} written + {books['boxes_rejected_written']} rejected"
        )
    return stats


SKIPPED_EXAMPLES = 10  # skipped files named in stats.json (all are counted)


class SkippedFiles(beam.CombineFn):
    """Paths → (count, count per extension, the alphabetically first few): all of them counted, a few named."""

    def create_accumulator(self):
        return 0, {}, []

    def add_input(self, acc, path):
        ext = extension(path)
        return acc[0] + 1, {**acc[1], ext: acc[1].get(ext, 0) + 1}, sorted(acc[2] + [path])[:SKIPPED_EXAMPLES]

    def merge_accumulators(self, accs):
        accs, by_ext = list(accs), Counter()
        for a in accs:
            by_ext.update(a[1])
        return sum(a[0] for a in accs), dict(by_ext), sorted(p for a in accs for p in a[2])[:SKIPPED_EXAMPLES]

    def extract_output(self, acc):
        return acc


def _file_sample(sample) -> dict:
    total, by_ext, examples = sample
    return {
        "total": total,
        "by_extension": dict(sorted(by_ext.items(), key=lambda kv: (-kv[1], kv[0]))),
        "examples": list(examples),
    }


# Which format a label file's extension suggests, for the hint when --format names another.
FORMAT_OF_EXTENSION = {".xml": "voc", ".json": "coco", ".csv": "csv", ".txt": "yolo"}


def format_hint(fmt: str, ignored: dict) -> str | None:
    """A line naming the format the ignored files under --labels look like, when it is not ``fmt``."""
    for ext, n in ignored.get("by_extension", {}).items():
        guess = FORMAT_OF_EXTENSION.get(ext)
        if guess and guess != fmt:
            return (
                f"{n} {ext} files under --labels were not read as {fmt} labels: they look like {guess} labels "
                f"(--format {guess})"
            )
    return None


def unusable(stats: dict) -> str | None:
    """Why an output with these stats must not be committed as a success (nothing to train or score
    on), or None. The reasons come with it: the biggest causes and the format hint."""
    written, boxes = stats["images_written"], stats["boxes_written"]
    if written["total"] and boxes and (stats["boxes_per_split"].get("train", 0) or not written.get("train")):
        return None
    reasons = {k: v for k, v in stats["images_rejected"].items() if k != "total"}
    top = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
    if not written["total"]:
        why = f"nothing written: {stats['images_in']} images in, every one rejected" + (f" ({top})" if top else "")
    elif not boxes:
        box_reasons = {k: v for k, v in stats["boxes_rejected"].items() if k != "total"}
        why = f"no boxes written: {written['total']} images written, none with a box" + (
            f" ({stats['boxes_rejected']['total']} boxes rejected: {json.dumps(box_reasons)})" if box_reasons else ""
        )
    else:
        where = ", ".join(f"{s} {n}" for s, n in stats["boxes_per_split"].items() if n)
        why = (
            f"no boxes in the train split: all {boxes} boxes are in other splits ({where}; {written['train']} train "
            f"images, none with a box): label train images, or lower --val-fraction where the split is hashed"
        )
    hint = stats.get("format_hint")
    return why + (f"; {hint}" if hint else "")


class MergeBooks(beam.CombineFn):
    """Counters summed: the books of every bucket, a few hundred keys whatever the image count."""

    def create_accumulator(self):
        return Counter()

    def add_input(self, acc, books):
        acc.update(books)
        return acc

    def merge_accumulators(self, accs):
        total = Counter()
        for acc in accs:
            total.update(acc)
        return total

    def extract_output(self, acc):
        return acc


class WriteMetadata(StorageDoFn):
    """stats.json (the books checked), label maps, and rejected.jsonl streamed from its fragments."""

    def __init__(self, final_dir: str, fragments_dir: str, fmt: str, flags=()):
        super().__init__(flags)
        self.final_dir, self.fragments_dir, self.fmt = final_dir, fragments_dir, fmt

    def process(self, books, layout: Layout, shard_names, label_map, skipped, ignored):
        if sorted(shard_names) != list(layout.names):
            raise IngestError(f"shards written {sorted(shard_names)} differ from the plan {list(layout.names)}")
        stats = build_stats(books, label_map, list(layout.names), skipped, ignored, self.fmt)
        storage.write_text(storage.join(self.final_dir, "stats.json"), json.dumps(stats, indent=2) + "\n")
        # early-* before images-*, buckets in order: the same bytes on every run and runner
        with storage.StreamWriter(storage.join(self.final_dir, "rejected.jsonl")) as out:
            for fragment in storage.list_files(storage.join(self.fragments_dir, "*.jsonl")):
                out.write(storage.read_bytes(fragment))
        storage.write_text(storage.join(self.final_dir, "label_map.json"), label_map.to_json())
        storage.write_text(storage.join(self.final_dir, "label_map.pbtxt"), label_map.to_pbtxt())
        Metrics.counter(METRICS, "images_written").inc(stats["images_written"]["total"])
        Metrics.counter(METRICS, "images_rejected").inc(stats["images_rejected"]["total"])
        yield stats

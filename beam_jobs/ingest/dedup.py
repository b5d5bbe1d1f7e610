"""Dedup and the books of each hash bucket: byte-identical images dropped (the smallest key kept),
every rejection written to a fragment of rejected.jsonl, counters per bucket."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import apache_beam as beam

from beam_jobs import records as R
from beam_jobs.buckets import hash_bucket
from beam_jobs.records import ImageOutcome
from beam_jobs.spill import Spill
from beam_jobs.storage_dofn import StorageDoFn
from ssdflow import storage

# --- dedup, shard layout and the books: no worker holds every image's outcome ------------------------
DEDUP_BUCKETS = 32  # byte-identical twins share a sha256, so a bucket: dedup needs one bucket at a time


def dedup_bucket(o: ImageOutcome) -> int:
    """Twins (same sha256) land in the same bucket; images rejected before hashing spread by name."""
    if o.sha256:
        return int(o.sha256[:8], 16) % DEDUP_BUCKETS
    return hash_bucket(o.source, DEDUP_BUCKETS)


def by_hash_bucket(outcomes: list[ImageOutcome], spill: Spill):
    """A list of outcomes → (bucket, spill file of that bucket's outcomes), at most DEDUP_BUCKETS."""
    buckets: dict[int, list[ImageOutcome]] = defaultdict(list)
    for o in outcomes:
        buckets[dedup_bucket(o)].append(o)
    for bucket, some in buckets.items():
        yield bucket, spill.write(some)


def _rejection_line(r: R.Rejection) -> str:
    return json.dumps(r.to_json(), ensure_ascii=False) + "\n"


def _write_fragment(fragments_dir: str, name: str, lines: list[str]) -> None:
    """Part of rejected.jsonl, lines sorted (the same bytes on every run and runner)."""
    if lines:
        storage.write_text(storage.join(fragments_dir, name), "".join(sorted(lines)))


class Dedup(StorageDoFn):
    """One bucket's outcomes → the twins dropped (the smallest key kept, the same on every run and
    runner), each part file's (offset, length, kept) entries, and the bucket's books; its rejected
    lines go to a fragment of rejected.jsonl."""

    def __init__(self, fragments_dir: str, spill: Spill, flags=()):
        super().__init__(flags)
        self.fragments_dir, self.spill = fragments_dir, spill

    def process(self, element):
        bucket, paths = element
        outcomes = sorted((o for path in paths for o in self.spill.read(path)), key=lambda o: (o.key, o.source))
        books: Counter = Counter(images_in=len(outcomes))
        lines: list[str] = []
        by_sha: dict[str, list[ImageOutcome]] = defaultdict(list)
        for o in outcomes:
            if o.split is None:  # one line per rejected image; its boxes go with it
                books[f"images_rejected/{o.rejections[0].reason}"] += 1
                books["boxes_in_rejected_images"] += o.boxes_in
                lines.append(_rejection_line(o.rejections[0]))
            else:
                by_sha[o.sha256].append(o)
        entries: dict[str, list[tuple[int, int, bool]]] = defaultdict(list)
        for twins in by_sha.values():  # sorted by (key, source) above: the first is kept
            kept = twins[0]
            for dup in twins[1:]:
                books[f"images_rejected/{R.DUPLICATE}"] += 1
                books["boxes_in_rejected_images"] += dup.boxes_in
                lines.append(
                    _rejection_line(
                        R.Rejection(
                            dup.source,
                            R.DUPLICATE,
                            f"byte-identical to {kept.source} (sha256 {dup.sha256[:16]}...), which is kept",
                        )
                    )
                )
                entries[dup.part].append((dup.offset, dup.length, False))
            entries[kept.part].append((kept.offset, kept.length, True))
            books[f"written/{kept.split}"] += 1
            books.update({f"class/{name}": n for name, n in kept.class_counts})
            books[f"boxes_split/{kept.split}"] += sum(n for _, n in kept.class_counts)
            books.update({f"stats/{name}": n for name, n in kept.stats})
            books["boxes_in_written"] += kept.boxes_in
            books["boxes_rejected_written"] += len(kept.rejections)
            for rej in kept.rejections:
                books[f"boxes_rejected/{rej.reason}"] += 1
                lines.append(_rejection_line(rej))
        _write_fragment(self.fragments_dir, f"images-{bucket:05d}.jsonl", lines)
        for part, items in entries.items():
            yield part, tuple(items)
        yield beam.pvalue.TaggedOutput("books", books)


def early_books(element, fragments_dir: str):
    """Rejections made before encoding (listing, label files, matching), one bucket of them → its books."""
    bucket, rejections = element
    books: Counter = Counter()
    for rej in rejections:
        if rej.kind == R.IMAGE:
            books["images_in"] += 1
            books[f"images_rejected/{rej.reason}"] += 1
        elif rej.kind == R.BOX:
            books[f"boxes_rejected/{rej.reason}"] += 1
        elif rej.kind == R.LABEL_FILE:
            books["label_files_rejected"] += 1
    _write_fragment(fragments_dir, f"early-{bucket:05d}.jsonl", [_rejection_line(r) for r in rejections])
    yield books

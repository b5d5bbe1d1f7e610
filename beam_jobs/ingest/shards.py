"""The shard layout and the shards: planned from one row per part file, written by renaming a part
file or copying byte ranges of part files (TFRecord frames are self-contained)."""

from __future__ import annotations

import posixpath
from collections import defaultdict
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_jobs.ingest.dedup import Dedup, by_hash_bucket
from beam_jobs.spill import Spill
from beam_jobs.splits import SPLITS
from beam_jobs.storage_dofn import StorageCall, StorageDoFn
from ssdflow import storage


class PartRow(NamedTuple):
    """What the layout needs of one part file."""

    part: str
    split: str
    kept_bytes: int
    dropped: bool  # some record of this part was a twin dropped in dedup


@dataclass(frozen=True)
class PartSummary:
    """One part file after dedup: the byte ranges of its records that are kept, in file order."""

    part: str
    split: str
    kept: tuple[tuple[int, int], ...]  # (offset, framed length)
    dropped: bool  # some record of this part was a twin dropped in dedup

    @property
    def kept_bytes(self) -> int:
        return sum(length for _, length in self.kept)

    @property
    def row(self) -> PartRow:
        return PartRow(self.part, self.split, self.kept_bytes, self.dropped)


class Placement(NamedTuple):
    """Where one part file's kept records go."""

    split: str
    start: int  # where the part's kept bytes start in its split (records cut by bytes: --num-shards)
    index: int | None  # its shard, or None when its records are cut by bytes into --num-shards shards
    move: bool  # the shard is this one part file with nothing dropped: a rename, not a copy


class Piece(NamedTuple):
    """Part of a shard: byte ranges of one part file."""

    part: str
    ranges: tuple[tuple[int, int], ...]  # (offset, length), merged where adjacent
    move: bool  # the whole shard is this part file, renamed


@dataclass(frozen=True)
class Layout:
    """The shard layout, planned from one small row per part file (never per image)."""

    names: tuple[str, ...]  # every shard, empty ones included, sorted
    placement: dict[str, Placement]  # part file → where its kept records go
    shards_per_split: dict[str, int]
    bytes_per_split: dict[str, int]


def summarize_part(element) -> PartSummary:
    """(part file, its records' (offset, length, kept) entries from every bucket) → PartSummary."""
    part, groups = element
    items = sorted(item for group in groups for item in group)
    split = posixpath.basename(part).split("-", 1)[0]
    return PartSummary(
        part,
        split,
        tuple((offset, length) for offset, length, kept in items if kept),
        dropped=any(not kept for _, _, kept in items),
    )


def plan_layout(rows: list[PartRow], num_shards: int | None, target_bytes: int) -> Layout:
    """Shards from one row per part file.

    With ``num_shards`` the kept records of a split are cut into that many shards of about equal
    bytes (records in part-file order). Without it, a part file of at least half ``target_bytes``
    is a shard by itself, and smaller ones are packed in name order into shards of at most
    ``target_bytes``; a shard that is one part file with nothing dropped is a rename, not a copy
    (the common case: no bytes move twice; copying a 130 MB val split cost 1.5 s of a 20 s job).
    train and val get at least one shard each; test only when it has records.
    """
    placement, shards_per_split, bytes_per_split, names = {}, {}, {}, []
    for split in SPLITS:
        parts = sorted((r for r in rows if r.split == split and r.kept_bytes > 0), key=lambda r: r.part)
        if split == "test" and not parts:  # train and val always have shards (training reads both); test when given
            continue
        if num_shards:
            start = 0
            for row in parts:
                placement[row.part] = Placement(split, start, None, False)
                start += row.kept_bytes
            n, bytes_per_split[split] = num_shards, start
        else:
            groups: list[list[PartRow]] = []
            small, size = None, 0
            for row in parts:
                if 2 * row.kept_bytes >= target_bytes:  # big enough to be a shard on its own: no copy
                    groups.append([row])
                    continue
                if small is None or size + row.kept_bytes > target_bytes:
                    small, size = [], 0
                    groups.append(small)
                small.append(row)
                size += row.kept_bytes
            for i, group in enumerate(groups):
                for row in group:
                    placement[row.part] = Placement(split, 0, i, len(group) == 1 and not row.dropped)
            n, bytes_per_split[split] = max(1, len(groups)), sum(r.kept_bytes for r in parts)
        shards_per_split[split] = n
        names += [shard_name(split, i, n) for i in range(n)]
    return Layout(tuple(sorted(names)), placement, shards_per_split, bytes_per_split)


def shard_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


def _merge_ranges(ranges) -> tuple[tuple[int, int], ...]:
    """Adjacent byte ranges of one part file become one range (a part minus its dropped twins)."""
    merged: list[list[int]] = []
    for offset, length in ranges:
        if merged and merged[-1][0] + merged[-1][1] == offset:
            merged[-1][1] += length
        else:
            merged.append([offset, length])
    return tuple(tuple(m) for m in merged)


def shard_pieces(summary: PartSummary, layout: Layout):
    """A part's kept records → (shard name, Piece), one per shard they go to."""
    if summary.part not in layout.placement:  # nothing of this part is kept
        return
    place = layout.placement[summary.part]
    split, n = place.split, layout.shards_per_split[place.split]
    if place.index is not None:
        yield shard_name(split, place.index, n), Piece(summary.part, _merge_ranges(summary.kept), place.move)
        return
    total, position = max(layout.bytes_per_split[split], 1), place.start
    by_shard: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for offset, length in summary.kept:  # a record goes to the shard holding its middle byte
        by_shard[min(n - 1, int((position + length / 2) * n / total))].append((offset, length))
        position += length
    for i, ranges in sorted(by_shard.items()):
        yield shard_name(split, i, n), Piece(summary.part, _merge_ranges(ranges), False)


class _WriteShard(StorageDoFn):
    """(shard name, its pieces) → the shard: the part file renamed, or the pieces' byte ranges copied
    in part-file order (TFRecord frames are self-contained: no record is parsed again)."""

    def __init__(self, final_dir: str, flags=()):
        super().__init__(flags)
        self.final_dir = final_dir

    def process(self, element):
        name, items = element
        pieces = sorted(item for item in items if item is not None)
        target = storage.join(self.final_dir, name)
        if len(pieces) == 1 and pieces[0].move:  # the part file is the shard, byte for byte
            storage.move(pieces[0].part, target)
        elif not pieces:  # an empty split: object stores refuse an upload with no parts
            storage.write_bytes(target, b"")
        else:
            with FileSystems.create(target) as out:
                for piece in pieces:
                    data = storage.read_bytes(piece.part)
                    for offset, length in piece.ranges:
                        out.write(data[offset : offset + length])
        yield name


class PlanAndWriteShards(beam.PTransform):
    """Lists of ImageOutcome → dedup by content hash per bucket, the shard layout from one row per
    part file, shards written in parallel; outputs (books, layout, shard names written)."""

    def __init__(
        self, final_dir: str, fragments_dir: str, num_shards: int | None, target_bytes: int, spill: Spill, flags=()
    ):
        super().__init__()
        self.final_dir, self.fragments_dir, self.num_shards, self.target_bytes = (
            final_dir,
            fragments_dir,
            num_shards,
            target_bytes,
        )
        self.spill, self.flags = spill, flags

    def expand(self, outcome_lists):
        dedup = (
            outcome_lists
            | "ByHashBucket" >> beam.ParDo(StorageCall(self.flags, by_hash_bucket, self.spill))
            | "GroupByBucket" >> beam.GroupByKey()
            | "Dedup"
            >> beam.ParDo(Dedup(self.fragments_dir, self.spill, self.flags)).with_outputs("books", main="entries")
        )
        parts = dedup.entries | "GroupByPart" >> beam.GroupByKey() | "SummarizeParts" >> beam.Map(summarize_part)
        layout = (
            parts
            | "PartRows" >> beam.Map(lambda s: s.row)
            | "CollectPartRows" >> beam.combiners.ToList()
            | "PlanLayout" >> beam.Map(plan_layout, self.num_shards, self.target_bytes)
        )
        pieces = parts | "ShardPieces" >> beam.FlatMap(shard_pieces, beam.pvalue.AsSingleton(layout))
        every_shard = layout | "EveryShard" >> beam.FlatMap(lambda plan: [(name, None) for name in plan.names])
        written = (
            (pieces, every_shard)
            | "AllPieces" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(_WriteShard(self.final_dir, self.flags))
            | "CollectShards" >> beam.combiners.ToList()
        )
        return dedup.books, layout, written

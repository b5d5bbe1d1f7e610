"""Ingest's shard layout, planned from one row per part file: packing, renames, cutting by bytes."""

from __future__ import annotations

from beam_jobs.ingest.shards import PartRow, PartSummary, plan_layout, shard_pieces


def _pieces(summaries, layout) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in summaries:
        for name, piece in shard_pieces(s, layout):
            out.setdefault(name, []).append(piece)
    return out


def test_whole_parts_packed_in_name_order_and_lone_clean_parts_renamed():
    summaries = [
        PartSummary("/p/train-b.part", "train", ((0, 60), (60, 40)), dropped=False),
        PartSummary("/p/train-a.part", "train", ((0, 30), (50, 20)), dropped=True),  # a twin at 30..50 dropped
        PartSummary("/p/train-c.part", "train", ((0, 10),), dropped=False),
        PartSummary("/p/train-d.part", "train", (), dropped=True),
    ]  # every record a dropped twin
    layout = plan_layout([s.row for s in summaries], None, target_bytes=110)
    # a (50 bytes, under half the target) opens the packed shard 0; b (100, at least half the
    # target) is a shard by itself; c (10) joins a; d has nothing kept. val has no part at all and
    # still gets its one (empty) shard.
    assert layout.names == (
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
        "val-00000-of-00001.tfrecord",
    )
    pieces = _pieces(summaries, layout)
    assert sorted(pieces["train-00000-of-00002.tfrecord"]) == [
        ("/p/train-a.part", ((0, 30), (50, 20)), False),  # dropped: copied
        ("/p/train-c.part", ((0, 10),), False),
    ]
    assert pieces["train-00001-of-00002.tfrecord"] == [("/p/train-b.part", ((0, 100),), True)]  # a rename
    assert "val-00000-of-00001.tfrecord" not in pieces
    alone = plan_layout([PartRow("/p/train-b.part", "train", 100, False)], None, target_bytes=50)
    assert list(shard_pieces(summaries[0], alone)) == [
        ("train-00000-of-00001.tfrecord", ("/p/train-b.part", ((0, 100),), True))
    ]


def test_num_shards_cuts_each_split_by_the_middle_byte_of_each_record():
    summaries = [
        PartSummary("/p/train-a.part", "train", ((0, 10), (10, 10), (20, 10)), dropped=False),
        PartSummary("/p/train-b.part", "train", ((0, 30), (40, 30)), dropped=True),
    ]
    layout = plan_layout([s.row for s in summaries], 3, target_bytes=1)
    assert layout.shards_per_split == {"train": 3, "val": 3} and layout.bytes_per_split == {"train": 90, "val": 0}
    pieces = _pieces(summaries, layout)
    # middles at 5, 15, 25 (a) and 45, 75 (b) of 90 bytes: shards 0, 0, 0, 1, 2; never a rename
    assert pieces == {
        "train-00000-of-00003.tfrecord": [("/p/train-a.part", ((0, 30),), False)],
        "train-00001-of-00003.tfrecord": [("/p/train-b.part", ((0, 30),), False)],
        "train-00002-of-00003.tfrecord": [("/p/train-b.part", ((40, 30),), False)],
    }
    assert len(layout.names) == 6  # empty shards are planned too, so every name exists

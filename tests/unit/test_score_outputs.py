"""The scoring job's outputs assembled chunk by chunk equal the outputs of the whole list at once."""

from __future__ import annotations

import json
import random
from collections import Counter

from beam_jobs import score_outputs as so
from ssdflow import storage


def _records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        dets = []
        for _ in range(rng.choice([0, 0, 1, 3])):
            x, y = rng.uniform(0, 50), rng.uniform(0, 50)
            dets.append({"label": rng.choice(["cat", "dog"]), "label_id": rng.choice([1, 2]), "score": round(rng.random(), 4),
                         "box": {"xmin": round(x, 2), "ymin": round(y, 2), "xmax": round(x + 10.5, 2), "ymax": round(y + 7.25, 2)}})
        out.append({"source": f"s{seed}-{i}.jpg", "detections": dets})
    return out


def test_summary_from_chunk_parts_equals_the_whole():
    chunks = [_records(n, seed) for seed, n in enumerate([7, 0, 12, 5])]
    flat = [r for c in chunks for r in c]
    counts = {"images_in": len(flat) + 2, "images_scored": len(flat), "images_failed": 2,
              "detections": sum(len(r["detections"]) for r in flat)}
    summary = so.summarize([so.summary_part(c) for c in chunks], counts, "v1")
    per_class = Counter(d["label"] for r in flat for d in r["detections"])
    assert summary["detections_per_class"] == dict(sorted(per_class.items()))
    assert sum(summary["score_histogram"].values()) == counts["detections"] > 0
    assert summary["score_histogram"]["0.9-1.0"] == sum(1 for r in flat for d in r["detections"] if d["score"] >= 0.9)
    assert summary["images_without_detections"] == sum(1 for r in flat if not r["detections"])
    assert summary["mean_boxes_per_image"] == round(counts["detections"] / len(flat), 4)


def test_streamed_coco_results_are_the_json_of_the_whole_list(tmp_path):
    chunks = [_records(n, seed) for seed, n in enumerate([3, 0, 9, 1])]
    uri = str(tmp_path / "coco_results.json")
    with so.CocoWriter(uri) as w:
        for c in chunks:
            w.add(so.coco_fragment(c))
    text = (tmp_path / "coco_results.json").read_text()
    assert text == json.dumps(so.coco_results([r for c in chunks for r in c]))
    assert len(json.loads(text)) == sum(len(r["detections"]) for c in chunks for r in c) > 0
    with so.CocoWriter(str(tmp_path / "none.json")) as w:
        w.add(so.coco_fragment(_records(4, 99)[:0]))
    assert (tmp_path / "none.json").read_text() == "[]"


def test_stream_writer_writes_pieces_and_empty_files(tmp_path):
    with storage.StreamWriter(str(tmp_path / "sub" / "a.jsonl")) as w:
        w.write(b"one\n")
        w.write(b"")
        w.write(b"two\n")
    assert (tmp_path / "sub" / "a.jsonl").read_bytes() == b"one\ntwo\n"
    with storage.StreamWriter(str(tmp_path / "empty.jsonl")):
        pass
    assert (tmp_path / "empty.jsonl").read_bytes() == b""


def test_a_chunk_keeps_only_the_attempt_its_success_names(tmp_path):
    """A retried bundle (two complete attempts) and a killed one (files, no _SUCCESS of its own):
    pruning keeps exactly the attempt _SUCCESS names, and the chunk still reads back whole."""
    from beam_jobs.score import Chunk, chunk_dir, commit_chunk, prune_attempts

    out, version, chunk = str(tmp_path), "v1", Chunk("c0", 0, "files", ("a.jpg",))
    records = [{"source": f"img{i}.jpg", "model_version": version, "width": 50, "height": 40, "detections": []} for i in (2, 0, 1)]
    counts = Counter({"images_in": 3, "files_skipped": 0})
    first = commit_chunk(out, version, chunk.chunk_id, counts, records, [])
    second = commit_chunk(out, version, chunk.chunk_id, counts, records, [])  # the retry's _SUCCESS replaced the first's
    d = tmp_path / "chunks" / version / "c0"
    (d / "deadbeef0000").mkdir()
    (d / "deadbeef0000" / "detections.jsonl").write_text("half a line")
    assert {p.name for p in d.iterdir() if p.is_dir()} == {first["attempt"], second["attempt"], "deadbeef0000"}

    prune_attempts(out, version, [chunk])
    assert {p.name for p in d.iterdir() if p.is_dir()} == {second["attempt"]}
    manifest = json.loads(storage.read_text(storage.join(chunk_dir(out, version, "c0"), storage.SUCCESS)))
    assert manifest["attempt"] == second["attempt"] and manifest["images_scored"] == 3
    lines = (d / second["attempt"] / "detections.jsonl").read_text().splitlines()
    assert [json.loads(line)["source"] for line in lines] == sorted(r["source"] for r in records)

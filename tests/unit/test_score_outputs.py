"""The scoring job's outputs assembled chunk by chunk equal the outputs of the whole list at once."""

from __future__ import annotations

import json
import random
from collections import Counter

from beam_jobs.score import outputs as so
from ssdflow import storage


def _records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        dets = []
        for _ in range(rng.choice([0, 0, 1, 3])):
            x, y = rng.uniform(0, 50), rng.uniform(0, 50)
            dets.append(
                {
                    "label": rng.choice(["cat", "dog"]),
                    "label_id": rng.choice([1, 2]),
                    "score": round(rng.random(), 4),
                    "box": {
                        "xmin": round(x, 2),
                        "ymin": round(y, 2),
                        "xmax": round(x + 10.5, 2),
                        "ymax": round(y + 7.25, 2),
                    },
                }
            )
        out.append({"source": f"s{seed}-{i}.jpg", "detections": dets})
    return out


def test_summary_from_chunk_parts_equals_the_whole():
    chunks = [_records(n, seed) for seed, n in enumerate([7, 0, 12, 5])]
    flat = [r for c in chunks for r in c]
    counts = {
        "images_in": len(flat) + 2,
        "images_scored": len(flat),
        "images_failed": 2,
        "detections": sum(len(r["detections"]) for r in flat),
    }
    summary = so.summarize([so.summary_part(c) for c in chunks], counts, "v1")
    per_class = Counter(d["label"] for r in flat for d in r["detections"])
    assert summary["detections_per_class"] == dict(sorted(per_class.items()))
    assert sum(summary["score_histogram"].values()) == counts["detections"] > 0
    assert summary["score_histogram"]["0.9-1.0"] == sum(1 for r in flat for d in r["detections"] if d["score"] >= 0.9)
    assert summary["images_without_detections"] == sum(1 for r in flat if not r["detections"])
    assert summary["mean_boxes_per_image"] == round(counts["detections"] / len(flat), 4)


def _coco(tmp_path, chunks, name="c"):
    dataset, results = tmp_path / f"{name}.json", tmp_path / f"{name}_results.json"
    with so.CocoWriter(str(dataset), str(results), {2: "dog", 1: "cat"}) as w:
        for c in chunks:
            w.add(c)
    return dataset, results


def test_coco_outputs_are_a_dataset_and_results_that_pycocotools_loads(tmp_path):
    """Streamed chunk by chunk: a COCO dataset with integer ids (what labelling tools import) and
    a results list keyed by the same ids, which pycocotools loads together."""
    from pycocotools.coco import COCO

    chunks = [_records(n, seed) for seed, n in enumerate([3, 0, 9, 1])]
    for c in chunks:
        for r in c:
            r.update(width=64, height=48)
    flat = [r for c in chunks for r in c]
    dataset_path, results_path = _coco(tmp_path, chunks)
    dataset, results = json.loads(dataset_path.read_text()), json.loads(results_path.read_text())
    assert dataset["categories"] == [
        {"id": 1, "name": "cat", "supercategory": ""},
        {"id": 2, "name": "dog", "supercategory": ""},
    ]
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in dataset["images"]] == [
        (k + 1, r["source"], 64, 48) for k, r in enumerate(flat)
    ]
    n = sum(len(r["detections"]) for r in flat)
    assert [a["id"] for a in dataset["annotations"]] == list(range(1, n + 1)) and n > 0
    first = next(k for k, r in enumerate(flat) if r["detections"])
    a, d = dataset["annotations"][0], flat[first]["detections"][0]
    assert (a["image_id"], a["category_id"], a["score"], a["iscrowd"]) == (first + 1, d["label_id"], d["score"], 0)
    assert a["bbox"] == [d["box"]["xmin"], d["box"]["ymin"], 10.5, 7.25] and a["area"] == round(10.5 * 7.25, 2)
    assert results == [{k: a[k] for k in ("image_id", "category_id", "bbox", "score")} for a in dataset["annotations"]]

    gt = COCO(str(dataset_path))  # pycocotools: the dataset indexes, and loadRes accepts the results for it
    assert len(gt.getImgIds()) == len(flat) and len(gt.getAnnIds()) == n
    assert len(gt.loadRes(str(results_path)).getAnnIds()) == n


def test_coco_outputs_without_detections_are_valid(tmp_path):
    dataset, results = _coco(tmp_path, [[]], "none")
    assert json.loads(dataset.read_text())["images"] == [] and json.loads(dataset.read_text())["annotations"] == []
    assert results.read_text() == "[]"


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
    from beam_jobs.score.chunks import Chunk, chunk_dir, prune_attempts
    from beam_jobs.score.results import commit_chunk

    out, version, chunk = str(tmp_path), "v1", Chunk("c0", 0, "files", ("a.jpg",))
    records = [
        {"source": f"img{i}.jpg", "model_version": version, "width": 50, "height": 40, "detections": []}
        for i in (2, 0, 1)
    ]
    counts = Counter({"images_in": 3, "files_skipped": 0})
    first = commit_chunk(out, version, chunk.chunk_id, counts, records, [])
    second = commit_chunk(
        out, version, chunk.chunk_id, counts, records, []
    )  # the retry's _SUCCESS replaced the first's
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

"""The labelling loop, simulated on raccoon (issue 13): does labelling what ``--select`` picks beat
labelling at random, and how fast does a warm start get back to the champion?

    .venv/bin/python -m bench.loop --weights ../shared/weights/mobilenet_v2_1.0_imagenet_dogs_no_top.weights.h5 \
        [--seeds 0,1,2] [--select 20] [--minutes 3] [--alpha 0.35 --image-size 224]

Per seed: raccoon's train split is halved at random into a labelled half and an "unlabelled" pool
(the val split stays as ingest assigns it). A champion trains on the labelled half (from the
pretrained backbone, ``--minutes``). It scores the pool with ``--select N``; N other pool images are
drawn at random. Each set of N gets its ground-truth labels (raccoon's own VOC files, standing in
for the labellers), is added to the labelled half, and a challenger is warm-started from the
champion (the nightly default: a third of the budget, no frozen phase). A third run trains on the
uncertainty set from the backbone with the full budget, for the time comparison.

Prints one row per seed and the means: val mAP@.5 of the champion and of each retrain, and the
seconds each retrain took to reach the champion's val mAP@.5 (from the per-epoch validation
history; "–" when it never did).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import statistics
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RACCOON = REPO.parent / "shared" / "datasets" / "raccoon"


def split_keys(records: str) -> dict[str, list[str]]:
    """Image stems per split of an ingested raccoon (ingest decides val by a stable hash of the key)."""
    import tensorflow as tf

    from ssdflow import schema, storage

    out = {}
    for split in ("train", "val"):
        files = storage.list_files(storage.join(records, f"{split}-*.tfrecord*"))
        ds = tf.data.TFRecordDataset(files).map(
            lambda s: tf.io.parse_single_example(s, {schema.SOURCE_ID: tf.io.FixedLenFeature([], tf.string)})
        )
        out[split] = sorted(os.path.splitext(os.path.basename(x[schema.SOURCE_ID].numpy().decode()))[0] for x in ds)
    return out


def ingest_subset(stems: list[str], work: Path) -> str:
    """The raccoon images and VOC files named by ``stems``, linked into ``work`` and ingested."""
    from beam_jobs.ingest import run_ingest
    from ssdflow.config import IngestConfig

    images, labels = work / "images", work / "labels"
    for d in (images, labels):
        d.mkdir(parents=True, exist_ok=True)
    for s in stems:
        os.symlink(RACCOON / "images" / f"{s}.jpg", images / f"{s}.jpg")
        os.symlink(RACCOON / "annotations" / f"{s}.xml", labels / f"{s}.xml")
    out = str(work / "records")
    run_ingest(IngestConfig(images=str(images), labels=str(labels), format="voc", out=out))
    return out


def seconds_to_reach(history: list[dict], target: float) -> float | None:
    """Seconds into the run at the first evaluation with val mAP@.5 ≥ ``target`` (None: never)."""
    return next((h["seconds"] for h in history if h["mAP@.5"] >= target), None)


def run_seed(seed: int, args, keys: dict[str, list[str]]) -> dict:
    from beam_jobs.score import run_score
    from model.train import train
    from ssdflow.config import ScoreConfig, TrainConfig

    work = Path(args.workdir) / f"seed{seed}"
    shutil.rmtree(work, ignore_errors=True)
    rng = random.Random(seed)
    train_keys = list(keys["train"])
    rng.shuffle(train_keys)
    labelled, pool = sorted(train_keys[: len(train_keys) // 2]), sorted(train_keys[len(train_keys) // 2 :])
    common = dict(alpha=args.alpha, image_size=args.image_size, backbone_weights=args.weights, seed=seed, min_map=0.0)

    champion = train(
        TrainConfig(
            data=ingest_subset(labelled + keys["val"], work / "labelled"),
            models=str(work / "models"),
            time_budget=args.minutes,
            **common,
        ),
        verbose=0,
    )
    pool_dir = work / "pool"
    pool_dir.mkdir()
    for s in pool:
        os.symlink(RACCOON / "images" / f"{s}.jpg", pool_dir / f"{s}.jpg")
    run_score(
        ScoreConfig(model=champion.model_dir, images=[str(pool_dir)], out=str(work / "scored"), select=args.select)
    )
    with open(work / "scored" / "labelling" / "reasons.csv") as f:
        uncertain = [os.path.splitext(os.path.basename(r["source"]))[0] for r in csv.DictReader(f)]
    picks = {"uncertainty": uncertain, "random": rng.sample(pool, len(uncertain))}

    row = {
        "seed": seed,
        "champion": champion.metrics["mAP@.5"],
        "selected": len(uncertain),
        "overlap": len(set(picks["uncertainty"]) & set(picks["random"])),
    }
    target = champion.metrics["mAP@.5"]
    for name, picked in picks.items():
        data = ingest_subset(labelled + picked + keys["val"], work / name)
        warm = train(
            TrainConfig(
                data=data,
                models=str(work / f"models-{name}"),
                init_from=champion.model_dir,
                time_budget=args.minutes,
                **common,
            ),
            verbose=0,
        )
        row[name] = warm.metrics["mAP@.5"]
        row[f"{name}_reach_s"] = seconds_to_reach(warm.metrics["validation_history"], target)
        row[f"{name}_s"] = warm.metrics.get("fit_seconds")
        if name == "uncertainty":
            cold = train(
                TrainConfig(
                    data=data,
                    models=str(work / "models-cold"),
                    init_from="backbone",
                    time_budget=args.minutes,
                    **common,
                ),
                verbose=0,
            )
            row["cold"] = cold.metrics["mAP@.5"]
            row["cold_reach_s"] = seconds_to_reach(cold.metrics["validation_history"], target)
            row["cold_s"] = cold.metrics.get("fit_seconds")
    return row


def _s(v) -> str:
    return "–" if v is None else f"{v:.0f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ssdflow-bench-loop"))
    ap.add_argument(
        "--weights", default="none", help="pretrained MobileNetV2 no-top weights file (default: from scratch)"
    )
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--select", type=int, default=20, help="images labelled per strategy")
    ap.add_argument(
        "--minutes", type=float, default=3.0, help="time budget of the champion and of the from-backbone retrain"
    )
    ap.add_argument("--alpha", type=float, default=0.35)
    ap.add_argument("--image-size", type=int, default=224)
    args = ap.parse_args()

    from bench.train import ingest_raccoon

    keys = split_keys(ingest_raccoon(Path(args.workdir) / "records-raccoon"))
    print(
        f"raccoon: {len(keys['train'])} train images (half labelled, half the pool), {len(keys['val'])} val; "
        f"alpha {args.alpha:g}, {args.image_size} px, {args.minutes:g}-minute budget, {args.select} images labelled per strategy"
    )
    print(
        "| seed | champion | + uncertainty (warm) | + random (warm) | + uncertainty (from backbone) | "
        "warm: time to the champion's mAP / run | from backbone: time to it / run |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        r = run_seed(seed, args, keys)
        rows.append(r)
        print(
            f"| {seed} | {r['champion']:.3f} | {r['uncertainty']:.3f} | {r['random']:.3f} | {r['cold']:.3f} | "
            f"{_s(r['uncertainty_reach_s'])} / {_s(r['uncertainty_s'])} | {_s(r['cold_reach_s'])} / {_s(r['cold_s'])} |",
            flush=True,
        )
    if len(rows) > 1:
        mean = {k: statistics.mean(r[k] for r in rows) for k in ("champion", "uncertainty", "random", "cold")}
        print(
            f"| mean | {mean['champion']:.3f} | {mean['uncertainty']:.3f} | {mean['random']:.3f} | {mean['cold']:.3f} | | |"
        )
        diffs = [r["uncertainty"] - r["random"] for r in rows]
        print(
            f"uncertainty − random, val mAP@.5: mean {statistics.mean(diffs):+.3f}, per seed "
            + ", ".join(f"{d:+.3f}" for d in diffs)
        )


if __name__ == "__main__":
    main()

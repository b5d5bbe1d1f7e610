"""``ssdflow demo``: the embedded default. Makes its own data and runs every job on it locally:
ingest (Beam) → train (Keras; evaluate, export, promote) → score (Beam batch inference)."""

from __future__ import annotations

import os
from typing import Callable

from ssdflow.config import IngestConfig, ScoreConfig, TrainConfig, TrainSettings
from ssdflow.demo_data import make_dataset


def make_demo_data(workdir: str, num_images: int, seed: int) -> tuple[str, str]:
    return make_dataset(os.path.join(workdir, "data"), num_images=num_images, seed=seed)


DEMO_MINUTES = 3.0


def demo_train_settings(minutes: float = DEMO_MINUTES, epochs: int | None = None) -> TrainSettings:
    """The demo's recipe, also the default of a served nightly run: a small model trained from scratch
    (no download needed), alpha 0.35 at 128 px, for ``minutes`` of fitting on the local CPU.

    Fitting runs to its time budget with val mAP@.5 every epoch, and the best epoch is exported.
    """
    return TrainSettings(
        alpha=0.35,
        image_size=128,
        epochs=epochs,
        time_budget=minutes,
        batch_size=16,
        backbone_weights="none",
        learning_rate=3e-3,
    )


def demo_configs(
    workdir: str, images: str, labels: str, minutes: float = DEMO_MINUTES, epochs: int | None = None
) -> tuple[IngestConfig, TrainConfig, ScoreConfig]:
    """The three jobs' configs; the champion then scores the synthetic images."""
    ingest = IngestConfig(images=images, labels=labels, format="voc", out=os.path.join(workdir, "ingest"))
    settings = demo_train_settings(minutes, epochs)
    train = TrainConfig(data=ingest.out, models=os.path.join(workdir, "models"), **settings.model_dump())
    score = ScoreConfig(model=train.models, images=[images], out=os.path.join(workdir, "scored"), preview=5)
    return ingest, train, score


def run_demo(
    workdir: str = "demo_out",
    num_images: int = 200,
    seed: int = 0,
    minutes: float = DEMO_MINUTES,
    epochs: int | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    from beam_jobs.ingest import run_ingest
    from beam_jobs.score import run_score
    from model.train import train

    workdir = os.path.abspath(workdir)
    echo(f"demo: generating {num_images} synthetic images in {workdir}/data")
    images, labels = make_demo_data(workdir, num_images, seed)
    ingest_cfg, train_cfg, score_cfg = demo_configs(workdir, images, labels, minutes, epochs)

    echo("demo: ingest (Apache Beam, DirectRunner) ...")
    stats = run_ingest(ingest_cfg)
    w = stats["images_written"]
    echo(
        f"demo: ingest wrote {w['total']} images (train {w['train']}, val {w['val']}), "
        f"{stats['boxes_written']} boxes, {stats['images_rejected']['total']} rejected"
    )

    bound = f", at most {epochs} epochs" if epochs else ""
    echo(f"demo: train (Keras, MobileNetV2-SSDLite alpha 0.35 at 128 px, from scratch, {minutes:g} min{bound}) ...")
    result = train(train_cfg, verbose=2)
    m, d = result.metrics, result.decision
    echo(
        f"demo: model {result.version}: mAP@.5 {m['mAP@.5']:.3f}, mAP@[.5:.95] {m['mAP']:.3f} on {m['val_images']} val images; "
        f"{'promoted to champion' if d['promoted'] else 'not promoted'} ({d['reason']})"
    )

    echo(f"demo: score (Apache Beam batch inference with {result.version}) ...")
    # The model just trained scores, promoted or not (a first run below the --min-map floor is not promoted).
    scored = run_score(score_cfg.model_copy(update={"model": result.model_dir}))
    echo(f"demo: scored {scored.images_scored} images, {scored.detections} detections, {scored.images_failed} failed")

    echo("demo: outputs")
    echo(f"  dataset : {workdir}/data")
    echo(
        f"  records : {ingest_cfg.out}  (train-*.tfrecord, val-*.tfrecord, label_map.json, stats.json, rejected.jsonl, _SUCCESS)"
    )
    echo(f"  model   : {result.model_dir}  (SavedModel, metrics.json, model_card.md, label_map.json)")
    echo(f"  registry: {train_cfg.models}/champion.json, decisions.jsonl")
    echo(f"  scored  : {score_cfg.out}  (detections-*.jsonl/.parquet, errors.jsonl, summary.json, preview/, _SUCCESS)")
    return {
        "ingest": stats,
        "train": {"version": result.version, "metrics": m, "decision": d},
        "score": scored,
        "workdir": workdir,
    }

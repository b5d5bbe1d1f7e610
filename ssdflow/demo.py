"""``ssdflow demo``: the embedded default. Makes its own data and runs every job on it locally."""

from __future__ import annotations

import os
from typing import Callable

from ssdflow.demo_data import make_dataset


def run_demo(workdir: str = "demo_out", num_images: int = 200, seed: int = 0, epochs: int = 15,
             echo: Callable[[str], None] = print) -> dict:
    """Synthetic dataset → ingest (Beam, DirectRunner) → train a small SSD (CPU) → evaluate, export, promote."""
    from beam_jobs.ingest import run_ingest
    from ssdflow.config import IngestConfig

    workdir = os.path.abspath(workdir)
    echo(f"demo: generating {num_images} synthetic images in {workdir}/data")
    images, labels = make_dataset(os.path.join(workdir, "data"), num_images=num_images, seed=seed)
    cfg = IngestConfig(images=images, labels=labels, format="voc", out=os.path.join(workdir, "ingest"))
    echo("demo: ingest (Apache Beam, DirectRunner) ...")
    stats = run_ingest(cfg)
    w = stats["images_written"]
    echo(f"demo: ingest wrote {w['total']} images (train {w['train']}, val {w['val']}), "
         f"{stats['boxes_written']} boxes, {stats['images_rejected']['total']} rejected")

    from model.train import train
    from ssdflow.config import TrainConfig

    # A small model trained from scratch (no download needed): alpha 0.35 at 128 px, a few minutes on 2 cores.
    train_cfg = TrainConfig(data=cfg.out, models=os.path.join(workdir, "models"), alpha=0.35, image_size=128,
                            epochs=epochs, batch_size=16, backbone_weights="none", learning_rate=3e-3, bn_momentum=0.9,
                            eval_every=5)
    echo("demo: train (Keras, MobileNetV2-SSDLite alpha 0.35 at 128 px, from scratch) ...")
    result = train(train_cfg, verbose=2)
    m, d = result.metrics, result.decision
    echo(f"demo: model {result.version}: mAP@.5 {m['mAP@.5']:.3f}, mAP@[.5:.95] {m['mAP']:.3f} on {m['val_images']} val images; "
         f"{'promoted to champion' if d['promoted'] else 'not promoted'} ({d['reason']})")
    echo("demo: outputs")
    echo(f"  dataset : {workdir}/data")
    echo(f"  records : {cfg.out}  (train-*.tfrecord, val-*.tfrecord, label_map.json, stats.json, rejected.jsonl, _SUCCESS)")
    echo(f"  model   : {result.model_dir}  (SavedModel, metrics.json, model_card.md, label_map.json)")
    echo(f"  registry: {train_cfg.models}/champion.json, decisions.jsonl")
    return {"ingest": stats, "train": {"version": result.version, "metrics": m, "decision": d}, "workdir": workdir}

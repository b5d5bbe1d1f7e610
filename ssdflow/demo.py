"""``ssdflow demo``: the embedded default. Makes its own data and runs every job on it locally."""

from __future__ import annotations

import os
from typing import Callable

from ssdflow.demo_data import make_dataset


def run_demo(workdir: str = "demo_out", num_images: int = 120, seed: int = 0, echo: Callable[[str], None] = print) -> dict:
    """Synthetic dataset → ingest (Beam, DirectRunner). Later stages are added as they land."""
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
    echo("demo: outputs")
    echo(f"  dataset : {workdir}/data")
    echo(f"  records : {cfg.out}  (train-*.tfrecord, val-*.tfrecord, label_map.json, stats.json, rejected.jsonl, _SUCCESS)")
    return {"ingest": stats, "workdir": workdir}

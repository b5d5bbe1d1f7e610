"""Training benchmarks: input-pipeline throughput and detection quality on raccoon, in one run.

    .venv/bin/python -m bench.train throughput --alpha 1.0 --image-size 320
    .venv/bin/python -m bench.train quality --weights ../shared/weights/mobilenet_v2_1.0_imagenet_dogs_no_top.weights.h5

throughput: training images/s fed from the TFRecord stream (parse, decode, augment, resize, target
encoding in tf.data) against the same model fed one in-memory batch over and over; prints the
ratio (goal >= 0.9: the input pipeline is never the bottleneck).

quality: raccoon → ingest → train → evaluate, with --backbone-weights none and, when --weights is
given, with that pretrained backbone; prints mAP@.5 and mAP@[.5:.95] and the wall time of each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RACCOON = REPO.parent / "shared" / "datasets" / "raccoon"


def ingest_raccoon(out: Path) -> str:
    from beam_jobs.ingest import run_ingest
    from ssdflow import storage
    from ssdflow.config import IngestConfig

    if storage.read_success(str(out)) is None:
        run_ingest(IngestConfig(images=str(RACCOON / "images"), labels=str(RACCOON / "annotations"), format="voc", out=str(out)))
    return str(out)


def throughput(args) -> None:
    import keras
    import tensorflow as tf

    from model.anchors import generate_anchors
    from model.dataset import make_dataset, read_label_map, shard_files
    from model.losses import SSDLoss
    from model.ssd import build_ssd
    from ssdflow.config import ModelConfig

    data = ingest_raccoon(Path(args.workdir) / "records")
    cfg = ModelConfig(alpha=args.alpha, image_size=args.image_size, num_classes=len(read_label_map(data)))
    anchors = generate_anchors(cfg)
    stream = make_dataset(shard_files(data, "train"), anchors, cfg.image_size, cfg.variances, args.batch_size,
                          training=True, repeat=True)
    batch = next(iter(stream))
    memory = tf.data.Dataset.from_tensors(batch).repeat()

    model = build_ssd(cfg, None)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=SSDLoss(cfg.num_classes))

    def rate(ds) -> float:
        model.fit(ds, epochs=1, steps_per_epoch=args.warmup_steps, verbose=0)  # trace, warm caches
        t0 = time.perf_counter()
        model.fit(ds, epochs=1, steps_per_epoch=args.steps, verbose=0)
        return args.steps * args.batch_size / (time.perf_counter() - t0)

    mem = rate(memory)
    tfr = rate(stream)
    mem2 = rate(memory)  # again, so drift (thermal, other load) shows
    print(f"model: alpha {cfg.alpha:g}, {cfg.image_size}px, batch {args.batch_size}, {args.steps} timed steps")
    print(f"in-memory batch:  {mem:7.1f} img/s (repeat: {mem2:.1f})")
    print(f"TFRecord stream:  {tfr:7.1f} img/s (parse, decode, augment, resize, encode targets)")
    print(f"ratio stream / in-memory: {tfr / ((mem + mem2) / 2):.2f}   (goal >= 0.9)")


def quality(args) -> None:
    from model.train import train
    from ssdflow.config import TrainConfig

    data = ingest_raccoon(Path(args.workdir) / "records")
    runs = [("none", "none")] + ([("pretrained", args.weights)] if args.weights else [])
    for name, weights in runs:
        models = Path(args.workdir) / f"models-{name}"
        shutil.rmtree(models, ignore_errors=True)
        t0 = time.perf_counter()
        result = train(TrainConfig(data=data, models=str(models), alpha=args.alpha, image_size=args.image_size,
                                   epochs=args.epochs, batch_size=args.batch_size, backbone_weights=weights,
                                   learning_rate=args.lr, eval_every=args.epochs + 1, seed=0), verbose=0)
        minutes = (time.perf_counter() - t0) / 60
        m = result.metrics
        print(f"backbone {name:10s}: mAP@.5 {m['mAP@.5']:.3f}  mAP@[.5:.95] {m['mAP']:.3f}  "
              f"({args.epochs} epochs, {minutes:.1f} min on this CPU, {m['val_images']} val images)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["throughput", "quality"])
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ssdflow-bench-train"))
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--image-size", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (throughput)")
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30, help="epochs (quality)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weights", help="pretrained MobileNetV2 no-top weights file (quality)")
    args = ap.parse_args()
    throughput(args) if args.what == "throughput" else quality(args)


if __name__ == "__main__":
    main()

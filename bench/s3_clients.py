"""Scoring from S3: Beam's S3 filesystem with one boto3 client per call (Beam's own) against one
per process and settings (ssdflow/patches/s3_clients.py), in one run, same images, same model.

    .venv/bin/python -m bench.s3_clients --images 200

moto's S3 server on 127.0.0.1 holds N distinct JPEGs (bench/score.py's images: raccoon cycled, or
synthetic scenes); the model is bench/score.py's random-weight SSD (speed does not depend on the
weights) at --alpha / --image-size. Each mode scores the bucket into its own prefix with the
in-process DirectRunner (jsonl + parquet), three times alternating, and the best of each is kept;
prints images/s and CPU seconds per image for both, and the ratio shared/per-call.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere

import argparse
import logging
import tempfile
import time
from pathlib import Path

BUCKET = "ssdflow-bench"


def per_call_clients(on: bool) -> None:
    """Beam's behaviour (a client per call) when ``on``, ssdflow's sharing otherwise."""
    import boto3
    from apache_beam.io.aws.clients.s3 import boto3_client

    from ssdflow.patches.s3_clients import share_s3_clients

    if on:
        boto3_client.boto3 = boto3
    else:
        share_s3_clients()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--alpha", type=float, default=0.35)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--chunk-size", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ssdflow-bench-s3"))
    args = ap.parse_args()

    import beam_jobs.score  # noqa: F401  (imports first: the runs are timed as library calls)
    from beam_jobs.score import run_score
    from bench.score import make_images, make_model
    from ssdflow.config import ModelConfig, OutputFormat, ScoreConfig
    from tests.helpers import moto_s3

    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    images, source = make_images(work, args.images)
    model_dir, _, _, _ = make_model(work, ModelConfig(alpha=args.alpha, image_size=args.image_size, num_classes=1))
    print(f"data: {args.images} images from {source}; model alpha {args.alpha}, {args.image_size} px (random weights)")

    with moto_s3(bucket=BUCKET) as (endpoint, client):
        for path in sorted(images.glob("*.jpg")):
            client.put_object(Bucket=BUCKET, Key=f"images/{path.name}", Body=path.read_bytes())
        flags = [f"--s3_endpoint_url={endpoint}", "--s3_region_name=us-east-1"]
        best: dict[str, tuple[float, float]] = {}
        for r in range(args.repeats):
            for mode in ("per-call", "shared"):
                per_call_clients(mode == "per-call")
                cfg = ScoreConfig(
                    model=str(model_dir),
                    images=[f"s3://{BUCKET}/images/"],
                    out=f"s3://{BUCKET}/out-{mode}-{r}",
                    formats=[OutputFormat.jsonl, OutputFormat.parquet],
                    chunk_size=args.chunk_size,
                    beam_args=flags,
                )
                wall, cpu = time.perf_counter(), time.process_time()
                manifest = run_score(cfg)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                assert manifest.images_scored == args.images and manifest.images_failed == 0, manifest
                print(f"  run {r} {mode:8s}: {wall:6.1f} s wall, {cpu:6.1f} s CPU")
                if mode not in best or wall < best[mode][0]:
                    best[mode] = (wall, cpu)
        per_call_clients(False)
    for mode, (wall, cpu) in best.items():
        print(
            f"{mode:8s}: {args.images / wall:6.1f} img/s, {1000 * cpu / args.images:6.1f} ms CPU per image (best of {args.repeats})"
        )
    print(f"ratio shared/per-call (img/s): {best['per-call'][0] / best['shared'][0]:.2f}")


if __name__ == "__main__":
    main()

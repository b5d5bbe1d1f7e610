"""The ``ssdflow`` command: one subcommand per job. Each builds the job's pydantic config and calls
the same library function the Prefect flows call."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Optional

import typer
from pydantic import ValidationError

from ssdflow.config import MAX_EPOCHS, LabelFormat

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Prefect: no telemetry from an offline machine (it would also hold SQLite locks in the heartbeat).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


class _DropNoise(logging.Filter):
    """Beam's GCP extras log a warning at import when they are not installed; it is not ours to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


logging.getLogger().addFilter(_DropNoise())

app = typer.Typer(
    name="ssdflow",
    help="Keep an SSD object detector fresh on your own images: ingest (Beam), train (Keras), score (Beam).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _config(cls, **kwargs):
    try:
        return cls(**kwargs)
    except ValidationError as e:
        # A model-level error (no field in its location) is about the options as a whole.
        lines = [(f"--{'-'.join(str(p) for p in err['loc']).replace('_', '-')}: " if err["loc"] else "")
                 + err["msg"].removeprefix("Value error, ") for err in e.errors()]
        _fail("invalid options:\n  " + "\n  ".join(lines))


@app.command(context_settings=_PASS_THROUGH)
def ingest(
    ctx: typer.Context,
    images: str = typer.Option(..., help="Directory or glob of images: local, s3:// or gs://"),
    labels: str = typer.Option(..., help="Label file or directory of label files"),
    format: LabelFormat = typer.Option(..., "--format", case_sensitive=False, help="Label format"),
    out: str = typer.Option(..., help="Output directory URI (replaced wholly on rerun)"),
    val_fraction: float = typer.Option(0.1, help="Share of images in the val split"),
    num_shards: Optional[int] = typer.Option(None, help="Shards per split (default: automatic by size)"),
    classes: Optional[str] = typer.Option(None, help="YOLO class names: text file or data.yaml"),
    label_map: Optional[str] = typer.Option(None, help="Fixed label map (.json or .pbtxt); unknown classes are rejected"),
    max_pixels: int = typer.Option(40_000_000, help="Reject images with more pixels (decompression bombs)"),
    runner: str = typer.Option("DirectRunner", help="Beam runner; further Beam options (--project=..., --direct_num_workers=2) pass through"),
) -> None:
    """Convert images + labels into sharded TFRecords (TF OD API keys) with Apache Beam.

    Writes train-*/val-* shards, label_map.json/.pbtxt, stats.json, rejected.jsonl and, last, _SUCCESS into --out. Options ssdflow does not know are passed to Beam untouched.
    """
    from beam_jobs.ingest import IngestError, run_ingest
    from ssdflow.config import IngestConfig

    cfg = _config(IngestConfig, images=images, labels=labels, format=format, out=out, val_fraction=val_fraction,
                  num_shards=num_shards, classes=classes, label_map=label_map, max_pixels=max_pixels,
                  runner=runner, beam_args=list(ctx.args))
    try:
        stats = run_ingest(cfg)
    except IngestError as e:
        _fail(str(e))
    _print_ingest_summary(cfg.out, stats)


def _print_ingest_summary(out: str, stats: dict) -> None:
    w, r = stats["images_written"], stats["images_rejected"]
    typer.echo(f"ingest: {stats['images_in']} images in, {w['total']} written (train {w['train']}, val {w['val']}), "
               f"{r['total']} rejected, {stats['boxes_written']} boxes written")
    reasons = {k: v for k, v in r.items() if k != "total"}
    if reasons:
        typer.echo(f"  rejected by reason: {json.dumps(reasons)}")
    skipped = stats.get("files_skipped", {})
    if skipped.get("total"):
        typer.echo(f"  skipped {skipped['total']} files that are not images, e.g. {', '.join(skipped['examples'][:3])}")
    typer.echo(f"  output: {out}  (stats.json, rejected.jsonl, label_map.json, {len(stats['shards'])} shards, _SUCCESS)")


@app.command()
def train(
    data: str = typer.Option(..., help="Ingest output directory (must hold _SUCCESS)"),
    models: str = typer.Option(..., help="Models directory (registry): versions, champion.json, decisions.jsonl"),
    alpha: float = typer.Option(1.0, help="MobileNetV2 width multiplier, 0.35..1.4"),
    image_size: int = typer.Option(320, help="Square input size (multiple of 32)"),
    finest_stride: Optional[int] = typer.Option(None, help="Finest feature level: 16 (SSDLite) or 8 (FPN-lite, for objects under ~10 % of the image side); default: chosen from the training boxes' sizes"),
    epochs: Optional[int] = typer.Option(None, help="Most epochs (frozen backbone, then fine-tuning); default: as many as --time-budget allows, 20 without one"),
    time_budget: float = typer.Option(30.0, help="Minutes of fitting, validation included; 0: no limit"),
    batch_size: int = typer.Option(16, help="Global batch size"),
    backbone_weights: str = typer.Option("imagenet", help="imagenet | none | PATH to a MobileNetV2 no-top .weights.h5"),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint"),
    fresh: bool = typer.Option(False, "--fresh", help="Discard an interrupted run's checkpoints (MODELS/.train-run) and start over"),
    learning_rate: float = typer.Option(1e-3, help="Peak learning rate"),
    steps_per_epoch: Optional[int] = typer.Option(None, help="Default: one pass over the train split"),
    promotion_tolerance: float = typer.Option(0.0, help="Promote if mAP@.5 >= champion's - tolerance"),
    min_map: float = typer.Option(0.05, help="Quality floor: never promote a model below this val mAP@.5 (the first champion included)"),
    on_label_map_change: str = typer.Option("refuse", help="refuse | promote_if_only_added"),
    seed: int = typer.Option(0, help="Random seed"),
) -> None:
    """Train the SSD on an ingest output, evaluate it (COCO mAP), export a SavedModel, promote it if it beats the champion."""
    from model.train import TrainError, train as run_train
    from model.dataset import DatasetError
    from model.ssd import BackboneWeightsError
    from ssdflow.config import TrainConfig

    cfg = _config(TrainConfig, data=data, models=models, alpha=alpha, image_size=image_size, finest_stride=finest_stride,
                  epochs=epochs, time_budget=time_budget,
                  batch_size=batch_size, backbone_weights=backbone_weights, resume=resume, fresh=fresh, learning_rate=learning_rate,
                  steps_per_epoch=steps_per_epoch, promotion_tolerance=promotion_tolerance,
                  min_map=min_map, on_label_map_change=on_label_map_change, seed=seed)
    try:
        result = run_train(cfg)
    except (TrainError, DatasetError, BackboneWeightsError) as e:
        _fail(str(e))
    m, d = result.metrics, result.decision
    typer.echo(f"train: version {result.version}: mAP {m['mAP']:.4f}, mAP@.5 {m['mAP@.5']:.4f} on {m['val_images']} val images")
    typer.echo(f"  {'promoted to champion' if d['promoted'] else 'not promoted'}: {d['reason']}")
    typer.echo(f"  model: {result.model_dir}")


@app.command()
def evaluate(
    model: str = typer.Option(..., help="An exported model directory, or a models directory (its champion)"),
    data: str = typer.Option(..., help="Ingest output directory"),
    split: str = typer.Option("val", help="train | val"),
    out: Optional[str] = typer.Option(None, help="Write the metrics JSON here (default: print only)"),
) -> None:
    """COCO metrics (pycocotools) of an exported model on an ingest output's split."""
    from model.validation import score_saved_model
    from model.registry import resolve_model_dir

    try:
        model_dir = resolve_model_dir(model)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    metrics = score_saved_model(str(model_dir), data, split)
    text = json.dumps(metrics, indent=2, sort_keys=True)
    if out:
        from model.evaluate import write_metrics

        write_metrics(out, metrics)
    typer.echo(text)


@app.command()
def export(
    model: str = typer.Option(..., help="A registered model directory (MODELS/<version>)"),
    out: str = typer.Option(..., help="Directory for the new SavedModel"),
    score_threshold: Optional[float] = typer.Option(None, help="Minimum detection score (default: the model's)"),
    iou_threshold: Optional[float] = typer.Option(None, help="NMS IoU threshold (default: the model's)"),
    max_detections: Optional[int] = typer.Option(None, help="Detections per image (default: the model's)"),
) -> None:
    """Re-export a trained model as a SavedModel (bytes in, TF OD API detection keys out), e.g. with new thresholds."""
    from model.export import reexport

    reexport(model, out, score_threshold=score_threshold, iou_threshold=iou_threshold, max_detections=max_detections)
    typer.echo(f"export: SavedModel written to {out}")


@app.command(context_settings=_PASS_THROUGH)
def score(
    ctx: typer.Context,
    model: str = typer.Option(..., help="Exported model directory, or a models directory (its champion)"),
    images: list[str] = typer.Option(..., help="Directory, glob (local, s3://, gs://) or .tar archive; repeat for several"),
    out: str = typer.Option(..., help="Output directory URI"),
    formats: str = typer.Option("jsonl,parquet", help="Comma-separated: jsonl, parquet, coco"),
    score_threshold: float = typer.Option(0.3, help="Keep detections scoring at least this"),
    max_detections: int = typer.Option(100, help="Detections kept per image"),
    min_batch_size: int = typer.Option(8, help="Smallest inference batch"),
    max_batch_size: int = typer.Option(64, help="Largest inference batch"),
    chunk_size: int = typer.Option(1000, help="Images per resumable chunk (each tar archive is one chunk)"),
    chunks_per_run: int = typer.Option(16, help="Chunks per pipeline run (a crash loses at most one run's work)"),
    preview: int = typer.Option(0, help="Write this many JPEGs with boxes drawn into OUT/preview/"),
    read_threads: int = typer.Option(8, help="Files read ahead concurrently per worker (object stores need several)"),
    max_pixels: int = typer.Option(40_000_000, help="Refuse images with more pixels (decompression bombs)"),
    runner: str = typer.Option("DirectRunner", help="Beam runner; further Beam options pass through"),
) -> None:
    """Score image archives with an exported model (Beam RunInference) and write detections back to storage.

    Outputs in --out: detections-*.jsonl, detections-*.parquet (one row per detection), errors.jsonl, summary.json and, last, _SUCCESS. A rerun scores only the chunks not yet committed for that model.
    """
    from beam_jobs.score import ScoreError, run_score
    from ssdflow.config import ScoreConfig

    cfg = _config(ScoreConfig, model=model, images=images, out=out, formats=[f.strip() for f in formats.split(",") if f.strip()],
                  score_threshold=score_threshold, max_detections=max_detections, min_batch_size=min_batch_size,
                  max_batch_size=max_batch_size, chunk_size=chunk_size, chunks_per_run=chunks_per_run, preview=preview,
                  read_threads=read_threads, max_pixels=max_pixels, runner=runner, beam_args=list(ctx.args))
    try:
        m = run_score(cfg)
    except (ScoreError, FileNotFoundError) as e:
        _fail(str(e))
    typer.echo(f"score: {m['images_in']} images in, {m['images_scored']} scored, {m['images_failed']} failed, "
               f"{m['detections']} detections (model {m['model_version']}; {m['chunks_scored_now']} of {m['chunks']} chunks scored now)")
    typer.echo(f"  output: {cfg.out}  (detections-*.jsonl/.parquet, errors.jsonl, summary.json, _SUCCESS)")


@app.command()
def serve(
    home: str = typer.Option("ssdflow_home", help="Where the default (demo) data and outputs live"),
    config: Optional[str] = typer.Option(None, help="JSON/YAML with the deployments' default parameters: {nightly: ..., score: ..., ingest: ...} (ssdflow.config.ServeConfig)"),
    timezone: str = typer.Option("UTC", help="Time zone of the nightly 02:00 schedule, e.g. Europe/Berlin"),
    silence_seconds: int = typer.Option(90, min=45, max=3600, help="A run without a heartbeat (sent every 30 s) for this long is marked Crashed and rerun"),
) -> None:
    """Register and serve the Prefect deployments (nightly-retrain at 02:00, batch-score, ingest, train, demo) against PREFECT_API_URL until stopped.

    Runs send heartbeats; a run whose process died is marked Crashed and run again, at most twice (Prefect automations created here).
    """
    from flows.serve import ServeConfigError, run_serve

    try:
        run_serve(home=home, config_file=config, timezone=timezone, silence_seconds=silence_seconds)
    except ServeConfigError as e:  # raised before anything starts, with every wrong field named
        _fail(str(e))


@app.command()
def automations(
    silence_seconds: int = typer.Option(90, min=45, max=3600, help="A run without a heartbeat (sent every 30 s) for this long is marked Crashed and rerun"),
) -> None:
    """Create or update the automations that mark silent runs Crashed and rerun them (at most twice), against PREFECT_API_URL.

    `ssdflow serve` does this itself; run it once when deployments run on a work pool (deploy/prefect.yaml).
    """
    from flows.recovery import ensure_automations

    for name in ensure_automations(silence_seconds):
        typer.echo(f"automation: {name}")


@app.command()
def demo(
    workdir: str = typer.Option("demo_out", help="Where the synthetic data and every job's output go"),
    images: int = typer.Option(200, min=10, max=5000, help="Synthetic images to generate"),
    minutes: float = typer.Option(3.0, min=0.01, max=120, help="Minutes of training (the time budget)"),
    epochs: Optional[int] = typer.Option(None, min=1, max=MAX_EPOCHS, help="Most training epochs (default: the minutes decide)"),
    seed: int = typer.Option(0, help="Random seed of the synthetic dataset"),
) -> None:
    """The embedded default: make a small labelled dataset and run every job on it, locally."""
    from ssdflow.demo import run_demo

    run_demo(workdir=workdir, num_images=images, seed=seed, minutes=minutes, epochs=epochs, echo=typer.echo)


def main() -> None:  # pragma: no cover - console entry point
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # botocore's wire log prints request headers, the access key id among them: never below INFO.
    logging.getLogger("botocore.endpoint").setLevel(logging.INFO)
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

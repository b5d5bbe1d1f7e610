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

from ssdflow.config import LabelFormat

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
        lines = [f"--{'-'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']}" for err in e.errors()]
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
    typer.echo(f"  output: {out}  (stats.json, rejected.jsonl, label_map.json, {len(stats['shards'])} shards, _SUCCESS)")


@app.command()
def demo(
    workdir: str = typer.Option("demo_out", help="Where the synthetic data and every job's output go"),
    images: int = typer.Option(120, min=10, max=5000, help="Synthetic images to generate"),
    seed: int = typer.Option(0, help="Random seed of the synthetic dataset"),
) -> None:
    """The embedded default: make a small labelled dataset and run every job on it, locally."""
    from ssdflow.demo import run_demo

    run_demo(workdir=workdir, num_images=images, seed=seed, echo=typer.echo)


def main() -> None:  # pragma: no cover - console entry point
    logging.basicConfig(level=logging.WARNING)
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``ssdflow`` command: one subcommand per job. Each builds the job's pydantic config and calls
the same library function the Prefect flows call."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Literal, Optional

import typer

from ssdflow.cli_options import PASS_THROUGH, config_command, fail
from ssdflow.config import MAX_EPOCHS, IngestConfig, ScoreConfig, TrainConfig, is_tflite

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Prefect: no telemetry from an offline machine (it would also hold SQLite locks in the heartbeat).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


app = typer.Typer(
    name="ssdflow",
    help=(
        "Keep an SSD object detector fresh on your own images: ingest (Beam), train (Keras), score (Beam).\n\n"
        "Exit codes: 0 the output is complete and usable; 2 a mistake to fix (options, inputs, a server not running; "
        "one line says which); 1 a bug in ssdflow (with its traceback); 130 interrupted. --debug (anywhere on the "
        "line) shows the traceback of a mistake too."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        import ssdflow

        typer.echo(f"ssdflow {ssdflow.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit"
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show the traceback of any failure, a mistake's too (also SSDFLOW_DEBUG=1)"
    ),
) -> None:
    """Keep an SSD object detector fresh on your own images."""


def _formats(default: list) -> tuple:
    """ScoreConfig.formats as one comma-separated option, as users type it."""
    option = typer.Option(",".join(f.value for f in default), "--formats", help="Comma-separated: jsonl, parquet, coco")
    return str, option, lambda text: [f.strip() for f in text.split(",") if f.strip()]


@config_command(app, IngestConfig, beam=True)
def ingest(cfg: IngestConfig) -> None:
    """Convert images + labels into sharded TFRecords (TF OD API keys) with Apache Beam.

    Writes train-*/val-* shards, label_map.json/.pbtxt, stats.json, rejected.jsonl and, last, _SUCCESS into --out. Further Beam pipeline options (--project=..., --direct_num_workers=2) pass through to the runner; unknown ones are refused.
    """
    from beam_jobs.ingest import IngestError, run_ingest

    from ssdflow.patches import allocator

    allocator.tune_this_process()  # a process that runs this job only: a local run's driver is its shuffle service
    try:
        stats = run_ingest(cfg)
    except IngestError as e:
        fail(str(e))
    _print_ingest_summary(cfg.out, stats)


def _print_ingest_summary(out: str, stats: dict) -> None:
    w, r = stats["images_written"], stats["images_rejected"]
    test = f", test {w['test']}" if w.get("test") else ""
    typer.echo(
        f"ingest: {stats['images_in']} images in, {w['total']} written (train {w['train']}, val {w['val']}{test}), "
        f"{r['total']} rejected, {stats['boxes_written']} boxes written"
    )
    reasons = {k: v for k, v in r.items() if k != "total"}
    if reasons:
        typer.echo(f"  rejected by reason: {json.dumps(reasons)}")
    if r.get("read_error_retryable"):
        typer.echo(
            f"  {r['read_error_retryable']} images could not be read for now (throttled, timed out or a storage "
            f"server error): run the same command again to ingest them"
        )
    ignored = stats.get("label_files_ignored", {})
    if ignored.get("total"):
        by_ext = ", ".join(f"{ext or '(none)'}: {n}" for ext, n in ignored["by_extension"].items())
        typer.echo(
            f"  ignored {ignored['total']} files under --labels that are not {stats.get('format', '')} label files ({by_ext})"
        )
    if stats.get("format_hint"):
        typer.echo(f"  {stats['format_hint']}")
    skipped = stats.get("files_skipped", {})
    if skipped.get("total"):
        typer.echo(f"  skipped {skipped['total']} files that are not images, e.g. {', '.join(skipped['examples'][:3])}")
    typer.echo(
        f"  output: {out}  (stats.json, rejected.jsonl, label_map.json, {len(stats['shards'])} shards, _SUCCESS)"
    )


@config_command(app, TrainConfig, storage=True)
def train(cfg: TrainConfig) -> None:
    """Train the SSD on an ingest output, evaluate it (COCO mAP), export a SavedModel, promote it if it beats the champion.

    --data and --models may be local, s3:// or gs://; object-store options pass through in Beam's spelling (--s3_endpoint_url=URL).
    """
    from model.dataset import DatasetError
    from model.ssd import BackboneWeightsError
    from model.train import TrainError, train as run_train

    tty = sys.stdout.isatty()
    try:  # on a terminal Keras' bar; in a log one plain line per epoch
        result = run_train(cfg, verbose="auto" if tty else 0, say=typer.echo, epoch_lines=not tty)
    except (TrainError, DatasetError, BackboneWeightsError) as e:
        fail(str(e))
    m, d = result.metrics, result.decision
    typer.echo(
        f"train: version {result.version}: mAP {m['mAP']:.4f}, mAP@.5 {m['mAP@.5']:.4f} on {m['val_images']} val images"
    )
    typer.echo(f"  {'promoted to champion' if d['promoted'] else 'not promoted'}: {d['reason']}")
    typer.echo(f"  model: {result.model_dir}")


def _storage_options(ctx: typer.Context) -> None:
    """Sets the command's further arguments as object-store options (``--s3_endpoint_url=…``)."""
    from ssdflow import beam_flags, storage

    try:
        beam_flags.check_storage(ctx.args)
    except ValueError as e:
        fail(str(e))
    storage.configure(ctx.args)


@app.command(context_settings=PASS_THROUGH)
def evaluate(
    ctx: typer.Context,
    model: str = typer.Option(
        ..., help="An exported model directory, a models directory (its champion), or a .tflite file"
    ),
    data: str = typer.Option(..., help="Ingest output directory"),
    split: Literal["train", "val", "test"] = typer.Option(
        "val", help="The split to score (test: where the ingest output has one)"
    ),
    out: Optional[str] = typer.Option(None, help="Write the metrics JSON here (default: print only)"),
) -> None:
    """COCO metrics (pycocotools) of an exported model, SavedModel or TFLite, on an ingest output's split.

    --model (but a .tflite) and --data may be local, s3:// or gs://; object-store options pass through (--s3_endpoint_url=URL).
    """
    from model.dataset import DatasetError, local_records, shard_files
    from model.registry import resolve_model_dir

    _storage_options(ctx)
    if is_tflite(model) and not os.path.isfile(model):
        fail(f"--model {model}: no such file")
    try:
        data = local_records(data)
        shard_files(data, split)  # before the model loads: a split that is not there is a one-line error
    except DatasetError as e:
        fail(
            f"{e}"
            + (" (an ingest output has a test split when its images come in a test/ folder)" if split == "test" else "")
        )

    if is_tflite(model):
        from model.tflite import score_tflite

        metrics = score_tflite(model, data, split)
    else:
        from model.validation import score_saved_model

        try:
            model_dir = resolve_model_dir(model)
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))
        metrics = score_saved_model(str(model_dir), data, split)
    text = json.dumps(metrics, indent=2, sort_keys=True)
    if out:
        from model.evaluate import write_metrics

        write_metrics(out, metrics)
    typer.echo(text)


@app.command(context_settings=PASS_THROUGH)
def export(
    ctx: typer.Context,
    model: str = typer.Option(
        ..., help="A registered model directory (MODELS/<version>), or a models directory (its champion)"
    ),
    out: Optional[str] = typer.Option(
        None,
        help="Directory for the new SavedModel (--format savedmodel); "
        "a .tflite is always written beside the model's SavedModel",
    ),
    format: Literal["savedmodel", "tflite"] = typer.Option("savedmodel", "--format", help="What to write"),
    quantize: Literal["none", "float16", "int8"] = typer.Option(
        "none", help="TFLite only: none (float32), float16 weights, or int8 (needs --data)"
    ),
    data: Optional[str] = typer.Option(
        None,
        help="Ingest output: int8 calibrates on its train split; with it, "
        "the .tflite is also scored on its val split (mAP in the model card)",
    ),
    score_threshold: Optional[float] = typer.Option(None, help="Minimum detection score (default: the model's)"),
    iou_threshold: Optional[float] = typer.Option(None, help="NMS IoU threshold (default: the model's)"),
    max_detections: Optional[int] = typer.Option(None, help="Detections per image (default: the model's)"),
    box_merge_iou: Optional[float] = typer.Option(
        None,
        min=0.0,
        max=0.99,
        help=(
            "Merge each detection's box with its class's boxes above this IoU (IoU x score weighted mean, YOLOv5's "
            "merge-NMS); 0: no merging (default: the model's)"
        ),
    ),
) -> None:
    """Export a trained model: again as a SavedModel (bytes in, TF OD API detection keys out), e.g. with
    new thresholds; or as TFLite with TFLite's SSD post-processing op, metadata and label file.

    --model and --data may be local, s3:// or gs:// (a .tflite goes back beside the model there); object-store options pass through (--s3_endpoint_url=URL).
    """
    from model.registry import resolve_model_dir, resolve_model_uri

    _storage_options(ctx)

    if format == "savedmodel" and not out:
        fail("--format savedmodel needs --out (the directory for the new SavedModel)")
    if format == "tflite":
        if out or any(v is not None for v in (score_threshold, iou_threshold, max_detections, box_merge_iou)):
            fail(
                "--format tflite takes the model's own thresholds and writes beside its SavedModel: "
                "drop --out and the threshold options (re-export the SavedModel with them first)"
            )
    try:
        model = resolve_model_uri(model) if format == "tflite" else resolve_model_dir(model)
    except (FileNotFoundError, ValueError) as e:
        fail(f"--model: {e}")
    if format == "tflite":
        from model.dataset import DatasetError
        from model.tflite import TFLiteExportError, export_tflite_beside
        from ssdflow import storage

        try:
            entry = export_tflite_beside(model, quantize, data)
        except (TFLiteExportError, DatasetError) as e:
            fail(str(e))
        typer.echo(f"export: {storage.join(model, entry['file'])} ({entry['bytes'] / 1e6:.2f} MB, {quantize})")
        if "metrics" in entry:
            typer.echo(
                f"export: val mAP@.5 {entry['metrics']['mAP@.5']:.4f} (TFLite interpreter), in {entry['file']}'s model card row"
            )
        return
    from model.export import reexport

    reexport(
        model,
        out,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        box_merge_iou=box_merge_iou,
    )
    typer.echo(f"export: SavedModel written to {out}")


models_app = typer.Typer(
    help="List the registered model versions, promote one by hand, roll back to the previous champion.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")
_MODELS = typer.Option(
    ...,
    "--models",
    help="The models directory (MODELS: one subdirectory per version, champion.json): local, s3:// or gs://; object-store options such as --s3_endpoint_url=URL may follow",
)
_BY = typer.Option(None, "--by", help="Who decides (recorded in decisions.jsonl; default: the login name)")


def _who(by: Optional[str]) -> str:
    import getpass

    if by:
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        return "unknown"


def _models_root(models: str, ctx: typer.Context) -> str:
    """MODELS, once its object-store options (the command's further arguments) are set."""
    from model.registry import list_versions

    _storage_options(ctx)
    if not list_versions(models):
        fail(f"--models {models}: no registered model versions there")
    return models


@models_app.command("list", context_settings=PASS_THROUGH)
def models_list(ctx: typer.Context, models: str = _MODELS) -> None:
    """The versions, oldest first, with their val metrics and promotion decision; * marks the champion."""
    from model.registry import describe_versions

    def num(v):
        return "-" if v is None else f"{v:.3f}"

    typer.echo(f"{'':2}{'version':24} {'mAP@.5':>7} {'mAP':>7}  decision")
    for row in describe_versions(_models_root(models, ctx)):
        decided = "" if row["reason"] is None else row["reason"]
        typer.echo(
            f"{'*' if row['champion'] else ' ':2}{row['version']:24} {num(row['mAP@.5']):>7} {num(row['mAP']):>7}  {decided}"
        )


@models_app.command("show", context_settings=PASS_THROUGH)
def models_show(
    ctx: typer.Context, version: str = typer.Argument(..., help="A version, or 'champion'"), models: str = _MODELS
) -> None:
    """One version's metrics (per class too), promotion decision, label map and files, as JSON."""
    from model import registry
    from ssdflow import storage

    root = _models_root(models, ctx)
    if version == "champion":
        version = (registry.read_champion(root) or {}).get("version") or fail(f"--models {models}: no champion")
    try:
        vdir = registry.committed_dir(root, version)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    info = {
        "version": version,
        "path": vdir,
        "champion": (registry.read_champion(root) or {}).get("version") == version,
    }
    for key, name in (
        ("metrics", registry.METRICS),
        ("decision", registry.DECISION),
        ("label_map", registry.LABEL_MAP),
    ):
        uri = storage.join(vdir, name)
        info[key] = json.loads(storage.read_text(uri)) if storage.exists(uri) else None
    info["files"] = sorted({rel.split("/", 1)[0] for rel in storage.list_tree(vdir)})
    typer.echo(json.dumps(info, indent=2, sort_keys=True))


@models_app.command("promote", context_settings=PASS_THROUGH)
def models_promote(
    ctx: typer.Context,
    version: str = typer.Argument(..., help="The version to make the champion"),
    models: str = _MODELS,
    reason: str = typer.Option(..., "--reason", help="Why (recorded in decisions.jsonl)"),
    by: Optional[str] = _BY,
) -> None:
    """Make a version the champion by hand, whatever its metrics; recorded with who and why."""
    from model.registry import promote_version

    try:
        decision = promote_version(_models_root(models, ctx), version, _who(by), reason)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    typer.echo(f"champion: {decision['challenger']} (was {decision['champion'] or 'none'}); {decision['reason']}")


@models_app.command("rollback", context_settings=PASS_THROUGH)
def models_rollback(
    ctx: typer.Context,
    models: str = _MODELS,
    reason: str = typer.Option(..., "--reason", help="Why (recorded in decisions.jsonl)"),
    by: Optional[str] = _BY,
) -> None:
    """Make the previous champion the champion again (undo the last promotion); recorded with who and why."""
    from model.registry import rollback

    try:
        decision = rollback(_models_root(models, ctx), _who(by), reason)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    typer.echo(f"champion: {decision['challenger']} (rolled back from {decision['champion']}); {decision['reason']}")


@models_app.command("push", context_settings=PASS_THROUGH)
def models_push(
    ctx: typer.Context,
    models: str = _MODELS,
    to: str = typer.Option(
        ...,
        "--to",
        help="TensorFlow Serving's model base path (local, s3://, gs://): the champion goes to TO/<next integer>/",
    ),
) -> None:
    """Hand the champion to TensorFlow Serving: TO/<next integer>/ (saved_model.pb, variables/, assets/ with the label
    map); nothing when TO's highest version is the champion already. Serve it with
    `tensorflow_model_server --model_name=ssdflow --model_base_path=TO`."""
    from model.push import PushError, push

    try:
        result = push(_models_root(models, ctx), to)
    except (PushError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    if result["pushed"]:
        typer.echo(f"push: champion {result['version']} written to {result['path']}")
    else:
        typer.echo(f"push: {result['path']} holds champion {result['version']} already; nothing written")


def _score_threshold() -> tuple:
    """ScoreConfig.score_threshold as users type it: ``auto`` (the config's None) or a number."""

    def parse(text: str):
        if text.strip().lower() == "auto":
            return None
        try:
            return float(text)
        except ValueError:
            raise typer.BadParameter(
                f"{text!r} is neither 'auto' nor a number", param_hint="--score-threshold"
            ) from None

    option = typer.Option("auto", "--score-threshold", help=ScoreConfig.model_fields["score_threshold"].description)
    return str, option, parse


@config_command(
    app,
    ScoreConfig,
    beam=True,
    overrides={
        "formats": _formats(ScoreConfig.model_fields["formats"].default_factory()),
        "score_threshold": _score_threshold(),
    },
)
def score(cfg: ScoreConfig) -> None:
    """Score image archives with an exported model (a Beam job, chunk by chunk) and write detections back to storage.

    Outputs in --out: detections-*.jsonl, detections-*.parquet (one row per detection), errors.jsonl, summary.json, coco_results.json (--formats ...,coco), preview/*.jpg (--preview N) and, last, _SUCCESS. --model may be local, s3:// or gs://; a .tflite file exported beside a model (`ssdflow export --format tflite`) is run by TFLite's interpreter. A rerun scores only the chunks not yet committed for that model. Further Beam pipeline options pass through to the runner.
    """
    from beam_jobs.score import ScoreError, run_score

    try:
        m = run_score(cfg)
    except (ScoreError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo(
        f"score: {m.images_in} images in, {m.images_scored} scored, {m.images_failed} failed, "
        f"{m.detections} detections (model {m.model_version}{', TFLite' if m.runtime == 'tflite' else ''}; {m.chunks_scored_now} of {m.chunks} chunks scored now)"
    )
    if m.images_retryable:
        typer.echo(
            f"  {m.images_retryable} of the failed images could not be read for now (throttled, timed out or a "
            f"storage server error): run the same command again to score them (reason read_error_retryable in errors.jsonl)"
        )
    used = m.score_thresholds
    fallback = set(used.fallback or ())
    if used.setting == "auto":
        typer.echo(
            "  score thresholds (auto: calibrated per class on val at training time): "
            + ", ".join(
                f"{name} {t:g}" + (" (none calibrated: the fallback)" if name in fallback else "")
                for name, t in used.per_class.items()
            )
        )
    else:
        typer.echo(f"  score threshold {used.setting:g} for every class")
    typer.echo(f"  output: {cfg.out}  (detections-*.jsonl/.parquet, errors.jsonl, summary.json, _SUCCESS)")
    if m.labelling is not None:
        sel = m.labelling
        typer.echo(
            f"  labelling batch: {sel.selected} images worth labelling next in {cfg.out.rstrip('/')}/labelling/ "
            f"(images/, annotations/ as Pascal VOC, label_studio.json, reasons.csv; {sel.near_duplicates_skipped} "
            f"near-duplicates skipped). Correct the VOC files, then: ssdflow ingest --images …/labelling/images "
            f"--labels …/labelling/annotations --format voc"
        )


@app.command()
def predict(
    sources: list[str] = typer.Argument(
        ..., help="Images: files, directories (every image below) or quoted globs; local, s3://, gs://"
    ),
    model: str = typer.Option("models", help="A models directory (its champion), an exported model, or a .tflite file"),
    save: Optional[str] = typer.Option(
        None, help="Write each image with its boxes drawn here, under its source's name"
    ),
    score_threshold: Optional[float] = typer.Option(
        None,
        "--score-threshold",
        min=0.0,
        max=1.0,
        help="One minimum score for every class (default: each class's calibrated threshold)",
    ),
    max_detections: int = typer.Option(100, min=1, max=1000, help="Detections kept per image"),
) -> None:
    """Detect objects in a few images on this machine: a table of what was found and, with --save, the
    images with their boxes drawn (for an archive, use `ssdflow score`)."""
    from beam_jobs.predict import PredictError, predict as run_predict, table

    try:
        results = run_predict(sources, model, save=save, score_threshold=score_threshold, max_detections=max_detections)
    except PredictError as e:
        fail(str(e))
    for line in table(results):
        typer.echo(line)
    found = sum(len(r.get("detections", ())) for r in results)
    failed = sum("detections" not in r for r in results)
    typer.echo(
        f"predict: {len(results)} images, {found} detections"
        + (f", {failed} could not be read" if failed else "")
        + (f"; drawn in {save}" if save else "")
    )


@app.command()
def serve(
    home: str = typer.Option("ssdflow_home", help="Where the default (demo) data and outputs live"),
    config: Optional[str] = typer.Option(
        None,
        help="JSON/YAML with the deployments' default parameters: {nightly: ..., score: ..., ingest: ...} (ssdflow.config.ServeConfig)",
    ),
    timezone: str = typer.Option("UTC", help="Time zone of the nightly 02:00 schedule, e.g. Europe/Berlin"),
    silence_seconds: int = typer.Option(
        90,
        min=45,
        max=3600,
        help="A run without a heartbeat (sent every 30 s) for this long is marked Crashed and rerun",
    ),
    max_runs: Optional[int] = typer.Option(
        None,
        min=1,
        max=1000,
        help="Flow runs at once; further batch-score and ingest runs queue (default: one per core, fewer if memory is short: 2 GB each)",
    ),
) -> None:
    """Register and serve the Prefect deployments against PREFECT_API_URL until stopped: nightly-retrain (02:00),
    batch-score, ingest, train, models (promote / roll back from the UI) and demo.

    Runs send heartbeats; a run whose process died is marked Crashed and run again, at most twice (Prefect automations created here).
    """
    from flows.serve import ServeConfigError, run_serve

    try:
        run_serve(home=home, config_file=config, timezone=timezone, silence_seconds=silence_seconds, max_runs=max_runs)
    except ServeConfigError as e:  # raised before anything starts, with every wrong field named
        fail(str(e))


@app.command()
def automations(
    silence_seconds: int = typer.Option(
        90,
        min=45,
        max=3600,
        help="A run without a heartbeat (sent every 30 s) for this long is marked Crashed and rerun",
    ),
) -> None:
    """Create or update the automations that mark silent runs Crashed and rerun them (at most twice), against PREFECT_API_URL.

    `ssdflow serve` does this itself; run it once when deployments run on a work pool (deploy/prefect.yaml). Trainings
    create their own concurrency limit, one per models location (ssdflow-train-<hash>): one training at a time on each.
    """
    from flows.recovery import ensure_automations

    for name in ensure_automations(silence_seconds):
        typer.echo(f"automation: {name}")
    typer.echo("concurrency limits: one training at a time per models location (created by the first training there)")


@app.command()
def demo(
    workdir: str = typer.Option("demo_out", help="Where the synthetic data and every job's output go"),
    images: int = typer.Option(200, min=10, max=5000, help="Synthetic images to generate"),
    minutes: float = typer.Option(3.0, min=0.01, max=120, help="Minutes of training (the time budget)"),
    epochs: Optional[int] = typer.Option(
        None, min=1, max=MAX_EPOCHS, help="Most training epochs (default: the minutes decide)"
    ),
    seed: int = typer.Option(0, help="Random seed of the synthetic dataset"),
) -> None:
    """The embedded default: make a small labelled dataset and run every job on it, locally."""
    from ssdflow.demo import run_demo

    run_demo(workdir=workdir, num_images=images, seed=seed, minutes=minutes, epochs=epochs, echo=typer.echo)


def main() -> int:  # pragma: no cover - console entry point
    """The console script: exit codes and one-line mistakes as ssdflow/cli_errors.py sets them."""
    from ssdflow.cli_errors import run_cli

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # botocore's wire log prints request headers, the access key id among them: never below INFO.
    logging.getLogger("botocore.endpoint").setLevel(logging.INFO)
    return run_cli()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

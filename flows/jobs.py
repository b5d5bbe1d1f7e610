"""ssdflow's Prefect flows: thin glue over the same functions the CLI calls.

Each flow takes the job's pydantic config, so the UI renders a form with the same fields, bounds
and enum choices as the CLI's options, and Prefect refuses an invalid value when a run is created.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

from prefect import flow, get_run_logger, task
from prefect.concurrency.sync import concurrency

from flows import artifacts
from flows.recovery import Attempt
from ssdflow.config import IngestConfig, ModelsConfig, ScoreConfig, TrainConfig
from ssdflow.results import ScoreManifest

TRAIN_CONCURRENCY = "ssdflow-train"  # global concurrency limits of 1, one per models location


def train_limit(models: str) -> str:
    """The name of the global concurrency limit that keeps two trainings on ``models`` from overlapping,
    ``ssdflow-train-<hash of the location>``: trainings on two registries never wait for each other."""
    from ssdflow import roots

    location = roots.normalize(models) or models
    return f"{TRAIN_CONCURRENCY}-{hashlib.sha256(location.rstrip('/').encode()).hexdigest()[:12]}"


def ensure_train_limit(models: str) -> str:
    """Creates the training limit of ``models`` (a limit of 1) unless it exists; returns its name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = train_limit(models)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:  # another run created it in between
                pass
    return name


def input_fingerprint(cfg: IngestConfig) -> str:
    """A hash of the ingest inputs' listing (paths, sizes, modification times) and the config."""
    from apache_beam.io.filesystems import FileSystems

    from beam_jobs.patterns import file_pattern
    from ssdflow.beam_runner import pipeline_options

    pipeline_options(cfg.pipeline_flags())
    listing = []
    for pattern in (file_pattern(cfg.images), file_pattern(cfg.labels)):
        for m in FileSystems.match([pattern])[0].metadata_list:
            listing.append((m.path, m.size_in_bytes, m.last_updated_in_seconds))
    blob = json.dumps([sorted(listing), cfg.model_dump(mode="json")], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@task(name="fingerprint-inputs", retries=3, retry_delay_seconds=[2, 10, 30])
def fingerprint_inputs(cfg: IngestConfig) -> str:
    return input_fingerprint(cfg)


def _fingerprint_key(context, parameters) -> str:
    return f"ingest-{parameters['fingerprint']}"


@task(
    name="ingest",
    cache_key_fn=_fingerprint_key,
    cache_expiration=timedelta(days=30),
    retries=2,
    retry_delay_seconds=[10, 60],
    persist_result=True,
)
def ingest_task(cfg: IngestConfig, fingerprint: str) -> dict:
    """The Beam ingest job; skipped (cached) when the inputs' fingerprint is unchanged."""
    from beam_jobs.ingest import run_ingest

    get_run_logger().info(
        "ingest: %s (%s) → %s, inputs fingerprint %s", cfg.images, cfg.format.value, cfg.out, fingerprint[:12]
    )
    progress = artifacts.ProgressArtifact(f"ingest of {cfg.images}: images done of those listed")
    stats = run_ingest(cfg, on_progress=progress.from_counts)
    progress.update(100.0)
    return stats


def ingest_unless_unchanged(cfg: IngestConfig) -> dict:
    """Ingest, or reuse the cached result when the inputs are unchanged and the output is still complete."""
    from ssdflow import storage

    fingerprint = fingerprint_inputs(cfg)
    success = storage.read_success(cfg.out)
    # A cache hit must never point at a deleted output, nor at one that lacks images whose reads
    # failed for now (throttled, timed out): those are tried again.
    stale = success is None or bool(success.get("images_retryable"))
    return ingest_task.with_options(refresh_cache=stale)(cfg, fingerprint)


def after_crash(cfg: TrainConfig, attempt: int) -> tuple[TrainConfig, bool]:
    """(config, reuse_completed) for an orchestrated training, which nobody is there to answer:
    an interrupted run of the same settings and data is resumed from its last epoch checkpoint (a
    rerun after a crash, or tonight's run after last night's crashed for good); one of other
    settings or data cannot be continued and is discarded (``fresh``), where ``ssdflow train``
    would stop and ask. A rerun (``attempt`` > 0) also reuses a version the crashed run already
    committed instead of training a duplicate."""
    from model.run_record import can_resume, has_interrupted_run, run_dir_uri
    from ssdflow import storage

    storage.configure(cfg.storage_args)
    if not cfg.resume and not cfg.fresh:
        if can_resume(cfg):
            get_run_logger().info(
                "train: resuming the interrupted training of these settings and data from its last checkpoint"
            )
            cfg = cfg.model_copy(update={"resume": True})
        elif has_interrupted_run(cfg.models):
            get_run_logger().warning(
                "train: discarding an interrupted training of other settings or data in %s", run_dir_uri(cfg.models)
            )
            cfg = cfg.model_copy(update={"fresh": True})
    return cfg, attempt > 0


@task(name="train-evaluate-promote")
def train_task(cfg: TrainConfig, attempt: int = 0) -> dict:
    from flows.epoch_log import PrefectEpochLogger
    from model.train import train

    cfg, reuse_completed = after_crash(cfg, attempt)
    progress = artifacts.ProgressArtifact(f"training at most {cfg.max_epochs()} epochs on {cfg.data}")
    # A lease of 60 s (Prefect's least; renewed while the training lives): a killed training's slot
    # frees within about a minute, before its rerun (90 s of silence) asks for it.
    with concurrency(ensure_train_limit(cfg.models), occupy=1, strict=True, lease_duration=60):
        result = train(
            cfg,
            extra_callbacks=(PrefectEpochLogger(cfg.max_epochs(), progress),),
            verbose=0,
            reuse_completed=reuse_completed,
            say=get_run_logger().info,
        )
    progress.update(100.0)
    artifacts.training_metrics(result.metrics)
    artifacts.model_card(result.model_dir, result.decision)
    get_run_logger().info(
        "train: %s %s (%s)",
        result.version,
        "promoted" if result.decision["promoted"] else "not promoted",
        result.decision["reason"],
    )
    return {
        "version": result.version,
        "model_dir": result.model_dir,
        "metrics": {k: result.metrics.get(k) for k in ("mAP", "mAP@.5")},
        "decision": result.decision,
    }


@task(name="score", retries=2, retry_delay_seconds=[10, 60])
def score_task(cfg: ScoreConfig) -> ScoreManifest:
    """The Beam scoring job; a retry resumes from the committed chunks."""
    from beam_jobs.score import run_score
    from ssdflow import storage

    progress = artifacts.ProgressArtifact(f"scoring of {', '.join(cfg.images)}: files done of those listed")
    manifest = run_score(cfg, on_progress=progress.from_counts)
    progress.update(100.0)
    summary = json.loads(storage.read_text(storage.join(cfg.out, "summary.json")))
    artifacts.scoring_summary(manifest, summary, cfg.out)
    if manifest.labelling is not None:
        artifacts.labelling_batch(cfg.out, manifest.labelling)
    get_run_logger().info(
        "score: %d images in, %d scored, %d failed, %d detections",
        manifest.images_in,
        manifest.images_scored,
        manifest.images_failed,
        manifest.detections,
    )
    if manifest.images_retryable:  # the next run (or a retry of this one) scores their chunks again
        get_run_logger().warning(
            "score: %d images could not be read for now (read_error_retryable in errors.jsonl)",
            manifest.images_retryable,
        )
    return manifest


@flow(name="ingest", log_prints=True)
def ingest_flow(config: IngestConfig, attempt: Attempt = 0) -> dict:
    """Images + labels → sharded TFRecords (Apache Beam); skipped when the inputs did not change."""
    stats = ingest_unless_unchanged(config)
    artifacts.ingest_stats(stats, config.out)
    return stats


@flow(name="train", log_prints=True)
def train_flow(config: TrainConfig, attempt: Attempt = 0) -> dict:
    """Train → evaluate (COCO mAP) → export → promote if the challenger beats the champion."""
    return train_task(config, attempt)


@flow(name="batch-score", log_prints=True)
def score_flow(config: ScoreConfig, attempt: Attempt = 0) -> dict:
    """Score image archives with the champion (or a given model); detections back to storage."""
    return score_task(config)


@flow(name="models", log_prints=True)
def models_flow(config: ModelsConfig) -> dict:
    """List the model versions, promote one by hand, or roll back to the previous champion (what
    ``ssdflow models`` does), recorded with who and why; the versions after it as a table."""
    from prefect.runtime import flow_run

    from model import registry
    from ssdflow import storage

    storage.configure(config.storage_args)
    decision = None
    by = config.by or f"prefect flow run {flow_run.get_name()}"
    if config.action == "promote":
        decision = registry.promote_version(config.models, config.version, by, config.reason)
    elif config.action == "rollback":
        decision = registry.rollback(config.models, by, config.reason)
    if decision is not None:
        get_run_logger().info(
            "models: champion %s (was %s); %s", decision["challenger"], decision["champion"], decision["reason"]
        )
    versions = registry.describe_versions(config.models)
    artifacts.model_versions(versions, config.models)
    return {
        "champion": (registry.read_champion(config.models) or {}).get("version"),
        "decision": decision,
        "versions": versions,
    }

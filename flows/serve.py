"""``ssdflow serve``: registers ssdflow's deployments (with their schedules) and serves them until stopped.

Deployments:

* ``nightly-retrain`` — cron ``0 2 * * *`` in the configured time zone;
* ``batch-score`` — no schedule: run it from the UI (Run → Custom run) or the API;
* ``ingest``, ``train``, ``demo`` — on demand;
* ``models`` — list the versions, promote one by hand, roll back (as ``ssdflow models``).

Every run sends heartbeats; runs that fall silent are marked Crashed and rerun (a bounded number
of times) by two automations that serve keeps up to date (flows/recovery.py).

Default parameters come from a JSON/YAML file (``--config``) or, without one, from the embedded
demo: a synthetic dataset under ``--home`` that serve creates on first start, so every deployment
runs out of the box.
"""

from __future__ import annotations

import json
import logging
import os

import yaml
from pydantic import ValidationError
from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

from flows.jobs import ensure_train_limit, ingest_flow, models_flow, score_flow, train_flow
from flows import recovery
from flows.nightly import demo_flow, nightly_flow
from ssdflow.config import DemoConfig, IngestConfig, ModelsConfig, NightlyConfig, ScoreConfig, ServeConfig

log = logging.getLogger(__name__)

NIGHTLY_CRON = "0 2 * * *"


class ServeConfigError(ValueError):
    """``serve --config``: a file that cannot be read or does not fit ``ServeConfig``; says where."""


def read_serve_config(path: str) -> ServeConfig:
    """The file as a ServeConfig, or ServeConfigError naming each wrong field by its path (nightly.train.alpha)."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f) if path.endswith((".yaml", ".yml")) else json.load(f)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ServeConfigError(f"--config {path}: cannot read it: {e}") from None
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in e.errors()
        )
        raise ServeConfigError(
            f"--config {path}: {problems} (fields: ssdflow.config.ServeConfig; README, Orchestration)"
        ) from None


def default_parameters(home: str, config_file: str | None = None) -> dict:
    """Parameters for each deployment: from ``config_file`` if given, else the demo layout under ``home``."""
    if config_file:
        cfg = read_serve_config(config_file)
        return {
            "nightly": cfg.nightly,
            "score": cfg.score,
            "ingest": cfg.ingest or cfg.nightly.ingest,
            "train": cfg.nightly.train_config(),
        }
    home = os.path.abspath(home)
    from ssdflow.demo import demo_train_settings, make_demo_data

    if not os.path.isdir(os.path.join(home, "data", "images")):
        make_demo_data(home, 200, 0)
    ingest = IngestConfig(
        images=os.path.join(home, "data", "images"),
        labels=os.path.join(home, "data", "annotations"),
        format="voc",
        out=os.path.join(home, "ingest"),
    )
    small = demo_train_settings()  # the demo's recipe: a few minutes from scratch, no download
    nightly = NightlyConfig(ingest=ingest, models=os.path.join(home, "models"), train=small)
    score = ScoreConfig(model=nightly.models, images=[ingest.images], out=os.path.join(home, "scored"))
    return {"nightly": nightly, "score": score, "ingest": ingest, "train": nightly.train_config()}


# Memory one concurrent run may take, sized for the larger of a training at alpha 1.0 / 320 px and
# a batch-score run so that any mix fits (the figures: docs/benchmarks.md, "Forty batch-score runs at once").
RUN_MEMORY_BYTES = 2 * 1024**3


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be used without swapping); total memory elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_run_limit() -> int:
    """Concurrent flow runs this machine takes: one per usable core, fewer when memory is short."""
    from ssdflow.beam_runner import usable_cores

    return max(1, min(usable_cores(), available_memory_bytes() // RUN_MEMORY_BYTES))


def _queued(limit: int) -> ConcurrencyLimitConfig:
    """A deployment concurrency limit whose extra runs wait (AwaitingConcurrencySlot in the UI), not fail."""
    return ConcurrencyLimitConfig(limit=limit, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def build_deployments(params: dict, timezone: str = "UTC", home: str = "ssdflow_home", max_runs: int = 1) -> list:
    """The RunnerDeployments, with their parameters as pydantic models (rendered as forms in the UI).

    ``max_runs``: how many runs of batch-score, and of ingest, may run at once; the rest queue.
    Nightly retraining and training run one at a time.
    """
    dump = lambda m: m.model_dump(mode="json")  # noqa: E731
    return [
        nightly_flow.to_deployment(
            name="nightly-retrain",
            schedules=[Cron(NIGHTLY_CRON, timezone=timezone)],
            parameters={"config": dump(params["nightly"])},
            concurrency_limit=1,
            description="Ingest → train → evaluate → promote → score, every night",
            tags=["ssdflow"],
        ),
        score_flow.to_deployment(
            name="batch-score",
            parameters={"config": dump(params["score"])},
            concurrency_limit=_queued(max_runs),
            description="Score an image archive with the champion",
            tags=["ssdflow"],
        ),
        ingest_flow.to_deployment(
            name="ingest",
            parameters={"config": dump(params["ingest"])},
            concurrency_limit=_queued(max_runs),
            tags=["ssdflow"],
        ),
        train_flow.to_deployment(
            name="train", parameters={"config": dump(params["train"])}, concurrency_limit=1, tags=["ssdflow"]
        ),
        models_flow.to_deployment(
            name="models",
            parameters={
                "config": dump(
                    ModelsConfig(models=params["nightly"].models, storage_args=params["nightly"].storage_args())
                )
            },
            concurrency_limit=1,
            description="List model versions, promote one by hand, roll back",
            tags=["ssdflow"],
        ),
        demo_flow.to_deployment(
            name="demo",
            parameters={"config": dump(DemoConfig(workdir=os.path.join(os.path.abspath(home), "demo")))},
            tags=["ssdflow"],
        ),
    ]


def run_serve(
    home: str = "ssdflow_home",
    config_file: str | None = None,
    timezone: str = "UTC",
    silence_seconds: int = recovery.SILENCE_SECONDS,
    max_runs: int | None = None,
) -> None:
    """Registers and serves every deployment until interrupted, with crash detection and reruns.

    The parameters come first: a wrong ``config_file`` raises ServeConfigError before anything
    is created on the server. At most ``max_runs`` flow runs at once (default: ``default_run_limit``);
    further batch-score and ingest runs queue on the server.
    """
    params = default_parameters(home, config_file)
    max_runs = max_runs or default_run_limit()
    log.info("serve: at most %d concurrent runs; more batch-score or ingest runs queue", max_runs)
    if not os.environ.get("PREFECT_API_URL"):
        log.warning(
            "PREFECT_API_URL is not set: deployments go to a temporary local server (start one with "
            "`prefect server start --host 127.0.0.1 --port 4200`)"
        )
    os.environ.update(recovery.heartbeat_env())  # inherited by every flow-run process serve starts
    ensure_train_limit(
        params["nightly"].models
    )  # shown in the UI before the first night; trainings create theirs anyway
    recovery.ensure_automations(silence_seconds)
    serve(*build_deployments(params, timezone, home, max_runs), limit=max_runs)

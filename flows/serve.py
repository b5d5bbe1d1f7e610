"""``ssdflow serve``: registers ssdflow's deployments (with their schedules) and serves them until stopped.

Deployments:

* ``nightly-retrain`` — cron ``0 2 * * *`` in the configured time zone;
* ``batch-score`` — no schedule: run it from the UI (Run → Custom run) or the API;
* ``ingest``, ``train``, ``demo`` — on demand.

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
from prefect.schedules import Cron

from flows.jobs import TRAIN_CONCURRENCY, ingest_flow, score_flow, train_flow
from flows import recovery
from flows.nightly import demo_flow, nightly_flow
from ssdflow.config import DemoConfig, IngestConfig, NightlyConfig, ScoreConfig, ServeConfig

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
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in e.errors())
        raise ServeConfigError(f"--config {path}: {problems} (fields: ssdflow.config.ServeConfig; README, Orchestration)") from None


def default_parameters(home: str, config_file: str | None = None) -> dict:
    """Parameters for each deployment: from ``config_file`` if given, else the demo layout under ``home``."""
    if config_file:
        cfg = read_serve_config(config_file)
        return {"nightly": cfg.nightly, "score": cfg.score, "ingest": cfg.ingest or cfg.nightly.ingest,
                "train": cfg.nightly.train_config()}
    home = os.path.abspath(home)
    from ssdflow.demo import demo_train_settings, make_demo_data

    if not os.path.isdir(os.path.join(home, "data", "images")):
        make_demo_data(home, 200, 0)
    ingest = IngestConfig(images=os.path.join(home, "data", "images"), labels=os.path.join(home, "data", "annotations"),
                          format="voc", out=os.path.join(home, "ingest"))
    small = demo_train_settings()  # the demo's recipe: a few minutes from scratch, no download
    nightly = NightlyConfig(ingest=ingest, models=os.path.join(home, "models"), train=small)
    score = ScoreConfig(model=nightly.models, images=[ingest.images], out=os.path.join(home, "scored"))
    return {"nightly": nightly, "score": score, "ingest": ingest, "train": nightly.train_config()}


def build_deployments(params: dict, timezone: str = "UTC", home: str = "ssdflow_home") -> list:
    """The RunnerDeployments, with their parameters as pydantic models (rendered as forms in the UI)."""
    dump = lambda m: m.model_dump(mode="json")  # noqa: E731
    return [
        nightly_flow.to_deployment(name="nightly-retrain", schedules=[Cron(NIGHTLY_CRON, timezone=timezone)],
                                   parameters={"config": dump(params["nightly"])}, concurrency_limit=1,
                                   description="Ingest → train → evaluate → promote → score, every night", tags=["ssdflow"]),
        score_flow.to_deployment(name="batch-score", parameters={"config": dump(params["score"])},
                                 description="Score an image archive with the champion", tags=["ssdflow"]),
        ingest_flow.to_deployment(name="ingest", parameters={"config": dump(params["ingest"])}, tags=["ssdflow"]),
        train_flow.to_deployment(name="train", parameters={"config": dump(params["train"])}, concurrency_limit=1, tags=["ssdflow"]),
        demo_flow.to_deployment(name="demo", parameters={"config": dump(DemoConfig(workdir=os.path.join(os.path.abspath(home), "demo")))},
                                tags=["ssdflow"]),
    ]


def ensure_concurrency_limit() -> None:
    """The global limit that keeps two trainings from overlapping (created once; idempotent)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(TRAIN_CONCURRENCY)
        except Exception:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=TRAIN_CONCURRENCY, limit=1))


def run_serve(home: str = "ssdflow_home", config_file: str | None = None, timezone: str = "UTC",
              silence_seconds: int = recovery.SILENCE_SECONDS) -> None:
    """Registers and serves every deployment until interrupted, with crash detection and reruns.

    The parameters come first: a wrong ``config_file`` raises ServeConfigError before anything
    is created on the server.
    """
    params = default_parameters(home, config_file)
    if not os.environ.get("PREFECT_API_URL"):
        log.warning("PREFECT_API_URL is not set: deployments go to a temporary local server (start one with "
                    "`prefect server start --host 127.0.0.1 --port 4200`)")
    os.environ.update(recovery.heartbeat_env())  # inherited by every flow-run process serve starts
    ensure_concurrency_limit()
    recovery.ensure_automations(silence_seconds)
    serve(*build_deployments(params, timezone, home))

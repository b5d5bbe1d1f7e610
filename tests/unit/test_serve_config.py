"""`ssdflow serve --config`: a documented schema, and every wrong field named instead of a bare KeyError."""

from __future__ import annotations

import json

import pytest
import yaml

from flows.serve import ServeConfigError, default_parameters, read_serve_config

INGEST = {"images": "/data/images", "labels": "/data/labels", "format": "voc", "out": "/data/records"}
GOOD = {
    "nightly": {"ingest": INGEST, "models": "/models", "train": {"alpha": 0.35, "image_size": 128}},
    "score": {"model": "/models", "images": ["/archive"], "out": "/scored"},
}


def test_a_valid_file_sets_every_deployment(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    params = default_parameters("unused-home", str(path))
    assert params["ingest"].out == "/data/records"  # the nightly's ingest by default
    assert params["train"].data == "/data/records" and params["train"].alpha == 0.35
    assert params["score"].images == ["/archive"]


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"score": GOOD["score"]}, "nightly: Field required"),
        (
            {**GOOD, "nightly": {**GOOD["nightly"], "train": {"alpha": 5}}},
            "nightly.train.alpha: Input should be less than or equal to 1.4",
        ),
        ({**GOOD, "scoring": {}}, "scoring: Extra inputs are not permitted"),
        (
            {**GOOD, "score": {**GOOD["score"], "beam_args": ["--direct_num_worker=2"]}},
            "did you mean --direct_num_workers?",
        ),
    ],
)
def test_wrong_fields_are_named_by_path(tmp_path, data, expected):
    path = tmp_path / "serve.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ServeConfigError, match="--config .*serve.json: ") as e:
        read_serve_config(str(path))
    assert expected in str(e.value)


def test_unreadable_file(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("nightly: [unclosed")
    with pytest.raises(ServeConfigError, match="cannot read it"):
        read_serve_config(str(path))
    with pytest.raises(ServeConfigError, match="cannot read it"):
        read_serve_config(str(tmp_path / "missing.json"))


def test_serve_refuses_a_wrong_file_with_exit_2_before_starting(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ssdflow.cli import app

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens: it must not get that far
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"score": GOOD["score"]}))
    result = CliRunner().invoke(app, ["serve", "--config", str(path), "--home", str(tmp_path / "home")])
    assert result.exit_code == 2, result.output
    assert "nightly: Field required" in result.output
    assert not (tmp_path / "home").exists()


def test_scoring_and_ingest_runs_queue_beyond_the_run_limit(tmp_path):
    """Bounded load: batch-score and ingest deployments take at most ``max_runs`` runs at once, the rest
    wait on the server (ENQUEUE: AwaitingConcurrencySlot in the UI); nightly and train one at a time."""
    from flows.serve import build_deployments

    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    deployments = {d.name: d for d in build_deployments(default_parameters("unused-home", str(path)), max_runs=3)}
    for name in ("batch-score", "ingest"):
        d = deployments[name]
        assert (d.concurrency_limit, d.concurrency_options.collision_strategy.value) == (3, "ENQUEUE"), name
    assert deployments["nightly-retrain"].concurrency_limit == 1 and deployments["train"].concurrency_limit == 1
    assert deployments["models"].concurrency_limit == 1
    assert deployments["models"].parameters["config"] == {
        "models": GOOD["nightly"]["models"],
        "action": "list",
        "version": None,
        "reason": None,
        "by": None,
        "storage_args": [],
    }


@pytest.mark.parametrize(
    "config, problem",
    [
        ({"action": "promote", "version": "v1"}, "needs a reason"),
        ({"action": "rollback", "reason": "  "}, "needs a reason"),
        ({"action": "promote", "reason": "better"}, "needs the version"),
        ({"action": "list", "version": "v1"}, "version is for promote"),
        ({"action": "delete", "reason": "x"}, "action"),
    ],
)
def test_the_models_deployment_refuses_an_incomplete_decision(config, problem):
    from pydantic import ValidationError

    from ssdflow.config import ModelsConfig

    with pytest.raises(ValidationError, match=problem):
        ModelsConfig(models="/m", **config)
    assert ModelsConfig(models="/m", action="rollback", reason="false alarms").by is None


@pytest.mark.parametrize("cores, memory_gb, expected", [(4, 64, 4), (8, 3, 1), (8, 9, 4), (1, 64, 1), (2, 0.5, 1)])
def test_the_default_run_limit_follows_cores_and_memory(monkeypatch, cores, memory_gb, expected):
    from flows import serve
    from ssdflow import beam_runner

    monkeypatch.setattr(beam_runner, "usable_cores", lambda: cores)
    monkeypatch.setattr(serve, "available_memory_bytes", lambda: int(memory_gb * 1024**3))
    assert serve.default_run_limit() == expected

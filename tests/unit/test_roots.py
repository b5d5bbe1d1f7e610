"""Only where it belongs: SSDFLOW_ALLOWED_ROOTS confines every location of the job configs, in the
JSON schema a Prefect server checks when a run is created and again, symlinks resolved, where it runs."""

from __future__ import annotations

import os

import jsonschema
import pytest
from pydantic import ValidationError

from ssdflow.config import DemoConfig, IngestConfig, NightlyConfig, ScoreConfig, TrainConfig
from ssdflow.roots import ENV


@pytest.fixture
def confined(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    monkeypatch.setenv(ENV, f"{data}, s3://bucket/ssdflow")
    return data


def test_unset_means_unrestricted(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert ScoreConfig(model="/anywhere", images=["/etc"], out="/tmp/x").out == "/tmp/x"
    assert "pattern" not in ScoreConfig.model_json_schema()["properties"]["out"]


def test_locations_under_the_roots_pass(confined):
    cfg = ScoreConfig(
        model=str(confined / "models"),
        images=[str(confined / "archive"), "s3://bucket/ssdflow/a/*.jpg"],
        out="s3://bucket/ssdflow/scored",
    )
    assert cfg.images[1] == "s3://bucket/ssdflow/a/*.jpg"
    TrainConfig(data=str(confined / "records"), models=str(confined / "models"))
    DemoConfig(workdir=str(confined / "demo"))


@pytest.mark.parametrize(
    "field, value",
    [
        ("out", "/etc/cron.d"),
        ("out", "{data}/../elsewhere"),  # .. leaves the root
        ("out", "s3://bucket/ssdflow-other/x"),  # a sibling prefix is not under the root
        ("out", "s3://bucket/ssdflow/../secrets"),
        ("out", "s3://other/../bucket/ssdflow/x"),  # S3 keys do not collapse "..": this is bucket "other"
        ("out", "s3://bucket/ssdflow//x"),
        ("images", ["{data}/archive", "/home"]),
        ("model", "/"),
    ],
)
def test_locations_outside_are_refused_naming_the_field(confined, field, value):
    good = {"model": str(confined / "models"), "images": [str(confined / "archive")], "out": str(confined / "scored")}
    value = [v.format(data=confined) for v in value] if isinstance(value, list) else value.format(data=confined)
    with pytest.raises(ValidationError, match="outside the allowed roots") as e:
        ScoreConfig(**{**good, field: value})
    assert e.value.errors()[0]["loc"][0] == field


def test_a_symlink_out_of_the_root_is_refused(confined, tmp_path):
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", confined / "link")
    with pytest.raises(ValidationError, match="outside the allowed roots"):
        IngestConfig(
            images=str(confined / "link" / "*.jpg"),
            labels=str(confined / "labels"),
            format="voc",
            out=str(confined / "r"),
        )


def test_the_json_schema_refuses_what_the_server_must_refuse(confined):
    """What Prefect registers with a deployment: the roots as a pattern on every location."""
    schema = NightlyConfig.model_json_schema()
    good = {
        "ingest": {"images": f"{confined}/in", "labels": f"{confined}/lab", "format": "voc", "out": f"{confined}/rec"},
        "models": f"{confined}/models",
        "score_images": [f"{confined}/archive"],
        "score_out": f"{confined}/scored",
    }
    jsonschema.validate(good, schema)
    for bad in (
        {**good, "score_out": "/etc"},
        {**good, "score_images": ["/root"]},
        {**good, "models": f"{confined}/../x"},
        {**good, "ingest": {**good["ingest"], "out": "/var/tmp/x"}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_a_weights_file_outside_the_roots_is_refused(confined):
    with pytest.raises(ValidationError, match="outside the allowed roots") as e:
        TrainConfig(data=str(confined / "r"), models=str(confined / "models"), backbone_weights="/etc/passwd")
    assert e.value.errors()[0]["loc"] == ("backbone_weights",)
    assert TrainConfig(data=str(confined / "r"), models=str(confined / "models"), backbone_weights="none")


def test_scoring_never_writes_into_the_models_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    models = tmp_path / "models"
    version = models / "20261125T143012Z-3fa2"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    for model in (
        models,
        version,
        version / "model_int8.tflite",
    ):  # a models directory, one of its versions, a version's .tflite
        with pytest.raises(ValidationError, match="inside the models directory"):
            ScoreConfig(model=str(model), images=["/a"], out=str(models / "scored"))
    with pytest.raises(ValidationError, match="inside the models directory"):
        ScoreConfig(model="s3://b/models/20261125T143012Z-3fa2", images=["/a"], out="s3://b/models/x")
    with pytest.raises(ValidationError, match="inside the models directory"):
        ScoreConfig(model="s3://b/models/20261125T143012Z-3fa2/model.tflite", images=["/a"], out="s3://b/models/x")
    with pytest.raises(ValidationError, match="inside the models directory"):
        NightlyConfig(
            ingest={"images": "/i", "labels": "/l", "format": "voc", "out": "/r"},
            models=str(models),
            score_images=["/a"],
            score_out=str(models / "out"),
        )
    assert ScoreConfig(model=str(version), images=["/a"], out=str(tmp_path / "scored"))


def test_a_relative_root_is_refused(monkeypatch):
    monkeypatch.setenv(ENV, "data")
    with pytest.raises(ValueError, match="not an absolute path"):
        ScoreConfig(model="/m", images=["/a"], out="/o")


def test_paths_through_a_symlinked_root_pass_as_typed(tmp_path, monkeypatch):
    """The server sees paths as users type them: a root that is a symlink matches in both spellings."""
    (tmp_path / "mount").mkdir()
    os.symlink(tmp_path / "mount", tmp_path / "data")
    monkeypatch.setenv(ENV, str(tmp_path / "data"))
    schema = ScoreConfig.model_json_schema()
    for spelling in (tmp_path / "data", tmp_path / "mount"):
        config = {"model": f"{spelling}/models", "images": [f"{spelling}/a"], "out": f"{spelling}/scored"}
        jsonschema.validate(config, schema)
        ScoreConfig(**config)


def test_an_exported_model_outside_a_registry_may_be_scored_beside_it(tmp_path, monkeypatch):
    """`ssdflow export --out work/model` then `score --model work/model --out work/out`: work is no registry."""
    monkeypatch.delenv(ENV, raising=False)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "saved_model.pb").write_bytes(b"")
    assert ScoreConfig(model=str(tmp_path / "model"), images=["/a"], out=str(tmp_path / "out"))
    (tmp_path / "champion.json").write_text("{}")  # now tmp_path is a registry and model one of its versions
    with pytest.raises(ValidationError, match="inside the models directory"):
        ScoreConfig(model=str(tmp_path / "model"), images=["/a"], out=str(tmp_path / "out"))


def test_a_tflite_file_is_recognized_in_any_case_by_evaluate_score_and_the_models_rule(tmp_path):
    from typer.testing import CliRunner

    from beam_jobs.score.model_ref import resolve_model
    from ssdflow.cli import app
    from ssdflow.config import is_tflite, models_dir_of

    missing = tmp_path / "models" / "20261125T143012Z-3fa2" / "MODEL_INT8.TFLITE"
    assert is_tflite(str(missing)) and not is_tflite(str(missing.parent))
    assert models_dir_of(str(missing)) == models_dir_of(str(missing.parent))
    result = CliRunner().invoke(app, ["evaluate", "--model", str(missing), "--data", str(tmp_path)])
    assert result.exit_code != 0 and "no such file" in result.output  # not "not a model directory"
    with pytest.raises(FileNotFoundError, match="no such .tflite file"):
        resolve_model(str(missing))

"""The CLI's job options are generated from the pydantic configs (ssdflow/cli_options.py): every
field is an option with its default, values reach the config, bounds are the config's."""

from __future__ import annotations

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from ssdflow.cli import app
from ssdflow.cli_options import config_command, option_name
from ssdflow.config import IngestConfig, ScoreConfig, TrainConfig

JOBS = {"ingest": IngestConfig, "train": TrainConfig, "score": ScoreConfig}


@pytest.mark.parametrize("command", sorted(JOBS))
def test_every_config_field_is_an_option_of_its_command(command):
    options = {opt for param in get_command(app).commands[command].params for opt in param.opts}
    passed_through = {"beam_args", "storage_args"}  # the further arguments, not an option of their own
    missing = [
        option_name(f) for f in JOBS[command].model_fields if f not in passed_through and option_name(f) not in options
    ]
    assert not missing, f"ssdflow {command} lacks {missing}"


def _capture(cls, argv, **kwargs):
    """Runs the generated command of ``cls`` on ``argv``; returns (exit code, output, the config it built)."""
    probe, got = typer.Typer(), []
    config_command(probe, cls, name="job", **kwargs)(got.append)
    probe.command("other")(lambda: None)  # two commands, so the first argv word selects one, as in ssdflow
    result = CliRunner().invoke(probe, ["job", *argv])
    return result.exit_code, result.output, got[0] if got else None


def test_values_reach_the_config_with_the_fields_types():
    code, output, cfg = _capture(
        TrainConfig,
        [
            "--data",
            "/d",
            "--models",
            "/m",
            "--fine-tune-fraction",
            "0.3",
            "--precision",
            "mixed_bfloat16",
            "--no-augment",
            "--finest-stride",
            "8",
            "--min-scale",
            "0.05",
            "--fresh",
            "--classification-loss",
            "softmax_hnm",
            "--eval-every",
            "2",
        ],
    )
    assert code == 0, output
    assert cfg == TrainConfig(
        data="/d",
        models="/m",
        fine_tune_fraction=0.3,
        precision="mixed_bfloat16",
        augment=False,
        finest_stride=8,
        min_scale=0.05,
        fresh=True,
        classification_loss="softmax_hnm",
        eval_every=2,
    )
    assert cfg.finest_stride == 8 and isinstance(cfg.finest_stride, int)


def test_defaults_are_the_configs_defaults():
    code, output, cfg = _capture(TrainConfig, ["--data", "/d", "--models", "/m"])
    assert code == 0, output
    assert cfg == TrainConfig(data="/d", models="/m")
    code, output, cfg = _capture(
        IngestConfig, ["--images", "/i", "--labels", "/l", "--format", "VOC", "--out", "/o"], beam=True
    )
    assert code == 0, output
    assert cfg == IngestConfig(images="/i", labels="/l", format="voc", out="/o")


def test_object_store_options_pass_through_to_storage_args_and_others_are_refused():
    code, output, cfg = _capture(
        TrainConfig,
        [
            "--data",
            "s3://b/records",
            "--models",
            "s3://b/models",
            "--s3_endpoint_url=http://127.0.0.1:9000",
            "--s3_region_name",
            "eu-west-1",
        ],
        storage=True,
    )
    assert code == 0, output
    assert cfg.storage_args == ["--s3_endpoint_url=http://127.0.0.1:9000", "--s3_region_name", "eu-west-1"]
    code, output, cfg = _capture(
        TrainConfig, ["--data", "/d", "--models", "/m", "--s3_endpoint_uri=http://x"], storage=True
    )
    assert code == 2 and cfg is None
    assert "unknown option --s3_endpoint_uri (did you mean --s3_endpoint_url?)" in output
    code, output, cfg = _capture(
        TrainConfig, ["--data", "/d", "--models", "/m", "--direct_num_workers=2"], storage=True
    )
    assert code == 2 and "only object-store options" in output


def test_a_night_carries_its_ingest_s_object_store_options_to_training():
    from ssdflow.config import NightlyConfig

    night = NightlyConfig(
        ingest=IngestConfig(
            images="s3://b/i",
            labels="s3://b/l",
            format="voc",
            out="s3://b/r",
            beam_args=["--s3_endpoint_url", "http://127.0.0.1:9000", "--direct_num_workers=2"],
        ),
        models="s3://b/models",
    )
    assert night.train_config().storage_args == ["--s3_endpoint_url", "http://127.0.0.1:9000"]


def test_a_value_out_of_the_configs_bounds_is_refused_naming_the_option():
    code, output, cfg = _capture(TrainConfig, ["--data", "/d", "--models", "/m", "--fine-tune-fraction", "1.5"])
    assert code == 2 and cfg is None
    assert "--fine-tune-fraction" in output and "less than or equal to 1" in output
    code, output, cfg = _capture(TrainConfig, ["--data", "/d", "--models", "/m", "--finest-stride", "4"])
    assert code == 2 and cfg is None and "--finest-stride" in output


def test_score_takes_repeated_images_and_comma_separated_formats():
    result = CliRunner().invoke(app, ["score", "--help"])
    assert "--formats" in result.output
    from ssdflow.cli import _formats

    code, output, cfg = _capture(
        ScoreConfig,
        [
            "--model",
            "/m",
            "--images",
            "/a",
            "--images",
            "s3://b/c",
            "--out",
            "/o",
            "--formats",
            "jsonl, coco",
            "--score-threshold",
            "0.5",
        ],
        beam=True,
        overrides={"formats": _formats(ScoreConfig.model_fields["formats"].default_factory())},
    )
    assert code == 0, output
    assert (
        cfg.images == ["/a", "s3://b/c"]
        and [f.value for f in cfg.formats] == ["jsonl", "coco"]
        and cfg.score_threshold == 0.5
    )


def test_batch_norm_momentum_follows_how_the_backbone_starts():
    base = dict(data="d", models="m")
    assert TrainConfig(**base, backbone_weights="none").model(1).bn_momentum == 0.9
    assert TrainConfig(**base, backbone_weights="imagenet").model(1).bn_momentum == 0.997
    assert (
        TrainConfig(**base, backbone_weights="none", bn_momentum=0.99).model(1).bn_momentum == 0.99
    )  # a set value wins


def test_peak_learning_rate_follows_how_the_backbone_starts():
    base = dict(data="d", models="m")
    assert TrainConfig(**base, backbone_weights="none").peak_learning_rate() == 1e-3
    assert TrainConfig(**base, backbone_weights="imagenet").peak_learning_rate() == 3e-3
    assert (
        TrainConfig(**base, backbone_weights="none", learning_rate=5e-4).peak_learning_rate() == 5e-4
    )  # a set value wins
    assert _capture(TrainConfig, ["--data", "d", "--models", "m", "--learning-rate", "2e-3"])[2].learning_rate == 2e-3


def test_score_threshold_is_auto_by_default_or_one_number():
    from ssdflow.cli import _score_threshold

    def run(*extra):
        return _capture(
            ScoreConfig,
            ["--model", "/m", "--images", "/a", "--out", "/o", *extra],
            beam=True,
            overrides={"score_threshold": _score_threshold()},
        )

    assert run()[2].score_threshold is None  # auto: the model's calibrated per-class thresholds
    assert run("--score-threshold", "AUTO")[2].score_threshold is None
    assert run("--score-threshold", "0.25")[2].score_threshold == 0.25
    code, output, cfg = run("--score-threshold", "high")
    assert code == 2 and cfg is None and "--score-threshold" in output
    code, output, cfg = run("--score-threshold", "1.5")
    assert code == 2 and cfg is None and "--score-threshold" in output

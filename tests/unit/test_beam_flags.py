"""Pass-through Beam arguments: a misspelt option fails with a suggestion instead of vanishing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ssdflow.config import IngestConfig, ScoreConfig

INGEST = dict(images="a", labels="b", format="voc", out="c")


def _error(cls, **kwargs) -> str:
    with pytest.raises(ValidationError) as e:
        cls(**kwargs)
    return e.value.errors()[0]["msg"]


def test_beam_options_pass():
    cfg = IngestConfig(**INGEST, beam_args=["--direct_num_workers=2", "--direct_running_mode", "multi_processing"])
    assert cfg.pipeline_flags()[0] == "--runner=DirectRunner"


def test_misspelt_job_option_is_refused_with_its_name_on_any_runner():
    for runner in ("DirectRunner", "FlinkRunner"):
        msg = _error(IngestConfig, **INGEST, runner=runner, beam_args=["--val-fracton", "0.5"])
        assert "unknown option --val-fracton (did you mean --val-fraction?)" in msg and "0.5" not in msg


def test_misspelt_beam_option_and_several_at_once():
    assert "did you mean --direct_num_workers?" in _error(IngestConfig, **INGEST, beam_args=["--direct_num_worker=2"])
    msg = _error(
        ScoreConfig, model="m", images=["i"], out="o", beam_args=["--score-treshold", "0.9", "--max-detection", "3"]
    )
    assert (
        "--score-treshold (did you mean --score-threshold?)" in msg
        and "--max-detection (did you mean --max-detections?)" in msg
    )


def test_unknown_flags_fail_locally_but_reach_a_portable_job_service():
    assert "neither an option of this job nor a Beam pipeline option" in _error(
        IngestConfig, **INGEST, beam_args=["--zzz_unheard_of=1"]
    )
    assert "unexpected argument 'stray'" in _error(IngestConfig, **INGEST, beam_args=["stray"])
    # The Java side of Flink/Spark/Dataflow may define options Python does not know: those pass through.
    IngestConfig(**INGEST, runner="FlinkRunner", beam_args=["--flink_master=localhost:8081", "--java_only_option=1"])


def test_cli_refuses_a_misspelt_option_with_exit_2_before_running():
    from typer.testing import CliRunner

    from ssdflow.cli import app

    result = CliRunner().invoke(
        app,
        [
            "ingest",
            "--images",
            "/nonexistent",
            "--labels",
            "/nonexistent",
            "--format",
            "voc",
            "--out",
            "/nonexistent-out",
            "--val-fracton",
            "0.5",
        ],
    )
    assert result.exit_code == 2
    assert "unknown option --val-fracton (did you mean --val-fraction?)" in result.output

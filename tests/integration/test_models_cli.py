"""``ssdflow models``: list, show, promote by hand, roll back; the next ``score --model MODELS``
uses whichever version is champion, and a run with another champion deletes the old one's chunks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from model import registry
from ssdflow.cli import app
from tests.helpers import raccoon_subset

pytestmark = pytest.mark.integration
pytest.importorskip("tensorflow")


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_promote_by_hand_roll_back_and_score_with_the_champion(raccoon_model, tmp_path):
    models = tmp_path / "MODELS"
    shutil.copytree(Path(raccoon_model).parent, models)  # the shared fixture stays untouched
    v1 = registry.read_champion(models)["version"]
    v2 = registry.new_version(models)
    shutil.copytree(models / v1, models / v2)  # a second committed version (same weights, its own id)
    images, _ = raccoon_subset(tmp_path / "raccoon", 6, labels=False)
    out = tmp_path / "scored"

    def score() -> dict:
        _cli("score", "--model", str(models), "--images", str(images), "--out", str(out), "--chunk-size", "3")
        return json.loads((out / "_SUCCESS").read_text())

    assert score()["model_version"] == v1
    assert (out / "chunks" / v1).is_dir()

    said = _cli("models", "promote", v2, "--models", str(models), "--reason", "better on night images", "--by", "ana")
    assert v2 in said and v1 in said
    listing = _cli("models", "list", "--models", str(models)).splitlines()
    assert [line.split()[1] for line in listing[1:] if line.startswith("*")] == [v2]
    assert score()["model_version"] == v2
    assert (out / "chunks" / v2).is_dir() and not (out / "chunks" / v1).exists()  # the old champion's copy is gone

    _cli("models", "rollback", "--models", str(models), "--reason", "misses raccoons", "--by", "ben")
    shown = json.loads(_cli("models", "show", "champion", "--models", str(models)))
    assert shown["version"] == v1 and shown["champion"] and shown["metrics"]["mAP@.5"] is not None
    _cli(
        "score",
        "--model",
        str(models),
        "--images",
        str(images),
        "--out",
        str(out),
        "--chunk-size",
        "3",
        "--keep-chunks",
    )
    assert json.loads((out / "_SUCCESS").read_text())["model_version"] == v1
    assert (out / "chunks" / v2).is_dir()  # --keep-chunks

    manual = [d for d in registry.read_decisions(models) if d.get("manual")]
    assert [(d["action"], d["challenger"], d["by"]) for d in manual] == [
        ("promote", v2, "ana"),
        ("rollback", v1, "ben"),
    ]

    # every command that takes a version takes the models directory too
    _cli("export", "--model", str(models), "--out", str(tmp_path / "exported"))
    assert (tmp_path / "exported" / "saved_model.pb").exists()
    assert json.loads((tmp_path / "exported" / "ssdflow_model.json").read_text())["box_merge_iou"] is None
    # Box merging switched on by a re-export, and off again from that export
    _cli("export", "--model", str(models), "--out", str(tmp_path / "merged"), "--box-merge-iou", "0.6")
    assert json.loads((tmp_path / "merged" / "ssdflow_model.json").read_text())["box_merge_iou"] == 0.6


def test_models_commands_refuse_clearly(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (
        ["models", "list", "--models", str(empty)],
        ["models", "rollback", "--models", str(empty), "--reason", "x"],
        ["export", "--model", str(empty), "--out", str(tmp_path / "e")],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and "error:" in result.output, (args, result.output)
    result = CliRunner().invoke(app, ["models", "promote", "x", "--models", str(empty)])
    assert result.exit_code == 2 and "--reason" in result.output  # who decides says why

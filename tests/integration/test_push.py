"""``ssdflow models push``: the champion as TensorFlow Serving's next integer version, on local disk and S3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from model import registry
from model.push import RECORD, push, pushed_versions
from ssdflow import storage
from tests.helpers import moto_s3

pytestmark = pytest.mark.integration
tf = pytest.importorskip("tensorflow")


def two_versions(trained_dir: str, models: str) -> list[str]:
    """Two committed versions under ``models`` (local or S3), each a copy of a trained model."""
    versions = []
    for _ in range(2):
        version = registry.new_version(models)
        staging = registry.staging_dir(models, version)
        shutil.copytree(
            trained_dir, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("_SUCCESS", "decision.json")
        )
        registry.commit_version(models, version)
        versions.append(version)
    return versions


def checksum(saved_model_dir: str) -> int:
    return tf.saved_model.experimental.read_fingerprint(saved_model_dir).saved_model_checksum


def served(base: str, local: Path) -> Path:
    """What TensorFlow Serving would load: BASE's highest integer version, on local disk."""
    number = max(pushed_versions(base))
    if storage.is_local(base):
        return Path(base) / str(number)
    storage.copy_tree_to_local(storage.join(base, str(number)), str(local))
    return local


def test_push_writes_integer_versions_once_per_champion_and_a_rollback_goes_up(raccoon_model, tmp_path):
    from ssdflow.cli import app

    models, base = str(tmp_path / "models"), str(tmp_path / "serving")
    v1, v2 = two_versions(raccoon_model, models)
    registry.promote_version(models, v1, "ana", "first")
    run = CliRunner().invoke(app, ["models", "push", "--models", models, "--to", base])
    assert run.exit_code == 0, run.output
    assert f"champion {v1} written to {base}/1" in run.output
    layout = sorted(
        p.relative_to(tmp_path / "serving").as_posix() for p in (tmp_path / "serving").rglob("*") if p.is_file()
    )
    assert {"1/saved_model.pb", "1/assets/label_map.pbtxt", "1/assets/label_map.json", f"1/{RECORD}"} <= set(layout)
    assert any(p.startswith("1/variables/variables.data") for p in layout) and "1/variables/variables.index" in layout
    assert "item {" in (tmp_path / "serving/1/assets/label_map.pbtxt").read_text()
    assert not [p for p in (tmp_path / "serving").iterdir() if p.name.startswith(".")]  # no staging left

    again = CliRunner().invoke(app, ["models", "push", "--models", models, "--to", base])
    assert again.exit_code == 0 and "nothing written" in again.output
    assert sorted(pushed_versions(base)) == [1]

    registry.promote_version(models, v2, "ben", "newer")
    assert push(models, base)["number"] == 2
    registry.rollback(models, "ana", "v2 is worse")
    result = push(models, base)
    assert (result["number"], result["version"]) == (3, v1)  # servers only move up: the old champion as 3
    assert json.loads((tmp_path / f"serving/3/{RECORD}").read_text())["version"] == v1
    assert checksum(str(served(base, tmp_path / "x"))) == checksum(registry.version_dir(models, v1))
    loaded = tf.saved_model.load(str(served(base, tmp_path / "x")))
    assert "serving_default" in loaded.signatures


def test_push_from_and_to_s3(raccoon_model, tmp_path):
    with moto_s3(bucket="serving") as (endpoint, client):
        storage.configure([f"--s3_endpoint_url={endpoint}"])
        models, base = "s3://serving/models", "s3://serving/tfs/ssdflow"
        v1, _ = two_versions(raccoon_model, models)
        registry.promote_version(models, v1, "ana", "first")
        assert push(models, base)["pushed"] and not push(models, base)["pushed"]
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="serving", Prefix="tfs/")["Contents"])
        assert "tfs/ssdflow/1/saved_model.pb" in keys and "tfs/ssdflow/1/assets/label_map.pbtxt" in keys
        assert not [k for k in keys if not k.startswith("tfs/ssdflow/1/")]
        assert checksum(str(served(base, tmp_path / "fetched"))) == checksum(raccoon_model)

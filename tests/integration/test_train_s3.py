"""Training from the CLI with every location on S3 (moto's server on 127.0.0.1): data read from the
bucket through a local copy, the version, champion, decision and model card written there; the
versions listed from the bucket. (A training killed on one machine and resumed on another, and
scoring with the champion from the bucket: tests/integration/test_two_workers_s3.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ssdflow import storage
from tests.helpers import REPO, moto_s3

pytestmark = pytest.mark.integration
pytest.importorskip("tensorflow")

BUCKET = "ssdflow-train"
TRAIN = ["--alpha", "0.35", "--image-size", "128", "--batch-size", "4", "--backbone-weights", "none",
         "--bn-momentum", "0.9", "--no-augment", "--eval-every", "1000", "--min-map", "0", "--deterministic"]


@pytest.fixture(scope="module")
def s3(shapes):
    pytest.importorskip("boto3")
    with moto_s3(bucket=BUCKET) as (endpoint, client):
        storage.configure([f"--s3_endpoint_url={endpoint}"])
        storage.upload_tree(shapes["records"], f"s3://{BUCKET}/records")
        yield endpoint, client


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def machine(tmp_path, name: str) -> dict:
    """A working directory and cache of its own, the environment the S3 keys are in."""
    home = tmp_path / name
    (home / "cache").mkdir(parents=True)
    return {"cwd": home, "env": {**os.environ, "SSDFLOW_CACHE_DIR": str(home / "cache"), "SSDFLOW_LEASE_SECONDS": "20",
                                 "PYTHONPATH": str(REPO)}}


def ssdflow(*args) -> list[str]:
    return [sys.executable, "-m", "ssdflow.cli", *args]


def test_train_on_s3_then_list_the_versions_in_the_bucket(s3, tmp_path):
    endpoint, client = s3
    a = machine(tmp_path, "a")
    endpoint_flag = f"--s3_endpoint_url={endpoint}"
    done = subprocess.run(ssdflow("train", "--data", f"s3://{BUCKET}/records", "--models", f"s3://{BUCKET}/m1", *TRAIN,
                                  "--epochs", "1", "--steps-per-epoch", "2", endpoint_flag),
                          capture_output=True, text=True, timeout=600, **a)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "promoted to champion" in done.stdout

    champion = json.loads(client.get_object(Bucket=BUCKET, Key="m1/champion.json")["Body"].read())
    version = champion["version"]
    stored = keys(client, "m1/")
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=f"m1/{version}/_SUCCESS")["Body"].read())
    assert {"saved_model.pb", "label_map.json", "metrics.json", "model_card.md", "keras.weights.h5"} <= set(manifest["files"])
    assert sorted(f"m1/{version}/{f}" for f in manifest["files"]) == [k for k in stored if k.startswith(f"m1/{version}/")
                                                                      and not k.endswith(("_SUCCESS", "decision.json"))]
    assert [k for k in stored if k.startswith("m1/decisions/")] and not [k for k in stored if "/.train-run/" in k]
    card = client.get_object(Bucket=BUCKET, Key=f"m1/{version}/model_card.md")["Body"].read().decode()
    assert "## Promotion decision" in card and endpoint not in card
    # The records were read from a local copy made once, of exactly the files the output's manifest names.
    copies = [p for p in (a["cwd"] / "cache").iterdir() if p.name.startswith("records-")]
    assert len(copies) == 1 and sorted(os.listdir(copies[0])) == sorted(
        ["_SUCCESS", *json.loads(client.get_object(Bucket=BUCKET, Key="records/_SUCCESS")["Body"].read())["files"]])

    listed = subprocess.run(ssdflow("models", "list", "--models", f"s3://{BUCKET}/m1", endpoint_flag),
                            capture_output=True, text=True, timeout=120, **a)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert f"* {version}" in listed.stdout


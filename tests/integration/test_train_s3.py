"""Training with every location on S3 (moto's server on 127.0.0.1): data read from the bucket, the
version, champion and decision written there, and a training killed on one "machine" resumed on
another from the checkpoints it left in the bucket.

Two machines are two working directories with two cache directories (``SSDFLOW_CACHE_DIR``) that
share nothing but the S3 endpoint; no argument of either run names a local path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

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
        storage.upload_tree(str(shapes["images"]), f"s3://{BUCKET}/images")
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


def test_train_on_s3_then_list_and_score_with_the_champion_from_the_bucket(s3, tmp_path):
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

    b = machine(tmp_path, "b")
    scored = subprocess.run(ssdflow("score", "--model", f"s3://{BUCKET}/m1", "--images", f"s3://{BUCKET}/images/",
                                    "--out", f"s3://{BUCKET}/scored", endpoint_flag),
                            capture_output=True, text=True, timeout=600, **b)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert f"model {version}" in scored.stdout and "12 images in, 12 scored, 0 failed" in scored.stdout
    assert "scored/_SUCCESS" in keys(client, "scored/")


def test_a_training_killed_on_one_machine_resumes_on_another_from_its_checkpoints_in_s3(s3, tmp_path):
    endpoint, client = s3
    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")
    cmd = ssdflow("train", "--data", f"s3://{BUCKET}/records", "--models", f"s3://{BUCKET}/m2", *TRAIN,
                  "--epochs", "3", "--steps-per-epoch", "4", f"--s3_endpoint_url={endpoint}")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **a)
    deadline = time.time() + 300
    while "m2/.train-run/phase1/checkpoint" not in keys(client, "m2/.train-run/") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert "m2/.train-run/phase1/checkpoint" in keys(client, "m2/.train-run/"), "no checkpoint in S3 after the first epoch"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not keys(client, "m2/champion.json")
    lease = json.loads(client.get_object(Bucket=BUCKET, Key="m2/.train.lease")["Body"].read())
    assert lease["holder"] and lease["expires_at"] > time.time()  # the killed training's lease, not yet expired

    # Machine B: without --resume it is refused and the checkpoints stay; with it, it continues.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **b)
    assert again.returncode == 2, again.stderr[-3000:]
    assert "holds an interrupted run of these settings and data: pass --resume" in again.stderr
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600, **b)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from the checkpoint after epoch" in resumed.stderr
    assert "promoted to champion" in resumed.stdout
    assert not keys(client, "m2/.train-run/")
    version = json.loads(client.get_object(Bucket=BUCKET, Key="m2/champion.json")["Body"].read())["version"]
    metrics = json.loads(client.get_object(Bucket=BUCKET, Key=f"m2/{version}/metrics.json")["Body"].read())
    assert metrics["epochs"] < 3  # only the epochs the killed run had not finished

"""The scoring job on Beam's PortableRunner (the Fn API path that Dataflow, Flink and Spark take):
a killed worker pool and a rerun, and workers that know only s3:// URIs. Apart from test_score.py so
that another test worker runs these two slow tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from beam_jobs.score import run_score
from ssdflow.config import ScoreConfig
from tests.helpers import REPO, detection_lines, moto_s3, noise_jpeg, portable_beam, raccoon_or_skip, upload_models_dir

pytestmark = pytest.mark.integration
tf = pytest.importorskip("tensorflow")

BUCKET = "ssdflow-score"


def _cycled_images(tmp_path, n: int) -> str:
    """n distinct image paths (raccoon's JPEGs cycled, as symbolic links)."""
    sources = sorted((raccoon_or_skip() / "images").glob("*.jpg"))
    d = tmp_path / "cycled"
    d.mkdir()
    for i in range(n):
        os.symlink(sources[i % len(sources)], d / f"img{i:04d}.jpg")
    return str(d)


def test_portable_runner_killed_worker_then_rerun_equals_an_uninterrupted_run(raccoon_model, tmp_path):
    """1,000 images in 10 chunks on the PortableRunner: one pipeline run; the worker pool killed
    mid-run loses only the chunks in flight, and a rerun (new job service and workers) scores what
    is left, to outputs equal to an uninterrupted DirectRunner run."""
    images = _cycled_images(tmp_path, 1000)
    same = ["--score-threshold", "0", "--chunk-size", "100", "--max-batch-size", "8"]
    ref = tmp_path / "ref"
    run_score(
        ScoreConfig(
            model=raccoon_model, images=[images], out=str(ref), score_threshold=0.0, chunk_size=100, max_batch_size=8
        )
    )
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "ssdflow.cli",
        "score",
        "--model",
        raccoon_model,
        "--images",
        images,
        "--out",
        str(out),
        *same,
        "--runner",
        "PortableRunner",
    ]
    chunks_root = out / "chunks" / os.path.basename(raccoon_model)
    with portable_beam() as portable_args:
        proc = subprocess.Popen(
            [*cmd, *portable_args],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if chunks_root.exists() and len(list(chunks_root.glob("*/_SUCCESS"))) >= 2:
                break
            time.sleep(0.02)
        os.killpg(portable_args.pool.pid, signal.SIGKILL)  # the workers die mid-run
        portable_args.pool.wait()
        try:  # the job service does not fail a job whose worker pool vanished: its driver waits on
            proc.wait(timeout=10)  # (measured: > 120 s), so it is stopped too, as a lost machine would be
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    committed = len(list(chunks_root.glob("*/_SUCCESS")))
    assert 2 <= committed < 10, f"kill landed after {committed} of 10 chunks"
    assert proc.returncode != 0 and not (out / "_SUCCESS").exists()  # the interrupted run never looks complete

    with portable_beam() as portable_args:
        done = subprocess.run([*cmd, *portable_args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{10 - committed} of 10 chunks scored now" in done.stdout
    assert detection_lines(out) == detection_lines(ref) and len(detection_lines(ref)) == 1000
    for a, b in zip(sorted(ref.glob("detections-*.jsonl")), sorted(out.glob("detections-*.jsonl")), strict=True):
        assert a.name == b.name and a.read_bytes() == b.read_bytes()


def _s3_detections(s3, prefix: str) -> list[dict]:
    keys = sorted(
        o["Key"]
        for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/detections-")["Contents"]
        if o["Key"].endswith(".jsonl")
    )
    return [
        json.loads(line)
        for k in keys
        for line in s3.get_object(Bucket=BUCKET, Key=k)["Body"].read().decode().splitlines()
    ]


def test_portable_runner_with_images_model_and_outputs_on_s3(raccoon_model, tmp_path, monkeypatch):
    """The path beyond one machine, proven locally: a PortableRunner job whose external workers run
    elsewhere and know only s3:// URIs (images, model, outputs on moto's S3 server) scores in one
    pipeline run what the DirectRunner scores, and the workers, not the driver, fetched the model."""
    pytest.importorskip("boto3")
    driver_cache, worker_cache, elsewhere = tmp_path / "driver-cache", tmp_path / "worker-cache", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("SSDFLOW_CACHE_DIR", str(driver_cache))
    with moto_s3(bucket=BUCKET) as (endpoint, s3):
        upload_models_dir(s3, BUCKET, raccoon_model, "models")
        for i in range(12):
            s3.put_object(Bucket=BUCKET, Key=f"archive/img{i:02d}.jpg", Body=noise_jpeg(i))
        s3.put_object(Bucket=BUCKET, Key="archive/broken.jpg", Body=b"xx")
        s3_args = [f"--s3_endpoint_url={endpoint}", "--s3_region_name=us-east-1"]
        common = dict(
            model=f"s3://{BUCKET}/models", images=[f"s3://{BUCKET}/archive/"], score_threshold=0.0, chunk_size=4
        )
        with portable_beam(worker_cwd=elsewhere, worker_env={"SSDFLOW_CACHE_DIR": str(worker_cache)}) as portable_args:
            portable = run_score(
                ScoreConfig(
                    **common, out=f"s3://{BUCKET}/portable", runner="PortableRunner", beam_args=portable_args + s3_args
                )
            )
        assert not driver_cache.exists()  # the driver never loaded the model
        assert [
            d.name for d in worker_cache.iterdir() if (d / "saved_model.pb").is_file()
        ]  # the workers fetched it from S3
        direct = run_score(ScoreConfig(**common, out=f"s3://{BUCKET}/direct", beam_args=s3_args))
        keys = ("chunks", "images_in", "images_scored", "images_failed", "detections")
        assert (
            [getattr(portable, k) for k in keys]
            == [getattr(direct, k) for k in keys]
            == [4, 13, 12, 1, direct.detections]
        )
        assert _s3_detections(s3, "portable") == _s3_detections(s3, "direct")
        assert len(_s3_detections(s3, "portable")) == 12

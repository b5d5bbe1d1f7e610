"""Shared test helpers: locating ../shared data, reading ingest output back, free ports, processes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RACCOON = SHARED / "datasets" / "raccoon"
# The tiny training the integration tests use (the shapes fixture's data): mechanics, not quality.
SHAPES_VAL_FRACTION = 0.25
TINY_TRAIN = dict(
    alpha=0.35,
    image_size=128,
    batch_size=8,
    backbone_weights="none",
    bn_momentum=0.9,
    augment=False,
    eval_every=1000,
    warmup_epochs=0.2,
    min_map=0.0,
)
DUPLICATE_PAIRS = [
    ("raccoon-11", "raccoon-116"),
    ("raccoon-52", "raccoon-74"),
    ("raccoon-65", "raccoon-98"),
    ("raccoon-83", "raccoon-120"),
]


def raccoon_or_skip() -> Path:
    if not (RACCOON / "images").is_dir():
        pytest.skip(f"raccoon dataset not found at {RACCOON}")
    return RACCOON


def voc_scenes(
    root: Path, n: int, size: int, seed: int, max_objects: int, quality: int = 75
) -> tuple[Path, Path, dict]:
    """``n`` synthetic size x size JPEGs of shapes (ssdflow.demo_data's scenes) with one VOC file
    each, in ``root/images`` and ``root/labels``; returns both and each image's objects by stem."""
    from ssdflow.demo_data import draw_scene, voc_xml

    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(n):
        img, objects = draw_scene(rng, size, size, max_objects=max_objects)
        img.save(images / f"im{i}.jpg", quality=quality)
        (labels / f"im{i}.xml").write_text(voc_xml(f"im{i}.jpg", size, size, objects))
        truth[f"im{i}"] = objects
    return images, labels, truth


class PickleBomb:
    """Unpickling this creates the file ``target``: a test sees whether a loader ran code."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def raccoon_subset(dest: Path, n: int, labels: bool = True, start: int = 1) -> tuple[Path, Path | None]:
    """Copies raccoon-{start}..raccoon-{start+n-1} (images, and their VOC files when ``labels``) into
    ``dest/images`` and ``dest/labels``; returns the two directories (labels None when not copied)."""
    import shutil

    root = raccoon_or_skip()
    images = dest / "images"
    images.mkdir(parents=True, exist_ok=True)
    label_dir = None
    if labels:
        label_dir = dest / "labels"
        label_dir.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        shutil.copy(root / "images" / f"raccoon-{i}.jpg", images)
        if label_dir is not None:
            shutil.copy(root / "annotations" / f"raccoon-{i}.xml", label_dir)
    return images, label_dir


def read_ingest_output(out: str | Path, split: str | None = None) -> dict[str, dict]:
    """Every record of an ingest output read back with tf.data, keyed by image/source_id."""
    import tensorflow as tf

    from ssdflow import schema

    pattern = os.path.join(str(out), f"{split or '*'}-*.tfrecord")
    files = sorted(tf.io.gfile.glob(pattern))
    assert files, f"no shards match {pattern}"
    spec = schema.tf_feature_spec()
    records: dict[str, dict] = {}
    for raw in tf.data.TFRecordDataset(files):
        ex = tf.io.parse_single_example(raw, spec)
        rec = {}
        for key, value in ex.items():
            if isinstance(value, tf.SparseTensor):
                value = tf.sparse.to_dense(value)
            value = value.numpy()
            rec[key] = value.tolist() if hasattr(value, "tolist") else value
        sid = rec[schema.SOURCE_ID].decode()
        assert sid not in records, f"record {sid} written twice"
        records[sid] = rec
    return records


def read_json(path: str | Path):
    with open(path) as f:
        return json.load(f)


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process group, wait, then SIGKILL: servers started by tests never outlive them."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


@contextlib.contextmanager
def moto_s3(access_key_id: str = "testing", secret_access_key: str = "testing-secret", bucket: str | None = None):
    """moto's S3 server on 127.0.0.1 (a subprocess), with the keys set in the environment as in
    production (restored afterwards); yields (endpoint, boto3 client)."""
    import sys

    import boto3

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    env = {
        "AWS_ACCESS_KEY_ID": access_key_id,
        "AWS_SECRET_ACCESS_KEY": secret_access_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in (*env, "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")}
    os.environ.update(env)
    for k in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):  # botocore's own defaults, whatever the shell says
        os.environ.pop(k, None)
    try:
        wait_for_port(port, proc=proc)
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        if bucket:
            client.create_bucket(Bucket=bucket)
        yield endpoint, client
    finally:
        stop_process(proc)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class PortableArgs(list):
    """Beam arguments for a local job service and worker pool, with the two processes (``job``, ``pool``)."""

    job: subprocess.Popen
    pool: subprocess.Popen


@contextlib.contextmanager
def portable_beam(worker_cwd: str | Path | None = None, worker_env: dict | None = None):
    """Beam's local job service and an external SDK worker pool, both on 127.0.0.1 (subprocesses,
    stopped by PID); yields the Beam arguments that send a pipeline to them (a list whose ``job`` and
    ``pool`` attributes are the two processes). The worker pool runs in ``worker_cwd`` (default: the
    repository) with ``worker_env`` added to this process's environment."""
    import sys

    env = dict(
        os.environ,
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    )
    ports = tempfile.mkdtemp(prefix="beam-ports-")
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.loopback_beam",
            "apache_beam.runners.portability.local_job_service_main",
            "--port",
            "0",
        ],
        env={**env, "LOOPBACK_BEAM_PORT_FILE": os.path.join(ports, "job")},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    pool = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.loopback_beam",
            "apache_beam.runners.worker.worker_pool_main",
            "--service_port",
            "0",
        ],
        env={**env, **(worker_env or {}), "LOOPBACK_BEAM_PORT_FILE": os.path.join(ports, "pool")},
        cwd=worker_cwd or REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # Each picks its own free port (port 0) and says which: nothing can take it in between.
        job_port, pool_port = (
            _port_from_file(os.path.join(ports, "job"), job),
            _port_from_file(os.path.join(ports, "pool"), pool),
        )
        wait_for_port(job_port, proc=job)
        wait_for_port(pool_port, proc=pool)
        args = PortableArgs(
            [
                f"--job_endpoint=127.0.0.1:{job_port}",
                "--environment_type=EXTERNAL",
                f"--environment_config=127.0.0.1:{pool_port}",
            ]
        )
        args.job, args.pool = job, pool
        yield args
    finally:
        stop_process(pool)
        stop_process(job)
        shutil.rmtree(ports, ignore_errors=True)


def _port_from_file(path: str, proc: subprocess.Popen, timeout: float = 120.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            return int(open(path).read())
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before binding its port")
        time.sleep(0.1)
    raise TimeoutError(f"no port written to {path} after {timeout}s")


def detection_lines(out) -> list[dict]:
    """Every detection record of a local scoring output, in shard order."""
    return [
        r
        for f in sorted(os.listdir(out))
        if f.startswith("detections-") and f.endswith(".jsonl")
        for r in read_jsonl(os.path.join(out, f))
    ]


def noise_jpeg(seed: int) -> bytes:
    """A small random-noise JPEG (80x64), distinct per seed."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def upload_models_dir(s3, bucket: str, model_dir, prefix: str) -> None:
    """An exported model as the champion of a models directory on S3 (``prefix/<version>/``, ``prefix/champion.json``)."""
    version = os.path.basename(str(model_dir).rstrip("/"))
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        s3.put_object(
            Bucket=bucket, Key=f"{prefix}/{version}/{path.relative_to(model_dir).as_posix()}", Body=path.read_bytes()
        )
    s3.put_object(Bucket=bucket, Key=f"{prefix}/champion.json", Body=json.dumps({"version": version}).encode())

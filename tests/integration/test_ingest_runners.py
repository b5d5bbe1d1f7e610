"""The ingest job on the Fn API paths that Flink, Spark and Dataflow use for Python workers.

DirectRunner's multi_processing mode and PortableRunner against Beam's local job service with an
external SDK worker pool both pickle every DoFn and run it in other processes, so they catch what
in-process runs hide (unpicklable transforms, module-level state).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from beam_jobs.ingest import run_ingest
from ssdflow import schema
from ssdflow.config import IngestConfig
from tests.helpers import moto_s3, portable_beam, raccoon_or_skip, read_ingest_output

pytestmark = pytest.mark.integration


def _subset(tmp_path, n=40):
    """The first n raccoon images (with one duplicate pair) and their labels, as a glob and a dir."""
    root = raccoon_or_skip()
    labels = tmp_path / "labels"
    labels.mkdir()
    names = [f"raccoon-{i}" for i in range(1, n + 1)] + ["raccoon-116"]
    for name in names:
        (labels / f"{name}.xml").write_bytes((root / "annotations" / f"{name}.xml").read_bytes())
    images = tmp_path / "images"
    images.mkdir()
    for name in names:
        os.symlink(root / "images" / f"{name}.jpg", images / f"{name}.jpg")
    return str(images), str(labels), len(names)


def _summary(out):
    return {
        sid: (r[schema.SHA256], tuple(r[schema.XMIN]), tuple(r[schema.YMAX]))
        for sid, r in read_ingest_output(out).items()
    }


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("subset")
    images, labels, n = _subset(tmp)
    ref = tmp / "ref"
    stats = run_ingest(IngestConfig(images=images, labels=labels, format="voc", out=str(ref)))
    assert stats["images_in"] == n and stats["images_rejected"] == {"total": 1, "duplicate": 1}
    return images, labels, stats, _summary(ref)


def test_direct_runner_multi_processing(subset, tmp_path, capfd):
    images, labels, ref_stats, ref = subset
    out = tmp_path / "out"
    stats = run_ingest(
        IngestConfig(
            images=images,
            labels=labels,
            format="voc",
            out=str(out),
            num_shards=3,
            beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        )
    )
    assert stats["images_written"] == ref_stats["images_written"]
    assert len([s for s in stats["shards"] if s.startswith("train-")]) == 3
    assert _summary(out) == ref
    # The worker processes write to the same console: no harness chatter, no false alarms.
    console = capfd.readouterr().err
    for noise in (
        "sdk harness",
        "Logging handler created",
        "Control channel established",
        "semi_persistent_directory",
        "apitools not found",
        "INFO",
    ):
        assert noise not in console, console[-2000:]


def _ingest_on_s3(subset, tmp_path, runner_args: list[str], pool_cwd: Path | None = None) -> Path:
    """The subset uploaded to moto's S3 server, ingested from and to s3:// with the endpoint given
    only as a Beam flag (on the PortableRunner with an external worker pool running in ``pool_cwd``
    when it is given), the output downloaded; checks the stats against the local run's."""
    images, labels, ref_stats, _ = subset
    with (
        moto_s3(bucket="runners") as (endpoint, client),
        portable_beam(worker_cwd=pool_cwd) if pool_cwd else contextlib.nullcontext([]) as portable_args,
    ):  # after moto: its credentials
        runner = "PortableRunner" if pool_cwd else "DirectRunner"
        for local, prefix in ((images, "in/images"), (labels, "in/labels")):
            for name in sorted(os.listdir(local)):
                client.put_object(Bucket="runners", Key=f"{prefix}/{name}", Body=(Path(local) / name).read_bytes())
        stats = run_ingest(
            IngestConfig(
                images="s3://runners/in/images",
                labels="s3://runners/in/labels",
                format="voc",
                out="s3://runners/out",
                runner=runner,
                beam_args=[f"--s3_endpoint_url={endpoint}", "--s3_region_name=us-east-1", *runner_args, *portable_args],
            )
        )
        assert stats["images_written"] == ref_stats["images_written"]
        local_out = tmp_path / "out"
        local_out.mkdir()
        for obj in client.list_objects_v2(Bucket="runners", Prefix="out/")["Contents"]:
            (local_out / obj["Key"][len("out/") :]).write_bytes(
                client.get_object(Bucket="runners", Key=obj["Key"])["Body"].read()
            )
    assert (local_out / "_SUCCESS").exists()
    return local_out


def test_multi_processing_workers_get_the_jobs_s3_options(subset, tmp_path):
    """Worker processes read and write s3:// with the endpoint given only as a Beam flag: the
    runner hands them the job's options (they had none, and their first S3 call failed)."""
    out = _ingest_on_s3(subset, tmp_path, ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert sorted(_summary(out).values()) == sorted(subset[3].values())  # same images and boxes as the local run


def test_a_bare_external_worker_pool_reads_and_writes_s3_with_the_jobs_options(subset, tmp_path):
    """An external worker pool started as bare Python (no container, the way a Flink or Spark
    cluster may run Python) runs its harnesses in-process and never gives them the job's options:
    each of ingest's DoFns that touches storage sets them up itself. The pool runs in a directory
    where the driver's local paths mean nothing; everything it reads and writes is on S3."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = _ingest_on_s3(subset, tmp_path, [], pool_cwd=elsewhere)
    assert sorted(_summary(out).values()) == sorted(subset[3].values())


def test_portable_runner_with_external_worker_pool(subset, tmp_path):
    images, labels, ref_stats, ref = subset
    with portable_beam() as portable_args:
        out = tmp_path / "out"
        stats = run_ingest(
            IngestConfig(
                images=images,
                labels=labels,
                format="voc",
                out=str(out),
                runner="PortableRunner",
                beam_args=portable_args,
            )
        )
        assert stats["images_written"] == ref_stats["images_written"]
        assert _summary(out) == ref

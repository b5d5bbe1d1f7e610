"""Storage faults: S3 answering 503 SlowDown / 500 InternalError to uploads, mid-run.

moto's S3 server runs on 127.0.0.1 behind ``tests/faulty_s3.FaultyS3Proxy``, which answers chosen
PUT/POST requests (CreateMultipartUpload, UploadPart, CompleteMultipartUpload, CopyObject,
DeleteObjects, PutObject) itself with an S3 error, as S3 does when it throttles. The jobs get the
proxy's URL as ``--s3_endpoint_url``, exactly as they would get a real endpoint.

Where the retries are: Beam's S3 filesystem builds a boto3 client with botocore's default retry
configuration (``standard`` mode in botocore 1.44: 3 attempts, exponential backoff with jitter,
retrying 500/502/503/504, SlowDown, throttling and connection errors; AWS_MAX_ATTEMPTS and
AWS_RETRY_MODE in the environment change it). Beam adds none of its own around uploads
(``S3Uploader._start_upload`` is ``retry.no_retries``; UploadPart and CompleteMultipartUpload are
bare). These tests check that those retries are real for the writes both jobs make (multipart
uploads, copies, deletes, PutObject), that the outputs then equal a run without faults, that a
burst longer than the budget fails the job without a ``_SUCCESS``, and that a failed write never
leaves a half-written object: S3 writes are multipart uploads or PutObject, visible only whole.
"""

from __future__ import annotations

import io
import json
import re

import pytest

from ssdflow import storage, tfrecord
from tests.faulty_s3 import FaultyS3Proxy
from tests.helpers import moto_s3, raccoon_or_skip

pytestmark = pytest.mark.integration
pytest.importorskip("boto3")

BUCKET = "ssdflow-faults"
REGION = ["--s3_region_name=us-east-1"]


@pytest.fixture(scope="module")
def s3():
    with moto_s3(bucket=BUCKET) as (endpoint, client), FaultyS3Proxy(endpoint) as proxy:
        yield endpoint, client, proxy


def _jpeg(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _objects(client, prefix: str) -> dict[str, bytes]:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listing}


def _assert_retried(proxy: FaultyS3Proxy) -> None:
    injected = proxy.injected_requests()
    assert injected, "no fault was injected: the test proves nothing"
    assert len(proxy.injected_operations()) >= 2, proxy.injected_operations()  # more than one kind of write
    for method, path in injected:
        assert proxy.retried_ok(method, path), f"{method} {path} failed and was never retried successfully"


def _no_address(data: bytes) -> bytes:
    return re.sub(rb" at 0x[0-9a-f]+", b" at 0x?", data)


def _assert_committed(objs: dict[str, bytes]) -> dict:
    """A complete output: _SUCCESS last, naming exactly the files there; no temp objects left."""
    assert "_SUCCESS" in objs
    manifest = json.loads(objs["_SUCCESS"])
    assert not [k for k in objs if storage.TMP_PREFIX in k]
    return manifest


def _upload_raccoon(client) -> list[str]:
    """12 raccoon images + VOC labels under raw/ (both splits get images; one byte-identical twin)."""
    root = raccoon_or_skip()
    names = [f"raccoon-{i}" for i in range(10, 21)] + ["raccoon-116"]  # 116 is 11's byte-identical twin: one rejection
    for n in names:
        client.put_object(Bucket=BUCKET, Key=f"raw/images/{n}.jpg", Body=(root / "images" / f"{n}.jpg").read_bytes())
        client.put_object(
            Bucket=BUCKET, Key=f"raw/labels/{n}.xml", Body=(root / "annotations" / f"{n}.xml").read_bytes()
        )
    return names


def test_ingest_survives_upload_faults(s3):
    endpoint, client, proxy = s3
    names = _upload_raccoon(client)
    from beam_jobs.ingest import run_ingest
    from ssdflow.config import IngestConfig

    def ingest(out, url):
        return run_ingest(
            IngestConfig(
                images=f"s3://{BUCKET}/raw/images/",
                labels=f"s3://{BUCKET}/raw/labels/",
                format="voc",
                out=f"s3://{BUCKET}/{out}",
                beam_args=[f"--s3_endpoint_url={url}", *REGION],
            )
        )

    ref = ingest("ingest-ref", endpoint)  # straight to moto: no faults
    proxy.configure(fail_every=6, fail_first=0, status=503, fail_when=None)
    stats = ingest("ingest-faulty", proxy.url)

    _assert_retried(proxy)
    assert any(storage.TMP_PREFIX in path for _, path in proxy.injected_requests())  # mid-run, not only set-up
    assert stats["images_in"] == len(names) == stats["images_written"]["total"] + stats["images_rejected"]["total"]
    assert stats["images_rejected"] == {"total": 1, "duplicate": 1}
    assert stats == ref

    want, got = _objects(client, "ingest-ref/"), _objects(client, "ingest-faulty/")
    manifest = _assert_committed(got)
    assert manifest == _assert_committed(want)
    assert sorted(got) == sorted(manifest["files"] + ["_SUCCESS"])
    for name in manifest["files"]:
        if name.endswith(".tfrecord"):  # the same records (part-file names are random, so compare as sets)
            assert sorted(tfrecord.read_records(io.BytesIO(got[name]))) == sorted(
                tfrecord.read_records(io.BytesIO(want[name]))
            )
        else:
            assert got[name] == want[name], name


def test_ingest_keeps_an_image_that_cannot_be_read_for_now_apart(s3):
    """S3 throttles the reads of one image past every retry: ingest completes with that image
    rejected as ``read_error_retryable`` (not ``unreadable``, which is final) and says so in its
    ``_SUCCESS`` (the nightly flow ingests again instead of reusing such an output); the next
    ingest, with S3 well again, writes it (test_ingest_survives_upload_faults compares a whole
    output with a fault-free run's)."""
    endpoint, client, proxy = s3
    _upload_raccoon(client)
    from beam_jobs.ingest import run_ingest
    from ssdflow.config import IngestConfig

    def ingest(out, url):
        return run_ingest(
            IngestConfig(
                images=f"s3://{BUCKET}/raw/images/",
                labels=f"s3://{BUCKET}/raw/labels/",
                format="voc",
                out=f"s3://{BUCKET}/{out}",
                beam_args=[f"--s3_endpoint_url={url}", *REGION],
            )
        )

    proxy.configure(
        fail_every=1,
        fail_first=0,
        status=429,
        methods=("GET", "HEAD"),
        fail_when=lambda method, path: "/raw/images/raccoon-12.jpg" in path,
    )
    stats = ingest("ingest-read-faulty", proxy.url)
    assert proxy.injected_requests(), "no read was refused: the test proves nothing"
    assert stats["images_rejected"] == {"total": 2, "duplicate": 1, "read_error_retryable": 1}
    assert storage.read_success(f"s3://{BUCKET}/ingest-read-faulty")["images_retryable"] == 1
    rejected = [json.loads(line) for line in _objects(client, "ingest-read-faulty/")["rejected.jsonl"].splitlines()]
    assert [r["source"].rsplit("/", 1)[-1] for r in rejected if r["reason"] == "read_error_retryable"] == [
        "raccoon-12.jpg"
    ]

    proxy.configure(fail_every=0, fail_first=0, fail_when=None)
    again = ingest("ingest-read-faulty", proxy.url)
    assert again["images_rejected"] == {"total": 1, "duplicate": 1}  # as a run that met no fault
    assert again["images_written"]["total"] == stats["images_written"]["total"] + 1
    assert storage.read_success(f"s3://{BUCKET}/ingest-read-faulty")["images_retryable"] == 0


def _score_s3(model: str, images: str, out: str, url: str, chunk_size: int):
    """Scores ``s3://BUCKET/images/`` into ``s3://BUCKET/out`` through the endpoint ``url``, every format."""
    from beam_jobs.score import run_score
    from ssdflow.config import ScoreConfig

    return run_score(
        ScoreConfig(
            model=model,
            images=[f"s3://{BUCKET}/{images}/"],
            out=f"s3://{BUCKET}/{out}",
            score_threshold=0.0,
            chunk_size=chunk_size,
            formats=["jsonl", "parquet", "coco"],
            beam_args=[f"--s3_endpoint_url={url}", *REGION],
        )
    )


def test_score_survives_upload_faults(s3, raccoon_model):
    endpoint, client, proxy = s3

    for i in range(6):
        client.put_object(Bucket=BUCKET, Key=f"archive/img{i}.jpg", Body=_jpeg(i))
    client.put_object(Bucket=BUCKET, Key="archive/broken.jpg", Body=b"xx")

    def score(out, url):  # two chunks: [broken, img0-2] and [img3-5], whose errors.jsonl is empty
        return _score_s3(raccoon_model, "archive", out, url, chunk_size=4)

    ref = score("score-ref", endpoint)
    proxy.configure(fail_every=6, fail_first=0, status=500, fail_when=None)
    m = score("score-faulty", proxy.url)

    _assert_retried(proxy)
    assert any("/chunks/" in path for _, path in proxy.injected_requests())  # inside the pipeline, not only at commit
    assert (m.images_in, m.images_scored, m.images_failed) == (7, 6, 1)
    assert m.images_in == m.images_scored + m.images_failed
    assert m == ref

    want, got = _objects(client, "score-ref/"), _objects(client, "score-faulty/")
    manifest = _assert_committed(got)
    assert manifest == _assert_committed(want)
    assert {k: v for k, v in manifest.items() if k != "files"} == m.to_json()
    for name in manifest["files"]:  # detections, COCO results, summary: byte for byte
        if name == "errors.jsonl":  # PIL's message names a BytesIO's address ("<_io.BytesIO object at 0x…>")
            assert _no_address(got[name]) == _no_address(want[name])
        else:
            assert got[name] == want[name], name
    chunk_errors = sorted(v for k, v in got.items() if k.startswith("chunks/") and k.endswith("/errors.jsonl"))
    assert chunk_errors[0] == b"" and b"broken.jpg" in chunk_errors[1]  # an empty object is written, not refused


def test_an_image_that_cannot_be_read_for_now_is_scored_by_the_next_run(s3, raccoon_model):
    """S3 throttles the reads of one image past every retry (429 to its HEAD and GET): the run
    completes, with that image failed as ``read_error_retryable`` (not ``unreadable``, which is
    final), and the next run scores that chunk again, and only it: the outputs then equal a run
    that met no fault, and the chunk keeps one attempt."""
    endpoint, client, proxy = s3

    for i in range(6):
        client.put_object(Bucket=BUCKET, Key=f"throttled/img{i}.jpg", Body=_jpeg(10 + i))

    def score(out, url):  # two chunks: img0-2 and img3-5
        return _score_s3(raccoon_model, "throttled", out, url, chunk_size=3)

    ref = score("read-ref", endpoint)
    proxy.configure(
        fail_every=1,
        fail_first=0,
        status=429,
        methods=("GET", "HEAD"),
        fail_when=lambda method, path: "/throttled/img4.jpg" in path,
    )
    first = score("read-faulty", proxy.url)
    assert proxy.injected_requests(), "no read was refused: the test proves nothing"
    assert (first.images_in, first.images_scored, first.images_failed, first.images_retryable) == (
        6,
        5,
        1,
        1,
    )
    errors = [json.loads(line) for line in _objects(client, "read-faulty/")["errors.jsonl"].splitlines()]
    assert [(e["source"].rsplit("/", 1)[-1], e["reason"]) for e in errors] == [("img4.jpg", "read_error_retryable")]

    proxy.configure(fail_every=0, fail_first=0, fail_when=None)  # S3 is well again
    second = score("read-faulty", proxy.url)
    assert (second.chunks_scored_now, second.images_failed, second.images_retryable) == (1, 0, 0)
    assert second.model_copy(update={"chunks_scored_now": 0}) == ref.model_copy(update={"chunks_scored_now": 0})
    want, got = _objects(client, "read-ref/"), _objects(client, "read-faulty/")
    for name in _assert_committed(got)["files"]:
        if name == "summary.json":  # the rerun's also says what changed since the first run: one image more scored
            summary = json.loads(got[name])
            assert summary.pop("change_since_previous")["images_failed"] == -1
            assert summary == {k: v for k, v in json.loads(want[name]).items() if k != "change_since_previous"}
        else:
            assert got[name] == want[name], name
    attempts = {k.split("/")[3] for k in got if k.startswith("chunks/") and k.count("/") == 4}
    assert len(attempts) == 2  # one per chunk: the first run's attempt at the rescored chunk was pruned
    from beam_jobs.score.chunks import committed

    chunk_ids = {k.split("/")[2] for k in got if k.startswith("chunks/")}
    assert all(committed(f"s3://{BUCKET}/read-faulty", second.model_version, c) for c in chunk_ids)  # final now


def test_a_failed_write_never_leaves_a_partial_object(s3, monkeypatch):
    """Whole-object semantics under faults, through ssdflow.storage's write helpers."""
    _, client, proxy = s3
    from ssdflow.beam_runner import pipeline_options

    pipeline_options([f"--s3_endpoint_url={proxy.url}", *REGION])
    uri = f"s3://{BUCKET}/direct/report.json"

    def complete_upload(method, path):  # CompleteMultipartUpload: the call that makes an upload visible
        return method == "POST" and "uploadId=" in path and "partNumber=" not in path

    proxy.configure(fail_first=0, fail_every=0, fail_when=None)
    storage.write_text(uri, "v1\n")

    # Permanent failures (one attempt per call, so no backoff to wait for; what matters is what is left).
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    # The commit of the new version fails: the old object stays, whole.
    proxy.configure(fail_first=1000, fail_when=complete_upload)
    with pytest.raises(Exception):
        storage.write_text(uri, "v2 " * 1000)
    assert proxy.injected >= 1
    assert storage.read_text(uri) == "v1\n"

    # A streamed write (as ingest's part files are: one handle, many writes) is a multipart upload;
    # here its first 5 MiB part lands and the second never does: there is no object at all.
    from apache_beam.io.filesystems import FileSystems

    big = f"s3://{BUCKET}/direct/part-file.bin"
    proxy.configure(fail_first=1000, fail_when=lambda method, path: method == "PUT" and "partNumber=2&" in path)
    with pytest.raises(Exception):
        with FileSystems.create(big) as f:
            f.write(b"x" * 5 * 2**20)  # a full part: uploaded now
            f.write(b"tail")  # uploaded as part 2 on close
    assert proxy.injected >= 1
    assert any("partNumber=1&" in path and status == 200 for _, path, status, _ in proxy.log)  # part 1 did land
    assert not storage.exists(big)

    # Bursts: two failures in a row fit the default budget; three do not, unless AWS_MAX_ATTEMPTS says more.
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")
    for burst, attempts, ok in ((2, None, True), (3, None, False), (3, "5", True)):
        if attempts:
            monkeypatch.setenv("AWS_MAX_ATTEMPTS", attempts)
        key = f"direct/burst-{burst}-{attempts}.txt"
        proxy.configure(fail_first=burst, fail_when=lambda method, path, key=key: key in path)
        if ok:
            storage.write_text(f"s3://{BUCKET}/{key}", "whole\n")
            assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"whole\n"
        else:
            with pytest.raises(Exception):
                storage.write_text(f"s3://{BUCKET}/{key}", "whole\n")
            assert "Contents" not in client.list_objects_v2(Bucket=BUCKET, Prefix=key)
        assert proxy.injected == burst

    # An empty file (errors.jsonl with no errors) is one PutObject, retried like the rest.
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")
    proxy.configure(fail_first=1, fail_when=lambda method, path: "empty.jsonl" in path)
    storage.write_bytes(f"s3://{BUCKET}/direct/empty.jsonl", b"")
    assert proxy.injected == 1 and client.get_object(Bucket=BUCKET, Key="direct/empty.jsonl")["Body"].read() == b""


def test_ingest_fails_without_success_when_retries_run_out(s3):
    """A fault longer than the retry budget fails the job; the new output is never marked complete,
    and the previous complete output is left as it was."""
    endpoint, client, proxy = s3
    _upload_raccoon(client)
    client.put_object(Bucket=BUCKET, Key="ingest-burst/_SUCCESS", Body=b'{"files": []}')  # a previous complete run
    from beam_jobs.ingest import run_ingest
    from ssdflow.config import IngestConfig

    proxy.configure(
        fail_first=10**6,
        fail_every=0,
        status=503,
        fail_when=lambda method, path: path.split("?")[0].endswith("/final/stats.json"),
    )
    with pytest.raises(Exception, match="SlowDown"):
        run_ingest(
            IngestConfig(
                images=f"s3://{BUCKET}/raw/images/",
                labels=f"s3://{BUCKET}/raw/labels/",
                format="voc",
                out=f"s3://{BUCKET}/ingest-burst",
                beam_args=[f"--s3_endpoint_url={proxy.url}", *REGION],
            )
        )
    assert proxy.injected >= 3
    objs = _objects(client, "ingest-burst/")
    assert client.get_object(Bucket=BUCKET, Key="ingest-burst/_SUCCESS")["Body"].read() == b'{"files": []}'  # untouched
    assert not [k for k in objs if k.endswith("stats.json")]  # nothing of the failed run, temp files included

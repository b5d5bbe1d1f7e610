"""s3:// in and out against moto's S3 server on 127.0.0.1 (a real HTTP endpoint, not a mock object).

Keys come from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), as in production; only
the endpoint is a pipeline option.
"""

from __future__ import annotations

import io
import json

import pytest

from beam_jobs.ingest import run_ingest
from ssdflow import schema, tfrecord
from ssdflow.config import IngestConfig
from tests.helpers import moto_s3, raccoon_or_skip

pytestmark = pytest.mark.integration

BUCKET = "ssdflow-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("boto3")
    with moto_s3(bucket=BUCKET) as server:
        yield server


def test_ingest_from_and_to_s3(s3):
    endpoint, client = s3
    root = raccoon_or_skip()
    names = [f"raccoon-{i}" for i in range(10, 21)] + ["raccoon-116"]  # 11 and 116 are byte-identical
    for n in names:
        client.put_object(Bucket=BUCKET, Key=f"raw/images/{n}.jpg", Body=(root / "images" / f"{n}.jpg").read_bytes())
        client.put_object(
            Bucket=BUCKET, Key=f"raw/labels/{n}.xml", Body=(root / "annotations" / f"{n}.xml").read_bytes()
        )
    client.put_object(Bucket=BUCKET, Key="out/train-00042-of-00099.tfrecord", Body=b"stale")  # replaced wholly

    cfg = IngestConfig(
        images=f"s3://{BUCKET}/raw/images/",
        labels=f"s3://{BUCKET}/raw/labels/",
        format="voc",
        out=f"s3://{BUCKET}/out",
        beam_args=[f"--s3_endpoint_url={endpoint}", "--s3_region_name=us-east-1"],
    )
    stats = run_ingest(cfg)
    assert stats["images_in"] == len(names)
    assert stats["images_rejected"] == {"total": 1, "duplicate": 1}

    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="out/")["Contents"])
    assert "out/train-00042-of-00099.tfrecord" not in keys
    assert not [k for k in keys if "/.ssdflow-tmp-" in k]  # temp objects cleaned up
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key="out/_SUCCESS")["Body"].read())
    assert sorted(f"out/{f}" for f in manifest["files"]) == [k for k in keys if not k.endswith("_SUCCESS")]

    written = {}
    for key in keys:
        if key.endswith(".tfrecord"):
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            for data in tfrecord.read_records(io.BytesIO(body)):
                rec = schema.parse_example(data)
                written[rec[schema.SOURCE_ID][0].decode()] = rec
    assert set(written) == set(names) - {"raccoon-116"}
    assert written["raccoon-11"][schema.ENCODED][0] == (root / "images" / "raccoon-11.jpg").read_bytes()
    stats_json = client.get_object(Bucket=BUCKET, Key="out/stats.json")["Body"].read().decode()
    rejected = client.get_object(Bucket=BUCKET, Key="out/rejected.jsonl")["Body"].read().decode()
    assert "s3://ssdflow-test/raw/images/raccoon-116.jpg" in rejected
    for secret in ("testing-secret",):  # keys never leak into outputs
        assert secret not in stats_json and secret not in rejected and secret not in json.dumps(manifest)

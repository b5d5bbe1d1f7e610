"""The model registry on object storage, against moto's S3 server on 127.0.0.1: versions appear only
with their manifest, the champion pointer moves by compare-and-swap (S3 conditional writes), the
decision log is one object per decision, and the training lease keeps a second training out."""

from __future__ import annotations

import json
import threading
import time

import pytest

from model import registry
from ssdflow import cas, storage
from ssdflow.schema import LabelMap
from tests.helpers import moto_s3

pytestmark = pytest.mark.integration

BUCKET = "ssdflow-registry"
LM = {"cat": 1, "dog": 2}


@pytest.fixture(scope="module")
def s3():
    pytest.importorskip("boto3")
    with moto_s3(bucket=BUCKET) as (endpoint, client):
        storage.configure([f"--s3_endpoint_url={endpoint}", "--s3_region_name=us-east-1"])
        yield endpoint, client


def make_version(root: str, map50: float) -> str:
    version = registry.new_version(root)
    staging = registry.staging_dir(root, version)
    with open(f"{staging}/metrics.json", "w") as f:
        json.dump({"mAP@.5": map50, "mAP": map50 / 2}, f)
    with open(f"{staging}/label_map.json", "w") as f:
        f.write(LabelMap(LM).to_json())
    open(f"{staging}/saved_model.pb", "wb").close()  # the registry knows a version by it, never loads it
    registry.commit_version(root, version)
    return version


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_versions_are_listed_only_with_their_manifest_and_promotion_works_by_hand(s3):
    _, client = s3
    root = f"s3://{BUCKET}/hand"
    # An upload cut short (no manifest) is no version, and its name is never issued again.
    client.put_object(Bucket=BUCKET, Key="hand/30000101T000000Z-dead/metrics.json", Body=b"{}")
    v1, v2 = make_version(root, 0.5), make_version(root, 0.6)
    assert v1 > "30000101T000000Z-dead" and registry.list_versions(root) == [v1, v2]
    assert f"hand/{v1}/_SUCCESS" in keys(client, "hand/")
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=f"hand/{v1}/_SUCCESS")["Body"].read())
    assert manifest["files"] == ["label_map.json", "metrics.json", "saved_model.pb"]
    with pytest.raises(FileExistsError):
        registry.staging_dir(root, v1)

    registry.promote_version(root, v1, "ana", "first")
    registry.promote_version(root, v2, "ben", "better")
    assert registry.read_champion(root)["version"] == v2
    assert registry.rollback(root, "ana", "v2 misses cats")["challenger"] == v1
    assert registry.read_champion(root)["version"] == v1
    decisions = registry.read_decisions(root)
    assert [(d["action"], d["challenger"], d["by"]) for d in decisions] == [
        ("promote", v1, "ana"),
        ("promote", v2, "ben"),
        ("rollback", v1, "ana"),
    ]
    assert len([k for k in keys(client, "hand/decisions/")]) == 3  # one object per decision, no appends
    assert [r["champion"] for r in registry.describe_versions(root)] == [True, False]
    with pytest.raises(FileNotFoundError):
        registry.promote_version(root, "30000101T000000Z-dead", "ana", "never committed")


def test_fifty_racing_promotions_leave_one_chain_of_champions(s3):
    """50 challengers promoted at once from 50 threads: exactly one champion at the end (the best),
    every decision recorded once, and the promoted decisions form one chain, each replacing the
    champion the one before it installed (a lost update would give two the same predecessor)."""
    _, client = s3
    root = f"s3://{BUCKET}/race"
    scores = [round(0.3 + 0.01 * ((i * 37) % 50), 2) for i in range(50)]  # a permutation of 0.30 … 0.79
    versions = [make_version(root, s) for s in scores]
    by_version = dict(zip(versions, scores))

    def evaluate(champion_dir: str) -> dict:  # the champion's score on "current val": its own
        time.sleep(0.01)  # widens the window between reading the pointer and swapping it
        return json.loads(storage.read_text(storage.join(champion_dir, "metrics.json")))

    start, errors = threading.Barrier(len(versions)), []

    def promote(version: str) -> None:
        try:
            start.wait()
            registry.promote_if_better(root, version, evaluate)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors

    champion = registry.read_champion(root)
    assert champion["version"] == max(by_version, key=by_version.get)
    decisions = registry.read_decisions(root)
    assert sorted(d["challenger"] for d in decisions) == sorted(versions)  # every decision once
    assert len(keys(client, "race/decisions/")) == 50
    promoted = [d for d in decisions if d["promoted"]]
    successor = {}
    for d in promoted:
        assert d["champion"] not in successor, f"two promotions replaced {d['champion']}"
        successor[d["champion"]] = d["challenger"]
    chain, current = [], None
    while current in successor:
        current = successor[current]
        chain.append(current)
    assert len(chain) == len(promoted) and chain[-1] == champion["version"]
    assert [by_version[v] for v in chain] == sorted(by_version[v] for v in chain)  # each beat the one before
    for d in decisions:  # a refusal was decided against the champion of its moment, never a stale one
        if not d["promoted"]:
            assert d["challenger_score"] < d["champion_score"]
    stored = client.get_object(Bucket=BUCKET, Key="race/champion.json")["Body"].read()
    assert json.loads(stored)["version"] == champion["version"]  # whole JSON, not torn


def test_a_swap_against_a_stale_read_is_refused(s3):
    uri = f"s3://{BUCKET}/cas/pointer.json"
    empty = cas.read(uri)
    first = cas.swap(uri, b"1", empty)
    with pytest.raises(cas.Conflict):
        cas.swap(uri, b"2", empty)  # created by someone else since it was read as absent
    second = cas.swap(uri, b"2", first)
    with pytest.raises(cas.Conflict):
        cas.swap(uri, b"3", first)  # replaced since it was read
    assert cas.read(uri) == second and second.data == b"2"


def test_the_training_lease_keeps_a_second_training_out_until_it_ends_or_expires(s3):
    from model.run_record import Lease, TrainError

    uri = f"s3://{BUCKET}/lease/.train.lease"
    with Lease(uri, seconds=2.0).held() as first:
        time.sleep(2.5)  # longer than the lease: its renewals keep it
        with pytest.raises(
            TrainError, match=r"another training is running on s3://ssdflow-registry/lease \(pid \d+ on "
        ):
            Lease(uri).acquire()
        first.check()
    with Lease(uri).held():  # released at the end of the first
        pass

    abandoned = Lease(uri, seconds=1.5)
    abandoned.holder = "pid 1 on a lost machine"
    abandoned.acquire()  # taken and never renewed, as by a training killed on another machine
    with pytest.raises(TrainError, match="pid 1 on a lost machine"):
        Lease(uri).acquire()
    time.sleep(1.6)
    with Lease(uri).held():  # expired: free again
        pass

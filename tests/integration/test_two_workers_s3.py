"""The nightly loop on workers that share no disk: two Prefect process workers, each started in an
empty directory of its own with a cache of its own, sharing only a Prefect server and an S3 endpoint
(moto's server on 127.0.0.1). The deployments are deploy/prefect.yaml's, registered by
scripts/deploy.sh with ``SSDFLOW_DATA=s3://…``; the endpoint reaches boto3 as AWS_ENDPOINT_URL, so
no parameter of any run names a local path or an endpoint.

* worker A runs the nightly deployment: ingest → train → promote → push → score, all on S3;
* worker B runs a batch-score with the champion A made, and `ssdflow models list` reads the registry;
* a training SIGKILLed on A (with its worker), once marked Crashed, is rerun by the automation and
  resumed on B from the checkpoints in S3.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, moto_s3, stop_process
from tests.prefect_stack import env, prefect_server, request, wait_for_run

pytestmark = pytest.mark.integration
pytest.importorskip("tensorflow")
pytest.importorskip("boto3")

BIN = os.path.dirname(sys.executable)
BUCKET = "ssdflow-night"
DATA = f"s3://{BUCKET}/ssdflow"
TINY = {
    "alpha": 0.35,
    "image_size": 128,
    "batch_size": 4,
    "backbone_weights": "none",
    "bn_momentum": 0.9,
    "augment": False,
    "eval_every": 1000,
    "min_map": 0.0,
    "time_budget": 0,
    "init_from": "backbone",
    "deterministic": True,
}


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def local_paths(value, where="") -> list[str]:
    """Every string in a run's parameters that looks like a local path."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in local_paths(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in local_paths(v, f"{where}[{i}]")]
    return (
        [f"{where}={value}"]
        if isinstance(value, str) and (value.startswith(("/", "./", "~")) or "127.0.0.1" in value)
        else []
    )


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (from /proc's parent links), children first."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = open(f"/proc/{entry}/stat").read()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


class Worker:
    """`prefect worker start --pool ssdflow-process` in an empty directory with a cache of its own."""

    def __init__(self, home, base_env: dict, name: str):
        self.dir = home / name
        (self.dir / "cache").mkdir(parents=True)
        self.env = {
            **base_env,
            "SSDFLOW_CACHE_DIR": str(self.dir / "cache"),
            "HOME": str(self.dir),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }  # Prefect's 10 s between polls would be most of a run's wait
        self.name, self.proc = name, None

    def start(self):
        # At a lower CPU priority (the flow runs inherit it): this test's runs have minutes to finish,
        # the suite's other files (the browser test's page loads) run beside it on 2 cores.
        self.proc = subprocess.Popen(
            ["nice", "-n", "10", f"{BIN}/prefect", "worker", "start", "--pool", "ssdflow-process", "--name", self.name],
            cwd=self.dir,
            env=self.env,
            stdout=open(self.dir / "worker.log", "a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, timeout=20)

    def kill(self):
        """SIGKILL the worker and every process below it: the flow runs it started run in process
        groups of their own, so the machine going away is the whole tree dying at once."""
        tree = descendants(self.proc.pid)
        for pid in [self.proc.pid, *tree]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert tree, "the worker had started no flow-run process"

    def log(self) -> str:
        return (self.dir / "worker.log").read_text(errors="replace")[-4000:]


def run(api: str, deployment: dict, config: dict) -> str:
    assert not local_paths(config), local_paths(config)
    status, created = request(
        "POST",
        f"{api}/deployments/{deployment['id']}/create_flow_run",
        {"parameters": {"config": config}, "enforce_parameter_schema": True},
    )
    assert status == 201, created
    return created["id"]


def test_the_nightly_loop_runs_on_two_workers_that_share_only_s3(shapes, tmp_path):
    with moto_s3(bucket=BUCKET) as (endpoint, client), prefect_server(tmp_path / "prefect") as api:
        for path in sorted(shapes["images"].iterdir()):  # tonight's images and labels, and an archive to score
            client.put_object(Bucket=BUCKET, Key=f"ssdflow/incoming/images/{path.name}", Body=path.read_bytes())
            client.put_object(Bucket=BUCKET, Key=f"ssdflow/archive/{path.name}", Body=path.read_bytes())
        for path in sorted((shapes["images"].parent / "labels").iterdir()):
            client.put_object(Bucket=BUCKET, Key=f"ssdflow/incoming/annotations/{path.name}", Body=path.read_bytes())

        base = {
            **env(tmp_path / "prefect", api),
            "SSDFLOW_REPO": str(REPO),
            "SSDFLOW_DATA": DATA,
            "SSDFLOW_TIMEZONE": "UTC",
            "SSDFLOW_BIN": BIN,
            "AWS_ENDPOINT_URL": endpoint,
            "SSDFLOW_LEASE_SECONDS": "20",
        }
        deployed = subprocess.run(
            ["bash", "scripts/deploy.sh"], cwd=REPO, env=base, capture_output=True, text=True, timeout=600
        )
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        _, deployments = request("POST", f"{api}/deployments/filter", {})
        by_name = {d["name"]: d for d in deployments}
        a, b = Worker(tmp_path, base, "worker-a"), Worker(tmp_path, base, "worker-b")
        try:
            # Worker A: the whole night on S3.
            a.start()
            nightly = dict(by_name["nightly-retrain"]["parameters"]["config"])
            nightly.update(
                train={**TINY, "epochs": 2, "steps_per_epoch": 3},
                comparison_images=0,
                push_to=f"{DATA}/serving",
                score_images=[f"{DATA}/archive/"],
                score_out=f"{DATA}/scored",
            )
            finished = wait_for_run(api, run(api, by_name["nightly-retrain"], nightly), timeout=600)
            assert finished["state_type"] == "COMPLETED", a.log()
            champion = json.loads(client.get_object(Bucket=BUCKET, Key="ssdflow/models/champion.json")["Body"].read())[
                "version"
            ]
            stored = keys(client, "ssdflow/")
            assert f"ssdflow/models/{champion}/_SUCCESS" in stored and "ssdflow/records/_SUCCESS" in stored
            assert "ssdflow/serving/1/saved_model.pb" in stored and "ssdflow/scored/_SUCCESS" in stored
            assert [k for k in stored if k.startswith("ssdflow/models/decisions/")]
            summary = json.loads(client.get_object(Bucket=BUCKET, Key="ssdflow/scored/summary.json")["Body"].read())
            assert summary["model_version"] == champion and summary["images_scored"] == 12
            # The version is whole: its manifest lists every file of it; the card names no endpoint.
            manifest = json.loads(
                client.get_object(Bucket=BUCKET, Key=f"ssdflow/models/{champion}/_SUCCESS")["Body"].read()
            )
            assert {"saved_model.pb", "label_map.json", "metrics.json", "model_card.md", "keras.weights.h5"} <= set(
                manifest["files"]
            )
            assert sorted(f"ssdflow/models/{champion}/{f}" for f in manifest["files"]) == [
                k
                for k in stored
                if k.startswith(f"ssdflow/models/{champion}/") and not k.endswith(("_SUCCESS", "decision.json"))
            ]
            card = (
                client.get_object(Bucket=BUCKET, Key=f"ssdflow/models/{champion}/model_card.md")["Body"].read().decode()
            )
            assert "## Promotion decision" in card and endpoint not in card
            # A read the records from one local copy of exactly the files the ingest output's manifest names.
            records = json.loads(client.get_object(Bucket=BUCKET, Key="ssdflow/records/_SUCCESS")["Body"].read())[
                "files"
            ]
            (copy,) = [p for p in (a.dir / "cache").iterdir() if p.name.startswith("records-")]
            assert sorted(os.listdir(copy)) == sorted(["_SUCCESS", *records])
            a.stop()

            # Worker B: a batch-score with the champion A made.
            b.start()
            score = {"model": f"{DATA}/models", "images": [f"{DATA}/archive/"], "out": f"{DATA}/scored-b"}
            finished = wait_for_run(api, run(api, by_name["batch-score"], score), timeout=600)
            assert finished["state_type"] == "COMPLETED", b.log()
            summary = json.loads(client.get_object(Bucket=BUCKET, Key="ssdflow/scored-b/summary.json")["Body"].read())
            assert summary["model_version"] == champion and summary["images_scored"] == 12
            b.stop()
            listed = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "ssdflow.cli",
                    "models",
                    "list",
                    "--models",
                    f"{DATA}/models",
                    f"--s3_endpoint_url={endpoint}",
                ],
                cwd=b.dir,
                env=b.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert listed.returncode == 0 and f"* {champion}" in listed.stdout, listed.stderr[-3000:]

            # A training killed on A, with its worker, resumes on B from its checkpoints in S3.
            a.start()
            train = {"data": f"{DATA}/records", "models": f"{DATA}/models-2", **TINY, "epochs": 3, "steps_per_epoch": 4}
            killed = run(api, by_name["train"], train)
            deadline = time.time() + 300
            while "ssdflow/models-2/.train-run/phase1/checkpoint" not in keys(client, "ssdflow/models-2/.train-run/"):
                assert time.time() < deadline, a.log()
                time.sleep(0.5)
            a.kill()
            assert not keys(client, "ssdflow/models-2/champion.json")
            # Marked Crashed, as `ssdflow automations` marks a run after 90 s without a heartbeat
            # (tests/integration/test_prefect_crash.py waits that out); its other automation then runs
            # the deployment again with the same config, and worker B picks the rerun up.
            crashed = {"state": {"type": "CRASHED", "name": "Crashed"}, "force": True}
            assert request("POST", f"{api}/flow_runs/{killed}/set_state", crashed)[0] in (200, 201)
            b.start()
            query = {"flow_runs": {"deployment_id": {"any_": [by_name["train"]["id"]]}, "id": {"not_any_": [killed]}}}
            deadline, reruns = time.time() + 120, []
            while not reruns:
                assert time.time() < deadline, "the crashed training was not rerun"
                time.sleep(1)
                _, reruns = request("POST", f"{api}/flow_runs/filter", query)
            rerun = reruns[0]
            assert rerun["parameters"]["config"]["models"] == train["models"] and rerun["parameters"]["attempt"] == 1
            finished = wait_for_run(api, rerun["id"], timeout=600)
            assert finished["state_type"] == "COMPLETED", b.log()
            resumed = [
                line for line in (b.dir / "worker.log").read_text(errors="replace").splitlines() if "resum" in line
            ]
            assert any("resuming the interrupted training of these settings and data" in line for line in resumed), (
                b.log()
            )
            assert any("resuming from the checkpoint after epoch" in line for line in resumed), b.log()
            version = json.loads(client.get_object(Bucket=BUCKET, Key="ssdflow/models-2/champion.json")["Body"].read())[
                "version"
            ]
            metrics = json.loads(
                client.get_object(Bucket=BUCKET, Key=f"ssdflow/models-2/{version}/metrics.json")["Body"].read()
            )
            # B trained only what A had not (it resumed from a checkpoint, above); the version's
            # history holds the whole run, every epoch once, A's included (mirrored with the checkpoints).
            assert [e["epoch"] for e in metrics["history"]] == [1, 2, 3] and metrics["epochs"] == 3
            assert metrics["optimizer_steps"] == {"phase1": 12}
            assert not keys(client, "ssdflow/models-2/.train-run/")
        finally:
            a.stop()
            b.stop()

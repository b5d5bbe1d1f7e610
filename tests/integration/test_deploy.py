"""deploy/prefect.yaml deploys: `scripts/deploy.sh` (prefect deploy --all) registers the six deployments
on a process work pool of a real `prefect server` on 127.0.0.1 that requires authentication, as the
README sets it up, and a `prefect worker` runs one to Completed."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

from tests.helpers import REPO, stop_process
from tests.prefect_stack import env, prefect_server, request, wait_for_run

pytestmark = pytest.mark.integration
BIN = os.path.dirname(sys.executable)


def _deploy_env(prefect_home, api, data, auth=None) -> dict:
    e = {
        **env(prefect_home, api),
        "SSDFLOW_REPO": str(REPO),
        "SSDFLOW_DATA": str(data),
        "SSDFLOW_TIMEZONE": "Europe/Berlin",
        "SSDFLOW_BIN": BIN,
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
    }
    if auth:
        e["PREFECT_API_AUTH_STRING"] = auth  # every client: deploy, automations, the worker, the flow runs
    return e


def test_deploy_refuses_without_its_variables(tmp_path):
    e = _deploy_env(tmp_path, "http://127.0.0.1:9/api", tmp_path)
    del e["SSDFLOW_TIMEZONE"], e["SSDFLOW_DATA"]
    proc = subprocess.run(["bash", "scripts/deploy.sh"], cwd=REPO, env=e, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "SSDFLOW_DATA SSDFLOW_TIMEZONE" in proc.stderr


def test_prefect_yaml_registers_six_deployments_and_a_worker_runs_one(tmp_path, shapes):
    prefect_home, data = tmp_path / "prefect", tmp_path / "data"
    auth = f"ssdflow:{secrets.token_urlsafe(16)}"
    with prefect_server(prefect_home, auth=auth) as api:
        e = _deploy_env(prefect_home, api, data, auth)
        proc = subprocess.run(
            ["bash", "scripts/deploy.sh"], cwd=REPO, env=e, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

        _, deployments = request("POST", f"{api}/deployments/filter", {}, auth=auth)
        by_name = {d["name"]: d for d in deployments}
        assert set(by_name) == {"nightly-retrain", "batch-score", "ingest", "train", "models", "demo"}
        assert {d["work_pool_name"] for d in deployments} == {"ssdflow-process"}
        schedule = by_name["nightly-retrain"]["schedules"][0]["schedule"]
        assert schedule["cron"] == "0 2 * * *" and schedule["timezone"] == "Europe/Berlin"
        # Templates resolved from the environment, the heartbeat set for the flow-run processes.
        assert by_name["batch-score"]["parameters"]["config"]["out"] == f"{data}/scored"
        assert by_name["nightly-retrain"]["parameters"]["config"]["ingest"]["out"] == f"{data}/records"
        assert by_name["ingest"]["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
        for name in ("batch-score", "ingest"):  # bounded load: extra runs queue
            assert by_name[name]["global_concurrency_limit"]["limit"] == 2, by_name[name]
            assert by_name[name]["concurrency_options"]["collision_strategy"] == "ENQUEUE"
        assert by_name["nightly-retrain"]["pull_steps"][0]["prefect.deployments.steps.set_working_directory"][
            "directory"
        ] == str(REPO)
        _, automations = request("POST", f"{api}/automations/filter", {}, auth=auth)
        assert len(automations) == 2

        # A run created as the UI's Run button does, picked up by a process worker.
        out = tmp_path / "records"
        config = {
            "images": str(shapes["images"]),
            "labels": str(shapes["images"].parent / "labels"),
            "format": "voc",
            "out": str(out),
        }
        create = f"{api}/deployments/{by_name['ingest']['id']}/create_flow_run"
        body = {"parameters": {"config": config}, "enforce_parameter_schema": True}
        assert request("POST", create, body)[0] == 401  # nobody without the secret
        assert request("POST", create, body, auth="ssdflow:guess")[0] == 401
        status, run = request("POST", create, body, auth=auth)
        assert status == 201, run
        worker = subprocess.Popen(
            [f"{BIN}/prefect", "worker", "start", "--pool", "ssdflow-process"],
            cwd=tmp_path,
            env=e,
            stdout=open(tmp_path / "worker.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            finished = wait_for_run(api, run["id"], timeout=300, auth=auth)
        finally:
            stop_process(worker, timeout=20)
        assert finished["state_type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]
        assert (out / "_SUCCESS").exists()

"""A served run whose processes are SIGKILLed is marked Crashed and rerun, and the rerun's outputs
equal an uninterrupted run's (real `prefect server` on 127.0.0.1, real `ssdflow serve`).

Timeline: batch-score starts (10 chunks of 6 raccoon images in one pipeline run, each committed as it finishes); once some chunks are committed
the serving process group gets SIGKILL (serve and the flow-run process die together) and serve is
started again. Heartbeats stop, so ``ssdflow: mark silent runs crashed`` sets the run CRASHED,
``ssdflow: rerun crashed runs`` creates a rerun with the same config and ``attempt`` 1, and the
new serve process runs it: only the chunks not yet committed are scored.
"""

from __future__ import annotations

import json
import time

import pytest

from flows.recovery import MAX_RERUNS, RERUN_AUTOMATION, SILENT_AUTOMATION
from tests.helpers import raccoon_subset, read_jsonl
from tests.prefect_stack import prefect_stack, request, wait_for_run

pytestmark = pytest.mark.integration

SILENCE = 45  # seconds without a heartbeat (sent every 30 s) before a run counts as dead
CHUNKS, CHUNK_SIZE = 30, 6  # enough chunks that the kill lands mid-run now that one pipeline scores them all at once


def _committed(out) -> int:
    return len(list(out.glob("chunks/*/*/_SUCCESS")))


def _automations(api: str) -> dict:
    _, autos = request("POST", f"{api}/automations/filter", {})
    return {a["name"]: (a["id"], a["updated"], a["trigger"]["id"]) for a in autos}


def _runs_of(api: str, deployment_id: str) -> list[dict]:
    _, runs = request(
        "POST",
        f"{api}/flow_runs/filter",
        {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "sort": "START_TIME_ASC"},
    )
    return runs


def test_killed_run_is_marked_crashed_and_rerun_to_the_same_outputs(raccoon_model, tmp_path):
    from beam_jobs.score import run_score
    from ssdflow.config import ScoreConfig

    images, _ = raccoon_subset(tmp_path, CHUNKS * CHUNK_SIZE, labels=False)
    images = str(images)
    config = {
        "model": raccoon_model,
        "images": [images],
        "out": str(tmp_path / "scored"),
        "score_threshold": 0.0,
        "max_detections": 5,
        "chunk_size": CHUNK_SIZE,
    }
    reference = tmp_path / "reference"  # uninterrupted
    run_score(ScoreConfig(**{**config, "out": str(reference)}))

    with prefect_stack(tmp_path / "prefect", tmp_path / "home", ["--silence-seconds", str(SILENCE)]) as stack:
        api, serving = stack["api"], stack["serving"]
        dep = stack["deployments"]["batch-score"]
        status, run = request(
            "POST",
            f"{api}/deployments/{dep['id']}/create_flow_run",
            {"parameters": {"config": config}, "enforce_parameter_schema": True},
        )
        assert status == 201, run

        out = tmp_path / "scored"
        deadline = time.time() + 300
        while _committed(out) < 3 and time.time() < deadline:
            time.sleep(0.5)
        assert _committed(out) >= 3, serving.log_text()[-3000:]
        _, state = request("GET", f"{api}/flow_runs/{run['id']}")
        assert state["state_type"] == "RUNNING"

        automations_before = _automations(api)
        serving.kill()
        committed_at_kill = _committed(out)
        assert committed_at_kill < CHUNKS  # the kill landed mid-run
        serving.start()
        # The restarted serve left the automations alone: replacing one would forget the heartbeats
        # already seen, and the dead run, which sends no more, would stay RUNNING forever.
        assert _automations(api) == automations_before

        crashed = wait_for_run(api, run["id"], timeout=SILENCE + 180)
        assert crashed["state_type"] == "CRASHED", crashed["state"]
        assert "heartbeat" in (crashed["state"]["message"] or "")

        deadline = time.time() + 120
        reruns = []
        while not reruns and time.time() < deadline:
            reruns = [r for r in _runs_of(api, dep["id"]) if r["id"] != run["id"]]
            time.sleep(1)
        assert len(reruns) == 1, reruns
        rerun = wait_for_run(api, reruns[0]["id"], timeout=400)
        assert rerun["state_type"] == "COMPLETED", (rerun["state"], serving.log_text()[-3000:])
        assert rerun["parameters"]["attempt"] == 1
        assert rerun["parameters"]["config"] == {**config, "images": [images]}

        # Only the chunks left uncommitted were scored again, and nothing is duplicated or partial.
        manifest = json.loads((out / "_SUCCESS").read_text())
        ref_manifest = json.loads((reference / "_SUCCESS").read_text())
        assert manifest["chunks"] == ref_manifest["chunks"] == CHUNKS
        assert manifest["chunks_scored_now"] <= CHUNKS - committed_at_kill
        for key in ("images_in", "images_scored", "images_failed", "detections", "files"):
            assert manifest[key] == ref_manifest[key], key
        for name in manifest["files"]:
            if name.endswith(".jsonl"):
                assert read_jsonl(out / name) == read_jsonl(reference / name), name
        assert _committed(out) == CHUNKS
        assert not [p for p in out.iterdir() if p.name.startswith(".")], "a temporary directory was left behind"

        # Exactly one automation of each kind, although serve was started twice.
        _, autos = request("POST", f"{api}/automations/filter", {})
        names = sorted(a["name"] for a in autos)
        assert names == sorted([SILENT_AUTOMATION, RERUN_AUTOMATION]), names

        # The bound: the rerun after the last allowed one is refused by the deployment's parameter schema.
        status, body = request(
            "POST",
            f"{api}/deployments/{dep['id']}/create_flow_run",
            {"parameters": {"config": config, "attempt": MAX_RERUNS + 1}, "enforce_parameter_schema": True},
        )
        assert status == 409 and "attempt" in json.dumps(body)

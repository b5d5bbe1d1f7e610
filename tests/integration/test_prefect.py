"""Prefect orchestration against a real `prefect server` on 127.0.0.1, triggered as the UI's Run button does.

One server and one `ssdflow serve` for the module: register the deployments, check the nightly
02:00 schedule, create runs of nightly-retrain through
POST /api/deployments/{id}/create_flow_run with parameters, wait for COMPLETED, and check outputs
and artifacts; invalid parameters are refused when the run is created; ingest runs beyond the
deployment's limit queue and all complete.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers import raccoon_subset, voc_scenes
from tests.prefect_stack import prefect_stack, request as _request, wait_for_run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prefect(tmp_path_factory):
    # Served as production is: runs may read and write only under the allowed roots (here, the tests' temp dir).
    roots = {"SSDFLOW_ALLOWED_ROOTS": str(tmp_path_factory.getbasetemp())}
    with prefect_stack(
        tmp_path_factory.mktemp("prefect-home"),
        tmp_path_factory.mktemp("ssdflow-home"),
        ["--timezone", "Europe/Berlin"],
        serve_env=roots,
    ) as stack:
        yield stack


def _run(prefect, deployment: str, parameters: dict, timeout: float = 600) -> dict:
    """Creates a run exactly as the UI's Run button does, then waits for a final state."""
    dep = prefect["deployments"][deployment]
    body = {
        "parameters": parameters,
        "enforce_parameter_schema": True,
        "state": {
            "type": "SCHEDULED",
            "message": "Run from the Prefect UI",
            "state_details": {"deferred": False, "untrackable_result": False, "pause_reschedule": False},
        },
    }
    status, run = _request("POST", f"{prefect['api']}/deployments/{dep['id']}/create_flow_run", body)
    assert status == 201, run
    return wait_for_run(prefect["api"], run["id"], timeout)


def _artifacts(prefect, run_id: str) -> dict:
    _, arts = _request("POST", f"{prefect['api']}/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    return {a.get("key") or a["id"]: a for a in arts}


def test_deployments_and_the_nightly_schedule(prefect):
    deps = prefect["deployments"]
    assert {"nightly-retrain", "batch-score", "ingest", "train", "models", "demo"} <= set(deps)
    nightly = deps["nightly-retrain"]
    crons = [s["schedule"] for s in nightly["schedules"]]
    assert crons and crons[0]["cron"] == "0 2 * * *" and crons[0]["timezone"] == "Europe/Berlin"
    assert deps["batch-score"]["schedules"] == []
    schema = deps["batch-score"]["parameter_openapi_schema"]
    assert "config" in schema["properties"]  # the pydantic config: a form in the UI


def test_invalid_parameters_are_refused_at_creation(prefect):
    params = dict(prefect["deployments"]["batch-score"]["parameters"])
    bad = {"config": {**params["config"], "score_threshold": 7}}
    dep = prefect["deployments"]["batch-score"]
    status, body = _request(
        "POST",
        f"{prefect['api']}/deployments/{dep['id']}/create_flow_run",
        {"parameters": bad, "enforce_parameter_schema": True},
    )
    assert status == 409 and "score_threshold" in json.dumps(body)
    ingest = dict(prefect["deployments"]["ingest"]["parameters"])
    status, body = _request(
        "POST",
        f"{prefect['api']}/deployments/{prefect['deployments']['ingest']['id']}/create_flow_run",
        {"parameters": {"config": {**ingest["config"], "format": "pascal"}}, "enforce_parameter_schema": True},
    )
    assert status == 409 and "format" in json.dumps(body)


def test_a_location_outside_the_allowed_roots_is_refused_at_creation(prefect, tmp_path):
    """The deployment's schema carries the roots: the server refuses the run (409) and nothing is written."""
    dep = prefect["deployments"]["batch-score"]
    config = dep["parameters"]["config"]
    runs = {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}}
    before = _request("POST", f"{prefect['api']}/flow_runs/count", runs)[1]
    for bad in (
        {**config, "out": "/var/tmp/ssdflow-not-allowed"},
        {**config, "out": f"{tmp_path}/../../../../var/tmp/x"},
        {**config, "images": ["/etc"]},
    ):
        status, body = _request(
            "POST",
            f"{prefect['api']}/deployments/{dep['id']}/create_flow_run",
            {"parameters": {"config": bad}, "enforce_parameter_schema": True},
        )
        assert status == 409 and "does not match" in json.dumps(body), (status, body)
    assert _request("POST", f"{prefect['api']}/flow_runs/count", runs)[1] == before  # no run exists to pick up


def test_nightly_retrain_from_the_api_trains_skips_and_retrains(prefect, tmp_path):
    images, labels = raccoon_subset(tmp_path, 20)
    models = tmp_path / "models"
    nightly = {
        "config": {
            "ingest": {
                "images": str(images),
                "labels": str(labels),
                "format": "voc",
                "out": str(tmp_path / "records"),
                "val_fraction": 0.2,
            },
            "models": str(models),
            "train": {
                "alpha": 0.35,
                "image_size": 128,
                "epochs": 1,
                "steps_per_epoch": 2,
                "batch_size": 8,
                "backbone_weights": "none",
                "eval_every": 1000,
                "min_map": 0.0,
            },
            "score_images": [str(images)],
            "score_out": str(tmp_path / "nightly-scored"),
            "select": 3,
            "comparison_images": 2,
            "tflite": ["float16"],
        }
    }
    run = _run(prefect, "nightly-retrain", nightly)
    assert run["state_type"] == "COMPLETED", run["state"]
    champion = json.loads((models / "champion.json").read_text())
    assert (models / champion["version"] / "saved_model.pb").exists()
    assert json.loads((tmp_path / "nightly-scored" / "_SUCCESS").read_text())["images_in"] == 20
    arts = _artifacts(prefect, run["id"])
    assert {"ingest-stats", "ingest-since-last-night", "training-metrics", "model-card"} <= set(arts), sorted(arts)
    # Progress artifacts of ingest, training and scoring, each at 100 % when the run is done.
    bars = {a["description"].split(" ", 1)[0]: a["data"] for a in arts.values() if a["type"] == "progress"}
    assert bars == {"ingest": 100.0, "training": 100.0, "scoring": 100.0}, bars
    # The card shows its PR curves and drawn val images inline: the UI cannot reach the model directory.
    card = arts["model-card"]["data"]
    assert card.count("](data:image/png;base64,") == 1 and "](data:image/jpeg;base64," in card, card[:2000]
    # The images worth labelling next, as a table with thumbnails the UI shows inline.
    batch = arts["labelling-batch"]["data"]
    assert "3 images worth labelling next" in batch and batch.count("](data:image/jpeg;base64,") == 3, batch[:2000]
    assert len(list((tmp_path / "nightly-scored" / "labelling" / "annotations").glob("*.xml"))) == 3
    # The champion as TFLite (issue 14 item 5): the file beside its SavedModel, scored on val, in a table.
    assert (models / champion["version"] / "model_float16.tflite").stat().st_size > 0
    rows = arts["tflite-exports"]["data"]
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert [(r["file"], r["quantization"]) for r in rows] == [("model_float16.tflite", "float16")] and rows[0][
        "val mAP@.5"
    ] is not None

    # The same night again: ingest is cached (inputs unchanged), and the champion was trained on this
    # data with these settings, so nothing is trained or promoted (the archive is still scored).
    versions = sorted(p.name for p in models.iterdir() if (p / "saved_model.pb").exists())
    decisions = (models / "decisions.jsonl").read_text()
    run2 = _run(prefect, "nightly-retrain", nightly)
    assert run2["state_type"] == "COMPLETED", run2["state"]
    arts2 = _artifacts(prefect, run2["id"])
    assert "training-skipped" in arts2 and "champion-vs-challenger" not in arts2, sorted(arts2)
    assert champion["version"] in arts2["training-skipped"]["data"]
    assert sorted(p.name for p in models.iterdir() if (p / "saved_model.pb").exists()) == versions
    assert (models / "decisions.jsonl").read_text() == decisions
    _, tasks = _request("POST", f"{prefect['api']}/task_runs/filter", {"flow_runs": {"id": {"any_": [run2["id"]]}}})
    ingest_states = [t["state"]["name"] for t in tasks if t["name"].startswith("ingest")]
    assert ingest_states == ["Cached"], ingest_states
    assert "score" in {t["name"].split("-")[0] for t in tasks}
    assert any(t["name"].startswith("nothing-to-learn?") for t in tasks)  # the skip decision is a task run the UI shows
    # Scoring with the champion (a models directory) reports as batch-score does (the crash test and
    # the browser test run batch-score itself through the API).
    assert {"scoring-summary", "scoring-summary-output"} <= set(arts2), sorted(arts2)
    assert json.loads((tmp_path / "nightly-scored" / "_SUCCESS").read_text())["images_scored"] == 20

    # Other settings: something to learn; the challenger is trained and drawn beside the champion.
    nightly["config"]["train"]["steps_per_epoch"] = 3
    run2b = _run(prefect, "nightly-retrain", nightly)
    assert run2b["state_type"] == "COMPLETED", run2b["state"]
    assert "champion-vs-challenger" in _artifacts(prefect, run2b["id"])
    assert len([p for p in models.iterdir() if (p / "saved_model.pb").exists()]) == len(versions) + 1

    # The models deployment: a version promoted by hand from the UI, then rolled back, each recorded
    # with who and why (a decision without a reason is refused by ModelsConfig: tests/unit/test_serve_config.py).
    two = sorted(p.name for p in models.iterdir() if (p / "saved_model.pb").exists())
    before = json.loads((models / "champion.json").read_text())["version"]
    other = next(v for v in two if v != before)
    promote = {
        "config": {
            "models": str(models),
            "action": "promote",
            "version": other,
            "reason": "looks better on site",
            "by": "ana",
        }
    }
    run4 = _run(prefect, "models", promote)
    assert run4["state_type"] == "COMPLETED", run4["state"]
    assert json.loads((models / "champion.json").read_text())["version"] == other
    rows = _artifacts(prefect, run4["id"])["model-versions"]["data"]
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert {r["version"] for r in rows if r["champion"] == "*"} == {other} and len(rows) == 2
    run5 = _run(prefect, "models", {"config": {"models": str(models), "action": "rollback", "reason": "false alarms"}})
    assert run5["state_type"] == "COMPLETED", run5["state"]
    assert json.loads((models / "champion.json").read_text())["version"] == before
    last = [json.loads(line) for line in (models / "decisions.jsonl").read_text().splitlines()][-2:]
    assert [(d["action"], d["by"], d["reason"]) for d in last] == [
        ("promote", "ana", "promote by hand: looks better on site"),
        ("rollback", f"prefect flow run {run5['name']}", "rollback by hand: false alarms"),
    ]


def _create(prefect, deployment: str, parameters: dict) -> str:
    dep = prefect["deployments"][deployment]
    status, run = _request(
        "POST",
        f"{prefect['api']}/deployments/{dep['id']}/create_flow_run",
        {"parameters": parameters, "enforce_parameter_schema": True},
    )
    assert status == 201, run
    return run["id"]


def _running_at_once(states_by_run: dict[str, list[dict]]) -> int:
    """The most runs in Running at one instant, from each run's state history (Running → a final state)."""
    from datetime import datetime

    events = []
    for states in states_by_run.values():
        stamps = {s["type"]: datetime.fromisoformat(s["timestamp"]) for s in states}
        events += [(stamps["RUNNING"], 1), (stamps["COMPLETED"], -1)]
    level = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        level += step
        peak = max(peak, level)
    return peak


def test_ingest_runs_beyond_the_run_limit_wait_for_a_slot_and_all_complete(prefect, tmp_path):
    """Limit + 2 ingest runs created at once on the real server, served by two `ssdflow serve`
    processes (two machines, say), which together could take twice the limit: no poll sees more than
    the deployment's limit Running; from each run's state history, never more than the limit ran at
    one instant, and the server held runs beyond it in AwaitingConcurrencySlot; all Completed, each
    output whole and right. (One serve process alone never even asks for more than --max-runs: the
    others wait Scheduled until it has a free slot.)"""
    from ssdflow import storage
    from tests.prefect_stack import Serving

    dep = prefect["deployments"]["ingest"]
    limit = (dep.get("global_concurrency_limit") or {}).get("limit") or dep["concurrency_limit"]
    assert limit >= 1
    first = prefect["serving"]
    second = Serving(prefect["api"], tmp_path / "prefect-2", tmp_path / "home-2", first.serve_args, first.extra_env)
    (tmp_path / "prefect-2").mkdir()
    images, labels, _ = voc_scenes(tmp_path, 6, 96, seed=3, max_objects=2)
    config = {
        **dep["parameters"]["config"],
        "images": str(images),
        "labels": str(labels),
        "format": "voc",
        "val_fraction": 0.3,
    }
    outs = [tmp_path / f"out{i}" for i in range(limit + 2)]
    try:
        second.start()
        ids = [_create(prefect, "ingest", {"config": {**config, "out": str(out)}}) for out in outs]
        most_running, deadline = 0, time.time() + 600
        while time.time() < deadline:
            _, runs = _request("POST", f"{prefect['api']}/flow_runs/filter", {"flow_runs": {"id": {"any_": ids}}})
            kinds = [r["state_type"] for r in runs]
            most_running = max(most_running, kinds.count("RUNNING"))
            assert kinds.count("RUNNING") <= limit, [(r["name"], r["state_name"]) for r in runs]
            if all(k in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for k in kinds):
                break
            time.sleep(0.5)
    finally:
        second.stop()
    assert kinds == ["COMPLETED"] * len(ids), [(r["name"], r["state_name"]) for r in runs]

    histories = {i: _request("GET", f"{prefect['api']}/flow_run_states/?flow_run_id={i}")[1] for i in ids}
    names = {i: [(s["name"], s["timestamp"][11:23]) for s in states] for i, states in histories.items()}
    assert _running_at_once(histories) <= limit, names
    assert any(name == "AwaitingConcurrencySlot" for states in names.values() for name, _ in states), names
    for out in outs:
        manifest = storage.read_success(str(out))
        assert manifest and manifest["images_in"] == 6 and manifest["images_written"] == 6, (out, manifest)

"""Many batch-score runs created at once against `ssdflow serve` (issue 12: bounded load).

    .venv/bin/python -m bench.concurrent_runs --runs 40
    .venv/bin/python -m bench.concurrent_runs --runs 12 --max-runs 4

Starts a real `prefect server` on 127.0.0.1 and `ssdflow serve` (its default --max-runs unless given),
creates --runs batch-score flow runs through the API in one burst, each scoring the same small
archive into its own output, and samples the machine's used memory (MemTotal - MemAvailable) every
0.2 s until every run has ended. Prints the peak number of runs RUNNING at once against the cap, the
used-memory peak above the idle baseline against the cap's budget (cap x the 2 GB per run that
`ssdflow serve` assumes), the wall time, and checks every run Completed with outputs equal to a
reference run's. (The harness is the integration tests' real Prefect stack, tests/prefect_stack.py.)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.prefect_stack import prefect_stack, request, wait_for_run  # noqa: E402


def used_memory() -> int:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


def make_inputs(work: Path, n_images: int) -> tuple[Path, Path]:
    """A tiny exported model (alpha 0.35, 96 px, random weights) and n distinct small JPEGs."""
    import numpy as np
    from PIL import Image

    from bench.score import make_model
    from ssdflow.config import ModelConfig

    model_dir, _, _, _ = make_model(work, ModelConfig(alpha=0.35, image_size=96, num_classes=1))
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n_images):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(buf, format="JPEG")
        (images / f"img{i:04d}.jpg").write_bytes(buf.getvalue())
    return model_dir, images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--images", type=int, default=50, help="images each run scores")
    ap.add_argument(
        "--max-runs", type=int, default=None, help="ssdflow serve --max-runs (default: serve's own default)"
    )
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ssdflow-bench-concurrent"))
    args = ap.parse_args()

    from beam_jobs.score import run_score
    from flows.serve import RUN_MEMORY_BYTES, default_run_limit
    from ssdflow.config import ScoreConfig

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model_dir, images = make_inputs(work, args.images)
    config = {"model": str(model_dir), "images": [str(images)], "score_threshold": 0.0}
    reference = run_score(ScoreConfig(**config, out=str(work / "reference")))
    cap = args.max_runs or default_run_limit()

    baseline = used_memory()
    peak, stop = [baseline], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], used_memory())
            time.sleep(0.2)

    serve_args = ["--max-runs", str(cap)]
    with prefect_stack(work / "prefect", work / "home", serve_args) as stack:
        api, dep = stack["api"], stack["deployments"]["batch-score"]
        baseline = used_memory()  # server and serve up, idle
        peak[0] = baseline
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        run_ids = []
        for i in range(args.runs):
            status, run = request(
                "POST",
                f"{api}/deployments/{dep['id']}/create_flow_run",
                {"parameters": {"config": {**config, "out": str(work / "out" / f"run{i:03d}")}}},
            )
            assert status == 201, run
            run_ids.append(run["id"])
        running_peak = 0
        pending = set(run_ids)
        while pending:
            _, runs = request("POST", f"{api}/flow_runs/filter", {"flow_runs": {"id": {"any_": run_ids}}})
            states = {r["id"]: r["state_type"] for r in runs}
            running_peak = max(running_peak, sum(1 for s in states.values() if s == "RUNNING"))
            pending = {i for i in pending if states.get(i) not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")}
            time.sleep(1)
        wall = time.perf_counter() - t0
        stop.set()
        finals = [wait_for_run(api, i, timeout=60) for i in run_ids]

    completed = sum(1 for r in finals if r["state_type"] == "COMPLETED")
    same = 0
    for i in range(args.runs):
        manifest_path = work / "out" / f"run{i:03d}" / "_SUCCESS"
        if manifest_path.is_file():
            m = json.loads(manifest_path.read_text())
            same += all(
                m[k] == getattr(reference, k) for k in ("images_in", "images_scored", "images_failed", "detections")
            )
    budget = cap * RUN_MEMORY_BYTES
    gb = lambda b: f"{b / 2**30:.2f} GB"  # noqa: E731
    print(f"runs created at once: {args.runs}; cap (serve --max-runs): {cap}; most RUNNING at once: {running_peak}")
    print(f"completed: {completed}/{args.runs}; outputs equal to the reference: {same}/{args.runs}; wall {wall:.0f} s")
    print(
        f"used memory: idle {gb(baseline)}, peak {gb(peak[0])}, peak above idle {gb(peak[0] - baseline)} "
        f"(budget: cap x {gb(RUN_MEMORY_BYTES)} = {gb(budget)}; within: {peak[0] - baseline <= budget})"
    )
    if completed != args.runs or same != args.runs or running_peak > cap:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

"""Peak memory of the Beam jobs' driver and workers as the archive grows (issue 12: the driver's memory
must not grow with the archive).

    .venv/bin/python -m bench.memory --sizes 20000,100000
    .venv/bin/python -m bench.memory --sizes 2000,10000 --jobs score

For each size N it writes N distinct small JPEGs (one base image with the copy's name appended after
the JPEG end marker, so every file hashes differently) and a CSV with one box per image, then runs
the CLI as a user would, each job in its own process tree with DirectRunner's multi-process mode (2
workers, so the driver and the workers are separate processes):

* ingest: ``ssdflow ingest --format csv`` (dedup, shard planning, stats);
* score:  ``ssdflow score`` with a tiny exported SSD (alpha 0.35, 96 px, random weights: memory does
          not depend on them).

/proc is sampled every 50 ms for the whole process tree; the table gives the driver's peak RSS and
each worker's, and the last lines the ratio of the driver's peak at the largest size to its peak at
the smallest (goal: <= 1.2 for both jobs).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SECONDS = 0.05
LOCAL_WORKERS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def make_archive(work: Path, n: int) -> tuple[Path, Path]:
    """work/images-N (N distinct 160x120 JPEGs) and work/labels-N.csv (one box each); reused if present."""
    import numpy as np
    from PIL import Image

    images, labels = work / f"images-{n}", work / f"labels-{n}.csv"
    if images.is_dir() and labels.is_file() and len(os.listdir(images)) == n:
        return images, labels
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=85)
    base = buf.getvalue()
    rows = ["filename,width,height,class,xmin,ymin,xmax,ymax"]
    for i in range(n):
        name = f"img{i:07d}.jpg"
        (images / name).write_bytes(base + name.encode())
        rows.append(f"{name},160,120,{('cat', 'dog')[i % 2]},{10 + i % 50},{10 + i % 40},{100 + i % 50},{90 + i % 20}")
    labels.write_text("\n".join(rows) + "\n")
    return images, labels


def make_model(work: Path) -> Path:
    from bench.score import make_model as export_model
    from ssdflow.config import ModelConfig

    model_dir, _, _, _ = export_model(work, ModelConfig(alpha=0.35, image_size=96, num_classes=1))
    return model_dir


def _tree(root: int) -> dict[int, int]:
    """{pid: RSS bytes} of ``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    rss, todo = {}, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/statm") as f:
                rss[pid] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
        todo.extend(children.get(pid, []))
    return rss


def peak_rss(cmd: list[str]) -> tuple[int, list[int], float]:
    """Runs ``cmd``; returns (driver's peak RSS, each descendant's peak RSS, wall seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        for pid, rss in _tree(proc.pid).items():
            peaks[pid] = max(peaks.get(pid, 0), rss)
        time.sleep(SAMPLE_SECONDS)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} … failed ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
    driver = peaks.pop(proc.pid, 0)
    return (
        driver,
        sorted((v for v in peaks.values() if v > 50 * 2**20), reverse=True),
        wall,
    )  # helpers under 50 MB left out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20000,100000", help="comma-separated image counts")
    ap.add_argument("--jobs", default="ingest,score", help="ingest, score or both")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ssdflow-bench-memory"))
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    jobs = [j for j in ("ingest", "score") if j in args.jobs.split(",")]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work) if "score" in jobs else None
    cli = [sys.executable, "-m", "ssdflow.cli"]
    mb = lambda b: f"{b / 2**20:.0f}"  # noqa: E731
    print("| job | images | driver peak RSS (MB) | worker peak RSS (MB) | wall (s) |")
    print("| --- | ---: | ---: | --- | ---: |")
    drivers: dict[str, dict[int, int]] = {j: {} for j in jobs}
    for n in sizes:
        images, labels = make_archive(work, n)
        for job in jobs:
            out = work / f"{job}-out-{n}"
            shutil.rmtree(out, ignore_errors=True)
            if job == "ingest":
                cmd = [
                    *cli,
                    "ingest",
                    "--images",
                    str(images),
                    "--labels",
                    str(labels),
                    "--format",
                    "csv",
                    "--out",
                    str(out),
                ]
            else:
                cmd = [*cli, "score", "--model", str(model), "--images", str(images), "--out", str(out)]
            driver, workers, wall = peak_rss([*cmd, *LOCAL_WORKERS])
            drivers[job][n] = driver
            print(
                f"| {job} | {n} | {mb(driver)} | {', '.join(mb(w) for w in workers) or '-'} | {wall:.0f} |", flush=True
            )
            shutil.rmtree(out, ignore_errors=True)
    if len(sizes) > 1:
        for job in jobs:
            ratio = drivers[job][sizes[-1]] / drivers[job][sizes[0]]
            print(f"{job}: driver peak at {sizes[-1]} / at {sizes[0]} images = {ratio:.2f} (goal <= 1.2)")


if __name__ == "__main__":
    main()

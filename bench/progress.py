"""Progress in a log (issue 27 goal): ingest and score of N images with their output going to a
pipe, as under a Prefect worker or cron. Measures the longest silence between progress lines and
checks that no line carries ANSI codes and that the last says 100 %.

    .venv/bin/python -m bench.progress [--images 2000] [--size 1024x768] [--model MODELS]

Without --model a tiny model is trained first (alpha 0.35, 128 px, 1 epoch of 2 steps: scoring's
speed, not its quality, is what matters here). Prints one row per job: lines, longest gap (s),
images/s, whether every line is plain and the last at 100 %.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

from ssdflow.demo_data import make_dataset

LINE = re.compile(r"^(ingest|score): \d+(/\d+)? (images|files)")


def timed_lines(cmd: list[str]) -> tuple[list[tuple[float, str]], float]:
    """(seconds since start, line) for every stderr line of ``cmd`` as it arrives, and the run's seconds."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = [(time.monotonic() - t0, line.rstrip("\n")) for line in proc.stderr]
    if proc.wait() != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed:\n" + "\n".join(line for _, line in lines[-20:]))
    return lines, time.monotonic() - t0


def report(job: str, lines: list[tuple[float, str]], seconds: float, images: int) -> str:
    progress = [(t, line) for t, line in lines if LINE.match(line)]
    stamps = [0.0] + [t for t, _ in progress] + [seconds]
    gap = max(b - a for a, b in zip(stamps, stamps[1:]))
    plain = all("\x1b[" not in line for _, line in lines)
    last = progress[-1][1] if progress else ""
    return (
        f"| {job} | {images} | {len(progress)} | {gap:.1f} | {images / seconds:.1f} | {'yes' if plain else 'NO'} | "
        f"{'yes' if '(100%)' in last else 'NO'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--model", default=None)
    parser.add_argument(
        "--size", default="1024x768", help="WxH of the synthetic images (photos' sizes make the runs last)"
    )
    args = parser.parse_args()
    cli = [sys.executable, "-m", "ssdflow.cli"]
    work = tempfile.mkdtemp(prefix="bench-progress-")
    w, h = (int(v) for v in args.size.split("x"))
    images, labels = make_dataset(os.path.join(work, "data"), num_images=args.images, seed=3, size=(w, h))
    rows = [
        "| job | images | progress lines | longest silence (s) | images/s | no ANSI | last at 100 % |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    lines, seconds = timed_lines(
        [
            *cli,
            "ingest",
            "--images",
            images,
            "--labels",
            labels,
            "--format",
            "voc",
            "--out",
            os.path.join(work, "records"),
        ]
    )
    rows.append(report("ingest", lines, seconds, args.images))
    model = args.model
    if model is None:
        model = os.path.join(work, "models")
        subprocess.run(
            [
                *cli,
                "train",
                "--data",
                os.path.join(work, "records"),
                "--models",
                model,
                "--alpha",
                "0.35",
                "--image-size",
                "128",
                "--epochs",
                "1",
                "--steps-per-epoch",
                "2",
                "--backbone-weights",
                "none",
                "--min-map",
                "0",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    lines, seconds = timed_lines(
        [*cli, "score", "--model", model, "--images", images, "--out", os.path.join(work, "scored")]
    )
    rows.append(report("score", lines, seconds, args.images))
    print("\n".join(rows))


if __name__ == "__main__":
    main()

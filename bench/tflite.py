"""TFLite against the SavedModel, one trained model, one run: val mAP, per-image CPU latency, file size.

    .venv/bin/python -m bench.tflite --model MODELS_OR_VERSION_DIR --data INGEST_OUTPUT

The model directory is copied into --workdir and exported there as float32, float16 and int8
(int8 calibrated on --data's train split), so the registered model is left as it was. Then, for
the SavedModel and each .tflite:

* val mAP@.5 and mAP@[.5:.95] on --data's val split (the SavedModel's ``serving_default``; TFLite's
  interpreter through ``model.tflite.TFLiteDetector``, the path ``ssdflow evaluate`` takes);
* per-image latency of the network and post-processing on pre-decoded pixels, batch 1, median of
  --images val images after 5 warm-up calls: the SavedModel's ``serve_pixels`` (TensorFlow's
  intra-op threads: all cores), TFLite with XNNPACK at 1 and at 2 threads;
* size on disk (the SavedModel: saved_model.pb + variables/);
* mAP@.5 on --data's train split as well: a small val split is noisy (raccoon's 22 val images: one
  is 4.5 %), and the train split's 178 images measure the *difference* between variants more
  steadily (its int8 calibration images are among them; calibration sets ranges, not weights).

Prints a markdown table and the ratios the issue asks for (int8 vs float32 size and latency, mAP loss).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in [path / "saved_model.pb", *(path / "variables").rglob("*")] if p.is_file())


def _median_ms(fn, inputs, warmup: int = 5) -> float:
    for x in inputs[:warmup]:
        fn(x)
    times = []
    for x in inputs:
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a registered model directory, or a models directory (its champion)")
    ap.add_argument("--data", required=True, help="ingest output: int8 calibration (train) and scoring (val)")
    ap.add_argument("--images", type=int, default=50, help="val images timed per variant")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ssdflow-bench-tflite"))
    args = ap.parse_args()

    import tensorflow as tf

    from model.dataset import eval_dataset, shard_files
    from model.registry import resolve_model_dir
    from model.tflite import TFLiteDetector, export_tflite, resize, tflite_name
    from model.tflite import score_tflite
    from model.validation import score_saved_model

    source = Path(resolve_model_dir(args.model))
    work = Path(args.workdir) / source.name
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, work)
    size = json.loads((work / "ssdflow_model.json").read_text())["model"]["image_size"]
    encoded = [e for batch in eval_dataset(shard_files(args.data, "val"), 16) for e in batch["encoded"].numpy()][
        : args.images
    ]
    pixels = [resize(e, size)[None] for e in encoded]
    print(f"model {source} ({size} px), {len(pixels)} val images timed, data {args.data}")

    rows = []
    saved = tf.saved_model.load(str(work))
    serve_pixels = saved.signatures["serve_pixels"]
    m = score_saved_model(str(work), args.data)
    m["train mAP@.5"] = score_saved_model(str(work), args.data, "train")["mAP@.5"]
    ms = _median_ms(lambda x: serve_pixels(pixels=tf.constant(x)), pixels)
    rows.append(("SavedModel (float32)", m, ms, None, _dir_bytes(work)))
    for quantize in ("none", "float16", "int8"):
        t = time.perf_counter()
        entry = export_tflite(str(work), quantize, args.data)  # int8 calibrates on its train split; each scored on val
        path = work / tflite_name(quantize)
        print(f"  exported and scored {path.name} in {time.perf_counter() - t:.1f} s")
        m = {**entry["metrics"], "train mAP@.5": score_tflite(str(path), args.data, "train")["mAP@.5"]}
        latency = []
        for threads in (1, 2):
            det = TFLiteDetector(str(path), num_threads=threads)
            latency.append(_median_ms(lambda x: det.detect_pixels(x[0]), pixels))
        rows.append(
            (f"TFLite {'float32' if quantize == 'none' else quantize}", m, latency[0], latency[1], entry["bytes"])
        )

    print("\n| model | val mAP@.5 | mAP@[.5:.95] | train mAP@.5 | latency, ms/image (1 thread) | (2 threads) | size |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, m, one, two, nbytes in rows:
        first = f"{one:.1f}" + (" (TF, all cores)" if two is None else "")
        print(
            f"| {name} | {m['mAP@.5']:.4f} | {m['mAP']:.4f} | {m['train mAP@.5']:.4f} | {first} | {'' if two is None else f'{two:.1f}'} | {nbytes / 1e6:.2f} MB |"
        )
    by = {r[0]: r for r in rows}
    f32, i8, f16, sm = by["TFLite float32"], by["TFLite int8"], by["TFLite float16"], by["SavedModel (float32)"]
    print(
        f"\nmAP@.5 vs the SavedModel: float32 {f32[1]['mAP@.5'] - sm[1]['mAP@.5']:+.4f}, float16 {f16[1]['mAP@.5'] - sm[1]['mAP@.5']:+.4f}, "
        f"int8 {i8[1]['mAP@.5'] - sm[1]['mAP@.5']:+.4f} (val); int8 {i8[1]['train mAP@.5'] - sm[1]['train mAP@.5']:+.4f} (train split)"
    )
    print(
        f"int8 vs TFLite float32: {f32[4] / i8[4]:.2f}x smaller, {f32[2] / i8[2]:.2f}x faster (1 thread), "
        f"{f32[3] / i8[3]:.2f}x faster (2 threads)"
    )


if __name__ == "__main__":
    main()

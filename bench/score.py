"""Scoring throughput: the Beam scoring job against the bare model and per-image loops, in one run.

    .venv/bin/python -m bench.score --images 2000 --alpha 1.0 --image-size 320
    .venv/bin/python -m bench.score --beam-args "--direct_running_mode=multi_processing --direct_num_workers=2" --chunk-size 250

Builds N distinct JPEGs from raccoon (its 200 images cycled, each copy's name appended after the
JPEG end marker; synthetic 640x480 scenes when raccoon is absent) and an SSD exported with
``export_saved_model`` (random weights: speed does not depend on them), then times, in this process:

* job:  ``run_score`` end to end (read, header check, decode, resize, SSD, NMS, records, chunk
        commit, jsonl + parquet assembly), wall time including pipeline start-up and model load;
* (a)   the limit: the SavedModel's ``serve_pixels`` on pre-decoded, pre-resized in-memory batches
        (measured before and after the job, so drift from other load shows);
* (a2)  the SavedModel's ``serving_default`` on in-memory batches of encoded bytes: (a) plus decoding;
* (b1)  the TF OD API tutorial loop: read a file, one ``serving_default`` call per image (batch 1);
* (b2)  Keras per image: ``model.predict(x[None])`` on pre-decoded pixels + the same postprocess
        (box decoding, NMS), eager.

* tflite-Q: ``run_score`` with ``--model model_Q.tflite`` (``--tflite``, default float16 and int8:
        the same network exported by ``ssdflow export --format tflite``, run by TFLite's interpreter
        one image per call; int8 calibrated on raccoon's train split), the same N images.

Prints images/s for each and the ratios job/(a) (goal >= 0.9), job/(b1) (goal >= 1.3),
job/(b2) (goal >= 4) and tflite-Q/job (issue 14: int8 >= 2). (a2)/(a) shows what decoding costs; for a small model (low --alpha, small
--image-size) the network is cheap, so decoding is relatively more of the work and (a2), and with
it the job, falls further below (a).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere

import argparse
import io
import json
import logging
import shlex
import shutil
import tempfile
import time
from pathlib import Path

from bench.timing import timed

REPO = Path(__file__).resolve().parents[1]
RACCOON = REPO.parent / "shared" / "datasets" / "raccoon"
LABEL_MAP = {"raccoon": 1}
PIXEL_CACHE_BYTES = 2 * 1024**3  # decoded float32 pixels kept in memory for (a) and (b2)


# --- data -----------------------------------------------------------------------------------------
def _synthetic_sources(n: int = 200) -> list[tuple[str, bytes]]:
    import numpy as np

    from ssdflow.demo_data import draw_scene

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img, _ = draw_scene(rng, 640, 480)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=92)
        out.append((f"shapes-{i:05d}", buf.getvalue()))
    return out


def make_images(work: Path, n: int) -> tuple[Path, str]:
    """workdir/images with n distinct JPEGs (same pixels, name appended after the end marker); reused if present."""
    images, marker = work / "images", work / "images.json"
    source = "raccoon" if (RACCOON / "images").is_dir() and any((RACCOON / "images").glob("*.jpg")) else "synthetic"
    want = {"n": n, "source": source}
    if images.is_dir() and marker.is_file() and json.loads(marker.read_text()) == want and len(os.listdir(images)) == n:
        return images, source
    shutil.rmtree(images, ignore_errors=True)
    marker.unlink(missing_ok=True)
    images.mkdir(parents=True)
    if source == "raccoon":
        sources = [(p.stem, p.read_bytes()) for p in sorted((RACCOON / "images").glob("*.jpg"))]
    else:
        sources = _synthetic_sources()
    for i in range(n):
        stem, data = sources[i % len(sources)]
        name = f"{stem}-copy{i:06d}"
        (images / f"{name}.jpg").write_bytes(data + name.encode())  # distinct bytes, same pixels
    marker.write_text(json.dumps(want))
    return images, source


# --- model ----------------------------------------------------------------------------------------
def make_model(work: Path, cfg):
    """workdir/model (SavedModel + Keras weights), reused if it was exported with this config; returns (dir, keras model, info)."""
    from model.export import MODEL_INFO, export_saved_model
    from model.ssd import build_ssd
    from model.export import KERAS_WEIGHTS
    from ssdflow.schema import LabelMap

    model_dir = work / "model"
    info_path = model_dir / MODEL_INFO
    keras_model = build_ssd(cfg, None)
    if (
        (model_dir / "saved_model.pb").is_file()
        and (model_dir / KERAS_WEIGHTS).is_file()
        and info_path.is_file()
        and json.loads(info_path.read_text())["model"] == cfg.model_dump()
    ):
        keras_model.load_weights(str(model_dir / KERAS_WEIGHTS))  # the very weights that were exported
        return model_dir, keras_model, json.loads(info_path.read_text()), True
    staging = work / "model.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    export_saved_model(keras_model, cfg, LabelMap(LABEL_MAP).validate(), str(staging))  # export's default thresholds
    keras_model.save_weights(str(staging / KERAS_WEIGHTS))
    shutil.rmtree(model_dir, ignore_errors=True)
    staging.rename(model_dir)
    return model_dir, keras_model, json.loads(info_path.read_text()), False


def make_tflite(work: Path, model_dir: Path, quantize: str) -> tuple[Path, bool]:
    """model_dir/model[_Q].tflite, exported unless present; int8 calibrates on an ingest of raccoon in workdir/records."""
    from model.tflite import export_tflite, tflite_name

    path = model_dir / tflite_name(quantize)
    if path.is_file():
        return path, True
    data = None
    if quantize == "int8":
        from beam_jobs.ingest import run_ingest
        from ssdflow.config import IngestConfig

        data = work / "records"
        if not (data / "_SUCCESS").is_file():
            if not (RACCOON / "annotations").is_dir():
                raise SystemExit(
                    "--tflite int8 calibrates on raccoon's train split: ../shared/datasets/raccoon is absent"
                )
            run_ingest(
                IngestConfig(
                    images=str(RACCOON / "images"), labels=str(RACCOON / "annotations"), format="voc", out=str(data)
                )
            )
    export_tflite(str(model_dir), quantize, str(data) if data else None)
    return path, False


def decode_pixels(encoded: list[bytes], size: int, limit_bytes: int):
    """The first M images decoded and resized as the SavedModel does, [M, S, S, 3] float32 0..255; M bounded by memory."""
    import numpy as np
    import tensorflow as tf

    m = max(1, min(len(encoded), limit_bytes // (size * size * 3 * 4)))
    out = np.empty((m, size, size, 3), np.float32)
    for i in range(m):
        image = tf.io.decode_image(encoded[i], channels=3, expand_animations=False)
        out[i] = tf.image.resize(tf.cast(image, tf.float32), [size, size]).numpy()
    return out


# --- the runs -------------------------------------------------------------------------------------
def run_job(
    model_dir: Path, images: Path, out: Path, n: int, batch: int, chunk_size: int, beam_args: list[str]
) -> float:
    from beam_jobs.score import run_score
    from ssdflow.config import OutputFormat, ScoreConfig

    shutil.rmtree(out, ignore_errors=True)  # nothing committed: every chunk is scored
    cfg = ScoreConfig(
        model=str(model_dir),
        images=[str(images)],
        out=str(out),
        formats=[OutputFormat.jsonl, OutputFormat.parquet],
        max_batch_size=batch,
        chunk_size=chunk_size,
        beam_args=beam_args,
    )
    t0 = time.perf_counter()
    manifest = run_score(cfg)
    t = time.perf_counter() - t0
    assert manifest.images_scored == n and manifest.images_failed == 0, manifest
    return t


def _fetch(out: dict) -> dict:
    return {k: v.numpy() for k, v in out.items()}  # as the job's handler does; also waits for the result


def rate_pixels(serve_pixels, pixels, n: int, batch: int) -> float:
    """(a): serve_pixels over n images in batches, cycling through the decoded pixels."""
    import numpy as np
    import tensorflow as tf

    m = len(pixels)
    sizes = [batch] * (n // batch) + ([n % batch] if n % batch else [])
    distinct = -(-m // batch)  # batches of distinct content; reused cyclically beyond that
    cache: dict[tuple[int, int], tf.Tensor] = {}
    batches = []
    for i, b in enumerate(sizes):
        key = (i % distinct, b)
        if key not in cache:
            cache[key] = tf.constant(pixels[(key[0] * batch + np.arange(b)) % m])
        batches.append(cache[key])
    _fetch(serve_pixels(pixels=batches[0]))  # warm-up, untimed
    t0 = time.perf_counter()
    for x in batches:
        _fetch(serve_pixels(pixels=x))
    return n / (time.perf_counter() - t0)


def rate_bytes(serve, encoded: list[bytes], batch: int) -> float:
    """(a2): serving_default over all images in batches of encoded bytes held in memory."""
    import tensorflow as tf

    batches = [tf.constant(encoded[i : i + batch], dtype=tf.string) for i in range(0, len(encoded), batch)]
    _fetch(serve(images=batches[0]))  # warm-up, untimed
    t0 = time.perf_counter()
    for x in batches:
        _fetch(serve(images=x))
    return len(encoded) / (time.perf_counter() - t0)


def rate_tutorial(serve, files: list[Path]) -> float:
    """(b1): the TF OD API tutorial loop: per image, read the file, call the model on a batch of one."""
    import tensorflow as tf

    _fetch(serve(images=tf.constant([files[0].read_bytes()])))  # warm-up, untimed
    t0 = time.perf_counter()
    for path in files:
        _fetch(serve(images=tf.constant([path.read_bytes()])))
    return len(files) / (time.perf_counter() - t0)


def rate_keras(keras_model, pixels, count: int, cfg, info: dict) -> float:
    """(b2): model.predict per image on pre-decoded pixels, then the exported model's postprocess (eager)."""
    import tensorflow as tf

    from model.anchors import generate_anchors
    from model.postprocess import postprocess

    anchors = tf.constant(generate_anchors(cfg), tf.float32)
    variances = tf.constant(cfg.variances, tf.float32)

    def one(x):
        pred = keras_model.predict(x[None], verbose=0)
        return _fetch(
            postprocess(
                pred,
                anchors,
                variances,
                info["score_threshold"],
                info["iou_threshold"],
                info["max_detections"],
                info.get("box_merge_iou"),
            )
        )

    one(pixels[0])  # warm-up, untimed
    t0 = time.perf_counter()
    for i in range(count):
        one(pixels[i % len(pixels)])
    return count / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000, help="N images scored by the job, (a) and (a2)")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--image-size", type=int, default=320)
    ap.add_argument(
        "--batch-size", type=int, default=64, help="inference batch of the job (--max-batch-size), (a) and (a2)"
    )
    ap.add_argument("--per-image", type=int, default=200, help="images timed by the per-image loops (b1), (b2)")
    ap.add_argument(
        "--chunk-size", type=int, default=0, help="the job's chunk size; 0: N (one chunk, so one worker does all of it)"
    )
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ssdflow-bench-score"))
    ap.add_argument(
        "--tflite",
        default="float16,int8",
        help="TFLite variants scored by the job too (none, float16, int8; '' for none)",
    )
    ap.add_argument(
        "--beam-args",
        default="",
        help="extra Beam flags as one string, e.g. "
        '"--direct_running_mode=multi_processing --direct_num_workers=2"; default: in-process DirectRunner',
    )
    args = ap.parse_args()
    n, batch = args.images, args.batch_size
    per_image = min(args.per_image, n)
    beam_args = shlex.split(args.beam_args)

    # Import everything first: the runs are timed as library calls, not interpreter start-up.
    import ssdflow  # noqa: F401  (first: TensorFlow's start-up lines are filtered)
    import tensorflow as tf

    import beam_jobs.score  # noqa: F401
    from ssdflow.config import ModelConfig

    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("apache_beam").setLevel(logging.ERROR)

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t, (images, source) = timed(make_images, work, n)
    files = sorted(images.glob("*.jpg"))
    print(
        f"data: {n} images from {source}{' (raccoon, 200 images cycled)' if source == 'raccoon' else ' (draw_scene 640x480, 200 cycled; raccoon absent)'}"
        f" in {images} ({t:.1f}s to prepare)"
    )

    cfg = ModelConfig(alpha=args.alpha, image_size=args.image_size, num_classes=len(LABEL_MAP))
    t, (model_dir, keras_model, info, reused) = timed(make_model, work, cfg)
    print(
        f"model: SSDLite MobileNetV2 alpha {cfg.alpha:g}, {cfg.image_size}px, {cfg.num_classes} class, "
        f"{keras_model.count_params():,} params, random weights; export score_threshold {info['score_threshold']}, "
        f"iou {info['iou_threshold']}, max_detections {info['max_detections']} "
        f"({'reused' if reused else 'exported'} {model_dir}, {t:.1f}s)"
    )

    encoded = [p.read_bytes() for p in files]
    t, pixels = timed(decode_pixels, encoded, cfg.image_size, PIXEL_CACHE_BYTES)
    print(
        f"pixels: {len(pixels)} of {n} images decoded and resized in memory for (a) and (b2) "
        f"({'all' if len(pixels) == n else 'reused cyclically'}; {t:.1f}s)"
    )
    loaded = tf.saved_model.load(str(model_dir))
    serve, serve_pixels = loaded.signatures["serving_default"], loaded.signatures["serve_pixels"]

    chunk_size = args.chunk_size or n
    runner = " ".join(beam_args) or "in-process DirectRunner (FnApiRunner)"
    variants = [q for q in args.tflite.split(",") if q]
    lite_files = {}
    for q in variants:
        t, (path, reused) = timed(make_tflite, work, model_dir, q)
        lite_files[q] = path
        print(
            f"tflite: {path.name} ({path.stat().st_size / 1e6:.2f} MB, {'reused' if reused else 'exported'}, {t:.1f}s)"
        )
    print(
        f"N {n}, batch {batch}, per-image loops {per_image} images, job chunk size {chunk_size} "
        f"({-(-n // chunk_size)} chunk(s)), {os.cpu_count()} CPUs, job: {runner}"
    )
    print()

    a_before = rate_pixels(serve_pixels, pixels, n, batch)
    t_job = run_job(model_dir, images, work / "out", n, batch, chunk_size, beam_args)
    job = n / t_job
    a_after = rate_pixels(serve_pixels, pixels, n, batch)
    a = (a_before + a_after) / 2
    a2 = rate_bytes(serve, encoded, batch)
    b1 = rate_tutorial(serve, files[:per_image])
    b2 = rate_keras(keras_model, pixels, per_image, cfg, info)
    lite = {
        q: n / run_job(path, images, work / f"out-{q}", n, batch, chunk_size, beam_args)
        for q, path in lite_files.items()
    }

    print(f"{'':5s}{'':70s}{'images/s':>10s}")
    print(f"{'job':5s}{'run_score end to end (jsonl + parquet, incl. start-up)':70s}{job:10.1f}   ({t_job:.1f} s)")
    print(
        f"{'(a)':5s}{f'serve_pixels, pre-decoded in-memory batches of {batch}':70s}{a:10.1f}   (before job {a_before:.1f}, after {a_after:.1f})"
    )
    print(
        f"{'(a2)':5s}{f'serving_default, in-memory encoded batches of {batch}':70s}{a2:10.1f}   (decoding: {a2 / a - 1:+.0%} vs (a))"
    )
    print(
        f"{'(b1)':5s}{'TF OD API tutorial: serving_default per image (file read + batch 1)':70s}{b1:10.1f}   ({per_image} images)"
    )
    print(
        f"{'(b2)':5s}{'Keras model.predict per image + postprocess (eager), pre-decoded':70s}{b2:10.1f}   ({per_image} images)"
    )
    for q, rate in lite.items():
        print(f"{'':5s}{f'run_score --model {lite_files[q].name} (TFLite interpreter, {q})':70s}{rate:10.1f}")
    print()
    print(f"ratio job / (a):  {job / a:5.2f}   (goal >= 0.9)")
    print(f"ratio job / (b1): {job / b1:5.2f}   (goal >= 1.3)")
    print(f"ratio job / (b2): {job / b2:5.2f}   (goal >= 4)")
    for q, rate in lite.items():
        print(f"ratio tflite-{q} / job: {rate / job:5.2f}" + ("   (goal >= 2)" if q == "int8" else ""))


if __name__ == "__main__":
    main()

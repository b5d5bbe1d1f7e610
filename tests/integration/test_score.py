"""The scoring job on the real Beam runners: outputs, accounting, archives, S3, resume after SIGKILL."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beam_jobs.score import run_score
from ssdflow.beam_runner import make_pipeline
from ssdflow.config import ScoreConfig
from tests.helpers import (
    REPO,
    detection_lines,
    moto_s3,
    noise_jpeg,
    portable_beam,
    raccoon_or_skip,
    read_jsonl,
    upload_models_dir,
)

pytestmark = pytest.mark.integration
tf = pytest.importorskip("tensorflow")


def _val_images(raccoon_records, tmp_path) -> list[str]:
    """The raccoon val split's images, linked into one directory."""
    from tests.helpers import read_ingest_output

    root = raccoon_or_skip()
    d = tmp_path / "val"
    d.mkdir()
    keys = sorted(read_ingest_output(raccoon_records, "val"))
    for k in keys:
        os.symlink(root / "images" / f"{k}.jpg", d / f"{k}.jpg")
    return str(d), keys


def test_scores_raccoon_val_images(raccoon_records, raccoon_model, tmp_path):
    images, keys = _val_images(raccoon_records, tmp_path)
    out = tmp_path / "out"
    m = run_score(
        ScoreConfig(
            model=raccoon_model,
            images=[images],
            out=str(out),
            formats=["jsonl", "parquet", "coco"],
            score_threshold=0.0,
            max_detections=5,
            preview=2,
            chunk_size=8,
        )
    )
    n = len(keys)
    assert (m.images_in, m.images_scored, m.images_failed) == (n, n, 0)
    assert m.chunks == m.chunks_scored_now == -(-n // 8)
    assert json.loads((out / "_SUCCESS").read_text())["images_scored"] == n
    records = detection_lines(out)
    assert sorted(os.path.basename(r["source"])[:-4] for r in records) == keys
    version = os.path.basename(raccoon_model)
    for r in records:
        assert set(r) == {"source", "width", "height", "model_version", "detections"}
        assert r["model_version"] == version and 0 < len(r["detections"]) <= 5
        for d in r["detections"]:
            assert d["label"] == "raccoon" and d["label_id"] == 1 and 0.0 <= d["score"] <= 1.0
            b, nb = d["box"], d["box_normalized"]
            assert 0 <= b["xmin"] <= b["xmax"] <= r["width"] and 0 <= b["ymin"] <= b["ymax"] <= r["height"]
            assert abs(b["xmax"] - nb["xmax"] * r["width"]) < 0.05
    import pyarrow.parquet as pq

    table = pq.read_table(sorted(out.glob("detections-*.parquet"))[0])
    types = {f.name: str(f.type) for f in table.schema}
    assert (
        types["source"] == "string"
        and types["score"] == "float"
        and types["label_id"] == "int32"
        and types["xmin"] == "float"
    )
    total_rows = sum(pq.read_table(p).num_rows for p in out.glob("detections-*.parquet"))
    assert total_rows == m.detections == sum(len(r["detections"]) for r in records)
    coco = json.loads((out / "coco_results.json").read_text())
    assert len(coco) == m.detections and len(coco[0]["bbox"]) == 4
    dataset = json.loads((out / "coco.json").read_text())
    assert [i["file_name"] for i in dataset["images"]] == [r["source"] for r in records]  # ids 1.. in output order
    assert dataset["categories"] == [{"id": 1, "name": "raccoon", "supercategory": ""}]
    assert {d["image_id"] for d in coco} <= {i["id"] for i in dataset["images"]}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["detections_per_class"] == {"raccoon": m.detections}
    assert sum(summary["score_histogram"].values()) == m.detections
    assert summary["change_since_previous"] is None
    previews = sorted((out / "preview").glob("*.jpg"))
    assert len(previews) == 2 and Image.open(previews[0]).format == "JPEG"

    # The job's boxes are what the SavedModel itself returns for the same bytes.
    serve = tf.saved_model.load(raccoon_model).signatures["serving_default"]
    for r in records[:3]:
        direct = serve(images=tf.constant([open(r["source"], "rb").read()]))
        want = direct["detection_boxes"][0][: len(r["detections"])].numpy()
        got = np.array([[d["box_normalized"][k] for k in ("ymin", "xmin", "ymax", "xmax")] for d in r["detections"]])
        np.testing.assert_allclose(got, want, atol=2e-4)
        np.testing.assert_allclose(
            [d["score"] for d in r["detections"]], direct["detection_scores"][0][: len(got)].numpy(), atol=2e-4
        )

    # A rerun reuses every chunk, gives the same outputs and reports no change.
    before = [(f, (out / f).read_bytes()) for f in sorted(os.listdir(out)) if f.startswith("detections-")]
    again = run_score(
        ScoreConfig(
            model=raccoon_model,
            images=[images],
            out=str(out),
            formats=["jsonl", "parquet", "coco"],
            score_threshold=0.0,
            max_detections=5,
            chunk_size=8,
        )
    )
    assert again.chunks_scored_now == 0
    assert [(f, (out / f).read_bytes()) for f in sorted(os.listdir(out)) if f.startswith("detections-")] == before
    assert json.loads((out / "summary.json").read_text())["change_since_previous"]["detections"] == 0
    assert not (out / "preview").exists() or not list((out / "preview").glob("*.jpg"))  # preview not asked this time


def test_archives_and_bad_files_are_all_accounted_for(raccoon_model, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        (d / f"good{i}.jpg").write_bytes(noise_jpeg(i))
    good = noise_jpeg(9)
    (d / "corrupt.jpg").write_bytes(good[:200] + b"\x00" * 50 + b"garbage" * 40)  # valid header, broken body
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("not an image")
    (d / "notes.txt").write_text("skipped")
    tar_path = tmp_path / "batch.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, data in (
            ("a/one.jpg", noise_jpeg(11)),
            ("two.png", _png()),
            ("bad.jpg", b"nope"),
            ("README", b"skip me"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    out = tmp_path / "out"
    m = run_score(ScoreConfig(model=raccoon_model, images=[str(d), str(tar_path)], out=str(out), score_threshold=0.0))
    assert m.chunks == 2  # the directory and the archive
    assert m.images_in == 6 + 4 and m.files_skipped == 2
    assert m.images_scored == 3 + 2 and m.images_failed == 5
    assert m.images_in == m.images_scored + m.images_failed
    errors = {os.path.basename(e["source"]): e["reason"] for e in read_jsonl(out / "errors.jsonl")}
    assert errors == {
        "corrupt.jpg": "decode_error",
        "empty.jpg": "empty_file",
        "text.jpg": "decode_error",
        "batch.tar#bad.jpg": "decode_error",
        "batch.tar#link.jpg": "link_member",
    }
    sources = {r["source"] for r in detection_lines(out)}
    assert f"{tar_path}#a/one.jpg" in sources and f"{tar_path}#two.png" in sources
    assert not (tmp_path / "a").exists() and not (out / "a").exists()  # members are streamed, never extracted


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), (0, 128, 255)).save(buf, format="PNG")
    return buf.getvalue()


def _many_images(tmp_path, n=36) -> str:
    root = raccoon_or_skip()
    d = tmp_path / "many"
    d.mkdir()
    for i, src in enumerate(sorted((root / "images").glob("*.jpg"))[:n]):
        shutil.copy(src, d / src.name)
    return str(d)


def test_max_pixels_refuses_larger_images_before_decoding(raccoon_model, tmp_path, monkeypatch):
    """The guard reads the header only: spies on every full Pillow decode (the EXIF path decodes to
    turn an image upright) and on every batch handed to TensorFlow's decoder (the SavedModel's
    serving signature) see the small image and never the large one, though the large one carries an
    EXIF rotation that would have Pillow decode it."""
    from PIL import ImageFile

    from beam_jobs.model_handler import SavedModelDetector

    images = tmp_path / "images"
    images.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90°
    for name, size in (("small.jpg", (60, 40)), ("large.jpg", (120, 100))):
        Image.new("RGB", size, (90, 20, 200)).save(images / name, exif=exif)
    large = (images / "large.jpg").read_bytes()
    decoded, batches = [], []
    real_load, real_call = ImageFile.ImageFile.load, SavedModelDetector._call

    def load_spy(self):
        decoded.append(self.size)
        return real_load(self)

    def call_spy(serve, batch):
        batches.append(list(batch))
        return real_call(serve, batch)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load_spy)
    monkeypatch.setattr(SavedModelDetector, "_call", staticmethod(call_spy))
    out = tmp_path / "out"
    m = run_score(ScoreConfig(model=raccoon_model, images=[str(images)], out=str(out), max_pixels=5000))
    assert (m.images_in, m.images_scored, m.images_failed) == (2, 1, 1)
    (error,) = read_jsonl(out / "errors.jsonl")
    assert error["source"].endswith("large.jpg") and error["reason"] == "too_many_pixels" and "12000" in error["detail"]
    assert (60, 40) in decoded and (120, 100) not in decoded, decoded  # the spies ran in the scoring process
    handed = [data for batch in batches for data in batch]
    assert len(handed) == 1 and large not in handed, len(handed)


def test_runners_give_the_same_detections(raccoon_model, tmp_path):
    images = _many_images(tmp_path, 24)
    # Batches are cut within a chunk (max_batch_size consecutive images), never by how a runner bundles
    # elements, so batch shapes, and with them oneDNN's float rounding of this barely trained model's
    # near-tied scores, are the same on every runner.
    same = dict(score_threshold=0.0, chunk_size=10, max_batch_size=4)
    ref = tmp_path / "ref"
    run_score(ScoreConfig(model=raccoon_model, images=[images], out=str(ref), **same))
    mp = tmp_path / "mp"
    run_score(
        ScoreConfig(
            model=raccoon_model,
            images=[images],
            out=str(mp),
            **same,
            beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        )
    )
    assert detection_lines(mp) == detection_lines(ref)

    with portable_beam() as portable_args:
        portable = tmp_path / "portable"
        run_score(
            ScoreConfig(
                model=raccoon_model,
                images=[images],
                out=str(portable),
                **same,
                runner="PortableRunner",
                beam_args=portable_args,
            )
        )
        assert detection_lines(portable) == detection_lines(ref)


def test_resume_after_sigkill_scores_only_what_is_left(raccoon_model, tmp_path, monkeypatch):
    import beam_jobs.score.pipeline

    images = _many_images(tmp_path, 36)
    ref = tmp_path / "ref"
    pipelines = []
    monkeypatch.setattr(
        beam_jobs.score.pipeline,
        "make_pipeline",
        lambda options, **kw: pipelines.append(options) or make_pipeline(options, **kw),
    )
    run_score(ScoreConfig(model=raccoon_model, images=[images], out=str(ref), score_threshold=0.0, chunk_size=6))
    assert len(pipelines) == 1  # all six chunks in one pipeline run, each committed as it finished (below)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "ssdflow.cli",
        "score",
        "--model",
        raccoon_model,
        "--images",
        images,
        "--out",
        str(out),
        "--score-threshold",
        "0",
        "--chunk-size",
        "6",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    chunks_root = out / "chunks" / os.path.basename(raccoon_model)
    deadline = time.time() + 300
    committed = []
    while time.time() < deadline and proc.poll() is None:
        committed = list(chunks_root.glob("*/_SUCCESS")) if chunks_root.exists() else []
        if len(committed) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = list(chunks_root.glob("*/_SUCCESS"))
    assert 2 <= len(committed) < 6, f"kill landed after {len(committed)} of 6 chunks"
    assert not (out / "_SUCCESS").exists()  # the interrupted run never looks complete

    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{6 - len(committed)} of 6 chunks scored now" in done.stdout
    assert detection_lines(out) == detection_lines(ref)
    assert (out / "errors.jsonl").read_text() == (ref / "errors.jsonl").read_text()
    for a, b in zip(sorted(ref.glob("detections-*.jsonl")), sorted(out.glob("detections-*.jsonl"))):
        assert a.name == b.name and a.read_bytes() == b.read_bytes()


BUCKET = "ssdflow-score"


def test_s3_in_and_out(raccoon_model, tmp_path):
    pytest.importorskip("boto3")
    with moto_s3(bucket=BUCKET) as (endpoint, s3):
        for i in range(5):
            s3.put_object(Bucket=BUCKET, Key=f"archive/img{i}.jpg", Body=noise_jpeg(i))
        s3.put_object(Bucket=BUCKET, Key="archive/broken.jpg", Body=b"xx")
        m = run_score(
            ScoreConfig(
                model=raccoon_model,
                images=[f"s3://{BUCKET}/archive/"],
                out=f"s3://{BUCKET}/scored",
                score_threshold=0.0,
                beam_args=[f"--s3_endpoint_url={endpoint}", "--s3_region_name=us-east-1"],
            )
        )
        assert (m.images_in, m.images_scored, m.images_failed) == (6, 5, 1)
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="scored/")["Contents"])
        assert "scored/_SUCCESS" in keys and "scored/detections-00000-of-00001.jsonl" in keys
        assert not [k for k in keys if "/.ssdflow-tmp-" in k]
        lines = (
            s3.get_object(Bucket=BUCKET, Key="scored/detections-00000-of-00001.jsonl")["Body"]
            .read()
            .decode()
            .splitlines()
        )
        assert sorted(json.loads(x)["source"] for x in lines) == [f"s3://{BUCKET}/archive/img{i}.jpg" for i in range(5)]
        errors = s3.get_object(Bucket=BUCKET, Key="scored/errors.jsonl")["Body"].read().decode()
        assert "broken.jpg" in errors and "testing-secret" not in errors


def test_model_on_s3_is_resolved_through_its_champion_and_copied_once(raccoon_model, tmp_path, monkeypatch):
    """--model s3://…/models: champion.json read through Beam FileSystems, the SavedModel's files
    copied once to the local cache (SSDFLOW_CACHE_DIR) and scored there; detections equal the local
    model's; a second job reuses the copy; a champion naming a missing version is refused."""
    pytest.importorskip("boto3")
    from ssdflow import storage

    version = os.path.basename(str(raccoon_model).rstrip("/"))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        (images / f"img{i}.jpg").write_bytes(noise_jpeg(i))
    local = run_score(
        ScoreConfig(model=raccoon_model, images=[str(images)], out=str(tmp_path / "local"), score_threshold=0.0)
    )

    cache = tmp_path / "cache"
    monkeypatch.setenv("SSDFLOW_CACHE_DIR", str(cache))
    copies = []
    copy = storage.copy_tree_to_local
    monkeypatch.setattr(storage, "copy_tree_to_local", lambda *a, **k: copies.append(a[0]) or copy(*a, **k))
    with moto_s3(bucket=BUCKET) as (endpoint, s3):
        upload_models_dir(s3, BUCKET, raccoon_model, "models")
        beam_args = [f"--s3_endpoint_url={endpoint}", "--s3_region_name=us-east-1"]
        for out in ("remote", "again"):
            remote = run_score(
                ScoreConfig(
                    model=f"s3://{BUCKET}/models",
                    images=[str(images)],
                    out=str(tmp_path / out),
                    score_threshold=0.0,
                    beam_args=beam_args,
                )
            )
        s3.put_object(Bucket=BUCKET, Key="models/champion.json", Body=json.dumps({"version": "v-missing"}).encode())
        with pytest.raises(FileNotFoundError, match="not committed"):
            run_score(
                ScoreConfig(
                    model=f"s3://{BUCKET}/models", images=[str(images)], out=str(tmp_path / "none"), beam_args=beam_args
                )
            )

    assert (
        remote.model_dir == f"s3://{BUCKET}/models/{version}" and remote.model_version == local.model_version == version
    )
    assert copies == [f"s3://{BUCKET}/models/{version}"]  # once, although two jobs loaded the model
    (copied,) = [d for d in cache.iterdir() if not d.name.startswith(".")]
    assert (copied / "saved_model.pb").is_file() and (copied / "variables" / "variables.index").is_file()
    assert (
        not (copied / "keras.weights.h5").exists() and not (copied / "metrics.json").exists()
    )  # only what loading reads
    assert (
        detection_lines(tmp_path / "remote")
        == detection_lines(tmp_path / "again")
        == detection_lines(tmp_path / "local")
    )
    assert not (tmp_path / "none").exists()  # refused before anything was written


def test_auto_thresholds_are_the_models_calibrated_ones(raccoon_records, raccoon_model, tmp_path):
    """Training calibrates each class's threshold on val and stores it in the SavedModel (a lookup by
    label id) and its metadata; scoring applies it by default, and a number overrides it."""
    info = json.loads((Path(raccoon_model) / "ssdflow_model.json").read_text())
    metrics = json.loads((Path(raccoon_model) / "metrics.json").read_text())
    calibrated = metrics["score_thresholds"]["per_class"]["raccoon"]["threshold"]
    assert calibrated is not None and info["class_score_thresholds"] == {"1": calibrated}
    loaded = tf.saved_model.load(raccoon_model)
    assert loaded.class_score_thresholds.numpy()[1] == pytest.approx(calibrated)
    assert "## Score thresholds" in (Path(raccoon_model) / "model_card.md").read_text()

    images, _ = _val_images(raccoon_records, tmp_path)
    auto = run_score(ScoreConfig(model=raccoon_model, images=[images], out=str(tmp_path / "auto")))
    assert auto.score_thresholds.to_json() == {
        "setting": "auto",
        "per_class": {"raccoon": calibrated},
        "fallback": [],
    }  # the default
    scores = [d["score"] for r in detection_lines(tmp_path / "auto") for d in r["detections"]]
    assert all(s >= calibrated for s in scores)
    fixed = run_score(
        ScoreConfig(model=raccoon_model, images=[images], out=str(tmp_path / "fixed"), score_threshold=0.0)
    )
    assert fixed.score_thresholds.per_class == {"raccoon": 0.0}
    everything = [d["score"] for r in detection_lines(tmp_path / "fixed") for d in r["detections"]]
    assert sorted(s for s in everything if s >= calibrated) == sorted(scores) and scores  # as written, none lost
    strict = run_score(
        ScoreConfig(model=raccoon_model, images=[images], out=str(tmp_path / "strict"), score_threshold=1.0)
    )
    assert strict.detections == 0 < auto.detections  # a number overrides the calibrated threshold
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert summary["score_thresholds"]["per_class"] == {"raccoon": calibrated}


def test_select_writes_a_labelling_batch_that_ingests_back_with_no_rejection(raccoon_model, tmp_path):
    """``--select N``: the most uncertain images, one per scene (three byte-identical copies of one
    image are near-duplicates), with VOC pre-annotations that ``ingest`` reads back with no
    rejection; another N reuses the committed chunks and replaces the batch wholly."""
    from beam_jobs.ingest import run_ingest
    from ssdflow.config import IngestConfig

    root = raccoon_or_skip() / "images"
    archive = tmp_path / "archive"
    archive.mkdir()
    for i in (1, 2, 3, 4, 5):
        os.symlink(root / f"raccoon-{i}.jpg", archive / f"raccoon-{i}.jpg")
    for k in range(3):
        os.symlink(root / "raccoon-5.jpg", archive / f"copy{k}-of-5.jpg")
    out = tmp_path / "scored"
    m = run_score(ScoreConfig(model=raccoon_model, images=[str(archive)], out=str(out), chunk_size=3, select=6))
    # Six asked, five distinct scenes: every candidate considered, the three copies' later ones skipped.
    assert m.labelling.to_json() == {
        "candidates": 8,
        "considered": 8,
        "near_duplicates_skipped": 3,
        "unreadable": 0,
        "selected": 5,
    }
    batch = out / "labelling"
    rows = list(csv.DictReader((batch / "reasons.csv").open()))
    assert len({os.path.realpath(r["source"]) for r in rows}) == 5
    assert [float(r["uncertainty"]) for r in rows] == sorted((float(r["uncertainty"]) for r in rows), reverse=True)
    assert all(r["reason"] for r in rows) and sorted(p.name for p in (batch / "images").iterdir()) == sorted(
        os.path.basename(r["image"]) for r in rows
    )
    tasks = json.loads((batch / "label_studio.json").read_text())
    assert [t["data"]["image"] for t in tasks] == [f"{batch}/{r['image']}" for r in rows]
    boxes = sum(int(r["detections"]) for r in rows)

    stats = run_ingest(
        IngestConfig(
            images=str(batch / "images"),
            labels=str(batch / "annotations"),
            format="voc",
            out=str(tmp_path / "relabelled"),
        )
    )
    assert stats["images_in"] == 5 and stats["images_written"]["total"] == 5
    assert sum(stats["images_rejected"].values()) == 0 and sum(stats["boxes_rejected"].values()) == 0
    assert stats["boxes_written"] == boxes

    # With Label Studio's document root (tmp_path), the tasks name the images by its local-files URL.
    again = run_score(
        ScoreConfig(
            model=raccoon_model,
            images=[str(archive)],
            out=str(out),
            chunk_size=3,
            select=2,
            label_studio_root=str(tmp_path),
        )
    )
    assert again.chunks_scored_now == 0 and again.labelling.selected == 2
    assert len(list((batch / "images").iterdir())) == 2 == len(list((batch / "annotations").iterdir()))
    assert [t["data"]["image"] for t in json.loads((batch / "label_studio.json").read_text())] == [
        f"/data/local-files/?d=scored/labelling/{r['image']}" for r in rows[:2]
    ]
    assert [r["source"] for r in csv.DictReader((batch / "reasons.csv").open())] == [r["source"] for r in rows[:2]]
    # Uncertainty is against the model's calibrated thresholds, not the output filter: the same choice with 0.0.
    run_score(
        ScoreConfig(
            model=raccoon_model,
            images=[str(archive)],
            out=str(tmp_path / "all"),
            chunk_size=3,
            select=2,
            score_threshold=0.0,
        )
    )
    assert [r["source"] for r in csv.DictReader((tmp_path / "all" / "labelling" / "reasons.csv").open())] == [
        r["source"] for r in rows[:2]
    ]


def test_a_failed_rerun_leaves_the_previous_outputs_complete(raccoon_model, tmp_path, monkeypatch):
    """A scoring run that fails before its commit (here inside the pipeline, on new images) leaves the
    previous complete outputs as they were: _SUCCESS and every file it lists, byte for byte."""
    import beam_jobs.score.pipeline

    out = tmp_path / "out"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_score(
        ScoreConfig(model=raccoon_model, images=[_many_images(tmp_path / "a", 4)], out=str(out), score_threshold=0.0)
    )
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert "_SUCCESS" in before

    def boom(*args, **kwargs):
        raise RuntimeError("injected failure inside the pipeline")

    monkeypatch.setattr(beam_jobs.score.pipeline, "build_pipeline", boom)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_score(
            ScoreConfig(
                model=raccoon_model, images=[_many_images(tmp_path / "b", 5)], out=str(out), score_threshold=0.0
            )
        )
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before

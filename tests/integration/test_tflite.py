"""``ssdflow export --format tflite``: TFLite's SSD post-processing op, metadata and label file, the
same COCO metrics as the SavedModel through TFLite's interpreter, int8 calibrated on the train split,
and bad input refused naming the flag (issue 14). Quality of int8 on a trained model: bench/tflite.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ssdflow.cli import app

pytestmark = pytest.mark.integration
pytest.importorskip("tensorflow")


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def _ops(path: Path) -> tuple[set[str], dict]:
    from model.tflite import TFLiteDetector

    interpreter = TFLiteDetector(str(path)).interpreter
    return {op["op_name"] for op in interpreter._get_ops_details()}, interpreter.get_input_details()[0]


def test_tflite_export_carries_postprocessing_and_metadata_and_scores_as_the_savedmodel(
    raccoon_model, raccoon_records, tmp_path
):
    from model import tflite_metadata

    model = tmp_path / "model"
    shutil.copytree(raccoon_model, model)  # the shared fixture stays untouched
    saved_map = json.loads((model / "metrics.json").read_text())["mAP@.5"]

    result = _cli("export", "--model", str(model), "--format", "tflite", "--data", raccoon_records)
    assert result.exit_code == 0, result.output
    assert f"export: {model / 'model.tflite'}" in result.output
    manifest = json.loads((model / "tflite.json").read_text())
    assert manifest["model.tflite"]["quantize"] == "none"
    # The fixture's 30 steps leave its boxes near its anchors (many reach past the image, and TFLite's
    # op suppresses before clipping where Detector clips first), but its scores no longer tie: eight
    # trainings gave TFLite minus SavedModel mAP@.5 within 0.005 (after 3 steps, with tied scores,
    # from -0.042 to +0.082). Issue 14's 0.005 is measured on a trained model by bench/tflite.py;
    # the exact agreement is checked on one image below.
    assert abs(manifest["model.tflite"]["metrics"]["mAP@.5"] - saved_map) <= 0.02, (manifest, saved_map)

    ops, inp = _ops(model / "model.tflite")
    assert "TFLite_Detection_PostProcess" in ops and not {"VAR_HANDLE", "READ_VARIABLE"} & ops  # weights frozen in
    assert inp["dtype"].__name__ == "float32" and list(inp["shape"]) == [1, 128, 128, 3]
    meta = tflite_metadata.read((model / "model.tflite").read_bytes())
    assert meta["labels"] == ["raccoon"] and meta["label_file"] == {"name": "labelmap.txt", "type": 3}
    assert meta["outputs"] == ["score", "location", "number of detections", "category"]
    assert (meta["input"]["mean"], meta["input"]["std"], meta["box_index"]) == ([0.0], [1.0], [1, 0, 3, 2])
    assert meta["version"] == model.name

    # The same image, the same best detection as the SavedModel's (the op decodes and suppresses as Detector does).
    import tensorflow as tf

    from model.tflite import TFLiteDetector
    from tests.helpers import raccoon_or_skip

    image = tf.constant([(raccoon_or_skip() / "images" / "raccoon-1.jpg").read_bytes()])
    lite = {k: v.numpy()[0] for k, v in TFLiteDetector(str(model / "model.tflite"))(image).items()}
    saved = {
        k: v.numpy()[0] for k, v in tf.saved_model.load(str(model)).signatures["serving_default"](images=image).items()
    }
    n = int(saved["num_detections"])
    for i in range(5):  # matched, not indexed: this model's anchors tie on score, and ties may come out in any order
        assert any(
            abs(lite["detection_scores"][i] - saved["detection_scores"][j]) <= 1e-4
            and abs(lite["detection_boxes"][i] - saved["detection_boxes"][j]).max() <= 1e-3
            and lite["detection_classes"][i] == saved["detection_classes"][j]
            for j in range(n)
        ), i

    # `evaluate` on the file gives what the export recorded.
    result = _cli("evaluate", "--model", str(model / "model.tflite"), "--data", raccoon_records)
    assert result.exit_code == 0, result.output
    assert (
        json.loads(result.output[result.output.index("{") :])["mAP@.5"] == manifest["model.tflite"]["metrics"]["mAP@.5"]
    )

    # int8: calibrated on the train split, uint8 pixels in, a fraction of the size.
    result = _cli(
        "export", "--model", str(model), "--format", "tflite", "--quantize", "int8", "--data", raccoon_records
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((model / "tflite.json").read_text())
    entry = manifest["model_int8.tflite"]
    assert entry["calibration"] == raccoon_records and entry["bytes"] < 0.45 * manifest["model.tflite"]["bytes"]
    ops, inp = _ops(model / "model_int8.tflite")
    assert "TFLite_Detection_PostProcess" in ops and inp["dtype"].__name__ == "uint8"
    assert inp["quantization"] == (1.0, 0)  # raw pixels: the network scales them itself
    card = (model / "model_card.md").read_text()
    assert (
        card.count("## TFLite") == 1
        and "| `model.tflite` | none |" in card
        and "| `model_int8.tflite` | int8 |" in card
    )
    assert not [p.name for p in model.iterdir() if p.name.endswith(".tmp")]


def test_tflite_export_refuses_bad_input_naming_the_flag(raccoon_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(raccoon_model, model)
    empty = tmp_path / "empty"
    empty.mkdir()
    no_savedmodel = tmp_path / "weights-only"
    no_savedmodel.mkdir()
    for name in ("ssdflow_model.json", "label_map.json"):
        shutil.copy(model / name, no_savedmodel / name)
    cases = [
        (["--model", str(model), "--format", "onnx"], "'onnx' is not one of"),  # click's choices
        (["--model", str(model), "--format", "tflite", "--quantize", "int4"], "'int4' is not one of"),
        (["--model", str(model), "--format", "tflite", "--quantize", "int8"], "--quantize int8 needs --data"),
        (
            ["--model", str(model), "--format", "tflite", "--data", str(empty)],
            f"{empty}: no _SUCCESS: not a complete ingest output",
        ),
        (["--model", str(empty), "--format", "tflite"], "--model"),
        (["--model", str(no_savedmodel), "--format", "tflite"], "--model"),
    ]
    before = sorted(p.name for p in model.iterdir())
    for args, message in cases:
        result = _cli("export", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
    assert sorted(p.name for p in model.iterdir()) == before  # nothing written


def test_score_runs_a_tflite_file_with_the_savedmodels_outputs_chunks_and_resume(raccoon_model, tmp_path):
    from beam_jobs.score import run_score
    from ssdflow.config import ScoreConfig
    from tests.helpers import raccoon_or_skip

    model = tmp_path / "model"
    shutil.copytree(raccoon_model, model)
    assert _cli("export", "--model", str(model), "--format", "tflite").exit_code == 0
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((raccoon_or_skip() / "images").glob("*.jpg"))[:5]:
        shutil.copy(path, images / path.name)
    good = (images / sorted(p.name for p in images.iterdir())[0]).read_bytes()
    (images / "zz-corrupt.jpg").write_bytes(good[:400] + b"\x00" * 50 + b"garbage" * 40)  # valid header, broken body

    def score(model_arg: Path, out: Path) -> tuple[dict, dict]:
        m = run_score(
            ScoreConfig(
                model=str(model_arg),
                images=[str(images)],
                out=str(out),
                score_threshold=0.0,
                max_detections=5,
                chunk_size=3,
            )
        )
        records = {}
        for shard in sorted(out.glob("detections-*.jsonl")):
            for line in shard.read_text().splitlines():
                r = json.loads(line)
                records[Path(r["source"]).name] = r
        return m, records

    lite_m, lite = score(model / "model.tflite", tmp_path / "out-lite")
    saved_m, saved = score(model, tmp_path / "out-saved")
    assert (lite_m.runtime, lite_m.model_file, lite_m.model_version) == (
        "tflite",
        str(model / "model.tflite"),
        f"{model.name}.model",
    )
    assert saved_m.runtime == "saved_model" and saved_m.model_file is None
    for key in ("images_in", "images_scored", "images_failed", "chunks"):
        assert getattr(lite_m, key) == getattr(saved_m, key), key
    assert (lite_m.images_in, lite_m.images_failed) == (6, 1)
    errors = [json.loads(line) for line in (tmp_path / "out-lite" / "errors.jsonl").read_text().splitlines()]
    assert [(Path(e["source"]).name, e["reason"]) for e in errors] == [("zz-corrupt.jpg", "decode_error")]
    assert lite.keys() == saved.keys() and len(lite) == 5
    for name in lite:  # the same network on the same pixels: the best score agrees (ties may order boxes differently)
        assert lite[name]["model_version"] == f"{model.name}.model" and lite[name]["detections"]
        assert abs(lite[name]["detections"][0]["score"] - saved[name]["detections"][0]["score"]) <= 2e-4, name
    chunks = tmp_path / "out-lite" / "chunks"
    assert [p.name for p in chunks.iterdir()] == [
        f"{model.name}.model"
    ]  # chunks keyed by the file, apart from the SavedModel's

    # Resume: the same file again scores nothing new; a changed file is another model.
    again, _ = score(model / "model.tflite", tmp_path / "out-lite")
    assert again.chunks_scored_now == 0 and again.images_scored == 5
    shutil.copy(model / "model.tflite", model / "model_copy.tflite")
    with open(model / "model_copy.tflite", "ab") as f:
        f.write(b"\0")  # other bytes, same network: still a different file to the chunk keys
    other, _ = score(model / "model_copy.tflite", tmp_path / "out-lite")
    assert other.chunks_scored_now == other.chunks == 2 and other.model_version == f"{model.name}.model_copy"

    # The same file on S3 (moto's server on 127.0.0.1): read through Beam FileSystems, the same detections.
    pytest.importorskip("boto3")
    from tests.helpers import moto_s3, upload_models_dir

    with moto_s3(bucket="ssdflow-tflite") as (endpoint, s3):
        upload_models_dir(s3, "ssdflow-tflite", model, "models")
        remote = run_score(
            ScoreConfig(
                model=f"s3://ssdflow-tflite/models/{model.name}/model.tflite",
                images=[str(images)],
                out=str(tmp_path / "out-s3"),
                score_threshold=0.0,
                max_detections=5,
                chunk_size=3,
                beam_args=[f"--s3_endpoint_url={endpoint}", "--s3_region_name=us-east-1"],
            )
        )
    assert remote.runtime == "tflite" and remote.model_version == lite_m.model_version
    remote_records = {
        Path(r["source"]).name: r
        for shard in sorted((tmp_path / "out-s3").glob("detections-*.jsonl"))
        for r in map(json.loads, shard.read_text().splitlines())
    }
    assert remote_records == lite

    # TFLite's console lines (the XNNPACK delegate's announcement at a process's first call) are filtered.
    import subprocess
    import sys

    code = (
        "import ssdflow, numpy as np; from model.tflite import TFLiteDetector; "
        f"d = TFLiteDetector({str(model / 'model.tflite')!r}); d.detect_pixels(np.zeros((d.size, d.size, 3), np.float32)); "
        "import sys; print('ran', file=sys.stderr)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "ran" in run.stderr and "XNNPACK" not in run.stderr, run.stderr

    # A .tflite that is not there, or not beside its model, is refused by name.
    result = _cli(
        "score", "--model", str(model / "model_int8.tflite"), "--images", str(images), "--out", str(tmp_path / "o3")
    )
    assert result.exit_code != 0 and "model_int8.tflite: no such .tflite file" in result.output
    stray = tmp_path / "stray"
    stray.mkdir()
    shutil.copy(model / "model.tflite", stray / "model.tflite")
    result = _cli(
        "score", "--model", str(stray / "model.tflite"), "--images", str(images), "--out", str(tmp_path / "o4")
    )
    assert result.exit_code != 0 and "not beside its exported model" in result.output


def test_tflite_export_of_a_champion_in_s3_goes_back_beside_it(raccoon_model, raccoon_records, tmp_path, monkeypatch):
    """`ssdflow export --format tflite --model s3://…/models --data s3://…/records`: exported from this
    machine's copy, the .tflite, tflite.json and the model card's TFLite row written back to the bucket."""
    pytest.importorskip("boto3")
    from model import registry
    from ssdflow import storage
    from tests.helpers import moto_s3

    monkeypatch.setenv("SSDFLOW_CACHE_DIR", str(tmp_path / "cache"))
    with moto_s3(bucket="ssdflow-lite") as (endpoint, s3):
        storage.configure([f"--s3_endpoint_url={endpoint}"])
        models = "s3://ssdflow-lite/models"
        version = registry.new_version(models)
        shutil.copytree(
            raccoon_model,
            registry.staging_dir(models, version),
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("_SUCCESS", "*.tflite", "tflite.json"),
        )
        registry.commit_version(models, version)
        registry.promote_version(models, version, "ana", "the first")
        card_before = (
            s3.get_object(Bucket="ssdflow-lite", Key=f"models/{version}/model_card.md")["Body"].read().decode()
        )
        storage.upload_tree(raccoon_records, "s3://ssdflow-lite/records")

        result = _cli(
            "export",
            "--format",
            "tflite",
            "--model",
            models,
            "--data",
            "s3://ssdflow-lite/records",
            f"--s3_endpoint_url={endpoint}",
        )
        assert result.exit_code == 0, result.output
        assert f"export: {models}/{version}/model.tflite" in result.output
        stored = {o["Key"] for o in s3.list_objects_v2(Bucket="ssdflow-lite", Prefix=f"models/{version}/")["Contents"]}
        assert {f"models/{version}/model.tflite", f"models/{version}/tflite.json"} <= stored
        entry = json.loads(s3.get_object(Bucket="ssdflow-lite", Key=f"models/{version}/tflite.json")["Body"].read())[
            "model.tflite"
        ]
        assert 0 <= entry["metrics"]["mAP@.5"] <= 1
        card = s3.get_object(Bucket="ssdflow-lite", Key=f"models/{version}/model_card.md")["Body"].read().decode()
        assert (
            card.startswith(card_before.split("<!-- ssdflow: tflite -->")[0].rstrip("\n"))
            and "| `model.tflite` | none |" in card
        )
        assert registry.list_versions(models) == [version]  # the version is still whole: its manifest untouched

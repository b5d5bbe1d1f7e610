"""Training end to end on tiny synthetic data: overfit, export, reload, evaluate, promote, budget
(the kill-and-resume tests are in test_train_resume.py, so that a second worker runs them).

Models are tiny (alpha 0.35, 128 px) and trained from scratch for a bounded number of steps, so
the whole module stays within a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from beam_jobs.splits import hash_split as split_for
from ssdflow.config import TrainConfig
from tests.helpers import REPO, SHAPES_VAL_FRACTION as VAL_FRACTION, TINY_TRAIN as TINY

pytestmark = pytest.mark.integration
tf = pytest.importorskip("tensorflow")


def _train(shapes, **overrides):
    from model.train import train

    return train(TrainConfig(data=shapes["records"], models=shapes["models"], **{**TINY, **overrides}), verbose=0)


@pytest.fixture(scope="module")
def trained(shapes):
    """A barely trained first champion (trained in mixed_bfloat16: one training fewer than a run of
    its own), then a well-overfitted challenger that must replace it."""
    weak = _train(shapes, epochs=1, steps_per_epoch=1, learning_rate=1e-5, precision="mixed_bfloat16")
    strong = _train(shapes, epochs=3, steps_per_epoch=40, learning_rate=3e-3)
    return weak, strong


def _iou(a, b):
    y0, x0 = max(a[0], b[0]), max(a[1], b[1])
    y1, x1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, y1 - y0) * max(0.0, x1 - x0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_overfit_exported_model_finds_every_box(shapes, trained):
    _, strong = trained
    assert os.path.isdir(os.path.join(strong.model_dir, "logs", "train"))  # TensorBoard logs stay with the version
    assert strong.metrics["best_epoch"] is None  # no evaluation during training (eval_every 1000): the last epoch's
    serve = tf.saved_model.load(strong.model_dir).signatures["serving_default"]
    ids = {c["name"]: c["id"] for c in json.load(open(os.path.join(strong.model_dir, "label_map.json")))["classes"]}
    checked = 0
    for key, objects in shapes["truth"].items():
        if split_for(key, VAL_FRACTION) != "train":
            continue
        out = serve(images=tf.constant([(shapes["images"] / f"{key}.jpg").read_bytes()]))
        n = int(out["num_detections"][0])
        boxes, classes, scores = (
            out[k][0][:n].numpy() for k in ("detection_boxes", "detection_classes", "detection_scores")
        )
        for name, x0, y0, x1, y1 in objects:
            gt = (y0 / 128, x0 / 128, y1 / 128, x1 / 128)
            best = max(
                (_iou(gt, b) for b, c, s in zip(boxes, classes, scores) if c == ids[name] and s > 0.3), default=0.0
            )
            assert best > 0.5, f"{key}: no {name} found at {gt} (best IoU {best:.2f})"
            checked += 1
    assert checked >= 6


def test_better_challenger_promoted_worse_one_not(shapes, trained):
    from model import registry

    weak, strong = trained
    assert weak.decision["promoted"] and weak.decision["champion"] is None
    assert strong.decision["promoted"], strong.decision
    assert strong.decision["champion"] == weak.version
    assert strong.decision["challenger_score"] > strong.decision["champion_score"]
    # No epoch bound, a budget shorter than one step: the budget ends training after its first step;
    # that cut-short epoch is still validated, and its weights are the best (the only) ones exported.
    # It trains with quality focal classification, the GIoU box loss and ATSS matching (the settings
    # reach the loss and the input pipeline) and merges boxes after NMS (validation and the export), with two anchor scales per
    # level (the heads, anchors, export and scoring agree on their number) and the epoch kept by
    # map_near_map50 (its weights restored from the candidate's own file).
    worse = _train(
        shapes,
        epochs=None,
        time_budget=0.001,
        steps_per_epoch=5,
        learning_rate=1e-5,
        seed=7,
        eval_every=1,
        classification_loss="quality_focal",
        box_loss="giou",
        matching="atss",
        box_merge_iou=0.6,
        anchor_scales_per_level=2,
        best_epoch_metric="map_near_map50",
        map50_tolerance=0.03,
    )
    assert worse.metrics["phases_ended_by"] == ["time budget"] and worse.metrics["epochs"] == 1
    assert (worse.metrics["best_epoch"], worse.metrics["best_phase"]) == (1, "phase1")
    assert worse.metrics["best_epoch_metric"] == "val mAP@[.5:.95] within 0.03 of the best val mAP@.5"
    assert [h["phase"] for h in worse.metrics["validation_history"]] == ["phase1"]
    assert worse.metrics["max_epochs"] == 1000 and worse.metrics["fit_seconds"] < 120
    assert not worse.decision["promoted"], worse.decision
    assert worse.decision["champion"] == strong.version
    assert registry.read_champion(shapes["models"])["version"] == strong.version
    lines = open(os.path.join(shapes["models"], "decisions.jsonl")).read().splitlines()
    assert [json.loads(line)["promoted"] for line in lines] == [True, True, False]
    card = open(os.path.join(worse.model_dir, "model_card.md")).read()
    assert "Promoted: **no**" in card and shapes["records"] in card
    assert "SSDLite, MobileNetV2 backbone (alpha 0.35)" in card
    assert "quality_focal classification and giou box loss, atss matching" in card
    assert "per-class NMS at IoU 0.5, scores from 0.01, 100 detections per image, boxes merged above IoU 0.6" in card
    assert json.load(open(os.path.join(worse.model_dir, "ssdflow_model.json")))["box_merge_iou"] == 0.6
    # The shapes' boxes, about square, fit the anchor shapes (the figure YOLO's autoanchor calls best possible recall).
    coverage = worse.metrics["anchor_fit"]["shape_coverage"]
    assert set(coverage) <= {"circle", "square", "triangle"} and len(coverage) >= 2 and min(coverage.values()) >= 0.9
    assert "- Anchor shapes: share of each class's training boxes" in card and f"{next(iter(coverage))} " in card
    # The finest anchors were fitted to the shapes' boxes (sides 1/6-1/2 of the image): just under the 0.2 default.
    architecture = json.load(open(os.path.join(worse.model_dir, "ssdflow_model.json")))["model"]
    fitted = architecture["min_scale"]
    assert 0.15 < fitted <= 0.2 and architecture["scales_per_level"] == 2
    assert (
        f"anchor scales {fitted:.3g}-0.95 of the image side (linear, 2 per level), aspect ratios (w/h) 1, 2, 0.5, 3, 0.333"
        in card
    )
    assert "phase1 epoch 1, the best val mAP@[.5:.95] within 0.03 of the best val mAP@.5 of the 1 evaluated" in card
    assert architecture["finest_stride"] == 16  # the shapes are 1/6-1/2 of the image: no stride-8 level needed
    assert "| mAP small / medium / large" in card
    # Look, don't read: the PR curves and drawn val images sit beside the card, which links them.
    assert "![PR curves](pr_curves.png)" in card and "](val_examples/val-00.jpg)" in card
    assert Image.open(os.path.join(worse.model_dir, "pr_curves.png")).format == "PNG"
    assert len(os.listdir(os.path.join(worse.model_dir, "val_examples"))) >= 1
    assert len(worse.metrics["pr_curves"]) == 3


def test_rerun_after_a_crash_reuses_the_committed_version(shapes, trained):
    """A crash after training committed its version (e.g. while nightly scored): the orchestrated
    rerun (reuse_completed) returns that version instead of training and registering a duplicate."""
    from model import registry
    from model.train import train

    _, strong = trained
    decisions = os.path.join(shapes["models"], "decisions.jsonl")
    versions, lines = registry.list_versions(shapes["models"]), open(decisions).read()
    cfg = TrainConfig(
        data=shapes["records"],
        models=shapes["models"],
        **{**TINY, "epochs": 3, "steps_per_epoch": 40, "learning_rate": 3e-3},
    )
    again = train(cfg, verbose=0, reuse_completed=True)
    assert (again.version, again.epochs_run) == (strong.version, 0)
    assert again.decision == strong.decision and again.metrics["mAP"] == strong.metrics["mAP"]
    assert registry.list_versions(shapes["models"]) == versions and open(decisions).read() == lines


# The TF2 Object Detection API tutorial's inference code, as users have it (plot_object_detection_saved_model),
# run in a process that imports nothing of ssdflow. One line differs: the tutorial's
# ``int(detections.pop('num_detections'))`` fails under numpy 2 for the TF OD API's own exports too
# (num_detections is [batch], and numpy 2 refuses int() of a 1-d array), so it indexes the batch.
TF_OD_API_SNIPPET = """
import json, sys
import numpy as np
import tensorflow as tf
from PIL import Image

detect_fn = tf.saved_model.load(sys.argv[1])
image_np = np.array(Image.open(sys.argv[2]))
input_tensor = tf.convert_to_tensor(image_np)
input_tensor = input_tensor[tf.newaxis, ...]
detections = detect_fn(input_tensor)
num_detections = int(detections.pop('num_detections')[0])
detections = {key: value[0, :num_detections].numpy() for key, value in detections.items()}
detections['num_detections'] = num_detections
detections['detection_classes'] = detections['detection_classes'].astype(np.int64)

# ssdflow's own bytes-in signature on the same file, and the TF Serving signatures under the TF OD API's input name.
serving = detect_fn.signatures['serving_default']
data = open(sys.argv[2], 'rb').read()
by_bytes = serving(images=tf.constant([data] * 2))
uint8 = detect_fn.signatures['image_tensor'](input_tensor=input_tensor)
encoded = detect_fn.signatures['encoded_image_string_tensor'](input_tensor=tf.constant([data]))
# The tutorial's pixels, losslessly as PNG bytes: PIL's and TensorFlow's JPEG decoders differ by grey levels, which
# moves a weak model's boxes by several hundredths; the same pixels must give the same boxes by either route.
same_pixels = serving(images=tf.constant([tf.io.encode_png(image_np).numpy()] * 2))
print(json.dumps({
    'inputs': sorted(serving.structured_input_signature[1]), 'outputs': sorted(by_bytes),
    'shapes': {k: v.shape.as_list() for k, v in by_bytes.items()},
    'odapi': {k: (v.tolist() if hasattr(v, 'tolist') else v) for k, v in detections.items()},
    'bytes': {k: v[0].numpy().tolist() for k, v in by_bytes.items()},
    'same_pixels': {k: v[0].numpy().tolist() for k, v in same_pixels.items()},
    'image_tensor': {k: v[0].numpy().tolist() for k, v in uint8.items()},
    'encoded': {k: v[0].numpy().tolist() for k, v in encoded.items()},
    'signature_inputs': {name: sorted(detect_fn.signatures[name].structured_input_signature[1])
                         for name in ('image_tensor', 'encoded_image_string_tensor')}}))
"""


def test_saved_model_reloads_in_a_fresh_process_and_serves_tf_od_api_clients(trained, shapes):
    """The bytes-in signature, and the TF OD API tutorial's code unchanged (``detect_fn(uint8 [1, H,
    W, 3])``): its boxes match the bytes signature's for the same pixels (issue 14 asks within 0.02;
    the same pixels give the same boxes to 1e-3)."""
    _, strong = trained
    key = next(
        k for k in sorted(shapes["truth"]) if split_for(k, VAL_FRACTION) == "train"
    )  # one the model finds boxes on
    image = str(shapes["images"] / f"{key}.jpg")
    proc = subprocess.run(
        [sys.executable, "-c", TF_OD_API_SNIPPET, strong.model_dir, image], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["inputs"] == ["images"]
    assert info["outputs"] == ["detection_boxes", "detection_classes", "detection_scores", "num_detections"]
    assert info["shapes"]["detection_boxes"] == [2, 100, 4] and info["shapes"]["num_detections"] == [2]
    assert info["signature_inputs"] == {
        "image_tensor": ["input_tensor"],
        "encoded_image_string_tensor": ["input_tensor"],
    }
    odapi, by_bytes, same = info["odapi"], info["bytes"], info["same_pixels"]
    confident = [
        (b, c)
        for b, c, s in zip(same["detection_boxes"], same["detection_classes"], same["detection_scores"])
        if s > 0.3
    ]
    assert confident and odapi["num_detections"] >= len(confident)
    for box, cls in confident:  # batch 2 vs batch 1: oneDNN may round apart, so matched, not indexed
        diff = min(
            max(abs(x - y) for x, y in zip(box, other))
            for other, other_cls in zip(odapi["detection_boxes"], odapi["detection_classes"])
            if other_cls == int(cls)
        )
        assert diff <= 1e-3, (box, diff)
    assert any(s > 0.3 for s in by_bytes["detection_scores"])  # and the JPEG bytes themselves are served
    for key in (
        "detection_boxes",
        "detection_scores",
        "detection_classes",
    ):  # the same signature under the TF OD API's name
        assert np.allclose(info["encoded"][key], by_bytes[key], atol=1e-4), (
            key
        )  # (batch 1 vs 2: oneDNN may round apart)
    assert info["image_tensor"]["detection_boxes"][:3] == odapi["detection_boxes"][:3]


def test_evaluate_reproduces_metrics_json(trained, shapes):
    _, strong = trained
    proc = subprocess.run(
        [sys.executable, "-m", "ssdflow.cli", "evaluate", "--model", shapes["models"], "--data", shapes["records"]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout[proc.stdout.index("{") :])
    saved = json.load(open(os.path.join(strong.model_dir, "metrics.json")))
    for key in ("mAP", "mAP@.5", "mAP@.75", "per_class", "num_detections"):
        assert got[key] == saved[key], key


def test_bfloat16_training_exports_a_float32_model_and_restores_the_policy(trained):
    """precision=mixed_bfloat16 trains (AVX512_BF16 CPUs, TPUs); what it exports computes in float32
    (the SavedModel's graph holds no bfloat16 tensor), and the process's policy is float32 again
    (the strong challenger trained after it in float32)."""
    import keras

    from model.export import load_detector

    weak, strong = trained
    assert weak.metrics["precision"] == "mixed_bfloat16" and strong.metrics["precision"] == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    serve, _loaded = load_detector(weak.model_dir)
    graph = str(serve.graph.as_graph_def())
    assert "DT_BFLOAT16" not in graph and "DT_FLOAT" in graph
    image = tf.io.encode_png(tf.zeros([64, 64, 3], tf.uint8))
    assert serve(images=tf.stack([image]))["detection_scores"].dtype == tf.float32


def test_champion_and_challenger_drawn_side_by_side(trained, shapes, tmp_path):
    """Both models' detections on the same val images; the counts are what each model returns."""
    from model.compare import side_by_side
    from model.dataset import eval_dataset, shard_files
    from model.export import load_detector

    weak, strong = trained
    rows = side_by_side(weak.model_dir, strong.model_dir, shapes["records"], 2, str(tmp_path), threshold=0.0)
    batch = next(iter(eval_dataset(shard_files(shapes["records"], "val"), batch_size=2)))
    for column, model_dir in (("champion_boxes", weak.model_dir), ("challenger_boxes", strong.model_dir)):
        serve, _loaded = load_detector(model_dir)
        found = serve(images=batch["encoded"])["num_detections"].numpy()
        assert [row[column] for row in rows] == [int(n) for n in found], column
    assert len(rows) == 2
    for row in rows:
        assert row["ground_truth_boxes"] >= 1
        with Image.open(row["file"]) as img:
            assert img.format == "JPEG" and img.width == 2 * 128 + 10  # both panels at the val images' size


def test_warm_start_continues_from_the_champion(trained, shapes, tmp_path):
    """--init-from champion: the run starts from the champion's architecture and weights (at a
    learning rate too small to move them, the challenger detects exactly what the champion does),
    one fine-tuning phase, and the model card and metrics say where it started. A label map that
    differs refuses the explicit start."""
    import shutil

    from model import registry
    from model.run_record import TrainError
    from model.train import train

    models = tmp_path / "models"
    shutil.copytree(shapes["models"], models)
    champion = registry.read_champion(models)["version"]
    # Settings that differ from the champion's architecture (alpha, size) are the champion's in a warm start.
    warm = train(
        TrainConfig(
            data=shapes["records"],
            models=str(models),
            **{
                **TINY,
                "alpha": 0.5,
                "image_size": 160,
                "epochs": 3,
                "steps_per_epoch": 1,
                "learning_rate": 1e-12,
                "init_from": "champion",
            },
        ),
        verbose=0,
    )
    assert warm.metrics["initialized_from"].startswith(f"champion {champion}")
    assert warm.metrics["epochs"] == 1 and warm.metrics["phases_ended_by"] == ["epochs"]  # a third of 3, one phase
    info = json.load(open(os.path.join(warm.model_dir, "ssdflow_model.json")))["model"]
    assert (info["alpha"], info["image_size"]) == (0.35, 128)
    assert f"Started from: champion {champion}" in open(os.path.join(warm.model_dir, "model_card.md")).read()
    image = tf.constant([(shapes["images"] / "im0.jpg").read_bytes()])
    before = tf.saved_model.load(str(models / champion)).signatures["serving_default"](images=image)
    after = tf.saved_model.load(warm.model_dir).signatures["serving_default"](images=image)
    assert float(tf.reduce_max(tf.abs(before["detection_scores"] - after["detection_scores"]))) < 1e-3

    # A warm start that only gets worse (Adam at learning rate 1.0 wrecks the weights) exports the weights
    # it started from: they compete as epoch 0 on val.
    start = registry.read_champion(models)["version"]
    start_map = json.loads((models / start / "metrics.json").read_text())["mAP@.5"]
    wrecked = train(
        TrainConfig(
            data=shapes["records"],
            models=str(models),
            **{
                **TINY,
                "epochs": 3,
                "steps_per_epoch": 1,
                "learning_rate": 1.0,
                "fine_tune_lr_factor": 1.0,
                "eval_every": 1,
                "init_from": "champion",
            },
        ),
        verbose=0,
    )
    history = wrecked.metrics["validation_history"]
    assert [(h["phase"], h["epoch"]) for h in history] == [("start", 0), ("phase2", 1)]
    assert history[0]["mAP@.5"] == pytest.approx(start_map) and history[1]["mAP@.5"] < start_map
    assert (wrecked.metrics["best_epoch"], wrecked.metrics["best_phase"]) == (0, "start")
    assert wrecked.metrics["mAP@.5"] == pytest.approx(start_map)
    assert "the starting weights'" in open(os.path.join(wrecked.model_dir, "model_card.md")).read()

    champion = registry.read_champion(models)["version"]  # the warm challenger, promoted or not
    label_map = json.loads((models / champion / "label_map.json").read_text())
    label_map["classes"] = [{**c, "name": c["name"] + "-renamed"} for c in label_map["classes"]]
    (models / champion / "label_map.json").write_text(json.dumps(label_map))
    with pytest.raises(TrainError, match="label map differs"):
        train(
            TrainConfig(
                data=shapes["records"],
                models=str(models),
                **{**TINY, "epochs": 1, "steps_per_epoch": 1, "init_from": "champion"},
            ),
            verbose=0,
        )
    # ``auto`` then starts from the backbone, saying why (warm_start.resolve, tests/unit/test_warm_start.py;
    # the sentence lands in the metrics as the champion start's did above).

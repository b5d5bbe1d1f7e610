"""model.ssd: the SSDLite graph, its class-head prior, backbone freezing, BN momentum and backbone weights."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from model.anchors import anchors_per_cell, feature_map_sizes, num_anchors
from model.ssd import BackboneWeightsError, build_backbone, build_ssd, freeze_backbone, unfreeze_top
from ssdflow.config import ModelConfig

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_1.0_imagenet_dogs_no_top.weights.h5"
C = 3
CFG = ModelConfig(alpha=0.35, image_size=128, num_classes=C, bn_momentum=0.9)


def _walk(layer):
    """Every layer, descending into nested models (written here, independent of model.ssd's own walker)."""
    for sub in getattr(layer, "layers", []):
        yield sub
        yield from _walk(sub)


def _block(name: str) -> int | None:
    m = re.match(r"block_(\d+)_", name)
    return int(m.group(1)) if m else None


@pytest.fixture(scope="module")
def model():
    return build_ssd(CFG, None)


def test_output_shape(model):
    n = num_anchors(CFG)
    x = np.random.default_rng(0).uniform(0, 255, (2, 128, 128, 3)).astype(np.float32)
    y = np.asarray(model(x, training=False))
    assert y.shape == (2, n, 4 + C + 1) and y.dtype == np.float32
    assert np.isfinite(y).all()
    assert tuple(model.output.shape) == (None, n, 4 + C + 1)


def test_anchor_count_is_sum_over_heads(model):
    sizes = feature_map_sizes(CFG.image_size, CFG.extra_levels)
    a = anchors_per_cell(CFG.aspect_ratios)
    per_level = []
    for level, size in enumerate(sizes):
        box = model.get_layer(f"box_head{level}").output.shape
        cls = model.get_layer(f"class_head{level}").output.shape
        assert tuple(box[1:]) == (size, size, a * 4)
        assert tuple(cls[1:]) == (size, size, a * (C + 1))
        per_level.append(model.get_layer(f"box_head{level}_reshape").output.shape[1])
    with pytest.raises(ValueError):
        model.get_layer(f"box_head{len(sizes)}")  # no more heads than levels
    assert per_level == [s * s * a for s in sizes]
    assert model.get_layer("boxes").output.shape[1] == sum(per_level) == num_anchors(CFG)
    assert model.get_layer("class_logits").output.shape[1] == num_anchors(CFG)


def test_class_head_background_prior(model):
    a = anchors_per_cell(CFG.aspect_ratios)
    background = math.log((1 - C * 0.01) / 0.01)
    expected = np.array([background, 0.0, 0.0, 0.0] * a, np.float32)
    level = 0
    while True:
        try:
            head = model.get_layer(f"class_head{level}")
        except ValueError:
            break
        np.testing.assert_allclose(np.asarray(head.bias), expected, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(model.get_layer(f"box_head{level}").bias), 0.0)
        level += 1
    assert level == len(feature_map_sizes(CFG.image_size, CFG.extra_levels))
    # the bias alone (a zero feature map) gives each object class probability 0.01
    group = expected[: C + 1].astype(np.float64)
    probs = np.exp(group) / np.exp(group).sum()
    np.testing.assert_allclose(probs, [1 - C * 0.01] + [0.01] * C, rtol=1e-5)


def test_freeze_backbone():
    m = build_ssd(CFG, None)
    heads = len(m.trainable_weights) - len(m.get_layer("backbone").trainable_weights)
    freeze_backbone(m)
    backbone = m.get_layer("backbone")
    assert backbone.trainable_weights == []
    assert all(not layer.trainable for layer in _walk(backbone) if layer.weights)
    assert len(m.trainable_weights) == heads > 0


def test_unfreeze_top_from_block_11():
    m = build_ssd(CFG, None)
    freeze_backbone(m)
    unfreeze_top(m, from_block=11)
    backbone = m.get_layer("backbone")
    names = [layer.name for layer in backbone.layers]
    top_start = names.index("block_11_expand")
    seen_top = 0
    for i, layer in enumerate(backbone.layers):
        if not layer.weights:
            continue
        if isinstance(layer, layers.BatchNormalization):
            assert not layer.trainable, layer.name
            assert not layer.trainable_weights, layer.name
        elif i >= top_start:
            assert layer.trainable and layer.trainable_weights, layer.name
            assert _block(layer.name) is None or _block(layer.name) >= 11, layer.name
            seen_top += 1
        else:
            assert not layer.trainable and not layer.trainable_weights, layer.name
            assert _block(layer.name) is None or _block(layer.name) < 11, layer.name
    assert m.get_layer("backbone").get_layer("Conv_1").trainable  # the last conv, after block_16
    assert not m.get_layer("backbone").get_layer("block_10_project").trainable
    assert seen_top >= 3 * 6  # blocks 11-16: expand, depthwise, project each


def test_frozen_batchnorm_runs_in_inference_mode():
    """unfreeze_top's frozen BN layers keep their moving statistics under training=True."""
    m = build_ssd(CFG, None)
    freeze_backbone(m)
    unfreeze_top(m, from_block=11)
    bn = m.get_layer("backbone").get_layer("block_12_expand_BN")
    before = [np.array(v) for v in bn.non_trainable_weights]
    x = np.random.default_rng(1).uniform(0, 255, (2, 128, 128, 3)).astype(np.float32)
    m(x, training=True)
    for b, v in zip(before, bn.non_trainable_weights):
        np.testing.assert_array_equal(b, np.asarray(v))
    head_bn = m.get_layer("extra1_reduce_bn")  # trainable BN outside the backbone does update
    before = np.array(head_bn.moving_mean)
    m(x, training=True)
    assert not np.array_equal(before, np.asarray(head_bn.moving_mean))


def test_unfreeze_top_from_block_0_trains_whole_backbone():
    m = build_ssd(CFG, None)
    freeze_backbone(m)
    unfreeze_top(m, from_block=0)
    backbone = m.get_layer("backbone")
    assert backbone.get_layer("block_1_expand").trainable and backbone.get_layer("Conv_1").trainable


def test_bn_momentum_applied_everywhere(model):
    bns = [layer for layer in _walk(model) if isinstance(layer, layers.BatchNormalization)]
    backbone_bns = [
        layer for layer in _walk(model.get_layer("backbone")) if isinstance(layer, layers.BatchNormalization)
    ]
    assert len(backbone_bns) >= 50 and len(bns) > len(backbone_bns)
    assert {layer.momentum for layer in bns} == {0.9}
    assert {
        layer.momentum
        for layer in _walk(build_ssd(ModelConfig(alpha=0.35, image_size=96, num_classes=1), None))
        if isinstance(layer, layers.BatchNormalization)
    } == {0.997}  # the config's default, not Keras's 0.999


# --- backbone weights ------------------------------------------------------------------------------
def test_missing_weights_file():
    with pytest.raises(BackboneWeightsError, match=re.escape("/nonexistent")):
        build_backbone(ModelConfig(alpha=0.35, image_size=96), "/nonexistent")


def test_imagenet_offline_points_to_flag(tmp_path):
    """No internet here, and an empty KERAS_HOME so no cached download is used: the error names the flag."""
    keras_home = tmp_path / "keras_home"
    keras_home.mkdir()
    script = (
        "from model.ssd import build_backbone, BackboneWeightsError\n"
        "from ssdflow.config import ModelConfig\n"
        "try:\n"
        "    build_backbone(ModelConfig(alpha=0.35, image_size=96), 'imagenet')\n"
        "except BackboneWeightsError as e:\n"
        "    print('RAISED:', e)\n"
        "else:\n"
        "    print('LOADED')\n"
    )
    env = dict(os.environ, KERAS_HOME=str(keras_home), TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    out = proc.stdout + proc.stderr
    if "LOADED" in proc.stdout:
        pytest.fail(
            "ImageNet weights downloaded although this machine should be offline; the test cannot check the error"
        )
    assert proc.returncode == 0 and "RAISED:" in proc.stdout, out[-3000:]
    assert "--backbone-weights" in proc.stdout and "alpha=0.35" in proc.stdout, proc.stdout


needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"no local backbone weights at {WEIGHTS}")


@needs_weights
def test_local_weights_file_loads():
    cfg = ModelConfig(alpha=1.0, image_size=96)
    loaded = build_backbone(cfg, str(WEIGHTS))
    ref = keras.applications.MobileNetV2(weights=str(WEIGHTS), alpha=1.0, include_top=False, input_shape=(96, 96, 3))
    random = build_backbone(cfg, None)
    conv1 = np.asarray(loaded.get_layer("Conv1").kernel)
    np.testing.assert_array_equal(conv1, np.asarray(ref.get_layer("Conv1").kernel))
    assert not np.allclose(conv1, np.asarray(random.get_layer("Conv1").kernel))
    # every layer, not just the first
    weighted = [layer for layer in ref.layers if layer.weights]
    assert len(weighted) == len([layer for layer in loaded.layers if layer.weights]) > 100
    for layer in weighted:
        assert len(layer.weights) == len(loaded.get_layer(layer.name).weights)
        for a, b in zip(layer.weights, loaded.get_layer(layer.name).weights):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{layer.name}/{a.name}")


@needs_weights
def test_build_ssd_with_local_weights():
    m = build_ssd(ModelConfig(alpha=1.0, image_size=96, num_classes=1), str(WEIGHTS))
    ref = keras.applications.MobileNetV2(weights=str(WEIGHTS), alpha=1.0, include_top=False, input_shape=(96, 96, 3))
    for name in ("Conv1", "block_16_project", "Conv_1_bn"):
        for a, b in zip(ref.get_layer(name).weights, m.get_layer("backbone").get_layer(name).weights):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


@needs_weights
def test_wrong_alpha_weights_file():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns for each layer it cannot match before raising
        with pytest.raises(BackboneWeightsError, match="alpha=0.35") as e:
            build_backbone(ModelConfig(alpha=0.35, image_size=96), str(WEIGHTS))
    assert str(WEIGHTS) in str(e.value)


def test_fpn_lite_levels_match_the_anchors():
    """finest_stride 8: heads on the stride-8/16/32 FPN-lite outputs and the extra levels, in anchor order."""
    cfg = ModelConfig(alpha=0.35, image_size=128, num_classes=C, finest_stride=8, fpn_channels=32)
    m = build_ssd(cfg, None)
    sizes = feature_map_sizes(cfg.image_size, cfg.extra_levels, cfg.finest_stride)
    assert sizes == [16, 8, 4, 2, 1]
    a = anchors_per_cell(cfg.aspect_ratios)
    for level, size in enumerate(sizes):
        assert tuple(m.get_layer(f"box_head{level}").output.shape[1:]) == (size, size, a * 4)
    assert m.output.shape[1] == num_anchors(cfg)
    # Top-down: each finer level adds the upsampled coarser one to its own lateral projection.
    for i, size in enumerate(sizes[:2]):
        parents = [n.operation.name for n in m.get_layer(f"fpn_add{i}")._inbound_nodes[0].parent_nodes]
        assert parents == [f"fpn_lateral{i}", f"fpn_up{i}"]
        assert tuple(m.get_layer(f"fpn_up{i}").output.shape[1:]) == (size, size, 32)
        assert tuple(m.get_layer(f"fpn_smooth{i}_relu").output.shape[1:]) == (size, size, 32)
    y = np.asarray(m(np.zeros((1, 128, 128, 3), np.float32), training=False))
    assert y.shape == (1, num_anchors(cfg), 4 + C + 1) and np.isfinite(y).all()


def test_several_anchor_scales_per_level_widen_the_heads():
    """scales_per_level 2: each head predicts 2 x the ratios per cell, and the model's N is the anchors'."""
    cfg = ModelConfig(alpha=0.35, image_size=96, num_classes=C, scales_per_level=2, aspect_ratios=[1.0, 2.0, 0.5])
    m = build_ssd(cfg, None)
    sizes = feature_map_sizes(cfg.image_size, cfg.extra_levels, cfg.finest_stride)
    for level, size in enumerate(sizes):
        assert tuple(m.get_layer(f"box_head{level}").output.shape[1:]) == (size, size, 6 * 4)
    assert m.output.shape[1] == num_anchors(cfg) == sum(s * s for s in sizes) * 6

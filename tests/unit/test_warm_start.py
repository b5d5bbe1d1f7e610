"""Where training starts (model/warm_start.py): the backbone, the champion, or a registered model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model import registry, warm_start
from model.warm_start import WarmStartError
from ssdflow.config import ModelConfig, NightlyConfig, TrainConfig
from ssdflow.schema import LabelMap

LM = LabelMap({"cat": 1, "dog": 2})


def _version(root, label_map=LM, files=("ssdflow_model.json", "keras.weights.h5", "label_map.json")) -> str:
    version = registry.new_version(root)
    staging = Path(registry.staging_dir(root, version))
    (staging / "metrics.json").write_text(json.dumps({"mAP@.5": 0.5}))
    (staging / "saved_model.pb").write_bytes(b"")  # the registry knows a version by it
    if "label_map.json" in files:
        (staging / "label_map.json").write_text(label_map.to_json())
    if "ssdflow_model.json" in files:
        (staging / "ssdflow_model.json").write_text(
            json.dumps({"model": ModelConfig(alpha=0.5, image_size=160, num_classes=2).model_dump()})
        )
    if "keras.weights.h5" in files:
        (staging / "keras.weights.h5").write_bytes(b"weights")
    Path(registry.commit_version(root, version))
    return version


def _cfg(root, init_from):
    return TrainConfig(data="d", models=str(root), init_from=init_from)


def test_backbone_never_warm_and_auto_without_a_champion_is_the_backbone(tmp_path):
    assert warm_start.resolve(_cfg(tmp_path, "backbone"), LM) == (None, "backbone (imagenet)")
    start, text = warm_start.resolve(_cfg(tmp_path / "none-yet", "auto"), LM)
    assert start is None and text == "backbone (imagenet): no champion yet"
    with pytest.raises(WarmStartError, match="no champion yet"):
        warm_start.resolve(_cfg(tmp_path / "none-yet", "champion"), LM)


def test_champion_and_auto_start_from_the_champion_with_its_architecture(tmp_path):
    v = _version(tmp_path)
    registry.set_champion(tmp_path, v, {})
    for how in ("champion", "auto"):
        start, text = warm_start.resolve(_cfg(tmp_path, how), LM)
        assert (start.version, start.model_cfg.alpha, start.model_cfg.image_size) == (v, 0.5, 160)
        assert start.weights == str(tmp_path / v / "keras.weights.h5") and text.startswith(f"champion {v}")
    other = _version(tmp_path)  # any registered model by path
    start, text = warm_start.resolve(_cfg(tmp_path, str(tmp_path / other)), LM)
    assert start.version == other and text.startswith(f"model {other}")


def test_a_champion_that_cannot_start_the_run_refuses_or_sends_auto_to_the_backbone(tmp_path):
    registry.set_champion(tmp_path, _version(tmp_path, LabelMap({"cat": 1, "emu": 2})), {})
    with pytest.raises(WarmStartError, match=r"label map differs.*removed \['emu'\]"):
        warm_start.resolve(_cfg(tmp_path, "champion"), LM)
    start, text = warm_start.resolve(_cfg(tmp_path, "auto"), LM)
    assert start is None and "label map differs" in text and text.startswith("backbone (imagenet)")
    registry.set_champion(tmp_path, _version(tmp_path, files=("ssdflow_model.json", "label_map.json")), {})
    with pytest.raises(WarmStartError, match="keras.weights.h5"):
        warm_start.resolve(_cfg(tmp_path, "champion"), LM)


def test_nightly_starts_from_the_champion_unless_told_otherwise():
    base = {"ingest": {"images": "/i", "labels": "/l", "format": "voc", "out": "/o"}, "models": "/m"}
    assert NightlyConfig(**base).train.init_from == "auto"
    assert NightlyConfig(**base, train={"alpha": 0.35}).train.init_from == "auto"
    assert NightlyConfig(**base, train={"init_from": "backbone"}).train.init_from == "backbone"
    assert TrainConfig(data="d", models="m").init_from == "backbone"  # `ssdflow train` starts as it always did

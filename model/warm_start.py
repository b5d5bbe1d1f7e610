"""Where a training run's weights start: the backbone (ImageNet or a weights file), or a registered
model, usually the champion (a warm start).

Nightly data differs a little from yesterday's; fine-tuning the champion on it reaches the same
quality in a fraction of the time that training from the backbone takes, as production teams
retrain nightly. A warm start keeps the starting model's architecture and anchors (its
``ssdflow_model.json``) and its Keras weights (``keras.weights.h5``), and needs its label map to be
the data's: class ids index the heads' outputs. No TensorFlow here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from model import registry
from ssdflow.config import ModelConfig, TrainConfig
from ssdflow.schema import KERAS_WEIGHTS, MODEL_INFO, LabelMap


class WarmStartError(ValueError):
    """``--init-from`` names a model that cannot start this run; the message says why."""


@dataclass(frozen=True)
class WarmStart:
    model_dir: str  # the registered model whose weights start the run
    version: str
    model_cfg: ModelConfig  # its architecture, kept

    @property
    def weights(self) -> str:
        return str(Path(self.model_dir) / KERAS_WEIGHTS)


def resolve(cfg: TrainConfig, label_map: LabelMap) -> tuple[WarmStart | None, str]:
    """(the warm start, or None for the backbone; a sentence saying what was chosen and why).

    ``backbone``: never warm. ``champion``: the models directory's champion, or an error. ``auto``
    (the nightly default): the champion when there is one whose label map is the data's, else the
    backbone. A path: that registered model directory, or an error.
    """
    if cfg.init_from == "backbone":
        return None, f"backbone ({cfg.backbone_weights})"
    if cfg.init_from in ("champion", "auto"):
        champion = registry.read_champion(cfg.models)
        if champion is None:
            if cfg.init_from == "champion":
                raise WarmStartError(
                    f"--init-from champion: {cfg.models} has no champion yet; use --init-from backbone"
                )
            return None, f"backbone ({cfg.backbone_weights}): no champion yet"
        model_uri = registry.version_dir(cfg.models, champion["version"])
    else:
        model_uri = cfg.init_from
    try:
        try:
            local = Path(registry.local_copy(model_uri))
        except (OSError, ValueError) as e:  # Beam's BeamIOError is an OSError
            raise WarmStartError(f"{model_uri} cannot be read ({e})") from None
        start = _load(local, model_uri, label_map)
    except WarmStartError as e:
        if cfg.init_from != "auto":
            raise
        return None, f"backbone ({cfg.backbone_weights}): the champion cannot start this run ({e})"
    what = "champion" if cfg.init_from in ("champion", "auto") else "model"
    return start, f"{what} {start.version} (warm start: its architecture and weights)"


def _load(model_dir: Path, uri: str, label_map: LabelMap) -> WarmStart:
    """The warm start from a model directory on local disk (``uri``: where it came from)."""
    for name in (MODEL_INFO, KERAS_WEIGHTS, "label_map.json"):
        if not (model_dir / name).is_file():
            raise WarmStartError(f"{uri} is not a registered ssdflow model (no {name})")
    theirs = LabelMap.parse((model_dir / "label_map.json").read_text(encoding="utf-8"), "label_map.json")
    if dict(theirs) != dict(label_map):
        diff = registry.label_map_diff(theirs, label_map)
        raise WarmStartError(f"its label map differs from the data's ({registry.describe_diff(diff)})")
    info = json.loads((model_dir / MODEL_INFO).read_text(encoding="utf-8"))
    return WarmStart(str(model_dir), uri.rstrip("/").rsplit("/", 1)[-1], ModelConfig(**info["model"]))

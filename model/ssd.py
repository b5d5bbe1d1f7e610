"""The detector: a Keras Functional-API SSDLite on a MobileNetV2 backbone.

    image [B, S, S, 3] (0..255)
      └ Rescaling to [-1, 1] ─ MobileNetV2 ─┬ block_6_expand_relu   (stride 8, finest_stride 8 only) ─┐
                                             ├ block_13_expand_relu  (stride 16)                       ┤ FPN-lite top-down
                                             └ out_relu             (stride 32)                        ┤ (finest_stride 8)
                                               extra depthwise-separable levels ───────────────────────┤ (stride 64, … 1x1)
                                                                                                       ▼
                    per level: SeparableConv2D box head [A*4] and class head [A*(C+1)]
                    reshaped to [B, H*W*A, k] and concatenated over levels
      └ output [B, N, 4 + C + 1]: encoded box offsets (see box_coder), then class logits (0 = background)

Anchors (model/anchors.py) are laid out in exactly the order the heads' reshape produces.
"""

from __future__ import annotations

import math
import os

import keras
from keras import layers

from model.anchors import anchors_per_cell, feature_map_sizes
from ssdflow.config import ModelConfig

BACKBONE_TAPS = {8: "block_6_expand_relu", 16: "block_13_expand_relu", 32: "out_relu"}  # feature maps by stride


class BackboneWeightsError(RuntimeError):
    """The backbone weights asked for cannot be loaded; the message says which flag to change."""


def build_backbone(cfg: ModelConfig, weights: str | None) -> keras.Model:
    """MobileNetV2 without its top, returning its feature maps from ``cfg.finest_stride`` to stride 32, finest first.

    ``weights``: "imagenet" (Keras's download and cache), None / "none" (random init), or a path
    to a local Keras weights file of a MobileNetV2 with the same alpha and no top.
    """
    kwargs = dict(input_shape=(cfg.image_size, cfg.image_size, 3), alpha=cfg.alpha, include_top=False)
    if weights in (None, "none"):
        net = keras.applications.MobileNetV2(weights=None, **kwargs)
    elif weights == "imagenet":
        try:
            net = keras.applications.MobileNetV2(weights="imagenet", **kwargs)
        except Exception as e:  # offline, proxy, or an alpha Keras has no ImageNet weights for
            raise BackboneWeightsError(
                f"could not get ImageNet weights for MobileNetV2 (alpha={cfg.alpha}): {type(e).__name__}: {e}. "
                "Without internet access, pass --backbone-weights PATH to a local MobileNetV2 no-top weights "
                "file (.weights.h5), or --backbone-weights none to train from scratch."
            ) from None
    else:
        if not os.path.isfile(weights):
            raise BackboneWeightsError(f"--backbone-weights {weights}: no such file")
        net = keras.applications.MobileNetV2(weights=None, **kwargs)
        try:
            net.load_weights(weights)
        except Exception as e:
            raise BackboneWeightsError(
                f"--backbone-weights {weights}: not a MobileNetV2 (alpha={cfg.alpha}, no top) weights file: {e}"
            ) from None
    outputs = [net.get_layer(name).output for stride, name in BACKBONE_TAPS.items() if stride >= cfg.finest_stride]
    return keras.Model(net.input, outputs, name="backbone")


def separable_block(x, filters: int, stride: int, name: str):
    """SSDLite's extra layer: 1x1 bottleneck, 3x3 depthwise (stride), 1x1 expansion; BN + ReLU6 each."""
    x = layers.Conv2D(filters // 2, 1, use_bias=False, name=f"{name}_reduce")(x)
    x = layers.BatchNormalization(name=f"{name}_reduce_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_reduce_relu")(x)
    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_expand")(x)
    x = layers.BatchNormalization(name=f"{name}_expand_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_expand_relu")(x)


def fpn_lite(features: list, channels: int, name: str = "fpn") -> list:
    """FPN-lite top-down fusion (TF OD API SSD MobileNet V2 FPNLite): [C3, C4, C5] → [P3, P4, P5].

    Feature maps finest first, each twice the side of the next (the input side is a multiple of 32).
    Each level's 1x1 lateral projection to ``channels`` is added to the 2x nearest-upsampled level
    above it, so the fine stride-8 map, which alone sees too little context to name an object,
    carries the coarse maps' semantics; a 3x3 depthwise-separable conv then smooths each sum.
    """
    laterals = [layers.Conv2D(channels, 1, name=f"{name}_lateral{i}")(f) for i, f in enumerate(features)]
    merged = [laterals[-1]]
    for i in range(len(laterals) - 2, -1, -1):
        up = layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_up{i}")(merged[0])
        merged.insert(0, layers.Add(name=f"{name}_add{i}")([laterals[i], up]))
    outputs = []
    for i, x in enumerate(merged):
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_smooth{i}_dw")(x)
        x = layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_smooth{i}_pw")(x)
        x = layers.BatchNormalization(name=f"{name}_smooth{i}_bn")(x)
        outputs.append(layers.ReLU(6.0, name=f"{name}_smooth{i}_relu")(x))
    return outputs


@keras.saving.register_keras_serializable(package="ssdflow")
class BackgroundPrior(keras.initializers.Initializer):
    """Class-head bias so that each object class starts at probability ``prior`` (RetinaNet's trick).

    With random heads every anchor would start as ~1/(C+1) foreground, and the thousands of easy
    background anchors would swamp the first updates. The bias is laid out [anchors * (C+1)],
    background first in each group of C+1.
    """

    def __init__(self, num_classes: int, prior: float = 0.01):
        self.num_classes, self.prior = num_classes, prior

    def __call__(self, shape, dtype=None):
        k = self.num_classes + 1
        background = math.log((1.0 - self.num_classes * self.prior) / self.prior)
        group = [background] + [0.0] * self.num_classes
        return keras.ops.convert_to_tensor(group * (shape[0] // k), dtype=dtype or "float32")

    def get_config(self):
        return {"num_classes": self.num_classes, "prior": self.prior}


def prediction_head(x, anchors: int, k: int, name: str, bias_initializer="zeros"):
    """Depthwise-separable predictor: [B, H, W, C] → [B, H*W*anchors, k] (row-major cells, anchors last)."""
    x = layers.SeparableConv2D(anchors * k, 3, padding="same", bias_initializer=bias_initializer, name=name)(x)
    return layers.Reshape((-1, k), name=f"{name}_reshape")(x)


def build_ssd(cfg: ModelConfig, backbone_weights: str | None = None) -> keras.Model:
    """The training model: image batch (0..255) → [B, N, 4 + num_classes + 1]."""
    sizes = feature_map_sizes(cfg.image_size, cfg.extra_levels, cfg.finest_stride)
    a = anchors_per_cell(cfg.aspect_ratios, cfg.scales_per_level)
    inputs = keras.Input((cfg.image_size, cfg.image_size, 3), name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_unit_range")(inputs)  # MobileNetV2's input range
    features = list(build_backbone(cfg, backbone_weights)(x))
    if cfg.finest_stride == 8:
        features = fpn_lite(features, cfg.fpn_channels)
    backbone_levels = len(features)
    for i in range(len(sizes) - backbone_levels):
        channels = cfg.extra_channels[min(i, len(cfg.extra_channels) - 1)]
        features.append(separable_block(features[-1], channels, stride=2, name=f"extra{i + 1}"))

    boxes, classes = [], []
    for level, feature in enumerate(features):
        boxes.append(prediction_head(feature, a, 4, f"box_head{level}"))
        classes.append(
            prediction_head(
                feature, a, cfg.num_classes + 1, f"class_head{level}", bias_initializer=BackgroundPrior(cfg.num_classes)
            )
        )
    box_out = layers.Concatenate(axis=1, name="boxes")(boxes)
    class_out = layers.Concatenate(axis=1, name="class_logits")(classes)
    outputs = layers.Concatenate(axis=-1, name="predictions", dtype="float32")([box_out, class_out])
    model = keras.Model(inputs, outputs, name=f"ssdlite_mobilenetv2_{cfg.alpha:g}_{cfg.image_size}")
    for layer in _all_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = cfg.bn_momentum  # Keras's MobileNetV2 hard-codes 0.999
    return model


def _all_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer("backbone")


def freeze_backbone(model: keras.Model) -> None:
    """Phase 1 of transfer learning: the pretrained backbone is fixed, its BatchNorm in inference mode."""
    backbone_of(model).trainable = False


def unfreeze_top(model: keras.Model, from_block: int = 11) -> None:
    """Phase 2: train backbone blocks >= ``from_block`` (and out conv); BatchNorm stays in inference mode.

    Keeping BN frozen is the usual fine-tuning choice with small batches: their statistics were
    learned on ImageNet-sized batches, and a Keras BN layer with trainable=False runs in inference mode.
    """
    backbone = backbone_of(model)
    backbone.trainable = True
    trainable = from_block <= 0  # block 0 is named expanded_conv_*: 0 means the whole backbone
    for layer in backbone.layers:
        if layer.name.startswith(f"block_{from_block}_"):
            trainable = True
        layer.trainable = trainable and not isinstance(layer, layers.BatchNormalization)

"""Typed job configs: one pydantic model per job, shared by the CLI, Prefect parameters and tests.

Bounds live here, once: the CLI rejects them with the field named, and Prefect renders them in
the UI's run form and refuses an out-of-range value when a run is created.
"""

from __future__ import annotations

import os
import posixpath
import re
from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from ssdflow import roots
from ssdflow.roots import Location

# Defaults the jobs' code shares with the configs: they live here, the bottom layer, so that
# configs import nothing from the jobs.
DEFAULT_MAX_PIXELS = 40_000_000  # 8000 x 5000; a 30,000 x 30,000 bomb is 900 M
# Scoring's threshold for a class that calibration gave none (no val objects or detections), and
# for models exported before calibration existed.
FALLBACK_SCORE_THRESHOLD = 0.3
# None ("auto" on the command line, an empty field in the Prefect form): each class's threshold
# calibrated on val at training time (model/thresholds.py); a number: one threshold for every class.
# The member titles name the Prefect form's two tabs.
ScoreThreshold = (
    Annotated[float, Field(ge=0.0, le=1.0, title="one number for every class")]
    | Annotated[None, Field(title="auto (calibrated per class)")]
)
DEFAULT_CLIP_TOLERANCE = 0.05  # boxes up to 5% of the image size outside it are clipped, not rejected
MAX_EPOCHS = 1000
# The registry's generated version ids, <UTC YYYYmmddTHHMMSSZ>-<4 hex> (model/registry.py issues them).
GENERATED_VERSION_RE = re.compile(r"^(\d{8}T\d{6}Z)-[0-9a-f]{4}$")
# TFLite export variants (model/tflite.py): float32, float16 weights, full integer.
TFLiteQuantize = Literal["none", "float16", "int8"]
# The finest level's anchor scale by its stride when nothing else sets it: 4x the stride at 320 px
# (SSD's 0.2 at stride 16, FPNLite's 0.1 at stride 8).
DEFAULT_FIRST_SCALE = {8: 0.1, 16: 0.2}
# Anchor aspect ratios (w/h) per cell, the TF OD API's SSD: kept unless some class's boxes fit none of
# them (model/anchors.py fitted_aspect_ratios).
DEFAULT_ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
# BatchNorm moving-average momentum by how the backbone starts: the TF OD API's 0.997 for
# fine-tuning pretrained weights; 0.9 from scratch, where 0.997's moving statistics lagged the
# weights and val mAP swung (docs/benchmarks.md, "From scratch … BatchNorm momentum").
BN_MOMENTUM = {"pretrained": 0.997, "scratch": 0.9}
# Peak learning rate by how the backbone starts: 3e-3 with pretrained weights (better than 1e-3 at
# every budget measured), 1e-3 from scratch, where it is what was measured (docs/benchmarks.md,
# "Peak LR 3e-3 at the full budget, and the new default").
LEARNING_RATE = {"pretrained": 3e-3, "scratch": 1e-3}
# The box term's weight against classification, by box loss: Huber sums four offsets of about one
# unit each; 1 - GIoU is one number in [0, 2], weighted 2 as in MMDetection's GIoU recipes.
BOX_WEIGHT = {"huber": 1.0, "giou": 2.0}


OUT_HELP = (
    "Output directory (local path, s3://, gs://): new, empty, or holding an earlier {job} output, which this run "
    "replaces when it completes (the earlier one stays usable until then)"
)
LABEL_STUDIO_ROOT_HELP = (
    "Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, a local directory above the output: the "
    "labelling batch's tasks then name their images by Label Studio's local-files URL, which it "
    "serves (unset: the images' own paths or s3:// URIs, for a cloud storage connection)"
)
OVERWRITE_HELP = "Write into an --out that holds another job's output or files this job does not write: they are removed when this run completes"
IMAGE_SIZE_HELP = "Square input size in pixels: a multiple of 32 (the coarsest stride), 96 to 1024: 320, 416, 512 …"


def _image_size(value):
    """The refusal of a size that is no multiple of 32 names the two nearest that are (pydantic's
    own message would only say "multiple of 32"); the bounds stay in the schema for Prefect's form."""
    if isinstance(value, int) and 96 <= value <= 1024 and value % 32:
        lower, upper = value // 32 * 32, value // 32 * 32 + 32
        near = " or ".join(str(v) for v in (lower, upper) if 96 <= v <= 1024)
        raise ValueError(f"{value} is not a multiple of 32 (the network's coarsest stride): use {near}")
    return value


ImageSize = Annotated[int, Field(ge=96, le=1024, multiple_of=32), BeforeValidator(_image_size)]

# Training's setting and the demo's: one bound and one help text for both.
AnchorScales = Annotated[int, Field(ge=1, le=4)]
ANCHOR_SCALES_HELP = (
    "Anchor scales per aspect ratio at each feature level: 1 (SSD's, plus an extra square anchor between two "
    "levels' scales) or n (each ratio at n scales from one level's to the next's, as RetinaNet's octave scales: "
    "boxes between two levels' scales get an anchor of their shape; n x the anchors)"
)


def is_tflite(model: str) -> bool:
    """Whether a ``--model`` value names a .tflite file (any case: ``MODEL.TFLITE`` too), not a
    SavedModel or models directory."""
    return str(model).lower().endswith(".tflite")


def models_dir_of(model: str) -> str:
    """The models directory a ``model`` value belongs to: its parent when it names one registered
    version (a generated version id, or a folder beside the registry's champion.json), else itself
    (a models directory, or an exported model outside any registry)."""
    path = roots.normalize(model) or model.rstrip("/")
    if is_tflite(path):  # a file exported beside a model: that model's
        return models_dir_of(posixpath.dirname(path))
    remote = "://" in path
    parent = posixpath.dirname(path) if remote else os.path.dirname(path)
    is_version = bool(GENERATED_VERSION_RE.match(posixpath.basename(path))) or (
        not remote and os.path.isfile(os.path.join(parent, "champion.json"))
    )
    return parent if is_version else path


class LabelFormat(str, Enum):
    voc = "voc"
    coco = "coco"
    csv = "csv"
    yolo = "yolo"


class BeamOptions(BaseModel):
    """Where a Beam job runs. Anything Beam accepts goes in ``beam_args``, passed through untouched."""

    model_config = ConfigDict(extra="forbid")

    runner: str = Field(
        "DirectRunner",
        description="Beam runner: DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, PortableRunner",
    )
    beam_args: list[str] = Field(
        default_factory=list, description="Further pipeline options, e.g. --direct_num_workers=2"
    )

    @model_validator(mode="after")
    def _check_beam_args(self) -> "BeamOptions":
        if self.beam_args:  # Beam would silently drop what it does not know (ssdflow/beam_flags.py)
            from ssdflow import beam_flags

            own = ["--" + name.replace("_", "-") for name in type(self).model_fields if name != "beam_args"]
            beam_flags.check(self.beam_args, self.runner, own)
        return self

    def pipeline_flags(self) -> list[str]:
        flags = list(self.beam_args)
        if not any(a.startswith("--runner") for a in flags):
            flags.insert(0, f"--runner={self.runner}")
        return flags


class StorageOptions(BaseModel):
    """Object-store options for a job that is not a Beam pipeline but reads and writes through Beam's
    filesystems (training, the registry)."""

    model_config = ConfigDict(extra="forbid")

    storage_args: list[str] = Field(
        default_factory=list,
        description=(
            "Object-store options in Beam's spelling, e.g. --s3_endpoint_url=http://minio:9000 (credentials come from the "
            "environment: AWS_ACCESS_KEY_ID …, or AWS_ENDPOINT_URL instead of the flag)"
        ),
    )

    @field_validator("storage_args")
    @classmethod
    def _storage_flags(cls, value: list[str]) -> list[str]:
        if value:
            from ssdflow import beam_flags

            beam_flags.check_storage(value)
        return value


class IngestConfig(BeamOptions):
    """Images + labels → sharded TFRecords (train/val), label map, stats, rejected lines."""

    images: Location = Field(..., description="Directory or glob of images (local path, s3://, gs://)")
    labels: Location = Field(..., description="Label file, or directory of label files")
    format: LabelFormat = Field(..., description="Label format")
    out: Location = Field(..., description=OUT_HELP.format(job="ingest"))
    val_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description=(
            "Share of images put in val by a stable hash of the image key, for images whose data brings no split of its own "
            "(folders train/ val/ test/ at any depth, a YOLO data.yaml's directories, per-split label files such as "
            "instances_val2017.json)"
        ),
    )
    num_shards: int | None = Field(None, ge=1, le=10_000, description="Shards per split; default: automatic by size")
    target_shard_mb: int = Field(
        128,
        ge=1,
        le=4096,
        description="Shard size aimed at when --num-shards is not given; a worker's output of at least half of it is one shard, written once",
    )
    classes: Location | None = Field(None, description="YOLO class names: a text file (one per line) or a data.yaml")
    label_map: Location | None = Field(
        None, description="Fixed label map (label_map.json or .pbtxt); unknown classes are then rejected"
    )
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=1, description="Images with more pixels are rejected (decompression-bomb guard)"
    )
    clip_tolerance: float = Field(
        DEFAULT_CLIP_TOLERANCE,
        ge=0.0,
        le=1.0,
        description="Boxes this far (fraction of the image) outside are clipped; further out, rejected",
    )
    overwrite: bool = Field(False, description=OVERWRITE_HELP)

    @model_validator(mode="after")
    def _check(self) -> "IngestConfig":
        if self.out.rstrip("/") in ("", "s3:", "gs:"):
            raise ValueError("out must name a directory")
        return self


class ModelConfig(BaseModel):
    """The detector's architecture: MobileNetV2 backbone + SSDLite heads over several feature levels.

    Defaults match the TF OD API model zoo's SSD MobileNet V2 320x320.
    """

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(1.0, ge=0.35, le=1.4, description="MobileNetV2 width multiplier")
    image_size: ImageSize = Field(320, description=IMAGE_SIZE_HELP)
    num_classes: int = Field(1, ge=1, le=1000, description="Object classes, without background")
    finest_stride: Literal[8, 16] = Field(
        16,
        description=(
            "Stride of the finest feature level: 16 (SSDLite on MobileNetV2's stride-16 and 32 maps) or 8 (FPN-lite: "
            "adds the stride-8 map, fused top-down with the coarser ones as in the TF OD API's SSD MobileNet V2 FPNLite, "
            "for objects under ~10 % of the image side)"
        ),
    )
    fpn_channels: int = Field(128, ge=16, le=1024, description="Channels of the FPN-lite levels (finest_stride 8)")
    extra_levels: int = Field(4, ge=1, le=6, description="Feature levels added after the backbone's stride-32 map")
    extra_channels: list[int] = Field(
        default_factory=lambda: [512, 256, 256, 128], description="Channels of the extra levels"
    )
    min_scale: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description=(
            "Anchor scale of the finest level (fraction of the image); default 0.2 at stride 16, 0.1 at stride 8"
        ),
    )
    max_scale: float = Field(0.95, gt=0.0, le=1.0, description="Anchor scale of the last level")
    scale_spacing: Literal["linear", "geometric"] = Field(
        "linear",
        description=(
            "How the levels' anchor scales step from the first to max_scale: linear (SSD's) or geometric (FPN's)"
        ),
    )
    aspect_ratios: list[float] = Field(
        default_factory=lambda: list(DEFAULT_ASPECT_RATIOS),
        min_length=1,
        description="Anchor aspect ratios (w/h) per cell",
    )
    scales_per_level: int = Field(
        1,
        ge=1,
        le=4,
        description=(
            "Anchor scales per aspect ratio at each level: 1 (SSD's: plus one extra square between this level's scale and "
            "the next's) or n (every ratio at n scales spaced geometrically from this level's to the next's, as RetinaNet's "
            "octave scales)"
        ),
    )
    variances: list[float] = Field(
        default_factory=lambda: [0.1, 0.1, 0.2, 0.2], description="Box-coder variances (y, x, h, w)"
    )
    bn_momentum: float = Field(
        0.997, gt=0.0, lt=1.0, description="BatchNorm moving-average momentum (TF OD API: 0.997)"
    )

    @property
    def first_scale(self) -> float:
        """The finest level's anchor scale: ``min_scale``, or the default for ``finest_stride``."""
        return self.min_scale if self.min_scale is not None else DEFAULT_FIRST_SCALE[self.finest_stride]


class TrainSettings(BaseModel):
    """How to train: everything but where the data and the models are."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(1.0, ge=0.35, le=1.4, description="MobileNetV2 width multiplier")
    image_size: ImageSize = Field(320, description=IMAGE_SIZE_HELP)
    finest_stride: Literal[8, 16] | None = Field(
        None,
        description=(
            "Finest feature level: 16 (SSDLite) or 8 (FPN-lite, for small objects); default: 8 when a tenth of the "
            "training boxes are under 10 % of the image side, else 16"
        ),
    )
    min_scale: float | None = Field(
        None,
        gt=0,
        lt=1,
        description=(
            "Anchor scale of the finest level (fraction of the image side); default: fitted to the training boxes "
            "(their 10th-percentile side, at most 0.2 at stride 16 / 0.1 at stride 8, at least two cells of that level)"
        ),
    )
    aspect_ratios: list[Annotated[float, Field(gt=0.01, lt=100)]] | None = Field(
        None,
        min_length=1,
        max_length=9,
        description=(
            "Anchor aspect ratios (w/h) per cell; default: 1, 2, 1/2, 3, 1/3 (the TF OD API's SSD), chosen again for the "
            "training boxes (one at a time from 1:12 to 12:1, the one fitting the most boxes, each class weighted alike) when "
            "some class has under 90 % of its boxes fitted by an anchor shape at IoU >= 0.5, and kept only if that raises the "
            "worst class's share"
        ),
    )
    anchor_scale_spacing: Literal["linear", "geometric"] = Field(
        "linear",
        description=(
            "How the feature levels' anchor scales step from the finest to 0.95 of the image side: linear (the SSD paper's, "
            "steps widest at the fine levels) or geometric (a constant factor per level, as FPN's anchors)"
        ),
    )
    anchor_scales_per_level: AnchorScales = Field(1, description=ANCHOR_SCALES_HELP)
    epochs: int | None = Field(
        None,
        ge=1,
        le=MAX_EPOCHS,
        description="Most epochs (frozen backbone, then fine-tuning); default: as many as the time budget allows, 20 without one",
    )
    time_budget: float = Field(
        30.0,
        ge=0,
        le=7 * 24 * 60,
        description="Minutes of fitting (validation included): phases and learning-rate schedule are fitted to it; 0: no limit",
    )
    batch_size: int = Field(16, ge=1, le=1024, description="Global batch size")
    backbone_weights: str = Field("imagenet", description="imagenet | none | PATH to a MobileNetV2 no-top weights file")
    init_from: str = Field(
        "backbone",
        description=(
            "Where the weights start: backbone (--backbone-weights; frozen, then fine-tuned) | champion (warm start: the "
            "models directory's champion, its architecture and weights, one fine-tuning phase at fine_tune_lr_factor x the "
            "peak learning rate, warm_start_fraction of the budget) | auto (champion when there is one with the data's label "
            "map, else backbone; the nightly default) | PATH (a registered model directory)"
        ),
    )
    warm_start_fraction: float = Field(
        1 / 3, gt=0, le=1, description="Share of the time budget (or of --epochs) a warm-started run takes"
    )
    resume: bool = Field(False, description="Continue an interrupted run from its last checkpoint")
    fresh: bool = Field(
        False, description="Discard an interrupted run's checkpoints (MODELS/.train-run) and start over"
    )
    learning_rate: float | None = Field(
        None,
        gt=0,
        le=1.0,
        description=(
            "Peak learning rate (after warm-up); default: 3e-3 with pretrained backbone weights, 1e-3 from scratch "
            "(docs/benchmarks.md)"
        ),
    )
    warmup_epochs: float = Field(1.0, ge=0, description="Linear warm-up length")
    fine_tune_fraction: float = Field(
        0.5, ge=0, le=1, description="Share of epochs with the backbone's top blocks unfrozen"
    )
    fine_tune_lr_factor: float = Field(0.1, gt=0, le=1, description="Learning-rate factor of the fine-tuning phase")
    unfreeze_from_block: int = Field(11, ge=0, le=16, description="First MobileNetV2 block trained in fine-tuning")
    classification_loss: Literal["focal", "quality_focal", "softmax_hnm"] = Field(
        "focal",
        description=(
            "focal (RetinaNet's), quality_focal (GFL's: a box's class score learns the IoU its box reaches, so the tightest box "
            "ranks first) or softmax_hnm (softmax with 3:1 hard negatives, the original SSD's)"
        ),
    )
    box_loss: Literal["huber", "giou"] = Field(
        "huber",
        description=(
            "Box term of the loss: huber (on the encoded offsets, the TF OD API's SSD) or giou (1 - generalized IoU of the "
            "decoded box, weighted 2)"
        ),
    )
    matching: Literal["argmax", "atss"] = Field(
        "argmax",
        description=(
            "Which anchors a box trains: argmax (IoU >= 0.5 positive, < 0.4 negative, the TF OD API's SSD) or atss (per box, "
            "the anchors of the 9 nearest cells of each level above their IoUs' mean + standard deviation, centres inside the box)"
        ),
    )
    class_balance: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description=(
            "Weight each class's positive anchors in the loss by (the most frequent class's training boxes / its own) to this "
            "power, averaging 1 over the boxes: a minority class counts more (0: off; 0.5: square-root inverse frequency)"
        ),
    )
    eval_every: int = Field(
        1, ge=1, description="Epochs between val mAP evaluations (the best evaluated epoch is exported)"
    )
    best_epoch_metric: Literal["map50", "map", "fitness", "map_near_map50"] = Field(
        "map50",
        description=(
            "Which evaluated epoch is exported: the best val mAP@.5 (map50), mAP@[.5:.95] (map: COCO's, the tightest boxes), "
            "0.1 mAP@.5 + 0.9 mAP@[.5:.95] (fitness: Ultralytics' best.pt), or the best mAP@[.5:.95] among the evaluations within "
            "map50_tolerance of the best mAP@.5 (map_near_map50); early stopping watches the same (map_near_map50: mAP@.5)"
        ),
    )
    map50_tolerance: float = Field(
        0.02,
        ge=0,
        lt=1,
        description=(
            "best_epoch_metric map_near_map50: how far below the best val mAP@.5 an evaluation may score and still be exported "
            "for tighter boxes"
        ),
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description=(
            "Evaluations without a new best (best_epoch_metric) before a phase stops; default: none, the phase runs to its epochs or "
            "time (the cosine schedule gains most at its end, and the best epoch is exported anyway)"
        ),
    )
    steps_per_epoch: int | None = Field(None, ge=1, description="Default: one pass over the train split")
    score_threshold: float = Field(0.01, ge=0, lt=1, description="Exported model's minimum score")
    target_precision: float | None = Field(
        None,
        gt=0,
        le=1,
        description=(
            "Calibrate each class's score threshold for this val precision (the most recall reaching it); default: "
            "the threshold of the best F1"
        ),
    )
    iou_threshold: float = Field(0.5, gt=0, le=1, description="Exported model's NMS IoU threshold")
    max_detections: int = Field(100, ge=1, le=1000, description="Exported model's detections per image")
    box_merge_iou: float | None = Field(
        None,
        gt=0,
        lt=1,
        description=(
            "Box merging after NMS (YOLOv5's merge-NMS): each detection's box becomes the IoU x score weighted mean of its "
            "class's boxes overlapping it above this IoU, in the exported SavedModel and in validation; default: off "
            "(docs/benchmarks.md; TFLite exports keep TFLite's own NMS)"
        ),
    )
    promotion_tolerance: float = Field(
        0.0, ge=0, le=1, description="Promote if challenger mAP@.5 >= champion's - tolerance"
    )
    min_map: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Quality floor: never promote a model below this val mAP@.5, the first champion included",
    )
    on_label_map_change: Literal["refuse", "promote_if_only_added"] = Field(
        "refuse",
        description="When the challenger's classes differ from the champion's: refuse to promote, or promote if classes were only added",
    )
    bn_momentum: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description=(
            "BatchNorm moving-average momentum; default: 0.997 (the TF OD API's) with pretrained backbone weights, "
            "0.9 from scratch, where the moving statistics must follow weights that change fast (docs/benchmarks.md)"
        ),
    )
    augment: bool = Field(True, description="Photometric jitter, SSD random crop and flips on training images")
    ema_momentum: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Evaluate and export an exponential moving average of the weights with this momentum per step; 0: the raw weights",
    )
    precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"] = Field(
        "auto",
        description=(
            "Compute dtype policy; auto: mixed_float16 on GPUs, float32 on CPUs (on a 2-core AVX512_BF16 CPU "
            "mixed_bfloat16 trained at 0.36-0.74x the float32 speed, docs/benchmarks.md)"
        ),
    )
    seed: int = Field(0, description="Random seed")
    deterministic: bool = Field(False, description="Reproducible input order and augmentation (slower)")

    @model_validator(mode="after")
    def _resume_or_fresh(self) -> "TrainSettings":
        if self.resume and self.fresh:
            raise ValueError("resume and fresh exclude each other: continue the interrupted run, or discard it")
        return self

    @field_validator("backbone_weights")
    @classmethod
    def _weights_file_under_roots(cls, value: str) -> str:
        return value if value in ("imagenet", "none") else roots.check(value)  # a weights file is read like any input

    @field_validator("init_from")
    @classmethod
    def _start_under_roots(cls, value: str) -> str:
        return value if value in ("backbone", "champion", "auto") else roots.check(value)

    def max_epochs(self) -> int:
        """The epochs this run may take: the set bound, else the budget decides (20 with no budget)."""
        return self.epochs or (MAX_EPOCHS if self.time_budget else 20)

    def batch_norm_momentum(self) -> float:
        """The set momentum, else the default for how the backbone starts (BN_MOMENTUM)."""
        if self.bn_momentum is not None:
            return self.bn_momentum
        return BN_MOMENTUM["scratch" if self.backbone_weights == "none" else "pretrained"]

    def peak_learning_rate(self) -> float:
        """The set peak learning rate, else the default for how the backbone starts (LEARNING_RATE)."""
        if self.learning_rate is not None:
            return self.learning_rate
        return LEARNING_RATE["scratch" if self.backbone_weights == "none" else "pretrained"]

    def model(
        self,
        num_classes: int,
        fitted_stride: int = 16,
        fitted_min_scale: float | None = None,
        fitted_aspect_ratios: list[float] | None = None,
    ) -> ModelConfig:
        """The architecture; the values fitted to the training boxes apply where the settings leave them open."""
        return ModelConfig(
            alpha=self.alpha,
            image_size=self.image_size,
            num_classes=num_classes,
            bn_momentum=self.batch_norm_momentum(),
            finest_stride=self.finest_stride or fitted_stride,
            min_scale=self.min_scale or fitted_min_scale,
            aspect_ratios=list(self.aspect_ratios or fitted_aspect_ratios or DEFAULT_ASPECT_RATIOS),
            scale_spacing=self.anchor_scale_spacing,
            scales_per_level=self.anchor_scales_per_level,
        )


class TrainConfig(TrainSettings, StorageOptions):
    """Ingest output → trained, evaluated, exported model in a registry, promoted if it beats the champion."""

    data: Location = Field(..., description="Ingest output directory (with _SUCCESS)")
    models: Location = Field(..., description="Models directory (registry): versions, champion.json, decisions.jsonl")


class OutputFormat(str, Enum):
    jsonl = "jsonl"
    parquet = "parquet"
    coco = "coco"


class ScoreConfig(BeamOptions):
    """Batch scoring: image archives → detections in storage, resumable chunk by chunk."""

    model: Location = Field(
        ...,
        description=(
            "Exported model directory, a models directory (its champion is used), or a .tflite "
            "file exported beside a model (run by TFLite's interpreter; int8 is faster on CPUs)"
        ),
    )
    images: list[Location] = Field(
        ..., min_length=1, description="Directories, globs (local, s3://, gs://) or .tar archives"
    )
    out: Location = Field(..., description=OUT_HELP.format(job="score"))
    formats: list[OutputFormat] = Field(
        default_factory=lambda: [OutputFormat.jsonl, OutputFormat.parquet], description="Output formats"
    )
    score_threshold: ScoreThreshold = Field(
        None,
        description=(
            "Keep detections scoring at least this, one number for every class; default (auto): each class's threshold "
            f"calibrated on val at training time, {FALLBACK_SCORE_THRESHOLD} for a class without one"
        ),
    )
    max_detections: int = Field(100, ge=1, le=1000, description="Detections kept per image")
    max_batch_size: int = Field(
        64,
        ge=1,
        le=1024,
        description="Inference batch (the last of a chunk may be smaller; 64 measured faster than 32 on CPU, docs/benchmarks.md)",
    )
    chunk_size: int = Field(
        1000, ge=1, le=1_000_000, description="Images per resumable chunk (a tar archive is one chunk)"
    )
    preview: int = Field(0, ge=0, le=1000, description="Write this many JPEGs with the boxes drawn")
    select: int = Field(
        0,
        ge=0,
        le=1000,
        description=(
            "Images worth labelling next: write the N most uncertain (near-duplicates skipped) to OUT/labelling/ with "
            "VOC and Label Studio pre-annotations and a CSV of reasons; 0: none"
        ),
    )
    label_studio_root: str | None = Field(None, description=LABEL_STUDIO_ROOT_HELP)
    read_threads: int = Field(
        8, ge=1, le=64, description="Files read ahead concurrently per worker (object stores need several)"
    )
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=1, description="Images with more pixels are refused (decompression-bomb guard)"
    )
    overwrite: bool = Field(False, description=OVERWRITE_HELP)
    keep_chunks: bool = Field(
        False,
        description="Keep the per-chunk results of other model versions under OUT/chunks/ (by default a complete run deletes them: they are only reused by a rerun with the same model)",
    )

    @model_validator(mode="after")
    def _out_beside_the_models(self) -> "ScoreConfig":
        models = models_dir_of(self.model)
        if roots.is_under(self.out, models):  # scoring never writes over the registry
            raise ValueError(f"out {self.out} lies inside the models directory {models}")
        check_label_studio_root(self.label_studio_root, self.out)
        return self


def check_label_studio_root(document_root: str | None, out: str | None) -> None:
    """A Label Studio document root must be a local directory above the scoring output (Label
    Studio serves local files only below it; a bucket's batch goes through a storage connection)."""
    if document_root is None or out is None:
        return
    if "://" in document_root or not os.path.isabs(document_root):
        raise ValueError(
            f"label_studio_root {document_root!r} must be an absolute local path, as Label Studio's "
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT is"
        )
    if "://" in out and not out.startswith("file://"):
        raise ValueError(
            f"label_studio_root is for a batch on this machine's disk; out {out} is in a bucket, which "
            "Label Studio reads through a cloud storage connection (README, 'Label Studio')"
        )
    local = out[len("file://") :] if out.startswith("file://") else out
    if not roots.is_under(local, roots.normalize(document_root)):
        raise ValueError(
            f"out {out} is not below label_studio_root {document_root}: Label Studio serves "
            "only files below its document root"
        )


class NightlyConfig(BaseModel):
    """Nightly retraining: ingest new data → train → evaluate → promote → optionally score an archive."""

    model_config = ConfigDict(extra="forbid")

    ingest: IngestConfig = Field(..., description="Where tonight's images and labels are, and where the records go")
    models: Location = Field(..., description="Models directory (registry)")
    train: TrainSettings = Field(default_factory=TrainSettings, description="Training settings")
    score_images: list[Location] = Field(
        default_factory=list, description="Archive to score with the champion afterwards (empty: skip)"
    )
    score_out: Location | None = Field(None, description="Where the scoring output goes (required with score_images)")
    score_threshold: ScoreThreshold = Field(
        None,
        description="Minimum detection score when scoring, one number for every class; default (auto): per class, calibrated on val",
    )
    select: int = Field(
        0, ge=0, le=1000, description="Images of the scored archive worth labelling next (OUT/labelling/); 0: none"
    )
    label_studio_root: str | None = Field(None, description=LABEL_STUDIO_ROOT_HELP)
    comparison_images: int = Field(
        3, ge=0, le=20, description="Val images drawn with champion and challenger detections side by side"
    )
    push_to: Location | None = Field(
        None,
        description=(
            "Hand the champion to TensorFlow Serving after the night: PUSH_TO/<next integer>/ when it changed "
            "(tensorflow_model_server --model_base_path=PUSH_TO); empty: no push"
        ),
    )
    tflite: list[TFLiteQuantize] = Field(
        default_factory=list,
        description=(
            "TFLite files the champion gets (none: float32; int8 calibrated on tonight's train split), each scored on val; "
            "a champion that has one already keeps it (empty: no TFLite)"
        ),
    )

    @model_validator(mode="after")
    def _warm_by_default(self) -> "NightlyConfig":
        # Nightly runs start from the champion unless the settings say otherwise (model/warm_start.py).
        if "init_from" not in self.train.model_fields_set:
            self.train = self.train.model_copy(update={"init_from": "auto"})
        return self

    @model_validator(mode="after")
    def _check(self) -> "NightlyConfig":
        if self.score_images and not self.score_out:
            raise ValueError("score_out is required when score_images is set")
        if self.select and not self.score_images:
            raise ValueError("select picks images of the scored archive: set score_images (and score_out) too")
        check_label_studio_root(self.label_studio_root, self.score_out)
        if self.score_out and roots.is_under(self.score_out, roots.normalize(self.models)):
            raise ValueError(f"score_out {self.score_out} lies inside the models directory {self.models}")
        if self.push_to and roots.is_under(self.push_to, roots.normalize(self.models)):
            raise ValueError(f"push_to {self.push_to} lies inside the models directory {self.models}")
        return self

    def storage_args(self) -> list[str]:
        """The ingest's object-store options, which every other step of the night needs too."""
        from ssdflow import beam_flags

        return beam_flags.storage_flags(self.ingest.beam_args)

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            data=self.ingest.out, models=self.models, storage_args=self.storage_args(), **self.train.model_dump()
        )


class ServeConfig(BaseModel):
    """``ssdflow serve --config FILE`` (JSON or YAML): the deployments' default parameters.

    ``nightly`` and ``score`` are required; ``ingest`` defaults to the nightly's ingest, and the
    train deployment's defaults are the nightly's training on its records.
    """

    model_config = ConfigDict(extra="forbid")

    nightly: NightlyConfig = Field(..., description="The nightly-retrain deployment's config")
    score: ScoreConfig = Field(..., description="The batch-score deployment's config")
    ingest: IngestConfig | None = Field(None, description="The ingest deployment's config (default: the nightly's)")


class ModelsConfig(StorageOptions):
    """The ``models`` deployment: ``ssdflow models list | promote | rollback`` from the Prefect UI."""

    model_config = ConfigDict(extra="forbid")

    models: Location = Field(
        ..., description="The models directory (registry): versions, champion.json, decisions.jsonl"
    )
    action: Literal["list", "promote", "rollback"] = Field(
        "list",
        description=(
            "list: the versions and their metrics; promote: make VERSION the champion by hand; rollback: the previous champion again"
        ),
    )
    version: str | None = Field(None, description="The version to promote (promote only)")
    reason: str | None = Field(None, description="Why (recorded in decisions.jsonl; required for promote and rollback)")
    by: str | None = Field(None, description="Who decides (recorded in decisions.jsonl; default: the flow run's name)")

    @model_validator(mode="after")
    def _complete(self):
        if self.action != "list" and not (self.reason or "").strip():
            raise ValueError(f"{self.action} needs a reason (recorded in decisions.jsonl with who decided)")
        if self.action == "promote" and not self.version:
            raise ValueError("promote needs the version to make the champion")
        if self.action != "promote" and self.version:
            raise ValueError(f"version is for promote; {self.action} takes none")
        return self


class DemoConfig(BaseModel):
    """The embedded default: synthetic data → ingest → train → score, locally."""

    model_config = ConfigDict(extra="forbid")

    workdir: Location = Field("demo_out", description="Where the synthetic data and every job's output go")
    images: int = Field(200, ge=10, le=5000, description="Synthetic images to generate")
    minutes: float = Field(3.0, gt=0, le=120, description="Minutes of training (the time budget)")
    anchor_scales_per_level: AnchorScales = Field(1, description=ANCHOR_SCALES_HELP)
    epochs: int | None = Field(
        None, ge=1, le=MAX_EPOCHS, description="Most training epochs (default: the minutes decide)"
    )
    seed: int = Field(0, description="Random seed of the synthetic dataset")

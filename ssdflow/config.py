"""Typed job configs: one pydantic model per job, shared by the CLI, Prefect parameters and tests.

Bounds live here, once: the CLI rejects them with the field named, and Prefect renders them in
the UI's run form and refuses an out-of-range value when a run is created.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from beam_jobs.encode import DEFAULT_CLIP_TOLERANCE
from beam_jobs.images import DEFAULT_MAX_PIXELS


class LabelFormat(str, Enum):
    voc = "voc"
    coco = "coco"
    csv = "csv"
    yolo = "yolo"


class BeamOptions(BaseModel):
    """Where a Beam job runs. Anything Beam accepts goes in ``beam_args``, passed through untouched."""

    model_config = ConfigDict(extra="forbid")

    runner: str = Field("DirectRunner", description="Beam runner: DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, PortableRunner")
    beam_args: list[str] = Field(default_factory=list, description="Further pipeline options, e.g. --direct_num_workers=2")

    def pipeline_flags(self) -> list[str]:
        flags = list(self.beam_args)
        if not any(a.startswith("--runner") for a in flags):
            flags.insert(0, f"--runner={self.runner}")
        return flags


class IngestConfig(BeamOptions):
    """Images + labels → sharded TFRecords (train/val), label map, stats, rejected lines."""

    images: str = Field(..., description="Directory or glob of images (local path, s3://, gs://)")
    labels: str = Field(..., description="Label file, or directory of label files")
    format: LabelFormat = Field(..., description="Label format")
    out: str = Field(..., description="Output directory URI; replaced wholly on rerun")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of images in the val split (stable hash of the image key)")
    num_shards: int | None = Field(None, ge=1, le=10_000, description="Shards per split; default: automatic by size")
    target_shard_mb: int = Field(128, ge=1, le=4096, description="Shard size aimed at when --num-shards is not given")
    classes: str | None = Field(None, description="YOLO class names: a text file (one per line) or a data.yaml")
    label_map: str | None = Field(None, description="Fixed label map (label_map.json or .pbtxt); unknown classes are then rejected")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Images with more pixels are rejected (decompression-bomb guard)")
    clip_tolerance: float = Field(DEFAULT_CLIP_TOLERANCE, ge=0.0, le=1.0, description="Boxes this far (fraction of the image) outside are clipped; further out, rejected")

    @model_validator(mode="after")
    def _check(self) -> "IngestConfig":
        if self.out.rstrip("/") in ("", "s3:", "gs:"):
            raise ValueError("out must name a directory")
        return self

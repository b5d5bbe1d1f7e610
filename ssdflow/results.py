"""Typed job results beside the typed configs (config.py): what each job returns and writes.

Each model is the one place its keys are spelt: the job builds it, the CLI, the demo and the flows
read its attributes, and its JSON (``to_json``) is what lands on disk, key for key as before the
models existed (``tests/unit/test_results.py`` reads files written by earlier versions).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict


class _Result(BaseModel):
    # A misspelt key fails where the result is built, not where a flow reads it.
    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> dict:
        """The JSON object as written to disk (optional parts left out when unset)."""
        return self.model_dump(mode="json", exclude_none=True)


class ScoreThresholds(_Result):
    """What a scoring run's outputs were filtered with."""

    setting: Literal["auto"] | float  # --score-threshold: auto (calibrated per class) or one number
    per_class: dict[str, float]  # class name → the threshold its detections met
    fallback: list[str] | None = None  # auto only: classes without a calibrated threshold (FALLBACK_SCORE_THRESHOLD)


class LabellingSelection(_Result):
    """``--select``'s labelling batch: how many images were picked among how many candidates."""

    candidates: int  # images ranked by uncertainty over every chunk
    considered: int  # the best of them read and hashed
    near_duplicates_skipped: int
    unreadable: int
    selected: int


class ScoreManifest(_Result):
    """A scoring run's result: its ``_SUCCESS`` manifest (less the file list) and ``run_score``'s return.
    ``images_in == images_scored + images_failed`` always; ``images_retryable`` of the failed ones may
    pass on a rerun."""

    # The counts, added up over the chunks' commits.
    COUNTS: ClassVar[tuple[str, ...]] = (
        "images_in",
        "images_scored",
        "images_failed",
        "images_retryable",
        "detections",
        "files_skipped",
    )

    job: Literal["score"] = "score"
    model_version: str  # the registered version ("<version>.<file stem>" for a .tflite)
    model_dir: str
    runtime: Literal["saved_model", "tflite"]
    model_file: str | None = None  # the .tflite file scored, when not the SavedModel
    chunks: int
    score_thresholds: ScoreThresholds
    chunks_scored_now: int  # the others were committed by earlier runs and reused
    images_in: int
    images_scored: int
    images_failed: int
    images_retryable: int
    detections: int
    files_skipped: int  # files that are not images by name
    labelling: LabellingSelection | None = None

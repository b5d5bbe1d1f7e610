"""The typed job results (ssdflow/results.py) read the files earlier versions wrote and write them back key for key.

tests/data/results/ holds files written by ssdflow at f504e6f (2026-12-06, before the models existed):
score _SUCCESS manifests with auto and fixed thresholds and with a labelling batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from ssdflow.results import LabellingSelection, ScoreManifest, ScoreThresholds

DATA = Path(__file__).resolve().parents[1] / "data" / "results"


@pytest.mark.parametrize(
    "name", ["score_success_auto.json", "score_success_fixed.json", "score_success_labelling.json"]
)
def test_score_manifest_reads_and_writes_todays_success_files(name):
    doc = json.loads((DATA / name).read_text())
    doc.pop("files")  # storage.commit's list of the output's files, not part of the job's result
    manifest = ScoreManifest.model_validate(doc)
    assert manifest.to_json() == doc
    assert manifest.images_in == manifest.images_scored + manifest.images_failed


def test_score_thresholds_in_summary_json_are_the_manifests():
    summary = json.loads((DATA / "score_summary_auto.json").read_text())
    manifest = json.loads((DATA / "score_success_auto.json").read_text())
    assert ScoreThresholds.model_validate(summary["score_thresholds"]).to_json() == manifest["score_thresholds"]
    assert list(ScoreThresholds.model_validate(summary["score_thresholds"]).to_json()) == list(
        summary["score_thresholds"]
    )  # summary.json is written in field order: the same order as before


def test_a_misspelt_or_missing_key_fails_where_the_result_is_built():
    doc = json.loads((DATA / "score_success_labelling.json").read_text())
    doc.pop("files")
    with pytest.raises(ValidationError, match="image_scored"):
        ScoreManifest.model_validate({**doc, "image_scored": 1})
    with pytest.raises(ValidationError, match="selected"):
        LabellingSelection.model_validate({k: v for k, v in doc["labelling"].items() if k != "selected"})
    fixed = ScoreManifest.model_validate(doc).model_copy(update={"labelling": None, "model_file": None})
    assert "labelling" not in fixed.to_json() and "model_file" not in fixed.to_json()  # unset parts are left out

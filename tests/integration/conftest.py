"""Fixtures shared by the integration tests' files."""

from __future__ import annotations

import pytest

from tests.helpers import SHAPES_VAL_FRACTION, voc_scenes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """12 synthetic 128x128 images with 1-2 shapes each, ingested by the real Beam job."""
    from beam_jobs.ingest import run_ingest
    from ssdflow.config import IngestConfig

    root = tmp_path_factory.mktemp("shapes")
    images, labels, truth = voc_scenes(root, 12, 128, seed=1, max_objects=2, quality=95)
    records = root / "records"
    stats = run_ingest(
        IngestConfig(
            images=str(images), labels=str(labels), format="voc", out=str(records), val_fraction=SHAPES_VAL_FRACTION
        )
    )
    assert stats["images_written"]["val"] > 0 and stats["images_written"]["train"] >= 6
    return {"images": images, "records": str(records), "truth": truth, "models": str(root / "models")}

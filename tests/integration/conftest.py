"""Fixtures shared by the integration tests' files."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import SHAPES_VAL_FRACTION


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """12 synthetic 128x128 images with 1-2 shapes each, ingested by the real Beam job."""
    from beam_jobs.ingest import run_ingest
    from ssdflow.config import IngestConfig
    from ssdflow.demo_data import draw_scene, voc_xml

    root = tmp_path_factory.mktemp("shapes")
    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(1)
    truth = {}
    for i in range(12):
        img, objects = draw_scene(rng, 128, 128, max_objects=2)
        img.save(images / f"im{i}.jpg", quality=95)
        (labels / f"im{i}.xml").write_text(voc_xml(f"im{i}.jpg", 128, 128, objects))
        truth[f"im{i}"] = objects
    records = root / "records"
    stats = run_ingest(IngestConfig(images=str(images), labels=str(labels), format="voc", out=str(records), val_fraction=SHAPES_VAL_FRACTION))
    assert stats["images_written"]["val"] > 0 and stats["images_written"]["train"] >= 6
    return {"images": images, "records": str(records), "truth": truth, "models": str(root / "models")}

"""Test-wide settings and session fixtures: raccoon through ingest, and a tiny trained model."""

import os

import pytest

from tests.helpers import raccoon_or_skip

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def raccoon_records(tmp_path_factory):
    from beam_jobs.ingest import run_ingest
    from ssdflow.config import IngestConfig

    root = raccoon_or_skip()
    out = tmp_path_factory.mktemp("raccoon-records")
    run_ingest(IngestConfig(images=str(root / "images"), labels=str(root / "annotations"), format="voc", out=str(out)))
    return str(out)


@pytest.fixture(scope="session")
def raccoon_model(raccoon_records, tmp_path_factory):
    """A small model (alpha 0.35, 128 px) trained a few steps on raccoon and exported; its directory."""
    from model.train import train
    from ssdflow.config import TrainConfig

    models = tmp_path_factory.mktemp("raccoon-models")
    result = train(TrainConfig(data=raccoon_records, models=str(models), alpha=0.35, image_size=128, epochs=1, steps_per_epoch=3,
                               batch_size=8, backbone_weights="none", eval_every=1000, score_threshold=0.0), verbose=0)
    return result.model_dir

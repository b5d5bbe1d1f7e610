"""`ssdflow predict` on a few raccoon images: drawn images named after their sources, a table, and
the same detections the score job writes for them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ssdflow.cli_errors import run_cli
from tests.helpers import raccoon_subset

pytestmark = pytest.mark.integration


def test_predict_draws_each_image_under_its_name_and_agrees_with_score(raccoon_model, tmp_path, capfd):
    from beam_jobs.predict import predict
    from beam_jobs.score import run_score
    from ssdflow.config import ScoreConfig

    images, _ = raccoon_subset(tmp_path, 5, labels=False)
    saved = tmp_path / "drawn"
    argv = [
        "predict",
        str(images / "raccoon-1.jpg"),
        str(images),
        "--model",
        raccoon_model,
        "--save",
        str(saved),
        "--score-threshold",
        "0",
        "--max-detections",
        "3",
    ]
    assert run_cli(argv) == 0
    out = capfd.readouterr().out.splitlines()
    assert out[0].split() == ["image", "found", "best"]
    assert sorted(line.split()[0] for line in out[1:6]) == [f"raccoon-{i}.jpg" for i in range(1, 6)]  # raccoon-1 once
    assert all(line.split()[1] == "3" for line in out[1:6]) and out[-1].startswith("predict: 5 images, 15 detections")
    assert sorted(p.name for p in saved.iterdir()) == [f"raccoon-{i}.jpg" for i in range(1, 6)]
    for i in range(1, 6):
        drawn = np.asarray(Image.open(saved / f"raccoon-{i}.jpg").convert("RGB"), dtype=int)
        source = np.asarray(Image.open(images / f"raccoon-{i}.jpg").convert("RGB"), dtype=int)
        assert drawn.shape == source.shape
        # The box outlines: pixels turned the outline's red where the source was not.
        red = (drawn[..., 0] > 200) & (drawn[..., 1] < 90) & (drawn[..., 2] < 90)
        assert (red & ~((source[..., 0] > 200) & (source[..., 1] < 90) & (source[..., 2] < 90))).sum() > 50

    predicted = {
        r["source"]: r["detections"]
        for r in predict([str(images)], raccoon_model, score_threshold=0.0, max_detections=3)
    }
    run_score(
        ScoreConfig(
            model=raccoon_model,
            images=[str(images)],
            out=str(tmp_path / "scored"),
            score_threshold=0.0,
            max_detections=3,
            formats=["jsonl"],
        )
    )
    scored = {
        r["source"]: r["detections"]
        for f in sorted((tmp_path / "scored").glob("detections-*.jsonl"))
        for r in map(json.loads, f.read_text().splitlines())
    }
    assert predicted == scored


def test_predict_refuses_what_is_not_there(raccoon_model, tmp_path, capfd):
    assert run_cli(["predict", str(tmp_path / "nothing.jpg"), "--model", raccoon_model]) == 2
    assert "nothing.jpg: no such file" in capfd.readouterr().err
    assert run_cli(["predict", str(tmp_path), "--model", raccoon_model]) == 2
    assert "no images found" in capfd.readouterr().err

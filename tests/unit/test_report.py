"""model.report: PR curves and drawn val images, and the card section that shows them."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image

from model import report


def test_pr_curves_png_draws_each_class_in_its_colour(tmp_path):
    path = report.draw_pr_curves(
        {"cat": [1.0] * 50 + [0.5] * 51, "dog": [0.8] * 101, "owl": [None] * 101}, str(tmp_path / report.PR_CURVES)
    )
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (420, 560, 3)
    pixels = {tuple(p) for p in img.reshape(-1, 3)}
    assert report.PALETTE[0] in pixels and report.PALETTE[1] in pixels
    # cat's curve steps down at recall 0.5: its colour on the precision-1.0 row left of the middle only.
    top_row = 28  # precision 1.0 is the plot's top edge
    cat = np.all(img[top_row - 1 : top_row + 2] == report.PALETTE[0], axis=-1).any(axis=0)
    columns = np.flatnonzero(cat)
    assert columns.size and columns.max() < (48 + 560 - 150) / 2 + 5


def test_example_draws_ground_truth_and_only_detections_above_threshold():
    buf = io.BytesIO()
    Image.new("RGB", (200, 100), (40, 40, 40)).save(buf, format="PNG")
    detections = {
        "num_detections": 2,
        "detection_boxes": np.array([[0.5, 0.5, 0.9, 0.9], [0.1, 0.1, 0.3, 0.3]]),
        "detection_scores": np.array([0.9, 0.1]),
        "detection_classes": np.array([2, 1]),
    }
    img = np.asarray(
        report.draw_example(buf.getvalue(), [[0.1, 0.0, 0.4, 0.3]], [1], detections, {1: "cat", 2: "dog"}, 0.3)
    )
    assert tuple(img[10, 30]) == report.GROUND_TRUTH  # ground-truth top edge (y 0.1 of 100, x 0.15 of 200)
    assert tuple(img[50, 130]) == report.PALETTE[1]  # the dog (class 2) detection's top edge
    assert tuple(img[10, 40]) != report.PALETTE[0] and tuple(img[30, 40]) != report.PALETTE[0]  # the 0.1 cat: not drawn


def test_markdown_links_or_inlines_the_images(tmp_path):
    report.draw_pr_curves({"cat": [1.0] * 101}, str(tmp_path / report.PR_CURVES))
    (tmp_path / report.VAL_EXAMPLES).mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / report.VAL_EXAMPLES / "val-00.jpg")
    linked = report.markdown(str(tmp_path))
    assert "![PR curves](pr_curves.png)" in linked and "![val-00.jpg](val_examples/val-00.jpg)" in linked
    inline = report.markdown(str(tmp_path), inline=True)
    png = re.search(r"\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", inline)
    assert png and Image.open(io.BytesIO(base64.b64decode(png.group(1)))).size == (560, 420)
    assert "data:image/jpeg;base64," in inline and "(pr_curves.png)" not in inline

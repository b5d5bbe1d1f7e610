"""The labelling batch: uncertainty against class thresholds, per-chunk pools, the near-duplicate
guard, and pre-annotations that Pascal VOC readers (ssdflow's own) and Label Studio take."""

from __future__ import annotations

import csv
import io
import json
import random
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from beam_jobs.score import labelling as lb
from beam_jobs.parsers import voc


def _inference(*detections):
    """Raw model outputs for ``(score, class id)`` pairs."""
    return {
        "num_detections": len(detections),
        "detection_scores": [s for s, _ in detections],
        "detection_classes": [float(c) for _, c in detections],
    }


def test_closeness_peaks_at_the_threshold_and_falls_to_zero_at_both_ends():
    assert lb.closeness(0.4, 0.4) == 1.0
    assert lb.closeness(0.0, 0.4) == 0.0 and lb.closeness(1.0, 0.4) == 0.0
    assert lb.closeness(0.2, 0.4) == pytest.approx(0.5) and lb.closeness(0.7, 0.4) == pytest.approx(0.5)
    assert lb.closeness(0.39, 0.4) > lb.closeness(0.30, 0.4) > lb.closeness(0.1, 0.4)


def test_an_images_uncertainty_is_its_most_uncertain_decision_against_its_own_class_threshold():
    thresholds, names = {1: 0.5, 2: 0.2}, {1: "cat", 2: "dog"}
    # 0.45 is near cat's 0.5; 0.45 is far above dog's 0.2 (closeness 0.6875): cat's box decides.
    u = lb.image_uncertainty(_inference((0.97, 1), (0.45, 1), (0.45, 2), (0.02, 1)), thresholds, names)
    assert u["uncertainty"] == pytest.approx(0.9) and u["ambiguous"] == 2
    assert "cat scored 0.450 against its threshold 0.500" in u["reason"]
    sure = lb.image_uncertainty(_inference((0.99, 1), (0.01, 2)), thresholds, names)
    assert sure["uncertainty"] < 0.1 and sure["ambiguous"] == 0
    assert lb.image_uncertainty(_inference(), thresholds, names) == {
        "uncertainty": 0.0,
        "ambiguous": 0,
        "reason": "no detection at all",
    }


def _candidate(source, u, ambiguous=1, detections=()):
    return {
        "source": source,
        "uncertainty": u,
        "ambiguous": ambiguous,
        "reason": f"r {source}",
        "width": 80,
        "height": 64,
        "detections": list(detections),
    }


def test_a_chunk_pool_keeps_its_most_uncertain_images_in_rank_order_whatever_the_arrival_order():
    rng = random.Random(3)
    images = [(f"img{i:03d}.jpg", round(rng.random(), 2), rng.randint(0, 3)) for i in range(200)]
    want = sorted((_candidate(s, u, a) for s, u, a in images), key=lb.rank_key)[:17]
    for _ in range(3):
        rng.shuffle(images)
        pool = lb.ChunkPool(size=17)
        for s, u, a in images:
            pool.add(
                {"source": s, "width": 80, "height": 64, "detections": []},
                {"uncertainty": u, "ambiguous": a, "reason": f"r {s}"},
            )
        assert [c["source"] for c in pool.candidates()] == [c["source"] for c in want]


def _scene(seed: int, size=(160, 120)) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)  # coarse structure that survives the hash's downscale
    return Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)


def _jpeg(img: Image.Image, quality=90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_dhash_calls_a_reencoded_brighter_frame_a_near_duplicate_and_another_scene_not():
    a = lb.dhash(_jpeg(_scene(1)))
    again = lb.dhash(_jpeg(ImageEnhance.Brightness(_scene(1)).enhance(1.15), quality=60))
    other = lb.dhash(_jpeg(_scene(2)))
    assert bin(a ^ again).count("1") <= lb.NEAR_DUPLICATE_BITS < bin(a ^ other).count("1")


def test_select_skips_near_duplicates_and_unreadable_images_and_counts_them():
    images = {
        "a.jpg": _jpeg(_scene(1)),
        "a-copy.jpg": _jpeg(_scene(1), quality=70),
        "b.jpg": _jpeg(_scene(2)),
        "c.jpg": _jpeg(_scene(3)),
        "d.jpg": _jpeg(_scene(4)),
    }
    candidates = [
        _candidate("a.jpg", 0.99),
        _candidate("a-copy.jpg", 0.98),
        _candidate("gone.jpg", 0.97),
        _candidate("b.jpg", 0.9),
        _candidate("c.jpg", 0.5),
        _candidate("d.jpg", 0.1),
    ]

    def read(source):
        return images[source]  # gone.jpg: KeyError, as a vanished file

    picked, counts = lb.select(reversed(candidates), 3, read)
    assert [p["source"] for p in picked] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [p["rank"] for p in picked] == [1, 2, 3] and picked[0]["data"] == images["a.jpg"]
    assert counts == {"candidates": 6, "considered": 6, "near_duplicates_skipped": 1, "unreadable": 1}


def test_voc_pre_annotations_read_back_through_ssdflows_voc_parser_with_no_rejection():
    c = {
        **_candidate("s3://b/x/raccoon 7.jpg", 0.8),
        "rank": 3,
        "width": 500,
        "height": 375,
        "detections": [
            {
                "label": "raccoon",
                "label_id": 1,
                "score": 0.52,
                "box": {"xmin": 10.4, "ymin": 20.6, "xmax": 300.0, "ymax": 374.9},
            },
            {
                "label": "a&b <c>",
                "label_id": 2,
                "score": 0.31,
                "box": {"xmin": -1.0, "ymin": 0.0, "xmax": 501.2, "ymax": 100.0},
            },
            {
                "label": "raccoon",
                "label_id": 1,
                "score": 0.5,
                "box": {"xmin": 40.2, "ymin": 7.0, "xmax": 40.4, "ymax": 9.0},
            },
        ],
    }
    name = lb.file_stem(c) + ".jpg"
    assert name == "0003-raccoon_7.jpg"
    parsed = voc.parse(f"annotations/{lb.file_stem(c)}.xml", lb.voc_xml(name, c).encode())
    assert not parsed.rejections and len(parsed.records) == 1
    record = parsed.records[0]
    assert (record.image_name, record.width, record.height, record.rejections) == (name, 500, 375, ())
    assert [(b.label, b.xmin, b.ymin, b.xmax, b.ymax) for b in record.boxes] == [
        ("raccoon", 10, 21, 300, 375),
        ("a&b <c>", 0, 0, 500, 100),
    ]  # pixels, clipped; the sliver (no area in pixels) left out


def test_label_studio_tasks_follow_its_import_format_and_match_the_labelling_config():
    c = {
        **_candidate("archive.tar#dir/img 1.png", 0.7),
        "rank": 1,
        "width": 200,
        "height": 100,
        "detections": [
            {
                "label": "dog",
                "label_id": 2,
                "score": 0.41,
                "box": {"xmin": 20.0, "ymin": 10.0, "xmax": 120.0, "ymax": 60.0},
            }
        ],
    }
    task = lb.label_studio_task("/data/labelling/images/0001-img_1.png", c, "v7")
    assert task["data"]["image"] == "/data/labelling/images/0001-img_1.png"
    [prediction] = task["predictions"]
    assert prediction["model_version"] == "v7" and prediction["score"] == 0.7
    [region] = prediction["result"]
    assert region["type"] == "rectanglelabels" and region["original_width"] == 200 and region["original_height"] == 100
    assert region["value"] == {
        "x": 10.0,
        "y": 10.0,
        "width": 50.0,
        "height": 50.0,
        "rotation": 0,
        "rectanglelabels": ["dog"],
    }
    config = ElementTree.fromstring(lb.label_studio_config(["cat", "dog"]))
    rect, image = config.find("RectangleLabels"), config.find("Image")
    assert (region["from_name"], region["to_name"]) == (rect.get("name"), image.get("name")) and image.get(
        "value"
    ) == "$image"
    assert [lbl.get("value") for lbl in rect.findall("Label")] == ["cat", "dog"]
    json.dumps(task)  # plain JSON


def test_the_batch_holds_images_annotations_tasks_and_a_reason_per_image():
    png = io.BytesIO()
    _scene(5).save(png, format="PNG")
    picked = [
        {
            **_candidate(
                "in/a.jpg",
                0.9,
                detections=[
                    {
                        "label": "cat",
                        "label_id": 1,
                        "score": 0.5,
                        "box": {"xmin": 1.0, "ymin": 2.0, "xmax": 30.0, "ymax": 40.0},
                    }
                ],
            ),
            "rank": 1,
            "data": _jpeg(_scene(1)),
        },
        {**_candidate("in/b.png", 0.4), "rank": 2, "data": png.getvalue()},
    ]
    files = lb.batch_files(picked, "v1", ["cat"], "s3://bucket/out/labelling")
    assert sorted(files) == [
        "labelling/annotations/0001-a.xml",
        "labelling/annotations/0002-b.xml",
        "labelling/images/0001-a.jpg",
        "labelling/images/0002-b.png",
        "labelling/label_studio.json",
        "labelling/label_studio_config.xml",
        "labelling/reasons.csv",
    ]
    assert files["labelling/images/0002-b.png"] == picked[1]["data"]  # the original bytes
    tasks = json.loads(files["labelling/label_studio.json"])
    assert [t["data"]["image"] for t in tasks] == [
        "s3://bucket/out/labelling/images/0001-a.jpg",
        "s3://bucket/out/labelling/images/0002-b.png",
    ]
    rows = list(csv.DictReader(io.StringIO(files["labelling/reasons.csv"].decode())))
    assert [(r["rank"], r["source"], r["detections"], r["reason"]) for r in rows] == [
        ("1", "in/a.jpg", "1", "r in/a.jpg"),
        ("2", "in/b.png", "0", "r in/b.png"),
    ]


def test_tasks_name_images_by_label_studios_local_files_url_below_its_document_root(tmp_path):
    """Label Studio serves a local image only as /data/local-files/?d=PATH below its document root
    (percent-encoded); without a root the batch's own URI stays (an s3:// URI resolves through a
    storage connection); a batch outside the root is refused, and symlinks are seen through."""
    batch = tmp_path / "night 1" / "scored" / "labelling"
    batch.mkdir(parents=True)
    assert lb.task_image_root("s3://b/out/labelling", None) == "s3://b/out/labelling"
    assert lb.task_image_root(str(batch), str(tmp_path)) == "/data/local-files/?d=night%201/scored/labelling"
    assert lb.task_image_root(f"file://{batch}", str(tmp_path / "night 1")) == "/data/local-files/?d=scored/labelling"
    (tmp_path / "link").symlink_to(tmp_path / "night 1")
    assert (
        lb.task_image_root(str(tmp_path / "link" / "scored" / "labelling"), str(tmp_path / "night 1"))
        == "/data/local-files/?d=scored/labelling"
    )
    with pytest.raises(ValueError, match="not below the Label Studio document root"):
        lb.task_image_root(str(batch), str(tmp_path / "elsewhere"))


@pytest.mark.parametrize(
    "root, out, message",
    [
        ("data", "/data/out", "must be an absolute local path"),
        ("s3://b", "s3://b/out", "must be an absolute local path"),
        ("/data", "s3://b/out", "is in a bucket"),
        ("/data", "/elsewhere/out", "is not below label_studio_root"),
    ],
)
def test_a_label_studio_root_that_cannot_serve_the_batch_is_refused_before_scoring(root, out, message):
    from pydantic import ValidationError

    from ssdflow.config import NightlyConfig, ScoreConfig

    with pytest.raises(ValidationError, match=message):
        ScoreConfig(model="/models", images=["/in"], out=out, label_studio_root=root)
    with pytest.raises(ValidationError, match=message):
        NightlyConfig(
            ingest={"images": "/in", "labels": "/labels", "format": "voc", "out": "/records"},
            models="/models",
            score_images=["/in"],
            score_out=out,
            label_studio_root=root,
        )
    assert (
        ScoreConfig(model="/models", images=["/in"], out="/data/x/out", label_studio_root="/data").label_studio_root
        == "/data"
    )

"""Hostile inputs through both real jobs: one table, one outcome per row (the proof behind docs/reliability.md).

The corpus and each row's expected outcome live in ``tests/hostile_corpus.py``. Ingest runs once per
corpus (label format), scoring once over each corpus that has images to score; then, per row:

* ingest finished, and the case's files left exactly the rejected lines the row names (reason and
  a detail that names the problem), or were written (converted, rotated, clipped) as it says;
* scoring finished, and each of the case's images was scored or failed with the row's reason.

Per corpus the books balance: images_in == written + rejected, every declared box is written or
rejected, rejected.jsonl holds nothing the table does not name; and for scoring
images_in == images_scored + images_failed. test_ingest_bad_inputs.py keeps the finer checks of
the older mixed corpus (label maps, fixed maps, the match transform).
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from beam_jobs.ingest import run_ingest
from beam_jobs.patterns import IMAGE_EXTENSIONS
from ssdflow.config import IngestConfig, ScoreConfig
from tests.helpers import read_ingest_output, read_jsonl
from tests.hostile_corpus import CASES, CORPORA, SCORED, SECRET, WHITE_RECT, Case, Corpus, build_corpus

pytestmark = pytest.mark.integration

SCORED_CORPORA = tuple(n for n in CORPORA if any(c.score or c.gap for c in CASES if c.corpus == n))
REPAIR_COUNTERS = ("images_converted", "images_exif_rotated", "boxes_clipped", "label_size_corrected")


@dataclass
class Run:
    """One job's run over one corpus: its result, or the exception that ended it."""

    corpus: Corpus
    out: Path
    error: BaseException | None = None
    stats: dict = field(default_factory=dict)  # ingest: stats.json; score: the _SUCCESS manifest
    lines: list[dict] = field(default_factory=list)  # ingest: rejected.jsonl; score: errors.jsonl
    records: dict = field(default_factory=dict)  # ingest: tf.Examples by key; score: JSONL lines by file name
    decoded_sizes: list = field(default_factory=list)  # sizes of every image Pillow decoded fully


def _name(source: str) -> str:
    return os.path.basename(source.split("#", 1)[0])


def _load_spy(monkeypatch, sizes: list):
    """Records the size of every full Pillow decode (ImageFile.load), to prove the bomb never is."""
    real = ImageFile.ImageFile.load

    def spy(self):
        sizes.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Corpus]:
    root = tmp_path_factory.mktemp("hostile")
    return {name: build_corpus(root, name) for name in CORPORA}


@pytest.fixture(scope="module")
def ingested(corpora) -> dict[str, Run]:
    runs = {}
    for name, corpus in corpora.items():
        run = runs[name] = Run(corpus, corpus.images.parent / "ingest-out")
        cfg = IngestConfig(
            images=str(corpus.images),
            labels=str(corpus.labels),
            format=corpus.format,
            out=str(run.out),
            val_fraction=0.0,
        )
        with pytest.MonkeyPatch.context() as mp:
            _load_spy(mp, run.decoded_sizes)
            try:
                run.stats = run_ingest(cfg)
            except Exception as e:  # a row with a known gap; its tests say so
                run.error = e
                continue
        run.lines = read_jsonl(run.out / "rejected.jsonl")
        run.records = read_ingest_output(run.out)
    return runs


@pytest.fixture(scope="module")
def scored(corpora, raccoon_model) -> dict[str, Run]:
    from beam_jobs.score import run_score

    runs = {}
    for name, corpus in corpora.items():
        if name not in SCORED_CORPORA:
            continue
        run = runs[name] = Run(corpus, corpus.images.parent / "score-out")
        cfg = ScoreConfig(
            model=raccoon_model,
            images=[str(corpus.images)],
            out=str(run.out),
            score_threshold=0.0,
            formats=["jsonl", "parquet", "coco"],
        )  # every writer sees every name
        try:
            run.stats = run_score(cfg)
        except Exception as e:
            run.error = e
            continue
        run.lines = read_jsonl(run.out / "errors.jsonl")
        run.records = {_name(r["source"]): r for f in sorted(run.out.glob("detections-*.jsonl")) for r in read_jsonl(f)}
    return runs


def _rows(select=lambda case: True):
    """The table as pytest params, ids = case names; rows with a known gap are strict xfails."""
    return [
        pytest.param(c, id=c.name, marks=[pytest.mark.xfail(strict=True, reason=c.gap)] if c.gap else [])
        for c in CASES
        if select(c)
    ]


def _corpora(names):
    """Corpus names as pytest params; a corpus holding a row with a known gap is a strict xfail."""

    def marks(name):
        gaps = [c.gap for c in CASES if c.corpus == name and c.gap]
        return [pytest.mark.xfail(strict=True, reason=gaps[0])] if gaps else []

    return [pytest.param(name, id=name, marks=marks(name)) for name in names]


def _skip_if_unsupported(case: Case, run: Run) -> None:
    if case.name in run.corpus.unsupported:
        pytest.skip(run.corpus.unsupported[case.name])


def _skip_if_empty(run: Run) -> None:
    if not run.corpus.cases:
        pytest.skip(f"no case of corpus {run.corpus.name} can be built here: {run.corpus.unsupported}")


# --- per row ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _rows())
def test_ingest_outcome(case: Case, ingested):
    run = ingested[case.corpus]
    _skip_if_unsupported(case, run)
    assert run.error is None, f"ingest failed: {type(run.error).__name__}: {run.error}"

    names = {name for name, _ in case.rejected}
    lines = [line for line in run.lines if _name(line["source"]) in names]
    assert Counter((_name(line["source"]), line["reason"]) for line in lines) == Counter(case.rejected)
    assert all(line["detail"] for line in lines)
    if case.detail:
        assert any(case.detail in line["detail"] for line in lines), [line["detail"] for line in lines]

    for key in case.written:
        rec = run.records[key]
        img = Image.open(io.BytesIO(rec["image/encoded"]))
        img.load()
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (rec["image/width"], rec["image/height"]))
    for key in (k for k in run.records if k in {os.path.splitext(n)[0] for n in names}):
        assert key in case.written, f"{key} was written but the row says it is rejected"
    EXTRA_INGEST.get(case.name, lambda case, run: None)(case, run)


@pytest.mark.parametrize("case", _rows(lambda c: c.score or c.gap))
def test_score_outcome(case: Case, scored):
    run = scored[case.corpus]
    _skip_if_unsupported(case, run)
    assert run.error is None, f"scoring failed: {type(run.error).__name__}: {run.error}"
    errors = {_name(e["source"]): e for e in run.lines}
    for name, outcome in case.score:
        if outcome == SCORED:
            assert name in run.records and name not in errors, errors.get(name)
            with Image.open(run.corpus.images / name) as img:  # scoring reports the upright (EXIF-applied) size
                assert (run.records[name]["width"], run.records[name]["height"]) == ImageOps.exif_transpose(img).size
        else:
            assert name not in run.records
            assert errors[name]["reason"] == outcome and errors[name]["detail"], errors[name]
    EXTRA_SCORE.get(case.name, lambda case, run: None)(case, run)


# --- per corpus: the books ----------------------------------------------------------------------
@pytest.mark.parametrize("name", _corpora(CORPORA))
def test_ingest_books_balance(name, ingested):
    run = ingested[name]
    _skip_if_empty(run)
    assert run.error is None, f"ingest failed: {type(run.error).__name__}: {run.error}"
    s, cases = run.stats, run.corpus.cases
    assert s["images_in"] == s["images_written"]["total"] + s["images_rejected"]["total"]
    # Nothing silent: every rejected line is one the table names, and every written record too.
    assert Counter((_name(line["source"]), line["reason"]) for line in run.lines) == Counter(
        r for c in cases for r in c.rejected
    )
    assert set(run.records) == {key for c in cases for key in c.written}
    assert s["images_in"] == len(run.records) + sum(1 for line in run.lines if line["kind"] == "image")
    # Every box a label record declares is written, rejected, or went with its rejected image.
    declared = sum(c.boxes for c in cases)
    assert declared == s["boxes_written"] + s["boxes_rejected"]["total"] + s["boxes_in_rejected_images"]
    assert s["label_files_rejected"] == sum(1 for line in run.lines if line["kind"] == "label_file")
    for counter in REPAIR_COUNTERS:  # repairs are counted, once per case that needs one
        assert s[counter] == sum(c.repaired.count(counter) for c in cases), counter


@pytest.mark.parametrize("name", _corpora(SCORED_CORPORA))
def test_score_books_balance(name, scored):
    run = scored[name]
    _skip_if_empty(run)
    assert run.error is None, f"scoring failed: {type(run.error).__name__}: {run.error}"
    m = run.stats
    files = [p for p in os.listdir(run.corpus.images) if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS]
    assert m.images_in == m.images_scored + m.images_failed == len(files)
    assert len(run.records) == m.images_scored and len(run.lines) == m.images_failed
    expected = dict(pair for c in run.corpus.cases for pair in c.score)
    assert {n: SCORED for n in run.records} | {_name(e["source"]): e["reason"] for e in run.lines} == expected


# --- row-specific checks (what "repaired" means for that row) -----------------------------------------
EXTRA_INGEST, EXTRA_SCORE = {}, {}


def _extra(table: dict, name: str):
    def register(fn):
        table[name] = fn
        return fn

    return register


def _pixels(rec) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(rec["image/encoded"])).convert("RGB")).astype(int)


@_extra(EXTRA_INGEST, "decompression_bomb_png")
def _bomb_never_decoded(case, run):
    assert (30_000, 30_000) not in run.decoded_sizes
    assert max(w * h for w, h in run.decoded_sizes) <= 64 * 64


@_extra(EXTRA_SCORE, "decompression_bomb_png")
def _bomb_refused_from_header(case, run):
    (error,) = [e for e in run.lines if _name(e["source"]) == "bomb.png"]
    assert "max_pixels" in error["detail"]  # our header check, not a TensorFlow allocation failure


@_extra(EXTRA_INGEST, "png_alpha")
def _alpha_on_white(case, run):
    px = _pixels(run.records["alpha"])
    assert np.all(px[:, :28] >= 245) and np.all(np.abs(px[:, 36:] - (200, 0, 0)) <= 8)


@_extra(EXTRA_INGEST, "png_16bit")
def _16bit_rescaled(case, run):
    px = _pixels(run.records["gray16"])
    assert px[:, :2].mean() < 10 and px[:, -2:].mean() > 245  # the full ramp, not clipped or wrapped


@_extra(EXTRA_INGEST, "cmyk_jpeg")
def _cmyk_colours(case, run):
    assert np.all(np.abs(_pixels(run.records["cmyk"]).mean(axis=(0, 1)) - (255, 55, 55)) <= 12)


@_extra(EXTRA_INGEST, "exif_rotated_jpeg")
def _upright_and_box_follows(case, run):
    rec = run.records["exif-rotated"]
    assert (rec["image/width"], rec["image/height"]) == (48, 64)
    px = _pixels(rec).mean(axis=2)
    ys, xs = np.nonzero(px > 128)
    white = (xs.min() / 48, ys.min() / 64, (xs.max() + 1) / 48, (ys.max() + 1) / 64)
    box = tuple(rec[f"image/object/bbox/{k}"][0] for k in ("xmin", "ymin", "xmax", "ymax"))
    assert np.allclose(white, box, atol=1.5 / 48), (white, box, WHITE_RECT)


@_extra(EXTRA_INGEST, "box_slightly_out_of_bounds")
def _clipped(case, run):
    assert run.records["box-clip"]["image/object/bbox/xmax"] == [1.0]


@_extra(EXTRA_INGEST, "yolo_out_of_range_values")
def _yolo_clipped(case, run):
    assert sorted(run.records["yolo-range"]["image/object/bbox/xmax"]) == pytest.approx([0.7, 1.0])


@_extra(EXTRA_INGEST, "voc_xxe")
def _nothing_leaked(case, run):
    for path in run.out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@_extra(EXTRA_INGEST, "non_ascii_file_name")
def _name_kept(case, run):
    assert run.records["raccoön-日本"]["image/filename"].decode("utf-8") == "raccoön-日本.jpg"


@_extra(EXTRA_SCORE, "non_ascii_file_name")
def _name_in_every_output(case, run):
    import pyarrow.parquet as pq

    sources = {s for f in run.out.glob("detections-*.parquet") for s in pq.read_table(f).column("source").to_pylist()}
    assert any(s.endswith("raccoön-日本.jpg") for s in sources)
    coco = json.loads((run.out / "coco.json").read_text(encoding="utf-8"))
    assert any(i["file_name"].endswith("raccoön-日本.jpg") for i in coco["images"])

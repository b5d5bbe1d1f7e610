"""A new user's mistakes, made through the real ``ssdflow`` command (``run_cli``, what the console
script runs): each gets one line naming the cause, exit code 2, no traceback, and the previous good
outputs stay exactly as they were."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssdflow.cli_errors import run_cli
from tests.helpers import raccoon_subset

pytestmark = pytest.mark.integration


def _snapshot(out: Path) -> dict[str, str]:
    """Every file of an output with its sha256 (the output must come back byte for byte)."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory, raccoon_model):
    """A complete ingest output and a complete score output, as a user has them after a first good day."""
    base = tmp_path_factory.mktemp("user")
    images, labels = raccoon_subset(base / "data", 8)
    ingest_out, score_out = base / "records", base / "scores"
    assert (
        run_cli(
            ["ingest", "--images", str(images), "--labels", str(labels), "--format", "voc", "--out", str(ingest_out)]
        )
        == 0
    )
    assert run_cli(["score", "--model", raccoon_model, "--images", str(images), "--out", str(score_out)]) == 0
    a_file = base / "notes.txt"
    a_file.write_text("not a directory\n")
    return {
        "images": str(images),
        "labels": str(labels),
        "records": ingest_out,
        "scores": score_out,
        "model": raccoon_model,
        "file": str(a_file),
        "base": base,
    }


def _mistakes(w: dict) -> list[tuple[str, list[str], dict, str]]:
    """(what the user did wrong, argv, environment, a phrase the one-line message must hold)."""
    images, labels, rec, scores = w["images"], w["labels"], str(w["records"]), str(w["scores"])
    ingest = ["ingest", "--images", images, "--labels", labels, "--format", "voc", "--out", rec]
    first = sorted(Path(images).iterdir())
    return [
        (
            "VOC files given as COCO",
            ["ingest", "--images", images, "--labels", labels, "--format", "coco", "--out", rec],
            {},
            "--format voc",
        ),
        (
            "Dataflow without its options",
            [*ingest, "--runner", "DataflowRunner"],
            {},
            "Missing required option: project",
        ),
        (
            "--out names a file",
            ["ingest", "--images", images, "--labels", labels, "--format", "voc", "--out", w["file"]],
            {},
            "is a file",
        ),
        (
            "score into an ingest output",
            ["score", "--model", w["model"], "--images", images, "--out", rec],
            {},
            "a complete ingest output",
        ),
        ("ingest into a score output", [*ingest[:-1], scores], {}, "a complete score output"),
        ("--images twice", [*ingest, "--images", images], {}, "--images given more than once"),
        (
            "an unquoted glob",
            ["score", "--model", w["model"], "--images", str(first[0]), *map(str, first[1:4]), "--out", scores],
            {},
            "quote",
        ),
        (
            "no server",
            ["automations"],
            {"PREFECT_API_URL": "http://127.0.0.1:9/api"},
            "cannot reach the Prefect server",
        ),
        (
            "images that are not there",
            ["ingest", "--images", str(w["base"] / "nope"), "--labels", labels, "--format", "voc", "--out", rec],
            {},
            "no files found",
        ),
        (
            "training on a path that is not an ingest output",
            ["train", "--data", images, "--models", str(w["base"] / "m")],
            {},
            "_SUCCESS",
        ),
        (
            "a model that is not there",
            ["score", "--model", str(w["base"] / "no-model"), "--images", images, "--out", scores],
            {},
            "no-model",
        ),
        ("a fraction out of range", [*ingest, "--val-fraction", "1.5"], {}, "--val-fraction"),
        (
            "the TF OD API's 300 px",
            ["train", "--data", rec, "--models", str(w["base"] / "m"), "--image-size", "300"],
            {},
            "320",
        ),
        ("a format that does not exist", [*ingest[:6], "pascal_voc", *ingest[7:]], {}, "'pascal_voc'"),
        (
            "a value after a flag",
            ["score", "--model", w["model"], "--images", images, "--out", scores, "--keep-chunks", "true"],
            {},
            "--keep-chunks",
        ),
        ("an export format that does not exist", ["export", "--model", w["model"], "--format", "onnx"], {}, "'onnx'"),
        (
            "a split that is not there",
            ["evaluate", "--model", w["model"], "--data", rec, "--split", "test"],
            {},
            "test",
        ),
        (
            "a models directory without models",
            ["models", "list", "--models", str(w["base"])],
            {},
            "no registered model",
        ),
        ("a misspelt option", [*ingest, "--val-fracton", "0.2"], {}, "did you mean --val-fraction"),
    ]


def test_mistakes_get_one_line_exit_2_and_leave_outputs_intact(world, capfd):
    before = {name: _snapshot(world[name]) for name in ("records", "scores")}
    assert (world["records"] / "_SUCCESS").exists() and (world["scores"] / "_SUCCESS").exists()
    mistakes = _mistakes(world)
    assert len(mistakes) >= 15
    for what, argv, env, phrase in mistakes:
        if env:  # the real console script in a process of its own: Prefect reads its settings once per process
            proc = subprocess.run(
                [sys.executable, "-m", "ssdflow.cli", *argv],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=120,
            )
            rc, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            rc = run_cli(argv)
            out, err = capfd.readouterr()
        # Progress lines ("ingest: 3/8 images …", ssdflow/progress.py) and log records aside.
        lines = [
            line
            for line in err.splitlines()
            if line.strip() and not line.startswith(("WARNING", "INFO", "ingest: ", "score: "))
        ]
        assert rc == 2, f"{what}: rc {rc}\n{err}"
        assert "Traceback" not in err + out, f"{what}: a traceback\n{err}"
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{what}: not one line\n{err}"
        assert phrase in lines[0], f"{what}: {phrase!r} not in {lines[0]!r}"
        for name, files in before.items():
            assert _snapshot(world[name]) == files, f"{what}: {name} changed"


def test_debug_shows_the_traceback_of_a_mistake(world, capfd):
    assert (
        run_cli(
            [
                "--debug",
                "ingest",
                "--images",
                world["images"],
                "--labels",
                world["labels"],
                "--format",
                "voc",
                "--out",
                str(world["records"]),
                "--runner",
                "DataflowRunner",
            ]
        )
        == 2
    )
    err = capfd.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith(
        "error: the runner needs more pipeline options"
    )


def test_a_bug_exits_1_with_its_traceback(monkeypatch, capfd):
    import model.registry

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(model.registry, "list_versions", broken)
    assert run_cli(["models", "list", "--models", "/nowhere"]) == 1
    err = capfd.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err and "bug in ssdflow" in err


def test_version_and_truthful_help(capfd, monkeypatch):
    import ssdflow

    monkeypatch.setenv("COLUMNS", "250")  # rich wraps the help to the terminal's width
    assert run_cli(["--version"]) == 0
    assert capfd.readouterr().out.strip() == f"ssdflow {ssdflow.__version__}"
    assert run_cli(["score", "--help"]) == 0
    text = capfd.readouterr().out
    assert "<bool>" not in text  # flags take no value
    assert run_cli(["train", "--help"]) == 0
    text = capfd.readouterr().out
    assert "focal|quality_focal|softmax_hnm" in text and "refuse|promote_if_only_added" in text
    assert "0.3333333" not in text and "multiple of 32" in text
    assert run_cli(["serve", "--help"]) == 0
    assert "models" in capfd.readouterr().out


def test_empty_output_is_not_success(world, tmp_path, capfd):
    """Nothing usable written: exit 2, the reasons in one line, no _SUCCESS, nothing committed."""
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted(Path(world["images"]).iterdir())[:3]:
        (images / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    rc = run_cli(
        ["ingest", "--images", str(images), "--labels", str(tmp_path / "images"), "--format", "voc", "--out", str(out)]
    )
    err = capfd.readouterr().err
    assert rc == 2 and "nothing written" in err and "no_label" in err, err
    assert not (out / "_SUCCESS").exists()


def test_overwrite_replaces_another_jobs_output(world, tmp_path, capfd):
    out = tmp_path / "mixed"
    out.mkdir()
    (out / "stats.json").write_text(json.dumps({"images_in": 1}))
    (out / "keep-me.txt").write_text("x")
    argv = ["ingest", "--images", world["images"], "--labels", world["labels"], "--format", "voc", "--out", str(out)]
    assert run_cli(argv) == 2 and "keep-me.txt" in capfd.readouterr().err
    assert run_cli([*argv, "--overwrite"]) == 0
    assert not (out / "keep-me.txt").exists() and json.loads((out / "_SUCCESS").read_text())["job"] == "ingest"

"""ssdflow ingest's malloc settings for its own process (ssdflow/patches/allocator.py). Run in a child
process each: mallopt changes the process it runs in, and the test process trains models."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ssdflow.patches import allocator

CODE = "from ssdflow.patches import allocator; print(allocator.tune_this_process())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_takes_the_settings_unless_the_user_chose_them():
    env = {k: v for k, v in os.environ.items() if k not in allocator.ENV}
    ran = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True)
    assert ran.stdout.strip() == "True"
    for key in allocator.ENV:
        ran = subprocess.run(
            [sys.executable, "-c", CODE], env={**env, key: "4"}, capture_output=True, text=True, check=True
        )
        assert ran.stdout.strip() == "False", key  # the user's setting stands


def test_the_ingest_command_sets_them_on_itself(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from ssdflow.cli import app

    calls = []
    monkeypatch.setattr(allocator, "tune_this_process", lambda: calls.append(1) or True)
    (tmp_path / "images").mkdir()
    result = CliRunner().invoke(
        app,
        [
            "ingest",
            "--images",
            str(tmp_path / "images"),
            "--labels",
            str(tmp_path / "images"),
            "--format",
            "voc",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 2 and "no files found" in result.output, (
        result.output
    )  # an empty input, refused as before
    assert calls == [1]

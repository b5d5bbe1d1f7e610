"""Under CI=true a test that would skip fails, naming what it lacked (tests/conftest.py); locally it
stays a skip. Run on a throwaway test file through the suite's own conftest."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import REPO

PROBE = """
import pytest

@pytest.fixture
def data():
    pytest.skip("raccoon dataset not found at /nowhere/shared/datasets/raccoon")

def test_in_a_fixture(data):
    pass

def test_in_the_body():
    pytest.skip("/usr/bin/chromium is missing")

@pytest.mark.skipif(True, reason="no local backbone weights at /nowhere/weights.h5")
def test_by_mark():
    pass

def test_that_runs():
    assert True
"""


def _run(tmp_path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rA",
            str(tmp_path / "test_probe.py"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_under_ci_every_skip_fails_naming_what_is_missing(tmp_path):
    proc = _run(tmp_path, "true")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    for missing in (
        "raccoon dataset not found at /nowhere/shared/datasets/raccoon",
        "/usr/bin/chromium is missing",
        "no local backbone weights at /nowhere/weights.h5",
    ):
        assert f"CI=true, and this test would have been skipped: {missing}." in out, out
    assert "1 failed, 1 passed, 2 errors" in out, out  # a skip in a fixture or a mark fails at setup


def test_without_ci_a_skip_stays_a_skip(tmp_path):
    proc = _run(tmp_path, None)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "1 passed, 3 skipped" in out, out

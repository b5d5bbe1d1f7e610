"""A first run's console: Beam's false alarms on the root logger are dropped, real warnings are not."""

from __future__ import annotations

import logging

import pytest

import ssdflow  # noqa: F401 - installs the filter


def test_false_alarms_are_dropped_and_other_warnings_kept(caplog):
    with caplog.at_level(logging.WARNING):
        logging.warning("Resource module is not available for current platform, memory usage cannot be fetched.")
        logging.warning(
            "apitools not found, and bigquery client libraries are not available despite the import not raising an ImportError."
        )
        logging.warning("Resource usage is high")  # a real one that only looks alike
    assert [r.getMessage() for r in caplog.records] == ["Resource usage is high"]


def test_tensorflows_start_up_lines_are_dropped_and_other_output_kept(capfd):
    import os

    from ssdflow.patches.quiet import filtered_stderr

    with filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(
            2, b"I0000 00:00:1796227115.181065   16486 port.cc:153] oneDNN custom operations are on. You may see\n"
        )
        os.write(
            2, b"E0000 00:00:1796227989.852713   18851 cuda_platform.cc:52] failed call to cuInit: INTERNAL: (303)\n"
        )
        os.write(2, b"a real problem\n")
    assert capfd.readouterr().err == "a real problem\n"


def test_a_crash_inside_the_window_still_shows_what_came_before(capfd):
    import os

    from ssdflow.patches.quiet import filtered_stderr

    with pytest.raises(RuntimeError):
        with filtered_stderr():
            os.write(2, b"first line\n")
            raise RuntimeError("boom")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "first line\nafter\n"


def test_importing_the_model_package_prints_none_of_tensorflows_start_up_lines():
    """Where TensorFlow 2.21 ignores TF_CPP_MIN_LOG_LEVEL (tensorflow#100442): a fresh process's stderr."""
    import subprocess
    import sys

    from tests.helpers import REPO

    code = (
        "import model.anchors, tensorflow as tf; print(int(tf.constant(1) + 1), tf.__spec__.loader.__class__.__name__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0 and proc.stdout.split()[0] == "2", proc.stderr
    assert "Quiet" not in proc.stdout  # TensorFlow's own loader is back in place after the import
    for noise in ("absl::InitializeLog", "oneDNN custom operations", "cuda drivers", "cuInit", "cpu_feature_guard"):
        assert noise not in proc.stderr, proc.stderr

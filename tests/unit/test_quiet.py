"""A first run's console: Beam's false alarms on the root logger are dropped, real warnings are not."""

from __future__ import annotations

import logging

import ssdflow  # noqa: F401 - installs the filter


def test_false_alarms_are_dropped_and_other_warnings_kept(caplog):
    with caplog.at_level(logging.WARNING):
        logging.warning("Resource module is not available for current platform, memory usage cannot be fetched.")
        logging.warning("apitools not found, and bigquery client libraries are not available despite the import not raising an ImportError.")
        logging.warning("Resource usage is high")  # a real one that only looks alike
    assert [r.getMessage() for r in caplog.records] == ["Resource usage is high"]

"""Progress for the person waiting (ssdflow/progress.py): marks the workers leave, lines in a log."""

from __future__ import annotations

import io
import re
import time

from ssdflow import progress


def test_marks_add_up_by_their_names_alone(tmp_path, monkeypatch):
    """Each worker's latest mark carries its running total and replaces the one before, so the
    directory holds one mark per worker however many it wrote; a listing that catches a mark and
    its successor both (written, not yet deleted) counts the later one only."""
    monkeypatch.setattr(progress, "MARK_EVERY_S", 0.0)  # every add writes a mark
    a, b = progress.Marks(str(tmp_path)), progress.Marks(str(tmp_path))
    for _ in range(3):
        a.add(5)
    b.add(2)
    b.flush()  # nothing new since its mark: no second one
    assert progress.counted(str(tmp_path)) == 17
    assert all(p.stat().st_size == 0 for p in tmp_path.iterdir()) and len(list(tmp_path.iterdir())) == 2
    (tmp_path / f"{a.token}-000000-5").touch()  # a superseded mark that was not deleted yet
    assert progress.counted(str(tmp_path)) == 17
    assert progress.counted(str(tmp_path / "none-yet")) == 0


def test_marks_are_batched_in_time(tmp_path):
    marks = progress.Marks(str(tmp_path))
    for _ in range(1000):
        marks.add(1)
    assert progress.counted(str(tmp_path)) == 0  # within MARK_EVERY_S: one mark later, not a thousand files
    marks.flush()
    assert progress.counted(str(tmp_path)) == 1000 and len(list(tmp_path.iterdir())) == 1


def test_a_log_gets_plain_lines_with_rate_and_eta(monkeypatch):
    monkeypatch.setattr(progress, "POLL_S", 0.02)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.05)
    monkeypatch.setattr(progress, "CALLBACK_EVERY_S", 0.05)
    done = {"n": 0}
    seen = []
    stream = io.StringIO()  # not a terminal: plain lines
    with progress.Reporter(
        "score", lambda: done["n"], total=100, on_update=lambda d, t: seen.append((d, t)), stream=stream
    ) as reporter:
        for _ in range(10):
            done["n"] += 7
            time.sleep(0.03)
    text = stream.getvalue()
    assert "\x1b[" not in text  # no ANSI codes in a log
    lines = text.splitlines()
    assert len(lines) >= 3 and lines == reporter.lines
    assert re.fullmatch(
        r"score: \d+/100 images \(\d+%\), [\d.]+ images/s(, ETA \d:\d\d:\d\d)?, \d:\d\d:\d\d so far", lines[0]
    )
    assert lines[-1].startswith("score: 100/100 images (100%)") and lines[-1].endswith("(finished)")
    assert seen[-1] == (100, 100) and all(d <= 100 for d, _ in seen)


def test_a_failed_job_is_not_shown_finished():
    stream = io.StringIO()
    try:
        with progress.Reporter("ingest", lambda: 3, total=10, stream=stream):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert stream.getvalue().strip().splitlines()[-1].startswith("ingest: 3/10 images (30%)")
    assert "finished" not in stream.getvalue()


def test_a_total_learned_while_running():
    stream = io.StringIO()
    with progress.Reporter("ingest", lambda: 4, total=lambda: 8, stream=stream):
        pass
    assert stream.getvalue().strip().endswith("(finished)") and "8/8 images" in stream.getvalue()

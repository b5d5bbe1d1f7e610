"""Progress of a long job, for the person waiting on it: done / total, rate and ETA.

A Beam job's driver does not see its workers' data. The workers leave *marks* instead: every few
seconds each worker writes one empty file whose name carries how many units it has finished so far
(``DIR/<worker token>-<seq>-<total>``) and deletes its previous one, so a listing of the directory
alone sums the work done, on any runner and any storage, and the directory holds about one mark
per worker task, however long the job runs (a listing that sees a mark and its successor counts the
later one). The driver's :class:`Reporter` polls that sum (or any count,
such as committed chunks) and shows it:

- on a terminal: a rich progress bar, redrawn in place;
- in a log (not a terminal: a Prefect worker, cron, ``> job.log``): one plain line every
  ``LOG_EVERY_S`` seconds (``SSDFLOW_PROGRESS_SECONDS``), no ANSI codes;
- to a callback (a Prefect progress artifact), at most every ``CALLBACK_EVERY_S`` seconds.

A retried bundle may mark its work twice: progress is shown capped at the total, and the job's own
books (stats.json, summary.json) remain the counts that are exact.
"""

from __future__ import annotations

import logging
import os
import posixpath
import sys
import threading
import time
import uuid
from typing import Callable, TextIO

from ssdflow import storage

log = logging.getLogger(__name__)

MARK_EVERY_S = 5.0  # a worker writes at most one mark per this many seconds (and one when it finishes)
POLL_S = 2.0
LOG_EVERY_S = 10.0  # SSDFLOW_PROGRESS_SECONDS sets another
CALLBACK_EVERY_S = 5.0


class Marks:
    """Worker side: counts finished units and writes the running total as a mark (an empty file)
    under ``directory``, replacing its previous mark."""

    def __init__(self, directory: str):
        self.directory = directory
        self.token = uuid.uuid4().hex[:12]
        self.seq, self.total, self.marked, self.last = 0, 0, 0, time.monotonic()
        self.previous: str | None = None

    def add(self, n: int = 1) -> None:
        self.total += n
        if time.monotonic() - self.last >= MARK_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self.total != self.marked:
            path = storage.join(self.directory, f"{self.token}-{self.seq:06d}-{self.total}")
            try:
                storage.write_bytes(path, b"")
            except Exception as e:  # noqa: BLE001 - progress must never fail the job
                log.debug("progress mark not written: %s", e)
                return
            if self.previous is not None:
                try:  # the new mark counts already: a stale one left behind is outnumbered, never added
                    storage.delete([self.previous])
                except Exception as e:  # noqa: BLE001
                    log.debug("progress mark not removed: %s", e)
            self.seq, self.marked, self.previous = self.seq + 1, self.total, path
        self.last = time.monotonic()


def counted(directory: str) -> int:
    """The units the marks under ``directory`` add up to: each worker's latest total (0 when there
    are no marks yet)."""
    latest: dict[str, tuple[int, int]] = {}
    for path in storage.list_dir(directory):
        try:
            token, seq, total = posixpath.basename(path).rsplit("-", 2)
            mark = (int(seq), int(total))
        except ValueError:
            continue
        latest[token] = max(latest.get(token, mark), mark)
    return sum(total for _, total in latest.values())


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def line(job: str, done: int, total: int | None, unit: str, elapsed: float, rate: float | None = None) -> str:
    """``score: 1200/2000 images (60%), 44.1 images/s, ETA 0:00:18, 0:00:27 so far`` (plain text)."""
    rate = rate if rate is not None else (done / elapsed if elapsed > 0 else 0.0)
    if total:
        done = min(done, total)
        eta = f", ETA {_duration((total - done) / rate)}" if rate > 0 and done < total else ""
        return f"{job}: {done}/{total} {unit} ({100 * done / total:.0f}%), {rate:.1f} {unit}/s{eta}, {_duration(elapsed)} so far"
    return f"{job}: {done} {unit}, {rate:.1f} {unit}/s, {_duration(elapsed)} so far"


class Reporter:
    """Polls ``count()`` in a thread while the job runs and shows the progress (see the module doc).

    ``total``: a number, None (unknown: counts and rate only), or a callable polled like ``count``
    (0 or None until known), e.g. a count the job's listing stage marks.
    """

    def __init__(
        self,
        job: str,
        count: Callable[[], int],
        total: int | Callable[[], int | None] | None = None,
        unit: str = "images",
        on_update: Callable[[int, int | None], None] | None = None,
        stream: TextIO | None = None,
        start: int = 0,
    ):
        self.job, self.count, self.unit, self.on_update = job, count, unit, on_update
        self.total_of = total if callable(total) else None
        self.total = None if callable(total) else total
        self.stream = stream or sys.stderr
        self.start_count = start  # already done before this run (a rerun's committed chunks)
        self.done = start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None
        self.lines: list[str] = []  # what was printed to a log, for the caller's tests and summaries

    def _tty(self) -> bool:
        return hasattr(self.stream, "isatty") and self.stream.isatty() and os.environ.get("TERM") != "dumb"

    def __enter__(self) -> "Reporter":
        self.t0 = time.monotonic()
        if self._tty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn(f"{self.job}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.job, total=self.total)
        else:  # a log: a first line at once, so that it never waits a whole interval to hear of the job
            self._poll()
            self._show()
        self._thread = threading.Thread(target=self._run, name=f"{self.job}-progress", daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        try:
            if self.total_of is not None:
                self.total = self.total_of() or None
            self.done = self.start_count + self.count()
        except Exception as e:  # noqa: BLE001 - a listing that fails now is tried again at the next poll
            log.debug("progress: %s", e)

    def _show(self, final: bool = False) -> None:
        elapsed = time.monotonic() - self.t0
        rate = (self.done - self.start_count) / elapsed if elapsed > 0 else 0.0
        if self._bar is not None:
            self._bar.update(self._task, completed=min(self.done, self.total or self.done), total=self.total)
        else:
            text = line(self.job, self.done, self.total, self.unit, elapsed, rate) + (" (finished)" if final else "")
            self.lines.append(text)
            print(text, file=self.stream, flush=True)

    def _callback(self) -> None:
        if self.on_update is not None:
            try:
                self.on_update(min(self.done, self.total or self.done), self.total)
            except Exception as e:  # noqa: BLE001 - progress must never fail the job
                log.warning("progress: could not report: %s", e)
                self.on_update = None

    def _run(self) -> None:
        every = float(os.environ.get("SSDFLOW_PROGRESS_SECONDS") or LOG_EVERY_S)
        poll = min(POLL_S, every / 2)
        last_line = last_callback = time.monotonic()
        while not self._stop.wait(poll):
            self._poll()
            now = time.monotonic()
            if self._bar is not None or now - last_line >= every - poll:  # a poll late: still within ``every``
                self._show()
                last_line = now
            if now - last_callback >= CALLBACK_EVERY_S:
                self._callback()
                last_callback = now

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._poll()
        if exc_type is None and self.total is not None:
            self.done = max(self.done, self.total)  # the job's books are the truth; marks of a retried bundle aside
        self._show(final=exc_type is None)
        if exc_type is None:
            self._callback()
        if self._bar is not None:
            self._bar.stop()
        return False

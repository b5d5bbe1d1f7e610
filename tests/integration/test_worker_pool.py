"""Local worker processes started ahead of the run (ssdflow/patches/worker_pool.py): the run's work is done
by the processes started with the pipeline, none outlives the run, and a pipeline never run leaves
no worker behind."""

from __future__ import annotations

import gc
import os

import apache_beam as beam
import pytest

from ssdflow import beam_runner
from ssdflow.patches import worker_pool

pytestmark = pytest.mark.integration


def _where(_):
    return str(os.getpid()), os.environ.get("WORKER_ID", "")


def test_the_pre_started_workers_do_the_runs_work_and_exit_after_it(tmp_path):
    options = beam_runner.pipeline_options(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    p = beam_runner.make_pipeline(options, preload=("beam_jobs.ingest",))
    started = list(p.runner.workers.waiting)
    out = tmp_path / "where"
    (
        p
        | beam.Create(range(200))
        | beam.Reshuffle()
        | beam.Map(_where)
        | beam.Distinct()
        | beam.Map(" ".join)
        | beam.io.WriteToText(str(out), shard_name_template="")
    )
    p.run().wait_until_finish()
    rows = [line.split() for line in out.read_text().splitlines()]
    pids = {int(pid) for pid, _ in rows}
    assert pids and pids <= {proc.pid for proc in started}, (pids, [proc.pid for proc in started])
    assert all(worker_id.startswith("worker_") for _, worker_id in rows)  # told the job's details on stdin
    assert [proc.poll() for proc in started] == [0, 0]  # both exited, cleanly, with the run


def test_a_pipeline_that_is_never_run_leaves_no_worker_behind():
    pool = worker_pool.WorkerPool(2)
    procs = list(pool.waiting)
    pool.close()
    assert [proc.returncode for proc in procs] == [0, 0]  # end-of-file on stdin: exit without a job

    p = beam_runner.make_pipeline(
        beam_runner.pipeline_options(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    )
    procs = list(p.runner.workers.waiting)
    del p  # e.g. building it raised
    gc.collect()
    for proc in procs:
        proc.wait(timeout=10)
    assert [proc.returncode for proc in procs] == [0, 0]

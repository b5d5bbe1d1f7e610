"""Building Beam pipelines for ssdflow's jobs: options from explicit flags, the local runner, local parallelism.

``--runner=DirectRunner`` (the default) runs on :class:`ssdflow.patches.local_runner.LocalRunner`
(why: that module); every other runner is used as named. Left to itself the FnApiRunner runs a
pipeline in one process, on one core: ``local_parallelism`` gives a local job with enough input one
worker process per usable core unless the flags say otherwise.
"""

from __future__ import annotations

import logging
import os

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from ssdflow.patches.job_options import JobOptions
from ssdflow.patches.local_runner import LocalRunner, local_provision_info
from ssdflow.patches.s3_clients import share_s3_clients


log = logging.getLogger(__name__)
share_s3_clients()  # every process that builds or runs ssdflow's pipelines imports this module

# Below this many input files a local job stays in one process: starting the worker processes
# (each imports Beam and the job's modules) costs more than the second core saves (docs/benchmarks.md).
MULTI_PROCESS_MIN_FILES = 2000
_LOCAL = (None, "DirectRunner", "direct")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity: a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def local_parallelism(flags: list[str], input_files: int) -> list[str]:
    """``flags`` plus one DirectRunner worker process per usable core, when the job runs locally,
    has at least MULTI_PROCESS_MIN_FILES inputs, and the flags choose no running mode or worker count."""
    runner = PipelineOptions(flags=flags).view_as(StandardOptions).runner
    chosen = any(f.startswith(("--direct_running_mode", "--direct_num_workers")) for f in flags)
    cores = usable_cores()
    if runner not in _LOCAL or chosen or cores < 2 or input_files < MULTI_PROCESS_MIN_FILES:
        return list(flags)
    log.info("DirectRunner: %d worker processes, one per core (--direct_num_workers=1 for one process)", cores)
    return [*flags, "--direct_running_mode=multi_processing", f"--direct_num_workers={cores}"]


def pipeline_options(flags: list[str]) -> PipelineOptions:
    """Options from explicit flags only (never sys.argv, which belongs to the CLI or Prefect)."""
    options = JobOptions(flags=flags)
    FileSystems.set_options(options)  # driver-side I/O (listing, commit) sees S3/GCS options too
    return options


def worker_filesystems(flags: list[str]) -> None:
    """Gives this worker process's Beam FileSystems the job's S3/GCS options (endpoint, region …).

    Beam's own worker entry point does this, but an SDK harness that an external worker pool runs
    in-process (PortableRunner with ``--environment_type=EXTERNAL``, the way Flink and Spark run
    Python) never does, and its first s3:// call fails with "Must provide one of client or
    options". DoFns that touch storage call this from ``setup``; where the options are set already,
    setting the job's own options again changes nothing. (Local multi-process workers get the
    options from :class:`LocalRunner`'s provision info; this call is for the in-process pools.)
    """
    FileSystems.set_options(PipelineOptions(flags=flags))


def make_pipeline(options: PipelineOptions, preload: tuple[str, ...] = ()) -> beam.Pipeline:
    """A pipeline for ``options``' runner. A local ``multi_processing`` run's worker processes start
    now, importing Beam and ``preload`` (the job's modules) while the caller builds the pipeline."""
    runner = options.view_as(StandardOptions).runner
    if runner in _LOCAL:
        local = LocalRunner(
            provision_info=local_provision_info(options), workers=_local_workers(options), preload=preload
        )
        return beam.Pipeline(runner=local, options=options)
    return beam.Pipeline(options=options)


def _local_workers(options: PipelineOptions) -> int:
    """How many worker processes the FnApiRunner will start for these options (0: it runs in-process)."""
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "multi_processing":
        return 0
    if direct.direct_num_workers == 0:  # the FnApiRunner's "one per CPU"
        return os.cpu_count() or 1
    return direct.direct_num_workers or 1

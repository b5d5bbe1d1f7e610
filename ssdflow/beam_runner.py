"""Building Beam pipelines for ssdflow's jobs, with one local-runner fix.

Beam 2.77's DirectRunner first tries PrismRunner, which downloads a binary from the internet at
run time; offline that costs a failed lookup and a fallback on every run, and a machine that must
not reach outside hosts should not try. For ``--runner=DirectRunner`` we therefore hand the
pipeline straight to the FnApiRunner, which is what DirectRunner falls back to and which honours
``--direct_running_mode`` and ``--direct_num_workers``. Every other runner is used as named.

Left to itself the FnApiRunner runs a pipeline in one process, on one core. ``local_parallelism``
gives a local job with enough input one worker process per usable core unless the flags say otherwise.
"""

from __future__ import annotations

import logging
import os
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.portability import python_urns
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from ssdflow import worker_pool
from ssdflow.s3_clients import share_s3_clients


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


class JobOptions(PipelineOptions):
    """PipelineOptions whose views are made once per options class.

    Beam asks the pipeline's options for a view (``view_as``) some 600 times while it builds and runs
    an ingest job, and each call parses the flags again with a fresh argparse parser: 0.2 s of the
    driver's time before the first stage. A view holds no option values of its own (it reads and
    writes the dict it shares with these options), so the first view of a class serves every later
    call. Defines no options: Beam's parsers and ``get_all_options`` see the same set as before."""

    def view_as(self, cls):
        views = self.__dict__.setdefault("_views", {})  # not through __setattr__, which takes options only
        if cls not in views:
            views[cls] = super().view_as(cls)
        return views[cls]


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
            provision_info=_local_provision_info(options), workers=_local_workers(options), preload=preload
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


class LocalRunner(FnApiRunner):
    """The FnApiRunner, whose ``multi_processing`` workers are started ahead of the run
    (:mod:`ssdflow.worker_pool`) and run :mod:`ssdflow.beam_worker` (Beam's harness with a quiet
    console) instead of Beam's bare harness module."""

    BEAM_WORKER = f"{sys.executable} -m apache_beam.runners.worker.sdk_worker_main"

    def __init__(self, *, provision_info, workers: int = 0, preload: tuple[str, ...] = ()):
        super().__init__(provision_info=provision_info)
        self.workers = worker_pool.WorkerPool(workers, preload)

    def run_via_runner_api(self, pipeline_proto, options):
        for env in pipeline_proto.components.environments.values():
            if env.urn == python_urns.SUBPROCESS_SDK and env.payload.decode() == self.BEAM_WORKER:
                env.urn, env.payload = worker_pool.URN, self.workers.id.encode()
        try:
            return super().run_via_runner_api(pipeline_proto, options)
        finally:
            self.workers.close()  # any the run did not take


def _local_provision_info(options: PipelineOptions):
    """What the FnApiRunner's worker processes (multi_processing mode) are told about the job.

    Built directly, the FnApiRunner hands its workers no pipeline options at all: their Beam
    FileSystems then lack the job's S3/GCS options (endpoint, region, credentials flags), and each
    worker logs its harness chatter (channels opened, "sdk harness starting" …) at INFO on the
    user's console. Workers get the job's options as a portable runner would send them, with the
    harness log level at WARNING unless the flags chose one (``--default_sdk_harness_log_level``).
    """
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    chosen = options.get_all_options(drop_default=True)
    chosen.setdefault("default_sdk_harness_log_level", "WARNING")
    return ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(
            retrieval_token="unused-retrieval-token", pipeline_options=JobServiceHandle.encode_pipeline_options(chosen)
        )
    )

"""The local runner: Beam's FnApiRunner, used directly, with workers started ahead of the run.

Beam 2.77's DirectRunner first tries PrismRunner, which downloads a binary from the internet at
run time; offline that costs a failed lookup and a fallback on every run, and a machine that must
not reach outside hosts should not try. For ``--runner=DirectRunner`` :func:`ssdflow.beam_runner.make_pipeline`
therefore hands the pipeline straight to :class:`LocalRunner`, an FnApiRunner (what DirectRunner
falls back to, and which honours ``--direct_running_mode`` and ``--direct_num_workers``), whose
worker processes are started early (:mod:`ssdflow.patches.worker_pool`) and told the job's options.
"""

from __future__ import annotations

import sys

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import python_urns
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from ssdflow.patches import worker_pool


class LocalRunner(FnApiRunner):
    """The FnApiRunner, whose ``multi_processing`` workers are started ahead of the run
    (:mod:`ssdflow.patches.worker_pool`) and run :mod:`ssdflow.patches.beam_worker` (Beam's harness with a quiet
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


def local_provision_info(options: PipelineOptions):
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

"""Building Beam pipelines for ssdflow's jobs, with one local-runner fix.

Beam 2.77's DirectRunner first tries PrismRunner, which downloads a binary from the internet at
run time; offline that costs a failed lookup and a fallback on every run, and a machine that must
not reach outside hosts should not try. For ``--runner=DirectRunner`` we therefore hand the
pipeline straight to the FnApiRunner, which is what DirectRunner falls back to and which honours
``--direct_running_mode`` and ``--direct_num_workers``. Every other runner is used as named.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions


def pipeline_options(flags: list[str]) -> PipelineOptions:
    """Options from explicit flags only (never sys.argv, which belongs to the CLI or Prefect)."""
    options = PipelineOptions(flags=flags)
    FileSystems.set_options(options)  # driver-side I/O (listing, commit) sees S3/GCS options too
    return options


def make_pipeline(options: PipelineOptions) -> beam.Pipeline:
    runner = options.view_as(StandardOptions).runner
    if runner in (None, "DirectRunner", "direct"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)

"""ssdflow: keep an SSD object detector fresh on your own images (Beam ingest and scoring, Keras
training, Prefect orchestration)."""

import logging
from importlib import metadata

try:
    __version__ = metadata.version("ssdflow")
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"

from ssdflow import quiet

quiet.install()  # TensorFlow's C++ start-up lines stay out of the console (ssdflow/quiet.py)


class _FalseAlarms(logging.Filter):
    """Drops third-party warnings that are false alarms for ssdflow, so that a first run's console
    (and a flow run's log) shows what matters. Each is logged on the root logger by Beam:

    * "apitools not found, and bigquery client libraries are not available…": at import, where
      BigQuery's optional client is not installed; ssdflow never uses BigQuery.
    * "Resource module is not available for current platform…": RunInference's memory probe, once
      per batch on platforms without it; scoring does not depend on it.
    """

    PREFIXES = (
        "apitools not found, and bigquery client libraries",
        "Resource module is not available for current platform",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


logging.getLogger().addFilter(_FalseAlarms())

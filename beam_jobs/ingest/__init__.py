"""The ingest job: images + labels (VOC, COCO, CSV, YOLO) → sharded TFRecords, with every image accounted for.

Read :mod:`beam_jobs.ingest.pipeline` first: ``build_pipeline`` is the job as one sentence and
``run_ingest`` the driver around it. Each stage is a module, in pipeline order: ``listing``,
``labels``, ``join``, ``encoding``, ``dedup``, ``shards``, ``books``.
"""

from beam_jobs.ingest.errors import IngestError
from beam_jobs.ingest.pipeline import OUTPUT_PATTERNS, build_pipeline, run_ingest

__all__ = [
    "OUTPUT_PATTERNS",
    "IngestError",
    "build_pipeline",
    "run_ingest",
]

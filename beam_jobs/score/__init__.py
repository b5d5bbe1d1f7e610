"""The scoring job: image archives → detections in storage, with every image accounted for.

Read :mod:`beam_jobs.score.pipeline` first: the design notes, ``ScoreChunks`` (the one DoFn) and
``run_score`` (the driver). The stages, in the order a chunk meets them: ``chunks`` (planning,
listings, commits), ``model_ref`` (which model, its fingerprint), ``reading``, ``results`` (records
and a chunk's commit), then the driver's ``assemble`` with ``outputs`` and ``labelling``.
"""

from beam_jobs.score.errors import ScoreError
from beam_jobs.score.pipeline import OUTPUT_PATTERNS, build_pipeline, run_score

__all__ = ["OUTPUT_PATTERNS", "ScoreError", "build_pipeline", "run_score"]

"""The scoring job's one error type."""


class ScoreError(RuntimeError):
    """The job cannot start, or its results do not reconcile; the message says what to fix."""

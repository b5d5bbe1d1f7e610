"""The ingest job's one error type."""


class IngestError(RuntimeError):
    """The job cannot start or its result does not reconcile; the message says what to fix."""

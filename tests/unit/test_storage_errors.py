"""Which storage errors may pass (ssdflow/storage.py is_transient): scoring fails an image for good
on the others and scores its chunk again on the next run for these."""

from __future__ import annotations

import errno

import pytest

from ssdflow.storage import is_transient


class CodedError(Exception):
    """Shaped like Beam's S3ClientError and google-api-core's errors: an HTTP status as ``code``."""

    def __init__(self, code):
        super().__init__(f"HTTP {code}")
        self.code = code


class EndpointConnectionError(Exception):
    """Named like botocore's (which is not a builtin ConnectionError)."""


def _wrapped(cause: BaseException) -> Exception:
    """What Beam's S3 client does: ``raise S3ClientError(str(e), None)`` inside ``except``."""
    try:
        raise cause
    except BaseException:
        try:
            raise CodedError(None)
        except CodedError as e:
            return e


@pytest.mark.parametrize(
    "error",
    [
        CodedError(503),
        CodedError(500),
        CodedError(429),
        CodedError(408),
        CodedError("503"),
        TimeoutError("read timed out"),
        ConnectionResetError(errno.ECONNRESET, "reset"),
        EndpointConnectionError("could not connect"),
        _wrapped(EndpointConnectionError("could not connect")),
    ],
)
def test_throttling_timeouts_server_errors_and_lost_connections_may_pass(error):
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOENT, "Not found: s3://b/k"),  # Beam's S3 downloader on a 404
        PermissionError("denied"),
        IsADirectoryError("a directory"),
        CodedError(403),
        CodedError(404),
        CodedError(400),
        ValueError("something else"),
        _wrapped(ValueError("something else")),
    ],
)
def test_missing_forbidden_and_unknown_errors_are_final(error):
    assert not is_transient(error)

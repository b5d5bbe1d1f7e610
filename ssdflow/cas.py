"""Compare-and-swap of one small object (a pointer, a lease) on local disk, S3 and GCS.

An object store has no rename and no lock, but it can refuse a write whose precondition fails:

* S3: ``PutObject`` with ``If-Match: <ETag>`` (replace only what was read) or ``If-None-Match: *``
  (create only if absent); a failed precondition is 412 (or 409 when two conditional writes race);
* GCS: ``ifGenerationMatch=<generation>`` (``0``: only if absent); 412;
* local disk: ``os.replace`` under an exclusive ``flock`` of a lock file beside the object, after
  checking that the bytes are still those that were read.

``read`` returns the bytes with a token naming that state of the object; ``swap`` writes new bytes
only if the object is still in the state the token names, else raises :class:`Conflict`. A caller
loops: read, decide, swap; on a conflict read again and decide again. Two writers that race can
therefore never both win, nor can one overwrite the other's update unseen.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass

from ssdflow import storage


class Conflict(RuntimeError):
    """The object changed (or appeared, or went) since it was read: read it again and decide again."""


@dataclass(frozen=True)
class Versioned:
    """An object's bytes (None: absent) and the token a swap must still find (None: absent)."""

    data: bytes | None
    token: str | None

    @property
    def exists(self) -> bool:
        return self.data is not None


def read(uri: str) -> Versioned:
    scheme = _scheme(uri)
    if scheme == "s3":
        return _s3_read(uri)
    if scheme == "gs":
        return _gcs_read(uri)
    path = storage.local_path(uri)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return Versioned(None, None)
    return Versioned(data, _digest(data))


def swap(uri: str, data: bytes, expected: Versioned) -> Versioned:
    """Writes ``data`` if the object is still as ``expected`` (absent, when it was absent);
    returns the new state, else raises :class:`Conflict`."""
    scheme = _scheme(uri)
    if scheme == "s3":
        return _s3_swap(uri, data, expected)
    if scheme == "gs":
        return _gcs_swap(uri, data, expected)
    path = storage.local_path(uri)
    with _local_lock(path):
        current = read(path)
        if current.token != expected.token:
            raise Conflict(f"{uri} changed since it was read")
        storage.atomic_write_local(path, data)
    return Versioned(data, _digest(data))


def _scheme(uri: str) -> str:
    return "local" if storage.is_local(uri) else uri.split("://", 1)[0]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _local_lock(path: str):
    import fcntl

    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, f".{name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# --- S3: conditional PutObject ---------------------------------------------------------------------
def _s3_read(uri: str) -> Versioned:
    from apache_beam.io.aws import s3io

    bucket, key = s3io.parse_s3_path(uri)
    client = storage.s3_client(uri)
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except client.exceptions.NoSuchKey:
        return Versioned(None, None)
    return Versioned(response["Body"].read(), response["ETag"])


def _s3_swap(uri: str, data: bytes, expected: Versioned) -> Versioned:
    from apache_beam.io.aws import s3io
    from botocore.exceptions import ClientError

    bucket, key = s3io.parse_s3_path(uri)
    condition = {"IfMatch": expected.token} if expected.token is not None else {"IfNoneMatch": "*"}
    try:
        response = storage.s3_client(uri).put_object(Bucket=bucket, Key=key, Body=data, **condition)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        # 412: the precondition failed; 409: another conditional write to the key was in flight;
        # 404 with If-Match: the object was deleted since it was read.
        if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"):
            raise Conflict(f"{uri} changed since it was read ({code or status})") from None
        raise
    return Versioned(data, response["ETag"])


# --- GCS: generation preconditions ----------------------------------------------------------------
def _gcs_blob(uri: str):
    from google.cloud import storage as gcs  # apache-beam[gcp]

    bucket, _, name = uri[len("gs://") :].partition("/")
    return gcs.Client().bucket(bucket).blob(name)


def _gcs_read(uri: str) -> Versioned:
    from google.api_core import exceptions

    blob = _gcs_blob(uri)
    try:
        blob.reload()
        data = blob.download_as_bytes(if_generation_match=blob.generation)
    except exceptions.NotFound:
        return Versioned(None, None)
    return Versioned(data, str(blob.generation))


def _gcs_swap(uri: str, data: bytes, expected: Versioned) -> Versioned:
    from google.api_core import exceptions

    blob = _gcs_blob(uri)
    try:
        blob.upload_from_string(data, if_generation_match=int(expected.token) if expected.token is not None else 0)
    except exceptions.PreconditionFailed:
        raise Conflict(f"{uri} changed since it was read") from None
    return Versioned(data, str(blob.generation))

"""Spill files: many small records handed from one stage of the ingest job to a later one through a
file in the run's temp directory, so that only the file's name goes through Beam's shuffle.

Why files: per-image records through the shuffle cost seconds of per-element coding, and a local
runner's shuffle is its driver's memory (about 1.4 KB per image: 300 MB at 100,000 images). One file
per few hundred records keeps the driver's memory flat however large the archive, on every runner.

Why plain JSON: a worker reads these files back from storage that others may be able to write (on
Dataflow, Flink or Spark the temp location is often the bucket that also holds the job's staging
files). A file can only say data here (arrays, strings, numbers, and the few record types of
:mod:`beam_jobs.records`, named by class and rebuilt field by field), so reading one never runs
code, whoever wrote it; there is no key to keep secret. A SHA-256 of the body in the first line
catches a truncated or damaged file. A file that fails either check stops the run with an error
that names it (:class:`SpillError`).

File layout::

    ssdflow-spill 1 <SHA-256 of the body, hex>\\n
    <body: one JSON array of items>

An item is a JSON value: tuples and lists are arrays (read back as tuples; the items themselves as
a list), and a record is ``{"ClassName": [field, ...]}``, its fields in declaration order.
A retried bundle leaves files no element names; they go with the temp directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid

from apache_beam.io.filesystems import FileSystems

from beam_jobs import records as R
from ssdflow import storage

MAGIC = b"ssdflow-spill 1 "
# The only classes a spill file can name: plain data, built from their fields and nothing else.
RECORDS = (R.ImageFile, R.LabelRecord, R.BoxLabel, R.Rejection, R.ImageOutcome)
_FIELDS = {
    cls: (cls._fields if hasattr(cls, "_fields") else tuple(f.name for f in dataclasses.fields(cls))) for cls in RECORDS
}
_BY_NAME = {cls.__name__: cls for cls in RECORDS}
_SCALARS = (str, int, float, bool, type(None))


class SpillError(RuntimeError):
    """A spill file that this job did not write as it is: changed, truncated or forged."""


class Spill:
    """Writes lists of items to new files under ``directory`` and reads them back (see the module)."""

    def __init__(self, directory: str):
        self.directory = directory

    def write(self, items: list) -> str:
        """``items`` → the name of a new file holding them."""
        body = json.dumps([_plain(item) for item in items], separators=(",", ":")).encode("ascii")
        path = storage.join(self.directory, f"{uuid.uuid4().hex}.json")
        with FileSystems.create(path) as f:  # no fsync: a crash loses the run's temp directory anyway
            f.write(frame(body))
        return path

    def read(self, path: str) -> list:
        """The items of a file made by :meth:`write`, after checking its header and checksum."""
        return decode(storage.read_bytes(path), path)


def frame(body: bytes) -> bytes:
    """A spill file's bytes: the header line (magic, SHA-256 of ``body``), then ``body``."""
    return MAGIC + hashlib.sha256(body).hexdigest().encode("ascii") + b"\n" + body


def decode(data: bytes, path: str) -> list:
    """A spill file's bytes → its items; :class:`SpillError` naming ``path`` if they are not a
    spill file's, unchanged."""
    header, newline, body = data.partition(b"\n")
    if not newline or not header.startswith(MAGIC):
        raise SpillError(f"{path}: not a spill file of this job (no '{MAGIC.decode().strip()}' header); refusing it")
    if header[len(MAGIC) :] != hashlib.sha256(body).hexdigest().encode("ascii"):
        raise SpillError(
            f"{path}: spill file changed or truncated after it was written (its SHA-256 does not match); refusing it"
        )
    try:
        items = json.loads(body, object_hook=_record)
        if not isinstance(items, list):
            raise ValueError("the body is not a JSON array")
        return [_tuples(item) for item in items]
    except (ValueError, TypeError, RecursionError) as e:  # json's errors; a record's wrong fields; nesting too deep
        raise SpillError(f"{path}: not a spill file of this job ({e}); refusing it") from None


def _plain(value):
    """An item → JSON-ready lists, scalars and ``{"ClassName": [fields]}``."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is tuple or kind is list:
        return [_plain(v) for v in value]
    fields = _FIELDS.get(kind)
    if fields is None:
        raise TypeError(f"a {kind.__name__} cannot go into a spill file: only plain values and {', '.join(_BY_NAME)}")
    return {kind.__name__: [_plain(getattr(value, name)) for name in fields]}


def _record(obj: dict):
    """json's object hook: ``{"ClassName": [fields]}`` → that record (fields already decoded)."""
    if len(obj) != 1:
        raise ValueError(f"an object with {len(obj)} keys where a record was expected")
    ((name, fields),) = obj.items()
    cls = _BY_NAME.get(name)
    if cls is None or not isinstance(fields, list):
        raise ValueError(f"unknown record {name[:40]!r}")
    return cls(*(_tuples(v) for v in fields))


def _tuples(value):
    """JSON arrays back to the tuples they were written from (records hash and compare by them)."""
    return tuple(_tuples(v) for v in value) if type(value) is list else value

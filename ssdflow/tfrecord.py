"""TFRecord framing without TensorFlow.

A TFRecord file is a plain concatenation of frames::

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

Because frames are self-contained, files can be concatenated byte-wise and any frame can be
copied by its (offset, length) — which is how ingest compacts per-batch part files into the
final shards without re-parsing a single record. Workers that only write records need not
import TensorFlow (3 s and ~500 MB per process).
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Iterator

import google_crc32c

_MASK_DELTA = 0xA282EAD8


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record framed for a TFRecord file (len(data) + 16 bytes)."""
    header = struct.pack("<Q", len(data))
    return b"".join((header, struct.pack("<I", _masked_crc(header)), data, struct.pack("<I", _masked_crc(data))))


def frame_size(payload_len: int) -> int:
    return payload_len + 16


def read_records(stream: BinaryIO) -> Iterator[bytes]:
    """Yields the payloads of a TFRecord stream, verifying both checksums."""
    while True:
        header = stream.read(12)
        if not header:
            return
        if len(header) < 12:
            raise ValueError("truncated TFRecord header")
        (length,) = struct.unpack("<Q", header[:8])
        if struct.unpack("<I", header[8:])[0] != _masked_crc(header[:8]):
            raise ValueError("corrupt TFRecord length checksum")
        body = stream.read(length + 4)
        if len(body) < length + 4:
            raise ValueError("truncated TFRecord body")
        data = body[:length]
        if struct.unpack("<I", body[length:])[0] != _masked_crc(data):
            raise ValueError("corrupt TFRecord data checksum")
        yield data

"""Hash buckets: how the jobs group many keys into a few groups that one worker each can hold."""

from __future__ import annotations

import zlib


def hash_bucket(key: str, buckets: int) -> int:
    """``key``'s bucket in ``range(buckets)``: CRC-32 of its UTF-8 bytes, the same on every run,
    process and runner (Python's ``hash`` of a str is salted per process). File names that are not
    valid UTF-8 arrive with surrogate escapes and hash as their original bytes."""
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % buckets

"""Reading a chunk's images: a few threads ahead of the model, each file checked from its header (the
decompression-bomb guard), EXIF-rotated images turned upright, tar archives streamed."""

from __future__ import annotations

import tarfile
from collections import deque
from typing import NamedTuple, Union

from apache_beam.io.filesystems import FileSystems

from beam_jobs.patterns import is_image_name
from beam_jobs.records import (
    DECODE_ERROR,
    EMPTY_FILE,
    READ_RETRYABLE,
    UNDECODABLE_NAME,
    UNREADABLE,
    describe,
    is_text_name,
)
from beam_jobs.score.chunks import Chunk
from ssdflow import storage


class Scorable(NamedTuple):
    """An image the model can take: the bytes it should see and the size it is displayed at."""

    data: bytes
    width: int
    height: int


class Unscorable(NamedTuple):
    """An image that cannot be scored: a line of errors.jsonl."""

    reason: str  # ingest's reason where the problem is the same (empty_file, too_many_pixels, decode_error)
    detail: str


# What reading one file gives: None for a file that is not an image by name (skipped and counted).
Outcome = Union[Scorable, Unscorable, None]


def _inspect(data: bytes, max_pixels: int | None = None) -> Scorable:
    """The bytes for the model and the size as displayed, from the header alone for most images.

    Ingest's decompression-bomb guard, shared: a header claiming more than ``max_pixels``
    (default: ingest's default limit) raises ImageRejected (too_many_pixels) here, so a tiny file
    claiming 30,000 x 30,000 pixels never reaches TensorFlow's decoder. An image with an EXIF
    orientation (phone photos) is turned upright as ingest does, because TensorFlow's decoder
    ignores EXIF and the model was trained on upright pixels; boxes then refer to the upright image.
    """
    from beam_jobs.images import exif_orientation, normalize_image, open_header
    from ssdflow.config import DEFAULT_MAX_PIXELS

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    with open_header(data, limit) as img:
        size, orientation = img.size, exif_orientation(img)
    if orientation == 1:
        return Scorable(data, *size)
    upright = normalize_image(data, limit)
    return Scorable(upright.jpeg, upright.width, upright.height)


class ChunkReader:
    """A chunk's files, read by a small thread pool ``read_threads`` ahead of the consumer and yielded
    in listing order: on object storage each read is a round trip, and even locally reading the next
    batch overlaps the inference of this one (TensorFlow releases the GIL)."""

    def __init__(self, read_threads: int = 8, max_pixels: int | None = None):
        self.read_threads, self.max_pixels = read_threads, max_pixels
        self._pool = None

    def open(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(self.read_threads, thread_name_prefix="ssdflow-read")

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def members(self, chunk: Chunk):
        """(source, Outcome) for every file of the chunk, in order; tar members are streamed, never extracted."""
        if chunk.kind == "files":
            window = deque()
            for uri in chunk.uris:
                window.append((uri, self._pool.submit(read_image, uri, self.max_pixels)))
                if len(window) >= 4 * self.read_threads:  # bounded look-ahead: memory stays flat on big chunks
                    uri, future = window.popleft()
                    yield uri, future.result()
            while window:
                uri, future = window.popleft()
                yield uri, future.result()
            return
        (uri,) = chunk.uris
        try:
            with FileSystems.open(uri) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
                for member in tar:
                    source = f"{uri}#{member.name}"
                    if member.issym() or member.islnk():
                        yield source, Unscorable("link_member", "symbolic and hard links in archives are refused")
                    elif member.isfile():
                        yield source, check(source, tar.extractfile(member).read(), self.max_pixels)
                    elif not member.isdir():  # FIFOs, devices: never opened, but accounted for
                        why = f"tar member of type {member.type!r} is not a regular file"
                        yield source, Unscorable("special_member", why)
        except Exception as e:  # a storage or format error is this archive's problem, not the job's
            yield uri, Unscorable(READ_RETRYABLE if storage.is_transient(e) else "unreadable_archive", describe(e))


def _is_image_name(source: str) -> bool:
    return is_image_name(source.split("#", 1)[-1])


def check(source: str, data: bytes, max_pixels: int | None = None) -> Outcome:
    """One file's bytes → None for a file that is not an image by name (skipped), Unscorable, or
    Scorable with the bytes the model should see."""
    from beam_jobs.images import ImageRejected

    if not _is_image_name(source):
        return None
    if not is_text_name(source):  # Beam's coders and the JSON outputs need text names
        return Unscorable(UNDECODABLE_NAME, "file name is not valid UTF-8; rename the file")
    if not data:
        return Unscorable(EMPTY_FILE, "zero-byte file")
    try:
        return _inspect(data, max_pixels)
    except ImageRejected as e:
        return Unscorable(e.reason, e.detail[:500])
    except Exception as e:
        return Unscorable(DECODE_ERROR, describe(e))


def read_image(uri: str, max_pixels: int | None = None) -> Outcome:
    """Reads and header-checks one file (score's reader pool, predict), as :func:`check`."""
    if not _is_image_name(uri):
        return None  # never read what is skipped
    if not is_text_name(uri):
        return check(uri, b"", max_pixels)
    try:
        data = storage.read_bytes(uri)
    except Exception as e:  # transient errors are kept apart: a rerun scores their chunk again
        return Unscorable(READ_RETRYABLE if storage.is_transient(e) else UNREADABLE, describe(e))
    return check(uri, data, max_pixels)

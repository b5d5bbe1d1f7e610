"""Which files the jobs read: a location given as a directory, a glob or a file, and what counts as an image.

Shared by ingest, score and predict so that ``--images DIR`` means the same files everywhere.
"""

from __future__ import annotations

import os
import posixpath

from apache_beam.io.filesystems import FileSystems

from ssdflow import storage

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def extension(path: str) -> str:
    """The file extension, lower case, with its dot (``""`` when there is none)."""
    return posixpath.splitext(path)[1].lower()


def is_image_name(path: str) -> bool:
    return extension(path) in IMAGE_EXTENSIONS


def has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def is_dir(uri: str) -> bool:
    """A local directory; in object storage, a prefix (ends with ``/`` or names no object)."""
    if storage.is_local(uri):
        return os.path.isdir(uri)
    return uri.endswith("/") or not FileSystems.exists(uri)


def file_pattern(location: str) -> str:
    """A directory means every file below it, at any depth (``DIR/**``: images/train/…, date-partitioned
    archives); a glob or a file is taken as given. The jobs skip (and count) what they cannot use."""
    return location if has_glob(location) or not is_dir(location) else storage.join(location, "**")

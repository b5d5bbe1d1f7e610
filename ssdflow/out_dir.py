"""The guard on a job's ``--out``: a job writes only into a directory that is new, empty, or holds
its own earlier output.

ingest and score each replace their own earlier output in ``--out`` (their files, by pattern, and
``_SUCCESS`` last). A directory that holds another job's output, or files neither wrote, is refused
before anything runs, naming what is there: mixing two jobs' files under one ``_SUCCESS`` would make
an output that neither job can vouch for. ``--overwrite`` allows it, and the commit then removes
what was found, so the directory holds this job's output alone.
"""

from __future__ import annotations

import fnmatch
import os

from ssdflow import storage


class OutDirError(ValueError):
    """``--out`` cannot take this job's output; the message names what is there and the way out."""


def top_level(out: str) -> list[str]:
    """The names directly inside ``out`` (a directory name ends in ``/``); [] when it does not exist.
    On S3 one delimited listing, however many objects lie below."""
    if storage.is_local(out):
        path = storage.local_path(out)
        if not os.path.isdir(path):
            return []
        return sorted(e.name + ("/" if e.is_dir() else "") for e in os.scandir(path))
    if out.startswith("s3://"):
        bucket, _, key = out[len("s3://") :].partition("/")
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        names = set()
        for page in (
            storage.s3_client(out)
            .get_paginator("list_objects_v2")
            .paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        ):
            names.update(o["Key"][len(prefix) :] for o in page.get("Contents", ()))
            names.update(p["Prefix"][len(prefix) :] for p in page.get("CommonPrefixes", ()))
        return sorted(n for n in names if n)
    return sorted({rel.split("/", 1)[0] + ("/" if "/" in rel else "") for rel in storage.list_tree(out)})


def _is_file(out: str) -> bool:
    if storage.is_local(out):
        path = storage.local_path(out)
        return os.path.exists(path) and not os.path.isdir(path)
    return not out.endswith("/") and storage.exists(out)


def check(out: str, job: str, patterns: tuple[str, ...], overwrite: bool) -> list[str]:
    """Refuses an ``--out`` that is a file, or holds another job's output or files this job does not
    write (``patterns``: the globs, relative to ``out``, of what it writes: the ones its commit
    replaces, ``preview/*.jpg`` allowing the directory ``preview/``). Returns the top-level names
    ``--overwrite`` lets the commit remove ([] without it)."""
    if _is_file(out):
        raise OutDirError(f"--out {out} is a file: give a directory (it is created when missing)")
    names = top_level(out)
    own = {p.split("/", 1)[0] + "/" if "/" in p else p for p in patterns} | {storage.SUCCESS, storage.TMP_PREFIX + "*/"}
    foreign = [n for n in names if not any(fnmatch.fnmatchcase(n, pat) for pat in own)]
    if overwrite:
        return foreign  # another job's _SUCCESS goes with any commit
    other_job = None
    if storage.SUCCESS in names:
        try:
            other_job = (storage.read_success(out) or {}).get("job")
        except (ValueError, OSError, AttributeError):  # not a manifest of ours: the other names decide
            other_job = None
        if other_job == job:
            other_job = None
    if other_job:
        raise OutDirError(
            f"--out {out} holds a complete {other_job} output (its _SUCCESS says so): "
            f"give {job} a directory of its own, or --overwrite to replace that output"
        )
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutDirError(
            f"--out {out} holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} {job} does not write "
            f"({shown}): give a new or empty directory, or --overwrite to replace what is there"
        )
    return []

"""Chunks: the unit of scoring work and of resumption.

The input is cut into chunks (each tar archive; otherwise fixed groups of ``--chunk-size`` files in
sorted order). A chunk's id is a hash of everything that changes its results and of its listing
(paths, sizes, modification times); its results are committed under
``OUT/chunks/<model version>/<chunk id>/`` (``_SUCCESS`` last, naming the attempt whose files count).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable, TypeVar

from apache_beam.io.filesystems import FileSystems

from beam_jobs.patterns import file_pattern
from beam_jobs.score.errors import ScoreError
from ssdflow import storage


T = TypeVar("T")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
CHUNKS_DIR = "chunks"  # OUT/chunks/<model version>/<chunk id>/: each chunk's committed results
LISTING = "listing.json"  # a pending chunk's files, written by the driver, read by the worker that scores it


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    index: int
    kind: str  # "files" or "tar"
    uris: tuple[str, ...]


def is_tar(path: str) -> bool:
    return path.lower().endswith(TAR_SUFFIXES)


def plan_chunks(inputs: list[str], chunk_size: int, model_fingerprint: str) -> list[Chunk]:
    """Lists the inputs (driver side) and cuts them into chunks in a stable order.

    ``model_fingerprint`` should cover everything that changes a chunk's results (the model and
    the filtering settings), so a chunk id names one exact result.
    """
    files: dict[str, tuple[int, float]] = {}
    for spec in inputs:
        pattern = spec if is_tar(spec) else file_pattern(spec)  # a directory means its files, as in ingest
        result = FileSystems.match([pattern])[0]
        if not result.metadata_list:
            raise ScoreError(f"--images {spec}: no files found")
        for m in result.metadata_list:
            files[m.path] = (m.size_in_bytes, m.last_updated_in_seconds)
    tars = sorted(p for p in files if is_tar(p))
    plain = sorted(p for p in files if not is_tar(p))
    groups = [("tar", (t,)) for t in tars] + [
        ("files", tuple(plain[i : i + chunk_size])) for i in range(0, len(plain), chunk_size)
    ]

    def chunk_id(kind, uris):
        listing = json.dumps([model_fingerprint, kind, [(u, *files[u]) for u in uris]])
        return hashlib.sha256(listing.encode()).hexdigest()[:20]

    return [Chunk(chunk_id(kind, uris), i, kind, uris) for i, (kind, uris) in enumerate(groups)]


def chunk_dir(out: str, version: str, chunk_id: str) -> str:
    return storage.join(out, CHUNKS_DIR, version, chunk_id)


def for_each_chunk(fn: Callable[[Chunk], T], chunks: list[Chunk], threads: int = 16) -> list[T]:
    """``fn`` of each chunk, in order, run from a thread pool: per-chunk storage calls are
    latency-bound (an object store's round trip), and a run can have thousands of chunks."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, chunks))  # list(): re-raises the first failure


def write_listings(out: str, version: str, chunks: list[Chunk]) -> None:
    """Each pending chunk's listing beside its future commit: the pipeline then carries only chunk
    ids (a runner's job graph holds what ``Create`` gets, and an archive's listing can be gigabytes)."""

    def write(c: Chunk) -> None:
        storage.write_text(
            storage.join(chunk_dir(out, version, c.chunk_id), LISTING),
            json.dumps({"index": c.index, "kind": c.kind, "uris": list(c.uris)}),
        )

    for_each_chunk(write, chunks)


def prune_attempts(out: str, version: str, chunks: list[Chunk]) -> None:
    """Deletes the attempts that a chunk's ``_SUCCESS`` does not name: what a killed run's chunk in
    flight left, or the loser of a retried bundle. Only for chunks committed by this run: the
    others were pruned by the run that committed them. (``assemble`` reads the same small
    manifests again, one chunk at a time; pruning stays here, in parallel, because listing and
    deleting are the slow part on an object store.)"""

    def prune(c: Chunk) -> None:
        d = chunk_dir(out, version, c.chunk_id)
        keep = json.loads(storage.read_text(storage.join(d, storage.SUCCESS)))["attempt"]
        attempts = {u[len(d) + 1 :].split("/", 1)[0] for u in storage.list_files(storage.join(d, "*", "*"))}
        for attempt in sorted(attempts - {keep}):
            storage.delete_tree(storage.join(d, attempt))

    for_each_chunk(prune, chunks)


def committed(out: str, version: str, chunk_id: str) -> bool:
    """Whether a chunk's results are final: its ``_SUCCESS`` exists and no image in it failed for a
    reason that may pass (``read_error_retryable``); such a chunk is scored again by the next run."""
    try:
        manifest = json.loads(storage.read_text(storage.join(chunk_dir(out, version, chunk_id), storage.SUCCESS)))
    except FileNotFoundError:
        return False
    return not manifest.get("images_retryable")


def prune_other_versions(out: str, keep_version: str) -> list[str]:
    """Deletes ``OUT/chunks/<v>/`` of every model version but ``keep_version`` (a rerun reuses only
    the chunks of the model it scores with; another champion's are a full copy of every detection);
    returns the versions deleted."""
    root = storage.join(out, CHUNKS_DIR)
    found = {u[len(root) + 1 :].split("/", 1)[0] for u in storage.list_files(storage.join(root, "*", "*", "*"))}
    gone = sorted(v for v in found if v and v != keep_version)
    for version in gone:
        storage.delete_tree(storage.join(root, version))
    return gone


def read_listing(out: str, version: str, chunk_id: str) -> Chunk:
    listing = json.loads(storage.read_text(storage.join(chunk_dir(out, version, chunk_id), LISTING)))
    return Chunk(chunk_id, listing["index"], listing["kind"], tuple(listing["uris"]))

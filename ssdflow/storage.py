"""Paths and URIs (local, s3://, gs://) through Beam FileSystems, and the atomic output commit.

Output directories follow one protocol everywhere: files are written under a run-private temp
directory, moved into place, and ``_SUCCESS`` (a JSON manifest) is written last. A reader that
sees ``_SUCCESS`` sees a complete output; a crash at any point leaves no ``_SUCCESS``.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from typing import Callable, Iterable

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from ssdflow.patches.s3_clients import share_s3_clients

SUCCESS = "_SUCCESS"
TMP_PREFIX = ".ssdflow-tmp-"

if FileSystems._pipeline_options is None:  # noqa: SLF001 - Beam keeps them there
    # Outside a Beam job (training, the registry) nothing gives FileSystems options, and Beam's S3
    # filesystem refuses to work without any ("Must provide one of client or options"). Empty
    # options leave boto3 to its environment (AWS_ENDPOINT_URL, credentials, region); a job's own
    # options, set later (ssdflow.beam_runner, :func:`configure`), replace these.
    FileSystems.set_options(PipelineOptions(flags=[]))
share_s3_clients()  # one boto3 client per process and settings, not one per call (ssdflow/patches/s3_clients.py)


def configure(flags: list[str]) -> None:
    """Gives this process's storage calls object-store options in Beam's spelling
    (``--s3_endpoint_url=…``, ``--s3_region_name=…``); no flags leaves what is set."""
    if flags:
        FileSystems.set_options(PipelineOptions(flags=list(flags)))


def s3_client(uri: str):
    """The boto3 S3 client Beam's filesystem uses for ``uri`` (its endpoint, region, credentials),
    for the calls Beam does not make: an empty object, a conditional write."""
    from apache_beam.io.aws import s3io

    options = getattr(FileSystems.get_filesystem(uri), "_options", None)
    return s3io.S3IO(options=options if options is not None else {}).client.client


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base.rstrip("/"), *parts)


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    """The filesystem path of a local URI (``file://`` removed)."""
    return uri[len("file://") :] if uri.startswith("file://") else uri


def absolute(uri: str | None) -> str | None:
    """A local path made absolute (so that outputs name files unambiguously and workers in other
    directories agree); URIs, ``file://`` ones included, and None unchanged."""
    import os

    return os.path.abspath(uri) if uri and "://" not in uri else uri


def read_bytes(uri: str) -> bytes:
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def is_transient(error: BaseException) -> bool:
    """Whether a storage error may pass on its own: throttling (429), a timeout (408), a server
    error (5xx) or a dropped connection, after the retries of the client underneath (botocore's,
    Beam's) ran out. A missing or forbidden file, and anything unrecognized, is not.

    Beam wraps client errors in its own (``S3ClientError(str(e), code)``); the chain of causes is
    followed, so a connection error under a code-less wrapper still counts.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return False
        if isinstance(error, (TimeoutError, ConnectionError)):
            return True
        code = getattr(error, "code", None)
        if code is None:
            code = getattr(error, "status_code", None)
        try:
            code = int(code)
        except (TypeError, ValueError):
            code = None
        if code is not None:
            return code in (408, 429) or code >= 500
        # botocore's EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError; urllib3's alike
        if any("ConnectionError" in k.__name__ or "Timeout" in k.__name__ for k in type(error).__mro__):
            return True
        error = error.__cause__ or error.__context__
    return False


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Writes a whole file. Object stores commit on close; locally the file is synced to disk and
    renamed into place, so a ``_SUCCESS`` written after it never outlives its data in a power loss."""
    if is_local(uri):
        atomic_write_local(local_path(uri), data)
    elif not data and uri.startswith("s3://"):
        _put_empty_s3_object(uri)
    else:
        with FileSystems.create(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(data)


class StreamWriter:
    """A file written piece by piece (``with StreamWriter(uri) as w: w.write(b"...")``), never whole in
    memory: ``FileSystems.create`` streams to local disk or as a multipart upload. An empty file goes
    through :func:`write_bytes` (S3 refuses a multipart upload without parts). Only for files inside
    a temp directory that :func:`commit` moves into place: the file itself is not renamed."""

    def __init__(self, uri: str):
        self.uri, self._f = uri, None

    def __enter__(self) -> "StreamWriter":
        return self

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._f is None:
            if is_local(self.uri):
                _mkdirs(posixpath.dirname(self.uri))
            self._f = FileSystems.create(self.uri, compression_type=CompressionTypes.UNCOMPRESSED)
        self._f.write(data)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:  # the caller's error wins; the partial file is in a temp dir that goes
            if self._f is not None:
                import contextlib

                with contextlib.suppress(Exception):
                    self._f.close()
            return False
        if self._f is not None:
            self._f.close()
        else:
            write_bytes(self.uri, b"")
        return False


def _put_empty_s3_object(uri: str) -> None:
    """A zero-byte object on S3 (an errors.jsonl with no errors, a rejected.jsonl with no rejections).

    Beam's S3 writer is a multipart upload whose parts are sent only once there are bytes, and S3
    refuses to complete an upload without parts (400 MalformedXML), so through ``FileSystems.create``
    an empty file can never be written to s3://. One PutObject instead, through the boto3 client Beam
    builds from the same S3 options (endpoint, region, keys from the options or the environment; the
    same botocore retries). PutObject is atomic: the object exists whole or not at all.
    """
    from apache_beam.io.aws import s3io

    bucket, key = s3io.parse_s3_path(uri)
    s3_client(uri).put_object(Bucket=bucket, Key=key, Body=b"")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def exists(uri: str) -> bool:
    return FileSystems.exists(uri)


def _mkdirs(path: str) -> None:
    if path and is_local(path):
        import os

        os.makedirs(path, exist_ok=True)


def list_files(pattern: str) -> list[str]:
    """Paths matching a glob; an empty list (not an error) when nothing matches."""
    result = FileSystems.match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)


def any_file(pattern: str) -> bool:
    """Whether a glob matches at least one file (stops at the first; cheap on huge prefixes)."""
    return count_files(pattern, limit=1) > 0


def count_files(pattern: str, limit: int) -> int:
    """Files a glob matches, counted up to ``limit`` (a cheap lower bound on huge prefixes)."""
    return len(FileSystems.match([pattern], limits=[limit])[0].metadata_list)


def list_tree(uri: str) -> list[str]:
    """Every file below a directory URI (or object-store prefix), as paths relative to it, sorted."""
    base = uri.rstrip("/") + "/"
    if is_local(uri):
        import os

        root = local_path(base)
        return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)
    return [p[len(base) :] for p in list_files(join(uri, "**")) if p.startswith(base) and not p.endswith("/")]


def upload_tree(local: str, uri: str, files: Iterable[str] | None = None) -> list[str]:
    """Copies files under the local directory ``local`` to ``uri`` (any storage), keeping relative
    paths: ``files`` (relative paths, in that order) or every file; returns the paths copied."""
    import os
    import shutil

    copied = []
    for rel in list_tree(local) if files is None else files:
        target = join(uri, rel)
        if is_local(target):
            _mkdirs(posixpath.dirname(target))
        with open(os.path.join(local, rel), "rb") as src:
            if os.fstat(src.fileno()).st_size == 0:
                write_bytes(target, b"")
            else:
                with FileSystems.create(target, compression_type=CompressionTypes.UNCOMPRESSED) as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        copied.append(rel)
    return copied


def list_dir(uri: str) -> list[str]:
    """Files directly under a directory URI (local) or prefix (object stores)."""
    return [p for p in list_files(join(uri, "*")) if posixpath.basename(p)]


def move(src: str, dst: str) -> None:
    """Renames one file (a rename locally, copy + delete on object stores), creating parents."""
    _mkdirs(posixpath.dirname(dst))
    FileSystems.rename([src], [dst])


def delete(uris: Iterable[str]) -> None:
    uris = [u for u in uris if FileSystems.exists(u)]
    if uris:
        FileSystems.delete(uris)


def delete_tree(uri: str) -> None:
    """Removes a directory (local) or every object under a prefix."""
    if is_local(uri):
        import shutil

        shutil.rmtree(uri, ignore_errors=True)
    else:
        delete(list_files(join(uri, "**")))


def new_tmp_dir(out: str) -> str:
    """A run-private directory inside ``out`` (same filesystem, so moves are cheap renames)."""
    path = join(out, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}")
    _mkdirs(path)
    return path


def invalidate(out: str) -> None:
    """Marks ``out`` incomplete before a run starts overwriting it."""
    delete([join(out, SUCCESS)])


def commit(
    tmp_dir: str,
    out: str,
    names: list[str],
    manifest: dict,
    replace_patterns: Iterable[str] = (),
    remove: Iterable[str] = (),
) -> None:
    """Moves ``names`` from ``tmp_dir`` into ``out`` and writes ``_SUCCESS`` last.

    Files of a previous run in ``out`` matching ``replace_patterns`` are removed first, so a rerun
    replaces the old output wholly; so are ``remove`` (top-level names in ``out``, ``name/`` a
    directory: what ``--overwrite`` replaces, ssdflow/out_dir.py). ``_SUCCESS`` is deleted before
    anything else moves.
    """
    invalidate(out)
    old = {p for pat in replace_patterns for p in list_files(join(out, pat))}
    delete(sorted(old))
    for name in remove:
        if name.endswith("/"):
            delete_tree(join(out, name.rstrip("/")))
        else:
            delete([join(out, name)])
    _mkdirs(out)
    for n in names:  # one by one: names may hold subdirectories (preview/0001.jpg)
        move(join(tmp_dir, n), join(out, n))
    manifest = dict(manifest, files=sorted(names))
    write_text(join(out, SUCCESS), json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    delete_tree(tmp_dir)


def read_success(out: str) -> dict | None:
    """The ``_SUCCESS`` manifest of a complete output, or None when the output is not complete."""
    uri = join(out, SUCCESS)
    if not FileSystems.exists(uri):
        return None
    return json.loads(read_text(uri))


def cleanup_stale_tmp(out: str) -> None:
    """Removes temp directories that crashed runs left behind in ``out``."""
    if is_local(out):
        import glob
        import shutil

        for d in glob.glob(posixpath.join(out, TMP_PREFIX + "*")):
            shutil.rmtree(d, ignore_errors=True)
    else:
        delete([p for p in list_files(join(out, TMP_PREFIX + "*", "**"))])


def atomic_write_local(path, data: str | bytes) -> None:
    """Local file write that readers see whole or not at all: temp file in the same directory,
    fsync, os.replace, then fsync of the directory, so a ``_SUCCESS`` written after it never
    outlives its data in a power loss. Text is UTF-8. Mode 0644 (other services read these files)."""
    import contextlib
    import os
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path) -> None:
    """Makes a rename in ``path`` durable (best effort: not every filesystem allows it)."""
    import contextlib
    import os

    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_local(path, data) -> None:
    atomic_write_local(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json_object(path) -> dict:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def copy_tree_to_local(uri: str, dest: str, include: Callable[[str], bool] = lambda rel: True) -> list[str]:
    """Copies the files under a directory URI (or object-store prefix) whose relative path passes
    ``include`` into the local ``dest``, keeping relative paths; ``dest`` appears whole or not at all
    (built under a temp name, each file fsynced, renamed). Returns the relative paths copied. An
    existing ``dest`` is kept as it is (another process won the race)."""
    import os
    import shutil
    import tempfile

    files = [(join(uri, rel), rel) for rel in list_tree(uri) if include(rel)]
    if not files:
        raise FileNotFoundError(f"{uri}: no files to copy")
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.", dir=parent)
    try:
        for path, rel in files:
            if any(part in ("", ".", "..") for part in rel.split("/")):
                raise ValueError(f"{path}: refusing a path that would leave {dest}")
            target = os.path.join(tmp, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with (
                FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as src,
                open(target, "wb") as out,
            ):
                shutil.copyfileobj(src, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())  # a copy cut short by a host crash must not be trusted later
        try:
            os.rename(tmp, dest)
        except OSError:
            if not os.path.isdir(dest):  # not lost to a concurrent copy: a real failure
                raise
        fsync_dir(parent)
        return [rel for _, rel in files]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cache_root() -> str:
    """Where local copies of remote files live: ``$SSDFLOW_CACHE_DIR``, else a per-user directory in
    the temp dir. Created private (0700); refused when another user owns it or others may write to
    it, since a planted directory there would be loaded as a model."""
    import os
    import stat
    import tempfile

    root = os.environ.get("SSDFLOW_CACHE_DIR") or os.path.join(tempfile.gettempdir(), f"ssdflow-cache-{os.getuid()}")
    os.makedirs(root, mode=0o700, exist_ok=True)
    st = os.stat(root)
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(
            f"cache directory {root} must belong to this user and not be writable by others "
            "(set SSDFLOW_CACHE_DIR to a private directory)"
        )
    return root


def local_dir(
    uri: str,
    key: str,
    include: Callable[[str], bool] = lambda rel: True,
    is_valid: Callable[[str], bool] = lambda path: True,
) -> str:
    """A local directory with the contents of ``uri``: the path itself when it is local, else a copy
    under :func:`cache_root` made once per ``key`` (e.g. a content fingerprint) and reused by later
    calls from any process of this user on the machine (they wait for a copy in progress rather than
    download it again). A copy that fails ``is_valid`` is replaced.

    Why: TensorFlow reads SavedModels from local disk and gs:// only (its s3:// support moved out, to
    tensorflow-io), and a remote worker should fetch a model once, not once per bundle.
    """
    import fcntl
    import os
    import re
    import shutil

    if is_local(uri):
        return local_path(uri)
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", key) or key.startswith("."):
        raise ValueError(f"cache key {key!r}: letters, digits, '.', '_', '-' only")
    root = cache_root()
    dest = os.path.join(root, key)
    with open(os.path.join(root, f".{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per machine; the others wait for it
        if os.path.isdir(dest) and not is_valid(dest):
            shutil.rmtree(dest)
        if not os.path.isdir(dest):
            copy_tree_to_local(uri, dest, include)
            if not is_valid(dest):
                raise ValueError(
                    f"{uri}: the local copy does not match {key} (the source changed while it was copied?)"
                )
    return dest

"""Where jobs may read and write: the roots in ``SSDFLOW_ALLOWED_ROOTS``.

A Prefect server lets anyone who reaches it start runs with any parameters; a worker then reads and
writes wherever its credentials allow. With ``SSDFLOW_ALLOWED_ROOTS=/data,s3://bucket/ssdflow``
(comma-separated; set for ``ssdflow serve`` and the workers), every location field of the job configs
(``Location``) must lie under one of them:

* the JSON schema that Prefect registers with each deployment carries the roots as a ``pattern``,
  so the server refuses a run outside them when it is created (HTTP 409), before any worker sees it;
* the pydantic validator checks again where the run starts, after resolving ``..`` and symlinks,
  which a pattern cannot see.

Unset (the default on one machine), locations are not restricted.
"""

from __future__ import annotations

import os
import re
from typing import Annotated

from pydantic import AfterValidator

ENV = "SSDFLOW_ALLOWED_ROOTS"


def normalize(uri: str) -> str | None:
    """A comparable form: local paths absolute with symlinks resolved (what the OS will open);
    ``scheme://bucket/key`` as written, minus a trailing slash. None for an object-store URI with
    ``.``, ``..`` or empty segments: S3 and GCS keys do not collapse them, so no prefix test is safe."""
    uri = uri.strip()
    if "://" in uri:
        scheme, _, rest = uri.partition("://")
        segments = rest.rstrip("/").split("/")
        if any(seg in ("", ".", "..") for seg in segments):
            return None
        return f"{scheme.lower()}://{'/'.join(segments)}"
    return os.path.realpath(uri)


def _raw_roots() -> list[str]:
    """The roots as written in the environment."""
    return [r.strip() for r in os.environ.get(ENV, "").split(",") if r.strip()]


def allowed_roots() -> list[str]:
    """The roots, normalized; each must be absolute (a relative root would differ between processes)."""
    roots = []
    for raw in _raw_roots():
        root = normalize(raw)
        if root is None or ("://" not in raw and not os.path.isabs(raw)):
            raise ValueError(f"{ENV}: {raw!r} is not an absolute path or a bucket URI without '.', '..' or '//'")
        roots.append(root)
    return roots


def is_under(uri: str, root: str) -> bool:
    path = normalize(uri)
    return path is not None and (path == root or path.startswith(root.rstrip("/") + "/"))


def check(uri: str) -> str:
    """``uri`` unchanged if it lies under an allowed root (or none are set); ValueError otherwise."""
    roots = allowed_roots()
    if roots and not any(is_under(uri, root) for root in roots):
        raise ValueError(f"{uri} is outside the allowed roots ({', '.join(roots)}; {ENV})")
    return uri


def _escape(text: str) -> str:
    """Regex-escapes only what needs it, so the pattern reads the same in Python and in JavaScript (the UI)."""
    return re.sub(r"[\\^$.|?*+()\[\]{}]", lambda m: "\\" + m.group(0), text)


def pattern(raw_roots: list[str]) -> str:
    """A JSON-schema regex accepting the locations under ``raw_roots`` with no ``.``/``..`` segment.
    Each local root appears as written and symlink-resolved: the server sees paths as users type them."""
    spellings = {spelling.rstrip("/") for raw in raw_roots for spelling in (raw.strip(), normalize(raw) or raw.strip())}
    return rf"^(?!.*/\.{{1,2}}(?:/|$))(?:{'|'.join(sorted(_escape(s) for s in spellings))})(?:/|$)"


class _RootsPattern:
    """Adds the roots' pattern to the JSON schema at the time the schema is made (deployment registration)."""

    def __get_pydantic_json_schema__(self, core_schema, handler):
        schema = handler(core_schema)
        if not allowed_roots():  # also refuses a malformed SSDFLOW_ALLOWED_ROOTS
            return schema
        return {**schema, "pattern": pattern(_raw_roots())}


Location = Annotated[str, AfterValidator(check), _RootsPattern()]

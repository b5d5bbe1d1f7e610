"""The model registry on a local filesystem, and champion/challenger promotion.

Layout under MODELS (``models_root``)::

    MODELS/<version>/            a committed model: SavedModel + label_map.json, metrics.json,
                                 model_card.md (written by training), decision.json (written here)
    MODELS/.staging-<version>/   a model being written; never listed, never promoted
    MODELS/champion.json         {"version", "promoted_at", "metrics", "decision"}: the live model
    MODELS/decisions.jsonl       one JSON line per promotion decision, promoted or not

Invariants: a version directory only ever appears complete (it is written under ``.staging-`` and
renamed into place in one ``rename``), and champion.json is replaced atomically (temp file +
``os.replace``) and only ever names a committed version. Promotions hold an exclusive lock on
``MODELS/.promotion.lock`` so two runs cannot both read the same champion and race to replace it.

The challenger's metrics come from its own metrics.json (computed on the current val split at
training time); the champion is re-scored on that same current split through ``evaluate_fn``, so the
two numbers compared are on the same data even when the val split changed since the champion was
promoted.

No TensorFlow in this module: ``evaluate_fn`` (which loads a SavedModel) is the caller's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import secrets
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Literal, Mapping

import pydantic

from ssdflow import storage
from ssdflow.config import GENERATED_VERSION_RE
from ssdflow.schema import LabelMap

CHAMPION = "champion.json"
DECISIONS = "decisions.jsonl"
DECISION = "decision.json"
METRICS = "metrics.json"
LABEL_MAP = "label_map.json"
STAGING_PREFIX = ".staging-"
LOCK = ".promotion.lock"

_TS_FORMAT = "%Y%m%dT%H%M%SZ"
# Version names are plain directory names; a leading dot is reserved (staging, lock), so no
# non-version entry can ever be listed as a version.
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_GENERATED_RE = GENERATED_VERSION_RE  # one definition: the configs recognise version dirs by it

_issue_lock = threading.Lock()
_last_issued: str | None = None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(t: datetime | None = None) -> str:
    return (t or _now()).isoformat(timespec="seconds").replace("+00:00", "Z")


def _check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION_RE.match(version) or version in {CHAMPION, DECISIONS}:
        raise ValueError(f"invalid model version name: {version!r}")
    return version


def _atomic_write_text(path: Path, text: str) -> None:
    storage.atomic_write_local(path, text)


def _write_json(path: Path, data) -> None:
    storage.write_json_local(path, data)


def _read_json(path: Path) -> dict:
    return storage.read_json_object(path)


# --- versions ------------------------------------------------------------------------------------


def new_version(models_root: str | os.PathLike) -> str:
    """A new version id, ``<UTC YYYYmmddTHHMMSSZ>-<4 hex>``, e.g. ``20261125T143012Z-3fa2``.

    Ids sort in creation order: if an id with the current second (or later) was already issued by
    this process or exists under ``models_root`` (committed or staging), the timestamp is moved one
    second past it. The random suffix keeps ids from concurrent processes distinct.
    """
    global _last_issued
    latest = _last_issued
    root = Path(models_root)
    if root.is_dir():
        for entry in root.iterdir():
            name = entry.name[len(STAGING_PREFIX):] if entry.name.startswith(STAGING_PREFIX) else entry.name
            if _GENERATED_RE.match(name) and (latest is None or name > latest):
                latest = name
    with _issue_lock:
        if _last_issued is not None and (latest is None or _last_issued > latest):
            latest = _last_issued
        t = _now().replace(microsecond=0)
        if latest is not None:
            latest_t = datetime.strptime(_GENERATED_RE.match(latest).group(1), _TS_FORMAT).replace(tzinfo=timezone.utc)
            if t <= latest_t:
                t = latest_t + timedelta(seconds=1)
        version = f"{t.strftime(_TS_FORMAT)}-{secrets.token_hex(2)}"
        _last_issued = version
    return version


def version_dir(models_root: str | os.PathLike, version: str) -> Path:
    """MODELS/<version> (whether or not it exists)."""
    return Path(models_root) / _check_version(version)


def staging_dir(models_root: str | os.PathLike, version: str) -> Path:
    """Creates (if needed) and returns MODELS/.staging-<version>/, where a version is written."""
    if version_dir(models_root, version).exists():
        raise FileExistsError(f"version {version} is already committed")
    path = Path(models_root) / f"{STAGING_PREFIX}{version}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def commit_version(models_root: str | os.PathLike, version: str) -> Path:
    """Renames MODELS/.staging-<version> to MODELS/<version> in one rename (same filesystem), so the
    version directory appears complete or not at all. Refuses if the version is already committed."""
    target = version_dir(models_root, version)
    staging = Path(models_root) / f"{STAGING_PREFIX}{version}"
    if not staging.is_dir():
        raise FileNotFoundError(f"no staging directory for version {version}: {staging}")
    # rename(2) would silently replace an *empty* existing directory, hence the explicit check.
    if target.exists() or target.is_symlink():
        raise FileExistsError(f"version {version} is already committed: {target}")
    os.rename(staging, target)
    storage.fsync_dir(target.parent)
    return target


def list_versions(models_root: str | os.PathLike) -> list[str]:
    """Committed versions, sorted: directories holding a label map, as every export does (staging
    directories, files and other directories, such as an older nightly flow's ``nightly/``
    history, are not versions)."""
    root = Path(models_root)
    if not root.is_dir():
        return []
    return sorted(
        e.name for e in root.iterdir()
        if e.is_dir() and _VERSION_RE.match(e.name) and e.name not in {CHAMPION, DECISIONS} and (e / LABEL_MAP).is_file()
    )


def committed_dir(models_root: str | os.PathLike, version: str) -> Path:
    """MODELS/<version>, refusing a version that is not committed (missing, or still staging)."""
    path = version_dir(models_root, version)
    if not path.is_dir():
        raise FileNotFoundError(f"version {version} is not committed under {models_root} (no {path})")
    return path


# --- champion ------------------------------------------------------------------------------------


def read_champion(models_root: str | os.PathLike) -> dict | None:
    path = Path(models_root) / CHAMPION
    if not path.exists():
        return None
    return _read_json(path)


def set_champion(models_root: str | os.PathLike, version: str, decision: dict) -> dict:
    """Points champion.json at a committed version (atomically). Raises FileNotFoundError if
    MODELS/<version> is missing (or still staging), so champion.json never names a half-written model.
    Returns the champion record written."""
    vdir = committed_dir(models_root, version)
    metrics_path = vdir / METRICS
    record = {
        "version": version,
        "promoted_at": _iso(),
        "metrics": _read_json(metrics_path) if metrics_path.exists() else {},
        "decision": decision,
    }
    _write_json(Path(models_root) / CHAMPION, record)
    return record


# --- decisions -----------------------------------------------------------------------------------


def label_map_diff(champion: Mapping[str, int], challenger: Mapping[str, int]) -> dict:
    """What changed from the champion's label map to the challenger's."""
    added = sorted(set(challenger) - set(champion))
    removed = sorted(set(champion) - set(challenger))
    renumbered = {
        name: [int(champion[name]), int(challenger[name])]
        for name in sorted(set(champion) & set(challenger))
        if int(champion[name]) != int(challenger[name])
    }
    return {
        "added": added,
        "removed": removed,
        "renumbered": renumbered,
        "identical": not (added or removed or renumbered),
    }


class PromotionPolicy(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    # Promote if challenger_score >= champion_score - tolerance (absolute, in metric units).
    tolerance: float = pydantic.Field(default=0.0, ge=0.0, le=1.0)
    metric: Literal["mAP@.5", "mAP"] = "mAP@.5"
    # A quality floor (TFX's value threshold, beside the change threshold above): a challenger whose
    # score is below it is never promoted, the first champion included.
    min_score: float = pydantic.Field(default=0.0, ge=0.0, le=1.0)
    # "refuse": any label-map difference blocks promotion. "promote_if_only_added": a challenger that
    # only adds classes is promoted (with a warning); removed or renumbered classes always block.
    on_label_map_change: Literal["refuse", "promote_if_only_added"] = "refuse"


def _score(metrics: Mapping | None, metric: str) -> float | None:
    if not metrics:
        return None
    value = metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def describe_diff(diff: dict) -> str:
    parts = []
    if diff["added"]:
        parts.append(f"added {diff['added']}")
    if diff["removed"]:
        parts.append(f"removed {diff['removed']}")
    if diff["renumbered"]:
        parts.append("renumbered " + ", ".join(f"{n} {o}→{w}" for n, (o, w) in diff["renumbered"].items()))
    return "; ".join(parts)


def decide(
    challenger_version: str,
    challenger_metrics: dict | None,
    challenger_label_map: Mapping[str, int],
    champion: dict | None,
    champion_metrics_on_current_val: dict | None,
    champion_label_map: Mapping[str, int] | None,
    policy: PromotionPolicy | None = None,
) -> dict:
    """The promotion decision record for a challenger against the champion (``champion.json``'s
    contents, or None), whose metrics must be from the same current val split as the challenger's.

    Rules, in order: a challenger without a finite score on the policy metric is never promoted,
    nor one scoring below the policy's floor (``min_score``); with no champion it is promoted; if label maps differ, removed or renumbered classes refuse
    under every policy, and added-only classes refuse under "refuse" or promote with a warning under
    "promote_if_only_added" (scores are recorded, but not compared: mAP over different class sets is
    not comparable); with identical label maps, promote iff challenger >= champion - tolerance.
    """
    policy = policy or PromotionPolicy()
    metric = policy.metric
    challenger_score = _score(challenger_metrics, metric)
    champion_version = champion.get("version") if champion else None
    champion_score = _score(champion_metrics_on_current_val, metric) if champion else None
    diff = (label_map_diff(champion_label_map, challenger_label_map)
            if champion is not None and champion_label_map is not None else None)

    def record(promoted: bool, reason: str) -> dict:
        return {
            "challenger": challenger_version,
            "champion": champion_version,
            "metric": metric,
            "challenger_score": challenger_score,
            "champion_score": champion_score,
            "tolerance": policy.tolerance,
            "min_score": policy.min_score,
            "label_map_diff": diff,
            "promoted": promoted,
            "reason": reason,
            "decided_at": _iso(),
        }

    if challenger_score is None:
        return record(False, f"not promoted: challenger {challenger_version} has no {metric} score")
    if challenger_score < policy.min_score:
        return record(False, f"not promoted: {metric} {challenger_score:.4f} is below the floor {policy.min_score:g} "
                             f"(--min-map)")
    if champion is None:
        return record(True, f"promoted: no champion yet ({metric} {challenger_score:.4f})")
    if diff is None:
        return record(False, f"not promoted: champion {champion_version} has no label map to compare with")
    if not diff["identical"]:
        what = describe_diff(diff)
        if diff["removed"] or diff["renumbered"]:
            return record(False, f"not promoted: label map changed ({what}); removed or renumbered classes "
                                 f"are never promoted automatically")
        if policy.on_label_map_change == "refuse":
            return record(False, f"not promoted: label map changed ({what}) and the policy refuses any change")
        champ = "n/a" if champion_score is None else f"{champion_score:.4f}"
        return record(True, f"promoted with warning: challenger adds classes {diff['added']}; {metric} "
                            f"{challenger_score:.4f} vs champion {champ} was not compared, since scores over "
                            f"different class sets are not comparable")
    if champion_score is None:
        return record(False, f"not promoted: champion {champion_version} has no {metric} score on the current "
                             f"val split, so the challenger cannot be compared")
    threshold = champion_score - policy.tolerance
    cmp = (f"{metric} {challenger_score:.4f} vs champion {champion_version} {champion_score:.4f} "
           f"(tolerance {policy.tolerance:g})")
    if challenger_score >= threshold:
        return record(True, f"promoted: {cmp}")
    return record(False, f"not promoted: {cmp}")


def _append_line(path: Path, line: str) -> None:
    """One os.write of one whole line on an O_APPEND descriptor, so lines never interleave. A torn
    last line (a crash mid-write) is ended first, so it spoils only itself, not this line."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write appending to {path}")
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _promotion_lock(models_root: Path):
    models_root.mkdir(parents=True, exist_ok=True)
    fd = os.open(models_root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_label_map(path: Path) -> LabelMap:
    return LabelMap.parse(path.read_text(encoding="utf-8"), path.name)


def promote_if_better(
    models_root: str | os.PathLike,
    challenger_version: str,
    evaluate_fn: Callable[[Path], dict],
    policy: PromotionPolicy | None = None,
) -> dict:
    """Decides whether a committed challenger replaces the champion, records it, and promotes it.

    ``evaluate_fn(champion_dir)`` must return the champion's metrics on the CURRENT val split (the
    split the challenger's metrics.json was computed on); it is only called when there is a champion.
    The decision goes to MODELS/decisions.jsonl (one line per call) and to the challenger's
    decision.json; champion.json changes only if the challenger is promoted.
    """
    policy = policy or PromotionPolicy()
    root = Path(models_root)
    challenger_dir = committed_dir(root, challenger_version)
    challenger_metrics = _read_json(challenger_dir / METRICS)
    challenger_label_map = _read_label_map(challenger_dir / LABEL_MAP)

    with _promotion_lock(root):
        champion = read_champion(root)
        champion_metrics = champion_label_map = None
        if champion is not None:
            if champion.get("version") == challenger_version:
                raise ValueError(f"{challenger_version} is already the champion")
            champion_dir = committed_dir(root, champion["version"])
            label_map_path = champion_dir / LABEL_MAP
            champion_label_map = _read_label_map(label_map_path) if label_map_path.exists() else None
            champion_metrics = evaluate_fn(champion_dir)

        decision = decide(challenger_version, challenger_metrics, challenger_label_map, champion,
                          champion_metrics, champion_label_map, policy)
        _write_json(challenger_dir / DECISION, decision)
        _append_line(root / DECISIONS, json.dumps(decision, sort_keys=True, allow_nan=False))
        if decision["promoted"]:
            set_champion(root, challenger_version, decision)
    return decision


# --- management by hand (``ssdflow models``) --------------------------------------------------------


def read_decisions(models_root: str | os.PathLike) -> list[dict]:
    """MODELS/decisions.jsonl, oldest first ([] if there is none). A torn last line (a crash mid-append
    on a filesystem without atomic appends) is skipped, never fatal."""
    path = Path(models_root) / DECISIONS
    if not path.exists():
        return []
    decisions = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                decisions.append(record)
    return decisions


def champion_history(models_root: str | os.PathLike) -> list[str]:
    """The champions in the order they took over, the current one last, replayed from decisions.jsonl:
    a promotion (automatic or by hand) pushes its version, a rollback pops. A champion.json that the
    log does not explain (written by an older ssdflow) is appended, so the last entry is always the
    current champion."""
    stack: list[str] = []
    for d in read_decisions(models_root):
        if d.get("action") == "rollback":
            if stack:
                stack.pop()
        elif d.get("promoted") and d.get("challenger"):
            stack.append(d["challenger"])
    champion = read_champion(models_root)
    if champion is not None and (not stack or stack[-1] != champion.get("version")):
        stack.append(champion["version"])
    return stack


def describe_versions(models_root: str | os.PathLike) -> list[dict]:
    """One row per committed version, oldest first: its metrics, its promotion decision and whether
    it is the champion (what ``ssdflow models list`` prints)."""
    root = Path(models_root)
    champion = (read_champion(root) or {}).get("version")
    rows = []
    for version in list_versions(root):
        vdir = root / version
        metrics = _read_json(vdir / METRICS) if (vdir / METRICS).exists() else {}
        decision = _read_json(vdir / DECISION) if (vdir / DECISION).exists() else {}
        rows.append({"version": version, "champion": version == champion,
                     "mAP@.5": _score(metrics, "mAP@.5"), "mAP": _score(metrics, "mAP"),
                     "promoted": decision.get("promoted"), "reason": decision.get("reason")})
    return rows


def _manual_record(action: str, version: str, previous: str | None, by: str, reason: str) -> dict:
    return {"action": action, "challenger": version, "champion": previous, "promoted": True, "manual": True,
            "by": by, "reason": f"{action} by hand: {reason}", "decided_at": _iso()}


def promote_version(models_root: str | os.PathLike, version: str, by: str, reason: str) -> dict:
    """Makes a committed version the champion by hand, whatever its metrics (the person decides);
    recorded in decisions.jsonl and champion.json with who and why. Returns the decision record."""
    root = Path(models_root)
    committed_dir(root, version)
    with _promotion_lock(root):
        previous = (read_champion(root) or {}).get("version")
        if previous == version:
            raise ValueError(f"{version} is already the champion")
        decision = _manual_record("promote", version, previous, by, reason)
        _append_line(root / DECISIONS, json.dumps(decision, sort_keys=True, allow_nan=False))
        set_champion(root, version, decision)
    return decision


def rollback(models_root: str | os.PathLike, by: str, reason: str) -> dict:
    """Makes the previous champion the champion again (undoes the last promotion; a second rollback
    goes one further back). Refuses when there is no previous champion or its directory is gone."""
    root = Path(models_root)
    with _promotion_lock(root):
        history = champion_history(root)
        if len(history) < 2:
            raise ValueError(f"{root}: no previous champion to roll back to "
                             f"({'no champion at all' if not history else 'only ' + history[0] + ' was ever champion'})")
        current, target = history[-1], history[-2]
        committed_dir(root, target)
        decision = _manual_record("rollback", target, current, by, reason)
        _append_line(root / DECISIONS, json.dumps(decision, sort_keys=True, allow_nan=False))
        set_champion(root, target, decision)
    return decision


def resolve_model_uri(model: str) -> str:
    """What ``--model`` names, resolved to one exported model: the directory itself when it holds a
    SavedModel, else a models directory's champion. Local paths, s3:// and gs:// alike (read through
    Beam FileSystems, so object-store options such as ``--s3_endpoint_url`` apply)."""
    base = str(model).rstrip("/") or "/"
    if storage.exists(storage.join(base, "saved_model.pb")):
        return base
    champion_uri = storage.join(base, CHAMPION)
    if storage.exists(champion_uri):
        try:
            version = _check_version(json.loads(storage.read_text(champion_uri))["version"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{champion_uri}: not a champion record ({e})") from None
        model_dir = storage.join(base, version)
        if not storage.exists(storage.join(model_dir, "saved_model.pb")):
            raise FileNotFoundError(f"{champion_uri} names version {version}, which is not committed (no {model_dir}/saved_model.pb)")
        return model_dir
    raise FileNotFoundError(f"{model}: neither a SavedModel directory nor a models directory with a champion.json")


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """:func:`resolve_model_uri` for a local path (what the local-only commands accept)."""
    if not storage.is_local(str(path)):
        raise ValueError(f"{path}: a local path is needed here")
    return Path(resolve_model_uri(str(path)))

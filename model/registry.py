"""The model registry on any storage Beam FileSystems reaches (local disk, s3://, gs://), and
champion/challenger promotion.

Layout under MODELS (``models_root``)::

    MODELS/<version>/            a committed model: SavedModel + label_map.json, metrics.json,
                                 model_card.md (written by training), decision.json (written here),
                                 _SUCCESS (the version's manifest, written last)
    MODELS/.staging-<version>/   (local disk) a model being written; never listed, never promoted
    MODELS/champion.json         {"version", "promoted_at", "metrics", "decision"}: the live model
    MODELS/decisions.jsonl       (local disk) one JSON line per promotion decision, promoted or not
    MODELS/decisions/<t>-<r>.json (object storage) one object per decision; name order is time order

Invariants, on every storage:

* a version only ever appears complete. On local disk it is written under ``.staging-`` and renamed
  into place in one ``rename``; an object store has no rename, so the version's files are uploaded
  under their final names and its manifest (``_SUCCESS``) is written last: readers list only
  versions whose manifest exists;
* champion.json changes only by compare-and-swap (:mod:`ssdflow.cas`: S3 ``If-Match``, GCS
  generation preconditions, ``os.replace`` under a lock on local disk) and only ever names a
  committed version. A promotion reads the pointer, decides, and swaps; when another promotion
  changed the pointer in between, it reads it again and decides again, so two racing promotions
  can never both win, and no decision is made against a champion that was already replaced;
* every decision is recorded once, after the pointer (if it moves) has moved.

The challenger's metrics come from its own metrics.json (computed on the current val split at
training time); the champion is re-scored on that same current split through ``evaluate_fn``, so the
two numbers compared are on the same data even when the val split changed since the champion was
promoted.

No TensorFlow in this module: ``evaluate_fn`` (which loads a SavedModel) is the caller's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import posixpath
import re
import secrets
import shutil
import threading
from datetime import datetime, timedelta, timezone
from typing import Callable, Literal, Mapping

import pydantic

from ssdflow import cas, storage
from ssdflow.config import GENERATED_VERSION_RE
from ssdflow.schema import LabelMap

CHAMPION = "champion.json"
DECISIONS = "decisions.jsonl"
DECISIONS_DIR = "decisions"
DECISION = "decision.json"
METRICS = "metrics.json"
LABEL_MAP = "label_map.json"
MANIFEST = storage.SUCCESS
SAVED_MODEL = "saved_model.pb"  # every version has one; an ingest or score output beside them does not
STAGING_PREFIX = ".staging-"
# How often a promotion reads, decides and tries to swap before it gives up: each retry means
# another promotion changed the champion in between, which takes seconds (a champion evaluation).
MAX_SWAPS = 100

_TS_FORMAT = "%Y%m%dT%H%M%SZ"
# Version names are plain directory names; a leading dot is reserved (staging, lock), so no
# non-version entry can ever be listed as a version.
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_GENERATED_RE = GENERATED_VERSION_RE  # one definition: the configs recognise version dirs by it
_NOT_VERSIONS = {CHAMPION, DECISIONS, DECISIONS_DIR}

_issue_lock = threading.Lock()
_last_issued: str | None = None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(t: datetime | None = None) -> str:
    return (t or _now()).isoformat(timespec="seconds").replace("+00:00", "Z")


def _check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION_RE.match(version) or version in _NOT_VERSIONS:
        raise ValueError(f"invalid model version name: {version!r}")
    return version


def _root(models_root) -> str:
    """MODELS as a URI: a local path made absolute (any ``os.PathLike`` accepted), URIs unchanged."""
    return storage.absolute(os.fspath(models_root).rstrip("/") or "/")


def _read_json(uri: str) -> dict:
    data = json.loads(storage.read_text(uri))
    if not isinstance(data, dict):
        raise ValueError(f"{uri}: expected a JSON object")
    return data


def _write_json(uri: str, data) -> None:
    storage.write_text(uri, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def _read_json_if_exists(uri: str) -> dict:
    return _read_json(uri) if storage.exists(uri) else {}


# --- versions ------------------------------------------------------------------------------------


def _entries(root: str) -> tuple[set[str], set[str]]:
    """(names directly under MODELS, the version names among them that are committed), from one
    listing: on local disk a committed version is a directory holding a label map (every export
    writes one; the rename made it whole), on an object store a prefix holding its manifest."""
    if storage.is_local(root):
        path = storage.absolute(root)
        if not os.path.isdir(path):
            return set(), set()
        names = set(os.listdir(path))
        return names, {
            n
            for n in names
            if _VERSION_RE.match(n) and n not in _NOT_VERSIONS and _committed_here(os.path.join(path, n))
        }
    files = set(storage.list_tree(root))
    names = {f.split("/", 1)[0] for f in files}
    return names, {
        f.split("/", 1)[0]
        for f in files
        if f.count("/") == 1
        and f.endswith("/" + MANIFEST)
        and _VERSION_RE.match(f.split("/", 1)[0])
        and f.split("/", 1)[0] not in _NOT_VERSIONS
        and f"{f.split('/', 1)[0]}/{SAVED_MODEL}" in files
    }  # an ingest or score output has a _SUCCESS too


def new_version(models_root) -> str:
    """A new version id, ``<UTC YYYYmmddTHHMMSSZ>-<4 hex>``, e.g. ``20261125T143012Z-3fa2``.

    Ids sort in creation order: if an id with the current second (or later) was already issued by
    this process or exists under ``models_root`` (committed or staging), the timestamp is moved one
    second past it. The random suffix keeps ids from concurrent processes distinct.
    """
    global _last_issued
    latest = _last_issued
    for entry in _entries(_root(models_root))[0]:
        name = entry[len(STAGING_PREFIX) :] if entry.startswith(STAGING_PREFIX) else entry
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


def version_dir(models_root, version: str) -> str:
    """MODELS/<version> (whether or not it exists)."""
    return storage.join(_root(models_root), _check_version(version))


def is_committed(models_root, version: str) -> bool:
    root = _root(models_root)
    if storage.is_local(root):
        return _committed_here(version_dir(root, version))
    vdir = version_dir(root, version)
    return storage.exists(storage.join(vdir, MANIFEST)) and storage.exists(storage.join(vdir, SAVED_MODEL))


def _committed_here(path: str) -> bool:
    """A local version directory (which a rename made whole) with its manifest, or with the label
    map that every export writes (versions committed before manifests were)."""
    return os.path.isfile(os.path.join(path, SAVED_MODEL)) and (
        os.path.isfile(os.path.join(path, MANIFEST)) or os.path.isfile(os.path.join(path, LABEL_MAP))
    )


def _local_staging(root: str, version: str) -> str:
    """Where a version is written before its commit: beside it on local disk (so that the commit is
    a rename), in this machine's cache directory for an object store (TensorFlow writes
    SavedModels to local disk; the commit uploads them)."""
    if storage.is_local(root):
        return os.path.join(storage.absolute(root), f"{STAGING_PREFIX}{version}")
    where = hashlib.sha256(root.encode()).hexdigest()[:12]
    return os.path.join(storage.cache_root(), "staging", f"{where}-{version}")


def staging_dir(models_root, version: str) -> str:
    """Creates (if needed) and returns the local directory a version is written in before
    :func:`commit_version`; refuses a version that is committed already."""
    root = _root(models_root)
    if storage.exists(version_dir(root, version)) or is_committed(root, version):
        raise FileExistsError(f"version {version} is already committed")
    path = _local_staging(root, version)
    os.makedirs(path, exist_ok=True)
    return path


def commit_version(models_root, version: str) -> str:
    """Makes the staged version MODELS/<version>, complete or not at all: one rename on local disk;
    on an object store its files are uploaded and its manifest written last. Refuses a version
    that is committed already. Returns MODELS/<version>."""
    root = _root(models_root)
    target = version_dir(root, version)
    staging = _local_staging(root, version)
    if not os.path.isdir(staging):
        raise FileNotFoundError(f"no staging directory for version {version}: {staging}")
    files = storage.list_tree(staging)
    manifest = {"version": version, "committed_at": _iso(), "files": sorted(files)}
    if storage.is_local(root):
        # rename(2) would silently replace an *empty* existing directory, hence the explicit check.
        if os.path.lexists(target):
            raise FileExistsError(f"version {version} is already committed: {target}")
        storage.write_json_local(os.path.join(staging, MANIFEST), manifest)
        os.rename(staging, target)
        storage.fsync_dir(os.path.dirname(target))
        return target
    if is_committed(root, version):
        raise FileExistsError(f"version {version} is already committed: {target}")
    storage.upload_tree(staging, target)
    _write_json(storage.join(target, MANIFEST), manifest)  # last: the version exists from here on
    shutil.rmtree(staging, ignore_errors=True)
    return target


def list_versions(models_root) -> list[str]:
    """Committed versions, sorted (staging directories, uploads without a manifest, files and other
    directories, such as an older nightly flow's ``nightly/`` history, are not versions)."""
    return sorted(_entries(_root(models_root))[1])


def committed_dir(models_root, version: str) -> str:
    """MODELS/<version>, refusing a version that is not committed (missing, or still staging)."""
    path = version_dir(models_root, version)
    if not is_committed(models_root, version):
        raise FileNotFoundError(f"version {version} is not committed under {models_root} (no {path})")
    return path


def local_copy(model_dir: str) -> str:
    """An exported model directory on local disk, for what TensorFlow must load from a file: the
    directory itself when it is local, else a copy in this machine's cache, made once per content
    (keyed by the URI and the bytes of its manifest, or of its saved_model.pb when it has none)."""
    if storage.is_local(model_dir):
        return storage.local_path(model_dir)
    base = model_dir.rstrip("/")
    marker = (
        storage.join(base, MANIFEST)
        if storage.exists(storage.join(base, MANIFEST))
        else storage.join(base, "saved_model.pb")
    )
    digest = hashlib.sha256(base.encode() + b"\0" + storage.read_bytes(marker)).hexdigest()[:24]
    return storage.local_dir(
        base, f"model-{digest}", is_valid=lambda path: os.path.isfile(os.path.join(path, "saved_model.pb"))
    )


# --- champion ------------------------------------------------------------------------------------


def _parse_champion(pointer: cas.Versioned, uri: str) -> dict | None:
    if not pointer.exists:
        return None
    try:
        record = json.loads(pointer.data)
    except ValueError as e:
        raise ValueError(f"{uri}: not a champion record ({e})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{uri}: expected a JSON object")
    return record


def read_champion(models_root) -> dict | None:
    uri = storage.join(_root(models_root), CHAMPION)
    return _parse_champion(cas.read(uri), uri)


def _champion_record(root: str, version: str, decision: dict) -> dict:
    vdir = committed_dir(root, version)
    return {
        "version": version,
        "promoted_at": _iso(),
        "metrics": _read_json_if_exists(storage.join(vdir, METRICS)),
        "decision": decision,
    }


def set_champion(models_root, version: str, decision: dict, expected: cas.Versioned | None = None) -> dict:
    """Points champion.json at a committed version. Raises FileNotFoundError if MODELS/<version> is
    not committed, so champion.json never names a half-written model. With ``expected`` (the
    pointer as read), a compare-and-swap that raises :class:`ssdflow.cas.Conflict` when the pointer
    changed since; without, whatever it points at now is replaced. Returns the record written."""
    root = _root(models_root)
    record = _champion_record(root, version, decision)
    uri = storage.join(root, CHAMPION)
    data = (json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    if expected is None:
        for _ in range(MAX_SWAPS):
            with contextlib.suppress(cas.Conflict):
                cas.swap(uri, data, cas.read(uri))
                return record
        raise cas.Conflict(f"{uri}: changed {MAX_SWAPS} times while being replaced")
    cas.swap(uri, data, expected)
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
    Kept whole: the rules read top to bottom in the order they apply, each with its reason.
    """
    policy = policy or PromotionPolicy()
    metric = policy.metric
    challenger_score = _score(challenger_metrics, metric)
    champion_version = champion.get("version") if champion else None
    champion_score = _score(champion_metrics_on_current_val, metric) if champion else None
    diff = (
        label_map_diff(champion_label_map, challenger_label_map)
        if champion is not None and champion_label_map is not None
        else None
    )

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
        return record(
            False, f"not promoted: {metric} {challenger_score:.4f} is below the floor {policy.min_score:g} (--min-map)"
        )
    if champion is None:
        return record(True, f"promoted: no champion yet ({metric} {challenger_score:.4f})")
    if diff is None:
        return record(False, f"not promoted: champion {champion_version} has no label map to compare with")
    if not diff["identical"]:
        what = describe_diff(diff)
        if diff["removed"] or diff["renumbered"]:
            return record(
                False,
                f"not promoted: label map changed ({what}); removed or renumbered classes "
                f"are never promoted automatically",
            )
        if policy.on_label_map_change == "refuse":
            return record(False, f"not promoted: label map changed ({what}) and the policy refuses any change")
        champ = "n/a" if champion_score is None else f"{champion_score:.4f}"
        return record(
            True,
            f"promoted with warning: challenger adds classes {diff['added']}; {metric} "
            f"{challenger_score:.4f} vs champion {champ} was not compared, since scores over "
            f"different class sets are not comparable",
        )
    if champion_score is None:
        return record(
            False,
            f"not promoted: champion {champion_version} has no {metric} score on the current "
            f"val split, so the challenger cannot be compared",
        )
    threshold = champion_score - policy.tolerance
    cmp = (
        f"{metric} {challenger_score:.4f} vs champion {champion_version} {champion_score:.4f} "
        f"(tolerance {policy.tolerance:g})"
    )
    if challenger_score >= threshold:
        return record(True, f"promoted: {cmp}")
    return record(False, f"not promoted: {cmp}")


def _append_line(path: str, line: str) -> None:
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


def _record_decision(root: str, decision: dict) -> None:
    """Adds a decision to the log: a line of decisions.jsonl on local disk, one object under
    decisions/ on an object store (which cannot append), named so that names sort in time order."""
    line = json.dumps(decision, sort_keys=True, allow_nan=False)
    if storage.is_local(root):
        os.makedirs(root, exist_ok=True)
        _append_line(os.path.join(root, DECISIONS), line)
        return
    name = f"{_now().strftime('%Y%m%dT%H%M%S.%fZ')}-{secrets.token_hex(4)}.json"
    storage.write_text(storage.join(root, DECISIONS_DIR, name), line + "\n")


def _read_label_map(uri: str) -> LabelMap:
    return LabelMap.parse(storage.read_text(uri), posixpath.basename(uri))


def _swap_loop(root: str, decide_once: Callable[[dict | None], tuple[dict, bool]]) -> dict:
    """Reads the champion, lets ``decide_once(champion)`` return (decision, move the pointer?), and
    moves the pointer by compare-and-swap; when another promotion moved it in between, decides
    again against the new champion. The decision is recorded once, after the pointer moved."""
    uri = storage.join(root, CHAMPION)
    for _ in range(MAX_SWAPS):
        pointer = cas.read(uri)
        decision, move = decide_once(_parse_champion(pointer, uri))
        if move:
            try:
                set_champion(root, decision["challenger"], decision, expected=pointer)
            except cas.Conflict:
                continue
        _record_decision(root, decision)
        return decision
    raise cas.Conflict(f"{uri}: changed {MAX_SWAPS} times while a promotion was being decided")


def promote_if_better(
    models_root,
    challenger_version: str,
    evaluate_fn: Callable[[str], dict],
    policy: PromotionPolicy | None = None,
) -> dict:
    """Decides whether a committed challenger replaces the champion, records it, and promotes it.

    ``evaluate_fn(champion_dir)`` must return the champion's metrics on the CURRENT val split (the
    split the challenger's metrics.json was computed on); it is only called when there is a champion,
    once per champion. The decision goes to the decision log and to the challenger's decision.json;
    champion.json changes only if the challenger is promoted.
    """
    policy = policy or PromotionPolicy()
    root = _root(models_root)
    challenger_dir = committed_dir(root, challenger_version)
    challenger_metrics = _read_json(storage.join(challenger_dir, METRICS))
    challenger_label_map = _read_label_map(storage.join(challenger_dir, LABEL_MAP))
    evaluated: dict[str, tuple] = {}

    def decide_once(champion: dict | None) -> tuple[dict, bool]:
        champion_metrics = champion_label_map = None
        if champion is not None:
            if champion.get("version") == challenger_version:
                raise ValueError(f"{challenger_version} is already the champion")
            version = champion["version"]
            if version not in evaluated:
                champion_dir = committed_dir(root, version)
                label_map_uri = storage.join(champion_dir, LABEL_MAP)
                evaluated[version] = (
                    _read_label_map(label_map_uri) if storage.exists(label_map_uri) else None,
                    evaluate_fn(champion_dir),
                )
            champion_label_map, champion_metrics = evaluated[version]
        decision = decide(
            challenger_version,
            challenger_metrics,
            challenger_label_map,
            champion,
            champion_metrics,
            champion_label_map,
            policy,
        )
        return decision, decision["promoted"]

    decision = _swap_loop(root, decide_once)
    _write_json(storage.join(challenger_dir, DECISION), decision)
    return decision


# --- management by hand (``ssdflow models``) --------------------------------------------------------


def read_decisions(models_root) -> list[dict]:
    """The decision log, oldest first ([] if there is none). A torn line of decisions.jsonl (a crash
    mid-append on a filesystem without atomic appends) is skipped, never fatal."""
    root = _root(models_root)
    if storage.is_local(root):
        path = os.path.join(root, DECISIONS)
        lines = open(path, encoding="utf-8").read().splitlines() if os.path.exists(path) else []
    else:
        lines = [
            storage.read_text(storage.join(root, DECISIONS_DIR, name))
            for name in storage.list_tree(storage.join(root, DECISIONS_DIR))
            if name.endswith(".json")
        ]
    decisions = []
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                decisions.append(record)
    return decisions


def champion_history(models_root) -> list[str]:
    """The champions in the order they took over, the current one last, replayed from the decision
    log: a promotion (automatic or by hand) pushes its version, a rollback pops. A champion.json
    that the log does not explain (written by an older ssdflow, or a crash between the swap and
    the log) is appended, so the last entry is always the current champion."""
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


def describe_versions(models_root) -> list[dict]:
    """One row per committed version, oldest first: its metrics, its promotion decision and whether
    it is the champion (what ``ssdflow models list`` prints)."""
    root = _root(models_root)
    champion = (read_champion(root) or {}).get("version")
    rows = []
    for version in list_versions(root):
        vdir = version_dir(root, version)
        metrics = _read_json_if_exists(storage.join(vdir, METRICS))
        decision = _read_json_if_exists(storage.join(vdir, DECISION))
        rows.append(
            {
                "version": version,
                "champion": version == champion,
                "mAP@.5": _score(metrics, "mAP@.5"),
                "mAP": _score(metrics, "mAP"),
                "promoted": decision.get("promoted"),
                "reason": decision.get("reason"),
            }
        )
    return rows


def _manual_record(action: str, version: str, previous: str | None, by: str, reason: str) -> dict:
    return {
        "action": action,
        "challenger": version,
        "champion": previous,
        "promoted": True,
        "manual": True,
        "by": by,
        "reason": f"{action} by hand: {reason}",
        "decided_at": _iso(),
    }


def promote_version(models_root, version: str, by: str, reason: str) -> dict:
    """Makes a committed version the champion by hand, whatever its metrics (the person decides);
    recorded in the decision log and champion.json with who and why. Returns the decision record."""
    root = _root(models_root)
    committed_dir(root, version)

    def decide_once(champion: dict | None) -> tuple[dict, bool]:
        previous = (champion or {}).get("version")
        if previous == version:
            raise ValueError(f"{version} is already the champion")
        return _manual_record("promote", version, previous, by, reason), True

    return _swap_loop(root, decide_once)


def rollback(models_root, by: str, reason: str) -> dict:
    """Makes the previous champion the champion again (undoes the last promotion; a second rollback
    goes one further back). Refuses when there is no previous champion or its directory is gone."""
    root = _root(models_root)

    def decide_once(champion: dict | None) -> tuple[dict, bool]:
        history = champion_history(root)
        if len(history) < 2:
            raise ValueError(
                f"{root}: no previous champion to roll back to "
                f"({'no champion at all' if not history else 'only ' + history[0] + ' was ever champion'})"
            )
        current, target = history[-1], history[-2]
        committed_dir(root, target)
        return _manual_record("rollback", target, current, by, reason), True

    return _swap_loop(root, decide_once)


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
            raise FileNotFoundError(
                f"{champion_uri} names version {version}, which is not committed (no {model_dir}/saved_model.pb)"
            )
        return model_dir
    raise FileNotFoundError(f"{model}: neither a SavedModel directory nor a models directory with a champion.json")


def resolve_model_dir(path) -> str:
    """:func:`resolve_model_uri` as a local directory: a model in object storage is copied to this
    machine's cache first (what the commands that load a SavedModel with TensorFlow need)."""
    return local_copy(resolve_model_uri(os.fspath(path)))

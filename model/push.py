"""Hands the champion to a model server (TFX's Pusher): ``BASE/<integer>/``, the layout TensorFlow
Serving polls (``tensorflow_model_server --model_base_path=BASE``), on local disk or a bucket.

    BASE/1/saved_model.pb, fingerprint.pb, variables/…, assets/label_map.pbtxt, assets/label_map.json,
           assets.extra/ssdflow_push.json   {"version": registry version, "models", "pushed_at", "fingerprint"}
    BASE/2/…                                 the next champion; TensorFlow Serving serves the highest

A push writes a new, higher integer whenever the champion differs from the one the highest
integer holds (a rollback is pushed as a new version too: servers only ever move up), and nothing
when it is the same. On local disk the version appears in one rename; on an object store its
saved_model.pb is uploaded last, after the variables it needs (TensorFlow Serving treats a version
directory without saved_model.pb as not yet loadable). Registry versions are never changed.

No TensorFlow in this module: what is copied is the exported SavedModel, byte for byte, so its
fingerprint is the champion's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone

from model import registry
from ssdflow import storage
from ssdflow.schema import LabelMap

RECORD = "assets.extra/ssdflow_push.json"
_INTEGER = re.compile(r"^[0-9]{1,18}$")
# What TensorFlow Serving loads of a version: the SavedModel itself (saved_model.pb goes last).
_SAVED_MODEL = ("fingerprint.pb", "variables/", "assets/")


class PushError(RuntimeError):
    """A push that cannot be made; the message says why."""


def pushed_versions(base: str) -> dict[int, dict]:
    """The integer versions under BASE that hold a SavedModel → their push record ({} if none)."""
    files = (
        set(storage.list_tree(base)) if not storage.is_local(base) or os.path.isdir(storage.absolute(base)) else set()
    )
    found = {}
    for rel in files:
        head, _, rest = rel.partition("/")
        if rest == "saved_model.pb" and _INTEGER.match(head):
            record = storage.join(base, head, RECORD)
            found[int(head)] = json.loads(storage.read_text(record)) if f"{head}/{RECORD}" in files else {}
    return found


def push(models: str, base: str) -> dict:
    """Writes the champion of ``models`` as BASE/<next integer>/ unless the highest integer already
    holds it. Returns {"pushed": bool, "number", "path", "version"}."""
    champion = registry.read_champion(models)
    if champion is None:
        raise PushError(f"{models}: no champion to push")
    version = champion["version"]
    source = registry.committed_dir(models, version)
    existing = pushed_versions(base)
    latest = max(existing, default=0)
    if latest and existing[latest].get("version") == version:
        return {"pushed": False, "number": latest, "path": storage.join(base, str(latest)), "version": version}
    number = latest + 1
    files = [rel for rel in storage.list_tree(source) if rel == "saved_model.pb" or rel.startswith(_SAVED_MODEL)]
    if "saved_model.pb" not in files:
        raise PushError(f"{source}: no saved_model.pb to push")
    label_map = LabelMap.parse(storage.read_text(storage.join(source, registry.LABEL_MAP)), registry.LABEL_MAP)
    record = {
        "version": version,
        "models": models,
        "pushed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": _fingerprint(storage.join(source, "fingerprint.pb")) if "fingerprint.pb" in files else None,
    }
    extra = {
        "assets/label_map.json": label_map.to_json(),
        "assets/label_map.pbtxt": label_map.to_pbtxt(),
        RECORD: json.dumps(record, indent=2, sort_keys=True) + "\n",
    }
    with tempfile.TemporaryDirectory(prefix="ssdflow-push-") as tmp:
        staged = os.path.join(tmp, str(number))
        for rel in files:
            os.makedirs(os.path.dirname(os.path.join(staged, rel)), exist_ok=True)
            with open(os.path.join(staged, rel), "wb") as f:
                f.write(storage.read_bytes(storage.join(source, rel)))
        for rel, text in extra.items():
            os.makedirs(os.path.dirname(os.path.join(staged, rel)), exist_ok=True)
            with open(os.path.join(staged, rel), "w", encoding="utf-8") as f:
                f.write(text)
        target = storage.join(base, str(number))
        if storage.is_local(base):
            local_base = storage.absolute(base)
            os.makedirs(local_base, exist_ok=True)
            hidden = tempfile.mkdtemp(prefix=f".{number}.", dir=local_base)  # TF Serving ignores non-integer names
            shutil.copytree(staged, hidden, dirs_exist_ok=True)
            try:
                os.rename(hidden, os.path.join(local_base, str(number)))
            except OSError:
                shutil.rmtree(hidden, ignore_errors=True)
                raise PushError(
                    f"{target} appeared while this push was being written (another push?); push again"
                ) from None
            storage.fsync_dir(local_base)
        else:
            rest = sorted(rel for rel in storage.list_tree(staged) if rel != "saved_model.pb")
            storage.upload_tree(staged, target, rest + ["saved_model.pb"])
    return {"pushed": True, "number": number, "path": target, "version": version}


def _fingerprint(uri: str) -> str:
    import hashlib

    return hashlib.sha256(storage.read_bytes(uri)).hexdigest()[:16]

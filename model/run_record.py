"""The record of a training run: its identity (settings + data), its directory of checkpoints and
its lock, and the model card it leaves with the version.

``model/train.py`` fits and registers; this module decides whether a run may start, continue or
is already done, and writes down what happened.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time

from model import registry, report
from model.anchors import feature_map_sizes
from ssdflow import cas, storage
from ssdflow.config import FALLBACK_SCORE_THRESHOLD, ModelConfig, TrainConfig

log = logging.getLogger(__name__)

RUN_DIR = ".train-run"  # MODELS/.train-run: the checkpoints of the run in progress or interrupted
LOCK = ".train.lock"  # MODELS/.train.lock (local disk): flocked by the training in progress
LEASE = ".train.lease"  # MODELS/.train.lease (object stores): the lease of the training in progress
# A lease's length: a killed training's lease is free after at most this long (shorter than the
# 90 s after which a silent Prefect run is marked crashed and rerun); renewed every quarter of it.
LEASE_SECONDS = float(os.environ.get("SSDFLOW_LEASE_SECONDS", "60"))


class TrainError(RuntimeError):
    """A training that cannot start or go on; the message says what to change."""


def data_fingerprint(data_dir: str) -> str:
    """A short hash of the ingest output's manifest: which data a model was trained on."""
    manifest = storage.read_success(data_dir)
    stats = storage.read_text(storage.join(data_dir, "stats.json"))
    return hashlib.sha256((json.dumps(manifest, sort_keys=True) + stats).encode()).hexdigest()[:16]


def run_config(cfg: TrainConfig) -> dict:
    """What an interrupted run must share with its resumption: the settings and the data."""
    # Not where storage is reached (storage_args): a run resumed through another endpoint is the same run.
    return {
        "train": cfg.model_dump(exclude={"resume", "fresh", "storage_args"}),
        "data_fingerprint": data_fingerprint(cfg.data),
    }


def champion_trained_alike(cfg: TrainConfig) -> tuple[str, dict] | None:
    """(the champion's version, its metrics) if it was trained with exactly these settings on
    exactly this data: a nightly run then has nothing to learn (training again would only add a
    near-copy); None otherwise."""
    champion = registry.read_champion(cfg.models)
    if champion is None:
        return None
    metrics = _metrics(cfg.models, champion["version"])
    return (champion["version"], metrics) if metrics.get("run_key") == run_key(run_config(cfg)) else None


def _metrics(models: str, version: str) -> dict:
    uri = storage.join(registry.version_dir(models, version), registry.METRICS)
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else {}


def run_key(config: dict) -> str:
    """A short hash of a ``run_config``: recorded in metrics.json, so a rerun finds the version it already made."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def completed_version(cfg: TrainConfig) -> str | None:
    """The newest committed version trained with exactly these settings on exactly this data."""
    key = run_key(run_config(cfg))
    for version in reversed(registry.list_versions(cfg.models)):
        if _metrics(cfg.models, version).get("run_key") == key:
            return version
    return None


def run_dir_uri(models: str) -> str:
    """MODELS/.train-run: where an interrupted run's checkpoints are found, on the models' storage."""
    return storage.join(models, RUN_DIR)


def local_run_dir(models: str) -> str:
    """Where the run's checkpoints are written (TensorFlow writes them to local disk): MODELS/.train-run
    itself on local disk; for an object store a directory in this machine's cache, mirrored to
    MODELS/.train-run after every epoch (:class:`RunMirror`), so another machine can resume."""
    if storage.is_local(models):
        return os.path.join(storage.absolute(models), RUN_DIR)
    return os.path.join(storage.cache_root(), "runs", hashlib.sha256(models.rstrip("/").encode()).hexdigest()[:16])


def _saved_config(models: str) -> dict | None:
    uri = storage.join(run_dir_uri(models), "run.json")
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else None


def can_resume(cfg: TrainConfig) -> bool:
    """Whether ``MODELS/.train-run`` holds an interrupted run of exactly these settings and data."""
    return _saved_config(cfg.models) == run_config(cfg)


def has_interrupted_run(models: str) -> bool:
    """Whether MODELS/.train-run holds a run (of any settings) that did not finish."""
    return _saved_config(models) is not None


def discard_run(models: str) -> None:
    """Removes the run directory, here and (object stores) in MODELS/.train-run."""
    shutil.rmtree(local_run_dir(models), ignore_errors=True)
    if not storage.is_local(models):
        storage.delete_tree(run_dir_uri(models))


def prepare_run_dir(cfg: TrainConfig, config: dict) -> str:
    """The local run directory for this run: the interrupted run's, with ``resume`` (fetched from the
    models' storage when it is an object store, so a run killed on one machine resumes on another);
    a new one otherwise.

    A run directory that is still there holds an interrupted run (a finished run removes its own):
    its checkpoints are kept unless ``fresh`` says to discard them, so a second ``ssdflow train`` on
    the same models directory never deletes a crashed run's progress by accident.
    """
    where = run_dir_uri(cfg.models)
    run_dir = local_run_dir(cfg.models)
    saved = _saved_config(cfg.models)
    if saved is not None and not cfg.fresh:
        same = saved == config
        if cfg.resume and same:
            if not storage.is_local(cfg.models):
                shutil.rmtree(run_dir, ignore_errors=True)
                storage.copy_tree_to_local(where, run_dir)
            return run_dir
        if cfg.resume:
            raise TrainError(
                f"--resume: the interrupted run in {where} used other settings or data; "
                "pass --fresh to discard its checkpoints and start over"
            )
        what = "these settings and data: pass --resume to continue it" if same else "other settings or data"
        raise TrainError(
            f"{where} holds an interrupted run of {what}, or --fresh to discard its checkpoints and start over"
        )
    if cfg.resume:
        log.warning("train: --resume, but %s holds no interrupted run: starting a new one", where)
    discard_run(cfg.models)
    os.makedirs(run_dir)
    storage.write_json_local(os.path.join(run_dir, "run.json"), config)
    if not storage.is_local(cfg.models):
        storage.write_text(storage.join(where, "run.json"), json.dumps(config, indent=2, sort_keys=True) + "\n")
    return run_dir


class RunMirror:
    """Copies what changed in the local run directory to MODELS/.train-run on an object store, and
    removes there what is gone here (checkpoints past ``max_to_keep``). TensorFlow's checkpoint
    index files (``checkpoint``) go last, so the remote copy never names a checkpoint it lacks.
    A no-op for local models, whose run directory is MODELS/.train-run itself."""

    def __init__(self, models: str, run_dir: str):
        self.local, self.remote = run_dir, run_dir_uri(models)
        self.enabled = not storage.is_local(models)
        self.sent: dict[str, tuple[float, int]] = {}

    def __call__(self) -> None:
        if not self.enabled:
            return
        now = {}
        for rel in storage.list_tree(self.local):
            st = os.stat(os.path.join(self.local, rel))
            now[rel] = (st.st_mtime, st.st_size)
        changed = sorted(
            (rel for rel, state in now.items() if self.sent.get(rel) != state),
            key=lambda rel: (os.path.basename(rel) == "checkpoint", rel),
        )
        storage.upload_tree(self.local, self.remote, changed)
        storage.delete([storage.join(self.remote, rel) for rel in self.sent if rel not in now])
        self.sent = now


@contextlib.contextmanager
def training_lock(models: str):
    """One training per models location at a time: a second one fails at once, naming the first,
    instead of sharing its run directory. Yields a check that raises TrainError if the lock was
    lost (a lease taken over), for the training to call before it commits anything.

    On local disk an exclusive flock of ``MODELS/.train.lock`` (between the processes of one machine
    and on most network file systems; it goes with the process, so a killed training never leaves
    a stale lock). On an object store a lease (:class:`Lease`, ``MODELS/.train.lease``), which
    another machine can see and a killed training's lease expires.
    """
    if not storage.is_local(models):
        with Lease(storage.join(models, LEASE)).held() as lease:
            yield lease.check
        return
    import fcntl

    models = storage.absolute(models)
    os.makedirs(models, exist_ok=True)
    f = open(os.path.join(models, LOCK), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "holder unknown"
        f.close()
        raise TrainError(
            f"another training is running on {models} ({holder}); wait for it to end, or use another --models"
        ) from None
    try:
        f.seek(0)
        f.truncate()
        f.write(_holder() + "\n")
        f.flush()
        yield lambda: None
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _holder() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}, since {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}"


class Lease:
    """A lease object on an object store: {holder, expires_at}, taken and renewed by compare-and-swap
    (:mod:`ssdflow.cas`), so of two trainings that start at once exactly one holds it.

    Taken for ``seconds``; a thread renews it every ``seconds / 4`` while it is held. A lease whose
    holder was killed expires after at most ``seconds`` (at once, when the holder was a process of
    this machine that is gone); a lease this holder lost (it could not renew in time and another
    took it over) is reported by :meth:`check`.
    """

    def __init__(self, uri: str, seconds: float = LEASE_SECONDS):
        self.uri, self.seconds = uri, seconds
        self.holder = _holder()
        self._state = None
        self._stop = threading.Event()
        self.lost: str | None = None

    def _record(self, held: bool) -> bytes:
        expires = time.time() + self.seconds if held else 0.0
        return json.dumps(
            {
                "holder": self.holder if held else None,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "expires_at": expires,
                "expires": dt.datetime.fromtimestamp(expires, dt.timezone.utc).isoformat(timespec="seconds"),
            }
        ).encode()

    @staticmethod
    def _live(lease: dict) -> bool:
        """Whether a lease still holds: not expired, and not left by a process of this machine that is gone."""
        if not lease.get("holder") or float(lease.get("expires_at", 0)) <= time.time():
            return False
        if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int):
            try:
                os.kill(lease["pid"], 0)
            except ProcessLookupError:
                return False
            except PermissionError:  # another user's process: alive
                pass
        return True

    def acquire(self) -> None:
        for _ in range(3):
            current = cas.read(self.uri)
            lease = json.loads(current.data) if current.exists else {}
            if self._live(lease):
                raise TrainError(
                    f"another training is running on {self.uri.rsplit('/', 1)[0]} ({lease['holder']}; "
                    f"its lease runs to {lease.get('expires')} unless renewed); wait for it to end, or use another --models"
                )
            try:
                self._state = cas.swap(self.uri, self._record(True), current)
                return
            except cas.Conflict:
                continue  # another training took or renewed it in between: look again
        raise TrainError(f"{self.uri}: the training lease keeps changing; another training is starting")

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            try:
                self._state = cas.swap(self.uri, self._record(True), self._state)
            except cas.Conflict:
                self.lost = f"the lease {self.uri} was taken over (this training could not renew it in time)"
                log.error("train: %s", self.lost)
                return
            except Exception as e:  # noqa: BLE001 - a storage hiccup: try again at the next beat
                log.warning("train: renewing the lease %s failed (%s); trying again", self.uri, e)

    def check(self) -> None:
        if self.lost:
            raise TrainError(self.lost)

    @contextlib.contextmanager
    def held(self):
        self.acquire()
        renewer = threading.Thread(target=self._renew, name="ssdflow-lease", daemon=True)
        renewer.start()
        try:
            yield self
        finally:
            self._stop.set()
            renewer.join()
            if not self.lost:
                with contextlib.suppress(cas.Conflict):
                    cas.swap(self.uri, self._record(False), self._state)


def write_model_card(
    path: str, version: str, cfg: TrainConfig, model_cfg: ModelConfig, metrics: dict, label_map, fingerprint: str
) -> None:
    per_class = "\n".join(
        f"| {name} | {_fmt(m.get('AP'))} | {_fmt(m.get('AP@.5'))} |" for name, m in metrics.get("per_class", {}).items()
    )
    text = f"""# Model card: {version}

- Created: {dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
- Architecture: {_architecture_text(model_cfg)}{_anchor_fit_text(metrics.get("anchor_fit"))}
- Backbone weights: {cfg.backbone_weights}
- Started from: {metrics.get("initialized_from", "backbone")}
- Training data: `{cfg.data}` (fingerprint {fingerprint}; {metrics["train_images"]} train / {metrics["val_images"]} val images)
- Training: {metrics["epochs"]} epochs of at most {metrics["max_epochs"]} in {metrics["fit_seconds"]:.0f} s (time budget {_budget_text(cfg)}; phases ended by {", ".join(metrics["phases_ended_by"]) or "nothing"}; fine-tune share {cfg.fine_tune_fraction:g}), batch {cfg.batch_size}, peak LR {cfg.peak_learning_rate():g}, {cfg.classification_loss} classification and {cfg.box_loss} box loss, {cfg.matching} matching{_class_weights_text(metrics.get("class_weights"), cfg)}
- Exported weights: {_best_epoch_text(metrics)}
- Post-processing: per-class NMS at IoU {cfg.iou_threshold:g}, scores from {cfg.score_threshold:g}, {cfg.max_detections} detections per image{f", boxes merged above IoU {cfg.box_merge_iou:g}" if cfg.box_merge_iou else ""}

## Metrics on the val split (COCO, pycocotools)

| metric | value |
| --- | --- |
| mAP@[.5:.95] | {_fmt(metrics["mAP"])} |
| mAP@.5 | {_fmt(metrics["mAP@.5"])} |
| mAP@.75 | {_fmt(metrics.get("mAP@.75"))} |
| mAP small / medium / large (COCO areas, pixels of the original image) | {_fmt(metrics.get("mAP_small"))} / {_fmt(metrics.get("mAP_medium"))} / {_fmt(metrics.get("mAP_large"))} |

| class | AP | AP@.5 |
| --- | --- | --- |
{per_class}

{_thresholds_text(metrics.get("score_thresholds"))}
{report.markdown(os.path.dirname(path))}
## Configuration

```json
{json.dumps(cfg.model_dump(exclude={"storage_args"}), indent=2)}
```
"""
    with open(path, "w") as f:
        f.write(text)


def _thresholds_text(calibration: dict | None) -> str:
    """The per-class score thresholds that ``ssdflow score`` applies by default, with what they give on val."""
    if not calibration:
        return ""
    target = "the best F1" if calibration["target"] == "max_f1" else calibration["target"].replace(">=", " ≥ ")
    rows = "\n".join(
        f"| {name} | {_fmt(p['threshold'])} | {_fmt(p['precision'])} | {_fmt(p['recall'])} | {_fmt(p['f1'])} | "
        f"{_fmt(calibration['global']['per_class_f1'].get(name))} | {p['val_objects']} |"
        for name, p in calibration["per_class"].items()
    )
    return f"""## Score thresholds (calibrated on the val split, IoU 0.5)

Each class's threshold is chosen for {target}; `ssdflow score` applies them (`--score-threshold auto`, the
default), {FALLBACK_SCORE_THRESHOLD} for a class without one. The best single threshold for all classes would be
{_fmt(calibration["global"]["threshold"])}.

| class | threshold | precision | recall | F1 | F1 at the best single threshold | val objects |
| --- | --- | --- | --- | --- | --- | --- |
{rows}
"""


def _architecture_text(cfg: ModelConfig) -> str:
    levels = feature_map_sizes(cfg.image_size, cfg.extra_levels, cfg.finest_stride)
    head = "SSD FPN-lite (stride-8 to 32 maps fused top-down)" if cfg.finest_stride == 8 else "SSDLite"
    return (
        f"{head}, MobileNetV2 backbone (alpha {cfg.alpha:g}), {cfg.image_size}x{cfg.image_size} input, "
        f"{cfg.num_classes} classes; {len(levels)} feature levels ({'/'.join(map(str, levels))} cells a side), "
        f"anchor scales {cfg.first_scale:.3g}-{cfg.max_scale:g} of the image side ({cfg.scale_spacing}"
        + (f", {cfg.scales_per_level} per level" if cfg.scales_per_level > 1 else "")
        + "), aspect ratios (w/h) "
        + ", ".join(f"{r:.3g}" for r in cfg.aspect_ratios)
    )


def _anchor_fit_text(fit: dict | None) -> str:
    """Why the finest level and its anchors are what they are (``anchor_fit.fit_anchors``), or nothing when
    the settings fixed them or a warm start kept the starting model's."""
    if not fit or not fit.get("boxes"):
        return ""
    who = (
        f"class {fit['class']}'s {fit['boxes']} training boxes"
        if fit["class"]
        else f"all {fit['boxes']} training boxes"
    )
    scale = f", first anchor scale {fit['min_scale']:.3g}" if fit.get("min_scale") else ""
    coverage = fit.get("shape_coverage")
    shapes = (
        (
            "\n- Anchor shapes: share of each class's training boxes that an anchor overlaps with IoU ≥ 0.5 when "
            "centred on it: " + ", ".join(f"{name} {share:.0%}" for name, share in coverage.items())
        )
        if coverage
        else ""
    )
    ratios = ""
    if fit.get("ratio_fit"):
        r = fit["ratio_fit"]
        ratios = f"\n- Anchor aspect ratios: the defaults fitted {r['worst_share_before']:.0%} of the worst-fitted class's boxes"
        if r.get("same"):
            ratios += ", and no other ratio fits more of them: their sizes, against the levels' anchor scales, limit it"
        else:
            chosen = ", ".join(f"{v:g}" for v in r["chosen"])
            ratios += (
                f"; ratios chosen for the training boxes (the most boxes fitted, classes weighted alike), {chosen}, fit "
                f"{r['worst_share_after']:.0%}: " + ("adopted" if r["adopted"] else "not adopted, the defaults kept")
            )
    return (
        f"\n- Fitted to the smallest objects: {who} (side 10th percentile {fit['side_p10']:.3g}, median "
        f"{fit['side_p50']:.3g} of the image side) → finest stride {fit['finest_stride']}{scale}{ratios}{shapes}"
    )


def _class_weights_text(weights: dict | None, cfg: TrainConfig) -> str:
    if not weights:
        return ""
    return f", class weights (balance {cfg.class_balance:g}): " + ", ".join(f"{n} {w:g}" for n, w in weights.items())


def _budget_text(cfg: TrainConfig) -> str:
    return f"{cfg.time_budget:g} min" if cfg.time_budget else "none"


def _best_epoch_text(metrics: dict) -> str:
    best = metrics.get("best_epoch")
    by = metrics.get("best_epoch_metric", "val mAP@.5")
    if best is None:
        return "the last epoch's (no val evaluation during training)"
    if best == 0:
        return (
            f"the starting weights' (no epoch of this run beat them on {by}; "
            f"{len(metrics.get('validation_history', []))} evaluated)"
        )
    return (
        f"{metrics.get('best_phase')} epoch {best}, the best {by} of the "
        f"{len(metrics.get('validation_history', []))} evaluated"
    )


def decision_markdown(decision: dict) -> str:
    return (
        f"\n## Promotion decision\n\n- Promoted: **{'yes' if decision['promoted'] else 'no'}**\n"
        f"- Challenger {decision['metric']}: {_fmt(decision.get('challenger_score'))}; champion "
        f"({decision.get('champion') or 'none'}): {_fmt(decision.get('champion_score'))}\n- Reason: {decision['reason']}\n"
    )


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"

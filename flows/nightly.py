"""The nightly retraining flow and the demo flow."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows import artifacts
from flows.jobs import ingest_unless_unchanged, score_task, train_task
from flows.recovery import Attempt
from ssdflow import storage
from ssdflow.config import DemoConfig, NightlyConfig, ScoreConfig

# MODELS/.nightly/last_ingest_stats.json, MODELS/.nightly/<run>/compare-*.jpg: a dot directory, so the
# registry never lists it as a model version.
HISTORY = ".nightly"


def _last_stats_path(models: str) -> str:
    return storage.join(models, HISTORY, "last_ingest_stats.json")


def ingest_changes(previous: dict | None, current: dict) -> list[dict]:
    """Tonight's ingest stats beside last night's: images added/removed, boxes per class, new rejection reasons."""
    prev = previous or {}
    rows = [
        {
            "what": "images written",
            "last_night": (prev.get("images_written") or {}).get("total"),
            "tonight": current["images_written"]["total"],
        }
    ]
    delta = current["images_written"]["total"] - ((prev.get("images_written") or {}).get("total") or 0)
    rows.append(
        {
            "what": "images added (net)" if delta >= 0 else "images removed (net)",
            "last_night": None,
            "tonight": abs(delta),
        }
    )
    for name in sorted(set(prev.get("boxes_per_class", {})) | set(current["boxes_per_class"])):
        rows.append(
            {
                "what": f"boxes[{name}]",
                "last_night": prev.get("boxes_per_class", {}).get(name),
                "tonight": current["boxes_per_class"].get(name, 0),
            }
        )
    old_reasons = set(prev.get("images_rejected", {})) | set(prev.get("boxes_rejected", {}))
    for kind in ("images_rejected", "boxes_rejected"):
        for reason, n in current[kind].items():
            if reason == "total":
                continue
            new = "" if reason in old_reasons or previous is None else " (new)"
            rows.append({"what": f"{kind}[{reason}]{new}", "last_night": prev.get(kind, {}).get(reason), "tonight": n})
    return rows


@task(name="compare-champion-challenger")
def compare_task(champion_dir: str, challenger_dir: str, data_dir: str, n: int, out_dir: str) -> list[dict]:
    import tempfile

    from model.compare import side_by_side
    from model.dataset import local_records
    from model.registry import local_copy

    with tempfile.TemporaryDirectory(prefix="ssdflow-compare-") as drawn:
        local_out = out_dir if storage.is_local(out_dir) else drawn  # drawn here, then uploaded beside the models
        rows = side_by_side(local_copy(champion_dir), local_copy(challenger_dir), local_records(data_dir), n, local_out)
        if local_out != out_dir:
            storage.upload_tree(local_out, out_dir)
            rows = [dict(r, file=storage.join(out_dir, os.path.basename(r["file"]))) for r in rows]
    table = "\n".join(
        f"| {r['image']} | {r['ground_truth_boxes']} | {r['champion_boxes']} | {r['challenger_boxes']} | `{r['file']}` |"
        for r in rows
    )
    create_markdown_artifact(
        "## Champion (left) and challenger (right) on the same val images\n\n"
        "| image | ground truth | champion | challenger | side-by-side image |\n| --- | --- | --- | --- | --- |\n"
        + table
        + "\n",
        key="champion-vs-challenger",
    )
    return rows


@task(name="export-tflite")
def tflite_task(model_dir: str, variants: list[str], data_dir: str) -> dict:
    """The champion's .tflite files: each variant it lacks is exported and scored on val."""
    from model.tflite import export_tflite_beside, manifest, tflite_name

    for quantize in variants:
        if storage.exists(storage.join(model_dir, tflite_name(quantize))):
            continue  # exported on an earlier night: the champion has not changed since
        entry = export_tflite_beside(model_dir, quantize, data_dir)  # scored on val and recorded
        get_run_logger().info(
            "tflite: %s, %.2f MB, val mAP@.5 %.4f", entry["file"], entry["bytes"] / 1e6, entry["metrics"]["mAP@.5"]
        )
    wanted = {tflite_name(q) for q in variants}
    files = {name: e for name, e in manifest(model_dir).items() if name in wanted}
    artifacts.tflite_exports(model_dir, files)
    return files


@task(name="push-to-serving")
def push_task(models: str, base: str) -> dict:
    """The champion as TensorFlow Serving's next integer version under ``base`` (nothing when it is there already)."""
    from model.push import push

    result = push(models, base)
    get_run_logger().info(
        "push: %s",
        f"champion {result['version']} written to {result['path']}"
        if result["pushed"]
        else f"{result['path']} holds champion {result['version']} already",
    )
    return result


@task(name="nothing-to-learn?")
def skip_if_nothing_to_learn(config: NightlyConfig) -> dict | None:
    """The champion, as a training result, when it was trained on tonight's data (the same ingest
    output) with tonight's settings; None when there is something to learn."""
    from model import registry
    from model.run_record import champion_trained_alike

    cfg = config.train_config()
    alike = champion_trained_alike(cfg)
    if alike is None:
        return None
    version, metrics = alike
    reason = (
        f"training skipped: champion {version} was trained on this data (fingerprint {metrics['data_fingerprint']}) "
        f"with these settings; nothing new to learn"
    )
    get_run_logger().info("nightly: %s", reason)
    create_markdown_artifact(
        f"## Training skipped\n\n{reason}. A change to the images, the labels or the training "
        f"settings trains a challenger again.\n",
        key="training-skipped",
    )
    return {
        "version": version,
        "model_dir": str(registry.version_dir(cfg.models, version)),
        "skipped": True,
        "metrics": {k: metrics.get(k) for k in ("mAP", "mAP@.5")},
        "decision": {"promoted": False, "reason": reason},
    }


@flow(name="nightly-retrain", log_prints=True)
def nightly_flow(config: NightlyConfig, attempt: Attempt = 0) -> dict:
    """Ingest tonight's data → train → evaluate → promote → (optionally) score an archive with the champion."""
    from model import registry

    log = get_run_logger()
    storage.configure(config.storage_args())  # the registry's reads and writes, outside the ingest pipeline
    last_path = _last_stats_path(config.models)
    previous = json.loads(storage.read_text(last_path)) if storage.exists(last_path) else None
    stats = ingest_unless_unchanged(config.ingest)
    artifacts.ingest_stats(stats, config.ingest.out)
    create_table_artifact(
        ingest_changes(previous, stats),
        key="ingest-since-last-night",
        description="Tonight's ingest beside last night's",
    )

    champion_before = registry.read_champion(config.models)
    trained = skip_if_nothing_to_learn(config) or train_task(config.train_config(), attempt)
    run_dir = storage.join(config.models, HISTORY, datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    if champion_before and config.comparison_images and not trained.get("skipped"):
        compare_task(
            str(registry.version_dir(config.models, champion_before["version"])),
            trained["model_dir"],
            config.ingest.out,
            config.comparison_images,
            run_dir,
        )

    champion = registry.read_champion(config.models)
    if config.tflite and champion:
        tflite_task(
            str(registry.version_dir(config.models, champion["version"])), list(config.tflite), config.ingest.out
        )

    pushed = push_task(config.models, config.push_to) if config.push_to and champion else None

    scored = None
    if config.score_images and champion is None:
        log.warning("nightly: no champion yet (%s), so the archive is not scored", trained["decision"]["reason"])
    elif config.score_images:
        scored = score_task(
            ScoreConfig(
                model=config.models,
                images=config.score_images,
                out=config.score_out,
                score_threshold=config.score_threshold,
                select=config.select,
                label_studio_root=config.label_studio_root,
                beam_args=config.storage_args(),
            )
        )
    storage.write_text(last_path, json.dumps(stats, indent=2))
    log.info(
        "nightly: %s",
        "new champion " + trained["version"]
        if trained["decision"]["promoted"]
        else "champion kept" + (" (nothing to learn)" if trained.get("skipped") else ""),
    )
    return {
        "ingest": {"images_written": stats["images_written"]["total"]},
        "train": trained,
        "push": pushed,
        "score": scored,
    }


@flow(name="demo", log_prints=True)
def demo_flow(config: DemoConfig = DemoConfig(), attempt: Attempt = 0) -> dict:
    """The embedded default: synthetic shapes → ingest → train → score, locally, in a few minutes."""
    from ssdflow.demo import demo_configs, make_demo_data

    workdir = os.path.abspath(config.workdir)
    images, labels = make_demo_data(workdir, config.images, config.seed)
    ingest_cfg, train_cfg, score_cfg = demo_configs(workdir, images, labels, config.minutes, config.epochs)
    stats = ingest_unless_unchanged(ingest_cfg)
    artifacts.ingest_stats(stats, ingest_cfg.out)
    trained = train_task(train_cfg, attempt)
    scored = score_task(
        score_cfg.model_copy(update={"model": trained["model_dir"]})
    )  # promoted or not, as the CLI demo
    return {"workdir": workdir, "ingest": stats["images_written"], "train": trained, "score": scored}

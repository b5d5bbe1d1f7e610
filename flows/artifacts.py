"""Prefect artifacts for ssdflow's runs: what a person looks at in the UI after a run."""

from __future__ import annotations

import json

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from ssdflow.results import LabellingSelection, ScoreManifest


def _key(text: str) -> str:
    """Artifact keys: lowercase letters, digits and dashes."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def ingest_stats(stats: dict, out: str, key: str = "ingest-stats") -> None:
    """Images in / written / rejected by reason, boxes per class, as a table; plus a link to the output."""
    rows = [{"metric": "images_in", "value": stats["images_in"]}]
    rows += [{"metric": f"images_written.{k}", "value": v} for k, v in stats["images_written"].items()]
    rows += [{"metric": f"images_rejected.{k}", "value": v} for k, v in stats["images_rejected"].items()]
    rows += [
        {"metric": "boxes_written", "value": stats["boxes_written"]},
        {"metric": "boxes_clipped", "value": stats["boxes_clipped"]},
    ]
    rows += [{"metric": f"boxes_rejected.{k}", "value": v} for k, v in stats["boxes_rejected"].items()]
    rows += [{"metric": f"boxes_per_class.{k}", "value": v} for k, v in stats["boxes_per_class"].items()]
    create_table_artifact(rows, key=_key(key), description=f"Ingest stats for {out}")
    create_link_artifact(
        out, link_text="ingest output (TFRecords, stats.json, rejected.jsonl)", key=_key(f"{key}-output")
    )


def training_metrics(metrics: dict, key: str = "training-metrics") -> None:
    rows = [{"metric": m, "value": metrics.get(m)} for m in ("mAP", "mAP@.5", "mAP@.75", "AR@100")]
    rows += [{"metric": f"AP[{name}]", "value": v.get("AP")} for name, v in metrics.get("per_class", {}).items()]
    rows += [{"metric": f"AP@.5[{name}]", "value": v.get("AP@.5")} for name, v in metrics.get("per_class", {}).items()]
    create_table_artifact(rows, key=_key(key), description="COCO metrics of the new model on the val split")


def model_card(model_dir: str, decision: dict, key: str = "model-card") -> None:
    from model import registry, report
    from ssdflow import storage

    card = storage.read_text(storage.join(model_dir, "model_card.md"))
    local = registry.local_copy(model_dir)  # the card's images, read from files
    # The UI cannot reach the model directory's files: the card's images go in as data URIs.
    card = card.replace(report.markdown(local), report.markdown(local, inline=True))
    create_markdown_artifact(
        card,
        key=_key(key),
        description=f"{'Promoted' if decision['promoted'] else 'Not promoted'}: {decision['reason']}",
    )
    create_link_artifact(model_dir, link_text="model directory (SavedModel)", key=_key(f"{key}-link"))


def tflite_exports(model_dir: str, files: dict, key: str = "tflite-exports") -> None:
    """The champion's .tflite files (model/tflite.py's tflite.json entries) with size and val mAP."""
    rows = [
        {
            "file": name,
            "quantization": e["quantize"],
            "MB": round(e["bytes"] / 1e6, 2),
            "val mAP@.5": (e.get("metrics") or {}).get("mAP@.5"),
            "input": e["input"],
        }
        for name, e in sorted(files.items())
    ]
    create_table_artifact(rows, key=_key(key), description=f"TFLite files of {model_dir}")
    for name in sorted(files):
        create_link_artifact(
            f"{model_dir}/{name}",
            link_text=f"{name} ({files[name]['bytes'] / 1e6:.2f} MB)",
            key=_key(f"{key}-{name.removesuffix('.tflite')}"),
        )


def model_versions(versions: list[dict], models: str, key: str = "model-versions") -> None:
    """The registered versions, oldest first (``registry.describe_versions``), champion marked."""
    rows = [
        {
            "champion": "*" if v["champion"] else "",
            "version": v["version"],
            "mAP@.5": v["mAP@.5"],
            "mAP": v["mAP"],
            "decision": v["reason"],
        }
        for v in versions
    ]
    create_table_artifact(rows, key=_key(key), description=f"Model versions in {models}")


def scoring_summary(manifest: ScoreManifest, summary: dict, out: str, key: str = "scoring-summary") -> None:
    rows = [
        {"metric": k, "value": getattr(manifest, k)} for k in (*ScoreManifest.COUNTS, "chunks", "chunks_scored_now")
    ]
    rows += [{"metric": f"detections[{c}]", "value": n} for c, n in summary.get("detections_per_class", {}).items()]
    rows += [
        {"metric": "mean_boxes_per_image", "value": summary.get("mean_boxes_per_image")},
        {"metric": "images_without_detections", "value": summary.get("images_without_detections")},
    ]
    create_table_artifact(rows, key=_key(key), description=f"Scoring with model {manifest.model_version}")
    create_link_artifact(
        out, link_text="detections (JSONL, Parquet), errors.jsonl, summary.json", key=_key(f"{key}-output")
    )
    change = summary.get("change_since_previous")
    if change:
        create_markdown_artifact(
            "## Change since the previous run\n\n```json\n" + json.dumps(change, indent=2) + "\n```\n",
            key=_key(f"{key}-drift"),
        )


class ProgressArtifact:
    """A progress artifact that long steps update (0..100)."""

    def __init__(self, description: str):
        self.id = create_progress_artifact(progress=0.0, description=description)

    def update(self, percent: float) -> None:
        update_progress_artifact(self.id, progress=max(0.0, min(100.0, percent)))

    def from_counts(self, done: int, total: int | None) -> None:
        """``update`` from a job's counts (ssdflow/progress.py calls it from its thread); no total: nothing shown yet."""
        if total:
            self.update(100.0 * done / total)


def labelling_batch(
    out: str, labelling: LabellingSelection, key: str = "labelling-batch", thumbnails: int = 24
) -> None:
    """The images worth labelling next as a table: thumbnail (inline: the UI cannot reach ``out``),
    rank, uncertainty and reason; plus a link to the batch (images, VOC, Label Studio JSON)."""
    import csv
    import io

    from PIL import Image

    from beam_jobs.score.labelling import LABELLING_DIR
    from model.report import data_uri
    from ssdflow import storage

    root = storage.join(out, LABELLING_DIR)
    rows = list(csv.DictReader(io.StringIO(storage.read_text(storage.join(root, "reasons.csv")))))
    lines = ["| # | image | uncertainty | reason |", "| ---: | --- | ---: | --- |"]
    for row in rows[:thumbnails]:
        img = Image.open(io.BytesIO(storage.read_bytes(storage.join(root, row["image"])))).convert("RGB")
        img.thumbnail((128, 128))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        lines.append(
            f"| {row['rank']} | ![{row['image']}]({data_uri(buf.getvalue(), 'image/jpeg')}) | {row['uncertainty']} | {row['reason']} |"
        )
    more = f"\n\n{len(rows) - thumbnails} more in reasons.csv." if len(rows) > thumbnails else ""
    text = (
        f"## {len(rows)} images worth labelling next\n\n{labelling.near_duplicates_skipped} near-duplicates "
        f"skipped. Correct `annotations/*.xml` (Pascal VOC) or import `label_studio.json`, then ingest the batch.\n\n"
        + "\n".join(lines)
        + more
        + "\n"
    )
    create_markdown_artifact(text, key=_key(key), description=f"{len(rows)} images worth labelling next")
    create_link_artifact(
        root, link_text="labelling batch (images, VOC, Label Studio JSON, reasons.csv)", key=_key(f"{key}-output")
    )

"""Champion vs challenger on the same val images, drawn side by side: what a person checks before
trusting a promotion."""

from __future__ import annotations

import io
import os

import tensorflow as tf
from PIL import Image, ImageDraw

from model.dataset import eval_dataset, read_label_map, shard_files


def _draw(image: Image.Image, out: dict, names: dict, title: str, threshold: float) -> Image.Image:
    img = image.copy()
    draw = ImageDraw.Draw(img)
    w, h = img.size
    n = int(out["num_detections"])
    kept = 0
    for box, score, cls in zip(out["detection_boxes"][:n], out["detection_scores"][:n], out["detection_classes"][:n]):
        if score < threshold:
            continue
        kept += 1
        y0, x0, y1, x1 = (float(v) for v in box)
        draw.rectangle([x0 * w, y0 * h, x1 * w, y1 * h], outline=(255, 40, 40), width=max(2, w // 200))
        draw.text((x0 * w + 3, y0 * h + 2), f"{names.get(int(cls), int(cls))} {score:.2f}", fill=(255, 255, 0))
    draw.text((5, 5), f"{title}: {kept} boxes", fill=(0, 255, 0))
    return img


def side_by_side(champion_dir: str, challenger_dir: str, data_dir: str, n: int, out_dir: str, threshold: float = 0.3) -> list[dict]:
    """Draws both models' detections on the first ``n`` val images; returns one row per image."""
    names = read_label_map(data_dir).names_by_id()
    models = {name: tf.saved_model.load(d).signatures["serving_default"] for name, d in (("champion", champion_dir), ("challenger", challenger_dir))}
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for batch in eval_dataset(shard_files(data_dir, "val"), batch_size=n).take(1):
        outputs = {name: {k: v.numpy() for k, v in serve(images=batch["encoded"]).items()} for name, serve in models.items()}
        for i, key in enumerate(batch["key"].numpy()):
            image = Image.open(io.BytesIO(batch["encoded"][i].numpy())).convert("RGB")
            panels = [_draw(image, {k: v[i] for k, v in outputs[name].items()}, names, name, threshold) for name in ("champion", "challenger")]
            canvas = Image.new("RGB", (image.width * 2 + 10, image.height), (255, 255, 255))
            canvas.paste(panels[0], (0, 0))
            canvas.paste(panels[1], (image.width + 10, 0))
            path = os.path.join(out_dir, f"compare-{i:02d}.jpg")
            canvas.save(path, quality=90)
            count = {name: int(sum(s >= threshold for s in outputs[name]["detection_scores"][i][: int(outputs[name]["num_detections"][i])]))
                     for name in models}
            rows.append({"image": key.decode(), "champion_boxes": count["champion"], "challenger_boxes": count["challenger"],
                         "ground_truth_boxes": int(batch["boxes"][i].shape[0]), "file": path})
    return rows

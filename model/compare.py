"""Champion vs challenger on the same val images, drawn side by side: what a person checks before
trusting a promotion."""

from __future__ import annotations

import os

from PIL import Image, ImageDraw

from model.dataset import eval_dataset, read_label_map, shard_files
from model.export import load_detector
from model.report import draw_example


def side_by_side(
    champion_dir: str, challenger_dir: str, data_dir: str, n: int, out_dir: str, threshold: float = 0.3
) -> list[dict]:
    """Draws both models' detections (and the ground truth, green) on the first ``n`` val images as
    ``out_dir/compare-XX.jpg``, champion left; returns one row per image with the box counts."""
    names = read_label_map(data_dir).names_by_id()
    loaded = {name: load_detector(d) for name, d in (("champion", champion_dir), ("challenger", challenger_dir))}
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for batch in eval_dataset(shard_files(data_dir, "val"), batch_size=n).take(1):
        outputs = {
            name: {k: v.numpy() for k, v in serve(images=batch["encoded"]).items()}
            for name, (serve, _) in loaded.items()
        }
        for i, key in enumerate(batch["key"].numpy()):
            truth = batch["boxes"][i].numpy().reshape(-1, 4)
            panels, count = [], {}
            for name in ("champion", "challenger"):
                out = {k: v[i] for k, v in outputs[name].items()}
                count[name] = int(sum(s >= threshold for s in out["detection_scores"][: int(out["num_detections"])]))
                panel = draw_example(
                    batch["encoded"][i].numpy(), truth, batch["classes"][i].numpy(), out, names, threshold
                )
                ImageDraw.Draw(panel).text((5, 5), f"{name}: {count[name]} boxes", fill=(0, 255, 0))
                panels.append(panel)
            width, height = panels[0].size
            canvas = Image.new("RGB", (width * 2 + 10, height), (255, 255, 255))
            canvas.paste(panels[0], (0, 0))
            canvas.paste(panels[1], (width + 10, 0))
            path = os.path.join(out_dir, f"compare-{i:02d}.jpg")
            canvas.save(path, quality=90)
            rows.append(
                {
                    "image": key.decode(),
                    "champion_boxes": count["champion"],
                    "challenger_boxes": count["challenger"],
                    "ground_truth_boxes": int(truth.shape[0]),
                    "file": path,
                }
            )
    return rows

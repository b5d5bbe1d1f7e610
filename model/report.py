"""What a person looks at before trusting a model: precision–recall curves per class and val images
with ground truth and detections drawn. Written beside the model card (``pr_curves.png``,
``val_examples/``) and embedded in the Prefect model-card artifact.

Pure PIL drawing: no plotting library is needed to serve or train.
"""

from __future__ import annotations

import base64
import io
import os

from PIL import Image, ImageDraw

PR_CURVES = "pr_curves.png"
VAL_EXAMPLES = "val_examples"
# One colour per class, cycled: distinguishable on white (curves) and on photos (boxes).
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]
GROUND_TRUTH = (0, 230, 0)


def draw_pr_curves(curves: dict[str, list], path: str, size: tuple[int, int] = (560, 420)) -> str:
    """One PNG: precision (y) against recall (x, 0..1 in 101 steps) at IoU 0.5, a line per class.

    ``curves``: class name → 101 precisions, None where the class has no ground truth (COCO's -1),
    as ``evaluate.coco_metrics`` returns them under ``pr_curves``.
    """
    w, h = size
    left, right, top, bottom = 48, 150, 28, 40
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = left, top, w - right, h - bottom

    def at(recall: float, precision: float) -> tuple[float, float]:
        return x0 + recall * (x1 - x0), y1 - precision * (y1 - y0)

    for tick in range(0, 11, 2):
        v = tick / 10
        gx, gy = at(v, v)
        draw.line([gx, y0, gx, y1], fill=(230, 230, 230))
        draw.line([x0, gy, x1, gy], fill=(230, 230, 230))
        draw.text((gx - 8, y1 + 4), f"{v:.1f}", fill="black")
        draw.text((x0 - 28, gy - 6), f"{v:.1f}", fill="black")
    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.text(((x0 + x1) / 2 - 18, h - 18), "recall", fill="black")
    draw.text((x0 - 28, 6), "precision", fill="black")
    for k, (name, precisions) in enumerate(curves.items()):
        colour = PALETTE[k % len(PALETTE)]
        points = [at(i / (len(precisions) - 1), p) for i, p in enumerate(precisions) if p is not None]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        label = name if points else f"{name} (no val boxes)"
        ly = top + 16 * k
        draw.line([x1 + 10, ly + 6, x1 + 26, ly + 6], fill=colour, width=3)
        draw.text((x1 + 30, ly), label[:18], fill="black")
    img.save(path, format="PNG")
    return path


def draw_example(encoded: bytes, gt_boxes, gt_classes, detections: dict, names: dict, threshold: float) -> Image.Image:
    """One val image: ground truth in green, detections scoring at least ``threshold`` in their class colour.

    Boxes are normalized corners [ymin, xmin, ymax, xmax]; ``detections`` holds one image's TF OD API outputs.
    """
    img = Image.open(io.BytesIO(encoded)).convert("RGB")
    draw = ImageDraw.Draw(img)
    w, h = img.size
    width = max(2, w // 200)
    for box, cls in zip(gt_boxes, gt_classes):
        y0, x0, y1, x1 = (float(v) for v in box)
        draw.rectangle([x0 * w, y0 * h, x1 * w, y1 * h], outline=GROUND_TRUTH, width=width)
    n = int(detections["num_detections"])
    for box, score, cls in zip(
        detections["detection_boxes"][:n], detections["detection_scores"][:n], detections["detection_classes"][:n]
    ):
        if score < threshold:
            continue
        colour = PALETTE[(int(cls) - 1) % len(PALETTE)]
        y0, x0, y1, x1 = (float(v) for v in box)
        draw.rectangle([x0 * w, y0 * h, x1 * w, y1 * h], outline=colour, width=width)
        draw.text((x0 * w + 3, y0 * h + 2), f"{names.get(int(cls), int(cls))} {score:.2f}", fill=colour)
    return img


def draw_val_examples(serve, data_dir: str, out_dir: str, n: int = 4, threshold: float = 0.3) -> list[str]:
    """Runs ``serve`` (encoded bytes [B] → detections) on the first ``n`` val images and writes them
    drawn as ``out_dir/val-XX.jpg``; returns the file names."""
    from model.dataset import eval_dataset, read_label_map, shard_files

    names = read_label_map(data_dir).names_by_id()
    os.makedirs(out_dir, exist_ok=True)
    files = []
    for batch in eval_dataset(shard_files(data_dir, "val"), batch_size=n).take(1):
        out = {k: v.numpy() for k, v in serve(batch["encoded"]).items()}
        for i in range(len(batch["key"])):
            img = draw_example(
                batch["encoded"][i].numpy(),
                batch["boxes"][i].numpy().reshape(-1, 4),
                batch["classes"][i].numpy(),
                {k: v[i] for k, v in out.items()},
                names,
                threshold,
            )
            img.thumbnail((480, 480))
            name = f"val-{i:02d}.jpg"
            img.save(os.path.join(out_dir, name), quality=85)
            files.append(name)
    return files


def data_uri(data: bytes, mime: str) -> str:
    """An image as a base64 data URI, for markdown that a Prefect artifact shows (it cannot reach files)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def markdown(model_dir: str, inline: bool = False) -> str:
    """The model card's "Look" section: the PR curves and the drawn val images of ``model_dir``.

    ``inline``: images as base64 data URIs (for a Prefect artifact, which cannot reach local files);
    otherwise relative links (the card sits beside them).
    """

    def link(rel: str, alt: str) -> str:
        path = os.path.join(model_dir, rel)
        if not os.path.exists(path):
            return ""
        if not inline:
            return f"![{alt}]({rel})"
        mime = "image/png" if rel.endswith(".png") else "image/jpeg"
        with open(path, "rb") as f:
            return f"![{alt}]({data_uri(f.read(), mime)})"

    examples_dir = os.path.join(model_dir, VAL_EXAMPLES)
    examples = sorted(os.listdir(examples_dir)) if os.path.isdir(examples_dir) else []
    lines = [
        "## Look",
        "",
        "Precision against recall per class at IoU 0.5 (val split):",
        "",
        link(PR_CURVES, "PR curves"),
        "",
        "Val images: ground truth green, detections (score >= 0.3) in their class colour:",
        "",
    ]
    lines += [link(f"{VAL_EXAMPLES}/{name}", name) for name in examples]
    return "\n".join(lines) + "\n"

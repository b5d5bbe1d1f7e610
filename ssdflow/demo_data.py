"""The synthetic labelled dataset behind ``ssdflow demo``: shapes on textured backgrounds.

Each image holds 1-4 objects of three classes (circle, square, triangle) in random colours and
sizes on a noisy gradient, labelled as Pascal VOC XML, so the demo exercises the real ingest path
with several objects per image and needs no download.
"""

from __future__ import annotations

import os
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, w)[None, :, None]
    grad = c0 * (1 - t) + c1 * t
    noise = rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(grad + noise, 0, 255).astype(np.uint8), "RGB")


def _overlaps(box, boxes, max_iou: float = 0.3) -> bool:
    for b in boxes:
        ix = max(0, min(box[2], b[2]) - max(box[0], b[0]))
        iy = max(0, min(box[3], b[3]) - max(box[1], b[1]))
        inter = ix * iy
        union = (box[2] - box[0]) * (box[3] - box[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        if inter / union > max_iou:
            return True
    return False


def draw_scene(
    rng: np.random.Generator,
    w: int,
    h: int,
    max_objects: int = 4,
    object_size: tuple[float, float] = (1 / 6, 1 / 2),
    min_objects: int = 1,
    classes: dict[str, tuple] | None = None,
):
    """One image and its boxes: a list of (class, xmin, ymin, xmax, ymax) in pixels.

    ``min_objects``..``max_objects`` objects (fewer only if no free place is found), sides drawn
    uniformly from ``object_size`` (fractions of the shorter image side), classes uniformly; or, with
    ``classes`` ({name: (share of objects, (side low, side high)[, (w/h low, w/h high)])}), each class
    at its own share and sizes (a minority class of small objects among large ones) and, where a
    ratio range is given, its own elongation (side = sqrt(w * h), the ratio drawn log-uniformly).
    Circles are drawn as ellipses, triangles as triangles, any other class as a rectangle.
    """
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)
    objects: list[tuple[str, int, int, int, int]] = []
    names = list(classes) if classes else list(CLASSES)
    shares = (
        np.asarray([classes[n][0] for n in names], np.float64) / sum(classes[n][0] for n in names) if classes else None
    )
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        # With classes, the class comes first (it decides the size); without, after the place, as the
        # demo's data has always been drawn (the same seed gives the same scenes).
        cls = names[int(rng.choice(len(names), p=shares))] if classes else None
        low, high = (max(4, int(min(w, h) * f)) for f in (classes[cls][1] if classes else object_size))
        ratio = classes[cls][2] if classes and len(classes[cls]) > 2 else None
        for _attempt in range(20):
            size = int(rng.integers(low, high))
            bw = bh = size
            if ratio is not None:  # drawn only for classes that have one: the other sets' scenes stay as they were
                r = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
                bw, bh = min(w - 1, max(2, int(size * np.sqrt(r)))), min(h - 1, max(2, int(size / np.sqrt(r))))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            box = (x0, y0, x0 + bw, y0 + bh)
            if not _overlaps(box, [o[1:] for o in objects]):
                break
        else:
            continue
        if cls is None:
            cls = names[int(rng.integers(0, len(names)))]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if cls == "circle":
            draw.ellipse(box, fill=colour, outline=(0, 0, 0))
        elif cls == "triangle":
            draw.polygon(
                [(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour, outline=(0, 0, 0)
            )
        else:
            draw.rectangle(box, fill=colour, outline=(0, 0, 0))
        objects.append((cls, *box))
    return img, objects


def voc_xml(filename: str, w: int, h: int, objects) -> str:
    objs = "".join(
        f"  <object>\n    <name>{escape(c)}</name>\n    <difficult>0</difficult>\n"
        f"    <bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>\n  </object>\n"
        for c, x0, y0, x1, y1 in objects
    )
    return (
        f"<annotation>\n  <filename>{escape(filename)}</filename>\n"
        f"  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>\n{objs}</annotation>\n"
    )


def make_dataset(
    root: str,
    num_images: int = 120,
    seed: int = 0,
    size: tuple[int, int] = (160, 128),
    max_objects: int = 4,
    object_size: tuple[float, float] = (1 / 6, 1 / 2),
    min_objects: int = 1,
    classes: dict[str, tuple] | None = None,
) -> tuple[str, str]:
    """Writes ``root/images/*.jpg`` and ``root/annotations/*.xml``; returns both directories.

    The defaults are the demo's; ``bench/train.py`` also draws a small-object stress set (10-14
    objects of 2-8 % of the image side, sizes at which a stride-16 detector has no matching anchor)
    a minority-small one (``classes``: one class of small objects, few, among large ones) and an
    elongated one (classes of long, thin boxes).
    """
    rng = np.random.default_rng(seed)
    images, labels = os.path.join(root, "images"), os.path.join(root, "annotations")
    os.makedirs(images, exist_ok=True)
    os.makedirs(labels, exist_ok=True)
    w, h = size
    for i in range(num_images):
        name = f"shapes-{i:05d}.jpg"
        img, objects = draw_scene(rng, w, h, max_objects, object_size, min_objects, classes)
        img.save(os.path.join(images, name), quality=92)
        with open(os.path.join(labels, f"shapes-{i:05d}.xml"), "w") as f:
            f.write(voc_xml(name, w, h, objects))
    return images, labels

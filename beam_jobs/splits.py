"""Which split an image goes to, and how YOLO labels find their images: as users bring their data.

A split is taken, in this order, from:

0. a list that names the image: a YOLO ``data.yaml`` entry that is a ``.txt`` file of image paths,
   or Pascal VOC's ``ImageSets/Main/{train,val,test}.txt`` (image ids, beside ``Annotations/``);
1. a YOLO ``data.yaml``'s ``train`` / ``val`` / ``test`` directories (Ultralytics' dataset file);
2. a directory of the image's path below ``--images`` named for a split (``train/``, ``val/``,
   ``valid/``, ``test/`` … at any depth: ``images/train/x.jpg``, ``train/images/x.jpg``);
3. the label file's path below ``--labels``, its directories or its name (COCO's
   ``instances_val2017.json``, Roboflow's ``valid/_annotations.coco.json``);
4. else a stable hash of the image key against ``--val-fraction`` (the same on every run and runner).

YOLO pairs an image with its label file by path, as Ultralytics does (``images/…/x.jpg`` ↔
``labels/…/x.txt``), not by file stem, so ``train/x.jpg`` and ``val/x.jpg`` are two images.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from beam_jobs.records import image_key

SPLITS = ("train", "val", "test")
# Folder and file-name words for each split (Ultralytics, Roboflow, COCO, Kaggle spellings).
SPLIT_WORDS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
_GLOB = re.compile(r"[*?\[]")
_WORDS = re.compile(r"[^a-z]+")


def hash_split(key: str, val_fraction: float) -> str:
    """'val' or 'train' from a stable hash of the image key: the same on every run and runner."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return "val" if h / 2**64 < val_fraction else "train"


def root_of(location: str) -> str:
    """The directory a ``--images`` / ``--labels`` value lists below: a directory itself, or the
    part of a glob (or file path) before its file name, without a trailing slash."""
    match = _GLOB.search(location)
    head = location[: match.start()] if match else location
    if match or posixpath.splitext(head)[1]:  # a glob, or a single file: its directory
        head = posixpath.dirname(head)
    return head.rstrip("/")


def relative(path: str, root: str) -> str:
    """``path`` below ``root`` ("" when it is not below it, or no root is given)."""
    if not root:
        return ""
    root = root.rstrip("/") + "/"
    return path[len(root) :] if path.startswith(root) else ""


def split_of_dirs(rel: str) -> str | None:
    """The split a relative path's directories name (the deepest that names one), or None."""
    for part in reversed(rel.split("/")[:-1]):
        split = SPLIT_WORDS.get(part.lower())
        if split:
            return split
    return None


def split_of_label_file(rel: str) -> str | None:
    """The split a label file's relative path names: its directories, else a word of its name
    (``instances_val2017.json`` → val, ``train.json`` → train)."""
    split = split_of_dirs(rel)
    if split:
        return split
    stem = posixpath.splitext(posixpath.basename(rel))[0].lower()
    for word in _WORDS.split(stem):
        if word in SPLIT_WORDS:
            return SPLIT_WORDS[word]
    return None


def yolo_key(rel: str) -> str:
    """The join key of a YOLO image or label file from its path below --images / --labels: the path
    without its extension, ``images`` and ``labels`` directories left out (Ultralytics pairs
    ``images/train/x.jpg`` with ``labels/train/x.txt``)."""
    parts = [p for p in rel.split("/")[:-1] if p not in ("images", "labels")]
    return "/".join([*parts, posixpath.splitext(posixpath.basename(rel))[0]])


def _absolute(entry: str, base: str) -> str:
    """``entry`` as a full path: kept when absolute or a URI, else joined to ``base``; normalized
    (``..`` collapsed) on a local disk, where the OS would collapse it too."""
    where = entry if "://" in entry or entry.startswith("/") else posixpath.join(base, entry)
    return posixpath.normpath(where) if "://" not in where else where.rstrip("/")


def _yaml_entries(doc: Mapping, yaml_dir: str):
    """(absolute entry, split) for each of a data.yaml's train/val/test entries (a directory, a .txt
    list of images, or a list of those; relative to its ``path``, itself relative to the file)."""
    base = str(doc.get("path") or "")
    base = base if "://" in base or base.startswith("/") else posixpath.normpath(posixpath.join(yaml_dir, base))
    for split in SPLITS:
        entries = doc.get(split) or []
        for entry in entries if isinstance(entries, list) else [entries]:
            yield _absolute(str(entry), base), split


def yaml_split_dirs(doc: Mapping, yaml_dir: str) -> dict[str, str]:
    """{directory (absolute, no trailing slash): split} from a data.yaml's train/val/test entries."""
    return {where: split for where, split in _yaml_entries(doc, yaml_dir) if not posixpath.splitext(where)[1]}


def yaml_split_lists(doc: Mapping, yaml_dir: str) -> dict[str, str]:
    """{list file (absolute): split} from a data.yaml's train/val/test entries that are ``.txt`` files
    of image paths (Ultralytics' other way of naming a split)."""
    return {
        where: split for where, split in _yaml_entries(doc, yaml_dir) if posixpath.splitext(where)[1].lower() == ".txt"
    }


def listed_images(text: str, list_file: str) -> list[str]:
    """The image paths of an Ultralytics list file, one a line: ``./x.jpg`` and other relative
    paths are below the list file's directory (as Ultralytics reads ``./``), absolute ones as written."""
    base = posixpath.dirname(list_file)
    return [
        _absolute(line[2:] if line.startswith("./") else line, base)
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


VOC_IMAGE_SETS = "ImageSets/Main"  # beside Annotations/: train.txt, val.txt, test.txt of image ids
_VOC_SETS_DIR = "/ImageSets/"  # every file below it (Main, Layout, Segmentation …) is a split list


def voc_image_set_files(dataset_dir: str) -> dict[str, str]:
    """{split: list file} where Pascal VOC keeps its split lists (``VOC2012/ImageSets/Main/train.txt``
    beside ``VOC2012/Annotations``); ``trainval.txt`` is the union of two and is not read."""
    return {split: f"{dataset_dir.rstrip('/')}/{VOC_IMAGE_SETS}/{split}.txt" for split in SPLITS}


def listed_ids(text: str) -> list[str]:
    """The image ids of a VOC ImageSets file: the first word of each line (``2008_000008``)."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _longest_first(yaml_dirs: Mapping[str, str] | Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """(directory, split) pairs, the deepest directory first: it decides for the images below it."""
    pairs = yaml_dirs.items() if isinstance(yaml_dirs, Mapping) else yaml_dirs
    return tuple(sorted(pairs, key=lambda kv: -len(kv[0])))


def split_of(
    image_path: str,
    images_root: str,
    label_source: str,
    labels_root: str,
    key: str,
    val_fraction: float,
    yaml_dirs: Mapping[str, str] | Sequence[tuple[str, str]] = (),
    ordered: bool = False,
    listed: Mapping[str, str] | None = None,
) -> str:
    """The image's split: a list naming it (``listed``: image path or image key → split), data.yaml's
    directories, the image's folders, the label file's, else the hash. ``ordered``: ``yaml_dirs`` is
    a sequence already deepest first (:class:`Pairing` orders its own once, not per image)."""
    if listed:
        split = listed.get(image_path) or listed.get(key)
        if split:
            return split
    for directory, split in yaml_dirs if ordered else _longest_first(yaml_dirs):
        if image_path.startswith(directory + "/"):
            return split
    split = split_of_dirs(relative(image_path, images_root))
    if split is None and label_source and label_source != image_path:
        split = split_of_label_file(relative(label_source.split("#", 1)[0], labels_root))
    return split or hash_split(key, val_fraction)


@dataclass(frozen=True)
class Pairing:
    """How one ingest run keys images and label records, and splits images: built once by the
    driver from the options, carried to every worker."""

    images_root: str
    labels_root: str
    val_fraction: float
    by_path: bool = False  # YOLO: images/…/x.jpg ↔ labels/…/x.txt; the other formats join on the file stem
    yaml_dirs: tuple[tuple[str, str], ...] = ()  # (directory, split) from a data.yaml, ordered deepest first here
    listed: Mapping[str, str] = field(default_factory=dict)  # image path or image key → split, from split lists
    list_files: tuple[str, ...] = ()  # the split lists read: companions of the labels, not label files

    def is_split_list(self, path: str) -> bool:
        """A split list, or (Pascal VOC) any file of its ImageSets/ directory: never a label file."""
        return path in self.list_files or (not self.by_path and _VOC_SETS_DIR in path)

    def __post_init__(self):
        object.__setattr__(self, "yaml_dirs", _longest_first(self.yaml_dirs))

    def image_key(self, path: str) -> str:
        if self.by_path:
            return yolo_key(relative(path, self.images_root) or posixpath.basename(path))
        return image_key(path)

    def label_key(self, source: str) -> str | None:
        """The join key a label file gives its record (YOLO), or None: the record's image name decides."""
        if self.by_path:
            return yolo_key(relative(source, self.labels_root) or posixpath.basename(source))
        return None

    def split(self, image_path: str, label_source: str, key: str) -> str:
        return split_of(
            image_path,
            self.images_root,
            label_source,
            self.labels_root,
            key,
            self.val_fraction,
            self.yaml_dirs,
            ordered=True,
            listed=self.listed,
        )

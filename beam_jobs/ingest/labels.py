"""Label files: where YOLO's class names and a run's split lists come from, and the parsing of
label files (VOC, COCO, CSV, YOLO: :mod:`beam_jobs.parsers`) into keyed LabelRecords."""

from __future__ import annotations

import logging
import posixpath

import apache_beam as beam

from beam_jobs import records as R
from beam_jobs.ingest.errors import IngestError
from beam_jobs.parsers import YOLO_CLASSES_FILE, is_label_file, parse_label_file
from beam_jobs.parsers.yolo import load_class_names
from beam_jobs.patterns import has_glob, is_dir, is_image_name
from beam_jobs.splits import (
    Pairing,
    listed_ids,
    listed_images,
    root_of,
    voc_image_set_files,
    yaml_split_dirs,
    yaml_split_lists,
)
from beam_jobs.storage_dofn import StorageDoFn
from ssdflow import storage
from ssdflow.config import IngestConfig, LabelFormat
from ssdflow.schema import LabelMap

log = logging.getLogger(__name__)


# YOLO's class names (and data.yaml's splits), looked for beside the labels: not label files themselves.
COMPANION_FILES = ("data.yaml", "data.yml", YOLO_CLASSES_FILE)


def _yolo_companions(cfg: IngestConfig) -> list[str]:
    """Where YOLO's class names may be, in order: --classes; else beside the labels, then one level
    up (Ultralytics keeps data.yaml at the dataset's root, above images/ and labels/)."""
    if cfg.classes:
        return [cfg.classes]
    base = cfg.labels.rstrip("/") if is_dir(cfg.labels) else posixpath.dirname(cfg.labels)
    return [storage.join(d, n) for d in (base, posixpath.dirname(base)) for n in COMPANION_FILES]


def load_class_names_for(cfg: IngestConfig) -> list[str] | None:
    """YOLO class names from --classes, else a data.yaml / classes.txt beside the labels or one level up."""
    if cfg.format != LabelFormat.yolo:
        return None
    candidates = _yolo_companions(cfg)
    for uri in candidates:
        if storage.exists(uri):
            try:
                return load_class_names(uri, storage.read_bytes(uri))
            except ValueError as e:
                raise IngestError(f"--classes {uri}: {e}") from None
    raise IngestError(
        "YOLO labels carry class indexes only: pass --classes FILE (one name per line, or a data.yaml "
        f"with `names`); none found at {', '.join(candidates)}"
    )


def pairing_for(cfg: IngestConfig) -> Pairing:
    """How this run keys and splits: the roots of --images and --labels, YOLO's path pairing, and the
    train/val/test directories of a data.yaml (the one the class names come from)."""

    def root(location: str) -> str:
        return location.rstrip("/") if not has_glob(location) and is_dir(location) else root_of(location)

    yaml_dirs: dict[str, str] = {}
    lists: dict[str, str] = {}  # split list file → split
    if cfg.format == LabelFormat.yolo:
        import yaml

        found = next((u for u in _yolo_companions(cfg) if u.endswith((".yaml", ".yml")) and storage.exists(u)), None)
        if found:
            try:
                doc = yaml.safe_load(storage.read_text(found))
            except (yaml.YAMLError, UnicodeDecodeError) as e:
                raise IngestError(f"{found}: not valid YAML: {e}") from None
            if isinstance(doc, dict):
                yaml_dirs = yaml_split_dirs(doc, posixpath.dirname(found))
                lists = yaml_split_lists(doc, posixpath.dirname(found))
                for list_file in lists:
                    if not storage.exists(list_file):
                        raise IngestError(
                            f"{found} names {list_file} as the {lists[list_file]} list, which is not there"
                        )
    elif cfg.format == LabelFormat.voc:
        labels_root = root(cfg.labels)
        for base in (labels_root, posixpath.dirname(labels_root)):  # --labels VOC2012/ or VOC2012/Annotations
            sets = {f: split for split, f in voc_image_set_files(base).items() if storage.exists(f)}
            if sets:
                lists = sets
                break
    listed: dict[str, str] = {}
    for list_file, split in lists.items():
        text = storage.read_text(list_file)
        names = listed_images(text, list_file) if cfg.format == LabelFormat.yolo else listed_ids(text)
        for name in names:
            if listed.setdefault(name, split) != split:
                raise IngestError(
                    f"{name} is in two split lists ({listed[name]} and {split}: {', '.join(sorted(lists))}); "
                    "an image belongs to one split"
                )
    if lists:
        log.info("ingest: splits from %s (%d images listed)", ", ".join(sorted(lists)), len(listed))
    return Pairing(
        root(cfg.images),
        root(cfg.labels),
        cfg.val_fraction,
        by_path=cfg.format == LabelFormat.yolo,
        yaml_dirs=tuple(yaml_dirs.items()),
        listed=listed,
        list_files=tuple(sorted(lists)),
    )


def load_fixed_label_map(cfg: IngestConfig) -> LabelMap | None:
    if not cfg.label_map:
        return None
    try:
        return LabelMap.parse(storage.read_text(cfg.label_map), cfg.label_map)
    except Exception as e:
        raise IngestError(f"--label-map {cfg.label_map}: {e}") from None


class _ParseLabelFiles(StorageDoFn):
    """Parses a batch of label files (batched so thousands of small XML files spread over workers)."""

    def __init__(self, fmt: str, class_names: list[str] | None, flags=(), pairing: Pairing | None = None):
        super().__init__(flags)
        self.fmt = fmt
        self.class_names = class_names
        self.pairing = pairing or Pairing("", "", 0.0)

    def process(self, paths):
        for path in paths:
            try:
                data = storage.read_bytes(path)
            except Exception as e:  # storage errors become dead letters, not job failures
                yield beam.pvalue.TaggedOutput(
                    "rejected", R.Rejection(path, R.MALFORMED_LABEL_FILE, f"cannot read: {e}", R.LABEL_FILE)
                )
                continue
            result = parse_label_file(
                self.fmt, path, data, class_names=self.class_names, join_key=self.pairing.label_key(path)
            )
            for rej in result.rejections:
                yield beam.pvalue.TaggedOutput("rejected", rej)
            for rec in result.records:
                yield rec.key, rec


class ParseLabels(beam.PTransform):
    """FileMetadata of the files under --labels → {"records": (key, LabelRecord), "rejected":
    Rejection} (file-level problems); files that are not label files of the format are ignored."""

    FILES_PER_TASK = 128

    def __init__(self, fmt: str, class_names: list[str] | None, flags=(), pairing: Pairing | None = None):
        super().__init__()
        self.fmt, self.class_names, self.flags, self.pairing = fmt, class_names, flags, pairing or Pairing("", "", 0.0)

    def expand(self, files):
        fmt, n, pairing = self.fmt, self.FILES_PER_TASK, self.pairing

        def path_of(meta):
            if R.is_text_name(meta.path):
                yield meta.path
            else:
                yield beam.pvalue.TaggedOutput("rejected", R.undecodable_name(meta.path, R.LABEL_FILE))

        paths = (
            files
            | "LabelFilesOnly"
            >> beam.Filter(lambda meta: is_label_file(fmt, meta.path) and not pairing.is_split_list(meta.path))
            | "Paths" >> beam.FlatMap(path_of).with_outputs("rejected", main="paths")
        )
        parsed = (
            paths.paths
            | "Batch" >> beam.BatchElements(min_batch_size=n, max_batch_size=n)
            | "Spread" >> beam.Reshuffle()  # matching happens in one place; parsing should not
            | "Parse"
            >> beam.ParDo(_ParseLabelFiles(self.fmt, self.class_names, self.flags, self.pairing)).with_outputs(
                "rejected", main="records"
            )
        )
        rejected = (paths.rejected, parsed.rejected) | "AllRejected" >> beam.Flatten()
        return {"records": parsed.records, "rejected": rejected}


def ignored_under_labels(path: str, fmt: str, pairing: Pairing) -> bool:
    """Whether a file under --labels is none of: a label file of ``fmt``, an image, YOLO's class
    names or data.yaml, a split list. Such files are counted and named in stats.json."""
    return not (
        is_label_file(fmt, path)
        or is_image_name(path)
        or posixpath.basename(path).lower() in COMPANION_FILES
        or pairing.is_split_list(path)
    )

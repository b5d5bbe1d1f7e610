"""Listing: the files under --images and --labels, and which of them are images.

``ListFiles`` lists both patterns at once; ``ListImages`` keys each image file for the join (its
stem, or for YOLO its path below --images) and counts what is not an image.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_jobs import records as R
from beam_jobs.patterns import is_image_name
from beam_jobs.records import INGEST_METRICS as METRICS
from beam_jobs.records import ImageFile
from beam_jobs.splits import Pairing
from beam_jobs.storage_dofn import StorageDoFn
from ssdflow import progress


class _MatchPattern(StorageDoFn):
    """(name, file pattern) → the matched files' FileMetadata, tagged with the name. With
    ``totals_dir``, the image files listed for 'images' are marked there (the progress's total)."""

    def __init__(self, flags=(), totals_dir: str | None = None):
        super().__init__(flags)
        self.totals_dir = totals_dir

    def process(self, named_pattern):
        name, pattern = named_pattern
        images = 0
        for meta in FileSystems.match([pattern])[0].metadata_list:
            images += name == "images" and is_image_name(meta.path)
            yield beam.pvalue.TaggedOutput(name, meta)
        if self.totals_dir and images:
            marks = progress.Marks(self.totals_dir)
            marks.add(images)
            marks.flush()


class ListFiles(beam.PTransform):
    """{name: file pattern} → {name: PCollection of FileMetadata}, an empty match allowed.

    One element per pattern, reshuffled: a runner with several workers lists the patterns (the
    images and the label files) at the same time, where one ``MatchFiles`` per pattern would run
    one listing after the other on a local runner."""

    def __init__(self, patterns: dict[str, str], flags=(), totals_dir: str | None = None):
        super().__init__()
        self.patterns, self.flags, self.totals_dir = patterns, flags, totals_dir

    def expand(self, pbegin):
        names = sorted(self.patterns)
        listed = (
            pbegin
            | "Patterns" >> beam.Create([(name, self.patterns[name]) for name in names])  # reshuffles 2+ elements
            | "Match" >> beam.ParDo(_MatchPattern(self.flags, self.totals_dir)).with_outputs(*names)
        )
        return {name: listed[name] for name in names}


class ListImages(beam.PTransform):
    """FileMetadata of the files under --images → (key, ImageFile). Other files are skipped and
    counted; names that are not valid UTF-8 are rejected (tag 'rejected'). The key is the file
    stem, or for YOLO the path below --images (``pairing``, beam_jobs/splits.py)."""

    def __init__(self, pairing: Pairing | None = None):
        super().__init__()
        self.pairing = pairing or Pairing("", "", 0.0)

    def expand(self, files):
        skipped = Metrics.counter(METRICS, "files_skipped")
        key_of = self.pairing.image_key

        def keyed(meta):
            if not R.is_text_name(meta.path):
                yield beam.pvalue.TaggedOutput("rejected", R.undecodable_name(meta.path))
            elif is_image_name(meta.path):
                yield key_of(meta.path), ImageFile(meta.path, meta.size_in_bytes)
            else:
                skipped.inc()
                yield beam.pvalue.TaggedOutput("skipped", meta.path)

        return files | "Key" >> beam.FlatMap(keyed).with_outputs("skipped", "rejected", main="images")

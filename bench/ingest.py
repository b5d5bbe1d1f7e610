"""Ingest throughput: the Beam job against plain loops, in one run.

    .venv/bin/python -m bench.ingest --records 20000

Builds raccoon replicated to N distinct records (each copy's name appended after the JPEG end
marker, so no dedup collapses them; one VOC XML per copy), then times, in this process:

* job:  ``run_ingest`` with the CLI's defaults (DirectRunner; one worker process per core from
        2000 inputs, ssdflow/beam_runner.py), or the Beam options given with --beam-args;
* (a)   a plain single-process loop doing the job's work: parse each XML, read the image, decode
        it fully, hash it, build the tf.Example, write TFRecord (the same functions the job calls);
* (b)   the TF OD API tutorial loop (create_pascal_tf_record.py): reads only the image header and
        builds the Example with tf.train / tf.io.TFRecordWriter.

Prints records/s for each and the ratios (a)/job and (b)/job in time.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path

from bench.timing import timed

REPO = Path(__file__).resolve().parents[1]
RACCOON = REPO.parent / "shared" / "datasets" / "raccoon"


def make_replicas(root: Path, n: int, src: Path = RACCOON) -> tuple[Path, Path]:
    images, labels = root / "images", root / "annotations"
    if images.is_dir() and len(os.listdir(images)) == n:
        return images, labels
    shutil.rmtree(root, ignore_errors=True)
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    sources = sorted((src / "images").glob("*.jpg"))
    for i in range(n):
        s = sources[i % len(sources)]
        name = f"{s.stem}-copy{i:06d}"
        (images / f"{name}.jpg").write_bytes(s.read_bytes() + name.encode())  # distinct bytes, same pixels
        xml = (
            (src / "annotations" / f"{s.stem}.xml")
            .read_text()
            .replace(f"<filename>{s.name}</filename>", f"<filename>{name}.jpg</filename>")
        )
        (labels / f"{name}.xml").write_text(xml)
    return images, labels


def read_all(*dirs: Path) -> int:
    """Reads every file once, so that the job (timed first) and the loop (second) both find the
    data in the page cache; after other work had evicted it, the first reader paid 40 % more."""
    return sum(len(f.read_bytes()) for d in dirs for f in d.iterdir())


def loop_full(images: Path, labels: Path, out: Path) -> int:
    """(a): the job's per-image work in a plain loop (no dedup bookkeeping, no Beam)."""
    from beam_jobs.encode import encode_image
    from beam_jobs.parsers import voc
    from ssdflow import tfrecord
    from ssdflow.schema import LabelMap

    label_map = LabelMap.from_names(["raccoon"])
    n = 0
    with open(out, "wb") as f:
        for xml in sorted(glob.glob(str(labels / "*.xml"))):
            result = voc.parse(xml, Path(xml).read_bytes())
            for rec in result.records:
                path = images / rec.image_name
                enc = encode_image(rec, str(path), path.read_bytes(), label_map)
                if enc.example is not None:
                    f.write(tfrecord.frame(enc.example))
                    n += 1
    return n


def loop_tutorial(images: Path, labels: Path, out: Path) -> int:
    import xml.etree.ElementTree as ET

    import PIL.Image
    import tensorflow as tf

    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=v))

    def fl(v):
        return tf.train.Feature(float_list=tf.train.FloatList(value=v))

    def i64(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=v))

    n = 0
    with tf.io.TFRecordWriter(str(out)) as writer:
        for xml in sorted(glob.glob(str(labels / "*.xml"))):
            data = ET.parse(xml).getroot()
            path = images / data.findtext("filename")
            with tf.io.gfile.GFile(str(path), "rb") as fid:
                encoded = fid.read()
            image = PIL.Image.open(io.BytesIO(encoded))  # header only, as the tutorial
            if image.format != "JPEG":
                raise ValueError("Image format not JPEG")
            key = hashlib.sha256(encoded).hexdigest()
            w, h = int(data.findtext("size/width")), int(data.findtext("size/height"))
            xmin, ymin, xmax, ymax, text, label, diff = [], [], [], [], [], [], []
            for obj in data.findall("object"):
                xmin.append(float(obj.findtext("bndbox/xmin")) / w)
                ymin.append(float(obj.findtext("bndbox/ymin")) / h)
                xmax.append(float(obj.findtext("bndbox/xmax")) / w)
                ymax.append(float(obj.findtext("bndbox/ymax")) / h)
                text.append(obj.findtext("name").encode())
                label.append(1)
                diff.append(int(obj.findtext("difficult") or 0))
            name = data.findtext("filename").encode()
            ex = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "image/height": i64([h]),
                        "image/width": i64([w]),
                        "image/filename": b([name]),
                        "image/source_id": b([name]),
                        "image/key/sha256": b([key.encode()]),
                        "image/encoded": b([encoded]),
                        "image/format": b([b"jpeg"]),
                        "image/object/bbox/xmin": fl(xmin),
                        "image/object/bbox/xmax": fl(xmax),
                        "image/object/bbox/ymin": fl(ymin),
                        "image/object/bbox/ymax": fl(ymax),
                        "image/object/class/text": b(text),
                        "image/object/class/label": i64(label),
                        "image/object/difficult": i64(diff),
                    }
                )
            )
            writer.write(ex.SerializeToString())
            n += 1
    return n


def run_job(images: Path, labels: Path, out: Path, beam_args: list[str]) -> dict:
    from beam_jobs.ingest import run_ingest
    from ssdflow.config import IngestConfig

    return run_ingest(
        IngestConfig(images=str(images), labels=str(labels), format="voc", out=str(out), beam_args=beam_args)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ssdflow-bench-ingest"))
    ap.add_argument(
        "--beam-args",
        default="",
        help='Beam options for the job, e.g. "--direct_num_workers=1"; default: none, as the CLI',
    )
    ap.add_argument("--skip-loop", action="store_true", help="time the job only")
    ap.add_argument("--skip-tutorial", action="store_true")
    args = ap.parse_args()

    # Import everything first: the job and the loops are timed as library calls, not interpreter start-up.
    import beam_jobs.ingest  # noqa: F401
    import tensorflow  # noqa: F401

    work = Path(args.workdir)
    t, (images, labels) = timed(make_replicas, work / "data", args.records)
    t_read, n_bytes = timed(read_all, images, labels)
    print(
        f"data: {args.records} records in {work / 'data'} ({t:.1f}s to prepare, {t_read:.1f}s to read {n_bytes / 2**20:.0f} MiB once)"
    )
    beam_args = args.beam_args.split()
    # The job and the loops each start without an earlier run's output: deleting a gigabyte of old
    # shards (the job's commit replaces them; the loop's open truncates its file) is not this work.
    for old in (work / "out", work / "loop.tfrecord", work / "tutorial.tfrecord"):
        shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)

    t_job, stats = timed(run_job, images, labels, work / "out", beam_args)
    assert stats["images_written"]["total"] == args.records, stats["images_rejected"]
    print(f"job ({' '.join(beam_args) or 'default options'}):")
    print(f"    the Beam ingest job:       {t_job:7.1f} s  {args.records / t_job:7.0f} records/s", flush=True)
    if args.skip_loop:
        return
    t_loop, n_loop = timed(loop_full, images, labels, work / "loop.tfrecord")
    assert n_loop == args.records
    print(f"(a) plain loop, same work:     {t_loop:7.1f} s  {args.records / t_loop:7.0f} records/s")
    print(f"ratio (a) loop time / job time: {t_loop / t_job:.2f}   (goal >= 1.6 on 2 cores; limit 2.0)")
    if not args.skip_tutorial:
        t_tut, n_tut = timed(loop_tutorial, images, labels, work / "tutorial.tfrecord")
        assert n_tut == args.records
        print(
            f"(b) TF OD API tutorial loop:   {t_tut:7.1f} s  {args.records / t_tut:7.0f} records/s (header-only check)"
        )
        print(
            f"ratio (b) tutorial time / job time: {t_tut / t_job:.2f}   (what full validation costs, against a loop that skips it)"
        )


if __name__ == "__main__":
    main()

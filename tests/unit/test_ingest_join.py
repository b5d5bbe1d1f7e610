"""Ingest's join by hash bucket: spilled pairs in, equal-sized candidate chunks out (the spill files
themselves: tests/unit/test_spill.py)."""

from __future__ import annotations

import pytest

from beam_jobs import records as R
from beam_jobs.buckets import hash_bucket
from beam_jobs.ingest.join import CANDIDATES_PER_CHUNK, JOIN_BUCKETS, _MatchDoFn, _PackByBucket, deal_by_size
from beam_jobs.records import ImageFile
from beam_jobs.spill import Spill


@pytest.fixture
def spill(tmp_path) -> Spill:
    return Spill(str(tmp_path / "spill"))


def _bucket(pairs, spill: Spill) -> dict:
    return {
        "images": [spill.write([(k, v) for k, v in pairs if isinstance(v, ImageFile)])],
        "labels": [spill.write([(k, v) for k, v in pairs if not isinstance(v, ImageFile)])],
    }


def test_a_bucket_yields_candidate_chunks_of_nearly_equal_size_and_its_rejections(spill):
    """A local runner deals chunks to its workers in turn: a full chunk and a small remainder per
    bucket would give one worker every full chunk."""
    n = CANDIDATES_PER_CHUNK + 44
    pairs = [(f"k{i:04d}", ImageFile(f"i/k{i:04d}.jpg", 1000 + i)) for i in range(n)] + [
        (f"k{i:04d}", R.LabelRecord(f"k{i:04d}.jpg", "l.csv")) for i in range(n)
    ]
    pairs += [("lonely", ImageFile("i/lonely.jpg", 5)), ("ghost", R.LabelRecord("ghost.jpg", "l.csv"))]
    out = list(_MatchDoFn(False, spill).process((7, _bucket(pairs, spill))))
    chunks = [spill.read(o) for o in out if isinstance(o, str)]
    rejected = sorted((o.value.source, o.value.reason) for o in out if not isinstance(o, str))
    assert sorted(len(c) for c in chunks) == [n // 2, n - n // 2]
    assert sorted(path for c in chunks for path, _ in c) == sorted(f"i/k{i:04d}.jpg" for i in range(n))
    assert all(rec.key == path[2:-4] for c in chunks for path, rec in c)
    assert rejected == [("i/lonely.jpg", R.NO_LABEL), ("l.csv", R.MISSING_IMAGE)]
    assert all([path for path, _ in c] == sorted(path for path, _ in c) for c in chunks)  # key order within a chunk


def test_chunks_are_dealt_by_size_so_that_each_holds_about_the_same_bytes():
    """Sizes in key order (all the big images first) must not make the first chunk the heavy one."""
    sizes = [10_000 - 37 * i for i in range(200)] + [100] * 57
    candidates = [
        (ImageFile(f"i/{i:03d}.jpg", size), R.LabelRecord(f"{i:03d}.jpg", "l.csv")) for i, size in enumerate(sizes)
    ]
    chunks = deal_by_size(candidates, 3)
    assert sorted(len(c) for c in chunks) == [85, 86, 86]
    assert sorted(c for chunk in chunks for c in chunk) == sorted(candidates)
    totals = [sum(image.size for image, _ in chunk) for chunk in chunks]
    assert max(totals) - min(totals) < max(sizes)  # equal counts cut in key order differ by 40 % here
    naive = [sum(sizes[i * len(sizes) // 3 : (i + 1) * len(sizes) // 3]) for i in range(3)]
    assert max(naive) - min(naive) > 20 * max(sizes)
    assert all(chunk == sorted(chunk, key=lambda c: c[0].path) for chunk in chunks)


def test_pairs_are_spilled_per_bucket_and_flushed_at_the_limit(spill):
    fn = _PackByBucket(spill)
    fn.PACK_LIMIT = 10  # so that 3000 pairs over 64 buckets reach it
    fn.start_bundle()
    keys = [f"img{i}" for i in range(3000)]
    early = [out for k in keys for out in fn.process((k, f"/i/{k}.jpg"))]
    late = [wv.value for wv in fn.finish_bundle()]
    emitted = early + late
    assert early and all(len(spill.read(blob)) == fn.PACK_LIMIT for _, blob in early)
    got = {k: (b, p) for b, blob in emitted for k, p in spill.read(blob)}
    assert sorted(got) == sorted(keys)
    assert all(
        b == hash_bucket(k, JOIN_BUCKETS) and 0 <= b < JOIN_BUCKETS and p == f"/i/{k}.jpg" for k, (b, p) in got.items()
    )
    assert len(late) <= JOIN_BUCKETS

"""Spill files (beam_jobs/spill.py): every record kind comes back equal and of its own type; a file
that this job did not write as it is (a pickle that would run code, random bytes, a truncated or
edited file, an unknown record) is refused naming the file, and reading it never runs code."""

from __future__ import annotations

import json
import math
import os
import pickle

import pytest

from beam_jobs import records as R
from beam_jobs.spill import MAGIC, Spill, SpillError, frame
from tests.helpers import PickleBomb


@pytest.fixture
def spill(tmp_path) -> Spill:
    return Spill(str(tmp_path / "spill"))


def _label_record() -> R.LabelRecord:
    boxes = (
        R.BoxLabel(1.5, 2.0, 30.25, 40.0, "cat", difficult=True, source="l/a.xml#object=0"),
        R.BoxLabel(0.1, 0.2, 0.3, 0.4, "dög", normalized=True),
    )
    return R.LabelRecord(
        "images/a.jpg",
        "l/a.xml",
        boxes,
        640,
        480,
        (R.Rejection("l/a.xml#object=2", R.INVERTED, "xmin 9 > xmax 3", R.BOX),),
        join_key="train/a",
    )


def test_every_record_kind_comes_back_equal_and_of_its_type(spill):
    outcome = R.ImageOutcome(
        "a",
        "i/a.jpg",
        "ab" * 32,
        "train",
        "parts/train-1.part",
        1024,
        77,
        3,
        (("cat", 2), ("dog", 1)),
        (R.Rejection("i/a.jpg", R.OUT_OF_BOUNDS, "box 2", R.BOX),),
        (("clipped", 1),),
    )
    rejected = R.ImageOutcome(
        "b", "i/b.jpg", "", None, rejections=(R.Rejection("i/b.jpg", R.DECODE_ERROR, "truncated"),)
    )
    items = [
        ("a", R.ImageFile("i/a.jpg", 12345)),
        ("a", _label_record()),
        ("i/a.jpg", _label_record()),
        outcome,
        rejected,
        ("odd \udce9 name", None, 1e-300, -0.0, True, [1, (2, 3)]),
    ]
    path = spill.write(items)
    back = spill.read(path)
    assert back == [tuple(i) if isinstance(i, list) else i for i in items[:-1]] + [
        ("odd \udce9 name", None, 1e-300, -0.0, True, (1, (2, 3)))
    ]
    assert type(back[0][1]) is R.ImageFile and back[0][1].path == "i/a.jpg"
    assert type(back[1][1]) is R.LabelRecord and back[1][1].key == "train/a" and type(back[1][1].boxes) is tuple
    assert type(back[3].class_counts[0]) is tuple and hash(back[3]) == hash(outcome)  # frozen records hash by tuples
    assert math.copysign(1, back[-1][3]) == -1
    with open(path, "rb") as f:
        header, _, body = f.read().partition(b"\n")
    assert header.startswith(MAGIC) and isinstance(json.loads(body), list)  # plain JSON on disk
    assert path.endswith(".json") and os.path.dirname(path) == spill.directory


def test_only_plain_values_and_the_job_records_can_be_written(spill):
    with pytest.raises(TypeError, match="cannot go into a spill file"):
        spill.write([{"a": 1}])
    with pytest.raises(TypeError, match="cannot go into a spill file"):
        spill.write([("k", object())])


def _signed(body: bytes) -> bytes:
    """What anyone with write access to the temp directory can make: the header is no secret."""
    return frame(body)


def test_a_forged_or_damaged_file_is_refused_naming_it_and_nothing_runs(spill, tmp_path):
    pwned = tmp_path / "pwned"
    path = spill.write([("k", 1)])
    assert spill.read(path) == [("k", 1)]
    evil = pickle.dumps([PickleBomb(pwned)])
    forgeries = {
        "a pickle": (evil, "header"),
        "a pickle with a valid header": (_signed(evil), "not a spill file"),
        "random bytes": (os.urandom(4096), "header"),
        "random bytes with a valid header": (_signed(os.urandom(4096)), "not a spill file"),
        "an unknown record": (_signed(b'[{"system":["touch pwned"]}]'), "unknown record"),
        "a record with wrong fields": (_signed(b'[{"ImageFile":["a",1,2]}]'), "not a spill file"),
        "an object that is no record": (_signed(b'[{"ImageFile":["a",1],"x":1}]'), "not a spill file"),
        "deep nesting": (_signed(b"[" * 100_000 + b"]" * 100_000), "not a spill file"),
        "not an array": (_signed(json.dumps({"ImageFile": ["a", 1]}).encode()), "not a spill file"),
    }
    good = open(path, "rb").read()
    forgeries["truncated"] = (good[:-3], "SHA-256")
    forgeries["one byte changed"] = (good.replace(b'"k"', b'"j"'), "SHA-256")
    for what, (data, message) in forgeries.items():
        with open(path, "wb") as f:
            f.write(data)
        with pytest.raises(SpillError, match=message) as raised:
            spill.read(path)
        assert path in str(raised.value), what
    assert not pwned.exists()


def test_no_pickle_in_the_spill_code():
    """The format cannot run code when read because nothing on the read path can: no pickle."""
    import beam_jobs.spill as spill_module

    source = open(spill_module.__file__).read()
    assert "import pickle" not in source and "pickle." not in source and "loads(body, object_hook=_record)" in source

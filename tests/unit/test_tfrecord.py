"""ssdflow.tfrecord: frames written without TensorFlow are valid TFRecords, concatenate into valid
files, and corruption or truncation is detected on read."""

from __future__ import annotations

import io

import pytest

from ssdflow.tfrecord import frame, frame_size, read_records

PAYLOADS = [b"first record", b"", b"\x00\xff" * 300, bytes(range(256)) * 5]


def _write(path, payloads):
    path.write_bytes(b"".join(frame(p) for p in payloads))
    return path


def test_frame_size():
    for p in PAYLOADS:
        assert len(frame(p)) == frame_size(len(p)) == len(p) + 16


def test_read_records_round_trip():
    data = b"".join(frame(p) for p in PAYLOADS)
    assert list(read_records(io.BytesIO(data))) == PAYLOADS
    assert list(read_records(io.BytesIO(b""))) == []


def test_tensorflow_reads_our_frames_and_writes_the_same_bytes(tmp_path):
    import tensorflow as tf

    path = _write(tmp_path / "ours.tfrecord", PAYLOADS)
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == PAYLOADS

    theirs = tmp_path / "theirs.tfrecord"
    with tf.io.TFRecordWriter(str(theirs)) as w:
        for p in PAYLOADS:
            w.write(p)
    assert theirs.read_bytes() == path.read_bytes()


def test_concatenated_files_are_one_valid_file(tmp_path):
    import tensorflow as tf

    a = _write(tmp_path / "a.tfrecord", PAYLOADS[:2])
    b = _write(tmp_path / "b.tfrecord", PAYLOADS[2:])
    both = tmp_path / "both.tfrecord"
    both.write_bytes(a.read_bytes() + b.read_bytes())

    with open(both, "rb") as f:
        assert list(read_records(f)) == PAYLOADS
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(both))] == PAYLOADS


def test_flipped_payload_byte_is_detected():
    data = bytearray(frame(b"a" * 40) + frame(b"hello world"))
    data[12 + 5] ^= 0x01  # inside the first payload
    with pytest.raises(ValueError, match="data checksum"):
        list(read_records(io.BytesIO(bytes(data))))


def test_flipped_length_byte_is_detected():
    data = bytearray(frame(b"hello world"))
    data[0] ^= 0x01
    with pytest.raises(ValueError, match="length checksum"):
        list(read_records(io.BytesIO(bytes(data))))


@pytest.mark.parametrize("cut", [1, 6, 11, 12, 20, 16 + 40 - 1])
def test_truncated_file_raises(cut):
    data = frame(b"x" * 40)
    whole = frame(b"ok") + data
    truncated = whole[: len(frame(b"ok")) + cut]
    with pytest.raises(ValueError, match="truncated"):
        list(read_records(io.BytesIO(truncated)))

"""ssdflow.schema: our protobuf-only tf.Example is what TensorFlow reads, and label maps round-trip
through JSON and TF OD API pbtxt."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssdflow import schema
from ssdflow.schema import LabelMap

FIELDS = schema.ExampleFields(
    encoded=b"\xff\xd8\xff\xe0 not really a jpeg \x00\x01",
    image_format="jpeg",
    height=100,
    width=200,
    filename="pic-1.jpg",
    source_id="pic-1",
    sha256="ab" * 32,
    xmin=[0.1, 0.25],
    ymin=[0.2, 0.0],
    xmax=[0.5, 1.0],
    ymax=[0.75, 0.5],
    class_text=["cat", "dög"],
    class_label=[1, 2],
    difficult=[0, 1],
)

EXPECTED = {
    schema.ENCODED: [FIELDS.encoded],
    schema.FORMAT: [b"jpeg"],
    schema.HEIGHT: [100],
    schema.WIDTH: [200],
    schema.FILENAME: [b"pic-1.jpg"],
    schema.SOURCE_ID: [b"pic-1"],
    schema.SHA256: [b"ab" * 32],
    schema.XMIN: [0.1, 0.25],
    schema.YMIN: [0.2, 0.0],
    schema.XMAX: [0.5, 1.0],
    schema.YMAX: [0.75, 0.5],
    schema.CLASS_TEXT: [b"cat", "dög".encode()],
    schema.CLASS_LABEL: [1, 2],
    schema.DIFFICULT: [0, 1],
}
FLOAT_KEYS = {schema.XMIN, schema.YMIN, schema.XMAX, schema.YMAX}


def _assert_matches(actual: dict):
    assert set(actual) == set(EXPECTED)
    for key, want in EXPECTED.items():
        got = list(actual[key])
        if key in FLOAT_KEYS:
            assert np.allclose(got, want, atol=1e-7), key
        else:
            assert got == want, key


# --- tf.Example ------------------------------------------------------------------------------------
def test_parse_example_round_trip():
    _assert_matches(schema.parse_example(schema.serialize_example(FIELDS)))


def test_serialization_is_deterministic():
    assert schema.serialize_example(FIELDS) == schema.serialize_example(FIELDS)


def test_tensorflow_reads_our_examples():
    import tensorflow as tf

    data = schema.serialize_example(FIELDS)

    ex = tf.train.Example.FromString(data)
    fm = ex.features.feature
    from_proto = {k: list(getattr(fm[k], fm[k].WhichOneof("kind")).value) for k in fm}
    _assert_matches(from_proto)
    # Same wire bytes as TensorFlow's own message, serialized deterministically.
    assert ex.SerializeToString(deterministic=True) == data

    parsed = tf.io.parse_single_example(data, schema.tf_feature_spec())
    from_tf = {}
    for key, value in parsed.items():
        if isinstance(value, tf.SparseTensor):
            value = tf.sparse.to_dense(value)
        value = np.asarray(value.numpy())
        from_tf[key] = value.tolist() if value.ndim else [value.item()]
    _assert_matches(from_tf)


def test_example_with_no_boxes_reads_in_tensorflow():
    import tensorflow as tf

    empty = schema.ExampleFields(
        encoded=b"x",
        image_format="jpeg",
        height=1,
        width=1,
        filename="a.jpg",
        source_id="a",
        sha256="0",
        xmin=[],
        ymin=[],
        xmax=[],
        ymax=[],
        class_text=[],
        class_label=[],
        difficult=[],
    )
    parsed = tf.io.parse_single_example(schema.serialize_example(empty), schema.tf_feature_spec())
    for key in (schema.XMIN, schema.CLASS_TEXT, schema.CLASS_LABEL, schema.DIFFICULT):
        assert parsed[key].values.shape == (0,)
    assert parsed[schema.WIDTH].numpy() == 1


# --- label map -------------------------------------------------------------------------------------
def test_from_names_assigns_sorted_ids_from_one():
    lm = LabelMap.from_names(["zebra", "cat", "dog", "cat"])
    assert lm == {"cat": 1, "dog": 2, "zebra": 3}
    assert schema.BACKGROUND_ID not in lm.values()
    assert lm.names_by_id() == {1: "cat", 2: "dog", 3: "zebra"}


@pytest.mark.parametrize("fmt", ["json", "pbtxt"])
def test_label_map_round_trip(fmt):
    lm = LabelMap({"cat": 1, "dog": 2, 'odd "name"': 3, "dög": 7})
    text = lm.to_json() if fmt == "json" else lm.to_pbtxt()
    back = LabelMap.parse(text, f"label_map.{fmt}")
    assert back == lm and isinstance(back, LabelMap)
    assert LabelMap.parse(text) == lm  # detected from content, without a file name


def test_to_json_shape():
    data = json.loads(LabelMap({"b": 2, "a": 1}).to_json())
    assert data == {"classes": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def test_parse_tf_od_api_pbtxt():
    text = """
item {
  name: 'raccoon'
  id: 1
  display_name: 'Raccoon'
}
item {
  id: 2
  display_name: "Red Panda"
  name: "red_panda"
}
"""
    assert LabelMap.parse(text, "label_map.pbtxt") == {"raccoon": 1, "red_panda": 2}


def test_parse_name_to_id_json():
    assert LabelMap.parse('{"cat": 1, "dog": "2"}', "labels.json") == {"cat": 1, "dog": 2}


@pytest.mark.parametrize(
    "text",
    [
        '{"cat": 0, "dog": 1}',
        '{"cat": 1, "dog": 1}',
        '{"classes": [{"id": 0, "name": "cat"}]}',
        "item { id: 0 name: 'cat' }",
        "item { id: 1 name: 'cat' }\nitem { id: 1 name: 'dog' }",
    ],
)
def test_parse_rejects_background_and_repeated_ids(text):
    with pytest.raises(ValueError):
        LabelMap.parse(text)


def test_validate():
    assert LabelMap({"cat": 1, "dog": 2}).validate() == {"cat": 1, "dog": 2}
    with pytest.raises(ValueError, match="0 is background"):
        LabelMap({"cat": 0}).validate()
    with pytest.raises(ValueError, match="repeated"):
        LabelMap({"cat": 3, "dog": 3}).validate()


def test_label_map_json_with_a_class_named_classes():
    assert LabelMap.parse('{"classes": 3, "dog": 1}') == {"classes": 3, "dog": 1}


def test_label_map_pbtxt_escapes_as_protobuf_text_format_writes_them():
    assert LabelMap.parse('item { id: 1 name: "d\\303\\266g" }', "m.pbtxt") == {"d\u00f6g": 1}
    assert LabelMap.parse("item { id: 2 name: 'it\\'s' }", "m.pbtxt") == {"it's": 2}
    m = LabelMap({"d\u00f6g": 1, 'say "hi"': 2})
    assert LabelMap.parse(m.to_pbtxt(), "m.pbtxt") == m

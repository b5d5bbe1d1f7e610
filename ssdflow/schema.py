"""The tf.Example schema ingest writes and training reads, and the label map.

Keys follow the TF Object Detection API (``create_pascal_tf_record.py``) so its users can switch
without touching downstream code. Boxes are corners normalized to [0, 1] of the stored image.

The Example protobuf is built from a private descriptor pool rather than ``tensorflow.train``:
the wire format is identical, and Beam workers avoid importing TensorFlow.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_encoding

# --- tf.Example keys -------------------------------------------------------------------------
ENCODED = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
FILENAME = "image/filename"
SOURCE_ID = "image/source_id"
SHA256 = "image/key/sha256"
XMIN = "image/object/bbox/xmin"
YMIN = "image/object/bbox/ymin"
XMAX = "image/object/bbox/xmax"
YMAX = "image/object/bbox/ymax"
CLASS_TEXT = "image/object/class/text"
CLASS_LABEL = "image/object/class/label"
DIFFICULT = "image/object/difficult"

BACKGROUND_ID = 0  # class ids start at 1; 0 is the background in the model's softmax


@dataclass(frozen=True)
class ExampleFields:
    """The values of one record, before serialization. Boxes are normalized corners."""

    encoded: bytes
    image_format: str  # "jpeg"
    height: int
    width: int
    filename: str
    source_id: str
    sha256: str
    xmin: Sequence[float]
    ymin: Sequence[float]
    xmax: Sequence[float]
    ymax: Sequence[float]
    class_text: Sequence[str]
    class_label: Sequence[int]
    difficult: Sequence[int]


def _build_example_class():
    """tensorflow.Example from tensorflow/core/example/{example,feature}.proto, field numbers kept."""
    f = descriptor_pb2.FileDescriptorProto(name="ssdflow/tf_example.proto", package="tensorflow", syntax="proto3")
    L = descriptor_pb2.FieldDescriptorProto
    for name, ftype in (("BytesList", L.TYPE_BYTES), ("FloatList", L.TYPE_FLOAT), ("Int64List", L.TYPE_INT64)):
        m = f.message_type.add(name=name)
        m.field.add(name="value", number=1, type=ftype, label=L.LABEL_REPEATED)
    feat = f.message_type.add(name="Feature")
    feat.oneof_decl.add(name="kind")
    for number, (fname, tname) in enumerate(
        (("bytes_list", "BytesList"), ("float_list", "FloatList"), ("int64_list", "Int64List")), start=1
    ):
        feat.field.add(
            name=fname,
            number=number,
            type=L.TYPE_MESSAGE,
            type_name=f".tensorflow.{tname}",
            label=L.LABEL_OPTIONAL,
            oneof_index=0,
        )
    feats = f.message_type.add(name="Features")
    entry = feats.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=L.TYPE_STRING, label=L.LABEL_OPTIONAL)
    entry.field.add(
        name="value", number=2, type=L.TYPE_MESSAGE, type_name=".tensorflow.Feature", label=L.LABEL_OPTIONAL
    )
    feats.field.add(
        name="feature",
        number=1,
        type=L.TYPE_MESSAGE,
        type_name=".tensorflow.Features.FeatureEntry",
        label=L.LABEL_REPEATED,
    )
    ex = f.message_type.add(name="Example")
    ex.field.add(
        name="features", number=1, type=L.TYPE_MESSAGE, type_name=".tensorflow.Features", label=L.LABEL_OPTIONAL
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


Example = _build_example_class()


def serialize_example(x: ExampleFields) -> bytes:
    """Serializes one record as a tf.train.Example (byte-compatible with TensorFlow's)."""
    ex = Example()
    fm = ex.features.feature

    def b(key: str, values: Iterable[bytes]) -> None:
        fm[key].bytes_list.value.extend(values)

    b(ENCODED, [x.encoded])
    b(FORMAT, [x.image_format.encode()])
    fm[HEIGHT].int64_list.value.append(x.height)
    fm[WIDTH].int64_list.value.append(x.width)
    b(FILENAME, [x.filename.encode()])
    b(SOURCE_ID, [x.source_id.encode()])
    b(SHA256, [x.sha256.encode()])
    for key, vals in ((XMIN, x.xmin), (YMIN, x.ymin), (XMAX, x.xmax), (YMAX, x.ymax)):
        fm[key].float_list.value.extend(vals)
    b(CLASS_TEXT, [t.encode() for t in x.class_text])
    fm[CLASS_LABEL].int64_list.value.extend(x.class_label)
    fm[DIFFICULT].int64_list.value.extend(x.difficult)
    return ex.SerializeToString(deterministic=True)


def parse_example(data: bytes) -> dict:
    """Parses a serialized Example into plain Python values (for tests and tools, not training)."""
    ex = Example.FromString(data)
    out = {}
    for key, feature in ex.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[key] = list(getattr(feature, kind).value) if kind else []
    return out


def tf_feature_spec():
    """The ``tf.io.parse_single_example`` spec for these records (imports TensorFlow lazily)."""
    import tensorflow as tf

    return {
        ENCODED: tf.io.FixedLenFeature([], tf.string),
        FORMAT: tf.io.FixedLenFeature([], tf.string),
        HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        WIDTH: tf.io.FixedLenFeature([], tf.int64),
        FILENAME: tf.io.FixedLenFeature([], tf.string),
        SOURCE_ID: tf.io.FixedLenFeature([], tf.string),
        SHA256: tf.io.FixedLenFeature([], tf.string),
        XMIN: tf.io.VarLenFeature(tf.float32),
        YMIN: tf.io.VarLenFeature(tf.float32),
        XMAX: tf.io.VarLenFeature(tf.float32),
        YMAX: tf.io.VarLenFeature(tf.float32),
        CLASS_TEXT: tf.io.VarLenFeature(tf.string),
        CLASS_LABEL: tf.io.VarLenFeature(tf.int64),
        DIFFICULT: tf.io.VarLenFeature(tf.int64),
    }


# --- label map -------------------------------------------------------------------------------
# An exported model's metadata file beside its SavedModel (architecture, thresholds, calibrated
# per-class score thresholds); written by model/export.py, read by scoring without TensorFlow.
MODEL_INFO = "ssdflow_model.json"
# The trained Keras weights beside the SavedModel: `ssdflow export` rebuilds from them, warm starts load them.
KERAS_WEIGHTS = "keras.weights.h5"


class LabelMap(dict):
    """Class name → id, ids from 1 (0 is background). Serialized as JSON and as TF OD API pbtxt."""

    @classmethod
    def from_names(cls, names: Iterable[str]) -> "LabelMap":
        """Ids assigned in sorted name order, so the same classes always get the same ids."""
        return cls({name: i for i, name in enumerate(sorted(set(names)), start=1)})

    def validate(self) -> "LabelMap":
        ids = list(self.values())
        if any(not isinstance(i, int) or i < 1 for i in ids):
            raise ValueError(f"label map ids must be integers >= 1 (0 is background): {dict(self)}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"label map has repeated ids: {dict(self)}")
        return self

    def by_id(self) -> list[tuple[str, int]]:
        """(name, id) pairs in id order: the order of the model's class outputs."""
        return sorted(self.items(), key=lambda kv: kv[1])

    def to_json(self) -> str:
        items = self.by_id()
        return json.dumps({"classes": [{"id": i, "name": n} for n, i in items]}, indent=2) + "\n"

    def to_pbtxt(self) -> str:
        items = self.by_id()
        # Names are C-escaped as protobuf's text_format writes them, so the TF OD API reads them back.
        return "".join(
            f'item {{\n  id: {i}\n  name: "{text_encoding.CEscape(n, as_utf8=True)}"\n}}\n' for n, i in items
        )

    @classmethod
    def parse(cls, text: str, filename: str = "") -> "LabelMap":
        """Reads label_map.json (ours, or a {name: id} dict) or a TF OD API label_map.pbtxt."""
        if filename.endswith(".pbtxt") or text.lstrip().startswith("item"):
            items = re.findall(r"item\s*\{(.*?)\}", text, flags=re.S)
            if not items:
                raise ValueError(f"{filename or 'label map'}: no 'item {{ ... }}' entries")
            out = {}
            for body in items:
                id_m = re.search(r"\bid\s*:\s*(\d+)", body)
                name_m = re.search(r"\bname\s*:\s*(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')", body)
                if not (id_m and name_m):
                    raise ValueError(f"{filename or 'label map'}: item without id or name: {body.strip()!r}")
                name = text_encoding.CUnescape(name_m.group(1)[1:-1]).decode("utf-8")
                out[name] = int(id_m.group(1))
            return cls(out).validate()
        data = json.loads(text)
        if isinstance(data, dict) and isinstance(data.get("classes"), list):
            return cls({c["name"]: int(c["id"]) for c in data["classes"]}).validate()
        if isinstance(data, dict):
            return cls({str(k): int(v) for k, v in data.items()}).validate()
        raise ValueError(f"{filename or 'label map'}: expected {{'classes': [...]}} or a {{name: id}} object")

    def names_by_id(self) -> Mapping[int, str]:
        return {i: n for n, i in self.items()}

"""TFLite model metadata for an SSD detector: what TFLite's object-detection apps and Task Library read.

A .tflite file may carry a metadata flatbuffer (tflite-support's ``metadata_schema.fbs``, file
identifier ``M001``) in a model buffer named ``TFLITE_METADATA``, and its associated files (here
the label file) as a zip archive appended to the model; interpreters ignore both. tflite-support's
own writer cannot be installed beside TensorFlow 2.21 (it pins protobuf < 4; TensorFlow needs 6),
so this module writes the few tables an object detector needs with the ``flatbuffers`` runtime
TensorFlow already depends on, as tflite-support's ``object_detector`` writer lays them out:

* input ``image``: ImageProperties (RGB) and NormalizationOptions. ssdflow's network scales pixels
  itself (model/ssd.py's Rescaling layer), so the input takes raw 0..255 values: mean 0, std 1.
* outputs, in the subgraph's order (the TF OD API's TFLite export order: score, location, number
  of detections, category): ``location`` with BoundingBoxProperties (BOUNDARIES, index [1, 0, 3, 2]:
  the values are ymin, xmin, ymax, xmax; RATIO coordinates), ``category`` with the label file as
  TENSOR_VALUE_LABELS (line k names class index k, label id k + 1), ``score``, ``number of detections``.

Field slots follow declaration order in the schema (a union takes two: its type, then its value).
"""

from __future__ import annotations

import io
import zipfile

import flatbuffers

METADATA_NAME = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
LABEL_FILE = "labelmap.txt"
MIN_PARSER_VERSION = "1.0.0"  # no field of a later schema version is written

# Enum values of metadata_schema.fbs.
_TENSOR_VALUE_LABELS = 3
_RGB = 1
_BOUNDARIES = 1
_RATIO = 0
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES, _BOUNDING_BOX_PROPERTIES = 1, 2, 3  # ContentProperties union
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union

OUTPUTS = ("score", "location", "number of detections", "category")  # the subgraph's output order


class _Writer:
    """Builds tables bottom-up (flatbuffers needs children before parents)."""

    def __init__(self):
        self.b = flatbuffers.Builder(1024)

    def string(self, s: str | None):
        return self.b.CreateString(s) if s is not None else None

    def vector(self, offsets: list[int]):
        self.b.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            self.b.PrependUOffsetTRelative(off)
        return self.b.EndVector()

    def scalars(self, values, prepend, size: int = 4):
        self.b.StartVector(size, len(values), size)
        for v in reversed(values):
            prepend(v)
        return self.b.EndVector()

    def table(self, fields: list[tuple[int, str, object]]) -> int:
        """``fields``: (slot, kind, value) with kind 'off' (an offset), 'u8', 'i32' or 'u32'; None values skipped."""
        b = self.b
        b.StartObject(max((slot for slot, _, _ in fields), default=-1) + 1)
        for slot, kind, value in fields:
            if value is None:
                continue
            if kind == "off":
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            else:  # scalars are written even when equal to the schema's default (0), as tflite-support's writer does
                b.ForceDefaults(True)
                {"u8": b.PrependUint8Slot, "i32": b.PrependInt32Slot, "u32": b.PrependUint32Slot}[kind](slot, value, 0)
                b.ForceDefaults(False)
        return b.EndObject()

    def value_range(self, low: int, high: int) -> int:
        return self.table([(0, "i32", low), (1, "i32", high)])

    def content(self, kind: int, properties: int, value_range: int | None = None) -> int:
        return self.table([(0, "u8", kind), (1, "off", properties), (2, "off", value_range)])

    def tensor(
        self,
        name: str,
        description: str,
        content: int,
        process_units: int | None = None,
        associated_files: int | None = None,
    ) -> int:
        name_off, desc_off = self.string(name), self.string(description)
        return self.table(
            [
                (0, "off", name_off),
                (1, "off", desc_off),
                (3, "off", content),
                (4, "off", process_units),
                (6, "off", associated_files),
            ]
        )


def build_metadata(name: str, description: str, version: str, image_size: int, num_labels: int) -> bytes:
    """The ``ModelMetadata`` flatbuffer of an SSD detector with fixed input [1, S, S, 3]."""
    w = _Writer()
    b = w.b

    # Input: an RGB image of raw 0..255 values (the network normalizes it itself).
    size = w.table([(0, "u32", image_size), (1, "u32", image_size)])
    image_props = w.table([(0, "u8", _RGB), (1, "off", size)])
    mean = w.scalars([0.0], b.PrependFloat32)
    std = w.scalars([1.0], b.PrependFloat32)
    normalization = w.table([(0, "off", mean), (1, "off", std)])
    unit = w.table([(0, "u8", _NORMALIZATION_OPTIONS), (1, "off", normalization)])
    image = w.tensor(
        "image",
        f"Input image, RGB, {image_size}x{image_size}, raw 0..255 values.",
        w.content(_IMAGE_PROPERTIES, image_props),
        process_units=w.vector([unit]),
    )

    # Outputs.
    index = w.scalars([1, 0, 3, 2], b.PrependUint32)  # values are [ymin, xmin, ymax, xmax]: left is index 1 …
    box_props = w.table([(0, "off", index), (1, "u8", _BOUNDARIES), (2, "u8", _RATIO)])
    location = w.tensor(
        "location",
        "The locations of the detected boxes.",
        w.content(_BOUNDING_BOX_PROPERTIES, box_props, w.value_range(2, 2)),
    )
    label_name, label_desc = (
        w.string(LABEL_FILE),
        w.string(f"Labels of the {num_labels} classes: line k is label id k + 1."),
    )
    label_file = w.table([(0, "off", label_name), (1, "off", label_desc), (2, "u8", _TENSOR_VALUE_LABELS)])
    category = w.tensor(
        "category",
        "The classes of the detected boxes.",
        w.content(_FEATURE_PROPERTIES, w.table([]), w.value_range(2, 2)),
        associated_files=w.vector([label_file]),
    )
    score = w.tensor(
        "score", "The scores of the detected boxes.", w.content(_FEATURE_PROPERTIES, w.table([]), w.value_range(2, 2))
    )
    count = w.tensor(
        "number of detections", "The number of the detected boxes.", w.content(_FEATURE_PROPERTIES, w.table([]))
    )
    by_name = {"score": score, "location": location, "number of detections": count, "category": category}

    inputs = w.vector([image])
    outputs = w.vector([by_name[n] for n in OUTPUTS])
    sub_name = w.string(name)
    subgraph = w.table([(0, "off", sub_name), (2, "off", inputs), (3, "off", outputs)])
    subgraphs = w.vector([subgraph])
    strings = [w.string(s) for s in (name, description, version, MIN_PARSER_VERSION)]
    root = w.table(
        [
            (0, "off", strings[0]),
            (1, "off", strings[1]),
            (2, "off", strings[2]),
            (3, "off", subgraphs),
            (7, "off", strings[3]),
        ]
    )
    b.Finish(root, file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


def label_file(label_map: dict[str, int], num_classes: int) -> str:
    """Line k: the name of label id k + 1 (``???`` for an id the label map skips, as the TF OD API writes)."""
    names = {i: n for n, i in label_map.items()}
    return "".join(f"{names.get(k + 1, '???')}\n" for k in range(num_classes))


def populate(model: bytes, metadata: bytes, labels: str) -> bytes:
    """``model`` with ``metadata`` in a ``TFLITE_METADATA`` buffer and the label file appended as a zip."""
    from tensorflow.lite.python import schema_py_generated as schema  # TensorFlow's own TFLite schema bindings

    m = schema.ModelT.InitFromPackedBuf(model, 0)
    m.metadata = [x for x in (m.metadata or []) if x.name.decode() != METADATA_NAME]
    buf = schema.BufferT()
    buf.data = list(metadata)
    m.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(m.buffers) - 1
    m.metadata.append(entry)
    b = flatbuffers.Builder(len(model) + len(metadata) + 1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    out = io.BytesIO(bytes(b.Output()))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a") as z:  # appended after the flatbuffer, as tflite-support's populator does
        z.writestr(LABEL_FILE, labels)
    return out.getvalue()


# --- reading it back ------------------------------------------------------------------------------
def _table(buf: bytes, pos: int) -> flatbuffers.table.Table:
    return flatbuffers.table.Table(buf, pos)


def _field(t: flatbuffers.table.Table, slot: int) -> int:
    return t.Offset(4 + 2 * slot)


def _str(t, slot):
    o = _field(t, slot)
    return t.String(o + t.Pos).decode() if o else None


def _sub(t, slot):
    o = _field(t, slot)
    return _table(t.Bytes, t.Indirect(o + t.Pos)) if o else None


def _vec(t, slot):
    o = _field(t, slot)
    if not o:
        return []
    start, n = t.Vector(o), t.VectorLen(o)
    return [_table(t.Bytes, t.Indirect(start + 4 * i)) for i in range(n)]


def _scalar_vec(t, slot, flags):
    o = _field(t, slot)
    if not o:
        return []
    start, n = t.Vector(o), t.VectorLen(o)
    return [t.Get(flags, start + flags.bytewidth * i) for i in range(n)]


def _u8(t, slot):
    o = _field(t, slot)
    return t.Get(flatbuffers.number_types.Uint8Flags, o + t.Pos) if o else None


def read(tflite: bytes) -> dict:
    """What an app reads from a .tflite: {name, version, min_parser_version, input: {name, mean, std},
    outputs: [names in order], box_index, labels: [...]}; raises ValueError where there is no metadata."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(tflite, 0)
    meta = None
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == METADATA_NAME:
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            meta = bytes(data.tobytes())
    if meta is None:
        raise ValueError(f"no {METADATA_NAME} in this model")
    if meta[4:8] != FILE_IDENTIFIER:
        raise ValueError(f"metadata has identifier {meta[4:8]!r}, not {FILE_IDENTIFIER!r}")
    root = _table(meta, flatbuffers.encode.Get(flatbuffers.packer.uoffset, meta, 0))
    sub = _vec(root, 3)[0]
    inp = _vec(sub, 2)[0]
    unit = _vec(inp, 4)[0]
    norm = _sub(unit, 1)
    outputs = _vec(sub, 3)
    location = next(t for t in outputs if _str(t, 0) == "location")
    box_props = _sub(_sub(location, 3), 1)
    category = next(t for t in outputs if _str(t, 0) == "category")
    label_entry = _vec(category, 6)[0]
    with zipfile.ZipFile(io.BytesIO(tflite)) as z:
        labels = z.read(_str(label_entry, 0)).decode().splitlines()
    return {
        "name": _str(root, 0),
        "version": _str(root, 2),
        "min_parser_version": _str(root, 7),
        "input": {
            "name": _str(inp, 0),
            "content_type": _u8(_sub(inp, 3), 0),
            "mean": _scalar_vec(norm, 0, flatbuffers.number_types.Float32Flags),
            "std": _scalar_vec(norm, 1, flatbuffers.number_types.Float32Flags),
        },
        "outputs": [_str(t, 0) for t in outputs],
        "box_index": _scalar_vec(box_props, 0, flatbuffers.number_types.Uint32Flags),
        "box_type": _u8(box_props, 1),
        "label_file": {"name": _str(label_entry, 0), "type": _u8(label_entry, 2)},
        "labels": labels,
    }

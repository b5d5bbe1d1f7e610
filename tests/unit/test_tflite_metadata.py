"""TFLite metadata written without tflite-support (model/tflite_metadata.py): read back as an app
would, the label file packed, the model still runs. (tflite-support's own MetadataDisplayer and the
Task Library's ObjectDetector read ssdflow's files too: scripts/check_tflite_task_library.sh.)"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from model import tflite_metadata as tm  # noqa: E402


@pytest.fixture(scope="module")
def tiny_tflite() -> bytes:
    """A real .tflite (one op), small enough to build in a second."""
    fn = tf.function(
        lambda image: tf.reduce_mean(image, axis=[1, 2]), input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)]
    )
    return tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()]).convert()


def test_label_file_names_each_class_index_and_marks_skipped_ids():
    assert tm.label_file({"cat": 1, "dog": 3}, 3) == "cat\n???\ndog\n"


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
def test_metadata_reads_back_as_an_object_detector_and_the_model_still_runs(tiny_tflite):
    meta = tm.build_metadata("ssdflow SSD", "a detector", "20261203T000000Z-abcd", 128, 2)
    assert meta[4:8] == b"M001"
    model = tm.populate(tiny_tflite, meta, tm.label_file({"cat": 1, "dog": 2}, 2))
    got = tm.read(model)
    assert (got["name"], got["version"], got["min_parser_version"]) == ("ssdflow SSD", "20261203T000000Z-abcd", "1.0.0")
    assert got["input"] == {
        "name": "image",
        "content_type": 2,
        "mean": [0.0],
        "std": [1.0],
    }  # ImageProperties, raw pixels
    assert got["outputs"] == ["score", "location", "number of detections", "category"]
    assert (got["box_index"], got["box_type"]) == ([1, 0, 3, 2], 1)  # BOUNDARIES stored as ymin, xmin, ymax, xmax
    assert got["label_file"] == {"name": "labelmap.txt", "type": 3} and got["labels"] == ["cat", "dog"]
    assert zipfile.ZipFile(io.BytesIO(model)).namelist() == ["labelmap.txt"]

    again = tm.populate(model, meta, "cat\ndog\n")  # re-populating replaces, never duplicates
    from tensorflow.lite.python import schema_py_generated as schema

    root = schema.Model.GetRootAs(again, 0)
    names = [root.Metadata(i).Name().decode() for i in range(root.MetadataLength())]
    assert names.count(tm.METADATA_NAME) == 1

    interpreter = tf.lite.Interpreter(model_content=model)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.ones([1, 8, 8, 3], np.float32))
    interpreter.invoke()
    assert np.allclose(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), 1.0)


def test_a_model_without_metadata_is_refused_by_the_reader(tiny_tflite):
    with pytest.raises(ValueError, match="no TFLITE_METADATA"):
        tm.read(tiny_tflite)

#!/usr/bin/env bash
# Reads an ssdflow .tflite with tflite-support's own MetadataDisplayer and runs it with the TFLite Task
# Library's ObjectDetector (what TFLite's object-detection sample apps use), in a throwaway virtualenv:
# tflite-support 0.4.4 pins protobuf < 4 and cannot live in ssdflow's environment (TensorFlow needs 6).
#   bash scripts/check_tflite_task_library.sh MODEL.tflite IMAGE.jpg
set -euo pipefail
model=${1:?usage: $0 MODEL.tflite IMAGE.jpg}
image=${2:?usage: $0 MODEL.tflite IMAGE.jpg}
venv=${TFLITE_SUPPORT_VENV:-${TMPDIR:-/tmp}/ssdflow-tflite-support}
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q "tflite-support==0.4.4" "numpy<2"; }
"$venv/bin/python" - "$model" "$image" <<'PY'
import json, sys
from tflite_support import metadata
from tflite_support.task import core, processor, vision

model, image = sys.argv[1:3]
shown = metadata.MetadataDisplayer.with_model_file(model)
meta = json.loads(shown.get_metadata_json())
print("metadata:", meta["name"], "| outputs:", [t["name"] for t in meta["subgraph_metadata"][0]["output_tensor_metadata"]],
      "| files:", shown.get_packed_associated_file_list())
options = vision.ObjectDetectorOptions(base_options=core.BaseOptions(file_name=model),
                                       detection_options=processor.DetectionOptions(max_results=5))
result = vision.ObjectDetector.create_from_options(options).detect(vision.TensorImage.create_from_file(image))
for d in result.detections:
    b, c = d.bounding_box, d.categories[0]
    print(f"  {c.category_name} {c.score:.3f} at x={b.origin_x} y={b.origin_y} w={b.width} h={b.height} (pixels)")
PY

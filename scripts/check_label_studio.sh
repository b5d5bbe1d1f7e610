#!/usr/bin/env bash
# Imports a scoring run's labelling batch (score --select N) into a real Label Studio, set up as
# README's "Label Studio" section tells a user to, and checks the round trip:
#   1. label-studio from PyPI in a throwaway virtualenv (it pins its own Django stack), started on
#      127.0.0.1 and stopped by its PID at the end;
#   2. a project made through the API with the batch's label_studio_config.xml and a source storage
#      where the images are: Local Files (batch scored with --label-studio-root ROOT, Label Studio
#      started with that document root) or S3 (batch scored into s3://…, pre-signed URLs);
#      label_studio.json imported: every task keeps the model's predictions, and every task's image is
#      served through Label Studio (HTTP 200, the batch's bytes);
#   3. each task annotated through the API (the predictions accepted, the first task's first box
#      moved, as a person correcting it would), exported as Pascal VOC, re-ingested with
#      `ssdflow ingest --format voc`, and the records' boxes compared with the annotations.
#
#   bash scripts/check_label_studio.sh SCORE_OUT ROOT      # a batch on this disk, below ROOT
#   bash scripts/check_label_studio.sh s3://BUCKET/OUT      # a batch in a bucket: AWS_ACCESS_KEY_ID,
#        AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION and, for an S3-compatible store, S3_ENDPOINT_URL
set -euo pipefail
usage="usage: $0 SCORE_OUT ROOT | $0 s3://BUCKET/SCORE_OUT"
out=${1:?$usage}
case $out in
  s3://*) root= ;;
  *) out=$(realpath "$out"); root=$(realpath "${2:?$usage}") ;;
esac
repo=$(cd "$(dirname "$0")/.." && pwd)
ssdflow_bin=${SSDFLOW_VENV:-$repo/.venv}/bin
venv=${LABEL_STUDIO_VENV:-${TMPDIR:-/tmp}/ssdflow-label-studio}
version=${LABEL_STUDIO_VERSION:-1.23.2}
[ -x "$venv/bin/label-studio" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q "label-studio==$version"; }

work=$(mktemp -d)
pid=
cleanup() { rc=$?; [ -z "$pid" ] || { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }; [ -n "${KEEP_WORK:-}" ] && echo "kept $work" || rm -rf "$work"; exit $rc; }
trap cleanup EXIT
port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token=$("$venv/bin/python" -c 'import secrets; print(secrets.token_hex(20))')
env=()
if [ -n "$root" ]; then
  env+=(LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=$root")
fi
case ${S3_ENDPOINT_URL:-} in  # Label Studio refuses storage on loopback addresses (SSRF guard): a local S3 stand-in needs it off
  http://127.*|http://localhost*) env+=(SSRF_PROTECTION_ENABLED=false) ;;
esac
env "${env[@]}" "$venv/bin/label-studio" start --no-browser --internal-host 127.0.0.1 --port "$port" --data-dir "$work/data" \
  --username check@ssdflow.invalid --password "$token" --user-token "$token" --enable-legacy-api-token \
  > "$work/label-studio.log" 2>&1 &
pid=$!
echo "label-studio $version on 127.0.0.1:$port (pid $pid, log $work/label-studio.log)"

"$venv/bin/python" - "http://127.0.0.1:$port" "$token" "$out/labelling" "$work" "$pid" <<'PY'
import io, json, os, posixpath, sys, time, zipfile
import requests

base, token, batch, work, pid = sys.argv[1:6]
H = {"Authorization": f"Token {token}"}
in_bucket = batch.startswith("s3://")
if in_bucket:
    import boto3

    bucket, _, prefix = batch[len("s3://"):].partition("/")
    s3 = boto3.client("s3", endpoint_url=os.environ.get("S3_ENDPOINT_URL") or None)


def read(name: str) -> bytes:
    """A file of the batch, wherever it is."""
    if in_bucket:
        return s3.get_object(Bucket=bucket, Key=f"{prefix}/{name}")["Body"].read()
    return open(f"{batch}/{name}", "rb").read()


def api(method, path, **kw):
    r = requests.request(method, base + path, headers=H, timeout=120, **kw)
    if r.status_code >= 400:
        sys.exit(f"FAIL: {method} {path}: HTTP {r.status_code}: {r.text[:500]}")
    return r


for _ in range(180):  # the first start migrates its database: about 30 s here
    try:
        if requests.get(base + "/health", timeout=5).status_code == 200:
            break
    except requests.ConnectionError:
        pass
    if not os.path.exists(f"/proc/{pid}"):
        sys.exit(f"FAIL: label-studio exited; see {work}/label-studio.log")
    time.sleep(1)
else:
    sys.exit("FAIL: label-studio did not answer /health within 180 s")

tasks = json.loads(read("label_studio.json"))
project = api("POST", "/api/projects", json={"title": "ssdflow labelling batch",
                                              "label_config": read("label_studio_config.xml").decode()}).json()["id"]
if in_bucket:  # resolves the tasks' s3:// URIs: Label Studio answers each image with a redirect to a pre-signed URL
    api("POST", "/api/storages/s3", json={
        "project": project, "title": "batch images", "bucket": bucket, "prefix": f"{prefix}/images", "presign": True,
        "use_blob_urls": False, "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"], "region_name": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        **({"s3_endpoint": os.environ["S3_ENDPOINT_URL"]} if os.environ.get("S3_ENDPOINT_URL") else {})})
else:  # Label Studio serves /data/local-files/?d=… only below a Local Files storage of the project
    api("POST", "/api/storages/localfiles", json={"project": project, "title": "batch images", "path": f"{batch}/images",
                                                  "use_blob_urls": False})
imported = api("POST", f"/api/projects/{project}/import", json=tasks).json()
assert imported["task_count"] == len(tasks), imported
print(f"imported {imported['task_count']} tasks with {imported['prediction_count']} predictions")

ids = [t["id"] for t in api("GET", "/api/tasks", params={"project": project, "page_size": 1000}).json()["tasks"]]
expected = {}
for n, task_id in enumerate(sorted(ids)):
    task = api("GET", f"/api/tasks/{task_id}").json()
    mine = next(t for t in tasks if t["data"]["source"] == task["data"]["source"])
    [prediction] = task["predictions"]
    assert len(prediction["result"]) == len(mine["predictions"][0]["result"]), (task_id, "predictions lost")
    name = posixpath.basename(mine["data"]["image"])
    url = task["data"]["image"]  # as Label Studio hands it to the browser
    image = requests.get(url if "://" in url else base + url, headers=H, timeout=60)
    want = read(f"images/{name}")
    if image.status_code != 200 or image.content != want:
        sys.exit(f"FAIL: {mine['data']['image']} (served as {url}): HTTP {image.status_code}, {len(image.content)} bytes "
                 f"(the batch has {len(want)})")
    result = [{k: v for k, v in r.items() if k != "score"} for r in prediction["result"]]
    if n == 0 and result:  # a person's correction: the first box moved right and down by 2 % of the image
        v = result[0]["value"]
        result[0]["value"] = {**v, "x": max(0.0, min(v["x"] + 2, 100 - v["width"])), "y": max(0.0, min(v["y"] + 2, 100 - v["height"]))}
    api("POST", f"/api/tasks/{task_id}/annotations", json={"result": result, "was_cancelled": False})
    expected[posixpath.splitext(name)[0]] = [
        [r["value"]["rectanglelabels"][0], r["value"]["x"] / 100, r["value"]["y"] / 100,
         (r["value"]["x"] + r["value"]["width"]) / 100, (r["value"]["y"] + r["value"]["height"]) / 100] for r in result]
print(f"{len(ids)} images served through Label Studio (HTTP 200, the batch's bytes); {len(ids)} tasks annotated")
if not any(expected.values()):
    sys.exit("FAIL: no task has a box, so the round trip proves nothing: score with a lower --score-threshold")

export = api("GET", f"/api/projects/{project}/export", params={"exportType": "VOC"})
zipfile.ZipFile(io.BytesIO(export.content)).extractall(f"{work}/export")
json.dump(expected, open(f"{work}/expected.json", "w"))
print(f"exported as Pascal VOC: {len(os.listdir(work + '/export/Annotations'))} annotation files, "
      f"{len(os.listdir(work + '/export/images'))} images")
PY

# Label Studio's VOC export holds the images it serves from disk; for a bucket's batch it holds the
# annotations only, named after the batch's images, which are read where they are.
images=$work/export/images
flags=()
if [ -z "$(ls -A "$images" 2>/dev/null)" ]; then
  images=$out/labelling/images
  [ -z "${S3_ENDPOINT_URL:-}" ] || flags+=("--s3_endpoint_url=$S3_ENDPOINT_URL" "--s3_region_name=${AWS_DEFAULT_REGION:-us-east-1}")
fi
"$ssdflow_bin/ssdflow" ingest --images "$images" --labels "$work/export/Annotations" --format voc \
  --out "$work/ingested" --val-fraction 0 "${flags[@]}"
"$ssdflow_bin/python" - "$work" <<'PY'
import glob, json, os, sys
import tensorflow as tf
from ssdflow import schema

work = sys.argv[1]
expected = json.load(open(f"{work}/expected.json"))
got = {}
for record in tf.data.TFRecordDataset(sorted(glob.glob(f"{work}/ingested/*.tfrecord"))):
    x = schema.parse_example(record.numpy())
    # Label Studio's VOC export prefixes each file name with a hash: "5c511b0a__0001-raccoon-1.jpg"
    stem = os.path.splitext(x[schema.FILENAME][0].decode())[0].split("__", 1)[-1]
    got[stem] = (x[schema.WIDTH][0], x[schema.HEIGHT][0],
                 [[t.decode(), *b] for t, *b in zip(x[schema.CLASS_TEXT], x[schema.XMIN], x[schema.YMIN], x[schema.XMAX], x[schema.YMAX])])
with_boxes = {k: v for k, v in expected.items() if v}
missing = sorted(with_boxes.keys() - got.keys())
if missing:
    sys.exit(f"FAIL: annotated images not in the re-ingested records: {missing}")
boxes = 0
for stem, want in with_boxes.items():
    width, height, have = got[stem]
    if len(have) != len(want):
        sys.exit(f"FAIL: {stem}: {len(have)} boxes re-ingested, {len(want)} annotated")
    # Label Studio's VOC export truncates x, y, width and height to whole pixels each: a corner
    # moves by under 2 pixels; each annotated box must find its own re-ingested box that close.
    for box in want:
        def off(b):
            return max(abs(b[1] - box[1]) * width, abs(b[2] - box[2]) * height, abs(b[3] - box[3]) * width, abs(b[4] - box[4]) * height)
        best = min((b for b in have if b[0] == box[0]), key=off, default=None)
        if best is None or off(best) > 2.0:
            sys.exit(f"FAIL: {stem}: the annotated box {box} has no re-ingested box within 2 pixels (nearest {best})")
        have.remove(best)
    boxes += len(want)
print(f"PASS: {len(with_boxes)} images, {boxes} boxes re-ingested as annotated in Label Studio")
PY

"""Security: S3 keys never leak, no pickle (or other code-running deserializers) for models or
config, and scoring never writes what an archive's member names point at.

Each test names one guarantee; docs/reliability.md lists them.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.faulty_s3 import FaultyS3Proxy
from tests.helpers import REPO, PickleBomb, moto_s3, raccoon_or_skip, read_jsonl, voc_scenes

pytestmark = pytest.mark.integration

LIBRARY = ("ssdflow", "model", "beam_jobs", "flows")


def _jpeg(seed: int, size=(80, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


# --- secrets --------------------------------------------------------------------------------------
BUCKET = "ssdflow-secrets"
ENV_KEY_ID, ENV_SECRET = "AKIASSDFLOWENVKEY0X7", "ssdflowEnvSecret/Leak+Check/7f3a9c21b8d4e6"
OPT_KEY_ID, OPT_SECRET = "AKIASSDFLOWOPTKEY0Q4", "ssdflowOptSecret/Leak+Check/0e5d2b7c9a1f38"
# The one place an access key *id* shows up: botocore's own wire log ("Sending http request: ...")
# at DEBUG prints the request headers, and SigV4's Authorization header names the key id in its
# Credential scope. Secrets never appear, even there; ssdflow itself logs at WARNING (cli.py).
WIRE_LOGGER = "botocore.endpoint"


def _texts_from_logs(records) -> list[tuple[logging.LogRecord, str]]:
    out = []
    for r in records:
        parts = [r.getMessage(), str(r.args), r.exc_text or "", r.stack_info or ""]
        if r.exc_info and r.exc_info[1] is not None:
            parts.append(logging.Formatter().formatException(r.exc_info))
        out.append((r, "\n".join(parts)))
    return out


def test_s3_keys_never_appear_in_logs_outputs_or_stats(raccoon_model, caplog, capfd):
    """ingest with keys from the environment, score with keys as Beam options, S3 throttling a few
    uploads (so retry and error paths log too): neither key id nor secret is in any log record (all
    loggers at DEBUG), stdout/stderr, returned stats, or any object the jobs wrote."""
    pytest.importorskip("boto3")
    from beam_jobs.ingest import run_ingest
    from beam_jobs.score import run_score
    from ssdflow.config import IngestConfig, ScoreConfig

    root = raccoon_or_skip()
    with (
        moto_s3(ENV_KEY_ID, ENV_SECRET, bucket=BUCKET) as (endpoint, client),
        FaultyS3Proxy(endpoint, fail_every=7) as proxy,
    ):
        for n in [f"raccoon-{i}" for i in range(10, 21)] + ["raccoon-116"]:
            client.put_object(
                Bucket=BUCKET, Key=f"raw/images/{n}.jpg", Body=(root / "images" / f"{n}.jpg").read_bytes()
            )
            client.put_object(
                Bucket=BUCKET, Key=f"raw/labels/{n}.xml", Body=(root / "annotations" / f"{n}.xml").read_bytes()
            )
        for i in range(3):
            client.put_object(Bucket=BUCKET, Key=f"archive/img{i}.jpg", Body=_jpeg(i))
        client.put_object(Bucket=BUCKET, Key="archive/broken.jpg", Body=b"xx")
        capfd.readouterr()
        for name in (None, "apache_beam", "ssdflow", "beam_jobs", "botocore"):
            caplog.set_level(logging.DEBUG, logger=name)
        caplog.clear()

        proxy.configure()
        stats = run_ingest(
            IngestConfig(
                images=f"s3://{BUCKET}/raw/images/",
                labels=f"s3://{BUCKET}/raw/labels/",
                format="voc",
                out=f"s3://{BUCKET}/records",
                beam_args=[f"--s3_endpoint_url={proxy.url}", "--s3_region_name=us-east-1"],
            )
        )
        assert proxy.access_key_ids == {ENV_KEY_ID}  # the environment's keys signed every request
        ingest_injected = proxy.injected

        proxy.configure()
        manifest = run_score(
            ScoreConfig(
                model=raccoon_model,
                images=[f"s3://{BUCKET}/archive/"],
                out=f"s3://{BUCKET}/scored",
                score_threshold=0.0,
                preview=2,
                formats=["jsonl", "parquet", "coco"],
                beam_args=[
                    f"--s3_endpoint_url={proxy.url}",
                    "--s3_region_name=us-east-1",
                    f"--s3_access_key_id={OPT_KEY_ID}",
                    f"--s3_secret_access_key={OPT_SECRET}",
                ],
            )
        )
        assert proxy.access_key_ids == {OPT_KEY_ID}  # the options' keys won over the environment's
        assert ingest_injected > 0 and proxy.injected > 0  # retries happened (and logged) in both jobs
        assert stats["images_in"] == 12 and manifest.images_in == 4 and manifest.images_failed == 1

        objects = {
            o["Key"]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
            for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]
        }
    captured = capfd.readouterr()

    records = _texts_from_logs(caplog.records)
    names = {r.name.split(".")[0] for r, _ in records}
    assert {"apache_beam", "botocore"} <= names, names  # the capture really held Beam's and boto's DEBUG logs
    assert any(k.startswith("scored/preview/") for k in objects) and "records/_SUCCESS" in objects

    haystacks = [
        ("stdout", captured.out),
        ("stderr", captured.err),
        ("caplog.text", caplog.text),
        ("stats", json.dumps(stats)),
        ("manifest", manifest.model_dump_json()),
    ]
    haystacks += [(f"s3://{BUCKET}/{k}", k + "\n" + body.decode("latin-1")) for k, body in objects.items()]
    for secret in (ENV_SECRET, OPT_SECRET):
        for where, text in haystacks:
            assert secret not in text, f"secret key in {where}"
        assert not [r.name for r, t in records if secret in t]
    for key_id in (ENV_KEY_ID, OPT_KEY_ID):
        for where, text in haystacks:
            if where == "caplog.text":  # may hold the wire log's Credential scope; checked record by record below
                text = re.sub(rf"Credential={key_id}/", "Credential=<id>/", text)
            assert key_id not in text, f"access key id in {where}"
        for r, text in records:
            if key_id in text:
                assert (r.name, r.levelno) == (WIRE_LOGGER, logging.DEBUG), (
                    f"access key id in {r.name} {r.levelname}: {text[:300]}"
                )
                assert key_id not in text.replace(f"Credential={key_id}/", ""), text[:300]


# --- no pickle ------------------------------------------------------------------------------------
def _library_files():
    for pkg in LIBRARY:
        for path in sorted((REPO / pkg).rglob("*.py")):
            yield path.relative_to(REPO).as_posix(), path.read_text(encoding="utf-8")


UNSAFE_MODULES = {
    "pickle",
    "_pickle",
    "cPickle",
    "dill",
    "cloudpickle",
    "joblib",
    "marshal",
    "shelve",
    "jsonpickle",
    "torch",
}
YAML_SAFE = {"safe_load", "safe_load_all", "safe_dump", "YAMLError"}
UNSAFE_TEXT = (
    "allow_pickle=True",
    "safe_mode=False",
    "enable_unsafe_deserialization",
    "unsafe_load",
    "full_load",
    "read_pickle",
    "yaml.Loader",
    "UnsafeLoader",
    "FullLoader",
)


def test_no_pickle_marshal_or_unsafe_yaml_in_library_code():
    """ssdflow/, model/, beam_jobs/, flows/: no pickle.load(s)/marshal/dill/joblib/torch.load,
    np.load(allow_pickle=True), Keras safe_mode=False, yaml.load or eval/exec; no pickle at all
    (ingest hands records between its stages as plain JSON: tests/unit/test_spill.py)."""
    problems = []
    for rel, source in _library_files():
        tree = ast.parse(source)
        problems += [f"{rel}: {s!r}" for s in UNSAFE_TEXT if s in source]
        aliases = {}  # local name → unsafe module imported under it
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in UNSAFE_MODULES:
                        aliases[a.asname or a.name] = a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
                problems.append(f"{rel}:{node.lineno}: from {node.module} import ...")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                module = aliases.get(node.value.id)
                if module:
                    problems.append(f"{rel}:{node.lineno}: {module}.{node.attr}")
                elif node.value.id == "yaml" and node.attr not in YAML_SAFE:
                    problems.append(f"{rel}:{node.lineno}: yaml.{node.attr}")
            if isinstance(node, ast.Call):
                func = ast.unparse(node.func)
                if func in ("eval", "exec", "__import__"):
                    problems.append(f"{rel}:{node.lineno}: {func}()")
                for k in node.keywords:
                    if k.arg in ("safe_mode", "allow_pickle") and not (
                        isinstance(k.value, ast.Constant) and k.value.value is (k.arg == "safe_mode")
                    ):
                        problems.append(f"{rel}:{node.lineno}: {func}({k.arg}={ast.unparse(k.value)})")
    assert not problems, problems


@pytest.mark.parametrize("forgery", ["pickle", "random"])
def test_a_run_fed_a_forged_spill_file_fails_naming_it_and_runs_nothing(tmp_path, monkeypatch, forgery):
    """Whoever can write the run's temp location swaps a spill file between the stage that wrote it
    and the one that reads it, for a pickle that would create a file or for random bytes (the header
    can be forged too: it is a checksum, not a secret). The run fails naming the file, nothing is
    created, and the output directory gets no _SUCCESS."""
    import pickle

    import beam_jobs.spill as spill
    from beam_jobs.ingest import run_ingest
    from ssdflow.config import IngestConfig

    images, labels, _ = voc_scenes(tmp_path, 4, 96, seed=0, max_objects=1)
    pwned = tmp_path / "pwned"
    body = pickle.dumps([PickleBomb(pwned)]) if forgery == "pickle" else os.urandom(2048)
    forged, real_write = [], spill.Spill.write

    def swap_the_first(self, items):
        path = real_write(self, items)
        if not forged:  # the job's own file, replaced after it was written: what an attacker would do
            with open(path, "wb") as f:
                f.write(spill.frame(body))
            forged.append(path)
        return path

    monkeypatch.setattr(spill.Spill, "write", swap_the_first)
    out = tmp_path / "out"
    with pytest.raises(Exception) as raised:  # the runner may wrap the SpillError
        run_ingest(IngestConfig(images=str(images), labels=str(labels), format="voc", out=str(out)))
    assert forged and forged[0] in str(raised.value) and "refusing it" in str(raised.value)
    assert not pwned.exists()
    assert not (out / "_SUCCESS").exists() and not list(out.glob("*.tfrecord"))


# Every call that loads a model or weights, and where: SavedModels with tf.saved_model.load; Keras
# weights with load_weights from .weights.h5 (the registry's keras.weights.h5 for re-export, a
# user's backbone file for training); training's own tf.train checkpoint to resume. Other loads
# read JSON, safe YAML, or decode image pixels (PIL).
MODEL_LOADERS = {
    ("beam_jobs/model_handler.py", "tf.saved_model.load"),
    ("model/export.py", "tf.saved_model.load"),
    ("model/export.py", "model.load_weights"),
    ("model/ssd.py", "net.load_weights"),
    ("model/callbacks.py", "self._manager().checkpoint.restore"),
    ("model/train.py", "checkpoint.restore"),  # EpochCheckpoint.restore → the former
    ("model/callbacks.py", "model.load_weights"),
    ("model/train.py", "best.restore"),  # KeepBest: the run's own best.weights.h5
    (
        "model/train.py",
        "model.load_weights",
    ),  # a warm start: a registered model's keras.weights.h5 (model/warm_start.py)
    ("model/tflite.py", "model.load_weights"),  # TFLite export: a registered model's keras.weights.h5
    ("beam_jobs/predict.py", "handler.load_model"),  # score's handlers (beam_jobs/model_handler.py: the above)
}
DATA_LOADERS = {"json.load", "json.loads", "yaml.safe_load", "img.load"}


def test_models_load_only_from_savedmodel_or_weights_h5_and_the_registry_is_json(raccoon_model):
    """Models are loaded only with tf.saved_model.load (serving) and Keras load_weights from
    .weights.h5; the registry (champion.json, decisions.jsonl, decision/metrics/label map) is JSON."""
    found = set()
    for rel, source in _library_files():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call):
                func = ast.unparse(node.func)
                last = func.split(".")[-1]
                if re.fullmatch(
                    r"(load|loads|load_model|load_weights|restore|load_all|unsafe_load|full_load|read_pickle)", last
                ):
                    if func not in DATA_LOADERS and func != "pickle.loads":  # pickle: the test above
                        found.add((rel, func))
    assert found == MODEL_LOADERS, f"new or changed model loaders: {sorted(found ^ MODEL_LOADERS)}"

    from model import export, registry

    assert export.KERAS_WEIGHTS.endswith(".weights.h5") and export.MODEL_INFO.endswith(".json")
    export_src = (REPO / "model" / "export.py").read_text()
    assert "model.load_weights(os.path.join(model_dir, KERAS_WEIGHTS))" in export_src
    assert all(
        name.endswith(".json") for name in (registry.CHAMPION, registry.DECISION, registry.METRICS, registry.LABEL_MAP)
    )
    assert registry.DECISIONS.endswith(".jsonl")

    model_dir = Path(raccoon_model)
    models = model_dir.parent
    champion = json.loads((models / registry.CHAMPION).read_text())
    assert isinstance(champion, dict) and champion["version"] == model_dir.name
    assert all(
        isinstance(json.loads(line), dict) for line in (models / registry.DECISIONS).read_text().splitlines() if line
    )
    allowed = re.compile(
        r"(saved_model\.pb|fingerprint\.pb|variables/variables\.(index|data-\d{5}-of-\d{5})|assets/.*|[\w.-]+\.json|[\w.-]+\.md|keras\.weights\.h5"
        r"|_SUCCESS"  # the version's manifest (JSON)
        r"|logs/\w+/events\.out\.tfevents\.[\w.-]+"  # TensorBoard: TFRecord-framed protobuf summaries
        r"|pr_curves\.png|val_examples/val-\d{2}\.jpg)"
    )  # the model card's pictures (model/report.py)
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir).as_posix()
        assert allowed.fullmatch(rel), f"unexpected file in a registered model: {rel}"
        head = path.read_bytes()[:8]
        assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), (
            f"{rel} looks like a pickle"
        )
        if rel.endswith(".json") or rel == registry.MANIFEST:
            json.loads(path.read_text())
    assert (model_dir / export.KERAS_WEIGHTS).read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"


@pytest.mark.parametrize(
    "payload",
    [
        '!!python/object/apply:os.system ["touch {marker}"]',
        '!!python/object/apply:subprocess.check_call [["touch", "{marker}"]]',
        '!!python/object/new:subprocess.Popen [["touch", "{marker}"]]',
        "!!python/name:os.system",
    ],
)
def test_serve_config_with_python_tags_is_refused(tmp_path, payload):
    """`ssdflow serve --config x.yaml` reads YAML with yaml.safe_load: a python-object tag is an
    error, and nothing runs; the same file without the tag is accepted."""
    from flows.serve import ServeConfigError, default_parameters

    marker = tmp_path / "pwned"
    good = {
        "nightly": {
            "ingest": {
                "images": str(tmp_path / "i"),
                "labels": str(tmp_path / "l"),
                "format": "voc",
                "out": str(tmp_path / "o"),
            },
            "models": str(tmp_path / "m"),
        },
        "score": {"model": str(tmp_path / "m"), "images": [str(tmp_path / "i")], "out": str(tmp_path / "s")},
    }
    ok = tmp_path / "ok.yaml"
    ok.write_text(json.dumps(good))  # JSON is YAML
    assert default_parameters(str(tmp_path), str(ok))["score"].out == str(tmp_path / "s")

    for suffix in (".yaml", ".yml", ".json"):
        bad = tmp_path / f"bad{suffix}"
        bad.write_text(f"nightly: {payload.format(marker=marker)}\n" + "score: " + json.dumps(good["score"]) + "\n")
        with pytest.raises(ServeConfigError) as err:  # from yaml's ConstructorError; a JSONDecodeError for .json
            default_parameters(str(tmp_path), str(bad))
        assert "cannot read it" in str(err.value)
        if suffix != ".json":
            assert "could not determine a constructor" in str(err.value) and "python/" in str(err.value)
        assert not marker.exists(), "the YAML payload ran"


# --- archives -------------------------------------------------------------------------------------
def _snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    """Every path under ``root`` except ``skip``'s subtree: its type, size and content hash."""
    import hashlib

    snap = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else None
            snap[str(p)] = (st.st_mode, st.st_size if digest else 0, digest)
    return snap


def test_tar_members_never_escape_the_output_and_links_are_refused(raccoon_model, tmp_path, monkeypatch):
    """Scoring a tar whose members are named /abs/path.jpg, ../../x.jpg or sit behind a symlink
    (with --preview, so images are written): nothing is created outside --out, members are
    streamed, never extracted; symlink and hardlink members are refused as ``link_member``, a FIFO
    member as ``special_member``."""
    from beam_jobs.score import run_score
    from ssdflow.config import ScoreConfig

    cwd = tmp_path / "w1" / "w2" / "cwd"
    out = cwd / "out"
    abs_target = tmp_path / "abs-target"  # writable: an extracting scorer would create files here
    link_target = tmp_path / "link-target"
    for d in (cwd, abs_target, link_target):
        d.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    tar_path = tmp_path / "evil.tar"
    names = {"ok.jpg": 1, f"{abs_target}/abs.jpg": 2, "../../dotdot.jpg": 3, "sub/../../../deeper.jpg": 4}
    links = {
        "link.jpg": (tarfile.SYMTYPE, "../../../../../../etc/passwd"),
        "abs-link.jpg": (tarfile.SYMTYPE, "/etc/passwd"),
        "hard.jpg": (tarfile.LNKTYPE, "ok.jpg"),
        "escape": (tarfile.SYMTYPE, str(link_target)),
    }
    with tarfile.open(tar_path, "w") as tar:
        for name, seed in names.items():
            info = tarfile.TarInfo(name)
            data = _jpeg(seed)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (kind, target) in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
        fifo = tarfile.TarInfo("pipe.jpg")  # a FIFO: opening it would block a naive reader forever
        fifo.type = tarfile.FIFOTYPE
        tar.addfile(fifo)
        info = tarfile.TarInfo("escape/through-link.jpg")  # written through the symlink by a naive extractor
        data = _jpeg(5)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with tarfile.open(tar_path) as tar:  # the archive really holds the hostile names
        assert f"{abs_target}/abs.jpg" in tar.getnames() and "../../dotdot.jpg" in tar.getnames()

    before = _snapshot(tmp_path, out)
    m = run_score(
        ScoreConfig(model=raccoon_model, images=[str(tar_path)], out=str(out), score_threshold=0.0, preview=10)
    )
    assert _snapshot(tmp_path, out) == before  # nothing outside --out was created, changed or linked

    scored = 5  # the four named members and the one behind the symlink
    refused = len(links) + 1  # the links and the FIFO
    assert (m.images_in, m.images_scored, m.images_failed) == (scored + refused, scored, refused)
    assert m.images_in == m.images_scored + m.images_failed
    errors = {e["source"].split("#", 1)[1]: e["reason"] for e in read_jsonl(out / "errors.jsonl")}
    assert errors == {**{name: "link_member" for name in links}, "pipe.jpg": "special_member"}
    for name in [
        *names,
        *links,
        "escape/through-link.jpg",
    ]:  # where the names point, from --out, its preview/ and the cwd
        targets = (
            [Path(name)]
            if name.startswith("/")
            else [
                Path(os.path.normpath(b / name))
                for b in (out, out / "preview", cwd)
                if b != out / "preview" or "/" in name
            ]
        )  # preview/<base name>.jpg: below
        for target in targets:
            assert not os.path.lexists(target), target
    assert not list(abs_target.iterdir()) and not list(link_target.iterdir())
    assert not (tmp_path / "w1" / "dotdot.jpg").exists() and not (tmp_path / "w1" / "w2" / "dotdot.jpg").exists()

    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() or p.is_symlink())
    assert not [p for p in out.rglob("*") if p.is_symlink()]
    previews = [p for p in written if p.startswith("preview/")]
    # Named after the member's base name only (no directory of it, no dot first, other characters as _): inside preview/.
    assert previews == [
        "preview/abs.jpg",
        "preview/deeper.jpg",
        "preview/dotdot.jpg",
        "preview/ok.jpg",
        "preview/through-link.jpg",
    ]
    for p in written:
        assert re.fullmatch(
            r"(_SUCCESS|errors\.jsonl|summary\.json|detections-\d{5}-of-\d{5}\.(jsonl|parquet)|preview/[\w-]+\.jpg|"
            r"chunks/[\w.-]+/[0-9a-f]+/(_SUCCESS|listing\.json|[0-9a-f]{12}/(detections\.jsonl|detections\.parquet|errors\.jsonl|candidates\.jsonl|coco_results\.part)))",
            p,
        ), p
        assert (out / p).resolve().is_relative_to(out.resolve())

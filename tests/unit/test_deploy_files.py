"""The deploy files' invariants, checked without docker or a server: images built the way Beam and
Prefect document them, versions equal to what this project runs, deployments that validate."""

from __future__ import annotations

import importlib
import re
import sys

import apache_beam
import prefect
import yaml

from tests.helpers import REPO

DEPLOY = REPO / "deploy"
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def _from(dockerfile: str) -> str:
    return re.search(r"^FROM\s+(\S+)", (DEPLOY / dockerfile).read_text(), re.M).group(1)


def test_beam_worker_image_is_beams_sdk_image_at_the_launchers_versions():
    text = (DEPLOY / "beam-worker.Dockerfile").read_text()
    assert _from("beam-worker.Dockerfile") == f"apache/beam_python{PY}_sdk:{apache_beam.__version__}"
    assert re.search(r'^ENTRYPOINT \["/opt/apache/beam/boot"\]', text, re.M)  # the SDK harness starts here
    # The flow-run image launches the pipelines: same Python as the workers.
    assert _from("Dockerfile") == f"python:{PY}-slim"
    pins = (REPO / "pyproject.toml").read_text()
    major, minor = (int(v) for v in apache_beam.__version__.split(".")[:2])
    assert f"apache-beam[tfrecord]>={major}.{minor},<{major}.{minor + 1}" in pins  # the image's tag is inside the pin


def test_prefect_worker_image_has_the_pool_packages_at_the_servers_version():
    text = (DEPLOY / "prefect-worker.Dockerfile").read_text()
    assert _from("prefect-worker.Dockerfile") == f"prefecthq/prefect:{prefect.__version__}-python{PY}"
    assert "prefect-kubernetes==" in text and "prefect-docker==" in text
    k8s = (DEPLOY / "k8s" / "worker.yaml").read_text()
    assert "ssdflow-prefect-worker" in k8s and "--type\", \"kubernetes\"" in k8s


def test_images_carry_every_package_of_the_project():
    packages = re.search(r'include = \[(.*?)\]', (REPO / "pyproject.toml").read_text()).group(1)
    for name in re.findall(r'"(\w+)\*"', packages):
        for dockerfile in ("Dockerfile", "beam-worker.Dockerfile"):
            assert f"COPY {name} {name}" in (DEPLOY / dockerfile).read_text(), (dockerfile, name)


def test_prefect_yaml_has_the_six_deployments_with_valid_parameters():
    text = "\n".join(line for line in (DEPLOY / "prefect.yaml").read_text().splitlines() if not line.lstrip().startswith("#"))
    variables = set(re.findall(r"\{\{\s*\$(\w+)\s*\}\}", text))
    assert variables == {"SSDFLOW_REPO", "SSDFLOW_DATA", "SSDFLOW_TIMEZONE"}
    script = (REPO / "scripts" / "deploy.sh").read_text()
    assert all(v in script for v in variables)  # deploy.sh refuses to run without them
    assert "|" not in "".join(re.findall(r"\{\{.*?\}\}", text))  # Prefect's templating has no filters
    # Resolve the templates as `prefect deploy` does, then validate each default against its flow.
    config = yaml.safe_load(re.sub(r"\{\{\s*\$(\w+)\s*\}\}", lambda m: {"SSDFLOW_TIMEZONE": "UTC"}.get(m.group(1), "/x"), text))
    assert config["prefect-version"] == prefect.__version__
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == {"nightly-retrain", "batch-score", "ingest", "train", "models", "demo"}  # as `ssdflow serve`
    for name, d in deployments.items():
        module, _, attr = d["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), attr)
        assert flow.name == name  # the flow's name is the deployment's, as `ssdflow serve` registers them
        flow.validate_parameters(d["parameters"])  # raises on a wrong field or value
        assert d["work_pool"]["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
        assert "ssdflow" in d["tags"]
    assert deployments["nightly-retrain"]["concurrency_limit"] == 1 and deployments["train"]["concurrency_limit"] == 1
    for name in ("batch-score", "ingest"):
        assert deployments[name]["concurrency_limit"]["collision_strategy"] == "ENQUEUE"

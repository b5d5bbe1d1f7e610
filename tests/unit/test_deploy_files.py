"""The deploy files' invariants, checked without docker or a server: images built the way Beam and
Prefect document them, versions equal to what this project runs, deployments that validate."""

from __future__ import annotations

import importlib
import json
import re
import sys
import typing

import apache_beam
import prefect
import pytest
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
    assert "ssdflow-prefect-worker" in k8s and '--type", "kubernetes"' in k8s


def test_images_carry_every_package_of_the_project():
    packages = re.search(r"include = \[(.*?)\]", (REPO / "pyproject.toml").read_text()).group(1)
    for name in re.findall(r'"(\w+)\*"', packages):
        for dockerfile in ("Dockerfile", "beam-worker.Dockerfile"):
            assert f"COPY {name} {name}" in (DEPLOY / dockerfile).read_text(), (dockerfile, name)


def test_prefect_yaml_has_the_six_deployments_with_valid_parameters():
    text = "\n".join(
        line for line in (DEPLOY / "prefect.yaml").read_text().splitlines() if not line.lstrip().startswith("#")
    )
    variables = set(re.findall(r"\{\{\s*\$(\w+)\s*\}\}", text))
    assert variables == {"SSDFLOW_REPO", "SSDFLOW_DATA", "SSDFLOW_TIMEZONE"}
    script = (REPO / "scripts" / "deploy.sh").read_text()
    assert all(v in script for v in variables)  # deploy.sh refuses to run without them
    assert "|" not in "".join(re.findall(r"\{\{.*?\}\}", text))  # Prefect's templating has no filters
    # Resolve the templates as `prefect deploy` does, then validate each default against its flow.
    config = yaml.safe_load(
        re.sub(r"\{\{\s*\$(\w+)\s*\}\}", lambda m: {"SSDFLOW_TIMEZONE": "UTC"}.get(m.group(1), "/x"), text)
    )
    assert config["prefect-version"] == prefect.__version__
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == {
        "nightly-retrain",
        "batch-score",
        "ingest",
        "train",
        "models",
        "demo",
    }  # as `ssdflow serve`
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


# --- deploy/k8s and deploy/params.s3.yaml: a cluster whose workers share no disk -----------------

K8S = DEPLOY / "k8s"
K8S_VERSION = "1.33"  # a Kubernetes release kubernetes-validate bundles schemas for
NAMESPACE = "ssdflow"
# The Secrets the manifests may reference, each with the keys deploy/k8s/README.md creates.
SECRETS = {
    "prefect-auth": {"auth-string"},
    "prefect-db": {"password"},
    "ssdflow-storage": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"},
}
JOB_TEMPLATE = K8S / "pool" / "base-job-template.json"


def _k8s_documents() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def _of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _walk(node, key: str):
    """Every value stored under ``key`` anywhere in ``node``."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, key)


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_k8s_manifests_validate_strictly_against_the_kubernetes_schemas():
    kv = pytest.importorskip("kubernetes_validate")
    # `kubectl apply -f deploy/k8s/` reads every .yaml, .yml and .json there: each must be a manifest.
    read_by_kubectl = [p for p in K8S.iterdir() if p.suffix in (".yaml", ".yml", ".json")]
    assert {p.suffix for p in read_by_kubectl} == {".yaml"}, "the base job template must stay out of kubectl's way"
    docs = _k8s_documents()
    assert {"Namespace", "StatefulSet", "Service", "Deployment", "ServiceAccount", "Role", "RoleBinding"} <= {
        d["kind"] for d in docs
    }
    for doc in docs:
        kv.validate(doc, K8S_VERSION, strict=True)  # raises on an unknown (misspelt) field or a wrong type
    # Strict really is strict: a misspelt field in a container fails.
    broken = _of_kind(docs, "Deployment")["prefect-server"]
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = broken["spec"]["template"]["spec"][
        "containers"
    ][0].pop("readinessProbe")
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSION, strict=True)


def test_k8s_manifests_form_an_applicable_set():
    docs = _k8s_documents()
    assert set(_of_kind(docs, "Namespace")) == {NAMESPACE}
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in docs if d["kind"] != "Namespace")
    assert not _of_kind(docs, "Secret")  # created by hand (README.md), never with a value in the repo
    readme = (K8S / "README.md").read_text()
    for name, keys in SECRETS.items():
        assert f"kubectl -n {NAMESPACE} create secret generic {name} " in readme
        assert all(f"--from-literal={key}=" in readme for key in keys), name
    for ref in _walk(docs, "secretKeyRef"):
        assert ref["name"] in SECRETS and ref["key"] in SECRETS[ref["name"]], ref
    assert all(ref["name"] in SECRETS for ref in _walk(docs, "secretRef"))

    # Workloads: selectors match their pods, service accounts exist, Services select a pod and its port.
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    accounts = _of_kind(docs, "ServiceAccount")
    for w in workloads:
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= labels.items(), w["metadata"]["name"]
        assert w["spec"]["template"]["spec"].get("serviceAccountName", "default") in {"default", *accounts}
    services = _of_kind(docs, "Service")
    for name, service in services.items():
        pods = [
            w
            for w in workloads
            if service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(pods) == 1, name
        ports = {
            p["containerPort"] for c in pods[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])
        }
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, name

    # RBAC: the binding ties the worker's ServiceAccount to the Role, which grants exactly what the worker uses.
    (binding,) = _of_kind(docs, "RoleBinding").values()
    roles = _of_kind(docs, "Role")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "prefect-worker"}
    assert set(roles) == {"prefect-worker"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prefect-worker", "namespace": NAMESPACE}]
    assert "prefect-worker" in accounts
    granted = {
        (g, r, v)
        for rule in roles["prefect-worker"]["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert granted == (
        {("batch", "jobs", v) for v in ("create", "get", "list", "watch", "delete")}
        | {("", r, v) for r in ("pods", "pods/log", "events") for v in ("get", "list", "watch")}
    )

    # The server: Prefect's image at this project's version, on PostgreSQL, the password from the Secret only.
    server = _of_kind(docs, "Deployment")["prefect-server"]
    (container,) = server["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"prefecthq/prefect:{prefect.__version__}-python{PY}"
    assert container["command"] == ["prefect", "server", "start", "--host", "0.0.0.0", "--port", "4200"]
    env = _env(container)
    names = list(env)
    url = env["PREFECT_SERVER_DATABASE_CONNECTION_URL"]["value"]
    password = re.fullmatch(r"postgresql\+asyncpg://prefect:\$\((\w+)\)@([\w-]+):(\d+)/prefect", url)
    assert password, url  # no literal password: Kubernetes expands the variable in the container
    assert env[password.group(1)]["valueFrom"]["secretKeyRef"] == {"name": "prefect-db", "key": "password"}
    assert names.index(password.group(1)) < names.index(
        "PREFECT_SERVER_DATABASE_CONNECTION_URL"
    )  # $(VAR) needs VAR first
    assert int(password.group(3)) in {p["port"] for p in services[password.group(2)]["spec"]["ports"]}
    assert env["PREFECT_SERVER_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"] == {
        "name": "prefect-auth",
        "key": "auth-string",
    }
    assert (
        container["readinessProbe"]["httpGet"]["path"] == container["livenessProbe"]["httpGet"]["path"] == "/api/health"
    )
    assert (
        services["prefect-server"]["spec"]["selector"].items()
        <= server["spec"]["template"]["metadata"]["labels"].items()
    )

    # The database: a StatefulSet on its own volume, the same password.
    postgres = _of_kind(docs, "StatefulSet")["postgres"]
    assert postgres["spec"]["serviceName"] in services
    (db,) = postgres["spec"]["template"]["spec"]["containers"]
    assert db["image"] == "postgres:16"
    assert _env(db)["POSTGRES_PASSWORD"]["valueFrom"] == env[password.group(1)]["valueFrom"]
    claims = {t["metadata"]["name"] for t in postgres["spec"]["volumeClaimTemplates"]}
    assert {m["name"] for m in db["volumeMounts"]} <= claims

    # The worker: the server's Service, the server's auth string, handed to flow runs by reference.
    worker = _of_kind(docs, "Deployment")["ssdflow-prefect-worker"]
    assert worker["spec"]["template"]["spec"]["serviceAccountName"] == "prefect-worker"
    (w,) = worker["spec"]["template"]["spec"]["containers"]
    assert w["image"] == "REGISTRY/ssdflow-prefect-worker:TAG"
    assert w["command"] == ["prefect", "worker", "start", "--pool", "ssdflow-k8s", "--type", "kubernetes"]
    wenv = _env(w)
    assert (
        wenv["PREFECT_API_URL"]["value"]
        == f"http://prefect-server:{services['prefect-server']['spec']['ports'][0]['port']}/api"
    )
    auth = wenv["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"]
    assert auth == env["PREFECT_SERVER_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"]
    assert wenv["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME"]["value"] == auth["name"]
    assert wenv["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY"]["value"] == auth["key"]
    assert wenv["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"]["value"] == NAMESPACE  # the Role is namespaced


def test_base_job_template_runs_flows_with_the_storage_secret():
    from prefect.server.schemas.actions import WorkPoolCreate
    from prefect.utilities.templating import apply_values

    template = json.loads(JOB_TEMPLATE.read_text())
    WorkPoolCreate(name="ssdflow-k8s", type="kubernetes", base_job_template=template)  # what the server checks
    variables = template["variables"]["properties"]
    assert variables["image"]["default"] == "REGISTRY/ssdflow:TAG"  # deploy/Dockerfile
    assert variables["namespace"]["default"] == NAMESPACE  # where the worker's Role lets it create Jobs
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "prefect-job" and container["envFrom"] == [{"secretRef": {"name": "ssdflow-storage"}}]
    assert "ssdflow-storage" in SECRETS

    kv = pytest.importorskip("kubernetes_validate")
    # The Job a flow run gets, rendered as the worker does, with the env and command in Kubernetes' form.
    values = {name: spec.get("default") for name, spec in variables.items()}
    values.update(
        name="nightly-run",
        labels={},
        annotations={},
        env=[{"name": "PREFECT__FLOW_RUN_ID", "value": "x"}],
        command=["prefect", "flow-run", "execute"],
        service_account_name="default",
        cpu_request="1",
        cpu_limit="2",
        memory_request="2Gi",
        memory_limit="8Gi",
    )
    job = apply_values(template["job_configuration"]["job_manifest"], values)
    for key in (
        "parallelism",
        "completions",
    ):  # prefect-kubernetes demands them in the pod spec; the API server drops them
        del job["spec"]["template"]["spec"][key]
    kv.validate(job, K8S_VERSION, strict=True)
    assert (
        job["metadata"]["namespace"] == NAMESPACE
        and job["spec"]["template"]["spec"]["containers"][0]["image"] == "REGISTRY/ssdflow:TAG"
    )


def _location_values(model, prefix: str = ""):
    """(field path, value) of every Location field set in a validated config, sub-configs included."""
    from pydantic import BaseModel

    from ssdflow import roots

    def is_location(annotation, metadata=()) -> bool:
        if any(getattr(m, "func", None) is roots.check for m in metadata):
            return True
        return any(is_location(a, getattr(a, "__metadata__", ())) for a in typing.get_args(annotation))

    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _location_values(value, f"{prefix}{name}.")
        elif is_location(field.annotation, field.metadata) and value is not None:
            for i, item in enumerate(value if isinstance(value, list) else [value]):
                yield f"{prefix}{name}[{i}]" if isinstance(value, list) else f"{prefix}{name}", item


def test_params_s3_yaml_puts_every_location_in_the_bucket(monkeypatch):
    from ssdflow.config import ServeConfig

    monkeypatch.delenv("SSDFLOW_ALLOWED_ROOTS", raising=False)
    text = (DEPLOY / "params.s3.yaml").read_text()
    config = ServeConfig.model_validate(yaml.safe_load(text))
    locations = dict(_location_values(config))
    assert {
        "nightly.ingest.images",
        "nightly.ingest.labels",
        "nightly.ingest.out",
        "nightly.models",
        "nightly.score_images[0]",
        "nightly.score_out",
        "nightly.push_to",
        "score.model",
        "score.images[0]",
        "score.out",
    } <= set(locations)
    assert all(value.startswith("s3://") for value in locations.values()), (
        locations
    )  # no local path: pods share no disk
    train = config.nightly.train_config()
    assert train.data.startswith("s3://") and train.models.startswith("s3://")
    assert not config.nightly.ingest.beam_args  # endpoint and credentials from the environment by default
    # The commented alternative, the endpoint as a Beam option, is valid and reaches the other steps.
    alternative = ServeConfig.model_validate(yaml.safe_load(re.sub(r"^(\s*)# (beam_args:)", r"\1\2", text, flags=re.M)))
    assert alternative.nightly.storage_args() == ["--s3_endpoint_url=http://minio:9000"]
    assert alternative.score.beam_args == ["--s3_endpoint_url=http://minio:9000"]

"""A real Prefect server on 127.0.0.1 plus `ssdflow serve` against it, for integration and browser tests."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from tests.helpers import REPO, free_port, stop_process, wait_for_port


def env(home, api_url=None) -> dict:
    e = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
             PREFECT_RUNNER_POLL_FREQUENCY="1", PREFECT_LOGGING_LEVEL="INFO", TF_CPP_MIN_LOG_LEVEL="2")
    e.pop("PREFECT_API_URL", None)
    if api_url:
        e["PREFECT_API_URL"] = api_url
        e["PREFECT_UI_API_URL"] = api_url
    return e


def request(method: str, url: str, body=None, retries: int = 5) -> tuple[int, dict | list]:
    """One API call. A busy server on 2 cores can answer 502/503/504 for a moment; like Prefect's own
    client (PREFECT_CLIENT_MAX_RETRIES), retry those with backoff. Every other status is returned."""
    data = json.dumps(body).encode() if body is not None else None
    for attempt in range(retries + 1):
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            if e.code in (502, 503, 504) and attempt < retries:
                time.sleep(2 ** attempt)
                continue
            return e.code, json.loads(e.read() or b"null")
    raise AssertionError("unreachable")


@contextlib.contextmanager
def prefect_stack(prefect_home, work_home, serve_args=()):
    """Yields {"api", "url", "deployments" (by name), "home"}; both processes are stopped by PID at exit."""
    prefect_home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env(prefect_home, api), stdout=open(prefect_home / "server.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    serving = None
    try:
        wait_for_port(port, timeout=120, proc=server)
        deadline = time.time() + 120
        while request("GET", f"{api}/health")[0] != 200 and time.time() < deadline:
            time.sleep(0.5)
        serving = subprocess.Popen([sys.executable, "-m", "ssdflow.cli", "serve", "--home", str(work_home), *serve_args],
                                   cwd=REPO, env=env(prefect_home, api), stdout=open(prefect_home / "serve.log", "w"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 180
        deployments = []
        while time.time() < deadline and serving.poll() is None:
            status, deployments = request("POST", f"{api}/deployments/filter", {})
            if status == 200 and len(deployments) >= 5:
                break
            time.sleep(1)
        assert len(deployments) >= 5, (prefect_home / "serve.log").read_text()[-3000:]
        yield {"api": api, "url": f"http://127.0.0.1:{port}", "deployments": {d["name"]: d for d in deployments}, "home": prefect_home}
    finally:
        if serving is not None:
            stop_process(serving, timeout=20)
        stop_process(server, timeout=20)


def wait_for_run(api: str, run_id: str, timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    run = {}
    while time.time() < deadline:
        _, run = request("GET", f"{api}/flow_runs/{run_id}")
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    raise TimeoutError(f"flow run {run_id} still {run.get('state_type')} after {timeout}s")
